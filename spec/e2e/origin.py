"""A small HTTP/1.1 origin server for the upstream/proxy end-to-end tests.

It runs inside the test process (python3 standard library only): a
ThreadingHTTPServer with protocol_version HTTP/1.1 bound to 127.0.0.1 on a
free port, serving from a background thread. Use it as a context manager so
that it always stops (listener shut down, open connections closed, threads
joined):

    with Origin("a") as o:
        ... o.port ...

Every response carries `X-Origin: <name>`. Endpoints are matched on the end
of the path (/bytes and /api/bytes alike; any other path echoes):

  /status/N          status N, JSON {"origin", "status"}
  /slow?ms=N         waits N ms (woken early by stop()), then echoes
  /bytes?n=N         N bytes of pattern(N) with Content-Length;
                     &chunked=1 sends them chunked (pieces of &piece= bytes),
                     each &trailer=Name:Value adds a trailer field (and
                     &tbig=N one of N bytes), and &tsplit=1 sends the trailer
                     section a few bytes per write
  /badstatus?code=N  a status line with status N as it is (e.g. 2), Content-Length 2
  echo &hbig=N       adds a response header X-Big of N bytes (each &hbig= one)
  /doc?doc=TEXT      TEXT as the body (application/json), whatever it is
  /close             echoes, with `Connection: close`, then closes
  /drop              reads the request and closes without answering
  /truncate?n=N      promises N bytes (Content-Length), sends N/2, closes
  anything else      echo: JSON with origin, method, path (without query),
                     target, query (the raw string), args (name -> [values]),
                     headers ([[name, value], ...] as received), body (text,
                     only when <= 64 KiB), body_len, body_sha256, conn (the
                     number of the TCP connection, 1-based), seq (the
                     request's number on that connection, 1-based).
                     Each `rh=Name:Value` query parameter adds a response
                     header; `ms=N` delays the answer as /slow does; each
                     `interim=N` (a 1xx) sends an interim answer first,
                     with a `Link` header.

Settings (attributes, may be changed while it runs):

  delay_ms        every request waits this long before answering
  idle_close      close each connection right after its response, without
                  saying so (no Connection: close): a pooled connection to
                  it goes stale
  drop_reused     the 2nd, 3rd... request on a connection is read and then
                  the connection is closed without an answer: what a client
                  sees when a server closed an idle keep-alive connection
                  while the client was sending on it
  drop_all        every request is read and the connection closed unanswered

Counters (read with the lock-free properties below): `accepts` (TCP
connections accepted), `requests` (requests read, unanswered ones too),
`inflight_max`, and `log`: one dict per request read, with method, path,
target, headers (lower-case name -> value), body_len, body_sha256, conn, seq.

TLS: Origin(tls=CONTEXT) (a server-side ssl.SSLContext) serves https. The
handshake runs in the connection's thread; `handshakes` counts those that
completed, `resumed` those that resumed a session, `tls_failures` those that
failed; each log entry and echo also has `sni` (the server name the client
sent, or None) and `resumed` (its connection's handshake resumed a session).
"""

import hashlib
import json
import re
import socket
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, urlsplit

from gwtest import free_port


def _on_sni(sock, name, ctx):
    sock.gw_sni = name  # read back by the connection's handler

_BLOCK = hashlib.sha256(b"gateway-origin-pattern").digest() * 2048  # 64 KiB


def pattern(n):
    """The deterministic n-byte body that /bytes?n=N sends."""
    reps, rest = divmod(n, len(_BLOCK))
    return _BLOCK * reps + _BLOCK[:rest]


def pattern_sha256(n):
    h = hashlib.sha256()
    left = n
    while left > 0:
        piece = _BLOCK[:min(left, len(_BLOCK))]
        h.update(piece)
        left -= len(piece)
    return h.hexdigest()


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True
    request_queue_size = 128

    def __init__(self, origin):
        self.origin = origin
        super().__init__(("127.0.0.1", 0), _Handler)

    def get_request(self):
        sock, addr = super().get_request()
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        o = self.origin
        if o.tls is not None:
            # The handshake waits for the connection's own thread (setup),
            # so a slow or failing client never holds the accept loop.
            sock = o.tls.wrap_socket(sock, server_side=True, do_handshake_on_connect=False)
        with o._lock:
            o._accepts += 1
            o._socks[sock] = o._accepts
        return sock, addr

    def process_request(self, request, client_address):
        t = threading.Thread(target=self.process_request_thread,
                             args=(request, client_address), daemon=True)
        with self.origin._lock:
            self.origin._threads.append(t)
        t.start()

    def shutdown_request(self, request):
        with self.origin._lock:
            self.origin._socks.pop(request, None)
        super().shutdown_request(request)

    def handle_error(self, request, client_address):
        pass  # a peer that goes away mid-answer is normal in these tests


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    timeout = 30  # an idle keep-alive connection is dropped after this
    server_version = "origin/1"

    def log_message(self, *args):
        pass

    def setup(self):
        super().setup()
        self.seq = 0
        self.sni, self.resumed = None, False
        o = self.server.origin
        if o.tls is not None:
            try:
                self.request.do_handshake()
            except (OSError, ValueError):
                with o._lock:
                    o._tls_failures += 1
                raise
            self.sni = getattr(self.request, "gw_sni", None)
            self.resumed = bool(self.request.session_reused)
            with o._lock:
                o._handshakes += 1
                o._resumed += self.resumed
        with self.server.origin._lock:
            self.conn_no = self.server.origin._socks.get(self.request, 0)

    # Every method goes through one place.
    def do_any(self):
        o = self.server.origin
        self.seq += 1
        body = self._read_body()
        if body is None:
            self.close_connection = True
            return
        u = urlsplit(self.path)
        args = parse_qs(u.query, keep_blank_values=True)
        entry = {
            "method": self.command, "path": u.path, "target": self.path,
            "headers": {k.lower(): v for k, v in self.headers.items()},
            "body_len": len(body), "body_sha256": hashlib.sha256(body).hexdigest(),
            "conn": self.conn_no, "seq": self.seq, "sni": self.sni, "resumed": self.resumed,
        }
        with o._lock:
            o._requests += 1
            o._log.append(entry)
            o._inflight += 1
            o._inflight_max = max(o._inflight_max, o._inflight)
        try:
            # Endpoints are matched on the path's last segment(s), so that
            # /drop and /api/v1/drop behave alike behind a proxy prefix.
            tail = u.path.rsplit("/", 1)[-1]
            m = re.search(r"/status/(\d{3})$", u.path)
            if o.drop_all or tail == "drop" or (o.drop_reused and self.seq > 1):
                self.close_connection = True
                return
            ms = o.delay_ms
            if tail == "slow" or "ms" in args:
                ms += int((args.get("ms") or ["0"])[0])
            if ms > 0:
                o._stopping.wait(ms / 1000.0)
            if m:
                st = int(m.group(1))
                self._send_json(st, {"origin": o.name, "status": st})
            elif tail == "truncate":
                # Promises n bytes, sends half, then closes: a failure mid-body.
                n = int(args.get("n", ["1000"])[0])
                self._head(200, [("Content-Type", "application/octet-stream"),
                                 ("Content-Length", str(n))])
                self.wfile.write(pattern(n // 2))
                self.close_connection = True
            elif tail == "bytes":
                self._send_bytes(int(args.get("n", ["0"])[0]),
                                 args.get("chunked", ["0"])[0] == "1",
                                 int(args.get("piece", ["65536"])[0]),
                                 args.get("trailer", []) + ["X-Big:" + "b" * int(n) for n in args.get("tbig", [])],
                                 "tsplit" in args)
            elif tail == "doc":
                # The body is the `doc` argument as it is (JSON or not).
                doc = args.get("doc", [""])[0].encode()
                self._head(200, [("Content-Type", "application/json"), ("Content-Length", str(len(doc)))])
                self.wfile.write(doc)
            elif tail == "badstatus":
                code = args.get("code", ["2"])[0]
                self.wfile.write(b"HTTP/1.1 %s OK\r\nContent-Length: 2\r\n\r\nok" % code.encode())
            else:
                doc = {
                    "origin": o.name, "method": self.command, "path": u.path,
                    "target": self.path, "query": u.query, "args": args,
                    "headers": [[k, v] for k, v in self.headers.items()],
                    "body": body.decode("utf-8", "replace") if len(body) <= 65536 else None,
                    "body_len": len(body), "body_sha256": entry["body_sha256"],
                    "conn": self.conn_no, "seq": self.seq, "sni": self.sni,
                    "resumed": self.resumed,
                }
                for code in args.get("interim", []):
                    # Raw: http.server would log and count it as the answer.
                    self.wfile.write(b"HTTP/1.1 %d Interim\r\nLink: </style.css>; rel=preload\r\n\r\n"
                                     % int(code))
                extra = []
                for rh in args.get("rh", []):
                    name, _, value = rh.partition(":")
                    extra.append((name.strip(), value.strip()))
                for n in args.get("hbig", []):
                    extra.append(("X-Big", "h" * int(n)))
                self._send_json(200, doc, extra, close=(tail == "close"))
        finally:
            with o._lock:
                o._inflight -= 1
        if o.idle_close:
            self.close_connection = True

    do_GET = do_POST = do_PUT = do_PATCH = do_DELETE = do_HEAD = do_OPTIONS = do_any

    def _read_body(self):
        te = (self.headers.get("Transfer-Encoding") or "").lower()
        try:
            if "chunked" in te:
                out = bytearray()
                while True:
                    line = self.rfile.readline(1024)
                    if not line:
                        return None
                    size = int(line.split(b";")[0].strip() or b"0", 16)
                    if size == 0:
                        while self.rfile.readline(1024) not in (b"\r\n", b"\n", b""):
                            pass
                        return bytes(out)
                    out += self._read_exact(size)
                    self.rfile.readline(8)
            n = int(self.headers.get("Content-Length") or 0)
            return self._read_exact(n)
        except (OSError, ValueError):
            return None

    def _read_exact(self, n):
        out = bytearray()
        while len(out) < n:
            chunk = self.rfile.read(min(n - len(out), 1 << 20))
            if not chunk:
                raise OSError("short body")
            out += chunk
        return bytes(out)

    def _head(self, status, headers, close=False):
        self.send_response(status)
        self.send_header("X-Origin", self.server.origin.name)
        for k, v in headers:
            self.send_header(k, v)
        if close:
            self.send_header("Connection", "close")
            self.close_connection = True
        self.end_headers()

    def _send_json(self, status, doc, extra=(), close=False):
        data = json.dumps(doc).encode()
        no_body = status < 200 or status in (204, 304)
        hdrs = [("Content-Type", "application/json")]
        if not no_body:
            hdrs.append(("Content-Length", str(len(data))))
        self._head(status, hdrs + list(extra), close)
        if not no_body and self.command != "HEAD":
            self.wfile.write(data)

    def _send_bytes(self, n, chunked, piece, trailers=(), tsplit=False):
        piece = max(1, piece)
        if chunked:
            self._head(200, [("Content-Type", "application/octet-stream"),
                             ("Transfer-Encoding", "chunked")])
        else:
            self._head(200, [("Content-Type", "application/octet-stream"),
                             ("Content-Length", str(n))])
        if self.command == "HEAD":
            return
        sent = 0
        while sent < n:
            k = min(piece, n - sent, len(_BLOCK))
            off = sent % len(_BLOCK)
            data = (_BLOCK[off:] + _BLOCK)[:k]
            if chunked:
                self.wfile.write(b"%x\r\n" % k + data + b"\r\n")
            else:
                self.wfile.write(data)
            sent += k
        if chunked:
            last = b"0\r\n" + b"".join(t.encode() + b"\r\n" for t in trailers) + b"\r\n"
            if not tsplit:
                self.wfile.write(last)
                return
            for i in range(0, len(last), 3):
                self.wfile.write(last[i:i + 3])
                time.sleep(0.002)


class Origin:
    """A running origin; see the module docstring."""

    def __init__(self, name="origin", delay_ms=0, idle_close=False, drop_reused=False,
                 drop_all=False, tls=None):
        self.name = name
        self.tls = tls
        if tls is not None:
            tls.sni_callback = _on_sni
        self._handshakes = 0
        self._resumed = 0
        self._tls_failures = 0
        self.delay_ms = delay_ms
        self.idle_close = idle_close
        self.drop_reused = drop_reused
        self.drop_all = drop_all
        self._lock = threading.Lock()
        self._accepts = 0
        self._requests = 0
        self._inflight = 0
        self._inflight_max = 0
        self._log = []
        self._socks = {}
        self._threads = []
        self._stopping = threading.Event()
        self._server = None
        self._thread = None
        self.port = None

    def start(self):
        self._server = _Server(self)
        self.port = self._server.server_address[1]
        self._thread = threading.Thread(target=self._server.serve_forever,
                                        kwargs={"poll_interval": 0.05}, daemon=True)
        self._thread.start()
        return self

    @property
    def addr(self):
        return "127.0.0.1:%d" % self.port

    @property
    def accepts(self):
        with self._lock:
            return self._accepts

    @property
    def requests(self):
        with self._lock:
            return self._requests

    @property
    def handshakes(self):
        with self._lock:
            return self._handshakes

    @property
    def resumed(self):
        with self._lock:
            return self._resumed

    @property
    def tls_failures(self):
        with self._lock:
            return self._tls_failures

    @property
    def inflight_max(self):
        with self._lock:
            return self._inflight_max

    @property
    def log(self):
        with self._lock:
            return list(self._log)

    def reset_counts(self):
        with self._lock:
            self._accepts = 0
            self._requests = 0
            self._handshakes = self._resumed = self._tls_failures = 0
            self._inflight_max = self._inflight
            self._log = []

    def stop(self, timeout=5.0):
        """Stops accepting, closes every open connection, joins every thread.
        Raises AssertionError if a thread is still alive after timeout."""
        if self._server is None:
            return
        self._stopping.set()
        server, self._server = self._server, None
        server.shutdown()           # serve_forever returns
        server.server_close()       # the listening socket is closed
        self._thread.join(timeout)
        with self._lock:
            socks = list(self._socks)
            threads = list(self._threads)
        for s in socks:
            try:
                s.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
        deadline = time.monotonic() + timeout
        alive = []
        for t in threads + [self._thread]:
            t.join(max(0.0, deadline - time.monotonic()))
            if t.is_alive():
                alive.append(t)
        if alive:
            raise AssertionError("origin %s: %d thread(s) still running after stop"
                                 % (self.name, len(alive)))

    def __enter__(self):
        return self.start()

    def __exit__(self, *exc):
        self.stop()
        return False


def dead_port():
    """A loopback port nothing listens on (connecting to it is refused)."""
    return free_port()


def fill(text, **ports):
    """Replaces @NAME@ in text by the port of ports[NAME] (an Origin or an int)."""
    for name, v in ports.items():
        text = text.replace("@%s@" % name, str(getattr(v, "port", v)))
    return text


class Client:
    """A keep-alive HTTP/1.1 client to 127.0.0.1:port (http.client), which
    reconnects after an error. get/request return (status, headers with
    lower-case names, body bytes)."""

    def __init__(self, port, timeout=10):
        import http.client
        self._mk = lambda: http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
        self.conn = self._mk()

    def request(self, method, path, headers=None, body=None):
        try:
            self.conn.request(method, path, body=body, headers=headers or {})
            res = self.conn.getresponse()
            data = res.read()
        except Exception:
            self.conn.close()
            self.conn = self._mk()
            raise
        hdrs = {}
        for k, v in res.getheaders():
            k = k.lower()
            hdrs[k] = hdrs[k] + ", " + v if k in hdrs else v
        if res.will_close:
            self.conn.close()
            self.conn = self._mk()
        return res.status, hdrs, data

    def get(self, path, headers=None):
        return self.request("GET", path, headers)

    def close(self):
        self.conn.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()
        return False
