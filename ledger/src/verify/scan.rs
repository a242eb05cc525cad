//! The chain walk: segment by segment and line by line, checking `seq`, every link (also
//! across segments, through the headers) and each checkpoint as it comes.

use std::collections::HashMap;
use std::fs;
use std::path::Path;

use ed25519_dalek::VerifyingKey;

use crate::error::LedgerError;
use crate::format::{self, Entry, FORMAT_VERSION};
use crate::tamper::TamperKind;
use crate::verify::chains::Target;
use crate::verify::checkpoints::{self, Trusted};
use crate::verify::finding::{bad, Finding, Halt};
use crate::verify::report::{ChainReport, Location};

/// One chain, walked segment by segment, line by line.
pub(super) struct ChainScan<'k> {
    pub(super) target: Target,
    keys: &'k [VerifyingKey],
    pub(super) report: ChainReport,
    expected_seq: Option<u64>,
    prev: Option<[u8; 32]>,
    /// Every checkpoint line in the chain, by seq, for `checkpoints.log` and the trusted
    /// checkpoint to be compared with.
    pub(super) checkpoints: HashMap<u64, Vec<u8>>,
    pub(super) first_unanchored: Option<Location>,
    /// Where the next record would go (the torn line, if any).
    pub(super) end: Location,
}

impl<'k> ChainScan<'k> {
    pub(super) fn new(target: Target, keys: &'k [VerifyingKey]) -> Self {
        let end = Location {
            file: target.dir.clone(),
            line: 1,
            seq: None,
        };
        ChainScan {
            report: ChainReport {
                dir: target.dir.clone(),
                ..ChainReport::default()
            },
            target,
            keys,
            expected_seq: None,
            prev: None,
            checkpoints: HashMap::new(),
            first_unanchored: None,
            end,
        }
    }

    pub(super) fn run(&mut self, notes: &mut Vec<String>) -> Result<(), Halt> {
        let segments = std::mem::take(&mut self.target.segments);
        if self.target.single_file {
            notes.push(
                "verifying a single segment: its link to the previous segment and checkpoints.log are not checked".into(),
            );
        } else {
            for (expected, (index, _)) in (1..).zip(&segments) {
                if *index != expected {
                    let missing = self.target.dir.join(format::segment_file_name(expected));
                    return Err(bad(
                        &Location {
                            file: missing,
                            line: 1,
                            seq: None,
                        },
                        TamperKind::SegmentMissing,
                        format!(
                            "segment {expected} is missing: the chain's segments go on at {}",
                            format::segment_file_name(*index)
                        ),
                    ));
                }
            }
        }
        let count = segments.len();
        for (i, (index, path)) in segments.iter().enumerate() {
            self.scan_segment(*index, path, i + 1 == count, notes)?;
        }
        self.report.head_hash = self.prev.map(hex::encode);
        if !self.target.single_file {
            checkpoints::check_log(&self.report, &self.end, &self.checkpoints, self.keys, notes)?;
        }
        Ok(())
    }

    fn scan_segment(
        &mut self,
        index: u64,
        path: &Path,
        last: bool,
        notes: &mut Vec<String>,
    ) -> Result<(), Halt> {
        if !last && fs::metadata(path).is_ok_and(|m| !m.permissions().readonly()) {
            notes.push(format!("{} is sealed but still writable", path.display()));
        }
        let bytes = fs::read(path).map_err(|e| LedgerError::io("reading", path, e))?;
        let (lines, torn) = format::split_lines(&bytes);
        let at = |line: usize, seq: Option<u64>| Location {
            file: path.to_owned(),
            line: line as u64,
            seq,
        };
        if torn > 0 || lines.is_empty() {
            if !last {
                return Err(bad(
                    &at(lines.len() + 1, None),
                    TamperKind::Parse,
                    "the segment ends with a partial line, but later segments exist: a crash can only tear the last one",
                ));
            }
            self.report.torn_tail_bytes = torn as u64;
        }
        let Some(first) = lines.first() else {
            self.end = at(1, self.expected_seq);
            return Ok(());
        };

        let header_at = at(1, None);
        let parsed = format::parse_line(first).map_err(|f| bad(&header_at, f.kind, f.why))?;
        let Entry::Header(header) = parsed.entry else {
            return Err(bad(
                &header_at,
                TamperKind::Schema,
                "the first line of a segment must be its header",
            ));
        };
        if header.version != FORMAT_VERSION {
            return Err(bad(
                &header_at,
                TamperKind::Schema,
                format!("unsupported format version {}", header.version),
            ));
        }
        if header.segment != index {
            return Err(bad(
                &header_at,
                TamperKind::SegmentSplice,
                format!(
                    "the header says segment {} but the file is segment {index}",
                    header.segment
                ),
            ));
        }
        match &self.report.replica {
            None => self.report.replica = Some(header.replica.clone()),
            Some(r) if *r != header.replica => {
                return Err(bad(
                    &header_at,
                    TamperKind::SegmentSplice,
                    format!(
                        "segment of replica {:?} inside the chain of replica {r:?}",
                        header.replica
                    ),
                ));
            }
            Some(_) => {}
        }
        match (self.expected_seq, self.prev) {
            (Some(expected), Some(prev)) => {
                if header.first_seq != expected {
                    return Err(bad(
                        &header_at,
                        TamperKind::SegmentSplice,
                        format!(
                            "the segment starts at seq {} but the chain continues at seq {expected}: a segment was spliced in or replaced",
                            header.first_seq
                        ),
                    ));
                }
                if format::decode_hash(header.prev.as_bytes()) != Some(prev) {
                    return Err(bad(
                        &header_at,
                        TamperKind::SegmentSplice,
                        "the header does not chain from the previous segment's last hash: a segment was spliced in or replaced",
                    ));
                }
            }
            _ if !self.target.single_file && header.first_seq != 1 => {
                return Err(bad(
                    &header_at,
                    TamperKind::SegmentSplice,
                    format!(
                        "the first segment starts at seq {} instead of 1",
                        header.first_seq
                    ),
                ));
            }
            _ => {}
        }
        self.report.segments += 1;
        self.report.first_seq.get_or_insert(header.first_seq);
        self.expected_seq = Some(header.first_seq);
        self.prev = Some(parsed.hash);

        for (i, line) in lines.iter().enumerate().skip(1) {
            let line_no = i + 1;
            let expected = self.expected_seq.unwrap_or(header.first_seq);
            let parsed = format::parse_line(line)
                .map_err(|f| bad(&at(line_no, Some(expected)), f.kind, f.why))?;
            let Some(seq) = parsed.entry.seq() else {
                return Err(bad(
                    &at(line_no, None),
                    TamperKind::Schema,
                    "a segment header in the middle of a segment",
                ));
            };
            let here = at(line_no, Some(seq));
            if seq != expected {
                let why = if seq > expected {
                    format!("expected seq {expected}, found {seq}: records before it were deleted, or records were reordered")
                } else {
                    format!("expected seq {expected}, found {seq}: records were duplicated or reordered")
                };
                return Err(bad(&here, TamperKind::Sequence, why));
            }
            // The writer never gets to u64::MAX (it refuses to, see `WriterState::push`),
            // and nothing could follow it.
            let Some(next_seq) = seq.checked_add(1) else {
                return Err(bad(
                    &here,
                    TamperKind::Sequence,
                    "seq is the largest possible number, which no writer reaches: the record was forged",
                ));
            };
            if format::decode_hash(parsed.entry.prev().as_bytes()) != self.prev {
                return Err(bad(
                    &here,
                    TamperKind::BrokenLink,
                    "\"prev\" is not the hash of the record before it: a record was removed, inserted or replaced",
                ));
            }
            if let Entry::Checkpoint(cp) = &parsed.entry {
                let replica = self.report.replica.as_deref().unwrap_or_default();
                checkpoints::check_record(cp, replica, index, self.keys, &here)?;
                self.checkpoints.insert(seq, line.to_vec());
                self.report.checkpoints += 1;
                self.report.last_checkpoint_seq = Some(seq);
                self.report.unanchored = 0;
                self.first_unanchored = None;
            } else {
                self.report.unanchored += 1;
                self.first_unanchored.get_or_insert_with(|| here.clone());
            }
            self.report.records += 1;
            self.report.last_seq = Some(seq);
            self.prev = Some(parsed.hash);
            self.expected_seq = Some(next_seq);
        }
        self.end = at(lines.len() + 1, self.expected_seq);
        Ok(())
    }

    pub(super) fn check_trusted(&mut self, trusted: &Trusted, path: &Path) -> Result<(), Finding> {
        checkpoints::check_trusted(
            trusted,
            path,
            &mut self.report,
            &self.end,
            &self.checkpoints,
        )
    }
}
