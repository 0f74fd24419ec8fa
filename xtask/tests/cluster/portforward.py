"""The pods/<name>/portforward subresource of the test cluster stand-in.

The real kubectl talks to this exactly as it talks to an API server that
proxies to a kubelet, so this module plays both parts for one request:

* kubectl first tries a WebSocket upgrade (RFC 6455) offering the subprotocol
  "SPDY/3.1+portforward.k8s.io".  The binary messages of that WebSocket carry
  one SPDY/3.1 session as a plain byte stream: a SPDY frame may be split over
  several messages and one message may hold several frames.
* If that upgrade is refused (any status but 101) kubectl falls back to a
  POST with "Upgrade: SPDY/3.1" and speaks SPDY/3.1 on the raw socket.

Inside the SPDY session every local connection kubectl accepts becomes two
client-opened streams with the same "requestid" header: first an error stream
(kubectl half-closes it at once and reads the kubelet's error text from it),
then a data stream carrying the bytes of the forwarded TCP connection.

Only the parts of SPDY/3.1 that kubectl (github.com/moby/spdystream) uses are
implemented; in particular there are no flow-control windows, since
spdystream neither sends nor honours them.
"""

import base64
import hashlib
import socket
import struct
import threading
import zlib

# Returned by dial() when the pod has gone away: the whole session is dropped.
DIE = object()

WS_PROTOCOL = "SPDY/3.1+portforward.k8s.io"
WS_GUID = "258EAFA5-E914-47DA-95CA-C5AB0DC85B11"  # RFC 6455, section 1.3
PF_PROTOCOL = "portforward.k8s.io"

# SPDY/3 control frame types and flags.
SYN_STREAM, SYN_REPLY, RST_STREAM, SETTINGS = 1, 2, 3, 4
PING, GOAWAY, HEADERS, WINDOW_UPDATE = 6, 7, 8, 9
FLAG_FIN = 0x01
RST_CANCEL = 5          # the status spdystream's Stream.Reset() sends
CHUNK = 32 * 1024       # bytes read from an upstream socket at a time

# WebSocket opcodes.
WS_CONT, WS_TEXT, WS_BINARY, WS_CLOSE, WS_PING, WS_PONG = 0, 1, 2, 8, 9, 10


def _spdy_dictionary():
    """The SPDY/3 header-compression dictionary (draft-mbelshe-httpbis-spdy-00,
    section 2.6.10.1): length-prefixed header words, then a raw tail.  It is a
    protocol constant: zlib checks its Adler-32 (0xe3c6a7c2) on both sides."""
    words = (
        "options head post put delete trace accept accept-charset "
        "accept-encoding accept-language accept-ranges age allow "
        "authorization cache-control connection content-base "
        "content-encoding content-language content-length content-location "
        "content-md5 content-range content-type date etag expect expires "
        "from host if-match if-modified-since if-none-match if-range "
        "if-unmodified-since last-modified location max-forwards pragma "
        "proxy-authenticate proxy-authorization range referer retry-after "
        "server te trailer transfer-encoding upgrade user-agent vary via "
        "warning www-authenticate method get status").split()
    words += ["200 OK", "version", "HTTP/1.1", "url", "public",
              "set-cookie", "keep-alive", "origin"]
    tail = (
        "100101201202205206300302303304305306307402405406407408409410411412"
        "413414415416417502504505"
        "203 Non-Authoritative Information204 No Content"
        "301 Moved Permanently400 Bad Request401 Unauthorized403 Forbidden"
        "404 Not Found500 Internal Server Error501 Not Implemented"
        "503 Service Unavailable"
        "Jan Feb Mar Apr May Jun Jul Aug Sept Oct Nov Dec 00:00:00 "
        "Mon, Tue, Wed, Thu, Fri, Sat, Sun, GMT"
        "chunked,text/html,image/png,image/jpg,image/gif,application/xml,"
        "application/xhtml+xml,text/plain,text/javascript,public"
        "privatemax-age=gzip,deflate,sdchcharset=utf-8"
        "charset=iso-8859-1,utf-,*,enq=0.")
    head = b"".join(struct.pack(">I", len(w)) + w.encode() for w in words)
    return head + tail.encode()


SPDY_DICT = _spdy_dictionary()
assert len(SPDY_DICT) == 1423 and zlib.adler32(SPDY_DICT) == 0xE3C6A7C2


def _control(ftype, flags, payload):
    """A SPDY/3 control frame: version 3 with the control bit set."""
    return struct.pack(">HHI", 0x8003, ftype, flags << 24 | len(payload)) + payload


def _data(sid, flags, payload):
    """A SPDY data frame."""
    return struct.pack(">II", sid & 0x7FFFFFFF, flags << 24 | len(payload)) + payload


def _ws_frame(opcode, payload):
    """One final, unmasked WebSocket frame (servers never mask)."""
    n = len(payload)
    if n < 126:
        head = struct.pack(">BB", 0x80 | opcode, n)
    elif n < 1 << 16:
        head = struct.pack(">BBH", 0x80 | opcode, 126, n)
    else:
        head = struct.pack(">BBQ", 0x80 | opcode, 127, n)
    return head + payload


def _unmask(data, key):
    """XOR a client frame's payload with its 4-byte masking key."""
    n = len(data)
    pad = (key * (n // 4 + 1))[:n]
    return (int.from_bytes(data, "little") ^ int.from_bytes(pad, "little")).to_bytes(n, "little")


class _RawLink:
    """SPDY straight on the upgraded TCP connection."""

    def __init__(self, rfile, sock, wlock):
        self.rfile, self.sock, self.wlock = rfile, sock, wlock

    def read(self, n):
        data = self.rfile.read(n)
        if len(data) < n:
            raise EOFError
        return data

    def write(self, data):  # caller holds wlock
        self.sock.sendall(data)

    def goodbye(self):  # caller holds wlock
        pass


class _WebSocketLink:
    """SPDY as a byte stream inside WebSocket binary messages."""

    def __init__(self, rfile, sock, wlock):
        self.rfile, self.sock, self.wlock = rfile, sock, wlock
        self.buf = bytearray()

    def _exact(self, n):
        data = self.rfile.read(n) if n else b""
        if len(data) < n:
            raise EOFError
        return data

    def read(self, n):
        while len(self.buf) < n:
            self._next_frame()
        data = bytes(self.buf[:n])
        del self.buf[:n]
        return data

    def _next_frame(self):
        """Read one WebSocket frame; payload of data frames goes to the buffer.
        Fragmentation needs no bookkeeping: continuation payload is simply
        more of the same byte stream."""
        b0, b1 = self._exact(2)
        opcode, length = b0 & 0x0F, b1 & 0x7F
        if length == 126:
            length = struct.unpack(">H", self._exact(2))[0]
        elif length == 127:
            length = struct.unpack(">Q", self._exact(8))[0]
        key = self._exact(4) if b1 & 0x80 else None
        payload = self._exact(length)
        if key:
            payload = _unmask(payload, key)
        if opcode in (WS_CONT, WS_TEXT, WS_BINARY):
            self.buf += payload
        elif opcode == WS_PING:
            with self.wlock:
                self.sock.sendall(_ws_frame(WS_PONG, payload))
        elif opcode == WS_CLOSE:
            with self.wlock:  # echo the status code, then the session is over
                self.sock.sendall(_ws_frame(WS_CLOSE, payload[:2]))
            raise EOFError
        # WS_PONG and unknown opcodes: nothing to do

    def write(self, data):  # caller holds wlock
        self.sock.sendall(_ws_frame(WS_BINARY, data))

    def goodbye(self):  # caller holds wlock; 1000 = normal closure
        self.sock.sendall(_ws_frame(WS_CLOSE, struct.pack(">H", 1000)))


class _Forward:
    """One forwarded local connection: its two streams and the upstream socket."""

    def __init__(self, port):
        self.port = port
        self.error_sid = None
        self.data_sid = None
        self.upstream = None      # the socket dial() returned
        self.client_done = False  # kubectl ended its side (FIN or RST on data)
        self.pump_done = False    # upstream side ended and our FINs were sent


class _Session:
    """One SPDY/3.1 session, server side.  serve() runs the frame reader on
    the calling thread; each forwarded connection gets a thread that dials
    and then copies upstream -> kubectl."""

    def __init__(self, link, sock, dial, on_session, protocol):
        self.link, self.sock, self.dial = link, sock, dial
        self.on_session, self.protocol = on_session, protocol
        self.wlock = link.wlock   # frame writes; also orders compressed blocks
        self.lock = threading.Lock()  # the tables and counters below
        self.streams = {}         # stream id -> _Forward
        self.pending = {}         # request id -> _Forward still missing a stream
        self.connections = 0      # dial() calls so far
        self.dead = False         # DIE seen: write nothing more
        # One zlib stream per direction for the whole session.
        self.inflate = zlib.decompressobj(zdict=SPDY_DICT)
        self.deflate = zlib.compressobj(zlib.Z_BEST_COMPRESSION, zdict=SPDY_DICT)

    def report(self, ended=False):
        if self.on_session is not None:
            self.on_session({"protocol": self.protocol,
                             "connections": self.connections, "ended": ended})

    # -- writing --------------------------------------------------------

    def send(self, frame):
        """Write one frame; a broken connection is the reader's business."""
        with self.wlock:
            if self.dead:
                return
            try:
                self.link.write(frame)
            except OSError:
                pass

    def send_data(self, sid, payload, flags=0):
        self.send(_data(sid, flags, payload))

    def reply(self, sid):
        """SYN_REPLY with an empty header block, as the kubelet answers."""
        with self.wlock:
            block = self.deflate.compress(b"\0\0\0\0")
            block += self.deflate.flush(zlib.Z_SYNC_FLUSH)
            frame = _control(SYN_REPLY, 0, struct.pack(">I", sid) + block)
            if not self.dead:
                try:
                    self.link.write(frame)
                except OSError:
                    pass

    # -- reading --------------------------------------------------------

    def serve(self):
        graceful = False
        try:
            while True:
                word, flags_len = struct.unpack(">II", self.link.read(8))
                flags, length = flags_len >> 24, flags_len & 0xFFFFFF
                payload = self.link.read(length) if length else b""
                if word & 0x80000000:
                    if not self.on_control(word & 0xFFFF, flags, payload):
                        graceful = True  # GOAWAY from kubectl
                        break
                else:
                    self.on_data(word & 0x7FFFFFFF, flags, payload)
        except (EOFError, OSError, ValueError, struct.error, zlib.error):
            pass  # connection gone (or garbage on it): the session is over
        self.finish(graceful)

    def headers(self, block):
        """Inflate a name/value header block into {name: first value}."""
        raw = self.inflate.decompress(block)
        out, pos = {}, 4
        for _ in range(struct.unpack_from(">I", raw)[0]):
            n = struct.unpack_from(">I", raw, pos)[0]
            name = raw[pos + 4:pos + 4 + n].decode("latin-1").lower()
            pos += 4 + n
            n = struct.unpack_from(">I", raw, pos)[0]
            value = raw[pos + 4:pos + 4 + n].decode("latin-1")
            pos += 4 + n
            out[name] = value.split("\0")[0]  # several values are NUL-separated
        return out

    def on_control(self, ftype, flags, payload):
        """Handle one control frame; False ends the session."""
        if ftype == SYN_STREAM:
            sid = struct.unpack_from(">I", payload)[0] & 0x7FFFFFFF
            self.open_stream(sid, self.headers(payload[10:]))
        elif ftype in (SYN_REPLY, HEADERS):
            # kubectl never sends these to a server, but their header blocks
            # must still go through the shared inflater to keep it in step.
            self.headers(payload[4:])
        elif ftype == RST_STREAM:
            self.on_reset(struct.unpack_from(">I", payload)[0] & 0x7FFFFFFF)
        elif ftype == PING:
            # Odd ids are the client's pings: echo them unchanged.
            if struct.unpack_from(">I", payload)[0] & 1:
                self.send(_control(PING, 0, payload[:4]))
        elif ftype == GOAWAY:
            return False
        # SETTINGS, WINDOW_UPDATE and unknown types are ignored.
        return True

    def open_stream(self, sid, hdrs):
        """A new stream from kubectl: pair it with its sibling by requestid."""
        kind, port = hdrs.get("streamtype"), hdrs.get("port", "")
        if kind not in ("error", "data") or not port.isdigit() \
                or not 0 < int(port) < 65536:
            self.send(_control(RST_STREAM, 0, struct.pack(">II", sid, RST_CANCEL)))
            return
        # Clients too old to send a requestid use consecutive stream ids;
        # the kubelet pairs them the same way.
        rid = hdrs.get("requestid") or str(sid if kind == "error" else sid - 2)
        with self.lock:
            fwd = self.pending.get(rid)
            if fwd is None:
                fwd = self.pending[rid] = _Forward(int(port))
            if getattr(fwd, kind + "_sid") is not None:
                fwd = None  # a second stream of the same type: refuse it
            else:
                setattr(fwd, kind + "_sid", sid)
                self.streams[sid] = fwd
                ready = fwd.error_sid is not None and fwd.data_sid is not None
                if ready:
                    del self.pending[rid]
        if fwd is None:
            self.send(_control(RST_STREAM, 0, struct.pack(">II", sid, RST_CANCEL)))
            return
        if kind == "error":
            self.reply(sid)
        # The data stream is answered only once dial() has returned, so
        # kubectl cannot send data before there is somewhere to put it.
        if ready:
            threading.Thread(target=self.forward, args=(fwd,), daemon=True).start()

    def on_data(self, sid, flags, payload):
        """Bytes from the local client: pass them upstream."""
        fwd = self.streams.get(sid)
        if fwd is None or sid != fwd.data_sid or fwd.upstream is None:
            return  # the (already half-closed) error stream, or no upstream
        try:
            if payload:
                fwd.upstream.sendall(payload)
            if flags & FLAG_FIN:
                fwd.upstream.shutdown(socket.SHUT_WR)  # pass the half-close on
        except OSError:
            pass  # upstream gone; its pump sends our FINs
        if flags & FLAG_FIN:
            self.client_done(fwd)

    def on_reset(self, sid):
        """kubectl resets the data stream once it is done with a connection
        (or gives up on it): stop that upstream altogether."""
        fwd = self.streams.get(sid)
        if fwd is None or sid != fwd.data_sid:
            return
        if fwd.upstream is not None and not fwd.pump_done:
            try:
                fwd.upstream.shutdown(socket.SHUT_RDWR)  # wakes up the pump
            except OSError:
                pass
        self.client_done(fwd)

    # -- one forwarded connection ----------------------------------------

    def forward(self, fwd):
        with self.lock:
            n = self.connections
            self.connections += 1
        try:
            target = self.dial(fwd.port, n)
        except Exception as exc:  # a failing dial is reported like the kubelet's
            target = "error forwarding port %d: %s" % (fwd.port, exc)
        self.report()
        if target is DIE:
            self.kill()
        elif isinstance(target, str):
            # The kubelet's failure: answer the stream, write the text on the
            # error stream, then close both streams.
            self.reply(fwd.data_sid)
            self.send_data(fwd.error_sid, target.encode())
            self.pumped(fwd)
        else:
            target.settimeout(None)
            fwd.upstream = target  # set before the reply lets data arrive
            self.reply(fwd.data_sid)
            self.pump(fwd)

    def pump(self, fwd):
        """Copy upstream -> kubectl until the upstream closes its side."""
        try:
            while True:
                chunk = fwd.upstream.recv(CHUNK)
                if not chunk:
                    break
                self.send_data(fwd.data_sid, chunk)
        except OSError:
            pass
        self.pumped(fwd)

    def pumped(self, fwd):
        """Our side of a connection is over: FIN the error stream, then the
        data stream (the kubelet's order); close upstream if kubectl's side
        is over as well."""
        self.send_data(fwd.error_sid, b"", FLAG_FIN)
        self.send_data(fwd.data_sid, b"", FLAG_FIN)
        with self.lock:
            fwd.pump_done = True
            both = fwd.client_done
        if both:
            self.drop(fwd)

    def client_done(self, fwd):
        with self.lock:
            if fwd.client_done:
                return
            fwd.client_done = True
            both = fwd.pump_done
        if both:
            self.drop(fwd)

    def drop(self, fwd):
        """Both sides are over: forget the streams, close the upstream."""
        with self.lock:
            for sid in (fwd.error_sid, fwd.data_sid):
                if self.streams.get(sid) is fwd:
                    del self.streams[sid]
        if fwd.upstream is not None:
            fwd.upstream.close()

    # -- the end of the session ------------------------------------------

    def kill(self):
        """DIE: the pod vanished.  No GOAWAY, no close frame: the connection
        just goes, and the reader (woken by the shutdown) cleans up."""
        self.dead = True  # (no lock: a writer may be stuck in sendall)
        try:
            self.sock.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass

    def finish(self, graceful):
        with self.lock:
            forwards = set(self.streams.values()) | set(self.pending.values())
            self.pending.clear()
        for fwd in forwards:
            if fwd.upstream is not None and not fwd.pump_done:
                try:
                    fwd.upstream.shutdown(socket.SHUT_RDWR)  # ends its pump
                except OSError:
                    pass
            self.client_done(fwd)  # closes it now or when its pump ends
        with self.wlock:
            if graceful and not self.dead:
                try:
                    self.link.goodbye()
                except OSError:
                    pass
            self.dead = True
        try:
            self.sock.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass
        self.sock.close()
        self.report(ended=True)


def _header_list(handler, name):
    """All comma-separated values of a (possibly repeated) request header."""
    values = ",".join(handler.headers.get_all(name) or [])
    return [v.strip() for v in values.split(",") if v.strip()]


def _refuse(handler, code, text):
    body = (text + "\n").encode()
    handler.send_response(code)
    handler.send_header("Content-Type", "text/plain; charset=utf-8")
    handler.send_header("Content-Length", str(len(body)))
    handler.send_header("Connection", "close")
    handler.end_headers()
    handler.wfile.write(body)
    handler.wfile.flush()


def _switch(handler, headers):
    handler.send_response(101)
    for name, value in headers:
        handler.send_header(name, value)
    handler.end_headers()
    handler.wfile.flush()


def handle(handler, dial, websocket=True, on_session=None):
    """Serve one pods/<name>/portforward request on `handler` (an
    http.server.BaseHTTPRequestHandler whose request line and headers are
    read and nothing written) until the session ends.

    websocket=False refuses the WebSocket attempt with 400, so that kubectl
    falls back to the raw SPDY upgrade.  dial(port, n) is called for the
    n-th (0, 1, 2, ...) forwarded connection of this session and returns a
    connected socket, a str (error text for kubectl) or DIE (drop the whole
    session at once).  on_session(info) gets {"protocol", "connections",
    "ended"} at the start, after each dial() and at the end."""
    handler.close_connection = True  # the socket is never reused
    upgrade = (handler.headers.get("Upgrade") or "").strip().lower()
    if upgrade == "websocket":
        key = (handler.headers.get("Sec-WebSocket-Key") or "").strip()
        if not websocket:
            return _refuse(handler, 400, "websocket port-forwarding is disabled")
        if handler.command != "GET" or not key \
                or WS_PROTOCOL not in _header_list(handler, "Sec-WebSocket-Protocol"):
            return _refuse(handler, 400, "unsupported websocket upgrade")
        digest = hashlib.sha1((key + WS_GUID).encode()).digest()
        _switch(handler, [("Upgrade", "websocket"), ("Connection", "Upgrade"),
                          ("Sec-WebSocket-Accept", base64.b64encode(digest).decode()),
                          ("Sec-WebSocket-Protocol", WS_PROTOCOL)])
        protocol, link_type = "websocket", _WebSocketLink
    elif upgrade.startswith("spdy/3.1"):
        offered = _header_list(handler, "X-Stream-Protocol-Version")
        if offered and PF_PROTOCOL not in offered:
            return _refuse(handler, 403, "unable to upgrade: unable to negotiate "
                           "protocol: client supports [%s], server accepts [%s]"
                           % (" ".join(offered), PF_PROTOCOL))
        _switch(handler, [("Connection", "Upgrade"), ("Upgrade", "SPDY/3.1"),
                          ("X-Stream-Protocol-Version", PF_PROTOCOL)])
        protocol, link_type = "spdy", _RawLink
    else:
        return _refuse(handler, 400, "Upgrade request required")

    sock = handler.connection
    sock.settimeout(None)  # a session may idle for as long as kubectl likes
    link = link_type(handler.rfile, sock, threading.Lock())
    session = _Session(link, sock, dial, on_session, protocol)
    session.report()
    session.serve()
