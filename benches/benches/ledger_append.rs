//! Ledger append benchmark: appends/s and append wait (p50/p99) with `sync = always` and
//! `sync = batch` at 1, 16 and 256 concurrent writers, plus the group-commit gain
//! (throughput of always@256 over always@1, measured in the same run).
//!
//! A plain `fn main()` (harness = false): figures are printed, never asserted.
//!
//! ```text
//! cargo bench -p portcullis-benches --bench ledger_append
//! LEDGER_BENCH_RECORDS=20000 LEDGER_BENCH_DIR=/var/tmp cargo bench -p portcullis-benches --bench ledger_append
//! ```
//!
//! Put `LEDGER_BENCH_DIR` on the disk the ledger will really use: on tmpfs `fdatasync` is
//! free and the numbers say nothing about group commit.

use std::path::{Path, PathBuf};
use std::time::Duration;

use portcullis_ledger::{DecisionFacts, Ledger, LedgerOptions, SyncMode};
use tokio::time::Instant;

const WRITERS: [usize; 3] = [1, 16, 256];

struct Row {
    mode: &'static str,
    writers: usize,
    records: usize,
    per_sec: f64,
    p50: Duration,
    p99: Duration,
    avg_batch: f64,
}

fn main() {
    let records: usize = std::env::var("LEDGER_BENCH_RECORDS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(4096);
    let base = std::env::var_os("LEDGER_BENCH_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(std::env::temp_dir);
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("cannot start tokio: {e}");
            std::process::exit(2);
        }
    };
    println!(
        "ledger append bench: {records} records per run, in {}",
        base.display()
    );
    let mut rows = Vec::new();
    for (mode, sync) in [("always", SyncMode::Always), ("batch", SyncMode::Batch)] {
        for writers in WRITERS {
            let dir = base.join(format!(
                "portcullis-ledger-bench-{}-{mode}-{writers}",
                std::process::id()
            ));
            match runtime.block_on(run(&dir, sync, writers, records)) {
                Ok(mut row) => {
                    row.mode = mode;
                    rows.push(row);
                }
                Err(e) => {
                    eprintln!("{mode}@{writers}: {e}");
                    let _ = std::fs::remove_dir_all(&dir);
                    std::process::exit(1);
                }
            }
            let _ = std::fs::remove_dir_all(&dir);
        }
    }

    println!(
        "{:<8} {:>8} {:>9} {:>12} {:>11} {:>11} {:>10}",
        "sync", "writers", "records", "appends/s", "p50 wait", "p99 wait", "avg batch"
    );
    for r in &rows {
        println!(
            "{:<8} {:>8} {:>9} {:>12.0} {:>11.3?} {:>11.3?} {:>10.1}",
            r.mode, r.writers, r.records, r.per_sec, r.p50, r.p99, r.avg_batch
        );
    }
    let rate = |mode: &str, writers: usize| {
        rows.iter()
            .find(|r| r.mode == mode && r.writers == writers)
            .map_or(0.0, |r| r.per_sec)
    };
    let (one, many) = (rate("always", 1), rate("always", 256));
    if one > 0.0 {
        println!(
            "group commit: always@256 / always@1 throughput = {:.1}x",
            many / one
        );
    }
}

async fn run(
    dir: &Path,
    sync: SyncMode,
    writers: usize,
    records: usize,
) -> Result<Row, Box<dyn std::error::Error>> {
    let opts = LedgerOptions {
        dir: dir.join("ledger"),
        signing_key_path: dir.join("ca").join("ledger-signing.key"),
        sync,
        ..LedgerOptions::default()
    };
    let ledger = Ledger::open(opts).await?;
    let per_writer = records.div_ceil(writers);
    let start = Instant::now();
    let mut tasks = tokio::task::JoinSet::new();
    for w in 0..writers {
        let ledger = ledger.clone();
        tasks.spawn(async move {
            let mut waits = Vec::with_capacity(per_writer);
            for i in 0..per_writer {
                let t = Instant::now();
                ledger.append_decision(facts(w, i)).await?;
                waits.push(t.elapsed());
            }
            Ok::<_, portcullis_ledger::LedgerError>(waits)
        });
    }
    let mut waits = Vec::with_capacity(per_writer * writers);
    while let Some(done) = tasks.join_next().await {
        waits.extend(done??);
    }
    let elapsed = start.elapsed();
    let stats = ledger.stats();
    ledger.shutdown().await?;
    waits.sort();
    let pct = |p: f64| waits[((waits.len() as f64 * p) as usize).min(waits.len() - 1)];
    Ok(Row {
        mode: "",
        writers,
        records: waits.len(),
        per_sec: waits.len() as f64 / elapsed.as_secs_f64(),
        p50: pct(0.50),
        p99: pct(0.99),
        avg_batch: stats.records_total as f64 / stats.batches_total.max(1) as f64,
    })
}

/// A realistic decision: every field set, about 600 bytes on disk.
fn facts(writer: usize, _i: usize) -> DecisionFacts {
    DecisionFacts {
        event_id: portcullis_ledger::new_event_id(),
        tenant: Some("acme".into()),
        agent: Some(format!("agent-{writer}")),
        listener: "forward".into(),
        dest_host: "api.openai.com".into(),
        dest_port: 443,
        method: Some("POST".into()),
        path_template: Some("/v1/chat/completions".into()),
        provider: Some("openai".into()),
        model: Some("gpt-4o-mini".into()),
        operation: Some("chat".into()),
        stream: Some(true),
        decision: "allow".into(),
        reason: "route_matched".into(),
        rule_id: Some("openai".into()),
        policy_generation: 1,
        policy_hash: "sha256:2c26b46b68ffc68ff99b453c1d30413413422d706483bfa0f98a5e886266e7ae"
            .into(),
        detectors: vec![],
        narrowed: vec![],
        key_id: Some("openai-main".into()),
        approver: None,
        peer: None,
        count: None,
    }
}
