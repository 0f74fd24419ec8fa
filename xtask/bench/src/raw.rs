//! The benchmark's independent client: hand-written HTTP/1.1 on plain
//! `TcpStream`s, one keep-alive connection per thread. It shares no code
//! with the seed's Vault client (no ureq, no serde on the hot path), so the
//! ceiling it measures is the server's, not our client's.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};

/// One keep-alive connection to `host:port`, sending Vault API requests.
pub(crate) struct Conn {
    reader: BufReader<TcpStream>,
    writer: TcpStream,
    host: String,
    token: String,
    request: Vec<u8>,
}

/// What the server answered: status and body.
pub(crate) struct Answer {
    pub status: u16,
    pub body: Vec<u8>,
}

impl Conn {
    /// `addr` is `http://host:port` (plain HTTP only: the bench's own server).
    pub(crate) fn open(addr: &str, token: &str) -> Result<Conn> {
        let host = addr
            .strip_prefix("http://")
            .with_context(|| format!("the bench client speaks plain HTTP only, not {addr}"))?
            .trim_end_matches('/')
            .to_string();
        let stream = TcpStream::connect(&host).with_context(|| format!("connecting to {host}"))?;
        stream.set_nodelay(true)?;
        stream.set_read_timeout(Some(Duration::from_secs(30)))?;
        Ok(Conn {
            reader: BufReader::with_capacity(16 << 10, stream.try_clone()?),
            writer: stream,
            host,
            token: token.to_string(),
            request: Vec::with_capacity(1024),
        })
    }

    /// `method /v1/path` with `body` (JSON, or a JSON merge patch for PATCH).
    pub(crate) fn send(&mut self, method: &str, path: &str, body: &[u8]) -> Result<Answer> {
        let content_type =
            if method == "PATCH" { "application/merge-patch+json" } else { "application/json" };
        self.request.clear();
        write!(
            self.request,
            "{method} /v1/{path} HTTP/1.1\r\nHost: {}\r\nX-Vault-Token: {}\r\nX-Vault-Request: true\r\n\
             Content-Type: {content_type}\r\nContent-Length: {}\r\n\r\n",
            self.host,
            self.token,
            body.len()
        )?;
        self.request.extend_from_slice(body);
        self.writer.write_all(&self.request).with_context(|| format!("sending {method} {path}"))?;
        self.read_answer().with_context(|| format!("reading the answer to {method} {path}"))
    }

    /// Reads one response: status line, headers, then a body framed by
    /// Content-Length or chunked encoding.
    fn read_answer(&mut self) -> Result<Answer> {
        let mut line = String::new();
        self.reader.read_line(&mut line)?;
        let status: u16 = line
            .split(' ')
            .nth(1)
            .and_then(|s| s.parse().ok())
            .with_context(|| format!("not an HTTP status line: {line:?}"))?;
        let mut length = None;
        let mut chunked = false;
        loop {
            line.clear();
            if self.reader.read_line(&mut line)? == 0 {
                bail!("the connection closed inside the headers");
            }
            let header = line.trim_end();
            if header.is_empty() {
                break;
            }
            let (name, value) = header.split_once(':').unwrap_or((header, ""));
            if name.eq_ignore_ascii_case("content-length") {
                length = Some(value.trim().parse::<usize>()?);
            } else if name.eq_ignore_ascii_case("transfer-encoding") {
                chunked = value.trim().eq_ignore_ascii_case("chunked");
            }
        }
        let mut body = Vec::new();
        if chunked {
            loop {
                line.clear();
                self.reader.read_line(&mut line)?;
                let size = usize::from_str_radix(line.trim().split(';').next().unwrap_or(""), 16)
                    .with_context(|| format!("bad chunk size {line:?}"))?;
                let start = body.len();
                body.resize(start + size, 0);
                self.reader.read_exact(&mut body[start..])?;
                line.clear();
                self.reader.read_line(&mut line)?; // the CRLF after the chunk
                if size == 0 {
                    break;
                }
            }
        } else if let Some(n) = length {
            body.resize(n, 0);
            self.reader.read_exact(&mut body)?;
        } else if !(status == 204 || status == 304 || (100..200).contains(&status)) {
            bail!("an answer with neither Content-Length nor chunked encoding");
        }
        Ok(Answer { status, body })
    }
}

/// The seed's `managed-by` mark, spelled out here so the bench imports
/// nothing from the seed: the record has the same bytes on the wire.
const MANAGED_BY: &str = "cargo-xtask-secrets";

/// Which requests the ceiling sends per secret.
#[derive(Clone, Copy, PartialEq, Eq)]
pub(crate) enum Mix {
    /// The KV v2 data write with `cas: 0`, as the seed sends for a new entry.
    Bare,
    /// That write, then the `custom_metadata` merge PATCH the seed sends.
    Recorded,
}

/// What a ceiling run took: wall time, requests, and its own CPU (user +
/// system of the worker threads, connection setup included).
pub(crate) struct Ceiling {
    pub wall: Duration,
    pub requests: u64,
    pub cpu: Duration,
}

/// Writes secrets `0..n` into `mount` with `threads` connections, each
/// taking the next secret as it finishes one. `value(i)` is secret i's
/// value; the metadata record names a fixed 32-hex digest (the seed's is
/// a keyed HMAC of the value, cut to 128 bits) and clears an older
/// release's `fixture-sha256`, as the seed's does: the same bytes on the
/// wire.
pub(crate) fn ceiling(
    addr: &str,
    token: &str,
    mount: &str,
    n: usize,
    threads: usize,
    mix: Mix,
    value: &(dyn Fn(usize) -> String + Sync),
) -> Result<Ceiling> {
    let next = AtomicUsize::new(0);
    let checksum = "0".repeat(32);
    let started = Instant::now();
    let results: Vec<Result<(u64, Duration)>> = std::thread::scope(|s| {
        let workers: Vec<_> = (0..threads.max(1).min(n.max(1)))
            .map(|_| {
                s.spawn(|| -> Result<(u64, Duration)> {
                    let cpu0 = thread_cpu();
                    let mut conn = Conn::open(addr, token)?;
                    let mut requests = 0u64;
                    let mut body = Vec::with_capacity(256);
                    loop {
                        let i = next.fetch_add(1, Ordering::Relaxed);
                        if i >= n {
                            break;
                        }
                        let name = format!("bench-secret-{i:06}");
                        body.clear();
                        // The bench's values are plain ASCII: no JSON escaping needed.
                        write!(
                            body,
                            r#"{{"options":{{"cas":0}},"data":{{"value":"{}"}}}}"#,
                            value(i)
                        )?;
                        let a = conn.send("POST", &format!("{mount}/data/{name}"), &body)?;
                        requests += 1;
                        if a.status != 200 {
                            bail!(
                                "ceiling write {name}: HTTP {}: {}",
                                a.status,
                                String::from_utf8_lossy(&a.body)
                            );
                        }
                        if mix == Mix::Recorded {
                            body.clear();
                            write!(
                                body,
                                r#"{{"custom_metadata":{{"fixture-hmac":"{checksum}","fixture-sha256":null,"fixture-version":"1","managed-by":"{}"}}}}"#,
                                MANAGED_BY
                            )?;
                            let a =
                                conn.send("PATCH", &format!("{mount}/metadata/{name}"), &body)?;
                            requests += 1;
                            if !(200..300).contains(&a.status) {
                                bail!(
                                    "ceiling record {name}: HTTP {}: {}",
                                    a.status,
                                    String::from_utf8_lossy(&a.body)
                                );
                            }
                        }
                    }
                    Ok((requests, thread_cpu().saturating_sub(cpu0)))
                })
            })
            .collect();
        workers
            .into_iter()
            .map(|w| w.join().unwrap_or_else(|_| bail!("a ceiling thread panicked")))
            .collect()
    });
    let wall = started.elapsed();
    let (mut requests, mut cpu) = (0, Duration::ZERO);
    for r in results {
        let (q, c) = r?;
        requests += q;
        cpu += c;
    }
    Ok(Ceiling { wall, requests, cpu })
}

/// This thread's CPU time so far (user + system).
fn thread_cpu() -> Duration {
    crate::rusage(libc::RUSAGE_THREAD)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::TcpListener;

    /// Serves `answers` in order on one keep-alive connection, recording
    /// the requests it read (each framed by its Content-Length).
    fn serve(answers: Vec<&'static str>) -> (String, std::thread::JoinHandle<String>) {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = format!("http://{}", listener.local_addr().unwrap());
        let handle = std::thread::spawn(move || {
            let (s, _) = listener.accept().unwrap();
            let mut w = s.try_clone().unwrap();
            let mut r = BufReader::new(s);
            let mut got = String::new();
            for answer in answers {
                let mut length = 0;
                loop {
                    let mut line = String::new();
                    r.read_line(&mut line).unwrap();
                    if let Some(v) = line.strip_prefix("Content-Length: ") {
                        length = v.trim().parse().unwrap();
                    }
                    got.push_str(&line);
                    if line == "\r\n" {
                        break;
                    }
                }
                let mut body = vec![0; length];
                r.read_exact(&mut body).unwrap();
                got.push_str(&String::from_utf8(body).unwrap());
                w.write_all(answer.as_bytes()).unwrap();
            }
            got
        });
        (addr, handle)
    }

    #[test]
    fn reads_content_length_chunked_and_empty_answers_on_one_connection() {
        let (addr, server) = serve(vec![
            "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: 11\r\n\r\n{\"data\":{}}",
            "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n4\r\n{\"a\"\r\n3\r\n:1}\r\n0\r\n\r\n",
            "HTTP/1.1 204 No Content\r\n\r\n",
        ]);
        let mut c = Conn::open(&addr, "tok").unwrap();
        let a = c.send("POST", "m/data/x", b"{}").unwrap();
        assert_eq!((a.status, a.body.as_slice()), (200, &b"{\"data\":{}}"[..]));
        let a = c.send("POST", "m/data/y", b"{}").unwrap();
        assert_eq!((a.status, a.body.as_slice()), (200, &b"{\"a\":1}"[..]));
        let a = c.send("PATCH", "m/metadata/y", b"{}").unwrap();
        assert_eq!((a.status, a.body.len()), (204, 0));
        let got = server.join().unwrap();
        assert!(got.starts_with("POST /v1/m/data/x HTTP/1.1\r\n"), "{got}");
        assert!(got.contains("X-Vault-Token: tok\r\n"), "{got}");
        assert!(
            got.contains("PATCH /v1/m/metadata/y HTTP/1.1\r\n")
                && got.contains("Content-Type: application/merge-patch+json\r\n"),
            "{got}"
        );
    }
}
