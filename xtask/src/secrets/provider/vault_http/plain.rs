//! HTTP/1.1 over plain TCP for an `http://` Vault (loopback, a
//! port-forward): keep-alive connections in a small pool, each request one
//! write of headers and body, each answer read through one buffer. On two
//! cores every microsecond the client spends is taken from the server:
//! ureq sent headers and body in two writes, probed every pooled connection
//! with three more system calls and set socket timeouts three times per
//! request. HTTPS still goes through ureq.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream, ToSocketAddrs};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use super::Transport;

/// The pool of connections to one `http://host:port[/prefix]`.
pub(super) struct Plain {
    /// `host:port` as the Host header names it.
    authority: String,
    /// Where to connect: `authority`, with port 80 when it names none.
    target: String,
    /// Any path below the address (`http://host/vault` → `/vault`).
    prefix: String,
    addrs: OnceLock<Vec<SocketAddr>>,
    idle: Mutex<Vec<Conn>>,
    /// Pools for the addresses a standby redirected us to.
    others: Mutex<Vec<(String, Arc<Plain>)>>,
    max_idle: usize,
    timeout: Duration,
    connect_timeout: Duration,
}

struct Conn {
    reader: BufReader<TcpStream>,
}

/// A whole answer.
pub(super) struct Answer {
    pub status: u16,
    pub retry_after: Option<String>,
    location: Option<String>,
    pub body: Vec<u8>,
}

/// One request: method, path below `/v1/` (query included), the extra
/// headers, and the body with its content type.
pub(super) struct Request<'a> {
    pub method: &'a str,
    pub path: &'a str,
    pub headers: &'a [(&'a str, &'a str)],
    pub body: Option<(&'a str, &'a [u8])>,
}

/// What went wrong on one connection, and whether the request may have
/// reached the server (a reused connection the server had closed fails
/// before that, and is retried once on a new one).
struct Failure {
    transport: Transport,
    before_answer: bool,
}

impl Plain {
    /// `rest` is the address after `http://`.
    pub(super) fn new(
        rest: &str,
        timeout: Duration,
        connect_timeout: Duration,
        pool: usize,
    ) -> Plain {
        let (authority, prefix) = match rest.find('/') {
            Some(i) => (&rest[..i], rest[i..].trim_end_matches('/')),
            None => (rest, ""),
        };
        let has_port = match authority.rfind(']') {
            Some(end) => authority[end..].contains(':'),
            None => authority.contains(':'),
        };
        Plain {
            authority: authority.to_string(),
            target: if has_port {
                authority.to_string()
            } else {
                format!("{authority}:80")
            },
            prefix: prefix.to_string(),
            addrs: OnceLock::new(),
            idle: Mutex::new(Vec::new()),
            others: Mutex::new(Vec::new()),
            max_idle: pool.max(1),
            timeout,
            connect_timeout,
        }
    }

    /// Sends `req`, following a standby's redirects (307 and 308 keep the
    /// method and body; Vault sends them to the active node).
    pub(super) fn send(&self, req: &Request<'_>, limit: u64) -> Result<Answer, Transport> {
        let mut target = format!("{}/v1/{}", self.prefix, req.path);
        let mut answer = self.send_to(&target, req, limit)?;
        for _ in 0..5 {
            if !matches!(answer.status, 307 | 308) {
                break;
            }
            let Some(location) = answer.location.take() else {
                break;
            };
            let Some(rest) = location
                .get(..7)
                .filter(|s| s.eq_ignore_ascii_case("http://"))
                .map(|_| &location[7..])
            else {
                // Relative, or to HTTPS: left to the caller as an error.
                break;
            };
            let (authority, path) = match rest.find('/') {
                Some(i) => (&rest[..i], &rest[i..]),
                None => (rest, "/"),
            };
            target = path.to_string();
            let other = self.other(authority);
            answer = other.send_to(&target, req, limit)?;
        }
        Ok(answer)
    }

    /// The pool for another `authority` (a redirect's), made once.
    fn other(&self, authority: &str) -> Arc<Plain> {
        let mut others = self.others.lock().unwrap_or_else(|e| e.into_inner());
        if let Some((_, p)) = others.iter().find(|(a, _)| a == authority) {
            return p.clone();
        }
        let p = Arc::new(Plain::new(
            authority,
            self.timeout,
            self.connect_timeout,
            self.max_idle,
        ));
        others.push((authority.to_string(), p.clone()));
        p
    }

    fn send_to(&self, target: &str, req: &Request<'_>, limit: u64) -> Result<Answer, Transport> {
        let deadline = Instant::now() + self.timeout;
        let bytes = self.encode(target, req);
        let pooled = self.idle.lock().unwrap_or_else(|e| e.into_inner()).pop();
        let reused = pooled.is_some();
        let mut conn = match pooled {
            Some(c) => c,
            None => self.connect()?,
        };
        let answer = match exchange(&mut conn, &bytes, deadline, limit) {
            Err(f) if reused && f.before_answer => {
                // The server closed it while it sat idle: once more, fresh.
                conn = self.connect()?;
                exchange(&mut conn, &bytes, deadline, limit)
            }
            other => other,
        };
        match answer {
            Ok((answer, keep)) => {
                if keep {
                    let mut idle = self.idle.lock().unwrap_or_else(|e| e.into_inner());
                    if idle.len() < self.max_idle {
                        idle.push(conn);
                    }
                }
                Ok(answer)
            }
            Err(f) => Err(f.transport),
        }
    }

    /// The request's bytes; `target` is the path and query to ask for.
    fn encode(&self, target: &str, req: &Request<'_>) -> Vec<u8> {
        let body_len = req.body.map_or(0, |(_, b)| b.len());
        let mut out = Vec::with_capacity(256 + body_len);
        let _ = write!(
            out,
            "{} {target} HTTP/1.1\r\nHost: {}\r\n",
            req.method, self.authority
        );
        for (name, value) in req.headers {
            let _ = write!(out, "{name}: {value}\r\n");
        }
        if let Some((content_type, body)) = req.body {
            let _ = write!(
                out,
                "Content-Type: {content_type}\r\nContent-Length: {}\r\n",
                body.len()
            );
        }
        out.extend_from_slice(b"\r\n");
        if let Some((_, body)) = req.body {
            out.extend_from_slice(body);
        }
        out
    }

    fn connect(&self) -> Result<Conn, Transport> {
        let addrs = match self.addrs.get() {
            Some(a) => a,
            None => {
                let found: Vec<SocketAddr> = self
                    .target
                    .to_socket_addrs()
                    .map_err(|e| {
                        Transport::Failed(format!("cannot resolve {}: {e}", self.authority))
                    })?
                    .collect();
                if found.is_empty() {
                    return Err(Transport::Failed(format!(
                        "{} resolves to no address",
                        self.authority
                    )));
                }
                self.addrs.get_or_init(|| found)
            }
        };
        let mut last = None;
        for addr in addrs {
            match TcpStream::connect_timeout(addr, self.connect_timeout) {
                Ok(stream) => {
                    let _ = stream.set_nodelay(true);
                    stream
                        .set_write_timeout(Some(self.timeout))
                        .map_err(io_error)?;
                    return Ok(Conn {
                        reader: BufReader::with_capacity(16 << 10, stream),
                    });
                }
                Err(e) => last = Some(e),
            }
        }
        Err(io_error(last.unwrap_or_else(|| {
            std::io::Error::new(std::io::ErrorKind::NotFound, "no address")
        })))
    }
}

fn io_error(e: std::io::Error) -> Transport {
    match e.kind() {
        std::io::ErrorKind::TimedOut | std::io::ErrorKind::WouldBlock => Transport::Timeout,
        _ => Transport::Failed(e.to_string()),
    }
}

/// Sends `bytes` and reads the answer; `true` when the connection may be
/// reused.
fn exchange(
    conn: &mut Conn,
    bytes: &[u8],
    deadline: Instant,
    limit: u64,
) -> Result<(Answer, bool), Failure> {
    let early = |e: std::io::Error| Failure {
        transport: io_error(e),
        before_answer: true,
    };
    let late = |e: std::io::Error| Failure {
        transport: io_error(e),
        before_answer: false,
    };
    conn.reader.get_mut().write_all(bytes).map_err(early)?;
    let left = deadline
        .checked_duration_since(Instant::now())
        .unwrap_or(Duration::from_millis(1))
        .max(Duration::from_millis(1));
    conn.reader
        .get_ref()
        .set_read_timeout(Some(left))
        .map_err(late)?;
    let mut line = String::new();
    match conn.reader.read_line(&mut line) {
        Ok(0) => {
            return Err(early(std::io::Error::new(
                std::io::ErrorKind::ConnectionAborted,
                "the connection closed before an answer",
            )))
        }
        Ok(_) => {}
        // Timed out waiting: the request did reach the server.
        Err(e)
            if matches!(
                e.kind(),
                std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
            ) =>
        {
            return Err(late(e))
        }
        Err(e) => return Err(early(e)),
    }
    let bad = |what: String| late(std::io::Error::new(std::io::ErrorKind::InvalidData, what));
    let status: u16 = line
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| bad(format!("not an HTTP answer: {:?}", line.trim_end())))?;
    let mut length: Option<u64> = None;
    let mut chunked = false;
    let mut close = line.starts_with("HTTP/1.0");
    let mut retry_after = None;
    let mut location = None;
    loop {
        line.clear();
        if conn.reader.read_line(&mut line).map_err(late)? == 0 {
            return Err(bad("the connection closed inside the headers".into()));
        }
        let header = line.trim_end();
        if header.is_empty() {
            break;
        }
        let Some((name, value)) = header.split_once(':') else {
            continue;
        };
        let value = value.trim();
        if name.eq_ignore_ascii_case("content-length") {
            length = Some(
                value
                    .parse()
                    .map_err(|_| bad(format!("bad Content-Length {value:?}")))?,
            );
        } else if name.eq_ignore_ascii_case("transfer-encoding") {
            chunked = value.to_ascii_lowercase().contains("chunked");
        } else if name.eq_ignore_ascii_case("connection") {
            close = value.eq_ignore_ascii_case("close");
        } else if name.eq_ignore_ascii_case("retry-after") {
            retry_after = Some(value.to_string());
        } else if name.eq_ignore_ascii_case("location") {
            location = Some(value.to_string());
        }
    }
    let too_big = || bad(format!("an answer larger than {limit} bytes"));
    let mut body = Vec::new();
    if status == 204 || status == 304 || (100..200).contains(&status) {
        // No body.
    } else if chunked {
        loop {
            line.clear();
            conn.reader.read_line(&mut line).map_err(late)?;
            let size = u64::from_str_radix(line.trim().split(';').next().unwrap_or(""), 16)
                .map_err(|_| bad(format!("bad chunk size {:?}", line.trim())))?;
            if body.len() as u64 + size > limit {
                return Err(too_big());
            }
            let start = body.len();
            body.resize(start + size as usize, 0);
            conn.reader.read_exact(&mut body[start..]).map_err(late)?;
            line.clear();
            conn.reader.read_line(&mut line).map_err(late)?;
            if size == 0 {
                // Trailers, if any, end with an empty line; we read it above.
                break;
            }
        }
    } else if let Some(n) = length {
        if n > limit {
            return Err(too_big());
        }
        body.resize(n as usize, 0);
        conn.reader.read_exact(&mut body).map_err(late)?;
    } else {
        // Delimited by the end of the connection.
        (&mut conn.reader)
            .take(limit + 1)
            .read_to_end(&mut body)
            .map_err(late)?;
        if body.len() as u64 > limit {
            return Err(too_big());
        }
        close = true;
    }
    Ok((
        Answer {
            status,
            retry_after,
            location,
            body,
        },
        !close,
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn splits_the_address_into_host_header_target_and_prefix() {
        let t = Duration::from_secs(1);
        let p = Plain::new("127.0.0.1:8200", t, t, 4);
        assert_eq!(
            (p.authority.as_str(), p.target.as_str(), p.prefix.as_str()),
            ("127.0.0.1:8200", "127.0.0.1:8200", "")
        );
        let p = Plain::new("vault.local/base/", t, t, 4);
        assert_eq!(
            (p.authority.as_str(), p.target.as_str(), p.prefix.as_str()),
            ("vault.local", "vault.local:80", "/base")
        );
        let p = Plain::new("[::1]:8200", t, t, 4);
        assert_eq!(p.target, "[::1]:8200");
        let p = Plain::new("[::1]", t, t, 4);
        assert_eq!(p.target, "[::1]:80");
        let req = Request {
            method: "PATCH",
            path: "m/metadata/x",
            headers: &[("X-Vault-Token", "tok")],
            body: Some(("application/merge-patch+json", b"{}")),
        };
        let p = Plain::new("vault.local/base", t, t, 4);
        assert_eq!(
            String::from_utf8(p.encode("/base/v1/m/metadata/x", &req)).unwrap(),
            "PATCH /base/v1/m/metadata/x HTTP/1.1\r\nHost: vault.local\r\nX-Vault-Token: tok\r\n\
             Content-Type: application/merge-patch+json\r\nContent-Length: 2\r\n\r\n{}"
        );
    }
}
