//! Secret stores. Each backend is one file implementing [`SecretProvider`];
//! planning, rendering and the CLI live elsewhere.

pub(crate) mod azure;
pub(crate) mod file;
pub(crate) mod vault;
pub(crate) mod vault_http;
mod vault_listing;
mod vault_record;

pub(crate) use vault_record::RECORD_NAME;

use std::collections::BTreeMap;

use anyhow::{Context, Result};
use hmac::{Hmac, Mac};
use serde_json::{json, Value};
use sha2::Sha256;

use crate::fsutil::hex;
use crate::secrets::config::{Config, ProviderKind};
use crate::secrets::fixtures::SecretSet;

#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub(crate) struct Current {
    /// sha256 of the `value` property; `None` when the entry has no string `value`.
    pub sha256: Option<String>,
    pub properties: Vec<String>,
    pub version: Option<u64>,
    /// What the seed's record says it last wrote there: see [`Stamp::judge`].
    pub seeded_sha256: Option<String>,
    /// The record names another version (or none), or is an older release's: renew it.
    pub stamp_stale: bool,
    /// sha256 of a bare value where `{"value": ...}` belongs (older Azure entries).
    pub raw_sha256: Option<String>,
}

#[derive(Debug, Clone)]
pub(crate) struct Write<'a> {
    pub name: &'a str,
    pub value: &'a str,
    pub sha256: &'a str,
    /// Write only if the store's version is still this one (0: must not exist).
    pub cas: Option<u64>,
    /// Only record the checksum; the value is already right.
    pub metadata_only: bool,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Outcome {
    Written,
    /// The value landed but its checksum did not: a re-run restamps it.
    ValueOnly(String),
    Conflict(String),
    Failed(String),
}

/// Per name, what a store holds (`None`: nothing).
pub(crate) type Currents = BTreeMap<String, Option<Current>>;

pub(crate) trait SecretProvider {
    /// What it writes to, for humans: never holds a value or token.
    fn target(&self) -> String;
    /// What the store holds under `names`; it may trust what it knows of the `expected` values.
    fn read(&mut self, names: &[String], expected: &SecretSet) -> Result<Currents>;
    /// One outcome per write; an `Err` means nothing was attempted.
    fn write(&mut self, writes: &[Write<'_>]) -> Result<Vec<(String, Outcome)>>;
    fn list(&mut self) -> Result<Vec<String>>;
    /// Requests, writes and retries so far, where the store counts them.
    fn stats(&self) -> Option<(u64, u64, u64)> {
        None
    }
    fn set_progress(&mut self, _on: bool) {}
    /// The Vault client, for what the seed sets up besides secrets (ESO's access).
    fn vault_http(&self) -> Option<&vault_http::VaultHttp> {
        None
    }
}

/// Opens the configured store; the guardrail accepts what `allow_non_local` names.
pub(crate) fn open(cfg: &Config, allow_non_local: Option<&str>) -> Result<Box<dyn SecretProvider>> {
    Ok(match cfg.provider.value {
        ProviderKind::Vault => Box::new(vault::VaultProvider::connect(cfg, allow_non_local)?),
        ProviderKind::File => {
            let path = cfg.abs(&cfg.file_store.value);
            Box::new(file::FileProvider::open(&cfg.root, &path)?)
        }
        ProviderKind::Azure => Box::new(azure::AzureProvider::open(cfg, allow_non_local)?),
    })
}

pub(crate) const MANAGED_BY: &str = "cargo-xtask-secrets";

/// This machine's key of the checksums humans see (never a plain sha256 of a value).
pub(crate) const LOCAL_CHECKSUM_KEY: &str = ".local/secrets/checksum-key.json";

/// The seeded checksum when the digest is of another value: never a sha256.
pub(crate) const SEEDED_ANOTHER_VALUE: &str = "another value";

/// A store's random HMAC key, readable only by who may read values: a lister
/// cannot test guesses, and equal values under two names look unrelated.
#[derive(Clone)]
pub(crate) struct DigestKey {
    hex: String,
    /// Keyed once: a digest clones it (a seed makes one or two per secret).
    mac: Hmac<Sha256>,
}

impl PartialEq for DigestKey {
    fn eq(&self, other: &DigestKey) -> bool {
        self.hex == other.hex
    }
}

impl Eq for DigestKey {}

impl std::fmt::Debug for DigestKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("DigestKey(..)")
    }
}

impl DigestKey {
    /// HMAC-SHA256 keyed with the hex text, over `name NUL value`, first 128 bits.
    pub(crate) const FORMAT: &'static str = "hmac-sha256-128/1";

    pub(crate) fn generate() -> Result<DigestKey> {
        let mut bytes = [0u8; 32];
        getrandom::fill(&mut bytes).context("reading the OS's random source for a new HMAC key")?;
        Ok(DigestKey::new(hex(&bytes)))
    }

    fn new(hex: String) -> DigestKey {
        let mac = Hmac::new_from_slice(hex.as_bytes()).expect("HMAC takes a key of any length");
        DigestKey { hex, mac }
    }

    pub(crate) fn from_entry(data: &Value) -> Option<DigestKey> {
        let ours = data["managed-by"] == MANAGED_BY && data["format"] == Self::FORMAT;
        let key = data["key"].as_str().filter(|k| ours && k.len() >= 32)?;
        Some(DigestKey::new(key.to_string()))
    }

    pub(crate) fn entry(&self) -> Value {
        json!({"managed-by": MANAGED_BY, "format": Self::FORMAT, "key": self.hex})
    }

    #[cfg(test)]
    pub(crate) fn fixed(hex: &str) -> DigestKey {
        DigestKey::new(hex.to_string())
    }

    /// The key of the checksums output shows ([`LOCAL_CHECKSUM_KEY`]), made on first use: a
    /// value shows one checksum on this machine, and pasted output lets no one test a guess.
    pub(crate) fn local(root: &std::path::Path) -> Result<DigestKey> {
        let path = root.join(LOCAL_CHECKSUM_KEY);
        let shown = path.display();
        match std::fs::read_to_string(&path) {
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                let key = DigestKey::generate()?;
                crate::fsutil::write_private_atomic(&path, key.entry().to_string().as_bytes())?;
                Ok(key)
            }
            text => {
                let text = text.with_context(|| format!("reading {shown}"))?;
                let key = serde_json::from_str(&text).ok().as_ref().and_then(DigestKey::from_entry);
                key.with_context(|| {
                    format!("{shown} is damaged: delete it and re-run (a new key is made)")
                })
            }
        }
    }

    /// What output shows of a value, from its sha256: 8 hex digits of a keyed digest.
    pub(crate) fn shown(&self, sha256: &str) -> String {
        self.digest("checksum", sha256)[..8].to_string()
    }

    pub(crate) fn digest(&self, name: &str, value: &str) -> String {
        let mut mac = self.mac.clone();
        mac.update(name.as_bytes());
        mac.update(&[0]);
        mac.update(value.as_bytes());
        hex(&mac.finalize().into_bytes()[..16])
    }
}

/// The seed's stamp beside one value: the keyed `fixture-hmac`, or an older
/// release's plain `fixture-sha256` (read and renewed, never written).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Stamp {
    Keyed(String),
    Sha256(String),
}

impl Stamp {
    pub(crate) fn read(fields: &Value) -> Option<Stamp> {
        if fields["managed-by"] != MANAGED_BY {
            return None;
        }
        let keyed = fields["fixture-hmac"].as_str().map(|d| Stamp::Keyed(d.to_string()));
        keyed.or_else(|| fields["fixture-sha256"].as_str().map(|s| Stamp::Sha256(s.to_string())))
    }

    /// [`Current::seeded_sha256`] for `value` under `name`, and whether to renew the stamp.
    pub(crate) fn judge(
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

    #[test]
    fn the_key_never_shows_and_only_the_seeds_entry_and_stamp_parse() {
        let key = DigestKey::generate().unwrap();
        assert_eq!(format!("{key:?}"), "DigestKey(..)");
        assert_eq!(DigestKey::from_entry(&key.entry()), Some(key.clone()));
        let mut other = key.entry();
        other["managed-by"] = "someone".into();
        assert_eq!(DigestKey::from_entry(&other), None);
        let both = json!({"managed-by": MANAGED_BY, "fixture-sha256": "s", "fixture-hmac": "d"});
        assert_eq!(Stamp::read(&both), Some(Stamp::Keyed("d".into())));
        assert_eq!(Stamp::read(&json!({"fixture-hmac": "d"})), None);
    }

    #[test]
    fn the_local_checksum_key_is_made_once_private_and_a_damaged_one_is_named() {
        let root = tempfile::tempdir().unwrap();
        let key = DigestKey::local(root.path()).unwrap();
        let path = root.path().join(LOCAL_CHECKSUM_KEY);
        assert_eq!(crate::fsutil::mode(&path).unwrap() & 0o777, 0o600);
        assert_eq!(DigestKey::local(root.path()).unwrap(), key, "made once, then read");
        let sha = crate::fsutil::sha256_hex(b"true");
        assert!(key.shown(&sha).len() == 8 && key.shown(&sha) != sha[..8], "keyed, not plain");
        let other = DigestKey::local(tempfile::tempdir().unwrap().path()).unwrap();
        assert_ne!(other.shown(&sha), key.shown(&sha), "another machine's key");
        std::fs::write(&path, "{}").unwrap();
        let err = DigestKey::local(root.path()).unwrap_err().to_string();
        assert!(err.contains("checksum-key.json is damaged: delete it and re-run"), "{err}");
    }
}
