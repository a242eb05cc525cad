//! `ledger verify`: one test per kind of tampering it must catch, plus the intact cases.

mod common;

use std::fs;
use std::path::{Path, PathBuf};

use common::*;
use ed25519_dalek::{Signer, SigningKey};
use portcullis_ledger::format::{self, Entry};
use portcullis_ledger::{
    verify, KeySource, LedgerError, LedgerOptions, Location, TamperKind, VerifyOptions,
    VerifyOutcome,
};

/// Assert tampering of `kind` whose first bad record is `file:line`.
fn assert_tampered(outcome: VerifyOutcome, kind: TamperKind, file: &Path, line: u64) -> Location {
    match outcome {
        VerifyOutcome::Tampered {
            first_bad,
            kind: found,
            why,
            ..
        } => {
            assert_eq!(found, kind, "why: {why}");
            assert_eq!(first_bad.file, file, "why: {why}");
            assert_eq!(first_bad.line, line, "why: {why}");
            assert!(!why.is_empty());
            first_bad
        }
        other => panic!("expected {kind} tampering, got:\n{other}"),
    }
}

fn run(path: &Path) -> VerifyOutcome {
    verify(path, &VerifyOptions::default()).expect("verify runs")
}

/// A shut-down ledger of `n` decisions in `root/ledger`; returns its dir and first segment.
async fn ledger_of(root: &Path, n: u64) -> (PathBuf, PathBuf) {
    let opts = opts(root);
    let dir = opts.dir.clone();
    build(opts, n, true).await;
    let seg = segments(&dir)[0].clone();
    (dir, seg)
}

#[tokio::test]
async fn an_untouched_ledger_is_intact_and_exits_0() {
    let tmp = tempfile::tempdir().expect("tmp");
    let (dir, _) = ledger_of(tmp.path(), 10).await;
    let outcome = run(&dir);
    assert_eq!(outcome.exit_code(), 0, "{outcome}");
    let report = outcome.report();
    assert_eq!(report.chains.len(), 1);
    assert_eq!(report.chains[0].records, 11);
    assert_eq!(report.chains[0].unanchored, 0);
    assert_eq!(report.chains[0].replica.as_deref(), Some("default"));
    assert!(matches!(report.key_source, KeySource::BesideLog(_)));
    assert!(
        outcome.to_string().contains("key found beside the log"),
        "the report must say the key check is the weaker one"
    );
}

#[tokio::test]
async fn ledger_verify_detects_an_edited_field() {
    let tmp = tempfile::tempdir().expect("tmp");
    let (dir, seg) = ledger_of(tmp.path(), 10).await;
    let mut l = lines(&seg);
    l[4] = l[4].replace("\"decision\":\"allow\"", "\"decision\":\"deny\"");
    rewrite_lines(&seg, &l);
    let bad = assert_tampered(run(&dir), TamperKind::HashMismatch, &seg, 5);
    assert_eq!(bad.seq, Some(4));
}

#[tokio::test]
async fn ledger_verify_detects_an_edited_field_even_when_its_hash_is_recomputed() {
    let tmp = tempfile::tempdir().expect("tmp");
    let (dir, seg) = ledger_of(tmp.path(), 10).await;
    let mut l = lines(&seg);
    l[4] = rehash(&l[4].replace("\"decision\":\"allow\"", "\"decision\":\"deny\""));
    rewrite_lines(&seg, &l);
    assert_tampered(run(&dir), TamperKind::BrokenLink, &seg, 6);
}

#[tokio::test]
async fn ledger_verify_detects_a_reordered_pair() {
    let tmp = tempfile::tempdir().expect("tmp");
    let (dir, seg) = ledger_of(tmp.path(), 10).await;
    let mut l = lines(&seg);
    l.swap(3, 4);
    rewrite_lines(&seg, &l);
    let bad = assert_tampered(run(&dir), TamperKind::Sequence, &seg, 4);
    assert_eq!(bad.seq, Some(4));
}

#[tokio::test]
async fn ledger_verify_detects_a_deleted_middle_record() {
    let tmp = tempfile::tempdir().expect("tmp");
    let (dir, seg) = ledger_of(tmp.path(), 10).await;
    let mut l = lines(&seg);
    l.remove(5);
    rewrite_lines(&seg, &l);
    let bad = assert_tampered(run(&dir), TamperKind::Sequence, &seg, 6);
    assert_eq!(bad.seq, Some(6), "the record after the hole");
}

#[tokio::test]
async fn ledger_verify_detects_a_deleted_tail_covered_by_a_checkpoint() {
    let tmp = tempfile::tempdir().expect("tmp");
    let (dir, seg) = ledger_of(tmp.path(), 10).await;
    let mut l = lines(&seg);
    // Drop the last three records including the final checkpoint: the chain itself is
    // still consistent, but checkpoints.log says it was longer.
    l.truncate(l.len() - 3);
    rewrite_lines(&seg, &l);
    let bad = assert_tampered(run(&dir), TamperKind::Truncated, &seg, l.len() as u64 + 1);
    assert_eq!(bad.seq, Some(9));
}

#[tokio::test]
async fn ledger_verify_detects_a_forged_checkpoint_signature() {
    let tmp = tempfile::tempdir().expect("tmp");
    let (dir, seg) = ledger_of(tmp.path(), 10).await;
    let mut l = lines(&seg);
    let last = l.len() - 1;
    let Entry::Checkpoint(cp) = format::parse_line(l[last].as_bytes()).expect("cp").entry else {
        panic!("last line is the shutdown checkpoint")
    };
    // A forger's own key signs the same claim; the line and checkpoints.log are rewritten
    // consistently so only the signature can give it away.
    let forger = SigningKey::generate(&mut rand_core06::OsRng);
    let msg =
        format::checkpoint_message(&cp.replica, cp.segment, cp.head_seq, &cp.head_hash, &cp.ts);
    let forged_sig = hex::encode(forger.sign(&msg).to_bytes());
    l[last] = rehash(&l[last].replace(&cp.signature, &forged_sig));
    rewrite_lines(&seg, &l);
    rewrite_lines(&dir.join(format::CHECKPOINTS_FILE), &[l[last].clone()]);
    assert_tampered(run(&dir), TamperKind::BadSignature, &seg, l.len() as u64);
}

#[tokio::test]
async fn ledger_verify_detects_a_whole_log_rolled_back_given_a_trusted_checkpoint() {
    let tmp = tempfile::tempdir().expect("tmp");
    let opts = opts(tmp.path());
    let dir = opts.dir.clone();
    build(opts.clone(), 5, true).await;
    let snapshot = tmp.path().join("snapshot");
    copy_dir(&dir, &snapshot);
    let later = build(opts, 5, true).await;
    let trusted = tmp.path().join("trusted-checkpoint");
    fs::write(&trusted, later.head().expect("head").line).expect("write trusted");

    // The attacker puts the older, perfectly consistent copy back.
    fs::remove_dir_all(&dir).expect("rm");
    copy_dir(&snapshot, &dir);
    assert!(
        run(&dir).is_intact(),
        "without an outside anchor a rollback looks intact"
    );

    let with_trusted = VerifyOptions {
        trusted_checkpoint: Some(trusted),
        ..VerifyOptions::default()
    };
    let outcome = verify(&dir, &with_trusted).expect("verify");
    let seg = segments(&dir)[0].clone();
    let bad = assert_tampered(
        outcome,
        TamperKind::RolledBack,
        &seg,
        lines(&seg).len() as u64 + 1,
    );
    assert_eq!(bad.seq, Some(7));
}

#[tokio::test]
async fn a_trusted_checkpoint_still_in_the_chain_passes() {
    let tmp = tempfile::tempdir().expect("tmp");
    let opts = opts(tmp.path());
    let dir = opts.dir.clone();
    let ledger = build(opts.clone(), 5, true).await;
    let trusted = tmp.path().join("trusted-checkpoint");
    fs::write(&trusted, format!("{}\n", ledger.head().expect("head").line)).expect("write");
    build(opts, 5, true).await;
    let outcome = verify(
        &dir,
        &VerifyOptions {
            trusted_checkpoint: Some(trusted),
            ..VerifyOptions::default()
        },
    )
    .expect("verify");
    assert!(outcome.is_intact(), "{outcome}");
    assert_eq!(outcome.report().chains[0].trusted_checkpoint_seq, Some(6));
}

#[tokio::test]
async fn ledger_verify_detects_a_spliced_segment() {
    let tmp = tempfile::tempdir().expect("tmp");
    let small = |root: &Path| LedgerOptions {
        segment_max_bytes: 2000,
        ..opts(root)
    };
    let a = small(&tmp.path().join("a"));
    let b = LedgerOptions {
        // Same key, same replica id: only the chain can tell the segments apart.
        signing_key_path: a.signing_key_path.clone(),
        ..small(&tmp.path().join("b"))
    };
    build(a.clone(), 12, true).await;
    build(b.clone(), 12, true).await;
    let target = segments(&a.dir)[1].clone();
    let foreign = fs::read(&segments(&b.dir)[1]).expect("read");
    rewrite(&target, &foreign);
    assert_tampered(run(&a.dir), TamperKind::SegmentSplice, &target, 1);
}

#[tokio::test]
async fn ledger_verify_detects_a_missing_segment() {
    let tmp = tempfile::tempdir().expect("tmp");
    let opts = LedgerOptions {
        segment_max_bytes: 2000,
        ..opts(tmp.path())
    };
    let dir = opts.dir.clone();
    build(opts, 12, true).await;
    let segs = segments(&dir);
    fs::remove_file(&segs[1]).expect("rm");
    assert_tampered(run(&dir), TamperKind::SegmentMissing, &segs[1], 1);
}

#[tokio::test]
async fn ledger_verify_rejects_a_field_outside_the_allowlist() {
    let tmp = tempfile::tempdir().expect("tmp");
    let (dir, seg) = ledger_of(tmp.path(), 3).await;
    let mut l = lines(&seg);
    l[2] = rehash(&l[2].replacen("\"listener\"", "\"prompt\":\"say hi\",\"listener\"", 1));
    rewrite_lines(&seg, &l);
    assert_tampered(run(&dir), TamperKind::Schema, &seg, 3);
}

#[tokio::test]
async fn ledger_verify_rejects_non_canonical_bytes() {
    let tmp = tempfile::tempdir().expect("tmp");
    let (dir, seg) = ledger_of(tmp.path(), 3).await;
    let mut l = lines(&seg);
    l[2] = rehash(&l[2].replacen("\"dest_port\":443", "\"dest_port\":443.0", 1));
    rewrite_lines(&seg, &l);
    let outcome = run(&dir);
    assert!(!outcome.is_intact(), "{outcome}");
}

#[tokio::test]
async fn unanchored_records_are_reported_and_fail_with_strict() {
    let tmp = tempfile::tempdir().expect("tmp");
    let opts = opts(tmp.path());
    let dir = opts.dir.clone();
    let ledger = build(opts, 3, false).await; // no shutdown: nothing checkpointed yet
    let outcome = run(&dir);
    assert!(outcome.is_intact(), "{outcome}");
    assert_eq!(outcome.report().chains[0].unanchored, 3);
    assert!(outcome
        .report()
        .notes
        .iter()
        .any(|n| n.contains("unanchored")));

    let strict = verify(
        &dir,
        &VerifyOptions {
            strict: true,
            ..VerifyOptions::default()
        },
    )
    .expect("verify");
    let seg = segments(&dir)[0].clone();
    let bad = assert_tampered(strict, TamperKind::Unanchored, &seg, 2);
    assert_eq!(bad.seq, Some(1));
    ledger.shutdown().await.expect("shutdown");
}

#[tokio::test]
async fn a_directory_of_replica_chains_is_verified_chain_by_chain() {
    let tmp = tempfile::tempdir().expect("tmp");
    let root = tmp.path().join("ledgers");
    for replica in ["r1", "r2"] {
        let opts = LedgerOptions {
            dir: root.join(replica),
            signing_key_path: tmp.path().join(replica).join("key"),
            replica_id: replica.into(),
            ..opts(tmp.path())
        };
        build(opts, 4, true).await;
    }
    let outcome = run(&root);
    assert!(outcome.is_intact(), "{outcome}");
    let replicas: Vec<_> = outcome
        .report()
        .chains
        .iter()
        .map(|c| c.replica.clone().unwrap_or_default())
        .collect();
    assert_eq!(replicas, ["r1", "r2"]);

    let seg = segments(&root.join("r2"))[0].clone();
    let mut l = lines(&seg);
    l.remove(2);
    rewrite_lines(&seg, &l);
    assert_tampered(run(&root), TamperKind::Sequence, &seg, 3);
}

#[tokio::test]
async fn a_given_public_key_is_used_and_a_wrong_one_fails_the_signatures() {
    let tmp = tempfile::tempdir().expect("tmp");
    let (dir, seg) = ledger_of(tmp.path(), 3).await;
    let right = tmp.path().join("right.pub");
    fs::copy(dir.join(format::PUBKEY_FILE), &right).expect("copy");
    let outcome = verify(
        &dir,
        &VerifyOptions {
            pubkey: Some(right.clone()),
            ..VerifyOptions::default()
        },
    )
    .expect("verify");
    assert!(outcome.is_intact(), "{outcome}");
    assert_eq!(outcome.report().key_source, KeySource::Given(right));

    let wrong = tmp.path().join("wrong.pub");
    let other = SigningKey::generate(&mut rand_core06::OsRng);
    fs::write(&wrong, hex::encode(other.verifying_key().as_bytes())).expect("write");
    let outcome = verify(
        &dir,
        &VerifyOptions {
            pubkey: Some(wrong),
            ..VerifyOptions::default()
        },
    )
    .expect("verify");
    assert_tampered(outcome, TamperKind::BadSignature, &seg, 5);
}

#[tokio::test]
async fn one_segment_file_can_be_verified_on_its_own() {
    let tmp = tempfile::tempdir().expect("tmp");
    let (_, seg) = ledger_of(tmp.path(), 3).await;
    let outcome = run(&seg);
    assert!(outcome.is_intact(), "{outcome}");
    assert_eq!(outcome.report().chains[0].records, 4);
}

#[tokio::test]
async fn usage_and_io_problems_are_errors_not_verdicts() {
    let tmp = tempfile::tempdir().expect("tmp");
    let missing = verify(&tmp.path().join("nope"), &VerifyOptions::default());
    assert!(matches!(missing, Err(LedgerError::Io { .. })));
    let empty = verify(tmp.path(), &VerifyOptions::default());
    assert!(matches!(empty, Err(LedgerError::Usage(_))));

    let (dir, _) = ledger_of(tmp.path(), 1).await;
    fs::remove_file(dir.join(format::PUBKEY_FILE)).expect("rm");
    let no_key = verify(&dir, &VerifyOptions::default());
    assert!(matches!(no_key, Err(LedgerError::Usage(_))), "{no_key:?}");
}

fn copy_dir(from: &Path, to: &Path) {
    fs::create_dir_all(to).expect("mkdir");
    for entry in fs::read_dir(from).expect("read_dir") {
        let entry = entry.expect("entry");
        fs::copy(entry.path(), to.join(entry.file_name())).expect("copy");
    }
}

/// Chain `lines` again after an edit, as a forger without the signing key would: each
/// line's `prev` set to the hash of the line before it (the first keeps its own), and its
/// own hash recomputed.
fn relink(lines: &mut [String]) {
    let mut prev: Option<String> = None;
    for line in lines.iter_mut() {
        if let Some(p) = &prev {
            let at = line.rfind("\"prev\":\"").expect("prev") + 8;
            line.replace_range(at..at + 64, p);
        }
        *line = rehash(line);
        prev = Some(line[line.len() - 66..line.len() - 2].to_owned());
    }
}

const MAX_SEQ: &str = "18446744073709551615";

// Regression: verify added 1 to a forged `seq` of u64::MAX and overflowed (a panic in
// debug builds) instead of reporting the record.
#[tokio::test]
async fn ledger_verify_reports_a_record_at_the_largest_seq_instead_of_overflowing() {
    let tmp = tempfile::tempdir().expect("tmp");
    let (_, seg) = ledger_of(tmp.path(), 3).await;
    let l = lines(&seg);
    let mut forged = vec![
        l[0].replace("\"first_seq\":1,", &format!("\"first_seq\":{MAX_SEQ},")),
        l[1].replace("{\"seq\":1,", &format!("{{\"seq\":{MAX_SEQ},")),
    ];
    relink(&mut forged);
    rewrite_lines(&seg, &forged);
    let bad = assert_tampered(run(&seg), TamperKind::Sequence, &seg, 2);
    assert_eq!(bad.seq, Some(u64::MAX));
}

// Regression: verify added 1 to a forged checkpoint `head_seq` of u64::MAX and overflowed
// (a panic in debug builds) before it checked the signature.
#[tokio::test]
async fn ledger_verify_reports_a_checkpoint_of_the_largest_head_seq_instead_of_overflowing() {
    let tmp = tempfile::tempdir().expect("tmp");
    let (dir, seg) = ledger_of(tmp.path(), 3).await;
    let mut l = lines(&seg);
    let last = l.len() - 1;
    assert!(l[last].contains("\"kind\":\"checkpoint\""));
    l[last] = rehash(&l[last].replace("\"head_seq\":3,", &format!("\"head_seq\":{MAX_SEQ},")));
    rewrite_lines(&seg, &l);
    assert_tampered(run(&dir), TamperKind::Checkpoint, &seg, l.len() as u64);
}
