//! HashiCorp Vault / OpenBao: one KV entry per secret, the value under the property
//! `value`; KV v2 entries written with check-and-set.

use std::collections::{BTreeMap, HashSet};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use anyhow::{bail, ensure, Context, Result};
use serde_json::Value;

use super::vault_http::{backoff, json_string, Method, SealStatus, VaultError, VaultHttp};
use super::vault_listing::detailed_listing;
use super::vault_record::{
    create_key, read_key, read_record, update_record, write_stamp, MountRecord, Phase, Record,
    RECORD_NAME,
};
use super::{Current, Currents, DigestKey, Outcome, SecretProvider, Write};
use crate::fsutil::sha256_hex;
use crate::output::Secret;
use crate::pool::bounded;
use crate::secrets::config::{Config, Setting, Source};
use crate::secrets::fixtures::SecretSet;
use crate::secrets::{guard, kube, port_forward};

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum KvVersion {
    V1,
    V2,
}

pub(crate) struct VaultProvider {
    http: VaultHttp,
    mount: String,
    kv: KvVersion,
    concurrency: usize,
    progress: bool,
    /// KV v1: the mount's record entry as `read` found it.
    record: Option<MountRecord>,
    /// KV v2: the stamps' key, from the record entry (or made by the first write).
    key: Option<DigestKey>,
    /// KV v1: this checkout's lock for updates of the record.
    record_lock: std::path::PathBuf,
    _port_forward: Option<port_forward::PortForward>,
}

pub(crate) struct Endpoint {
    pub addr: String,
    pub token: Setting<Secret>,
    pub port_forward: Option<port_forward::PortForward>,
    /// `sys/seal-status` as the guardrail read it, so connecting does not ask again.
    pub seal: Option<SealStatus>,
}

/// The address (config, else a port-forward) and the token, past the guardrail.
pub(crate) fn resolve_endpoint(cfg: &Config, allow_non_local: Option<&str>) -> Result<Endpoint> {
    let mut seal = None;
    let (fwd, contexts) = (&cfg.port_forward, &cfg.local_contexts);
    let (addr, port_forward) = match &cfg.vault_addr {
        Some(setting) => {
            let addr = setting.value.expose();
            guard::check_vault_addr(addr, allow_non_local)
                .with_context(|| format!("Vault address from {}", setting.source))?;
            if let Some(host) = guard::unvouched_loopback(addr, allow_non_local) {
                // A dev server passes under any context; an unknowable one fails closed.
                let timeout = Duration::from_secs_f64(cfg.vault_timeout_secs);
                let http = configured_http(cfg, addr, Secret::new(String::new()), timeout, 0, 1);
                seal = http.ok().and_then(|http| http.seal_status().ok());
                let storage = seal.as_ref().and_then(|s| s.storage_type.as_deref());
                if storage != Some("inmem") {
                    let context = kube::guard_context(&cfg.kubeconfig);
                    guard::require_dev_server_under(addr, &host, &context, contexts, storage)?;
                }
            }
            (addr.to_string(), None)
        }
        None => {
            let Some(context) = kube::context(&cfg.kubeconfig)? else {
                let (service, namespace) = (&fwd.service, &fwd.namespace);
                bail!(
                    "no Vault address: set VAULT_ADDR (for example http://127.0.0.1:8200 for `bao server -dev`), or \
                     point kubectl at your local cluster so the seed can port-forward to svc/{service} in namespace \
                     {namespace}. For a store with no Vault at all: --provider file."
                );
            };
            guard::check_port_forward_context(&context, contexts)?;
            let (namespace, service, port) = (fwd.namespace.clone(), fwd.service.clone(), fwd.port);
            let (start_deadline, pod_wait) = (fwd.start_timeout, fwd.pod_wait);
            let spec =
                port_forward::ForwardSpec { namespace, service, port, start_deadline, pod_wait };
            let pf = port_forward::PortForward::start(&spec)?;
            (pf.addr(), Some(pf))
        }
    };
    let dev_token = Secret::new(fwd.dev_root_token.clone());
    let token = match (&cfg.vault_token, &port_forward) {
        (Some(t), _) => t.clone(),
        (None, Some(_)) => Setting { value: dev_token, source: Source::DevChart },
        (None, None) => bail!(
            "no Vault token: set VAULT_TOKEN, run `bao login` (it writes ~/.vault-token), or set vault.token in \
             .local/secrets.toml"
        ),
    };
    Ok(Endpoint { addr, token, port_forward, seal })
}

/// `sys/seal-status` through a just-started port-forward, retried while unreachable.
fn first_seal_status(
    http: &VaultHttp,
    forward: &port_forward::PortForward,
    retries: u32,
) -> Result<SealStatus, VaultError> {
    let mut attempt = 0;
    loop {
        match http.seal_status() {
            Err(VaultError::Unreachable { .. }) if attempt < retries && !forward.is_gone() => {
                std::thread::sleep(backoff(attempt));
                attempt += 1;
            }
            other => return other,
        }
    }
}

pub(crate) fn configured_http(
    cfg: &Config,
    addr: &str,
    token: Secret,
    timeout: Duration,
    retries: u32,
    pool: usize,
) -> Result<VaultHttp> {
    let namespace = cfg.vault_namespace.as_ref().map(|s| s.value.clone());
    let ca_cert = cfg.vault_ca_cert.as_ref().map(|c| cfg.abs(&c.value));
    VaultHttp::new(addr, token, namespace, timeout, retries, pool, ca_cert.as_deref())
}

impl VaultProvider {
    pub(crate) fn connect(cfg: &Config, allow_non_local: Option<&str>) -> Result<VaultProvider> {
        let endpoint = resolve_endpoint(cfg, allow_non_local)?;
        let timeout = Duration::from_secs_f64(cfg.vault_timeout_secs);
        let token = endpoint.token.value.clone();
        let (concurrency, retries) = (cfg.concurrency.value, cfg.vault_retries);
        let mut http = configured_http(cfg, &endpoint.addr, token, timeout, retries, concurrency)?;
        if let Some(pf) = &endpoint.port_forward {
            http.set_lifeline(std::sync::Arc::new(pf.lifeline()));
        }
        let seal = match (endpoint.seal, &endpoint.port_forward) {
            (Some(seal), _) => seal,
            (None, Some(pf)) => first_seal_status(&http, pf, retries)?,
            (None, None) => http.seal_status()?,
        };
        ensure!(!seal.sealed, VaultError::Sealed { addr: http.addr().to_string() });
        let lookup = http.call(Method::Get, "auth/token/lookup-self", None);
        let token_source = &endpoint.token.source;
        ensure!(
            !matches!(lookup, Err(VaultError::Forbidden { .. })),
            "the Vault token from {token_source} is invalid or expired (permission denied on \
             auth/token/lookup-self). Get a fresh one: `bao login`, or export VAULT_TOKEN."
        );
        let mount = cfg.vault_mount.value.clone();
        Ok(VaultProvider {
            kv: kv_version(&http, &mount)?,
            http,
            mount,
            concurrency,
            progress: false,
            record: None,
            key: None,
            record_lock: cfg.root.join(".local/secrets/kv1-record.lock"),
            _port_forward: endpoint.port_forward,
        })
    }

    pub(crate) fn kv_version(&self) -> KvVersion {
        self.kv
    }

    /// Whether the token is refused the detailed listing (KV v2 only).
    pub(crate) fn detailed_listing_denied(&self) -> Result<bool> {
        if self.kv != KvVersion::V2 {
            return Ok(false);
        }
        let path = format!("{}/detailed-metadata/?limit=1", self.mount);
        let reply = self.http.try_call(Method::List, &path, None)?;
        Ok(matches!(reply.status, 401 | 403))
    }

    fn data_path(&self, name: &str) -> String {
        match self.kv {
            KvVersion::V2 => format!("{}/data/{name}", self.mount),
            KvVersion::V1 => format!("{}/{name}", self.mount),
        }
    }

    fn list_names(&self) -> Result<Vec<String>, VaultError> {
        let path = match self.kv {
            KvVersion::V2 => format!("{}/metadata/", self.mount),
            KvVersion::V1 => format!("{}/", self.mount),
        };
        let reply = self.http.call(Method::List, &path, None)?;
        match reply.status {
            200 => {}
            404 => return Ok(Vec::new()),
            _ => return Err(reply.failed(format!("LIST {path}"))),
        }
        let keys = reply.body["data"]["keys"].as_array().into_iter().flatten();
        let names = keys.filter_map(Value::as_str).filter(|k| !k.ends_with('/'));
        Ok(names.map(String::from).collect())
    }
}

/// The `sys/mounts` entry of `mount`, if any, else the per-mount endpoint's.
pub(crate) fn mount_info(http: &VaultHttp, mount: &str) -> Result<Option<Value>, VaultError> {
    let key = format!("{mount}/");
    let reply = http.try_call(Method::Get, "sys/mounts", None)?;
    if reply.status == 200 {
        let data = reply.body.get("data").filter(|d| d.is_object());
        return Ok(data.unwrap_or(&reply.body).get(&key).cloned());
    }
    let path = format!("sys/internal/ui/mounts/{mount}");
    let r = http.try_call(Method::Get, &path, None)?;
    match r.status {
        200 if r.body["data"]["path"].as_str() == Some(key.as_str()) => {
            Ok(Some(r.body["data"].clone()))
        }
        401 | 403 => Err(VaultError::Forbidden { call: format!("GET {path}"), errors: r.errors() }),
        _ => Ok(None),
    }
}

fn kv_version(http: &VaultHttp, mount: &str) -> Result<KvVersion> {
    let key = format!("{mount}/");
    let Some(info) = mount_info(http, mount)? else {
        bail!(
            "no secrets engine is mounted at {key} on {}. Enable KV v2 there: `bao secrets enable -path={mount} \
             -version=2 kv`, or pass --mount with the right one.",
            http.addr()
        );
    };
    let kind = info["type"].as_str().unwrap_or("unknown");
    if kind != "kv" && kind != "generic" {
        bail!("the mount {key} is a {kind:?} engine, not kv. Pass --mount with your KV mount.");
    }
    match info["options"]["version"].as_str() {
        Some("2") => Ok(KvVersion::V2),
        Some("1") | None => Ok(KvVersion::V1),
        Some(other) => {
            bail!("the mount {key} reports KV version {other:?}; only 1 and 2 are known")
        }
    }
}

/// One entry's [`Current`], judged on KV v1 by `record`, on KV v2 by the stamp.
fn current_from(
    kv: KvVersion,
    name: &str,
    reply: &Value,
    record: Option<&MountRecord>,
    key: Option<&DigestKey>,
) -> Current {
    let (data, meta) = match kv {
        KvVersion::V2 => (&reply["data"]["data"], &reply["data"]["metadata"]),
        KvVersion::V1 => (&reply["data"], &Value::Null),
    };
    let properties = data.as_object().into_iter().flat_map(|m| m.keys().cloned()).collect();
    let value = data["value"].as_str();
    let sha256 = value.map(|v| sha256_hex(v.as_bytes()));
    let value_sha = value.zip(sha256.as_deref());
    let mut current = Current { properties, ..Current::default() };
    if kv == KvVersion::V1 {
        if let (Some(rec), Some((value, sha))) = (record, value_sha) {
            (current.seeded_sha256, current.stamp_stale) = rec.judge(name, value, sha);
        }
        current.sha256 = sha256;
        return current;
    }
    let record = Record::read(&meta["custom_metadata"]);
    current.version = meta["version"].as_u64();
    let (seeded_sha256, old_format) = match (&record, value_sha) {
        (Some(r), Some((value, sha))) => r.stamp.judge(key, name, value, sha),
        // No string value: only an older release's checksum says what it wrote.
        (Some(r), None) => r.stamp.judge(None, name, "", ""),
        (None, _) => (None, false),
    };
    let recorded = record.and_then(|r| r.version);
    current.stamp_stale = old_format || recorded.is_none_or(|v| Some(v) != current.version);
    current.seeded_sha256 = seeded_sha256;
    current.sha256 = sha256;
    current
}

impl SecretProvider for VaultProvider {
    fn target(&self) -> String {
        let kv = if self.kv == KvVersion::V1 { "kv v1" } else { "kv v2" };
        format!("vault {} (mount {}, {kv})", self.http.addr(), self.mount)
    }

    fn vault_http(&self) -> Option<&VaultHttp> {
        Some(&self.http)
    }

    fn read(&mut self, names: &[String], expected: &SecretSet) -> Result<Currents> {
        let detailed = match self.kv {
            KvVersion::V2 => {
                self.key = read_key(&self.http, &self.mount)?;
                let wanted: HashSet<&str> = names.iter().map(String::as_str).collect();
                let key = self.key.as_ref();
                detailed_listing(&self.http, &self.mount, &wanted, key, expected)?
            }
            KvVersion::V1 => {
                self.record = read_record(&self.http, &self.mount)?;
                None
            }
        };
        // Per present name, what is known without a read (`None`: read it).
        let mut known = match detailed {
            Some(known) => known,
            None => self.list_names()?.into_iter().map(|n| (n, None)).collect(),
        };
        let mut out = BTreeMap::new();
        let mut present = Vec::new();
        for name in names {
            match known.remove(name) {
                Some(None) => present.push((name.clone(), self.data_path(name))),
                current => {
                    out.insert(name.clone(), current.flatten());
                }
            }
        }
        // Each thread keeps only the small `Current`, not the whole reply.
        let currents = bounded(present, self.concurrency, |(name, path)| {
            let current = self.get_current(&name, &path);
            (name, current)
        });
        for (name, current) in currents {
            let current = current.with_context(|| format!("reading {name}"))?;
            out.insert(name, current);
        }
        Ok(out)
    }

    fn write<'a>(&mut self, writes: &[Write<'a>]) -> Result<Vec<(String, Outcome)>> {
        if self.kv == KvVersion::V2 {
            // Before any value: nothing is written without its stamp's key.
            if self.key.is_none() && !writes.is_empty() {
                self.key = Some(create_key(&self.http, &self.mount)?);
            }
            return Ok(self.write_entries(writes));
        }
        // KV v1: the record learns each new value first (see `Phase`).
        let (http, mount, lock) = (&self.http, self.mount.as_str(), &self.record_lock);
        let read = self.record.as_ref();
        let change = |w: &Write<'a>| (w.name, w.value);
        let intents: Vec<_> = writes.iter().filter(|w| !w.metadata_only).map(change).collect();
        update_record(http, mount, lock, read, &intents, Phase::Intend).with_context(|| {
            format!("recording the values about to be written in {mount}/{RECORD_NAME} (KV v1); nothing was written")
        })?;
        let mut outcomes = self.write_entries(writes);
        // After: a value whose write failed keeps both candidates (it may have landed).
        let by_name: BTreeMap<&str, &Write<'_>> = writes.iter().map(|w| (w.name, w)).collect();
        let written = |o: &Outcome| *o == Outcome::Written;
        let settle: Vec<_> = (outcomes.iter().filter(|(_, o)| written(o)))
            .map(|(name, _)| change(by_name[name.as_str()]))
            .collect();
        if let Err(e) = update_record(http, mount, lock, read, &settle, Phase::Settle) {
            let reason = format!("{mount}/{RECORD_NAME} not updated: {e:#}");
            for (name, outcome) in outcomes.iter_mut().filter(|(_, o)| written(o)) {
                // A landed value is recognised (the intent above): a re-run restamps it.
                let (landed, reason) = (!by_name[name.as_str()].metadata_only, reason.clone());
                *outcome =
                    if landed { Outcome::ValueOnly(reason) } else { Outcome::Failed(reason) };
            }
        }
        Ok(outcomes)
    }

    fn list(&mut self) -> Result<Vec<String>> {
        Ok(self.list_names()?.into_iter().filter(|n| n != RECORD_NAME).collect())
    }

    fn stats(&self) -> Option<(u64, u64, u64)> {
        let s = &self.http.stats;
        let load = |n: &std::sync::atomic::AtomicU64| n.load(Ordering::Relaxed);
        Some((load(&s.requests), load(&s.writes), load(&s.retries)))
    }

    fn set_progress(&mut self, on: bool) {
        self.progress = on;
    }
}

impl VaultProvider {
    fn get_current(&self, name: &str, path: &str) -> Result<Option<Current>> {
        let reply = self.http.call(Method::Get, path, None)?;
        let (record, key) = (self.record.as_ref(), self.key.as_ref());
        match reply.status {
            200 => Ok(Some(current_from(self.kv, name, &reply.body, record, key))),
            // A deleted latest version: its metadata has the version CAS needs.
            404 => {
                let version = reply.body["data"]["metadata"]["version"].as_u64();
                Ok(version.map(|v| Current { version: Some(v), ..Current::default() }))
            }
            code => bail!("GET {path} failed with HTTP {code}: {}", reply.errors()),
        }
    }

    fn write_entries(&self, writes: &[Write<'_>]) -> Vec<(String, Outcome)> {
        let total = writes.len();
        let show = self.progress && total >= 200;
        let done = AtomicUsize::new(0);
        bounded(writes.iter().collect(), self.concurrency, |w| {
            let outcome = self.write_one(w);
            let n = done.fetch_add(1, Ordering::Relaxed) + 1;
            if show && (n.is_multiple_of(100) || n == total) {
                eprint!("\r  writing {n}/{total}{}", if n == total { "\n" } else { "" });
            }
            (w.name.to_string(), outcome)
        })
    }

    fn write_one(&self, w: &Write<'_>) -> Outcome {
        let path = self.data_path(w.name);
        // The version the record will name: for a value-only restamp, the one read.
        let mut version = w.cas;
        if !w.metadata_only {
            // JSON text, not a `Value`: this runs per secret in an unoptimised build.
            let value = json_string(w.value);
            let data = match (self.kv, w.cas) {
                (KvVersion::V2, Some(cas)) => {
                    format!(r#"{{"options":{{"cas":{cas}}},"data":{{"value":{value}}}}}"#)
                }
                (KvVersion::V2, None) => format!(r#"{{"data":{{"value":{value}}}}}"#),
                (KvVersion::V1, _) => format!(r#"{{"value":{value}}}"#),
            };
            match self.http.call_with(Method::Post, &path, Some(&data), true) {
                Ok(r) if (200..300).contains(&r.status) => {
                    version = r.body["data"]["version"].as_u64()
                }
                Ok(r) if r.status == 400 && r.errors().contains("check-and-set") => {
                    // A retried write can lose to itself: our exact value there is ours.
                    let landed = match self.http.call(Method::Get, &path, None) {
                        Ok(r) if r.status == 200 => r.body["data"]["data"]["value"]
                            .as_str()
                            .is_some_and(|v| sha256_hex(v.as_bytes()) == w.sha256)
                            .then(|| r.body["data"]["metadata"]["version"].as_u64()),
                        _ => None,
                    };
                    let Some(landed) = landed else {
                        return Outcome::Conflict(
                            "changed by someone else between the seed's read and its write (check-and-set failed); \
                             re-run to see the new state"
                                .into(),
                        );
                    };
                    version = landed;
                }
                Ok(r) => return Outcome::Failed(r.failed(format!("POST {path}")).to_string()),
                Err(e) => return Outcome::Failed(e.to_string()),
            }
        }
        let Some(key) = self.key.as_ref().filter(|_| self.kv == KvVersion::V2) else {
            return Outcome::Written;
        };
        let meta_path = format!("{}/metadata/{}", self.mount, w.name);
        let digest = key.digest(w.name, w.value);
        match write_stamp(&self.http, &meta_path, &digest, version) {
            (_, Ok(r)) if (200..300).contains(&r.status) => Outcome::Written,
            // The value is written; only the checksum is missing. A re-run restamps it.
            (verb, Ok(r)) => {
                Outcome::ValueOnly(r.failed(format!("{verb} {meta_path}")).to_string())
            }
            (_, Err(e)) => Outcome::ValueOnly(e.to_string()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::secrets::provider::{MANAGED_BY, SEEDED_ANOTHER_VALUE};
    use serde_json::json;

    fn v2(value: &str, version: u64, custom: &Value, key: Option<&DigestKey>) -> Current {
        let reply = json!({"data": {"data": {"value": value}, "metadata": {"version": version, "custom_metadata": custom}}});
        current_from(KvVersion::V2, "n", &reply, None, key)
    }

    #[test]
    fn reads_v2_entries_with_a_keyed_stamp() {
        let key = DigestKey::fixed(&"k".repeat(64));
        let stamped = json!({"managed-by": MANAGED_BY, "fixture-hmac": key.digest("n", "x"), "fixture-version": "3"});
        let mut reply = json!({"data": {"data": {"value": "x", "other": "y"}, "metadata": {"version": 3, "custom_metadata": stamped}}});
        let c = current_from(KvVersion::V2, "n", &reply, None, Some(&key));
        assert_eq!(c.sha256.as_deref(), Some(sha256_hex(b"x").as_str()));
        assert_eq!((c.version, c.stamp_stale), (Some(3), false));
        assert_eq!(c.seeded_sha256, c.sha256, "the stamp is of the value there");
        assert_eq!(c.properties, vec!["other".to_string(), "value".to_string()]);
        // A value the stamp is not of: the seed wrote another one.
        reply["data"]["data"]["value"] = "by-hand".into();
        let edited = current_from(KvVersion::V2, "n", &reply, None, Some(&key));
        assert_eq!(edited.seeded_sha256.as_deref(), Some(SEEDED_ANOTHER_VALUE));
        // Without the key, a stamp proves nothing.
        assert_eq!(v2("x", 3, &stamped, None).seeded_sha256, None);
    }

    #[test]
    fn a_record_without_the_read_version_is_stale() {
        let key = DigestKey::fixed(&"k".repeat(64));
        let hmac = key.digest("n", "x");
        for (version, stale) in [(json!("3"), false), (json!("2"), true), (Value::Null, true)] {
            let custom =
                json!({"managed-by": MANAGED_BY, "fixture-hmac": hmac, "fixture-version": version});
            assert_eq!(v2("x", 3, &custom, Some(&key)).stamp_stale, stale, "{version:?}");
        }
        let v1 = json!({"data": {"value": "x"}});
        assert!(!current_from(KvVersion::V1, "n", &v1, None, None).stamp_stale);
    }

    #[test]
    fn foreign_metadata_is_not_ours() {
        let key = DigestKey::fixed(&"k".repeat(64));
        let foreign = json!({"fixture-sha256": "abc", "fixture-hmac": "abc"});
        assert_eq!(v2("x", 1, &foreign, Some(&key)).seeded_sha256, None);
        let v1 = json!({"data": {"password": "x"}});
        let c = current_from(KvVersion::V1, "n", &v1, None, None);
        assert_eq!((c.sha256, c.version), (None, None));
        assert_eq!(c.properties, vec!["password".to_string()]);
    }
}
