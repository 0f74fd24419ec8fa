//! A small Vault HTTP client: one keep-alive connection pool, the token in a
//! header (never in a URL or argv), retries with exponential backoff and
//! jitter on connection errors, timeouts, 429 and 5xx, honouring
//! `Retry-After`. Errors name the call and the fix, never a value.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use serde_json::Value;

use crate::secrets::config::Secret;

/// What went wrong talking to Vault.
#[derive(Debug, Clone, PartialEq)]
pub enum VaultError {
    /// No connection (after retries).
    Unreachable {
        addr: String,
        detail: String,
    },
    /// A call took longer than the timeout (after retries).
    Timeout {
        call: String,
        secs: f64,
    },
    Sealed {
        addr: String,
    },
    /// 401/403: the token is invalid, expired or lacks a policy.
    Forbidden {
        call: String,
        errors: String,
    },
    /// Any other error status (after retries for 429 and 5xx).
    Status {
        call: String,
        code: u16,
        errors: String,
    },
}

impl VaultError {
    /// Errors after which no further call can succeed: stop the run.
    pub fn is_fatal(&self) -> bool {
        matches!(
            self,
            VaultError::Unreachable { .. }
                | VaultError::Sealed { .. }
                | VaultError::Forbidden { .. }
        )
    }
}

impl std::fmt::Display for VaultError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            VaultError::Unreachable { addr, detail } => write!(
                f,
                "cannot reach Vault at {addr} ({detail}). Is it running? Locally: `bao server -dev`, or check the \
                 port-forward / VAULT_ADDR."
            ),
            VaultError::Timeout { call, secs } => write!(
                f,
                "{call} timed out after {secs}s. Vault is overloaded or stuck; retry, or raise vault.timeout_secs in \
                 .local/secrets.toml."
            ),
            VaultError::Sealed { addr } => write!(
                f,
                "Vault at {addr} is sealed. Unseal it with `bao operator unseal` (or `vault operator unseal`); the \
                 local dev chart unseals itself on restart: `kubectl -n vault delete pod vault-0`."
            ),
            VaultError::Forbidden { call, errors } => write!(
                f,
                "permission denied for {call} ({errors}). The token is invalid, expired, or lacks a policy for this \
                 path: get a fresh one (`bao login`, or export VAULT_TOKEN) with create/read/update on the mount."
            ),
            VaultError::Status { call, code, errors } => write!(f, "{call} failed with HTTP {code}: {errors}"),
        }
    }
}

impl std::error::Error for VaultError {}

/// A response with a status Vault uses for answers, not failures (2xx, 400, 404).
#[derive(Debug)]
pub struct Reply {
    pub status: u16,
    pub body: Value,
}

impl Reply {
    /// Vault's `errors` array, joined.
    pub fn errors(&self) -> String {
        errors_of(&self.body)
    }
}

/// Vault's `errors`, one line: its multi-error text (`1 error occurred:\n\t*
/// permission denied\n\n`) becomes `permission denied`.
fn errors_of(body: &Value) -> String {
    match body.get("errors").and_then(Value::as_array) {
        Some(errs) if !errs.is_empty() => errs
            .iter()
            .filter_map(Value::as_str)
            .map(|e| crate::output::one_line_errors(e).trim().to_string())
            .collect::<Vec<_>>()
            .join("; "),
        _ => "no error message".to_string(),
    }
}

/// Counters for the summary and the benchmarks.
#[derive(Debug, Default)]
pub struct Stats {
    pub requests: AtomicU64,
    pub writes: AtomicU64,
    pub retries: AtomicU64,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Method {
    Get,
    List,
    Post,
    /// A JSON merge patch (`application/merge-patch+json`).
    Patch,
}

pub struct VaultHttp {
    client: ureq::Agent,
    addr: String,
    token: Secret,
    namespace: Option<String>,
    retries: u32,
    timeout: Duration,
    pub stats: Stats,
    /// Set after a fatal error: later calls fail at once.
    stopped: AtomicBool,
    /// The way to Vault, when it can die under us (a port-forward).
    lifeline: Option<Lifeline>,
}

/// Says why the way to Vault is gone for good (`Some`), such as a
/// port-forward that failed twice: a call then stops at once with that
/// reason instead of retrying.
pub type Lifeline = std::sync::Arc<dyn Fn() -> Option<String> + Send + Sync>;

/// Longest pause a `Retry-After` may ask for.
const MAX_RETRY_AFTER: Duration = Duration::from_secs(30);
/// Largest reply read: a page of the detailed listing is well under 1 MiB.
const MAX_REPLY_BYTES: u64 = 64 << 20;
/// How often a call is sent again at once after its keep-alive connection
/// was closed under it, before that counts as a failed attempt.
const MAX_RESENDS: u32 = 2;
/// First backoff step; doubles each retry, with full jitter.
const BACKOFF_BASE: Duration = Duration::from_millis(100);

impl VaultHttp {
    pub fn new(
        addr: &str,
        token: Secret,
        namespace: Option<String>,
        timeout: Duration,
        retries: u32,
        pool: usize,
        ca_cert: Option<&std::path::Path>,
    ) -> anyhow::Result<VaultHttp> {
        let roots = match ca_cert {
            None => ureq::tls::RootCerts::PlatformVerifier,
            Some(path) => ureq::tls::RootCerts::new_with_certs(&read_ca_certs(path)?),
        };
        // No proxy from the environment: Vault here is on loopback or a
        // port-forward, and a corporate HTTP_PROXY must not see the token.
        let config = ureq::Agent::config_builder()
            .http_status_as_error(false)
            .proxy(None)
            .timeout_global(Some(timeout))
            .timeout_connect(Some(timeout.min(Duration::from_secs(5))))
            .max_idle_connections_per_host(pool.max(1))
            .max_idle_connections(pool.max(1) * 2)
            .no_delay(true)
            .tls_config(
                ureq::tls::TlsConfig::builder()
                    .provider(ureq::tls::TlsProvider::NativeTls)
                    .root_certs(roots)
                    .build(),
            )
            .build();
        let client = ureq::Agent::with_parts(
            config,
            // No proxy, so no proxy connectors: our TCP, then TLS for https.
            ureq::unversioned::transport::Connector::chain(
                super::lean_tcp::LeanTcpConnector,
                ureq::unversioned::transport::NativeTlsConnector::default(),
            ),
            OnceResolver::default(),
        );
        Ok(VaultHttp {
            client,
            addr: addr.trim_end_matches('/').to_string(),
            token,
            namespace,
            retries,
            timeout,
            stats: Stats::default(),
            stopped: AtomicBool::new(false),
            lifeline: None,
        })
    }

    /// Watch the way to Vault: see [`Lifeline`].
    pub fn set_lifeline(&mut self, lifeline: Lifeline) {
        self.lifeline = Some(lifeline);
    }

    /// A connection failure, with why the way to Vault is gone if it is.
    fn unreachable(&self, detail: String) -> (VaultError, bool) {
        match self.lifeline.as_ref().and_then(|alive| alive()) {
            Some(why) => (
                VaultError::Unreachable {
                    addr: self.addr.clone(),
                    detail: format!("{detail}; {why}"),
                },
                true,
            ),
            None => (
                VaultError::Unreachable {
                    addr: self.addr.clone(),
                    detail,
                },
                false,
            ),
        }
    }

    pub fn addr(&self) -> &str {
        &self.addr
    }

    /// The same server, connection settings and pool, with another token
    /// (reading as ESO's role would); its own counters.
    pub fn with_token(&self, token: Secret) -> VaultHttp {
        VaultHttp {
            client: self.client.clone(),
            addr: self.addr.clone(),
            token,
            namespace: self.namespace.clone(),
            retries: self.retries,
            timeout: self.timeout,
            stats: Stats::default(),
            stopped: AtomicBool::new(false),
            lifeline: self.lifeline.clone(),
        }
    }

    /// One API call with retries. `path` is below `/v1/`.
    pub fn call(
        &self,
        method: Method,
        path: &str,
        body: Option<&Value>,
    ) -> Result<Reply, VaultError> {
        self.call_with(method, path, body, true)
    }

    /// Like [`VaultHttp::call`], but 401/403 is an answer, not the end of the
    /// run: for optional endpoints or verbs a policy may not grant, so the
    /// caller can fall back.
    pub fn try_call(
        &self,
        method: Method,
        path: &str,
        body: Option<&Value>,
    ) -> Result<Reply, VaultError> {
        self.call_with(method, path, body, false)
    }

    fn call_with(
        &self,
        method: Method,
        path: &str,
        body: Option<&Value>,
        forbidden_stops: bool,
    ) -> Result<Reply, VaultError> {
        let call = describe(method, path);
        let mut attempt = 0u32;
        let mut resent = 0u32;
        loop {
            if self.stopped.load(Ordering::Relaxed) {
                return Err(VaultError::Status {
                    call,
                    code: 0,
                    errors: "not attempted: the run stopped".into(),
                });
            }
            self.stats.requests.fetch_add(1, Ordering::Relaxed);
            if matches!(method, Method::Post | Method::Patch) {
                self.stats.writes.fetch_add(1, Ordering::Relaxed);
            }
            let (err, wait) = match self.once(method, path, body) {
                // A KV v2 mount that was just enabled upgrades itself and
                // answers 400 for a moment: wait for it like any transient.
                Ok((400, _, body))
                    if errors_of(&body).contains("Waiting for the primary to upgrade") =>
                {
                    (
                        VaultError::Status {
                            call: call.clone(),
                            code: 400,
                            errors: errors_of(&body),
                        },
                        None,
                    )
                }
                Ok((status, _, body))
                    if (200..300).contains(&status) || status == 400 || status == 404 =>
                {
                    return Ok(Reply { status, body });
                }
                Ok((status, _, body)) if status == 503 && is_sealed(&body) => {
                    return Err(self.stop(VaultError::Sealed {
                        addr: self.addr.clone(),
                    }));
                }
                Ok((status, _, body)) if (status == 401 || status == 403) && !forbidden_stops => {
                    return Ok(Reply { status, body });
                }
                Ok((status, _, body)) if status == 401 || status == 403 => {
                    return Err(self.stop(VaultError::Forbidden {
                        call,
                        errors: errors_of(&body),
                    }));
                }
                Ok((status, retry_after, body)) => {
                    let err = VaultError::Status {
                        call: call.clone(),
                        code: status,
                        errors: errors_of(&body),
                    };
                    let transient = status == 429 || (500..600).contains(&status);
                    if !transient {
                        return Err(err);
                    }
                    (err, retry_after)
                }
                Err(Transport::Timeout) => (
                    VaultError::Timeout {
                        call: call.clone(),
                        secs: self.timeout.as_secs_f64(),
                    },
                    None,
                ),
                // A keep-alive connection closed under the request: send it
                // again at once on a new one, as a retry would, but without
                // its wait (bounded: a server that keeps doing it gets the
                // retries).
                Err(Transport::ClosedUnanswered(_)) if resent < MAX_RESENDS => {
                    resent += 1;
                    continue;
                }
                Err(Transport::Failed(detail) | Transport::ClosedUnanswered(detail)) => {
                    match self.unreachable(detail) {
                        (err, true) => return Err(self.stop(err)),
                        (err, false) => (err, None),
                    }
                }
            };
            if attempt >= self.retries {
                return Err(if err.is_fatal() { self.stop(err) } else { err });
            }
            self.stats.retries.fetch_add(1, Ordering::Relaxed);
            std::thread::sleep(wait.unwrap_or_else(|| backoff(attempt)));
            attempt += 1;
        }
    }

    fn transport_error(&self, call: &str, e: Transport) -> VaultError {
        match e {
            Transport::Timeout => VaultError::Timeout {
                call: call.into(),
                secs: self.timeout.as_secs_f64(),
            },
            Transport::Failed(detail) | Transport::ClosedUnanswered(detail) => {
                self.unreachable(detail).0
            }
        }
    }

    fn stop(&self, err: VaultError) -> VaultError {
        self.stopped.store(true, Ordering::Relaxed);
        err
    }

    fn once(
        &self,
        method: Method,
        path: &str,
        body: Option<&Value>,
    ) -> Result<(u16, Option<Duration>, Value), Transport> {
        let url = format!("{}/v1/{}", self.addr, path);
        let url = match method {
            Method::List if url.contains('?') => format!("{url}&list=true"),
            Method::List => format!("{url}?list=true"),
            _ => url,
        };
        let token = self.token.expose();
        let namespace = self.namespace.as_deref();
        let content_type = if method == Method::Patch {
            "application/merge-patch+json"
        } else {
            "application/json"
        };
        let sent = match method {
            Method::Get | Method::List => {
                let mut req = self
                    .client
                    .get(&url)
                    .header("X-Vault-Token", token)
                    .header("X-Vault-Request", "true");
                if let Some(ns) = namespace {
                    req = req.header("X-Vault-Namespace", ns);
                }
                req.call()
            }
            Method::Post | Method::Patch => {
                let mut req = if method == Method::Post {
                    self.client.post(&url)
                } else {
                    self.client.patch(&url)
                }
                .header("X-Vault-Token", token)
                .header("X-Vault-Request", "true")
                .header("Content-Type", content_type);
                if let Some(ns) = namespace {
                    req = req.header("X-Vault-Namespace", ns);
                }
                let bytes = body.map(|b| serde_json::to_vec(b).expect("JSON values serialise"));
                req.send(bytes.as_deref().unwrap_or(b"{}"))
            }
        };
        let mut resp = sent.map_err(Transport::from)?;
        let status = resp.status().as_u16();
        let retry_after = resp
            .headers()
            .get("retry-after")
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.trim().parse::<f64>().ok())
            .filter(|s| s.is_finite() && *s >= 0.0)
            .map(|s| Duration::from_secs_f64(s).min(MAX_RETRY_AFTER));
        let bytes = resp
            .body_mut()
            .with_config()
            .limit(MAX_REPLY_BYTES)
            .read_to_vec()
            .map_err(Transport::from)?;
        let body = if bytes.is_empty() {
            Value::Null
        } else {
            serde_json::from_slice(&bytes).unwrap_or(Value::Null)
        };
        Ok((status, retry_after, body))
    }

    /// `GET sys/seal-status` without retries or token: `Some(sealed)`, or the error.
    pub fn seal_status(&self) -> Result<SealStatus, VaultError> {
        let (status, _, body) = self
            .once(Method::Get, "sys/seal-status", None)
            .map_err(|e| self.transport_error("GET sys/seal-status", e))?;
        if status != 200 {
            return Err(VaultError::Status {
                call: "GET sys/seal-status".into(),
                code: status,
                errors: errors_of(&body),
            });
        }
        serde_json::from_value(body).map_err(|e| VaultError::Status {
            call: "GET sys/seal-status".into(),
            code: status,
            errors: format!("unexpected answer: {e}"),
        })
    }

    /// `GET sys/health`, read with our own struct: vaultrs 0.8 cannot parse
    /// OpenBao's answer, which has no `performance_standby` field.
    pub fn health(&self) -> Result<Health, VaultError> {
        let path = "sys/health?standbyok=true&perfstandbyok=true&sealedcode=200&uninitcode=200";
        let (status, _, body) = self
            .once(Method::Get, path, None)
            .map_err(|e| self.transport_error("GET sys/health", e))?;
        serde_json::from_value(body).map_err(|e| VaultError::Status {
            call: "GET sys/health".into(),
            code: status,
            errors: format!("unexpected answer: {e}"),
        })
    }
}

#[derive(Debug, Clone, serde::Deserialize, serde::Serialize)]
pub struct SealStatus {
    pub sealed: bool,
    #[serde(default)]
    pub initialized: bool,
    #[serde(default)]
    pub version: Option<String>,
    /// `inmem` for a dev server (`bao server -dev`), else `raft`, `file`, ...
    #[serde(default)]
    pub storage_type: Option<String>,
}

#[derive(Debug, Clone, serde::Deserialize, serde::Serialize)]
pub struct Health {
    pub initialized: bool,
    pub sealed: bool,
    #[serde(default)]
    pub standby: bool,
    #[serde(default)]
    pub version: Option<String>,
    #[serde(default)]
    pub cluster_name: Option<String>,
}

fn is_sealed(body: &Value) -> bool {
    errors_of(body).to_ascii_lowercase().contains("sealed")
}

fn describe(method: Method, path: &str) -> String {
    let verb = match method {
        Method::Get => "GET",
        Method::List => "LIST",
        Method::Post => "POST",
        Method::Patch => "PATCH",
    };
    format!("{verb} {}", path.split('?').next().unwrap_or(path))
}

/// The certificates of a PEM file (VAULT_CACERT), or an error naming it.
fn read_ca_certs(path: &std::path::Path) -> anyhow::Result<Vec<ureq::tls::Certificate<'static>>> {
    let pem = std::fs::read(path).map_err(|e| {
        anyhow::anyhow!(
            "reading the Vault CA certificate {} (VAULT_CACERT or vault.ca_cert): {e}",
            path.display()
        )
    })?;
    let certs: Vec<_> = ureq::tls::parse_pem(&pem)
        .filter_map(|item| match item {
            Ok(ureq::tls::PemItem::Certificate(c)) => Some(c),
            _ => None,
        })
        .collect();
    if certs.is_empty() {
        anyhow::bail!(
            "{} holds no PEM certificate; point VAULT_CACERT at the CA file your Vault prints (for `bao server \
             -dev-tls`, vault-ca.pem in its -dev-tls-cert-dir)",
            path.display()
        );
    }
    Ok(certs)
}

/// How long a resolved address is reused before it is looked up again.
const RESOLVE_TTL: Duration = Duration::from_secs(60);

/// Looks each host up once and reuses the answer for [`RESOLVE_TTL`].
///
/// ureq resolves the host before every request, pooled connection or not,
/// and with a timeout set (ours always is) its default resolver does each
/// lookup on a new thread: a thread per request, 2,000 `clone3` calls for a
/// 1,000-secret seed. Here only the first request of a host (per TTL) pays
/// for that thread. The URI keeps its host name, so TLS still verifies it
/// and sends it as SNI.
#[derive(Debug, Default)]
struct OnceResolver {
    inner: ureq::unversioned::resolver::DefaultResolver,
    cache: std::sync::Mutex<Vec<ResolvedHost>>,
}

#[derive(Debug)]
struct ResolvedHost {
    key: String,
    at: std::time::Instant,
    addrs: ureq::unversioned::resolver::ResolvedSocketAddrs,
}

impl ureq::unversioned::resolver::Resolver for OnceResolver {
    fn resolve(
        &self,
        uri: &ureq::http::Uri,
        config: &ureq::config::Config,
        timeout: ureq::unversioned::transport::NextTimeout,
    ) -> Result<ureq::unversioned::resolver::ResolvedSocketAddrs, ureq::Error> {
        let key = format!(
            "{}://{}",
            uri.scheme_str().unwrap_or(""),
            uri.authority().map(|a| a.as_str()).unwrap_or("")
        );
        {
            let cache = self.cache.lock().unwrap_or_else(|e| e.into_inner());
            if let Some(hit) = cache
                .iter()
                .find(|h| h.key == key && h.at.elapsed() < RESOLVE_TTL)
            {
                return Ok(hit.addrs.clone());
            }
        }
        // Concurrent first requests may each look up: harmless, and bounded
        // by the pool size.
        let addrs = self.inner.resolve(uri, config, timeout)?;
        let mut cache = self.cache.lock().unwrap_or_else(|e| e.into_inner());
        cache.retain(|h| h.key != key);
        cache.push(ResolvedHost {
            key,
            at: std::time::Instant::now(),
            addrs: addrs.clone(),
        });
        Ok(addrs)
    }
}

/// A request that got no HTTP answer.
#[derive(Debug)]
enum Transport {
    Timeout,
    Failed(String),
    /// See [`super::lean_tcp::ClosedUnanswered`].
    ClosedUnanswered(String),
}

impl From<ureq::Error> for Transport {
    fn from(e: ureq::Error) -> Transport {
        match e {
            ureq::Error::Timeout(_) => Transport::Timeout,
            ureq::Error::Io(io) if io.kind() == std::io::ErrorKind::TimedOut => Transport::Timeout,
            ureq::Error::Io(io) if super::lean_tcp::ClosedUnanswered::is(&io) => {
                Transport::ClosedUnanswered(io.to_string())
            }
            ureq::Error::Io(io) => Transport::Failed(io.to_string()),
            other if other.to_string().contains("certificate") => Transport::Failed(format!(
                "{other}; for a Vault with its own CA, such as `bao server -dev-tls`, export VAULT_CACERT=<its CA file>"
            )),
            other => Transport::Failed(other.to_string()),
        }
    }
}

/// Exponential backoff with full jitter: a random pause in [0, base * 2^attempt].
pub fn backoff(attempt: u32) -> Duration {
    let cap = BACKOFF_BASE.saturating_mul(1u32 << attempt.min(8));
    let frac = (random_u64() % 10_000) as f64 / 10_000.0;
    Duration::from_secs_f64(cap.as_secs_f64() * (0.5 + frac / 2.0))
}

fn random_u64() -> u64 {
    use std::hash::{BuildHasher, Hasher};
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u64(COUNTER.fetch_add(1, Ordering::Relaxed));
    h.finish()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_grows_and_stays_jittered() {
        for attempt in 0..6 {
            let cap = BACKOFF_BASE.as_secs_f64() * f64::from(1u32 << attempt);
            let d = backoff(attempt).as_secs_f64();
            assert!(
                d >= cap / 2.0 && d <= cap,
                "attempt {attempt}: {d} not in [{}, {cap}]",
                cap / 2.0
            );
        }
        assert!(backoff(30) <= BACKOFF_BASE * 256, "capped");
    }

    #[test]
    fn error_messages_name_the_call_and_the_fix() {
        let e = VaultError::Timeout {
            call: "POST secret/data/x".into(),
            secs: 2.0,
        };
        assert!(e
            .to_string()
            .contains("POST secret/data/x timed out after 2s"));
        let e = VaultError::Sealed {
            addr: "http://127.0.0.1:8200".into(),
        };
        assert!(e.to_string().contains("operator unseal") && e.is_fatal());
        let e = VaultError::Forbidden {
            call: "GET sys/mounts".into(),
            errors: "permission denied".into(),
        };
        assert!(e.to_string().contains("VAULT_TOKEN") && e.is_fatal());
    }

    #[test]
    fn describes_calls_without_query() {
        assert_eq!(
            describe(Method::List, "secret/metadata/?list=true"),
            "LIST secret/metadata/"
        );
        assert_eq!(
            errors_of(&serde_json::json!({"errors": ["a", "b"]})),
            "a; b"
        );
        assert_eq!(
            errors_of(
                &serde_json::json!({"errors": ["1 error occurred:\n\t* permission denied\n\n"]})
            ),
            "permission denied"
        );
        assert!(is_sealed(
            &serde_json::json!({"errors": ["Vault is sealed"]})
        ));
    }
}
