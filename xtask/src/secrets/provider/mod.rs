//! Secret stores. Each backend is one file implementing [`SecretProvider`];
//! planning, rendering and the CLI live elsewhere.

pub mod azure;
pub mod file;
pub mod vault;
pub mod vault_http;
mod vault_listing;
mod vault_record;

pub use vault_record::{RECORD_NAME, SEEDED_ANOTHER_VALUE};

use std::collections::BTreeMap;

use anyhow::Result;

use crate::secrets::config::{Config, ProviderKind};

/// What a store holds for one name.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Current {
    /// sha256 of the `value` property; `None` when the entry has no string `value`.
    pub sha256: Option<String>,
    /// The entry's properties (Vault keys its data by property).
    pub properties: Vec<String>,
    /// The store's version of the entry, for check-and-set.
    pub version: Option<u64>,
    /// The fixture checksum the seed last recorded for it, if any.
    pub seeded_sha256: Option<String>,
    /// The recorded checksum names another version than the current one (or
    /// none): the value may still be right, but the record needs renewing.
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
        ProviderKind::Vault => Box::new(vault::VaultProvider::connect(cfg, allow_non_local)?),
        ProviderKind::File => Box::new(file::FileProvider::open(
            &cfg.root,
            &cfg.abs(&cfg.file_store.value),
        )?),
        ProviderKind::Azure => Box::new(azure::AzureProvider::open(cfg, allow_non_local)?),
    })
}

/// Marker recorded next to every entry the seed writes.
pub const MANAGED_BY: &str = "cargo-xtask-secrets";
