//! The writer: chaining, checkpoints, group commit, sync modes, rotation, keys, recovery and
//! failing closed.

mod common;

use std::collections::BTreeSet;
use std::fs;
use std::future::Future;
use std::path::Path;
use std::pin::pin;
use std::task::{Context, Poll, Waker};
use std::time::Duration;

use common::*;
use portcullis_ledger::format::{self, Entry};
use portcullis_ledger::{
    public_key_from_signing_key_file, verify, Health, Ledger, LedgerError, LedgerOptions, SyncMode,
    TamperKind, VerifyOptions, VerifyOutcome,
};

fn intact(dir: &Path) -> bool {
    let outcome = verify(dir, &VerifyOptions::default()).expect("verify");
    if !outcome.is_intact() {
        eprintln!("{outcome}");
    }
    outcome.is_intact()
}

fn parse_all(path: &Path) -> Vec<Entry> {
    lines(path)
        .iter()
        .map(|l| format::parse_line(l.as_bytes()).expect("valid line").entry)
        .collect()
}

#[tokio::test]
async fn appends_get_contiguous_seqs_and_the_log_verifies_intact() {
    let tmp = tempfile::tempdir().expect("tmp");
    let opts = opts(tmp.path());
    let dir = opts.dir.clone();
    let ledger = Ledger::open(opts).await.expect("open");
    let a = ledger.append_decision(decision(1)).await.expect("decision");
    let b = ledger.append_outcome(outcome(1)).await.expect("outcome");
    let c = ledger.append_config(config()).await.expect("config");
    assert_eq!((a.seq, b.seq, c.seq), (1, 2, 3));
    assert_ne!(a.hash, b.hash);
    assert_eq!(ledger.health(), Health::Healthy);
    ledger.shutdown().await.expect("shutdown");

    let segs = segments(&dir);
    assert_eq!(segs.len(), 1);
    let entries = parse_all(&segs[0]);
    assert!(matches!(entries[0], Entry::Header(_)));
    assert!(matches!(entries[1], Entry::Decision(_)));
    assert!(matches!(entries[2], Entry::Outcome(_)));
    assert!(matches!(entries[3], Entry::Config(_)));
    assert!(
        matches!(entries[4], Entry::Checkpoint(_)),
        "shutdown checkpoint"
    );
    assert!(intact(&dir));
}

#[tokio::test]
async fn appending_after_shutdown_is_refused() {
    let tmp = tempfile::tempdir().expect("tmp");
    let ledger = build(opts(tmp.path()), 1, true).await;
    let err = ledger
        .append_decision(decision(2))
        .await
        .expect_err("closed");
    assert!(matches!(err, LedgerError::Closed), "{err}");
    assert!(matches!(ledger.health(), Health::Unhealthy(_)));
    ledger.shutdown().await.expect("second shutdown is a no-op");
}

#[tokio::test]
async fn shutdown_checkpoint_is_mirrored_to_checkpoints_log_and_is_the_head() {
    let tmp = tempfile::tempdir().expect("tmp");
    let opts = opts(tmp.path());
    let dir = opts.dir.clone();
    let ledger = build(opts, 3, true).await;
    let head = ledger.head().expect("head after shutdown");
    assert_eq!((head.seq, head.head_seq), (4, 3));
    let mirrored = lines(&dir.join(format::CHECKPOINTS_FILE));
    assert_eq!(mirrored, vec![head.line.clone()]);
    let seg = &segments(&dir)[0];
    assert_eq!(lines(seg).last(), Some(&head.line));
    assert_eq!(mode(seg), 0o444, "a finished segment is sealed read-only");
}

#[tokio::test]
async fn a_checkpoint_follows_every_n_records() {
    let tmp = tempfile::tempdir().expect("tmp");
    let opts = LedgerOptions {
        checkpoint_every: 5,
        ..opts(tmp.path())
    };
    let dir = opts.dir.clone();
    let ledger = build(opts, 12, false).await;
    let cps: Vec<u64> = parse_all(&segments(&dir)[0])
        .iter()
        .filter_map(|e| match e {
            Entry::Checkpoint(cp) => Some(cp.head_seq),
            _ => None,
        })
        .collect();
    // Records 1-5 are seqs 1-5 (checkpoint 6), records 6-10 are seqs 7-11 (checkpoint 12).
    assert_eq!(cps, vec![5, 11]);
    assert_eq!(ledger.head().map(|h| h.seq), Some(12));
    ledger.shutdown().await.expect("shutdown");
    assert!(intact(&dir));
}

#[tokio::test]
async fn watchers_see_each_new_checkpoint() {
    let tmp = tempfile::tempdir().expect("tmp");
    let opts = LedgerOptions {
        checkpoint_every: 1,
        ..opts(tmp.path())
    };
    let ledger = Ledger::open(opts).await.expect("open");
    let mut head = ledger.watch_head();
    ledger.append_decision(decision(1)).await.expect("append");
    head.changed().await.expect("a checkpoint was published");
    let cp = head.borrow_and_update().clone().expect("checkpoint");
    assert_eq!((cp.seq, cp.head_seq), (2, 1));
    ledger.shutdown().await.expect("shutdown");
}

#[tokio::test(start_paused = true)]
async fn a_checkpoint_follows_within_the_interval_without_more_records() {
    let tmp = tempfile::tempdir().expect("tmp");
    let opts = LedgerOptions {
        checkpoint_interval: Duration::from_secs(1),
        ..opts(tmp.path())
    };
    let ledger = Ledger::open(opts).await.expect("open");
    ledger.append_decision(decision(1)).await.expect("append");
    assert_eq!(ledger.head(), None);
    tokio::time::sleep(Duration::from_secs(2)).await;
    let head = ledger.head().expect("timer checkpoint");
    assert_eq!((head.seq, head.head_seq), (2, 1));
    ledger.shutdown().await.expect("shutdown");
}

#[tokio::test]
async fn concurrent_appends_are_group_committed() {
    let tmp = tempfile::tempdir().expect("tmp");
    let opts = opts(tmp.path());
    let dir = opts.dir.clone();
    let ledger = Ledger::open(opts).await.expect("open");
    let mut tasks = tokio::task::JoinSet::new();
    for i in 0..200 {
        let ledger = ledger.clone();
        tasks.spawn(async move { ledger.append_decision(decision(i)).await });
    }
    let mut seqs = BTreeSet::new();
    while let Some(done) = tasks.join_next().await {
        seqs.insert(done.expect("join").expect("append").seq);
    }
    assert_eq!(seqs, (1..=200).collect());
    let stats = ledger.stats();
    assert_eq!(stats.records_total, 200);
    assert!(
        stats.syncs_total < 20,
        "200 concurrent appends should share a few fdatasyncs, got {stats:?}"
    );
    ledger.shutdown().await.expect("shutdown");
    assert!(intact(&dir));
}

#[tokio::test(start_paused = true)]
async fn batch_mode_answers_after_the_write_and_syncs_on_the_interval() {
    let tmp = tempfile::tempdir().expect("tmp");
    let opts = LedgerOptions {
        sync: SyncMode::Batch,
        sync_interval: Duration::from_millis(100),
        ..opts(tmp.path())
    };
    let dir = opts.dir.clone();
    let ledger = Ledger::open(opts).await.expect("open");
    ledger.append_decision(decision(1)).await.expect("append");
    // Written to the OS (readable) but not yet synced.
    assert_eq!(ledger.stats().syncs_total, 0);
    assert_eq!(lines(&segments(&dir)[0]).len(), 2);
    tokio::time::sleep(Duration::from_millis(150)).await;
    assert_eq!(
        ledger.stats().syncs_total,
        1,
        "synced once the interval passed"
    );
    ledger.shutdown().await.expect("shutdown");
    assert!(intact(&dir));
}

/// Light batch-mode appends (one buffered write, nothing due) run on the writer's task, so
/// they finish even while every blocking thread is busy; a sync still needs one.
#[test]
fn batch_mode_appends_do_not_wait_for_a_blocking_thread() {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .max_blocking_threads(1)
        .enable_all()
        .build()
        .expect("runtime");
    rt.block_on(async {
        let tmp = tempfile::tempdir().expect("tmp");
        let opts = LedgerOptions {
            sync: SyncMode::Batch,
            sync_interval: Duration::from_secs(3600),
            ..opts(tmp.path())
        };
        let dir = opts.dir.clone();
        let ledger = Ledger::open(opts).await.expect("open");
        // Hold the only blocking thread until the appends are done.
        let (release, held) = std::sync::mpsc::channel::<()>();
        let busy = tokio::task::spawn_blocking(move || {
            let _ = held.recv_timeout(Duration::from_secs(30));
        });
        tokio::time::sleep(Duration::from_millis(50)).await;
        let appends = async {
            for i in 0..20 {
                ledger.append_decision(decision(i)).await.expect("append");
            }
        };
        let done = tokio::time::timeout(Duration::from_secs(10), appends).await;
        let _ = release.send(());
        assert!(
            done.is_ok(),
            "batch-mode appends waited for a blocking thread"
        );
        busy.await.expect("blocking task");
        assert_eq!(
            lines(&segments(&dir)[0]).len(),
            21,
            "header and 20 records written"
        );
        ledger.shutdown().await.expect("shutdown");
        assert!(intact(&dir));
    });
}

#[tokio::test]
async fn batch_mode_inline_writes_keep_checkpoints_rotation_and_the_chain() {
    let tmp = tempfile::tempdir().expect("tmp");
    let opts = LedgerOptions {
        sync: SyncMode::Batch,
        checkpoint_every: 7,
        segment_max_bytes: 3000,
        ..opts(tmp.path())
    };
    let dir = opts.dir.clone();
    let ledger = std::sync::Arc::new(Ledger::open(opts).await.expect("open"));
    let mut tasks = Vec::new();
    for i in 0..100 {
        let ledger = ledger.clone();
        tasks.push(tokio::spawn(async move {
            ledger.append_decision(decision(i)).await.expect("append")
        }));
    }
    let mut seqs = BTreeSet::new();
    for t in tasks {
        seqs.insert(t.await.expect("task").seq);
    }
    assert_eq!(seqs.len(), 100, "every append got its own seq");
    ledger.shutdown().await.expect("shutdown");
    assert!(segments(&dir).len() >= 3, "rotated by size");
    assert!(intact(&dir));
}

#[tokio::test]
async fn always_mode_syncs_before_answering() {
    let tmp = tempfile::tempdir().expect("tmp");
    let ledger = Ledger::open(opts(tmp.path())).await.expect("open");
    ledger.append_decision(decision(1)).await.expect("append");
    assert_eq!(ledger.stats().syncs_total, 1);
    ledger.shutdown().await.expect("shutdown");
}

#[tokio::test]
async fn segments_rotate_by_size_chain_across_files_and_are_sealed() {
    let tmp = tempfile::tempdir().expect("tmp");
    let opts = LedgerOptions {
        segment_max_bytes: 2000,
        ..opts(tmp.path())
    };
    let dir = opts.dir.clone();
    build(opts, 20, true).await;
    let segs = segments(&dir);
    assert!(
        segs.len() >= 4,
        "expected several segments, got {}",
        segs.len()
    );
    for seg in &segs {
        assert_eq!(mode(seg), 0o444, "{} sealed", seg.display());
    }
    // Each header chains from the last line of the segment before it.
    for pair in segs.windows(2) {
        let last = parse_line_hash(lines(&pair[0]).last().expect("line"));
        let Entry::Header(h) = &parse_all(&pair[1])[0] else {
            panic!("no header")
        };
        assert_eq!(h.prev, last);
    }
    assert!(intact(&dir));
}

fn parse_line_hash(line: &str) -> String {
    hex::encode(format::parse_line(line.as_bytes()).expect("line").hash)
}

#[tokio::test]
async fn each_restart_continues_the_chain_in_a_new_segment() {
    let tmp = tempfile::tempdir().expect("tmp");
    let dir = opts(tmp.path()).dir;
    build(opts(tmp.path()), 2, true).await;
    let ledger = build(opts(tmp.path()), 2, false).await;
    let next = ledger.append_decision(decision(9)).await.expect("append");
    assert_eq!(next.seq, 6, "seqs 1-2, checkpoint 3, then 4-5");
    ledger.shutdown().await.expect("shutdown");
    assert_eq!(segments(&dir).len(), 2);
    assert!(intact(&dir));
}

#[tokio::test]
async fn signing_key_is_created_0600_on_first_open_and_reused() {
    let tmp = tempfile::tempdir().expect("tmp");
    let opts = opts(tmp.path());
    let key_path = opts.signing_key_path.clone();
    let first = build(opts.clone(), 1, true).await.public_key_hex();
    assert_eq!(mode(&key_path), 0o600);
    let second = build(opts.clone(), 1, true).await.public_key_hex();
    assert_eq!(first, second);
    assert_eq!(
        public_key_from_signing_key_file(&key_path).expect("pubkey"),
        first
    );
    let listed = fs::read_to_string(opts.dir.join(format::PUBKEY_FILE)).expect("pubkey file");
    assert_eq!(listed.trim(), first);
}

#[tokio::test]
async fn a_signing_key_readable_by_others_is_refused() {
    let tmp = tempfile::tempdir().expect("tmp");
    let opts = opts(tmp.path());
    build(opts.clone(), 1, true).await;
    fs::set_permissions(
        &opts.signing_key_path,
        std::os::unix::fs::PermissionsExt::from_mode(0o644),
    )
    .expect("chmod");
    let err = Ledger::open(opts).await.err().expect("refused");
    assert!(matches!(err, LedgerError::Key { .. }), "{err}");
}

#[tokio::test]
async fn another_replicas_directory_is_refused() {
    let tmp = tempfile::tempdir().expect("tmp");
    build(opts(tmp.path()), 1, true).await;
    let other = LedgerOptions {
        replica_id: "replica-b".into(),
        ..opts(tmp.path())
    };
    let err = Ledger::open(other).await.err().expect("refused");
    assert!(matches!(err, LedgerError::Usage(_)), "{err}");
}

/// Poll a future once without a runtime turn, the way a busy proxy would hit a full queue.
fn poll_once<F: Future>(fut: std::pin::Pin<&mut F>) -> Poll<F::Output> {
    fut.poll(&mut Context::from_waker(Waker::noop()))
}

#[tokio::test]
async fn a_full_queue_refuses_appends_at_once_and_reports_unhealthy_until_drained() {
    let tmp = tempfile::tempdir().expect("tmp");
    let opts = LedgerOptions {
        channel_capacity: 2,
        ..opts(tmp.path())
    };
    let ledger = Ledger::open(opts).await.expect("open");
    // The writer cannot run between these polls (current-thread runtime, no await).
    let mut first = pin!(ledger.append_decision(decision(1)));
    let mut second = pin!(ledger.append_decision(decision(2)));
    let mut third = pin!(ledger.append_decision(decision(3)));
    assert!(poll_once(first.as_mut()).is_pending());
    assert!(poll_once(second.as_mut()).is_pending());
    match poll_once(third.as_mut()) {
        Poll::Ready(Err(LedgerError::Backpressure)) => {}
        other => panic!(
            "expected immediate backpressure, got {:?}",
            other.map(|r| r.map(|a| a.seq))
        ),
    }
    let Health::Unhealthy(reason) = ledger.health() else {
        panic!("a full queue must report unhealthy")
    };
    assert!(reason.contains("queue is full"), "{reason}");
    first.await.expect("queued append completes");
    second.await.expect("queued append completes");
    assert_eq!(
        ledger.health(),
        Health::Healthy,
        "healthy again once drained"
    );
    ledger.shutdown().await.expect("shutdown");
}

/// Can this process create files in a 0500 directory? (root can; then chmod proves nothing.)
fn chmod_stops_writes(dir: &Path) -> bool {
    let probe = dir.join(".probe");
    let blocked = fs::write(&probe, b"x").is_err();
    let _ = fs::remove_file(&probe);
    blocked
}

#[tokio::test]
async fn append_fails_closed_when_the_ledger_directory_becomes_unwritable() {
    let tmp = tempfile::tempdir().expect("tmp");
    let opts = LedgerOptions {
        segment_max_bytes: 1, // every record after the first rotates, i.e. creates a file
        ..opts(tmp.path())
    };
    let dir = opts.dir.clone();
    let ledger = Ledger::open(opts).await.expect("open");
    ledger
        .append_decision(decision(1))
        .await
        .expect("first append");

    fs::set_permissions(&dir, std::os::unix::fs::PermissionsExt::from_mode(0o500)).expect("chmod");
    let moved = tmp.path().join("moved");
    if !chmod_stops_writes(&dir) {
        // Running as root: a read-only mode does not stop us, so take the directory away
        // and put a plain file where it was. Creating the next segment then fails (ENOTDIR).
        eprintln!("running as root: replacing the ledger directory with a file instead of chmod");
        fs::set_permissions(&dir, std::os::unix::fs::PermissionsExt::from_mode(0o750))
            .expect("chmod");
        fs::rename(&dir, &moved).expect("move dir");
        fs::write(&dir, b"not a directory").expect("file in its place");
    }

    let err = ledger
        .append_decision(decision(2))
        .await
        .expect_err("must fail closed");
    assert!(err.is_unavailable(), "{err}");
    let Health::Unhealthy(reason) = ledger.health() else {
        panic!("ledger must report unhealthy")
    };
    assert!(
        reason.contains("segment"),
        "reason names what failed: {reason}"
    );
    // For good: even if the directory came back, the ledger stays closed.
    if moved.exists() {
        fs::remove_file(&dir).expect("rm file");
        fs::rename(&moved, &dir).expect("restore dir");
    } else {
        fs::set_permissions(&dir, std::os::unix::fs::PermissionsExt::from_mode(0o750))
            .expect("chmod");
    }
    let again = ledger
        .append_decision(decision(3))
        .await
        .expect_err("still failed");
    assert!(matches!(again, LedgerError::Unhealthy(_)), "{again}");
}

#[tokio::test]
async fn opening_in_an_unusable_directory_fails() {
    let tmp = tempfile::tempdir().expect("tmp");
    let blocker = tmp.path().join("file");
    fs::write(&blocker, b"x").expect("file");
    let opts = LedgerOptions {
        dir: blocker.join("ledger"),
        ..opts(tmp.path())
    };
    let err = Ledger::open(opts)
        .await
        .err()
        .expect("cannot create dir under a file");
    assert!(matches!(err, LedgerError::Io { .. }), "{err}");
}

/// Run `f` on its own runtime and drop the runtime afterwards without a shutdown: the
/// writer stops mid-flight, as in a crash.
fn crash_after<F: Future<Output = ()>>(f: F) {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    rt.block_on(f);
    drop(rt);
}

#[test]
fn a_torn_last_line_is_cut_on_restart_and_a_recovery_record_notes_it() {
    let tmp = tempfile::tempdir().expect("tmp");
    let opts = opts(tmp.path());
    let dir = opts.dir.clone();
    let crash_opts = opts.clone();
    crash_after(async move {
        let ledger = build(crash_opts, 5, false).await;
        std::mem::forget(ledger); // no handle drop, no shutdown: a crash
    });
    let seg = segments(&dir)[0].clone();
    let before = fs::read(&seg).expect("read");
    let torn = br#"{"seq":6,"ts":"2025-01-01T00:00:00.000Z","event_id":"abc","ki"#;
    let mut with_torn = before.clone();
    with_torn.extend_from_slice(torn);
    rewrite(&seg, &with_torn);
    let outcome = verify(&dir, &VerifyOptions::default()).expect("verify");
    assert!(
        outcome.is_intact(),
        "an unrecovered crash is not tampering: {outcome}"
    );
    assert!(outcome.report().notes.iter().any(|n| n.contains("torn")));

    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    rt.block_on(async {
        let ledger = Ledger::open(opts).await.expect("recovering open");
        ledger.shutdown().await.expect("shutdown");
    });

    assert_eq!(
        fs::read(&seg).expect("read"),
        before,
        "cut back to the last complete record"
    );
    let segs = segments(&dir);
    assert_eq!(segs.len(), 2);
    let entries = parse_all(&segs[1]);
    let Entry::Recovery(rec) = &entries[1] else {
        panic!("expected a recovery record first, got {:?}", entries[1])
    };
    assert_eq!(rec.bytes_dropped, torn.len() as u64);
    assert_eq!(rec.file, "segment-00000001.jsonl");
    assert_eq!(rec.seq, 6);
    assert!(intact(&dir));
}

#[tokio::test]
async fn a_torn_line_covered_by_a_checkpoint_is_reported_as_tampering_and_open_refuses() {
    let tmp = tempfile::tempdir().expect("tmp");
    let opts = opts(tmp.path());
    let dir = opts.dir.clone();
    build(opts.clone(), 5, true).await;
    let seg = segments(&dir)[0].clone();
    let bytes = fs::read(&seg).expect("read");
    // Tear the synced, mirrored shutdown checkpoint in half.
    rewrite(&seg, &bytes[..bytes.len() - 40]);

    match verify(&dir, &VerifyOptions::default()).expect("verify") {
        VerifyOutcome::Tampered {
            kind, first_bad, ..
        } => {
            assert_eq!(kind, TamperKind::TornTailCovered);
            assert_eq!(first_bad.file, seg);
            assert_eq!(first_bad.seq, Some(6));
        }
        other => panic!("expected tampering, got {other}"),
    }
    let err = Ledger::open(opts).await.err().expect("open must refuse");
    assert!(err.is_tampered(), "{err}");
    assert!(
        bytes.len() - 40 == fs::read(&seg).expect("read").len(),
        "evidence left untouched"
    );
}

#[tokio::test]
async fn a_deleted_tail_covered_by_a_checkpoint_makes_open_refuse() {
    let tmp = tempfile::tempdir().expect("tmp");
    let opts = opts(tmp.path());
    let dir = opts.dir.clone();
    build(opts.clone(), 5, true).await;
    let seg = segments(&dir)[0].clone();
    let mut l = lines(&seg);
    l.truncate(l.len() - 2);
    rewrite_lines(&seg, &l);
    let err = Ledger::open(opts).await.err().expect("open must refuse");
    assert!(err.is_tampered(), "{err}");
}

#[tokio::test]
async fn a_query_string_in_a_path_template_never_reaches_the_file() {
    let tmp = tempfile::tempdir().expect("tmp");
    let opts = opts(tmp.path());
    let dir = opts.dir.clone();
    let ledger = Ledger::open(opts).await.expect("open");
    let mut f = decision(1);
    f.path_template = Some("/v1/x?api_key=sk-secret".into());
    ledger.append_decision(f).await.expect("append");
    ledger.shutdown().await.expect("shutdown");
    let text = fs::read_to_string(&segments(&dir)[0]).expect("read");
    assert!(!text.contains("sk-secret") && !text.contains('?'));
}

// Regression: open added 1 to the last record's `seq` read back from disk; a forged
// u64::MAX overflowed (a panic in debug builds) instead of refusing the ledger.
#[tokio::test]
async fn open_refuses_a_ledger_whose_last_seq_is_the_largest_instead_of_overflowing() {
    let tmp = tempfile::tempdir().expect("tmp");
    let opts = opts(tmp.path());
    build(opts.clone(), 3, true).await;
    let seg = segments(&opts.dir)[0].clone();
    let mut l = lines(&seg);
    let last = l.len() - 1;
    l[last] = rehash(&l[last].replace("{\"seq\":4,", "{\"seq\":18446744073709551615,"));
    rewrite_lines(&seg, &l);
    let err = Ledger::open(opts).await.err().expect("open must refuse");
    assert!(err.is_tampered(), "{err}");
}

// Regression: open added 1 to the last segment's index from its file name; a segment named
// with u64::MAX overflowed (a panic in debug builds) instead of refusing the ledger.
#[tokio::test]
async fn open_refuses_a_segment_numbered_the_largest_index_instead_of_overflowing() {
    let tmp = tempfile::tempdir().expect("tmp");
    let opts = opts(tmp.path());
    build(opts.clone(), 1, true).await;
    let seg = segments(&opts.dir)[0].clone();
    fs::copy(&seg, opts.dir.join(format::segment_file_name(u64::MAX))).expect("copy");
    let err = Ledger::open(opts).await.err().expect("open must refuse");
    assert!(err.is_tampered(), "{err}");
}

#[tokio::test]
async fn submitted_outcomes_are_written_in_order_before_shutdown_completes() {
    let tmp = tempfile::tempdir().expect("tmp");
    let opts = opts(tmp.path());
    let dir = opts.dir.clone();
    let ledger = Ledger::open(opts).await.expect("open");
    ledger.append_decision(decision(1)).await.expect("decision");
    for i in 1..=50 {
        assert!(matches!(
            ledger.submit_outcome(outcome(i)),
            portcullis_ledger::Submitted::Queued
        ));
    }
    // Nothing was awaited: shutdown alone must write all fifty, after the decision.
    ledger.shutdown().await.expect("shutdown");
    let entries = parse_all(&segments(&dir)[0]);
    assert!(matches!(entries[1], Entry::Decision(_)));
    let outcomes = entries
        .iter()
        .filter(|e| matches!(e, Entry::Outcome(_)))
        .count();
    assert_eq!(outcomes, 50);
    assert!(intact(&dir));
    // A closed ledger takes no more.
    assert!(matches!(
        ledger.submit_outcome(outcome(51)),
        portcullis_ledger::Submitted::Failed(_)
    ));
}

#[tokio::test]
async fn a_full_queue_hands_a_submitted_outcome_back_to_retry() {
    let tmp = tempfile::tempdir().expect("tmp");
    let mut opts = opts(tmp.path());
    opts.channel_capacity = 1;
    let ledger = Ledger::open(opts).await.expect("open");
    // The writer drains concurrently; submitting far more than fits must hit a full
    // queue at least once, and get its facts back intact.
    let mut handed_back = None;
    for i in 0..10_000 {
        if let portcullis_ledger::Submitted::Full(f) = ledger.submit_outcome(outcome(i)) {
            handed_back = Some((i, f));
            break;
        }
    }
    let (i, f) = handed_back.expect("a one-slot queue filled up");
    assert_eq!(*f, outcome(i), "the facts come back as they went in");
    ledger.shutdown().await.expect("shutdown");
}
