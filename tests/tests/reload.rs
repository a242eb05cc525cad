//! Policy hot reload: SIGHUP and file changes swap the policy atomically, an
//! invalid file keeps the old one, every generation is in the ledger, and new
//! requests on old keep-alive connections use the new policy.
#![allow(clippy::unwrap_used)]

use std::process::Command;
use std::time::Duration;

use portcullis_tests::*;
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;

const MODELS: &str = "GET /v1/models HTTP/1.1\r\nHost: api.openai.com\r\n\r\n";

const WIDER: &str = r#"
[[routes]]
id = "acme-openai-all"
action = "allow"
tenants = ["acme"]
hosts = ["api.openai.com"]
"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn file_change_reloads_policy_for_new_requests_on_old_connections() {
    let (proxy, origin, _pki) = TestProxy::with_origin(DEFAULT_ROUTES).await;
    let cfg_path = proxy.dir.path().join("portcullis.toml");
    let original = std::fs::read_to_string(&cfg_path).unwrap();
    let mut tls = proxy
        .tunnel_tls("api.openai.com:443", "api.openai.com", &[b"http/1.1"])
        .await;
    tls.write_all(MODELS.as_bytes()).await.unwrap();
    let before = read_response_keep_open(&mut tls).await;
    assert_eq!(before.status, 403);

    // An invalid file keeps the old policy.
    std::fs::write(
        &cfg_path,
        format!(
            "{original}\n[[routes]]\nid = \"broken\"\nhosts = [\"a..b\"]\naction = \"allow\"\n"
        ),
    )
    .unwrap();
    // Keep the connection busy (the idle timeout is 2 s) while the watcher,
    // which polls every second, sees and rejects the file.
    for _ in 0..6 {
        tokio::time::sleep(Duration::from_millis(400)).await;
        tls.write_all(MODELS.as_bytes()).await.unwrap();
        assert_eq!(read_response_keep_open(&mut tls).await.status, 403);
    }
    assert_eq!(proxy.proxy.as_ref().unwrap().policy_generation(), 1);

    // A valid change applies to the next request on the same connection.
    std::fs::write(
        &cfg_path,
        original.replace(
            "[[routes]]\nid = \"acme-openai\"",
            &format!("{WIDER}\n[[routes]]\nid = \"acme-openai\""),
        ),
    )
    .unwrap();
    let mut status = 0;
    for _ in 0..50 {
        tokio::time::sleep(Duration::from_millis(200)).await;
        tls.write_all(MODELS.as_bytes()).await.unwrap();
        status = read_response_keep_open(&mut tls).await.status;
        if status == 200 {
            break;
        }
        assert_eq!(status, 403);
    }
    assert_eq!(status, 200, "the reloaded policy was not applied");
    assert_eq!(origin.seen().len(), 1);
    drop(tls);
    let dir = proxy.ledger_dir.clone();
    let _keep = proxy.shutdown().await;
    let configs: Vec<_> = ledger_records(&dir)
        .into_iter()
        .filter(|r| r["kind"] == "config")
        .collect();
    assert_eq!(configs.len(), 2, "{configs:?}");
    assert_eq!(configs[1]["policy_generation"], 2);
    assert_eq!(configs[1]["source"], "file_watch");
    assert_ne!(configs[0]["policy_hash"], configs[1]["policy_hash"]);
    let decisions: Vec<_> = ledger_records(&dir)
        .into_iter()
        .filter(|r| r["kind"] == "decision" && r["method"] == "GET")
        .collect();
    assert_eq!(decisions.last().unwrap()["policy_generation"], 2);
    assert_eq!(decisions.first().unwrap()["policy_generation"], 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sighup_reloads_the_policy_of_a_running_process() {
    let pki = OriginPki::new();
    let origin = Origin::start_tls(&pki).await;
    let dir = tempfile::tempdir().unwrap();
    let cfg = proxy_config(origin.addr, &pki, &dir.path().join("ca"), DEFAULT_ROUTES);
    let cfg_path = dir.path().join("portcullis.toml");
    std::fs::write(&cfg_path, &cfg).unwrap();
    let proxy = ProxyProcess::start(&cfg_path, dir.path());
    let roots = roots_from_pem(&dir.path().join("ca/ca.pem"));
    let models = |addr| {
        let roots = roots.clone();
        async move {
            let mut s = TcpStream::connect(addr).await.unwrap();
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
            tls.write_all(MODELS.as_bytes()).await.unwrap();
            read_response(&mut tls).await.status
        }
    };
    assert_eq!(models(proxy.addr).await, 403);
    // Write the new file with the same mtime second as far as possible, then
    // signal at once: SIGHUP must not depend on the file watcher.
    std::fs::write(
        &cfg_path,
        cfg.replace(
            "[[routes]]\nid = \"acme-openai\"",
            &format!("{WIDER}\n[[routes]]\nid = \"acme-openai\""),
        ),
    )
    .unwrap();
    assert!(Command::new("kill")
        .args(["-HUP", &proxy.child.id().to_string()])
        .status()
        .unwrap()
        .success());
    let mut status = 0;
    for _ in 0..50 {
        tokio::time::sleep(Duration::from_millis(100)).await;
        status = models(proxy.addr).await;
        if status == 200 {
            break;
        }
    }
    assert_eq!(status, 200);
    assert!(proxy.terminate().success());
    let records = ledger_records(&dir.path().join(".portcullis/ledger"));
    let sources: Vec<_> = records
        .iter()
        .filter(|r| r["kind"] == "config")
        .map(|r| r["source"].as_str().unwrap_or("").to_owned())
        .collect();
    assert_eq!(sources[0], "startup");
    assert!(
        sources[1] == "sighup" || sources[1] == "file_watch",
        "{sources:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn in_flight_stream_finishes_under_the_generation_it_started_with() {
    use tokio::io::AsyncReadExt;
    let (proxy, origin, _pki) = TestProxy::with_origin(DEFAULT_ROUTES).await;
    let cfg_path = proxy.dir.path().join("portcullis.toml");
    let original = std::fs::read_to_string(&cfg_path).unwrap();
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
    // Reload while the stream is open.
    std::fs::write(
        &cfg_path,
        original.replace(
            "[[routes]]\nid = \"acme-openai\"",
            &format!("{WIDER}\n[[routes]]\nid = \"acme-openai\""),
        ),
    )
    .unwrap();
    for _ in 0..50 {
        if proxy.proxy.as_ref().unwrap().policy_generation() == 2 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(proxy.proxy.as_ref().unwrap().policy_generation(), 2);
    origin.gate.add_permits(10);
    let mut seen = String::new();
    let mut buf = [0u8; 1024];
    while !seen.contains("event-4") {
        let n = tokio::time::timeout(Duration::from_secs(10), tls.read(&mut buf))
            .await
            .unwrap()
            .unwrap();
        assert!(n > 0);
        seen.push_str(&String::from_utf8_lossy(&buf[..n]));
    }
    drop(tls);
    let dir = proxy.ledger_dir.clone();
    let _keep = proxy.shutdown().await;
    let records = ledger_records(&dir);
    let outcome = records
        .iter()
        .find(|r| r["kind"] == "outcome" && r["event_id"] == id.as_str())
        .unwrap();
    assert_eq!(outcome["policy_generation"], 1, "{outcome}");
    assert!(records
        .iter()
        .any(|r| r["kind"] == "config" && r["policy_generation"] == 2));
}
