//! A file-backed store under `.local/`: JSON, mode 0600, written atomically
//! under a lock, refused unless git ignores it. For machines with no Vault
//! and no cluster; `--render` turns it into manifests for a cluster.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use serde::{Deserialize, Serialize};

use super::{Current, Outcome, SecretProvider, Write};
use crate::fsutil::{self, sha256_hex, Lock};
use crate::secrets::guard;

pub const FORMAT: &str = "ameide-local-secrets/v1";

#[derive(Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StoreFile {
    pub format: String,
    pub secrets: BTreeMap<String, StoredEntry>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StoredEntry {
    pub value: String,
    pub version: u64,
    #[serde(rename = "fixture-sha256")]
    pub fixture_sha256: String,
    pub updated: String,
}

pub struct FileProvider {
    path: PathBuf,
    _lock: Lock,
}

impl FileProvider {
    /// Opens the store at `path` and holds its lock until drop.
    pub fn open(root: &Path, path: &Path) -> Result<FileProvider> {
        guard::require_git_ignored(root, path, "the file store")?;
        let lock = Lock::acquire(&lock_path(path), "seed of the file store")?;
        Ok(FileProvider {
            path: path.to_path_buf(),
            _lock: lock,
        })
    }

    /// The whole store (empty if it does not exist yet).
    pub fn load(&self) -> Result<StoreFile> {
        load(&self.path)
    }
}

fn lock_path(path: &Path) -> PathBuf {
    let mut name = path.file_name().unwrap_or_default().to_os_string();
    name.push(".lock");
    path.with_file_name(name)
}

/// Reads a store file; a missing file is an empty store, a corrupt one an
/// error (never silently replaced: it may hold a developer's values).
pub fn load(path: &Path) -> Result<StoreFile> {
    let text = match std::fs::read_to_string(path) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            return Ok(StoreFile {
                format: FORMAT.into(),
                secrets: BTreeMap::new(),
            })
        }
        Err(e) => {
            return Err(e).with_context(|| format!("reading the file store {}", path.display()))
        }
    };
    let store: StoreFile = serde_json::from_str(&text).map_err(|e| {
        anyhow::anyhow!(
            "{}:{}:{}: the file store is corrupt ({}). Nothing was changed. Move it aside and seed again to \
             recreate it; copy any values you need into .local/secrets/overrides.json first.",
            path.display(),
            e.line(),
            e.column(),
            e.to_string().rsplit_once(" at line ").map(|(m, _)| m.to_string()).unwrap_or_default()
        )
    })?;
    if store.format != FORMAT {
        bail!(
            "{}: unknown store format {:?}, expected {FORMAT:?}",
            path.display(),
            store.format
        );
    }
    Ok(store)
}

impl SecretProvider for FileProvider {
    fn target(&self) -> String {
        format!("file {}", crate::project::shown(&self.path))
    }

    fn read(&mut self, names: &[String]) -> Result<BTreeMap<String, Option<Current>>> {
        let store = self.load()?;
        Ok(names
            .iter()
            .map(|n| {
                let cur = store.secrets.get(n).map(|e| Current {
                    sha256: Some(sha256_hex(e.value.as_bytes())),
                    properties: vec!["value".into()],
                    version: Some(e.version),
                    seeded_sha256: Some(e.fixture_sha256.clone()),
                    stamp_stale: false,
                    raw_sha256: None,
                });
                (n.clone(), cur)
            })
            .collect())
    }

    fn write(&mut self, writes: &[Write<'_>]) -> Result<Vec<(String, Outcome)>> {
        // Re-read under the lock: a hand edit since `read` is a conflict.
        let mut store = self.load()?;
        let now = fsutil::now_rfc3339();
        let mut outcomes = Vec::with_capacity(writes.len());
        for w in writes {
            let existing = store.secrets.get(w.name);
            let version = existing.map(|e| e.version).unwrap_or(0);
            if w.cas.is_some_and(|cas| cas != version) {
                outcomes.push((
                    w.name.to_string(),
                    Outcome::Conflict("the store changed since it was read".into()),
                ));
                continue;
            }
            let entry = StoredEntry {
                value: w.value.to_string(),
                version: if w.metadata_only {
                    version
                } else {
                    version + 1
                },
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
                let msg = format!("{e:#}");
                return Ok(outcomes
                    .into_iter()
                    .map(|(n, o)| {
                        (
                            n,
                            if o == Outcome::Written {
                                Outcome::Failed(msg.clone())
                            } else {
                                o
                            },
                        )
                    })
                    .collect());
            }
        }
        Ok(outcomes)
    }

    fn list(&mut self) -> Result<Vec<String>> {
        Ok(self.load()?.secrets.into_keys().collect())
    }
}
