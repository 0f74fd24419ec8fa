//! Effective configuration and each value's source: flag, environment,
//! `.local/secrets.toml`, `secrets.toml`, built-in default (highest first).
//! The Vault token may also come from `~/.vault-token`, never a committed file.

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
            Source::RepoFile => f.write_str(project::REPO_CONFIG),
            Source::TokenFile(p) => write!(f, "{}", p.display()),
            Source::DevChart => {
                f.write_str("dev chart default (infra/kubernetes/charts/platform/vault)")
            }
            Source::Builtin => f.write_str("built-in default"),
        }
    }
}

#[derive(Clone, Debug)]
pub(crate) struct Setting<T> {
    pub value: T,
    pub source: Source,
}

impl<T> Setting<T> {
    fn map<U>(self, f: impl FnOnce(T) -> U) -> Setting<U> {
        Setting { value: f(self.value), source: self.source }
    }
}

/// A setting's key in the config files, flag, environment variable and default ("": none).
type Key = (&'static str, &'static str, &'static str, &'static str);

const LOCAL_CONTEXTS: &str =
    "k3d-*, kind-*, docker-desktop, minikube, rancher-desktop, orbstack, colima*";
const WAIT_ATTEMPTS: &str = "EXTERNALSECRET_WAIT_ATTEMPTS";
const WAIT_SLEEP: &str = "EXTERNALSECRET_WAIT_SLEEP";

/// Every setting, in the order `status` lists them.
const SETTINGS: &[Key] = &[
    ("provider", "--provider", "SECRETS_PROVIDER", "vault"),
    ("fixtures", "--fixtures", "", project::DEFAULT_FIXTURES),
    ("overrides", "--overrides", "", ".local/secrets/overrides.json"),
    ("concurrency", "--concurrency", "", "16"),
    ("vault.addr", "", "VAULT_ADDR", ""),
    ("vault.token", "", "VAULT_TOKEN", ""),
    ("vault.namespace", "", "VAULT_NAMESPACE", ""),
    ("vault.ca_cert", "", "VAULT_CACERT", ""),
    ("vault.mount", "--mount", "", "secret"),
    ("vault.timeout_secs", "", "", "15"),
    ("vault.retries", "", "", "8"),
    ("vault.port_forward.namespace", "", "", "vault"),
    ("vault.port_forward.service", "", "", "vault"),
    ("vault.port_forward.port", "", "", "8200"),
    ("vault.port_forward.dev_root_token", "", "", "root"),
    ("vault.port_forward.start_timeout_secs", "", "", "30"),
    ("vault.port_forward.pod_wait_secs", "", "", "120"),
    ("helmfile.sync_timeout_secs", "", "", "600"),
    ("file.store", "", "", ".local/secrets/store.json"),
    ("azure.vault_name", "", "AZURE_KEYVAULT_NAME", ""),
    ("guardrail.local_contexts", "", "", LOCAL_CONTEXTS),
    ("externalsecret.wait_attempts", "--wait-attempts", WAIT_ATTEMPTS, "60"),
    ("externalsecret.wait_sleep_secs", "--wait-sleep", WAIT_SLEEP, "5"),
    ("kubeconfig", "", "KUBECONFIG", ""),
    ("home", "", "HOME", ""),
];

/// The settings of [`SETTINGS`] that no config file may set.
const NOT_IN_FILES: [&str; 2] = ["kubeconfig", "home"];

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
    /// How long kubectl may take to print `Forwarding from ...` once a pod runs.
    pub start_timeout: Duration,
    /// How long to wait for a pod behind the service to run before starting kubectl.
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
    pub helmfile_sync_timeout: Duration,
    pub file_store: Setting<PathBuf>,
    pub azure_vault_name: Option<Setting<String>>,
    pub local_contexts: Vec<String>,
    pub wait: Wait,
    /// The kubeconfig files kubectl reads: `KUBECONFIG`, else `~/.kube/config`.
    pub kubeconfig: Vec<PathBuf>,
    /// `PATH` with the pinned tools first: every child of `secrets` gets it.
    pub tools_path: std::ffi::OsString,
    /// Every setting as [`Config::describe`] lists it: no secret in it.
    listing: Vec<(String, String, String)>,
}

pub(crate) fn load(flags: &FlagValues) -> Result<Config> {
    Config::load(&Process::read(), flags)
}

/// The settings found, by key: the raw text and its source.
type Raw = BTreeMap<&'static str, Setting<String>>;

impl Config {
    /// The one way a command loads its configuration: once, at its start.
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
        let raw: Raw = SETTINGS
            .iter()
            .filter_map(|&(key, flag, env, default)| {
                let found = [
                    flags.get(flag).map(|v| (v, Source::Flag(flag))),
                    process.var(env).map(|v| (v.to_string(), Source::Env(env))),
                    local.get(key).map(|v| (v.clone(), Source::LocalFile)),
                    repo.get(key).map(|v| (v.clone(), Source::RepoFile)),
                    (!default.is_empty()).then(|| (default.to_string(), Source::Builtin)),
                ];
                let (value, source) = found.into_iter().flatten().next()?;
                Some((key, Setting { value, source }))
            })
            .collect();
        let get = |key: &str| raw.get(key).cloned();
        let set = |key: &str| get(key).expect("a setting with a built-in default");
        let secs_at = |key: &str| secs(&set(key), key);
        // A path from a flag or the environment is from the working directory.
        let path = |s: Setting<String>| {
            let from_cli = matches!(s.source, Source::Flag(_) | Source::Env(_));
            s.map(|v| if from_cli { process.cli_path(Path::new(&v)) } else { PathBuf::from(v) })
        };

        let provider = set("provider");
        let Ok(kind) = provider.value.parse::<ProviderKind>() else {
            let Setting { value, source } = &provider;
            let msg =
                format!("unknown provider {value:?} (from {source}): use vault, file or azure");
            return Err(bad_value(source, msg));
        };
        let provider = provider.map(|_| kind);
        let Setting { value: kind, source } = &provider;
        if flags.mount.is_some() && *kind != ProviderKind::Vault {
            crate::usage!(
                "--mount is a Vault KV mount, and the provider is {kind} (from {source}): drop --mount, \
                 or use --provider vault"
            );
        }
        let concurrency = parsed::<usize>(&set("concurrency"), "concurrency", "1 to 256")?;
        let Setting { value: n, source } = &concurrency;
        let msg = format!("concurrency must be 1 to 256, got {n} (from {source})");
        ensure_value((1..=256).contains(n), source, msg)?;
        let mount = set("vault.mount");
        let Setting { value, source } = &mount;
        let trimmed = value.trim_matches('/').to_string();
        let msg = format!(
            "invalid Vault mount {value:?} (from {source}): name a KV mount such as secret"
        );
        ensure_value(!trimmed.is_empty() && !trimmed.contains(".."), source, msg)?;
        let vault_mount = mount.map(|_| trimmed);
        let home = get("home").map(|s| PathBuf::from(s.value));
        let vault_token = match get("vault.token") {
            Some(s) => Some(s.map(Secret::new)),
            None => home.as_ref().and_then(|home| {
                let path = home.join(".vault-token");
                let token = std::fs::read_to_string(&path).unwrap_or_default().trim().to_string();
                let source = Source::TokenFile(path);
                (!token.is_empty()).then(|| Setting { value: Secret::new(token), source })
            }),
        };
        let kubeconfig = match get("kubeconfig") {
            Some(list) => std::env::split_paths(&list.value).collect(),
            None => home.iter().map(|h| h.join(".kube/config")).collect(),
        };
        let attempts = set("externalsecret.wait_attempts");
        let attempts = parsed::<u32>(&attempts, "the wait's attempts", "a whole number")?;
        let sleep = set("externalsecret.wait_sleep_secs");
        let sleep = parsed::<f64>(&sleep, "the wait's sleep", "a number of seconds")?;
        let Setting { value: n, source } = &attempts;
        let msg = format!("the wait's attempts must be at least 1 (from {source})");
        ensure_value(*n != 0, source, msg)?;
        let source = &sleep.source;
        let msg = format!("the wait's sleep must be 0 to 600 seconds (from {source})");
        ensure_value((0.0..=600.0).contains(&sleep.value), source, msg)?;
        let sleep = Duration::from_secs_f64(sleep.value);
        let wait = Wait { attempts: *n, sleep };
        let port = "vault.port_forward.port";
        let port_forward = PortForward {
            namespace: set("vault.port_forward.namespace").value,
            service: set("vault.port_forward.service").value,
            port: parsed(&set(port), port, "a port number")?.value,
            dev_root_token: set("vault.port_forward.dev_root_token").value,
            start_timeout: secs_at("vault.port_forward.start_timeout_secs")?,
            pod_wait: secs_at("vault.port_forward.pod_wait_secs")?,
        };
        let mut cfg = Config {
            root: root.clone(),
            provider,
            fixtures: path(set("fixtures")),
            overrides: path(set("overrides")),
            concurrency,
            vault_addr: get("vault.addr").map(|s| s.map(VaultAddr::new)),
            vault_token,
            vault_namespace: get("vault.namespace"),
            vault_ca_cert: get("vault.ca_cert").map(path),
            vault_mount,
            // Checked here: a negative, NaN or infinite value would panic as a Duration.
            vault_timeout_secs: secs_at("vault.timeout_secs")?.as_secs_f64(),
            vault_retries: parsed(&set("vault.retries"), "vault.retries", "a whole number")?.value,
            port_forward,
            helmfile_sync_timeout: secs_at("helmfile.sync_timeout_secs")?,
            file_store: path(set("file.store")),
            azure_vault_name: get("azure.vault_name"),
            local_contexts: set("guardrail.local_contexts")
                .value
                .split(',')
                .map(|c| c.trim().to_string())
                .filter(|c| !c.is_empty())
                .collect(),
            wait,
            kubeconfig,
            tools_path: process.path_with_tools(),
            listing: Vec::new(),
        };
        cfg.listing = cfg.list(&raw);
        Ok(cfg)
    }

    /// A path from the configuration: a config file's is relative to the root.
    pub(crate) fn abs(&self, p: &Path) -> PathBuf {
        normalize(&self.root.join(p))
    }

    /// A path as output shows it: relative to the repository root when inside it.
    pub(crate) fn shown(&self, p: &Path) -> String {
        shown_from(&self.root, &self.abs(p))
    }

    /// Every setting as key, value as shown, source: a token by its source only.
    pub(crate) fn describe(&self) -> Vec<(String, String, String)> {
        self.listing.clone()
    }

    /// The listing of [`Config::describe`], from the settings as loaded.
    fn list(&self, raw: &Raw) -> Vec<(String, String, String)> {
        let hidden = || "(set, not shown)".to_string();
        let builtin = || Source::Builtin.to_string();
        let row = |key: &str, setting: Option<&Setting<String>>| match (key, setting) {
            ("vault.token", _) => match &self.vault_token {
                Some(t) => (hidden(), t.source.to_string()),
                None => ("(unset: dev chart token with a port-forward)".into(), builtin()),
            },
            ("vault.addr", None) => {
                let PortForward { service, namespace, .. } = &self.port_forward;
                (format!("(unset: port-forward svc/{service} in namespace {namespace})"), builtin())
            }
            ("kubeconfig", None) if !self.kubeconfig.is_empty() => {
                let paths =
                    self.kubeconfig.iter().map(|p| p.display().to_string()).collect::<Vec<_>>();
                (paths.join(":"), "built-in default (from HOME)".into())
            }
            (_, None) => ("(unset)".into(), builtin()),
            (key, Some(s)) => {
                let ca_cert = self.vault_ca_cert.as_ref();
                let value = match key {
                    k if k.ends_with("token") => hidden(),
                    "vault.addr" => shown_addr(&s.value),
                    "fixtures" => self.shown(&self.fixtures.value),
                    "overrides" => self.shown(&self.overrides.value),
                    "file.store" => self.shown(&self.file_store.value),
                    "vault.ca_cert" => ca_cert.map_or(s.value.clone(), |c| self.shown(&c.value)),
                    _ => s.value.clone(),
                };
                (value, s.source.to_string())
            }
        };
        let rows = SETTINGS.iter().map(|&(key, ..)| (key.to_string(), row(key, raw.get(key))));
        rows.map(|(key, (value, source))| (key, value, source)).collect()
    }
}

/// A bad value's error: from a flag or the environment a usage error (exit 2).
fn bad_value(source: &Source, msg: String) -> anyhow::Error {
    if matches!(source, Source::Flag(_) | Source::Env(_)) {
        anyhow::Error::new(crate::UsageError(msg))
    } else {
        anyhow::anyhow!("{msg}: fix it there, or remove it for the default")
    }
}

/// [`bad_value`] with `msg` unless `ok`.
fn ensure_value(ok: bool, source: &Source, msg: String) -> Result<()> {
    ok.then_some(()).ok_or_else(|| bad_value(source, msg))
}

/// `s` parsed as a `T`, or an error naming `what` it must be and its source.
fn parsed<T: std::str::FromStr>(s: &Setting<String>, key: &str, what: &str) -> Result<Setting<T>> {
    let Setting { value, source } = s;
    let Ok(parsed) = value.trim().parse() else {
        let msg = format!("{key} must be {what}, got {value:?} (from {source})");
        return Err(bad_value(source, msg));
    };
    Ok(s.clone().map(|_| parsed))
}

/// A timeout in seconds: positive, finite, at most a day.
fn secs(s: &Setting<String>, key: &str) -> Result<Duration> {
    let secs = parsed::<f64>(s, key, "a number of seconds")?.value;
    let source = &s.source;
    let msg = format!(
        "{key} must be a number of seconds above 0 (up to 86400), got {secs} (from {source})"
    );
    ensure_value(secs > 0.0 && secs <= 86_400.0, source, msg)?;
    Ok(Duration::from_secs_f64(secs))
}

/// A config file's settings by dotted key, as text; a missing file has none.
fn read_file(path: &Path) -> Result<BTreeMap<String, String>> {
    let text = match std::fs::read_to_string(path) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(BTreeMap::new()),
        Err(e) => return Err(e).with_context(|| format!("reading {}", path.display())),
    };
    let path = path.display();
    // The error's position and message only: toml's own text quotes the
    // line, which may hold vault.token.
    let table: toml::Table = toml::from_str(&text).map_err(|e| {
        let (line, col) = e.span().map_or((1, 1), |span| line_col(&text, span.start));
        let message = e.message().trim_end();
        anyhow::anyhow!(
            "{path}:{line}:{col}: {message}. Fix the file (see secrets.toml for the keys)"
        )
    })?;
    let mut out = BTreeMap::new();
    flatten("", &table, &mut out);
    let known = |k: &str| !NOT_IN_FILES.contains(&k) && SETTINGS.iter().any(|s| s.0 == k);
    if let Some(unknown) = out.keys().find(|k| !known(k)) {
        bail!("{path}: unknown key {unknown}. Fix the file (see secrets.toml for the keys)");
    }
    Ok(out)
}

/// `table`'s values into `out`, each under `prefix` (empty, or ending in `.`).
fn flatten(prefix: &str, table: &toml::Table, out: &mut BTreeMap<String, String>) {
    for (k, v) in table {
        let key = format!("{prefix}{k}");
        let value = match v {
            toml::Value::Table(t) => {
                flatten(&format!("{key}."), t, out);
                continue;
            }
            toml::Value::Array(items) => items.iter().map(scalar).collect::<Vec<_>>().join(", "),
            other => scalar(other),
        };
        out.insert(key, value);
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

    /// `root`'s configuration without flags.
    fn loaded(root: &Path, vars: &[(&str, &str)]) -> Config {
        load(root, &FlagValues::default(), vars).unwrap()
    }

    fn write(root: &Path, file: &str, text: &str) {
        std::fs::write(root.join(file), text).unwrap();
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
        let repo = "provider = \"azure\"\n[vault]\nmount = \"repo\"\naddr = \"http://repo:8200\"\n";
        write(&root, "secrets.toml", repo);
        write(&root, ".local/secrets.toml", "[vault]\nmount = \"local\"\n");
        let env = [("SECRETS_PROVIDER", "file")];
        let cfg = loaded(&root, &env);
        assert_eq!(cfg.provider.value, ProviderKind::File);
        assert_eq!(cfg.provider.source, Source::Env("SECRETS_PROVIDER"));
        assert_eq!(cfg.vault_mount.value, "local");
        assert_eq!(cfg.vault_mount.source, Source::LocalFile);
        assert_eq!(cfg.vault_addr.as_ref().unwrap().source, Source::RepoFile);
        assert_eq!(cfg.concurrency.source, Source::Builtin);

        let mut flags = FlagValues::default();
        (flags.provider, flags.mount) = (Some(ProviderKind::Vault), Some("kv/".into()));
        let cfg = load(&root, &flags, &env).unwrap();
        assert_eq!(cfg.provider.value, ProviderKind::Vault);
        assert_eq!(cfg.provider.source, Source::Flag("--provider"));
        assert_eq!(cfg.vault_mount.value, "kv", "slashes are trimmed");
        std::fs::remove_dir_all(&root).unwrap();
    }

    #[test]
    fn wait_settings_come_from_flags_then_env_and_are_listed() {
        let root = scratch("wait");
        let env = [(WAIT_ATTEMPTS, "7"), (WAIT_SLEEP, "0.5")];
        let cfg = loaded(&root, &env);
        assert_eq!((cfg.wait.attempts, cfg.wait.sleep), (7, Duration::from_millis(500)));
        let mut flags = FlagValues { wait_attempts: Some(3), ..Default::default() };
        let cfg = load(&root, &flags, &env).unwrap();
        assert_eq!(cfg.wait.attempts, 3);
        let listed = cfg.describe();
        assert_eq!(listed.len(), SETTINGS.len(), "status lists every setting");
        let row = ["externalsecret.wait_sleep_secs", "0.5", "env EXTERNALSECRET_WAIT_SLEEP"];
        assert!(listed.contains(&row.map(String::from).into()));
        flags.wait_attempts = Some(0);
        let err = load(&root, &flags, &[]).unwrap_err();
        assert!(err.is::<crate::UsageError>(), "{err}");
        std::fs::remove_dir_all(&root).unwrap();
    }

    #[test]
    fn token_never_from_a_committed_file_and_never_shown() {
        let root = scratch("token");
        write(&root, "secrets.toml", "[vault]\ntoken = \"s.committed\"\n");
        let err = load(&root, &FlagValues::default(), &[]).unwrap_err().to_string();
        assert!(err.contains("must never hold a token"), "{err}");
        assert!(!err.contains("s.committed"), "{err}");

        std::fs::remove_file(root.join("secrets.toml")).unwrap();
        write(&root, ".vault-token", "s.fromfile\n");
        let cfg = loaded(&root, &[("HOME", root.to_str().unwrap())]);
        let token = cfg.vault_token.as_ref().unwrap();
        assert_eq!(token.value.expose(), "s.fromfile");
        assert_eq!(token.source, Source::TokenFile(root.join(".vault-token")));
        let shown = format!("{:?} {:?}", cfg.describe(), cfg);
        assert!(!shown.contains("s.fromfile"), "{shown}");
        std::fs::remove_dir_all(&root).unwrap();
    }

    /// A bad value names its source; the environment's is a usage error.
    #[test]
    fn bad_values_and_typos_are_named_with_their_source() {
        let root = scratch("bad-values");
        let err = load(&root, &FlagValues::default(), &[(WAIT_SLEEP, "soon")]).unwrap_err();
        assert!(err.is::<crate::UsageError>(), "{err}");
        assert!(err.to_string().contains("env EXTERNALSECRET_WAIT_SLEEP"), "{err}");
        let timeout = "vault.timeout_secs must be";
        let pod_wait = "vault.port_forward.pod_wait_secs must be a number of seconds above 0";
        for (file, text, want) in [
            (".local", "[vault]\ntoken = s.unquoted\n", ":2:9:"),
            (".local", "[vault.port_forward]\npod_wait_secs = -1\n", pod_wait),
            (".", "[vault]\ntimeout_secs = -1\n", timeout),
            (".local", "[vault]\ntimeout_secs = nan\n", timeout),
            (".local", "[vault]\ntimeout_secs = inf\n", timeout),
            (".local", "[vault]\ntimeout_secs = 0\n", timeout),
        ] {
            let path = format!("{file}/secrets.toml");
            write(&root, &path, text);
            let err = load(&root, &FlagValues::default(), &[]).unwrap_err();
            let msg = format!("{err:#}");
            assert!(!err.is::<crate::UsageError>(), "{text}: {msg}");
            assert!(msg.contains(want), "{text}: {msg}");
            let from = path.trim_start_matches("./");
            assert!(
                msg.contains(&format!("(from {from})")) || msg.contains(&format!("{from}:")),
                "{msg}"
            );
            assert!(!msg.contains("s.unquoted"), "a token line is never quoted: {msg}");
            std::fs::remove_file(root.join(&path)).unwrap();
        }
        std::fs::remove_dir_all(&root).unwrap();
    }

    /// A flag's path is from the working directory: it/paths.rs.
    #[test]
    fn config_file_paths_are_from_the_root() {
        let root = scratch("paths");
        let text = "overrides = \"mine/overrides.json\"\n[file]\nstore = \"mine/store.json\"\n";
        write(&root, ".local/secrets.toml", text);
        let cfg = loaded(&root, &[]);
        assert_eq!(cfg.abs(&cfg.file_store.value), root.join("mine/store.json"));
        assert_eq!(cfg.shown(&cfg.overrides.value), "mine/overrides.json");
        assert_eq!(cfg.shown(&root.join("infra/../scripts/a.json")), "scripts/a.json");
        assert_eq!(normalize(Path::new("/a/b/../c/./d")), Path::new("/a/c/d"));
        std::fs::remove_dir_all(&root).unwrap();
    }

    #[test]
    fn child_deadlines_come_from_the_files() {
        let root = scratch("deadlines");
        let deadlines = |cfg: Config| {
            let pf = cfg.port_forward;
            (cfg.helmfile_sync_timeout, pf.start_timeout, pf.pod_wait, cfg.vault_timeout_secs)
        };
        let secs = Duration::from_secs_f64;
        let want = (secs(600.0), secs(30.0), secs(120.0), 15.0);
        assert_eq!(deadlines(loaded(&root, &[])), want);

        let repo = "[helmfile]\nsync_timeout_secs = 900\n[vault]\ntimeout_secs = 2.5\n\
                    [vault.port_forward]\nstart_timeout_secs = 5\npod_wait_secs = 60\n";
        write(&root, "secrets.toml", repo);
        let local =
            "[helmfile]\nsync_timeout_secs = 1200.5\n[vault.port_forward]\npod_wait_secs = 2.5\n";
        write(&root, ".local/secrets.toml", local);
        let want = (secs(1200.5), secs(5.0), secs(2.5), 2.5);
        assert_eq!(deadlines(loaded(&root, &[])), want);
        std::fs::remove_dir_all(&root).unwrap();
    }
}
