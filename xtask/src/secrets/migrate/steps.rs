//! What each [`Step`] does ([`run`]) and how `--dry-run` describes it
//! ([`describe`]). A step changes at most one thing and returns what it
//! changed; the engine journals it.

use std::collections::BTreeMap;
use std::path::Path;

use anyhow::{bail, Context, Result};

use super::plan::{Plan, Step};
use super::Ctx;
use crate::fsutil::{self, sha256_hex};
use crate::output;
use crate::process::Tool;
use crate::project;
use crate::secrets::config::ProviderKind;
use crate::secrets::journal::{self, Journal, Kind, Migration};
use crate::secrets::kube::{self, EsStatus};
use crate::secrets::scan::{self, STORE_NAME};
use crate::secrets::{check, flagfile, guard, helmfile, seed};

pub const ESO_CRD: &str = "externalsecrets.external-secrets.io";

/// What a step did.
#[derive(Debug, Default)]
pub struct Done {
    /// What changed, for the output and the journal.
    pub detail: String,
    /// The flag file's checksum after a flip.
    pub flipped_to: Option<String>,
}

fn done(detail: impl Into<String>) -> Done {
    Done {
        detail: detail.into(),
        flipped_to: None,
    }
}

/// Runs one step of `plan`. `entry` is the journal entry, once there is one
/// (every step but a new plan's preflight).
pub fn run(
    ctx: &Ctx,
    journal: &Journal,
    entry: Option<&Migration>,
    plan: &Plan,
    step: Step,
) -> Result<Done> {
    let entry = || entry.context("the journal entry exists after preflight");
    match step {
        Step::Preflight => preflight(ctx, journal, entry().ok(), plan),
        Step::Seed => seed_target(ctx, plan.to).map(done),
        Step::Coverage => coverage(ctx, plan.to).map(done),
        Step::Flip => flip(ctx, journal, entry()?, plan.to),
        Step::Sync | Step::RollbackSync => sync(ctx).map(done),
        Step::Wait | Step::RollbackWait => wait_ready(ctx).map(done),
        Step::Record => Ok(done(project::shown(&journal::path(&ctx.root, &ctx.env)))),
        Step::RollbackRestore => restore(ctx, entry()?).map(done),
    }
}

/// One or two lines saying what the step will do, for `--dry-run`.
pub fn describe(ctx: &Ctx, plan: &Plan, flag_text: &str, step: Step) -> Result<String> {
    let env = &ctx.env;
    let to = plan.to.as_str();
    let flag = &ctx.flag_rel;
    Ok(match step {
        Step::Preflight => format!(
            "helm version --short; helmfile --version; kubectl version --client --output json;\n      \
             kubectl config current-context (must be local); kubectl get crd {ESO_CRD};\n      \
             {flag}: {}{}",
            match &plan.entry {
                super::plan::Entry::Continue { .. } => "as the journal left it",
                _ if plan.kind == Kind::Migrate => "no uncommitted change (git status --porcelain)",
                _ => "no uncommitted change, or as the journal left it",
            },
            if plan.has(Step::Seed) || plan.has(Step::Coverage) {
                match plan.to {
                    ProviderKind::Vault => ";\n      Vault reachable (sys/seal-status, auth/token/lookup-self, sys/mounts)",
                    _ => ";\n      Azure Key Vault reachable (az keyvault secret list)",
                }
            } else {
                ""
            }
        ),
        Step::Seed => format!("the equivalent of `cargo xtask secrets seed --provider {to} --env {env}`"),
        Step::Coverage => format!(
            "the equivalent of `cargo xtask secrets check --render --live --provider {to} --env {env}` (gate)"
        ),
        Step::Flip => {
            let mut s = format!("{flag}: secrets.provider = {to}");
            for line in flagfile::diff(flag_text, flag, plan.to)?.lines() {
                s.push_str("\n        ");
                s.push_str(line);
            }
            s
        }
        Step::Sync | Step::RollbackSync => helmfile::sync_display(env),
        Step::Wait | Step::RollbackWait => format!(
            "kubectl annotate externalsecret <each on {STORE_NAME}> --namespace <ns> force-sync=<new value> --overwrite;\n      \
             poll `kubectl get externalsecrets --all-namespaces --output json` up to {} times, {:.0}s apart,\n      \
             until each has a new status.refreshTime (or syncedResourceVersion) and Ready=True",
            ctx.wait.attempts,
            ctx.wait.sleep.as_secs_f64()
        ),
        Step::Record => format!(
            "mark the {} completed{} in {}",
            plan.kind.as_str(),
            match &plan.entry {
                super::plan::Entry::New { undoes: Some(id) } => format!(" and {id} rolled back"),
                _ => String::new(),
            },
            project::shown(&journal::path(&ctx.root, env))
        ),
        Step::RollbackRestore => format!("{flag} back to the journal's before_content, byte for byte"),
    })
}

fn tool_version(tool: &str, args: &[&str]) -> Result<String> {
    Ok(Tool::new(tool)
        .args(args)
        .env("PATH", project::path_with_tools(&project::project_root()))
        .install_hint("run `cargo xtask tools` (kubectl: your cluster's)")
        .run()?
        .trim()
        .to_string())
}

/// Checks everything the plan needs; changes nothing.
fn preflight(ctx: &Ctx, journal: &Journal, entry: Option<&Migration>, plan: &Plan) -> Result<Done> {
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
    let Some(context) = kube::context()? else {
        bail!("no kube context: point kubectl at your local cluster (`kubectl config use-context k3d-...`)");
    };
    guard::check_context(&context, &ctx.cfg.local_contexts)?;
    if !kube::crd_present(ESO_CRD)? {
        bail!("External Secrets Operator is not installed ({ESO_CRD} missing): install ESO on the cluster first");
    }
    check_flag_file(ctx, journal, entry, plan)?;
    // Seeding and the coverage gate need the target store; a rollback only
    // moves ESO back to a store ESO itself reaches.
    let store = if plan.has(Step::Seed) || plan.has(Step::Coverage) {
        let target = ctx.with_store(|p| {
            if plan.to == ProviderKind::Azure {
                p.list()?;
            }
            Ok(p.target())
        })?;
        format!("; {target} reachable")
    } else {
        String::new()
    };
    Ok(done(format!(
        "context {context}; helm {helm}; {helmfile}; kubectl {kubectl}{store}; ESO CRDs present"
    )))
}

/// The flag file must be as the journal left it (a continued entry), or
/// committed (a new migration), or either (a new rollback).
fn check_flag_file(
    ctx: &Ctx,
    journal: &Journal,
    entry: Option<&Migration>,
    plan: &Plan,
) -> Result<()> {
    let sha = sha256_hex(ctx.read_flag()?.as_bytes());
    if let Some(m) = entry {
        if m.flag_sha_now() != sha {
            bail!(
                "{} changed since the journal's last step (checksum {}, the journal expects {}): put it back \
                 (`git diff {}`) and run the same command again",
                ctx.flag_rel,
                fsutil::short(&sha),
                fsutil::short(m.flag_sha_now()),
                ctx.flag_rel
            );
        }
        return Ok(());
    }
    if plan.kind == Kind::Rollback && journal.migrations.iter().any(|m| m.flag_sha_now() == sha) {
        return Ok(());
    }
    let status = Tool::new("git")
        .arg("-C")
        .arg(&ctx.root)
        .args(["status", "--porcelain", "--"])
        .arg(&ctx.flag_rel)
        .run()
        .with_context(|| {
            format!(
                "running git status in {}: run the migration inside the repository",
                ctx.root.display()
            )
        })?;
    if !status.trim().is_empty() {
        bail!(
            "{} has an uncommitted change: commit or stash it first, so the migration's edit is the only one",
            ctx.flag_rel
        );
    }
    Ok(())
}

fn seed_target(ctx: &Ctx, to: ProviderKind) -> Result<String> {
    guard::require_local_env(&ctx.env)?;
    let desired = ctx.desired()?;
    let (items, run, eso) = ctx.with_store(|store| {
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
        "{} written, {} unchanged in {}",
        run.written.len(),
        counts.unchanged,
        to.as_str()
    );
    if let Some(eso) = eso {
        detail.push_str(&format!("; {eso}"));
    }
    if counts.conflict > 0 {
        let kept: Vec<&str> = run.not_written.iter().map(|n| n.name.as_str()).collect();
        detail.push_str(&format!(
            "; kept {} changed by hand ({})",
            kept.len(),
            output::capped(&kept)
        ));
    }
    Ok(detail)
}

fn coverage(ctx: &Ctx, to: ProviderKind) -> Result<String> {
    let scan = check::collect(&ctx.root, &ctx.root.join(project::INFRA), &ctx.env, true)?;
    let desired = ctx.desired()?;
    let live = ctx.with_store(|store| check::read_live(store, &scan, desired))?;
    let report = check::compare(&scan, &ctx.env, desired, Some(&live));
    let fail_on = check::parse_fail_on(Some("missing"))?;
    let failures = report.failures(&fail_on);
    if !failures.is_empty() {
        // Capped like output::capped, but "; " apart: a detail may hold a comma.
        let mut keys: Vec<String> = failures
            .iter()
            .take(output::NAMES_SHOWN)
            .map(|f| format!("{} ({})", f.key, f.detail))
            .collect();
        if failures.len() > output::NAMES_SHOWN {
            keys.push(format!("and {} more", failures.len() - output::NAMES_SHOWN));
        }
        bail!(
            "{} keys the charts need are not usable in {}: {}. Run `cargo xtask secrets check --render --live --provider {}` \
             for every reference.",
            failures.len(),
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

/// Sets the flag to `to`. A rollback that undoes a migration whose flip
/// the file still holds puts back the exact bytes that migration replaced.
fn flip(ctx: &Ctx, journal: &Journal, entry: &Migration, to: ProviderKind) -> Result<Done> {
    let text = ctx.read_flag()?;
    let sha = sha256_hex(text.as_bytes());
    if entry.before_sha256 != sha {
        bail!(
            "{} changed since the {} started; not touching it",
            ctx.flag_rel,
            entry.kind.as_str()
        );
    }
    let undone = entry
        .undoes
        .as_deref()
        .and_then(|id| journal.get(id))
        .filter(|u| u.after_sha256.as_deref() == Some(sha.as_str()) && u.from == to.as_str());
    let (new, how) = match undone {
        Some(u) => (u.before_content.clone(), "restored byte for byte"),
        None => (flagfile::set(&text, &ctx.flag_rel, to)?, "set"),
    };
    write_keep_mode(&ctx.flag_path(), new.as_bytes())?;
    let after = sha256_hex(new.as_bytes());
    Ok(Done {
        detail: format!(
            "{}: secrets.provider = {} ({how}, {})",
            ctx.flag_rel,
            to.as_str(),
            fsutil::short(&after)
        ),
        flipped_to: Some(after),
    })
}

/// Automatic rollback: the flag file back to the entry's before_content.
fn restore(ctx: &Ctx, m: &Migration) -> Result<String> {
    let text = ctx.read_flag()?;
    let sha = sha256_hex(text.as_bytes());
    if sha == m.before_sha256 {
        return Ok(format!(
            "{} already as before ({})",
            ctx.flag_rel,
            fsutil::short(&sha)
        ));
    }
    if m.after_sha256.as_deref() != Some(sha.as_str()) {
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
        "{} restored byte for byte ({})",
        ctx.flag_rel,
        fsutil::short(&m.before_sha256)
    ))
}

/// Writes a non-secret repository file atomically, keeping its mode.
fn write_keep_mode(path: &Path, bytes: &[u8]) -> Result<()> {
    use std::os::unix::fs::PermissionsExt;
    let mode = std::fs::metadata(path)
        .with_context(|| format!("reading the mode of {}", path.display()))?
        .permissions()
        .mode()
        & 0o7777;
    fsutil::write_atomic(path, bytes, mode)
}

fn sync(ctx: &Ctx) -> Result<String> {
    helmfile::sync(&ctx.root, &ctx.env, ctx.cfg.helmfile_sync_timeout)?;
    Ok("layer 15 synced".into())
}

/// What the cluster said about an ExternalSecret before the force.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Seen {
    refresh_time: Option<String>,
    synced_resource_version: Option<String>,
}

impl Seen {
    fn of(es: &EsStatus) -> Seen {
        Seen {
            refresh_time: es.refresh_time.clone(),
            synced_resource_version: es.synced_resource_version.clone(),
        }
    }
}

/// Whether ESO has synced `now` since `before` was read, judged by the
/// cluster alone: its own `refreshTime` or `syncedResourceVersion` moved.
/// The laptop's clock is never compared with the cluster's.
fn refreshed(before: &Seen, now: &EsStatus) -> bool {
    let seen = Seen::of(now);
    (seen.refresh_time.is_some() && seen.refresh_time != before.refresh_time)
        || (seen.synced_resource_version.is_some()
            && seen.synced_resource_version != before.synced_resource_version)
}

/// Why an ExternalSecret is not done yet.
fn pending_reason(before: Option<&Seen>, es: &EsStatus) -> Option<String> {
    // One that appeared after the force was first synced after it.
    let fresh = before.map_or(es.refresh_time.is_some(), |b| refreshed(b, es));
    match (es.ready, fresh) {
        (Some(true), true) => None,
        (Some(true), false) => Some(format!(
            "Ready, but not refreshed since the force-sync (status.refreshTime still {})",
            es.refresh_time.as_deref().unwrap_or("unset")
        )),
        _ if es.reason.is_empty() => Some("no Ready condition yet".to_string()),
        _ => Some(format!("{}: {}", es.reason, es.message)),
    }
}

/// Forces ESO to re-read every ExternalSecret on the store, then polls
/// until each has refreshed since the force and is Ready.
fn wait_ready(ctx: &Ctx) -> Result<String> {
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
    let before: BTreeMap<String, Seen> = listed.iter().map(|e| (e.id(), Seen::of(e))).collect();
    // A new value every time, so the annotation always changes and ESO
    // always reconciles (its value is a label, never compared).
    let stamp = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or_default()
        .to_string();
    for es in &listed {
        kube::force_sync(&es.namespace, &es.name, &stamp)?;
    }
    let mut pending = Vec::new();
    for attempt in 1..=ctx.wait.attempts {
        pending = ours(kube::external_secrets()?)
            .into_iter()
            .filter_map(|e| pending_reason(before.get(&e.id()), &e).map(|why| (e.id(), why)))
            .collect();
        if pending.is_empty() {
            return Ok(format!(
                "{} ExternalSecrets on {STORE_NAME} refreshed and Ready (poll {attempt})",
                listed.len()
            ));
        }
        if attempt < ctx.wait.attempts {
            std::thread::sleep(ctx.wait.sleep);
        }
    }
    let lines: Vec<String> = pending
        .iter()
        .map(|(id, why)| format!("  {id}: {why}"))
        .collect();
    bail!(
        "{} ExternalSecrets not refreshed and Ready after {} polls {:.0}s apart:\n{}\nSee docs/secrets.md#troubleshooting for each reason.",
        pending.len(),
        ctx.wait.attempts,
        ctx.wait.sleep.as_secs_f64(),
        lines.join("\n")
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn es(ready: bool, refresh: Option<&str>, rv: Option<&str>) -> EsStatus {
        EsStatus {
            namespace: "ameide".into(),
            name: "a".into(),
            store: "ClusterSecretStore/ameide-vault".into(),
            ready: Some(ready),
            reason: if ready {
                "SecretSynced"
            } else {
                "SecretSyncedError"
            }
            .into(),
            message: "m".into(),
            refresh_time: refresh.map(String::from),
            synced_resource_version: rv.map(String::from),
        }
    }

    #[test]
    fn freshness_is_the_clusters_own_value_moving_whatever_the_clocks_say() {
        let before = Seen::of(&es(true, Some("2026-11-29T10:00:00Z"), Some("1-aaaa")));
        // Ready with the same refreshTime and version: not refreshed yet.
        let same = es(true, Some("2026-11-29T10:00:00Z"), Some("1-aaaa"));
        assert!(pending_reason(Some(&before), &same)
            .unwrap()
            .contains("not refreshed since the force-sync"));
        // A cluster clock far behind the laptop's: an older-looking time still counts.
        let behind = es(true, Some("2020-01-01T00:00:00Z"), Some("1-aaaa"));
        assert_eq!(pending_reason(Some(&before), &behind), None);
        // The same second, but ESO synced the new annotations.
        let same_second = es(true, Some("2026-11-29T10:00:00Z"), Some("1-bbbb"));
        assert_eq!(pending_reason(Some(&before), &same_second), None);
        // Refreshed, but failing: ESO's own words.
        let failing = es(false, Some("2026-11-29T10:00:00Z"), Some("1-bbbb"));
        assert_eq!(
            pending_reason(Some(&before), &failing).as_deref(),
            Some("SecretSyncedError: m")
        );
        // Never synced before, synced now.
        let never = Seen::of(&es(false, None, None));
        assert_eq!(pending_reason(Some(&never), &behind), None);
        // One that appeared after the force: fresh once ESO has synced it.
        assert_eq!(pending_reason(None, &behind), None);
        assert!(pending_reason(None, &es(true, None, None)).is_some());
    }
}
