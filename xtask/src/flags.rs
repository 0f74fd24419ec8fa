//! Command-line flags. The doc comments below are the `--help` text; values
//! with a fixed set of names are enums declared with [`named!`].

use std::path::PathBuf;

/// An enum whose variants each have one name, which `as_str`, `ALL`,
/// `Display`, `FromStr` (listing the known names) and serde all read.
#[macro_export]
macro_rules! named {
    ($(#[$meta:meta])* $vis:vis enum $name:ident ($what:literal) {
        $($(#[$vmeta:meta])* $variant:ident = $text:literal,)+
    }) => {
        $(#[$meta])*
        #[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
        $vis enum $name { $($(#[$vmeta])* $variant,)+ }

        impl $name {
            $vis const ALL: &'static [$name] = &[$($name::$variant,)+];

            $vis fn as_str(self) -> &'static str {
                match self { $($name::$variant => $text,)+ }
            }
        }

        impl std::fmt::Display for $name {
            fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str(self.as_str())
            }
        }

        impl std::str::FromStr for $name {
            type Err = String;
            fn from_str(s: &str) -> Result<$name, String> {
                $name::ALL.iter().copied().find(|v| v.as_str() == s).ok_or_else(|| {
                    let names: Vec<&str> = $name::ALL.iter().map(|v| v.as_str()).collect();
                    format!("{s:?} is not a {}: use {}", $what, names.join(", "))
                })
            }
        }

        impl serde::Serialize for $name {
            fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
                s.serialize_str(self.as_str())
            }
        }

        impl<'de> serde::Deserialize<'de> for $name {
            fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<$name, D::Error> {
                let text = <std::borrow::Cow<'de, str>>::deserialize(d)?;
                text.parse().map_err(serde::de::Error::custom)
            }
        }
    };
}

named! {
    /// `--output`: what a command prints.
    pub(crate) enum Format ("format") {
        Text = "text",
        Json = "json",
        Junit = "junit",
    }
}

named! {
    /// `seed --render`: the manifests written beside the file store.
    pub(crate) enum RenderKind ("kind of manifest") {
        EsoFake = "eso-fake",
        Secrets = "secrets",
    }
}

named! {
    /// A class of `check` finding that `--fail-on` can make fail the run.
    pub(crate) enum FailClass ("class of finding") {
        Missing = "missing",
        Drift = "drift",
        Unused = "unused",
    }
}

/// `--fail-on`: comma-separated [`FailClass`]es; `missing` by default.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct FailOn(pub std::collections::BTreeSet<FailClass>);

impl Default for FailOn {
    fn default() -> FailOn {
        FailOn([FailClass::Missing].into())
    }
}

impl std::str::FromStr for FailOn {
    type Err = String;
    fn from_str(s: &str) -> Result<FailOn, String> {
        let parts = s.split(',').map(str::trim).filter(|p| !p.is_empty());
        parts.map(str::parse).collect::<Result<_, _>>().map(FailOn)
    }
}

/// How much a command prints: `-q`, neither, or `-v`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Verbosity {
    Quiet,
    Normal,
    Verbose,
}

/// `verbosity()` of the commands with `-q` and `-v`.
macro_rules! verbosity {
    ($($cmd:ident),+) => {$(
        impl $cmd {
            pub(crate) fn verbosity(&self) -> Verbosity {
                match (self.quiet, self.verbose) {
                    (true, _) => Verbosity::Quiet,
                    (_, true) => Verbosity::Verbose,
                    _ => Verbosity::Normal,
                }
            }
        }
    )+};
}
verbosity!(Seed, Check);

impl Xtask {
    /// What xflags cannot check: flags that contradict each other, need
    /// another, or name an `--output` the command does not print. Exit 2.
    pub(crate) fn validate(&self) -> anyhow::Result<()> {
        let XtaskCmd::Secrets(secrets) = &self.subcommand else { return Ok(()) };
        const TEXT_JSON: &[Format] = &[Format::Text, Format::Json];
        let (quiet_verbose, output, formats) = match &secrets.subcommand {
            SecretsCmd::Seed(f) => {
                if f.render.is_some() && f.out.is_none() {
                    crate::usage!(
                        "--render needs --out PATH (a file, written with mode 0600), or --out - for standard output"
                    );
                }
                if f.render.is_none() && f.out.is_some() {
                    crate::usage!("--out goes with --render eso-fake|secrets");
                }
                (f.quiet && f.verbose, f.output, TEXT_JSON)
            }
            SecretsCmd::Check(f) => (f.quiet && f.verbose, f.output, Format::ALL),
            SecretsCmd::Status(f) => (false, f.output, TEXT_JSON),
            _ => return Ok(()),
        };
        if quiet_verbose {
            crate::usage!("--quiet and --verbose contradict each other: pass one of them");
        }
        if let Some(format) = output.filter(|f| !formats.contains(f)) {
            let names = formats.iter().map(|f| f.as_str()).collect::<Vec<_>>().join(", ");
            crate::usage!("--output {format} is not supported here: use {names}");
        }
        Ok(())
    }
}

named! {
    /// Which store the seed writes to and `check --live` reads.
    pub enum ProviderKind ("provider") {
        Vault = "vault",
        File = "file",
        Azure = "azure",
    }
}

xflags::xflags! {
    src "./src/flags.rs"

    /// Repository automation for the Ameide monorepo.
    ///
    /// Exit codes: 0 ok, 1 failed, 2 usage error, 3 partial (some writes
    /// landed, some did not: re-run to finish).
    cmd xtask {
        /// Install the pinned tools (bao, kubectl, helm, helmfile) into .tools/bin.
        ///
        /// Example: cargo xtask tools
        cmd tools {
            /// Report what is installed and where; install nothing.
            optional --check
        }

        /// Install the tools, then run fmt, clippy, a short fuzz and every test (what CI runs).
        ///
        /// Example: cargo xtask test -- seed
        cmd test {
            /// Arguments passed through to `cargo test` (a test name filter, say).
            repeated args: String
        }

        /// Fuzz the fixture parser, manifest scanner and flag editor (cargo fuzz, nightly).
        ///
        /// Example: cargo xtask fuzz --seconds 60 --target flag_editor
        cmd fuzz {
            /// Seconds per target (default: 10).
            optional --seconds n: u64
            /// Only this target: fixtures, manifests or flag_editor.
            optional --target name: String
        }

        /// Benchmarks: seed and check throughput against a local OpenBao.
        ///
        /// Example: cargo xtask bench --secrets 1000
        cmd bench {
            /// How many synthetic secrets to seed (default: 1000 and 10000).
            repeated --secrets n: usize
            /// Requests in flight at once (default: 16).
            optional --concurrency n: usize
        }

        /// Local secret stores: seed, check coverage, migrate between Azure Key Vault and Vault.
        cmd secrets {
            /// Load the fixtures into the local store (Vault, a file store, or Azure Key Vault).
            ///
            /// Examples:
            ///   cargo xtask secrets seed --provider file
            ///   cargo xtask secrets seed --dry-run
            ///   VAULT_ADDR=http://127.0.0.1:8200 cargo xtask secrets seed --provider vault
            cmd seed {
                /// vault (default), file or azure.
                optional --provider provider: ProviderKind
                /// Environment the store serves; fixtures only ever go to local.
                optional --env env: String
                /// Fixtures file, from the working directory (default: scripts/azure/default-local-keyvault-secrets.json).
                optional --fixtures path: PathBuf
                /// Your own values on top of the fixtures (default: .local/secrets/overrides.json).
                optional --overrides path: PathBuf
                /// Vault KV mount (default: secret); not with --provider file.
                optional --mount mount: String
                /// Print the plan and stop; write nothing.
                optional --dry-run
                /// Overwrite entries that were changed outside the seed (conflicts).
                optional --force
                /// Requests in flight at once (default: 16).
                optional --concurrency n: usize
                /// text (default) or json.
                optional --output format: Format
                /// Allow a Vault that is not local, or a loopback one under a non-local kube context: its exact host.
                optional --allow-non-local host: String
                /// File provider: also write manifests, eso-fake or secrets.
                optional --render kind: RenderKind
                /// Where --render writes (mode 0600), from the working directory; '-' for standard output.
                optional --out path: PathBuf
                /// Print only the summary and errors (not with --verbose).
                optional -q, --quiet
                /// Print every entry, unchanged ones too.
                optional -v, --verbose
            }

            /// Prove that every key the charts need exists in the fixtures (and with --live, in the store).
            ///
            /// Examples:
            ///   cargo xtask secrets check
            ///   cargo xtask secrets check --render --env local
            ///   cargo xtask secrets check --live --fail-on missing,drift
            ///   cargo xtask secrets check --live --as-eso
            cmd check {
                /// Environment to check (default: local).
                optional --env env: String
                /// Use real `helmfile template` output instead of the static scan.
                optional --render
                /// Also compare against the live store.
                optional --live
                /// Also read Vault as ESO would (implies --live): a token with only the role's policies must read every key and write none.
                optional --as-eso
                /// Store to compare with --live: vault, file or azure.
                optional --provider provider: ProviderKind
                /// Fixtures file, from the working directory (default: scripts/azure/default-local-keyvault-secrets.json).
                optional --fixtures path: PathBuf
                /// Your own values on top of the fixtures (default: .local/secrets/overrides.json).
                optional --overrides path: PathBuf
                /// Infra tree to scan, from the working directory (default: infra/kubernetes).
                optional --infra path: PathBuf
                /// Vault KV mount for --live (default: secret).
                optional --mount mount: String
                /// Allow a Vault that is not local, or a loopback one under a non-local kube context: its exact host.
                optional --allow-non-local host: String
                /// text (default), json or junit.
                optional --output format: Format
                /// Comma-separated: missing, drift, unused (default: missing).
                optional --fail-on list: FailOn
                /// Print only the summary and problems (not with --verbose).
                optional -q, --quiet
                /// Also list every satisfied key.
                optional -v, --verbose
            }

            /// Move a cluster's ClusterSecretStore/ameide-vault to another provider, journaled.
            ///
            /// Examples:
            ///   cargo xtask secrets migrate --to vault --dry-run
            ///   cargo xtask secrets migrate --to vault --yes
            ///   cargo xtask secrets migrate --resume --yes
            cmd migrate {
                /// Target provider: vault or azure.
                optional --to provider: ProviderKind
                /// Environment (default: local).
                optional --env env: String
                /// Print the plan (every step, command and the flag file diff); change nothing.
                optional --dry-run
                /// Do not ask for confirmation.
                optional --yes
                /// Continue an unfinished migration from its journal.
                optional --resume
                /// On failure after the flag flip, leave things as they are.
                optional --no-rollback
                /// Polls while waiting for ExternalSecrets (env EXTERNALSECRET_WAIT_ATTEMPTS, default 60).
                optional --wait-attempts n: u32
                /// Seconds between polls (env EXTERNALSECRET_WAIT_SLEEP, default 5).
                optional --wait-sleep secs: f64
                /// Allow a Vault that is not local, or a loopback one under a non-local kube context: its exact host.
                optional --allow-non-local host: String
            }

            /// Undo the last migration, or go to an explicit provider with the rollback's steps.
            ///
            /// Examples:
            ///   cargo xtask secrets rollback --yes
            ///   cargo xtask secrets rollback --to azure --yes
            ///   cargo xtask secrets rollback --resume --yes
            cmd rollback {
                /// Environment (default: local).
                optional --env env: String
                /// Go to this provider instead of the journal's previous one.
                optional --to provider: ProviderKind
                /// Do not ask for confirmation.
                optional --yes
                /// Finish a rollback that failed (re-run sync and wait on the restored flag).
                optional --resume
                /// Print the plan; change nothing.
                optional --dry-run
                /// Polls while waiting for ExternalSecrets (env EXTERNALSECRET_WAIT_ATTEMPTS, default 60).
                optional --wait-attempts n: u32
                /// Seconds between polls (env EXTERNALSECRET_WAIT_SLEEP, default 5).
                optional --wait-sleep secs: f64
            }

            /// Check everything the local secret flow needs, each finding with its fix.
            ///
            /// Example: cargo xtask secrets doctor
            cmd doctor {
                /// Environment (default: local).
                optional --env env: String
            }

            /// Show the provider flag per environment, the last migration, Vault health and config sources.
            ///
            /// Example: cargo xtask secrets status
            cmd status {
                /// Environment (default: local).
                optional --env env: String
                /// text (default) or json.
                optional --output format: Format
            }
        }
    }
}
// generated start
// The following code is generated by `xflags` macro.
// Run `env UPDATE_XFLAGS=1 cargo build` to regenerate.
#[derive(Debug)]
pub struct Xtask {
    pub subcommand: XtaskCmd,
}

#[derive(Debug)]
pub enum XtaskCmd {
    Tools(Tools),
    Test(Test),
    Fuzz(Fuzz),
    Bench(Bench),
    Secrets(Secrets),
}

#[derive(Debug)]
pub struct Tools {
    pub check: bool,
}

#[derive(Debug)]
pub struct Test {
    pub args: Vec<String>,
}

#[derive(Debug)]
pub struct Fuzz {
    pub seconds: Option<u64>,
    pub target: Option<String>,
}

#[derive(Debug)]
pub struct Bench {
    pub secrets: Vec<usize>,
    pub concurrency: Option<usize>,
}

#[derive(Debug)]
pub struct Secrets {
    pub subcommand: SecretsCmd,
}

#[derive(Debug)]
pub enum SecretsCmd {
    Seed(Seed),
    Check(Check),
    Migrate(Migrate),
    Rollback(Rollback),
    Doctor(Doctor),
    Status(Status),
}

#[derive(Debug)]
pub struct Seed {
    pub provider: Option<ProviderKind>,
    pub env: Option<String>,
    pub fixtures: Option<PathBuf>,
    pub overrides: Option<PathBuf>,
    pub mount: Option<String>,
    pub dry_run: bool,
    pub force: bool,
    pub concurrency: Option<usize>,
    pub output: Option<Format>,
    pub allow_non_local: Option<String>,
    pub render: Option<RenderKind>,
    pub out: Option<PathBuf>,
    pub quiet: bool,
    pub verbose: bool,
}

#[derive(Debug)]
pub struct Check {
    pub env: Option<String>,
    pub render: bool,
    pub live: bool,
    pub as_eso: bool,
    pub provider: Option<ProviderKind>,
    pub fixtures: Option<PathBuf>,
    pub overrides: Option<PathBuf>,
    pub infra: Option<PathBuf>,
    pub mount: Option<String>,
    pub allow_non_local: Option<String>,
    pub output: Option<Format>,
    pub fail_on: Option<FailOn>,
    pub quiet: bool,
    pub verbose: bool,
}

#[derive(Debug)]
pub struct Migrate {
    pub to: Option<ProviderKind>,
    pub env: Option<String>,
    pub dry_run: bool,
    pub yes: bool,
    pub resume: bool,
    pub no_rollback: bool,
    pub wait_attempts: Option<u32>,
    pub wait_sleep: Option<f64>,
    pub allow_non_local: Option<String>,
}

#[derive(Debug)]
pub struct Rollback {
    pub env: Option<String>,
    pub to: Option<ProviderKind>,
    pub yes: bool,
    pub resume: bool,
    pub dry_run: bool,
    pub wait_attempts: Option<u32>,
    pub wait_sleep: Option<f64>,
}

#[derive(Debug)]
pub struct Doctor {
    pub env: Option<String>,
}

#[derive(Debug)]
pub struct Status {
    pub env: Option<String>,
    pub output: Option<Format>,
}

impl Xtask {
    #[allow(dead_code)]
    pub fn from_env_or_exit() -> Self {
        Self::from_env_or_exit_()
    }

    #[allow(dead_code)]
    pub fn from_env() -> xflags::Result<Self> {
        Self::from_env_()
    }

    #[allow(dead_code)]
    pub fn from_vec(args: Vec<std::ffi::OsString>) -> xflags::Result<Self> {
        Self::from_vec_(args)
    }
}
// generated end

#[cfg(test)]
mod tests {
    use super::*;

    /// `named!` gives each enum one table: every name parses back, prints,
    /// and is its JSON spelling; a wrong name lists the right ones.
    fn one_table<T>(all: &[T])
    where
        T: Copy + PartialEq + std::fmt::Debug + std::fmt::Display + std::str::FromStr<Err = String>,
        T: serde::Serialize + serde::de::DeserializeOwned,
    {
        for &v in all {
            let name = v.to_string();
            assert_eq!(name.parse::<T>(), Ok(v));
            assert_eq!(serde_json::to_string(&v).unwrap(), format!("{name:?}"));
            assert_eq!(serde_json::from_str::<T>(&format!("{name:?}")).unwrap(), v);
        }
        let err = "nope".parse::<T>().unwrap_err();
        assert!(all.iter().all(|v| err.contains(&v.to_string())), "{err}");
    }

    #[test]
    fn every_name_has_one_table() {
        one_table(Format::ALL);
        one_table(RenderKind::ALL);
        one_table(FailClass::ALL);
        one_table(ProviderKind::ALL);
        one_table(crate::secrets::migrate::journal::Step::ALL);
    }
}
