//! `cargo xtask secrets migrate` and `rollback`: the command line. Each run
//! builds one [`plan::Plan`] (`plan.rs`), prints it for `--dry-run` or has
//! the engine (`engine.rs`) run its steps (`steps.rs`), journaled in
//! `journal.rs`.

mod ctx;
mod engine;
pub mod journal;
mod plan;
mod steps;

use std::cell::{OnceCell, RefCell};
use std::io::IsTerminal;

use anyhow::{bail, Context, Result};

use crate::flags;
use crate::fsutil::Lock;
use crate::project::{self, Process};
use crate::secrets::config::{Config, FlagValues, ProviderKind};
use crate::secrets::flagfile;
use ctx::{Ctx, StopAt};
use journal::Journal;
use plan::{Decision, Request};

fn cluster_store(to: ProviderKind) -> Result<ProviderKind> {
    match to {
        ProviderKind::Vault | ProviderKind::Azure => Ok(to),
        ProviderKind::File => crate::usage!(
            "the file store is not a cluster store; for a cluster without Vault use `seed --provider file --render eso-fake`"
        ),
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
    wait_attempts: Option<u32>,
    wait_sleep: Option<f64>,
    process: &'a Process,
    allow_non_local: Option<&'a str>,
    dry_run: bool,
    yes: bool,
}

pub fn run_migrate(flags: &flags::Migrate, process: &Process) -> Result<()> {
    let request = Request::Migrate {
        to: flags.to.map(cluster_store).transpose()?,
        resume: flags.resume,
        auto_rollback: !flags.no_rollback,
    };
    run(
        request,
        Common {
            env: flags.env.as_deref(),
            wait_attempts: flags.wait_attempts,
            wait_sleep: flags.wait_sleep,
            process,
            allow_non_local: flags.allow_non_local.as_deref(),
            dry_run: flags.dry_run,
            yes: flags.yes,
        },
    )
}

pub fn run_rollback(flags: &flags::Rollback, process: &Process) -> Result<()> {
    let request = Request::Rollback {
        to: flags.to.map(cluster_store).transpose()?,
        resume: flags.resume,
    };
    run(
        request,
        Common {
            env: flags.env.as_deref(),
            wait_attempts: flags.wait_attempts,
            wait_sleep: flags.wait_sleep,
            process,
            allow_non_local: None,
            dry_run: flags.dry_run,
            yes: flags.yes,
        },
    )
}

fn run(request: Request, c: Common<'_>) -> Result<()> {
    let stop_at = StopAt::from(c.process)?;
    let root = c.process.root.clone();
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
    let cfg = Config::load(
        c.process,
        &FlagValues {
            provider: Some(plan.to),
            wait_attempts: c.wait_attempts,
            wait_sleep: c.wait_sleep,
            ..FlagValues::default()
        },
    )?;
    let ctx = Ctx {
        root,
        env,
        flag_rel,
        wait: cfg.wait,
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
    fn only_cluster_stores_are_targets() {
        assert!(cluster_store(ProviderKind::File)
            .unwrap_err()
            .downcast_ref::<crate::UsageError>()
            .is_some());
        assert_eq!(
            cluster_store(ProviderKind::Azure).unwrap(),
            ProviderKind::Azure
        );
    }
}
