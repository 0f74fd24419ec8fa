//! HashiCorp Vault / OpenBao: one KV entry per secret, the value under the
//! property `value` (what charts read with `remoteRef.property: value`).
//!
//! KV v2: `<mount>/data/<name>`, written with check-and-set on the version
//! just read, with `managed-by`, `fixture-hmac` (a keyed digest of the
//! value) and `fixture-version` (the KV version it describes) in
//! `custom_metadata`; the digests' key is in the mount's record entry.
//! KV v1: `<mount>/<name>`, no versions and no metadata: the mount's record
//! entry ([`super::vault_record`]) says what the seed wrote, so hand edits
//! are conflicts there too.
//!
//! Reading: one paged detailed listing of the mount ([`super::vault_listing`])
//! tells most entries without reading them; only the others get a GET. Where
//! that endpoint is missing or the policy does not grant it, a plain LIST
//! plus one GET per entry does the same job.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use anyhow::{anyhow, bail, Context, Result};
use serde_json::Value;

use super::vault_http::{backoff, json_string, Method, SealStatus, VaultError, VaultHttp};
use super::vault_listing::detailed_listing;
use super::vault_record::{
    create_key, read_key, read_record, update_record, write_stamp, Change, MountRecord, Phase,
    Record, RECORD_NAME,
};
use super::{Current, DigestKey, Outcome, SecretProvider, Stamp, Write};
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
    /// Progress on standard error while writing (a TTY and a long run).
    pub progress: bool,
    /// KV v1: the mount's record entry as [`SecretProvider::read`] found it.
    record: Option<MountRecord>,
    /// KV v2: the key of the stamps' digests, from the mount's record entry
    /// (read by [`SecretProvider::read`], made by the first write).
    key: Option<DigestKey>,
    /// The values this run expects ([`VaultProvider::expect`]).
    expected: SecretSet,
    /// KV v1: the local lock that seeds from this checkout take in turn to
    /// update the record entry.
    record_lock: std::path::PathBuf,
    /// Held for the provider's lifetime; stopped on drop.
    _port_forward: Option<port_forward::PortForward>,
}

/// Where to reach Vault, and with which token.
pub(crate) struct Endpoint {
    pub addr: String,
    pub token: Setting<Secret>,
    pub port_forward: Option<port_forward::PortForward>,
    /// `sys/seal-status` as the guardrail's check read it (that call needs
    /// no token), so connecting does not ask again.
    pub seal: Option<SealStatus>,
}

/// Resolves the address (config, else a port-forward through a local kube
/// context) and the token, applying the guardrail: a Vault that is not on
/// loopback needs `--allow-non-local <host>`; a loopback one under a kube
/// context that does not look local (it may be a port-forward into that
/// cluster) must be a dev server (in-memory storage) or be named the same
/// way; the seed port-forwards only through a local context.
pub(crate) fn resolve_endpoint(cfg: &Config, allow_non_local: Option<&str>) -> Result<Endpoint> {
    let mut seal = None;
    let (addr, port_forward) = match &cfg.vault_addr {
        Some(addr) => {
            let addr_value = addr.value.expose();
            guard::check_vault_addr(addr_value, allow_non_local)
                .with_context(|| format!("Vault address from {}", addr.source))?;
            if let Some(host) = guard::unvouched_loopback(addr_value, allow_non_local) {
                // A dev server is taken under any context, so the common case
                // costs one seal-status call and no kubectl. Unreachable:
                // unknown here; connecting reports it. A context that cannot
                // be known (kubectl missing, a broken kubeconfig) fails closed.
                seal = seal_status(cfg, addr_value).ok();
                let storage = seal.as_ref().and_then(|s| s.storage_type.clone());
                if storage.as_deref() != Some("inmem") {
                    guard::require_dev_server_under(
                        addr_value,
                        &host,
                        &kube::guard_context(&cfg.kubeconfig),
                        &cfg.local_contexts,
                        storage.as_deref(),
                    )?;
                }
            }
            (addr_value.to_string(), None)
        }
        None => {
            let Some(context) = kube::context(&cfg.kubeconfig)? else {
                bail!(
                    "no Vault address: set VAULT_ADDR (for example http://127.0.0.1:8200 for `bao server -dev`), or \
                     point kubectl at your local cluster so the seed can port-forward to svc/{} in namespace {}. \
                     For a store with no Vault at all: --provider file.",
                    cfg.port_forward.service,
                    cfg.port_forward.namespace
                );
            };
            guard::check_port_forward_context(&context, &cfg.local_contexts)?;
            let pf = port_forward::PortForward::start(&port_forward::ForwardSpec {
                namespace: cfg.port_forward.namespace.clone(),
                service: cfg.port_forward.service.clone(),
                port: cfg.port_forward.port,
                start_deadline: cfg.port_forward.start_timeout,
                pod_wait: cfg.port_forward.pod_wait,
            })?;
            (pf.addr(), Some(pf))
        }
    };
    let token = match (&cfg.vault_token, &port_forward) {
        (Some(t), _) => t.clone(),
        (None, Some(_)) => Setting { value: Secret::new(cfg.port_forward.dev_root_token.clone()), source: Source::DevChart },
        (None, None) => bail!(
            "no Vault token: set VAULT_TOKEN, run `bao login` (it writes ~/.vault-token), or set vault.token in \
             .local/secrets.toml"
        ),
    };
    Ok(Endpoint {
        addr,
        token,
        port_forward,
        seal,
    })
}

/// `sys/seal-status` through a port-forward that was just started: the
/// forward's first connection. A pod that refuses it (Vault not listening
/// yet) makes kubectl exit there, and the forward's watcher restarts it:
/// retried like any later call (the client's lifeline holds a failed
/// attempt until the restart is done, and ends the retries once the
/// forward is gone for good). Other answers are final.
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

/// `sys/seal-status`, whose storage type is `inmem` for a dev server; the
/// call needs no token.
fn seal_status(cfg: &Config, addr: &str) -> Result<SealStatus> {
    let timeout = Duration::from_secs_f64(cfg.vault_timeout_secs);
    let http = configured_http(cfg, addr, Secret::new(String::new()), timeout, 0, 1)?;
    Ok(http.seal_status()?)
}

/// A client for `addr` with the configured namespace and CA certificate
/// (relative to the project root).
pub(crate) fn configured_http(
    cfg: &Config,
    addr: &str,
    token: Secret,
    timeout: Duration,
    retries: u32,
    pool: usize,
) -> Result<VaultHttp> {
    VaultHttp::new(
        addr,
        token,
        cfg.vault_namespace.as_ref().map(|s| s.value.clone()),
        timeout,
        retries,
        pool,
        cfg.vault_ca_cert
            .as_ref()
            .map(|c| cfg.abs(&c.value))
            .as_deref(),
    )
}

impl VaultProvider {
    /// Connects, checks the seal and the token, and finds the KV version.
    pub(crate) fn connect(cfg: &Config, allow_non_local: Option<&str>) -> Result<VaultProvider> {
        let endpoint = resolve_endpoint(cfg, allow_non_local)?;
        let concurrency = cfg.concurrency.value;
        let mut http = configured_http(
            cfg,
            &endpoint.addr,
            endpoint.token.value.clone(),
            Duration::from_secs_f64(cfg.vault_timeout_secs),
            cfg.vault_retries,
            concurrency,
        )?;
        if let Some(pf) = &endpoint.port_forward {
            http.set_lifeline(std::sync::Arc::new(pf.lifeline()));
        }
        let mount = cfg.vault_mount.value.clone();
        let token_source = endpoint.token.source.clone();
        let seal = match (endpoint.seal, &endpoint.port_forward) {
            (Some(seal), _) => seal,
            (None, Some(pf)) => first_seal_status(&http, pf, cfg.vault_retries)?,
            (None, None) => http.seal_status()?,
        };
        if seal.sealed {
            return Err(VaultError::Sealed {
                addr: http.addr().to_string(),
            }
            .into());
        }
        let me = http.call(Method::Get, "auth/token/lookup-self", None);
        if let Err(VaultError::Forbidden { .. }) = me {
            bail!(
                "the Vault token from {token_source} is invalid or expired (permission denied on \
                 auth/token/lookup-self). Get a fresh one: `bao login`, or export VAULT_TOKEN."
            );
        }
        let kv = kv_version(&http, &mount)?;
        Ok(VaultProvider {
            http,
            mount,
            kv,
            concurrency,
            progress: false,
            record: None,
            key: None,
            expected: SecretSet::default(),
            record_lock: cfg.root.join(".local/secrets/kv1-record.lock"),
            _port_forward: endpoint.port_forward,
        })
    }

    /// Requests, writes and retries so far.
    pub(crate) fn stats(&self) -> (u64, u64, u64) {
        let s = &self.http.stats;
        (
            s.requests.load(Ordering::Relaxed),
            s.writes.load(Ordering::Relaxed),
            s.retries.load(Ordering::Relaxed),
        )
    }

    /// The values this run expects to find: the detailed listing then tells
    /// an entry that holds its value from the entry's stamp alone, and reads
    /// only the others. A hint: a stamp that does not match means a read.
    pub(crate) fn expect(&mut self, desired: SecretSet) {
        self.expected = desired;
    }

    /// The mount's KV version, found on connect.
    pub(crate) fn kv_version(&self) -> KvVersion {
        self.kv
    }

    /// Whether the token is refused the detailed listing that makes
    /// re-seeds read one page instead of every entry (KV v2 only).
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

    fn list_path(&self) -> String {
        match self.kv {
            KvVersion::V2 => format!("{}/metadata/", self.mount),
            KvVersion::V1 => format!("{}/", self.mount),
        }
    }

    fn list_at(http: &VaultHttp, path: &str) -> Result<Vec<String>, VaultError> {
        let reply = http.call(Method::List, path, None)?;
        if reply.status == 404 {
            return Ok(Vec::new());
        }
        if reply.status != 200 {
            return Err(VaultError::Status {
                call: format!("LIST {path}"),
                code: reply.status,
                errors: reply.errors(),
            });
        }
        Ok(reply.body["data"]["keys"]
            .as_array()
            .map(|keys| {
                keys.iter()
                    .filter_map(Value::as_str)
                    .filter(|k| !k.ends_with('/'))
                    .map(String::from)
                    .collect()
            })
            .unwrap_or_default())
    }
}

/// What is mounted at `mount` (its `sys/mounts` entry: `type`, `options`),
/// or `None` when nothing is. `sys/mounts` needs a sudo-less read a
/// developer's policy may lack, so a refusal there falls back to the
/// per-mount endpoint; a refusal there too is [`VaultError::Forbidden`].
pub(crate) fn mount_info(http: &VaultHttp, mount: &str) -> Result<Option<Value>, VaultError> {
    let key = format!("{mount}/");
    let reply = http.try_call(Method::Get, "sys/mounts", None)?;
    if reply.status == 200 {
        let mounts = reply
            .body
            .get("data")
            .filter(|d| d.is_object())
            .unwrap_or(&reply.body);
        return Ok(mounts.get(&key).cloned());
    }
    let path = format!("sys/internal/ui/mounts/{mount}");
    let r = http.try_call(Method::Get, &path, None)?;
    match r.status {
        200 if r.body["data"]["path"].as_str() == Some(key.as_str()) => {
            Ok(Some(r.body["data"].clone()))
        }
        401 | 403 => Err(VaultError::Forbidden {
            call: format!("GET {path}"),
            errors: r.errors(),
        }),
        _ => Ok(None),
    }
}

/// Finds the KV version of `mount` (see [`mount_info`]).
fn kv_version(http: &VaultHttp, mount: &str) -> Result<KvVersion> {
    let key = format!("{mount}/");
    let info = mount_info(http, mount)?;
    let Some(info) = info else {
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

/// Reads one entry into a [`Current`]; on KV v1, `record` (the mount's
/// record entry) tells whether the seed wrote the value there; on KV v2 the
/// stamp does, verified with `key`.
fn current_from(
    kv: KvVersion,
    name: &str,
    reply: &Value,
    record: Option<&MountRecord>,
    key: Option<&DigestKey>,
) -> Option<Current> {
    let (data, meta) = match kv {
        KvVersion::V2 => (&reply["data"]["data"], &reply["data"]["metadata"]),
        KvVersion::V1 => (&reply["data"], &Value::Null),
    };
    let properties: Vec<String> = data
        .as_object()
        .map(|m| m.keys().cloned().collect())
        .unwrap_or_default();
    let sha256 = data["value"].as_str().map(|v| sha256_hex(v.as_bytes()));
    if kv == KvVersion::V1 {
        let (seeded_sha256, stamp_stale) = match (record, data["value"].as_str(), &sha256) {
            (Some(rec), Some(value), Some(sha256)) => rec.judge(name, value, sha256),
            _ => (None, false),
        };
        return Some(Current {
            sha256,
            properties,
            version: None,
            seeded_sha256,
            stamp_stale,
            raw_sha256: None,
        });
    }
    let record = Record::read(&meta["custom_metadata"]);
    let version = meta["version"].as_u64();
    let (seeded_sha256, old_format) = match (&record, data["value"].as_str(), &sha256) {
        (Some(r), Some(value), Some(sha256)) => r.stamp.judge(key, name, value, sha256),
        // No string value: what the stamp says matters not (the plan
        // replaces such an entry only with --force), but an older release's
        // checksum still names what it wrote.
        (
            Some(Record {
                stamp: Stamp::Sha256(old),
                ..
            }),
            _,
            _,
        ) => (Some(old.clone()), true),
        _ => (None, false),
    };
    Some(Current {
        sha256,
        properties,
        version,
        stamp_stale: old_format
            || record
                .as_ref()
                .and_then(|r| r.version)
                .is_none_or(|v| Some(v) != version),
        seeded_sha256,
        raw_sha256: None,
    })
}

impl SecretProvider for VaultProvider {
    fn target(&self) -> String {
        let kv = match self.kv {
            KvVersion::V1 => "kv v1",
            KvVersion::V2 => "kv v2",
        };
        format!("vault {} (mount {}, {kv})", self.http.addr(), self.mount)
    }

    fn vault_http(&self) -> Option<&VaultHttp> {
        Some(&self.http)
    }

    fn read(&mut self, names: &[String]) -> Result<BTreeMap<String, Option<Current>>> {
        let (http, kv) = (&self.http, self.kv);
        let paths: Vec<(String, String)> = names
            .iter()
            .map(|n| (n.clone(), self.data_path(n)))
            .collect();
        let mut out: BTreeMap<String, Option<Current>> = BTreeMap::new();
        let detailed = match kv {
            KvVersion::V2 => {
                self.key = read_key(http, &self.mount)?;
                let wanted = paths.iter().map(|(n, _)| n.as_str()).collect();
                detailed_listing(
                    http,
                    &self.mount,
                    &wanted,
                    self.key.as_ref(),
                    &self.expected,
                )?
            }
            KvVersion::V1 => {
                self.record = read_record(http, &self.mount)?;
                None
            }
        };
        let (record, key) = (self.record.as_ref(), self.key.as_ref());
        // Entries to read one by one; the absent ones go straight to `out`.
        let mut present = Vec::new();
        match detailed {
            Some(mut info) => {
                for (name, path) in paths {
                    match info.remove(&name) {
                        None => {
                            out.insert(name, None);
                        }
                        Some(Some(current)) => {
                            out.insert(name, Some(current));
                        }
                        Some(None) => present.push((name, path)),
                    }
                }
            }
            None => {
                let existing: std::collections::HashSet<String> =
                    VaultProvider::list_at(http, &self.list_path())?
                        .into_iter()
                        .collect();
                for (name, path) in paths {
                    if existing.contains(&name) {
                        present.push((name, path));
                    } else {
                        out.insert(name, None);
                    }
                }
            }
        }
        // Each thread keeps only the small `Current`, not the whole reply.
        let currents = bounded(present, self.concurrency, |(name, path)| {
            let current =
                http.call(Method::Get, &path, None)
                    .map_err(anyhow::Error::from)
                    .and_then(|reply| match reply.status {
                        200 => Ok(current_from(kv, &name, &reply.body, record, key)),
                        // KV v2 answers 404 for a deleted latest version but still
                        // returns its metadata: re-creating needs that version for CAS.
                        404 => Ok(reply.body["data"]["metadata"]["version"].as_u64().map(|v| {
                            Current {
                                version: Some(v),
                                ..Current::default()
                            }
                        })),
                        code => Err(anyhow!(
                            "GET {path} failed with HTTP {code}: {}",
                            reply.errors()
                        )),
                    });
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
            if writes.is_empty() {
                return Ok(Vec::new());
            }
            if self.key.is_none() {
                // Before any value: nothing is written without its stamp's key.
                self.key = Some(create_key(&self.http, &self.mount)?);
            }
            return Ok(self.write_entries(writes));
        }
        // KV v1 has no metadata: the mount's record entry says what the seed
        // wrote. Before the values, it learns each new value as a candidate,
        // so a run killed mid-way leaves every value it wrote recognised.
        let record = self.record.as_ref();
        let change = |w: &Write<'a>| Change {
            name: w.name,
            value: w.value,
            seen: record
                .and_then(|r| r.digests.get(w.name))
                .map_or(&[][..], Vec::as_slice),
            seen_key: record.map(MountRecord::key),
        };
        let intents: Vec<Change<'_>> = writes
            .iter()
            .filter(|w| !w.metadata_only)
            .map(change)
            .collect();
        update_record(&self.http, &self.mount, &self.record_lock, &intents, Phase::Intend).with_context(|| {
            format!(
                "recording the values about to be written in {}/{RECORD_NAME} (KV v1); nothing was written",
                self.mount
            )
        })?;
        let mut outcomes = self.write_entries(writes);
        // After: each name written names its new value alone. A value whose
        // write failed keeps both candidates: it may have landed.
        let written: BTreeMap<&str, &Write<'_>> = writes.iter().map(|w| (w.name, w)).collect();
        let settle: Vec<Change<'_>> = outcomes
            .iter()
            .filter(|(_, o)| *o == Outcome::Written)
            .filter_map(|(name, _)| written.get(name.as_str()).map(|w| change(w)))
            .collect();
        if let Err(e) = update_record(
            &self.http,
            &self.mount,
            &self.record_lock,
            &settle,
            Phase::Settle,
        ) {
            let reason = format!("{}/{RECORD_NAME} not updated: {e:#}", self.mount);
            for (name, outcome) in outcomes.iter_mut() {
                if *outcome != Outcome::Written {
                    continue;
                }
                *outcome = if written[name.as_str()].metadata_only {
                    Outcome::Failed(reason.clone())
                } else {
                    // The value landed and is recognised (the intent above): a re-run restamps it.
                    Outcome::ValueOnly(reason.clone())
                };
            }
        }
        Ok(outcomes)
    }

    fn list(&mut self) -> Result<Vec<String>> {
        let mut names = VaultProvider::list_at(&self.http, &self.list_path())?;
        names.retain(|n| n != RECORD_NAME);
        Ok(names)
    }

    fn stats(&self) -> Option<(u64, u64, u64)> {
        Some(VaultProvider::stats(self))
    }

    fn set_progress(&mut self, on: bool) {
        self.progress = on;
    }
}

impl VaultProvider {
    /// Writes each entry (a KV v2 stamp with it, under `self.key`); one
    /// outcome per write.
    fn write_entries(&self, writes: &[Write<'_>]) -> Vec<(String, Outcome)> {
        let (http, kv, mount) = (&self.http, self.kv, self.mount.as_str());
        let key = self.key.as_ref();
        let total = writes.len();
        let show = self.progress && total >= 200;
        let done = AtomicUsize::new(0);
        let jobs: Vec<Job> = writes
            .iter()
            .map(|w| Job {
                name: w.name.to_string(),
                path: self.data_path(w.name),
                value: (!w.metadata_only).then(|| w.value.to_string()),
                sha256: w.sha256.to_string(),
                digest: key.map(|k| k.digest(w.name, w.value)),
                cas: w.cas,
            })
            .collect();
        bounded(jobs, self.concurrency, |job| {
            // JSON text, not a `Value`: this runs per secret, and our crate
            // is built unoptimised (see `json_string`).
            let data = job.value.as_deref().map(|value| {
                let value = json_string(value);
                match (kv, job.cas) {
                    (KvVersion::V2, Some(cas)) => {
                        format!(r#"{{"options":{{"cas":{cas}}},"data":{{"value":{value}}}}}"#)
                    }
                    (KvVersion::V2, None) => format!(r#"{{"data":{{"value":{value}}}}}"#),
                    (KvVersion::V1, _) => format!(r#"{{"value":{value}}}"#),
                }
            });
            let outcome = write_one(http, mount, kv, &job, data.as_deref());
            let n = done.fetch_add(1, Ordering::Relaxed) + 1;
            if show && (n.is_multiple_of(100) || n == total) {
                eprint!("\r  writing {n}/{total}");
                if n == total {
                    eprintln!();
                }
            }
            (job.name, outcome)
        })
    }
}

/// One write, owned so a task can carry it.
struct Job {
    name: String,
    path: String,
    /// `None`: only record the checksum.
    value: Option<String>,
    sha256: String,
    /// KV v2: the keyed digest the stamp records.
    digest: Option<String>,
    cas: Option<u64>,
}

fn write_one(
    http: &VaultHttp,
    mount: &str,
    kv: KvVersion,
    job: &Job,
    data: Option<&str>,
) -> Outcome {
    let (name, path, sha256) = (&job.name, &job.path, &job.sha256);
    // The version the record will name: for a value-only restamp, the one read.
    let mut version = job.cas;
    if let Some(data) = data {
        match http.call_text(Method::Post, path, data) {
            Ok(r) if (200..300).contains(&r.status) => version = r.body["data"]["version"].as_u64(),
            Ok(r) if r.status == 400 && r.errors().contains("check-and-set") => {
                // After a failover a retried write can lose to itself: the old
                // leader committed it and died before answering. If the entry
                // now holds exactly our value, the write is ours.
                let landed = match http.call(Method::Get, path, None) {
                    Ok(r) if r.status == 200 => r.body["data"]["data"]["value"]
                        .as_str()
                        .is_some_and(|v| sha256_hex(v.as_bytes()) == *sha256)
                        .then(|| r.body["data"]["metadata"]["version"].as_u64()),
                    _ => None,
                };
                if let Some(v) = landed {
                    version = v;
                } else {
                    return Outcome::Conflict(
                        "changed by someone else between the seed's read and its write (check-and-set failed); \
                         re-run to see the new state"
                            .into(),
                    );
                }
            }
            Ok(r) => {
                return Outcome::Failed(format!(
                    "POST {path} failed with HTTP {}: {}",
                    r.status,
                    r.errors()
                ))
            }
            Err(e) => return Outcome::Failed(e.to_string()),
        }
    }
    if let (KvVersion::V2, Some(digest)) = (kv, &job.digest) {
        let meta_path = format!("{mount}/metadata/{name}");
        let (verb, written) = write_stamp(http, &meta_path, digest, version);
        match written {
            Ok(r) if (200..300).contains(&r.status) => {}
            // The value is written; only the checksum is missing. A re-run restamps it.
            Ok(r) => {
                return Outcome::ValueOnly(format!(
                    "{verb} {meta_path} failed with HTTP {}: {}",
                    r.status,
                    r.errors()
                ))
            }
            Err(e) => return Outcome::ValueOnly(e.to_string()),
        }
    }
    Outcome::Written
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::secrets::provider::{MANAGED_BY, SEEDED_ANOTHER_VALUE};
    use serde_json::json;

    fn entry(value: &str, version: u64, custom: Value) -> Value {
        json!({"data": {"data": {"value": value}, "metadata": {"version": version, "custom_metadata": custom}}})
    }

    #[test]
    fn reads_v2_entries_with_a_keyed_stamp() {
        let key = DigestKey::fixed(&"k".repeat(64));
        let stamped = json!({"managed-by": MANAGED_BY, "fixture-hmac": key.digest("n", "x"), "fixture-version": "3"});
        let mut reply = entry("x", 3, stamped.clone());
        reply["data"]["data"]["other"] = "y".into();
        let c = current_from(KvVersion::V2, "n", &reply, None, Some(&key)).unwrap();
        assert_eq!(c.sha256.as_deref(), Some(sha256_hex(b"x").as_str()));
        assert_eq!(c.version, Some(3));
        assert_eq!(c.seeded_sha256, c.sha256, "the stamp is of the value there");
        assert!(!c.stamp_stale);
        assert_eq!(c.properties, vec!["other".to_string(), "value".to_string()]);
        // A value the stamp is not of: the seed wrote another one.
        let edited = current_from(
            KvVersion::V2,
            "n",
            &entry("by-hand", 4, stamped.clone()),
            None,
            Some(&key),
        );
        assert_eq!(
            edited.unwrap().seeded_sha256.as_deref(),
            Some(SEEDED_ANOTHER_VALUE)
        );
        // Without the key, a stamp proves nothing.
        let unkeyed =
            current_from(KvVersion::V2, "n", &entry("x", 3, stamped), None, None).unwrap();
        assert_eq!(unkeyed.seeded_sha256, None);
    }

    #[test]
    fn an_older_release_stamp_counts_and_is_renewed() {
        let sha = sha256_hex(b"x");
        let old = json!({"managed-by": MANAGED_BY, "fixture-sha256": sha, "fixture-version": "3"});
        let key = DigestKey::fixed(&"k".repeat(64));
        let c = current_from(
            KvVersion::V2,
            "n",
            &entry("x", 3, old.clone()),
            None,
            Some(&key),
        )
        .unwrap();
        assert_eq!(c.seeded_sha256.as_deref(), Some(sha.as_str()));
        assert!(c.stamp_stale, "renewed into a keyed stamp");
        let c = current_from(KvVersion::V2, "n", &entry("y", 4, old), None, None).unwrap();
        assert_eq!(
            c.seeded_sha256.as_deref(),
            Some(sha.as_str()),
            "what it says it wrote"
        );
    }

    #[test]
    fn a_record_without_the_read_version_is_stale() {
        let key = DigestKey::fixed(&"k".repeat(64));
        let at = |version: Option<&str>| {
            let mut custom =
                json!({"managed-by": MANAGED_BY, "fixture-hmac": key.digest("n", "x")});
            if let Some(v) = version {
                custom["fixture-version"] = v.into();
            }
            current_from(KvVersion::V2, "n", &entry("x", 3, custom), None, Some(&key))
                .unwrap()
                .stamp_stale
        };
        assert!(!at(Some("3")));
        assert!(at(Some("2")));
        assert!(at(None));
        assert!(
            !current_from(
                KvVersion::V1,
                "n",
                &json!({"data": {"value": "x"}}),
                None,
                None
            )
            .unwrap()
            .stamp_stale
        );
    }

    #[test]
    fn foreign_metadata_is_not_ours() {
        let reply = entry(
            "x",
            1,
            json!({"fixture-sha256": "abc", "fixture-hmac": "abc"}),
        );
        let key = DigestKey::fixed(&"k".repeat(64));
        assert_eq!(
            current_from(KvVersion::V2, "n", &reply, None, Some(&key))
                .unwrap()
                .seeded_sha256,
            None
        );
        let v1 = json!({"data": {"password": "x"}});
        let c = current_from(KvVersion::V1, "n", &v1, None, None).unwrap();
        assert_eq!((c.sha256, c.version), (None, None));
        assert_eq!(c.properties, vec!["password".to_string()]);
    }
}
