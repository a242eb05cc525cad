//! `portcullis-loadgen`: the same workload direct, through Portcullis and through
//! the peers a user would otherwise pick, in one run, with the ratios (SPEC §15).
//!
//! It starts a TLS origin posing as `api.openai.com` on loopback, then runs each
//! workload against it directly, through a `portcullis run` child per ledger `sync`
//! mode and, with `--peers`, through a bare CONNECT tunnel, Squid ssl-bump and
//! mitmproxy: CONNECT, TLS with SNI, then HTTP/1.1 or HTTP/2. Portcullis's route has
//! classification and both detectors on. It prints req/s, p50/p99/p999 latency (HDR
//! histogram), bytes/s, each proxy's CPU time per request (`/proc/PID/stat`) and peak
//! RSS (`VmHWM`), both summed over the proxy's process tree, then every figure's ratio
//! to direct and to each peer. No figure is asserted: the machine is shared and noisy.
//!
//! ```sh
//! cargo build --release -p portcullis -p portcullis-benches
//! target/release/portcullis-loadgen --duration 10 --conns 16
//! target/release/portcullis-loadgen --workload all --peers all --conns 64
//! # mint exactly 4,000 new hosts (every proxy runs alone on CPU 0 unless --no-pin)
//! target/release/portcullis-loadgen --workload mint --mint-hosts 4000
//! # memory per idle intercepted connection
//! target/release/portcullis-loadgen --workload idle --conns 10000
//! ```

mod args;
mod client;
mod origin;
mod peers;
mod portcullis;
mod report;
mod target;
pub mod tunnel;
mod workload;

use std::sync::atomic::Ordering;
use std::time::Duration;

use anyhow::{bail, Context, Result};

use args::Args;
use client::{connector, Via};
use origin::Origin;
use report::Row;
use target::Target;
use workload::{Workload, LAST_HOST, NEXT_HOST};

/// Hosts minted before a mint run's baseline is read.
const WARM_UP_HOSTS: u64 = 256;

pub async fn main() -> Result<()> {
    let a = args::parse()?;
    if a.pin {
        pin_self_off_cpu0()?;
    }
    let origin = Origin::start().await?;
    let peer_names: Vec<&str> = a.peers.iter().map(|p| p.name()).collect();
    println!(
        "# portcullis-loadgen: {} conns, {}, {:?} per run, origin {}, {}{}",
        a.conns,
        if a.h2 { "h2" } else { "http/1.1" },
        a.duration,
        origin.addr,
        if a.pin {
            "every proxy pinned to CPU 0, client and origin on the rest"
        } else {
            "not pinned"
        },
        if peer_names.is_empty() {
            String::new()
        } else {
            format!(", peers {}", peer_names.join(", "))
        }
    );
    let mut targets = Vec::new();
    for p in a.peers.iter().filter(|p| **p == args::Peer::Tunnel) {
        targets.push(peers::start(*p, &a, &origin)?);
    }
    for sync in ["always", "batch"] {
        targets.push(portcullis::start(&a.bin, &origin, sync, a.pin)?);
    }
    for p in a.peers.iter().filter(|p| **p != args::Peer::Tunnel) {
        targets.push(peers::start(*p, &a, &origin)?);
    }
    for w in &a.workloads {
        println!("{}:", w.name());
        if *w == Workload::Idle {
            idle_all(&mut targets, &origin, &a).await?;
        } else {
            workload(*w, &mut targets, &origin, &a).await?;
        }
    }
    Ok(())
}

/// One workload direct and through every target, then the ratios.
async fn workload(w: Workload, targets: &mut [Target], origin: &Origin, a: &Args) -> Result<()> {
    let mut rows = Vec::new();
    // Minting has no direct counterpart: the origin has no leaf per host.
    if w != Workload::Mint {
        let via = Via {
            dial: origin.addr,
            connect: None,
            tls: connector(&origin.pki.ca_pem_path, a.h2)?,
            host_header: origin::HOST.to_owned(),
        };
        let f = workload::run(via, w, a.conns, a.h2, a.duration).await?;
        let row = Row {
            label: "direct".to_owned(),
            short: "direct",
            portcullis: false,
            f,
            usage: None,
            note: None,
        };
        report::line(&row);
        rows.push(row);
    }
    for t in targets.iter_mut() {
        if let Some(why) = t.skips(w, a.h2) {
            println!("  {:<14} skipped: {why}", t.label());
            continue;
        }
        let row = through(w, t, origin, a).await?;
        report::line(&row);
        rows.push(row);
    }
    report::ratios(&rows);
    Ok(())
}

/// One run of `w` through `t`, with the proxy's CPU, memory and (mint) RSS growth.
async fn through(w: Workload, t: &mut Target, origin: &Origin, a: &Args) -> Result<Row> {
    t.check_alive()?;
    let via = t.via(origin, w, a.h2)?;
    if w == Workload::Mint {
        // Warm-up: the first mints bring up thread pools and allocator heaps, a
        // one-off cost that is not the cache's.
        LAST_HOST.store(
            NEXT_HOST.load(Ordering::Relaxed) + WARM_UP_HOSTS,
            Ordering::Relaxed,
        );
        workload::run(via.clone(), w, a.conns, a.h2, a.duration).await?;
        tokio::time::sleep(Duration::from_millis(300)).await;
        LAST_HOST.store(u64::MAX, Ordering::Relaxed);
    }
    let mint_from = NEXT_HOST.load(Ordering::Relaxed);
    if let (Workload::Mint, Some(n)) = (w, a.mint_hosts) {
        LAST_HOST.store(mint_from + n, Ordering::Relaxed);
    }
    let before = t.usage();
    let rss_before = t.rss();
    // A host-bounded mint run ends when the hosts run out, not at the duration.
    let dur = match (w, a.mint_hosts) {
        (Workload::Mint, Some(_)) => Duration::from_secs(3600),
        _ => a.duration,
    };
    let f = workload::run(via, w, a.conns, a.h2, dur).await?;
    LAST_HOST.store(u64::MAX, Ordering::Relaxed);
    let after = t.usage();
    // Closed tunnels finish unwinding before the cache's share is read.
    let mut note = None;
    if w == Workload::Mint {
        tokio::time::sleep(Duration::from_millis(300)).await;
        if f.requests > 0 {
            let grew = t.rss().saturating_sub(rss_before);
            note = Some(format!(
                "RSS grew {grew} KiB over {} minted hosts: {:.2} KiB per cached host",
                f.requests,
                grew as f64 / f.requests as f64
            ));
        }
    }
    t.check_alive()?;
    Ok(Row {
        label: t.label(),
        short: t.short(),
        portcullis: t.is_portcullis(),
        f,
        usage: Some((after.cpu - before.cpu, after.hwm_kib)),
        note,
    })
}

/// `--conns` idle connections through each target in turn: resident memory each.
async fn idle_all(targets: &mut [Target], origin: &Origin, a: &Args) -> Result<()> {
    let limit = workload::open_files_limit();
    if a.conns + 256 > limit {
        bail!(
            "--conns {} needs more open files than this process may have ({limit}); raise `ulimit -n`",
            a.conns
        );
    }
    let mut each: Vec<(&'static str, bool, f64)> = Vec::new();
    for t in targets.iter_mut() {
        if let Some(why) = t.skips(Workload::Idle, a.h2) {
            println!("  {:<14} skipped: {why}", t.label());
            continue;
        }
        t.check_alive()?;
        let via = t.via(origin, Workload::Idle, a.h2)?;
        // Warm: the leaf, the upstream connection and the allocator's first pages.
        let mut warm = client::handshake(&via, origin::HOST, a.h2).await?;
        client::one(&mut warm, &via, Workload::KeepAlive)
            .await
            .context("the warm-up request")?;
        tokio::time::sleep(Duration::from_millis(500)).await;
        let before = t.rss();
        let (held, failed, first_error) = workload::hold_idle(&via, a.conns, a.h2).await?;
        if let Some(e) = first_error {
            println!(
                "  {:<14} {failed} connections failed to open; first error: {e}",
                ""
            );
        }
        // Let buffers that are freed after a request settle before reading RSS.
        tokio::time::sleep(Duration::from_secs(1)).await;
        let after = t.rss();
        let kib = after.saturating_sub(before) as f64 / held.len().max(1) as f64;
        println!(
            "  {:<14} {} idle connections: RSS {before} -> {after} KiB, {kib:.1} KiB each",
            t.label(),
            held.len()
        );
        each.push((t.short(), t.is_portcullis(), kib));
        drop(held);
        drop(warm);
        // The next target's baseline should not see this one's closing connections.
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    for (a_name, _, a_kib) in each.iter().filter(|e| e.1) {
        for (b_name, _, b_kib) in each.iter().filter(|e| !e.1) {
            println!(
                "  {:<18} KiB each {:.2}x",
                format!("{a_name}/{b_name}"),
                a_kib / b_kib.max(1e-9)
            );
        }
    }
    Ok(())
}

/// Move every thread of this process (client, origin, runtime) to CPUs 1.., leaving
/// CPU 0 to the proxies.
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
