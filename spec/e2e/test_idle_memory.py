"""Memory held by idle keep-alive connections: a connection between requests
keeps no read buffer (conn.c release_read_buffer), so thousands of idle
clients cost little more than their sockets and, on TLS, OpenSSL's session."""

import os
import socket
import ssl

from gwtest import Gateway, eq, proc_status
from test_tls import CONFIG, certs

N = 400


def _idle_cost_kb(g, pid, connect):
    """Opens N connections, one request each, all kept open; returns the
    worker's RSS growth per connection in kB."""
    conns = []
    try:
        conns.append(connect())  # the first one grows pools shared by all
        before = proc_status(pid, "VmRSS")
        for _ in range(N):
            conns.append(connect())
        return (proc_status(pid, "VmRSS") - before) / N
    finally:
        for s in conns:
            s.close()


def _ask(s):
    s.sendall(b"GET /hello HTTP/1.1\r\nHost: a.test\r\n\r\n")
    got = b""
    while not got.endswith(b"hello"):
        chunk = s.recv(4096)
        assert chunk, "connection closed before the answer"
        got += chunk
    eq(got.split(b"\r\n", 1)[0], b"HTTP/1.1 200 OK", "status line")
    return s


def test_idle_keepalive_connections_hold_no_read_buffer():
    # Measured on this VM, kB of worker RSS per idle connection, with the
    # 16 kB read buffer kept (before) and given back (now):
    #   release build: plain 4.9 -> 0.8, TLS 32.3 -> 22.8 (20.9 since the
    #                  record layer makes its OpenSSL contexts on first need)
    #   make asan:     plain 12.1 -> 1.5, TLS 35.3 -> 34.7 (32.2; ASan's own
    #   overhead on OpenSSL's many small allocations hides the difference;
    #   its bound only catches a gross regression)
    env = None
    limit_plain, limit_tls = 3, 27
    if "ASAN_OPTIONS" in os.environ:  # see test_reload's RSS test
        env = {"ASAN_OPTIONS": os.environ["ASAN_OPTIONS"] + ":quarantine_size_mb=0"}
        limit_plain, limit_tls = 5, 45
    files = dict(certs())
    del files["ca.pem"]
    with Gateway(CONFIG, files=files, env=env) as g:
        [pid] = g.wait_workers(1)
        ctx = ssl.create_default_context()
        ctx.check_hostname = False
        ctx.verify_mode = ssl.CERT_NONE

        def plain():
            return _ask(socket.create_connection(("127.0.0.1", g.port2), timeout=5))

        def tls():
            raw = socket.create_connection(("127.0.0.1", g.port), timeout=5)
            return _ask(ctx.wrap_socket(raw, server_hostname="a.test"))

        per_plain = _idle_cost_kb(g, pid, plain)
        per_tls = _idle_cost_kb(g, pid, tls)
        print("     idle keep-alive connection: plain %.1f kB, TLS %.1f kB" % (per_plain, per_tls))
        assert per_plain < limit_plain, "a plain idle connection holds %.1f kB" % per_plain
        assert per_tls < limit_tls, "a TLS idle connection holds %.1f kB" % per_tls
        # Connections that were idle take buffers back and serve again.
        s = tls()
        eq(_ask(s) is s, True, "a second request on a kept connection")
        s.close()
