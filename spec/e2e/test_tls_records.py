"""TLS records end to end: a real gateway's TLS listener, driven by
`openssl s_client` (a KeyUpdate in the middle of a keep-alive connection,
with "k", and with "K", which asks the gateway for a KeyUpdate of its own) and
by Python's ssl module (5 MB bodies both ways, sent in odd-sized writes, over
TLS 1.2 and 1.3, and 2000 keep-alive requests pipelined 20 at a time on one
TLS 1.3 connection). These are the paths a TLS 1.3 record layer of our own
takes over from OpenSSL's SSL_read/SSL_write; spec/c/test_tls_records.c
checks the records themselves.

Certificates and the gateway's TLS files come from test_tls.py (certs(),
tls_gateway(), CaFile)."""

import hashlib
import os
import re
import socket
import ssl
import subprocess
import threading
import time

from gwtest import eq, parse_response, wait_for
from test_tls import CaFile, tls_gateway

LINES = 327680  # /big: this many 16-byte numbered lines, 5 MiB

CONFIG = r'''local gw = require "gateway"
gw.config {
  listen = { { addr = "127.0.0.1:$PORT", tls = { cert = "a.pem", key = "a.key" } } },
}
local c = gw.crypto
gw.get("/one", function(req) return "answer-one" end)
gw.get("/two", function(req) return "answer-two" end)
gw.get("/three", function(req) return "answer-three" end)
gw.get("/n", function(req) return "n=" .. req.query.i end)
gw.post("/sha256", function(req) return c.hex(c.sha256(req:body())) end)
local lines = {}
for i = 1, %d do lines[i] = string.format("%%015d\n", i) end
local big = table.concat(lines)
gw.get("/big", function(req) return big end)
''' % LINES


def big_body():
    return b"".join(b"%015d\n" % i for i in range(1, LINES + 1))


def get(path):
    return ("GET %s HTTP/1.1\r\nHost: a.test\r\n\r\n" % path).encode()


# ---------------------------------------------------------------------------
# openssl s_client, interactive: its connected commands "k" and "K"
# ---------------------------------------------------------------------------

class SClient:
    """openssl s_client -msg on pipes (neither -quiet nor -ign_eof, so that a
    line that is "k" or "K" is a command, not data). A thread gathers its
    stdout and stderr; close() kills it by PID."""

    def __init__(self, port):
        self.proc = subprocess.Popen(
            ["openssl", "s_client", "-connect", "127.0.0.1:%d" % port, "-servername", "a.test",
             "-tls1_3", "-msg"],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
        self._out = []
        self._lock = threading.Lock()
        self._thread = threading.Thread(target=self._gather, daemon=True)
        self._thread.start()

    def _gather(self):
        fd = self.proc.stdout.fileno()
        while True:
            chunk = os.read(fd, 65536)
            if not chunk:
                return
            with self._lock:
                self._out.append(chunk)

    def text(self):
        with self._lock:
            return b"".join(self._out).decode("latin-1")

    def send(self, data):
        # One write of less than PIPE_BUF bytes: s_client reads it whole, in
        # one read, so a command line never shares a read with a request.
        assert len(data) < 4096
        self.proc.stdin.write(data)
        self.proc.stdin.flush()

    def wait(self, what, pred, timeout=10):
        """Waits until pred(output) holds; returns the output."""
        if wait_for(lambda: pred(self.text()), timeout) is None:
            raise AssertionError("s_client: no %s within %ss; output tail:\n%s"
                                 % (what, timeout, self.text()[-3000:]))
        return self.text()

    def close(self):
        if self.proc.poll() is None:
            os.kill(self.proc.pid, 9)
        self.proc.wait()
        self._thread.join(5)
        for f in (self.proc.stdin, self.proc.stdout):
            try:
                f.close()
            except OSError:
                pass


# "<<< ... KeyUpdate" is a message s_client received, ">>> ..." one it sent;
# the hex line after it is the message, its last byte request_update.
KEY_UPDATE = re.compile(r"^(<<<|>>>) TLS 1\.3, Handshake \[length 0005\], KeyUpdate\n\s*18 00 00 01 (0[01])\s*$",
                        re.M)


def key_updates(text, direction):
    """[(offset, request_update)] of the KeyUpdates in s_client's output going
    `direction` ("<<<": from the gateway, ">>>": to it)."""
    return [(m.start(), m.group(2)) for m in KEY_UPDATE.finditer(text) if m.group(1) == direction]


def _key_update_round(command):
    """Three requests on one connection with a KeyUpdate before the second
    and the third; returns s_client's output."""
    with tls_gateway(CONFIG) as g:
        sc = SClient(g.port)
        try:
            sc.send(get("/one"))
            sc.wait("first answer", lambda t: "answer-one" in t)
            for n, path in ((1, "/two"), (2, "/three")):
                sc.send(command + b"\n")
                # s_client prints KEYUPDATE once it sent the message.
                sc.wait("KeyUpdate %d sent" % n, lambda t: len(key_updates(t, ">>>")) >= n)
                sc.send(get(path))
                sc.wait("answer to %s" % path, lambda t: "answer-" + path[1:] in t)
            out = sc.text()
        finally:
            sc.close()
    # Each request got its own 200 and body, in order.
    eq(re.findall(r"HTTP/1\.1 200 OK\r?\n(?:[^\n]*\n)*?\r?\n(answer-(?:one|two|three))", out),
       ["answer-one", "answer-two", "answer-three"], "answers")
    eq(len(re.findall(r"HTTP/1\.1 \d{3}", out)), 3, "answers in all")
    sent = key_updates(out, ">>>")
    want = "01" if command == b"K" else "00"
    eq([r for _, r in sent], [want, want], "KeyUpdates s_client sent")
    return out


def test_s_client_key_update_not_requested():
    """"k": the client's sending key changes, the gateway goes on decrypting
    and does not answer with a KeyUpdate of its own."""
    out = _key_update_round(b"k")
    eq(key_updates(out, "<<<"), [], "KeyUpdates from the gateway")


def test_s_client_key_update_requested():
    """"K": the gateway answers each request with one KeyUpdate that does not
    ask back, before the answer it encrypts with its next key (which
    s_client then decrypts), and after the answer before it."""
    out = _key_update_round(b"K")
    got = key_updates(out, "<<<")
    eq([r for _, r in got], ["00", "00"], "KeyUpdates from the gateway (request_update)")
    for (at, _), (prev, nxt) in zip(got, (("answer-one", "answer-two"), ("answer-two", "answer-three"))):
        assert out.index(prev) < at < out.index(nxt), \
            "gateway KeyUpdate at %d not between %s (%d) and %s (%d)" % (
                at, prev, out.index(prev), nxt, out.index(nxt))


# ---------------------------------------------------------------------------
# Python's ssl module
# ---------------------------------------------------------------------------

def tls_conn(port, ca, version):
    ctx = ssl.create_default_context(cafile=ca)
    ctx.minimum_version = ctx.maximum_version = version
    raw = socket.create_connection(("127.0.0.1", port), timeout=20)
    s = ctx.wrap_socket(raw, server_hostname="a.test")
    eq(s.version(), {ssl.TLSVersion.TLSv1_2: "TLSv1.2", ssl.TLSVersion.TLSv1_3: "TLSv1.3"}[version],
       "negotiated version")
    return s


class Reader:
    """Responses from a socket, one after the other (bodies with a
    Content-Length), gathered in a bytearray so that 5 MB stay cheap."""

    def __init__(self, sock, timeout=20):
        self.sock = sock
        self.buf = bytearray()
        self.timeout = timeout

    def _more(self, deadline):
        if time.monotonic() > deadline:
            raise AssertionError("no complete response in time; have %r" % bytes(self.buf[:300]))
        chunk = self.sock.recv(1 << 20)
        if not chunk:
            raise AssertionError("connection closed; have %r" % bytes(self.buf[:300]))
        self.buf += chunk

    def response(self):
        deadline = time.monotonic() + self.timeout
        while b"\r\n\r\n" not in self.buf:
            self._more(deadline)
        end = self.buf.index(b"\r\n\r\n") + 4
        m = re.search(rb"\r\ncontent-length:\s*(\d+)\r\n", bytes(self.buf[:end]), re.I)
        assert m, "no Content-Length in %r" % bytes(self.buf[:end])
        total = end + int(m.group(1))
        while len(self.buf) < total:
            self._more(deadline)
        r, rest = parse_response(bytes(self.buf[:total]))
        assert rest == b""
        del self.buf[:total]
        return r


def send_in_odd_pieces(sock, data, sizes=(1, 7, 1000, 16385)):
    """sendall in pieces of the sizes in turn: each makes its own records
    (1-byte records, a 2^14 + 1 piece split in two ...)."""
    off, i = 0, 0
    while off < len(data):
        n = sizes[i % len(sizes)]
        sock.sendall(data[off:off + n])
        off += n
        i += 1
    return i


def _big_bodies(version):
    body = os.urandom(5 * 1024 * 1024)
    want_down = big_body()
    with tls_gateway(CONFIG) as g, CaFile() as ca:
        s = tls_conn(g.port, ca, version)
        try:
            rd = Reader(s)
            s.sendall(b"POST /sha256 HTTP/1.1\r\nHost: a.test\r\nContent-Length: %d\r\n\r\n" % len(body))
            pieces = send_in_odd_pieces(s, body)
            assert pieces > 1200, pieces
            r = rd.response()
            eq((r.status, r.body.decode()), (200, hashlib.sha256(body).hexdigest()), "5 MB upload's sha256")
            s.sendall(get("/big"))
            r = rd.response()
            eq((r.status, len(r.body)), (200, len(want_down)), "5 MB download")
            eq(hashlib.sha256(r.body).hexdigest(), hashlib.sha256(want_down).hexdigest(), "download's sha256")
            # The connection is still in step afterwards.
            s.sendall(get("/one"))
            eq(rd.response().body, b"answer-one", "after the big bodies")
        finally:
            s.close()


def test_5mb_both_ways_tls13():
    _big_bodies(ssl.TLSVersion.TLSv1_3)


def test_5mb_both_ways_tls12():
    _big_bodies(ssl.TLSVersion.TLSv1_2)


test_5mb_both_ways_tls13.timeout = 120
test_5mb_both_ways_tls12.timeout = 120


def test_2000_pipelined_keepalive_requests_tls13():
    with tls_gateway(CONFIG) as g, CaFile() as ca:
        s = tls_conn(g.port, ca, ssl.TLSVersion.TLSv1_3)
        try:
            rd = Reader(s)
            for batch in range(100):
                ids = range(batch * 20, batch * 20 + 20)
                s.sendall(b"".join(get("/n?i=%d" % i) for i in ids))
                got = [rd.response() for _ in ids]
                eq([(r.status, r.body) for r in got], [(200, b"n=%d" % i) for i in ids],
                   "batch %d" % batch)
            eq(bytes(rd.buf), b"", "nothing more")
        finally:
            s.close()


test_2000_pipelined_keepalive_requests_tls13.timeout = 120
