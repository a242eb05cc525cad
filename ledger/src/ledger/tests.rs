// Compiled only under #[cfg(test)] (declared in ledger.rs): the handle's own tests.
//! The writer's failure and rotation paths, driven through the handle with the test hooks.

use std::fs;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use time::OffsetDateTime;

use super::*;
use crate::facts::DecisionFacts;
use crate::format;
use crate::verify::{verify, VerifyOptions};
use crate::writer::Clock;

fn opts(root: &Path) -> LedgerOptions {
    LedgerOptions {
        dir: root.join("ledger"),
        signing_key_path: root.join("ca").join("ledger-signing.key"),
        checkpoint_interval: Duration::from_secs(3600),
        ..LedgerOptions::default()
    }
}

fn facts(i: u64) -> DecisionFacts {
    DecisionFacts {
        event_id: format!("{i:032x}"),
        listener: "forward".into(),
        dest_host: "api.openai.com".into(),
        dest_port: 443,
        decision: "allow".into(),
        reason: "route_matched".into(),
        policy_hash: "p".into(),
        ..DecisionFacts::default()
    }
}

#[tokio::test]
async fn a_full_disk_fails_the_append_and_every_later_one() {
    let tmp = tempfile::tempdir().expect("tmp");
    let opts = LedgerOptions {
        segment_max_bytes: 1, // the second record rotates into the "new segment"
        ..opts(tmp.path())
    };
    let hooks = Hooks {
        clock: None,
        next_segment_path: Some(PathBuf::from("/dev/full")),
        disk_full: None,
    };
    let ledger = Ledger::open_with(opts, hooks).await.expect("open");
    ledger
        .append_decision(facts(1))
        .await
        .expect("first append fits");

    let err = ledger
        .append_decision(facts(2))
        .await
        .expect_err("disk full");
    let LedgerError::Unhealthy(reason) = &err else {
        panic!("expected unhealthy, got {err}")
    };
    assert!(reason.contains("No space left"), "{reason}");
    assert_eq!(ledger.health(), Health::Unhealthy(reason.clone()));
    let again = ledger
        .append_decision(facts(3))
        .await
        .expect_err("stays closed");
    assert!(matches!(again, LedgerError::Unhealthy(_)), "{again}");
    assert!(
        ledger.shutdown().await.is_err(),
        "shutdown reports the failure too"
    );
}

#[tokio::test]
async fn segments_rotate_when_the_utc_day_changes() {
    let tmp = tempfile::tempdir().expect("tmp");
    let opts = opts(tmp.path());
    let dir = opts.dir.clone();
    let now = Arc::new(AtomicI64::new(1_700_000_000)); // 2023-11-14T22:13:20Z
    let clock: Clock = {
        let now = now.clone();
        Arc::new(move || {
            OffsetDateTime::from_unix_timestamp(now.load(Ordering::SeqCst))
                .unwrap_or(OffsetDateTime::UNIX_EPOCH)
        })
    };
    let hooks = Hooks {
        clock: Some(clock),
        next_segment_path: None,
        disk_full: None,
    };
    let ledger = Ledger::open_with(opts, hooks).await.expect("open");
    ledger.append_decision(facts(1)).await.expect("append");
    ledger.append_decision(facts(2)).await.expect("append");
    now.fetch_add(2 * 3600, Ordering::SeqCst); // past midnight UTC
    let third = ledger.append_decision(facts(3)).await.expect("append");
    ledger.shutdown().await.expect("shutdown");

    let segments = format::list_segments(&dir).expect("list");
    assert_eq!(segments.len(), 2, "{segments:?}");
    // Records of day 1 stay in segment 1 (its sealing checkpoint is signed on day 2).
    let first = fs::read_to_string(&segments[0].1).expect("read");
    let decisions: Vec<_> = first
        .lines()
        .filter(|l| l.contains("\"kind\":\"decision\""))
        .collect();
    assert_eq!(decisions.len(), 2);
    assert!(decisions.iter().all(|l| l.contains("\"ts\":\"2023-11-14T")));
    let second = fs::read_to_string(&segments[1].1).expect("read");
    assert!(second.contains(&format!("\"seq\":{}", third.seq)));
    assert!(fs::metadata(&segments[0].1)
        .expect("meta")
        .permissions()
        .readonly());
    let outcome = verify(&dir, &VerifyOptions::default()).expect("verify");
    assert!(outcome.is_intact(), "{outcome}");
}

#[tokio::test]
async fn a_disk_that_fills_and_frees_resumes_with_a_recovery_record_and_a_continuous_chain() {
    let tmp = tempfile::tempdir().expect("tmp");
    let opts = opts(tmp.path());
    let dir = opts.dir.clone();
    let full = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let hooks = Hooks {
        clock: None,
        next_segment_path: None,
        disk_full: Some(full.clone()),
    };
    let ledger = Ledger::open_with(opts, hooks).await.expect("open");
    ledger.append_decision(facts(1)).await.expect("fits");

    full.store(true, Ordering::SeqCst);
    let err = ledger
        .append_decision(facts(2))
        .await
        .expect_err("disk full");
    assert!(err.to_string().contains("No space left"), "{err}");
    assert!(matches!(ledger.health(), Health::Unhealthy(_)));
    for i in 3..6 {
        ledger
            .append_decision(facts(i))
            .await
            .expect_err("still down");
    }
    // Still full after the writer's first retry.
    tokio::time::sleep(Duration::from_millis(1300)).await;
    assert!(matches!(ledger.health(), Health::Unhealthy(_)));
    ledger
        .append_decision(facts(6))
        .await
        .expect_err("still down");

    full.store(false, Ordering::SeqCst);
    let mut waited = 0;
    while ledger.health() != Health::Healthy {
        assert!(waited < 40, "the ledger did not come back by itself");
        tokio::time::sleep(Duration::from_millis(100)).await;
        waited += 1;
    }
    let after = ledger.append_decision(facts(7)).await.expect("resumed");
    ledger.shutdown().await.expect("shutdown");

    let outcome = verify(&dir, &VerifyOptions::default()).expect("verify");
    assert!(outcome.is_intact(), "{outcome}");
    let segments = format::list_segments(&dir).expect("list");
    let text = fs::read_to_string(&segments[0].1).expect("read");
    let lines: Vec<serde_json::Value> = text
        .lines()
        .map(|l| serde_json::from_str(l).expect("json"))
        .collect();
    let decisions: Vec<&str> = lines
        .iter()
        .filter(|l| l["kind"] == "decision")
        .filter_map(|l| l["event_id"].as_str())
        .collect();
    assert_eq!(decisions, [facts(1).event_id, facts(7).event_id]);
    let recovery: Vec<_> = lines.iter().filter(|l| l["kind"] == "recovery").collect();
    assert_eq!(recovery.len(), 1, "{text}");
    let r = recovery[0];
    assert_eq!(r["reason"], "disk_full");
    // Appends 2..=6 were refused: one by the writer, four at the handle.
    assert_eq!(r["refused"], 5, "{r}");
    assert!(r["bytes_dropped"].as_u64().expect("bytes") > 0, "{r}");
    assert!(r["down_since"].as_str().expect("since") <= r["ts"].as_str().expect("ts"));
    assert_eq!(after.seq, r["seq"].as_u64().expect("seq") + 1);
}
