//! The workloads and the figures one run of them yields.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Result;
use hdrhistogram::Histogram;

use super::client::{handshake, one, open, Via};
use super::origin::{HOST, MINT_DOMAIN};

/// Never-seen host names for the mint workload, unique over the whole run.
pub static NEXT_HOST: AtomicU64 = AtomicU64::new(0);
/// A mint run stops at this host number (`--mint-hosts`).
pub static LAST_HOST: AtomicU64 = AtomicU64::new(u64::MAX);

/// Latencies up to a minute, in microseconds, to 3 significant digits.
const MAX_MICROS: u64 = 60_000_000;

#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Workload {
    /// C keep-alive connections, small chat completions.
    KeepAlive,
    /// A new connection (CONNECT + TLS) for every request.
    NewConn,
    /// Keep-alive, 64 KiB responses.
    Big,
    /// Time to the first SSE event.
    Sse,
    /// A never-seen host per connection: CONNECT and a TLS handshake with a
    /// freshly minted leaf (proxies only; Portcullis sends nothing upstream).
    Mint,
    /// `--conns` connections that each made one request, then sit idle: memory each.
    Idle,
}

impl Workload {
    pub fn name(self) -> &'static str {
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

pub struct Figures {
    pub requests: u64,
    pub errors: u64,
    pub bytes: u64,
    pub secs: f64,
    /// Microseconds.
    pub lat: Histogram<u64>,
    pub first_error: Option<String>,
}

impl Figures {
    fn new() -> Result<Figures> {
        Ok(Figures {
            requests: 0,
            errors: 0,
            bytes: 0,
            secs: 0.0,
            lat: Histogram::new_with_max(MAX_MICROS, 3)?,
            first_error: None,
        })
    }

    pub fn rps(&self) -> f64 {
        self.requests as f64 / self.secs.max(1e-9)
    }

    pub fn mib_per_sec(&self) -> f64 {
        self.bytes as f64 / self.secs.max(1e-9) / (1024.0 * 1024.0)
    }

    /// The latency at quantile `q`, in milliseconds.
    pub fn ms(&self, q: f64) -> f64 {
        if self.lat.is_empty() {
            return 0.0;
        }
        self.lat.value_at_quantile(q) as f64 / 1000.0
    }

    fn record(&mut self, took: Duration) {
        let us = u64::try_from(took.as_micros()).unwrap_or(u64::MAX);
        self.lat.saturating_record(us.max(1));
        self.requests += 1;
    }

    fn failed(&mut self, e: anyhow::Error) {
        self.errors += 1;
        self.first_error.get_or_insert_with(|| format!("{e:#}"));
    }
}

/// `conns` clients doing `w` through `via` for `dur` (or until the mint hosts run out).
pub async fn run(via: Via, w: Workload, conns: usize, h2: bool, dur: Duration) -> Result<Figures> {
    let start = Instant::now();
    let deadline = start + dur;
    let mut tasks = Vec::new();
    for _ in 0..conns {
        let via = via.clone();
        tasks.push(tokio::spawn(async move {
            let mut f = Figures::new()?;
            if w == Workload::Mint {
                mint(&via, deadline, &mut f).await;
            } else {
                requests(&via, w, h2, deadline, &mut f).await;
            }
            anyhow::Ok(f)
        }));
    }
    let mut all = Figures::new()?;
    for t in tasks {
        let f = t.await??;
        if all.first_error.is_none() {
            all.first_error = f.first_error;
        }
        all.lat.add(&f.lat)?;
        all.requests += f.requests;
        all.errors += f.errors;
        all.bytes += f.bytes;
    }
    all.secs = start.elapsed().as_secs_f64();
    Ok(all)
}

/// CONNECT and a TLS handshake for one never-seen host after another.
async fn mint(via: &Via, deadline: Instant, f: &mut Figures) {
    while Instant::now() < deadline {
        let n = NEXT_HOST.fetch_add(1, Ordering::Relaxed);
        if n >= LAST_HOST.load(Ordering::Relaxed) {
            break;
        }
        let host = format!("h{n}.{MINT_DOMAIN}");
        let t = Instant::now();
        match open(via, &host).await {
            Ok(_) => f.record(t.elapsed()),
            Err(e) => f.failed(e),
        }
    }
}

/// Requests on one connection, or on a new connection each (`NewConn`).
async fn requests(via: &Via, w: Workload, h2: bool, deadline: Instant, f: &mut Figures) {
    let mut sender = None;
    while Instant::now() < deadline {
        if sender.is_none() || w == Workload::NewConn {
            let t = Instant::now();
            match handshake(via, HOST, h2).await {
                Ok(s) => sender = Some((s, t)),
                Err(e) => {
                    f.failed(e);
                    tokio::time::sleep(Duration::from_millis(10)).await;
                    continue;
                }
            }
        }
        let Some((s, opened)) = sender.as_mut() else {
            continue;
        };
        match one(s, via, w).await {
            Ok((took, b)) => {
                // A new connection's latency includes opening it.
                f.record(if w == Workload::NewConn {
                    opened.elapsed()
                } else {
                    took
                });
                f.bytes += b;
            }
            Err(e) => {
                f.failed(e);
                sender = None;
            }
        }
    }
}

/// Opens `n` connections through `via` and makes one request on each. Returns the
/// open connections (held until dropped), how many failed, and the first error.
pub async fn hold_idle(
    via: &Via,
    n: usize,
    h2: bool,
) -> Result<(Vec<super::client::Sender>, u64, Option<String>)> {
    let held = Arc::new(tokio::sync::Mutex::new(Vec::with_capacity(n)));
    let next = Arc::new(AtomicU64::new(0));
    let mut openers = Vec::new();
    for _ in 0..64 {
        let (via, held, next) = (via.clone(), held.clone(), next.clone());
        openers.push(tokio::spawn(async move {
            let (mut failed, mut first_error) = (0u64, None);
            while next.fetch_add(1, Ordering::Relaxed) < n as u64 {
                let opened = async {
                    let mut s = handshake(&via, HOST, h2).await?;
                    one(&mut s, &via, Workload::KeepAlive).await?;
                    anyhow::Ok(s)
                };
                match opened.await {
                    Ok(s) => held.lock().await.push(s),
                    Err(e) => {
                        failed += 1;
                        first_error.get_or_insert_with(|| format!("{e:#}"));
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
    let held = std::mem::take(&mut *held.lock().await);
    Ok((held, failed, first_error))
}

/// The soft limit on open files, from `/proc/self/limits`.
pub fn open_files_limit() -> usize {
    std::fs::read_to_string("/proc/self/limits")
        .unwrap_or_default()
        .lines()
        .find(|l| l.starts_with("Max open files"))
        .and_then(|l| l.split_whitespace().nth(3))
        .and_then(|v| v.parse().ok())
        .unwrap_or(1024)
}
