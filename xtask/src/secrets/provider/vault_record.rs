//! What the seed records of the values it wrote, to tell them from hand edits: a
//! KV v2 stamp per entry, KV v1 digests in the record entry ([`RECORD_NAME`]).

use std::collections::BTreeMap;
use std::path::Path;
use std::time::Duration;

use anyhow::{bail, ensure, Context, Result};
use serde_json::Value;

use super::vault_http::{backoff, json_string, Method, Reply, VaultError, VaultHttp};
use super::{DigestKey, Stamp, MANAGED_BY, SEEDED_ANOTHER_VALUE};
use crate::fsutil::Lock;

/// The seed's [`Stamp`] in a KV v2 entry's `custom_metadata`, and its KV version.
pub(super) struct Record {
    pub stamp: Stamp,
    pub version: Option<u64>,
}

impl Record {
    pub(super) fn read(custom: &Value) -> Option<Record> {
        let version = custom["fixture-version"].as_str().and_then(|v| v.parse().ok());
        Some(Record { stamp: Stamp::read(custom)?, version })
    }
}

/// The metadata write (JSON text) that records `digest` at `version`; a
/// `merge` PATCH also drops an older release's `fixture-sha256`.
pub(super) fn stamp(digest: &str, version: Option<u64>, merge: bool) -> String {
    let (digest, managed_by) = (json_string(digest), json_string(MANAGED_BY));
    let version = version.map(|v| format!(r#","fixture-version":"{v}""#)).unwrap_or_default();
    let retire = if merge { r#","fixture-sha256":null"# } else { "" };
    format!(
        r#"{{"custom_metadata":{{"managed-by":{managed_by},"fixture-hmac":{digest}{version}{retire}}}}}"#
    )
}

/// Writes the stamp merged into `custom_metadata` (keys a person added stay), else
/// whole when the merge is refused (401/403, 405, a lagging standby's 404).
pub(super) fn write_stamp(
    http: &VaultHttp,
    meta_path: &str,
    digest: &str,
    version: Option<u64>,
) -> (&'static str, Result<Reply, VaultError>) {
    let whole =
        || http.call_with(Method::Post, meta_path, Some(&stamp(digest, version, false)), true);
    match http.call_with(Method::Patch, meta_path, Some(&stamp(digest, version, true)), false) {
        Ok(r) if matches!(r.status, 401 | 403 | 404) => ("POST", whole()),
        Err(VaultError::Status { code: 405, .. }) => ("POST", whole()),
        other => ("PATCH", other),
    }
}

/// `parse` of `path`'s data; `None` when absent, foreign or unreadable (conflicts).
fn read_entry<T>(
    http: &VaultHttp,
    path: &str,
    parse: impl Fn(&Value) -> Option<T>,
) -> Result<Option<T>, VaultError> {
    let reply = http.try_call(Method::Get, path, None)?;
    match reply.status {
        200 => Ok(parse(&reply.body["data"])),
        401 | 403 | 404 => Ok(None),
        _ => Err(reply.failed(format!("GET {path}"))),
    }
}

/// KV v2: the key in the mount's record entry; reading never writes one.
pub(super) fn read_key(http: &VaultHttp, mount: &str) -> Result<Option<DigestKey>, VaultError> {
    let path = format!("{mount}/data/{RECORD_NAME}");
    read_entry(http, &path, |data| DigestKey::from_entry(&data["data"]))
}

/// KV v2: creates the record entry with a new key (check-and-set: one first seed wins).
pub(super) fn create_key(http: &VaultHttp, mount: &str) -> Result<DigestKey> {
    let path = format!("{mount}/data/{RECORD_NAME}");
    let fresh = DigestKey::generate()?;
    let body = serde_json::json!({"options": {"cas": 0}, "data": fresh.entry()});
    let reply = http.try_call(Method::Post, &path, Some(&body))?;
    let forbidden = |verb: &str, reply: &Reply| VaultError::Forbidden {
        call: format!("{verb} {path}"),
        errors: reply.errors(),
    };
    match reply.status {
        200..=299 => return Ok(fresh),
        401 | 403 => return Err(forbidden("POST", &reply).into()),
        400 if reply.errors().contains("check-and-set") => {}
        code => bail!("POST {path} failed with HTTP {code}: {}", reply.errors()),
    }
    let reply = http.try_call(Method::Get, &path, None)?;
    match (reply.status, DigestKey::from_entry(&reply.body["data"]["data"])) {
        (200, Some(key)) => return Ok(key),
        (401 | 403, _) => return Err(forbidden("GET", &reply).into()),
        _ => {}
    }
    bail!(
        "{path} holds something that is not the seed's record (the seed keeps the key of the digests it records \
         there), or its latest version is deleted. A deleted record: `bao kv undelete -mount={mount} \
         -versions=<its latest> {RECORD_NAME}` brings its key back. Anything else: move that entry elsewhere, then \
         re-run. Nothing was written."
    )
}

/// The record entry's name: the underscore keeps it out of the fixture namespace.
pub(crate) const RECORD_NAME: &str = "_cargo-xtask-secrets";

/// A KV v1 mount's record entry: per name, the digests of the values the seed may
/// have written last (several while a run is under way or stopped mid-way).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct MountRecord {
    /// Random per mount: the digests match nothing outside this record.
    key: DigestKey,
    pub digests: BTreeMap<String, Vec<String>>,
}

impl MountRecord {
    fn new(key: DigestKey) -> MountRecord {
        MountRecord { key, digests: BTreeMap::new() }
    }

    fn parse(data: &Value) -> Option<MountRecord> {
        let key = DigestKey::from_entry(data)?;
        let mut digests = BTreeMap::new();
        for line in data["digests"].as_str()?.lines().filter(|l| !l.is_empty()) {
            let (name, ds) = line.split_once(' ')?;
            let ds = ds.split(',').filter(|d| !d.is_empty()).map(String::from);
            digests.insert(name.to_string(), ds.collect());
        }
        Some(MountRecord { key, digests })
    }

    /// The entry's data; the digests one string, a line per name: OpenBao refuses
    /// a body of over 1,000 JSON strings.
    fn to_json(&self) -> Value {
        let mut entry = self.key.entry();
        let line = |(name, ds): (&String, &Vec<String>)| format!("{name} {}\n", ds.join(","));
        entry["digests"] = self.digests.iter().map(line).collect::<String>().into();
        entry
    }

    /// As [`super::Stamp::judge`]; `true` when the record lists other candidates.
    pub(super) fn judge(&self, name: &str, value: &str, sha256: &str) -> (Option<String>, bool) {
        match self.digests.get(name) {
            None => (None, false),
            Some(ds) if ds.is_empty() => (None, false),
            Some(ds) if ds.contains(&self.key.digest(name, value)) => {
                (Some(sha256.to_string()), ds.len() > 1)
            }
            Some(_) => (Some(SEEDED_ANOTHER_VALUE.to_string()), false),
        }
    }
}

pub(super) fn read_record(
    http: &VaultHttp,
    mount: &str,
) -> Result<Option<MountRecord>, VaultError> {
    read_entry(http, &format!("{mount}/{RECORD_NAME}"), MountRecord::parse)
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Phase {
    /// Before the writes: add each new value's digest (a killed run's values stay recognised).
    Intend,
    /// After: drop the digests this run had `read` (others' concurrent additions stay).
    Settle,
}

/// `fresh` (or a new record with `key`) with each `(name, value)` of `changes`.
fn merge(
    fresh: Option<MountRecord>,
    key: &DigestKey,
    read: Option<&MountRecord>,
    changes: &[(&str, &str)],
    phase: Phase,
) -> MountRecord {
    let mut rec = fresh.unwrap_or_else(|| MountRecord::new(key.clone()));
    // Under another key (a concurrent first seed won the race), what this run read means nothing.
    let read = read.filter(|r| phase == Phase::Settle && r.key == rec.key);
    for &(name, value) in changes {
        let digest = rec.key.digest(name, value);
        let seen = read.and_then(|r| r.digests.get(name));
        let set = rec.digests.entry(name.to_string()).or_default();
        set.retain(|d| seen.is_none_or(|seen| !seen.contains(d)));
        if !set.contains(&digest) {
            set.push(digest);
        }
    }
    rec
}

fn holds(rec: &MountRecord, changes: &[(&str, &str)]) -> bool {
    changes.iter().all(|&(name, value)| {
        rec.digests.get(name).is_some_and(|ds| ds.contains(&rec.key.digest(name, value)))
    })
}

/// Updates the record entry. Without check-and-set on KV v1: under a local lock,
/// read, merge, write, read back, and again if a concurrent writer replaced ours.
pub(super) fn update_record(
    http: &VaultHttp,
    mount: &str,
    lock: &Path,
    read: Option<&MountRecord>,
    changes: &[(&str, &str)],
    phase: Phase,
) -> Result<()> {
    if changes.is_empty() {
        return Ok(());
    }
    let path = format!("{mount}/{RECORD_NAME}");
    let _lock = Lock::acquire(lock, "update of the KV v1 seed record")?;
    let key = DigestKey::generate()?;
    const ATTEMPTS: u32 = 5;
    for attempt in 0..ATTEMPTS {
        let fresh = read_for_update(http, &path)?;
        let rec = merge(fresh.clone(), &key, read, changes, phase);
        if fresh.as_ref() == Some(&rec) {
            return Ok(());
        }
        let reply = http.call(Method::Post, &path, Some(&rec.to_json()))?;
        let (status, errors) = (reply.status, reply.errors());
        ensure!(
            (200..300).contains(&status),
            "POST {path} (the seed's record of what it wrote on this KV v1 mount) failed with HTTP {status}: {errors}"
        );
        if read_for_update(http, &path)?.is_some_and(|now| holds(&now, changes)) {
            return Ok(());
        }
        std::thread::sleep(backoff(attempt).max(Duration::from_millis(20)));
    }
    bail!("the seed record {path} kept changing under concurrent writers ({ATTEMPTS} attempts); re-run the seed")
}

/// Like [`read_record`], but a foreign entry or a refused read stops the update.
fn read_for_update(http: &VaultHttp, path: &str) -> Result<Option<MountRecord>> {
    let reply = http.try_call(Method::Get, path, None)?;
    match reply.status {
        200 => MountRecord::parse(&reply.body["data"]).map(Some).with_context(|| {
            format!(
                "{path} holds something that is not the seed's record (the seed keeps the checksums of what it \
                 wrote to a KV v1 mount there). Move that entry elsewhere, then re-run."
            )
        }),
        404 => Ok(None),
        401 | 403 => bail!(
            "permission denied reading {path} ({}). On a KV v1 mount the seed records what it wrote in that entry: \
             grant read, create and update on it.",
            reply.errors()
        ),
        code => bail!("GET {path} failed with HTTP {code}: {}", reply.errors()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fsutil::sha256_hex;
    use crate::secrets::provider::MANAGED_BY;
    use serde_json::json;

    fn key(c: char) -> DigestKey {
        DigestKey::fixed(&c.to_string().repeat(64))
    }

    #[test]
    fn judges_values_against_the_record() {
        let mut rec = MountRecord::new(key('k'));
        // From Python's hmac: records of the release before still verify.
        let ours = rec.key.digest("n", "seeded");
        assert_eq!(ours, "ad500f2fde10aa64b37c39ee9e2fa278");
        rec.digests.insert("n".into(), vec![ours.clone()]);
        let judge = |rec: &MountRecord, name: &str, value: &str| {
            rec.judge(name, value, &sha256_hex(value.as_bytes()))
        };
        assert_eq!(judge(&rec, "n", "seeded"), (Some(sha256_hex(b"seeded")), false));
        assert_eq!(judge(&rec, "n", "by-hand"), (Some(SEEDED_ANOTHER_VALUE.into()), false));
        assert_eq!(judge(&rec, "unknown", "x"), (None, false));
        // Two candidates (a run stopped mid-way): either is ours; renew the record.
        let next = rec.key.digest("n", "next");
        rec.digests.insert("n".into(), vec![ours, next]);
        assert_eq!(judge(&rec, "n", "next"), (Some(sha256_hex(b"next")), true));
        assert!(judge(&rec, "n", "seeded").1);
    }

    #[test]
    fn intents_add_and_settling_drops_only_what_this_run_read() {
        let k = key('k');
        let mut start = MountRecord::new(k.clone());
        let digest = |value: &str| k.digest("a", value);
        start.digests.insert("a".into(), vec![digest("old")]);
        let read = Some(&start);
        let change = [("a", "new")];
        let intended = merge(Some(start.clone()), &key('u'), read, &change, Phase::Intend);
        assert_eq!(intended.digests["a"], vec![digest("old"), digest("new")]);
        // A concurrent seed added its own candidate meanwhile: it stays.
        let mut concurrent = intended.clone();
        concurrent.digests.get_mut("a").unwrap().push(digest("theirs"));
        let settled = merge(Some(concurrent), &key('u'), read, &change, Phase::Settle);
        assert_eq!(settled.digests["a"], vec![digest("new"), digest("theirs")]);
        assert!(holds(&settled, &change));
        // Under another key, what this run read means nothing: keep all.
        let other = MountRecord::new(key('o'));
        let settled = merge(Some(other.clone()), &key('u'), read, &change, Phase::Settle);
        assert_eq!(settled.digests["a"], vec![other.key.digest("a", "new")]);
        // No record yet: a new one with the given key.
        let created = merge(None, &k, read, &change, Phase::Intend);
        assert_eq!(created.key, k);
        assert_eq!(MountRecord::parse(&created.to_json()), Some(created));
    }

    #[test]
    fn the_entry_stays_a_handful_of_json_strings_however_many_names() {
        let mut rec = MountRecord::new(key('k'));
        for i in 0..5000 {
            let name = format!("name-{i}");
            let ds = vec![rec.key.digest(&name, "a"), rec.key.digest(&name, "b")];
            rec.digests.insert(name, ds);
        }
        let json = rec.to_json();
        let strings = json.as_object().unwrap().len() * 2;
        assert!(strings < 20, "{strings} strings");
        assert_eq!(MountRecord::parse(&json), Some(rec));
    }

    #[test]
    fn only_the_seeds_own_record_parses_under_no_fixture_name() {
        assert!(!crate::secrets::fixtures::valid_name(RECORD_NAME));
        let mut v = MountRecord::new(key('k')).to_json();
        assert!(MountRecord::parse(&v).is_some());
        v["managed-by"] = "someone".into();
        assert!(MountRecord::parse(&v).is_none());
        assert!(MountRecord::parse(&json!({"value": "x"})).is_none());
        let short_key = json!({"managed-by": MANAGED_BY, "format": DigestKey::FORMAT, "key": "k", "digests": ""});
        assert!(MountRecord::parse(&short_key).is_none());
    }

    #[test]
    fn records_name_the_version_when_known() {
        // A whole write carries no null; a merge drops an older release's checksum.
        let want = json!({"managed-by": MANAGED_BY, "fixture-hmac": "abc", "fixture-version": "7"});
        assert_eq!(stamp("abc", Some(7), false).parse::<Value>().unwrap()["custom_metadata"], want);
        let s: Value = stamp("a\"b", None, true).parse().unwrap();
        let custom = &s["custom_metadata"];
        let want =
            json!({"managed-by": MANAGED_BY, "fixture-hmac": "a\"b", "fixture-sha256": null});
        assert_eq!(custom, &want, "escaped");
        // What the seed writes reads back as its record.
        let read = |custom: &Value| Record::read(custom).map(|r| (r.stamp, r.version));
        assert_eq!(read(custom), Some((Stamp::Keyed("a\"b".into()), None)));
        let old =
            json!({"managed-by": MANAGED_BY, "fixture-sha256": "abc", "fixture-version": "2"});
        assert_eq!(read(&old), Some((Stamp::Sha256("abc".into()), Some(2))));
    }
}
