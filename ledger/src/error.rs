//! The one error type of this crate.

use std::path::PathBuf;

/// Why the ledger could not be opened, appended to, shut down or verified.
///
/// `Display` prints this layer only; an underlying I/O error is the `source()`.
/// For `ledger verify`, every `LedgerError` means exit code 2 (usage or I/O), while tampering
/// is not an error but a [`crate::VerifyOutcome::Tampered`] (exit code 1).
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum LedgerError {
    /// Reading or writing a ledger file failed. `what` says which operation.
    #[error("{what} {}", path.display())]
    Io {
        what: &'static str,
        path: PathBuf,
        source: std::io::Error,
    },

    /// The writer's queue is full. The append was refused at once; the caller fails closed.
    #[error("ledger queue is full; refusing the append (fail closed)")]
    Backpressure,

    /// An earlier write failed, so the ledger refuses every append from now on (fail closed).
    #[error("ledger is unhealthy: {0}")]
    Unhealthy(String),

    /// [`crate::Ledger::shutdown`] has run; no more appends are accepted.
    #[error("ledger is shut down")]
    Closed,

    /// `open` found evidence of tampering, not of a crash, and refuses to write on top of it.
    #[error(
        "ledger tampering detected at {location}: {why}; keep the directory as evidence, run `portcullis ledger verify`, and start with a fresh ledger directory"
    )]
    Tampered { location: String, why: String },

    /// `open` found a damaged record that a crash cannot explain (it is not a torn last line).
    #[error("ledger file {} is corrupt at line {line}: {why}; run `portcullis ledger verify`", file.display())]
    Corrupt {
        file: PathBuf,
        line: u64,
        why: String,
    },

    /// The checkpoint signing key (or a public key file) cannot be used.
    #[error("cannot use key file {}: {why}", path.display())]
    Key { path: PathBuf, why: String },

    /// Bad options or arguments, for example a path that holds no ledger.
    #[error("{0}")]
    Usage(String),

    /// A record could not be serialized. Not expected: every record is a plain struct.
    #[error("encoding a ledger record failed: {0}")]
    Encode(String),
}

impl LedgerError {
    pub(crate) fn io(what: &'static str, path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        LedgerError::Io {
            what,
            path: path.into(),
            source,
        }
    }

    pub(crate) fn key(path: impl Into<PathBuf>, why: impl Into<String>) -> Self {
        LedgerError::Key {
            path: path.into(),
            why: why.into(),
        }
    }

    /// The append was refused because the queue was full (the ledger itself may be fine).
    pub fn is_backpressure(&self) -> bool {
        matches!(self, LedgerError::Backpressure)
    }

    /// The ledger can no longer be written: an I/O failure, or it was shut down.
    pub fn is_unavailable(&self) -> bool {
        matches!(
            self,
            LedgerError::Unhealthy(_) | LedgerError::Closed | LedgerError::Io { .. }
        )
    }

    /// `open` found tampering.
    pub fn is_tampered(&self) -> bool {
        matches!(self, LedgerError::Tampered { .. })
    }

    /// This error followed by its sources, for a health reason or a log line.
    pub fn full_message(&self) -> String {
        let mut out = self.to_string();
        let mut source = std::error::Error::source(self);
        while let Some(err) = source {
            out.push_str(": ");
            out.push_str(&err.to_string());
            source = err.source();
        }
        out
    }
}

impl From<serde_json::Error> for LedgerError {
    fn from(err: serde_json::Error) -> Self {
        LedgerError::Encode(err.to_string())
    }
}
