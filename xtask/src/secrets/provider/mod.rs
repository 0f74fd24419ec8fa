//! Secret stores. Each backend is one file implementing [`SecretProvider`];
//! planning, rendering and the CLI live elsewhere.

pub mod azure;
pub mod file;
pub mod vault;
pub mod vault_http;
mod vault_listing;
mod vault_record;

pub use vault_record::RECORD_NAME;

use std::collections::BTreeMap;

use anyhow::{Context, Result};
use hmac::{Hmac, Mac};
use serde_json::{json, Value};
use sha2::Sha256;

use crate::fsutil::hex;
use crate::secrets::config::{Config, ProviderKind};
use crate::secrets::fixtures;

/// What a store holds for one name.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Current {
    /// sha256 of the `value` property; `None` when the entry has no string `value`.
    pub sha256: Option<String>,
    /// The entry's properties (Vault keys its data by property).
    pub properties: Vec<String>,
    /// The store's version of the entry, for check-and-set.
    pub version: Option<u64>,
    /// What the seed's record says it last wrote there: the value's own
    /// sha256 when the record's keyed digest is of the value there now,
    /// [`SEEDED_ANOTHER_VALUE`] when it is of another value, the recorded
    /// sha256 of an older release's record, or `None` (no record the seed
    /// can verify).
    pub seeded_sha256: Option<String>,
    /// The record names another version than the current one (or none), or
    /// is in an older release's format: the value may still be right, but
    /// the record needs renewing.
    pub stamp_stale: bool,
    /// sha256 of a bare value stored where `{"value": ...}` belongs (Azure
    /// entries written before values were wrapped); `sha256` is then `None`.
    pub raw_sha256: Option<String>,
}

/// One write the seed asks for.
#[derive(Debug, Clone)]
pub struct Write<'a> {
    pub name: &'a str,
    pub value: &'a str,
    pub sha256: &'a str,
    /// Write only if the store's version is still this one (0: must not exist).
    pub cas: Option<u64>,
    /// Only record the checksum; the value is already right.
    pub metadata_only: bool,
}

/// How one write ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    Written,
    /// The value landed but its checksum did not: a re-run restamps it.
    ValueOnly(String),
    /// Someone else changed the entry between our read and our write.
    Conflict(String),
    Failed(String),
}

/// A store that the seed can fill and `check --live` can read.
pub trait SecretProvider {
    /// What it writes to, for humans: never holds a value or token.
    fn target(&self) -> String;
    /// The current state of `names` (absent names map to `None`).
    fn read(&mut self, names: &[String]) -> Result<BTreeMap<String, Option<Current>>>;
    /// Applies the writes; one outcome per write. An `Err` means nothing was
    /// attempted.
    fn write(&mut self, writes: &[Write<'_>]) -> Result<Vec<(String, Outcome)>>;
    /// Every name the store holds.
    fn list(&mut self) -> Result<Vec<String>>;
    /// Requests, writes and retries so far, where the store counts them.
    fn stats(&self) -> Option<(u64, u64, u64)> {
        None
    }
    /// Show progress on standard error during long writes.
    fn set_progress(&mut self, _on: bool) {}
    /// The Vault client, for what the seed sets up besides secrets (ESO's access).
    fn vault_http(&self) -> Option<&vault_http::VaultHttp> {
        None
    }
}

/// Opens the configured store. `allow_non_local` names a host (or kube
/// context, or Azure vault) the guardrail may accept.
pub fn open(cfg: &Config, allow_non_local: Option<&str>) -> Result<Box<dyn SecretProvider>> {
    Ok(match cfg.provider.value {
        ProviderKind::Vault => {
            let mut vault = vault::VaultProvider::connect(cfg, allow_non_local)?;
            // The values this run expects, so the listing can tell an entry
            // that holds its fixture from its keyed record alone. A hint
            // only: without it those entries are read one by one.
            if let Ok((_, desired)) = fixtures::load_configured(cfg) {
                vault.expect(desired);
            }
            Box::new(vault)
        }
        ProviderKind::File => Box::new(file::FileProvider::open(
            &cfg.root,
            &cfg.abs(&cfg.file_store.value),
        )?),
        ProviderKind::Azure => Box::new(azure::AzureProvider::open(cfg, allow_non_local)?),
    })
}

/// Marker recorded next to every entry the seed writes.
pub const MANAGED_BY: &str = "cargo-xtask-secrets";

/// Stands in for the checksum the seed last wrote when the record holds a
/// keyed digest for the name but not of the value there now: the seed wrote
/// something, and this is not it. Never equal to a sha256.
pub const SEEDED_ANOTHER_VALUE: &str = "another value";

/// A store's HMAC key for the digests the seed records beside values. Random
/// per store, and kept in the store where only those who may read values
/// can read it (see docs/secrets.md, "What the seed records"): whoever may
/// only list names, tags or metadata sees digests they cannot test guesses
/// against, and equal values under two names, or in two stores, look
/// unrelated.
#[derive(Clone, PartialEq, Eq)]
pub(crate) struct DigestKey(String);

impl std::fmt::Debug for DigestKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("DigestKey(..)")
    }
}

impl DigestKey {
    /// What a record's `format` says: HMAC-SHA256 keyed with the record's
    /// key (its hex text), over `name NUL value`, first 128 bits in hex.
    pub const FORMAT: &'static str = "hmac-sha256-128/1";

    /// A fresh random key (256 bits, hex).
    pub fn generate() -> Result<DigestKey> {
        use std::io::Read;
        let mut bytes = [0u8; 32];
        std::fs::File::open("/dev/urandom")
            .and_then(|mut f| f.read_exact(&mut bytes))
            .context("reading /dev/urandom for the key of the seed's record")?;
        Ok(DigestKey(hex(&bytes)))
    }

    /// The key in a record entry's JSON, if the seed wrote it.
    pub fn from_entry(data: &Value) -> Option<DigestKey> {
        if data["managed-by"].as_str() != Some(MANAGED_BY)
            || data["format"].as_str() != Some(Self::FORMAT)
        {
            return None;
        }
        let key = data["key"].as_str().filter(|k| k.len() >= 32)?;
        Some(DigestKey(key.to_string()))
    }

    /// The record entry that holds this key (KV v1 adds its digests).
    pub fn entry(&self) -> Value {
        json!({"managed-by": MANAGED_BY, "format": Self::FORMAT, "key": self.0})
    }

    /// A key of the caller's choosing, for tests.
    #[cfg(test)]
    pub fn fixed(hex: &str) -> DigestKey {
        DigestKey(hex.to_string())
    }

    /// Hex; tells two keys apart (compared, never shown).
    pub fn hex(&self) -> &str {
        &self.0
    }

    /// The keyed digest of `value` under `name`: 32 hex digits.
    pub fn digest(&self, name: &str, value: &str) -> String {
        let mut mac = Hmac::<Sha256>::new_from_slice(self.0.as_bytes())
            .expect("HMAC takes a key of any length");
        mac.update(name.as_bytes());
        mac.update(&[0]);
        mac.update(value.as_bytes());
        hex(&mac.finalize().into_bytes()[..16])
    }
}

/// The seed's stamp beside one value: a KV v2 entry's `custom_metadata`, an
/// Azure Key Vault secret's tags. `managed-by` and the keyed digest
/// (`fixture-hmac`); an older release recorded a plain `fixture-sha256`,
/// which is read (and renewed) but never written.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Stamp {
    Keyed(String),
    /// An older release's: the full sha256 of the value it wrote.
    Sha256(String),
}

impl Stamp {
    /// The stamp in a map of strings, if the seed wrote it.
    pub fn read(fields: &Value) -> Option<Stamp> {
        if fields["managed-by"].as_str() != Some(MANAGED_BY) {
            return None;
        }
        if let Some(d) = fields["fixture-hmac"].as_str() {
            return Some(Stamp::Keyed(d.to_string()));
        }
        fields["fixture-sha256"]
            .as_str()
            .map(|s| Stamp::Sha256(s.to_string()))
    }

    /// What the stamp says of `value` (sha256 `sha256`), now under `name`:
    /// [`Current::seeded_sha256`], and whether the stamp must be renewed
    /// (an older release's format). Without the key a keyed stamp tells
    /// nothing: the entry counts as not the seed's.
    pub fn judge(
        &self,
        key: Option<&DigestKey>,
        name: &str,
        value: &str,
        sha256: &str,
    ) -> (Option<String>, bool) {
        match (self, key) {
            (Stamp::Keyed(d), Some(key)) if *d == key.digest(name, value) => {
                (Some(sha256.to_string()), false)
            }
            (Stamp::Keyed(_), Some(_)) => (Some(SEEDED_ANOTHER_VALUE.to_string()), false),
            (Stamp::Keyed(_), None) => (None, false),
            (Stamp::Sha256(old), _) => (Some(old.clone()), true),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fsutil::sha256_hex;

    #[test]
    fn hmac_matches_rfc_4231() {
        // Test case 2, through the same crate and calls as `digest`.
        let mut mac = Hmac::<Sha256>::new_from_slice(b"Jefe").unwrap();
        mac.update(b"what do ya want for nothing?");
        assert_eq!(
            hex(&mac.finalize().into_bytes()),
            "5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843"
        );
    }

    #[test]
    fn digests_are_keyed_bound_to_the_name_and_short() {
        let a = DigestKey::fixed(&"a".repeat(64));
        let b = DigestKey::fixed(&"b".repeat(64));
        let d = a.digest("db-password", "true");
        assert_eq!(d.len(), 32);
        assert_ne!(
            d,
            b.digest("db-password", "true"),
            "another key, another digest"
        );
        assert_ne!(d, a.digest("other-name", "true"), "same value, other name");
        assert!(!sha256_hex(b"true").contains(&d));
        assert_eq!(format!("{a:?}"), "DigestKey(..)", "the key never shows");
    }

    #[test]
    fn a_key_entry_round_trips_and_only_the_seeds_parses() {
        let key = DigestKey::generate().unwrap();
        assert_eq!(key.hex().len(), 64);
        assert_eq!(DigestKey::from_entry(&key.entry()), Some(key.clone()));
        let mut other = key.entry();
        other["managed-by"] = "someone".into();
        assert_eq!(DigestKey::from_entry(&other), None);
        let short = json!({"managed-by": MANAGED_BY, "format": DigestKey::FORMAT, "key": "k"});
        assert_eq!(DigestKey::from_entry(&short), None);
        assert_ne!(DigestKey::generate().unwrap(), key);
    }

    #[test]
    fn stamps_are_judged_by_the_key() {
        let key = DigestKey::fixed(&"k".repeat(64));
        let sha = sha256_hex(b"seeded");
        let ours = Stamp::read(
            &json!({"managed-by": MANAGED_BY, "fixture-hmac": key.digest("n", "seeded")}),
        )
        .unwrap();
        assert_eq!(
            ours.judge(Some(&key), "n", "seeded", &sha),
            (Some(sha.clone()), false)
        );
        assert_eq!(
            ours.judge(Some(&key), "n", "by-hand", &sha256_hex(b"by-hand")),
            (Some(SEEDED_ANOTHER_VALUE.to_string()), false)
        );
        assert_eq!(
            ours.judge(Some(&key), "m", "seeded", &sha).0.as_deref(),
            Some(SEEDED_ANOTHER_VALUE)
        );
        assert_eq!(
            ours.judge(None, "n", "seeded", &sha),
            (None, false),
            "no key, no trust"
        );
        // An older release's stamp: what it says, and renew it.
        let old = Stamp::read(&json!({"managed-by": MANAGED_BY, "fixture-sha256": sha})).unwrap();
        assert_eq!(
            old.judge(Some(&key), "n", "x", "y"),
            (Some(sha.clone()), true)
        );
        // Both: the keyed one wins. Somebody else's: none.
        let both = json!({"managed-by": MANAGED_BY, "fixture-sha256": sha, "fixture-hmac": "d"});
        assert_eq!(Stamp::read(&both), Some(Stamp::Keyed("d".into())));
        assert_eq!(Stamp::read(&json!({"fixture-hmac": "d"})), None);
    }
}
