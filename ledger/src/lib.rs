//! Portcullis ledger: the tamper-evident, content-free record of every verdict (SPEC §7).
//!
//! The proxy appends a `decision` record before a request leaves (audit before act, SPEC §3
//! step 5.6) and an `outcome` record when it ends (step 5.9). Records hold identifiers,
//! numbers, codes, host names and path templates, never a body, prompt, header value, query
//! string or key: the record types only have such fields ([`format::ALLOWED_FIELDS`]), and
//! the strings are clamped before writing.
//!
//! # Files
//!
//! ```text
//! <dir>/segment-00000001.jsonl   sealed segment, mode 0444
//! <dir>/segment-00000002.jsonl   active segment (each start and each rotation opens a new one)
//! <dir>/checkpoints.log          a copy of every checkpoint line
//! <dir>/pubkey                   hex Ed25519 public key(s) of the checkpoints
//! <ca dir>/ledger-signing.key    hex Ed25519 seed, mode 0600, created on first open
//! ```
//!
//! Each segment is JSON Lines. Its first line is a header (`kind: "segment"`, index, replica,
//! `first_seq`) whose `prev` is the previous segment's last hash, or a random genesis value in
//! segment 1. Segments rotate by size (`segment_max_bytes`) and at UTC midnight; a segment is
//! checkpointed, synced and made read-only before the next one starts. One directory is one
//! replica's chain; `verify` also takes a directory of such directories (SPEC §14).
//!
//! # Chain and canonical encoding
//!
//! A record is serialized by `serde_json` in struct declaration order (the order of SPEC §7),
//! compact, absent optional fields omitted. That body's closing `}` is replaced by
//! `,"hash":"<hex>"}` and a newline, and that is exactly what is written. So:
//!
//! ```text
//! hash = hex(SHA-256("portcullis-ledger/v1/record\n" ‖ raw 32 bytes of prev ‖ body))
//! ```
//!
//! where `body` is the written line minus its `hash` member and newline, and `prev` is the
//! previous line's hash. Verify re-encodes every parsed record and rejects a line whose bytes
//! differ, so there is exactly one valid encoding of each record.
//!
//! # Checkpoints
//!
//! After every `checkpoint_every` records (1000), once the oldest unanchored record is
//! `checkpoint_interval` old (1 s), before a rotation and at shutdown, the writer appends a
//! `checkpoint` record: an Ed25519 signature over `(replica, segment, head_seq, head_hash,
//! ts)` ([`format::checkpoint_message`]). Once the segment holding it is synced, the same
//! line is appended to `checkpoints.log`. Deleting the tail of the chain then leaves a
//! checkpoint pointing past its end; a full rewrite cannot be re-signed without the key; a
//! rollback of everything is caught with a checkpoint kept elsewhere (`--trusted-checkpoint`).
//! [`Ledger::head`] returns the latest checkpoint (for `/v1/ledger/head`) and
//! [`Ledger::watch_head`] follows them (for the webhook sink).
//!
//! # Group commit and fail closed
//!
//! [`Ledger`] handles send records to one writer task over a bounded channel. The writer
//! drains what is queued (up to 4096) and, on a blocking thread, does one `write` and one
//! `fdatasync` for the whole batch, then wakes every waiter. With [`SyncMode::Always`] (the
//! default) an append resolves after the sync; with [`SyncMode::Batch`] after the write, and
//! the data is synced within `sync_interval`. A full channel refuses the append at once
//! ([`LedgerError::Backpressure`]) and [`Ledger::health`] is unhealthy until the writer has
//! drained the queue; a write or sync error refuses the append and every later one, and the
//! ledger stays unhealthy with the reason. The proxy answers `503` either way.
//!
//! # Recovery
//!
//! [`Ledger::open`] looks at the end of the last segment. A torn last line (a crash
//! mid-write) is cut back to the last complete record, and a `recovery` record notes the
//! file and the bytes dropped. If `checkpoints.log` already covers what would be cut, or
//! covers records that are gone, that is tampering: `open` refuses to write on top of it.
//!
//! # Verify
//!
//! [`verify`] checks parsing and canonical form, the field allowlist, contiguous `seq`, every
//! link including across segments, every checkpoint signature and that checkpoints move
//! forward, that `checkpoints.log` matches the chain and that the files are not shorter than
//! it says, and optionally a trusted checkpoint. It reports records after the last checkpoint
//! as unanchored (an error with `strict`) and names the first bad record and why.

#![forbid(unsafe_code)]

mod error;
mod facts;
pub mod format;
mod keys;
mod ledger;
mod options;
mod shared;
mod tamper;
mod verify;
mod writer;

use std::path::Path;

pub use error::LedgerError;
pub use facts::{
    new_event_id, ConfigFacts, DecisionFacts, OutcomeFacts, MAX_FIELD_BYTES, MAX_LIST_ITEMS,
    MAX_PATH_TEMPLATE_BYTES,
};
pub use ledger::{Health, Ledger, LedgerStats, Submitted};
pub use options::{LedgerOptions, SyncMode};
pub use shared::{Appended, CheckpointInfo};
pub use tamper::TamperKind;
pub use verify::{
    verify, ChainReport, KeySource, Location, VerifyOptions, VerifyOutcome, VerifyReport,
};

/// The public key of a signing key file, as 64 lowercase hex digits (the format of the
/// `pubkey` file and of `--pubkey`). This is what `portcullis ledger pubkey` prints.
pub fn public_key_from_signing_key_file(path: &Path) -> Result<String, LedgerError> {
    let key = keys::load_signing_key(path)?;
    Ok(hex::encode(key.verifying_key().as_bytes()))
}
