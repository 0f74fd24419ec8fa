//! `cargo xtask secrets seed`: load the fixtures into the local store.
//!
//! Reads the store, plans (create, update, unchanged, restamp, conflict),
//! prints the plan by name and checksum, then writes only what changed.

use std::time::Instant;

use anyhow::Result;
use serde::Serialize;

use crate::flags;
use crate::flags::{Format, Verbosity};
use crate::output::count;
use crate::project::Process;
use crate::secrets::config::{Config, FlagValues, ProviderKind};
use crate::secrets::provider;
use crate::secrets::seeding::{
    self, apply, counts_line, plan_for, render_plan, Counts, Item, NotWritten, SeedRun,
};
use crate::secrets::{eso_access, fixtures, guard, manifests};

#[derive(Serialize)]
struct Report<'a> {
    provider: &'static str,
    target: String,
    fixtures: String,
    dry_run: bool,
    plan: &'a [Item],
    counts: Counts,
    written: Vec<String>,
    not_written: Vec<NotWritten>,
    unstamped: Vec<NotWritten>,
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
    applied: Option<eso_access::Applied>,
}

pub(crate) fn run(flags: &flags::Seed, process: &Process) -> Result<()> {
    let format = flags.output.unwrap_or(Format::Text);
    let render = flags.render;
    let env = flags.env.as_deref().unwrap_or("local");
    guard::require_local_env(env)?;

    let root = process.root.clone();
    let cfg = Config::load(
        process,
        &FlagValues {
            provider: flags.provider,
            fixtures: flags.fixtures.clone(),
            overrides: flags.overrides.clone(),
            mount: flags.mount.clone(),
            concurrency: flags.concurrency,
            ..FlagValues::default()
        },
    )?;
    if render.is_some() && cfg.provider.value != ProviderKind::File {
        crate::usage!(
            "--render works with --provider file (the manifests carry the file store's values)"
        );
    }
    let (fixtures_path, desired) = fixtures::load_configured(&cfg)?;

    let started = Instant::now();
    let mut store = provider::open(&cfg, flags.allow_non_local.as_deref())?;
    let show = Show {
        quiet: flags.verbosity() == Verbosity::Quiet,
        verbose: flags.verbosity() == Verbosity::Verbose,
        text: format == Format::Text,
    };
    let fixtures_shown = cfg.shown(&fixtures_path);
    let items = plan_for(store.as_mut(), &desired, flags.force)?;
    let counts = seeding::counts(&items);
    // Vault: ESO's way in (auth method, config, policy, role), planned like the secrets.
    let eso = match store.vault_http() {
        Some(http) => Some(eso_access::plan(
            http,
            &eso_access::EsoNames::load(&root, env)?,
            &cfg.kubeconfig,
        )?),
        None => None,
    };
    if show.text && !show.quiet {
        println!(
            "seed: {} from {fixtures_shown}{} -> {}",
            count(desired.len(), "secret", "secrets"),
            if counts.overridden > 0 {
                format!(" ({} overridden)", counts.overridden)
            } else {
                String::new()
            },
            store.target()
        );
        print_plan(&items, show.verbose);
        println!("plan: {}", counts_line(&counts));
        if let Some(eso) = &eso {
            print!("{}", eso.render(show.verbose));
        }
    }
    store.set_progress(show.text && !show.quiet && crate::process::stderr_is_terminal());
    let result = if flags.dry_run {
        SeedRun::planned(&items)
    } else {
        apply(store.as_mut(), &desired, &items)?
    };
    let (written, not_written) = (result.written.clone(), result.not_written.clone());
    // After the secrets, and only when every write got through (a stopped run stays exit 3).
    let eso_done = match (&eso, store.vault_http()) {
        (Some(p), Some(http)) if !flags.dry_run && result.failed.is_empty() => {
            Some(eso_access::apply(http, p)?)
        }
        _ => None,
    };
    if !flags.dry_run {
        if let Some(kind) = render {
            let out = flags.out.as_deref().expect("checked above");
            let out = if out.as_os_str() == "-" {
                out.to_path_buf()
            } else {
                process.cli_path(out)
            };
            manifests::write(&cfg, kind, &desired, &out)?;
            if show.text && !show.quiet && out.as_os_str() != "-" {
                println!(
                    "rendered {} manifests to {} (mode 0600)",
                    kind.as_str(),
                    cfg.shown(&out)
                );
            }
        }
    }
    let elapsed = started.elapsed();
    let stats = store.stats();
    let target = store.target();
    drop(store);

    match format {
        Format::Json => {
            let report = Report {
                provider: cfg.provider.value.as_str(),
                target,
                fixtures: fixtures_shown,
                dry_run: flags.dry_run,
                plan: &items,
                counts: counts.clone(),
                written: written.clone(),
                not_written: not_written.clone(),
                unstamped: result.unstamped.clone(),
                elapsed_ms: elapsed.as_millis(),
                requests: stats.map(|s| s.0),
                writes: stats.map(|s| s.1),
                retries: stats.map(|s| s.2),
                eso_access: eso.as_ref().map(|p| EsoReport {
                    plan: &p.items,
                    applied: eso_done.clone(),
                }),
            };
            println!("{}", serde_json::to_string_pretty(&report)?);
        }
        _ if flags.dry_run => {
            if show.quiet {
                println!("plan: {}", counts_line(&counts));
            }
            println!("dry run: nothing written");
        }
        // The summary, counts only: the error below names the cause and the
        // names (at most 20 per list; `--output json` has every one).
        _ => println!(
            "done in {:.2}s: {} written, {} unchanged, {} not written{}",
            elapsed.as_secs_f64(),
            written.len(),
            counts.unchanged,
            not_written.len(),
            stats
                .map(|(r, w, t)| format!(" ({r} requests, {w} writes, {t} retries)"))
                .unwrap_or_default()
        ),
    }
    if let (Some(done), Format::Text) = (&eso_done, format) {
        if !done.written.is_empty() && !show.quiet {
            println!("eso access: ensured {}", done.written.join(", "));
        }
        for note in done.notes.iter().filter(|_| !show.quiet) {
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
    result.into_result_after_plan(show.text && !show.quiet)
}

struct Show {
    quiet: bool,
    verbose: bool,
    text: bool,
}

fn print_plan(items: &[Item], verbose: bool) {
    print!("{}", render_plan(items, verbose));
}
