//! Crash recovery at start-up: find the end of the existing chain, cut a torn last line back
//! to the last complete record, and refuse to go on when what is missing was checkpointed.

use std::fs::{self, OpenOptions};
use std::io;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use time::OffsetDateTime;

use crate::error::LedgerError;
use crate::format::{self, Entry, Kind, RecoveryRecord, CHECKPOINTS_FILE};
use crate::shared::CheckpointInfo;
use crate::writer::segment::seal_file;

/// What start-up found at the end of the existing chain.
pub(super) struct Tail {
    /// Highest segment index left after recovery.
    pub(super) last_index: Option<u64>,
    pub(super) last_seq: u64,
    pub(super) last_hash: Option<[u8; 32]>,
    pub(super) cuts: Vec<Cut>,
    pub(super) last_checkpoint: Option<CheckpointInfo>,
}

/// A torn tail to drop: truncate `path` to `keep` bytes, or remove it when it held only a
/// torn header.
pub(super) struct Cut {
    path: PathBuf,
    keep: u64,
    dropped: u64,
    remove: bool,
}

/// Scan the tail, cut what a crash tore, and seal the old last segment: every restart begins
/// a new one.
pub(super) fn recover(dir: &Path, cp_log_path: &Path, replica: &str) -> Result<Tail, LedgerError> {
    let tail = scan_tail(dir, cp_log_path, replica)?;
    for cut in &tail.cuts {
        apply_cut(cut)?;
    }
    if let Some(index) = tail.last_index {
        seal_file(&dir.join(format::segment_file_name(index)))?;
    }
    Ok(tail)
}

impl Cut {
    /// Log the cut and describe it as the `recovery` record that goes at `seq`.
    pub(super) fn recovery_record(
        &self,
        seq: u64,
        wall: OffsetDateTime,
        prev: &[u8; 32],
    ) -> RecoveryRecord {
        let file = self
            .path
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        tracing::warn!(
            file,
            bytes_dropped = self.dropped,
            "ledger recovery cut a torn last line"
        );
        RecoveryRecord {
            seq,
            ts: format::format_ts(wall),
            event_id: crate::facts::new_event_id(),
            kind: Kind::Recovery,
            file,
            bytes_dropped: self.dropped,
            reason: "torn_tail".into(),
            refused: None,
            down_since: None,
            prev: hex::encode(prev),
        }
    }
}

/// Find the end of the chain, the torn tails to cut, and the newest checkpoint; refuse to
/// go on when a cut would drop something a checkpoint already covers (tampering, not a crash).
fn scan_tail(dir: &Path, cp_log_path: &Path, replica: &str) -> Result<Tail, LedgerError> {
    let mut cuts = Vec::new();

    // checkpoints.log: a crash may tear its last line too.
    let mut last_checkpoint = None;
    match fs::read(cp_log_path) {
        Ok(bytes) => {
            let (lines, torn) = format::split_lines(&bytes);
            if torn > 0 {
                cuts.push(Cut {
                    path: cp_log_path.to_owned(),
                    keep: (bytes.len() - torn) as u64,
                    dropped: torn as u64,
                    remove: false,
                });
            }
            if let Some(line) = lines.last() {
                let parsed = format::parse_line(line).map_err(|f| LedgerError::Corrupt {
                    file: cp_log_path.to_owned(),
                    line: lines.len() as u64,
                    why: f.why,
                })?;
                let Entry::Checkpoint(cp) = parsed.entry else {
                    return Err(LedgerError::Corrupt {
                        file: cp_log_path.to_owned(),
                        line: lines.len() as u64,
                        why: "not a checkpoint record".into(),
                    });
                };
                last_checkpoint = Some(CheckpointInfo::from_record(cp, parsed.hash, line));
            }
        }
        Err(e) if e.kind() == io::ErrorKind::NotFound => {}
        Err(e) => return Err(LedgerError::io("reading", cp_log_path, e)),
    }

    let segments = format::list_segments(dir).map_err(|e| LedgerError::io("listing", dir, e))?;
    let mut last_index = None;
    let mut last_seq = 0;
    let mut last_hash = None;
    let mut torn_at: Option<PathBuf> = None;
    for (index, path) in segments.iter().rev() {
        let bytes = fs::read(path).map_err(|e| LedgerError::io("reading", path, e))?;
        let (lines, torn) = format::split_lines(&bytes);
        if lines.is_empty() {
            // Only a torn header: the segment never held a record.
            cuts.push(Cut {
                path: path.clone(),
                keep: 0,
                dropped: torn as u64,
                remove: true,
            });
            torn_at.get_or_insert_with(|| path.clone());
            continue;
        }
        if torn > 0 {
            cuts.push(Cut {
                path: path.clone(),
                keep: (bytes.len() - torn) as u64,
                dropped: torn as u64,
                remove: false,
            });
            torn_at.get_or_insert_with(|| path.clone());
        }
        let corrupt = |line: usize, why: String| LedgerError::Corrupt {
            file: path.clone(),
            line: line as u64,
            why,
        };
        let header = match format::parse_line(lines[0])
            .map_err(|f| corrupt(1, f.why))?
            .entry
        {
            Entry::Header(h) => h,
            _ => return Err(corrupt(1, "first line is not a segment header".into())),
        };
        if header.replica != replica {
            return Err(LedgerError::Usage(format!(
                "ledger directory {} belongs to replica {:?}, not {:?}; give each replica its own ledger directory",
                dir.display(),
                header.replica,
                replica
            )));
        }
        let last =
            format::parse_line(lines[lines.len() - 1]).map_err(|f| corrupt(lines.len(), f.why))?;
        last_seq = last
            .entry
            .seq()
            .unwrap_or(header.first_seq.saturating_sub(1));
        last_hash = Some(last.hash);
        last_index = Some(*index);
        break;
    }

    if let Some(cp) = &last_checkpoint {
        if cp.seq > last_seq {
            let location = torn_at
                .as_ref()
                .or(segments.last().map(|(_, p)| p))
                .map_or_else(|| dir.display().to_string(), |p| p.display().to_string());
            let why = if torn_at.is_some() {
                format!(
                    "the torn last line (seq {}) is covered by checkpoint seq {} in {CHECKPOINTS_FILE}; a crash cannot tear a checkpointed record",
                    last_seq + 1,
                    cp.seq
                )
            } else {
                format!(
                    "the chain ends at seq {last_seq} but {CHECKPOINTS_FILE} holds a checkpoint at seq {}: records were deleted",
                    cp.seq
                )
            };
            return Err(LedgerError::Tampered { location, why });
        }
    }
    Ok(Tail {
        last_index,
        last_seq,
        last_hash,
        cuts,
        last_checkpoint,
    })
}

fn apply_cut(cut: &Cut) -> Result<(), LedgerError> {
    if cut.remove {
        return fs::remove_file(&cut.path)
            .map_err(|e| LedgerError::io("removing torn segment", &cut.path, e));
    }
    // The file may already be sealed read-only; it is ours, so open it up for the cut.
    let meta = fs::metadata(&cut.path).map_err(|e| LedgerError::io("reading", &cut.path, e))?;
    if meta.permissions().readonly() {
        fs::set_permissions(&cut.path, fs::Permissions::from_mode(0o640))
            .map_err(|e| LedgerError::io("unsealing for recovery", &cut.path, e))?;
    }
    let file = OpenOptions::new()
        .write(true)
        .open(&cut.path)
        .map_err(|e| LedgerError::io("opening for recovery", &cut.path, e))?;
    file.set_len(cut.keep)
        .and_then(|()| file.sync_all())
        .map_err(|e| LedgerError::io("cutting torn tail of", &cut.path, e))
}
