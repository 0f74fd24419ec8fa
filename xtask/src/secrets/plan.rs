//! What the seed will do: the desired fixtures against the store's state.

use std::collections::BTreeMap;

use serde::Serialize;

use crate::fsutil;
use crate::secrets::fixtures::SecretSet;
use crate::secrets::provider::Current;

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case", tag = "kind", content = "reason")]
pub enum Action {
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
    pub fn label(&self) -> &'static str {
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
pub struct Item {
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
    pub fn writes(&self) -> bool {
        matches!(
            self.action,
            Action::Create | Action::Update | Action::Restamp
        )
    }
}

/// Plans every desired entry. `force` turns conflicts into updates.
pub fn plan(
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
pub struct Counts {
    pub create: usize,
    pub update: usize,
    pub unchanged: usize,
    pub restamp: usize,
    pub conflict: usize,
    pub overridden: usize,
}

pub fn counts(items: &[Item]) -> Counts {
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
        use crate::secrets::seed::{counts_line, render_plan, NotWritten, SeedRun};
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
