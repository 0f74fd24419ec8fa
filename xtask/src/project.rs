//! Where things live in the repository.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

/// What a run reads from its process, once, at its start.
#[derive(Clone)]
pub(crate) struct Process {
    pub root: PathBuf,
    pub cwd: PathBuf,
    vars: BTreeMap<String, String>,
}

impl std::fmt::Debug for Process {
    /// The root and working directory only: the environment holds tokens.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Process")
            .field("root", &self.root)
            .field("cwd", &self.cwd)
            .finish_non_exhaustive()
    }
}

impl Process {
    /// Reads this process. The root is the checkout this xtask was built in,
    /// unless `XTASK_PROJECT_ROOT` says otherwise (tests run against copies).
    pub(crate) fn read() -> Process {
        let vars: BTreeMap<String, String> = std::env::vars_os()
            .filter_map(|(k, v)| Some((k.into_string().ok()?, v.into_string().ok()?)))
            .collect();
        let root = match vars.get("XTASK_PROJECT_ROOT").filter(|r| !r.is_empty()) {
            Some(root) => PathBuf::from(root),
            None => normalize(&Path::new(env!("CARGO_MANIFEST_DIR")).join("..")),
        };
        let cwd = std::env::current_dir().unwrap_or_else(|_| root.clone());
        Process { root, cwd, vars }
    }

    /// A process with only `vars` in its environment (for tests).
    #[cfg(test)]
    pub(crate) fn with(root: &Path, cwd: &Path, vars: &[(&str, &str)]) -> Process {
        let vars = vars.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
        Process { root: root.to_path_buf(), cwd: cwd.to_path_buf(), vars }
    }

    /// An environment variable; an empty one counts as unset.
    pub(crate) fn var(&self, name: &str) -> Option<&str> {
        self.vars.get(name).map(String::as_str).filter(|v| !v.is_empty())
    }

    /// A path from the command line or the environment, made absolute from
    /// the working directory.
    pub(crate) fn cli_path(&self, p: &Path) -> PathBuf {
        normalize(&self.cwd.join(p))
    }

    /// `PATH` with the pinned tools first.
    pub(crate) fn path_with_tools(&self) -> std::ffi::OsString {
        let mut paths = vec![self.root.join(TOOLS_BIN)];
        paths.extend(std::env::split_paths(self.var("PATH").unwrap_or_default()));
        std::env::join_paths(paths).expect("PATH entries have no separators")
    }
}

/// The repository root, for unit tests (commands are given a [`Process`]).
#[cfg(test)]
pub(crate) fn project_root() -> PathBuf {
    Process::read().root
}

/// The default fixtures: secret name to value, deterministic and weak by design.
pub(crate) const DEFAULT_FIXTURES: &str = "scripts/azure/default-local-keyvault-secrets.json";
/// The coverage contract, inside the infra tree.
pub(crate) const CONTRACT_IN_INFRA: &str = "values/platform/azure-keyvault-secrets.yaml";
pub(crate) const INFRA: &str = "infra/kubernetes";
pub(crate) const LAYER15_HELMFILE: &str = "infra/kubernetes/helmfiles/15-secrets-certificates.yaml";
pub(crate) const REPO_CONFIG: &str = "secrets.toml";
/// Per-developer state and the pinned tools; git-ignored.
pub(crate) const LOCAL_DIR: &str = ".local";
pub(crate) const TOOLS_BIN: &str = ".tools/bin";

/// The per-environment values file that holds the `secrets.provider` flag.
pub(crate) fn flag_file(env: &str) -> PathBuf {
    format!("infra/kubernetes/environments/{env}/platform/15-secrets.values.yaml").into()
}

/// The environments that have a layer 15 values file, sorted.
pub(crate) fn environments(root: &Path) -> Vec<String> {
    let mut envs = environment_folders(&root.join(INFRA));
    envs.retain(|env| root.join(flag_file(env)).is_file());
    envs
}

/// Refuses (exit 2) an `--env` with a path in it, and with `known_here` one
/// not among the [`environments`] of `root`.
pub(crate) fn require_env(root: &Path, env: &str, known_here: bool) -> anyhow::Result<()> {
    let known = environments(root);
    let listed = if known.is_empty() {
        "none found under infra/kubernetes/environments".to_string()
    } else {
        known.join(", ")
    };
    let allowed = |b: u8| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.');
    if env.is_empty() || env.starts_with('.') || !env.bytes().all(allowed) {
        crate::usage!(
            "--env {env:?} is not an environment name (letters, digits, '-', '_' and '.', not a path): \
             known environments are {listed}"
        );
    }
    if known_here && !known.iter().any(|k| k == env) {
        crate::usage!("unknown environment {env:?} (--env): known environments are {listed}");
    }
    Ok(())
}

/// Every folder under an infra tree's `environments/`, sorted.
pub(crate) fn environment_folders(infra: &Path) -> Vec<String> {
    let mut envs: Vec<String> = std::fs::read_dir(infra.join("environments"))
        .into_iter()
        .flatten()
        .flatten()
        .filter(|e| e.path().is_dir())
        .filter_map(|e| e.file_name().into_string().ok())
        .collect();
    envs.sort();
    envs
}

/// Removes `.` and `..` components without touching the file system.
pub(crate) fn normalize(p: &Path) -> PathBuf {
    use std::path::Component;
    let mut out = PathBuf::new();
    for c in p.components() {
        match c {
            Component::CurDir => {}
            Component::ParentDir if !out.pop() => out.push(".."),
            Component::ParentDir => {}
            other => out.push(other.as_os_str()),
        }
    }
    out
}

/// `path` relative to `root` when inside it (also through a symlink), else as given.
pub(crate) fn shown_from(root: &Path, path: &Path) -> String {
    let through_symlinks = || {
        let (root, real) = (std::fs::canonicalize(root).ok()?, canonical_prefix(path)?);
        Some(real.strip_prefix(root).ok()?.to_path_buf())
    };
    let rel = path.strip_prefix(root).map(Path::to_path_buf).ok().or_else(through_symlinks);
    rel.as_deref().unwrap_or(path).display().to_string()
}

/// The canonical form of the longest existing ancestor of `path`, with the rest appended.
pub(crate) fn canonical_prefix(path: &Path) -> Option<PathBuf> {
    match std::fs::canonicalize(path) {
        Ok(real) => Some(real),
        Err(_) => Some(canonical_prefix(path.parent()?)?.join(path.file_name()?)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_env_must_be_a_known_name_not_a_path() {
        // Every command's refusal of `nope`, `../local` and `/etc`: it/fail_closed.rs.
        let root = Path::new(env!("CARGO_MANIFEST_DIR")).parent().unwrap();
        assert!(require_env(root, "staging", true).is_ok());
        assert!(require_env(root, "nope", false).is_ok(), "check decides for its own tree");
        for bad in ["a/b", "..", ".", ""] {
            assert!(require_env(root, bad, false).unwrap_err().is::<crate::UsageError>(), "{bad}");
        }
        let err = require_env(root, "nope", true).unwrap_err().to_string();
        let known = "known environments are local, production, staging";
        assert_eq!(err, format!("unknown environment \"nope\" (--env): {known}"));
    }
}
