//! `cargo xtask secrets seed`: load the fixtures into the local store.
//!
//! Reads the store, plans (create, update, unchanged, restamp, conflict),
//! prints the plan by name and checksum, then writes only what changed.

use std::io::IsTerminal;
use std::time::Instant;

use anyhow::{bail, Result};
use serde::Serialize;

use crate::output::{parse_format, Format};
use crate::secrets::config::{FlagValues, ProviderKind};
use crate::secrets::fixtures::SecretSet;
use crate::secrets::plan::{self, Action, Counts, Item};
use crate::secrets::provider::{self, Outcome, SecretProvider, Write};
use crate::secrets::{fixtures, guard, manifests};
use crate::{flags, project_root, PartialError};

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
}

#[derive(Serialize, Clone, Debug)]
pub struct NotWritten {
    pub name: String,
    pub reason: String,
}

pub fn run(flags: &flags::Seed) -> Result<()> {
    let format = parse_format(flags.output.as_deref(), &[Format::Text, Format::Json])?;
    let render = match flags.render.as_deref() {
        None => None,
        Some(kind) => Some(manifests::Kind::parse(kind)?),
    };
    if render.is_some() && flags.out.is_none() {
        crate::usage!("--render needs --out PATH (a file, written with mode 0600), or --out - for standard output");
    }
    if render.is_none() && flags.out.is_some() {
        crate::usage!("--out goes with --render eso-fake|secrets");
    }
    let env = flags.env.as_deref().unwrap_or("local");
    guard::require_local_env(env)?;

    let root = project_root();
    let cfg = crate::secrets::config::load(&FlagValues {
        provider: flags.provider.clone(),
        fixtures: flags.fixtures.clone(),
        mount: flags.mount.clone(),
        concurrency: flags.concurrency,
    })?;
    if render.is_some() && cfg.provider.value != ProviderKind::File {
        crate::usage!(
            "--render works with --provider file (the manifests carry the file store's values)"
        );
    }
    let (fixtures_path, desired) = fixtures::load_configured(&cfg)?;

    let started = Instant::now();
    let mut store = provider::open(&cfg, flags.allow_non_local.as_deref())?;
    let show = Show {
        quiet: flags.quiet,
        verbose: flags.verbose,
        text: format == Format::Text,
    };
    let fixtures_shown = fixtures_path
        .strip_prefix(&root)
        .unwrap_or(&fixtures_path)
        .display()
        .to_string();
    let items = plan_for(store.as_mut(), &desired, flags.force)?;
    let counts = plan::counts(&items);
    if show.text && !show.quiet {
        println!(
            "seed: {} secrets from {fixtures_shown}{} -> {}",
            desired.len(),
            if counts.overridden > 0 {
                format!(" ({} overridden)", counts.overridden)
            } else {
                String::new()
            },
            store.target()
        );
        print_plan(&items, show.verbose);
        println!("plan: {}", counts_line(&counts));
    }
    store.set_progress(show.text && !show.quiet && std::io::stderr().is_terminal());
    let result = if flags.dry_run {
        SeedRun::planned(&items)
    } else {
        apply(store.as_mut(), &desired, &items)?
    };
    let (written, not_written) = (result.written.clone(), result.not_written.clone());
    if !flags.dry_run {
        if let Some(kind) = render {
            let out = flags.out.as_deref().expect("checked above");
            manifests::write(&root, kind, &desired, out)?;
            if show.text && !show.quiet && out.as_os_str() != "-" {
                println!(
                    "rendered {} manifests to {} (mode 0600)",
                    kind.as_str(),
                    out.display()
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
            };
            println!("{}", serde_json::to_string_pretty(&report)?);
        }
        _ if flags.dry_run => {
            if !show.quiet {
                println!("dry run: nothing written");
            }
        }
        _ => {
            if !show.quiet || !not_written.is_empty() {
                println!(
                    "done in {:.2}s: {} written, {} unchanged, {} not written{}",
                    elapsed.as_secs_f64(),
                    written.len(),
                    counts.unchanged,
                    not_written.len(),
                    stats
                        .map(|(r, w, t)| format!(" ({r} requests, {w} writes, {t} retries)"))
                        .unwrap_or_default()
                );
            }
            for nw in &not_written {
                eprintln!("  not written: {}: {}", nw.name, nw.reason);
            }
        }
    }

    if flags.dry_run {
        return Ok(());
    }
    result.into_result()
}

/// What a seed did: written, and not written with the reason.
#[derive(Debug, Clone, Default)]
pub struct SeedRun {
    pub written: Vec<String>,
    pub not_written: Vec<NotWritten>,
    /// Names whose write failed (not conflicts).
    pub failed: Vec<String>,
    /// Values written whose checksum was not recorded (also in `written`).
    pub unstamped: Vec<NotWritten>,
}

impl SeedRun {
    /// A dry run: the planned conflicts are all that is "not written".
    fn planned(items: &[Item]) -> SeedRun {
        let mut run = SeedRun::default();
        for i in items {
            if let Action::Conflict(reason) = &i.action {
                run.not_written.push(NotWritten {
                    name: i.name.clone(),
                    reason: reason.clone(),
                });
            }
        }
        run
    }

    /// Exit status: partial (3) when some writes failed after others landed,
    /// failed (1) when nothing landed or conflicts remain, ok otherwise.
    pub fn into_result(self) -> Result<()> {
        if self.not_written.is_empty() && self.unstamped.is_empty() {
            return Ok(());
        }
        let names = |v: &[NotWritten]| {
            v.iter()
                .map(|n| n.name.as_str())
                .collect::<Vec<_>>()
                .join(", ")
        };
        // The first failure's reason: the cause a human needs (sealed, 403, unreachable).
        let cause = self
            .not_written
            .iter()
            .find(|n| self.failed.contains(&n.name))
            .or(self.unstamped.first())
            .map(|n| format!(" First failure: {}: {}", n.name, n.reason))
            .unwrap_or_default();
        if !self.written.is_empty() && (!self.failed.is_empty() || !self.unstamped.is_empty()) {
            let unstamped = if self.unstamped.is_empty() {
                String::new()
            } else {
                format!(
                    " ({} of them without their checksum: {})",
                    self.unstamped.len(),
                    names(&self.unstamped)
                )
            };
            return Err(PartialError(format!(
                "partial seed: {} written{unstamped} ({}); {} not written ({}).{cause} Re-run the same command to \
                 finish: it writes only what is still missing.",
                self.written.len(),
                capped(&self.written),
                self.not_written.len(),
                names(&self.not_written)
            ))
            .into());
        }
        if !self.failed.is_empty() {
            bail!(
                "{} secrets not written ({}); the store is unchanged.{cause}",
                self.failed.len(),
                capped(&self.failed)
            );
        }
        bail!(
            "{} conflicts not written ({}): they were changed outside the seed. Keep them in \
             .local/secrets/overrides.json, or overwrite with --force.",
            self.not_written.len(),
            names(&self.not_written)
        )
    }
}

/// Names for a message: the first 20, then how many more (`--output json`
/// lists every one).
fn capped(names: &[String]) -> String {
    const SHOWN: usize = 20;
    if names.len() <= SHOWN {
        return names.join(", ");
    }
    format!(
        "{}, and {} more; --output json lists them all",
        names[..SHOWN].join(", "),
        names.len() - SHOWN
    )
}

/// Reads the store and plans every fixture.
pub fn plan_for(
    store: &mut dyn SecretProvider,
    desired: &SecretSet,
    force: bool,
) -> Result<Vec<Item>> {
    let current = store.read(&desired.names())?;
    Ok(plan::plan(
        desired,
        &current,
        store.records_checksums(),
        force,
    ))
}

/// Writes what the plan says; never a value in the result.
pub fn apply(
    store: &mut dyn SecretProvider,
    desired: &SecretSet,
    items: &[Item],
) -> Result<SeedRun> {
    let mut run = SeedRun::planned(items);
    let writes: Vec<Write<'_>> = items
        .iter()
        .filter(|i| i.writes())
        .map(|i| Write {
            name: &i.name,
            value: &desired.entries[&i.name].value,
            sha256: &i.sha256,
            cas: i.cas,
            metadata_only: i.action == Action::Restamp,
        })
        .collect();
    if !writes.is_empty() {
        for (name, outcome) in store.write(&writes)? {
            match outcome {
                Outcome::Written => run.written.push(name),
                Outcome::ValueOnly(reason) => {
                    run.written.push(name.clone());
                    run.unstamped.push(NotWritten { name, reason });
                }
                Outcome::Conflict(reason) => run.not_written.push(NotWritten { name, reason }),
                Outcome::Failed(reason) => {
                    run.failed.push(name.clone());
                    run.not_written.push(NotWritten { name, reason });
                }
            }
        }
    }
    run.written.sort();
    run.failed.sort();
    run.unstamped.sort_by(|a, b| a.name.cmp(&b.name));
    run.not_written.sort_by(|a, b| a.name.cmp(&b.name));
    Ok(run)
}

struct Show {
    quiet: bool,
    verbose: bool,
    text: bool,
}

/// The plan by name and 8-character checksum; never a value.
pub fn render_plan(items: &[Item], verbose: bool) -> String {
    use std::fmt::Write;
    let width = items
        .iter()
        .map(|i| i.name.len() + if i.overridden { 11 } else { 0 })
        .max()
        .unwrap_or(0);
    let mut out = String::new();
    let mut unchanged = 0;
    for i in items {
        if i.action == Action::Unchanged && !verbose {
            unchanged += 1;
            continue;
        }
        let name = if i.overridden {
            format!("{} (override)", i.name)
        } else {
            i.name.clone()
        };
        let short = |s: &str| s[..8].to_string();
        let detail = match (&i.action, &i.current_sha256) {
            (Action::Update, Some(cur)) => format!("{} -> {}", short(cur), short(&i.sha256)),
            (Action::Conflict(reason), _) => format!("{}: {reason}", short(&i.sha256)),
            _ => short(&i.sha256),
        };
        let _ = writeln!(out, "  {:<10} {name:<width$}  {detail}", i.action.label());
    }
    if unchanged > 0 {
        let _ = writeln!(out, "  ({unchanged} unchanged; --verbose lists them)");
    }
    out
}

fn print_plan(items: &[Item], verbose: bool) {
    print!("{}", render_plan(items, verbose));
}

pub fn counts_line(c: &Counts) -> String {
    format!(
        "{} create, {} update, {} unchanged, {} restamp, {} conflict",
        c.create, c.update, c.unchanged, c.restamp, c.conflict
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fsutil::sha256_hex;

    fn item(
        name: &str,
        action: Action,
        value: &str,
        current: Option<&str>,
        overridden: bool,
    ) -> Item {
        Item {
            name: name.into(),
            action,
            overridden,
            sha256: sha256_hex(value.as_bytes()),
            current_sha256: current.map(|c| sha256_hex(c.as_bytes())),
            cas: None,
        }
    }

    /// Snapshot of the human plan: names and short checksums only.
    #[test]
    fn plan_snapshot() {
        let items = vec![
            item(
                "graph-db-url",
                Action::Update,
                "new-url",
                Some("old-url"),
                false,
            ),
            item(
                "keycloak-admin-password",
                Action::Conflict("changed outside the seed".into()),
                "kc",
                Some("x"),
                false,
            ),
            item("platform-db-password", Action::Create, "pw", None, true),
            item("redis-password", Action::Unchanged, "r", Some("r"), false),
            item("minio-root-user", Action::Restamp, "m", Some("m"), false),
        ];
        let expected = "  update     graph-db-url                     abc0e78b -> 2aa8f121
  conflict   keycloak-admin-password          ad9cdbef: changed outside the seed
  create     platform-db-password (override)  30c952fa
  restamp    minio-root-user                  62c66a7a
  (1 unchanged; --verbose lists them)
";
        assert_eq!(render_plan(&items, false), expected);
        for secret in ["new-url", "old-url", "kc", "pw"] {
            assert!(!render_plan(&items, true).contains(&format!(" {secret}\n")));
        }
        assert!(render_plan(&items, true).contains("unchanged  redis-password"));
    }
}
