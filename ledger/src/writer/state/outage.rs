//! A full disk: the writer stops, remembers the chain as it is on disk, and once there is
//! room again writes a `recovery` record and resumes.

use std::sync::atomic::Ordering;

use time::OffsetDateTime;
use tokio::time::Instant;

use super::WriterState;
use crate::format::{self, Kind, RecoveryRecord};

/// While the disk is full, the writer tries to write again this often.
pub(super) const OUTAGE_RETRY: std::time::Duration = std::time::Duration::from_secs(1);
/// ... once at least this much is free, so that a disk at the brink does not flap between
/// a recovery record and the next failure.
const RESUME_HEADROOM: u64 = 1024 * 1024;

/// The chain as far as it is on disk: where a failed write is rolled back to.
#[derive(Clone, Copy)]
pub(super) struct Mark {
    /// Length of the active segment file.
    pub(super) len: u64,
    pub(super) records: u64,
    pub(super) head: [u8; 32],
    pub(super) next_seq: u64,
    pub(super) since_checkpoint: u64,
    pub(super) unanchored_since: Option<Instant>,
}

/// The disk was full: nothing is written until a `recovery` record fits.
pub(super) struct Outage {
    pub(super) since: OffsetDateTime,
    pub(super) next_try: Instant,
    /// Appends the writer itself refused (the handles count theirs in `Shared::refused`).
    pub(super) refused: u64,
}

impl WriterState {
    /// The chain as far as it is on disk now (the buffer is empty).
    pub(super) fn snapshot(&self) -> Mark {
        Mark {
            len: self.seg.bytes,
            records: self.seg.records,
            head: self.head,
            next_seq: self.next_seq,
            since_checkpoint: self.since_checkpoint,
            unanchored_since: self.unanchored_since,
        }
    }

    /// Forget every record after the mark: they were refused, never written.
    pub(super) fn rollback(&mut self) {
        let m = self.mark;
        self.seg.bytes = m.len;
        self.seg.records = m.records;
        self.head = m.head;
        self.next_seq = m.next_seq;
        self.since_checkpoint = m.since_checkpoint;
        self.unanchored_since = m.unanchored_since;
    }

    /// During an outage: cut any partial write back to the mark and try to write the
    /// `recovery` record that says what was lost. Appends resume once it is durable.
    pub(super) fn try_recover(&mut self, now: Instant) {
        self.now = now;
        let Some(outage) = &mut self.outage else {
            return;
        };
        outage.next_try = now + OUTAGE_RETRY;
        let (since, writer_refused) = (outage.since, outage.refused);
        if let Ok(st) = rustix::fs::fstatvfs(&self.seg.file) {
            if st.f_bavail.saturating_mul(st.f_frsize) < RESUME_HEADROOM {
                return;
            }
        }
        let on_disk = match self.seg.file.metadata() {
            Ok(m) => m.len(),
            Err(e) => {
                tracing::warn!(error = %e, "ledger still down: cannot read the segment's length");
                return;
            }
        };
        if on_disk != self.mark.len {
            if let Err(e) = self.seg.file.set_len(self.mark.len) {
                tracing::warn!(error = %e, "ledger still down: cannot cut a partial write");
                return;
            }
        }
        let handle_refused = self.shared.refused.load(Ordering::Relaxed);
        let wall = (self.clock)();
        let record = RecoveryRecord {
            seq: self.next_seq,
            ts: format::format_ts(wall),
            event_id: crate::facts::new_event_id(),
            kind: Kind::Recovery,
            file: self
                .seg
                .path
                .file_name()
                .map(|n| n.to_string_lossy().into_owned())
                .unwrap_or_default(),
            bytes_dropped: on_disk.saturating_sub(self.mark.len),
            reason: "disk_full".into(),
            refused: Some(writer_refused.saturating_add(handle_refused)),
            down_since: Some(format::format_ts(since)),
            prev: hex::encode(self.head),
        };
        let written = self.push(&record).and_then(|_| self.flush(true));
        match written {
            Ok(()) => {
                self.outage = None;
                self.shared.set_up();
                // Appends refused while the record itself was being written are not in it.
                let late = self
                    .shared
                    .refused
                    .swap(0, Ordering::Relaxed)
                    .saturating_sub(handle_refused);
                if late > 0 {
                    tracing::warn!(
                        late,
                        "appends refused while the recovery record was written"
                    );
                }
                tracing::warn!(
                    refused = writer_refused.saturating_add(handle_refused),
                    down_since = %format::format_ts(since),
                    "ledger disk has room again: recovery record written, appends resume"
                );
            }
            Err(err) => {
                // Still full: stay down (fail() rolls back). Any other error is for good.
                self.fail(&err);
            }
        }
    }
}
