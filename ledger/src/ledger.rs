//! The handle the proxy holds: options, appends, health and the latest checkpoint.

use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use serde::Serialize;
use tokio::sync::mpsc::error::TrySendError;
use tokio::sync::{mpsc, oneshot, watch};

use crate::format::CheckpointRecord;
use crate::writer::{self, Cmd, Hooks, RecordInput, WriterState};
use crate::{ConfigFacts, DecisionFacts, LedgerError, OutcomeFacts};

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

/// Where an appended record landed.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Appended {
    pub seq: u64,
    /// Hex chain hash of the record.
    pub hash: String,
}

/// Whether appends can succeed. Feeds `/readyz`.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum Health {
    Healthy,
    /// Appends fail; the reason says why (a write error is for good, a full queue passes).
    Unhealthy(String),
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

/// Counters for the proxy's `portcullis_ledger_*` metrics.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct LedgerStats {
    pub records_total: u64,
    pub batches_total: u64,
    pub syncs_total: u64,
    pub last_batch_size: u64,
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
    /// Set once, on the first write failure: the ledger never writes again.
    fatal: OnceLock<String>,
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

    pub(crate) fn head(&self) -> Option<CheckpointInfo> {
        self.head.borrow().clone()
    }

    pub(crate) fn set_head(&self, cp: CheckpointInfo) {
        self.head.send_replace(Some(cp));
    }
}

/// The ledger: a cheap, clonable handle to the single writer task.
#[derive(Clone)]
pub struct Ledger {
    inner: Arc<Inner>,
}

struct Inner {
    tx: mpsc::Sender<Cmd>,
    shared: Arc<Shared>,
    public_key_hex: String,
}

impl Ledger {
    /// Recover a torn tail (writing a `recovery` record if anything was cut), load or create
    /// the signing key, start a new segment, and spawn the writer on the current runtime.
    ///
    /// Fails with [`LedgerError::Tampered`] if the end of the log is missing records that a
    /// checkpoint covers: that is not a crash, and the ledger will not write on top of it.
    pub async fn open(opts: LedgerOptions) -> Result<Ledger, LedgerError> {
        Self::open_with(opts, Hooks::default()).await
    }

    pub(crate) async fn open_with(
        opts: LedgerOptions,
        hooks: Hooks,
    ) -> Result<Ledger, LedgerError> {
        validate(&opts)?;
        let shared = Arc::new(Shared::default());
        let now = tokio::time::Instant::now();
        let capacity = opts.channel_capacity;
        let (state, public_key_hex) = {
            let shared = shared.clone();
            tokio::task::spawn_blocking(move || WriterState::open(&opts, hooks, shared, now))
                .await
                .map_err(|e| {
                    LedgerError::Unhealthy(format!("ledger start-up stopped unexpectedly: {e}"))
                })??
        };
        let (tx, rx) = mpsc::channel(capacity);
        tokio::spawn(writer::run(state, rx, shared.clone()));
        Ok(Ledger {
            inner: Arc::new(Inner {
                tx,
                shared,
                public_key_hex,
            }),
        })
    }

    /// Append a decision record. Resolves once it is durable per [`SyncMode`]; only then may
    /// the request be forwarded. A full queue fails at once with
    /// [`LedgerError::Backpressure`]; a write error fails this and every later append.
    pub async fn append_decision(&self, mut facts: DecisionFacts) -> Result<Appended, LedgerError> {
        facts.clamp();
        self.append(RecordInput::Decision(facts)).await
    }

    /// Append an outcome record (same guarantees as [`Ledger::append_decision`]).
    pub async fn append_outcome(&self, mut facts: OutcomeFacts) -> Result<Appended, LedgerError> {
        facts.clamp();
        self.append(RecordInput::Outcome(facts)).await
    }

    /// Append a config record (same guarantees as [`Ledger::append_decision`]).
    pub async fn append_config(&self, mut facts: ConfigFacts) -> Result<Appended, LedgerError> {
        facts.clamp();
        self.append(RecordInput::Config(facts)).await
    }

    async fn append(&self, input: RecordInput) -> Result<Appended, LedgerError> {
        self.ready()?;
        let (reply, rx) = oneshot::channel();
        // try_send, never send: an append must not wait for room in the queue.
        match self.inner.tx.try_send(Cmd::Append {
            input: Box::new(input),
            reply,
        }) {
            Ok(()) => {}
            Err(TrySendError::Full(_)) => {
                self.inner.shared.saturated.store(true, Ordering::SeqCst);
                return Err(LedgerError::Backpressure);
            }
            Err(TrySendError::Closed(_)) => return Err(self.gone()),
        }
        rx.await.map_err(|_| self.gone())?
    }

    /// Write a checkpoint now if any record is unanchored, and return the latest checkpoint.
    pub async fn checkpoint(&self) -> Result<Option<CheckpointInfo>, LedgerError> {
        self.ready()?;
        let (reply, rx) = oneshot::channel();
        self.inner
            .tx
            .send(Cmd::Checkpoint { reply })
            .await
            .map_err(|_| self.gone())?;
        rx.await.map_err(|_| self.gone())?
    }

    /// Healthy, or why appends currently fail.
    pub fn health(&self) -> Health {
        let shared = &self.inner.shared;
        if let Some(reason) = shared.fatal() {
            Health::Unhealthy(reason)
        } else if shared.closed.load(Ordering::SeqCst) {
            Health::Unhealthy("ledger is shut down".into())
        } else if shared.saturated.load(Ordering::SeqCst) {
            Health::Unhealthy(
                "ledger queue is full; appends are refused until the writer catches up".into(),
            )
        } else {
            Health::Healthy
        }
    }

    /// The latest checkpoint copied to `checkpoints.log` (for `/v1/ledger/head`).
    pub fn head(&self) -> Option<CheckpointInfo> {
        self.inner.shared.head()
    }

    /// Follow new checkpoints as they are written, e.g. to copy them to a webhook sink
    /// (SPEC §7) or an outside store for `--trusted-checkpoint`.
    pub fn watch_head(&self) -> watch::Receiver<Option<CheckpointInfo>> {
        self.inner.shared.head.subscribe()
    }

    /// Write a final checkpoint, sync, seal the active segment and stop the writer.
    /// Calling it again is a no-op.
    pub async fn shutdown(&self) -> Result<(), LedgerError> {
        let shared = &self.inner.shared;
        if shared.closed.load(Ordering::SeqCst) {
            return Ok(());
        }
        let (reply, rx) = oneshot::channel();
        let sent = self.inner.tx.send(Cmd::Shutdown { reply }).await;
        let result = match sent {
            Ok(()) => rx.await.map_err(|_| self.gone()),
            Err(_) => Err(self.gone()),
        };
        match result {
            Ok(r) => r,
            Err(_) if shared.closed.load(Ordering::SeqCst) => Ok(()),
            Err(e) => Err(e),
        }
    }

    /// The hex Ed25519 public key that verifies this ledger's checkpoints.
    pub fn public_key_hex(&self) -> String {
        self.inner.public_key_hex.clone()
    }

    pub fn stats(&self) -> LedgerStats {
        let s = &self.inner.shared.stats;
        LedgerStats {
            records_total: s.records.load(Ordering::Relaxed),
            batches_total: s.batches.load(Ordering::Relaxed),
            syncs_total: s.syncs.load(Ordering::Relaxed),
            last_batch_size: s.last_batch_size.load(Ordering::Relaxed),
        }
    }

    fn ready(&self) -> Result<(), LedgerError> {
        let shared = &self.inner.shared;
        if let Some(reason) = shared.fatal() {
            return Err(LedgerError::Unhealthy(reason));
        }
        if shared.closed.load(Ordering::SeqCst) {
            return Err(LedgerError::Closed);
        }
        Ok(())
    }

    /// The writer is gone: say why.
    fn gone(&self) -> LedgerError {
        let shared = &self.inner.shared;
        match shared.fatal() {
            Some(reason) => LedgerError::Unhealthy(reason),
            None if shared.closed.load(Ordering::SeqCst) => LedgerError::Closed,
            None => LedgerError::Unhealthy("ledger writer stopped".into()),
        }
    }
}

fn validate(opts: &LedgerOptions) -> Result<(), LedgerError> {
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
