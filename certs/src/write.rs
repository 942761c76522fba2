//! Crash-safe, permission-safe file writes. A reader (a node starting up, the client loading
//! its profile) sees either the old file or the new one, never half of one, and a private key
//! is never readable by others, not even for the instant between create and chmod.

use std::fs::{self, File, OpenOptions};
use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

use crate::CertsError;

/// Mode of private keys: owner read/write only.
pub(crate) const SECRET_MODE: u32 = 0o600;
/// Mode of certificates and profiles: public material.
pub(crate) const PUBLIC_MODE: u32 = 0o644;

/// Writes `contents` to `path` atomically with exactly `mode` (on Unix): a temporary file in
/// the same directory (so the rename cannot cross file systems), fsynced, then renamed over
/// `path`, then the directory fsynced so the rename itself survives a crash.
pub(crate) fn write_atomic(path: &Path, contents: &[u8], mode: u32) -> Result<(), CertsError> {
    let dir = match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d,
        _ => Path::new("."),
    };
    let (tmp, mut file) = create_temp(dir, path, mode)?;
    let result = (|| {
        file.write_all(contents)?;
        // The creation mode is filtered by the umask; set it explicitly so a certificate is
        // 0644 even under umask 077 (and a key stays 0600 whatever the umask).
        set_mode(&file, mode)?;
        file.sync_all()?;
        drop(file);
        fs::rename(&tmp, path)
    })();
    if let Err(e) = result {
        let _ = fs::remove_file(&tmp);
        return Err(CertsError::io(path, e));
    }
    sync_dir(dir).map_err(|e| CertsError::io(dir, e))
}

/// Creates a fresh temporary file next to `target`. `create_new` refuses to follow a symlink
/// or reuse a file someone planted at the temporary name.
fn create_temp(dir: &Path, target: &Path, mode: u32) -> Result<(PathBuf, File), CertsError> {
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let base = target
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let mut last_err = None;
    for _ in 0..16 {
        let n = COUNTER.fetch_add(1, Ordering::Relaxed);
        let tmp = dir.join(format!(".{base}.tmp.{}.{n}", std::process::id()));
        let mut opts = OpenOptions::new();
        opts.write(true).create_new(true);
        #[cfg(unix)]
        {
            use std::os::unix::fs::OpenOptionsExt;
            // Applied at open(2), so there is no moment where a key file is world-readable.
            opts.mode(mode);
        }
        #[cfg(not(unix))]
        let _ = mode;
        match opts.open(&tmp) {
            Ok(file) => return Ok((tmp, file)),
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => last_err = Some(e),
            Err(e) => return Err(CertsError::io(tmp, e)),
        }
    }
    Err(CertsError::io(
        target,
        last_err.unwrap_or_else(|| io::Error::other("could not create a temporary file")),
    ))
}

#[cfg(unix)]
fn set_mode(file: &File, mode: u32) -> io::Result<()> {
    use std::os::unix::fs::PermissionsExt;
    file.set_permissions(fs::Permissions::from_mode(mode))
}

#[cfg(not(unix))]
fn set_mode(_file: &File, _mode: u32) -> io::Result<()> {
    Ok(())
}

#[cfg(unix)]
fn sync_dir(dir: &Path) -> io::Result<()> {
    File::open(dir)?.sync_all()
}

#[cfg(not(unix))]
fn sync_dir(_dir: &Path) -> io::Result<()> {
    Ok(())
}

/// Whether something (a file, a directory, even a dangling symlink) occupies `path`.
pub(crate) fn occupied(path: &Path) -> Result<bool, CertsError> {
    match fs::symlink_metadata(path) {
        Ok(_) => Ok(true),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(false),
        Err(e) => Err(CertsError::io(path, e)),
    }
}
