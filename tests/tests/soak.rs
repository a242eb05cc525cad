//! Soak under faults, bounded to about a minute: real clients (the openai
//! Python SDK, an h2 client on one long connection, h1 clients on a fresh
//! tunnel each) send continuously through a `portcullis run` process while
//! the origin resets, stalls and answers 5xx, and the policy is reloaded
//! every second with SIGHUP. At the end: no panic, RSS flat after warm-up,
//! a decision (allow) and an outcome record for every request the origin
//! saw, and `portcullis ledger verify` passes.
#![allow(clippy::unwrap_used)]

use std::collections::{HashMap, HashSet};
use std::convert::Infallible;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use portcullis_tests::*;
use tokio::io::AsyncWriteExt;
use tokio::net::{TcpListener, TcpStream};
use tokio_rustls::TlsAcceptor;

/// Traffic time after warm-up, and the warm-up itself.
const WARM_UP: Duration = Duration::from_secs(10);
const TRAFFIC: Duration = Duration::from_secs(40);

const ROUTES: &str = r#"
[[routes]]
id = "acme-openai"
action = "allow"
tenants = ["acme"]
hosts = ["api.openai.com"]
detectors = { injection = "block" }

[[routes]]
id = "globex-anthropic"
action = "allow"
tenants = ["globex"]
hosts = ["api.anthropic.com"]
"#;

/// Toggled in and out of the config on every reload.
const TOGGLE: &str = r#"
[[routes]]
id = "soak-toggle"
action = "allow"
tenants = ["globex"]
hosts = ["api.openai.com"]
"#;

type Body = http_body_util::combinators::BoxBody<Bytes, Infallible>;

/// The origin: request ids it saw, and a fault schedule by arrival order.
#[derive(Default)]
struct Faults {
    n: AtomicUsize,
    seen: Mutex<Vec<String>>,
}

async fn faulty(
    req: hyper::Request<hyper::body::Incoming>,
    f: Arc<Faults>,
) -> Result<hyper::Response<Body>, std::io::Error> {
    let rid = req
        .headers()
        .get("x-request-id")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("none")
        .to_owned();
    let body = req
        .into_body()
        .collect()
        .await
        .map(|b| b.to_bytes())
        .unwrap_or_default();
    f.seen.lock().unwrap().push(rid);
    let stream = serde_json::from_slice::<serde_json::Value>(&body)
        .ok()
        .and_then(|v| v["stream"].as_bool())
        .unwrap_or(false);
    let json = |status: u16, v: serde_json::Value| {
        Ok(hyper::Response::builder()
            .status(status)
            .header("content-type", "application/json")
            .body(Full::new(Bytes::from(v.to_string())).boxed())
            .unwrap())
    };
    match f.n.fetch_add(1, Ordering::SeqCst) % 20 {
        3 => json(
            500,
            serde_json::json!({"error": {"message": "boom", "type": "server_error"}}),
        ),
        8 => json(
            503,
            serde_json::json!({"error": {"message": "overloaded", "type": "server_error"}}),
        ),
        // Past the proxy's response_header_timeout (2 s): a 504.
        12 => {
            tokio::time::sleep(Duration::from_secs(3)).await;
            json(200, serde_json::json!({}))
        }
        // The connection (h1) or stream (h2) is torn down: a 502.
        16 => Err(std::io::Error::new(
            std::io::ErrorKind::ConnectionReset,
            "fault: reset",
        )),
        _ if stream => {
            let mut sse = String::new();
            for word in ["Hello", " from", " the", " origin"] {
                let chunk = serde_json::json!({"id": "c1", "object": "chat.completion.chunk", "created": 1, "model": "gpt-4o-mini",
                    "choices": [{"index": 0, "delta": {"content": word}, "finish_reason": null}]});
                sse.push_str(&format!("data: {chunk}\n\n"));
            }
            sse.push_str("data: [DONE]\n\n");
            Ok(hyper::Response::builder()
                .header("content-type", "text/event-stream")
                .body(Full::new(Bytes::from(sse)).boxed())
                .unwrap())
        }
        _ => json(
            200,
            serde_json::json!({"id": "c1", "object": "chat.completion", "created": 1, "model": "gpt-4o-mini",
                "choices": [{"index": 0, "message": {"role": "assistant", "content": "Hello"}, "finish_reason": "stop"}],
                "usage": {"prompt_tokens": 3, "completion_tokens": 1, "total_tokens": 4}}),
        ),
    }
}

async fn start_origin(
    pki: &OriginPki,
    faults: Arc<Faults>,
) -> (SocketAddr, tokio::task::JoinHandle<()>) {
    let tls = pki.server_config(&[b"h2", b"http/1.1"]);
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let task = tokio::spawn(async move {
        while let Ok((tcp, _)) = listener.accept().await {
            let (tls, faults) = (tls.clone(), faults.clone());
            tokio::spawn(async move {
                let Ok(stream) = TlsAcceptor::from(tls).accept(tcp).await else {
                    return;
                };
                let svc = service_fn(move |req| faulty(req, faults.clone()));
                if stream.get_ref().1.alpn_protocol() == Some(b"h2") {
                    let _ = hyper::server::conn::http2::Builder::new(TokioExecutor::new())
                        .serve_connection(TokioIo::new(stream), svc)
                        .await;
                } else {
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(stream), svc)
                        .await;
                }
            });
        }
    });
    (addr, task)
}

async fn tunnel(
    proxy: SocketAddr,
    roots: &rustls::RootCertStore,
    host: &str,
    who: (&str, &str),
    alpn: &[&[u8]],
) -> Option<tokio_rustls::client::TlsStream<TcpStream>> {
    let mut s = TcpStream::connect(proxy).await.ok()?;
    let connect = format!(
        "CONNECT {host}:443 HTTP/1.1\r\nHost: {host}:443\r\nProxy-Authorization: Basic {}\r\n\r\n",
        basic(who.0, who.1)
    );
    s.write_all(connect.as_bytes()).await.ok()?;
    if !read_head(&mut s).await.starts_with("HTTP/1.1 200") {
        return None;
    }
    tls_client(s, roots, host, alpn).await.ok()
}

/// What the clients learned: request id -> the event id the proxy answered with.
type Answers = Arc<Mutex<HashMap<String, String>>>;

const CHAT: &str = r#"{"model":"gpt-4o-mini","messages":[{"role":"user","content":"hi"}]}"#;

/// One h2 connection, reused until it fails, then another.
async fn h2_client(
    proxy: SocketAddr,
    roots: rustls::RootCertStore,
    stop: Arc<AtomicBool>,
    answers: Answers,
) {
    let mut i = 0usize;
    while !stop.load(Ordering::SeqCst) {
        let Some(tls) = tunnel(proxy, &roots, "api.openai.com", (AGENT, TOKEN), &[b"h2"]).await
        else {
            tokio::time::sleep(Duration::from_millis(100)).await;
            continue;
        };
        let Ok((mut send, conn)) =
            hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(tls)).await
        else {
            continue;
        };
        tokio::spawn(conn);
        while !stop.load(Ordering::SeqCst) {
            i += 1;
            let rid = format!("h2-{i}");
            let req = hyper::Request::builder()
                .method("POST")
                .uri("https://api.openai.com/v1/chat/completions")
                .header("content-type", "application/json")
                .header("x-request-id", rid.as_str())
                .body(Full::new(Bytes::from_static(CHAT.as_bytes())))
                .unwrap();
            let Ok(resp) =
                tokio::time::timeout(Duration::from_secs(30), send.send_request(req)).await
            else {
                break;
            };
            let Ok(resp) = resp else { break };
            if let Some(ev) = resp
                .headers()
                .get("x-portcullis-event-id")
                .and_then(|v| v.to_str().ok())
            {
                answers.lock().unwrap().insert(rid, ev.to_owned());
            }
            let _ = resp.into_body().collect().await;
        }
    }
}

/// A fresh tunnel per request, as the other tenant.
async fn h1_client(
    proxy: SocketAddr,
    roots: rustls::RootCertStore,
    stop: Arc<AtomicBool>,
    answers: Answers,
    tag: usize,
) {
    let mut i = 0usize;
    while !stop.load(Ordering::SeqCst) {
        i += 1;
        let rid = format!("h1-{tag}-{i}");
        let Some(mut tls) = tunnel(
            proxy,
            &roots,
            "api.anthropic.com",
            (OTHER_AGENT, OTHER_TOKEN),
            &[b"http/1.1"],
        )
        .await
        else {
            tokio::time::sleep(Duration::from_millis(100)).await;
            continue;
        };
        let body = r#"{"model":"claude-3-5-haiku-latest","max_tokens":5,"messages":[{"role":"user","content":"hi"}]}"#;
        let raw = format!(
            "POST /v1/messages HTTP/1.1\r\nHost: api.anthropic.com\r\ncontent-type: application/json\r\nx-request-id: {rid}\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
            body.len()
        );
        if tls.write_all(raw.as_bytes()).await.is_err() {
            continue;
        }
        let resp = read_response_keep_open(&mut tls).await;
        if let Some(ev) = resp.header("x-portcullis-event-id") {
            answers.lock().unwrap().insert(rid, ev);
        }
    }
}

const PY: &str = r#"
import sys, time, openai
c = openai.OpenAI(api_key="sk-dummy-not-real", max_retries=0, timeout=30)
deadline = time.time() + float(sys.argv[1])
i = 0
while time.time() < deadline:
    i += 1
    rid = "py-%d" % i
    stream = i % 2 == 0
    try:
        raw = c.chat.completions.with_raw_response.create(model="gpt-4o-mini", messages=[{"role": "user", "content": "hi"}],
            stream=stream, extra_headers={"x-request-id": rid})
        ev = raw.headers.get("x-portcullis-event-id", "-")
        r = raw.parse()
        if stream:
            for _ in r:
                pass
        print("RID", rid, ev, raw.status_code, flush=True)
    except openai.APIStatusError as e:
        print("RID", rid, e.response.headers.get("x-portcullis-event-id", "-"), e.status_code, flush=True)
    except Exception as e:
        print("RID", rid, "-", "error:" + type(e).__name__, flush=True)
"#;

fn vm_rss_kib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap()
}

fn write_config(path: &Path, base: &str, toggle: bool) {
    let text = if toggle {
        format!("{base}\n{TOGGLE}")
    } else {
        base.to_owned()
    };
    std::fs::write(path, text).unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_minute_of_real_clients_under_origin_faults_and_reloads_leaves_a_whole_ledger() {
    let python = sdk_python();
    let pki = OriginPki::new();
    let faults = Arc::new(Faults::default());
    let (origin_addr, origin_task) = start_origin(&pki, faults.clone()).await;
    let dir = tempfile::tempdir().unwrap();
    let base = proxy_config(origin_addr, &pki, &dir.path().join("ca"), ROUTES).replace(
        "response_header_timeout = \"10s\"",
        "response_header_timeout = \"2s\"",
    );
    let cfg_path = dir.path().join("portcullis.toml");
    write_config(&cfg_path, &base, false);
    let stderr_path = dir.path().join("stderr.log");
    let stderr = std::fs::File::create(&stderr_path).unwrap();
    let proxy = ProxyProcess::start_logging(&cfg_path, dir.path(), "warn", stderr.into());
    let pid = proxy.child.id();
    let roots = roots_from_pem(&dir.path().join("ca/ca.pem"));
    let stop = Arc::new(AtomicBool::new(false));
    let answers: Answers = Arc::default();

    // The clients.
    let mut clients = vec![tokio::spawn(h2_client(
        proxy.addr,
        roots.clone(),
        stop.clone(),
        answers.clone(),
    ))];
    for tag in 0..2 {
        clients.push(tokio::spawn(h1_client(
            proxy.addr,
            roots.clone(),
            stop.clone(),
            answers.clone(),
            tag,
        )));
    }
    let py = {
        let mut cmd = std::process::Command::new(python);
        cmd.arg("-c")
            .arg(PY)
            .arg((WARM_UP + TRAFFIC).as_secs().to_string())
            .env_clear()
            .env("PATH", std::env::var("PATH").unwrap_or_default())
            .env("HOME", dir.path())
            .env(
                "HTTPS_PROXY",
                format!("http://{AGENT}:{TOKEN}@{}", proxy.addr),
            )
            .env("SSL_CERT_FILE", dir.path().join("ca/ca.pem"));
        tokio::task::spawn_blocking(move || cmd.output().unwrap())
    };
    // Reload every second, each time a real change.
    let reloader = {
        let (stop, cfg_path, base) = (stop.clone(), cfg_path.clone(), base.clone());
        tokio::spawn(async move {
            let mut on = false;
            let mut n = 0usize;
            while !stop.load(Ordering::SeqCst) {
                tokio::time::sleep(Duration::from_secs(1)).await;
                on = !on;
                write_config(&cfg_path, &base, on);
                let _ = std::process::Command::new("kill")
                    .args(["-HUP", &pid.to_string()])
                    .status();
                n += 1;
            }
            n
        })
    };
    tokio::time::sleep(WARM_UP).await;
    let warm = vm_rss_kib(pid);
    let mut peak = warm;
    let deadline = tokio::time::Instant::now() + TRAFFIC;
    while tokio::time::Instant::now() < deadline {
        tokio::time::sleep(Duration::from_secs(2)).await;
        peak = peak.max(vm_rss_kib(pid));
    }
    stop.store(true, Ordering::SeqCst);
    let py = tokio::time::timeout(Duration::from_secs(120), py)
        .await
        .expect("the SDK client hung")
        .unwrap();
    for c in clients {
        tokio::time::timeout(Duration::from_secs(60), c)
            .await
            .expect("a client hung")
            .unwrap();
    }
    let reloads = reloader.await.unwrap();
    let fin = vm_rss_kib(pid);
    let py_out = String::from_utf8_lossy(&py.stdout).into_owned();
    assert!(
        py.status.success(),
        "python: {py_out}\n{}",
        String::from_utf8_lossy(&py.stderr)
    );
    let mut statuses: HashMap<String, usize> = HashMap::new();
    for line in py_out.lines() {
        let parts: Vec<&str> = line.split_whitespace().collect();
        if let ["RID", rid, ev, status] = parts[..] {
            *statuses.entry((*status).to_owned()).or_default() += 1;
            if ev != "-" {
                answers
                    .lock()
                    .unwrap()
                    .insert((*rid).to_owned(), ev.to_owned());
            }
        }
    }
    assert!(
        proxy.terminate().success(),
        "the proxy did not stop cleanly"
    );
    origin_task.abort();

    // No panic, anywhere in the proxy's stderr.
    let log = std::fs::read_to_string(&stderr_path).unwrap();
    assert!(!log.contains("panicked"), "the proxy panicked:\n{log}");
    // Memory flat after warm-up.
    eprintln!("VmRSS: warm {warm} KiB, peak {peak} KiB, final {fin} KiB; {reloads} reloads; SDK statuses {statuses:?}");
    assert!(fin * 2 <= warm * 3, "RSS grew from {warm} KiB to {fin} KiB");
    // The faults and the reloads really happened.
    assert!(reloads >= 30, "{reloads} reloads");
    for s in ["200", "500", "503", "502", "504"] {
        assert!(
            statuses.contains_key(s),
            "the SDK never saw {s}: {statuses:?}"
        );
    }
    // Every request the origin saw has its allow decision and its outcome.
    let ledger = dir.path().join(".portcullis/ledger");
    let records = ledger_records(&ledger);
    let allows: HashSet<&str> = records
        .iter()
        .filter(|r| r["kind"] == "decision" && r["decision"] == "allow")
        .filter_map(|r| r["event_id"].as_str())
        .collect();
    let outcomes: HashSet<&str> = records
        .iter()
        .filter(|r| r["kind"] == "outcome")
        .filter_map(|r| r["event_id"].as_str())
        .collect();
    let seen = faults.seen.lock().unwrap().clone();
    assert!(
        seen.len() >= 200,
        "only {} requests reached the origin",
        seen.len()
    );
    let unique: HashSet<&String> = seen.iter().collect();
    assert_eq!(
        unique.len(),
        seen.len(),
        "a request reached the origin twice"
    );
    let answers = answers.lock().unwrap();
    let mut unanswered = 0;
    for rid in &seen {
        match answers.get(rid) {
            Some(ev) => {
                assert!(
                    allows.contains(ev.as_str()),
                    "{rid} ({ev}) reached the origin without an allow record"
                );
                assert!(
                    outcomes.contains(ev.as_str()),
                    "{rid} ({ev}) has no outcome record"
                );
            }
            None => unanswered += 1,
        }
    }
    // A request whose answer never reached its client (a client that gave up)
    // still counts: there are at least as many allows as requests seen.
    assert!(
        allows.len() >= seen.len(),
        "{} allows for {} requests seen",
        allows.len(),
        seen.len()
    );
    assert!(
        unanswered * 20 <= seen.len(),
        "{unanswered} of {} requests seen went unanswered",
        seen.len()
    );
    let generations: HashSet<u64> = records
        .iter()
        .filter_map(|r| r["policy_generation"].as_u64())
        .collect();
    assert!(
        generations.len() >= 10,
        "requests ran under only {} policy generations",
        generations.len()
    );
    // And the chain verifies.
    let out = std::process::Command::new(portcullis_bin())
        .args(["ledger", "verify"])
        .arg(&ledger)
        .output()
        .unwrap();
    assert_eq!(
        out.status.code(),
        Some(0),
        "ledger verify:\n{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}
