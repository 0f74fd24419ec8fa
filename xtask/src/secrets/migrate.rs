//! `cargo xtask secrets migrate` and `rollback`: move a cluster's
//! `ClusterSecretStore/ameide-vault` between Azure Key Vault and Vault in
//! journaled steps: preflight, seed, coverage, flip, sync, wait, record.
//! A failure after the flip restores the flag file byte for byte, syncs and
//! waits again, unless `--no-rollback`.

use std::io::IsTerminal;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};

use crate::fsutil::{self, now_rfc3339, sha256_hex, Lock};
use crate::secrets::config::{Config, FlagValues, ProviderKind};
use crate::secrets::fixtures::SecretSet;
use crate::secrets::journal::{self, Journal, Migration, Outcome, State};
use crate::secrets::kube::{self, EsStatus};
use crate::secrets::provider::SecretProvider;
use crate::secrets::scan::{self, STORE_NAME};
use crate::secrets::{check, fixtures, flagfile, guard, provider, seed};
use crate::{flags, project, project_root};

const MIGRATE_STEPS: &[&str] = &[
    "preflight",
    "seed",
    "coverage",
    "flip",
    "sync",
    "wait",
    "record",
];
const ROLLBACK_STEPS: &[&str] = &["preflight", "flip", "sync", "wait", "record"];
const ESO_CRD: &str = "externalsecrets.external-secrets.io";

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

struct Ctx {
    root: PathBuf,
    env: String,
    flag_rel: String,
    wait: Wait,
    allow_non_local: Option<String>,
    /// The target store, opened once (a port-forward is started once).
    store: std::cell::RefCell<Option<Box<dyn SecretProvider>>>,
    /// The fixtures and overrides, loaded once.
    desired: std::cell::OnceCell<SecretSet>,
}

impl Ctx {
    /// Takes the environment's migration lock, then loads its journal.
    fn lock_journal(&self) -> Result<(Lock, Journal)> {
        let lock = Lock::acquire(
            &journal::lock_path(&self.root, &self.env),
            &format!("migration of {}", self.env),
        )?;
        Ok((lock, Journal::load(&self.root, &self.env)?))
    }

    fn new(env: Option<String>, wait: Wait, allow_non_local: Option<String>) -> Ctx {
        let env = env.unwrap_or_else(|| "local".into());
        Ctx {
            flag_rel: project::flag_file(&env).display().to_string(),
            root: project_root(),
            env,
            wait,
            allow_non_local,
            store: std::cell::RefCell::new(None),
            desired: std::cell::OnceCell::new(),
        }
    }

    /// Runs `f` with the target store, opening it on first use.
    fn with_store<T>(
        &self,
        to: ProviderKind,
        f: impl FnOnce(&mut dyn SecretProvider) -> Result<T>,
    ) -> Result<T> {
        let mut slot = self.store.borrow_mut();
        if slot.is_none() {
            *slot = Some(provider::open(
                &self.config_for(to)?,
                self.allow_non_local.as_deref(),
            )?);
        }
        f(slot.as_mut().expect("opened above").as_mut())
    }

    /// The fixtures and overrides, loaded on first use.
    fn desired(&self, to: ProviderKind) -> Result<&SecretSet> {
        if let Some(set) = self.desired.get() {
            return Ok(set);
        }
        let cfg = self.config_for(to)?;
        let (_, set) = fixtures::load_configured(&cfg)?;
        Ok(self.desired.get_or_init(|| set))
    }

    fn flag_path(&self) -> PathBuf {
        self.root.join(&self.flag_rel)
    }

    fn read_flag(&self) -> Result<String> {
        std::fs::read_to_string(self.flag_path())
            .with_context(|| format!("reading {}: is --env {} right?", self.flag_rel, self.env))
    }

    fn layer15(&self) -> PathBuf {
        self.root.join(project::LAYER15_HELMFILE)
    }

    fn config_for(&self, target: ProviderKind) -> Result<Config> {
        Config::load(
            &self.root,
            &FlagValues {
                provider: Some(target.as_str().into()),
                ..FlagValues::default()
            },
        )
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

pub fn run_migrate(flags: &flags::Migrate) -> Result<()> {
    let wait = Wait::resolve(flags.wait_attempts, flags.wait_sleep)?;
    let ctx = Ctx::new(flags.env.clone(), wait, flags.allow_non_local.clone());
    let target = flags.to.as_deref().map(parse_target).transpose()?;
    if target.is_none() && !flags.resume {
        crate::usage!(
            "say where to: --to vault or --to azure (or --resume an interrupted migration)"
        );
    }
    let text = ctx.read_flag()?;
    let current = flagfile::provider(&text, &ctx.flag_rel)?;

    if flags.dry_run {
        let to = target.unwrap_or(current);
        print!("{}", plan_text(&ctx, current, to, &text)?);
        return Ok(());
    }

    let (_lock, mut journal) = ctx.lock_journal()?;
    let open = journal
        .current()
        .filter(|m| m.state == State::InProgress)
        .cloned();
    let to = match (&open, flags.resume) {
        (Some(m), false) => bail!(
            "an interrupted {} of {} to {} is in the journal (last step: {}). Continue it with `cargo xtask secrets \
             migrate --resume --yes --env {}`, or undo it with `cargo xtask secrets rollback --yes --env {}`.",
            m.kind,
            m.env,
            m.to,
            m.steps.last().map(|s| s.name.as_str()).unwrap_or("none"),
            ctx.env,
            ctx.env
        ),
        (None, true) => bail!("nothing to resume: the journal has no interrupted migration for {}", ctx.env),
        (Some(m), true) => {
            if m.kind != "migrate" {
                bail!("the interrupted run is a rollback; finish it with `cargo xtask secrets rollback --yes`");
            }
            let journaled = parse_target(&m.to)?;
            if target.is_some_and(|t| t != journaled) {
                bail!("the interrupted migration goes to {}, not {}", m.to, target.unwrap().as_str());
            }
            println!("resuming the migration of {} to {} ({})", ctx.env, m.to, m.id);
            journaled
        }
        (None, false) => {
            let to = target.expect("checked above");
            if to == current {
                println!("{} already uses {}: nothing to migrate ({})", ctx.env, to.as_str(), ctx.flag_rel);
                return Ok(());
            }
            confirm(flags.yes, &format!("Migrate {} from {} to {}?", ctx.env, current.as_str(), to.as_str()))?;
            journal.migrations.insert(0, new_migration("migrate", &ctx, current, to, &text));
            journal.save(&ctx.root, &ctx.env)?;
            to
        }
    };
    println!(
        "migrate {}: {} -> {}",
        ctx.env,
        journal.current().unwrap().from,
        to.as_str()
    );
    run_steps(&ctx, &mut journal, MIGRATE_STEPS, to, !flags.no_rollback)
}

pub fn run_rollback(flags: &flags::Rollback) -> Result<()> {
    let wait = Wait::resolve(flags.wait_attempts, flags.wait_sleep)?;
    let ctx = Ctx::new(flags.env.clone(), wait, None);
    let text = ctx.read_flag()?;
    let current = flagfile::provider(&text, &ctx.flag_rel)?;
    let journal_now = Journal::load(&ctx.root, &ctx.env)?;
    let last = journal_now
        .current()
        .filter(|m| m.kind == "migrate" && m.state == State::InProgress)
        .or_else(|| journal_now.last_completed_migration());
    let to = match (&flags.to, last) {
        (Some(to), _) => parse_target(to)?,
        (None, Some(m)) => parse_target(&m.from)?,
        (None, None) => bail!(
            "no completed migration of {} in the journal to undo; pass --to vault or --to azure",
            ctx.env
        ),
    };
    if flags.dry_run {
        print!("{}", plan_text(&ctx, current, to, &text)?);
        return Ok(());
    }
    if to == current
        && !journal_now
            .current()
            .is_some_and(|m| m.state == State::InProgress)
    {
        println!(
            "{} already uses {}: nothing to roll back ({})",
            ctx.env,
            to.as_str(),
            ctx.flag_rel
        );
        return Ok(());
    }
    let (_lock, mut journal) = ctx.lock_journal()?;
    confirm(
        flags.yes,
        &format!(
            "Roll {} back from {} to {}?",
            ctx.env,
            current.as_str(),
            to.as_str()
        ),
    )?;
    // Restore the bytes the undone migration saw, when the file is exactly as it left it.
    let undone = journal
        .current()
        .filter(|m| m.kind == "migrate" && m.state == State::InProgress)
        .or_else(|| journal.last_completed_migration())
        .filter(|m| {
            m.after_sha256.as_deref() == Some(sha256_hex(text.as_bytes()).as_str())
                && m.from == to.as_str()
        })
        .map(|m| m.before_content.clone());
    // The migration being undone is marked as such, so it is undone once.
    let undone_idx = journal.migrations.iter().position(|m| {
        m.kind == "migrate" && matches!(m.state, State::InProgress | State::Completed)
    });
    if let Some(i) = undone_idx {
        let m = &mut journal.migrations[i];
        if m.state == State::InProgress {
            m.ended = Some(now_rfc3339());
        }
        m.state = State::RolledBack;
    }
    let mut m = new_migration("rollback", &ctx, current, to, &text);
    if let Some(before) = undone {
        m.before_content = before;
    }
    journal.migrations.insert(0, m);
    journal.save(&ctx.root, &ctx.env)?;
    println!(
        "rollback {}: {} -> {}",
        ctx.env,
        current.as_str(),
        to.as_str()
    );
    run_steps(&ctx, &mut journal, ROLLBACK_STEPS, to, false)
}

fn new_migration(
    kind: &str,
    ctx: &Ctx,
    from: ProviderKind,
    to: ProviderKind,
    text: &str,
) -> Migration {
    let started = now_rfc3339();
    Migration {
        id: format!("{kind}-{started}-{}", to.as_str()),
        kind: kind.into(),
        env: ctx.env.clone(),
        from: from.as_str().into(),
        to: to.as_str().into(),
        state: State::InProgress,
        started,
        ended: None,
        flag_file: ctx.flag_rel.clone(),
        // For a rollback, the bytes to restore are set by the caller.
        before_content: text.to_string(),
        before_sha256: sha256_hex(text.as_bytes()),
        after_sha256: None,
        steps: Vec::new(),
    }
}

/// Runs the steps not yet done; on a failure after the flip, rolls back.
fn run_steps(
    ctx: &Ctx,
    journal: &mut Journal,
    steps: &[&str],
    to: ProviderKind,
    auto_rollback: bool,
) -> Result<()> {
    let started = Instant::now();
    let kind = journal.current().unwrap().kind.clone();
    for (i, step) in steps.iter().enumerate() {
        if journal.current().unwrap().step_ok(step) {
            println!("  [{}/{}] {step}: done earlier", i + 1, steps.len());
            continue;
        }
        journal.start_step(&ctx.root, &ctx.env, step)?;
        print!("  [{}/{}] {step} ... ", i + 1, steps.len());
        let _ = std::io::Write::flush(&mut std::io::stdout());
        let t = Instant::now();
        let result = run_step(ctx, journal, step, to);
        match result {
            Ok(detail) => {
                println!(
                    "ok ({:.1}s){}",
                    t.elapsed().as_secs_f64(),
                    if detail.is_empty() {
                        String::new()
                    } else {
                        format!(": {detail}")
                    }
                );
                journal.end_step(&ctx.root, &ctx.env, Outcome::Ok, &detail)?;
            }
            Err(err) => {
                println!("FAILED");
                let detail = format!("{err:#}");
                journal.end_step(&ctx.root, &ctx.env, Outcome::Failed, &detail)?;
                let flipped = journal.current().unwrap().step_ok("flip");
                if kind == "migrate" && flipped && auto_rollback {
                    let back = roll_back(ctx, journal);
                    return Err(anyhow::anyhow!(
                        "{step} failed: {err:#}\n{}",
                        match back {
                            Ok(()) => format!(
                                "The migration was rolled back: {} restored byte for byte, synced, and the \
                                 ExternalSecrets are Ready again.",
                                ctx.flag_rel
                            ),
                            Err(e) => format!(
                                "The automatic rollback failed too ({e:#}). See `cargo xtask secrets status` and \
                                 finish with `cargo xtask secrets rollback --yes`."
                            ),
                        }
                    ));
                }
                journal.finish(&ctx.root, &ctx.env, State::Failed)?;
                let hint = if flipped {
                    format!(
                        "\nThe flag is flipped. Fix the cause and `cargo xtask secrets migrate --resume --yes --env {env}`, \
                         or undo with `cargo xtask secrets rollback --yes --env {env}`.",
                        env = ctx.env
                    )
                } else {
                    "\nNothing in the cluster changed; fix the cause and run the migration again."
                        .to_string()
                };
                return Err(anyhow::anyhow!(
                    "{kind} of {} to {} stopped at {step}: {err:#}{hint}",
                    ctx.env,
                    to.as_str()
                ));
            }
        }
    }
    let took = started.elapsed().as_secs_f64();
    println!(
        "{} {} to {} in {took:.1}s. Commit {} to share the switch; the journal is {}.",
        if kind == "migrate" {
            "migrated"
        } else {
            "rolled back"
        },
        ctx.env,
        to.as_str(),
        ctx.flag_rel,
        project::shown(&journal::path(&ctx.root, &ctx.env))
    );
    Ok(())
}

fn run_step(ctx: &Ctx, journal: &mut Journal, step: &str, to: ProviderKind) -> Result<String> {
    match step {
        "preflight" => preflight(ctx, journal, to),
        "seed" => seed_target(ctx, to),
        "coverage" => coverage(ctx, to),
        "flip" => flip(ctx, journal, to),
        "sync" => sync(ctx),
        "wait" => wait_ready(ctx),
        "record" => {
            journal.finish(&ctx.root, &ctx.env, State::Completed)?;
            Ok(String::new())
        }
        other => bail!("unknown step {other}"),
    }
}

fn tool_version(tool: &str, args: &[&str]) -> Result<String> {
    let out = std::process::Command::new(tool)
        .args(args)
        .stdin(std::process::Stdio::null())
        .output()
        .with_context(|| format!("{tool} is not installed or not on PATH: run `cargo xtask tools` (kubectl: your cluster's)"))?;
    if !out.status.success() {
        bail!(
            "`{tool} {}` failed: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout).trim().to_string())
}

fn preflight(ctx: &Ctx, journal: &Journal, to: ProviderKind) -> Result<String> {
    let helm = tool_version("helm", &["version", "--short"])?;
    if !helm.starts_with("v3.") {
        bail!("helm {helm} found; helmfile 0.166 needs helm 3. Run `cargo xtask tools` and put .tools/bin first on PATH.");
    }
    let helmfile = tool_version("helmfile", &["--version"])?;
    let kubectl = tool_version("kubectl", &["version", "--client", "--output", "json"])?;
    let kubectl: serde_json::Value = serde_json::from_str(&kubectl).unwrap_or_default();
    let kubectl = kubectl["clientVersion"]["gitVersion"]
        .as_str()
        .unwrap_or("unknown")
        .to_string();
    let Some(context) = kube::current_context() else {
        bail!("no kube context: point kubectl at your local cluster (`kubectl config use-context k3d-...`)");
    };
    let cfg = ctx.config_for(to)?;
    guard::check_context(&context, &cfg.local_contexts)?;
    if !kube::crd_present(ESO_CRD)? {
        bail!("External Secrets Operator is not installed ({ESO_CRD} missing): install ESO on the cluster first");
    }
    let m = journal.current().unwrap();
    let text = ctx.read_flag()?;
    let sha = sha256_hex(text.as_bytes());
    let ours = m.kind == "rollback"
        && journal
            .migrations
            .iter()
            .skip(1)
            .any(|p| p.after_sha256.as_deref() == Some(sha.as_str()));
    if !ours {
        let status = std::process::Command::new("git")
            .arg("-C")
            .arg(&ctx.root)
            .args(["status", "--porcelain", "--"])
            .arg(&ctx.flag_rel)
            .output()
            .context("running git status")?;
        if !status.status.success() {
            bail!(
                "`git status` failed in {}: run the migration inside the repository",
                ctx.root.display()
            );
        }
        if !status.stdout.is_empty() {
            bail!(
                "{} has an uncommitted change: commit or stash it first, so the migration's edit is the only one",
                ctx.flag_rel
            );
        }
    }
    // A migration seeds and checks the target, so it must reach it. A
    // rollback only moves ESO back to a store ESO itself reaches.
    let store = if m.kind == "migrate" {
        let target = ctx.with_store(to, |p| {
            if to == ProviderKind::Azure {
                p.list()?;
            }
            Ok(p.target())
        })?;
        format!("; {target} reachable")
    } else {
        String::new()
    };
    Ok(format!(
        "context {context}; helm {helm}; {helmfile}; kubectl {kubectl}{store}; ESO CRDs present"
    ))
}

fn seed_target(ctx: &Ctx, to: ProviderKind) -> Result<String> {
    guard::require_local_env(&ctx.env)?;
    let desired = ctx.desired(to)?;
    let (items, run, eso) = ctx.with_store(to, |store| {
        let items = seed::plan_for(store, desired, false)?;
        let run = seed::apply(store, desired, &items)?;
        // ESO's way in, as `seed` sets it up (the presync hook does too).
        let eso = if run.failed.is_empty() {
            seed::ensure_eso_access(store, &ctx.env)?
        } else {
            None
        };
        Ok((items, run, eso))
    })?;
    if !run.failed.is_empty() {
        return Err(run.into_result().expect_err("failed writes are an error"));
    }
    let counts = crate::secrets::plan::counts(&items);
    let mut detail = format!(
        "{} written, {} unchanged",
        run.written.len(),
        counts.unchanged
    );
    if let Some(eso) = eso {
        detail.push_str(&format!("; {eso}"));
    }
    if counts.conflict > 0 {
        let kept: Vec<&str> = run.not_written.iter().map(|n| n.name.as_str()).collect();
        detail.push_str(&format!(
            "; kept {} changed by hand ({})",
            kept.len(),
            kept.join(", ")
        ));
    }
    Ok(detail)
}

fn coverage(ctx: &Ctx, to: ProviderKind) -> Result<String> {
    let scan = check::collect(&ctx.root, &ctx.root.join(project::INFRA), &ctx.env, true)?;
    let desired = ctx.desired(to)?;
    let live = ctx.with_store(to, |store| check::read_live(store, &scan, desired))?;
    let report = check::compare(&scan, &ctx.env, desired, Some(&live));
    let fail_on = check::parse_fail_on(Some("missing"))?;
    let failures = report.failures(&fail_on);
    if !failures.is_empty() {
        let keys: Vec<String> = failures
            .iter()
            .map(|f| format!("{} ({})", f.key, f.detail))
            .collect();
        bail!(
            "{} keys the charts need are not usable in {}: {}. Run `cargo xtask secrets check --render --live --provider {}` \
             for every reference.",
            keys.len(),
            live.target,
            keys.join("; "),
            to.as_str()
        );
    }
    Ok(format!(
        "{} keys present in {}",
        report.count(check::Status::Ok),
        live.target
    ))
}

fn flip(ctx: &Ctx, journal: &mut Journal, to: ProviderKind) -> Result<String> {
    let text = ctx.read_flag()?;
    let m = journal.current().unwrap();
    let sha = sha256_hex(text.as_bytes());
    let restore = m.kind == "rollback"
        && flagfile::provider(&m.before_content, &ctx.flag_rel).ok() == Some(to);
    let new = if restore && m.before_sha256 != sha {
        // A rollback: put back the exact bytes the undone migration replaced.
        m.before_content.clone()
    } else {
        if m.kind == "migrate" && m.before_sha256 != sha {
            bail!(
                "{} changed since the migration started; not touching it",
                ctx.flag_rel
            );
        }
        flagfile::set(&text, &ctx.flag_rel, to)?
    };
    write_keep_mode(&ctx.flag_path(), new.as_bytes())?;
    let after = sha256_hex(new.as_bytes());
    journal.current_mut().unwrap().after_sha256 = Some(after);
    Ok(format!(
        "{}: secrets.provider = {}",
        ctx.flag_rel,
        to.as_str()
    ))
}

/// Writes a non-secret repository file atomically, keeping its mode.
fn write_keep_mode(path: &Path, bytes: &[u8]) -> Result<()> {
    let perms = std::fs::metadata(path)?.permissions();
    let tmp = path.with_extension("yaml.xtask-tmp");
    std::fs::write(&tmp, bytes).with_context(|| format!("writing {}", tmp.display()))?;
    std::fs::set_permissions(&tmp, perms)?;
    std::fs::rename(&tmp, path).with_context(|| format!("replacing {}", path.display()))?;
    Ok(())
}

fn sync(ctx: &Ctx) -> Result<String> {
    let out = std::process::Command::new("helmfile")
        .arg("--file")
        .arg(ctx.layer15())
        .args(["--environment", &ctx.env, "sync"])
        .stdin(std::process::Stdio::null())
        .output()
        .context("running helmfile: run `cargo xtask tools`")?;
    if !out.status.success() {
        bail!(
            "`helmfile --file {} --environment {} sync` failed (exit {}):\n  {}",
            project::LAYER15_HELMFILE,
            ctx.env,
            out.status.code().unwrap_or(-1),
            scan::helmfile_errors(&String::from_utf8_lossy(&out.stderr))
        );
    }
    Ok("layer 15 synced".into())
}

/// Forces ESO to re-read every ExternalSecret on the store, then polls until
/// each is Ready with a refresh after the force.
fn wait_ready(ctx: &Ctx) -> Result<String> {
    let stamp = now_rfc3339();
    let ours = |all: Vec<EsStatus>| -> Vec<EsStatus> {
        all.into_iter()
            .filter(|e| scan::is_our_store(&e.store))
            .collect()
    };
    let listed = ours(kube::external_secrets()?);
    if listed.is_empty() {
        return Ok(format!(
            "no ExternalSecrets use ClusterSecretStore/{STORE_NAME} yet"
        ));
    }
    for es in &listed {
        kube::force_sync(&es.namespace, &es.name, &stamp)?;
    }
    let mut pending = listed;
    for attempt in 1..=ctx.wait.attempts {
        let now = ours(kube::external_secrets()?);
        pending = now
            .into_iter()
            .filter(|e| {
                !(e.ready == Some(true)
                    && e.refresh_time
                        .as_deref()
                        .is_some_and(|t| t >= stamp.as_str()))
            })
            .collect();
        if pending.is_empty() {
            return Ok(format!(
                "every ExternalSecret on {STORE_NAME} Ready (poll {attempt})"
            ));
        }
        if attempt < ctx.wait.attempts {
            std::thread::sleep(ctx.wait.sleep);
        }
    }
    let lines: Vec<String> = pending
        .iter()
        .map(|e| {
            let reason = if e.reason.is_empty() {
                "no Ready condition yet".to_string()
            } else {
                e.reason.clone()
            };
            format!("  {}: {reason}: {}", e.id(), e.message)
        })
        .collect();
    bail!(
        "{} ExternalSecrets not Ready after {} polls {:.0}s apart:\n{}\nSee docs/secrets.md#troubleshooting for each reason.",
        pending.len(),
        ctx.wait.attempts,
        ctx.wait.sleep.as_secs_f64(),
        lines.join("\n")
    )
}

/// Automatic rollback: restore the flag file byte for byte, sync, wait.
fn roll_back(ctx: &Ctx, journal: &mut Journal) -> Result<()> {
    let m = journal.current().unwrap().clone();
    println!("  rolling back to {}", m.from);
    let step = |journal: &mut Journal, name: &str, f: &dyn Fn() -> Result<String>| -> Result<()> {
        journal.start_step(&ctx.root, &ctx.env, name)?;
        print!("  [rollback] {name} ... ");
        let _ = std::io::Write::flush(&mut std::io::stdout());
        match f() {
            Ok(detail) => {
                println!("ok");
                journal.end_step(&ctx.root, &ctx.env, Outcome::Ok, &detail)
            }
            Err(e) => {
                println!("FAILED");
                journal.end_step(&ctx.root, &ctx.env, Outcome::Failed, &format!("{e:#}"))?;
                journal.finish(&ctx.root, &ctx.env, State::Failed)?;
                Err(e)
            }
        }
    };
    step(journal, "rollback-restore", &|| {
        let text = ctx.read_flag()?;
        if m.after_sha256.as_deref() != Some(sha256_hex(text.as_bytes()).as_str()) {
            bail!(
                "{} changed after the flip; restore it by hand from the journal's before_content",
                ctx.flag_rel
            );
        }
        write_keep_mode(&ctx.flag_path(), m.before_content.as_bytes())?;
        if sha256_hex(ctx.read_flag()?.as_bytes()) != m.before_sha256 {
            bail!("{} does not read back as before", ctx.flag_rel);
        }
        Ok(format!(
            "{} restored ({})",
            ctx.flag_rel,
            fsutil::short(&m.before_sha256)
        ))
    })?;
    step(journal, "rollback-sync", &|| sync(ctx))?;
    step(journal, "rollback-wait", &|| wait_ready(ctx))?;
    journal.finish(&ctx.root, &ctx.env, State::RolledBack)
}

/// The dry-run plan: every command and the flag file diff.
fn plan_text(ctx: &Ctx, current: ProviderKind, to: ProviderKind, text: &str) -> Result<String> {
    use std::fmt::Write;
    let mut out = String::new();
    let env = &ctx.env;
    let _ = writeln!(
        out,
        "plan for {env}: {} -> {} (dry run: nothing changes)",
        current.as_str(),
        to.as_str()
    );
    if current == to {
        let _ = writeln!(out, "{env} already uses {}: nothing to do", to.as_str());
        return Ok(out);
    }
    let _ = writeln!(
        out,
        "  1. preflight: helm version --short; helmfile --version; kubectl version --client --output json;\n     \
         kubectl config current-context (must be local); kubectl get crd {ESO_CRD};\n     \
         git status --porcelain -- {flag}; {} reachable",
        match to {
            ProviderKind::Vault => "Vault (sys/seal-status, auth/token/lookup-self, sys/mounts)",
            _ => "Azure Key Vault (az keyvault secret list)",
        },
        flag = ctx.flag_rel
    );
    let _ = writeln!(
        out,
        "  2. seed: the equivalent of `cargo xtask secrets seed --provider {} --env {env}`",
        to.as_str()
    );
    let _ = writeln!(
        out,
        "  3. coverage: the equivalent of `cargo xtask secrets check --render --live --provider {} --env {env}` (gate)",
        to.as_str()
    );
    let _ = writeln!(out, "  4. flip {}:", ctx.flag_rel);
    for line in flagfile::diff(text, &ctx.flag_rel, to)?.lines() {
        let _ = writeln!(out, "       {line}");
    }
    let _ = writeln!(
        out,
        "  5. sync: helmfile --file {} --environment {env} sync",
        project::LAYER15_HELMFILE
    );
    let _ = writeln!(
        out,
        "  6. wait: kubectl annotate externalsecret <each on {STORE_NAME}> --namespace <ns> force-sync=<now> --overwrite;\n     \
         poll `kubectl get externalsecrets --all-namespaces --output json` up to {} times, {:.0}s apart, for Ready=True",
        ctx.wait.attempts,
        ctx.wait.sleep.as_secs_f64()
    );
    let _ = writeln!(
        out,
        "  7. record: {}",
        project::shown(&journal::path(&ctx.root, env))
    );
    let _ = writeln!(
        out,
        "  on a failure after step 4: restore {} byte for byte, sync and wait again (unless --no-rollback)",
        ctx.flag_rel
    );
    Ok(out)
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
