//! `ledger verify`: check a ledger (one segment, one chain directory, or a directory of
//! replica chains) without trusting anything in it except, optionally, a public key and a
//! checkpoint supplied from outside.

use std::collections::HashMap;
use std::fmt;
use std::fs;
use std::io;
use std::path::{Path, PathBuf};

use ed25519_dalek::{Signature, VerifyingKey};

use crate::error::LedgerError;
use crate::format::{self, CheckpointRecord, Entry, CHECKPOINTS_FILE, FORMAT_VERSION, PUBKEY_FILE};
use crate::keys;
use crate::tamper::TamperKind;

/// What `ledger verify` was asked for.
#[derive(Clone, Debug, Default)]
pub struct VerifyOptions {
    /// File with the hex public key(s) to check checkpoint signatures against. Without it,
    /// the `pubkey` file beside the log is used, which an attacker who rewrote the log may
    /// have replaced too; the report says so.
    pub pubkey: Option<PathBuf>,
    /// A checkpoint line kept somewhere safe (a copy of a `checkpoints.log` line or of
    /// `/v1/ledger/head`'s `line`). The ledger must still contain exactly that record;
    /// this detects a whole log rolled back to an older copy.
    pub trusted_checkpoint: Option<PathBuf>,
    /// Treat records after the last checkpoint (and a torn last line) as errors.
    pub strict: bool,
}

/// A line in a ledger file. `line` is 1-based; `seq` is known for records.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Location {
    pub file: PathBuf,
    pub line: u64,
    pub seq: Option<u64>,
}

impl fmt::Display for Location {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}", self.file.display(), self.line)?;
        if let Some(seq) = self.seq {
            write!(f, " (seq {seq})")?;
        }
        Ok(())
    }
}

/// Which public key the checkpoint signatures were checked against.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum KeySource {
    /// `--pubkey FILE`: a key from outside the log.
    Given(PathBuf),
    /// The `pubkey` file(s) found beside the log. Weaker: whoever can rewrite the log can
    /// replace these too.
    BesideLog(Vec<PathBuf>),
}

/// What was found in one chain (one replica's directory).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ChainReport {
    pub dir: PathBuf,
    pub replica: Option<String>,
    pub segments: u64,
    /// Records, not counting segment headers.
    pub records: u64,
    pub first_seq: Option<u64>,
    pub last_seq: Option<u64>,
    /// Hex hash of the last line.
    pub head_hash: Option<String>,
    pub checkpoints: u64,
    pub last_checkpoint_seq: Option<u64>,
    /// Records after the last checkpoint: nothing signed vouches for them yet.
    pub unanchored: u64,
    /// Bytes of a torn last line (a crash not yet recovered by a restart).
    pub torn_tail_bytes: u64,
    /// Seq of the `--trusted-checkpoint` found in this chain.
    pub trusted_checkpoint_seq: Option<u64>,
}

/// Everything verify looked at, intact or not.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct VerifyReport {
    pub chains: Vec<ChainReport>,
    pub key_source: KeySource,
    /// Warnings that are not tampering (unanchored records, a missing `checkpoints.log`, ...).
    pub notes: Vec<String>,
}

/// The verdict. An I/O or usage problem is an `Err(LedgerError)` instead (exit code 2).
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum VerifyOutcome {
    Intact(VerifyReport),
    Tampered {
        /// The first bad record (or where the first missing one should be).
        first_bad: Location,
        kind: TamperKind,
        why: String,
        report: VerifyReport,
    },
}

impl VerifyOutcome {
    /// 0 when intact, 1 on tampering (errors are 2).
    pub fn exit_code(&self) -> i32 {
        match self {
            VerifyOutcome::Intact(_) => 0,
            VerifyOutcome::Tampered { .. } => 1,
        }
    }

    pub fn is_intact(&self) -> bool {
        matches!(self, VerifyOutcome::Intact(_))
    }

    pub fn report(&self) -> &VerifyReport {
        match self {
            VerifyOutcome::Intact(report) | VerifyOutcome::Tampered { report, .. } => report,
        }
    }
}

impl fmt::Display for VerifyOutcome {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            VerifyOutcome::Intact(report) => write!(f, "ledger intact\n{report}"),
            VerifyOutcome::Tampered {
                first_bad,
                kind,
                why,
                report,
            } => write!(
                f,
                "ledger TAMPERED at {first_bad}: {why} [{kind}]\n{report}"
            ),
        }
    }
}

impl fmt::Display for VerifyReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for chain in &self.chains {
            let opt = |v: Option<u64>| v.map_or_else(|| "-".to_owned(), |v| v.to_string());
            writeln!(
                f,
                "chain {} (replica {}): {} segment(s), {} record(s), seq {}..{}, {} checkpoint(s), last checkpoint seq {}, {} unanchored",
                chain.dir.display(),
                chain.replica.as_deref().unwrap_or("?"),
                chain.segments,
                chain.records,
                opt(chain.first_seq),
                opt(chain.last_seq),
                chain.checkpoints,
                opt(chain.last_checkpoint_seq),
                chain.unanchored,
            )?;
        }
        match &self.key_source {
            KeySource::Given(path) => writeln!(f, "signatures checked against {}", path.display())?,
            KeySource::BesideLog(paths) => {
                let list: Vec<_> = paths.iter().map(|p| p.display().to_string()).collect();
                writeln!(
                    f,
                    "signatures checked against the key found beside the log ({}); weaker: pass --pubkey to check against a key kept elsewhere",
                    list.join(", ")
                )?;
            }
        }
        for note in &self.notes {
            writeln!(f, "note: {note}")?;
        }
        Ok(())
    }
}

/// Verify the ledger at `path`: one segment file, one ledger directory, or a directory whose
/// subdirectories are replica chains (SPEC §14).
///
/// Checks parsing and canonical form, the field allowlist, contiguous `seq`, every link
/// (also across segments, through the segment headers), every checkpoint signature and its
/// monotonicity, that the files are not shorter than `checkpoints.log` says, and, with
/// `--trusted-checkpoint`, that the trusted checkpoint is still in the chain.
pub fn verify(path: &Path, opts: &VerifyOptions) -> Result<VerifyOutcome, LedgerError> {
    let meta = fs::metadata(path).map_err(|e| LedgerError::io("reading", path, e))?;
    let targets = find_chains(path, meta.is_file())?;

    let given_keys = opts
        .pubkey
        .as_ref()
        .map(|p| keys::read_public_keys(p))
        .transpose()?;
    let mut beside = Vec::new();
    let mut chain_keys = Vec::new();
    for target in &targets {
        match &given_keys {
            Some(keys) => chain_keys.push(keys.clone()),
            None => {
                let key_path = target.dir.join(PUBKEY_FILE);
                match keys::read_public_keys(&key_path) {
                    Ok(keys) => chain_keys.push(keys),
                    Err(LedgerError::Io { source, .. })
                        if source.kind() == io::ErrorKind::NotFound =>
                    {
                        return Err(LedgerError::Usage(format!(
                            "no public key: {} does not exist; pass --pubkey FILE (see `portcullis ledger pubkey`)",
                            key_path.display()
                        )));
                    }
                    Err(e) => return Err(e),
                }
                beside.push(key_path);
            }
        }
    }
    let key_source = match &opts.pubkey {
        Some(path) => KeySource::Given(path.clone()),
        None => KeySource::BesideLog(beside),
    };

    let mut scans = Vec::new();
    let mut notes = Vec::new();
    for (target, keys) in targets.into_iter().zip(&chain_keys) {
        let mut scan = ChainScan::new(target, keys);
        let finding = match scan.run(&mut notes) {
            Ok(()) => None,
            Err(Halt::Tampered(f)) => Some(f),
            Err(Halt::Error(e)) => return Err(e),
        };
        scans.push((scan, finding));
    }

    if let Some(trusted_path) = &opts.trusted_checkpoint {
        let trusted = read_trusted(trusted_path)?;
        let index = scans.iter().position(|(s, _)| {
            s.report.replica.as_deref() == Some(trusted.record.replica.as_str())
        });
        match index {
            None => {
                let finding = Finding {
                    location: Location {
                        file: trusted_path.clone(),
                        line: trusted.line_no,
                        seq: Some(trusted.record.seq),
                    },
                    kind: TamperKind::RolledBack,
                    why: format!(
                        "no chain for replica {:?}, which the trusted checkpoint names: the ledger was replaced or removed",
                        trusted.record.replica
                    ),
                };
                if let Some((_, slot)) = scans.first_mut() {
                    slot.get_or_insert(finding);
                }
            }
            Some(i) => {
                let (scan, slot) = &mut scans[i];
                let keys = &chain_keys[i];
                if !signature_ok(keys, &trusted.record) {
                    return Err(LedgerError::Usage(format!(
                        "the trusted checkpoint in {} does not verify under the public key in use; it is not a checkpoint of this ledger",
                        trusted_path.display()
                    )));
                }
                if scan.target.single_file {
                    notes.push(
                        "the trusted checkpoint is not checked against a single segment; pass the ledger directory".into(),
                    );
                } else if slot.is_none() {
                    *slot = scan.check_trusted(&trusted, trusted_path).err();
                }
            }
        }
    }

    for (scan, slot) in &mut scans {
        if slot.is_some() {
            continue;
        }
        let report = &scan.report;
        if report.torn_tail_bytes > 0 {
            let msg = format!(
                "{} ends with a torn line of {} bytes (a crash); the next start cuts it and writes a recovery record",
                scan.end.file.display(),
                report.torn_tail_bytes
            );
            if opts.strict {
                *slot = Some(Finding {
                    location: scan.end.clone(),
                    kind: TamperKind::TornTail,
                    why: msg,
                });
                continue;
            }
            notes.push(msg);
        }
        if report.unanchored > 0 {
            let msg = format!(
                "{} record(s) after the last checkpoint in {} are unanchored: no signature covers them yet",
                report.unanchored,
                report.dir.display()
            );
            match (&scan.first_unanchored, opts.strict) {
                (Some(location), true) => {
                    *slot = Some(Finding {
                        location: location.clone(),
                        kind: TamperKind::Unanchored,
                        why: msg,
                    });
                }
                _ => notes.push(msg),
            }
        }
    }

    let mut first = None;
    let mut chains = Vec::new();
    for (scan, finding) in scans {
        if first.is_none() {
            first = finding;
        }
        chains.push(scan.report);
    }
    let report = VerifyReport {
        chains,
        key_source,
        notes,
    };
    Ok(match first {
        None => VerifyOutcome::Intact(report),
        Some(f) => VerifyOutcome::Tampered {
            first_bad: f.location,
            kind: f.kind,
            why: f.why,
            report,
        },
    })
}

struct Target {
    dir: PathBuf,
    segments: Vec<(u64, PathBuf)>,
    /// Verifying one segment file: no neighbours, no `checkpoints.log`.
    single_file: bool,
}

fn find_chains(path: &Path, is_file: bool) -> Result<Vec<Target>, LedgerError> {
    if is_file {
        let index = path
            .file_name()
            .and_then(|n| n.to_str())
            .and_then(format::parse_segment_file_name)
            .ok_or_else(|| {
                LedgerError::Usage(format!(
                    "{} is not a ledger segment (segment-NNNNNNNN.jsonl); pass a segment or a ledger directory",
                    path.display()
                ))
            })?;
        let dir = path
            .parent()
            .filter(|p| !p.as_os_str().is_empty())
            .unwrap_or(Path::new("."))
            .to_owned();
        return Ok(vec![Target {
            dir,
            segments: vec![(index, path.to_owned())],
            single_file: true,
        }]);
    }
    let list =
        |dir: &Path| format::list_segments(dir).map_err(|e| LedgerError::io("listing", dir, e));
    let segments = list(path)?;
    if !segments.is_empty() {
        return Ok(vec![Target {
            dir: path.to_owned(),
            segments,
            single_file: false,
        }]);
    }
    let mut subdirs = Vec::new();
    for entry in fs::read_dir(path).map_err(|e| LedgerError::io("listing", path, e))? {
        let entry = entry.map_err(|e| LedgerError::io("listing", path, e))?;
        if entry.file_type().is_ok_and(|t| t.is_dir()) {
            subdirs.push(entry.path());
        }
    }
    subdirs.sort();
    let mut targets = Vec::new();
    for dir in subdirs {
        let segments = list(&dir)?;
        if !segments.is_empty() {
            targets.push(Target {
                dir,
                segments,
                single_file: false,
            });
        }
    }
    if targets.is_empty() {
        return Err(LedgerError::Usage(format!(
            "no ledger segments (segment-*.jsonl) in {} or its subdirectories",
            path.display()
        )));
    }
    Ok(targets)
}

struct Finding {
    location: Location,
    kind: TamperKind,
    why: String,
}

enum Halt {
    Tampered(Finding),
    Error(LedgerError),
}

impl From<LedgerError> for Halt {
    fn from(e: LedgerError) -> Self {
        Halt::Error(e)
    }
}

impl From<Finding> for Halt {
    fn from(f: Finding) -> Self {
        Halt::Tampered(f)
    }
}

fn bad(location: &Location, kind: TamperKind, why: impl Into<String>) -> Halt {
    Halt::Tampered(Finding {
        location: location.clone(),
        kind,
        why: why.into(),
    })
}

struct Trusted {
    record: CheckpointRecord,
    line: Vec<u8>,
    line_no: u64,
}

fn read_trusted(path: &Path) -> Result<Trusted, LedgerError> {
    let text = fs::read_to_string(path)
        .map_err(|e| LedgerError::io("reading trusted checkpoint", path, e))?;
    let (line_no, line) = text
        .lines()
        .enumerate()
        .filter(|(_, l)| !l.trim().is_empty())
        .last()
        .ok_or_else(|| {
            LedgerError::Usage(format!("{} holds no checkpoint line", path.display()))
        })?;
    let line = line.trim();
    let parsed = format::parse_line(line.as_bytes()).map_err(|f| {
        LedgerError::Usage(format!(
            "{}:{}: not a valid checkpoint line: {}",
            path.display(),
            line_no + 1,
            f.why
        ))
    })?;
    match parsed.entry {
        Entry::Checkpoint(record) => Ok(Trusted {
            record,
            line: line.as_bytes().to_vec(),
            line_no: line_no as u64 + 1,
        }),
        _ => Err(LedgerError::Usage(format!(
            "{}:{}: not a checkpoint record",
            path.display(),
            line_no + 1
        ))),
    }
}

fn signature_ok(keys: &[VerifyingKey], cp: &CheckpointRecord) -> bool {
    let mut sig = [0u8; 64];
    if cp.signature.len() != 128 || hex::decode_to_slice(&cp.signature, &mut sig).is_err() {
        return false;
    }
    let sig = Signature::from_bytes(&sig);
    let msg =
        format::checkpoint_message(&cp.replica, cp.segment, cp.head_seq, &cp.head_hash, &cp.ts);
    keys.iter().any(|k| k.verify_strict(&msg, &sig).is_ok())
}

/// One chain, walked segment by segment, line by line.
struct ChainScan<'k> {
    target: Target,
    keys: &'k [VerifyingKey],
    report: ChainReport,
    expected_seq: Option<u64>,
    prev: Option<[u8; 32]>,
    /// Every checkpoint line in the chain, by seq, for `checkpoints.log` and the trusted
    /// checkpoint to be compared with.
    checkpoints: HashMap<u64, Vec<u8>>,
    first_unanchored: Option<Location>,
    /// Where the next record would go (the torn line, if any).
    end: Location,
}

impl<'k> ChainScan<'k> {
    fn new(target: Target, keys: &'k [VerifyingKey]) -> Self {
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

    fn run(&mut self, notes: &mut Vec<String>) -> Result<(), Halt> {
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
            self.check_checkpoint_log(notes)?;
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
            if format::decode_hash(parsed.entry.prev().as_bytes()) != self.prev {
                return Err(bad(
                    &here,
                    TamperKind::BrokenLink,
                    "\"prev\" is not the hash of the record before it: a record was removed, inserted or replaced",
                ));
            }
            if let Entry::Checkpoint(cp) = &parsed.entry {
                self.check_checkpoint(cp, index, &here)?;
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
            self.expected_seq = Some(seq + 1);
        }
        self.end = at(lines.len() + 1, self.expected_seq);
        Ok(())
    }

    fn check_checkpoint(
        &self,
        cp: &CheckpointRecord,
        index: u64,
        here: &Location,
    ) -> Result<(), Halt> {
        let replica = self.report.replica.as_deref().unwrap_or_default();
        let why = if cp.replica != replica {
            Some(format!(
                "checkpoint names replica {:?} in the chain of {replica:?}",
                cp.replica
            ))
        } else if cp.segment != index {
            Some(format!(
                "checkpoint names segment {} but sits in segment {index}",
                cp.segment
            ))
        } else if cp.head_seq + 1 != cp.seq || cp.head_hash != cp.prev {
            Some("checkpoint does not sign the record right before it".to_owned())
        } else {
            None
        };
        if let Some(why) = why {
            return Err(bad(here, TamperKind::Checkpoint, why));
        }
        if !signature_ok(self.keys, cp) {
            return Err(bad(
                here,
                TamperKind::BadSignature,
                "the checkpoint signature does not verify under the public key: forged or altered",
            ));
        }
        Ok(())
    }

    /// Every line of `checkpoints.log` must be a validly signed checkpoint, in increasing
    /// order, and byte-identical to the chain's record at its seq. One beyond the end of
    /// the chain means the chain lost its tail.
    fn check_checkpoint_log(&mut self, notes: &mut Vec<String>) -> Result<(), Halt> {
        let path = self.target.dir.join(CHECKPOINTS_FILE);
        let bytes = match fs::read(&path) {
            Ok(bytes) => bytes,
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                notes.push(format!(
                    "{} is missing: truncation of the chain's tail cannot be detected without --trusted-checkpoint",
                    path.display()
                ));
                return Ok(());
            }
            Err(e) => return Err(LedgerError::io("reading", &path, e).into()),
        };
        let (lines, torn) = format::split_lines(&bytes);
        if torn > 0 {
            notes.push(format!(
                "{} ends with a torn line of {torn} bytes (a crash while copying a checkpoint)",
                path.display()
            ));
        }
        let last_seq = self.report.last_seq.unwrap_or(0);
        let mut previous = 0;
        for (i, line) in lines.iter().enumerate() {
            let mut here = Location {
                file: path.clone(),
                line: i as u64 + 1,
                seq: None,
            };
            let parsed = format::parse_line(line).map_err(|f| bad(&here, f.kind, f.why))?;
            let Entry::Checkpoint(cp) = parsed.entry else {
                return Err(bad(
                    &here,
                    TamperKind::CheckpointLog,
                    "not a checkpoint record",
                ));
            };
            here.seq = Some(cp.seq);
            if !signature_ok(self.keys, &cp) {
                return Err(bad(
                    &here,
                    TamperKind::BadSignature,
                    "the checkpoint signature does not verify under the public key: forged or altered",
                ));
            }
            if cp.seq <= previous {
                return Err(bad(
                    &here,
                    TamperKind::CheckpointLog,
                    format!(
                        "checkpoints go backwards: seq {} after seq {previous}",
                        cp.seq
                    ),
                ));
            }
            previous = cp.seq;
            if cp.seq > last_seq {
                let (kind, what) = if self.report.torn_tail_bytes > 0 {
                    (
                        TamperKind::TornTailCovered,
                        "the torn last line was already covered by a checkpoint: not a crash",
                    )
                } else {
                    (TamperKind::Truncated, "records were deleted from the end")
                };
                return Err(bad(
                    &self.end,
                    kind,
                    format!(
                        "{}:{} signs the chain up to seq {}, but the chain ends at seq {last_seq}: {what}",
                        path.display(),
                        i + 1,
                        cp.head_seq
                    ),
                ));
            }
            if self.checkpoints.get(&cp.seq).map(Vec::as_slice) != Some(*line) {
                return Err(bad(
                    &here,
                    TamperKind::CheckpointLog,
                    format!(
                        "the checkpoint does not match the chain's record at seq {}: the chain was rewritten",
                        cp.seq
                    ),
                ));
            }
        }
        Ok(())
    }

    fn check_trusted(&mut self, trusted: &Trusted, path: &Path) -> Result<(), Finding> {
        let last_seq = self.report.last_seq.unwrap_or(0);
        let seq = trusted.record.seq;
        if seq > last_seq {
            return Err(Finding {
                location: self.end.clone(),
                kind: TamperKind::RolledBack,
                why: format!(
                    "the trusted checkpoint covers seq {}, but the chain ends at seq {last_seq}: the ledger was rolled back or truncated",
                    trusted.record.head_seq
                ),
            });
        }
        if self.checkpoints.get(&seq) != Some(&trusted.line) {
            return Err(Finding {
                location: Location {
                    file: path.to_owned(),
                    line: trusted.line_no,
                    seq: Some(seq),
                },
                kind: TamperKind::RolledBack,
                why: format!("the chain's record at seq {seq} is not the trusted checkpoint: the ledger was rewritten"),
            });
        }
        self.report.trusted_checkpoint_seq = Some(seq);
        Ok(())
    }
}
