//! What the leaf cache costs per cached host: mint N never-seen hosts into a cache that
//! keeps them all, and read the resident memory before and after. No sockets, no TLS,
//! no ledger, so only the cache's entries (and the mint's leftovers) show.
//!
//! ```sh
//! cargo run --release -p portcullis-certs --example leaf_cache_rss -- 20000
//! ```
#![allow(clippy::unwrap_used)] // an example: a failed setup should fail loudly

use std::sync::Arc;
use std::time::{Duration, Instant};

use portcullis_certs::{CacheOptions, CertificateAuthority, LeafCache};

/// Resident memory in KiB, from /proc/self/status.
fn rss_kib() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or(0)
}

#[tokio::main]
async fn main() {
    let n: usize = std::env::args()
        .nth(1)
        .and_then(|a| a.parse().ok())
        .unwrap_or(20_000);
    let dir = tempfile::tempdir().unwrap();
    let ca = Arc::new(CertificateAuthority::init(&dir.path().join("ca")).unwrap());
    let opts = CacheOptions {
        capacity: 2 * n + 1_000,
        ttl: Duration::from_secs(24 * 3600),
        mint_workers: 0,
    };
    let cache = LeafCache::new(ca, opts);
    // Warm-up: threads, allocator arenas and the mint's own buffers, once.
    for i in 0..1_000 {
        cache.get(&format!("warm{i}.example.com")).await.unwrap();
    }
    let before = rss_kib();
    let started = Instant::now();
    for i in 0..n {
        cache.get(&format!("h{i}.example.com")).await.unwrap();
    }
    let took = started.elapsed();
    let grew = rss_kib().saturating_sub(before);
    println!(
        "{n} hosts minted in {:.2}s ({:.0}/s, {:.1} us each); RSS grew {grew} KiB: {:.2} KiB per cached host",
        took.as_secs_f64(),
        n as f64 / took.as_secs_f64(),
        took.as_secs_f64() * 1e6 / n as f64,
        grew as f64 / n as f64
    );
}
