//! The checkpoint signing key and the public key file beside the log.
//!
//! The signing key file holds the 32-byte Ed25519 seed as 64 hex digits and a newline. It is
//! created with mode 0600 (never wider, not even briefly) on first open and refused later if
//! group or others can read it, like the CA key beside it.
//! Public keys are 64 hex digits, one per line; `#` starts a comment.

use std::fs::{self, File, OpenOptions};
use std::io::{self, Read, Write};
use std::path::Path;

use ed25519_dalek::{SigningKey, VerifyingKey};
use zeroize::Zeroizing;

use crate::error::LedgerError;

/// A key file larger than this is not a key file.
const MAX_KEY_FILE_BYTES: u64 = 64 * 1024;

/// Load the signing key at `path`, or create it (0600, parent dir 0700) if nothing is there.
pub(crate) fn load_or_create_signing_key(path: &Path) -> Result<SigningKey, LedgerError> {
    match load_signing_key(path) {
        Err(LedgerError::Io { source, .. }) if source.kind() == io::ErrorKind::NotFound => {}
        other => return other,
    }
    if let Some(parent) = path.parent().filter(|p| !p.as_os_str().is_empty()) {
        let mut builder = fs::DirBuilder::new();
        builder.recursive(true);
        std::os::unix::fs::DirBuilderExt::mode(&mut builder, 0o700);
        builder
            .create(parent)
            .map_err(|e| LedgerError::io("creating key directory", parent, e))?;
    }
    let key = SigningKey::generate(&mut rand_core06::OsRng);
    let text = Zeroizing::new(format!("{}\n", hex::encode(key.to_bytes())));
    // Write a temp file then rename, so a crash never leaves a half-written key behind.
    let tmp = path.with_extension("key.tmp");
    let _ = fs::remove_file(&tmp);
    let mut options = OpenOptions::new();
    options.write(true).create_new(true);
    std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
    let written = options.open(&tmp).and_then(|mut f| {
        f.write_all(text.as_bytes())?;
        f.sync_all()
    });
    if let Err(e) = written {
        let _ = fs::remove_file(&tmp);
        return Err(LedgerError::io("writing signing key", &tmp, e));
    }
    // hard_link fails if another process created the key meanwhile; then use theirs.
    match fs::hard_link(&tmp, path) {
        Ok(()) => {}
        Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {
            let _ = fs::remove_file(&tmp);
            return load_signing_key(path);
        }
        Err(e) => {
            let _ = fs::remove_file(&tmp);
            return Err(LedgerError::io("installing signing key", path, e));
        }
    }
    let _ = fs::remove_file(&tmp);
    if let Some(parent) = path.parent().filter(|p| !p.as_os_str().is_empty()) {
        sync_dir(parent);
    }
    tracing::info!(path = %path.display(), "created ledger checkpoint signing key");
    Ok(key)
}

/// Read an existing signing key, refusing one that group or others can read.
pub(crate) fn load_signing_key(path: &Path) -> Result<SigningKey, LedgerError> {
    let file = File::open(path).map_err(|e| LedgerError::io("opening signing key", path, e))?;
    let meta = file
        .metadata()
        .map_err(|e| LedgerError::io("reading signing key", path, e))?;
    let mode = std::os::unix::fs::PermissionsExt::mode(&meta.permissions()) & 0o7777;
    if mode & 0o077 != 0 {
        return Err(LedgerError::key(
            path,
            format!(
                "mode {mode:04o} lets group or others read it; run `chmod 600 {}`",
                path.display()
            ),
        ));
    }
    let mut text = Zeroizing::new(String::with_capacity(130));
    file.take(MAX_KEY_FILE_BYTES)
        .read_to_string(&mut text)
        .map_err(|e| LedgerError::io("reading signing key", path, e))?;
    let mut seed = Zeroizing::new([0u8; 32]);
    let digits = text.trim();
    if digits.len() != 64 || hex::decode_to_slice(digits, seed.as_mut()).is_err() {
        return Err(LedgerError::key(
            path,
            "expected 64 hex digits (an Ed25519 seed)",
        ));
    }
    Ok(SigningKey::from_bytes(&seed))
}

/// Read public keys: 64 hex digits per line, blank lines and `#` comments ignored.
pub(crate) fn read_public_keys(path: &Path) -> Result<Vec<VerifyingKey>, LedgerError> {
    let file = File::open(path).map_err(|e| LedgerError::io("opening public key file", path, e))?;
    let mut text = String::new();
    file.take(MAX_KEY_FILE_BYTES)
        .read_to_string(&mut text)
        .map_err(|e| LedgerError::io("reading public key file", path, e))?;
    let mut keys = Vec::new();
    for (n, line) in text.lines().enumerate() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        keys.push(parse_public_key(line).ok_or_else(|| {
            LedgerError::key(
                path,
                format!(
                    "line {}: expected an Ed25519 public key as 64 hex digits",
                    n + 1
                ),
            )
        })?);
    }
    if keys.is_empty() {
        return Err(LedgerError::key(path, "no public key in file"));
    }
    Ok(keys)
}

pub(crate) fn parse_public_key(hex_digits: &str) -> Option<VerifyingKey> {
    let mut bytes = [0u8; 32];
    if hex_digits.len() != 64 {
        return None;
    }
    hex::decode_to_slice(hex_digits, &mut bytes).ok()?;
    VerifyingKey::from_bytes(&bytes).ok()
}

/// Make sure `dir/pubkey` lists `key`, appending it if the key is new (a rotated key keeps the
/// old ones listed, so older checkpoints still verify).
pub(crate) fn ensure_public_key_listed(path: &Path, key: &VerifyingKey) -> Result<(), LedgerError> {
    let ours = hex::encode(key.as_bytes());
    match fs::read_to_string(path) {
        Ok(text) if text.lines().any(|l| l.trim() == ours) => return Ok(()),
        Ok(_) => {}
        Err(e) if e.kind() == io::ErrorKind::NotFound => {}
        Err(e) => return Err(LedgerError::io("reading", path, e)),
    }
    let mut options = OpenOptions::new();
    options.append(true).create(true);
    std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o644);
    options
        .open(path)
        .and_then(|mut f| {
            f.write_all(format!("{ours}\n").as_bytes())?;
            f.sync_data()
        })
        .map_err(|e| LedgerError::io("writing", path, e))
}

/// Flush a directory entry (new or renamed files). Best effort: the files themselves are synced.
pub(crate) fn sync_dir(dir: &Path) {
    if let Err(err) = File::open(dir).and_then(|d| d.sync_all()) {
        tracing::warn!(dir = %dir.display(), error = %err, "could not fsync ledger directory");
    }
}
