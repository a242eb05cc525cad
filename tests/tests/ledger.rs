//! The verdict ledger end to end: audit before act, outcomes on every ending
//! path, fail closed when the ledger cannot be written, and crash recovery.
#![allow(clippy::unwrap_used)]

use std::collections::HashMap;
use std::path::Path;
use std::process::Command;
use std::time::Duration;

use portcullis_ledger::{verify, VerifyOptions};
use portcullis_tests::*;
use serde_json::Value;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

const CHAT: &str = "POST /v1/chat/completions?user=alice HTTP/1.1\r\nHost: api.openai.com\r\nContent-Type: application/json\r\nContent-Length: 68\r\n\r\n{\"model\":\"gpt-4o-mini\",\"messages\":[{\"role\":\"user\",\"content\":\"hi!\"}]}";

fn by_event(records: &[Value], kind: &str) -> HashMap<String, Value> {
    records
        .iter()
        .filter(|r| r["kind"] == kind)
        .map(|r| (r["event_id"].as_str().unwrap_or("").to_owned(), r.clone()))
        .collect()
}

fn assert_intact(dir: &Path) {
    let outcome = verify(
        dir,
        &VerifyOptions {
            strict: true,
            ..VerifyOptions::default()
        },
    )
    .unwrap();
    if !outcome.is_intact() {
        let dump: Vec<String> = ledger_records(dir).iter().map(|r| r.to_string()).collect();
        panic!("ledger not intact: {outcome}\n{}", dump.join("\n"));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_request_gets_a_decision_record_and_forwarded_ones_an_outcome() {
    let (proxy, origin, _pki) = TestProxy::with_origin(DEFAULT_ROUTES).await;
    assert_eq!(CHAT.split("\r\n\r\n").nth(1).unwrap().len(), 68);

    let allowed = proxy.h1_request("api.openai.com:443", CHAT).await;
    assert_eq!(allowed.status, 200);
    let denied = proxy
        .h1_request(
            "api.openai.com:443",
            "GET /v1/models HTTP/1.1\r\nHost: api.openai.com\r\n\r\n",
        )
        .await;
    assert_eq!(denied.status, 403);
    let mismatch = proxy
        .h1_request(
            "api.openai.com:443",
            "GET /echo HTTP/1.1\r\nHost: api.anthropic.com\r\n\r\n",
        )
        .await;
    assert_eq!(mismatch.status, 421);
    let smuggled = proxy
        .h1_request(
            "api.openai.com:443",
            "POST /echo HTTP/1.1\r\nHost: api.openai.com\r\nContent-Length: 1\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
        )
        .await;
    assert_eq!(smuggled.status, 400);
    let mut s = TcpStream::connect(proxy.addr).await.unwrap();
    s.write_all(b"CONNECT api.openai.com:443 HTTP/1.1\r\nHost: api.openai.com:443\r\n\r\n")
        .await
        .unwrap();
    let unauth = read_response(&mut s).await;
    assert_eq!(unauth.status, 407);

    let dir = proxy.ledger_dir.clone();
    let _dir = proxy.shutdown().await;
    let records = ledger_records(&dir);
    let decisions = by_event(&records, "decision");
    let outcomes = by_event(&records, "outcome");
    for (resp, reason) in [
        (&allowed, "route_allow"),
        (&denied, "path_not_allowed"),
        (&mismatch, "host_mismatch"),
        (&smuggled, "bad_framing"),
        (&unauth, "auth_failed"),
    ] {
        let id = resp
            .header("x-portcullis-event-id")
            .unwrap_or_else(|| panic!("no event id header for {reason}"));
        let d = decisions
            .get(&id)
            .unwrap_or_else(|| panic!("no decision record for {reason} ({id})"));
        assert_eq!(d["reason"], reason, "{d}");
        if reason != "route_allow" {
            assert_eq!(d["decision"], "deny");
            assert!(
                !outcomes.contains_key(&id),
                "a refused request has no outcome"
            );
        }
    }
    let id = allowed.header("x-portcullis-event-id").unwrap();
    let d = &decisions[&id];
    assert_eq!(d["tenant"], "acme");
    assert_eq!(d["agent"], AGENT);
    assert_eq!(d["rule_id"], "acme-openai");
    assert_eq!(
        d["path_template"], "/v1/chat/completions",
        "the query never reaches the ledger"
    );
    assert_eq!(d["policy_generation"], 1);
    let o = &outcomes[&id];
    assert_eq!(o["end"], "complete");
    assert_eq!(o["status"], 200);
    assert_eq!(o["bytes_in"], 68);
    assert_eq!(o["bytes_out"].as_u64().unwrap(), allowed.body.len() as u64);
    // The CONNECTs themselves are decisions too.
    assert!(
        decisions
            .values()
            .filter(|d| d["method"] == "CONNECT")
            .count()
            >= 4
    );
    assert!(records.iter().any(|r| r["kind"] == "config"));
    assert!(records.iter().any(|r| r["kind"] == "checkpoint"));
    // Content never reaches the ledger: no prompt, no query, no token.
    let raw = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| std::fs::read_to_string(e.unwrap().path()).unwrap_or_default())
        .collect::<String>();
    for secret in ["hi!", "alice", TOKEN, "messages"] {
        assert!(!raw.contains(secret), "ledger contains {secret:?}");
    }
    assert_eq!(origin.seen().len(), 1);
    assert_intact(&dir);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn client_abort_mid_stream_is_recorded_as_client_abort() {
    let (proxy, origin, _pki) = TestProxy::with_origin(DEFAULT_ROUTES).await;
    let mut tls = proxy
        .tunnel_tls("api.openai.com:443", "api.openai.com", &[b"http/1.1"])
        .await;
    tls.write_all(b"GET /sse-paced HTTP/1.1\r\nHost: api.openai.com\r\n\r\n")
        .await
        .unwrap();
    let head = read_head(&mut tls).await;
    let id = head
        .lines()
        .find_map(|l| l.strip_prefix("x-portcullis-event-id: "))
        .unwrap()
        .to_owned();
    let mut buf = [0u8; 256];
    let n = tls.read(&mut buf).await.unwrap();
    assert!(String::from_utf8_lossy(&buf[..n]).contains("event-0"));
    drop(tls);
    // Let the origin move on so the proxy notices the client is gone.
    origin.gate.add_permits(10);
    let dir = proxy.ledger_dir.clone();
    let mut found = None;
    for _ in 0..100 {
        tokio::time::sleep(Duration::from_millis(50)).await;
        if let Some(o) = by_event(&ledger_records(&dir), "outcome").remove(&id) {
            found = Some(o);
            break;
        }
    }
    let o = found.expect("no outcome record after the client went away");
    assert_eq!(o["end"], "client_abort");
    let _dir = proxy.shutdown().await;
    assert_intact(&dir);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unreachable_upstream_is_recorded_as_upstream_error() {
    let pki = OriginPki::new();
    let dir = tempfile::tempdir().unwrap();
    // Port 1 on loopback: nothing listens there.
    let dead: std::net::SocketAddr = "127.0.0.1:1".parse().unwrap();
    let cfg = proxy_config(dead, &pki, &dir.path().join("ca"), DEFAULT_ROUTES);
    let proxy = TestProxy::start(&cfg, dir).await;
    let resp = proxy.h1_request("api.openai.com:443", CHAT).await;
    assert_eq!(resp.status, 502);
    assert_eq!(resp.error_code(), "upstream_connect_failed");
    let id = resp.header("x-portcullis-event-id").unwrap();
    let ledger_dir = proxy.ledger_dir.clone();
    let _dir = proxy.shutdown().await;
    let records = ledger_records(&ledger_dir);
    assert_eq!(by_event(&records, "decision")[&id]["decision"], "allow");
    let o = &by_event(&records, "outcome")[&id];
    assert_eq!(o["end"], "upstream_error");
    assert_eq!(o["status"], 502);
}

/// Fail closed: with the ledger's filesystem full, nothing is forwarded and
/// every request gets 503 ledger_unavailable. Once there is room again the
/// ledger resumes by itself, with a `recovery` record saying what was
/// refused, and the chain verifies. Needs root to mount a tmpfs.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn full_ledger_filesystem_fails_closed_with_503_and_resumes_with_a_recovery_record_once_freed(
) {
    assert!(
        Command::new("id")
            .arg("-u")
            .output()
            .map(|o| o.stdout == b"0\n")
            .unwrap_or(false),
        "this test mounts a small tmpfs and needs root (CI runs as root)"
    );
    struct Unmount(std::path::PathBuf);
    impl Drop for Unmount {
        fn drop(&mut self) {
            let _ = Command::new("umount").arg("-l").arg(&self.0).status();
        }
    }
    let pki = OriginPki::new();
    let origin = Origin::start_tls(&pki).await;
    let dir = tempfile::tempdir().unwrap();
    let mnt = dir.path().join("ledger-fs");
    std::fs::create_dir(&mnt).unwrap();
    let ok = Command::new("mount")
        .args(["-t", "tmpfs", "-o", "size=4m", "tmpfs"])
        .arg(&mnt)
        .status()
        .unwrap();
    assert!(ok.success(), "mount tmpfs failed");
    let _unmount = Unmount(mnt.clone());
    let mut cfg = proxy_config(origin.addr, &pki, &dir.path().join("ca"), DEFAULT_ROUTES);
    cfg.push_str(&format!(
        "\n[ledger]\ndir = \"{}\"\ncheckpoint_interval = \"1h\"\nmin_free_bytes = 65536\n",
        mnt.join("ledger").display()
    ));
    let proxy = TestProxy::start(&cfg, dir).await;
    let ok = proxy.h1_request("api.openai.com:443", CHAT).await;
    assert_eq!(ok.status, 200);
    // Fill the filesystem.
    let filler = mnt.join("filler");
    let _ = std::fs::write(&filler, vec![0u8; 8 * 1024 * 1024]);
    // The next record that cannot be written refuses its request: the
    // CONNECT itself, or a request inside an open tunnel.
    let mut tls = proxy
        .tunnel_tls("api.openai.com:443", "api.openai.com", &[b"http/1.1"])
        .await;
    let mut refused = None;
    for _ in 0..20 {
        tls.write_all(CHAT.as_bytes()).await.unwrap();
        let r = read_response_keep_open(&mut tls).await;
        if r.status == 503 {
            refused = Some(r);
            break;
        }
        assert_eq!(r.status, 200);
    }
    let r = refused.expect("the proxy kept forwarding with a full ledger");
    assert_eq!(r.error_code(), "ledger_unavailable");
    // Readiness says so, and why.
    let ready = proxy.admin("GET", "/readyz", Some(ADMIN_TOKEN)).await;
    assert_eq!(ready.status, 503);
    assert_eq!(ready.json()["ready"], false);
    assert!(
        ready.json()["failing"][0]
            .as_str()
            .unwrap()
            .starts_with("ledger"),
        "{}",
        ready.json()
    );
    let seen_at_failure = origin.seen().len();
    // While it is full, it stays failed (past the writer's retries): nothing
    // more is forwarded.
    tokio::time::sleep(Duration::from_millis(2500)).await;
    for _ in 0..3 {
        let err = proxy
            .connect("api.openai.com:443", Some((AGENT, TOKEN)))
            .await
            .unwrap_err();
        assert!(err.starts_with("HTTP/1.1 503"), "{err}");
        assert!(err.contains("ledger_unavailable"), "{err}");
    }
    let err = proxy
        .connect("api.anthropic.com:443", Some((AGENT, TOKEN)))
        .await;
    assert!(
        err.is_err_and(|e| e.contains("503")),
        "a CONNECT is refused too"
    );
    assert_eq!(origin.seen().len(), seen_at_failure);

    // Room again: within a few seconds the ledger writes its recovery record
    // and requests flow, without a restart.
    std::fs::remove_file(&filler).unwrap();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        let ready = proxy.admin("GET", "/readyz", Some(ADMIN_TOKEN)).await;
        if ready.status == 200 {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "the ledger did not resume: {}",
            ready.json()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let ok = proxy.h1_request("api.openai.com:443", CHAT).await;
    assert_eq!(ok.status, 200);
    assert_eq!(origin.seen().len(), seen_at_failure + 1);
    let resumed_id = ok.header("x-portcullis-event-id").unwrap();
    let ledger_dir = proxy.ledger_dir.clone();
    let _dir = proxy.shutdown().await;
    assert_intact(&ledger_dir);
    let records = ledger_records(&ledger_dir);
    let recovery: Vec<_> = records
        .iter()
        .filter(|r| r["kind"] == "recovery" && r["reason"] == "disk_full")
        .collect();
    assert_eq!(recovery.len(), 1, "{records:?}");
    let r = recovery[0];
    // At least the five refusals above (the CONNECTs and the request in the
    // tunnel) found no room.
    assert!(r["refused"].as_u64().unwrap() >= 5, "{r}");
    assert!(r["down_since"].as_str().unwrap() <= r["ts"].as_str().unwrap());
    // The request after it is recorded after it, on the same chain.
    let seq_of = |id: &str| {
        records
            .iter()
            .find(|x| x["kind"] == "decision" && x["event_id"] == id)
            .and_then(|x| x["seq"].as_u64())
            .unwrap()
    };
    assert!(seq_of(&resumed_id) > r["seq"].as_u64().unwrap());
}

/// kill -9 under load, restart: the ledger verifies, and every request the
/// origin saw has a decision record.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_under_load_then_restart_leaves_a_verifiable_ledger_covering_every_forwarded_request(
) {
    let pki = OriginPki::new();
    let origin = Origin::start_tls(&pki).await;
    let dir = tempfile::tempdir().unwrap();
    let cfg = proxy_config(origin.addr, &pki, &dir.path().join("ca"), DEFAULT_ROUTES);
    let cfg_path = dir.path().join("portcullis.toml");
    std::fs::write(&cfg_path, cfg).unwrap();
    let proxy = ProxyProcess::start(&cfg_path, dir.path());
    let roots = roots_from_pem(&dir.path().join("ca/ca.pem"));
    let addr = proxy.addr;
    let mut load = Vec::new();
    for _ in 0..8 {
        let roots = roots.clone();
        load.push(tokio::spawn(async move {
            let mut ok = 0u32;
            let Ok(mut s) = TcpStream::connect(addr).await else {
                return ok;
            };
            let req = format!(
                "CONNECT api.openai.com:443 HTTP/1.1\r\nProxy-Authorization: Basic {}\r\n\r\n",
                basic(AGENT, TOKEN)
            );
            if s.write_all(req.as_bytes()).await.is_err()
                || !read_head(&mut s).await.starts_with("HTTP/1.1 200")
            {
                return ok;
            }
            let Ok(mut tls) = tls_client(s, &roots, "api.openai.com", &[b"http/1.1"]).await else {
                return ok;
            };
            loop {
                if tls.write_all(CHAT.as_bytes()).await.is_err() {
                    return ok;
                }
                let r = read_response_keep_open(&mut tls).await;
                if r.status != 200 {
                    return ok;
                }
                ok += 1;
            }
        }));
    }
    // Let load build up, then crash the proxy hard.
    while origin.seen().len() < 200 {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let pid = proxy.child.id();
    assert!(Command::new("kill")
        .args(["-KILL", &pid.to_string()])
        .status()
        .unwrap()
        .success());
    let mut completed = 0;
    for l in load {
        completed += l.await.unwrap();
    }
    drop(proxy);
    assert!(completed > 0);

    // Restart on the same directories (recovery runs if the tail was torn), then stop cleanly.
    let proxy = ProxyProcess::start(&cfg_path, dir.path());
    let status = proxy.terminate();
    assert!(status.success(), "{status:?}");

    let ledger_dir = dir.path().join(".portcullis/ledger");
    let out = Command::new(portcullis_bin())
        .args(["ledger", "verify"])
        .arg(&ledger_dir)
        .output()
        .unwrap();
    assert_eq!(
        out.status.code(),
        Some(0),
        "ledger verify after a crash:\n{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    let records = ledger_records(&ledger_dir);
    let allowed_chats = records
        .iter()
        .filter(|r| {
            r["kind"] == "decision"
                && r["decision"] == "allow"
                && r["path_template"] == "/v1/chat/completions"
        })
        .count();
    let seen = origin.seen().len();
    assert!(seen >= 200);
    assert!(
        allowed_chats >= seen,
        "origin saw {seen} requests but the ledger has only {allowed_chats} allow decisions for them"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ledger_verify_cli_accepts_a_real_ledger_and_names_an_edited_record() {
    let (proxy, _origin, _pki) = TestProxy::with_origin(DEFAULT_ROUTES).await;
    for _ in 0..3 {
        assert_eq!(
            proxy.h1_request("api.openai.com:443", CHAT).await.status,
            200
        );
    }
    let dir = proxy.ledger_dir.clone();
    let ca_dir = proxy.dir.path().join("ca");
    let _dir = proxy.shutdown().await;
    let key = ca_dir.join("ledger-signing.key");
    let pubkey = Command::new(portcullis_bin())
        .args(["ledger", "pubkey", "--key"])
        .arg(&key)
        .output()
        .unwrap();
    assert!(pubkey.status.success());
    let pub_path = ca_dir.join("ledger.pub");
    std::fs::write(&pub_path, &pubkey.stdout).unwrap();
    let run = |extra: &[&str]| {
        Command::new(portcullis_bin())
            .args(["ledger", "verify"])
            .arg(&dir)
            .arg("--pubkey")
            .arg(&pub_path)
            .args(extra)
            .output()
            .unwrap()
    };
    let ok = run(&["--strict"]);
    assert_eq!(
        ok.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&ok.stderr)
    );

    // Edit one field of one decision record (the sealed segments are read-only).
    let seg = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .find(|p| {
            std::fs::read_to_string(p)
                .unwrap_or_default()
                .contains("\"decision\":\"allow\"")
        })
        .unwrap();
    let mut perms = std::fs::metadata(&seg).unwrap().permissions();
    #[allow(clippy::permissions_set_readonly_false)]
    perms.set_readonly(false);
    std::fs::set_permissions(&seg, perms).unwrap();
    let text = std::fs::read_to_string(&seg).unwrap();
    std::fs::write(
        &seg,
        text.replacen("\"decision\":\"allow\"", "\"decision\":\"deny\"", 1),
    )
    .unwrap();
    let bad = run(&[]);
    assert_eq!(bad.status.code(), Some(1));
    let err = String::from_utf8_lossy(&bad.stderr);
    assert!(
        err.contains(seg.file_name().unwrap().to_str().unwrap()),
        "names the file: {err}"
    );

    let missing = Command::new(portcullis_bin())
        .args(["ledger", "verify", "/nonexistent/ledger"])
        .output()
        .unwrap();
    assert_eq!(missing.status.code(), Some(2));
}

/// Secrets never reach the logs or the ledger: the agent's proxy token, its
/// Basic credentials, the provider key it sends, and the prompt.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn secrets_never_reach_logs_or_ledger_even_at_trace_level() {
    let pki = OriginPki::new();
    let origin = Origin::start_tls(&pki).await;
    let dir = tempfile::tempdir().unwrap();
    let cfg = proxy_config(origin.addr, &pki, &dir.path().join("ca"), DEFAULT_ROUTES);
    let cfg_path = dir.path().join("portcullis.toml");
    std::fs::write(&cfg_path, cfg).unwrap();
    let log_path = dir.path().join("stderr.log");
    let log = std::fs::File::create(&log_path).unwrap();
    let proxy = ProxyProcess::start_logging(&cfg_path, dir.path(), "trace", log.into());
    let roots = roots_from_pem(&dir.path().join("ca/ca.pem"));
    let provider_key = "sk-proj-SECRETPROVIDERKEY0123456789abcdef";
    let prompt = "the launch codes are purple-elephant-42";
    let body = format!("{{\"model\":\"gpt-4o-mini\",\"messages\":[{{\"role\":\"user\",\"content\":\"{prompt}\"}}]}}");
    let mut s = TcpStream::connect(proxy.addr).await.unwrap();
    s.write_all(
        format!(
            "CONNECT api.openai.com:443 HTTP/1.1\r\nProxy-Authorization: Basic {}\r\n\r\n",
            basic(AGENT, TOKEN)
        )
        .as_bytes(),
    )
    .await
    .unwrap();
    assert!(read_head(&mut s).await.starts_with("HTTP/1.1 200"));
    let mut tls = tls_client(s, &roots, "api.openai.com", &[b"http/1.1"])
        .await
        .unwrap();
    let req = format!(
        "POST /v1/chat/completions HTTP/1.1\r\nHost: api.openai.com\r\nAuthorization: Bearer {provider_key}\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    );
    tls.write_all(req.as_bytes()).await.unwrap();
    assert_eq!(read_response(&mut tls).await.status, 200);
    // A wrong token is refused; it must not be echoed anywhere either.
    let wrong = "wrong-token-should-not-be-logged";
    let mut s = TcpStream::connect(proxy.addr).await.unwrap();
    s.write_all(
        format!(
            "CONNECT api.openai.com:443 HTTP/1.1\r\nProxy-Authorization: Basic {}\r\n\r\n",
            basic(AGENT, wrong)
        )
        .as_bytes(),
    )
    .await
    .unwrap();
    assert_eq!(read_response(&mut s).await.status, 407);
    drop(tls);
    assert!(proxy.terminate().success());
    assert_eq!(origin.seen().len(), 1);

    let logs = std::fs::read_to_string(&log_path).unwrap();
    assert!(
        logs.contains("portcullis::decision"),
        "the trace log was captured"
    );
    let ledger: String = std::fs::read_dir(dir.path().join(".portcullis/ledger"))
        .unwrap()
        .map(|e| std::fs::read_to_string(e.unwrap().path()).unwrap_or_default())
        .collect();
    for secret in [
        TOKEN,
        basic(AGENT, TOKEN).as_str(),
        provider_key,
        prompt,
        wrong,
        basic(AGENT, wrong).as_str(),
    ] {
        assert!(!logs.contains(secret), "the logs contain {secret:?}");
        assert!(!ledger.contains(secret), "the ledger contains {secret:?}");
    }
}
