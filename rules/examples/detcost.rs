//! Detector cost per request: prompt injection plus secrets over a 2 KiB prompt, a
//! 100 KiB chat body and an 8 MiB body, one call at a time on one thread. Printed: p50
//! and p99 per request (and MiB/s). Figures are printed, never asserted.
//!
//! ```text
//! cargo bench -p portcullis-benches --bench detectors
//! ```

use std::hint::black_box;
use std::time::{Duration, Instant};

use portcullis_rules::{detect_injection, detect_secrets};

/// Benign prose with code, a log line, a quoted URL and a base64 attachment: every
/// layer has something to look at, and nothing fires.
const PARAGRAPH: &str = "Please review the following change before we merge it. The retry \
loop in fetch_page ignores the previous error and sleeps for 200 ms; we should log it \
instead. 2026-12-01T10:22:31Z INFO worker-3 request_id=8f2c status=200 bytes=5120 \
path=/v1/items?page=2&sort=desc. The config is attached as base64: \
eyJuYW1lIjoid29ya2VyIiwicmV0cmllcyI6MywidGltZW91dF9tcyI6MjAwMH0= and the old one \
said retries=5. Ceci est un paragraphe en français, sans consignes cachées. ";

fn text_of(bytes: usize) -> String {
    let mut s = String::with_capacity(bytes + PARAGRAPH.len());
    while s.len() < bytes {
        s.push_str(PARAGRAPH);
    }
    s.truncate(bytes);
    s
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i.min(sorted.len() - 1)]
}

fn run(name: &str, text: &str, iterations: usize) {
    // Warm up: pattern sets compile lazily, caches fill.
    for _ in 0..iterations.min(20) {
        black_box(detect_injection(black_box(text)));
        black_box(detect_secrets(black_box(text.as_bytes())));
    }
    let mut times = Vec::with_capacity(iterations);
    for _ in 0..iterations {
        let start = Instant::now();
        black_box(detect_injection(black_box(text)));
        black_box(detect_secrets(black_box(text.as_bytes())));
        times.push(start.elapsed());
    }
    times.sort_unstable();
    let p50 = percentile(&times, 0.50);
    let p99 = percentile(&times, 0.99);
    let mib_s = text.len() as f64 / (1024.0 * 1024.0) / p50.as_secs_f64();
    println!(
        "{name:<18} {:>9} bytes  p50 {:>10.1?}  p99 {:>10.1?}  ({mib_s:.0} MiB/s at p50, {iterations} runs)",
        text.len(),
        p50,
        p99
    );
}

fn main() {
    // `cargo bench` passes `--bench`; `cargo test --benches` passes nothing extra: run
    // a shorter pass then, so that CI only checks that the bench runs.
    let quick = false;
    let scale = if quick { 10 } else { 1 };
    println!("detectors: injection + secrets per request, one thread");
    if std::env::args().any(|a| a == "count") {
        let t = text_of(2 * 1024);
        let n: usize = std::env::var("N")
            .ok()
            .and_then(|v| v.parse().ok())
            .unwrap_or(200);
        for _ in 0..n {
            black_box(detect_injection(black_box(&t)));
            black_box(detect_secrets(black_box(t.as_bytes())));
        }
        return;
    }
    run("2 KiB prompt", &text_of(2 * 1024), 5_000 / scale);
    if std::env::args().any(|a| a == "small") {
        run("2 KiB prompt", &text_of(2 * 1024), 100_000);
        return;
    }
    run("100 KiB chat body", &text_of(100 * 1024), 300 / scale);
    run("8 MiB body", &text_of(8 * 1024 * 1024), (20 / scale).max(2));
}
