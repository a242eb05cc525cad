//! `ledger verify` over a whole ledger directory. The first byte picks what the rest is:
//! 0, the segments themselves (split at NUL bytes); 1, byte flips of the committed valid
//! ledger's segments, which a strict verify must report; 2, segments rewritten by a forger who
//! recomputes every hash and re-signs every checkpoint with the key, so the verifier's
//! deeper checks get fuzzed. Bit 7 makes the verify strict, bit 6 verifies the first
//! segment file alone. It never panics, and its report always renders.
#![no_main]
#![forbid(unsafe_code)]

use std::sync::OnceLock;

use libfuzzer_sys::fuzz_target;
use portcullis_fuzz::{forge, split_nul, LedgerDir, LEDGER_CHECKPOINTS, LEDGER_SEGMENTS};
use portcullis_ledger::format::segment_file_name;
use portcullis_ledger::{verify, VerifyOptions};

fn scratch() -> &'static LedgerDir {
    static DIR: OnceLock<LedgerDir> = OnceLock::new();
    DIR.get_or_init(LedgerDir::new)
}

fuzz_target!(|data: &[u8]| {
    let Some((&mode, rest)) = data.split_first() else {
        return;
    };
    let dir = scratch();
    let mut opts = VerifyOptions {
        strict: mode & 0x80 != 0,
        ..VerifyOptions::default()
    };
    match mode % 3 {
        0 => dir.write(&split_nul(rest, 3), Some(LEDGER_CHECKPOINTS)),
        1 => {
            // Only the chain is flipped: a torn last line of `checkpoints.log` (a crash
            // while copying a checkpoint) is not tampering with the chain.
            let mut all: Vec<u8> = LEDGER_SEGMENTS.concat();
            let original = all.clone();
            for flip in rest.chunks_exact(3) {
                let at = usize::from(u16::from_le_bytes([flip[0], flip[1]])) % all.len();
                all[at] ^= flip[2];
            }
            if all == original {
                return;
            }
            let mut parts = Vec::new();
            let mut tail = &all[..];
            for seg in LEDGER_SEGMENTS {
                let (head, rest) = tail.split_at(seg.len());
                parts.push(head);
                tail = rest;
            }
            dir.write(&parts, Some(LEDGER_CHECKPOINTS));
            let last = LEDGER_CHECKPOINTS
                .split(|b| *b == b'\n')
                .rfind(|l| !l.is_empty());
            dir.write_trusted(last.unwrap_or_default());
            opts = VerifyOptions {
                strict: true,
                trusted_checkpoint: Some(dir.trusted.clone()),
                ..opts
            };
            let outcome = verify(&dir.dir, &opts);
            assert!(
                !outcome.as_ref().is_ok_and(|o| o.is_intact()),
                "a flipped byte went unnoticed"
            );
            return;
        }
        _ => {
            let input = split_nul(rest, 3);
            let (segments, log) = forge(&input);
            let segments: Vec<&[u8]> = segments.iter().map(Vec::as_slice).collect();
            dir.write(&segments, Some(&log));
            if input == LEDGER_SEGMENTS {
                // The forger's own check: re-forging the valid ledger keeps it valid.
                let outcome = verify(&dir.dir, &opts);
                assert!(
                    outcome.as_ref().is_ok_and(|o| o.is_intact()),
                    "forge broke the fixture"
                );
            }
        }
    }
    // Bit 6: verify the first segment file alone (no neighbours, any `first_seq`).
    let path = if mode & 0x40 != 0 {
        dir.dir.join(segment_file_name(1))
    } else {
        dir.dir.clone()
    };
    if let Ok(outcome) = verify(&path, &opts) {
        let _ = outcome.to_string();
    }
});
