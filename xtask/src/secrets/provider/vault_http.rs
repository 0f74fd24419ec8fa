//! A small Vault HTTP client: the token in a header (never a URL or argv), retries
//! with backoff on transients. Errors name the call and the fix, never a value.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use serde_json::Value;
use ureq::tls::{parse_pem, PemItem, RootCerts, TlsConfig, TlsProvider};

use crate::output::Secret;

#[derive(Debug, Clone, PartialEq)]
pub(crate) enum VaultError {
    Unreachable {
        addr: String,
        detail: String,
    },
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
    Status {
        call: String,
        code: u16,
        errors: String,
    },
}

impl VaultError {
    /// Errors after which no further call can succeed: stop the run.
    pub(crate) fn is_fatal(&self) -> bool {
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
        let text = match self {
            VaultError::Unreachable { addr, detail } => format!(
                "cannot reach Vault at {addr} ({detail}). Is it running? Locally: `bao server -dev`, or check the \
                 port-forward / VAULT_ADDR."
            ),
            VaultError::Timeout { call, secs } => format!(
                "{call} timed out after {secs}s. Vault is overloaded or stuck; retry, or raise vault.timeout_secs in \
                 .local/secrets.toml."
            ),
            VaultError::Sealed { addr } => format!(
                "Vault at {addr} is sealed. Unseal it with `bao operator unseal` (or `vault operator unseal`); the \
                 local dev chart unseals itself on restart: `kubectl -n vault delete pod vault-0`."
            ),
            VaultError::Forbidden { call, errors } => format!(
                "permission denied for {call} ({errors}). The token is invalid, expired, or lacks a policy for this \
                 path: get a fresh one (`bao login`, or export VAULT_TOKEN) with create/read/update on the mount."
            ),
            VaultError::Status { call, code, errors } => format!("{call} failed with HTTP {code}: {errors}"),
        };
        f.write_str(&text)
    }
}

impl std::error::Error for VaultError {}

/// A call skipped after a fatal error: the seed groups these apart.
pub(crate) const NOT_ATTEMPTED: &str = "not attempted: the run stopped";

/// A response with a status Vault uses for answers, not failures (2xx, 400, 404).
#[derive(Debug)]
pub(crate) struct Reply {
    pub status: u16,
    pub body: Value,
}

/// What a call comes to: an answer, or why there is none.
type Answer = Result<Reply, VaultError>;

impl Reply {
    pub(crate) fn errors(&self) -> String {
        errors_of(&self.body)
    }

    /// The error of an unexpected status of `call` (`GET <path>`).
    pub(crate) fn failed(&self, call: String) -> VaultError {
        VaultError::Status { call, code: self.status, errors: self.errors() }
    }
}

/// Vault's `errors`, joined on one line.
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

#[derive(Debug, Default)]
pub(crate) struct Stats {
    pub requests: AtomicU64,
    pub writes: AtomicU64,
    pub retries: AtomicU64,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Method {
    Get,
    List,
    Post,
    Patch,
}

pub(crate) struct VaultHttp {
    agent: ureq::Agent,
    /// As configured, basic-auth user and password included; `shown` hides them.
    base: String,
    shown: String,
    token: Secret,
    namespace: Option<String>,
    retries: u32,
    timeout: Duration,
    pub stats: Stats,
    /// Set after a fatal error: later calls fail at once.
    stopped: AtomicBool,
    lifeline: Option<Lifeline>,
}

/// Why the way to Vault (a port-forward) is gone for good: calls then stop at once.
pub(crate) type Lifeline = std::sync::Arc<dyn Fn() -> Option<String> + Send + Sync>;

const MAX_RETRY_AFTER: Duration = Duration::from_secs(30);
const MAX_ANSWER_BYTES: u64 = 64 << 20;
const BACKOFF_BASE: Duration = Duration::from_millis(100);

impl VaultHttp {
    pub(crate) fn new(
        addr: &str,
        token: Secret,
        namespace: Option<String>,
        timeout: Duration,
        retries: u32,
        pool: usize,
        ca_cert: Option<&std::path::Path>,
    ) -> anyhow::Result<VaultHttp> {
        let roots = match ca_cert {
            None => RootCerts::PlatformVerifier,
            Some(path) => {
                let shown = path.display();
                let pem = std::fs::read(path).map_err(|e| {
                    anyhow::anyhow!("reading the Vault CA certificate {shown} (VAULT_CACERT or vault.ca_cert): {e}")
                })?;
                let certificate = |item| match item {
                    Ok(PemItem::Certificate(c)) => Some(c),
                    _ => None,
                };
                let certs: Vec<_> = parse_pem(&pem).filter_map(certificate).collect();
                anyhow::ensure!(
                    !certs.is_empty(),
                    "{shown} holds no PEM certificate; point VAULT_CACERT at the CA file your Vault prints (for \
                     `bao server -dev-tls`, vault-ca.pem in its -dev-tls-cert-dir)"
                );
                RootCerts::new_with_certs(&certs)
            }
        };
        // A timeout per phase (a whole-call one costs a thread per request); no
        // proxy: a corporate HTTP_PROXY must not see the token.
        let phase = Some(timeout);
        let tls = TlsConfig::builder().provider(TlsProvider::NativeTls).root_certs(roots).build();
        let agent = ureq::Agent::config_builder()
            .http_status_as_error(false)
            .proxy(None)
            .timeout_connect(Some(timeout.min(Duration::from_secs(5))))
            .timeout_send_request(phase)
            .timeout_send_body(phase)
            .timeout_recv_response(phase)
            .timeout_recv_body(phase)
            .max_idle_connections_per_host(pool.max(1))
            .max_idle_connections(pool.max(1))
            .no_delay(true)
            .tls_config(tls)
            .build()
            .new_agent();
        let addr = addr.trim_end_matches('/').to_string();
        Ok(VaultHttp {
            agent,
            shown: crate::output::shown_addr(&addr),
            base: addr,
            token,
            namespace,
            retries,
            timeout,
            stats: Stats::default(),
            stopped: AtomicBool::new(false),
            lifeline: None,
        })
    }

    pub(crate) fn set_lifeline(&mut self, lifeline: Lifeline) {
        self.lifeline = Some(lifeline);
    }

    fn unreachable(&self, detail: String) -> (VaultError, bool) {
        // The transport may quote the address whole, password and all.
        let mut detail = detail.replace(&self.base, &self.shown);
        let gone = self.lifeline.as_ref().and_then(|alive| alive());
        if let Some(why) = &gone {
            detail = format!("{detail}; {why}");
        }
        (VaultError::Unreachable { addr: self.shown.clone(), detail }, gone.is_some())
    }

    /// The address for messages (a user and password in it read `***`).
    pub(crate) fn addr(&self) -> &str {
        &self.shown
    }

    /// The same server and pool with another token (ESO's role); its own counters.
    pub(crate) fn with_token(&self, token: Secret) -> VaultHttp {
        VaultHttp {
            agent: self.agent.clone(),
            base: self.base.clone(),
            shown: self.shown.clone(),
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
    pub(crate) fn call(&self, method: Method, path: &str, body: Option<&Value>) -> Answer {
        self.call_with(method, path, body.map(Value::to_string).as_deref(), true)
    }

    /// Like [`VaultHttp::call`], but 401/403 is an answer the caller can fall back on.
    pub(crate) fn try_call(&self, method: Method, path: &str, body: Option<&Value>) -> Answer {
        self.call_with(method, path, body.map(Value::to_string).as_deref(), false)
    }

    /// A call with a body that is JSON text already (the seed's per-secret writes);
    /// `forbidden_stops`: whether 401/403 ends the run.
    pub(super) fn call_with(
        &self,
        method: Method,
        path: &str,
        body: Option<&str>,
        forbidden_stops: bool,
    ) -> Answer {
        // Named only on failure: this runs for every request.
        let call = || describe(method, path);
        let mut attempt = 0u32;
        loop {
            if self.stopped.load(Ordering::Relaxed) {
                let errors = NOT_ATTEMPTED.into();
                return Err(VaultError::Status { call: call(), code: 0, errors });
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
                    (VaultError::Status { call: call(), code: 400, errors: errors_of(&body) }, None)
                }
                Ok((status, _, body))
                    if (200..300).contains(&status) || status == 400 || status == 404 =>
                {
                    return Ok(Reply { status, body });
                }
                Ok((status, _, body)) if status == 503 && is_sealed(&body) => {
                    return Err(self.stop(VaultError::Sealed { addr: self.shown.clone() }));
                }
                Ok((status, _, body)) if (status == 401 || status == 403) && !forbidden_stops => {
                    return Ok(Reply { status, body });
                }
                Ok((status, _, body)) if status == 401 || status == 403 => {
                    return Err(
                        self.stop(VaultError::Forbidden { call: call(), errors: errors_of(&body) })
                    );
                }
                Ok((status, retry_after, body)) => {
                    let err =
                        VaultError::Status { call: call(), code: status, errors: errors_of(&body) };
                    let transient = status == 429 || (500..600).contains(&status);
                    if !transient {
                        return Err(err);
                    }
                    (err, retry_after)
                }
                Err(Transport::Timeout) => {
                    (VaultError::Timeout { call: call(), secs: self.timeout.as_secs_f64() }, None)
                }
                // A retried POST the server acted on is safe: CAS writes read back
                // their 400, merges repeat, a duplicate ESO token lapses in minutes.
                Err(Transport::Failed(detail)) => match self.unreachable(detail) {
                    (err, true) => return Err(self.stop(err)),
                    (err, false) => (err, None),
                },
            };
            if attempt >= self.retries {
                return Err(if err.is_fatal() { self.stop(err) } else { err });
            }
            self.stats.retries.fetch_add(1, Ordering::Relaxed);
            std::thread::sleep(wait.unwrap_or_else(|| backoff(attempt)));
            attempt += 1;
        }
    }

    fn stop(&self, err: VaultError) -> VaultError {
        self.stopped.store(true, Ordering::Relaxed);
        err
    }

    fn headers<B>(&self, request: ureq::RequestBuilder<B>) -> ureq::RequestBuilder<B> {
        let request =
            request.header("X-Vault-Token", self.token.expose()).header("X-Vault-Request", "true");
        match &self.namespace {
            Some(ns) => request.header("X-Vault-Namespace", ns),
            None => request,
        }
    }

    /// One exchange, no retry: the status, `Retry-After` and the body.
    fn once(
        &self,
        method: Method,
        path: &str,
        body: Option<&str>,
    ) -> Result<(u16, Option<Duration>, Value), Transport> {
        let url = format!("{}/v1/{path}", self.base);
        let url = match method {
            Method::List if url.contains('?') => format!("{url}&list=true"),
            Method::List => format!("{url}?list=true"),
            _ => url,
        };
        let body = body.unwrap_or("{}").as_bytes();
        let sent = match method {
            Method::Get | Method::List => self.headers(self.agent.get(&url)).call(),
            Method::Post => self
                .headers(self.agent.post(&url))
                .header("Content-Type", "application/json")
                .send(body),
            Method::Patch => self
                .headers(self.agent.patch(&url))
                .header("Content-Type", "application/merge-patch+json")
                .send(body),
        };
        let mut answer = sent.map_err(transport)?;
        let header = answer.headers().get("retry-after").and_then(|v| v.to_str().ok());
        let seconds: Option<f64> = header.and_then(|v| v.trim().parse().ok());
        let seconds = seconds.filter(|s| s.is_finite() && *s >= 0.0);
        let retry_after = seconds.map(|s| Duration::from_secs_f64(s).min(MAX_RETRY_AFTER));
        let bytes = answer.body_mut().with_config().limit(MAX_ANSWER_BYTES).read_to_vec();
        let bytes = bytes.map_err(transport)?;
        // serde_json's `Value::from_str` is built optimised; `from_slice` would be ours (3x the CPU).
        let body = std::str::from_utf8(&bytes).unwrap_or_default().parse().unwrap_or(Value::Null);
        Ok((answer.status().as_u16(), retry_after, body))
    }

    pub(crate) fn seal_status(&self) -> Result<SealStatus, VaultError> {
        self.status_read("sys/seal-status", true)
    }

    /// `GET sys/health`, parsed leniently: OpenBao's has no `performance_standby`.
    pub(crate) fn health(&self) -> Result<Health, VaultError> {
        let path = "sys/health?standbyok=true&perfstandbyok=true&sealedcode=200&uninitcode=200";
        self.status_read(path, false)
    }

    fn status_read<T: serde::de::DeserializeOwned>(
        &self,
        path: &str,
        only_200: bool,
    ) -> Result<T, VaultError> {
        let call = describe(Method::Get, path);
        let (code, _, body) = self.once(Method::Get, path, None).map_err(|e| match e {
            Transport::Timeout => {
                VaultError::Timeout { call: call.clone(), secs: self.timeout.as_secs_f64() }
            }
            Transport::Failed(detail) => self.unreachable(detail).0,
        })?;
        let parsed = if code == 200 || !only_200 {
            serde_json::from_value(body).map_err(|e| format!("unexpected answer: {e}"))
        } else {
            Err(errors_of(&body))
        };
        parsed.map_err(|errors| VaultError::Status { call, code, errors })
    }
}

#[derive(Debug, Clone, serde::Deserialize, serde::Serialize)]
pub(crate) struct SealStatus {
    pub sealed: bool,
    /// `inmem` for a dev server (`bao server -dev`), else `raft`, `file`, ...
    #[serde(default)]
    pub storage_type: Option<String>,
}

#[derive(Debug, Clone, serde::Deserialize, serde::Serialize)]
pub(crate) struct Health {
    pub initialized: bool,
    pub sealed: bool,
    #[serde(default)]
    pub standby: bool,
    #[serde(default)]
    pub version: Option<String>,
}

/// `s` as a JSON string, quotes and escapes included: for bodies built as text.
pub(crate) fn json_string(s: &str) -> String {
    Value::String(s.to_string()).to_string()
}

fn is_sealed(body: &Value) -> bool {
    errors_of(body).to_ascii_lowercase().contains("sealed")
}

fn describe(method: Method, path: &str) -> String {
    let verb = format!("{method:?}").to_ascii_uppercase();
    format!("{verb} {}", path.split('?').next().unwrap_or(path))
}

/// A request that got no HTTP answer.
#[derive(Debug)]
enum Transport {
    Timeout,
    Failed(String),
}

fn transport(e: ureq::Error) -> Transport {
    let detail = match e {
        ureq::Error::Timeout(_) => return Transport::Timeout,
        ureq::Error::Io(io) if io.kind() == std::io::ErrorKind::TimedOut => {
            return Transport::Timeout
        }
        ureq::Error::Io(io) => io.to_string(),
        ureq::Error::RedirectFailed => "redirected, which a write cannot follow: a Vault standby sends calls to its \
            active node. Point VAULT_ADDR at the active node (`bao status` names it), or re-run once the cluster has \
            a leader"
            .into(),
        other => other.to_string(),
    };
    Transport::Failed(if detail.contains("certificate") {
        format!(
            "{detail}; for a Vault with its own CA, such as `bao server -dev-tls`, export VAULT_CACERT=<its CA file>"
        )
    } else {
        detail
    })
}

/// Exponential backoff with equal jitter, in [cap/2, cap]: the sure half lets the
/// default 8 retries outwait a Raft leader election (12.8 s at least).
pub(crate) fn backoff(attempt: u32) -> Duration {
    let cap = BACKOFF_BASE.saturating_mul(1u32 << attempt.min(8));
    // 53 random bits: a fraction in [0, 1].
    let frac = (getrandom::u64().unwrap_or(0) >> 11) as f64 / ((1u64 << 53) - 1) as f64;
    cap / 2 + (cap / 2).mul_f64(frac)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn backoff_grows_and_stays_jittered() {
        for attempt in 0..6 {
            let cap = BACKOFF_BASE.as_secs_f64() * f64::from(1u32 << attempt);
            let d = backoff(attempt).as_secs_f64();
            assert!(cap / 2.0 <= d && d <= cap, "attempt {attempt}: {d} not in [{cap}/2, {cap}]");
        }
        assert!(backoff(30) <= BACKOFF_BASE * 256, "capped");
        // Jittered: pauses spread over the upper half of the step.
        let pauses: Vec<f64> = (0..200).map(|_| backoff(3).as_secs_f64()).collect();
        let cap = BACKOFF_BASE.as_secs_f64() * 8.0;
        assert!(pauses.iter().any(|&d| d < cap * 0.6), "{pauses:?}");
        assert!(pauses.iter().any(|&d| d > cap * 0.9), "{pauses:?}");
    }

    #[test]
    fn describes_calls_and_errors_with_the_fix() {
        assert_eq!(describe(Method::List, "secret/metadata/?list=true"), "LIST secret/metadata/");
        assert_eq!(describe(Method::Patch, "secret/metadata/a"), "PATCH secret/metadata/a");
        assert_eq!(errors_of(&json!({"errors": ["a", "b"]})), "a; b");
        let multi = json!({"errors": ["1 error occurred:\n\t* permission denied\n\n"]});
        assert_eq!(errors_of(&multi), "permission denied");
        assert!(is_sealed(&json!({"errors": ["Vault is sealed"]})));
        let e = VaultError::Sealed { addr: "http://127.0.0.1:8200".into() };
        assert!(e.to_string().contains("operator unseal") && e.is_fatal());
        let Transport::Failed(standby) = transport(ureq::Error::RedirectFailed) else { panic!() };
        assert!(standby.contains("Point VAULT_ADDR at the active node (`bao status` names it)"));
        let e = VaultError::Forbidden { call: "GET sys/mounts".into(), errors: "denied".into() };
        assert!(e.to_string().contains("VAULT_TOKEN") && e.is_fatal());
    }
}
