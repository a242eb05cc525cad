//! The single writer: start-up recovery, then a loop that drains the queue into one write and
//! one `fdatasync` per batch (group commit), checkpoints, and rotates segments.
//!
//! All file work is synchronous code on a blocking thread ([`WriterState`]); the async shell
//! ([`run`]) only collects commands and fires timers, and hands the state to
//! `spawn_blocking` once per batch. While a batch is being synced, new appends pile up in the
//! channel and form the next batch.

use std::fs::{self, File, OpenOptions};
use std::io::{self, Write};
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::Ordering;
use std::sync::Arc;

use ed25519_dalek::{Signer, SigningKey};
use rand_core06::RngCore;
use time::{Date, OffsetDateTime, UtcOffset};
use tokio::sync::mpsc;
use tokio::time::Instant;

use crate::error::LedgerError;
use crate::format::{
    self, seal, CheckpointRecord, ConfigRecord, DecisionRecord, Entry, Kind, OutcomeRecord,
    RecoveryRecord, SegmentHeader, CHECKPOINTS_FILE, FORMAT_VERSION,
};
use crate::keys;
use crate::options::{LedgerOptions, SyncMode};
use crate::shared::{Appended, CheckpointInfo, Cmd, RecordInput, Shared};

/// Most commands taken into one batch, so one write stays bounded.
const MAX_BATCH: usize = 4096;

pub(crate) type Clock = Arc<dyn Fn() -> OffsetDateTime + Send + Sync>;

/// Test seams: a fake wall clock, and a file to use instead of the next new segment
/// (`/dev/full` simulates a full disk).
#[derive(Clone, Default)]
pub(crate) struct Hooks {
    pub(crate) clock: Option<Clock>,
    pub(crate) next_segment_path: Option<PathBuf>,
}

struct Segment {
    index: u64,
    path: PathBuf,
    file: File,
    /// Bytes written or buffered.
    bytes: u64,
    /// Records (not the header) written or buffered.
    records: u64,
    day: Date,
    /// False for a test-hook file such as `/dev/full`, which must never be chmod'ed.
    sealable: bool,
}

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
}

/// What start-up found at the end of the existing chain.
struct Tail {
    /// Highest segment index left after recovery.
    last_index: Option<u64>,
    last_seq: u64,
    last_hash: Option<[u8; 32]>,
    cuts: Vec<Cut>,
    last_checkpoint: Option<CheckpointInfo>,
}

/// A torn tail to drop: truncate `path` to `keep` bytes, or remove it when it held only a
/// torn header.
struct Cut {
    path: PathBuf,
    keep: u64,
    dropped: u64,
    remove: bool,
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
        let tail = scan_tail(&dir, &cp_log_path, &opts.replica_id)?;
        for cut in &tail.cuts {
            apply_cut(cut)?;
        }
        if let Some(index) = tail.last_index {
            // Every restart begins a new segment, so the old last one is sealed now.
            seal_file(&dir.join(format::segment_file_name(index)))?;
        }

        let clock = hooks
            .clock
            .unwrap_or_else(|| Arc::new(OffsetDateTime::now_utc));
        let wall = clock();
        let prev = tail.last_hash.unwrap_or_else(genesis);
        let index = tail.last_index.map_or(1, |i| i + 1);
        let (seg, head) = create_segment(
            &dir,
            None,
            index,
            &opts.replica_id,
            tail.last_seq + 1,
            &prev,
            wall,
        )?;
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
            seg,
            cp_log,
            cp_log_path,
            next_seq: tail.last_seq + 1,
            head,
            since_checkpoint: 0,
            unanchored_since: None,
            unsynced_since: None,
            now,
            buf: Vec::with_capacity(64 * 1024),
            pending_checkpoints: Vec::new(),
            shared,
            stopped: false,
        };
        for cut in &tail.cuts {
            let file = cut
                .path
                .file_name()
                .map(|n| n.to_string_lossy().into_owned())
                .unwrap_or_default();
            tracing::warn!(
                file,
                bytes_dropped = cut.dropped,
                "ledger recovery cut a torn last line"
            );
            let rec = RecoveryRecord {
                seq: state.next_seq,
                ts: format::format_ts(wall),
                event_id: crate::facts::new_event_id(),
                kind: Kind::Recovery,
                file,
                bytes_dropped: cut.dropped,
                reason: "torn_tail".into(),
                prev: hex::encode(state.head),
            };
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
        let checkpoint = self.unanchored_since.map(|t| t + self.checkpoint_interval);
        let sync = self.unsynced_since.map(|t| t + self.sync_interval);
        match (checkpoint, sync) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
    }

    /// Handle one batch of commands.
    pub(crate) fn process(&mut self, batch: Vec<Cmd>, now: Instant) {
        self.now = now;
        if let Some(reason) = self.shared.fatal() {
            reject_all(batch, &reason);
            return;
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
            seal_file(&self.seg.path)?;
        }
        self.stopped = true;
        self.shared.closed.store(true, Ordering::SeqCst);
        Ok(())
    }

    fn fail(&mut self, err: &LedgerError) -> String {
        let reason = err.full_message();
        tracing::error!(error = %reason, "ledger write failed; refusing appends from now on (fail closed)");
        self.shared.set_fatal(reason.clone());
        self.buf.clear();
        self.pending_checkpoints.clear();
        reason
    }

    fn push_input(
        &mut self,
        input: RecordInput,
        wall: OffsetDateTime,
    ) -> Result<Appended, LedgerError> {
        let seq = self.next_seq;
        let ts = format::format_ts(wall);
        let prev = hex::encode(self.head);
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
            hash: hex::encode(hash),
        })
    }

    /// Seal `record` onto the chain and buffer it. `record` must carry `self.next_seq` and
    /// `prev = self.head`.
    fn push<T: serde::Serialize>(&mut self, record: &T) -> Result<[u8; 32], LedgerError> {
        let (line, hash) = seal(record, &self.head)?;
        self.buf.extend_from_slice(&line);
        self.seg.bytes += line.len() as u64;
        self.seg.records += 1;
        self.next_seq += 1;
        self.since_checkpoint += 1;
        self.unanchored_since.get_or_insert(self.now);
        self.head = hash;
        Ok(hash)
    }

    fn push_checkpoint(&mut self, wall: OffsetDateTime) -> Result<(), LedgerError> {
        let seq = self.next_seq;
        let head_seq = seq - 1;
        let head_hash = hex::encode(self.head);
        let ts = format::format_ts(wall);
        let message =
            format::checkpoint_message(&self.replica, self.seg.index, head_seq, &head_hash, &ts);
        let signature = hex::encode(self.key.sign(&message).to_bytes());
        let record = CheckpointRecord {
            seq,
            ts: ts.clone(),
            event_id: crate::facts::new_event_id(),
            kind: Kind::Checkpoint,
            replica: self.replica.clone(),
            segment: self.seg.index,
            head_seq,
            head_hash: head_hash.clone(),
            signature: signature.clone(),
            prev: head_hash.clone(),
        };
        let start = self.buf.len();
        let hash = self.push(&record)?;
        let line = String::from_utf8_lossy(&self.buf[start..self.buf.len() - 1]).into_owned();
        self.since_checkpoint = 0;
        self.unanchored_since = None;
        self.pending_checkpoints.push(CheckpointInfo {
            replica: self.replica.clone(),
            seq,
            head_seq,
            head_hash,
            segment: self.seg.index,
            ts,
            signature,
            hash: hex::encode(hash),
            line,
        });
        Ok(())
    }

    /// One `write` of the buffer, then (if asked and needed) one `fdatasync`.
    fn flush(&mut self, sync: bool) -> Result<(), LedgerError> {
        if !self.buf.is_empty() {
            (&self.seg.file)
                .write_all(&self.buf)
                .map_err(|e| LedgerError::io("writing", &self.seg.path, e))?;
            self.buf.clear();
            self.unsynced_since.get_or_insert(self.now);
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

    /// Copy synced checkpoints to `checkpoints.log` and publish the newest as the head.
    /// Only called after the segment holding them was synced: `checkpoints.log` must never
    /// claim more than the segments durably hold, or a crash would look like truncation.
    fn copy_checkpoints(&mut self) -> Result<(), LedgerError> {
        if self.pending_checkpoints.is_empty() {
            return Ok(());
        }
        debug_assert!(self.buf.is_empty() && self.unsynced_since.is_none());
        let mut out = Vec::new();
        for cp in &self.pending_checkpoints {
            out.extend_from_slice(cp.line.as_bytes());
            out.push(b'\n');
        }
        (&self.cp_log)
            .write_all(&out)
            .and_then(|()| self.cp_log.sync_data())
            .map_err(|e| LedgerError::io("writing", &self.cp_log_path, e))?;
        if let Some(last) = self.pending_checkpoints.pop() {
            self.shared.set_head(last);
        }
        self.pending_checkpoints.clear();
        Ok(())
    }

    /// Rotate before this record if the segment is full or the UTC day changed.
    fn rotate_if_due(&mut self, wall: OffsetDateTime) -> Result<(), LedgerError> {
        let day = wall.to_offset(UtcOffset::UTC).date();
        if self.seg.records == 0 || (self.seg.bytes < self.segment_max_bytes && day == self.seg.day)
        {
            return Ok(());
        }
        // Anchor the old segment, make it durable, then seal it read-only.
        if self.since_checkpoint > 0 {
            self.push_checkpoint(wall)?;
        }
        self.flush(true)?;
        self.copy_checkpoints()?;
        if self.seg.sealable {
            seal_file(&self.seg.path)?;
        }
        let redirect = self.next_segment_path.take();
        let (seg, head) = create_segment(
            &self.dir,
            redirect,
            self.seg.index + 1,
            &self.replica,
            self.next_seq,
            &self.head,
            wall,
        )?;
        tracing::info!(segment = seg.index, "ledger rotated to a new segment");
        self.seg = seg;
        self.head = head;
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

/// 32 random bytes: two chains never share a first link.
fn genesis() -> [u8; 32] {
    let mut bytes = [0u8; 32];
    rand_core06::OsRng.fill_bytes(&mut bytes);
    bytes
}

/// Create segment `index` (never overwriting one) and write its synced header line.
fn create_segment(
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
fn seal_file(path: &Path) -> Result<(), LedgerError> {
    fs::set_permissions(path, fs::Permissions::from_mode(0o444))
        .map_err(|e| LedgerError::io("sealing segment", path, e))
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

/// The async shell around [`WriterState`]: wait for a command or a timer, drain a batch, and
/// run it on a blocking thread.
pub(crate) async fn run(mut state: WriterState, mut rx: mpsc::Receiver<Cmd>, shared: Arc<Shared>) {
    loop {
        let deadline = state.next_deadline();
        let first = tokio::select! {
            biased;
            cmd = rx.recv() => cmd,
            () = sleep_until(deadline) => {
                let now = Instant::now();
                match on_blocking_thread(state, &shared, move |s| s.tick(now)).await {
                    Some(s) => state = s,
                    None => return,
                }
                continue;
            }
        };
        let Some(first) = first else {
            // Every handle was dropped without shutdown.
            let _ = on_blocking_thread(state, &shared, WriterState::close).await;
            return;
        };
        let mut batch = Vec::with_capacity(64);
        batch.push(first);
        while batch.len() < MAX_BATCH {
            match rx.try_recv() {
                Ok(cmd) => batch.push(cmd),
                Err(_) => break,
            }
        }
        // The queue has room again.
        shared.saturated.store(false, Ordering::SeqCst);
        let now = Instant::now();
        match on_blocking_thread(state, &shared, move |s| s.process(batch, now)).await {
            Some(s) => state = s,
            None => return,
        }
        if state.stopped() {
            return;
        }
    }
}

async fn sleep_until(deadline: Option<Instant>) {
    match deadline {
        Some(deadline) => tokio::time::sleep_until(deadline).await,
        None => std::future::pending().await,
    }
}

async fn on_blocking_thread(
    mut state: WriterState,
    shared: &Shared,
    f: impl FnOnce(&mut WriterState) + Send + 'static,
) -> Option<WriterState> {
    match tokio::task::spawn_blocking(move || {
        f(&mut state);
        state
    })
    .await
    {
        Ok(state) => Some(state),
        Err(err) => {
            let reason = format!("ledger writer stopped unexpectedly: {err}");
            tracing::error!(error = %reason, "ledger writer lost; refusing appends (fail closed)");
            shared.set_fatal(reason);
            None
        }
    }
}
