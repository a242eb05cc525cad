//! Checkpoint signing: the record that signs the head of the chain, and the copy of synced
//! checkpoint lines to `checkpoints.log`.

use std::fs::File;
use std::io::Write;
use std::path::Path;

use ed25519_dalek::{Signer, SigningKey};
use time::OffsetDateTime;

use crate::error::LedgerError;
use crate::format::{self, CheckpointRecord, Kind};
use crate::shared::CheckpointInfo;

/// The checkpoint that goes at `seq`, signing the record before it (`head`) in `segment`.
pub(super) fn checkpoint_record(
    key: &SigningKey,
    replica: &str,
    segment: u64,
    seq: u64,
    head: &[u8; 32],
    wall: OffsetDateTime,
) -> CheckpointRecord {
    let head_seq = seq - 1;
    let head_hash = hex::encode(head);
    let ts = format::format_ts(wall);
    let message = format::checkpoint_message(replica, segment, head_seq, &head_hash, &ts);
    let signature = hex::encode(key.sign(&message).to_bytes());
    CheckpointRecord {
        seq,
        ts,
        event_id: crate::facts::new_event_id(),
        kind: Kind::Checkpoint,
        replica: replica.to_owned(),
        segment,
        head_seq,
        head_hash: head_hash.clone(),
        signature,
        prev: head_hash,
    }
}

/// Append the checkpoint lines to `checkpoints.log` in one write and sync it.
pub(super) fn append_to_log(
    log: &File,
    path: &Path,
    checkpoints: &[CheckpointInfo],
) -> Result<(), LedgerError> {
    let mut out = Vec::new();
    for cp in checkpoints {
        out.extend_from_slice(cp.line.as_bytes());
        out.push(b'\n');
    }
    let mut log = log;
    log.write_all(&out)
        .and_then(|()| log.sync_data())
        .map_err(|e| LedgerError::io("writing", path, e))
}
