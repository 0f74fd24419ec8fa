//! Files that may hold secret values: checksums, atomic private writes, locks.

use std::fs::{File, Permissions, TryLockError};
use std::io::Write;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt, PermissionsExt};
use std::path::Path;

use anyhow::{bail, Context, Result};
use sha2::{Digest, Sha256};
use tempfile::NamedTempFile;

pub(crate) fn sha256_hex(bytes: &[u8]) -> String {
    hex(&Sha256::digest(bytes))
}

/// Lowercase hex, by table: `format!("{b:02x}")` costs more than the hash in a dev build.
pub(crate) fn hex(bytes: &[u8]) -> String {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    let mut out = String::with_capacity(bytes.len() * 2);
    for &b in bytes {
        out.push(char::from(DIGITS[usize::from(b >> 4)]));
        out.push(char::from(DIGITS[usize::from(b & 15)]));
    }
    out
}

/// The first 8 hex digits: what humans see instead of a value.
pub(crate) fn short(sha: &str) -> &str {
    &sha[..sha.len().min(8)]
}

pub(crate) fn sha256_file(path: &Path) -> Result<String> {
    let mut file = File::open(path).with_context(|| format!("opening {}", path.display()))?;
    let mut hasher = Sha256::new();
    std::io::copy(&mut file, &mut hasher).with_context(|| format!("reading {}", path.display()))?;
    Ok(hex(&hasher.finalize()))
}

/// Writes `bytes` to `path` atomically with mode 0600, in a private folder; the
/// temp name carries our pid (some callers write without a lock).
pub(crate) fn write_private_atomic(path: &Path, bytes: &[u8]) -> Result<()> {
    let dir = parent_dir(path);
    create_private_dir(dir)?;
    let name = path.file_name().unwrap_or_default().to_string_lossy();
    let tmp = dir.join(format!(".{name}.tmp-{}", std::process::id()));
    write_atomic_via(path, &tmp, bytes, 0o600)
}

/// Writes `bytes` to `path` atomically with `mode`, under the caller's lock.
pub(crate) fn write_atomic(path: &Path, bytes: &[u8], mode: u32) -> Result<()> {
    let mut tmp = path.as_os_str().to_owned();
    tmp.push(".xtask-tmp");
    write_atomic_via(path, Path::new(&tmp), bytes, mode)
}

/// Writes and fsyncs `tmp`, renames it over `path`, fsyncs the folder: a
/// crash leaves the old file or the new one. A failure removes `tmp`.
fn write_atomic_via(path: &Path, tmp: &Path, bytes: &[u8], mode: u32) -> Result<()> {
    let result = (|| -> Result<()> {
        let file = File::options().write(true).create(true).truncate(true).mode(mode).open(tmp);
        let mut file = file.with_context(|| format!("creating {}", tmp.display()))?;
        // Neither an old temp file's mode nor the umask may stand.
        file.set_permissions(Permissions::from_mode(mode))?;
        file.write_all(bytes)?;
        file.sync_all()?;
        std::fs::rename(tmp, path)
            .with_context(|| format!("renaming {} to {}", tmp.display(), path.display()))?;
        let _ = File::open(parent_dir(path)).and_then(|dir| dir.sync_all());
        Ok(())
    })();
    if result.is_err() {
        let _ = std::fs::remove_file(tmp); // never a folder: one in the way stays
    }
    result.with_context(|| format!("writing {}", path.display()))
}

/// The folder a file sits in (`.` for a bare name).
fn parent_dir(path: &Path) -> &Path {
    path.parent().filter(|p| !p.as_os_str().is_empty()).unwrap_or(Path::new("."))
}

/// Creates a folder (and parents) only the owner can enter.
fn create_private_dir(dir: &Path) -> Result<()> {
    if dir.is_dir() {
        return Ok(());
    }
    let created = std::fs::DirBuilder::new().recursive(true).mode(0o700).create(dir);
    created.with_context(|| format!("creating {}", dir.display()))
}

#[cfg(test)]
pub(crate) fn mode(path: &Path) -> Result<u32> {
    Ok(std::fs::metadata(path)?.permissions().mode() & 0o777)
}

/// An exclusive advisory lock on `<path>` until drop; the file names the holder.
pub(crate) struct Lock(File);

impl Lock {
    /// Takes the lock within a second (a quick holder is done by then) or fails, naming the holder.
    pub(crate) fn acquire(path: &Path, what: &str) -> Result<Lock> {
        create_private_dir(parent_dir(path))?;
        let file = File::options().write(true).create(true).truncate(false).mode(0o600).open(path);
        let mut file = file.with_context(|| format!("opening lock {}", path.display()))?;
        let mut holder = "holder unknown".to_string();
        for attempt in 0.. {
            match file.try_lock() {
                Ok(()) => break,
                Err(TryLockError::WouldBlock) if attempt < 20 => {
                    let now = std::fs::read_to_string(path).unwrap_or_default();
                    if !now.trim().is_empty() {
                        holder = now.trim().to_string();
                    }
                    std::thread::sleep(std::time::Duration::from_millis(50));
                }
                Err(TryLockError::WouldBlock) => {
                    let path = path.display();
                    bail!("another {what} is running ({holder}). Wait for it to finish; the lock {path} frees itself when that process exits.")
                }
                Err(TryLockError::Error(e)) => {
                    return Err(e).with_context(|| format!("locking {}", path.display()));
                }
            }
        }
        file.set_len(0)?;
        let args: Vec<String> = std::env::args().skip(1).take(4).collect();
        let (pid, args, since) = (std::process::id(), args.join(" "), now_rfc3339());
        writeln!(file, "pid {pid} `xtask {args}` since {since}")?;
        file.sync_all()?;
        Ok(Lock(file))
    }
}

impl Drop for Lock {
    fn drop(&mut self) {
        let _ = self.0.set_len(0);
        let _ = self.0.unlock();
    }
}

/// A 0600 temp file, deleted on drop: how a value reaches a child without its argv.
pub(crate) struct PrivateTempFile(NamedTempFile);

impl PrivateTempFile {
    pub(crate) fn new(contents: &[u8]) -> Result<PrivateTempFile> {
        let file = tempfile::Builder::new().prefix("xtask-secrets-").tempfile();
        let mut file = file.context("creating a private temp file")?;
        file.write_all(contents)?;
        file.as_file().sync_all()?;
        Ok(PrivateTempFile(file))
    }

    pub(crate) fn path(&self) -> &Path {
        self.0.path()
    }
}

pub(crate) fn now_rfc3339() -> String {
    humantime::format_rfc3339_seconds(std::time::SystemTime::now()).to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn checksums_and_timestamps_have_their_shape() {
        let abc = "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad";
        assert_eq!(sha256_hex(b"abc"), abc);
        assert_eq!(short(abc), "ba7816bf");
        let now = now_rfc3339();
        assert_eq!((now.len(), &now[10..11], &now[19..]), (20, "T", "Z"), "{now}");
    }

    #[test]
    fn atomic_writes_keep_their_mode_and_leave_no_temp_file() {
        let dir = tempfile::tempdir().unwrap();
        let private = dir.path().join("sub/store.json");
        let shared = dir.path().join("sub/values.yaml");
        for (path, mode) in [(&private, 0o600), (&shared, 0o666)] {
            for bytes in [b"one", b"two"] {
                match mode {
                    0o600 => write_private_atomic(path, bytes).unwrap(),
                    _ => write_atomic(path, bytes, mode).unwrap(),
                }
            }
            assert_eq!(std::fs::read(path).unwrap(), b"two");
            assert_eq!(super::mode(path).unwrap(), mode, "not narrowed by the umask");
        }
        // A folder where the file should be: the rename fails.
        let blocked = dir.path().join("sub/blocked.json");
        std::fs::create_dir_all(blocked.join("in-the-way")).unwrap();
        let err = write_private_atomic(&blocked, b"new").unwrap_err();
        assert!(format!("{err:#}").contains("renaming"), "{err:#}");
        write_atomic(&blocked, b"new", 0o644).unwrap_err();
        let names = std::fs::read_dir(dir.path().join("sub")).unwrap().count();
        assert_eq!(names, 3, "no temp file is left behind");
    }

    #[test]
    fn private_temp_file_is_0600_and_removed() {
        let f = PrivateTempFile::new(b"value").unwrap();
        let path = f.path().to_path_buf();
        assert_eq!(mode(&path).unwrap(), 0o600);
        assert_eq!(std::fs::read(&path).unwrap(), b"value");
        drop(f);
        assert!(!path.exists());
    }
}
