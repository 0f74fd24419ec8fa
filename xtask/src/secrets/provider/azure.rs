//! Azure Key Vault through the `az` CLI. Values (and their digests) travel in 0600
//! temp files, never in argv. The stamp is two tags, `managed-by` and `fixture-hmac`,
//! keyed by the secret [`KEY_NAME`]. Each secret is the document `{"value": "..."}`.

use std::collections::{BTreeMap, HashSet};
use std::path::Path;
use std::process::Output;
use std::time::Duration;

use anyhow::{bail, ensure, Context, Result};
use serde_json::{json, Value};

use super::{
    Current, Currents, DigestKey, Outcome, SecretProvider, SecretSet, Stamp, Write, MANAGED_BY,
};
use crate::fsutil::{sha256_hex, PrivateTempFile};
use crate::process::Tool;
use crate::secrets::config::Config;
use crate::secrets::guard::azure_vault_name;
use crate::secrets::provider::vault_http::backoff;

/// The secret that holds the digests' key. Key Vault names allow no
/// underscore, so a fixture of that name is refused; listings leave it out.
pub(crate) const KEY_NAME: &str = "cargo-xtask-secrets-key";

/// How long one `az` call may take (a token refresh can add to a few seconds).
const AZ_DEADLINE: Duration = Duration::from_secs(120);

pub(crate) struct AzureProvider {
    vault_name: String,
    concurrency: usize,
    retries: u32,
    /// The digests' key, as `read` found it (or the first write made it).
    key: Option<DigestKey>,
    /// [`KEY_NAME`] exists but is not the seed's: never overwritten.
    key_foreign: bool,
}

impl AzureProvider {
    /// Refuses a vault that a shared environment uses, unless `allow` names it.
    pub(crate) fn open(cfg: &Config, allow_non_local: Option<&str>) -> Result<AzureProvider> {
        let Some(name) = &cfg.azure_vault_name else {
            bail!(
                "no Azure Key Vault name: set AZURE_KEYVAULT_NAME or azure.vault_name in .local/secrets.toml to your \
                 own per-developer vault"
            );
        };
        let (value, source) = (&name.value, &name.source);
        let Some(vault_name) = azure_vault_name(value) else {
            bail!(
                "{value:?} (from {source}) is not an Azure Key Vault name: use the name (3-24 letters, digits and \
                 dashes), <name>.vault.azure.net or https://<name>.vault.azure.net/"
            );
        };
        if let Some(env) = shared_env_using(&cfg.root, &vault_name) {
            if allow_non_local.and_then(azure_vault_name).as_deref() != Some(vault_name.as_str()) {
                bail!(
                    "refusing Azure Key Vault {vault_name:?} (from {source}): the {env} environment uses it, and \
                     fixtures are weak by design. Use your own per-developer vault, or pass --allow-non-local \
                     {vault_name} if you really mean it."
                );
            }
        }
        let (concurrency, retries) = (cfg.concurrency.value.min(8), cfg.vault_retries);
        Ok(AzureProvider { vault_name, concurrency, retries, key: None, key_foreign: false })
    }

    /// `az keyvault secret <verb> --vault-name <vault> <args>`, retried while throttled.
    fn az(&self, verb: &str, args: &[&str]) -> Result<Output> {
        let tool = Tool::new("az")
            .args(["keyvault", "secret", verb, "--vault-name", &self.vault_name])
            .args(args)
            .deadline(AZ_DEADLINE)
            .install_hint(
                "install the Azure CLI (https://learn.microsoft.com/cli/azure/install-azure-cli) and run `az login`",
            )
            .timeout_hint("Is Azure reachable from here? `az account show` checks your login.");
        let mut attempt = 0;
        loop {
            let out = tool.output()?;
            let stderr = String::from_utf8_lossy(&out.stderr).to_ascii_lowercase();
            let throttled = ["429", "too many requests", "throttl"];
            let throttled = throttled.iter().any(|s| stderr.contains(s));
            if out.status.success() || !throttled || attempt >= self.retries {
                return Ok(out);
            }
            std::thread::sleep(backoff(attempt));
            attempt += 1;
        }
    }

    /// Sets `name` to the JSON `document` through a private file (`None`:
    /// only its tags), with `tags`.
    fn set(&self, name: &str, document: Option<&str>, tags: &[&str]) -> Result<Output> {
        let file = document.map(|d| PrivateTempFile::new(d.as_bytes())).transpose()?;
        let path = file.as_ref().map(|f| f.path().to_string_lossy());
        let mut args = vec!["--name", name];
        if let Some(path) = &path {
            args.extend(["--file", path, "--encoding", "utf-8"]);
            args.extend(["--content-type", "application/json"]);
        }
        args.extend(["--output", "none", "--tags"]);
        args.extend(tags);
        self.az(document.map_or("set-attributes", |_| "set"), &args)
    }

    /// The stored text of `name` and its tags, if there is such a secret.
    fn show_raw(&self, name: &str) -> Result<Option<(String, Value)>> {
        let out = self.az("show", &["--name", name, "--output", "json"])?;
        if !out.status.success() {
            let stderr = String::from_utf8_lossy(&out.stderr);
            if stderr.contains("SecretNotFound") || stderr.contains("was not found") {
                return Ok(None);
            }
            bail!(failed(&format!("az keyvault secret show --name {name}"), &out));
        }
        let mut body: Value = serde_json::from_slice(&out.stdout)
            .context("`az keyvault secret show` printed no JSON")?;
        let stored = body["value"].as_str().unwrap_or_default().to_string();
        Ok(Some((stored, body["tags"].take())))
    }

    fn list_all(&self) -> Result<Vec<String>> {
        let out = self.az("list", &["--query", "[].name", "--output", "json"])?;
        let call = format!("az keyvault secret list --vault-name {}", self.vault_name);
        ensure!(out.status.success(), failed(&call, &out));
        serde_json::from_slice(&out.stdout)
            .context("`az keyvault secret list` printed no JSON list of names")
    }

    /// The digests' key, made first if missing. Without check-and-set, two first
    /// seeds may race: stamps under the losing key read as not the seed's (safe side).
    fn ensure_key(&mut self) -> Result<DigestKey> {
        if let Some(key) = &self.key {
            return Ok(key.clone());
        }
        // Made since the read (another seed), or never read?
        if let Some((stored, _)) = self.show_raw(KEY_NAME)? {
            self.key = parse_key(&stored);
            self.key_foreign = self.key.is_none();
        }
        let vault_name = &self.vault_name;
        if self.key.is_none() {
            if self.key_foreign {
                bail!(
                    "Azure Key Vault {vault_name} holds a secret {KEY_NAME} that the seed did not write (the seed \
                     keeps the key of the digests in its tags there). Rename or delete that secret, then re-run; \
                     nothing was written."
                );
            }
            let entry = DigestKey::generate()?.entry().to_string();
            let out = self.set(KEY_NAME, Some(&entry), &[&managed_by_tag()])?;
            let call = format!("az keyvault secret set --name {KEY_NAME}");
            let what = "(the key of the digests the seed tags values with); nothing was written";
            ensure!(out.status.success(), "{} {what}", failed(&call, &out));
            self.key = self.show_raw(KEY_NAME)?.and_then(|(stored, _)| parse_key(&stored));
        }
        self.key.clone().with_context(|| {
            format!("{KEY_NAME} in Azure Key Vault {vault_name} did not read back as the seed's key; re-run")
        })
    }

    fn write_one(&self, key: &DigestKey, w: &Write<'_>) -> Outcome {
        let set = || {
            // The digest is not a value, but derived from one: in a file too.
            let digest = PrivateTempFile::new(key.digest(w.name, w.value).as_bytes())?;
            let hmac = format!("fixture-hmac=@{}", digest.path().display());
            let document = json!({ "value": w.value }).to_string();
            let document = (!w.metadata_only).then_some(document.as_str());
            self.set(w.name, document, &[&managed_by_tag(), &hmac])
        };
        match set() {
            Ok(out) if out.status.success() => Outcome::Written,
            Ok(out) => {
                let call = format!("az keyvault secret set --name {}", w.name);
                Outcome::Failed(failed(&call, &out))
            }
            Err(e) => Outcome::Failed(format!("{e:#}")),
        }
    }
}

fn managed_by_tag() -> String {
    format!("managed-by={MANAGED_BY}")
}

/// The checksum of a document's string `value`, else of the stored text as a bare
/// value (what the legacy script wrote); and what the tags say the seed wrote.
fn current_of(name: &str, stored: &str, tags: &Value, key: Option<&DigestKey>) -> Current {
    let doc = serde_json::from_str::<Value>(stored).ok();
    let properties = match &doc {
        Some(Value::Object(map)) => map.keys().cloned().collect(),
        _ => Vec::new(),
    };
    let value = doc.as_ref().and_then(|d| d["value"].as_str());
    let sha256 = sha256_hex(value.unwrap_or(stored).as_bytes());
    let judged = Stamp::read(tags).map(|s| s.judge(key, name, value.unwrap_or(stored), &sha256));
    let (seeded_sha256, stamp_stale) = judged.unwrap_or((None, false));
    let (sha256, raw_sha256) =
        if value.is_some() { (Some(sha256), None) } else { (None, Some(sha256)) };
    Current { sha256, properties, seeded_sha256, stamp_stale, raw_sha256, ..Current::default() }
}

/// "`<call>` failed: " az's first line, with the usual fix.
fn failed(call: &str, out: &Output) -> String {
    let stderr = String::from_utf8_lossy(&out.stderr);
    let first = stderr.lines().map(str::trim).find(|l| !l.is_empty());
    let fix = if stderr.contains("az login") {
        " (run `az login`)"
    } else if stderr.contains("Forbidden") || stderr.contains("does not have secrets") {
        " (your identity lacks secret get/set permission on this vault)"
    } else {
        ""
    };
    format!("`{call}` failed: {}{fix}", first.unwrap_or("no output"))
}

/// The shared (non-local) environment whose values name this vault, if any.
fn shared_env_using(root: &Path, vault_name: &str) -> Option<String> {
    let needle = format!("https://{vault_name}.vault.azure.net").to_ascii_lowercase();
    crate::project::environments(root).into_iter().filter(|e| e != "local").find(|env| {
        std::fs::read_to_string(root.join(crate::project::flag_file(env)))
            .is_ok_and(|text| text.to_ascii_lowercase().contains(&needle))
    })
}

impl SecretProvider for AzureProvider {
    fn target(&self) -> String {
        format!("azure key vault {}", self.vault_name)
    }

    fn read(&mut self, names: &[String], _expected: &SecretSet) -> Result<Currents> {
        refuse_key_name(names)?;
        let existing: HashSet<String> = self.list_all()?.into_iter().collect();
        // The key is read with the entries: one more call in the same batch.
        let present: Vec<&str> = (names.iter().map(String::as_str))
            .chain([KEY_NAME])
            .filter(|n| existing.contains(*n))
            .collect();
        let shown = crate::pool::bounded(present.clone(), self.concurrency, |n| self.show_raw(n));
        let mut stored = BTreeMap::new();
        for (name, shown) in present.into_iter().zip(shown) {
            if let Some(s) = shown? {
                stored.insert(name, s);
            }
        }
        let key_entry = stored.remove(KEY_NAME);
        self.key = key_entry.as_ref().and_then(|(s, _)| parse_key(s));
        self.key_foreign = key_entry.is_some() && self.key.is_none();
        let current = |n: &String| {
            let (s, tags) = stored.get(n.as_str())?;
            Some(current_of(n, s, tags, self.key.as_ref()))
        };
        Ok(names.iter().map(|n| (n.clone(), current(n))).collect())
    }

    fn write(&mut self, writes: &[Write<'_>]) -> Result<Vec<(String, Outcome)>> {
        if writes.is_empty() {
            return Ok(Vec::new());
        }
        let names: Vec<String> = writes.iter().map(|w| w.name.to_string()).collect();
        refuse_key_name(&names)?;
        let key = self.ensure_key()?;
        let write = |w| self.write_one(&key, w);
        let outcomes = crate::pool::bounded(writes.iter().collect(), self.concurrency, write);
        Ok(names.into_iter().zip(outcomes).collect())
    }

    fn list(&mut self) -> Result<Vec<String>> {
        Ok(self.list_all()?.into_iter().filter(|n| n != KEY_NAME).collect())
    }
}

/// The key in what [`KEY_NAME`] holds, if the seed wrote it.
fn parse_key(stored: &str) -> Option<DigestKey> {
    DigestKey::from_entry(&serde_json::from_str(stored).ok()?)
}

/// The seed's key secret is no fixture's to take.
fn refuse_key_name(names: &[String]) -> Result<()> {
    ensure!(
        !names.iter().any(|n| n.eq_ignore_ascii_case(KEY_NAME)),
        "the secret name {KEY_NAME} is the seed's own on Azure Key Vault (the key of the digests it tags values \
         with): rename that fixture or override"
    );
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_documents_and_bare_values() {
        let doc = current_of("n", r#"{"value":"s3cr3t"}"#, &Value::Null, None);
        assert_eq!(doc.sha256, Some(sha256_hex(b"s3cr3t")));
        assert_eq!((doc.properties, doc.raw_sha256), (vec!["value".into()], None));
        for bare in ["s3cr3t", "12", r#"{"realm":"ameide"}"#, r#"{"value":7}"#, ""] {
            let c = current_of("n", bare, &Value::Null, None);
            let raw = Some(sha256_hex(bare.as_bytes()));
            assert_eq!((c.sha256, c.raw_sha256), (None, raw), "{bare}");
        }
    }

    #[test]
    fn the_key_secret_is_no_fixtures() {
        assert!(crate::secrets::fixtures::valid_name(KEY_NAME));
        assert!(refuse_key_name(&["Cargo-Xtask-Secrets-Key".to_string()]).is_err());
        assert!(refuse_key_name(&["redis-password".to_string()]).is_ok());
    }
}
