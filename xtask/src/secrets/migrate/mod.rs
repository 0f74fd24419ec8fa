//! `cargo xtask secrets migrate` and `rollback`: each run builds one [`plan::Plan`], prints it
//! for `--dry-run` or runs its steps, journaling each outcome after the step finished.

mod ctx;
pub(crate) mod journal;
mod plan;
mod steps;

use std::fmt::Write as _;
use std::io::{IsTerminal, Write as _};
use std::time::Instant;

use anyhow::{anyhow, bail, ensure, Context, Error, Result};

use crate::flags;
use crate::fsutil::{now_rfc3339, Lock};
use crate::project::{self, Process};
use crate::secrets::config::{Config, FlagValues, ProviderKind};
use crate::secrets::flagfile;
use ctx::{At, Ctx};
use journal::{Event, Journal, Kind, Migration, Outcome, State, Step};
use plan::{Decision, Entry, OnFailure, Plan, Request};

fn cluster_store(to: ProviderKind) -> Result<ProviderKind> {
    if to == ProviderKind::File {
        crate::usage!(
            "the file store is not a cluster store; for a cluster without Vault use `seed --provider file --render eso-fake`"
        );
    }
    Ok(to)
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
    ensure!(matches!(answer.trim(), "y" | "Y" | "yes"), "cancelled; nothing changed");
    Ok(())
}

pub(crate) fn run_migrate(flags: &flags::Migrate, process: &Process) -> Result<()> {
    let to = flags.to.map(cluster_store).transpose()?;
    let request = Request::Migrate { to, resume: flags.resume, auto_rollback: !flags.no_rollback };
    run(request, flags, process)
}

pub(crate) fn run_rollback(flags: &flags::Rollback, process: &Process) -> Result<()> {
    let to = flags.to.map(cluster_store).transpose()?;
    let request = Request::Rollback { to, resume: flags.resume };
    // The flags a rollback shares with a migration; the rest stay unset.
    let shared = flags::Migrate {
        to,
        env: flags.env.clone(),
        dry_run: flags.dry_run,
        yes: flags.yes,
        resume: flags.resume,
        no_rollback: false,
        wait_attempts: flags.wait_attempts,
        wait_sleep: flags.wait_sleep,
        allow_non_local: None,
    };
    run(request, &shared, process)
}

/// Both commands; `request` says which, `c` carries the flags they share.
fn run(request: Request, c: &flags::Migrate, process: &Process) -> Result<()> {
    let stop_at = ctx::stop_at(process)?;
    let root = &process.root;
    let env = c.env.as_deref().unwrap_or("local");
    let flag_rel = project::flag_file(env).display().to_string();
    let text = std::fs::read_to_string(root.join(&flag_rel))
        .with_context(|| format!("reading {flag_rel}: is --env {env} right?"))?;
    let flag_now = flagfile::provider(&text, &flag_rel)?;
    // The lock is held from the plan to the last step; a dry run takes none.
    let lock_path = journal::path(root, env).with_extension("lock");
    let lock = || Lock::acquire(&lock_path, &format!("migration of {env}"));
    let _lock = if c.dry_run { None } else { Some(lock()?) };
    let mut journal = Journal::load(root, env)?;
    let plan = match plan::build(request, env, flag_now, &journal)? {
        Decision::Run(plan) => plan,
        Decision::Nothing(why) => {
            println!("{why} ({flag_rel})");
            return Ok(());
        }
    };
    let (provider, wait_attempts, wait_sleep) = (Some(plan.to), c.wait_attempts, c.wait_sleep);
    let flags = FlagValues { provider, wait_attempts, wait_sleep, ..Default::default() };
    let cfg = Config::load(process, &flags)?;
    let title = format!("{}?", plan.title);
    let ctx = Ctx::new(plan, cfg, env, c.allow_non_local.as_deref(), stop_at);
    if c.dry_run {
        print!("{}", render(&ctx, &text)?);
        return Ok(());
    }
    confirm(c.yes, &title)?;
    execute(&ctx, &mut journal)
}

/// `[2/7] seed`: the label a step has in the dry run and the real run.
fn label(prefix: &str, i: usize, n: usize, step: Step) -> String {
    format!("[{prefix}{}/{n}] {step}", i + 1)
}

/// The dry run: exactly the steps [`execute`] runs, each described.
fn render(ctx: &Ctx, flag_text: &str) -> Result<String> {
    let (mut out, plan) = (String::new(), &ctx.plan);
    writeln!(out, "plan: {} (dry run: nothing changes)", plan.title)?;
    for (i, p) in plan.steps.iter().enumerate() {
        let what = if p.done_earlier {
            "done earlier".to_string()
        } else {
            steps::describe(ctx, flag_text, p.step)?
        };
        writeln!(out, "  {}: {what}", label("", i, plan.steps.len(), p.step))?;
    }
    match &plan.on_failure {
        OnFailure::AutoRollback(back) => {
            let to = plan.from;
            writeln!(
                out,
                "  on a failure after the flip, roll back to {to} (unless --no-rollback):"
            )?;
            for (i, &step) in back.iter().enumerate() {
                let what = steps::describe(ctx, flag_text, step)?;
                writeln!(out, "  {}: {what}", label("r", i, back.len(), step))?;
            }
        }
        OnFailure::Stop(_) => writeln!(
            out,
            "  on a failure after the flip: stop, and name the command that finishes the job"
        )?,
    }
    Ok(out)
}

/// Runs one step with its progress line and the tests' stop points; journals nothing.
fn attempt(
    ctx: &Ctx,
    journal: &Journal,
    id: Option<&str>,
    step: Step,
    label: &str,
) -> (String, Result<steps::Done>) {
    ctx.stop(step, At::Before);
    print!("  {label} ... ");
    let _ = std::io::stdout().flush();
    let (started, t) = (now_rfc3339(), Instant::now());
    let result = steps::run(ctx, journal, id, step);
    let secs = t.elapsed().as_secs_f64();
    match &result {
        Ok(d) if d.detail.is_empty() => println!("ok ({secs:.1}s)"),
        Ok(d) => println!("ok ({secs:.1}s): {}", d.detail),
        Err(_) => println!("FAILED"),
    }
    ctx.stop(step, At::AfterEffect);
    (started, result)
}

/// Writes a step's outcome (and a flip's checksum).
fn journal_step(
    journal: &mut Journal,
    id: &str,
    step: Step,
    started: String,
    result: &Result<steps::Done>,
) -> Result<()> {
    match result {
        Ok(done) => {
            journal.record(id, step, started, Outcome::Ok, &done.detail)?;
            if let Some(sha) = &done.flipped_to {
                journal.set_flipped_to(id, sha)?;
            }
        }
        Err(e) => journal.record(id, step, started, Outcome::Failed, &format!("{e:#}"))?,
    }
    Ok(())
}

/// The success transitions: the entry's own, and the migration it undoes.
fn succeed(journal: &mut Journal, id: &str, plan: &Plan) -> Result<()> {
    journal.apply(id, plan.on_success)?;
    let undone = journal.get(id).and_then(|m| m.undoes.clone());
    let open = undone.filter(|u| journal.get(u).is_some_and(|m| m.state != State::RolledBack));
    if let Some(undone) = open {
        journal.apply(&undone, Event::Undone)?;
    }
    Ok(())
}

fn execute(ctx: &Ctx, journal: &mut Journal) -> Result<()> {
    let (total, plan) = (Instant::now(), &ctx.plan);
    println!("{}", plan.title);
    let mut id = match &plan.entry {
        Entry::Continue { id } => Some(id.clone()),
        Entry::New { .. } => None,
    };
    for (i, p) in plan.steps.iter().enumerate() {
        let label = label("", i, plan.steps.len(), p.step);
        if p.done_earlier {
            println!("  {label}: done earlier");
            continue;
        }
        let (started, result) = attempt(ctx, journal, id.as_deref(), p.step, &label);
        if p.step == Step::Preflight {
            if let Err(err) = result {
                let f = &ctx.flag_rel;
                bail!("{err:#}\nNothing in the cluster changed; {f} and the journal are as they were.");
            }
            if let Entry::New { undoes } = &plan.entry {
                let (text, undoes, way) = (ctx.read_flag()?, undoes.clone(), (plan.from, plan.to));
                let entry = Migration::new(plan.kind, &ctx.env, way, &ctx.flag_rel, &text, undoes);
                id = Some(entry.id.clone());
                journal.migrations.insert(0, entry); // The newest first.
            }
        }
        let id = id.clone().expect("an entry exists after preflight");
        journal_step(journal, &id, p.step, started, &result)?;
        if p.step == Step::Record && result.is_ok() {
            succeed(journal, &id, plan)?;
        }
        journal.save(&ctx.root, &ctx.env)?;
        ctx.stop(p.step, At::AfterRecord);
        if let Err(err) = result {
            return Err(fail(ctx, journal, &id, p.step, err));
        }
    }
    let id = id.expect("an entry exists after preflight");
    if !plan.steps.iter().any(|p| p.step == Step::Record) {
        succeed(journal, &id, plan)?;
        journal.save(&ctx.root, &ctx.env)?;
    }
    let m = journal.get(&id).expect("the entry is in the journal");
    let f = &ctx.flag_rel;
    // Nothing to commit when the flag file is the committed one again.
    let commit = if steps::uncommitted(ctx).unwrap_or(true) {
        format!("Commit {f} to share the switch")
    } else {
        format!("{f} is the committed one")
    };
    let rolled_back = m.state == State::RolledBack || plan.kind == Kind::Rollback;
    let done = if rolled_back { "rolled back" } else { "migrated" };
    let (env, to, secs, state) = (&ctx.env, plan.to, total.elapsed().as_secs_f64(), m.state);
    let shown = project::shown_from(&ctx.root, &journal::path(&ctx.root, env));
    println!("{done} {env} to {to} in {secs:.1}s ({state}). {commit}; the journal is {shown}.");
    Ok(())
}

/// After `step` failed: journal it, run the automatic rollback if any, and name the way on.
fn fail(ctx: &Ctx, journal: &mut Journal, id: &str, step: Step, err: Error) -> Error {
    let (plan, f) = (&ctx.plan, &ctx.flag_rel);
    let (kind, to) = (plan.kind, plan.to);
    let what = format!("{kind} of {} to {to} stopped at {step}: {err:#}", ctx.env);
    let again = journal::command(&format!("{kind} --to {to} --yes"), &ctx.env);
    let mut result = || -> Result<String> {
        if step.fails_before_any_change() {
            journal.apply(id, Event::FailedBeforeFlip)?;
            journal.save(&ctx.root, &ctx.env)?;
            return Ok(format!(
                "Nothing in the cluster changed and {f} is as it was; fix the cause and run `{again}` again."
            ));
        }
        let back = match &plan.on_failure {
            OnFailure::AutoRollback(back) => back,
            OnFailure::Stop(event) => {
                journal.apply(id, *event)?;
                journal.save(&ctx.root, &ctx.env)?;
                let m = journal.get(id).expect("the entry is in the journal");
                let flag = ctx.flag_now();
                let (state, next) = (m.state, m.next_step_text(flag).unwrap_or_default());
                let provider = flag.map_or("?".into(), |p| p.to_string());
                return Ok(format!(
                    "The journal marks it {state}. {f} says secrets.provider = {provider}. Fix the cause, then finish with {next}."
                ));
            }
        };
        println!("  rolling back to {}", plan.from);
        for (i, &rstep) in back.iter().enumerate() {
            let label = label("r", i, back.len(), rstep);
            let (started, result) = attempt(ctx, journal, Some(id), rstep, &label);
            journal_step(journal, id, rstep, started, &result)?;
            if result.is_err() {
                journal.apply(id, Event::RollbackFailed)?;
            }
            journal.save(&ctx.root, &ctx.env)?;
            ctx.stop(rstep, At::AfterRecord);
            if let Err(e) = result {
                let m = journal.get(id).expect("the entry is in the journal");
                let restored = if m.step_ok(Step::RollbackRestore) {
                    "is restored byte for byte"
                } else {
                    "is NOT restored"
                };
                let (state, next) = (m.state, m.next_step_text(ctx.flag_now()).unwrap_or_default());
                return Ok(format!(
                    "The automatic rollback failed too, at {rstep}: {e:#}\nThe journal marks the migration {state}; \
                     {f} {restored}; `cargo xtask secrets status` shows where things stand. Fix the cause, then \
                     finish with {next}."
                ));
            }
        }
        journal.apply(id, Event::RollbackSucceeded)?;
        journal.save(&ctx.root, &ctx.env)?;
        Ok(format!(
            "The migration was rolled back: {f} restored byte for byte, synced, and the ExternalSecrets are Ready \
             again. Fix the cause and run `{again}` again."
        ))
    };
    match result() {
        Ok(next) => anyhow!("{what}\n{next}"),
        Err(journal_err) => anyhow!(
            "{what}\nWriting the journal failed too: {journal_err:#}. See `cargo xtask secrets status`."
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_cluster_stores_are_targets() {
        let file = cluster_store(ProviderKind::File).unwrap_err();
        assert!(file.downcast_ref::<crate::UsageError>().is_some());
        assert_eq!(cluster_store(ProviderKind::Azure).unwrap(), ProviderKind::Azure);
    }

    /// Snapshot of the dry run: every step the engine runs, described.
    #[test]
    fn dry_run_snapshot() {
        let root = crate::project_root();
        let process = Process::with(&root, &root, &[]);
        let flag = "secrets:\n  provider: azure # the flag\n";
        let request =
            Request::Migrate { to: Some(ProviderKind::Vault), resume: false, auto_rollback: true };
        let Decision::Run(migrate) =
            plan::build(request, "local", ProviderKind::Azure, &Journal::default()).unwrap()
        else {
            panic!("a plan")
        };
        let cfg = Config::load(&process, &FlagValues::default()).unwrap();
        let ctx = Ctx::new(migrate, cfg, "local", None, None);
        let expected = "plan: migrate local: azure -> vault (dry run: nothing changes)
  [1/7] preflight: helm version --short; helmfile --version; kubectl version --client --output json;
      kubectl config current-context (must be local); kubectl api-versions (external-secrets.io/v1 served);
      infra/kubernetes/environments/local/platform/15-secrets.values.yaml: no uncommitted change (git status --porcelain), or as the journal's last operation left it;
      every namespace of layer 15's ExternalSecrets exists (helmfile ... template; kubectl get namespaces --output json);
      Vault reachable (sys/seal-status, auth/token/lookup-self, sys/mounts)
  [2/7] seed: the equivalent of `cargo xtask secrets seed --provider vault --env local`
  [3/7] coverage: the equivalent of `cargo xtask secrets check --render --live --provider vault --env local` (gate)
  [4/7] flip: infra/kubernetes/environments/local/platform/15-secrets.values.yaml: secrets.provider = vault
        --- a/infra/kubernetes/environments/local/platform/15-secrets.values.yaml
        +++ b/infra/kubernetes/environments/local/platform/15-secrets.values.yaml
        @@ -2,1 +2,1 @@
        -  provider: azure # the flag
        +  provider: vault # the flag
  [5/7] sync: helmfile --file infra/kubernetes/helmfiles/15-secrets-certificates.yaml --environment local sync
  [6/7] wait: kubectl annotate clustersecretstore ameide-vault force-sync=<new value> --overwrite;
      poll `kubectl get clustersecretstore ameide-vault --output json` up to 60 times, 5 s apart, until Ready=True;
      kubectl annotate externalsecret <each on ameide-vault that ESO re-reads when forced> --namespace <ns> force-sync=<new value> --overwrite
      (refreshInterval: 0 and refreshPolicy: CreatedOnce are named with their fix, not waited on);
      poll `kubectl get externalsecrets --all-namespaces --output json` up to 60 times, 5 s apart,
      until each has a new status.refreshTime (or syncedResourceVersion) and Ready=True
  [7/7] record: mark the migrate completed in .local/secrets/journal/local.json
  on a failure after the flip, roll back to azure (unless --no-rollback):
  [r1/3] rollback-restore: infra/kubernetes/environments/local/platform/15-secrets.values.yaml back to the journal's before_content, byte for byte
  [r2/3] rollback-sync: helmfile --file infra/kubernetes/helmfiles/15-secrets-certificates.yaml --environment local sync
  [r3/3] rollback-wait: kubectl annotate clustersecretstore ameide-vault force-sync=<new value> --overwrite;
      poll `kubectl get clustersecretstore ameide-vault --output json` up to 60 times, 5 s apart, until Ready=True;
      kubectl annotate externalsecret <each on ameide-vault that ESO re-reads when forced> --namespace <ns> force-sync=<new value> --overwrite
      (refreshInterval: 0 and refreshPolicy: CreatedOnce are named with their fix, not waited on);
      poll `kubectl get externalsecrets --all-namespaces --output json` up to 60 times, 5 s apart,
      until each has a new status.refreshTime (or syncedResourceVersion) and Ready=True
";
        assert_eq!(render(&ctx, flag).unwrap(), expected);
    }
}
