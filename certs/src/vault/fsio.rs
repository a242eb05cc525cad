//! File I/O for the vault: bounded reads, mode checks and atomic replacement.

use std::fs::{self, File, OpenOptions};
use std::io::{self, Read, Write};
use std::path::{Path, PathBuf};

use rand::RngCore;
use zeroize::Zeroizing;

use super::VaultError;

/// The mode of every file the vault writes.
pub(crate) const PRIVATE_MODE: u32 = 0o600;

/// Does anything (even a dangling symlink) sit at `path`?
pub(crate) fn exists(path: &Path) -> Result<bool, VaultError> {
    match fs::symlink_metadata(path) {
        Ok(_) => Ok(true),
        Err(err) if err.kind() == io::ErrorKind::NotFound => Ok(false),
        Err(err) => Err(VaultError::io(path, err)),
    }
}

/// Read a whole text file of at most `max` bytes, or `None` if it does not exist.
///
/// With `private`, refuse a file that group or others can access. The mode is checked on
/// the opened handle, so the file cannot be swapped between the check and the read.
pub(crate) fn read_text(
    path: &Path,
    max: u64,
    private: bool,
) -> Result<Option<Zeroizing<String>>, VaultError> {
    let file = match File::open(path) {
        Ok(file) => file,
        Err(err) if err.kind() == io::ErrorKind::NotFound => return Ok(None),
        Err(err) => return Err(VaultError::io(path, err)),
    };
    let meta = file.metadata().map_err(|err| VaultError::io(path, err))?;
    #[cfg(unix)]
    if private {
        use std::os::unix::fs::PermissionsExt;
        let mode = meta.permissions().mode() & 0o7777;
        if mode & 0o077 != 0 {
            return Err(VaultError::InsecureKeyFile {
                path: path.into(),
                mode,
            });
        }
    }
    #[cfg(not(unix))]
    let _ = private;
    // Sized up front so the buffer never reallocates, which would leave an unzeroized copy.
    let capacity = usize::try_from(meta.len().min(max) + 1).unwrap_or(0);
    let mut text = Zeroizing::new(String::with_capacity(capacity));
    let read = file
        .take(max + 1)
        .read_to_string(&mut text)
        .map_err(|err| {
            if err.kind() == io::ErrorKind::InvalidData {
                VaultError::malformed(path, "not UTF-8 text")
            } else {
                VaultError::io(path, err)
            }
        })?;
    if read as u64 > max {
        return Err(VaultError::malformed(
            path,
            format!("larger than {max} bytes"),
        ));
    }
    Ok(Some(text))
}

/// Replace (or create) `path` with `contents`, atomically and durably: write a temporary
/// file in the same directory with mode 0600, fsync it, rename it over `path`, fsync the
/// directory. A reader sees the old file or the new one, never a mix.
pub(crate) fn replace(path: &Path, contents: &[u8]) -> Result<(), VaultError> {
    let tmp = temp_path(path);
    let mut options = OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut options, PRIVATE_MODE);
    let mut file = options
        .open(&tmp)
        .map_err(|err| VaultError::io(&tmp, err))?;
    if let Err(err) = fill(&mut file, contents) {
        drop(file);
        // Best effort: the temporary file is ours (create_new) and incomplete.
        let _ = fs::remove_file(&tmp);
        return Err(VaultError::io(&tmp, err));
    }
    drop(file);
    if let Err(err) = fs::rename(&tmp, path) {
        let _ = fs::remove_file(&tmp);
        return Err(VaultError::io(path, err));
    }
    sync_dir(&parent_dir(path));
    Ok(())
}

fn fill(file: &mut File, contents: &[u8]) -> io::Result<()> {
    // The umask can only narrow 0600, but set it exactly anyway.
    #[cfg(unix)]
    file.set_permissions(std::os::unix::fs::PermissionsExt::from_mode(PRIVATE_MODE))?;
    file.write_all(contents)?;
    file.sync_all()
}

/// `dir/.name.tmp-<random>`: same directory, so the rename cannot cross file systems.
fn temp_path(path: &Path) -> PathBuf {
    let mut suffix = [0u8; 8];
    rand::rng().fill_bytes(&mut suffix);
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    parent_dir(path).join(format!(".{name}.tmp-{}", hex::encode(suffix)))
}

fn parent_dir(path: &Path) -> PathBuf {
    match path.parent() {
        Some(dir) if !dir.as_os_str().is_empty() => dir.to_path_buf(),
        _ => PathBuf::from("."),
    }
}

/// Flush the directory entry after a rename. Best effort: the file itself is already synced,
/// and by now the rename has happened, so failing the save would misreport what is on disk.
fn sync_dir(dir: &Path) {
    if let Err(err) = File::open(dir).and_then(|d| d.sync_all()) {
        tracing::warn!(dir = %dir.display(), error = %err, "could not fsync vault directory");
    }
}
