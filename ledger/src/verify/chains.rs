//! Where the chains are: a single segment, one ledger directory, or a directory of replica
//! chains (SPEC §14).

use std::fs;
use std::path::{Path, PathBuf};

use crate::error::LedgerError;
use crate::format;

/// One chain to walk: a replica's directory and its segments by index.
pub(super) struct Target {
    pub(super) dir: PathBuf,
    pub(super) segments: Vec<(u64, PathBuf)>,
    /// Verifying one segment file: no neighbours, no `checkpoints.log`.
    pub(super) single_file: bool,
}

/// The chains at `path`: one segment file, one ledger directory, or the replica
/// directories inside it.
pub(super) fn find_chains(path: &Path, is_file: bool) -> Result<Vec<Target>, LedgerError> {
    if is_file {
        let index = path
            .file_name()
            .and_then(|n| n.to_str())
            .and_then(format::parse_segment_file_name)
            .ok_or_else(|| {
                LedgerError::Usage(format!(
                    "{} is not a ledger segment (segment-NNNNNNNN.jsonl); pass a segment or a ledger directory",
                    path.display()
                ))
            })?;
        let dir = path
            .parent()
            .filter(|p| !p.as_os_str().is_empty())
            .unwrap_or(Path::new("."))
            .to_owned();
        return Ok(vec![Target {
            dir,
            segments: vec![(index, path.to_owned())],
            single_file: true,
        }]);
    }
    let list =
        |dir: &Path| format::list_segments(dir).map_err(|e| LedgerError::io("listing", dir, e));
    let segments = list(path)?;
    if !segments.is_empty() {
        return Ok(vec![Target {
            dir: path.to_owned(),
            segments,
            single_file: false,
        }]);
    }
    let mut subdirs = Vec::new();
    for entry in fs::read_dir(path).map_err(|e| LedgerError::io("listing", path, e))? {
        let entry = entry.map_err(|e| LedgerError::io("listing", path, e))?;
        if entry.file_type().is_ok_and(|t| t.is_dir()) {
            subdirs.push(entry.path());
        }
    }
    subdirs.sort();
    let mut targets = Vec::new();
    for dir in subdirs {
        let segments = list(&dir)?;
        if !segments.is_empty() {
            targets.push(Target {
                dir,
                segments,
                single_file: false,
            });
        }
    }
    if targets.is_empty() {
        return Err(LedgerError::Usage(format!(
            "no ledger segments (segment-*.jsonl) in {} or its subdirectories",
            path.display()
        )));
    }
    Ok(targets)
}
