//! `cargo xtask secrets check`: every key the charts need exists in the
//! fixtures and, with `--live`, in the store with the fixture's value.

use std::collections::BTreeSet;
use std::path::Path;
use std::time::Instant;

use anyhow::{bail, Result};

use crate::flags::{self, Format, Verbosity};
use crate::output::{capped, count};
use crate::project::{self, Process};
use crate::secrets::config::{Config, FlagValues, ProviderKind};
use crate::secrets::coverage::{compare, eso_keys, read_live, render_junit, render_text};
use crate::secrets::coverage::{Finding, Status};
use crate::secrets::eso_access::EsoNames;
use crate::secrets::{eso_read, fixtures, provider, scan};

pub(crate) fn run(flags: &flags::Check, process: &Process) -> Result<()> {
    let format = flags.output.unwrap_or(Format::Text);
    let fail_on = flags.fail_on.clone().unwrap_or_default();
    let env = flags.env.clone().unwrap_or_else(|| "local".into());
    let root = &process.root;
    let flag_values = FlagValues {
        provider: flags.provider,
        fixtures: flags.fixtures.clone(),
        overrides: flags.overrides.clone(),
        mount: flags.mount.clone(),
        ..FlagValues::default()
    };
    let cfg = Config::load(process, &flag_values)?;
    let infra =
        (flags.infra.as_deref()).map_or_else(|| root.join(project::INFRA), |p| process.cli_path(p));
    if !infra.is_dir() {
        let shown = cfg.shown(&infra);
        crate::usage!("no infra tree at {shown}: pass --infra with a folder");
    }
    // The environments: the infra tree's `environments/` folders, or the repository's.
    let known = Some(project::environment_folders(&infra))
        .filter(|envs| !envs.is_empty())
        .unwrap_or_else(|| project::environments(root));
    if !known.is_empty() && !known.contains(&env) {
        let known = known.join(", ");
        crate::usage!("unknown environment {env:?}: known environments are {known}");
    }
    let started = Instant::now();
    let scan = scan::collect(&cfg, &infra, &env, flags.render)?;
    if scan.external_secrets.is_empty() {
        let (shown, files) = (cfg.shown(&infra), count(scan.files, "file", "files"));
        eprintln!("warning: no ExternalSecret found in {shown} ({files} read): is --infra the right folder?");
    }
    let (fixtures_path, desired) = fixtures::load_configured(&cfg)?;
    if flags.as_eso && cfg.provider.value != ProviderKind::Vault {
        crate::usage!("--as-eso reads Vault as ESO's role would: it goes with --provider vault");
    }
    let (mut live, mut as_eso) = (None, None);
    if flags.live || flags.as_eso {
        let mut store = provider::open(&cfg, flags.allow_non_local.as_deref())?;
        let key = provider::DigestKey::local(&cfg.root)?;
        live = Some(read_live(store.as_mut(), &scan, &desired, key)?);
        if flags.as_eso {
            let http = store.vault_http().expect("a vault store");
            let (names, keys) = (EsoNames::load(root, &env)?, eso_keys(&scan));
            as_eso = Some(eso_read::read_as_eso(http, &names, &keys, root, &env, &cfg.kubeconfig)?);
        }
    }
    let report = compare(&scan, &env, &desired, live.as_ref());
    let elapsed = started.elapsed();
    let fixtures_shown = cfg.shown(&fixtures_path);
    let failures = report.failures(&fail_on);
    match format {
        Format::Text => {
            let (verbose, quiet) =
                (flags.verbosity() == Verbosity::Verbose, flags.verbosity() == Verbosity::Quiet);
            let secs = elapsed.as_secs_f64();
            print!("{}", render_text(&report, &fixtures_shown, &fail_on, verbose, quiet, secs));
        }
        Format::Json => {
            let mut value = serde_json::to_value(&report)?;
            value["fixtures"] = fixtures_shown.clone().into();
            value["fail_on"] = serde_json::to_value(&fail_on.0)?;
            value["failed"] = (!failures.is_empty()).into();
            value["elapsed_ms"] = (elapsed.as_millis() as u64).into();
            if let Some(a) = &as_eso {
                value["as_eso"] = serde_json::to_value(a)?;
            }
            println!("{}", serde_json::to_string_pretty(&value)?);
        }
        Format::Junit => print!("{}", render_junit(&report, &fail_on)),
    }
    if let (Some(a), Format::Text) = (&as_eso, format) {
        println!("{}", a.summary());
        for (key, why) in &a.unreadable {
            println!("  unreadable as ESO: {key}: {why}");
        }
    }
    if let Some(refused) = as_eso.as_ref().and_then(|a| a.login_refused.as_ref()) {
        let (cause, fix) = (&refused.cause, &refused.fix);
        bail!("ESO cannot log in to Vault: {cause}. Fix: {fix}; see docs/secrets.md#esos-login-to-vault");
    }
    if let Some(a) = as_eso.as_ref().filter(|a| !a.ok()) {
        let mut problems = Vec::new();
        if !a.unreadable.is_empty() {
            let keys: Vec<&str> = a.unreadable.iter().map(|(k, _)| k.as_str()).collect();
            problems.push(format!("{} keys ESO cannot read ({})", keys.len(), keys.join(", ")));
        }
        if !a.write_refused {
            problems.push(format!("ESO's policy lets it write: {}", a.write_answer));
        }
        let problems = problems.join("; ");
        bail!(
            "reading as ESO failed: {problems}. `cargo xtask secrets seed` restores ESO's policy and role and \
             the missing keys; see docs/secrets.md#esos-access-to-vault"
        );
    }
    if !failures.is_empty() {
        // Every finding of a failing status is a failure.
        let statuses: BTreeSet<Status> = failures.iter().map(|f| f.status).collect();
        let parts: Vec<String> = (statuses.into_iter())
            .map(|s| format!("{} {}", report.count(s), s.heading().to_lowercase()))
            .collect();
        let overrides = cfg.shown(&cfg.abs(&cfg.overrides.value));
        let advice = advice(&failures, &fixtures_shown, &overrides, &seed_command(flags));
        let (parts, advice) = (parts.join(", "), advice.join("\n  "));
        bail!("coverage check failed: {parts}. To fix it:\n  {advice}");
    }
    Ok(())
}

/// `cargo xtask secrets seed` with this check's flags that name the store and the fixtures.
fn seed_command(flags: &flags::Check) -> String {
    let path = |p: &Path| p.display().to_string();
    let named = [
        ("--provider", flags.provider.map(|p| p.to_string())),
        ("--fixtures", flags.fixtures.as_deref().map(path)),
        ("--overrides", flags.overrides.as_deref().map(path)),
        ("--mount", flags.mount.clone()),
        ("--allow-non-local", flags.allow_non_local.clone()),
    ];
    let named = named.into_iter().filter_map(|(flag, value)| Some(format!(" {flag} {}", value?)));
    format!("cargo xtask secrets seed{}", named.collect::<String>())
}

/// What fixes each kind of failure, one line per kind.
fn advice(failures: &[&Finding], fixtures: &str, overrides: &str, seed: &str) -> Vec<String> {
    let not_in_store = |f: &Finding| f.detail.starts_with("not in the store");
    let keys = |keep: &dyn Fn(&Finding) -> bool| -> Vec<String> {
        let set: BTreeSet<&str> =
            (failures.iter()).filter(|f| keep(f)).map(|f| f.key.as_str()).collect();
        set.into_iter().map(String::from).collect()
    };
    let status = |status| keys(&move |f| f.status == status);
    let unfixtured = keys(&|f| f.status == Status::Missing && !not_in_store(f));
    let unseeded =
        keys(&|f| f.status == Status::Missing && not_in_store(f) && !unfixtured.contains(&f.key));
    let add = format!(
        "not in the fixtures: add them to {fixtures} (or fix the references that name them), then `{seed}`"
    );
    let fix =
        "fix the references shown above: the store keeps each secret under the property `value` \
               (`remoteRef.property: value`)";
    let force = format!(
        "the store's entries lack a string `value` and were not written by the seed, so `seed` keeps them: \
         `{seed} --force` writes the fixtures over them (and over every other entry changed outside the seed)"
    );
    let drift = format!(
        "the store's values differ from the fixtures: to keep yours, put them in {overrides}; to use the \
         fixtures', `{seed} --force` writes them over every entry changed outside the seed"
    );
    let unused = format!(
        "nothing reads them: remove them from {fixtures} (or {overrides}), or reference them"
    );
    let lines = [
        (unfixtured, add),
        (unseeded, format!("not in the store: `{seed}` writes them")),
        (status(Status::WrongProperty), fix.to_string()),
        (status(Status::MissingProperty), force),
        (status(Status::Drift), drift),
        (status(Status::Unused), unused),
    ];
    let lines = lines.into_iter().filter(|(names, _)| !names.is_empty());
    lines.map(|(names, what)| format!("{}: {what}", capped(&names))).collect()
}
