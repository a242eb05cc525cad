//! The handle the proxy holds: options, appends, health and the latest checkpoint.

use std::sync::atomic::Ordering;
use std::sync::Arc;

use tokio::sync::mpsc::error::TrySendError;
use tokio::sync::{mpsc, oneshot, watch};

use crate::error::LedgerError;
use crate::facts::{ConfigFacts, DecisionFacts, OutcomeFacts};
use crate::options::{self, LedgerOptions};
use crate::shared::{Appended, CheckpointInfo, Cmd, RecordInput, Shared};
use crate::writer::{self, Hooks, WriterState};

/// Whether appends can succeed. Feeds `/readyz`.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum Health {
    Healthy,
    /// Appends fail; the reason says why (a full disk or a full queue passes, any other write
    /// error is for good).
    Unhealthy(String),
}

/// Counters for the proxy's `portcullis_ledger_*` metrics.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct LedgerStats {
    pub records_total: u64,
    pub batches_total: u64,
    pub syncs_total: u64,
    pub last_batch_size: u64,
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
        options::validate(&opts)?;
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

    /// Append a decision record. Resolves once it is durable per [`SyncMode`](crate::SyncMode);
    /// only then may the request be forwarded. A full queue fails at once with
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

    /// Queue an outcome record without waiting for it: nothing waits on an outcome, so
    /// no reply wakes anyone. The record is written in order with every other append, and
    /// [`Ledger::shutdown`] writes everything queued before it. A full queue hands the
    /// facts back ([`Submitted::Full`]) so the caller can wait and retry with
    /// [`Ledger::append_outcome`]; a write error later shows in [`Ledger::health`], as
    /// for every append.
    pub fn submit_outcome(&self, mut facts: OutcomeFacts) -> Submitted {
        if let Err(e) = self.ready() {
            return Submitted::Failed(e);
        }
        facts.clamp();
        // The receiver is dropped at once: the writer's reply goes nowhere.
        let (reply, _) = oneshot::channel();
        match self.inner.tx.try_send(Cmd::Append {
            input: Box::new(RecordInput::Outcome(facts)),
            reply,
        }) {
            Ok(()) => Submitted::Queued,
            Err(TrySendError::Full(cmd)) => {
                self.inner.shared.saturated.store(true, Ordering::SeqCst);
                match cmd {
                    Cmd::Append { input, .. } => match *input {
                        RecordInput::Outcome(f) => Submitted::Full(Box::new(f)),
                        _ => Submitted::Failed(LedgerError::Backpressure),
                    },
                    _ => Submitted::Failed(LedgerError::Backpressure),
                }
            }
            Err(TrySendError::Closed(_)) => Submitted::Failed(self.gone()),
        }
    }

    /// Append a config record (same guarantees as [`Ledger::append_decision`]).
    pub async fn append_config(&self, mut facts: ConfigFacts) -> Result<Appended, LedgerError> {
        facts.clamp();
        self.append(RecordInput::Config(facts)).await
    }

    async fn append(&self, input: RecordInput) -> Result<Appended, LedgerError> {
        if let Err(e) = self.ready() {
            let shared = &self.inner.shared;
            if shared.down.load(Ordering::SeqCst) {
                // Counted for the `recovery` record that ends the outage.
                shared.refused.fetch_add(1, Ordering::Relaxed);
            }
            return Err(e);
        }
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
        if let Some(reason) = shared.fatal().or_else(|| shared.down()) {
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
        self.inner.shared.watch_head()
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
        if let Some(reason) = shared.down() {
            return Err(LedgerError::Unhealthy(reason));
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

#[cfg(test)]
mod tests;

/// What [`Ledger::submit_outcome`] did with a record.
#[derive(Debug)]
#[must_use]
pub enum Submitted {
    /// In the queue; the writer writes it in order.
    Queued,
    /// The queue is full: here are the facts back, to retry.
    Full(Box<OutcomeFacts>),
    /// The ledger cannot take records (unhealthy or closed).
    Failed(LedgerError),
}
