//! Careful file I/O for the CA directory: exclusive creation with the final mode,
//! permission checks before reading a key, and bounded reads.

use std::fs::{self, File, OpenOptions};
use std::io::{self, Read, Write};
use std::path::Path;

use zeroize::Zeroizing;

use crate::CaError;

/// A CA file larger than this is not a CA file. Refuse it instead of reading it all.
const MAX_CA_FILE_BYTES: u64 = 1 << 20;

/// Does anything (even a dangling symlink) sit at `path`?
pub(crate) fn exists(path: &Path) -> Result<bool, CaError> {
    match fs::symlink_metadata(path) {
        Ok(_) => Ok(true),
        Err(err) if err.kind() == io::ErrorKind::NotFound => Ok(false),
        Err(err) => Err(CaError::io(path, err)),
    }
}

/// Create `dir` and any missing parents with mode 0700. An existing directory is left as it is.
pub(crate) fn create_private_dir(dir: &Path) -> Result<(), CaError> {
    let mut builder = fs::DirBuilder::new();
    builder.recursive(true);
    #[cfg(unix)]
    std::os::unix::fs::DirBuilderExt::mode(&mut builder, 0o700);
    builder.create(dir).map_err(|err| CaError::io(dir, err))
}

/// Write a file that must not exist yet. It is created with `mode` (`O_CREAT|O_EXCL`), so it
/// never exists with wider permissions, not even briefly. On failure the partial file is removed.
pub(crate) fn write_new(path: &Path, contents: &[u8], mode: u32) -> Result<(), CaError> {
    let mut options = OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut options, mode);
    #[cfg(not(unix))]
    let _ = mode;

    let mut file = options.open(path).map_err(|err| {
        if err.kind() == io::ErrorKind::AlreadyExists {
            CaError::AlreadyExists { path: path.into() }
        } else {
            CaError::io(path, err)
        }
    })?;
    let written = fill(&mut file, contents, mode);
    if let Err(err) = written {
        drop(file);
        // Best effort: the file is ours (create_new) and incomplete, so don't leave it behind.
        let _ = fs::remove_file(path);
        return Err(CaError::io(path, err));
    }
    Ok(())
}

fn fill(file: &mut File, contents: &[u8], mode: u32) -> io::Result<()> {
    // The umask may have narrowed the mode; set exactly what was asked (e.g. 0644 for ca.pem).
    #[cfg(unix)]
    file.set_permissions(std::os::unix::fs::PermissionsExt::from_mode(mode))?;
    #[cfg(not(unix))]
    let _ = mode;
    file.write_all(contents)?;
    file.sync_all()
}

/// Flush the directory entry of newly created files. Best effort: the files are already synced.
pub(crate) fn sync_dir(dir: &Path) {
    if let Err(err) = File::open(dir).and_then(|d| d.sync_all()) {
        tracing::warn!(dir = %dir.display(), error = %err, "could not fsync CA directory");
    }
}

/// Read a public file (the CA certificate).
pub(crate) fn read_public(path: &Path) -> Result<String, CaError> {
    let file = open_existing(path)?;
    let mut text = String::new();
    read_bounded(file, path, &mut text)?;
    Ok(text)
}

/// Read the CA key, but only if group and others have no access to it. The mode is checked
/// on the opened handle, so the file cannot be swapped between the check and the read.
pub(crate) fn read_private(path: &Path) -> Result<Zeroizing<String>, CaError> {
    let file = open_existing(path)?;
    let meta = file.metadata().map_err(|err| CaError::io(path, err))?;
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = meta.permissions().mode() & 0o7777;
        if mode & 0o077 != 0 {
            return Err(CaError::InsecureKeyPermissions {
                path: path.into(),
                mode,
            });
        }
    }
    // Sized up front so the buffer never reallocates, which would leave an unzeroized copy.
    let capacity = usize::try_from(meta.len().min(MAX_CA_FILE_BYTES) + 1).unwrap_or(0);
    let mut text = Zeroizing::new(String::with_capacity(capacity));
    read_bounded(file, path, &mut text)?;
    Ok(text)
}

fn open_existing(path: &Path) -> Result<File, CaError> {
    File::open(path).map_err(|err| {
        if err.kind() == io::ErrorKind::NotFound {
            CaError::NotFound { path: path.into() }
        } else {
            CaError::io(path, err)
        }
    })
}

fn read_bounded(file: File, path: &Path, out: &mut String) -> Result<(), CaError> {
    let read = file
        .take(MAX_CA_FILE_BYTES + 1)
        .read_to_string(out)
        .map_err(|err| {
            if err.kind() == io::ErrorKind::InvalidData {
                CaError::bad_pem(path, "not UTF-8 text")
            } else {
                CaError::io(path, err)
            }
        })?;
    if read as u64 > MAX_CA_FILE_BYTES {
        return Err(CaError::bad_pem(
            path,
            format!("larger than {MAX_CA_FILE_BYTES} bytes"),
        ));
    }
    Ok(())
}
