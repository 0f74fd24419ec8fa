//! Reading a whole KV v2 mount at once: `LIST <mount>/detailed-metadata/`
//! (OpenBao 2.2 and later), paged, returns every key's current version,
//! versions and `custom_metadata`. An entry whose seed record names its
//! current, live version holds exactly what the seed wrote; when the
//! record's keyed digest is that of the value this run expects, the entry
//! needs no read of its own.

use std::collections::{BTreeMap, HashMap, HashSet};

use serde::Deserialize;

use super::vault_http::{Method, VaultError, VaultHttp};
use super::vault_record::Record;
use super::{Current, DigestKey, Stamp};
use crate::secrets::fixtures::SecretSet;

/// Keys per page of the detailed listing: bounds the size of one reply.
const DETAILED_PAGE: usize = 1000;

/// One page of `LIST <mount>/detailed-metadata/`.
#[derive(Deserialize)]
struct DetailedPage {
    #[serde(default)]
    keys: Vec<String>,
    #[serde(default)]
    key_info: HashMap<String, KeyInfo>,
}

/// What the detailed listing says about one key; unknown fields are skipped.
#[derive(Deserialize)]
struct KeyInfo {
    #[serde(default)]
    current_version: u64,
    #[serde(default)]
    custom_metadata: serde_json::Value,
    #[serde(default)]
    versions: BTreeMap<String, VersionInfo>,
}

#[derive(Deserialize)]
struct VersionInfo {
    #[serde(default)]
    deletion_time: String,
    #[serde(default)]
    destroyed: bool,
}

impl KeyInfo {
    /// The entry `name` as the seed left it, when its record names the
    /// current, live version and says which value that is: a keyed digest
    /// of the value `expected` holds for the name (verified with `key`), or
    /// an older release's plain checksum (then the record is renewed).
    /// `None`: read the entry to know.
    fn known(&self, name: &str, key: Option<&DigestKey>, expected: &SecretSet) -> Option<Current> {
        let record = Record::read(&self.custom_metadata)?;
        let live = self
            .versions
            .get(&self.current_version.to_string())
            .is_some_and(|v| v.deletion_time.is_empty() && !v.destroyed);
        if record.version? != self.current_version || self.current_version == 0 || !live {
            return None;
        }
        let (sha, stamp_stale) = match record.stamp {
            Stamp::Keyed(digest) => {
                let want = expected.entries.get(name)?;
                if digest != key?.digest(name, &want.value) {
                    return None;
                }
                (want.sha256.clone(), false)
            }
            Stamp::Sha256(sha) => (sha, true),
        };
        Some(Current {
            sha256: Some(sha.clone()),
            properties: vec!["value".into()],
            version: Some(self.current_version),
            seeded_sha256: Some(sha),
            stamp_stale,
            raw_sha256: None,
        })
    }
}

/// Percent-encodes a key for a query string.
fn query_escape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || b"-_.~".contains(&b) {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// The keys of a KV v2 mount that `wanted` names, page by page: each with
/// its state when the listing alone tells it ([`KeyInfo::known`]), else
/// `None` (read the entry). `None` overall when the server has no detailed
/// listing or the token may not use it: then list and read entry by entry.
pub(super) fn detailed_listing(
    http: &VaultHttp,
    mount: &str,
    wanted: &HashSet<&str>,
    key: Option<&DigestKey>,
    expected: &SecretSet,
) -> Result<Option<BTreeMap<String, Option<Current>>>, VaultError> {
    let mut out = BTreeMap::new();
    let mut after: Option<String> = None;
    loop {
        let path = match &after {
            None => format!("{mount}/detailed-metadata/?limit={DETAILED_PAGE}"),
            Some(a) => format!(
                "{mount}/detailed-metadata/?limit={DETAILED_PAGE}&after={}",
                query_escape(a)
            ),
        };
        let reply = match http.try_call(Method::List, &path, None) {
            Ok(r) => r,
            // An older server may not route the path at all.
            Err(VaultError::Status { code: 405, .. }) if after.is_none() => return Ok(None),
            Err(e) => return Err(e),
        };
        match reply.status {
            200 => {}
            // 404 on the first page: an empty mount, or a server without the
            // endpoint; the plain listing tells which. Later: past the end.
            404 if after.is_none() => return Ok(None),
            404 => return Ok(Some(out)),
            401 | 403 if after.is_none() => return Ok(None),
            code => {
                return Err(VaultError::Status {
                    call: format!("LIST {mount}/detailed-metadata/"),
                    code,
                    errors: reply.errors(),
                })
            }
        }
        let mut body = reply.body;
        let page: DetailedPage =
            serde_json::from_value(body["data"].take()).map_err(|e| VaultError::Status {
                call: format!("LIST {mount}/detailed-metadata/"),
                code: 200,
                errors: format!("unexpected reply: {e}"),
            })?;
        let full = page.keys.len() >= DETAILED_PAGE;
        after = page.keys.last().cloned();
        let mut info = page.key_info;
        for name in page.keys {
            if wanted.contains(name.as_str()) {
                let known = info
                    .remove(&name)
                    .and_then(|i| i.known(&name, key, expected));
                out.insert(name, known);
            }
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

    fn info(v: Value) -> KeyInfo {
        serde_json::from_value(v).unwrap()
    }

    fn expecting(name: &str, value: &str) -> SecretSet {
        let mut set = SecretSet::default();
        let entry = Entry {
            value: value.into(),
            sha256: sha256_hex(value.as_bytes()),
            overridden: false,
        };
        set.entries.insert(name.into(), entry);
        set
    }

    #[test]
    fn the_listing_is_trusted_only_for_a_live_recorded_version_of_the_expected_value() {
        let key = DigestKey::fixed(&"k".repeat(64));
        let expected = expecting("n", "x");
        let sha = sha256_hex(b"x");
        let live = json!({"1": {"deletion_time": "", "destroyed": false},
                          "2": {"deletion_time": "", "destroyed": false}});
        let custom = json!({"managed-by": MANAGED_BY, "fixture-hmac": key.digest("n", "x"), "fixture-version": "2"});
        let known = |v: Value| info(v).known("n", Some(&key), &expected);
        let got = known(
            json!({"current_version": 2, "custom_metadata": custom, "versions": live,
                               "cas_required": false, "updated_time": "ignored"}),
        )
        .unwrap();
        assert_eq!(got.sha256.as_deref(), Some(sha.as_str()));
        assert_eq!(got.seeded_sha256.as_deref(), Some(sha.as_str()));
        assert_eq!((got.version, got.stamp_stale), (Some(2), false));
        assert_eq!(got.properties, vec!["value".to_string()]);

        // The stamp is of another value than the expected one (the fixture
        // changed), or nothing is expected, or there is no key: read it.
        let other = json!({"current_version": 2, "custom_metadata": custom, "versions": live});
        assert!(info(other.clone())
            .known("n", Some(&key), &expecting("n", "y"))
            .is_none());
        assert!(info(other.clone())
            .known("n", Some(&key), &SecretSet::default())
            .is_none());
        assert!(info(other.clone()).known("n", None, &expected).is_none());
        let wrong_key = DigestKey::fixed(&"o".repeat(64));
        assert!(info(other)
            .known("n", Some(&wrong_key), &expected)
            .is_none());

        // Written since the record (by hand, a rollback, a patch).
        let edited = json!({"current_version": 3, "custom_metadata": custom,
            "versions": {"2": {"deletion_time": ""}, "3": {"deletion_time": ""}}});
        assert!(known(edited).is_none());
        // The recorded version deleted or destroyed.
        let deleted = json!({"current_version": 2, "custom_metadata": custom,
            "versions": {"2": {"deletion_time": "2026-11-28T04:29:19Z", "destroyed": false}}});
        assert!(known(deleted).is_none());
        let destroyed = json!({"current_version": 2, "custom_metadata": custom,
            "versions": {"2": {"deletion_time": "", "destroyed": true}}});
        assert!(known(destroyed).is_none());
        // Somebody else's record, no record, or a record without a version.
        let mut foreign = custom.clone();
        foreign["managed-by"] = "someone".into();
        assert!(
            known(json!({"current_version": 2, "versions": live, "custom_metadata": foreign}))
                .is_none()
        );
        assert!(
            known(json!({"current_version": 2, "custom_metadata": null, "versions": live}))
                .is_none()
        );
        let mut unversioned = custom.clone();
        unversioned
            .as_object_mut()
            .unwrap()
            .remove("fixture-version");
        assert!(known(
            json!({"current_version": 2, "versions": live, "custom_metadata": unversioned})
        )
        .is_none());
    }

    #[test]
    fn an_older_release_record_is_trusted_as_before_and_renewed() {
        let live = json!({"2": {"deletion_time": "", "destroyed": false}});
        let old =
            json!({"managed-by": MANAGED_BY, "fixture-sha256": "abc", "fixture-version": "2"});
        let got = info(json!({"current_version": 2, "custom_metadata": old, "versions": live}))
            .known("n", None, &SecretSet::default())
            .unwrap();
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
