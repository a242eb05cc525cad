//! The one error type of this crate.

use std::path::PathBuf;

/// Why a CA could not be created, loaded or used to mint a leaf.
///
/// `Display` prints this layer only. The underlying I/O error, if any, is the `source()`.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum CaError {
    /// `init` found a CA file in place and left it alone.
    #[error("CA already exists at {}; refusing to overwrite it (use `ca show`)", path.display())]
    AlreadyExists { path: PathBuf },

    /// `load` found no CA file.
    #[error("no CA at {}; run `portcullis ca init`", path.display())]
    NotFound { path: PathBuf },

    /// Exactly one of `ca.pem` / `ca.key` exists, so neither loading nor creating is safe.
    #[error(
        "incomplete CA: {} exists but {} is missing; restore the missing file, or move {} away and run `portcullis ca init`",
        present.display(),
        missing.display(),
        present.display()
    )]
    Incomplete { present: PathBuf, missing: PathBuf },

    /// Reading or writing a CA file failed.
    #[error("I/O error on {}", path.display())]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },

    /// The CA key file can be read by group or others. `mode` holds the permission bits.
    #[error(
        "CA key {} has mode {mode:04o}, readable by group or others; refusing to load it (run `chmod 600 {}`)",
        path.display(),
        path.display()
    )]
    InsecureKeyPermissions { path: PathBuf, mode: u32 },

    /// A CA file is not what it should be: bad PEM, not a CA, a key that does not match, and so on.
    #[error("cannot use {}: {detail}", path.display())]
    BadPem { path: PathBuf, detail: String },

    /// The host is not a DNS name or an IP literal that a leaf certificate can name.
    #[error("invalid host {host:?} for a leaf certificate: expected a DNS name or an IP literal")]
    InvalidHost { host: String },

    /// Certificate generation or signing failed.
    #[error("minting a certificate failed: {0}")]
    Mint(String),
}

impl CaError {
    pub(crate) fn io(path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        CaError::Io {
            path: path.into(),
            source,
        }
    }

    pub(crate) fn bad_pem(path: impl Into<PathBuf>, detail: impl Into<String>) -> Self {
        CaError::BadPem {
            path: path.into(),
            detail: detail.into(),
        }
    }
}

impl From<rcgen::Error> for CaError {
    fn from(err: rcgen::Error) -> Self {
        CaError::Mint(err.to_string())
    }
}
