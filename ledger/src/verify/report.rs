//! What verify reports: where a bad record is, which key was used, what each chain held,
//! and the verdict with its exit code.

use std::fmt;
use std::path::PathBuf;

use crate::tamper::TamperKind;

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
