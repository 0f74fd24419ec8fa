//! The wire under xtask's Vault client: one HTTP exchange at a time on a
//! pooled ureq agent, with a TCP layer and a resolver of our own under it.
//! What the exchange means (retries, Vault's errors, JSON) is the caller's:
//! `xtask/src/secrets/provider/vault_http.rs`.
//!
//! A crate of its own so that the default (dev) build optimises it: every
//! generic function of ureq and http that a request goes through is built
//! here, not in the unoptimised `xtask` crate, where it cost a 1,000-secret
//! seed a third of its CPU. See the workspace `Cargo.toml`.

mod resolve;
mod tcp;

use std::time::Duration;

/// Largest answer read: a page of Vault's detailed listing is well under 1 MiB.
pub const MAX_ANSWER_BYTES: u64 = 64 << 20;

/// An HTTP method this client sends (Vault's LIST is a GET with `?list=true`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Verb {
    Get,
    Post,
    Patch,
}

/// One request. Its `Debug` shows no header value and no body: the token
/// and secret values travel here.
pub struct Request<'a> {
    pub verb: Verb,
    pub url: &'a str,
    /// Header names and values, sent as given (the token among them: never
    /// log a request).
    pub headers: &'a [(&'static str, &'a str)],
    /// The body and its content type.
    pub body: Option<(&'static str, &'a [u8])>,
}

/// An answer, whatever its status. Its `Debug` shows the body's length
/// only: a read's answer holds a secret value.
pub struct Answer {
    pub status: u16,
    /// The `Retry-After` header, as sent.
    pub retry_after: Option<String>,
    pub body: Vec<u8>,
}

impl std::fmt::Debug for Request<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Request")
            .field("verb", &self.verb)
            .field("url", &self.url)
            .field(
                "headers",
                &self
                    .headers
                    .iter()
                    .map(|(name, _)| *name)
                    .collect::<Vec<_>>(),
            )
            .field("body_bytes", &self.body.map(|(_, b)| b.len()))
            .finish()
    }
}

impl std::fmt::Debug for Answer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Answer")
            .field("status", &self.status)
            .field("retry_after", &self.retry_after)
            .field("body_bytes", &self.body.len())
            .finish()
    }
}

/// A request that got no answer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum WireError {
    /// The call's timeout passed (connecting, sending or reading).
    Timeout,
    /// A keep-alive connection that had answered before was closed without
    /// a byte of answer to this request, as a server does with a connection
    /// it deems idle: sending it again at once on a new connection is what a
    /// retry would do, without the wait.
    ClosedUnanswered(String),
    /// Anything else: refused, reset, TLS, a malformed answer.
    Failed(String),
}

impl std::fmt::Display for WireError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            WireError::Timeout => f.write_str("timed out"),
            WireError::ClosedUnanswered(d) | WireError::Failed(d) => f.write_str(d),
        }
    }
}

impl std::error::Error for WireError {}

impl From<ureq::Error> for WireError {
    fn from(e: ureq::Error) -> WireError {
        match e {
            ureq::Error::Timeout(_) => WireError::Timeout,
            ureq::Error::Io(io) if io.kind() == std::io::ErrorKind::TimedOut => WireError::Timeout,
            ureq::Error::Io(io) if tcp::ClosedUnanswered::is(&io) => {
                WireError::ClosedUnanswered(io.to_string())
            }
            ureq::Error::Io(io) => WireError::Failed(io.to_string()),
            other => WireError::Failed(other.to_string()),
        }
    }
}

/// A PEM file with no certificate in it.
#[derive(Debug)]
pub struct NoCertificate;

/// Keep-alive connections to one server, at most `pool` of them idle.
pub struct Wire {
    agent: ureq::Agent,
    writes: std::sync::Arc<std::sync::atomic::AtomicU64>,
}

impl Wire {
    /// `timeout` bounds each exchange from start to end (connecting takes at
    /// most 5 s of it). `ca_pem`: trust only the certificates in this PEM
    /// text for https, instead of the system's trust store.
    pub fn new(
        timeout: Duration,
        pool: usize,
        ca_pem: Option<&[u8]>,
    ) -> Result<Wire, NoCertificate> {
        let roots = match ca_pem {
            None => ureq::tls::RootCerts::PlatformVerifier,
            Some(pem) => {
                let certs: Vec<_> = ureq::tls::parse_pem(pem)
                    .filter_map(|item| match item {
                        Ok(ureq::tls::PemItem::Certificate(c)) => Some(c),
                        _ => None,
                    })
                    .collect();
                if certs.is_empty() {
                    return Err(NoCertificate);
                }
                ureq::tls::RootCerts::new_with_certs(&certs)
            }
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
        let tcp = tcp::LeanTcpConnector::default();
        let writes = tcp.writes.clone();
        let agent = ureq::Agent::with_parts(
            config,
            // No proxy, so no proxy connectors: our TCP, then TLS for https.
            ureq::unversioned::transport::Connector::chain(
                tcp,
                ureq::unversioned::transport::NativeTlsConnector::default(),
            ),
            resolve::OnceResolver::default(),
        );
        Ok(Wire { agent, writes })
    }

    /// Sends `req` and reads the whole answer (at most [`MAX_ANSWER_BYTES`]).
    pub fn exchange(&self, req: &Request<'_>) -> Result<Answer, WireError> {
        let sent = match (req.verb, req.body) {
            (Verb::Get, _) => {
                let mut b = self.agent.get(req.url);
                for (name, value) in req.headers {
                    b = b.header(*name, *value);
                }
                b.call()
            }
            (verb, body) => {
                let mut b = if verb == Verb::Post {
                    self.agent.post(req.url)
                } else {
                    self.agent.patch(req.url)
                };
                for (name, value) in req.headers {
                    b = b.header(*name, *value);
                }
                match body {
                    Some((content_type, bytes)) => {
                        b.header("Content-Type", content_type).send(bytes)
                    }
                    None => b.send_empty(),
                }
            }
        };
        let mut resp = sent?;
        let status = resp.status().as_u16();
        let retry_after = resp
            .headers()
            .get("retry-after")
            .and_then(|v| v.to_str().ok())
            .map(str::to_string);
        let body = resp
            .body_mut()
            .with_config()
            .limit(MAX_ANSWER_BYTES)
            .read_to_vec()?;
        Ok(Answer {
            status,
            retry_after,
            body,
        })
    }

    /// How many writes to plain-TCP sockets this wire made: one per request
    /// when its head and body leave together.
    pub fn tcp_writes(&self) -> u64 {
        self.writes.load(std::sync::atomic::Ordering::Relaxed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::{BufRead, BufReader, Read, Write};
    use std::net::{TcpListener, TcpStream};
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::Arc;
    use std::time::Instant;

    /// What the test server does with a request.
    #[derive(Clone, Copy, PartialEq, Debug)]
    enum Then {
        Answer,
        /// Answer, then close the connection (as an idle timeout would, later).
        AnswerAndClose,
        /// Close without a byte of answer.
        Close,
        /// Never answer (the connection closes after 5 s).
        Hang,
    }

    /// A loopback HTTP/1.1 server: `then(connection, request on it)` says
    /// what to do. Returns its address and the number of connections taken.
    fn serve(then: fn(usize, usize) -> Then) -> (String, Arc<AtomicUsize>) {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = format!("http://{}", listener.local_addr().unwrap());
        let conns = Arc::new(AtomicUsize::new(0));
        let counted = conns.clone();
        std::thread::spawn(move || {
            for (c, stream) in listener.incoming().enumerate() {
                counted.fetch_add(1, Ordering::SeqCst);
                let stream = stream.unwrap();
                std::thread::spawn(move || serve_one(stream, c, then));
            }
        });
        (addr, conns)
    }

    fn serve_one(stream: TcpStream, c: usize, then: fn(usize, usize) -> Then) {
        let mut reader = BufReader::new(stream.try_clone().unwrap());
        let mut out = stream;
        for r in 0.. {
            let mut length = 0;
            loop {
                let mut line = String::new();
                if reader.read_line(&mut line).unwrap_or(0) == 0 {
                    return;
                }
                if let Some(v) = line.to_ascii_lowercase().strip_prefix("content-length:") {
                    length = v.trim().parse().unwrap();
                }
                if line == "\r\n" {
                    break;
                }
            }
            let mut body = vec![0; length];
            reader.read_exact(&mut body).unwrap();
            match then(c, r) {
                Then::Answer | Then::AnswerAndClose => {
                    let answer = format!(
                        "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nRetry-After: 3\r\nContent-Length: {}\r\n\r\n",
                        body.len()
                    );
                    out.write_all(&[answer.as_bytes(), &body].concat()).unwrap();
                    if then(c, r) == Then::AnswerAndClose {
                        return;
                    }
                }
                Then::Close => return,
                Then::Hang => {
                    std::thread::sleep(Duration::from_secs(5));
                    return;
                }
            }
        }
    }

    fn post(wire: &Wire, addr: &str, body: &str) -> Result<Answer, WireError> {
        wire.exchange(&Request {
            verb: Verb::Post,
            url: &format!("{addr}/v1/secret/data/a"),
            headers: &[("X-Vault-Token", "t")],
            body: Some(("application/json", body.as_bytes())),
        })
    }

    #[test]
    fn a_request_leaves_in_one_write_on_one_kept_alive_connection() {
        let (addr, conns) = serve(|_, _| Then::Answer);
        let wire = Wire::new(Duration::from_secs(5), 4, None).unwrap();
        for i in 0..5 {
            let body = format!("{{\"data\":{{\"value\":\"v{i}\"}}}}");
            let answer = post(&wire, &addr, &body).unwrap();
            assert_eq!(answer.status, 200);
            assert_eq!(answer.body, body.as_bytes(), "the server echoes the body");
            assert_eq!(answer.retry_after.as_deref(), Some("3"));
        }
        // ureq writes a request's head and its body separately.
        assert_eq!(wire.tcp_writes(), 5, "head and body in one write");
        assert_eq!(
            conns.load(Ordering::SeqCst),
            1,
            "one connection, kept alive"
        );
    }

    #[test]
    fn a_connection_the_server_closed_while_idle_is_not_reused() {
        let (addr, conns) = serve(|_, _| Then::AnswerAndClose);
        let wire = Wire::new(Duration::from_secs(5), 4, None).unwrap();
        for _ in 0..3 {
            post(&wire, &addr, "{}").unwrap();
            std::thread::sleep(Duration::from_millis(30));
        }
        assert_eq!(
            conns.load(Ordering::SeqCst),
            3,
            "a new connection each time"
        );
    }

    #[test]
    fn a_kept_alive_connection_closed_under_a_request_says_so() {
        // The second request on the first connection finds it closed.
        let (addr, conns) = serve(|c, r| {
            if c == 0 && r == 1 {
                Then::Close
            } else {
                Then::Answer
            }
        });
        let wire = Wire::new(Duration::from_secs(5), 4, None).unwrap();
        post(&wire, &addr, "{}").unwrap();
        match post(&wire, &addr, "{}") {
            Err(WireError::ClosedUnanswered(_)) => {}
            other => panic!("expected ClosedUnanswered, got {other:?}"),
        }
        post(&wire, &addr, "{}").unwrap();
        assert_eq!(conns.load(Ordering::SeqCst), 2);
        // A first request on a new connection that is closed is a failure,
        // not a stale connection: the server may be refusing it.
        let (addr, _) = serve(|_, _| Then::Close);
        match post(&wire, &addr, "{}") {
            Err(WireError::Failed(_)) => {}
            other => panic!("expected Failed, got {other:?}"),
        }
    }

    #[test]
    fn a_server_that_never_answers_times_out_on_time() {
        let (addr, _) = serve(|_, _| Then::Hang);
        let timeout = Duration::from_millis(400);
        let wire = Wire::new(timeout, 4, None).unwrap();
        let started = Instant::now();
        assert_eq!(post(&wire, &addr, "{}").unwrap_err(), WireError::Timeout);
        let took = started.elapsed();
        // A second of slack for a busy machine; an ignored timeout waits
        // out the server's 5 s hang instead.
        assert!(
            took >= timeout && took < timeout + Duration::from_secs(1),
            "took {took:?}"
        );
    }

    #[test]
    fn debug_shows_neither_the_token_nor_a_value() {
        let req = Request {
            verb: Verb::Post,
            url: "http://127.0.0.1:8200/v1/secret/data/db-password",
            headers: &[("X-Vault-Token", "s.the-token")],
            body: Some(("application/json", b"{\"data\":{\"value\":\"hunter2\"}}")),
        };
        let answer = Answer {
            status: 200,
            retry_after: None,
            body: b"{\"data\":{\"data\":{\"value\":\"hunter2\"}}}".to_vec(),
        };
        let shown = format!("{req:?} {answer:?}");
        assert!(
            !shown.contains("the-token") && !shown.contains("hunter2"),
            "{shown}"
        );
        assert!(
            shown.contains("X-Vault-Token") && shown.contains("db-password"),
            "{shown}"
        );
    }

    #[test]
    fn nothing_listening_and_no_certificate_are_errors() {
        let port = TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let wire = Wire::new(Duration::from_secs(2), 4, None).unwrap();
        match post(&wire, &format!("http://127.0.0.1:{port}"), "{}") {
            Err(WireError::Failed(detail)) => assert!(detail.contains("refused"), "{detail}"),
            other => panic!("expected Failed, got {other:?}"),
        }
        assert!(Wire::new(Duration::from_secs(2), 4, Some(b"not a certificate")).is_err());
    }
}
