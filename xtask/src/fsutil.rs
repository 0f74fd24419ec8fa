//! Files that may hold secret values: checksums, atomic private writes, locks.

use std::fs::{File, OpenOptions};
use std::io::{Read, Write};
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use sha2::{Digest, Sha256};

/// Hex sha256 of some bytes.
pub fn sha256_hex(bytes: &[u8]) -> String {
    hex(&Sha256::digest(bytes))
}

/// Lowercase hex, by table: this runs for every secret of a seed, and
/// `write!("{b:02x}")` per byte costs more than the hash in our
/// unoptimised dev build.
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
pub fn short(sha: &str) -> &str {
    &sha[..sha.len().min(8)]
}

/// Hex sha256 of a file, streamed.
pub fn sha256_file(path: &Path) -> Result<String> {
    let mut file = File::open(path).with_context(|| format!("opening {}", path.display()))?;
    let mut hasher = Sha256::new();
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let n = file.read(&mut buf)?;
        if n == 0 {
            break;
        }
        hasher.update(&buf[..n]);
    }
    Ok(sha256_hex_of(hasher))
}

fn sha256_hex_of(hasher: Sha256) -> String {
    hex(&hasher.finalize())
}

/// Writes `bytes` to `path` atomically with mode 0600, in a folder only the
/// owner can enter (created if missing). The temp file's name carries our
/// pid: some callers (a manifest) write without a lock.
pub fn write_private_atomic(path: &Path, bytes: &[u8]) -> Result<()> {
    let dir = parent_dir(path);
    create_private_dir(dir)?;
    let tmp = dir.join(format!(
        ".{}.tmp-{}",
        path.file_name()
            .map(|n| n.to_string_lossy())
            .unwrap_or_default(),
        std::process::id()
    ));
    write_atomic_via(path, &tmp, bytes, 0o600)
}

/// Writes `bytes` to `path` atomically with `mode` (a repository file the
/// caller changes under its command's lock): through `<path>.xtask-tmp`,
/// see [`write_atomic_via`]. The folder must exist.
pub fn write_atomic(path: &Path, bytes: &[u8], mode: u32) -> Result<()> {
    let mut tmp = path.as_os_str().to_owned();
    tmp.push(".xtask-tmp");
    write_atomic_via(path, Path::new(&tmp), bytes, mode)
}

/// Writes `bytes` to the temp file `tmp` (in `path`'s folder) with `mode`,
/// fsyncs it, renames it over `path` and fsyncs the folder. A crash leaves
/// either the old file or the new one, never half of either; a failure
/// removes the temp file.
fn write_atomic_via(path: &Path, tmp: &Path, bytes: &[u8], mode: u32) -> Result<()> {
    let result = (|| -> Result<()> {
        let mut file = OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(mode)
            .open(tmp)
            .with_context(|| format!("creating {}", tmp.display()))?;
        // An existing temp file keeps its old mode, and the umask narrows a
        // new one's: set it explicitly.
        file.set_permissions(std::fs::Permissions::from_mode(mode))
            .with_context(|| format!("setting the mode of {}", tmp.display()))?;
        file.write_all(bytes)
            .with_context(|| format!("writing {}", tmp.display()))?;
        file.sync_all()
            .with_context(|| format!("syncing {}", tmp.display()))?;
        std::fs::rename(tmp, path)
            .with_context(|| format!("renaming {} to {}", tmp.display(), path.display()))?;
        if let Ok(d) = File::open(parent_dir(path)) {
            let _ = d.sync_all();
        }
        Ok(())
    })();
    if result.is_err() {
        // Never a folder: remove_file leaves one in place.
        let _ = std::fs::remove_file(tmp);
    }
    result.with_context(|| format!("writing {}", path.display()))
}

/// The folder a file sits in (`.` for a bare name).
fn parent_dir(path: &Path) -> &Path {
    path.parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."))
}

/// Creates a folder (and parents) that only the owner can enter.
pub fn create_private_dir(dir: &Path) -> Result<()> {
    if dir.is_dir() {
        return Ok(());
    }
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
        .with_context(|| format!("creating {}", dir.display()))
}

/// The mode bits of a file.
#[cfg(test)]
pub fn mode(path: &Path) -> Result<u32> {
    Ok(std::fs::metadata(path)?.permissions().mode() & 0o777)
}

/// An exclusive advisory lock on `<path>`, held until drop. The lock file
/// records who holds it, so a refused contender can name the holder. The
/// kernel releases the lock when the holder exits, however it exits.
pub struct Lock {
    file: File,
}

impl Lock {
    /// Takes the lock or fails at once, naming the holder.
    pub fn acquire(path: &Path, what: &str) -> Result<Lock> {
        create_private_dir(path.parent().unwrap_or(Path::new(".")))?;
        let mut file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .mode(0o600)
            .open(path)
            .with_context(|| format!("opening lock {}", path.display()))?;
        // Wait up to a second: a quick holder (a no-op seed) is done by then.
        let mut holder = String::new();
        let mut attempts = 0;
        loop {
            match file.try_lock() {
                Ok(()) => break,
                Err(std::fs::TryLockError::WouldBlock) if attempts < 20 => {
                    let now = std::fs::read_to_string(path).unwrap_or_default().trim().to_string();
                    if !now.is_empty() {
                        holder = now;
                    }
                    attempts += 1;
                    std::thread::sleep(std::time::Duration::from_millis(50));
                }
                Err(std::fs::TryLockError::WouldBlock) => bail!(
                    "another {what} is running ({}). Wait for it to finish; the lock {} frees itself when that process exits.",
                    if holder.is_empty() { "holder unknown" } else { holder.as_str() },
                    path.display()
                ),
                Err(std::fs::TryLockError::Error(e)) => {
                    return Err(e).with_context(|| format!("locking {}", path.display()));
                }
            }
        }
        file.set_len(0)?;
        let args: Vec<String> = std::env::args().skip(1).take(4).collect();
        writeln!(
            file,
            "pid {} `xtask {}` since {}",
            std::process::id(),
            args.join(" "),
            now_rfc3339()
        )?;
        file.sync_all()?;
        Ok(Lock { file })
    }
}

impl Drop for Lock {
    fn drop(&mut self) {
        let _ = self.file.set_len(0);
        let _ = self.file.unlock();
    }
}

/// A file only the owner can read, in a private temp folder, deleted on
/// drop: how a value reaches a child process without touching its argv.
pub struct PrivateTempFile {
    path: PathBuf,
}

impl PrivateTempFile {
    pub fn new(contents: &[u8]) -> Result<PrivateTempFile> {
        use std::sync::atomic::{AtomicU64, Ordering};
        static COUNTER: AtomicU64 = AtomicU64::new(0);
        let dir = std::env::temp_dir().join(format!("xtask-secrets-{}", std::process::id()));
        create_private_dir(&dir)?;
        let path = dir.join(format!("value-{}", COUNTER.fetch_add(1, Ordering::Relaxed)));
        let mut file = OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&path)
            .with_context(|| format!("creating {}", path.display()))?;
        file.write_all(contents)?;
        file.sync_all()?;
        Ok(PrivateTempFile { path })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }
}

impl Drop for PrivateTempFile {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.path);
        if let Some(dir) = self.path.parent() {
            let _ = std::fs::remove_dir(dir);
        }
    }
}

/// The current UTC time as RFC 3339, to the second.
pub fn now_rfc3339() -> String {
    let secs = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    rfc3339(secs)
}

/// Seconds since the epoch as RFC 3339 UTC (civil-from-days, no time crate).
pub fn rfc3339(secs: u64) -> String {
    let days = (secs / 86_400) as i64;
    let rem = secs % 86_400;
    let (h, m, s) = (rem / 3600, (rem % 3600) / 60, rem % 60);
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let mo = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(mo <= 2);
    format!("{y:04}-{mo:02}-{d:02}T{h:02}:{m:02}:{s:02}Z")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sha256_matches_known_vector() {
        assert_eq!(
            sha256_hex(b"abc"),
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
        assert_eq!(short("ba7816bf8f01"), "ba7816bf");
    }

    #[test]
    fn rfc3339_formats_known_instants() {
        assert_eq!(rfc3339(0), "1970-01-01T00:00:00Z");
        assert_eq!(rfc3339(951_782_400), "2000-02-29T00:00:00Z");
        assert_eq!(rfc3339(1_795_833_296), "2026-11-28T02:34:56Z");
    }

    #[test]
    fn atomic_write_is_private_and_replaces() {
        let dir = std::env::temp_dir().join(format!("xtask-fsutil-{}", std::process::id()));
        let path = dir.join("sub/store.json");
        write_private_atomic(&path, b"one").unwrap();
        write_private_atomic(&path, b"two").unwrap();
        assert_eq!(std::fs::read(&path).unwrap(), b"two");
        assert_eq!(mode(&path).unwrap(), 0o600);
        let leftovers: Vec<_> = std::fs::read_dir(path.parent().unwrap()).unwrap().collect();
        assert_eq!(leftovers.len(), 1, "no temp file is left behind");
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn failed_atomic_write_leaves_no_temp_file() {
        let dir = std::env::temp_dir().join(format!("xtask-fsutil-fail-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        // A folder where the file should be: the rename fails.
        let path = dir.join("values.yaml");
        std::fs::create_dir_all(path.join("in-the-way")).unwrap();
        let err = write_atomic(&path, b"new", 0o644).unwrap_err();
        assert!(format!("{err:#}").contains("renaming"), "{err:#}");
        let private = dir.join("store.json");
        std::fs::create_dir_all(private.join("in-the-way")).unwrap();
        write_private_atomic(&private, b"new").unwrap_err();
        let mut names: Vec<String> = std::fs::read_dir(&dir)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        names.sort();
        assert_eq!(
            names,
            ["store.json", "values.yaml"],
            "no temp file is left behind"
        );
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn atomic_write_keeps_the_mode_it_is_given() {
        let dir = std::env::temp_dir().join(format!("xtask-fsutil-mode-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("values.yaml");
        write_atomic(&path, b"one", 0o640).unwrap();
        write_atomic(&path, b"two", 0o666).unwrap();
        assert_eq!(std::fs::read(&path).unwrap(), b"two");
        assert_eq!(mode(&path).unwrap(), 0o666, "not narrowed by the umask");
        assert_eq!(
            std::fs::read_dir(&dir).unwrap().count(),
            1,
            "no temp file is left behind"
        );
        std::fs::remove_dir_all(&dir).unwrap();
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

    #[test]
    fn second_lock_is_refused_and_names_the_holder() {
        let dir = std::env::temp_dir().join(format!("xtask-lock-{}", std::process::id()));
        let path = dir.join("store.lock");
        let first = Lock::acquire(&path, "seed").unwrap();
        let err = Lock::acquire(&path, "seed")
            .err()
            .expect("second lock must fail");
        let msg = format!("{err:#}");
        assert!(
            msg.contains(&format!("pid {}", std::process::id())),
            "{msg}"
        );
        drop(first);
        Lock::acquire(&path, "seed").expect("lock is free again after drop");
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
