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
