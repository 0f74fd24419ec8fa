//! Effective configuration, and where each value came from.
//!
//! Precedence, highest first: command-line flag; environment
//! (`SECRETS_PROVIDER`, `VAULT_ADDR`, `VAULT_TOKEN`, `VAULT_NAMESPACE`);
//! the developer's git-ignored `.local/secrets.toml`; the committed
//! `secrets.toml`; built-in defaults. The Vault token may also come from
//! `~/.vault-token`, and never from a committed file.
//!
//! Paths: one given on the command line or in the environment is relative
//! to the working directory, as with every CLI; one in `secrets.toml` or
//! `.local/secrets.toml` is relative to the repository root. Output shows
//! paths relative to the root ([`Config::shown`]).

use std::fmt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{bail, Context, Result};
use serde::Deserialize;

pub use crate::flags::ProviderKind;
use crate::project::{self, from_cwd, normalize, shown_from};

/// Where a configuration value came from.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Source {
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
pub struct Setting<T> {
    pub value: T,
    pub source: Source,
}

/// A secret string: its Debug and Display never show it.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(String);

impl Secret {
    pub fn new(s: String) -> Secret {
        Secret(s)
    }
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Secret(<redacted>)")
    }
}

/// A Vault address. It may carry a user and password
/// (`http://user:pass@host`, sent as HTTP basic auth): `Display`, `Debug`
/// and `Serialize` show them as `***` ([`shown_addr`]); the
/// address to connect to is [`VaultAddr::expose`] (or the `str` it derefs
/// to). Never `to_string()` it to connect: that is the shown form.
#[derive(Clone, PartialEq, Eq)]
pub struct VaultAddr(String);

impl VaultAddr {
    pub fn new(addr: String) -> VaultAddr {
        VaultAddr(addr)
    }
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl std::ops::Deref for VaultAddr {
    type Target = str;
    fn deref(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for VaultAddr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&shown_addr(&self.0))
    }
}

impl fmt::Debug for VaultAddr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "VaultAddr({self})")
    }
}

impl serde::Serialize for VaultAddr {
    fn serialize<S: serde::Serializer>(&self, s: S) -> std::result::Result<S::Ok, S::Error> {
        s.serialize_str(&self.to_string())
    }
}

/// The layout of `secrets.toml` and `.local/secrets.toml`.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct FileConfig {
    provider: Option<String>,
    fixtures: Option<PathBuf>,
    overrides: Option<PathBuf>,
    concurrency: Option<usize>,
    #[serde(default)]
    vault: VaultFile,
    #[serde(default)]
    file: FileFile,
    #[serde(default)]
    azure: AzureFile,
    #[serde(default)]
    guardrail: GuardrailFile,
    #[serde(default)]
    helmfile: HelmfileFile,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct VaultFile {
    addr: Option<String>,
    token: Option<String>,
    namespace: Option<String>,
    ca_cert: Option<PathBuf>,
    mount: Option<String>,
    timeout_secs: Option<f64>,
    retries: Option<u32>,
    #[serde(default)]
    port_forward: PortForwardFile,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct PortForwardFile {
    namespace: Option<String>,
    service: Option<String>,
    port: Option<u16>,
    dev_root_token: Option<String>,
    start_timeout_secs: Option<f64>,
    pod_wait_secs: Option<f64>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct HelmfileFile {
    sync_timeout_secs: Option<f64>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct FileFile {
    store: Option<PathBuf>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct AzureFile {
    vault_name: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct GuardrailFile {
    local_contexts: Option<Vec<String>>,
}

/// Values the command line may set.
#[derive(Default)]
pub struct FlagValues {
    pub provider: Option<ProviderKind>,
    pub fixtures: Option<PathBuf>,
    pub overrides: Option<PathBuf>,
    pub mount: Option<String>,
    pub concurrency: Option<usize>,
}

#[derive(Clone, Debug)]
pub struct PortForward {
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

#[derive(Debug)]
pub struct Config {
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
}

/// The environment as a function, so tests can pass their own.
pub type EnvFn<'a> = &'a dyn Fn(&str) -> Option<String>;

pub fn process_env(name: &str) -> Option<String> {
    std::env::var(name).ok().filter(|v| !v.is_empty())
}

/// The one way a command loads its configuration: once, at its start, for
/// the repository it runs in. Everything after reads the [`Config`] it got.
pub fn load(flags: &FlagValues) -> Result<Config> {
    Config::load(&crate::project_root(), flags)
}

impl Config {
    /// Loads the configuration for the repository at `root`.
    pub fn load(root: &Path, flags: &FlagValues) -> Result<Config> {
        let home = std::env::var_os("HOME").map(PathBuf::from);
        Config::load_with(root, flags, &process_env, home.as_deref())
    }

    pub fn load_with(
        root: &Path,
        flags: &FlagValues,
        env: EnvFn<'_>,
        home: Option<&Path>,
    ) -> Result<Config> {
        let repo = read_file_config(&root.join(project::REPO_CONFIG))?;
        let local_path = root.join(project::LOCAL_DIR).join("secrets.toml");
        let local = read_file_config(&local_path)?;
        if repo.vault.token.is_some() {
            bail!(
                "{} sets vault.token: a committed file must never hold a token. Remove it; put it in \
                 .local/secrets.toml (git-ignored) or VAULT_TOKEN.",
                project::REPO_CONFIG
            );
        }

        // One value through the layers: flag, env, local file, repo file, default.
        fn pick<T: Clone>(
            flag: Option<(T, &'static str)>,
            env: Option<(T, &'static str)>,
            local: Option<T>,
            repo: Option<T>,
        ) -> Option<Setting<T>> {
            if let Some((value, name)) = flag {
                return Some(Setting {
                    value,
                    source: Source::Flag(name),
                });
            }
            if let Some((value, name)) = env {
                return Some(Setting {
                    value,
                    source: Source::Env(name),
                });
            }
            if let Some(value) = local {
                return Some(Setting {
                    value,
                    source: Source::LocalFile,
                });
            }
            repo.map(|value| Setting {
                value,
                source: Source::RepoFile,
            })
        }
        fn or_builtin<T>(s: Option<Setting<T>>, value: T) -> Setting<T> {
            s.unwrap_or(Setting {
                value,
                source: Source::Builtin,
            })
        }

        let provider_raw = or_builtin(
            pick(
                flags.provider.map(|v| (v.to_string(), "--provider")),
                env("SECRETS_PROVIDER").map(|v| (v, "SECRETS_PROVIDER")),
                local.provider.clone(),
                repo.provider.clone(),
            ),
            "vault".to_string(),
        );
        let Some(kind) = provider_raw.value.parse::<ProviderKind>().ok() else {
            return Err(bad_value(
                &provider_raw.source,
                format!(
                    "unknown provider {:?} (from {}): use vault, file or azure",
                    provider_raw.value, provider_raw.source
                ),
            ));
        };
        let provider = Setting {
            value: kind,
            source: provider_raw.source,
        };
        if flags.mount.is_some() && provider.value != ProviderKind::Vault {
            crate::usage!(
                "--mount is a Vault KV mount, and the provider is {} (from {}): drop --mount, or use --provider vault",
                provider.value.as_str(),
                provider.source
            );
        }

        let fixtures = or_builtin(
            pick(
                flags
                    .fixtures
                    .as_deref()
                    .map(|v| (from_cwd(v), "--fixtures")),
                None,
                local.fixtures.clone(),
                repo.fixtures.clone(),
            ),
            PathBuf::from(project::DEFAULT_FIXTURES),
        );
        let overrides = or_builtin(
            pick(
                flags
                    .overrides
                    .as_deref()
                    .map(|v| (from_cwd(v), "--overrides")),
                None,
                local.overrides.clone(),
                repo.overrides.clone(),
            ),
            PathBuf::from(".local/secrets/overrides.json"),
        );
        let concurrency = or_builtin(
            pick(
                flags.concurrency.map(|v| (v, "--concurrency")),
                None,
                local.concurrency,
                repo.concurrency,
            ),
            16,
        );
        if concurrency.value == 0 || concurrency.value > 256 {
            return Err(bad_value(
                &concurrency.source,
                format!(
                    "concurrency must be 1 to 256, got {} (from {})",
                    concurrency.value, concurrency.source
                ),
            ));
        }
        let vault_addr = pick(
            None,
            env("VAULT_ADDR").map(|v| (VaultAddr(v), "VAULT_ADDR")),
            local.vault.addr.clone().map(VaultAddr),
            repo.vault.addr.clone().map(VaultAddr),
        );
        let mut vault_token = pick(
            None,
            env("VAULT_TOKEN").map(|v| (Secret(v), "VAULT_TOKEN")),
            local.vault.token.clone().map(Secret),
            None,
        );
        if vault_token.is_none() {
            if let Some(home) = home {
                let path = home.join(".vault-token");
                if let Ok(token) = std::fs::read_to_string(&path) {
                    let token = token.trim().to_string();
                    if !token.is_empty() {
                        vault_token = Some(Setting {
                            value: Secret(token),
                            source: Source::TokenFile(path),
                        });
                    }
                }
            }
        }
        let vault_namespace = pick(
            None,
            env("VAULT_NAMESPACE").map(|v| (v, "VAULT_NAMESPACE")),
            local.vault.namespace.clone(),
            repo.vault.namespace.clone(),
        );
        let vault_ca_cert = pick(
            None,
            env("VAULT_CACERT").map(|v| (from_cwd(Path::new(&v)), "VAULT_CACERT")),
            local.vault.ca_cert.clone(),
            repo.vault.ca_cert.clone(),
        );
        let vault_mount = or_builtin(
            pick(
                flags.mount.clone().map(|v| (v, "--mount")),
                None,
                local.vault.mount.clone(),
                repo.vault.mount.clone(),
            ),
            "secret".to_string(),
        );
        let mount = vault_mount.value.trim_matches('/');
        if mount.is_empty() || mount.contains("..") {
            return Err(bad_value(
                &vault_mount.source,
                format!(
                    "invalid Vault mount {:?} (from {}): name a KV mount such as secret",
                    vault_mount.value, vault_mount.source
                ),
            ));
        }
        let vault_mount = Setting {
            value: mount.to_string(),
            source: vault_mount.source,
        };
        let pf_local = &local.vault.port_forward;
        let pf_repo = &repo.vault.port_forward;
        let port_forward = PortForward {
            namespace: pf_local
                .namespace
                .clone()
                .or(pf_repo.namespace.clone())
                .unwrap_or_else(|| "vault".into()),
            service: pf_local
                .service
                .clone()
                .or(pf_repo.service.clone())
                .unwrap_or_else(|| "vault".into()),
            port: pf_local.port.or(pf_repo.port).unwrap_or(8200),
            dev_root_token: pf_local
                .dev_root_token
                .clone()
                .or(pf_repo.dev_root_token.clone())
                .unwrap_or_else(|| "root".into()),
            start_timeout: secs_setting(
                "vault.port_forward.start_timeout_secs",
                pf_local.start_timeout_secs,
                pf_repo.start_timeout_secs,
                30.0,
            )?,
            pod_wait: secs_setting(
                "vault.port_forward.pod_wait_secs",
                pf_local.pod_wait_secs,
                pf_repo.pod_wait_secs,
                120.0,
            )?,
        };
        let helmfile_sync_timeout = secs_setting(
            "helmfile.sync_timeout_secs",
            local.helmfile.sync_timeout_secs,
            repo.helmfile.sync_timeout_secs,
            600.0,
        )?;
        let file_store = or_builtin(
            pick(
                None,
                None,
                local.file.store.clone(),
                repo.file.store.clone(),
            ),
            PathBuf::from(".local/secrets/store.json"),
        );
        let azure_vault_name = pick(
            None,
            env("AZURE_KEYVAULT_NAME").map(|v| (v, "AZURE_KEYVAULT_NAME")),
            local.azure.vault_name.clone(),
            repo.azure.vault_name.clone(),
        );
        let local_contexts = local
            .guardrail
            .local_contexts
            .clone()
            .or(repo.guardrail.local_contexts.clone())
            .unwrap_or_else(|| {
                [
                    "k3d-*",
                    "kind-*",
                    "docker-desktop",
                    "minikube",
                    "rancher-desktop",
                    "orbstack",
                    "colima*",
                ]
                .map(String::from)
                .to_vec()
            });
        // Checked here: a negative, NaN or infinite value would panic where
        // the client turns it into a Duration.
        let vault_timeout_secs = secs_setting(
            "vault.timeout_secs",
            local.vault.timeout_secs,
            repo.vault.timeout_secs,
            15.0,
        )?
        .as_secs_f64();
        let vault_retries = local.vault.retries.or(repo.vault.retries).unwrap_or(8);
        Ok(Config {
            root: root.to_path_buf(),
            provider,
            fixtures,
            overrides,
            concurrency,
            vault_addr,
            vault_token,
            vault_namespace,
            vault_ca_cert,
            vault_mount,
            vault_timeout_secs,
            vault_retries,
            port_forward,
            helmfile_sync_timeout,
            file_store,
            azure_vault_name,
            local_contexts,
        })
    }

    /// The deadline of one `helmfile sync`: `helmfile.sync_timeout_secs`
    /// (default 600 s), after which helmfile is stopped.
    pub fn helmfile_sync_deadline(&self) -> Duration {
        self.helmfile_sync_timeout
    }

    /// A path from the configuration: flag and environment paths are
    /// already absolute (from the working directory); a config file's are
    /// relative to the repository root.
    pub fn abs(&self, p: &Path) -> PathBuf {
        if p.is_absolute() {
            normalize(p)
        } else {
            normalize(&self.root.join(p))
        }
    }

    /// A path as output shows it: relative to the repository root when inside it.
    pub fn shown(&self, p: &Path) -> String {
        shown_from(&self.root, &self.abs(p))
    }

    /// Every effective value with its source; the token by source only.
    pub fn describe(&self) -> Vec<(String, String, String)> {
        let mut rows = vec![
            (
                "provider".into(),
                self.provider.value.as_str().into(),
                self.provider.source.to_string(),
            ),
            (
                "fixtures".into(),
                self.shown(&self.fixtures.value),
                self.fixtures.source.to_string(),
            ),
            (
                "overrides".into(),
                self.shown(&self.overrides.value),
                self.overrides.source.to_string(),
            ),
            (
                "concurrency".into(),
                self.concurrency.value.to_string(),
                self.concurrency.source.to_string(),
            ),
        ];
        match &self.vault_addr {
            Some(s) => rows.push((
                "vault.addr".into(),
                s.value.to_string(),
                s.source.to_string(),
            )),
            None => rows.push((
                "vault.addr".into(),
                format!(
                    "(unset: port-forward svc/{} in namespace {})",
                    self.port_forward.service, self.port_forward.namespace
                ),
                Source::Builtin.to_string(),
            )),
        }
        match &self.vault_token {
            Some(s) => rows.push((
                "vault.token".into(),
                "(set, not shown)".into(),
                s.source.to_string(),
            )),
            None => rows.push((
                "vault.token".into(),
                "(unset: dev chart token with a port-forward)".into(),
                Source::Builtin.to_string(),
            )),
        }
        if let Some(s) = &self.vault_namespace {
            rows.push((
                "vault.namespace".into(),
                s.value.clone(),
                s.source.to_string(),
            ));
        }
        if let Some(s) = &self.vault_ca_cert {
            rows.push((
                "vault.ca_cert".into(),
                self.shown(&s.value),
                s.source.to_string(),
            ));
        }
        rows.push((
            "vault.mount".into(),
            self.vault_mount.value.clone(),
            self.vault_mount.source.to_string(),
        ));
        rows.push((
            "file.store".into(),
            self.shown(&self.file_store.value),
            self.file_store.source.to_string(),
        ));
        match &self.azure_vault_name {
            Some(s) => rows.push((
                "azure.vault_name".into(),
                s.value.clone(),
                s.source.to_string(),
            )),
            None => rows.push((
                "azure.vault_name".into(),
                "(unset)".into(),
                Source::Builtin.to_string(),
            )),
        }
        rows
    }
}

/// `addr` for messages: a user and password in it (`http://user:pass@host`,
/// which the client sends as basic auth) read `***` (`http://***@host`).
pub fn shown_addr(addr: &str) -> String {
    let (scheme, rest) = match addr.split_once("://") {
        Some((scheme, rest)) => (&addr[..scheme.len() + 3], rest),
        None => ("", addr),
    };
    let authority = &rest[..rest.find(['/', '?', '#']).unwrap_or(rest.len())];
    match authority.rfind('@') {
        Some(at) => format!("{scheme}***{}", &rest[at..]),
        None => addr.to_string(),
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

/// A timeout in seconds from `.local/secrets.toml`, else `secrets.toml`,
/// else the default: positive, finite, at most a day.
fn secs_setting(
    key: &str,
    local: Option<f64>,
    repo: Option<f64>,
    default: f64,
) -> Result<Duration> {
    let (secs, source) = match (local, repo) {
        (Some(v), _) => (v, Source::LocalFile),
        (None, Some(v)) => (v, Source::RepoFile),
        (None, None) => (default, Source::Builtin),
    };
    if !secs.is_finite() || secs <= 0.0 || secs > 86_400.0 {
        bail!(
            "{key} must be a number of seconds above 0 (up to 86400), got {secs} (from {source}): \
             fix it there, or remove it for the default of {default} s"
        );
    }
    Ok(Duration::from_secs_f64(secs))
}

fn read_file_config(path: &Path) -> Result<FileConfig> {
    let text = match std::fs::read_to_string(path) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(FileConfig::default()),
        Err(e) => return Err(e).with_context(|| format!("reading {}", path.display())),
    };
    // The error's position and message only: toml's own text quotes the
    // line, which may hold vault.token.
    toml::from_str(&text).map_err(|e| {
        let (line, col) = e.span().map_or((1, 1), |span| line_col(&text, span.start));
        anyhow::anyhow!(
            "{}:{line}:{col}: {}. Fix the file (see secrets.toml for the keys)",
            path.display(),
            e.message().trim_end()
        )
    })
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
        let env = |name: &str| (name == "SECRETS_PROVIDER").then(|| "file".to_string());
        let flags = FlagValues::default();
        let cfg = Config::load_with(&root, &flags, &env, None).unwrap();
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
        let cfg = Config::load_with(&root, &flags, &env, None).unwrap();
        assert_eq!(cfg.provider.value, ProviderKind::Vault);
        assert_eq!(cfg.provider.source, Source::Flag("--provider"));
        assert_eq!(cfg.vault_mount.value, "kv", "slashes are trimmed");
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
        let err = Config::load_with(&root, &FlagValues::default(), &|_| None, None).unwrap_err();
        assert!(err.to_string().contains("must never hold a token"), "{err}");
        assert!(!err.to_string().contains("s.committed"));

        std::fs::remove_file(root.join("secrets.toml")).unwrap();
        let home = root.join("home");
        std::fs::create_dir_all(&home).unwrap();
        std::fs::write(home.join(".vault-token"), "s.fromfile\n").unwrap();
        let cfg = Config::load_with(&root, &FlagValues::default(), &|_| None, Some(&home)).unwrap();
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
        let env =
            |name: &str| (name == "VAULT_ADDR").then(|| "http://u:pw-x@127.0.0.1:8200".into());
        let cfg = Config::load_with(&root, &FlagValues::default(), &env, None).unwrap();
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
            let err =
                Config::load_with(&root, &FlagValues::default(), &|_| None, None).unwrap_err();
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
        let err = Config::load_with(&root, &FlagValues::default(), &|_| None, None).unwrap_err();
        let msg = format!("{err:#}");
        assert!(
            msg.contains(".local/secrets.toml") && msg.contains("adress"),
            "{msg}"
        );

        std::fs::remove_file(root.join(".local/secrets.toml")).unwrap();
        // From SECRETS_PROVIDER: a usage error (exit 2), as the flag's is.
        let env = |name: &str| (name == "SECRETS_PROVIDER").then(|| "consul".to_string());
        let err = Config::load_with(&root, &FlagValues::default(), &env, None).unwrap_err();
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
        let cfg = Config::load_with(&root, &flags, &|_| None, None).unwrap();
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
        let cfg = Config::load_with(&root, &FlagValues::default(), &|_| None, None).unwrap();
        assert_eq!(cfg.helmfile_sync_deadline(), Duration::from_secs(600));
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
        let cfg = Config::load_with(&root, &FlagValues::default(), &|_| None, None).unwrap();
        assert_eq!(
            cfg.helmfile_sync_deadline(),
            Duration::from_secs_f64(1200.5)
        );
        assert_eq!(cfg.port_forward.start_timeout, Duration::from_secs(5));
        assert_eq!(cfg.port_forward.pod_wait, Duration::from_secs_f64(2.5));

        std::fs::write(
            root.join(".local/secrets.toml"),
            "[vault.port_forward]\npod_wait_secs = -1\n",
        )
        .unwrap();
        let err = Config::load_with(&root, &FlagValues::default(), &|_| None, None).unwrap_err();
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
        let err = Config::load_with(&root, &FlagValues::default(), &|_| None, None).unwrap_err();
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
        let cfg = Config::load_with(&root, &FlagValues::default(), &|_| None, None).unwrap();
        assert_eq!(cfg.vault_timeout_secs, 15.0);
        std::fs::write(root.join("secrets.toml"), "[vault]\ntimeout_secs = 2.5\n").unwrap();
        let cfg = Config::load_with(&root, &FlagValues::default(), &|_| None, None).unwrap();
        assert_eq!(cfg.vault_timeout_secs, 2.5);
        for (file, bad) in [
            ("secrets.toml", "-1"),
            (".local/secrets.toml", "nan"),
            (".local/secrets.toml", "inf"),
            (".local/secrets.toml", "0"),
        ] {
            std::fs::write(root.join(file), format!("[vault]\ntimeout_secs = {bad}\n")).unwrap();
            let err = Config::load_with(&root, &FlagValues::default(), &|_| None, None)
                .unwrap_err()
                .to_string();
            assert!(err.contains("vault.timeout_secs must be"), "{bad}: {err}");
            assert!(err.contains(&format!("(from {file})")), "{bad}: {err}");
        }
        std::fs::remove_dir_all(&root).unwrap();
    }
}
