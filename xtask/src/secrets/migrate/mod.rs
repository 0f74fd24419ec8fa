//! `cargo xtask secrets migrate` and `rollback`: the command line. Each run
//! builds one [`plan::Plan`] (`plan.rs`), prints it for `--dry-run` or has
//! the engine (`engine.rs`) run its steps (`steps.rs`), journaled in
//! `journal.rs`.

mod engine;
pub mod plan;
mod steps;

use std::cell::{OnceCell, RefCell};
use std::io::IsTerminal;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::{bail, Context, Result};

pub use plan::Step;
pub use steps::flag_fits;

use crate::fsutil::Lock;
use crate::secrets::config::{self, Config, FlagValues, ProviderKind};
use crate::secrets::fixtures::{self, SecretSet};
use crate::secrets::flagfile;
use crate::secrets::journal::{self, Journal};
use crate::secrets::provider::{self, SecretProvider};
use crate::{flags, project, project_root};
use plan::{Decision, Request};

/// How long to wait for ExternalSecrets.
#[derive(Debug, Clone, Copy)]
pub struct Wait {
    pub attempts: u32,
    pub sleep: Duration,
}

impl Wait {
    /// Flags first, then EXTERNALSECRET_WAIT_ATTEMPTS / EXTERNALSECRET_WAIT_SLEEP, then 60 x 5 s.
    pub fn resolve(attempts: Option<u32>, sleep: Option<f64>) -> Result<Wait> {
        let env_num = |name: &str| -> Result<Option<f64>> {
            match std::env::var(name) {
                Ok(v) if !v.trim().is_empty() => v.trim().parse::<f64>().map(Some).map_err(|_| {
                    anyhow::Error::new(crate::UsageError(format!("{name}={v:?} is not a number")))
                }),
                _ => Ok(None),
            }
        };
        let attempts = match attempts {
            Some(a) => a,
            None => env_num("EXTERNALSECRET_WAIT_ATTEMPTS")?
                .map(|a| a as u32)
                .unwrap_or(60),
        };
        let sleep = match sleep {
            Some(s) => s,
            None => env_num("EXTERNALSECRET_WAIT_SLEEP")?.unwrap_or(5.0),
        };
        if attempts == 0 || !(0.0..=600.0).contains(&sleep) {
            crate::usage!("wait attempts must be at least 1 and the sleep 0 to 600 seconds");
        }
        Ok(Wait {
            attempts,
            sleep: Duration::from_secs_f64(sleep),
        })
    }
}

/// Where in a step a run can be stopped: before it, after its effect and
/// before its journal record, or after that record was saved.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum At {
    Before,
    AfterEffect,
    AfterRecord,
}

/// The tests' interruption point, `XTASK_TEST_STOP_AT=<step>:<before|after-effect|after-record>`:
/// the run has `kill -s KILL` stop it there, as `kill -9` or a closed laptop
/// would (no destructor runs, nothing more is written). Read once, when the
/// command starts; a value that names no point is a usage error.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StopAt {
    step: Step,
    at: At,
}

impl StopAt {
    const VAR: &'static str = "XTASK_TEST_STOP_AT";

    fn from_env() -> Result<Option<StopAt>> {
        let Ok(value) = std::env::var(Self::VAR) else {
            return Ok(None);
        };
        let parsed = value.split_once(':').and_then(|(step, at)| {
            let step = Step::ALL.into_iter().find(|s| s.as_str() == step)?;
            let at = match at {
                "before" => At::Before,
                "after-effect" => At::AfterEffect,
                "after-record" => At::AfterRecord,
                _ => return None,
            };
            Some(StopAt { step, at })
        });
        match parsed {
            Some(stop) => Ok(Some(stop)),
            None => crate::usage!(
                "{}={value:?} names no point: <step>:<before|after-effect|after-record>",
                Self::VAR
            ),
        }
    }
}

/// What every step of one run shares: the configuration, loaded once, and
/// the target store and fixtures, opened once on first use.
pub struct Ctx {
    root: PathBuf,
    env: String,
    flag_rel: String,
    wait: Wait,
    allow_non_local: Option<String>,
    cfg: Config,
    store: RefCell<Option<Box<dyn SecretProvider>>>,
    desired: OnceCell<SecretSet>,
    stop_at: Option<StopAt>,
}

impl Ctx {
    /// Runs `f` with the target store, opening it on first use (a
    /// port-forward is started once).
    fn with_store<T>(&self, f: impl FnOnce(&mut dyn SecretProvider) -> Result<T>) -> Result<T> {
        let mut slot = self.store.borrow_mut();
        if slot.is_none() {
            *slot = Some(provider::open(&self.cfg, self.allow_non_local.as_deref())?);
        }
        f(slot.as_mut().expect("opened above").as_mut())
    }

    /// The fixtures and overrides, loaded on first use.
    fn desired(&self) -> Result<&SecretSet> {
        if let Some(set) = self.desired.get() {
            return Ok(set);
        }
        let (_, set) = fixtures::load_configured(&self.cfg)?;
        Ok(self.desired.get_or_init(|| set))
    }

    fn flag_path(&self) -> PathBuf {
        self.root.join(&self.flag_rel)
    }

    fn read_flag(&self) -> Result<String> {
        std::fs::read_to_string(self.flag_path())
            .with_context(|| format!("reading {}: is --env {} right?", self.flag_rel, self.env))
    }

    /// The provider the flag file names now, or `?` when it cannot be read.
    fn flag_now(&self) -> String {
        self.read_flag()
            .ok()
            .and_then(|t| flagfile::provider(&t, &self.flag_rel).ok())
            .map_or("?".into(), |p| p.as_str().into())
    }

    /// The tests' interruption point ([`StopAt`]): dies here if it is this one.
    fn stop(&self, step: Step, at: At) {
        if self.stop_at == Some(StopAt { step, at }) {
            // kill(1), a child like any other: SIGKILL lands while we wait for it.
            let pid = std::process::id().to_string();
            let _ = crate::process::Tool::new("kill")
                .args(["-s", "KILL", &pid])
                .run();
            std::process::abort();
        }
    }
}

fn parse_target(value: &str) -> Result<ProviderKind> {
    match ProviderKind::parse(value) {
        Some(p @ (ProviderKind::Vault | ProviderKind::Azure)) => Ok(p),
        Some(ProviderKind::File) => crate::usage!(
            "the file store is not a cluster store; for a cluster without Vault use `seed --provider file --render eso-fake`"
        ),
        None => crate::usage!("unknown provider {value:?}: use vault or azure"),
    }
}

fn confirm(yes: bool, question: &str) -> Result<()> {
    if yes {
        return Ok(());
    }
    if !std::io::stdin().is_terminal() {
        crate::usage!("{question} Pass --yes to confirm when not running in a terminal.");
    }
    eprint!("{question} [y/N] ");
    let mut answer = String::new();
    std::io::stdin().read_line(&mut answer)?;
    if !matches!(answer.trim(), "y" | "Y" | "yes") {
        bail!("cancelled; nothing changed");
    }
    Ok(())
}

/// What both commands pass on.
struct Common<'a> {
    env: Option<&'a str>,
    wait: Wait,
    allow_non_local: Option<&'a str>,
    dry_run: bool,
    yes: bool,
}

pub fn run_migrate(flags: &flags::Migrate) -> Result<()> {
    let request = Request::Migrate {
        to: flags.to.as_deref().map(parse_target).transpose()?,
        resume: flags.resume,
        auto_rollback: !flags.no_rollback,
    };
    run(
        request,
        Common {
            env: flags.env.as_deref(),
            wait: Wait::resolve(flags.wait_attempts, flags.wait_sleep)?,
            allow_non_local: flags.allow_non_local.as_deref(),
            dry_run: flags.dry_run,
            yes: flags.yes,
        },
    )
}

pub fn run_rollback(flags: &flags::Rollback) -> Result<()> {
    let request = Request::Rollback {
        to: flags.to.as_deref().map(parse_target).transpose()?,
        resume: flags.resume,
    };
    run(
        request,
        Common {
            env: flags.env.as_deref(),
            wait: Wait::resolve(flags.wait_attempts, flags.wait_sleep)?,
            allow_non_local: None,
            dry_run: flags.dry_run,
            yes: flags.yes,
        },
    )
}

fn run(request: Request, c: Common<'_>) -> Result<()> {
    let stop_at = StopAt::from_env()?;
    let root = project_root();
    let env = c.env.unwrap_or("local").to_string();
    let flag_rel = project::flag_file(&env).display().to_string();
    let text = std::fs::read_to_string(root.join(&flag_rel))
        .with_context(|| format!("reading {flag_rel}: is --env {env} right?"))?;
    let flag_now = flagfile::provider(&text, &flag_rel)?;
    // The lock is held from the plan to the last step; a dry run takes none.
    let _lock = if c.dry_run {
        None
    } else {
        Some(Lock::acquire(
            &journal::lock_path(&root, &env),
            &format!("migration of {env}"),
        )?)
    };
    let mut journal = Journal::load(&root, &env)?;
    let plan = match plan::build(request, &env, flag_now, &journal)? {
        Decision::Run(plan) => plan,
        Decision::Nothing(why) => {
            println!("{why} ({flag_rel})");
            return Ok(());
        }
    };
    let cfg = config::load(&FlagValues {
        provider: Some(plan.to.as_str().into()),
        ..FlagValues::default()
    })?;
    let ctx = Ctx {
        root,
        env,
        flag_rel,
        wait: c.wait,
        allow_non_local: c.allow_non_local.map(String::from),
        cfg,
        store: RefCell::new(None),
        desired: OnceCell::new(),
        stop_at,
    };
    if c.dry_run {
        print!("{}", engine::render(&ctx, &plan, &text)?);
        return Ok(());
    }
    confirm(c.yes, &format!("{}?", plan.title))?;
    engine::execute(&ctx, &mut journal, &plan)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wait_settings_come_from_flags_then_env() {
        let w = Wait::resolve(Some(3), Some(0.5)).unwrap();
        assert_eq!((w.attempts, w.sleep), (3, Duration::from_millis(500)));
        assert!(Wait::resolve(Some(0), None).is_err());
        assert!(parse_target("file")
            .unwrap_err()
            .downcast_ref::<crate::UsageError>()
            .is_some());
        assert_eq!(parse_target("azure").unwrap(), ProviderKind::Azure);
    }
}
