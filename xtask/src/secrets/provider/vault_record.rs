//! What the seed records about the values it wrote, so that a later run can
//! tell its own writes from hand edits: on KV v2 a stamp in each entry's
//! `custom_metadata` (a keyed digest of the value, and the version); on KV
//! v1, which has no metadata, the digests in the record entry. Either way
//! the digests' key lives in the mount's record entry,
//! `<mount>/_cargo-xtask-secrets` (KV v2: `<mount>/data/_cargo-xtask-secrets`),
//! which only those who may read values can read.
//!
//! Both [`super::vault`] and [`super::vault_listing`] read these; neither
//! imports the other.

use std::collections::BTreeMap;
use std::path::Path;
use std::time::Duration;

use anyhow::{anyhow, bail, Result};
use serde_json::Value;

use super::vault_http::{backoff, json_string, Method, Reply, VaultError, VaultHttp};
use super::{DigestKey, Stamp, MANAGED_BY, SEEDED_ANOTHER_VALUE};
use crate::fsutil::Lock;

// ---------------------------------------------------------------------------
// KV v2: a stamp in each entry's custom_metadata.

/// The seed's record in an entry's `custom_metadata`: its stamp (see
/// [`Stamp`]), and the KV version that stamp describes (unknown: the next
/// run reads the entry and renews the record). Written by [`stamp`], read
/// by [`Record::read`].
pub(super) struct Record {
    pub stamp: Stamp,
    pub version: Option<u64>,
}

impl Record {
    /// The record in `custom_metadata`, if the seed wrote it.
    pub(super) fn read(custom: &Value) -> Option<Record> {
        Some(Record {
            stamp: Stamp::read(custom)?,
            version: custom["fixture-version"]
                .as_str()
                .and_then(|v| v.parse().ok()),
        })
    }
}

/// The metadata write (JSON text) that records `digest` (the keyed digest
/// of the value) at `version`. `merge`: for a merge PATCH, which also drops
/// an older release's plain `fixture-sha256` (a plain write replaces
/// `custom_metadata` whole, and refuses a null).
pub(super) fn stamp(digest: &str, version: Option<u64>, merge: bool) -> String {
    let digest = json_string(digest);
    let managed_by = json_string(MANAGED_BY);
    let version = version
        .map(|v| format!(r#","fixture-version":"{v}""#))
        .unwrap_or_default();
    let retire = if merge {
        r#","fixture-sha256":null"#
    } else {
        ""
    };
    format!(
        r#"{{"custom_metadata":{{"managed-by":{managed_by},"fixture-hmac":{digest}{version}{retire}}}}}"#
    )
}

/// Writes the stamp of `digest` at `version`, merged into the entry's
/// `custom_metadata` so keys a person added there stay; returns the verb
/// that answered. A plain metadata write (which replaces `custom_metadata`
/// whole) stands in when the merge is refused: a policy without the `patch`
/// capability, a server without PATCH, or a 404 from a Raft standby that
/// has not yet applied the entry the value write just created.
pub(super) fn write_stamp(
    http: &VaultHttp,
    meta_path: &str,
    digest: &str,
    version: Option<u64>,
) -> (&'static str, Result<Reply, VaultError>) {
    let whole = || http.call_text(Method::Post, meta_path, &stamp(digest, version, false));
    match http.try_call_text(Method::Patch, meta_path, &stamp(digest, version, true)) {
        Ok(r) if matches!(r.status, 401 | 403 | 404) => ("POST", whole()),
        Err(VaultError::Status { code: 405, .. }) => ("POST", whole()),
        other => ("PATCH", other),
    }
}

/// KV v2: the key of the mount's record entry, `Ok(None)` when there is
/// none, it is not the seed's, or the token may not read it (then no stamp
/// can be verified: every entry that differs from its fixture is a
/// conflict, the safe side). Only [`create_key`] makes one: reading never
/// writes.
pub(super) fn read_key(http: &VaultHttp, mount: &str) -> Result<Option<DigestKey>, VaultError> {
    let path = format!("{mount}/data/{RECORD_NAME}");
    let reply = http.try_call(Method::Get, &path, None)?;
    match reply.status {
        200 => Ok(DigestKey::from_entry(&reply.body["data"]["data"])),
        401 | 403 | 404 => Ok(None),
        code => Err(VaultError::Status {
            call: format!("GET {path}"),
            code,
            errors: reply.errors(),
        }),
    }
}

/// KV v2: creates the mount's record entry with a new key, with
/// check-and-set so that of two first seeds at once one key wins, and
/// returns the key that is there.
pub(super) fn create_key(http: &VaultHttp, mount: &str) -> Result<DigestKey> {
    let path = format!("{mount}/data/{RECORD_NAME}");
    let fresh = DigestKey::generate()?;
    let body = serde_json::json!({"options": {"cas": 0}, "data": fresh.entry()});
    let reply = http.try_call(Method::Post, &path, Some(&body))?;
    let lost_race = reply.status == 400 && reply.errors().contains("check-and-set");
    match reply.status {
        200..=299 => return Ok(fresh),
        // Vault's own words and the usual fix: the token may not write here.
        401 | 403 => {
            return Err(VaultError::Forbidden {
                call: format!("POST {path}"),
                errors: reply.errors(),
            }
            .into())
        }
        _ if lost_race => {}
        code => bail!("POST {path} failed with HTTP {code}: {}", reply.errors()),
    }
    let reply = http.try_call(Method::Get, &path, None)?;
    match reply.status {
        200 => {
            if let Some(key) = DigestKey::from_entry(&reply.body["data"]["data"]) {
                return Ok(key);
            }
        }
        401 | 403 => {
            return Err(VaultError::Forbidden {
                call: format!("GET {path}"),
                errors: reply.errors(),
            }
            .into())
        }
        _ => {}
    }
    bail!(
        "{path} holds something that is not the seed's record (the seed keeps the key of the digests it records \
         there), or its latest version is deleted. A deleted record: `bao kv undelete -mount={mount} \
         -versions=<its latest> {RECORD_NAME}` brings its key back. Anything else: move that entry elsewhere, then \
         re-run. Nothing was written."
    )
}

// ---------------------------------------------------------------------------
// KV v1: one record entry per mount.

/// The record entry's name in a KV v1 mount. The underscore keeps it out of
/// the fixture namespace (`^[0-9a-zA-Z-]{1,127}$`), so no fixture can
/// collide with it; listings and `check` leave it out.
pub(crate) const RECORD_NAME: &str = "_cargo-xtask-secrets";

/// The record entry of a KV v1 mount: for each name, the digests of the
/// values the seed may have written last (one after a clean run; more while
/// a run is under way or after one stopped mid-way).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct MountRecord {
    /// The HMAC key. Random per mount, so the digests match nothing outside
    /// this record and equal values under two names look unrelated.
    key: DigestKey,
    pub digests: BTreeMap<String, Vec<String>>,
}

impl MountRecord {
    fn new(key: DigestKey) -> MountRecord {
        MountRecord {
            key,
            digests: BTreeMap::new(),
        }
    }

    /// The record in a KV v1 entry's data, if the seed wrote it.
    fn parse(data: &Value) -> Option<MountRecord> {
        let key = DigestKey::from_entry(data)?;
        let mut digests = BTreeMap::new();
        for line in data["digests"].as_str()?.lines().filter(|l| !l.is_empty()) {
            let (name, ds) = line.split_once(' ')?;
            let ds = ds
                .split(',')
                .filter(|d| !d.is_empty())
                .map(String::from)
                .collect();
            digests.insert(name.to_string(), ds);
        }
        Some(MountRecord { key, digests })
    }

    /// The entry's data. The digests are one string, a line per name
    /// (`<name> <digest>[,<digest>...]`; names hold no space): OpenBao
    /// refuses a request body with more than 1,000 JSON strings
    /// (`max_request_json_strings`), and a mount holds more names than that.
    fn to_json(&self) -> Value {
        let mut lines = String::new();
        for (name, ds) in &self.digests {
            lines.push_str(name);
            lines.push(' ');
            lines.push_str(&ds.join(","));
            lines.push('\n');
        }
        let mut entry = self.key.entry();
        entry["digests"] = lines.into();
        entry
    }

    pub(super) fn key(&self) -> &str {
        self.key.hex()
    }

    /// The record's digest of `value` under `name`.
    pub(super) fn digest(&self, name: &str, value: &str) -> String {
        self.key.digest(name, value)
    }

    /// What the record says about `value`, now under `name`: the checksum
    /// the seed last wrote there (the value's own when the record knows it,
    /// [`SEEDED_ANOTHER_VALUE`] when it knows only others, `None` when it
    /// knows nothing of the name), and whether the record needs renewing
    /// (it still lists other candidates). `sha256` is the value's checksum,
    /// which the caller has computed already.
    pub(super) fn judge(&self, name: &str, value: &str, sha256: &str) -> (Option<String>, bool) {
        match self.digests.get(name) {
            None => (None, false),
            Some(ds) if ds.is_empty() => (None, false),
            Some(ds) if ds.contains(&self.digest(name, value)) => {
                (Some(sha256.to_string()), ds.len() > 1)
            }
            Some(_) => (Some(SEEDED_ANOTHER_VALUE.to_string()), false),
        }
    }
}

fn record_path(mount: &str) -> String {
    format!("{mount}/{RECORD_NAME}")
}

/// The mount's record entry: `Ok(None)` when there is none, it is not the
/// seed's, or the token may not read it (then every entry that differs from
/// its fixture is a conflict, the safe side).
pub(super) fn read_record(
    http: &VaultHttp,
    mount: &str,
) -> Result<Option<MountRecord>, VaultError> {
    let path = record_path(mount);
    let reply = http.try_call(Method::Get, &path, None)?;
    match reply.status {
        200 => Ok(MountRecord::parse(&reply.body["data"])),
        401 | 403 | 404 => Ok(None),
        code => Err(VaultError::Status {
            call: format!("GET {path}"),
            code,
            errors: reply.errors(),
        }),
    }
}

/// One name whose record changes: the value the seed writes (or found right),
/// and the digests this run read for it (and under which key).
pub(super) struct Change<'a> {
    pub name: &'a str,
    pub value: &'a str,
    pub seen: &'a [String],
    pub seen_key: Option<&'a str>,
}

/// When a record update happens.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Phase {
    /// Before the values are written: add each new value's digest next to
    /// what is there, so a run killed mid-way leaves every value it may have
    /// written recognised.
    Intend,
    /// After: each name that was written names its new value, without the
    /// digests this run had read (others' concurrent additions stay).
    Settle,
}

/// `fresh` (the record as it is now, or a new one with `key`) with `changes`.
fn merge(
    fresh: Option<MountRecord>,
    key: &DigestKey,
    changes: &[Change<'_>],
    phase: Phase,
) -> MountRecord {
    let mut rec = fresh.unwrap_or_else(|| MountRecord::new(key.clone()));
    for c in changes {
        let digest = rec.digest(c.name, c.value);
        let key_now = rec.key().to_string();
        let set = rec.digests.entry(c.name.to_string()).or_default();
        if phase == Phase::Settle && c.seen_key == Some(key_now.as_str()) {
            set.retain(|d| !c.seen.contains(d));
        }
        if !set.contains(&digest) {
            set.push(digest);
        }
    }
    rec
}

/// Whether `rec` holds the new digest of every change.
fn holds(rec: &MountRecord, changes: &[Change<'_>]) -> bool {
    changes.iter().all(|c| {
        rec.digests
            .get(c.name)
            .is_some_and(|ds| ds.contains(&rec.digest(c.name, c.value)))
    })
}

/// Updates the mount's record entry with `changes`. KV v1 has no
/// check-and-set, so this comes as close as it allows: under a local lock
/// (seeds from this checkout take turns), read the entry as it is now, merge,
/// write, read back, and start again if a concurrent writer's version
/// replaced ours.
pub(super) fn update_record(
    http: &VaultHttp,
    mount: &str,
    lock: &Path,
    changes: &[Change<'_>],
    phase: Phase,
) -> Result<()> {
    if changes.is_empty() {
        return Ok(());
    }
    let path = record_path(mount);
    let _lock = Lock::acquire(lock, "update of the KV v1 seed record")?;
    let key = DigestKey::generate()?;
    const ATTEMPTS: u32 = 5;
    for attempt in 0..ATTEMPTS {
        let fresh = read_for_update(http, &path)?;
        let rec = merge(fresh.clone(), &key, changes, phase);
        if fresh.as_ref() == Some(&rec) {
            return Ok(());
        }
        let reply = http.call(Method::Post, &path, Some(&rec.to_json()))?;
        if !(200..300).contains(&reply.status) {
            bail!(
                "POST {path} (the seed's record of what it wrote on this KV v1 mount) failed with HTTP {}: {}",
                reply.status,
                reply.errors()
            );
        }
        if read_for_update(http, &path)?.is_some_and(|now| holds(&now, changes)) {
            return Ok(());
        }
        std::thread::sleep(backoff(attempt).max(Duration::from_millis(20)));
    }
    Err(anyhow!(
        "the seed record {path} kept changing under concurrent writers ({ATTEMPTS} attempts); re-run the seed"
    ))
}

/// The record for an update: like [`read_record`], but an entry that is not
/// the seed's, or a token that may not read it, stops the update.
fn read_for_update(http: &VaultHttp, path: &str) -> Result<Option<MountRecord>> {
    let reply = http.try_call(Method::Get, path, None)?;
    match reply.status {
        200 => match MountRecord::parse(&reply.body["data"]) {
            Some(rec) => Ok(Some(rec)),
            None => bail!(
                "{path} holds something that is not the seed's record (the seed keeps the checksums of what it \
                 wrote to a KV v1 mount there). Move that entry elsewhere, then re-run."
            ),
        },
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
    fn the_kv1_digest_is_unchanged_by_the_move_to_the_hmac_crate() {
        // What the release before wrote (its own HMAC, checked against RFC
        // 4231), here from Python's hmac: records it wrote still verify.
        let rec = MountRecord::new(key('k'));
        assert_eq!(
            rec.digest("n", "seeded"),
            "ad500f2fde10aa64b37c39ee9e2fa278"
        );
    }

    #[test]
    fn judges_values_against_the_record() {
        let mut rec = MountRecord::new(key('k'));
        let ours = rec.digest("n", "seeded");
        rec.digests.insert("n".into(), vec![ours.clone()]);
        assert_eq!(
            rec.judge("n", "seeded", &sha256_hex(b"seeded")),
            (Some(sha256_hex(b"seeded")), false)
        );
        assert_eq!(
            rec.judge("n", "by-hand", &sha256_hex(b"by-hand")),
            (Some(SEEDED_ANOTHER_VALUE.to_string()), false)
        );
        assert_eq!(rec.judge("unknown", "x", &sha256_hex(b"x")), (None, false));
        // Two candidates (a run stopped mid-way): either is ours, and the
        // record needs renewing.
        let next = rec.digest("n", "next");
        rec.digests.insert("n".into(), vec![ours, next]);
        assert_eq!(
            rec.judge("n", "next", &sha256_hex(b"next")),
            (Some(sha256_hex(b"next")), true)
        );
        assert!(rec.judge("n", "seeded", &sha256_hex(b"seeded")).1);
    }

    #[test]
    fn intents_add_and_settling_drops_only_what_this_run_read() {
        let k = key('k');
        let mut start = MountRecord::new(k.clone());
        let old = start.digest("a", "old");
        start.digests.insert("a".into(), vec![old.clone()]);
        let seen = vec![old.clone()];
        let change = [Change {
            name: "a",
            value: "new",
            seen: &seen,
            seen_key: Some(k.hex()),
        }];
        let intended = merge(Some(start.clone()), &key('u'), &change, Phase::Intend);
        let new = start.digest("a", "new");
        assert_eq!(intended.digests["a"], vec![old.clone(), new.clone()]);
        // A concurrent seed added its own candidate meanwhile: it stays.
        let mut concurrent = intended.clone();
        let theirs = start.digest("a", "theirs");
        concurrent
            .digests
            .get_mut("a")
            .unwrap()
            .push(theirs.clone());
        let settled = merge(Some(concurrent), &key('u'), &change, Phase::Settle);
        assert_eq!(settled.digests["a"], vec![new.clone(), theirs]);
        assert!(holds(&settled, &change));
        // Under another key (a concurrent first seed won the race to create
        // the record), what this run read means nothing there: keep all.
        let other = MountRecord::new(key('o'));
        let settled = merge(Some(other.clone()), &key('u'), &change, Phase::Settle);
        assert_eq!(settled.digests["a"], vec![other.digest("a", "new")]);
        // No record yet: a new one with the given key.
        let created = merge(None, &k, &change, Phase::Intend);
        assert_eq!(created.key(), k.hex());
        assert_eq!(MountRecord::parse(&created.to_json()), Some(created));
    }

    #[test]
    fn the_entry_stays_a_handful_of_json_strings_however_many_names() {
        let mut rec = MountRecord::new(key('k'));
        for i in 0..5000 {
            let name = format!("name-{i}");
            let ds = vec![rec.digest(&name, "a"), rec.digest(&name, "b")];
            rec.digests.insert(name, ds);
        }
        let json = rec.to_json();
        let strings = json.as_object().unwrap().len() * 2;
        assert!(strings < 20, "{strings} strings");
        assert_eq!(MountRecord::parse(&json), Some(rec));
    }

    #[test]
    fn the_record_name_can_be_no_fixture_name() {
        assert!(!crate::secrets::fixtures::valid_name(RECORD_NAME));
    }

    #[test]
    fn only_the_seeds_own_record_parses() {
        let rec = MountRecord::new(key('k'));
        let mut v = rec.to_json();
        assert!(MountRecord::parse(&v).is_some());
        v["managed-by"] = "someone".into();
        assert!(MountRecord::parse(&v).is_none());
        assert!(MountRecord::parse(&json!({"value": "x"})).is_none());
        let short_key = json!({"managed-by": MANAGED_BY, "format": DigestKey::FORMAT, "key": "k", "digests": ""});
        assert!(MountRecord::parse(&short_key).is_none());
    }

    #[test]
    fn records_name_the_version_when_known() {
        let s: Value = stamp("abc", Some(7), false).parse().unwrap();
        assert_eq!(s["custom_metadata"]["fixture-version"], "7");
        assert_eq!(s["custom_metadata"]["managed-by"], MANAGED_BY);
        assert_eq!(s["custom_metadata"]["fixture-hmac"], "abc");
        assert!(
            s["custom_metadata"].get("fixture-sha256").is_none(),
            "a whole write carries no null"
        );
        let s: Value = stamp("a\"b", None, true).parse().unwrap();
        assert!(s["custom_metadata"].get("fixture-version").is_none());
        assert_eq!(s["custom_metadata"]["fixture-hmac"], "a\"b", "escaped");
        assert!(
            s["custom_metadata"]["fixture-sha256"].is_null()
                && s["custom_metadata"].get("fixture-sha256").is_some(),
            "a merge drops an older release's plain checksum"
        );
        // What the seed writes reads back as its record.
        let record = Record::read(&s["custom_metadata"]).unwrap();
        assert_eq!(
            (record.stamp, record.version),
            (Stamp::Keyed("a\"b".into()), None)
        );
        let old =
            json!({"managed-by": MANAGED_BY, "fixture-sha256": "abc", "fixture-version": "2"});
        let record = Record::read(&old).unwrap();
        assert_eq!(
            (record.stamp, record.version),
            (Stamp::Sha256("abc".into()), Some(2))
        );
    }
}
