//! `cargo xtask secrets seed`: load the fixtures into the local store.
//! Reads the store, prints the plan by name and checksum, then writes only what changed.

use std::time::Instant;

use anyhow::Result;
use serde::Serialize;

use crate::flags::{self, Format, Verbosity};
use crate::output::count;
use crate::project::Process;
use crate::secrets::config::{Config, FlagValues, ProviderKind};
use crate::secrets::provider;
use crate::secrets::seeding::{self, counts_line, render_plan, Counts, Item, NotWritten, SeedRun};
use crate::secrets::{eso_access, fixtures, guard, manifests};

#[derive(Serialize)]
struct Report<'a> {
    provider: &'static str,
    target: String,
    fixtures: String,
    dry_run: bool,
    plan: &'a [Item],
    counts: &'a Counts,
    written: &'a [String],
    not_written: &'a [NotWritten],
    unstamped: &'a [NotWritten],
    elapsed_ms: u128,
    #[serde(skip_serializing_if = "Option::is_none")]
    requests: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    writes: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    retries: Option<u64>,
    /// Vault only: ESO's access (auth method, config, policy, role).
    #[serde(skip_serializing_if = "Option::is_none")]
    eso_access: Option<EsoReport<'a>>,
}

#[derive(Serialize)]
struct EsoReport<'a> {
    plan: &'a [eso_access::Item],
    applied: Option<&'a eso_access::Applied>,
}

pub(crate) fn run(flags: &flags::Seed, process: &Process) -> Result<()> {
    let format = flags.output.unwrap_or(Format::Text);
    let env = flags.env.as_deref().unwrap_or("local");
    guard::require_local_env(env)?;
    let flag_values = FlagValues {
        provider: flags.provider,
        fixtures: flags.fixtures.clone(),
        overrides: flags.overrides.clone(),
        mount: flags.mount.clone(),
        concurrency: flags.concurrency,
        ..FlagValues::default()
    };
    let cfg = Config::load(process, &flag_values)?;
    if flags.render.is_some() && cfg.provider.value != ProviderKind::File {
        crate::usage!(
            "--render works with --provider file (the manifests carry the file store's values)"
        );
    }
    let (fixtures_path, desired) = fixtures::load_configured(&cfg)?;

    let started = Instant::now();
    let mut store = provider::open(&cfg, flags.allow_non_local.as_deref())?;
    let (quiet, verbose) =
        (flags.verbosity() == Verbosity::Quiet, flags.verbosity() == Verbosity::Verbose);
    // Text output that is not --quiet: the plan, progress and notes.
    let chatty = format == Format::Text && !quiet;
    let fixtures_shown = cfg.shown(&fixtures_path);
    let key = provider::DigestKey::local(&cfg.root)?;
    let items = seeding::plan_for(store.as_mut(), &desired, flags.force, &key)?;
    let counts = seeding::counts(&items);
    // Vault: ESO's way in (auth method, config, policy, role), planned like the secrets.
    let eso = (store.vault_http())
        .map(|http| {
            let names = eso_access::EsoNames::load(&process.root, env)?;
            eso_access::plan(http, &names, &cfg.kubeconfig)
        })
        .transpose()?;
    if chatty {
        let overridden = match counts.overridden {
            0 => String::new(),
            n => format!(" ({n} overridden)"),
        };
        let secrets = count(desired.len(), "secret", "secrets");
        println!("seed: {secrets} from {fixtures_shown}{overridden} -> {}", store.target());
        print!("{}", render_plan(&items, verbose));
        println!("plan: {}", counts_line(&counts));
        if let Some(eso) = &eso {
            print!("{}", eso.render(verbose));
        }
    }
    store.set_progress(chatty && crate::process::stderr_is_terminal());
    let result = match flags.dry_run {
        true => SeedRun::planned(&items),
        false => seeding::apply(store.as_mut(), &desired, &items)?,
    };
    // After the secrets, and only when every write got through (a stopped run stays exit 3).
    let eso_done = match (&eso, store.vault_http()) {
        (Some(p), Some(http)) if !flags.dry_run && result.failed.is_empty() => {
            Some(eso_access::apply(http, p)?)
        }
        _ => None,
    };
    if let (Some(kind), false) = (flags.render, flags.dry_run) {
        let out = flags.out.as_deref().expect("checked above");
        let stdout = out.as_os_str() == "-";
        let out = if stdout { out.to_path_buf() } else { process.cli_path(out) };
        manifests::write(&cfg, kind, &desired, &out)?;
        if chatty && !stdout {
            let (kind, out) = (kind.as_str(), cfg.shown(&out));
            println!("rendered {kind} manifests to {out} (mode 0600)");
        }
    }
    let (elapsed, stats, target) = (started.elapsed(), store.stats(), store.target());
    drop(store);

    match format {
        Format::Json => {
            let report = Report {
                provider: cfg.provider.value.as_str(),
                target,
                fixtures: fixtures_shown,
                dry_run: flags.dry_run,
                plan: &items,
                counts: &counts,
                written: &result.written,
                not_written: &result.not_written,
                unstamped: &result.unstamped,
                elapsed_ms: elapsed.as_millis(),
                requests: stats.map(|s| s.0),
                writes: stats.map(|s| s.1),
                retries: stats.map(|s| s.2),
                eso_access: eso
                    .as_ref()
                    .map(|p| EsoReport { plan: &p.items, applied: eso_done.as_ref() }),
            };
            println!("{}", serde_json::to_string_pretty(&report)?);
        }
        _ if flags.dry_run => {
            if quiet {
                println!("plan: {}", counts_line(&counts));
            }
            println!("dry run: nothing written");
        }
        _ => {
            let (secs, written, not_written) =
                (elapsed.as_secs_f64(), result.written.len(), result.not_written.len());
            let stats = stats.map(|(r, w, t)| format!(" ({r} requests, {w} writes, {t} retries)"));
            let (unchanged, stats) = (counts.unchanged, stats.unwrap_or_default());
            println!("done in {secs:.2}s: {written} written, {unchanged} unchanged, {not_written} not written{stats}");
        }
    }
    if let (Some(done), Format::Text) = (&eso_done, format) {
        if !done.written.is_empty() && !quiet {
            println!("eso access: ensured {}", done.written.join(", "));
        }
        for note in done.notes.iter().filter(|_| !quiet) {
            println!("eso access: {note}");
        }
        for (what, why) in &done.not_written {
            eprintln!("  eso access not set up: {what}: {why}");
        }
    }
    if flags.dry_run {
        return Ok(());
    }
    // The plan printed above already names its conflicts and why.
    result.into_result_after_plan(chatty)
}
