//! `portcullis-loadgen`: the same workload direct and through Portcullis, in
//! one run, with the ratios (SPEC §15).
//!
//! It starts a TLS origin posing as `api.openai.com` on loopback, then runs
//! each workload against it directly and through a `portcullis run` child
//! process (one per ledger `sync` mode): CONNECT, TLS with SNI, then HTTP/1.1
//! or HTTP/2. The route has classification and both detectors on. It prints
//! req/s, p50/p99/p999 latency, bytes/s, the proxy's CPU time per request
//! (from `/proc/PID/stat`) and its peak RSS (`VmHWM`), and each figure's ratio
//! to direct. No figure is asserted: the machine is shared and noisy.
//!
//! ```sh
//! cargo build --release -p portcullis -p portcullis-benches
//! target/release/portcullis-loadgen --duration 10 --conns 16
//! target/release/portcullis-loadgen --workload all --conns 64 --h2
//! # mint exactly 4,000 new hosts (the proxy runs alone on CPU 0 unless --no-pin)
//! target/release/portcullis-loadgen --workload mint --mint-hosts 4000
//! # memory per idle intercepted connection
//! target/release/portcullis-loadgen --workload idle --conns 10000
//! ```
#![allow(clippy::unwrap_used)] // a bench: a failed setup should fail loudly

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::{Request, Response};
use hyper_util::rt::{TokioExecutor, TokioIo};
use portcullis_tests::{basic, roots_from_pem, sha256_hex, OriginPki, AGENT, TOKEN};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio_rustls::{TlsAcceptor, TlsConnector};

const HOST: &str = "api.openai.com";
const CHAT: &str =
    r#"{"model":"gpt-4o-mini","messages":[{"role":"user","content":"Say hello in one word."}]}"#;
const BIG: usize = 64 * 1024;
/// Never-seen host names for the mint workload.
static NEXT_HOST: AtomicU64 = AtomicU64::new(0);
/// The mint workload of one proxy stops at this host number (`--mint-hosts`).
static LAST_HOST: AtomicU64 = AtomicU64::new(u64::MAX);
/// Hosts minted before a mint run's baseline is read.
const WARM_UP_HOSTS: u64 = 256;

#[derive(Clone, Copy, Debug, PartialEq)]
enum Workload {
    /// C keep-alive connections, small chat completions.
    KeepAlive,
    /// A new connection (CONNECT + TLS) for every request.
    NewConn,
    /// Keep-alive, 64 KiB responses.
    Big,
    /// Time to the first SSE event.
    Sse,
    /// A never-seen host per connection: CONNECT and a TLS handshake with a
    /// freshly minted leaf (proxy only; nothing is sent upstream).
    Mint,
    /// `--conns` connections that each made one request, then sit idle: memory each.
    Idle,
}

impl Workload {
    fn name(self) -> &'static str {
        match self {
            Workload::KeepAlive => "keep-alive",
            Workload::NewConn => "new connection per request",
            Workload::Big => "64 KiB responses",
            Workload::Sse => "SSE time to first event",
            Workload::Mint => "never-seen host per connection (leaf minted)",
            Workload::Idle => "idle intercepted keep-alive connections (memory each)",
        }
    }
}

struct Args {
    duration: Duration,
    conns: usize,
    h2: bool,
    workloads: Vec<Workload>,
    bin: PathBuf,
    /// Proxy on CPU 0, this process (client and origin) on the rest, so the proxy's CPU
    /// time is its own and not shared with the load it serves.
    pin: bool,
    /// Stop a mint run after this many new hosts (else at `duration`).
    mint_hosts: Option<u64>,
}

fn args() -> Result<Args> {
    let mut a = Args {
        duration: Duration::from_secs(5),
        conns: 16,
        h2: false,
        workloads: vec![Workload::KeepAlive],
        bin: default_bin(),
        pin: std::thread::available_parallelism().is_ok_and(|n| n.get() >= 2),
        mint_hosts: None,
    };
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        let mut val = || it.next().context(format!("{flag} needs a value"));
        match flag.as_str() {
            "--duration" => a.duration = Duration::from_secs_f64(val()?.parse()?),
            "--conns" => a.conns = val()?.parse()?,
            "--h2" => a.h2 = true,
            "--no-pin" => a.pin = false,
            "--proxy-bin" => a.bin = PathBuf::from(val()?),
            "--mint-hosts" => a.mint_hosts = Some(val()?.parse()?),
            "--workload" => {
                a.workloads = match val()?.as_str() {
                    "keepalive" => vec![Workload::KeepAlive],
                    "newconn" => vec![Workload::NewConn],
                    "big" => vec![Workload::Big],
                    "sse" => vec![Workload::Sse],
                    "mint" => vec![Workload::Mint],
                    "idle" => vec![Workload::Idle],
                    "all" => vec![
                        Workload::KeepAlive,
                        Workload::NewConn,
                        Workload::Big,
                        Workload::Sse,
                        Workload::Mint,
                    ],
                    w => bail!(
                        "unknown workload {w}: keepalive, newconn, big, sse, mint, idle or all"
                    ),
                }
            }
            "-h" | "--help" => {
                println!(
                    "portcullis-loadgen: one workload, direct and through Portcullis, in one run\n\n\
                     --duration SECS   per run (default 5)\n\
                     --conns N         concurrent connections (default 16)\n\
                     --h2              HTTP/2 inside the tunnel (default HTTP/1.1)\n\
                     --workload W      keepalive | newconn | big | sse | mint | idle | all (default keepalive;\n\
                     \x20                 idle holds --conns connections open, e.g. --conns 10000)\n\
                     --proxy-bin PATH  the portcullis binary (default: beside this one)\n\
                     --no-pin          do not pin (default with 2+ CPUs: the proxy on CPU 0,\n\
                     \x20                 client and origin on the others, with taskset)\n\
                     --mint-hosts N    mint: stop after N new hosts per proxy (default: --duration)"
                );
                std::process::exit(0);
            }
            f => bail!("unknown flag {f}; see --help"),
        }
    }
    Ok(a)
}

fn default_bin() -> PathBuf {
    let exe = std::env::current_exe().unwrap_or_default();
    exe.parent()
        .map(|d| d.join("portcullis"))
        .unwrap_or_else(|| PathBuf::from("portcullis"))
}

// ---- origin ----

async fn origin(pki: &OriginPki) -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let acceptor = TlsAcceptor::from(pki.server_config(&[b"h2", b"http/1.1"]));
    let big = Bytes::from(vec![b'x'; BIG]);
    tokio::spawn(async move {
        loop {
            let Ok((tcp, _)) = listener.accept().await else {
                return;
            };
            let _ = tcp.set_nodelay(true);
            let (acceptor, big) = (acceptor.clone(), big.clone());
            tokio::spawn(async move {
                let Ok(tls) = acceptor.accept(tcp).await else {
                    return;
                };
                let h2 = tls.get_ref().1.alpn_protocol() == Some(b"h2");
                let svc = hyper::service::service_fn(move |req: Request<Incoming>| {
                    let big = big.clone();
                    async move { Ok::<_, std::convert::Infallible>(answer(req, big).await) }
                });
                if h2 {
                    let _ = hyper::server::conn::http2::Builder::new(TokioExecutor::new())
                        .serve_connection(TokioIo::new(tls), svc)
                        .await;
                } else {
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(tls), svc)
                        .await;
                }
            });
        }
    });
    addr
}

async fn answer(req: Request<Incoming>, big: Bytes) -> Response<Full<Bytes>> {
    let path = req.uri().path().to_owned();
    let _ = req.into_body().collect().await;
    let (ctype, body) = match path.as_str() {
        "/v1/big" => ("application/octet-stream", big),
        "/v1/sse" => (
            "text/event-stream",
            Bytes::from_static(b"data: {\"choices\":[{\"delta\":{\"content\":\"hi\"}}]}\n\ndata: [DONE]\n\n"),
        ),
        _ => (
            "application/json",
            Bytes::from_static(br#"{"id":"c","object":"chat.completion","model":"gpt-4o-mini","choices":[{"index":0,"message":{"role":"assistant","content":"Hello"},"finish_reason":"stop"}],"usage":{"prompt_tokens":9,"completion_tokens":1,"total_tokens":10}}"#),
        ),
    };
    Response::builder()
        .header("content-type", ctype)
        .body(Full::new(body))
        .unwrap()
}

// ---- proxy ----

struct Proxy {
    child: std::process::Child,
    addr: SocketAddr,
    ca: PathBuf,
    _dir: tempfile::TempDir,
}

impl Proxy {
    fn start(
        bin: &Path,
        origin: SocketAddr,
        pki: &OriginPki,
        sync: &str,
        pin: bool,
    ) -> Result<Proxy> {
        use std::io::BufRead;
        let dir = tempfile::tempdir()?;
        let cfg = format!(
            r#"version = 1
[[listeners]]
name = "forward"
bind = "127.0.0.1:0"
auth = "basic"
[admin]
bind = "127.0.0.1:0"
[limits]
# The idle workload holds thousands of connections of one agent.
max_connections_per_agent = 1000000
[ca]
dir = "ca"
[ledger]
dir = "ledger"
sync = "{sync}"
[upstream]
extra_ca = ["{origin_ca}"]
resolve = ["{HOST}:443:{origin}"]
[[tenants]]
id = "acme"
[[agents]]
id = "{AGENT}"
tenant = "acme"
token_sha256 = "{token}"
[[routes]]
id = "openai"
action = "allow"
tenants = ["acme"]
hosts = ["{HOST}"]
detectors = {{ injection = "block", secrets = "block" }}
[[routes]]
id = "mint"
action = "allow"
tenants = ["acme"]
hosts = ["*.bench.test"]
"#,
            origin_ca = pki.ca_pem_path.display(),
            token = sha256_hex(TOKEN),
        );
        let path = dir.path().join("portcullis.toml");
        std::fs::write(&path, cfg)?;
        let mut cmd = if pin {
            let mut c = std::process::Command::new("taskset");
            c.args(["-c", "0"]).arg(bin);
            c
        } else {
            std::process::Command::new(bin)
        };
        let mut child = cmd
            .args(["run", "--config"])
            .arg(&path)
            .env("PORTCULLIS_LOG", "warn")
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::null())
            .spawn()
            .with_context(|| {
                format!(
                    "starting {} (build it: cargo build --release -p portcullis)",
                    bin.display()
                )
            })?;
        let stdout = child.stdout.take().context("proxy stdout")?;
        let mut addr = None;
        for line in std::io::BufReader::new(stdout).lines() {
            let line = line?;
            if let Some(a) = line.strip_prefix("# listening: forward=") {
                addr = a.parse().ok();
            }
            if line == "# ready" {
                break;
            }
        }
        let addr = addr.context("the proxy did not print its address")?;
        Ok(Proxy {
            child,
            addr,
            ca: dir.path().join("ca/ca.pem"),
            _dir: dir,
        })
    }

    /// (user + system CPU seconds, peak RSS in KiB) so far.
    fn usage(&self) -> (f64, u64) {
        let pid = self.child.id();
        let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
        // Fields after the `(comm)`, which may hold spaces.
        let rest = stat.rsplit_once(')').map(|(_, r)| r).unwrap_or("");
        let f: Vec<&str> = rest.split_whitespace().collect();
        let ticks = |i: usize| f.get(i).and_then(|v| v.parse::<f64>().ok()).unwrap_or(0.0);
        // utime and stime are fields 14 and 15 (11 and 12 after the comm).
        let cpu = (ticks(11) + ticks(12)) / 100.0;
        let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
        let kib = |field: &str| {
            status
                .lines()
                .find_map(|l| l.strip_prefix(field))
                .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
                .unwrap_or(0)
        };
        (cpu, kib("VmHWM:"))
    }

    /// Resident memory now, in KiB.
    fn rss(&self) -> u64 {
        let pid = self.child.id();
        std::fs::read_to_string(format!("/proc/{pid}/status"))
            .unwrap_or_default()
            .lines()
            .find_map(|l| l.strip_prefix("VmRSS:"))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
            .unwrap_or(0)
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

// ---- client ----

#[derive(Clone)]
struct Via {
    /// Where to dial: the origin, or the proxy.
    dial: SocketAddr,
    proxied: bool,
    tls: TlsConnector,
}

async fn open(via: &Via, host: &str) -> Result<tokio_rustls::client::TlsStream<TcpStream>> {
    let mut tcp = TcpStream::connect(via.dial).await?;
    tcp.set_nodelay(true)?;
    if via.proxied {
        let head = format!(
            "CONNECT {host}:443 HTTP/1.1\r\nHost: {host}:443\r\nProxy-Authorization: Basic {}\r\n\r\n",
            basic(AGENT, TOKEN)
        );
        tcp.write_all(head.as_bytes()).await?;
        let mut buf = Vec::with_capacity(256);
        let mut b = [0u8; 256];
        while !buf.windows(4).any(|w| w == b"\r\n\r\n") {
            let n = tcp.read(&mut b).await?;
            if n == 0 {
                bail!("proxy closed during CONNECT");
            }
            buf.extend_from_slice(&b[..n]);
        }
        if !buf.starts_with(b"HTTP/1.1 200") {
            bail!("CONNECT refused: {}", String::from_utf8_lossy(&buf));
        }
    }
    let name = rustls_pki_types::ServerName::try_from(host.to_owned())?;
    Ok(via.tls.connect(name, tcp).await?)
}

enum Sender {
    H1(hyper::client::conn::http1::SendRequest<Full<Bytes>>),
    H2(hyper::client::conn::http2::SendRequest<Full<Bytes>>),
}

async fn handshake(via: &Via, h2: bool) -> Result<Sender> {
    let tls = open(via, HOST).await?;
    let io = TokioIo::new(tls);
    if h2 {
        let (s, conn) = hyper::client::conn::http2::handshake(TokioExecutor::new(), io).await?;
        tokio::spawn(conn);
        Ok(Sender::H2(s))
    } else {
        let (s, conn) = hyper::client::conn::http1::handshake(io).await?;
        tokio::spawn(conn);
        Ok(Sender::H1(s))
    }
}

fn request(w: Workload) -> Request<Full<Bytes>> {
    let (method, path, body) = match w {
        Workload::Big => ("GET", "/v1/big", Bytes::new()),
        Workload::Sse => ("POST", "/v1/sse", Bytes::from_static(CHAT.as_bytes())),
        _ => (
            "POST",
            "/v1/chat/completions",
            Bytes::from_static(CHAT.as_bytes()),
        ),
    };
    Request::builder()
        .method(method)
        .uri(path)
        .header("host", HOST)
        .header("content-type", "application/json")
        .body(Full::new(body))
        .unwrap()
}

/// One request: (latency to the measured point, body bytes).
async fn one(s: &mut Sender, w: Workload) -> Result<(Duration, u64)> {
    let t = Instant::now();
    let resp = match s {
        Sender::H1(s) => {
            s.ready().await?;
            s.send_request(request(w)).await?
        }
        Sender::H2(s) => {
            s.ready().await?;
            s.send_request(request(w)).await?
        }
    };
    if !resp.status().is_success() {
        bail!("status {}", resp.status());
    }
    let mut body = resp.into_body();
    let mut bytes = 0u64;
    let mut first = None;
    while let Some(frame) = body.frame().await {
        if let Ok(data) = frame?.into_data() {
            bytes += data.len() as u64;
            first.get_or_insert_with(|| t.elapsed());
        }
    }
    let took = match w {
        Workload::Sse => first.unwrap_or_else(|| t.elapsed()),
        _ => t.elapsed(),
    };
    Ok((took, bytes))
}

/// Open `n` intercepted connections through `p`, one request each, hold them idle, and
/// report what each costs the proxy in resident memory.
async fn idle(p: &Proxy, sync: &str, n: usize, h2: bool) -> Result<()> {
    let limit = open_files_limit();
    if n + 256 > limit {
        bail!("--conns {n} needs more open files than this process may have ({limit}); raise `ulimit -n`");
    }
    let via = Via {
        dial: p.addr,
        proxied: true,
        tls: connector(&p.ca, h2),
    };
    // Warm: the leaf, the upstream connection and the allocator's first pages.
    let mut warm = handshake(&via, h2).await?;
    one(&mut warm, Workload::KeepAlive).await?;
    tokio::time::sleep(Duration::from_millis(500)).await;
    let before = p.rss();
    let held = std::sync::Arc::new(tokio::sync::Mutex::new(Vec::with_capacity(n)));
    let next = std::sync::Arc::new(AtomicU64::new(0));
    let mut openers = Vec::new();
    for _ in 0..64 {
        let (via, held, next) = (via.clone(), held.clone(), next.clone());
        openers.push(tokio::spawn(async move {
            let (mut failed, mut first_error) = (0u64, None);
            while next.fetch_add(1, Ordering::Relaxed) < n as u64 {
                let opened = async {
                    let mut s = handshake(&via, h2).await?;
                    one(&mut s, Workload::KeepAlive).await?;
                    anyhow::Ok(s)
                };
                match opened.await {
                    Ok(s) => held.lock().await.push(s),
                    Err(e) => {
                        failed += 1;
                        first_error.get_or_insert_with(|| e.to_string());
                    }
                }
            }
            (failed, first_error)
        }));
    }
    let (mut failed, mut first_error) = (0u64, None);
    for o in openers {
        let (f, e) = o.await?;
        failed += f;
        first_error = first_error.or(e);
    }
    if let Some(e) = first_error {
        println!(
            "  {:<14} {failed} connections failed to open; first error: {e}",
            ""
        );
    }
    // Let buffers that are freed after a request settle before reading RSS.
    tokio::time::sleep(Duration::from_secs(1)).await;
    let after = p.rss();
    let count = held.lock().await.len();
    let grew = after.saturating_sub(before);
    println!(
        "  sync={sync:<9} {count} idle connections: proxy RSS {before} -> {after} KiB, {:.1} KiB each",
        grew as f64 / count.max(1) as f64
    );
    held.lock().await.clear();
    drop(warm);
    Ok(())
}

/// The soft limit on open files, from `/proc/self/limits`.
fn open_files_limit() -> usize {
    std::fs::read_to_string("/proc/self/limits")
        .unwrap_or_default()
        .lines()
        .find(|l| l.starts_with("Max open files"))
        .and_then(|l| l.split_whitespace().nth(3))
        .and_then(|v| v.parse().ok())
        .unwrap_or(1024)
}

struct Figures {
    requests: u64,
    errors: u64,
    bytes: u64,
    secs: f64,
    /// Microseconds, sorted.
    lat: Vec<u32>,
    first_error: Option<String>,
}

impl Figures {
    fn rps(&self) -> f64 {
        self.requests as f64 / self.secs
    }
    fn pct(&self, p: f64) -> f64 {
        if self.lat.is_empty() {
            return 0.0;
        }
        let i = ((self.lat.len() as f64 - 1.0) * p).round() as usize;
        f64::from(self.lat[i.min(self.lat.len() - 1)]) / 1000.0
    }
}

async fn run(via: Via, w: Workload, conns: usize, h2: bool, dur: Duration) -> Figures {
    let start = Instant::now();
    let deadline = start + dur;
    let mut tasks = Vec::new();
    for _ in 0..conns {
        let via = via.clone();
        tasks.push(tokio::spawn(async move {
            let mut lat = Vec::with_capacity(4096);
            let (mut n, mut errors, mut bytes) = (0u64, 0u64, 0u64);
            let mut sender = None;
            let mut first_error: Option<String> = None;
            while Instant::now() < deadline {
                if w == Workload::Mint {
                    let n_host = NEXT_HOST.fetch_add(1, Ordering::Relaxed);
                    if n_host >= LAST_HOST.load(Ordering::Relaxed) {
                        break;
                    }
                    let host = format!("h{n_host}.bench.test");
                    let t = Instant::now();
                    match open(&via, &host).await {
                        Ok(_) => {
                            lat.push(u32::try_from(t.elapsed().as_micros()).unwrap_or(u32::MAX));
                            n += 1;
                        }
                        Err(e) => {
                            errors += 1;
                            first_error.get_or_insert_with(|| format!("{e:#}"));
                        }
                    }
                    continue;
                }
                if sender.is_none() || w == Workload::NewConn {
                    let t = Instant::now();
                    match handshake(&via, h2).await {
                        Ok(s) => sender = Some((s, t)),
                        Err(e) => {
                            errors += 1;
                            first_error.get_or_insert_with(|| format!("{e:#}"));
                            tokio::time::sleep(Duration::from_millis(10)).await;
                            continue;
                        }
                    }
                }
                let Some((s, opened)) = sender.as_mut() else {
                    continue;
                };
                match one(s, w).await {
                    Ok((took, b)) => {
                        // A new connection's latency includes opening it.
                        let took = if w == Workload::NewConn {
                            opened.elapsed()
                        } else {
                            took
                        };
                        lat.push(u32::try_from(took.as_micros()).unwrap_or(u32::MAX));
                        n += 1;
                        bytes += b;
                    }
                    Err(e) => {
                        errors += 1;
                        first_error.get_or_insert_with(|| format!("{e:#}"));
                        sender = None;
                    }
                }
            }
            (lat, n, errors, bytes, first_error)
        }));
    }
    let mut f = Figures {
        requests: 0,
        errors: 0,
        bytes: 0,
        secs: 0.0,
        lat: Vec::new(),
        first_error: None,
    };
    for t in tasks {
        if let Ok((lat, n, e, b, err)) = t.await {
            if f.first_error.is_none() {
                f.first_error = err;
            }
            f.lat.extend(lat);
            f.requests += n;
            f.errors += e;
            f.bytes += b;
        }
    }
    f.secs = start.elapsed().as_secs_f64();
    f.lat.sort_unstable();
    f
}

fn connector(ca: &Path, h2: bool) -> TlsConnector {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut cfg = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots_from_pem(ca))
        .with_no_client_auth();
    cfg.alpn_protocols = if h2 {
        vec![b"h2".to_vec()]
    } else {
        vec![b"http/1.1".to_vec()]
    };
    TlsConnector::from(Arc::new(cfg))
}

fn line(label: &str, f: &Figures, direct: Option<&Figures>, cpu: Option<(f64, u64)>) {
    let ratio = direct.map_or(String::new(), |d| {
        format!(
            "  ({:.2}x direct req/s, p50 {:.2}x)",
            f.rps() / d.rps().max(1e-9),
            f.pct(0.5) / d.pct(0.5).max(1e-9)
        )
    });
    let cpu = cpu.map_or(String::new(), |(secs, hwm)| {
        format!(
            "  proxy CPU {:.3} ms/req, peak RSS {} MiB",
            secs * 1000.0 / (f.requests.max(1) as f64),
            hwm / 1024
        )
    });
    println!(
        "  {label:<14} {:>9.0} req/s  p50 {:>7.3} ms  p99 {:>7.3} ms  p999 {:>7.3} ms  {:>8.1} MiB/s  errors {}{ratio}{cpu}",
        f.rps(),
        f.pct(0.5),
        f.pct(0.99),
        f.pct(0.999),
        f.bytes as f64 / f.secs / (1024.0 * 1024.0),
        f.errors,
    );
    if let Some(e) = &f.first_error {
        println!("  {:<14} first error: {e}", "");
    }
}

/// Move every thread of this process (client, origin, runtime) to CPUs 1.., leaving CPU 0
/// to the proxy.
fn pin_self_off_cpu0() -> Result<()> {
    let cpus = std::thread::available_parallelism().map_or(1, |n| n.get());
    let list = format!("1-{}", cpus.saturating_sub(1).max(1));
    let status = std::process::Command::new("taskset")
        .args(["-a", "-p", "-c", &list, &std::process::id().to_string()])
        .stdout(std::process::Stdio::null())
        .status()
        .context("taskset (util-linux) pins the run; pass --no-pin to skip")?;
    if !status.success() {
        bail!("taskset could not pin this process to CPUs {list}; pass --no-pin to skip");
    }
    Ok(())
}

#[tokio::main]
async fn main() -> Result<()> {
    let a = args()?;
    if a.pin {
        pin_self_off_cpu0()?;
    }
    let pki = OriginPki::new();
    let origin = origin(&pki).await;
    println!(
        "# portcullis-loadgen: {} conns, {}, {:?} per run, origin {origin}, {}",
        a.conns,
        if a.h2 { "h2" } else { "http/1.1" },
        a.duration,
        if a.pin {
            "proxy pinned to CPU 0, client and origin on the rest"
        } else {
            "not pinned"
        }
    );
    let proxies = [
        (
            "always",
            Proxy::start(&a.bin, origin, &pki, "always", a.pin)?,
        ),
        ("batch", Proxy::start(&a.bin, origin, &pki, "batch", a.pin)?),
    ];
    for w in &a.workloads {
        println!("{}:", w.name());
        if *w == Workload::Idle {
            for (sync, p) in &proxies {
                idle(p, sync, a.conns, a.h2).await?;
            }
            continue;
        }
        // Minting has no direct counterpart: the origin has no leaf per host.
        let direct = if *w == Workload::Mint {
            None
        } else {
            let direct_via = Via {
                dial: origin,
                proxied: false,
                tls: connector(&pki.ca_pem_path, a.h2),
            };
            let d = run(direct_via, *w, a.conns, a.h2, a.duration).await;
            line("direct", &d, None, None);
            Some(d)
        };
        for (sync, p) in &proxies {
            let via = Via {
                dial: p.addr,
                proxied: true,
                tls: connector(&p.ca, a.h2),
            };
            if *w == Workload::Mint {
                // Warm-up: the first mints bring up the blocking pool's threads and their
                // allocator heaps, a one-off cost that is not the cache's.
                LAST_HOST.store(
                    NEXT_HOST.load(Ordering::Relaxed) + WARM_UP_HOSTS,
                    Ordering::Relaxed,
                );
                run(via.clone(), *w, a.conns, a.h2, a.duration).await;
                tokio::time::sleep(Duration::from_millis(300)).await;
                LAST_HOST.store(u64::MAX, Ordering::Relaxed);
            }
            let mint_from = NEXT_HOST.load(Ordering::Relaxed);
            if let (Workload::Mint, Some(n)) = (*w, a.mint_hosts) {
                LAST_HOST.store(mint_from + n, Ordering::Relaxed);
            }
            let before = p.usage();
            let rss_before = p.rss();
            // A host-bounded mint run ends when the hosts run out, not at the duration.
            let dur = match (*w, a.mint_hosts) {
                (Workload::Mint, Some(_)) => Duration::from_secs(3600),
                _ => a.duration,
            };
            let f = run(via, *w, a.conns, a.h2, dur).await;
            LAST_HOST.store(u64::MAX, Ordering::Relaxed);
            let after = p.usage();
            // Closed tunnels finish unwinding before the cache's share is read.
            if *w == Workload::Mint {
                tokio::time::sleep(Duration::from_millis(300)).await;
            }
            let rss_after = p.rss();
            line(
                &format!("sync={sync}"),
                &f,
                direct.as_ref(),
                Some((after.0 - before.0, after.1)),
            );
            if *w == Workload::Mint && f.requests > 0 {
                let grew = rss_after.saturating_sub(rss_before);
                println!(
                    "  {:<14} RSS grew {grew} KiB over {} minted hosts: {:.2} KiB per cached host",
                    "",
                    f.requests,
                    grew as f64 / f.requests as f64
                );
            }
        }
    }
    Ok(())
}
