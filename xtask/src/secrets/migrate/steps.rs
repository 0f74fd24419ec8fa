//! What each [`Step`] does ([`run`]) and how `--dry-run` describes it ([`describe`]).
//! A step changes at most one thing and returns what it changed; the engine journals it.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

use anyhow::{anyhow, bail, ensure, Context, Error, Result};

use super::ctx::Ctx;
use super::journal::{self, flag_fits, flipped, Journal, Kind, Migration, Step};
use super::plan::Entry;
use crate::fsutil::{self, sha256_hex, short};
use crate::output::{self, NAMES_SHOWN};
use crate::process::Tool;
use crate::project;
use crate::secrets::config::ProviderKind;
use crate::secrets::kube::{self, EsStatus, ESO_V1};
use crate::secrets::provider::DigestKey;
use crate::secrets::scan::{self, STORE_NAME};
use crate::secrets::{coverage, eso_access, flagfile, guard, helmfile, seeding};

/// What a step did: what changed, and the flag file's checksum after a flip.
#[derive(Debug, Default)]
pub(super) struct Done {
    pub detail: String,
    pub flipped_to: Option<String>,
}

fn done(detail: impl Into<String>) -> Done {
    Done { detail: detail.into(), flipped_to: None }
}

/// Runs one step; `id` names the journal entry once there is one (after preflight).
pub(super) fn run(ctx: &Ctx, journal: &Journal, id: Option<&str>, step: Step) -> Result<Done> {
    let entry =
        || id.and_then(|id| journal.get(id)).context("the journal entry exists after preflight");
    match step {
        Step::Preflight => preflight(ctx, journal, entry().ok()),
        Step::Seed => seed_target(ctx).map(done),
        Step::Coverage => coverage(ctx).map(done),
        Step::Flip => flip(ctx, journal, entry()?),
        Step::Sync | Step::RollbackSync => {
            helmfile::sync(&ctx.cfg, &ctx.env)?;
            Ok(done("layer 15 synced"))
        }
        Step::Wait | Step::RollbackWait => wait_ready(ctx).map(done),
        Step::Record => Ok(done(journal_shown(ctx))),
        Step::RollbackRestore => restore(ctx, entry()?).map(done),
    }
}

fn journal_shown(ctx: &Ctx) -> String {
    project::shown_from(&ctx.root, &journal::path(&ctx.root, &ctx.env))
}

/// One or two lines saying what the step will do, for `--dry-run`.
pub(super) fn describe(ctx: &Ctx, flag_text: &str, step: Step) -> Result<String> {
    let (env, plan, flag, to) = (&ctx.env, &ctx.plan, &ctx.flag_rel, ctx.plan.to);
    let (n, every) = (ctx.cfg.wait.attempts, crate::process::seconds(ctx.cfg.wait.sleep));
    Ok(match step {
        Step::Preflight => {
            let expected = match &plan.entry {
                Entry::Continue { .. } => "as the journal left it",
                _ if plan.kind == Kind::Migrate => {
                    "no uncommitted change (git status --porcelain), or as the journal's last operation left it"
                }
                _ => "no uncommitted change, or as the journal left it",
            };
            let store = match plan.to {
                _ if !needs_store(ctx) => "",
                ProviderKind::Vault => ";\n      Vault reachable (sys/seal-status, auth/token/lookup-self, sys/mounts)",
                _ => ";\n      Azure Key Vault reachable (az keyvault secret list)",
            };
            format!(
                "helm version --short; helmfile --version; kubectl version --client --output json;\n      \
                 kubectl config current-context (must be local); kubectl api-versions ({ESO_V1} served);\n      \
                 {flag}: {expected};\n      \
                 every namespace of layer 15's ExternalSecrets exists (helmfile ... template; kubectl get namespaces --output json){store}"
            )
        }
        Step::Seed => format!("the equivalent of `cargo xtask secrets seed --provider {to} --env {env}`"),
        Step::Coverage => format!(
            "the equivalent of `cargo xtask secrets check --render --live --provider {to} --env {env}` (gate)"
        ),
        Step::Flip => {
            let diff = flagfile::diff(flag_text, flag, to)?;
            let diff: String = diff.lines().map(|l| format!("\n        {l}")).collect();
            format!("{flag}: secrets.provider = {to}{diff}")
        }
        Step::Sync | Step::RollbackSync => helmfile::sync_display(env),
        Step::Wait | Step::RollbackWait => format!(
            "kubectl annotate clustersecretstore {STORE_NAME} force-sync=<new value> --overwrite;\n      \
             poll `kubectl get clustersecretstore {STORE_NAME} --output json` up to {n} times, {every} apart, until Ready=True;\n      \
             kubectl annotate externalsecret <each on {STORE_NAME} that ESO re-reads when forced> --namespace <ns> \
             force-sync=<new value> --overwrite\n      \
             (refreshInterval: 0 and refreshPolicy: CreatedOnce are named with their fix, not waited on);\n      \
             poll `kubectl get externalsecrets --all-namespaces --output json` up to {n} times, {every} apart,\n      \
             until each has a new status.refreshTime (or syncedResourceVersion) and Ready=True"
        ),
        Step::Record => {
            let undone = match &plan.entry {
                Entry::New { undoes: Some(id) } => format!(" and {id} rolled back"),
                _ => String::new(),
            };
            format!("mark the {} completed{undone} in {}", plan.kind, journal_shown(ctx))
        }
        Step::RollbackRestore => format!("{flag} back to the journal's before_content, byte for byte"),
    })
}

/// Seeding and the coverage gate need the target store; a rollback goes back to ESO's own.
fn needs_store(ctx: &Ctx) -> bool {
    ctx.plan.has(Step::Seed) || ctx.plan.has(Step::Coverage)
}

fn tool_version(ctx: &Ctx, tool: &str, args: &[&str]) -> Result<String> {
    let out = Tool::new(tool)
        .args(args)
        .env("PATH", &ctx.cfg.tools_path)
        .install_hint("run `cargo xtask tools` (kubectl: your cluster's)")
        .run()?;
    Ok(out.trim().to_string())
}

/// Checks everything the plan needs; changes nothing.
fn preflight(ctx: &Ctx, journal: &Journal, entry: Option<&Migration>) -> Result<Done> {
    let helm = tool_version(ctx, "helm", &["version", "--short"])?;
    ensure!(helm.starts_with("v3."), "helm {helm} found; helmfile 0.166 needs helm 3. Run `cargo xtask tools` and put .tools/bin first on PATH.");
    let helmfile = tool_version(ctx, "helmfile", &["--version"])?;
    let kubectl = tool_version(ctx, "kubectl", &["version", "--client", "--output", "json"])?;
    let kubectl: serde_json::Value = serde_json::from_str(&kubectl).unwrap_or_default();
    let kubectl = kubectl["clientVersion"]["gitVersion"].as_str().unwrap_or("unknown");
    let Some(context) = kube::context(&ctx.cfg.kubeconfig)? else {
        bail!("no kube context: point kubectl at your local cluster (`kubectl config use-context k3d-...`)");
    };
    guard::check_context(&context, &ctx.cfg.local_contexts)?;
    let api = kube::eso_api().context(
        "asking the cluster which APIs it serves (`kubectl api-versions`): is the cluster up? \
         `kubectl cluster-info` shows where kubectl looks",
    )?;
    if let Some((what, mut fix)) = api.problem() {
        if let Some(first) = fix.get_mut(..1) {
            first.make_ascii_uppercase();
        }
        bail!("{what}. {fix}");
    }
    check_flag_file(ctx, journal, entry)?;
    let namespaces = layer15_namespaces(ctx)?;
    let mut store = String::new();
    if needs_store(ctx) {
        let target = ctx.with_store(|p| {
            if ctx.plan.to == ProviderKind::Azure {
                p.list()?;
            }
            Ok(p.target())
        })?;
        store = format!("; {target} reachable");
    }
    Ok(done(format!(
        "context {context}; helm {helm}; {helmfile}; kubectl {kubectl}{store}; {ESO_V1} served; \
         layer 15's namespaces exist ({namespaces})"
    )))
}

/// Layer 15's ExternalSecrets' namespaces, which must exist: helm creates only a release's own.
fn layer15_namespaces(ctx: &Ctx) -> Result<String> {
    let mut wanted: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for es in render_layer15(ctx)? {
        if let Some(ns) = es.namespace {
            wanted.entry(ns).or_default().push(es.name);
        }
    }
    let have = kube::namespaces().context("listing the cluster's namespaces")?;
    let missing: Vec<_> = wanted.iter().filter(|(ns, _)| !have.contains(*ns)).collect();
    let named = missing
        .iter()
        .map(|(ns, names)| format!("{ns} (ExternalSecret {})", output::capped(names)));
    let named = named.collect::<Vec<_>>().join("; ");
    let create = missing.iter().map(|(ns, _)| format!("kubectl create namespace {ns}"));
    let (create, sync) =
        (create.collect::<Vec<_>>().join(" && "), helmfile::sync_display(&ctx.env));
    ensure!(
        missing.is_empty(),
        "layer 15 puts ExternalSecrets in namespaces the cluster does not have: {named}. helm creates only a \
         release's own namespace, so `{sync}` would fail, and so would the rollback's. Create them first \
         (`{create}`), then run the same command again."
    );
    let names: Vec<&String> = wanted.keys().collect();
    Ok(if names.is_empty() { "none".to_string() } else { output::capped(&names) })
}

/// The ExternalSecrets `helmfile template` renders for layer 15, as `check --render` reads them.
fn render_layer15(ctx: &Ctx) -> Result<Vec<scan::ExternalSecret>> {
    let env = &ctx.env;
    // The output folder and helm's cache (beside it), removed however this ends.
    let scratch = tempfile::Builder::new().prefix("xtask-preflight-").tempdir();
    let scratch = scratch.context("creating a temp folder to render into")?;
    let out = scratch.path().join("out");
    let helmfile = project::LAYER15_HELMFILE;
    let tools = &ctx.cfg.tools_path;
    helmfile::template(&ctx.root.join(helmfile), env, &out, tools).with_context(|| {
        format!(
            "rendering {helmfile} for {env} (to find the namespaces its ExternalSecrets need); \
             `cargo xtask secrets check --render` shows the same error"
        )
    })?;
    let (mut files, mut dirs) = (Vec::new(), vec![out.clone()]);
    while let Some(dir) = dirs.pop() {
        for path in std::fs::read_dir(&dir).into_iter().flatten().flatten().map(|e| e.path()) {
            if path.is_dir() {
                dirs.push(path);
            } else if path.extension().is_some_and(|x| x == "yaml" || x == "yml") {
                files.push(path);
            }
        }
    }
    files.sort();
    let mut found = Vec::new();
    for file in files {
        let rel = file.strip_prefix(&out).unwrap_or(&file);
        // `helmfile template` writes <out>/<release>/.../<manifest>.yaml.
        let release = rel.iter().next().map(|c| c.to_string_lossy().into_owned());
        let text = std::fs::read_to_string(&file)
            .with_context(|| format!("reading {}", file.display()))?;
        let label = format!("{helmfile} {}", rel.display());
        let env = Some(env.as_str());
        scan::scan_text(&text, &label, release.as_deref(), env, false, &mut found)?;
    }
    Ok(found)
}

/// The flag file must be as the journal (for a rollback, any entry) left it, or committed.
fn check_flag_file(ctx: &Ctx, journal: &Journal, entry: Option<&Migration>) -> Result<()> {
    let (text, f) = (ctx.read_flag()?, &ctx.flag_rel);
    let sha = sha256_hex(text.as_bytes());
    if let Some(m) = entry {
        let (now, expected) = (short(&sha), short(m.flag_sha_now()));
        ensure!(
            flag_fits(journal, m, &text),
            "{f} changed since the journal's last step (checksum {now}, the journal expects {expected}): put it \
             back (`git diff -- {f}` shows what changed) and run the same command again"
        );
        return Ok(());
    }
    let newest_left_it = journal.current().is_some_and(|m| flag_fits(journal, m, &text));
    let any_left_it = || journal.migrations.iter().any(|m| m.flag_sha_now() == sha);
    let left_it = newest_left_it || (ctx.plan.kind == Kind::Rollback && any_left_it());
    ensure!(
        left_it || !uncommitted(ctx)?,
        "{f} has an uncommitted change that no migration in the journal made: commit it first (`git commit \
         --message \"secrets flag\" -- {f}`), so the migration's edit is the only one, then run the same command \
         again"
    );
    Ok(())
}

/// Whether the flag file differs from the committed one (`git status`).
pub(super) fn uncommitted(ctx: &Ctx) -> Result<bool> {
    let root = ctx.root.display();
    let status = Tool::new("git")
        .arg("-C")
        .arg(&ctx.root)
        .args(["status", "--porcelain", "--"])
        .arg(&ctx.flag_rel)
        .run()
        .with_context(|| {
            format!("running git status in {root}: run the migration inside the repository")
        })?;
    Ok(!status.trim().is_empty())
}

fn seed_target(ctx: &Ctx) -> Result<String> {
    let to = ctx.plan.to;
    guard::require_local_env(&ctx.env)?;
    let desired = ctx.desired()?;
    let key = DigestKey::local(&ctx.root)?;
    let (items, run, eso) = ctx.with_store(|store| {
        let items = seeding::plan_for(store, desired, false, &key)?;
        let run = seeding::apply(store, desired, &items)?;
        if !run.failed.is_empty() {
            return Err(run.into_result().expect_err("failed writes are an error"));
        }
        // ESO's way in, as `seed` sets it up (the presync hook does too).
        let eso = seeding::ensure_eso_access(store, &ctx.cfg, &ctx.env)?;
        Ok((items, run, eso))
    })?;
    let counts = seeding::counts(&items);
    let (written, unchanged) = (run.written.len(), counts.unchanged);
    let mut detail = format!("{written} written, {unchanged} unchanged in {to}");
    if let Some(eso) = eso {
        detail.push_str(&format!("; {eso}"));
    }
    if counts.conflict > 0 {
        let kept: Vec<&str> = run.not_written.iter().map(|n| n.name.as_str()).collect();
        let names = output::capped(&kept);
        detail.push_str(&format!("; kept {} changed by hand ({names})", kept.len()));
    }
    Ok(detail)
}

/// The first [`NAMES_SHOWN`] of `total` lines, then `{indent}and N more`.
fn with_more(mut shown: Vec<String>, total: usize, indent: &str) -> Vec<String> {
    if total > NAMES_SHOWN {
        shown.push(format!("{indent}and {} more", total - NAMES_SHOWN));
    }
    shown
}

fn coverage(ctx: &Ctx) -> Result<String> {
    let to = ctx.plan.to;
    let scan = scan::collect(&ctx.cfg, &ctx.root.join(project::INFRA), &ctx.env, true)?;
    let desired = ctx.desired()?;
    let key = DigestKey::local(&ctx.root)?;
    let live = ctx.with_store(|store| coverage::read_live(store, &scan, desired, key))?;
    let report = coverage::compare(&scan, &ctx.env, desired, Some(&live));
    let failures = report.failures(&crate::flags::FailOn::default());
    let target = &live.target;
    // "; " apart, not capped's ", ": a detail may hold a comma.
    let keys = failures.iter().take(NAMES_SHOWN).map(|f| format!("{} ({})", f.key, f.detail));
    let (keys, n) = (with_more(keys.collect(), failures.len(), "").join("; "), failures.len());
    ensure!(
        n == 0,
        "{n} keys the charts need are not usable in {target}: {keys}. Run `cargo xtask secrets check --render \
         --live --provider {to}` for every reference."
    );
    let present = report.count(coverage::Status::Ok);
    Ok(format!("{present} keys present in {target}"))
}

/// Sets the flag (see [`flipped`]); a file already flipped is a run killed before its record.
fn flip(ctx: &Ctx, journal: &Journal, entry: &Migration) -> Result<Done> {
    let to = ctx.plan.to;
    let (text, f) = (ctx.read_flag()?, &ctx.flag_rel);
    let sha = sha256_hex(text.as_bytes());
    let (new, how) = if sha == entry.before_sha256 {
        flipped(journal, entry, &text)?
    } else if entry.copy_intact()
        && flipped(journal, entry, &entry.before_content)
            .is_ok_and(|(new, _)| sha256_hex(new.as_bytes()) == sha)
    {
        (text, "already written by the interrupted run")
    } else {
        let (kind, now, started) = (entry.kind, short(&sha), short(&entry.before_sha256));
        bail!(
            "{f} changed since the {kind} started (checksum {now}, it started from {started}): it was edited \
             meanwhile, so the flip does not touch it. Commit the edit or drop it (`git diff -- {f}` shows it), then \
             run the same command again"
        );
    };
    let after = sha256_hex(new.as_bytes());
    if after != sha {
        write_keep_mode(&ctx.flag_path(), new.as_bytes())?;
    }
    let detail = format!("{f}: secrets.provider = {to} ({how}, {})", short(&after));
    Ok(Done { detail, flipped_to: Some(after) })
}

/// The flag file back to the entry's before_content, if that matches its checksum.
fn restore(ctx: &Ctx, m: &Migration) -> Result<String> {
    let f = &ctx.flag_rel;
    let sha = sha256_hex(ctx.read_flag()?.as_bytes());
    let before = short(&m.before_sha256);
    if sha == m.before_sha256 {
        return Ok(format!("{f} already as before ({before})"));
    }
    let (now, flipped) = (short(&sha), short(m.after_sha256.as_deref().unwrap_or("none")));
    ensure!(
        m.after_sha256.as_deref() == Some(sha.as_str()),
        "{f} changed after the flip (checksum {now}, the flip wrote {flipped}): it was edited during the \
         migration, so the rollback does not overwrite it. Keep what you need of the edit (`git diff -- {f}` \
         shows it), then put back the file the migration started from: `git checkout -- {f}`"
    );
    let copy = sha256_hex(m.before_content.as_bytes());
    let copy = short(&copy);
    ensure!(
        m.copy_intact(),
        "the journal's copy of {f} from before the migration does not match its checksum (checksum {copy}, \
         before_sha256 {before}): the journal was edited or damaged, so the copy is not written, and {f} stays \
         as the flip left it"
    );
    write_keep_mode(&ctx.flag_path(), m.before_content.as_bytes())?;
    let back = sha256_hex(ctx.read_flag()?.as_bytes());
    ensure!(back == m.before_sha256, "{f} does not read back as before");
    Ok(format!("{f} restored byte for byte ({before})"))
}

/// Writes a non-secret repository file atomically, keeping its mode.
fn write_keep_mode(path: &Path, bytes: &[u8]) -> Result<()> {
    use std::os::unix::fs::PermissionsExt;
    let meta = std::fs::metadata(path)
        .with_context(|| format!("reading the mode of {}", path.display()))?;
    fsutil::write_atomic(path, bytes, meta.permissions().mode() & 0o7777)
}

/// Why an ExternalSecret is not done yet; fresh is its values moving since `before`, not a clock.
fn pending_reason(before: Option<&EsStatus>, es: &EsStatus) -> Option<String> {
    let moved = |now: &Option<String>, was: &Option<String>| now.is_some() && now != was;
    let fresh = match before {
        Some(b) => {
            moved(&es.refresh_time, &b.refresh_time)
                || moved(&es.synced_resource_version, &b.synced_resource_version)
        }
        // One that appeared after the force was first synced after it.
        None => es.refresh_time.is_some(),
    };
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

fn polls(ctx: &Ctx) -> String {
    let every = crate::process::seconds(ctx.cfg.wait.sleep);
    format!("{} polls {every} apart", ctx.cfg.wait.attempts)
}

/// Whether Vault denied ESO's login or read, by the condition or the Event.
fn denied(message: &str, event: Option<&kube::Event>) -> bool {
    kube::permission_denied(message) || event.is_some_and(|e| kube::permission_denied(&e.message))
}

/// Forces ESO to validate the store now (not after minutes of backoff), polling until Ready.
fn wait_store(ctx: &Ctx, stamp: &str) -> Result<String> {
    let missing = || {
        let sync = helmfile::sync_display(&ctx.env);
        anyhow!(
            "ClusterSecretStore/{STORE_NAME} is not in the cluster after the sync of layer 15 \
             (`kubectl get clustersecretstore {STORE_NAME}`): sync it again with `{sync}`"
        )
    };
    if kube::cluster_secret_store(STORE_NAME)?.is_none() {
        return Err(missing());
    }
    // A new Event tells a fresh Ready from an old; Events drop, so from poll 3 Ready alone counts.
    let events = || -> BTreeMap<String, (u64, String)> {
        let found = kube::events(None, "ClusterSecretStore", Some(STORE_NAME), None);
        let found = found.unwrap_or_default().into_iter();
        found.map(|e| (e.id, (e.count, e.last))).collect()
    };
    let seen = events();
    kube::force_sync(&["clustersecretstore", STORE_NAME], stamp)?;
    let attempts = ctx.cfg.wait.attempts;
    let mut last = kube::Ready::default();
    for attempt in 1..=attempts {
        match kube::cluster_secret_store(STORE_NAME)? {
            None => return Err(missing()),
            Some(r)
                if r.ready == Some(true)
                    && (attempt >= 3 || attempt == attempts || events() != seen) =>
            {
                return Ok(format!("ClusterSecretStore/{STORE_NAME} Ready (poll {attempt})"))
            }
            Some(r) => last = r,
        }
        if attempt < attempts {
            // A new value: ESO validates a changed store at once, not after its backoff.
            kube::force_sync(&["clustersecretstore", STORE_NAME], &format!("{stamp}-{attempt}"))?;
            std::thread::sleep(ctx.cfg.wait.sleep);
        }
    }
    let event = kube::store_event();
    let mut checks = String::new();
    if denied(&last.message, event.as_ref()) {
        checks = format!("\n{}", eso_access::denied_checks(&ctx.root, &ctx.env, &ctx.cfg));
    }
    let (polls, last, said) = (polls(ctx), last.describe(), kube::said(event.as_ref()));
    bail!(
        "ClusterSecretStore/{STORE_NAME} not Ready after {polls} (forced with force-sync={stamp}): {last}{said}. Its \
         ExternalSecrets cannot sync until it is; `kubectl describe clustersecretstore {STORE_NAME}` shows \
         ESO's events.{checks}\nSee docs/secrets.md#troubleshooting."
    )
}

/// The ExternalSecrets ESO does not re-read when forced, each with why and the fix.
fn not_forced_lines(ctx: &Ctx, frozen: &[(EsStatus, String)]) -> Vec<String> {
    // Every layer rendered, for the helmfile and release that make each again.
    let infra = ctx.root.join(project::INFRA);
    let rendered = scan::scan_rendered(&infra, &ctx.root, &ctx.env, &ctx.cfg.tools_path);
    let rendered = rendered.map(|s| s.external_secrets).unwrap_or_default();
    let lines = frozen.iter().take(NAMES_SHOWN).map(|(es, why)| {
        let source = rendered
            .iter()
            .find(|r| r.name == es.name && r.namespace.as_ref() == Some(&es.namespace));
        format!("  {} ({why}): {}", es.id(), recreate_fix(&ctx.env, es, source))
    });
    with_more(lines.collect(), frozen.len(), "  ")
}

/// How to make ESO read an ExternalSecret it no longer refreshes: delete it, sync its release.
fn recreate_fix(env: &str, es: &EsStatus, source: Option<&scan::ExternalSecret>) -> String {
    let delete = format!("kubectl delete externalsecret {} --namespace {}", es.name, es.namespace);
    // A rendered location reads `<helmfile> <release>: <template>`.
    let helmfile = source.and_then(|s| s.at.file.split_once(' ').map(|(h, _)| h.to_string()));
    match (helmfile, source.and_then(|s| s.release.as_deref())) {
        (Some(file), Some(release)) if file.ends_with(".yaml") || file.ends_with(".yml") => format!(
            "`{delete} && helmfile --file {file} --environment {env} --selector name={release} sync` \
             (helm creates it again and ESO reads it from the store in use)"
        ),
        _ => format!(
            "`{delete}`, then apply it again from where it came from (ESO reads a new one from the store in use)"
        ),
    }
}

/// Forces ESO to re-read each ExternalSecret on the store, polling until fresh and Ready.
fn wait_ready(ctx: &Ctx) -> Result<String> {
    // A new value every time, so the annotation always changes and ESO reconciles.
    let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH);
    let stamp = now.unwrap_or_default().as_nanos().to_string();
    let store = wait_store(ctx, &stamp)?;
    let ours = || -> Result<Vec<EsStatus>> {
        Ok(kube::external_secrets()?.into_iter().filter(|e| scan::is_our_store(&e.store)).collect())
    };
    let (mut frozen, mut forced) = (Vec::new(), Vec::new());
    for e in ours()? {
        match e.ignores_force_sync() {
            Some(why) => frozen.push((e, why)),
            None => forced.push(e),
        }
    }
    if frozen.is_empty() && forced.is_empty() {
        return Ok(format!("{store}; no ExternalSecrets use ClusterSecretStore/{STORE_NAME} yet"));
    }
    let skipped: BTreeSet<String> = frozen.iter().map(|(e, _)| e.id()).collect();
    let before: BTreeMap<String, &EsStatus> = forced.iter().map(|e| (e.id(), e)).collect();
    for es in &forced {
        kube::force_sync(&["externalsecret", &es.name, "--namespace", &es.namespace], &stamp)?;
    }
    let mut pending = Vec::new();
    let mut done_at = None;
    for attempt in 1..=ctx.cfg.wait.attempts {
        pending = ours()?;
        pending.retain(|e| {
            !skipped.contains(&e.id()) && pending_reason(before.get(&e.id()).copied(), e).is_some()
        });
        if pending.is_empty() {
            done_at = Some(attempt);
            break;
        }
        if attempt < ctx.cfg.wait.attempts {
            std::thread::sleep(ctx.cfg.wait.sleep);
        }
    }
    let Some(attempt) = done_at else {
        return Err(not_ready(ctx, &before, &pending));
    };
    let mut detail = format!(
        "{store}; {} ExternalSecrets on {STORE_NAME} refreshed and Ready (poll {attempt})",
        forced.len()
    );
    if !frozen.is_empty() {
        let ids: Vec<String> =
            frozen.iter().map(|(e, why)| format!("{} ({why})", e.id())).collect();
        let ids = output::capped(&ids);
        detail.push_str(&format!("; not forced, as ESO does not re-read them: {ids}"));
        eprintln!(
            "warning: ESO does not re-read {} ExternalSecret(s) on {STORE_NAME} when forced, so each keeps what \
             it read from the store it used before; to read the store in use now:\n{}",
            frozen.len(),
            not_forced_lines(ctx, &frozen).join("\n")
        );
    }
    Ok(detail)
}

/// The wait's failure: each pending ExternalSecret with its condition and last Warning Event.
fn not_ready(ctx: &Ctx, before: &BTreeMap<String, &EsStatus>, pending: &[EsStatus]) -> Error {
    let shown = &pending[..pending.len().min(NAMES_SHOWN)];
    let mut events: BTreeMap<&str, BTreeMap<String, kube::Event>> = BTreeMap::new();
    for es in shown.iter().filter(|e| e.ready == Some(false)) {
        events.entry(&es.namespace).or_insert_with(|| {
            let found = kube::warning_events(Some(&es.namespace), "ExternalSecret", None);
            found.map(kube::newest_by_object).unwrap_or_default()
        });
    }
    let (mut lines, mut any_denied) = (Vec::new(), false);
    for es in shown {
        let event = events.get(es.namespace.as_str()).and_then(|n| n.get(&es.name));
        let why = pending_reason(before.get(&es.id()).copied(), es).unwrap_or_default();
        any_denied |= denied(&es.message, event);
        lines.push(format!("  {}: {why}{}", es.id(), kube::said(event)));
    }
    let mut lines = with_more(lines, pending.len(), "  ");
    // They wait for the store: say why it is not Ready.
    let blocked = format!("\"{STORE_NAME}\" is not ready");
    if lines.iter().any(|l| l.contains(&blocked)) {
        if let Ok(Some(store)) = kube::cluster_secret_store(STORE_NAME) {
            let event = kube::store_event();
            any_denied |= denied(&store.message, event.as_ref());
            let said = kube::said(event.as_ref());
            lines.push(format!("  ClusterSecretStore/{STORE_NAME}: {}{said}", store.describe()));
        }
    }
    let mut checks = String::new();
    if any_denied {
        checks = format!("{}\n", eso_access::denied_checks(&ctx.root, &ctx.env, &ctx.cfg));
    }
    let (n, polls, lines) = (pending.len(), polls(ctx), lines.join("\n"));
    anyhow!(
        "{n} ExternalSecrets not refreshed and Ready after {polls}:\n{lines}\n{checks}See docs/secrets.md#troubleshooting \
         for each reason; `kubectl describe externalsecret <name> --namespace <ns>` shows ESO's events."
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
            reason: if ready { "SecretSynced" } else { "SecretSyncedError" }.into(),
            message: "m".into(),
            refresh_time: refresh.map(String::from),
            synced_resource_version: rv.map(String::from),
            refresh_interval: Some("1h".into()),
            refresh_policy: None,
            target: "a".into(),
        }
    }

    /// Fresh is the cluster's own values moving, whatever the clocks say.
    #[test]
    fn freshness_is_the_clusters_own_value_moving() {
        const T: Option<&str> = Some("2026-11-29T10:00:00Z");
        const OLD: Option<&str> = Some("2020-01-01T00:00:00Z");
        let before = es(true, T, Some("1-aaaa"));
        let never = es(false, None, None);
        let stale = "Ready, but not refreshed since the force-sync (status.refreshTime still 2026-11-29T10:00:00Z)";
        let cases = [
            (Some(&before), es(true, T, Some("1-aaaa")), Some(stale)),
            // A cluster clock far behind the laptop's.
            (Some(&before), es(true, OLD, Some("1-aaaa")), None),
            // The same second, but ESO synced the new annotations.
            (Some(&before), es(true, T, Some("1-bbbb")), None),
            (Some(&before), es(false, T, Some("1-bbbb")), Some("SecretSyncedError: m")),
            (Some(&never), es(true, OLD, None), None),
            // One that appeared after the force: fresh once ESO synced it.
            (None, es(true, OLD, None), None),
            (
                None,
                es(true, None, None),
                Some("Ready, but not refreshed since the force-sync (status.refreshTime still unset)"),
            ),
        ];
        for (i, (before, now, want)) in cases.into_iter().enumerate() {
            assert_eq!(pending_reason(before, &now).as_deref(), want, "case {i}");
        }
    }
}
