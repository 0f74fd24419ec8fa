//! A file-backed store under `.local/`: JSON, mode 0600, written atomically
//! under a lock, refused unless git ignores it. For machines with no Vault
//! and no cluster; `--render` turns it into manifests for a cluster.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use anyhow::{ensure, Context, Result};
use serde::{Deserialize, Serialize};

use super::{Current, Currents, Outcome, SecretProvider, SecretSet, Write};
use crate::fsutil::{self, sha256_hex, Lock};
use crate::secrets::guard;

pub(crate) const FORMAT: &str = "ameide-local-secrets/v1";

#[derive(Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct StoreFile {
    pub format: String,
    pub secrets: BTreeMap<String, StoredEntry>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct StoredEntry {
    pub value: String,
    pub version: u64,
    #[serde(rename = "fixture-sha256")]
    pub fixture_sha256: String,
    pub updated: String,
}

pub(crate) struct FileProvider {
    path: PathBuf,
    /// The path as output shows it (from the repository root).
    shown: String,
    _lock: Lock,
}

impl FileProvider {
    /// Opens the store at `path` and holds its lock (`<path>.lock`) until drop.
    pub(crate) fn open(root: &Path, path: &Path) -> Result<FileProvider> {
        guard::require_git_ignored(root, path, "the file store")?;
        let mut lock = path.as_os_str().to_owned();
        lock.push(".lock");
        Ok(FileProvider {
            _lock: Lock::acquire(Path::new(&lock), "seed of the file store")?,
            path: path.to_path_buf(),
            shown: crate::project::shown_from(root, path),
        })
    }
}

/// Reads a store file; a missing file is an empty store, a corrupt one an
/// error (never silently replaced: it may hold a developer's values).
pub(crate) fn load(path: &Path) -> Result<StoreFile> {
    let shown = path.display();
    let text = match std::fs::read_to_string(path) {
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            return Ok(StoreFile { format: FORMAT.into(), secrets: BTreeMap::new() });
        }
        read => read.with_context(|| format!("reading the file store {shown}"))?,
    };
    let store: StoreFile = serde_json::from_str(&text).map_err(|e| {
        let (line, column, what) = (e.line(), e.column(), e.to_string());
        let what = what.rsplit_once(" at line ").map_or("", |(m, _)| m);
        anyhow::anyhow!(
            "{shown}:{line}:{column}: the file store is corrupt ({what}). Nothing was changed. Move it aside and \
             seed again to recreate it; copy any values you need into .local/secrets/overrides.json first."
        )
    })?;
    let format = &store.format;
    ensure!(format == FORMAT, "{shown}: unknown store format {format:?}, expected {FORMAT:?}");
    Ok(store)
}

impl SecretProvider for FileProvider {
    fn target(&self) -> String {
        format!("file {}", self.shown)
    }

    fn read(&mut self, names: &[String], _expected: &SecretSet) -> Result<Currents> {
        let store = load(&self.path)?;
        let current = |e: &StoredEntry| Current {
            sha256: Some(sha256_hex(e.value.as_bytes())),
            properties: vec!["value".into()],
            version: Some(e.version),
            seeded_sha256: Some(e.fixture_sha256.clone()),
            ..Current::default()
        };
        let read = names.iter().map(|n| (n.clone(), store.secrets.get(n).map(current)));
        Ok(read.collect())
    }

    fn write(&mut self, writes: &[Write<'_>]) -> Result<Vec<(String, Outcome)>> {
        // Re-read under the lock: a hand edit since `read` is a conflict.
        let mut store = load(&self.path)?;
        let now = fsutil::now_rfc3339();
        let mut outcomes = Vec::with_capacity(writes.len());
        for w in writes {
            let version = store.secrets.get(w.name).map_or(0, |e| e.version);
            if w.cas.is_some_and(|cas| cas != version) {
                let why = "the store changed since it was read".to_string();
                outcomes.push((w.name.to_string(), Outcome::Conflict(why)));
                continue;
            }
            let entry = StoredEntry {
                value: w.value.to_string(),
                version: version + u64::from(!w.metadata_only),
                fixture_sha256: w.sha256.to_string(),
                updated: now.clone(),
            };
            store.secrets.insert(w.name.to_string(), entry);
            outcomes.push((w.name.to_string(), Outcome::Written));
        }
        if outcomes.iter().any(|(_, o)| *o == Outcome::Written) {
            let mut json = serde_json::to_vec_pretty(&store)?;
            json.push(b'\n');
            if let Err(e) = fsutil::write_private_atomic(&self.path, &json) {
                let failed = Outcome::Failed(format!("{e:#}"));
                for (_, o) in outcomes.iter_mut().filter(|(_, o)| *o == Outcome::Written) {
                    *o = failed.clone();
                }
            }
        }
        Ok(outcomes)
    }

    fn list(&mut self) -> Result<Vec<String>> {
        Ok(load(&self.path)?.secrets.into_keys().collect())
    }
}
