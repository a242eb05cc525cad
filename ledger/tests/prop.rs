//! Property tests for the ledger reader and verifier on untrusted bytes. They mirror the
//! cargo-fuzz targets `ledger_line` and `ledger_verify` in `fuzz/` with a bounded number
//! of cases, so they run in the normal test command.

mod common;

use std::fs;
use std::path::Path;
use std::sync::OnceLock;

use common::*;
use portcullis_ledger::format::{self, parse_line};
use portcullis_ledger::{verify, VerifyOptions};
use proptest::prelude::*;

/// A valid ledger of three segments (three starts), written once per test binary.
struct Valid {
    _tmp: tempfile::TempDir,
    dir: std::path::PathBuf,
    segments: Vec<Vec<u8>>,
}

fn valid() -> &'static Valid {
    static VALID: OnceLock<Valid> = OnceLock::new();
    VALID.get_or_init(|| {
        let tmp = tempfile::tempdir().expect("tmp");
        let opts = opts(tmp.path());
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("runtime");
        for _ in 0..3 {
            rt.block_on(build(opts.clone(), 4, true));
        }
        let segments = segments(&opts.dir)
            .iter()
            .map(|p| fs::read(p).expect("read"))
            .collect();
        Valid {
            dir: opts.dir.clone(),
            _tmp: tmp,
            segments,
        }
    })
}

/// Copies the valid ledger to a fresh directory with `segments` in place of its own.
fn ledger_with(root: &Path, segments: &[Vec<u8>]) -> std::path::PathBuf {
    let dir = root.join("ledger");
    fs::create_dir_all(&dir).expect("mkdir");
    for name in [format::PUBKEY_FILE, format::CHECKPOINTS_FILE] {
        fs::copy(valid().dir.join(name), dir.join(name)).expect("copy");
    }
    for (i, bytes) in (1u64..).zip(segments) {
        fs::write(dir.join(format::segment_file_name(i)), bytes).expect("write");
    }
    dir
}

fn lines() -> Vec<Vec<u8>> {
    valid()
        .segments
        .iter()
        .flat_map(|s| s.split(|b| *b == b'\n').filter(|l| !l.is_empty()))
        .map(<[u8]>::to_vec)
        .collect()
}

/// Ledger-shaped bytes: real lines, cut or joined, with junk in between.
fn ledger_bytes() -> impl Strategy<Value = Vec<u8>> {
    let lines = lines();
    prop::collection::vec(
        prop_oneof![
            // A whole line, or one cut short.
            3 => (prop::sample::select(lines), any::<usize>()).prop_map(|(l, cut)| {
                let keep = if cut % 3 == 0 { cut % l.len() } else { l.len() };
                let mut l = l[..keep].to_vec();
                l.push(b'\n');
                l
            }),
            1 => prop::collection::vec(any::<u8>(), 0..16),
        ],
        0..8,
    )
    .prop_map(|v| v.concat())
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 256, ..ProptestConfig::default() })]

    #[test]
    fn parse_line_never_panics_on_arbitrary_bytes(line in prop::collection::vec(any::<u8>(), 0..400)) {
        let _ = parse_line(&line);
    }

    #[test]
    fn a_valid_line_with_any_one_byte_changed_fails_to_parse(
        pick in any::<prop::sample::Index>(),
        at in any::<prop::sample::Index>(),
        xor in 1..=255u8,
    ) {
        let lines = lines();
        let mut line = pick.get(&lines).clone();
        prop_assert!(parse_line(&line).is_ok());
        let i = at.index(line.len());
        line[i] ^= xor;
        prop_assert!(parse_line(&line).is_err(), "byte {} changed and the line still verifies", i);
    }
}

proptest! {
    // Each case writes a ledger directory: fewer cases keep the run short.
    #![proptest_config(ProptestConfig { cases: 64, ..ProptestConfig::default() })]

    #[test]
    fn ledger_verify_detects_any_flipped_byte_in_a_valid_chain(
        at in any::<prop::sample::Index>(),
        xor in 1..=255u8,
    ) {
        let mut all = valid().segments.concat();
        let i = at.index(all.len());
        all[i] ^= xor;
        let mut segments = Vec::new();
        let mut rest = &all[..];
        for s in &valid().segments {
            let (head, tail) = rest.split_at(s.len());
            segments.push(head.to_vec());
            rest = tail;
        }
        let tmp = tempfile::tempdir().expect("tmp");
        let dir = ledger_with(tmp.path(), &segments);
        let opts = VerifyOptions { strict: true, ..VerifyOptions::default() };
        let outcome = verify(&dir, &opts);
        prop_assert!(!outcome.as_ref().is_ok_and(|o| o.is_intact()), "byte {} flipped and the ledger verifies", i);
    }

    #[test]
    fn ledger_verify_never_panics_on_arbitrary_segments(
        segments in prop::collection::vec(ledger_bytes(), 1..4),
        strict in any::<bool>(),
    ) {
        let tmp = tempfile::tempdir().expect("tmp");
        let dir = ledger_with(tmp.path(), &segments);
        if let Ok(outcome) = verify(&dir, &VerifyOptions { strict, ..VerifyOptions::default() }) {
            let _ = outcome.to_string();
        }
        let single = dir.join(format::segment_file_name(1));
        let _ = verify(&single, &VerifyOptions::default());
    }
}

#[test]
fn the_valid_ledger_verifies_intact() {
    let tmp = tempfile::tempdir().expect("tmp");
    let dir = ledger_with(tmp.path(), &valid().segments);
    let outcome = verify(
        &dir,
        &VerifyOptions {
            strict: true,
            ..VerifyOptions::default()
        },
    )
    .expect("verify runs");
    assert!(outcome.is_intact(), "{outcome}");
}
