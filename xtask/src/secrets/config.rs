//! Effective configuration, and where each value came from.
//!
//! Every setting is a row of [`SETTINGS`]: its key in `secrets.toml`, and
//! the flag and environment variable that may set it. Loading and
//! `status`'s listing both read that table. Precedence, highest first:
//! flag; environment; the developer's git-ignored `.local/secrets.toml`;
//! the committed `secrets.toml`; built-in default. The Vault token may
//! also come from `~/.vault-token`, and never from a committed file.
//!
//! Paths: one given on the command line or in the environment is relative
//! to the working directory, as with every CLI; one in a config file is
//! relative to the repository root. Output shows paths relative to the
//! root ([`Config::shown`]).

use std::collections::BTreeMap;
use std::fmt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{bail, Context, Result};

pub(crate) use crate::flags::ProviderKind;
use crate::output::{shown_addr, Secret, VaultAddr};
use crate::project::{self, normalize, shown_from, Process};

/// Where a configuration value came from.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum Source {
    Flag(&'static str),
    Env(&'static str),
    LocalFile,
    RepoFile,
    TokenFile(PathBuf),
    /// The dev-mode Vault chart's root token, used with a port-forward to it.
    DevChart,
    Builtin,
}

impl fmt::Display for Source {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Source::Flag(flag) => write!(f, "flag {flag}"),
            Source::Env(var) => write!(f, "env {var}"),
            Source::LocalFile => write!(f, "{}/secrets.toml", project::LOCAL_DIR),
            Source::RepoFile => write!(f, "{}", project::REPO_CONFIG),
            Source::TokenFile(p) => write!(f, "{}", p.display()),
            Source::DevChart => write!(
                f,
                "dev chart default (infra/kubernetes/charts/platform/vault)"
            ),
            Source::Builtin => write!(f, "built-in default"),
        }
    }
}

#[derive(Clone, Debug)]
pub(crate) struct Setting<T> {
    pub value: T,
    pub source: Source,
}

/// One setting: its key in the config files (`None`: not settable there),
/// the flag and the environment variable that may set it, and its
/// built-in default.
struct Key {
    key: &'static str,
    in_files: bool,
    flag: Option<&'static str>,
    env: Option<&'static str>,
    default: Option<&'static str>,
}

const fn key(key: &'static str, default: Option<&'static str>) -> Key {
    Key {
        key,
        in_files: true,
        flag: None,
        env: None,
        default,
    }
}

const fn flag(k: Key, flag: &'static str) -> Key {
    Key {
        flag: Some(flag),
        ..k
    }
}

const fn env(k: Key, var: &'static str) -> Key {
    Key {
        env: Some(var),
        ..k
    }
}

/// Every setting, in the order `status` lists them.
const SETTINGS: &[Key] = &[
    env(
        flag(key("provider", Some("vault")), "--provider"),
        "SECRETS_PROVIDER",
    ),
    flag(
        key("fixtures", Some(project::DEFAULT_FIXTURES)),
        "--fixtures",
    ),
    flag(
        key("overrides", Some(".local/secrets/overrides.json")),
        "--overrides",
    ),
    flag(key("concurrency", Some("16")), "--concurrency"),
    env(key("vault.addr", None), "VAULT_ADDR"),
    env(key("vault.token", None), "VAULT_TOKEN"),
    env(key("vault.namespace", None), "VAULT_NAMESPACE"),
    env(key("vault.ca_cert", None), "VAULT_CACERT"),
    flag(key("vault.mount", Some("secret")), "--mount"),
    key("vault.timeout_secs", Some("15")),
    key("vault.retries", Some("8")),
    key("vault.port_forward.namespace", Some("vault")),
    key("vault.port_forward.service", Some("vault")),
    key("vault.port_forward.port", Some("8200")),
    key("vault.port_forward.dev_root_token", Some("root")),
    key("vault.port_forward.start_timeout_secs", Some("30")),
    key("vault.port_forward.pod_wait_secs", Some("120")),
    key("helmfile.sync_timeout_secs", Some("600")),
    key("file.store", Some(".local/secrets/store.json")),
    env(key("azure.vault_name", None), "AZURE_KEYVAULT_NAME"),
    key(
        "guardrail.local_contexts",
        Some("k3d-*, kind-*, docker-desktop, minikube, rancher-desktop, orbstack, colima*"),
    ),
    env(
        flag(
            key("externalsecret.wait_attempts", Some("60")),
            "--wait-attempts",
        ),
        "EXTERNALSECRET_WAIT_ATTEMPTS",
    ),
    env(
        flag(
            key("externalsecret.wait_sleep_secs", Some("5")),
            "--wait-sleep",
        ),
        "EXTERNALSECRET_WAIT_SLEEP",
    ),
    Key {
        in_files: false,
        ..env(key("kubeconfig", None), "KUBECONFIG")
    },
    Key {
        in_files: false,
        ..env(key("home", None), "HOME")
    },
];

/// Values the command line may set.
#[derive(Default)]
pub(crate) struct FlagValues {
    pub provider: Option<ProviderKind>,
    pub fixtures: Option<PathBuf>,
    pub overrides: Option<PathBuf>,
    pub mount: Option<String>,
    pub concurrency: Option<usize>,
    pub wait_attempts: Option<u32>,
    pub wait_sleep: Option<f64>,
}

impl FlagValues {
    /// The flag's value as the config files would spell it.
    fn get(&self, flag: &str) -> Option<String> {
        let path = |p: &Option<PathBuf>| p.as_ref().map(|p| p.display().to_string());
        match flag {
            "--provider" => self.provider.map(|p| p.to_string()),
            "--fixtures" => path(&self.fixtures),
            "--overrides" => path(&self.overrides),
            "--mount" => self.mount.clone(),
            "--concurrency" => self.concurrency.map(|n| n.to_string()),
            "--wait-attempts" => self.wait_attempts.map(|n| n.to_string()),
            "--wait-sleep" => self.wait_sleep.map(|n| n.to_string()),
            _ => None,
        }
    }
}

#[derive(Clone, Debug)]
pub(crate) struct PortForward {
    pub namespace: String,
    pub service: String,
    pub port: u16,
    pub dev_root_token: String,
    /// How long kubectl may take to print `Forwarding from ...`, once a
    /// pod behind the service runs.
    pub start_timeout: Duration,
    /// How long to wait for a pod behind the service to run (none yet, or
    /// Pending) before starting kubectl.
    pub pod_wait: Duration,
}

/// How long `migrate` and `rollback` wait for ExternalSecrets.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Wait {
    pub attempts: u32,
    pub sleep: Duration,
}

#[derive(Debug)]
pub(crate) struct Config {
    pub root: PathBuf,
    pub provider: Setting<ProviderKind>,
    pub fixtures: Setting<PathBuf>,
    pub overrides: Setting<PathBuf>,
    pub concurrency: Setting<usize>,
    pub vault_addr: Option<Setting<VaultAddr>>,
    pub vault_token: Option<Setting<Secret>>,
    pub vault_namespace: Option<Setting<String>>,
    /// PEM file of the CA that signed an HTTPS Vault's certificate.
    pub vault_ca_cert: Option<Setting<PathBuf>>,
    pub vault_mount: Setting<String>,
    pub vault_timeout_secs: f64,
    pub vault_retries: u32,
    pub port_forward: PortForward,
    /// The deadline of one `helmfile sync` (`helmfile.sync_timeout_secs`).
    pub helmfile_sync_timeout: Duration,
    pub file_store: Setting<PathBuf>,
    pub azure_vault_name: Option<Setting<String>>,
    pub local_contexts: Vec<String>,
    pub wait: Wait,
    /// The kubeconfig files kubectl reads: `KUBECONFIG` (a `:`-separated
    /// list), else `~/.kube/config`; empty when neither can be known.
    pub kubeconfig: Vec<PathBuf>,
    /// `PATH` with the pinned tools first: every child of `secrets` gets it.
    pub tools_path: std::ffi::OsString,
    /// Every setting as [`Config::describe`] lists it: no secret in it.
    listing: Vec<(String, String, String)>,
}

/// Loads the configuration of this process. Transitional: commands that
/// were given a [`Process`] call [`Config::load`] with it.
pub(crate) fn load(flags: &FlagValues) -> Result<Config> {
    Config::load(&Process::read(), flags)
}

impl Config {
    /// The one way a command loads its configuration: once, at its start,
    /// from the process state read at the entry. Everything after reads it.
    pub(crate) fn load(process: &Process, flags: &FlagValues) -> Result<Config> {
        let root = &process.root;
        let repo = read_file(&root.join(project::REPO_CONFIG))?;
        let local = read_file(&root.join(project::LOCAL_DIR).join("secrets.toml"))?;
        if repo.contains_key("vault.token") {
            bail!(
                "{} sets vault.token: a committed file must never hold a token. Remove it; put it in \
                 .local/secrets.toml (git-ignored) or VAULT_TOKEN.",
                project::REPO_CONFIG
            );
        }
        let pick = |k: &Key| -> Option<Setting<String>> {
            let from = |value: Option<String>, source: Source| {
                value.map(|value| Setting { value, source })
            };
            k.flag
                .and_then(|f| from(flags.get(f), Source::Flag(f)))
                .or_else(|| {
                    k.env
                        .and_then(|v| from(process.var(v).map(String::from), Source::Env(v)))
                })
                .or_else(|| from(local.get(k.key).cloned(), Source::LocalFile))
                .or_else(|| from(repo.get(k.key).cloned(), Source::RepoFile))
                .or_else(|| from(k.default.map(String::from), Source::Builtin))
        };
        let raw: Vec<(&'static str, Option<Setting<String>>)> =
            SETTINGS.iter().map(|k| (k.key, pick(k))).collect();
        let get = |key: &str| -> Option<Setting<String>> {
            raw.iter()
                .find(|(k, _)| *k == key)
                .and_then(|(_, s)| s.clone())
        };
        let set = |key: &str| get(key).expect("a setting with a built-in default");
        // A path from a flag or the environment is from the working directory.
        let path = |s: Setting<String>| Setting {
            value: match s.source {
                Source::Flag(_) | Source::Env(_) => process.cli_path(Path::new(&s.value)),
                _ => PathBuf::from(&s.value),
            },
            source: s.source,
        };

        let provider_raw = set("provider");
        let provider = Setting {
            value: provider_raw.value.parse::<ProviderKind>().map_err(|_| {
                bad_value(
                    &provider_raw.source,
                    format!(
                        "unknown provider {:?} (from {}): use vault, file or azure",
                        provider_raw.value, provider_raw.source
                    ),
                )
            })?,
            source: provider_raw.source,
        };
        if flags.mount.is_some() && provider.value != ProviderKind::Vault {
            crate::usage!(
                "--mount is a Vault KV mount, and the provider is {} (from {}): drop --mount, or use --provider vault",
                provider.value,
                provider.source
            );
        }
        let concurrency = parsed::<usize>(&set("concurrency"), "concurrency", "1 to 256")?;
        if !(1..=256).contains(&concurrency.value) {
            return Err(bad_value(
                &concurrency.source,
                format!(
                    "concurrency must be 1 to 256, got {} (from {})",
                    concurrency.value, concurrency.source
                ),
            ));
        }
        let mount = set("vault.mount");
        let trimmed = mount.value.trim_matches('/');
        if trimmed.is_empty() || trimmed.contains("..") {
            return Err(bad_value(
                &mount.source,
                format!(
                    "invalid Vault mount {:?} (from {}): name a KV mount such as secret",
                    mount.value, mount.source
                ),
            ));
        }
        let vault_mount = Setting {
            value: trimmed.to_string(),
            source: mount.source,
        };
        let mut vault_token = get("vault.token").map(|s| Setting {
            value: Secret::new(s.value),
            source: s.source,
        });
        let home = get("home").map(|s| PathBuf::from(s.value));
        if vault_token.is_none() {
            if let Some(path) = home.as_ref().map(|h| h.join(".vault-token")) {
                let token = std::fs::read_to_string(&path).unwrap_or_default();
                if !token.trim().is_empty() {
                    vault_token = Some(Setting {
                        value: Secret::new(token.trim().to_string()),
                        source: Source::TokenFile(path),
                    });
                }
            }
        }
        let kubeconfig = match get("kubeconfig") {
            Some(list) => std::env::split_paths(&list.value).collect(),
            None => home.iter().map(|h| h.join(".kube/config")).collect(),
        };
        let attempts = parsed::<u32>(
            &set("externalsecret.wait_attempts"),
            "the wait's attempts",
            "a whole number",
        )?;
        let sleep = parsed::<f64>(
            &set("externalsecret.wait_sleep_secs"),
            "the wait's sleep",
            "a number of seconds",
        )?;
        if attempts.value == 0 {
            let msg = format!(
                "the wait's attempts must be at least 1 (from {})",
                attempts.source
            );
            return Err(bad_value(&attempts.source, msg));
        }
        if !(0.0..=600.0).contains(&sleep.value) {
            let msg = format!(
                "the wait's sleep must be 0 to 600 seconds (from {})",
                sleep.source
            );
            return Err(bad_value(&sleep.source, msg));
        }
        let port_forward = PortForward {
            namespace: set("vault.port_forward.namespace").value,
            service: set("vault.port_forward.service").value,
            port: parsed(
                &set("vault.port_forward.port"),
                "vault.port_forward.port",
                "a port number",
            )?
            .value,
            dev_root_token: set("vault.port_forward.dev_root_token").value,
            start_timeout: secs(
                &set("vault.port_forward.start_timeout_secs"),
                "vault.port_forward.start_timeout_secs",
            )?,
            pod_wait: secs(
                &set("vault.port_forward.pod_wait_secs"),
                "vault.port_forward.pod_wait_secs",
            )?,
        };
        Ok(Config {
            root: root.clone(),
            provider,
            fixtures: path(set("fixtures")),
            overrides: path(set("overrides")),
            concurrency,
            vault_addr: get("vault.addr").map(|s| Setting {
                value: VaultAddr::new(s.value),
                source: s.source,
            }),
            vault_token,
            vault_namespace: get("vault.namespace"),
            vault_ca_cert: get("vault.ca_cert").map(path),
            vault_mount,
            // Checked here: a negative, NaN or infinite value would panic
            // where the client turns it into a Duration.
            vault_timeout_secs: secs(&set("vault.timeout_secs"), "vault.timeout_secs")?
                .as_secs_f64(),
            vault_retries: parsed(&set("vault.retries"), "vault.retries", "a whole number")?.value,
            port_forward,
            helmfile_sync_timeout: secs(
                &set("helmfile.sync_timeout_secs"),
                "helmfile.sync_timeout_secs",
            )?,
            file_store: path(set("file.store")),
            azure_vault_name: get("azure.vault_name"),
            local_contexts: set("guardrail.local_contexts")
                .value
                .split(',')
                .map(|c| c.trim().to_string())
                .filter(|c| !c.is_empty())
                .collect(),
            wait: Wait {
                attempts: attempts.value,
                sleep: Duration::from_secs_f64(sleep.value),
            },
            kubeconfig,
            tools_path: process.path_with_tools(),
            listing: Vec::new(),
        }
        .listed(&raw))
    }

    /// A path from the configuration: flag and environment paths are
    /// already absolute (from the working directory); a config file's are
    /// relative to the repository root.
    pub(crate) fn abs(&self, p: &Path) -> PathBuf {
        normalize(&self.root.join(p))
    }

    /// A path as output shows it: relative to the repository root when inside it.
    pub(crate) fn shown(&self, p: &Path) -> String {
        shown_from(&self.root, &self.abs(p))
    }

    /// Every setting of [`SETTINGS`], in its order: key, value as shown,
    /// source. A token by its source only; an address without its password.
    pub(crate) fn describe(&self) -> Vec<(String, String, String)> {
        self.listing.clone()
    }

    /// `self` with its listing made from the settings as loaded (`raw`).
    fn listed(mut self, raw: &[(&'static str, Option<Setting<String>>)]) -> Config {
        self.listing = raw
            .iter()
            .map(|(key, setting)| {
                let Some(s) = setting else {
                    let unset = match *key {
                        "vault.addr" => format!(
                            "(unset: port-forward svc/{} in namespace {})",
                            self.port_forward.service, self.port_forward.namespace
                        ),
                        "vault.token" => match &self.vault_token {
                            Some(t) => {
                                return (
                                    key.to_string(),
                                    "(set, not shown)".into(),
                                    t.source.to_string(),
                                )
                            }
                            None => "(unset: dev chart token with a port-forward)".into(),
                        },
                        "kubeconfig" if !self.kubeconfig.is_empty() => {
                            let paths: Vec<String> = self
                                .kubeconfig
                                .iter()
                                .map(|p| p.display().to_string())
                                .collect();
                            return (
                                key.to_string(),
                                paths.join(":"),
                                "built-in default (from HOME)".into(),
                            );
                        }
                        _ => "(unset)".into(),
                    };
                    return (key.to_string(), unset, Source::Builtin.to_string());
                };
                let shown_path = |p: &Path| self.shown(p);
                let (value, source) = match *key {
                    "vault.token" => match &self.vault_token {
                        Some(t) => ("(set, not shown)".to_string(), t.source.to_string()),
                        None => ("(unset)".to_string(), Source::Builtin.to_string()),
                    },
                    k if k.ends_with("token") => ("(set, not shown)".into(), s.source.to_string()),
                    "vault.addr" => (shown_addr(&s.value), s.source.to_string()),
                    "fixtures" => (shown_path(&self.fixtures.value), s.source.to_string()),
                    "overrides" => (shown_path(&self.overrides.value), s.source.to_string()),
                    "file.store" => (shown_path(&self.file_store.value), s.source.to_string()),
                    "vault.ca_cert" => match &self.vault_ca_cert {
                        Some(c) => (shown_path(&c.value), s.source.to_string()),
                        None => (s.value.clone(), s.source.to_string()),
                    },
                    _ => (s.value.clone(), s.source.to_string()),
                };
                (key.to_string(), value, source)
            })
            .collect();
        self
    }
}

/// A bad value's error. From a flag or the environment (how this run was
/// invoked) it is a usage error, exit 2; from `secrets.toml` or
/// `.local/secrets.toml` it is that file's error, exit 1, like every other
/// error in those files. `msg` names where the value came from.
fn bad_value(source: &Source, msg: String) -> anyhow::Error {
    if matches!(source, Source::Flag(_) | Source::Env(_)) {
        anyhow::Error::new(crate::UsageError(msg))
    } else {
        anyhow::anyhow!("{msg}: fix it there, or remove it for the default")
    }
}

/// `s` parsed as a `T`, or an error naming `what` it must be and its source.
fn parsed<T: std::str::FromStr>(s: &Setting<String>, key: &str, what: &str) -> Result<Setting<T>> {
    match s.value.trim().parse() {
        Ok(value) => Ok(Setting {
            value,
            source: s.source.clone(),
        }),
        Err(_) => Err(bad_value(
            &s.source,
            format!(
                "{key} must be {what}, got {:?} (from {})",
                s.value, s.source
            ),
        )),
    }
}

/// A timeout in seconds: positive, finite, at most a day.
fn secs(s: &Setting<String>, key: &str) -> Result<Duration> {
    let secs = parsed::<f64>(s, key, "a number of seconds")?.value;
    if !secs.is_finite() || secs <= 0.0 || secs > 86_400.0 {
        return Err(bad_value(
            &s.source,
            format!(
                "{key} must be a number of seconds above 0 (up to 86400), got {secs} (from {})",
                s.source
            ),
        ));
    }
    Ok(Duration::from_secs_f64(secs))
}

/// A config file's settings by dotted key, each value as text (a list
/// joined with `, `); a missing file has none. A key [`SETTINGS`] does not
/// have in the files is an error naming it.
fn read_file(path: &Path) -> Result<BTreeMap<String, String>> {
    let text = match std::fs::read_to_string(path) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(BTreeMap::new()),
        Err(e) => return Err(e).with_context(|| format!("reading {}", path.display())),
    };
    // The error's position and message only: toml's own text quotes the
    // line, which may hold vault.token.
    let table: toml::Table = toml::from_str(&text).map_err(|e| {
        let (line, col) = e.span().map_or((1, 1), |span| line_col(&text, span.start));
        anyhow::anyhow!(
            "{}:{line}:{col}: {}. Fix the file (see secrets.toml for the keys)",
            path.display(),
            e.message().trim_end()
        )
    })?;
    let mut out = BTreeMap::new();
    flatten("", &table, &mut out);
    if let Some(unknown) = out
        .keys()
        .find(|k| !SETTINGS.iter().any(|s| s.in_files && s.key == k.as_str()))
    {
        bail!(
            "{}: unknown key {unknown}. Fix the file (see secrets.toml for the keys)",
            path.display()
        );
    }
    Ok(out)
}

fn flatten(prefix: &str, table: &toml::Table, out: &mut BTreeMap<String, String>) {
    for (k, v) in table {
        let key = if prefix.is_empty() {
            k.clone()
        } else {
            format!("{prefix}.{k}")
        };
        let text = match v {
            toml::Value::Table(t) => {
                flatten(&key, t, out);
                continue;
            }
            toml::Value::Array(items) => items.iter().map(scalar).collect::<Vec<_>>().join(", "),
            other => scalar(other),
        };
        out.insert(key, text);
    }
}

/// A value of a config file as text; a table or list as its kind.
fn scalar(v: &toml::Value) -> String {
    match v {
        toml::Value::String(s) => s.clone(),
        toml::Value::Integer(i) => i.to_string(),
        toml::Value::Float(f) => f.to_string(),
        toml::Value::Boolean(b) => b.to_string(),
        toml::Value::Datetime(d) => d.to_string(),
        toml::Value::Array(_) => "[list]".into(),
        toml::Value::Table(_) => "[table]".into(),
    }
}

/// 1-based line and column (in characters) of byte `offset` in `text`.
fn line_col(text: &str, offset: usize) -> (usize, usize) {
    let before = text.get(..offset).unwrap_or(text);
    let line = before.matches('\n').count() + 1;
    let col = before.rsplit('\n').next().unwrap_or("").chars().count() + 1;
    (line, col)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Loads `root`'s configuration with only `vars` in the environment.
    fn load(root: &Path, flags: &FlagValues, vars: &[(&str, &str)]) -> Result<Config> {
        let cwd = std::env::current_dir().unwrap();
        Config::load(&Process::with(root, &cwd, vars), flags)
    }

    fn scratch(name: &str) -> PathBuf {
        let dir = std::env::temp_dir().join(format!("xtask-config-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(dir.join(".local")).unwrap();
        dir
    }

    #[test]
    fn precedence_is_flag_env_local_repo_builtin() {
        let root = scratch("precedence");
        std::fs::write(
            root.join("secrets.toml"),
            "provider = \"azure\"\n[vault]\nmount = \"repo\"\naddr = \"http://repo:8200\"\n",
        )
        .unwrap();
        std::fs::write(
            root.join(".local/secrets.toml"),
            "[vault]\nmount = \"local\"\n",
        )
        .unwrap();
        let env = [("SECRETS_PROVIDER", "file")];
        let cfg = load(&root, &FlagValues::default(), &env).unwrap();
        assert_eq!(cfg.provider.value, ProviderKind::File);
        assert_eq!(cfg.provider.source, Source::Env("SECRETS_PROVIDER"));
        assert_eq!(cfg.vault_mount.value, "local");
        assert_eq!(cfg.vault_mount.source, Source::LocalFile);
        assert_eq!(cfg.vault_addr.as_ref().unwrap().source, Source::RepoFile);
        assert_eq!(cfg.concurrency.source, Source::Builtin);

        let flags = FlagValues {
            provider: Some(ProviderKind::Vault),
            mount: Some("kv/".into()),
            ..Default::default()
        };
        let cfg = load(&root, &flags, &env).unwrap();
        assert_eq!(cfg.provider.value, ProviderKind::Vault);
        assert_eq!(cfg.provider.source, Source::Flag("--provider"));
        assert_eq!(cfg.vault_mount.value, "kv", "slashes are trimmed");
        std::fs::remove_dir_all(&root).unwrap();
    }

    #[test]
    fn wait_settings_come_from_flags_then_env_and_are_listed() {
        let root = scratch("wait");
        let env = [
            ("EXTERNALSECRET_WAIT_ATTEMPTS", "7"),
            ("EXTERNALSECRET_WAIT_SLEEP", "0.5"),
        ];
        let cfg = load(&root, &FlagValues::default(), &env).unwrap();
        assert_eq!(
            (cfg.wait.attempts, cfg.wait.sleep),
            (7, Duration::from_millis(500))
        );
        let flags = FlagValues {
            wait_attempts: Some(3),
            ..Default::default()
        };
        let cfg = load(&root, &flags, &env).unwrap();
        assert_eq!(cfg.wait.attempts, 3);
        let listed = cfg.describe();
        assert_eq!(listed.len(), SETTINGS.len(), "status lists every setting");
        assert!(listed.contains(&(
            "externalsecret.wait_sleep_secs".into(),
            "0.5".into(),
            "env EXTERNALSECRET_WAIT_SLEEP".into()
        )));
        let flags = FlagValues {
            wait_attempts: Some(0),
            ..Default::default()
        };
        let err = load(&root, &flags, &[]).unwrap_err();
        assert!(err.downcast_ref::<crate::UsageError>().is_some(), "{err}");
        let err = load(
            &root,
            &FlagValues::default(),
            &[("EXTERNALSECRET_WAIT_SLEEP", "soon")],
        )
        .unwrap_err();
        assert!(
            err.to_string().contains("env EXTERNALSECRET_WAIT_SLEEP"),
            "{err}"
        );
        std::fs::remove_dir_all(&root).unwrap();
    }

    #[test]
    fn token_never_from_a_committed_file_and_never_shown() {
        let root = scratch("token");
        std::fs::write(
            root.join("secrets.toml"),
            "[vault]\ntoken = \"s.committed\"\n",
        )
        .unwrap();
        let err = load(&root, &FlagValues::default(), &[]).unwrap_err();
        assert!(err.to_string().contains("must never hold a token"), "{err}");
        assert!(!err.to_string().contains("s.committed"));

        std::fs::remove_file(root.join("secrets.toml")).unwrap();
        let home = root.join("home");
        std::fs::create_dir_all(&home).unwrap();
        std::fs::write(home.join(".vault-token"), "s.fromfile\n").unwrap();
        let home_var = [("HOME", home.to_str().unwrap())];
        let cfg = load(&root, &FlagValues::default(), &home_var).unwrap();
        let token = cfg.vault_token.as_ref().unwrap();
        assert_eq!(token.value.expose(), "s.fromfile");
        assert_eq!(token.source, Source::TokenFile(home.join(".vault-token")));
        let shown = format!("{:?} {:?}", cfg.describe(), cfg);
        assert!(!shown.contains("s.fromfile"), "{shown}");
        std::fs::remove_dir_all(&root).unwrap();
    }

    #[test]
    fn a_password_in_vault_addr_shows_only_as_stars() {
        let root = scratch("addr");
        let env = [("VAULT_ADDR", "http://u:pw-x@127.0.0.1:8200")];
        let cfg = load(&root, &FlagValues::default(), &env).unwrap();
        let addr = &cfg.vault_addr.as_ref().unwrap().value;
        assert_eq!(
            addr.expose(),
            "http://u:pw-x@127.0.0.1:8200",
            "connecting keeps it"
        );
        assert_eq!(addr.to_string(), "http://***@127.0.0.1:8200");
        let shown = format!(
            "{:?} {:?} {}",
            cfg,
            cfg.describe(),
            serde_json::json!({ "addr": addr })
        );
        assert!(!shown.contains("pw-x"), "{shown}");
        std::fs::remove_dir_all(&root).unwrap();
    }

    #[test]
    fn a_bad_value_in_a_config_file_is_that_files_error_never_a_usage_error() {
        let root = scratch("file-errors");
        for text in [
            "concurrency = 0\n",
            "[vault]\nmount = \"..\"\n",
            "provider = \"consul\"\n",
            "[vault]\ntoken = s.unquoted\n",
        ] {
            std::fs::write(root.join(".local/secrets.toml"), text).unwrap();
            let err = load(&root, &FlagValues::default(), &[]).unwrap_err();
            assert!(
                err.downcast_ref::<crate::UsageError>().is_none(),
                "{text}: {err}"
            );
            let msg = format!("{err:#}");
            assert!(msg.contains(".local/secrets.toml"), "{msg}");
            assert!(
                !msg.contains("s.unquoted"),
                "a token line is never quoted: {msg}"
            );
        }
        std::fs::remove_dir_all(&root).unwrap();
    }

    #[test]
    fn typos_and_bad_values_are_named() {
        let root = scratch("typo");
        std::fs::write(
            root.join(".local/secrets.toml"),
            "[vault]\nadress = \"x\"\n",
        )
        .unwrap();
        let err = load(&root, &FlagValues::default(), &[]).unwrap_err();
        let msg = format!("{err:#}");
        assert!(
            msg.contains(".local/secrets.toml") && msg.contains("adress"),
            "{msg}"
        );

        std::fs::remove_file(root.join(".local/secrets.toml")).unwrap();
        // From SECRETS_PROVIDER: a usage error (exit 2), as the flag's is.
        let env = [("SECRETS_PROVIDER", "consul")];
        let err = load(&root, &FlagValues::default(), &env).unwrap_err();
        assert!(err.downcast_ref::<crate::UsageError>().is_some(), "{err}");
        assert!(
            err.to_string().contains("from env SECRETS_PROVIDER"),
            "{err}"
        );
        std::fs::remove_dir_all(&root).unwrap();
    }

    #[test]
    fn flag_paths_are_from_the_working_directory_and_shown_from_the_root() {
        let root = scratch("paths");
        std::fs::write(
            root.join(".local/secrets.toml"),
            "overrides = \"mine/overrides.json\"\n[file]\nstore = \"mine/store.json\"\n",
        )
        .unwrap();
        let cwd = std::env::current_dir().unwrap();
        let flags = FlagValues {
            fixtures: Some("../x.json".into()),
            ..Default::default()
        };
        let cfg = load(&root, &flags, &[]).unwrap();
        assert_eq!(cfg.fixtures.value, normalize(&cwd.join("../x.json")));
        assert!(!cfg.fixtures.value.starts_with(&root), "not from the root");
        // Config file paths stay relative to the root.
        assert_eq!(cfg.abs(&cfg.file_store.value), root.join("mine/store.json"));
        assert_eq!(cfg.shown(&cfg.overrides.value), "mine/overrides.json");
        assert_eq!(
            shown_from(&root, &root.join("infra/../scripts/a.json")),
            "infra/../scripts/a.json",
            "shown_from takes normalized paths"
        );
        assert_eq!(
            cfg.shown(&root.join("infra/../scripts/a.json")),
            "scripts/a.json"
        );
        assert_eq!(
            normalize(Path::new("/a/b/../c/./d")),
            PathBuf::from("/a/c/d")
        );
        std::fs::remove_dir_all(&root).unwrap();
    }

    #[test]
    fn child_deadlines_come_from_the_files_and_must_be_positive() {
        let root = scratch("deadlines");
        let cfg = load(&root, &FlagValues::default(), &[]).unwrap();
        assert_eq!(cfg.helmfile_sync_timeout, Duration::from_secs(600));
        assert_eq!(cfg.port_forward.start_timeout, Duration::from_secs(30));
        assert_eq!(cfg.port_forward.pod_wait, Duration::from_secs(120));

        std::fs::write(
            root.join("secrets.toml"),
            "[helmfile]\nsync_timeout_secs = 900\n[vault.port_forward]\nstart_timeout_secs = 5\npod_wait_secs = 60\n",
        )
        .unwrap();
        std::fs::write(
            root.join(".local/secrets.toml"),
            "[helmfile]\nsync_timeout_secs = 1200.5\n[vault.port_forward]\npod_wait_secs = 2.5\n",
        )
        .unwrap();
        let cfg = load(&root, &FlagValues::default(), &[]).unwrap();
        assert_eq!(cfg.helmfile_sync_timeout, Duration::from_secs_f64(1200.5));
        assert_eq!(cfg.port_forward.start_timeout, Duration::from_secs(5));
        assert_eq!(cfg.port_forward.pod_wait, Duration::from_secs_f64(2.5));

        std::fs::write(
            root.join(".local/secrets.toml"),
            "[vault.port_forward]\npod_wait_secs = -1\n",
        )
        .unwrap();
        let err = load(&root, &FlagValues::default(), &[]).unwrap_err();
        assert!(
            err.to_string()
                .contains("vault.port_forward.pod_wait_secs must be a number of seconds above 0"),
            "{err}"
        );
        assert!(
            err.to_string().contains("(from .local/secrets.toml)"),
            "{err}"
        );

        std::fs::write(
            root.join(".local/secrets.toml"),
            "[helmfile]\nsync_timeout_secs = 0\n",
        )
        .unwrap();
        let err = load(&root, &FlagValues::default(), &[]).unwrap_err();
        assert!(
            err.to_string()
                .contains("helmfile.sync_timeout_secs must be"),
            "{err}"
        );
        std::fs::remove_dir_all(&root).unwrap();
    }

    #[test]
    fn vault_timeout_must_be_a_positive_finite_number_of_seconds() {
        let root = scratch("vault-timeout");
        let cfg = load(&root, &FlagValues::default(), &[]).unwrap();
        assert_eq!(cfg.vault_timeout_secs, 15.0);
        std::fs::write(root.join("secrets.toml"), "[vault]\ntimeout_secs = 2.5\n").unwrap();
        let cfg = load(&root, &FlagValues::default(), &[]).unwrap();
        assert_eq!(cfg.vault_timeout_secs, 2.5);
        for (file, bad) in [
            ("secrets.toml", "-1"),
            (".local/secrets.toml", "nan"),
            (".local/secrets.toml", "inf"),
            (".local/secrets.toml", "0"),
        ] {
            std::fs::write(root.join(file), format!("[vault]\ntimeout_secs = {bad}\n")).unwrap();
            let err = load(&root, &FlagValues::default(), &[])
                .unwrap_err()
                .to_string();
            assert!(err.contains("vault.timeout_secs must be"), "{bad}: {err}");
            assert!(err.contains(&format!("(from {file})")), "{bad}: {err}");
        }
        std::fs::remove_dir_all(&root).unwrap();
    }
}
