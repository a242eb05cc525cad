//! The one error type of the vault.
//!
//! No variant holds key material, so `Display` and `Debug` are always safe to log: they
//! carry paths, names (tenant, provider, key id, version), counts and modes only.

use std::path::PathBuf;

/// Why a master key could not be loaded, or a vault could not be opened, read or saved.
///
/// `Display` prints this layer only. The underlying I/O error, if any, is the `source()`.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum VaultError {
    /// Neither the environment variable nor a key file was given.
    #[error(
        "no vault master key: set PORTCULLIS_MASTER_KEY to 32 bytes of standard base64, or give \
         a key file with --master-key-file (`[vault] master_key_file` in the config); \
         `portcullis vault gen-master-key` makes a new key"
    )]
    NoMasterKey,

    /// The master key text is not standard base64 of exactly 32 bytes.
    #[error(
        "invalid vault master key: {reason}; it must be exactly 32 bytes, standard base64 \
         (44 characters ending in `=`), e.g. from `portcullis vault gen-master-key`"
    )]
    BadMasterKey { reason: String },

    /// The master key file can be read by group or others. `mode` holds the permission bits.
    #[error(
        "master key file {} has mode {mode:04o}, readable by group or others; refusing to load \
         it (run `chmod 600 {}`)",
        path.display(),
        path.display()
    )]
    InsecureKeyFile { path: PathBuf, mode: u32 },

    /// `create` found a vault (or its generation sidecar) in place and left it alone.
    #[error(
        "{} already exists; refusing to overwrite it (open the existing vault, or move it \
         away if you really mean to start over)",
        path.display()
    )]
    AlreadyExists { path: PathBuf },

    /// The master key file does not exist.
    #[error(
        "master key file {} does not exist; check --master-key-file (`[vault] master_key_file`), \
         or set PORTCULLIS_MASTER_KEY instead",
        path.display()
    )]
    NoKeyFile { path: PathBuf },

    /// `open` found no vault file.
    #[error("{} does not exist; create the vault with `portcullis vault init`", path.display())]
    NotFound { path: PathBuf },

    /// Reading or writing a vault file failed.
    #[error("I/O error on {}", path.display())]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },

    /// The file is not a vault file this version understands (bad JSON, bad field, duplicate entry, …).
    #[error("{} is not a valid vault file: {detail}", path.display())]
    Malformed { path: PathBuf, detail: String },

    /// The file declares a format version this build cannot read.
    #[error(
        "{} has vault format version {found}, but this build reads version 1 only; upgrade \
         Portcullis",
        path.display()
    )]
    UnsupportedVersion { path: PathBuf, found: u32 },

    /// The whole-file HMAC did not verify. The file is well formed, so either the master key
    /// is not the one the vault was written with, or the file was edited (an entry changed,
    /// added or deleted).
    #[error(
        "vault {} failed its integrity check: wrong master key or tampered file; check \
         PORTCULLIS_MASTER_KEY / the master key file, or restore the vault from a trusted backup",
        path.display()
    )]
    WrongMasterKey { path: PathBuf },

    /// The generation sidecar does not verify under this master key.
    #[error(
        "generation record {} does not verify under this master key (tampered, or left over \
         from an interrupted `vault rotate-master`); if you have just rotated the master key and \
         trust the vault file, delete this record and open the vault again",
        path.display()
    )]
    SidecarUnverified { path: PathBuf },

    /// The vault is older than one this host has already seen: an earlier copy was restored,
    /// which could re-activate removed keys.
    #[error(
        "vault {} is at generation {found}, but generation {expected_at_least} was already seen \
         here; an older copy of the vault was restored (this could re-activate removed keys). \
         Restore the newest vault file",
        path.display()
    )]
    RolledBack {
        path: PathBuf,
        found: u64,
        expected_at_least: u64,
    },

    /// One entry could not be decoded or decrypted. The vault is not opened (fail closed).
    #[error(
        "vault {} entry {tenant}/{provider}/{key_id}@v{version} cannot be read: {reason}; \
         restore the vault from a trusted backup, or remove and re-add this key",
        path.display()
    )]
    BadEntry {
        path: PathBuf,
        tenant: String,
        provider: String,
        key_id: String,
        version: u32,
        reason: &'static str,
    },

    /// A tenant, provider or key id is not a valid name. The value itself is not echoed,
    /// in case a secret was passed in the wrong argument.
    #[error(
        "invalid {field} ({len} bytes): use 1 to 64 characters from a-z, A-Z, 0-9, `.`, `_`, `-`"
    )]
    InvalidName { field: &'static str, len: usize },

    /// A secret to store is unusable (empty, or too large).
    #[error("invalid secret: {reason}")]
    InvalidSecret { reason: &'static str },

    /// `rm` found no key with this tenant, provider and key id.
    #[error(
        "no key {tenant}/{provider}/{key_id} in the vault; `portcullis vault list` shows the keys"
    )]
    NoSuchKey {
        tenant: String,
        provider: String,
        key_id: String,
    },

    /// A slot has used every version number.
    #[error(
        "slot {tenant}/{provider} has no version numbers left; remove the slot and re-add its key"
    )]
    VersionsExhausted { tenant: String, provider: String },

    /// Encryption itself failed (it cannot, short of a bug in the cipher).
    #[error("encrypting a vault entry failed")]
    Encrypt,
}

impl VaultError {
    pub(crate) fn io(path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        VaultError::Io {
            path: path.into(),
            source,
        }
    }

    pub(crate) fn malformed(path: impl Into<PathBuf>, detail: impl Into<String>) -> Self {
        VaultError::Malformed {
            path: path.into(),
            detail: detail.into(),
        }
    }
}
