//! The vault CLI, and the vault key kept out of logs, the ledger, errors and the agent.

use super::*;

#[test]
fn vault_cli_reads_the_key_from_stdin_and_lists_only_its_last_four() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("v.json");
    let master = Command::new(portcullis_bin())
        .args(["vault", "gen-master-key"])
        .output()
        .unwrap();
    assert!(master.status.success());
    let master = String::from_utf8(master.stdout).unwrap().trim().to_owned();
    let mut put = Command::new(portcullis_bin())
        .args(["vault", "put", "acme", "openai", "--file"])
        .arg(&file)
        .env("PORTCULLIS_MASTER_KEY", &master)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    {
        use std::io::Write;
        put.stdin
            .take()
            .unwrap()
            .write_all(OPENAI_VAULT_KEY.as_bytes())
            .unwrap();
    }
    let out = put.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let list = Command::new(portcullis_bin())
        .args(["vault", "list", "--file"])
        .arg(&file)
        .env("PORTCULLIS_MASTER_KEY", &master)
        .output()
        .unwrap();
    assert!(list.status.success());
    let text = String::from_utf8_lossy(&list.stdout);
    assert!(
        text.contains("…XYZ") || text.contains(&OPENAI_VAULT_KEY[OPENAI_VAULT_KEY.len() - 4..]),
        "{text}"
    );
    assert!(!text.contains(&OPENAI_VAULT_KEY[..12]), "{text}");
    let on_disk = std::fs::read_to_string(&file).unwrap();
    assert!(!on_disk.contains(OPENAI_VAULT_KEY));
    // Rotation: the new master key opens the vault, the old one no longer does.
    let new_master = Command::new(portcullis_bin())
        .args(["vault", "gen-master-key"])
        .output()
        .unwrap();
    let new_master = String::from_utf8(new_master.stdout)
        .unwrap()
        .trim()
        .to_owned();
    let rotate = Command::new(portcullis_bin())
        .args(["vault", "rotate-master", "--file"])
        .arg(&file)
        .env("PORTCULLIS_MASTER_KEY", &master)
        .env("PORTCULLIS_NEW_MASTER_KEY", &new_master)
        .output()
        .unwrap();
    assert!(
        rotate.status.success(),
        "{}",
        String::from_utf8_lossy(&rotate.stderr)
    );
    let list_with = |key: &str| {
        Command::new(portcullis_bin())
            .args(["vault", "list", "--file"])
            .arg(&file)
            .env("PORTCULLIS_MASTER_KEY", key)
            .output()
            .unwrap()
    };
    assert!(list_with(&new_master).status.success());
    let old = list_with(&master);
    assert!(!old.status.success());
    assert!(!String::from_utf8_lossy(&old.stderr).contains(&master));
    // Without the master key: a clear error, exit non-zero.
    let no_key = Command::new(portcullis_bin())
        .args(["vault", "list", "--file"])
        .arg(&file)
        .env_remove("PORTCULLIS_MASTER_KEY")
        .output()
        .unwrap();
    assert!(!no_key.status.success());
    assert!(String::from_utf8_lossy(&no_key.stderr).contains("PORTCULLIS_MASTER_KEY"));
}

/// The vault key never reaches the logs (even at trace level), the ledger,
/// an error body, or the agent: an upstream that echoes it back, split across
/// stream chunks, has it redacted.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_vault_key_never_reaches_logs_ledger_errors_or_the_agent() {
    use tokio::io::AsyncWriteExt;
    let pki = OriginPki::new();
    let origin = Origin::start_tls(&pki).await;
    let dir = tempfile::tempdir().unwrap();
    let master = make_vault(dir.path());
    let cfg = proxy_config(origin.addr, &pki, &dir.path().join("ca"), KEYED_ROUTES);
    let cfg_path = dir.path().join("portcullis.toml");
    std::fs::write(&cfg_path, cfg).unwrap();
    let log_path = dir.path().join("stderr.log");
    let log = std::fs::File::create(&log_path).unwrap();
    let proxy = ProxyProcess::start_with_env(
        &cfg_path,
        dir.path(),
        "trace",
        log.into(),
        &[("PORTCULLIS_MASTER_KEY", &master)],
    );
    let roots = roots_from_pem(&dir.path().join("ca/ca.pem"));
    let tunnel = |host: &'static str| {
        let roots = roots.clone();
        let addr = proxy.addr;
        async move {
            let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
            s.write_all(
                format!(
                    "CONNECT {host}:443 HTTP/1.1\r\nProxy-Authorization: Basic {}\r\n\r\n",
                    basic(AGENT, TOKEN)
                )
                .as_bytes(),
            )
            .await
            .unwrap();
            assert!(read_head(&mut s).await.starts_with("HTTP/1.1 200"));
            tls_client(s, &roots, host, &[b"http/1.1"]).await.unwrap()
        }
    };
    // The origin echoes the injected key back, split across two chunks.
    let mut tls = tunnel("api.openai.com").await;
    tls.write_all(
        format!("GET /v1/echo-key HTTP/1.1\r\nHost: api.openai.com\r\nAuthorization: Bearer {DUMMY}\r\nConnection: close\r\n\r\n").as_bytes(),
    )
    .await
    .unwrap();
    let echoed = read_response(&mut tls).await;
    let echoed_body = String::from_utf8_lossy(&echoed.body).into_owned();
    assert_eq!(echoed.status, 200);
    assert!(echoed_body.contains("[REDACTED]"), "{echoed_body}");
    assert!(
        !echoed_body.contains(&OPENAI_VAULT_KEY[8..]),
        "{echoed_body}"
    );
    let seen = origin.seen();
    assert_eq!(
        seen.last().unwrap().headers["authorization"],
        format!("Bearer {OPENAI_VAULT_KEY}").as_str(),
        "the origin got the vault key (so the echo really carried it)"
    );
    // A leak attempt: the openai key sent to the anthropic host.
    let mut tls = tunnel("api.anthropic.com").await;
    let body = format!(
        r#"{{"model":"claude-3-5-haiku-latest","max_tokens":5,"messages":[{{"role":"user","content":"{OPENAI_VAULT_KEY}"}}]}}"#
    );
    tls.write_all(
        format!("POST /v1/messages HTTP/1.1\r\nHost: api.anthropic.com\r\ncontent-type: application/json\r\ncontent-length: {}\r\nConnection: close\r\n\r\n{body}", body.len()).as_bytes(),
    )
    .await
    .unwrap();
    let refused = read_response(&mut tls).await;
    assert_eq!(refused.status, 403);
    let refused_body = String::from_utf8_lossy(&refused.body).into_owned();
    assert!(proxy.terminate().success());

    let logs = std::fs::read_to_string(&log_path).unwrap();
    assert!(
        logs.contains("portcullis::decision"),
        "the trace log was captured"
    );
    let ledger: String = std::fs::read_dir(dir.path().join(".portcullis/ledger"))
        .unwrap()
        .map(|e| std::fs::read_to_string(e.unwrap().path()).unwrap_or_default())
        .collect();
    let vault_file = std::fs::read_to_string(dir.path().join("vault.json")).unwrap();
    for secret in [OPENAI_VAULT_KEY, ANTHROPIC_VAULT_KEY, &master] {
        assert!(!logs.contains(secret), "the logs contain a vault secret");
        assert!(
            !ledger.contains(secret),
            "the ledger contains a vault secret"
        );
        assert!(
            !refused_body.contains(secret),
            "an error body contains a vault secret"
        );
        assert!(
            !echoed_body.contains(secret),
            "the agent saw a vault secret"
        );
        assert!(
            !vault_file.contains(secret),
            "the vault file holds a secret in clear"
        );
    }
}
