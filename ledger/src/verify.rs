//! `ledger verify`: check a ledger (one segment, one chain directory, or a directory of
//! replica chains) without trusting anything in it except, optionally, a public key and a
//! checkpoint supplied from outside.

mod chains;
mod checkpoints;
mod finding;
mod report;
mod scan;

use std::fs;
use std::io;
use std::path::{Path, PathBuf};

use crate::error::LedgerError;
use crate::format::PUBKEY_FILE;
use crate::keys;
use crate::tamper::TamperKind;
use crate::verify::chains::find_chains;
use crate::verify::checkpoints::{read_trusted, signature_ok};
use crate::verify::finding::{Finding, Halt};
use crate::verify::scan::ChainScan;

pub use report::{ChainReport, KeySource, Location, VerifyOutcome, VerifyReport};

/// What `ledger verify` was asked for.
#[derive(Clone, Debug, Default)]
pub struct VerifyOptions {
    /// File with the hex public key(s) to check checkpoint signatures against. Without it,
    /// the `pubkey` file beside the log is used, which an attacker who rewrote the log may
    /// have replaced too; the report says so.
    pub pubkey: Option<PathBuf>,
    /// A checkpoint line kept somewhere safe (a copy of a `checkpoints.log` line or of
    /// `/v1/ledger/head`'s `line`). The ledger must still contain exactly that record;
    /// this detects a whole log rolled back to an older copy.
    pub trusted_checkpoint: Option<PathBuf>,
    /// Treat records after the last checkpoint (and a torn last line) as errors.
    pub strict: bool,
}

/// Verify the ledger at `path`: one segment file, one ledger directory, or a directory whose
/// subdirectories are replica chains (SPEC §14).
///
/// Checks parsing and canonical form, the field allowlist, contiguous `seq`, every link
/// (also across segments, through the segment headers), every checkpoint signature and its
/// monotonicity, that the files are not shorter than `checkpoints.log` says, and, with
/// `--trusted-checkpoint`, that the trusted checkpoint is still in the chain.
pub fn verify(path: &Path, opts: &VerifyOptions) -> Result<VerifyOutcome, LedgerError> {
    let meta = fs::metadata(path).map_err(|e| LedgerError::io("reading", path, e))?;
    let targets = find_chains(path, meta.is_file())?;

    let given_keys = opts
        .pubkey
        .as_ref()
        .map(|p| keys::read_public_keys(p))
        .transpose()?;
    let mut beside = Vec::new();
    let mut chain_keys = Vec::new();
    for target in &targets {
        match &given_keys {
            Some(keys) => chain_keys.push(keys.clone()),
            None => {
                let key_path = target.dir.join(PUBKEY_FILE);
                match keys::read_public_keys(&key_path) {
                    Ok(keys) => chain_keys.push(keys),
                    Err(LedgerError::Io { source, .. })
                        if source.kind() == io::ErrorKind::NotFound =>
                    {
                        return Err(LedgerError::Usage(format!(
                            "no public key: {} does not exist; pass --pubkey FILE (see `portcullis ledger pubkey`)",
                            key_path.display()
                        )));
                    }
                    Err(e) => return Err(e),
                }
                beside.push(key_path);
            }
        }
    }
    let key_source = match &opts.pubkey {
        Some(path) => KeySource::Given(path.clone()),
        None => KeySource::BesideLog(beside),
    };

    let mut scans = Vec::new();
    let mut notes = Vec::new();
    for (target, keys) in targets.into_iter().zip(&chain_keys) {
        let mut scan = ChainScan::new(target, keys);
        let finding = match scan.run(&mut notes) {
            Ok(()) => None,
            Err(Halt::Tampered(f)) => Some(f),
            Err(Halt::Error(e)) => return Err(e),
        };
        scans.push((scan, finding));
    }

    if let Some(trusted_path) = &opts.trusted_checkpoint {
        let trusted = read_trusted(trusted_path)?;
        let index = scans.iter().position(|(s, _)| {
            s.report.replica.as_deref() == Some(trusted.record.replica.as_str())
        });
        match index {
            None => {
                let finding = Finding {
                    location: Location {
                        file: trusted_path.clone(),
                        line: trusted.line_no,
                        seq: Some(trusted.record.seq),
                    },
                    kind: TamperKind::RolledBack,
                    why: format!(
                        "no chain for replica {:?}, which the trusted checkpoint names: the ledger was replaced or removed",
                        trusted.record.replica
                    ),
                };
                if let Some((_, slot)) = scans.first_mut() {
                    slot.get_or_insert(finding);
                }
            }
            Some(i) => {
                let (scan, slot) = &mut scans[i];
                let keys = &chain_keys[i];
                if !signature_ok(keys, &trusted.record) {
                    return Err(LedgerError::Usage(format!(
                        "the trusted checkpoint in {} does not verify under the public key in use; it is not a checkpoint of this ledger",
                        trusted_path.display()
                    )));
                }
                if scan.target.single_file {
                    notes.push(
                        "the trusted checkpoint is not checked against a single segment; pass the ledger directory".into(),
                    );
                } else if slot.is_none() {
                    *slot = scan.check_trusted(&trusted, trusted_path).err();
                }
            }
        }
    }

    for (scan, slot) in &mut scans {
        if slot.is_some() {
            continue;
        }
        let report = &scan.report;
        if report.torn_tail_bytes > 0 {
            let msg = format!(
                "{} ends with a torn line of {} bytes (a crash); the next start cuts it and writes a recovery record",
                scan.end.file.display(),
                report.torn_tail_bytes
            );
            if opts.strict {
                *slot = Some(Finding {
                    location: scan.end.clone(),
                    kind: TamperKind::TornTail,
                    why: msg,
                });
                continue;
            }
            notes.push(msg);
        }
        if report.unanchored > 0 {
            let msg = format!(
                "{} record(s) after the last checkpoint in {} are unanchored: no signature covers them yet",
                report.unanchored,
                report.dir.display()
            );
            match (&scan.first_unanchored, opts.strict) {
                (Some(location), true) => {
                    *slot = Some(Finding {
                        location: location.clone(),
                        kind: TamperKind::Unanchored,
                        why: msg,
                    });
                }
                _ => notes.push(msg),
            }
        }
    }

    let mut first = None;
    let mut chains = Vec::new();
    for (scan, finding) in scans {
        if first.is_none() {
            first = finding;
        }
        chains.push(scan.report);
    }
    let report = VerifyReport {
        chains,
        key_source,
        notes,
    };
    Ok(match first {
        None => VerifyOutcome::Intact(report),
        Some(f) => VerifyOutcome::Tampered {
            first_bad: f.location,
            kind: f.kind,
            why: f.why,
            report,
        },
    })
}
