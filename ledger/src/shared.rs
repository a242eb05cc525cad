//! What the handles and the writer task share: the commands on the queue, the results they
//! resolve to, and the state both sides read (failure, saturation, head, counters).

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Mutex, OnceLock};

use serde::Serialize;
use tokio::sync::{oneshot, watch};

use crate::error::LedgerError;
use crate::facts::{ConfigFacts, DecisionFacts, OutcomeFacts};
use crate::format::CheckpointRecord;

// Always boxed inside `Cmd`, so the size difference does not matter.
#[allow(clippy::large_enum_variant)]
pub(crate) enum RecordInput {
    Decision(DecisionFacts),
    Outcome(OutcomeFacts),
    Config(ConfigFacts),
}

pub(crate) type Reply<T> = oneshot::Sender<Result<T, LedgerError>>;

/// What a handle asks of the writer task; every command carries its reply.
pub(crate) enum Cmd {
    Append {
        input: Box<RecordInput>,
        reply: Reply<Appended>,
    },
    Checkpoint {
        reply: Reply<Option<CheckpointInfo>>,
    },
    Shutdown {
        reply: Reply<()>,
    },
}

/// Where an appended record landed.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Appended {
    pub seq: u64,
    /// Hex chain hash of the record.
    pub hash: String,
}

/// A signed checkpoint: the head of the chain at `head_seq`. `line` is the exact ledger line,
/// which is also what `--trusted-checkpoint` takes.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct CheckpointInfo {
    pub replica: String,
    /// The checkpoint record's own seq (`head_seq + 1`).
    pub seq: u64,
    pub head_seq: u64,
    pub head_hash: String,
    pub segment: u64,
    pub ts: String,
    /// Hex Ed25519 signature.
    pub signature: String,
    /// Chain hash of the checkpoint record.
    pub hash: String,
    pub line: String,
}

impl CheckpointInfo {
    pub(crate) fn from_record(cp: CheckpointRecord, hash: [u8; 32], line: &[u8]) -> Self {
        CheckpointInfo {
            replica: cp.replica,
            seq: cp.seq,
            head_seq: cp.head_seq,
            head_hash: cp.head_hash,
            segment: cp.segment,
            ts: cp.ts,
            signature: cp.signature,
            hash: hex::encode(hash),
            line: String::from_utf8_lossy(line).into_owned(),
        }
    }
}

#[derive(Default)]
pub(crate) struct Stats {
    pub(crate) records: AtomicU64,
    pub(crate) batches: AtomicU64,
    pub(crate) syncs: AtomicU64,
    pub(crate) last_batch_size: AtomicU64,
}

/// State shared by the handles and the writer.
pub(crate) struct Shared {
    /// Set once, on a write failure it cannot come back from: the ledger never writes again.
    fatal: OnceLock<String>,
    /// The disk is full: appends are refused until the writer has written its `recovery`
    /// record (it tries again every second).
    pub(crate) down: AtomicBool,
    down_reason: Mutex<String>,
    /// Appends refused while `down`, for the `recovery` record.
    pub(crate) refused: AtomicU64,
    /// The queue was full; cleared when the writer drains it.
    pub(crate) saturated: AtomicBool,
    pub(crate) closed: AtomicBool,
    head: watch::Sender<Option<CheckpointInfo>>,
    pub(crate) stats: Stats,
}

impl Default for Shared {
    fn default() -> Self {
        Shared {
            fatal: OnceLock::new(),
            down: AtomicBool::new(false),
            down_reason: Mutex::new(String::new()),
            refused: AtomicU64::new(0),
            saturated: AtomicBool::new(false),
            closed: AtomicBool::new(false),
            head: watch::Sender::new(None),
            stats: Stats::default(),
        }
    }
}

impl Shared {
    pub(crate) fn fatal(&self) -> Option<String> {
        self.fatal.get().cloned()
    }

    pub(crate) fn set_fatal(&self, reason: String) {
        let _ = self.fatal.set(reason);
    }

    /// Why appends fail while the disk is full, or `None` when they do not.
    pub(crate) fn down(&self) -> Option<String> {
        if !self.down.load(Ordering::SeqCst) {
            return None;
        }
        Some(
            self.down_reason
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .clone(),
        )
    }

    pub(crate) fn set_down(&self, reason: String) {
        *self.down_reason.lock().unwrap_or_else(|p| p.into_inner()) = reason;
        self.down.store(true, Ordering::SeqCst);
    }

    pub(crate) fn set_up(&self) {
        self.down.store(false, Ordering::SeqCst);
    }

    pub(crate) fn head(&self) -> Option<CheckpointInfo> {
        self.head.borrow().clone()
    }

    pub(crate) fn set_head(&self, cp: CheckpointInfo) {
        self.head.send_replace(Some(cp));
    }

    pub(crate) fn watch_head(&self) -> watch::Receiver<Option<CheckpointInfo>> {
        self.head.subscribe()
    }
}
