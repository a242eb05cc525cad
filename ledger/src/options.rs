//! How to open a ledger ([`LedgerOptions`], [`SyncMode`]) and the checks on those options.

use std::path::PathBuf;
use std::time::Duration;

use serde::Serialize;

use crate::error::LedgerError;

/// When an append counts as done.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
#[non_exhaustive]
pub enum SyncMode {
    /// After the batch holding the record was `fdatasync`ed (the default).
    #[default]
    Always,
    /// After the record was written to the OS; synced every `sync_interval`.
    Batch,
}

/// How to open a ledger. Build it with `..LedgerOptions::default()`.
#[derive(Clone, Debug)]
pub struct LedgerOptions {
    /// Segments, `checkpoints.log` and `pubkey` live here. One directory per replica.
    pub dir: PathBuf,
    /// Ed25519 seed for checkpoints, beside the CA key; created (0600) on first open.
    pub signing_key_path: PathBuf,
    /// Written into every segment header and checkpoint.
    pub replica_id: String,
    pub sync: SyncMode,
    /// Batch mode: how long a written record may stay unsynced.
    pub sync_interval: Duration,
    /// A checkpoint after this many records...
    pub checkpoint_every: u64,
    /// ...or once the oldest unanchored record is this old, whichever comes first.
    pub checkpoint_interval: Duration,
    /// Rotate once a segment reaches this size (segments also rotate at UTC midnight).
    pub segment_max_bytes: u64,
    /// Capacity of the writer's queue; a full queue refuses appends at once.
    pub channel_capacity: usize,
}

impl Default for LedgerOptions {
    fn default() -> Self {
        LedgerOptions {
            dir: PathBuf::from(".portcullis/ledger"),
            signing_key_path: PathBuf::from(".portcullis/ca/ledger-signing.key"),
            replica_id: "default".into(),
            sync: SyncMode::Always,
            sync_interval: Duration::from_millis(100),
            checkpoint_every: 1000,
            checkpoint_interval: Duration::from_secs(1),
            segment_max_bytes: 64 * 1024 * 1024,
            channel_capacity: 65_536,
        }
    }
}

/// Refuse options the writer cannot honour, before anything is created on disk.
pub(crate) fn validate(opts: &LedgerOptions) -> Result<(), LedgerError> {
    let id = &opts.replica_id;
    if id.is_empty()
        || id.len() > 64
        || !id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'))
    {
        return Err(LedgerError::Usage(format!(
            "invalid replica id {id:?}: use 1 to 64 characters from A-Z a-z 0-9 - _ ."
        )));
    }
    // tokio's bounded channel panics beyond its semaphore limit; stay far below it.
    if opts.channel_capacity == 0 || opts.channel_capacity > 1 << 24 {
        return Err(LedgerError::Usage(
            "ledger channel_capacity must be between 1 and 16777216".into(),
        ));
    }
    if opts.checkpoint_every == 0 {
        return Err(LedgerError::Usage(
            "ledger checkpoint_every must be at least 1".into(),
        ));
    }
    Ok(())
}
