"""Upgrade (WebSocket-style) requests through up:proxy: the Upgrade and
Connection headers reach the upstream, its 101 reaches the client, then raw
bytes flow both ways (early data included), with half-close."""
import os
import socket
import threading
import time

from gwtest import Gateway, accept_in_threads, check_error, eq, free_port, raw, req_bytes, wait_for


class EchoUpgradeServer:
    """Answers an upgrade request with 101, then echoes upper-cased bytes."""

    def __init__(self):
        self.port = free_port()
        self.sock = socket.socket()
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.sock.bind(("127.0.0.1", self.port))
        self.sock.listen()
        self.sock.settimeout(0.1)  # so that stop() ends the accept loop at once
        self.heads = []
        self.threads = []
        self.stopping = False
        self.acceptor = threading.Thread(target=self._accept, daemon=True)
        self.acceptor.start()

    def _accept(self):
        while not self.stopping:
            try:
                c, _ = self.sock.accept()
            except socket.timeout:
                continue
            except OSError:
                return
            t = threading.Thread(target=self._serve, args=(c,), daemon=True)
            t.start()
            self.threads.append(t)

    def _serve(self, c):
        c.settimeout(10)
        data = b""
        try:
            while b"\r\n\r\n" not in data:
                d = c.recv(4096)
                if not d:
                    return
                data += d
            head, rest = data.split(b"\r\n\r\n", 1)
            self.heads.append(head.decode("latin1"))
            c.sendall(b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: echo\r\n"
                      b"Connection: Upgrade\r\n\r\nready;")
            if rest:
                c.sendall(rest.upper())
            while True:
                d = c.recv(65536)
                if not d:
                    break
                c.sendall(d.upper())
        except OSError:
            pass
        finally:
            c.close()

    def stop(self):
        self.stopping = True
        self.acceptor.join(5)
        self.sock.close()
        for t in self.threads:
            t.join(5)


CONFIG = r'''
local gw = require "gateway"
gw.config { listen = { "127.0.0.1:$PORT" } }
local be = gw.upstream("ws", { servers = { "127.0.0.1:@WS@" } })
gw.get("/ws", function(req) return be:proxy(req) end)
gw.get("/plain", function(req) return be:proxy(req) end)
gw.get("/looked", function(req)
  local res = be:proxy(req)
  res.headers["X-Seen"] = "yes"
  return res
end)
gw.get("/buffered", function(req) return be:get("/buffered", { timeout = 1 }) end)
-- Returned untouched, but not a direct proxy (an option, then a middleware).
gw.get("/withpath", function(req) return be:proxy(req, { path = "/plain" }) end)
gw.get("/mw", function(req, next) return next() end, function(req) return be:proxy(req) end)
'''


def read_until(s, n, timeout=5):
    s.settimeout(timeout)
    got = b""
    while len(got) < n:
        d = s.recv(65536)
        if not d:
            break
        got += d
    return got


def echo_tunnel(port, what="the tunnel"):
    """Through the gateway on `port`, upgrades /ws to the echo protocol of
    EchoUpgradeServer and checks it byte for byte: the 101 head, early data,
    1 MB both ways, then a half-close passed on in both directions."""
    s = socket.create_connection(("127.0.0.1", port))
    try:
        s.sendall(b"GET /ws HTTP/1.1\r\nHost: t\r\nUpgrade: echo\r\n"
                  b"Connection: Upgrade\r\n\r\nearly")
        head = read_until(s, 1)
        while b"\r\n\r\n" not in head:
            more = s.recv(4096)
            assert more, "closed before the 101 head: %r" % head
            head += more
        h, _, rest = head.partition(b"\r\n\r\n")
        lines = h.decode("latin1").split("\r\n")
        eq(lines[0], "HTTP/1.1 101 Switching Protocols", "status line")
        low = [l.lower() for l in lines]
        assert "upgrade: echo" in low, lines
        assert "connection: upgrade" in low, lines
        want = b"ready;EARLY"
        rest += read_until(s, len(want) - len(rest))
        eq(rest, want, "101 trailing bytes and the early data echoed")
        payload = bytes(range(97, 123)) * 40000  # about 1 MB
        s.sendall(payload)
        got = read_until(s, len(payload), timeout=10)
        eq(got, payload.upper(), "1 MB through %s both ways" % what)
        s.shutdown(socket.SHUT_WR)
        s.settimeout(5)
        eq(s.recv(100), b"", "half-close reaches the server, whose close reaches us")
    finally:
        s.close()


def test_upgrade_tunnel_both_ways():
    ws = EchoUpgradeServer()
    try:
        with Gateway(CONFIG.replace("@WS@", str(ws.port))) as g:
            echo_tunnel(g.port)
            up_head = ws.heads[0].lower()
            assert "upgrade: echo" in up_head and "connection: upgrade" in up_head, up_head
            assert "x-forwarded-for: 127.0.0.1" in up_head, up_head
    finally:
        ws.stop()


def test_upgrade_then_normal_requests_still_work():
    ws = EchoUpgradeServer()
    try:
        with Gateway(CONFIG.replace("@WS@", str(ws.port))) as g:
            for _ in range(3):
                s = socket.create_connection(("127.0.0.1", g.port))
                s.sendall(b"GET /ws HTTP/1.1\r\nHost: t\r\nUpgrade: echo\r\nConnection: Upgrade\r\n\r\n")
                got = read_until(s, 40)
                assert got.startswith(b"HTTP/1.1 101"), got
                s.sendall(b"ping")
                deadline = time.monotonic() + 5
                while b"PING" not in got and time.monotonic() < deadline:
                    got += s.recv(100)
                assert b"PING" in got, got
                s.close()
            eq(len(ws.heads), 3, "three tunnels, three upstream connections")
    finally:
        ws.stop()


def test_upstream_101_without_an_upgrade_is_not_passed_on():
    # A 101 is final only for a request that asked to switch; to any other it
    # would leave the client waiting for the real answer.
    ws = EchoUpgradeServer()
    try:
        with Gateway(CONFIG.replace("@WS@", str(ws.port))) as g:
            for path, status in (("/plain", 502), ("/withpath", 502), ("/mw", 502), ("/looked", 500),
                                 ("/buffered", 500)):
                resp = raw(g.port, req_bytes("GET", path, [("Connection", "close")]))
                check_error(resp, status)
            err = g.stderr_text()
            assert "101 for a request that asked for no upgrade" in err, err[-2000:]
            eq(g.get("/plain", {"Upgrade": "echo", "Connection": "Upgrade"})[0], 101, "a real upgrade")
    finally:
        ws.stop()


def test_a_script_cannot_turn_a_plain_answer_into_a_tunnel():
    # A middleware may change a proxied answer's status, but not to 101 when
    # the upstream did not switch: the client's bytes would then go raw to a
    # server still reading HTTP.
    from origin import Origin
    cfg = r'''
local gw = require "gateway"
gw.config { listen = { "127.0.0.1:$PORT" } }
local plain = gw.upstream("plain", { servers = { "127.0.0.1:@A@" } })
gw.get("/fake101", function(req)
  local res = plain:proxy(req)
  res.status = 101
  return res
end)
gw.get("/ok", function(req) return "ok" end)
'''
    with Origin("A") as a, Gateway(cfg.replace("@A@", str(a.port))) as g:
        resp = raw(g.port, req_bytes("GET", "/fake101", [("Upgrade", "echo"), ("Connection", "Upgrade")]))
        check_error(resp, 500)
        assert "101 where the upstream did not switch protocols" in g.stderr_text(), g.stderr_text()[-2000:]
        eq(g.get("/ok")[0], 200, "still serving")


def test_a_client_reset_ends_its_tunnel():
    # A reset is no half-close: the tunnel kept the dead client's socket and
    # its upstream connection until the upstream closed, which one waiting
    # for a close frame never does (two fds per vanished client).
    import struct
    srv = socket.socket()
    srv.bind(("127.0.0.1", 0))
    srv.listen(16)
    upstream_eofs = []

    def serve(s):
        s.recv(65536)
        s.sendall(b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: echo\r\nConnection: Upgrade\r\n\r\n")
        s.settimeout(6)
        try:
            while s.recv(65536):
                pass
            upstream_eofs.append(1)  # the gateway closed its side
            time.sleep(4)  # but does not close its own at once
        except OSError:
            upstream_eofs.append(1)
        s.close()

    accept_in_threads(srv, serve)
    cfg = CONFIG.replace("@WS@", str(srv.getsockname()[1]))
    try:
        with Gateway(cfg) as g:
            eq(g.get("/plain", {"Upgrade": "echo", "Connection": "Upgrade"})[0], 101, "warm up")
            pid = g.worker_pids()[0]
            time.sleep(0.3)
            base = len(os.listdir("/proc/%d/fd" % pid))
            for _ in range(5):
                s = socket.create_connection(("127.0.0.1", g.port))
                s.sendall(b"GET /ws HTTP/1.1\r\nHost: t\r\nUpgrade: echo\r\nConnection: Upgrade\r\n\r\n")
                assert read_until(s, 20).startswith(b"HTTP/1.1 101"), "upgraded"
                s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
                s.close()  # RST
            assert wait_for(lambda: len(os.listdir("/proc/%d/fd" % pid)) <= base, 2), \
                "fds held after the resets: %d more" % (len(os.listdir("/proc/%d/fd" % pid)) - base)
            eq(g.get("/plain")[0], 502, "still serving")
    finally:
        srv.close()
