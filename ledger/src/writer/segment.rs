//! Segment files: creating one with its synced header line, the rotation rule, sealing a
//! finished one read-only, and the genesis value of a new chain.

use std::fs::{self, File, OpenOptions};
use std::io::Write;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use rand_core06::RngCore;
use time::{Date, OffsetDateTime, UtcOffset};

use crate::error::LedgerError;
use crate::format::{self, seal, Kind, SegmentHeader, FORMAT_VERSION};
use crate::keys;

/// The active segment file and what has gone into it.
pub(super) struct Segment {
    pub(super) index: u64,
    pub(super) path: PathBuf,
    pub(super) file: File,
    /// Bytes written or buffered.
    pub(super) bytes: u64,
    /// Records (not the header) written or buffered.
    pub(super) records: u64,
    pub(super) day: Date,
    /// False for a test-hook file such as `/dev/full`, which must never be chmod'ed.
    pub(super) sealable: bool,
}

impl Segment {
    /// Rotate before the next record once this segment is full or the UTC day changed; an
    /// empty segment never rotates, so one record always fits.
    pub(super) fn rotation_due(&self, wall: OffsetDateTime, max_bytes: u64) -> bool {
        let day = wall.to_offset(UtcOffset::UTC).date();
        self.records > 0 && (self.bytes >= max_bytes || day != self.day)
    }
}

/// 32 random bytes: two chains never share a first link.
pub(super) fn genesis() -> [u8; 32] {
    let mut bytes = [0u8; 32];
    rand_core06::OsRng.fill_bytes(&mut bytes);
    bytes
}

/// Create segment `index` (never overwriting one) and write its synced header line.
pub(super) fn create_segment(
    dir: &Path,
    redirect: Option<PathBuf>,
    index: u64,
    replica: &str,
    first_seq: u64,
    prev: &[u8; 32],
    wall: OffsetDateTime,
) -> Result<(Segment, [u8; 32]), LedgerError> {
    let sealable = redirect.is_none();
    let (path, file) = match redirect {
        Some(path) => {
            let file = OpenOptions::new()
                .write(true)
                .open(&path)
                .map_err(|e| LedgerError::io("creating segment", &path, e))?;
            (path, file)
        }
        None => {
            let path = dir.join(format::segment_file_name(index));
            let file = OpenOptions::new()
                .append(true)
                .create_new(true)
                .mode(0o640)
                .open(&path)
                .map_err(|e| LedgerError::io("creating segment", &path, e))?;
            (path, file)
        }
    };
    let header = SegmentHeader {
        kind: Kind::Segment,
        version: FORMAT_VERSION,
        replica: replica.to_owned(),
        segment: index,
        first_seq,
        ts: format::format_ts(wall),
        prev: hex::encode(prev),
    };
    let (line, hash) = seal(&header, prev)?;
    (&file)
        .write_all(&line)
        .and_then(|()| file.sync_data())
        .map_err(|e| LedgerError::io("writing segment header", &path, e))?;
    if sealable {
        keys::sync_dir(dir);
    }
    Ok((
        Segment {
            index,
            path,
            file,
            bytes: line.len() as u64,
            records: 0,
            day: wall.to_offset(UtcOffset::UTC).date(),
            sealable,
        },
        hash,
    ))
}

/// Make a finished segment read-only (0444).
pub(super) fn seal_file(path: &Path) -> Result<(), LedgerError> {
    fs::set_permissions(path, fs::Permissions::from_mode(0o444))
        .map_err(|e| LedgerError::io("sealing segment", path, e))
}
