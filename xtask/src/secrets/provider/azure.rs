//! Azure Key Vault through the `az` CLI: legacy and parity. Values travel in
//! 0600 temp files (`--file`), never in argv; the seed's checksum is a tag.
//!
//! Each secret is stored as the JSON document `{"value": "..."}`, as in
//! Vault: charts read `remoteRef.property: value`, and ESO's Azure provider
//! looks a property up as a JSON path in the secret's value. A bare value
//! (what the legacy script wrote) would fail every such ExternalSecret.

use std::collections::BTreeMap;
use std::path::Path;
use std::process::Output;
use std::time::Duration;

use anyhow::{bail, Context, Result};
use serde_json::Value;

use super::{Current, Outcome, SecretProvider, Write, MANAGED_BY};
use crate::fsutil::{sha256_hex, PrivateTempFile};
use crate::process::Tool;
use crate::secrets::config::Config;
use crate::secrets::provider::vault_http::backoff;

pub struct AzureProvider {
    vault_name: String,
    concurrency: usize,
    retries: u32,
}

impl AzureProvider {
    /// Refuses a vault that a shared environment uses, unless `allow` names it.
    pub fn open(cfg: &Config, allow_non_local: Option<&str>) -> Result<AzureProvider> {
        let Some(name) = &cfg.azure_vault_name else {
            bail!(
                "no Azure Key Vault name: set AZURE_KEYVAULT_NAME or azure.vault_name in .local/secrets.toml to your \
                 own per-developer vault"
            );
        };
        let Some(vault_name) = crate::secrets::guard::azure_vault_name(&name.value) else {
            bail!(
                "{:?} (from {}) is not an Azure Key Vault name: use the name (3-24 letters, digits and dashes), \
                 <name>.vault.azure.net or https://<name>.vault.azure.net/",
                name.value,
                name.source
            );
        };
        if let Some(env) = shared_env_using(&cfg.root, &vault_name) {
            let allowed = allow_non_local.and_then(crate::secrets::guard::azure_vault_name);
            if allowed.as_deref() != Some(vault_name.as_str()) {
                bail!(
                    "refusing Azure Key Vault {vault_name:?} (from {}): the {env} environment uses it, and fixtures \
                     are weak by design. Use your own per-developer vault, or pass --allow-non-local {vault_name} if \
                     you really mean it.",
                    name.source
                );
            }
        }
        Ok(AzureProvider {
            vault_name,
            concurrency: cfg.concurrency.value.min(8),
            retries: cfg.vault_retries,
        })
    }

    fn az(&self, args: &[&str]) -> Result<Output> {
        let mut attempt = 0;
        loop {
            let out = az_tool(args).output()?;
            let stderr = String::from_utf8_lossy(&out.stderr).to_ascii_lowercase();
            let throttled = stderr.contains("429")
                || stderr.contains("too many requests")
                || stderr.contains("throttl");
            if out.status.success() || !throttled || attempt >= self.retries {
                return Ok(out);
            }
            std::thread::sleep(backoff(attempt));
            attempt += 1;
        }
    }

    fn show(&self, name: &str) -> Result<Option<Current>> {
        let out = self.az(&[
            "keyvault",
            "secret",
            "show",
            "--vault-name",
            &self.vault_name,
            "--name",
            name,
            "--output",
            "json",
        ])?;
        if !out.status.success() {
            let stderr = String::from_utf8_lossy(&out.stderr);
            if stderr.contains("SecretNotFound") || stderr.contains("was not found") {
                return Ok(None);
            }
            bail!(
                "`az keyvault secret show --name {name}` failed: {}",
                az_hint(&stderr)
            );
        }
        let body: Value = serde_json::from_slice(&out.stdout)
            .context("`az keyvault secret show` printed no JSON")?;
        let tags = &body["tags"];
        let seeded = (tags["managed-by"].as_str() == Some(MANAGED_BY))
            .then(|| tags["fixture-sha256"].as_str().map(String::from))
            .flatten();
        let stored = body["value"].as_str().unwrap_or_default();
        Ok(Some(Current {
            seeded_sha256: seeded,
            ..current_of(stored)
        }))
    }

    fn set(&self, w: &Write<'_>) -> Outcome {
        let tags = [
            format!("managed-by={MANAGED_BY}"),
            format!("fixture-sha256={}", w.sha256),
        ];
        let result = if w.metadata_only {
            self.az(&[
                "keyvault",
                "secret",
                "set-attributes",
                "--vault-name",
                &self.vault_name,
                "--name",
                w.name,
                "--tags",
                &tags[0],
                &tags[1],
                "--output",
                "none",
            ])
        } else {
            let document = serde_json::json!({ "value": w.value }).to_string();
            let file = match PrivateTempFile::new(document.as_bytes()) {
                Ok(f) => f,
                Err(e) => return Outcome::Failed(format!("{e:#}")),
            };
            let path = file.path().to_string_lossy().to_string();
            self.az(&[
                "keyvault",
                "secret",
                "set",
                "--vault-name",
                &self.vault_name,
                "--name",
                w.name,
                "--file",
                &path,
                "--encoding",
                "utf-8",
                "--content-type",
                "application/json",
                "--tags",
                &tags[0],
                &tags[1],
                "--output",
                "none",
            ])
        };
        match result {
            Ok(out) if out.status.success() => Outcome::Written,
            Ok(out) => Outcome::Failed(format!(
                "`az keyvault secret set --name {}` failed: {}",
                w.name,
                az_hint(&String::from_utf8_lossy(&out.stderr))
            )),
            Err(e) => Outcome::Failed(format!("{e:#}")),
        }
    }

    /// Runs `f` over `items` on a few threads.
    fn parallel<T: Sync, R: Send>(&self, items: &[T], f: impl Fn(&T) -> R + Sync) -> Vec<R> {
        crate::pool::bounded(items.iter().collect(), self.concurrency, f)
    }
}

/// What a stored secret holds: the checksum of a JSON document's string
/// `value`, or else the checksum of the stored text as a bare value (what
/// the legacy script wrote, a JSON document among them).
fn current_of(stored: &str) -> Current {
    let doc = serde_json::from_str::<Value>(stored).ok();
    let properties = match &doc {
        Some(Value::Object(map)) => map.keys().cloned().collect(),
        _ => Vec::new(),
    };
    match doc
        .as_ref()
        .and_then(|d| d.get("value"))
        .and_then(Value::as_str)
    {
        Some(value) => Current {
            sha256: Some(sha256_hex(value.as_bytes())),
            properties,
            ..Current::default()
        },
        None => Current {
            raw_sha256: Some(sha256_hex(stored.as_bytes())),
            properties,
            ..Current::default()
        },
    }
}

/// How long one `az` call may take (a Key Vault call is a few seconds; a
/// token refresh can add more).
const AZ_DEADLINE: Duration = Duration::from_secs(120);

/// One `az` call: its deadline, and no Vault token in its environment.
fn az_tool(args: &[&str]) -> Tool {
    Tool::new("az")
        .args(args)
        .deadline(AZ_DEADLINE)
        .install_hint(
            "install the Azure CLI (https://learn.microsoft.com/cli/azure/install-azure-cli) and run `az login`",
        )
        .timeout_hint("Is Azure reachable from here? `az account show` checks your login.")
}

/// The first line of az's error, with the usual fix.
fn az_hint(stderr: &str) -> String {
    let first = stderr
        .lines()
        .find(|l| !l.trim().is_empty())
        .unwrap_or("no output")
        .trim()
        .to_string();
    if stderr.contains("az login") {
        format!("{first} (run `az login`)")
    } else if stderr.contains("Forbidden") || stderr.contains("does not have secrets") {
        format!("{first} (your identity lacks secret get/set permission on this vault)")
    } else {
        first
    }
}

/// The shared (non-local) environment whose values name this vault, if any.
fn shared_env_using(root: &Path, vault_name: &str) -> Option<String> {
    let needle = format!(
        "https://{}.vault.azure.net",
        vault_name.to_ascii_lowercase()
    );
    crate::project::environments(root)
        .into_iter()
        .filter(|e| e != "local")
        .find(|env| {
            std::fs::read_to_string(root.join(crate::project::flag_file(env)))
                .is_ok_and(|text| text.to_ascii_lowercase().contains(&needle))
        })
}

impl SecretProvider for AzureProvider {
    fn target(&self) -> String {
        format!("azure key vault {}", self.vault_name)
    }

    fn read(&mut self, names: &[String]) -> Result<BTreeMap<String, Option<Current>>> {
        let existing: std::collections::HashSet<String> = self.list()?.into_iter().collect();
        let present: Vec<&String> = names.iter().filter(|n| existing.contains(*n)).collect();
        let shown = self.parallel(&present, |n| self.show(n));
        let mut out: BTreeMap<String, Option<Current>> =
            names.iter().map(|n| (n.clone(), None)).collect();
        for (name, cur) in present.into_iter().zip(shown) {
            out.insert(name.clone(), cur?);
        }
        Ok(out)
    }

    fn write(&mut self, writes: &[Write<'_>]) -> Result<Vec<(String, Outcome)>> {
        let outcomes = self.parallel(writes, |w| self.set(w));
        Ok(writes
            .iter()
            .map(|w| w.name.to_string())
            .zip(outcomes)
            .collect())
    }

    fn list(&mut self) -> Result<Vec<String>> {
        let out = self.az(&[
            "keyvault",
            "secret",
            "list",
            "--vault-name",
            &self.vault_name,
            "--query",
            "[].name",
            "--output",
            "json",
        ])?;
        if !out.status.success() {
            bail!(
                "`az keyvault secret list --vault-name {}` failed: {}",
                self.vault_name,
                az_hint(&String::from_utf8_lossy(&out.stderr))
            );
        }
        serde_json::from_slice(&out.stdout)
            .context("`az keyvault secret list` printed no JSON list of names")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_documents_and_bare_values() {
        let doc = current_of(r#"{"value":"s3cr3t"}"#);
        assert_eq!(doc.sha256, Some(sha256_hex(b"s3cr3t")));
        assert_eq!(
            (doc.properties, doc.raw_sha256),
            (vec!["value".to_string()], None)
        );
        for bare in [
            "s3cr3t",
            "12",
            r#"{"realm":"ameide"}"#,
            r#"{"value":7}"#,
            "",
        ] {
            let c = current_of(bare);
            assert_eq!(c.sha256, None, "{bare}");
            assert_eq!(c.raw_sha256, Some(sha256_hex(bare.as_bytes())), "{bare}");
        }
        assert_eq!(
            current_of(r#"{"realm":"ameide"}"#).properties,
            vec!["realm".to_string()]
        );
    }
}
