//! Start-up and reload: the vault and the CA key, and an invalid policy reloaded.

use super::*;

// ---------------------------------------------------------------------------
// Start-up: the vault and the CA key
// ---------------------------------------------------------------------------

#[test]
fn a_vault_without_its_master_key_or_with_a_wrong_one_stops_portcullis_run_with_exit_1_before_it_listens(
) {
    let pki = OriginPki::new();
    let dir = tempfile::tempdir().unwrap();
    let vault_path = dir.path().join("vault.json");
    let master = MasterKey::generate();
    let mut vault = Vault::create(&vault_path, &master).unwrap();
    vault
        .put(
            "acme",
            "openai",
            "default",
            Secret::api_key(b"sk-proj-FAILCLOSEDfailclosed0123456789abcdef".to_vec()),
        )
        .unwrap();
    drop(vault);
    let routes = r#"
[[routes]]
id = "acme-openai-keyed"
action = "allow"
tenants = ["acme"]
hosts = ["api.openai.com"]
inject_key = "openai"

[vault]
path = "vault.json"
"#;
    let unused_origin = "127.0.0.1:1".parse().unwrap();
    let cfg_path = dir.path().join("portcullis.toml");
    std::fs::write(
        &cfg_path,
        proxy_config(unused_origin, &pki, &dir.path().join("ca"), routes),
    )
    .unwrap();
    let ledger_dir = dir.path().join(".portcullis/ledger");

    // Locked: no master key at all.
    let (code, out, err) = run_expecting_exit(&cfg_path, &[]);
    assert_eq!(code, Some(1), "{err}");
    assert!(err.contains("vault: no vault master key"), "{err}");
    assert!(!out.contains("# ready"), "{out}");
    // The wrong key.
    let wrong = MasterKey::generate().to_base64().as_str().to_owned();
    let (code, out, err) = run_expecting_exit(&cfg_path, &[("PORTCULLIS_MASTER_KEY", &wrong)]);
    assert_eq!(code, Some(1), "{err}");
    assert!(
        err.contains("failed its integrity check: wrong master key or tampered file"),
        "{err}"
    );
    assert!(!out.contains("# ready"), "{out}");
    // The vault is opened before the ledger: nothing was recorded, nothing listened.
    assert!(!ledger_dir.exists());

    // The right key starts it: the refusals above were the vault's.
    let right = master.to_base64().as_str().to_owned();
    let running = ProxyProcess::start_with_env(
        &cfg_path,
        dir.path(),
        "warn",
        Stdio::null(),
        &[("PORTCULLIS_MASTER_KEY", &right)],
    );
    assert!(running.terminate().success());

    // A tampered file with the right key: refused the same way.
    let mut file: Value = serde_json::from_slice(&std::fs::read(&vault_path).unwrap()).unwrap();
    file["entries"][0]["active"] = Value::Bool(false);
    std::fs::write(&vault_path, serde_json::to_vec_pretty(&file).unwrap()).unwrap();
    let (code, out, err) = run_expecting_exit(&cfg_path, &[("PORTCULLIS_MASTER_KEY", &right)]);
    assert_eq!(code, Some(1), "{err}");
    assert!(err.contains("failed its integrity check"), "{err}");
    assert!(!out.contains("# ready"), "{out}");
}

#[test]
fn an_unreadable_or_unusable_ca_key_stops_portcullis_run_with_exit_1_naming_the_file() {
    use std::os::unix::fs::PermissionsExt;
    let pki = OriginPki::new();
    let dir = tempfile::tempdir().unwrap();
    let ca_dir = dir.path().join("ca");
    CertificateAuthority::init(&ca_dir).unwrap();
    let key = CertificateAuthority::key_path(&ca_dir);
    let cert = CertificateAuthority::cert_path(&ca_dir);
    let (key_pem, cert_pem) = (std::fs::read(&key).unwrap(), std::fs::read(&cert).unwrap());
    let cfg_path = dir.path().join("portcullis.toml");
    let unused_origin = "127.0.0.1:1".parse().unwrap();
    std::fs::write(
        &cfg_path,
        proxy_config(unused_origin, &pki, &ca_dir, DEFAULT_ROUTES),
    )
    .unwrap();
    let key_name = key.display().to_string();
    let refused = |why: &str| {
        let (code, out, err) = run_expecting_exit(&cfg_path, &[]);
        assert_eq!(code, Some(1), "{why}: {err}");
        assert!(err.contains("error: CA: "), "{why}: {err}");
        assert!(
            err.contains(&key_name),
            "{why}: the error names the key: {err}"
        );
        assert!(!out.contains("# ready"), "{why}: {out}");
        err
    };

    // A directory where the key should be: it opens, but cannot be read (as
    // root, a chmod 000 file would still be read).
    std::fs::remove_file(&key).unwrap();
    std::fs::create_dir(&key).unwrap();
    std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o700)).unwrap();
    refused("a directory");
    std::fs::remove_dir(&key).unwrap();
    // A file that is not a key.
    std::fs::write(
        &key,
        b"-----BEGIN PRIVATE KEY-----\nbm90IGEga2V5\n-----END PRIVATE KEY-----\n",
    )
    .unwrap();
    std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o600)).unwrap();
    let err = refused("garbage");
    assert!(err.contains("not a usable PKCS#8 private key"), "{err}");
    // The real key, readable by others.
    std::fs::write(&key, &key_pem).unwrap();
    std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o644)).unwrap();
    let err = refused("mode 0644");
    assert!(err.contains("readable by group or others"), "{err}");
    // No key at all: no new CA is minted behind the agents' backs.
    std::fs::remove_file(&key).unwrap();
    let err = refused("missing");
    assert!(err.contains("incomplete CA"), "{err}");
    assert!(!key.exists());
    assert_eq!(std::fs::read(&cert).unwrap(), cert_pem);
    // The CA is loaded before the ledger is opened.
    assert!(!dir.path().join(".portcullis/ledger").exists());
}

// ---------------------------------------------------------------------------
// Policy reload
// ---------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_invalid_reload_answers_422_keeps_the_policy_in_force_and_records_no_new_generation() {
    let (proxy, origin, _pki) = TestProxy::with_origin(DEFAULT_ROUTES).await;
    let path = proxy.dir.path().join("portcullis.toml");
    let good = std::fs::read_to_string(&path).unwrap();
    std::fs::write(
        &path,
        format!("{good}\n[[routes]]\nid = \"broken\"\nhosts = [\"a..b\"]\naction = \"maybe\"\n"),
    )
    .unwrap();
    let r = proxy.admin("POST", "/v1/reload", Some(ADMIN_TOKEN)).await;
    assert_eq!(r.status, 422, "{}", String::from_utf8_lossy(&r.body));
    let errors = r.json()["errors"].as_array().unwrap().clone();
    assert!(errors.len() >= 2, "every error at once: {errors:?}");
    for e in &errors {
        assert!(
            e.as_str().unwrap().contains("portcullis.toml:"),
            "file:line:col: {e}"
        );
    }

    // The policy in force is untouched: allowed stays allowed, denied stays denied.
    let ok = proxy.h1_request("api.openai.com:443", CHAT).await;
    assert_eq!(ok.status, 200);
    assert_eq!(decision_of(&proxy, &ok).await["policy_generation"], 1);
    let denied = proxy
        .h1_request(
            "api.openai.com:443",
            "GET /v1/models HTTP/1.1\r\nHost: api.openai.com\r\n\r\n",
        )
        .await;
    assert_eq!(denied.status, 403);
    assert_eq!(denied.error_code(), "path_not_allowed");
    assert_eq!(origin.seen().len(), 1);
    let (status, ready) = readyz(&proxy).await;
    assert_eq!(status, 200, "{ready}");
    assert_eq!(ready["checks"]["policy"]["generation"], 1);
    let policy = proxy.admin("GET", "/v1/policy", Some(ADMIN_TOKEN)).await;
    assert_eq!(policy.json()["generation"], 1);
    assert!(
        metric(
            &proxy,
            "portcullis_config_reloads_total{result=\"invalid\"}"
        )
        .await
            >= 1.0,
        "the failed reload is counted"
    );
    // Only the start-up generation is in the ledger.
    let configs: Vec<Value> = ledger_records(&proxy.ledger_dir)
        .into_iter()
        .filter(|r| r["kind"] == "config")
        .collect();
    assert_eq!(configs.len(), 1, "{configs:?}");
    assert_eq!(configs[0]["source"], "startup");
    proxy.shutdown().await;
}
