//! Seeding: plan the fixtures against the store (create, update, unchanged,
//! restamp, conflict), write what changed, report what did not land.

use std::collections::{BTreeMap, HashSet};

use anyhow::{bail, Result};
use serde::Serialize;

use crate::output::{capped, count, NAMES_SHOWN};
use crate::secrets::config::Config;
use crate::secrets::eso_access;
use crate::secrets::fixtures::SecretSet;
use crate::secrets::provider::vault_http::NOT_ATTEMPTED;
use crate::secrets::provider::{Current, Currents, DigestKey, Outcome, SecretProvider, Write};
use crate::PartialError;

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case", tag = "kind", content = "reason")]
pub(crate) enum Action {
    Create,
    /// In the store with a stale value the seed itself wrote.
    Update,
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
    /// The desired and the stored value's checksums, keyed ([`DigestKey::shown`]): even
    /// 8 digits of a plain sha256 let anyone test a guess at a weak value.
    pub checksum: String,
    pub current_checksum: Option<String>,
    #[serde(skip)]
    pub sha256: String,
    #[serde(skip)]
    pub cas: Option<u64>,
}

/// Plans every desired entry. `force` turns conflicts into updates.
pub(crate) fn plan(
    desired: &SecretSet,
    current: &Currents,
    force: bool,
    key: &DigestKey,
) -> Vec<Item> {
    let plan_one = |entry: &crate::secrets::fixtures::Entry, c: &Current| {
        let wanted = Some(entry.sha256.as_str());
        // A bare value where `{"value": ...}` belongs: rewritten when the fixture's or the seed's.
        if c.raw_sha256.is_some() {
            let ours = c.raw_sha256.as_deref() == wanted || c.raw_sha256 == c.seeded_sha256;
            return if ours || force {
                Action::Update
            } else {
                Action::Conflict(RAW_CONFLICT.into())
            };
        }
        if c.sha256.as_deref() == wanted {
            let stamped = c.seeded_sha256.as_deref() == wanted && !c.stamp_stale;
            return if stamped { Action::Unchanged } else { Action::Restamp };
        }
        // The seed may replace only what it wrote itself and nobody touched since.
        let ours = c.sha256.is_some() && c.seeded_sha256 == c.sha256;
        if ours || force {
            Action::Update
        } else {
            Action::Conflict(conflict_reason(c, key))
        }
    };
    let items = desired.entries.iter().map(|(name, entry)| {
        let cur = current.get(name).cloned().flatten();
        let (action, cas) = match &cur {
            None => (Action::Create, Some(0)),
            // A KV v2 entry whose latest version was deleted: re-create on top of it.
            Some(c) if c.raw_sha256.is_none() && c.sha256.is_none() && c.properties.is_empty() => {
                (Action::Create, Some(c.version.unwrap_or(0)))
            }
            Some(c) => (plan_one(entry, c), c.version),
        };
        Item {
            name: name.clone(),
            action,
            overridden: entry.overridden,
            checksum: key.shown(&entry.sha256),
            current_checksum: cur.and_then(|c| c.sha256).map(|sha| key.shown(&sha)),
            sha256: entry.sha256.clone(),
            cas,
        }
    });
    items.collect()
}

const RAW_CONFLICT: &str = "holds a bare value where {\"value\": ...} belongs, and not the fixture's; --force \
                            replaces it, or copy your value into .local/secrets/overrides.json to keep it";

fn conflict_reason(c: &Current, key: &DigestKey) -> String {
    let shown = |s: &Option<String>| s.as_deref().map(|s| key.shown(s)).unwrap_or_default();
    let (store, seeded) = (shown(&c.sha256), shown(&c.seeded_sha256));
    // KV v1's record keeps keyed digests, not checksums: no last-seeded checksum to name.
    let seeded_checksum = c
        .seeded_sha256
        .as_deref()
        .is_some_and(|s| s.len() == 64 && s.bytes().all(|b| b.is_ascii_hexdigit()));
    match (&c.sha256, &c.seeded_sha256) {
        (Some(_), Some(_)) if !seeded_checksum => format!(
            "changed outside the seed (store {store}, not what the seed last wrote); --force overwrites it, or \
             copy your value into .local/secrets/overrides.json to keep it"
        ),
        (None, _) => format!(
            "the entry has no string property `value` (properties: {}); --force replaces it",
            if c.properties.is_empty() { "none".to_string() } else { c.properties.join(", ") }
        ),
        (Some(_), None) => "the entry was not written by the seed; --force overwrites it, or copy your value into \
                            .local/secrets/overrides.json to keep it"
            .to_string(),
        (Some(_), Some(_)) => format!(
            "changed outside the seed (store {store}, last seeded {seeded}); --force overwrites it, or copy your \
             value into .local/secrets/overrides.json to keep it"
        ),
    }
}

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
        *match i.action {
            Action::Create => &mut c.create,
            Action::Update => &mut c.update,
            Action::Unchanged => &mut c.unchanged,
            Action::Restamp => &mut c.restamp,
            Action::Conflict(_) => &mut c.conflict,
        } += 1;
        c.overridden += usize::from(i.overridden);
    }
    c
}

#[derive(Serialize, Clone, Debug)]
pub(crate) struct NotWritten {
    pub name: String,
    pub reason: String,
}

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
                run.not_written.push(NotWritten { name: i.name.clone(), reason: reason.clone() });
            }
        }
        run
    }

    /// Partial (exit 3) when some writes failed after others landed, failed
    /// (1) when nothing landed or conflicts remain; the cause first.
    pub(crate) fn into_result(self) -> Result<()> {
        self.into_result_after_plan(false)
    }

    /// With `plan_shown`, conflicts the printed plan named are counted, not listed again.
    pub(crate) fn into_result_after_plan(self, plan_shown: bool) -> Result<()> {
        if self.not_written.is_empty() && self.unstamped.is_empty() {
            return Ok(());
        }
        // A set, not `Vec::contains`: a run may fail 10,000 writes.
        let failed_names: HashSet<&str> = self.failed.iter().map(String::as_str).collect();
        let (failed, conflicts): (Vec<&NotWritten>, Vec<&NotWritten>) =
            (self.not_written.iter()).partition(|n| failed_names.contains(n.name.as_str()));
        let unstamped: Vec<&NotWritten> = self.unstamped.iter().collect();
        let cause = cause_of(&[&failed[..], &unstamped].concat());
        let is_cause = |reason: &str| Some(reason) == cause.as_deref();
        let mut lines: Vec<String> = Vec::new();
        for (what, entries) in
            [("not written", &failed), ("written without their checksum", &unstamped)]
        {
            // The cause's own group first, the writes skipped after it last.
            let mut groups = by_reason(entries);
            groups.sort_by_key(|(reason, _)| match reason.as_str() {
                r if is_cause(r) => 0,
                NOT_ATTEMPTED => 2,
                _ => 1,
            });
            for (reason, names) in groups {
                let label = match reason.as_str() {
                    NOT_ATTEMPTED => format!("{what}, not attempted after that failure"),
                    r if is_cause(r) => format!("{what}, for that reason"),
                    _ => format!("{what}: {reason}"),
                };
                lines.push(format!("  {label} ({}): {}", names.len(), capped(&names)));
            }
        }
        let listed: Vec<&&NotWritten> = (conflicts.iter())
            .filter(|n| !(plan_shown && self.planned_conflicts.contains(&n.name)))
            .collect();
        let in_plan = match conflicts.len() - listed.len() {
            0 => String::new(),
            _ if listed.is_empty() => " (listed in the plan above)".to_string(),
            n => format!(" ({n} listed in the plan above)"),
        };
        let conflict_line = match conflicts.len() {
            0 => String::new(),
            n => format!(
                "{} not written{in_plan}: changed outside the seed, so kept. Keep your own values in \
                 .local/secrets/overrides.json, or overwrite with --force.",
                count(n, "conflict", "conflicts")
            ),
        };
        if !conflicts.is_empty() && (!failed.is_empty() || !unstamped.is_empty()) {
            lines.push(format!("  {conflict_line}"));
        }
        let shown = listed.iter().take(NAMES_SHOWN);
        lines.extend(shown.map(|n| format!("  {}: {}", n.name, n.reason)));
        if let Some(hidden) = listed.len().checked_sub(NAMES_SHOWN).filter(|n| *n > 0) {
            lines.push(format!("  and {hidden} more conflicts"));
        }
        let many = self.not_written.len() + self.unstamped.len() > NAMES_SHOWN;
        let more = if many { " `--output json` lists every name." } else { "" };
        let body = lines.join("\n");
        let cause = cause.unwrap_or_default();
        let (written, not_written) = (self.written.len(), self.not_written.len());
        if written > 0 && (!self.failed.is_empty() || !self.unstamped.is_empty()) {
            let n = self.unstamped.len();
            let without =
                if n > 0 { format!(" ({n} without their checksum)") } else { String::new() };
            return Err(PartialError(format!(
                "partial seed: {cause}\n  {written} written{without}, {not_written} not written. Re-run the same \
                 command to finish: it writes only what is still missing, and records missing checksums.{more}\n\
                 {body}"
            ))
            .into());
        }
        if !self.failed.is_empty() {
            let secrets = count(self.failed.len(), "secret", "secrets");
            bail!("{cause}\n  {secrets} not written; the store is unchanged.{more}\n{body}");
        }
        let sep = if body.is_empty() { "" } else { "\n" };
        bail!("{conflict_line}{more}{sep}{body}")
    }
}

/// The reason most failed writes give, leaving out the writes skipped because of it.
fn cause_of(failed: &[&NotWritten]) -> Option<String> {
    by_reason(failed)
        .into_iter()
        .filter(|(reason, _)| reason != NOT_ATTEMPTED)
        .max_by_key(|(_, names)| names.len())
        .map(|(reason, _)| reason)
        .or_else(|| (!failed.is_empty()).then(|| NOT_ATTEMPTED.to_string()))
}

/// Names grouped by reason, largest group first; a reason naming its entry's path
/// (`POST secret/data/<name> ...`) groups with the same reason for other entries.
fn by_reason<'a>(entries: &[&'a NotWritten]) -> Vec<(String, Vec<&'a str>)> {
    let mut groups: BTreeMap<String, (&str, Vec<&str>)> = BTreeMap::new();
    for n in entries {
        let reason = match n.reason.ends_with(NOT_ATTEMPTED) {
            true => NOT_ATTEMPTED.to_string(),
            false => generic_reason(&n.reason, &n.name),
        };
        let group = groups.entry(reason).or_insert((&n.reason, vec![]));
        group.1.push(&n.name);
    }
    // A reason only one entry gives is shown as it was said.
    let single = |generic: &String, names: &Vec<&str>| names.len() == 1 && generic != NOT_ATTEMPTED;
    let mut out: Vec<(String, Vec<&str>)> = (groups.into_iter())
        .map(|(g, (first, names))| (if single(&g, &names) { first.to_string() } else { g }, names))
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
    out + rest
}

pub(crate) fn plan_for(
    store: &mut dyn SecretProvider,
    desired: &SecretSet,
    force: bool,
    key: &DigestKey,
) -> Result<Vec<Item>> {
    let current = store.read(&desired.names(), desired)?;
    Ok(plan(desired, &current, force, key))
}

/// ESO's access to a Vault store, planned and applied (`migrate` prints no plan): for the journal.
pub(crate) fn ensure_eso_access(
    store: &dyn SecretProvider,
    cfg: &Config,
    env: &str,
) -> Result<Option<String>> {
    let Some(http) = store.vault_http() else { return Ok(None) };
    let names = eso_access::EsoNames::load(&cfg.root, env)?;
    let plan = eso_access::plan(http, &names, &cfg.kubeconfig)?;
    let done = eso_access::apply(http, &plan)?;
    let mut parts = vec![match done.written.is_empty() {
        true => "ESO's access in place".to_string(),
        false => format!("ESO's access: ensured {}", done.written.join(", ")),
    }];
    parts.extend(done.notes);
    for item in &plan.items {
        if let eso_access::State::Skipped(why) = &item.state {
            parts.push(format!("{} skipped: {why}", item.label()));
        }
    }
    parts.extend((done.not_written.iter()).map(|(what, why)| format!("{what} not set up: {why}")));
    Ok(Some(parts.join("; ")))
}

/// Writes what the plan says; never a value in the result.
pub(crate) fn apply(
    store: &mut dyn SecretProvider,
    desired: &SecretSet,
    items: &[Item],
) -> Result<SeedRun> {
    let mut run = SeedRun::planned(items);
    let writes: Vec<Write<'_>> = (items.iter())
        .filter(|i| matches!(i.action, Action::Create | Action::Update | Action::Restamp))
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

/// The plan by name and 8-character checksum; never a value.
pub(crate) fn render_plan(items: &[Item], verbose: bool) -> String {
    use std::fmt::Write;
    let width =
        (items.iter().map(|i| i.name.len() + if i.overridden { 11 } else { 0 })).max().unwrap_or(0);
    let mut out = String::new();
    let mut unchanged = 0;
    // Without --verbose, at most NAMES_SHOWN entries per action.
    let mut shown: BTreeMap<&str, usize> = BTreeMap::new();
    let mut hidden: Vec<(&str, usize)> = Vec::new();
    for i in items {
        let label = i.action.label();
        if i.action == Action::Unchanged && !verbose {
            unchanged += 1;
            continue;
        }
        let n = shown.entry(label).or_default();
        *n += 1;
        if *n > NAMES_SHOWN && !verbose {
            match hidden.iter_mut().find(|(l, _)| *l == label) {
                Some((_, k)) => *k += 1,
                None => hidden.push((label, 1)),
            }
            continue;
        }
        let name = if i.overridden { format!("{} (override)", i.name) } else { i.name.clone() };
        let sum = &i.checksum;
        let detail = match (&i.action, &i.current_checksum) {
            (Action::Update, Some(cur)) => format!("{cur} -> {sum}"),
            (Action::Conflict(reason), _) => format!("{sum}: {reason}"),
            _ => sum.clone(),
        };
        let _ = writeln!(out, "  {label:<10} {name:<width$}  {detail}");
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

    fn key() -> DigestKey {
        DigestKey::fixed("0123456789abcdef0123456789abcdef")
    }

    fn sha(value: &str) -> Option<String> {
        Some(sha256_hex(value.as_bytes()))
    }

    fn cur(value: &str, seeded: Option<&str>, version: u64) -> Option<Current> {
        Some(Current {
            sha256: sha(value),
            properties: vec!["value".into()],
            version: Some(version),
            seeded_sha256: seeded.and_then(sha),
            ..Current::default()
        })
    }

    fn raw(value: &str, seeded: Option<&str>) -> Option<Current> {
        let (raw_sha256, seeded_sha256) = (sha(value), seeded.and_then(sha));
        Some(Current { raw_sha256, seeded_sha256, ..Current::default() })
    }

    fn state(pairs: Vec<(&str, Option<Current>)>) -> Currents {
        pairs.into_iter().map(|(n, c)| (n.to_string(), c)).collect()
    }

    /// (name, fixture value, store, action, action with --force, cas): bare values are rewritten
    /// only when they are the fixture's or the seed's own.
    #[test]
    fn classifies_every_case() {
        let deleted = Some(Current { version: Some(7), ..Current::default() });
        let cases = [
            ("new", "a", None, "create", "create", Some(0)),
            ("same", "b", cur("b", Some("b"), 3), "unchanged", "unchanged", Some(3)),
            ("stale", "c2", cur("c1", Some("c1"), 2), "update", "update", Some(2)),
            ("edited", "d", cur("d-by-hand", Some("d-old"), 5), "conflict", "update", Some(5)),
            ("unstamped", "e", cur("e", None, 1), "restamp", "restamp", Some(1)),
            ("deleted", "f", deleted, "create", "create", Some(7)),
            ("bare-fixture", "f", raw("f", None), "update", "update", None),
            ("bare-seeded", "s2", raw("s1", Some("s1")), "update", "update", None),
            ("bare-foreign", "x", raw("by-hand", None), "conflict", "update", None),
            ("bare-stale-stamp", "t", raw("by-hand", Some("t-old")), "conflict", "update", None),
        ];
        let desired = SecretSet::of(&cases.iter().map(|c| (c.0, c.1)).collect::<Vec<_>>());
        let current = state(cases.iter().map(|c| (c.0, c.2.clone())).collect());
        for force in [false, true] {
            for i in plan(&desired, &current, force, &key()) {
                let (.., action, forced, cas) = cases.iter().find(|c| c.0 == i.name).unwrap();
                let want = if force { forced } else { action };
                assert_eq!((i.action.label(), i.cas), (*want, *cas), "{} {force}", i.name);
                if let (Action::Conflict(reason), "bare-foreign") = (&i.action, i.name.as_str()) {
                    assert!(
                        reason.contains("bare value") && !reason.contains("by-hand"),
                        "{reason}"
                    );
                }
            }
        }
        let c = counts(&plan(&desired, &current, false, &key()));
        assert_eq!((c.create, c.update, c.unchanged, c.restamp, c.conflict), (2, 3, 1, 1, 3));
    }

    /// No output built from a plan (its items' JSON, the text plan, conflict reasons, the run's
    /// error) holds a value or more of a sha256 than the 8 digits shown.
    #[test]
    fn no_output_carries_a_value_or_a_full_digest() {
        use crate::secrets::provider::SEEDED_ANOTHER_VALUE;

        let fixture = "canary-fixture";
        let desired = SecretSet::of(&[
            ("created", "canary-create"),
            ("updated", fixture),
            ("same", "canary-same"),
            ("edited", fixture),
            ("restamped", "canary-restamp"),
            ("bare", fixture),
            ("v1-edited", fixture),
            ("no-value", fixture),
        ]);
        let seeded = Some(SEEDED_ANOTHER_VALUE.to_string());
        let v1_edited =
            Some(Current { seeded_sha256: seeded, ..cur("canary-v1-edit", None, 0).unwrap() });
        let no_value = Some(Current { properties: vec!["password".into()], ..Current::default() });
        let current = state(vec![
            ("created", None),
            ("updated", cur("canary-seeded-1", Some("canary-seeded-1"), 2)),
            ("same", cur("canary-same", Some("canary-same"), 1)),
            ("edited", cur("canary-hand-edit", Some("canary-last-seeded"), 4)),
            ("restamped", cur("canary-restamp", None, 1)),
            ("bare", raw("canary-bare", None)),
            ("v1-edited", v1_edited),
            ("no-value", no_value),
        ]);
        let mut outputs = Vec::new();
        for force in [false, true] {
            let items = plan(&desired, &current, force, &key());
            let conflicts = items.iter().any(|i| matches!(i.action, Action::Conflict(_)));
            assert!(conflicts != force);
            outputs.push(serde_json::to_string_pretty(&items).unwrap());
            outputs.push(render_plan(&items, true));
            let run = SeedRun::planned(&items);
            outputs.push(serde_json::to_string(&run.not_written).unwrap());
            if let Err(e) = run.into_result() {
                outputs.push(format!("{e:#}"));
            }
        }
        let all = outputs.join("\n");
        assert!(all.contains("\"checksum\"") && !all.contains("canary"), "{all}");
        let hex_runs = all.split(|c: char| !c.is_ascii_hexdigit());
        let longest = hex_runs.map(str::len).max().unwrap_or(0);
        assert!(longest <= 8, "a hex run of {longest} digits:\n{all}");
        // Output shows 8 digits of a keyed digest, the store's in a conflict's reason too,
        // and never the plain sha256's: that would let anyone test a guess.
        for shown in [fixture, "canary-hand-edit"] {
            let sha = sha256_hex(shown.as_bytes());
            assert!(all.contains(&key().shown(&sha)), "{all}");
            assert!(!all.contains(&sha[..8]), "{all}");
        }
    }

    fn item(name: &str, action: Action, value: &str, current: Option<&str>) -> Item {
        Item {
            name: name.into(),
            action,
            overridden: false,
            checksum: key().shown(&sha256_hex(value.as_bytes())),
            current_checksum: current.and_then(sha).map(|s| key().shown(&s)),
            sha256: sha256_hex(value.as_bytes()),
            cas: None,
        }
    }

    #[test]
    fn plan_snapshot() {
        let conflict = Action::Conflict("changed outside the seed".into());
        let items = vec![
            item("graph-db-url", Action::Update, "new-url", Some("old-url")),
            item("keycloak-admin-password", conflict, "kc", Some("x")),
            Item { overridden: true, ..item("platform-db-password", Action::Create, "pw", None) },
            item("redis-password", Action::Unchanged, "r", Some("r")),
            item("minio-root-user", Action::Restamp, "m", Some("m")),
        ];
        let expected = "  update     graph-db-url                     bce5cdce -> 2de4b988
  conflict   keycloak-admin-password          d7ef8e02: changed outside the seed
  create     platform-db-password (override)  19421b08
  restamp    minio-root-user                  63450483
  (1 unchanged; --verbose lists them)
";
        assert_eq!(render_plan(&items, false), expected);
        assert!(render_plan(&items, true).contains("unchanged  redis-password"));
    }

    fn nw(name: &str, reason: &str) -> NotWritten {
        NotWritten { name: name.into(), reason: reason.into() }
    }

    #[test]
    fn failed_and_conflict_error_snapshots() {
        let denied = "permission denied for POST secret/data/a (permission denied).";
        let run = SeedRun {
            failed: vec!["a".into(), "b".into()],
            not_written: vec![
                nw("a", denied),
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
        let raced = "changed by someone else between the read and the write";
        let edited = "changed outside the seed (store 1234abcd)";
        let conflicts = || SeedRun {
            not_written: vec![nw("raced", raced), nw("redis-password", edited)],
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
    }

    #[test]
    fn reasons_naming_their_entry_are_grouped() {
        let stopped = "POST secret/data/a failed with HTTP 0: not attempted: the run stopped";
        let entries = [
            nw("a-1", "POST secret/data/a-1 timed out after 2s."),
            nw("a-2", "POST secret/data/a-2 timed out after 2s."),
            nw("a", stopped),
        ];
        let refs: Vec<&NotWritten> = entries.iter().collect();
        let timed_out = "POST secret/data/<name> timed out after 2s.".to_string();
        let want = [(timed_out, vec!["a-1", "a-2"]), (NOT_ATTEMPTED.to_string(), vec!["a"])];
        assert_eq!(by_reason(&refs), want);
        assert_eq!(generic_reason("x /a-1 /a /a)", "a"), "x /a-1 /<name> /<name>)");
    }
}
