//! Reading a whole KV v2 mount at once: `LIST <mount>/detailed-metadata/`
//! (OpenBao 2.2 and later), paged. An entry whose seed record names its
//! current, live version and the value this run expects needs no read.

use std::collections::{BTreeMap, HashMap, HashSet};

use serde::Deserialize;

use super::vault_http::{Method, VaultError, VaultHttp};
use super::vault_record::Record;
use super::{Current, Currents, DigestKey, Stamp};
use crate::secrets::fixtures::SecretSet;

/// Keys per page: bounds the size of one reply.
const DETAILED_PAGE: usize = 1000;

#[derive(Deserialize, Default)]
#[serde(default)]
struct DetailedPage {
    keys: Vec<String>,
    key_info: HashMap<String, KeyInfo>,
}

/// What the detailed listing says about one key; unknown fields are skipped.
#[derive(Deserialize, Default)]
#[serde(default)]
struct KeyInfo {
    current_version: u64,
    custom_metadata: serde_json::Value,
    versions: BTreeMap<String, VersionInfo>,
}

#[derive(Deserialize, Default)]
#[serde(default)]
struct VersionInfo {
    deletion_time: String,
    destroyed: bool,
}

impl KeyInfo {
    /// The entry `name` as the seed left it, when its record names the
    /// current, live version and the value `expected` holds (or is an older
    /// release's checksum, then renewed). `None`: read the entry.
    fn known(&self, name: &str, key: Option<&DigestKey>, expected: &SecretSet) -> Option<Current> {
        let record = Record::read(&self.custom_metadata)?;
        let version = self.versions.get(&self.current_version.to_string());
        let live = version.is_some_and(|v| v.deletion_time.is_empty() && !v.destroyed);
        if record.version? != self.current_version || self.current_version == 0 || !live {
            return None;
        }
        let (sha, stamp_stale) = match record.stamp {
            Stamp::Keyed(digest) => {
                let want = expected.entries.get(name)?;
                (digest == key?.digest(name, &want.value)).then(|| (want.sha256.clone(), false))?
            }
            Stamp::Sha256(sha) => (sha, true),
        };
        let version = Some(self.current_version);
        let (sha256, seeded_sha256) = (Some(sha.clone()), Some(sha));
        let properties = vec!["value".into()];
        Some(Current { sha256, seeded_sha256, properties, stamp_stale, version, raw_sha256: None })
    }
}

/// Percent-encodes a key for a query string.
fn query_escape(s: &str) -> String {
    let escape = |b: u8| match b {
        b if b.is_ascii_alphanumeric() || b"-_.~".contains(&b) => char::from(b).to_string(),
        b => format!("%{b:02X}"),
    };
    s.bytes().map(escape).collect()
}

/// The keys `wanted` names, each with [`KeyInfo::known`]; `None` overall
/// when the server has no detailed listing or the token may not use it.
pub(super) fn detailed_listing(
    http: &VaultHttp,
    mount: &str,
    wanted: &HashSet<&str>,
    key: Option<&DigestKey>,
    expected: &SecretSet,
) -> Result<Option<Currents>, VaultError> {
    let call = format!("LIST {mount}/detailed-metadata/");
    let failed = |code, errors| VaultError::Status { call: call.clone(), code, errors };
    let mut out = BTreeMap::new();
    let mut after: Option<String> = None;
    loop {
        let cursor = after.as_deref().map(|a| format!("&after={}", query_escape(a)));
        let cursor = cursor.unwrap_or_default();
        let path = format!("{mount}/detailed-metadata/?limit={DETAILED_PAGE}{cursor}");
        let first = after.is_none();
        let reply = match http.try_call(Method::List, &path, None) {
            Ok(r) => r,
            // An older server may not route the path at all.
            Err(VaultError::Status { code: 405, .. }) if first => return Ok(None),
            Err(e) => return Err(e),
        };
        match reply.status {
            200 => {}
            // 404 first: an empty mount or no endpoint (a plain LIST tells); later: the end.
            404 | 401 | 403 if first => return Ok(None),
            404 => return Ok(Some(out)),
            code => return Err(failed(code, reply.errors())),
        }
        let mut body = reply.body;
        let page: DetailedPage = serde_json::from_value(body["data"].take())
            .map_err(|e| failed(200, format!("unexpected reply: {e}")))?;
        let full = page.keys.len() >= DETAILED_PAGE;
        after = page.keys.last().cloned();
        let mut info = page.key_info;
        for name in page.keys.into_iter().filter(|n| wanted.contains(n.as_str())) {
            let known = info.remove(&name).and_then(|i| i.known(&name, key, expected));
            out.insert(name, known);
        }
        if !full || after.is_none() {
            return Ok(Some(out));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fsutil::sha256_hex;
    use crate::secrets::fixtures::Entry;
    use crate::secrets::provider::MANAGED_BY;
    use serde_json::{json, Value};

    /// With a field the listing has and [`KeyInfo`] skips.
    fn info(current: u64, custom: &Value, versions: &Value) -> KeyInfo {
        let mut v =
            json!({"current_version": current, "versions": versions, "cas_required": false});
        v["custom_metadata"] = custom.clone();
        serde_json::from_value(v).unwrap()
    }

    fn expecting(name: &str, value: &str) -> SecretSet {
        let mut set = SecretSet::default();
        let sha256 = sha256_hex(value.as_bytes());
        let entry = Entry { value: value.into(), sha256, overridden: false };
        set.entries.insert(name.into(), entry);
        set
    }

    #[test]
    fn the_listing_is_trusted_only_for_a_live_recorded_version_of_the_expected_value() {
        let key = DigestKey::fixed(&"k".repeat(64));
        let expected = expecting("n", "x");
        let sha = sha256_hex(b"x");
        let live = json!({"1": {}, "2": {"deletion_time": "", "destroyed": false}});
        let custom = json!({"managed-by": MANAGED_BY, "fixture-hmac": key.digest("n", "x"), "fixture-version": "2"});
        let known = |current, custom: &Value, versions: &Value| {
            info(current, custom, versions).known("n", Some(&key), &expected)
        };
        let (sha256, seeded_sha256) = (Some(sha.clone()), Some(sha));
        let properties = vec!["value".into()];
        let want = Current { sha256, seeded_sha256, properties, ..Current::default() };
        assert_eq!(known(2, &custom, &live), Some(Current { version: Some(2), ..want }));

        // The stamp is of another value than the expected one (the fixture
        // changed), or nothing is expected, or there is no key or another: read it.
        let wrong_key = DigestKey::fixed(&"o".repeat(64));
        for (key, expected) in [
            (Some(&key), &expecting("n", "y")),
            (Some(&key), &SecretSet::default()),
            (None, &expected),
            (Some(&wrong_key), &expected),
        ] {
            assert!(info(2, &custom, &live).known("n", key, expected).is_none());
        }

        // Written since the record (by hand, a rollback, a patch).
        assert!(known(3, &custom, &json!({"2": {}, "3": {}})).is_none());
        // The recorded version deleted or destroyed.
        let deleted = json!({"2": {"deletion_time": "2026-11-28T04:29:19Z", "destroyed": false}});
        assert!(known(2, &custom, &deleted).is_none());
        let destroyed = json!({"2": {"deletion_time": "", "destroyed": true}});
        assert!(known(2, &custom, &destroyed).is_none());
        // Somebody else's record, no record, or a record without a version.
        let mut foreign = custom.clone();
        foreign["managed-by"] = "someone".into();
        let mut unversioned = custom.clone();
        unversioned["fixture-version"].take();
        for custom in [foreign, Value::Null, unversioned] {
            assert!(known(2, &custom, &live).is_none(), "{custom}");
        }
    }

    #[test]
    fn an_older_release_record_is_trusted_as_before_and_renewed() {
        let old =
            json!({"managed-by": MANAGED_BY, "fixture-sha256": "abc", "fixture-version": "2"});
        let got = info(2, &old, &json!({"2": {}})).known("n", None, &SecretSet::default()).unwrap();
        assert_eq!(got.sha256.as_deref(), Some("abc"));
        assert_eq!(got.seeded_sha256.as_deref(), Some("abc"));
        assert!(got.stamp_stale, "renewed into a keyed stamp");
    }

    #[test]
    fn escapes_keys_for_the_page_cursor() {
        assert_eq!(query_escape("graph-db_url.v2~"), "graph-db_url.v2~");
        assert_eq!(query_escape("a b&c=d/é"), "a%20b%26c%3Dd%2F%C3%A9");
    }
}
