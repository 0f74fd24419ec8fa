//! Seeding: plan the fixtures against the store's state (create, update,
//! unchanged, restamp, conflict), write what changed, and report what did
//! not land. The `seed` command and `migrate`'s seed step both run it.

use std::collections::BTreeMap;

use anyhow::{anyhow, Result};
use serde::Serialize;

use crate::output::{capped, count, NAMES_SHOWN};
use crate::secrets::config::Config;
use crate::secrets::eso_access;
use crate::secrets::fixtures::SecretSet;
use crate::secrets::provider::vault_http::NOT_ATTEMPTED;
use crate::secrets::provider::{Current, Outcome, SecretProvider, Write};
use crate::{fsutil, PartialError};

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case", tag = "kind", content = "reason")]
pub(crate) enum Action {
    /// Not in the store.
    Create,
    /// In the store with a stale value the seed itself wrote.
    Update,
    /// In the store with the right value and checksum: nothing to do.
    Unchanged,
    /// The value is right but the recorded checksum is missing or stale.
    Restamp,
    /// Changed outside the seed: not overwritten without --force.
    Conflict(String),
}

impl Action {
    pub(crate) fn label(&self) -> &'static str {
        match self {
            Action::Create => "create",
            Action::Update => "update",
            Action::Unchanged => "unchanged",
            Action::Restamp => "restamp",
            Action::Conflict(_) => "conflict",
        }
    }
}

#[derive(Debug, Clone, Serialize)]
pub(crate) struct Item {
    pub name: String,
    pub action: Action,
    pub overridden: bool,
    /// sha256 of the desired value. Output shows its first 8 hex digits
    /// (`checksum` in JSON), never the whole digest: a full, unsalted sha256
    /// of a weak value gives the value away to a dictionary.
    #[serde(rename = "checksum", serialize_with = "short_checksum")]
    pub sha256: String,
    /// sha256 of what the store holds now; output as `current_checksum`,
    /// 8 hex digits.
    #[serde(rename = "current_checksum", serialize_with = "short_checksum_opt")]
    pub current_sha256: Option<String>,
    #[serde(skip)]
    pub cas: Option<u64>,
}

/// A checksum as output shows it: the first 8 hex digits ([`fsutil::short`]).
fn short_checksum<S: serde::Serializer>(sha: &str, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_str(fsutil::short(sha))
}

fn short_checksum_opt<S: serde::Serializer>(sha: &Option<String>, s: S) -> Result<S::Ok, S::Error> {
    match sha {
        Some(sha) => short_checksum(sha, s),
        None => s.serialize_none(),
    }
}

impl Item {
    pub(crate) fn writes(&self) -> bool {
        matches!(
            self.action,
            Action::Create | Action::Update | Action::Restamp
        )
    }
}

/// Plans every desired entry. `force` turns conflicts into updates.
pub(crate) fn plan(
    desired: &SecretSet,
    current: &BTreeMap<String, Option<Current>>,
    force: bool,
) -> Vec<Item> {
    desired
        .entries
        .iter()
        .map(|(name, entry)| {
            let cur = current.get(name).cloned().flatten();
            let (action, cas) = match &cur {
                None => (Action::Create, Some(0)),
                // A bare value where `{"value": ...}` belongs: rewrite it when it
                // is the fixture's or the seed's own, else it is someone's.
                Some(c) if c.raw_sha256.is_some() => {
                    let ours = c.raw_sha256.as_deref() == Some(entry.sha256.as_str())
                        || c.raw_sha256 == c.seeded_sha256;
                    if ours || force {
                        (Action::Update, c.version)
                    } else {
                        (Action::Conflict(RAW_CONFLICT.to_string()), c.version)
                    }
                }
                // A KV v2 entry whose latest version was deleted: re-create on top of it.
                Some(c) if c.sha256.is_none() && c.properties.is_empty() => {
                    (Action::Create, Some(c.version.unwrap_or(0)))
                }
                Some(c) if c.sha256.as_deref() == Some(entry.sha256.as_str()) => {
                    let stamped =
                        c.seeded_sha256.as_deref() == Some(entry.sha256.as_str()) && !c.stamp_stale;
                    (
                        if stamped {
                            Action::Unchanged
                        } else {
                            Action::Restamp
                        },
                        c.version,
                    )
                }
                Some(c) => {
                    // The seed may replace only what it wrote itself and nobody touched since.
                    let ours = c.sha256.is_some() && c.seeded_sha256 == c.sha256;
                    if ours || force {
                        (Action::Update, c.version)
                    } else {
                        (Action::Conflict(conflict_reason(c)), c.version)
                    }
                }
            };
            Item {
                name: name.clone(),
                action,
                overridden: entry.overridden,
                sha256: entry.sha256.clone(),
                current_sha256: cur.and_then(|c| c.sha256),
                cas,
            }
        })
        .collect()
}

const RAW_CONFLICT: &str = "holds a bare value where {\"value\": ...} belongs, and not the fixture's; --force \
                            replaces it, or copy your value into .local/secrets/overrides.json to keep it";

fn conflict_reason(c: &Current) -> String {
    let short = |s: &Option<String>| s.as_deref().map(|s| fsutil::short(s).to_string());
    // A store that knows only that it wrote something else (KV v1's record
    // keeps keyed digests, not checksums) names no last-seeded checksum.
    let seeded_checksum = c
        .seeded_sha256
        .as_deref()
        .filter(|s| s.len() == 64 && s.bytes().all(|b| b.is_ascii_hexdigit()));
    match (&c.sha256, &c.seeded_sha256) {
        (Some(_), Some(_)) if seeded_checksum.is_none() => format!(
            "changed outside the seed (store {}, not what the seed last wrote); --force overwrites it, or copy \
             your value into .local/secrets/overrides.json to keep it",
            short(&c.sha256).unwrap_or_default()
        ),
        (None, _) => format!(
            "the entry has no string property `value` (properties: {}); --force replaces it",
            if c.properties.is_empty() { "none".to_string() } else { c.properties.join(", ") }
        ),
        (Some(_), None) => "the entry was not written by the seed; --force overwrites it, or copy your value into \
                            .local/secrets/overrides.json to keep it"
            .to_string(),
        (Some(_), Some(_)) => format!(
            "changed outside the seed (store {}, last seeded {}); --force overwrites it, or copy your value into \
             .local/secrets/overrides.json to keep it",
            short(&c.sha256).unwrap_or_default(),
            short(&c.seeded_sha256).unwrap_or_default()
        ),
    }
}

/// Counts by action, in a fixed order.
#[derive(Debug, Default, Clone, Serialize, PartialEq, Eq)]
pub(crate) struct Counts {
    pub create: usize,
    pub update: usize,
    pub unchanged: usize,
    pub restamp: usize,
    pub conflict: usize,
    pub overridden: usize,
}

pub(crate) fn counts(items: &[Item]) -> Counts {
    let mut c = Counts::default();
    for i in items {
        match i.action {
            Action::Create => c.create += 1,
            Action::Update => c.update += 1,
            Action::Unchanged => c.unchanged += 1,
            Action::Restamp => c.restamp += 1,
            Action::Conflict(_) => c.conflict += 1,
        }
        c.overridden += usize::from(i.overridden);
    }
    c
}

#[derive(Serialize, Clone, Debug)]
pub(crate) struct NotWritten {
    pub name: String,
    pub reason: String,
}

/// What a seed did: written, and not written with the reason.
#[derive(Debug, Clone, Default)]
pub(crate) struct SeedRun {
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
    pub(crate) fn planned(items: &[Item]) -> SeedRun {
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
    pub(crate) fn into_result(self) -> Result<()> {
        self.into_result_after_plan(false)
    }

    /// Like [`SeedRun::into_result`]; with `plan_shown`, conflicts the
    /// printed plan named are counted, not listed again.
    pub(crate) fn into_result_after_plan(self, plan_shown: bool) -> Result<()> {
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

/// Reads the store and plans every fixture.
pub(crate) fn plan_for(
    store: &mut dyn SecretProvider,
    desired: &SecretSet,
    force: bool,
) -> Result<Vec<Item>> {
    let current = store.read(&desired.names())?;
    Ok(plan(desired, &current, force))
}

/// ESO's access to a Vault store, planned and applied in one go (for
/// `migrate`, which seeds without printing a plan): what it did, for the
/// journal. `None` for stores other than Vault.
pub(crate) fn ensure_eso_access(
    store: &dyn SecretProvider,
    cfg: &Config,
    env: &str,
) -> Result<Option<String>> {
    let Some(http) = store.vault_http() else {
        return Ok(None);
    };
    let names = eso_access::EsoNames::load(&cfg.root, env)?;
    let plan = eso_access::plan(http, &names, &cfg.kubeconfig)?;
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
pub(crate) fn apply(
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

/// The plan by name and 8-character checksum; never a value.
pub(crate) fn render_plan(items: &[Item], verbose: bool) -> String {
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

pub(crate) fn counts_line(c: &Counts) -> String {
    format!(
        "{} create, {} update, {} unchanged, {} restamp, {} conflict",
        c.create, c.update, c.unchanged, c.restamp, c.conflict
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fsutil::sha256_hex;
    use crate::secrets::fixtures::Entry;

    fn set(pairs: &[(&str, &str)]) -> SecretSet {
        let mut s = SecretSet::default();
        for (n, v) in pairs {
            s.entries.insert(
                n.to_string(),
                Entry {
                    value: v.to_string(),
                    sha256: sha256_hex(v.as_bytes()),
                    overridden: false,
                },
            );
        }
        s
    }

    fn cur(value: &str, seeded: Option<&str>, version: u64) -> Option<Current> {
        Some(Current {
            sha256: Some(sha256_hex(value.as_bytes())),
            properties: vec!["value".into()],
            version: Some(version),
            seeded_sha256: seeded.map(|s| sha256_hex(s.as_bytes())),
            stamp_stale: false,
            raw_sha256: None,
        })
    }

    #[test]
    fn classifies_every_case() {
        let desired = set(&[
            ("new", "a"),
            ("same", "b"),
            ("stale", "c2"),
            ("edited", "d"),
            ("unstamped", "e"),
        ]);
        let mut current = BTreeMap::new();
        current.insert("new".to_string(), None);
        current.insert("same".to_string(), cur("b", Some("b"), 3));
        current.insert("stale".to_string(), cur("c1", Some("c1"), 2));
        current.insert("edited".to_string(), cur("d-by-hand", Some("d-old"), 5));
        current.insert("unstamped".to_string(), cur("e", None, 1));
        let items = plan(&desired, &current, false);
        let got: Vec<(&str, &str, Option<u64>)> = items
            .iter()
            .map(|i| (i.name.as_str(), i.action.label(), i.cas))
            .collect();
        assert_eq!(
            got,
            vec![
                ("edited", "conflict", Some(5)),
                ("new", "create", Some(0)),
                ("same", "unchanged", Some(3)),
                ("stale", "update", Some(2)),
                ("unstamped", "restamp", Some(1)),
            ]
        );
        let forced = plan(&desired, &current, true);
        assert_eq!(forced[0].action, Action::Update);
        let c = counts(&items);
        assert_eq!(
            (c.create, c.update, c.unchanged, c.restamp, c.conflict),
            (1, 1, 1, 1, 1)
        );
    }

    #[test]
    fn bare_values_are_rewritten_only_when_ours_or_forced() {
        let desired = set(&[
            ("fixture", "f"),
            ("seeded", "s2"),
            ("foreign", "x"),
            ("stale-stamp", "t"),
        ]);
        let raw = |value: &str, seeded: Option<&str>| {
            Some(Current {
                raw_sha256: Some(sha256_hex(value.as_bytes())),
                seeded_sha256: seeded.map(|s| sha256_hex(s.as_bytes())),
                ..Current::default()
            })
        };
        let mut current = BTreeMap::new();
        current.insert("fixture".to_string(), raw("f", None));
        current.insert("seeded".to_string(), raw("s1", Some("s1")));
        current.insert("foreign".to_string(), raw("by-hand", None));
        current.insert("stale-stamp".to_string(), raw("by-hand", Some("t-old")));
        let labels = |force| {
            plan(&desired, &current, force)
                .into_iter()
                .map(|i| (i.name, i.action.label()))
                .collect::<Vec<_>>()
        };
        assert_eq!(
            labels(false),
            vec![
                ("fixture".to_string(), "update"),
                ("foreign".to_string(), "conflict"),
                ("seeded".to_string(), "update"),
                ("stale-stamp".to_string(), "conflict"),
            ]
        );
        assert!(labels(true).iter().all(|(_, l)| *l == "update"));
        let reason = match &plan(&desired, &current, false)[1].action {
            Action::Conflict(r) => r.clone(),
            other => panic!("{other:?}"),
        };
        assert!(
            reason.contains("bare value") && !reason.contains("by-hand"),
            "{reason}"
        );
    }

    #[test]
    fn conflict_reasons_hold_checksums_not_values() {
        let desired = set(&[("k", "wanted-value")]);
        let mut current = BTreeMap::new();
        current.insert(
            "k".to_string(),
            cur("hand-edited-value", Some("older-value"), 4),
        );
        let items = plan(&desired, &current, false);
        let Action::Conflict(reason) = &items[0].action else {
            panic!("expected a conflict")
        };
        assert!(
            reason.contains(&sha256_hex(b"hand-edited-value")[..8]),
            "{reason}"
        );
        assert!(!reason.contains("hand-edited-value") && !reason.contains("older-value"));
    }

    /// Every output built from a plan (the JSON of its items, the text
    /// plan, conflict reasons, the run's error) over known values: none
    /// holds a value, its full sha256, or any hex run longer than the 8
    /// digits output shows.
    #[test]
    fn no_output_carries_a_value_or_a_full_digest() {
        use crate::secrets::provider::SEEDED_ANOTHER_VALUE;

        let values = [
            "canary-create",
            "canary-fixture-2",
            "canary-seeded-1",
            "canary-same",
            "canary-hand-edit",
            "canary-last-seeded",
            "canary-restamp",
            "canary-bare",
            "canary-v1-hand-edit",
            "canary-no-value",
        ];
        let desired = set(&[
            ("created", values[0]),
            ("updated", values[1]),
            ("same", values[3]),
            ("edited", values[1]),
            ("restamped", values[6]),
            ("bare", values[1]),
            ("v1-edited", values[1]),
            ("no-value", values[1]),
        ]);
        let mut current = BTreeMap::new();
        current.insert("created".to_string(), None);
        current.insert("updated".to_string(), cur(values[2], Some(values[2]), 2));
        current.insert("same".to_string(), cur(values[3], Some(values[3]), 1));
        current.insert("edited".to_string(), cur(values[4], Some(values[5]), 4));
        current.insert("restamped".to_string(), cur(values[6], None, 1));
        current.insert(
            "bare".to_string(),
            Some(Current {
                raw_sha256: Some(sha256_hex(values[7].as_bytes())),
                ..Current::default()
            }),
        );
        current.insert(
            "v1-edited".to_string(),
            Some(Current {
                seeded_sha256: Some(SEEDED_ANOTHER_VALUE.to_string()),
                ..cur(values[8], None, 0).unwrap()
            }),
        );
        current.insert(
            "no-value".to_string(),
            Some(Current {
                properties: vec!["password".into()],
                ..Current::default()
            }),
        );
        let mut outputs = Vec::new();
        for force in [false, true] {
            let items = plan(&desired, &current, force);
            assert!(
                items
                    .iter()
                    .any(|i| matches!(i.action, Action::Conflict(_)))
                    != force
            );
            outputs.push(serde_json::to_string_pretty(&items).unwrap());
            outputs.push(render_plan(&items, true));
            outputs.push(render_plan(&items, false));
            outputs.push(counts_line(&counts(&items)));
            let conflicts: Vec<NotWritten> = items
                .iter()
                .filter_map(|i| match &i.action {
                    Action::Conflict(reason) => Some(NotWritten {
                        name: i.name.clone(),
                        reason: reason.clone(),
                    }),
                    _ => None,
                })
                .collect();
            outputs.push(serde_json::to_string(&conflicts).unwrap());
            let run = SeedRun {
                not_written: conflicts,
                ..SeedRun::default()
            };
            if let Err(e) = run.into_result() {
                outputs.push(format!("{e:#}"));
            }
        }
        let all = outputs.join("\n");
        assert!(all.contains("\"checksum\""), "{all}");
        for value in values {
            assert!(!all.contains(value), "the value {value} leaks:\n{all}");
            let digest = sha256_hex(value.as_bytes());
            assert!(
                !all.contains(&digest),
                "the sha256 of {value} leaks:\n{all}"
            );
            assert!(
                !all.contains(&digest[..9]),
                "more than 8 hex of {value}'s sha256:\n{all}"
            );
        }
        let longest = all
            .split(|c: char| !c.is_ascii_hexdigit())
            .map(str::len)
            .max()
            .unwrap_or(0);
        assert!(longest <= 8, "a hex run of {longest} digits:\n{all}");
        // The 8-digit prefix is what output shows.
        assert!(all.contains(&sha256_hex(values[1].as_bytes())[..8]));
    }
}

#[cfg(test)]
mod run_tests {
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
