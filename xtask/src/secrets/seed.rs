//! `cargo xtask secrets seed`: load the fixtures into the local store.
//!
//! Reads the store, plans (create, update, unchanged, restamp, conflict),
//! prints the plan by name and checksum, then writes only what changed.

use std::time::Instant;

use anyhow::{anyhow, Result};
use serde::Serialize;

use crate::output::{capped, count, parse_format, Format, NAMES_SHOWN};
use crate::secrets::config::{self, Config, FlagValues, ProviderKind};
use crate::secrets::fixtures::SecretSet;
use crate::secrets::plan::{self, Action, Counts, Item};
use crate::secrets::provider::vault_http::NOT_ATTEMPTED;
use crate::secrets::provider::{self, Outcome, SecretProvider, Write};
use crate::secrets::{eso_access, fixtures, guard, manifests};
use crate::{flags, fsutil, project_root, PartialError};

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
    if flags.quiet && flags.verbose {
        crate::usage!("--quiet and --verbose contradict each other: pass one of them");
    }
    let env = flags.env.as_deref().unwrap_or("local");
    guard::require_local_env(env)?;

    let root = project_root();
    let cfg = config::load(&FlagValues {
        provider: flags.provider.clone(),
        fixtures: flags.fixtures.clone(),
        overrides: flags.overrides.clone(),
        mount: flags.mount.clone(),
        concurrency: flags.concurrency,
    })?;
    require_mount_fits(flags.mount.as_deref(), &cfg)?;
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
    let fixtures_shown = cfg.shown(&fixtures_path);
    let items = plan_for(store.as_mut(), &desired, flags.force)?;
    let counts = plan::counts(&items);
    // Vault: ESO's way in (auth method, config, policy, role), planned like the secrets.
    let eso = match store.vault_http() {
        Some(http) => Some(eso_access::plan(
            http,
            &eso_access::EsoNames::load(&root, env)?,
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
                config::from_cwd(out)
            };
            manifests::write(&root, kind, &desired, &out)?;
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

/// What a seed did: written, and not written with the reason.
#[derive(Debug, Clone, Default)]
pub struct SeedRun {
    pub written: Vec<String>,
    pub not_written: Vec<NotWritten>,
    /// Names whose write failed (not conflicts).
    pub failed: Vec<String>,
    /// Values written whose checksum was not recorded (also in `written`).
    pub unstamped: Vec<NotWritten>,
    /// Conflicts the plan already named (not those found while writing).
    pub planned_conflicts: Vec<String>,
}

impl SeedRun {
    /// A dry run: the planned conflicts are all that is "not written".
    fn planned(items: &[Item]) -> SeedRun {
        let mut run = SeedRun::default();
        for i in items {
            if let Action::Conflict(reason) = &i.action {
                run.planned_conflicts.push(i.name.clone());
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
    ///
    /// The message names the cause first, then one line per kind of
    /// failure with at most 20 names (`--output json` lists every one).
    pub fn into_result(self) -> Result<()> {
        self.into_result_after_plan(false)
    }

    /// Like [`SeedRun::into_result`]; with `plan_shown`, conflicts the
    /// printed plan named are counted, not listed again.
    pub fn into_result_after_plan(self, plan_shown: bool) -> Result<()> {
        if self.not_written.is_empty() && self.unstamped.is_empty() {
            return Ok(());
        }
        // A set, not `Vec::contains`: a run may fail 10,000 writes.
        let failed_names: std::collections::HashSet<&str> =
            self.failed.iter().map(String::as_str).collect();
        let (failed, conflicts): (Vec<&NotWritten>, Vec<&NotWritten>) = self
            .not_written
            .iter()
            .partition(|n| failed_names.contains(n.name.as_str()));
        let unstamped: Vec<&NotWritten> = self.unstamped.iter().collect();
        let everything: Vec<&NotWritten> = failed.iter().chain(&unstamped).copied().collect();
        let cause = cause_of(&everything);
        let mut lines: Vec<String> = Vec::new();
        for (what, entries) in [
            ("not written", &failed),
            ("written without their checksum", &unstamped),
        ] {
            // The cause's own group first, the writes skipped after it last.
            let mut groups = by_reason(entries);
            groups.sort_by_key(|(reason, _)| {
                if Some(reason.as_str()) == cause.as_deref() {
                    0
                } else if reason == NOT_ATTEMPTED {
                    2
                } else {
                    1
                }
            });
            for (reason, names) in groups {
                let label = if reason == NOT_ATTEMPTED {
                    format!("{what}, not attempted after that failure")
                } else if Some(reason.as_str()) == cause.as_deref() {
                    format!("{what}, for that reason")
                } else {
                    format!("{what}: {reason}")
                };
                lines.push(format!("  {label} ({}): {}", names.len(), capped(&names)));
            }
        }
        let (in_plan, listed): (Vec<&NotWritten>, Vec<&NotWritten>) = conflicts
            .iter()
            .partition(|n| plan_shown && self.planned_conflicts.contains(&n.name));
        let conflict_line = if conflicts.is_empty() {
            String::new()
        } else {
            format!(
                "{} not written{}: changed outside the seed, so kept. Keep your own values in \
                 .local/secrets/overrides.json, or overwrite with --force.",
                count(conflicts.len(), "conflict", "conflicts"),
                if in_plan.is_empty() {
                    String::new()
                } else if listed.is_empty() {
                    " (listed in the plan above)".to_string()
                } else {
                    format!(" ({} listed in the plan above)", in_plan.len())
                }
            )
        };
        if !conflicts.is_empty() && (!failed.is_empty() || !unstamped.is_empty()) {
            lines.push(format!("  {conflict_line}"));
        }
        for n in listed.iter().take(NAMES_SHOWN) {
            lines.push(format!("  {}: {}", n.name, n.reason));
        }
        if listed.len() > NAMES_SHOWN {
            lines.push(format!(
                "  and {} more conflicts",
                listed.len() - NAMES_SHOWN
            ));
        }
        let more = if self.not_written.len() + self.unstamped.len() > NAMES_SHOWN {
            " `--output json` lists every name."
        } else {
            ""
        };
        let body = lines.join("\n");
        let cause = cause.unwrap_or_default();
        if !self.written.is_empty() && (!self.failed.is_empty() || !self.unstamped.is_empty()) {
            let without = if self.unstamped.is_empty() {
                String::new()
            } else {
                format!(" ({} without their checksum)", self.unstamped.len())
            };
            return Err(PartialError(format!(
                "partial seed: {cause}\n  {} written{without}, {} not written. Re-run the same command to \
                 finish: it writes only what is still missing, and records missing checksums.{more}\n{body}",
                self.written.len(),
                self.not_written.len(),
            ))
            .into());
        }
        if !self.failed.is_empty() {
            return Err(anyhow!(
                "{cause}\n  {} not written; the store is unchanged.{more}\n{body}",
                count(self.failed.len(), "secret", "secrets"),
            ));
        }
        Err(anyhow!(
            "{conflict_line}{more}{}{body}",
            if body.is_empty() { "" } else { "\n" }
        ))
    }
}

/// The cause of the failures: the reason most failed writes give, leaving
/// out the writes that were skipped because of it.
fn cause_of(failed: &[&NotWritten]) -> Option<String> {
    by_reason(failed)
        .into_iter()
        .filter(|(reason, _)| reason != NOT_ATTEMPTED)
        .max_by_key(|(_, names)| names.len())
        .map(|(reason, _)| reason)
        .or_else(|| (!failed.is_empty()).then(|| NOT_ATTEMPTED.to_string()))
}

/// Names grouped by reason, the largest group first (then by reason). A
/// reason that names its entry's path (`POST secret/data/<name> ...`) is
/// grouped with the same reason for other entries.
fn by_reason<'a>(entries: &[&'a NotWritten]) -> Vec<(String, Vec<&'a str>)> {
    let mut groups: std::collections::BTreeMap<String, (&str, Vec<&str>)> = Default::default();
    for n in entries {
        let reason = if n.reason.ends_with(NOT_ATTEMPTED) {
            NOT_ATTEMPTED.to_string()
        } else {
            generic_reason(&n.reason, &n.name)
        };
        groups
            .entry(reason)
            .or_insert((&n.reason, vec![]))
            .1
            .push(&n.name);
    }
    // A reason only one entry gives is shown as it was said.
    let mut out: Vec<(String, Vec<&str>)> = groups
        .into_iter()
        .map(|(generic, (first, names))| {
            if names.len() == 1 && generic != NOT_ATTEMPTED {
                (first.to_string(), names)
            } else {
                (generic, names)
            }
        })
        .collect();
    out.sort_by(|a, b| b.1.len().cmp(&a.1.len()).then(a.0.cmp(&b.0)));
    out
}

/// `reason` with its own entry's path segment (`/<name>`) written `/<name>`.
fn generic_reason(reason: &str, name: &str) -> String {
    let needle = format!("/{name}");
    let mut out = String::with_capacity(reason.len());
    let mut rest = reason;
    while let Some(i) = rest.find(&needle) {
        let after = &rest[i + needle.len()..];
        let whole = !after.starts_with(|c: char| c.is_ascii_alphanumeric() || c == '-');
        out.push_str(&rest[..i]);
        out.push_str(if whole { "/<name>" } else { &needle });
        rest = after;
    }
    out.push_str(rest);
    out
}

/// `--mount` names a Vault KV mount: refuse it with another provider.
pub(crate) fn require_mount_fits(mount: Option<&str>, cfg: &Config) -> Result<()> {
    if mount.is_some() && cfg.provider.value != ProviderKind::Vault {
        crate::usage!(
            "--mount is a Vault KV mount, and the provider is {} (from {}): drop --mount, or use --provider vault",
            cfg.provider.value.as_str(),
            cfg.provider.source
        );
    }
    Ok(())
}

/// Reads the store and plans every fixture.
pub fn plan_for(
    store: &mut dyn SecretProvider,
    desired: &SecretSet,
    force: bool,
) -> Result<Vec<Item>> {
    let current = store.read(&desired.names())?;
    Ok(plan::plan(desired, &current, force))
}

/// ESO's access to a Vault store, planned and applied in one go (for
/// `migrate`, which seeds without printing a plan): what it did, for the
/// journal. `None` for stores other than Vault.
pub fn ensure_eso_access(store: &dyn SecretProvider, env: &str) -> Result<Option<String>> {
    let Some(http) = store.vault_http() else {
        return Ok(None);
    };
    let plan = eso_access::plan(http, &eso_access::EsoNames::load(&project_root(), env)?)?;
    let done = eso_access::apply(http, &plan)?;
    let mut parts = vec![if done.written.is_empty() {
        "ESO's access in place".to_string()
    } else {
        format!("ESO's access: ensured {}", done.written.join(", "))
    }];
    parts.extend(done.notes);
    for item in &plan.items {
        if let eso_access::State::Skipped(why) = &item.state {
            parts.push(format!("{} skipped: {why}", item.label()));
        }
    }
    for (what, why) in done.not_written {
        parts.push(format!("{what} not set up: {why}"));
    }
    Ok(Some(parts.join("; ")))
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
        // Every reason is one line already: Vault's multi-error text is
        // collapsed where it is parsed (`vault_http::errors_of`).
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
    // Without --verbose, at most NAMES_SHOWN entries per action.
    let mut shown: std::collections::BTreeMap<&str, usize> = Default::default();
    let mut hidden: Vec<(&str, usize)> = Vec::new();
    for i in items {
        if i.action == Action::Unchanged && !verbose {
            unchanged += 1;
            continue;
        }
        let n = shown.entry(i.action.label()).or_default();
        *n += 1;
        if *n > NAMES_SHOWN && !verbose {
            match hidden.iter_mut().find(|(l, _)| *l == i.action.label()) {
                Some((_, k)) => *k += 1,
                None => hidden.push((i.action.label(), 1)),
            }
            continue;
        }
        let name = if i.overridden {
            format!("{} (override)", i.name)
        } else {
            i.name.clone()
        };
        let short = |s: &str| fsutil::short(s).to_string();
        let detail = match (&i.action, &i.current_sha256) {
            (Action::Update, Some(cur)) => format!("{} -> {}", short(cur), short(&i.sha256)),
            (Action::Conflict(reason), _) => format!("{}: {reason}", short(&i.sha256)),
            _ => short(&i.sha256),
        };
        let _ = writeln!(out, "  {:<10} {name:<width$}  {detail}", i.action.label());
    }
    for (label, n) in hidden {
        let _ = writeln!(out, "  (and {n} more {label}; --verbose lists them)");
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

    fn nw(name: &str, reason: &str) -> NotWritten {
        NotWritten {
            name: name.into(),
            reason: reason.into(),
        }
    }

    const UNREACHABLE: &str =
        "cannot reach Vault at http://127.0.0.1:9 (Connection refused). Is it running?";

    /// A run killed mid-way: the cause first, counts, at most 20 names a
    /// line, no name twice, and the skipped writes not blamed for it.
    #[test]
    fn partial_error_snapshot() {
        let mut run = SeedRun {
            written: (0..30).map(|i| format!("done-{i:02}")).collect(),
            ..SeedRun::default()
        };
        for i in 0..3 {
            run.failed.push(format!("k-{i:02}"));
            run.not_written.push(nw(&format!("k-{i:02}"), UNREACHABLE));
        }
        for i in 3..40 {
            run.failed.push(format!("k-{i:02}"));
            run.not_written
                .push(nw(&format!("k-{i:02}"), NOT_ATTEMPTED));
        }
        let err = run.into_result().unwrap_err();
        assert!(err.downcast_ref::<PartialError>().is_some());
        let expected = "partial seed: cannot reach Vault at http://127.0.0.1:9 (Connection refused). Is it running?
  30 written, 40 not written. Re-run the same command to finish: it writes only what is still missing, and records missing checksums. `--output json` lists every name.
  not written, for that reason (3): k-00, k-01, k-02
  not written, not attempted after that failure (37): k-03, k-04, k-05, k-06, k-07, k-08, k-09, k-10, k-11, k-12, k-13, k-14, k-15, k-16, k-17, k-18, k-19, k-20, k-21, k-22, and 17 more";
        assert_eq!(err.to_string(), expected);
        assert!(
            !err.to_string().contains("done-"),
            "written names are counted, not listed"
        );
    }

    #[test]
    fn failed_and_conflict_error_snapshots() {
        let run = SeedRun {
            failed: vec!["a".into(), "b".into()],
            not_written: vec![
                nw(
                    "a",
                    "permission denied for POST secret/data/a (permission denied).",
                ),
                nw("b", NOT_ATTEMPTED),
                nw("c", "changed outside the seed"),
            ],
            ..SeedRun::default()
        };
        assert_eq!(
            run.into_result().unwrap_err().to_string(),
            "permission denied for POST secret/data/a (permission denied).
  2 secrets not written; the store is unchanged.
  not written, for that reason (1): a
  not written, not attempted after that failure (1): b
  1 conflict not written: changed outside the seed, so kept. Keep your own values in .local/secrets/overrides.json, or overwrite with --force.
  c: changed outside the seed"
        );
        let conflicts = || SeedRun {
            not_written: vec![
                nw(
                    "raced",
                    "changed by someone else between the read and the write",
                ),
                nw(
                    "redis-password",
                    "changed outside the seed (store 1234abcd)",
                ),
            ],
            planned_conflicts: vec!["redis-password".into()],
            ..SeedRun::default()
        };
        assert_eq!(
            conflicts().into_result().unwrap_err().to_string(),
            "2 conflicts not written: changed outside the seed, so kept. Keep your own values in \
             .local/secrets/overrides.json, or overwrite with --force.
  raced: changed by someone else between the read and the write
  redis-password: changed outside the seed (store 1234abcd)"
        );
        // After a printed plan, its own conflicts are not listed twice.
        assert_eq!(
            conflicts().into_result_after_plan(true).unwrap_err().to_string(),
            "2 conflicts not written (1 listed in the plan above): changed outside the seed, so kept. Keep your \
             own values in .local/secrets/overrides.json, or overwrite with --force.
  raced: changed by someone else between the read and the write"
        );
        let run = SeedRun {
            written: vec!["a".into(), "b".into()],
            unstamped: vec![nw(
                "a",
                "PATCH secret/metadata/a failed with HTTP 500: storage hiccup",
            )],
            ..SeedRun::default()
        };
        assert_eq!(
            run.into_result().unwrap_err().to_string(),
            "partial seed: PATCH secret/metadata/a failed with HTTP 500: storage hiccup
  2 written (1 without their checksum), 0 not written. Re-run the same command to finish: it writes only what is still missing, and records missing checksums.
  written without their checksum, for that reason (1): a"
        );
    }

    #[test]
    fn reasons_naming_their_entry_are_grouped() {
        let entries = [
            nw("a-1", "POST secret/data/a-1 timed out after 2s."),
            nw("a-2", "POST secret/data/a-2 timed out after 2s."),
            nw(
                "a",
                "POST secret/data/a failed with HTTP 0: not attempted: the run stopped",
            ),
        ];
        let refs: Vec<&NotWritten> = entries.iter().collect();
        assert_eq!(
            by_reason(&refs),
            vec![
                (
                    "POST secret/data/<name> timed out after 2s.".to_string(),
                    vec!["a-1", "a-2"]
                ),
                (NOT_ATTEMPTED.to_string(), vec!["a"]),
            ]
        );
        assert_eq!(
            generic_reason("x /a-1 /a /a)", "a"),
            "x /a-1 /<name> /<name>)"
        );
    }

    /// Without --verbose, at most 20 entries per action in the plan.
    #[test]
    fn long_plans_are_capped_per_action() {
        let items: Vec<Item> = (0..25)
            .map(|i| item(&format!("new-{i:02}"), Action::Create, "v", None, false))
            .chain((0..3).map(|i| item(&format!("old-{i}"), Action::Update, "n", Some("o"), false)))
            .collect();
        let text = render_plan(&items, false);
        assert_eq!(text.lines().count(), 20 + 3 + 1, "{text}");
        assert!(text.contains("  create     new-19"), "{text}");
        assert!(!text.contains("new-20"), "{text}");
        assert!(
            text.ends_with("  (and 5 more create; --verbose lists them)\n"),
            "{text}"
        );
        assert_eq!(render_plan(&items, true).lines().count(), 28);
    }
}
