//! The writer's state on its blocking thread: start-up, then per batch the records buffered
//! into one write and one `fdatasync`, with checkpoints and rotation as they fall due.

use std::fs::{self, File, OpenOptions};
use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::PathBuf;
use std::sync::atomic::Ordering;
use std::sync::Arc;

use ed25519_dalek::SigningKey;
use time::OffsetDateTime;
use tokio::time::Instant;

use crate::error::LedgerError;
use crate::format::{
    self, seal, ConfigRecord, DecisionRecord, Kind, OutcomeRecord, CHECKPOINTS_FILE,
};
use crate::keys;
use crate::options::{LedgerOptions, SyncMode};
use crate::shared::{Appended, CheckpointInfo, Cmd, RecordInput, Shared};
use crate::writer::checkpoint;
use crate::writer::recovery;
use crate::writer::segment::{self, Segment};

mod outage;

use outage::{Mark, Outage, OUTAGE_RETRY};

pub(crate) type Clock = Arc<dyn Fn() -> OffsetDateTime + Send + Sync>;

/// Test seams: a fake wall clock, a file to use instead of the next new segment
/// (`/dev/full` simulates a full disk for good), and a switch that makes segment writes
/// stop halfway with "no space left" while it is on (a disk that fills and is freed).
#[derive(Clone, Default)]
pub(crate) struct Hooks {
    pub(crate) clock: Option<Clock>,
    pub(crate) next_segment_path: Option<PathBuf>,
    pub(crate) disk_full: Option<Arc<std::sync::atomic::AtomicBool>>,
}

/// A generous bound on one record's line (decision and outcome lines are a few hundred
/// bytes): see [`WriterState::is_light`].
const LIGHT_RECORD_BOUND: u64 = 16 * 1024;

pub(crate) struct WriterState {
    dir: PathBuf,
    replica: String,
    sync: SyncMode,
    sync_interval: std::time::Duration,
    checkpoint_every: u64,
    checkpoint_interval: std::time::Duration,
    segment_max_bytes: u64,
    key: SigningKey,
    clock: Clock,
    next_segment_path: Option<PathBuf>,
    disk_full: Option<Arc<std::sync::atomic::AtomicBool>>,
    seg: Segment,
    cp_log: File,
    cp_log_path: PathBuf,
    next_seq: u64,
    head: [u8; 32],
    since_checkpoint: u64,
    /// When the oldest record not yet covered by a checkpoint was written.
    unanchored_since: Option<Instant>,
    /// When the oldest write not yet `fdatasync`ed happened (batch mode).
    unsynced_since: Option<Instant>,
    now: Instant,
    buf: Vec<u8>,
    /// Checkpoints in `buf` or written but not yet synced and copied to `checkpoints.log`.
    pending_checkpoints: Vec<CheckpointInfo>,
    shared: Arc<Shared>,
    stopped: bool,
    mark: Mark,
    /// The last write failed for want of space (not any other error).
    full_disk: bool,
    outage: Option<Outage>,
}

impl WriterState {
    /// Start-up, on a blocking thread: key, recovery, a fresh segment, recovery records.
    pub(crate) fn open(
        opts: &LedgerOptions,
        hooks: Hooks,
        shared: Arc<Shared>,
        now: Instant,
    ) -> Result<(WriterState, String), LedgerError> {
        let dir = opts.dir.clone();
        let mut builder = fs::DirBuilder::new();
        builder.recursive(true);
        std::os::unix::fs::DirBuilderExt::mode(&mut builder, 0o750);
        builder
            .create(&dir)
            .map_err(|e| LedgerError::io("creating ledger directory", &dir, e))?;

        let key = keys::load_or_create_signing_key(&opts.signing_key_path)?;
        let public_hex = hex::encode(key.verifying_key().as_bytes());
        keys::ensure_public_key_listed(&dir.join(format::PUBKEY_FILE), &key.verifying_key())?;

        let cp_log_path = dir.join(CHECKPOINTS_FILE);
        let tail = recovery::recover(&dir, &cp_log_path, &opts.replica_id)?;

        let clock = hooks
            .clock
            .unwrap_or_else(|| Arc::new(OffsetDateTime::now_utc));
        let wall = clock();
        let prev = tail.last_hash.unwrap_or_else(segment::genesis);
        // Both numbers come from files: a forged u64::MAX must not overflow.
        let index = match tail.last_index {
            None => 1,
            Some(i) => i
                .checked_add(1)
                .ok_or_else(|| exhausted(&dir, "segment index"))?,
        };
        let next_seq = tail
            .last_seq
            .checked_add(1)
            .ok_or_else(|| exhausted(&dir, "seq"))?;
        let (seg, head) =
            segment::create_segment(&dir, None, index, &opts.replica_id, next_seq, &prev, wall)?;
        let cp_log = OpenOptions::new()
            .append(true)
            .create(true)
            .mode(0o640)
            .open(&cp_log_path)
            .map_err(|e| LedgerError::io("opening", &cp_log_path, e))?;

        if let Some(cp) = &tail.last_checkpoint {
            shared.set_head(cp.clone());
        }
        let mut state = WriterState {
            dir,
            replica: opts.replica_id.clone(),
            sync: opts.sync,
            sync_interval: opts.sync_interval,
            checkpoint_every: opts.checkpoint_every.max(1),
            checkpoint_interval: opts.checkpoint_interval,
            segment_max_bytes: opts.segment_max_bytes.max(1),
            key,
            clock,
            next_segment_path: hooks.next_segment_path,
            disk_full: hooks.disk_full,
            seg,
            cp_log,
            cp_log_path,
            next_seq,
            head,
            since_checkpoint: 0,
            unanchored_since: None,
            unsynced_since: None,
            now,
            buf: Vec::with_capacity(64 * 1024),
            pending_checkpoints: Vec::new(),
            shared,
            stopped: false,
            mark: Mark {
                len: 0,
                records: 0,
                head,
                next_seq,
                since_checkpoint: 0,
                unanchored_since: None,
            },
            full_disk: false,
            outage: None,
        };
        state.mark = state.snapshot();
        for cut in &tail.cuts {
            let rec = cut.recovery_record(state.next_seq, wall, &state.head);
            state.push(&rec)?;
        }
        state.flush(true)?;
        Ok((state, public_hex))
    }

    pub(crate) fn stopped(&self) -> bool {
        self.stopped
    }

    /// When the loop must wake without a command: a checkpoint or a batch-mode sync is due.
    pub(crate) fn next_deadline(&self) -> Option<Instant> {
        if self.stopped || self.shared.fatal().is_some() {
            return None;
        }
        if let Some(outage) = &self.outage {
            return Some(outage.next_try);
        }
        let checkpoint = self.unanchored_since.map(|t| t + self.checkpoint_interval);
        let sync = self.unsynced_since.map(|t| t + self.sync_interval);
        match (checkpoint, sync) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
    }

    /// Whether a batch is light enough to run on the async task instead of a blocking
    /// thread: in `batch` sync mode, appends that fall due for no checkpoint, sync,
    /// rotation or recovery are one buffered `write` to the page cache, no `fdatasync`.
    /// Handing those to a blocking thread cost two thread switches per batch, more than
    /// the write. A segment within [`LIGHT_RECORD_BOUND`] bytes per record of its size
    /// limit counts as due, so that a rotation does not fall inside a light batch. The
    /// guess only decides where the batch runs, never what it does: a record larger than
    /// the bound could still rotate inline, correctly, just on the async task.
    pub(crate) fn is_light(&self, batch: &[Cmd], now: Instant) -> bool {
        let margin = LIGHT_RECORD_BOUND.saturating_mul(batch.len() as u64);
        self.sync == SyncMode::Batch
            && !self.stopped
            && self.outage.is_none()
            && self.pending_checkpoints.is_empty()
            && batch.iter().all(|c| matches!(c, Cmd::Append { .. }))
            && self.since_checkpoint.saturating_add(batch.len() as u64) < self.checkpoint_every
            && self
                .unanchored_since
                .is_none_or(|t| now < t + self.checkpoint_interval)
            && self
                .unsynced_since
                .is_none_or(|t| now < t + self.sync_interval)
            && !self.seg.rotation_due(
                (self.clock)(),
                self.segment_max_bytes.saturating_sub(margin),
            )
    }

    /// Handle one batch of commands.
    pub(crate) fn process(&mut self, batch: Vec<Cmd>, now: Instant) {
        self.now = now;
        if let Some(reason) = self.shared.fatal() {
            reject_all(batch, &reason);
            return;
        }
        if self.outage.is_some() {
            // A shutdown gets one more try, so that a disk freed meanwhile is sealed cleanly.
            if batch.iter().any(|c| matches!(c, Cmd::Shutdown { .. })) {
                self.try_recover(now);
            }
            if let Some(outage) = &mut self.outage {
                outage.refused += batch
                    .iter()
                    .filter(|c| matches!(c, Cmd::Append { .. }))
                    .count() as u64;
                let reason = self
                    .shared
                    .fatal()
                    .or_else(|| self.shared.down())
                    .unwrap_or_default();
                reject_all(batch, &reason);
                return;
            }
            if let Some(reason) = self.shared.fatal() {
                reject_all(batch, &reason);
                return;
            }
        }
        // Replies are kept apart from the records, so that on failure none of them is
        // dropped before the failure reason is published (a dropped reply reads as "gone").
        let mut inputs = Vec::with_capacity(batch.len());
        let mut append_replies = Vec::with_capacity(batch.len());
        let mut checkpoint_replies = Vec::new();
        let mut shutdown_replies = Vec::new();
        for cmd in batch {
            match cmd {
                Cmd::Append { input, reply } => {
                    inputs.push(*input);
                    append_replies.push(reply);
                }
                Cmd::Checkpoint { reply } => checkpoint_replies.push(reply),
                Cmd::Shutdown { reply } => shutdown_replies.push(reply),
            }
        }
        let stopping = !shutdown_replies.is_empty();
        let written = self.write_batch(inputs, !checkpoint_replies.is_empty(), stopping);
        let done = match written {
            Ok(done) => done,
            Err(err) => {
                let reason = self.fail(&err);
                if let Some(outage) = &mut self.outage {
                    outage.refused += append_replies.len() as u64;
                }
                for reply in append_replies {
                    let _ = reply.send(Err(LedgerError::Unhealthy(reason.clone())));
                }
                for reply in checkpoint_replies {
                    let _ = reply.send(Err(LedgerError::Unhealthy(reason.clone())));
                }
                for reply in shutdown_replies {
                    let _ = reply.send(Err(LedgerError::Unhealthy(reason.clone())));
                }
                return;
            }
        };
        // The records are durable per the sync mode: let the requests go.
        let stats = &self.shared.stats;
        stats.batches.fetch_add(1, Ordering::Relaxed);
        stats
            .last_batch_size
            .store(done.len() as u64, Ordering::Relaxed);
        stats
            .records
            .fetch_add(done.len() as u64, Ordering::Relaxed);
        for (reply, appended) in append_replies.into_iter().zip(done) {
            let _ = reply.send(Ok(appended));
        }
        let after = self
            .copy_checkpoints()
            .and_then(|()| if stopping { self.finish() } else { Ok(()) })
            .map_err(|err| self.fail(&err));
        for reply in checkpoint_replies {
            let _ = reply.send(match &after {
                Ok(()) => Ok(self.shared.head()),
                Err(reason) => Err(LedgerError::Unhealthy(reason.clone())),
            });
        }
        for reply in shutdown_replies {
            let _ = reply.send(after.clone().map_err(LedgerError::Unhealthy));
        }
    }

    /// Buffer the records (rotating and checkpointing as due), then one write and, as the
    /// sync mode asks, one `fdatasync`.
    fn write_batch(
        &mut self,
        inputs: Vec<RecordInput>,
        force_checkpoint: bool,
        stopping: bool,
    ) -> Result<Vec<Appended>, LedgerError> {
        let mut done = Vec::with_capacity(inputs.len());
        for input in inputs {
            let wall = (self.clock)();
            self.rotate_if_due(wall)?;
            done.push(self.push_input(input, wall)?);
            if self.since_checkpoint >= self.checkpoint_every {
                self.push_checkpoint(wall)?;
            }
        }
        if self.since_checkpoint > 0 && (self.checkpoint_due() || force_checkpoint || stopping) {
            self.push_checkpoint((self.clock)())?;
        }
        // Batch mode syncs on its timer, except that a checkpoint must be durable before it
        // is copied to checkpoints.log.
        let sync = self.sync == SyncMode::Always
            || !self.pending_checkpoints.is_empty()
            || stopping
            || self.sync_due();
        self.flush(sync)?;
        Ok(done)
    }

    /// Timer work: a due checkpoint, or a due batch-mode sync.
    pub(crate) fn tick(&mut self, now: Instant) {
        self.now = now;
        if self.stopped || self.shared.fatal().is_some() {
            return;
        }
        if self.outage.is_some() {
            self.try_recover(now);
            return;
        }
        let result = (|| {
            if self.since_checkpoint > 0 && self.checkpoint_due() {
                self.push_checkpoint((self.clock)())?;
                self.flush(true)?;
                self.copy_checkpoints()
            } else if self.sync_due() {
                self.flush(true)
            } else {
                Ok(())
            }
        })();
        if let Err(err) = result {
            self.fail(&err);
        }
    }

    /// Every handle is gone: anchor the tail as a shutdown would.
    pub(crate) fn close(&mut self) {
        if self.stopped || self.shared.fatal().is_some() {
            return;
        }
        if self.outage.is_some() {
            self.try_recover(self.now);
            if self.outage.is_some() {
                return;
            }
        }
        let result = (|| {
            if self.since_checkpoint > 0 {
                self.push_checkpoint((self.clock)())?;
            }
            self.flush(true)?;
            self.copy_checkpoints()?;
            self.finish()
        })();
        if let Err(err) = result {
            self.fail(&err);
        }
    }

    fn checkpoint_due(&self) -> bool {
        self.unanchored_since
            .is_some_and(|t| self.now >= t + self.checkpoint_interval)
    }

    fn sync_due(&self) -> bool {
        self.unsynced_since
            .is_some_and(|t| self.now >= t + self.sync_interval)
    }

    /// After the final checkpoint is synced and copied: seal the segment and stop.
    fn finish(&mut self) -> Result<(), LedgerError> {
        if self.seg.sealable {
            segment::seal_file(&self.seg.path)?;
        }
        self.stopped = true;
        self.shared.closed.store(true, Ordering::SeqCst);
        Ok(())
    }

    fn fail(&mut self, err: &LedgerError) -> String {
        let reason = err.full_message();
        self.buf.clear();
        self.pending_checkpoints.clear();
        if std::mem::take(&mut self.full_disk) {
            // Nothing of the failed write counts: the chain goes on from what is on disk.
            self.rollback();
            if self.outage.is_none() {
                tracing::error!(error = %reason, "ledger disk full; refusing appends until a write succeeds again (fail closed), retrying every second");
                self.outage = Some(Outage {
                    since: (self.clock)(),
                    next_try: self.now + OUTAGE_RETRY,
                    refused: 0,
                });
            }
            self.shared.set_down(reason.clone());
            return reason;
        }
        tracing::error!(error = %reason, "ledger write failed; refusing appends from now on (fail closed)");
        self.outage = None;
        self.shared.set_fatal(reason.clone());
        reason
    }

    fn push_input(
        &mut self,
        input: RecordInput,
        wall: OffsetDateTime,
    ) -> Result<Appended, LedgerError> {
        let seq = self.next_seq;
        let ts = format::format_ts(wall);
        let prev = format::hex_string(&self.head);
        let hash = match input {
            RecordInput::Decision(f) => self.push(&DecisionRecord {
                seq,
                ts,
                event_id: f.event_id,
                kind: Kind::Decision,
                tenant: f.tenant,
                agent: f.agent,
                listener: f.listener,
                dest_host: f.dest_host,
                dest_port: f.dest_port,
                method: f.method,
                path_template: f.path_template,
                provider: f.provider,
                model: f.model,
                operation: f.operation,
                stream: f.stream,
                decision: f.decision,
                reason: f.reason,
                rule_id: f.rule_id,
                policy_generation: f.policy_generation,
                policy_hash: f.policy_hash,
                detectors: f.detectors,
                narrowed: f.narrowed,
                key_id: f.key_id,
                approver: f.approver,
                peer: f.peer,
                count: f.count,
                prev,
            })?,
            RecordInput::Outcome(f) => self.push(&OutcomeRecord {
                seq,
                ts,
                event_id: f.event_id,
                kind: Kind::Outcome,
                tenant: f.tenant,
                agent: f.agent,
                dest_host: f.dest_host,
                status: f.status,
                tokens_in: f.tokens_in,
                tokens_out: f.tokens_out,
                bytes_in: f.bytes_in,
                bytes_out: f.bytes_out,
                duration_ms: f.duration_ms,
                end: f.end,
                policy_generation: f.policy_generation,
                policy_hash: f.policy_hash,
                prev,
            })?,
            RecordInput::Config(f) => self.push(&ConfigRecord {
                seq,
                ts,
                event_id: f.event_id,
                kind: Kind::Config,
                policy_generation: f.policy_generation,
                policy_hash: f.policy_hash,
                source: f.source,
                prev,
            })?,
        };
        Ok(Appended {
            seq,
            hash: format::hex_string(&hash),
        })
    }

    /// Seal `record` onto the chain and buffer it. `record` must carry `self.next_seq` and
    /// `prev = self.head`.
    fn push<T: serde::Serialize>(&mut self, record: &T) -> Result<[u8; 32], LedgerError> {
        // seq u64::MAX is never written: verify rejects it, as nothing could follow it.
        let next_seq = self
            .next_seq
            .checked_add(1)
            .ok_or_else(|| exhausted(&self.dir, "seq"))?;
        let (line, hash) = seal(record, &self.head)?;
        self.buf.extend_from_slice(&line);
        self.seg.bytes += line.len() as u64;
        self.seg.records += 1;
        self.next_seq = next_seq;
        self.since_checkpoint += 1;
        self.unanchored_since.get_or_insert(self.now);
        self.head = hash;
        Ok(hash)
    }

    fn push_checkpoint(&mut self, wall: OffsetDateTime) -> Result<(), LedgerError> {
        let record = checkpoint::checkpoint_record(
            &self.key,
            &self.replica,
            self.seg.index,
            self.next_seq,
            &self.head,
            wall,
        );
        let start = self.buf.len();
        let hash = self.push(&record)?;
        // The exact line, without its newline, is what checkpoints.log and the head carry.
        let info = CheckpointInfo::from_record(record, hash, &self.buf[start..self.buf.len() - 1]);
        self.since_checkpoint = 0;
        self.unanchored_since = None;
        self.pending_checkpoints.push(info);
        Ok(())
    }

    /// One `write` of the buffer, then (if asked and needed) one `fdatasync`.
    fn flush(&mut self, sync: bool) -> Result<(), LedgerError> {
        if !self.buf.is_empty() {
            if let Err(e) = self.write_buf() {
                // Only a full disk (of a real segment) is waited out; the rest is for good.
                self.full_disk = self.seg.sealable
                    && matches!(
                        e.kind(),
                        std::io::ErrorKind::StorageFull | std::io::ErrorKind::QuotaExceeded
                    );
                return Err(LedgerError::io("writing", &self.seg.path, e));
            }
            self.buf.clear();
            self.unsynced_since.get_or_insert(self.now);
            self.mark = self.snapshot();
        }
        if sync && self.unsynced_since.is_some() {
            self.seg
                .file
                .sync_data()
                .map_err(|e| LedgerError::io("syncing", &self.seg.path, e))?;
            self.unsynced_since = None;
            self.shared.stats.syncs.fetch_add(1, Ordering::Relaxed);
        }
        Ok(())
    }

    fn write_buf(&self) -> std::io::Result<()> {
        if self
            .disk_full
            .as_ref()
            .is_some_and(|f| f.load(Ordering::SeqCst))
        {
            // Half a batch lands, as on a disk that fills mid-write.
            (&self.seg.file).write_all(&self.buf[..self.buf.len() / 2])?;
            // ENOSPC, as the kernel says it.
            return Err(std::io::Error::from_raw_os_error(28));
        }
        (&self.seg.file).write_all(&self.buf)
    }

    /// Copy synced checkpoints to `checkpoints.log` and publish the newest as the head.
    /// Only called after the segment holding them was synced: `checkpoints.log` must never
    /// claim more than the segments durably hold, or a crash would look like truncation.
    fn copy_checkpoints(&mut self) -> Result<(), LedgerError> {
        if self.pending_checkpoints.is_empty() {
            return Ok(());
        }
        debug_assert!(self.buf.is_empty() && self.unsynced_since.is_none());
        checkpoint::append_to_log(&self.cp_log, &self.cp_log_path, &self.pending_checkpoints)?;
        if let Some(last) = self.pending_checkpoints.pop() {
            self.shared.set_head(last);
        }
        self.pending_checkpoints.clear();
        Ok(())
    }

    /// Rotate before this record if the segment is full or the UTC day changed.
    fn rotate_if_due(&mut self, wall: OffsetDateTime) -> Result<(), LedgerError> {
        if !self.seg.rotation_due(wall, self.segment_max_bytes) {
            return Ok(());
        }
        let index = self
            .seg
            .index
            .checked_add(1)
            .ok_or_else(|| exhausted(&self.dir, "segment index"))?;
        // Anchor the old segment, make it durable, then seal it read-only.
        if self.since_checkpoint > 0 {
            self.push_checkpoint(wall)?;
        }
        self.flush(true)?;
        self.copy_checkpoints()?;
        if self.seg.sealable {
            segment::seal_file(&self.seg.path)?;
        }
        let redirect = self.next_segment_path.take();
        let (seg, head) = segment::create_segment(
            &self.dir,
            redirect,
            index,
            &self.replica,
            self.next_seq,
            &self.head,
            wall,
        )?;
        tracing::info!(segment = seg.index, "ledger rotated to a new segment");
        self.seg = seg;
        self.head = head;
        self.mark = self.snapshot();
        Ok(())
    }
}

fn reject_all(batch: Vec<Cmd>, reason: &str) {
    for cmd in batch {
        let err = || LedgerError::Unhealthy(reason.to_owned());
        match cmd {
            Cmd::Append { reply, .. } => drop(reply.send(Err(err()))),
            Cmd::Checkpoint { reply } => drop(reply.send(Err(err()))),
            Cmd::Shutdown { reply } => drop(reply.send(Err(err()))),
        }
    }
}

/// A seq or segment index with no successor: only a forged ledger gets there.
fn exhausted(dir: &std::path::Path, what: &str) -> LedgerError {
    LedgerError::Tampered {
        location: dir.display().to_string(),
        why: format!(
            "the last {what} is the largest possible number, which no writer reaches: the ledger was forged; run `portcullis ledger verify`"
        ),
    }
}
