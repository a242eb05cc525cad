//! Checkpoint checks: each checkpoint's place and signature, `checkpoints.log` against the
//! chain, and the `--trusted-checkpoint` read from outside.

use std::collections::HashMap;
use std::fs;
use std::io;
use std::path::Path;

use ed25519_dalek::{Signature, VerifyingKey};

use crate::error::LedgerError;
use crate::format::{self, CheckpointRecord, Entry, CHECKPOINTS_FILE};
use crate::tamper::TamperKind;
use crate::verify::finding::{bad, Finding, Halt};
use crate::verify::report::{ChainReport, Location};

/// A `--trusted-checkpoint` line and where it came from.
pub(super) struct Trusted {
    pub(super) record: CheckpointRecord,
    pub(super) line: Vec<u8>,
    pub(super) line_no: u64,
}

/// The last non-empty line of `path`, which must be a checkpoint record.
pub(super) fn read_trusted(path: &Path) -> Result<Trusted, LedgerError> {
    let text = fs::read_to_string(path)
        .map_err(|e| LedgerError::io("reading trusted checkpoint", path, e))?;
    let (line_no, line) = text
        .lines()
        .enumerate()
        .filter(|(_, l)| !l.trim().is_empty())
        .last()
        .ok_or_else(|| {
            LedgerError::Usage(format!("{} holds no checkpoint line", path.display()))
        })?;
    let line = line.trim();
    let parsed = format::parse_line(line.as_bytes()).map_err(|f| {
        LedgerError::Usage(format!(
            "{}:{}: not a valid checkpoint line: {}",
            path.display(),
            line_no + 1,
            f.why
        ))
    })?;
    match parsed.entry {
        Entry::Checkpoint(record) => Ok(Trusted {
            record,
            line: line.as_bytes().to_vec(),
            line_no: line_no as u64 + 1,
        }),
        _ => Err(LedgerError::Usage(format!(
            "{}:{}: not a checkpoint record",
            path.display(),
            line_no + 1
        ))),
    }
}

/// Does the checkpoint's signature verify under any of `keys`?
pub(super) fn signature_ok(keys: &[VerifyingKey], cp: &CheckpointRecord) -> bool {
    let mut sig = [0u8; 64];
    if cp.signature.len() != 128 || hex::decode_to_slice(&cp.signature, &mut sig).is_err() {
        return false;
    }
    let sig = Signature::from_bytes(&sig);
    let msg =
        format::checkpoint_message(&cp.replica, cp.segment, cp.head_seq, &cp.head_hash, &cp.ts);
    keys.iter().any(|k| k.verify_strict(&msg, &sig).is_ok())
}

/// A checkpoint found in segment `index` of `replica`'s chain: its fields must match its
/// place, and its signature must verify.
pub(super) fn check_record(
    cp: &CheckpointRecord,
    replica: &str,
    index: u64,
    keys: &[VerifyingKey],
    here: &Location,
) -> Result<(), Halt> {
    let why = if cp.replica != replica {
        Some(format!(
            "checkpoint names replica {:?} in the chain of {replica:?}",
            cp.replica
        ))
    } else if cp.segment != index {
        Some(format!(
            "checkpoint names segment {} but sits in segment {index}",
            cp.segment
        ))
    } else if cp.head_seq.checked_add(1) != Some(cp.seq) || cp.head_hash != cp.prev {
        Some("checkpoint does not sign the record right before it".to_owned())
    } else {
        None
    };
    if let Some(why) = why {
        return Err(bad(here, TamperKind::Checkpoint, why));
    }
    if !signature_ok(keys, cp) {
        return Err(bad(
            here,
            TamperKind::BadSignature,
            "the checkpoint signature does not verify under the public key: forged or altered",
        ));
    }
    Ok(())
}

/// Every line of `checkpoints.log` must be a validly signed checkpoint, in increasing
/// order, and byte-identical to the chain's record at its seq. One beyond the end of
/// the chain means the chain lost its tail.
pub(super) fn check_log(
    report: &ChainReport,
    end: &Location,
    checkpoints: &HashMap<u64, Vec<u8>>,
    keys: &[VerifyingKey],
    notes: &mut Vec<String>,
) -> Result<(), Halt> {
    let path = report.dir.join(CHECKPOINTS_FILE);
    let bytes = match fs::read(&path) {
        Ok(bytes) => bytes,
        Err(e) if e.kind() == io::ErrorKind::NotFound => {
            notes.push(format!(
                "{} is missing: truncation of the chain's tail cannot be detected without --trusted-checkpoint",
                path.display()
            ));
            return Ok(());
        }
        Err(e) => return Err(LedgerError::io("reading", &path, e).into()),
    };
    let (lines, torn) = format::split_lines(&bytes);
    if torn > 0 {
        notes.push(format!(
            "{} ends with a torn line of {torn} bytes (a crash while copying a checkpoint)",
            path.display()
        ));
    }
    let last_seq = report.last_seq.unwrap_or(0);
    let mut previous = 0;
    for (i, line) in lines.iter().enumerate() {
        let mut here = Location {
            file: path.clone(),
            line: i as u64 + 1,
            seq: None,
        };
        let parsed = format::parse_line(line).map_err(|f| bad(&here, f.kind, f.why))?;
        let Entry::Checkpoint(cp) = parsed.entry else {
            return Err(bad(
                &here,
                TamperKind::CheckpointLog,
                "not a checkpoint record",
            ));
        };
        here.seq = Some(cp.seq);
        if !signature_ok(keys, &cp) {
            return Err(bad(
                &here,
                TamperKind::BadSignature,
                "the checkpoint signature does not verify under the public key: forged or altered",
            ));
        }
        if cp.seq <= previous {
            return Err(bad(
                &here,
                TamperKind::CheckpointLog,
                format!(
                    "checkpoints go backwards: seq {} after seq {previous}",
                    cp.seq
                ),
            ));
        }
        previous = cp.seq;
        if cp.seq > last_seq {
            let (kind, what) = if report.torn_tail_bytes > 0 {
                (
                    TamperKind::TornTailCovered,
                    "the torn last line was already covered by a checkpoint: not a crash",
                )
            } else {
                (TamperKind::Truncated, "records were deleted from the end")
            };
            return Err(bad(
                end,
                kind,
                format!(
                    "{}:{} signs the chain up to seq {}, but the chain ends at seq {last_seq}: {what}",
                    path.display(),
                    i + 1,
                    cp.head_seq
                ),
            ));
        }
        if checkpoints.get(&cp.seq).map(Vec::as_slice) != Some(*line) {
            return Err(bad(
                &here,
                TamperKind::CheckpointLog,
                format!(
                    "the checkpoint does not match the chain's record at seq {}: the chain was rewritten",
                    cp.seq
                ),
            ));
        }
    }
    Ok(())
}

/// The trusted checkpoint must still be in the chain, byte for byte.
pub(super) fn check_trusted(
    trusted: &Trusted,
    path: &Path,
    report: &mut ChainReport,
    end: &Location,
    checkpoints: &HashMap<u64, Vec<u8>>,
) -> Result<(), Finding> {
    let last_seq = report.last_seq.unwrap_or(0);
    let seq = trusted.record.seq;
    if seq > last_seq {
        return Err(Finding {
            location: end.clone(),
            kind: TamperKind::RolledBack,
            why: format!(
                "the trusted checkpoint covers seq {}, but the chain ends at seq {last_seq}: the ledger was rolled back or truncated",
                trusted.record.head_seq
            ),
        });
    }
    if checkpoints.get(&seq) != Some(&trusted.line) {
        return Err(Finding {
            location: Location {
                file: path.to_owned(),
                line: trusted.line_no,
                seq: Some(seq),
            },
            kind: TamperKind::RolledBack,
            why: format!("the chain's record at seq {seq} is not the trusted checkpoint: the ledger was rewritten"),
        });
    }
    report.trusted_checkpoint_seq = Some(seq);
    Ok(())
}
