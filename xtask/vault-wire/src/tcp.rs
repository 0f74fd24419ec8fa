//! ureq's TCP transport, leaner per request: the socket timeouts are set at
//! the first read or write and only changed when a call's deadline needs
//! it, a request's
//! head and body leave in one write, and a pooled connection's liveness is
//! one non-blocking peek. The HTTP framing stays ureq's.
//!
//! A keep-alive connection the server closes as a request arrives (its
//! idle timeout) fails that request with [`ClosedUnanswered`], so the
//! caller can send it again at once on a new connection. Over https this
//! rarely applies: a server sends TLS's close_notify as it closes, which is
//! an answer of sorts, and the call fails as ureq reports it (the caller's
//! retry with backoff covers it).
//!
//! ureq's own `TcpConnector` sets SO_SNDTIMEO and SO_RCVTIMEO to the call's
//! remaining time before every write and read (it shrinks, so each is a
//! syscall), sends the head and the body with a write each, and probes a
//! pooled connection with two `ioctl(FIONBIO)` around a read.

use std::io::{self, Read, Write};
use std::net::TcpStream;
use std::os::fd::AsRawFd;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use ureq::unversioned::transport::{
    Buffers, ConnectionDetails, Connector, Either, LazyBuffers, NextTimeout, ShutdownHandle,
    Transport,
};

/// How far past its deadline a blocked read or write may run before the
/// socket timeout is lowered to the time left: a call times out at most this
/// late, and a socket timeout within it of the time left is kept as it is.
const SLACK: Duration = Duration::from_millis(50);
/// Output held back for one write with what follows; more is sent at once.
const MAX_PENDING: usize = 64 << 10;

/// The server closed a connection that had answered before without a byte
/// of answer to the request just sent, as a server does with a keep-alive
/// connection it deems idle: sending the request again on a new connection
/// is what a retry would do, without the wait.
#[derive(Debug)]
pub struct ClosedUnanswered;

impl std::fmt::Display for ClosedUnanswered {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("the server closed a keep-alive connection without answering")
    }
}

impl std::error::Error for ClosedUnanswered {}

impl ClosedUnanswered {
    /// Whether `e` is this.
    pub fn is(e: &io::Error) -> bool {
        e.get_ref().is_some_and(|e| e.is::<ClosedUnanswered>())
    }

    fn error() -> ureq::Error {
        io::Error::new(io::ErrorKind::ConnectionAborted, ClosedUnanswered).into()
    }
}

/// Opens plain TCP connections (TLS wraps them after, in the chain).
#[derive(Debug, Default)]
pub struct LeanTcpConnector {
    /// Writes made by all its connections (see [`crate::Wire::tcp_writes`]).
    pub writes: Arc<AtomicU64>,
}

impl<In: Transport> Connector<In> for LeanTcpConnector {
    type Out = Either<In, LeanTcp>;

    fn connect(
        &self,
        details: &ConnectionDetails,
        chained: Option<In>,
    ) -> Result<Option<Self::Out>, ureq::Error> {
        if let Some(transport) = chained {
            return Ok(Some(Either::A(transport)));
        }
        let limit = details.timeout.not_zero().map(|t| *t);
        let mut last = None;
        for addr in &details.addrs {
            let connected = match limit {
                Some(t) => TcpStream::connect_timeout(addr, t),
                None => TcpStream::connect(addr),
            };
            match connected {
                Ok(stream) => {
                    if details.config.no_delay() {
                        stream.set_nodelay(true)?;
                    }
                    let stream = Arc::new(stream);
                    (details.register_shutdown)(
                        Arc::downgrade(&stream) as std::sync::Weak<dyn ShutdownHandle>
                    )?;
                    return Ok(Some(Either::B(LeanTcp {
                        stream,
                        buffers: LazyBuffers::new(
                            details.config.input_buffer_size(),
                            details.config.output_buffer_size(),
                        ),
                        pending: Vec::new(),
                        read_timeout: None,
                        write_timeout: None,
                        reused: false,
                        waiting: false,
                        writes: self.writes.clone(),
                    })));
                }
                Err(e) if is_timeout(&e) => {
                    return Err(ureq::Error::Timeout(details.timeout.reason))
                }
                Err(e) => last = Some(e),
            }
        }
        Err(last
            .unwrap_or_else(|| {
                io::Error::new(io::ErrorKind::ConnectionRefused, "no address to connect to")
            })
            .into())
    }
}

/// A TCP connection: see the module documentation.
pub struct LeanTcp {
    stream: Arc<TcpStream>,
    buffers: LazyBuffers,
    /// Output not yet sent: it goes out with the next, or before a read.
    pending: Vec<u8>,
    /// The socket's SO_RCVTIMEO and SO_SNDTIMEO as last set.
    read_timeout: Option<Duration>,
    write_timeout: Option<Duration>,
    /// ureq found it open after an exchange (it asks only then, as the
    /// connection goes back to its pool and as it comes out): it was kept
    /// alive. A fresh connection closed under its first request, perhaps
    /// in the TLS handshake, is a plain failure.
    reused: bool,
    /// A request went out and no byte of its answer came yet.
    waiting: bool,
    writes: Arc<AtomicU64>,
}

impl std::fmt::Debug for LeanTcp {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LeanTcp")
            .field("peer", &self.stream.peer_addr().ok())
            .finish()
    }
}

/// The socket timeout to set for an operation with `left` until its
/// deadline, or `None` when the current one will do: not past the deadline
/// by more than [`SLACK`], and not so short that a slow answer wakes the
/// thread often (an early wake-up is retried with the time left).
fn refit(current: Option<Duration>, left: Duration) -> Option<Duration> {
    match current {
        Some(c) if c <= left + SLACK && c >= left / 2 => None,
        _ => Some(left),
    }
}

fn is_timeout(e: &io::Error) -> bool {
    matches!(
        e.kind(),
        io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
    )
}

/// `TcpStream::set_read_timeout` or `set_write_timeout`.
type SetTimeout = fn(&TcpStream, Option<Duration>) -> io::Result<()>;

/// The peer closed or reset the connection.
fn is_closed(e: &io::Error) -> bool {
    matches!(
        e.kind(),
        io::ErrorKind::ConnectionReset
            | io::ErrorKind::BrokenPipe
            | io::ErrorKind::ConnectionAborted
    )
}

enum Dir {
    Read,
    Write,
}

impl LeanTcp {
    /// Makes the socket timeout for `dir` fit `left` (`None`: no deadline).
    fn fit(&mut self, dir: Dir, left: Option<Duration>) -> io::Result<()> {
        let (current, set): (_, SetTimeout) = match dir {
            Dir::Read => (&mut self.read_timeout, TcpStream::set_read_timeout),
            Dir::Write => (&mut self.write_timeout, TcpStream::set_write_timeout),
        };
        let new = match left {
            Some(left) => refit(*current, left),
            None if current.is_some() => Some(Duration::ZERO),
            None => return Ok(()),
        };
        match new {
            None => {}
            // No deadline: block as long as it takes.
            Some(t) if t.is_zero() => {
                set(&self.stream, None)?;
                *current = None;
            }
            Some(t) => {
                set(&self.stream, Some(t))?;
                *current = Some(t);
            }
        }
        Ok(())
    }

    /// Sends the pending output within `timeout`.
    fn flush_pending(&mut self, timeout: NextTimeout) -> Result<(), ureq::Error> {
        let timeout = timeout.for_write();
        if timeout.after.is_zero() {
            self.pending.clear();
            return Err(ureq::Error::Timeout(timeout.reason));
        }
        let limit = timeout.not_zero().map(|t| *t);
        let started = Instant::now();
        let mut sent = 0;
        self.waiting = true;
        let result = loop {
            if sent == self.pending.len() {
                break Ok(());
            }
            let left = limit.map(|l| l.saturating_sub(started.elapsed()));
            if left.is_some_and(|l| l.is_zero()) {
                break Err(ureq::Error::Timeout(timeout.reason));
            }
            self.fit(Dir::Write, left)?;
            match (&*self.stream).write(&self.pending[sent..]) {
                Ok(0) => break Err(io::Error::from(io::ErrorKind::WriteZero).into()),
                Ok(n) => {
                    sent += n;
                    self.writes.fetch_add(1, Ordering::Relaxed);
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                // Woken before the deadline (the socket timeout may be
                // shorter than the time left): go on with the time left.
                Err(e) if is_timeout(&e) && limit.is_some() => {}
                Err(e) if self.reused && is_closed(&e) => break Err(ClosedUnanswered::error()),
                Err(e) => break Err(e.into()),
            }
        };
        self.pending.clear();
        result
    }
}

impl Transport for LeanTcp {
    fn buffers(&mut self) -> &mut dyn Buffers {
        &mut self.buffers
    }

    fn transmit_output(&mut self, amount: usize, timeout: NextTimeout) -> Result<(), ureq::Error> {
        if timeout.for_write().after.is_zero() {
            return Err(ureq::Error::Timeout(timeout.for_write().reason));
        }
        // Held until the next read (a request's body follows its head) or
        // until there is enough to send.
        let output = &self.buffers.output()[..amount];
        self.pending.extend_from_slice(output);
        if self.pending.len() >= MAX_PENDING {
            self.flush_pending(timeout)?;
        }
        Ok(())
    }

    fn await_input(&mut self, timeout: NextTimeout) -> Result<bool, ureq::Error> {
        let read = timeout.for_read();
        if read.after.is_zero() {
            return Err(ureq::Error::Timeout(read.reason));
        }
        // The held output goes first, within the same budget: the read gets
        // what the write leaves of it.
        let started = Instant::now();
        if !self.pending.is_empty() {
            self.flush_pending(timeout)?;
        }
        let timeout = read;
        let limit = timeout.not_zero().map(|t| *t);
        let amount = loop {
            let left = limit.map(|l| l.saturating_sub(started.elapsed()));
            if left.is_some_and(|l| l.is_zero()) {
                return Err(ureq::Error::Timeout(timeout.reason));
            }
            self.fit(Dir::Read, left)?;
            let mut stream = &*self.stream;
            let stale = self.reused && self.waiting;
            match stream.read(self.buffers.input_append_buf()) {
                Ok(0) if stale => return Err(ClosedUnanswered::error()),
                Ok(n) => break n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                // Woken before the deadline: read on with the time left.
                Err(e) if is_timeout(&e) && limit.is_some() => {}
                Err(e) if stale && is_closed(&e) => return Err(ClosedUnanswered::error()),
                Err(e) => return Err(e.into()),
            }
        };
        if amount > 0 {
            self.waiting = false;
        }
        self.buffers.input_appended(amount);
        Ok(amount > 0)
    }

    /// Open when a non-blocking peek finds nothing to read: the server has
    /// neither closed the connection nor sent anything unasked.
    fn is_open(&mut self) -> bool {
        if !self.pending.is_empty() {
            return false;
        }
        let open = self.peek_finds_nothing();
        self.reused |= open;
        open
    }
}

impl LeanTcp {
    /// A non-blocking one-byte peek would block: nothing to read, no EOF.
    fn peek_finds_nothing(&self) -> bool {
        let mut byte = 0u8;
        // SAFETY: a one-byte buffer we own, on a socket we own.
        let got = unsafe {
            libc::recv(
                self.stream.as_raw_fd(),
                (&mut byte as *mut u8).cast(),
                1,
                libc::MSG_PEEK | libc::MSG_DONTWAIT,
            )
        };
        got < 0 && io::Error::last_os_error().kind() == io::ErrorKind::WouldBlock
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_socket_timeout_changes_only_when_the_deadline_needs_it() {
        let s = Duration::from_secs;
        let ms = Duration::from_millis;
        assert_eq!(refit(None, s(10)), Some(s(10)), "first use sets it");
        assert_eq!(
            refit(Some(s(10)), s(10) - ms(3)),
            None,
            "a fresh call keeps it"
        );
        assert_eq!(
            refit(Some(s(10) - ms(3)), s(10)),
            None,
            "even a little longer"
        );
        assert_eq!(
            refit(Some(s(10)), s(9)),
            Some(s(9)),
            "lowered near the deadline"
        );
        assert_eq!(
            refit(Some(ms(100)), s(10)),
            Some(s(10)),
            "raised when far too short"
        );
    }
}
