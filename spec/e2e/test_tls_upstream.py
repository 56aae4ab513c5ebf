"""https:// upstreams: TLS from the gateway to its servers. The origins are
origin.Origin servers wrapped in python's ssl module (the certificates of
test_tls.certs(): a root CA, an intermediate, leaves for a.test and b.test;
plus a self-signed certificate made here with the openssl CLI). Checked:
verification against tls.ca, the system store by default, wrong CA, wrong
name, self-signed, IP literals, verify = false, SNI as seen by the origin,
bodies both ways (sha256), keep-alive reuse, session resumption (seen by the
origin), a pooled connection the origin closed, active health checks,
Upgrade tunnels, timeouts, and configuration errors at `gateway -t`."""

import atexit
import hashlib
import json
import os
import shutil
import signal
import socket
import ssl
import subprocess
import tempfile
import time

from gwtest import Gateway, eq, http, run_cli, wait_for
from origin import Origin, pattern_sha256
from test_tls import certs
from test_upgrade import EchoUpgradeServer, echo_tunnel, read_until

_selfsigned = None


def selfsigned():
    """(cert, key) PEM text of a self-signed certificate for a.test and
    127.0.0.1 (made once per run with the openssl CLI)."""
    global _selfsigned
    if _selfsigned is None:
        d = tempfile.mkdtemp(prefix="gwtest-ss-")
        try:
            subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes",
                            "-keyout", "ss.key", "-out", "ss.pem", "-days", "2",
                            "-subj", "/CN=a.test",
                            "-addext", "subjectAltName=DNS:a.test,IP:127.0.0.1"],
                           cwd=d, check=True, capture_output=True)
            with open(os.path.join(d, "ss.pem")) as f, open(os.path.join(d, "ss.key")) as k:
                _selfsigned = (f.read(), k.read())
        finally:
            shutil.rmtree(d, ignore_errors=True)
    return _selfsigned


class _Files:
    """Certificate files in a temporary folder, for the origins' contexts."""

    def __init__(self):
        self.dir = tempfile.mkdtemp(prefix="gwtest-upcerts-")
        # Kept for every test of the module; removed when the runner exits.
        atexit.register(shutil.rmtree, self.dir, True)
        c = certs()
        ss, sskey = selfsigned()
        for name, text in (("a.pem", c["a.pem"]), ("a.key", c["a.key"]), ("b.pem", c["b.pem"]),
                           ("b.key", c["b.key"]), ("ss.pem", ss), ("ss.key", sskey)):
            with open(os.path.join(self.dir, name), "w") as f:
                f.write(text)

    def path(self, name):
        return os.path.join(self.dir, name)


_files = None


def files():
    global _files
    if _files is None:
        _files = _Files()
    return _files


def server_ctx(name="a"):
    """A server-side context presenting `name`.pem (a, b: signed by the test CA; ss: self-signed)."""
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.load_cert_chain(files().path(name + ".pem"), files().path(name + ".key"))
    return ctx


def gw_files():
    """Files for the gateway's folder: the test CA, and the self-signed
    certificate (trusted on purpose, or as the wrong CA)."""
    return {"ca.pem": certs()["ca.pem"], "ss.pem": selfsigned()[0]}


def conf(origins, body, listen='"127.0.0.1:$PORT"'):
    """A gateway configuration: @NAME@ in body becomes origins[NAME]'s port."""
    for name, o in origins.items():
        body = body.replace("@%s@" % name, str(getattr(o, "port", o)))
    return 'local gw = require "gateway"\ngw.config { listen = { %s } }\n%s' % (listen, body)


def get_json(port, path, **kw):
    st, h, b = http(port, "GET", path, **kw)
    try:
        return st, json.loads(b)
    except ValueError:
        return st, b


# ---- bodies and methods over TLS ----

BODIES = r'''
local up = gw.upstream("o", { servers = { "https://127.0.0.1:@A@" }, tls = { sni = "a.test", ca = "ca.pem" } })
gw.route({ "GET", "POST", "PUT" }, "/p/*rest", function(req) return up:proxy(req, { path = "/" .. req.params.rest }) end)
gw.post("/post", function(req)
  local res, err = up:post("/echo", req:body(), { headers = { ["x-t"] = "1" } })
  if not res then return nil, err end
  local j = res:json()
  return { json = { status = res.status, sha = j.body_sha256, len = j.body_len, method = j.method,
                    sni = j.sni } }
end)
gw.get("/get", function(req)
  local res, err = up:get("/bytes", { query = { n = 100000 } })
  if not res then return nil, err end
  return { json = { status = res.status, len = #res:body(), sha = gw.crypto.hex(gw.crypto.sha256(res:body())) } }
end)
gw.aggregate("/agg/:id", { one = { upstream = "o", path = "/one/{id}" }, two = { upstream = "o", path = "/two/{id}" } })
'''


def test_proxy_and_requests_over_tls_with_bodies_both_ways():
    ten = 10 * 1024 * 1024
    with Origin("a", tls=server_ctx("a")) as o, Gateway(conf({"A": o}, BODIES), files=gw_files()) as g:
        # Download: 10 MB with Content-Length, then chunked, streamed through.
        for q in ("n=%d" % ten, "n=%d&chunked=1&piece=70000" % ten):
            p = subprocess.run(["curl", "-sS", g.url("/p/bytes?" + q)], capture_output=True, timeout=60)
            eq(p.returncode, 0, "curl " + q + ": " + p.stderr.decode())
            eq((len(p.stdout), hashlib.sha256(p.stdout).hexdigest()), (ten, pattern_sha256(ten)),
               "10 MB answer over TLS (%s)" % q)
        # Upload: 10 MB with Content-Length (streamed), then chunked.
        data = os.urandom(ten)
        want = hashlib.sha256(data).hexdigest()
        path = os.path.join(g.dir, "up.bin")
        with open(path, "wb") as f:
            f.write(data)
        for extra in ([], ["-H", "Transfer-Encoding: chunked"]):
            p = subprocess.run(["curl", "-sS", "--data-binary", "@" + path, *extra,
                                g.url("/p/echo")], capture_output=True, timeout=60)
            eq(p.returncode, 0, "upload %s: %s" % (extra, p.stderr.decode()))
            j = json.loads(p.stdout)
            eq((j["method"], j["body_len"], j["body_sha256"], j["sni"]), ("POST", ten, want, "a.test"),
               "10 MB request body over TLS %s" % extra)
        # up:get / up:post (buffered) and gw.aggregate.
        st, j = get_json(g.port, "/get")
        eq((st, j), (200, {"status": 200, "len": 100000, "sha": pattern_sha256(100000)}), "up:get")
        st, h, b = http(g.port, "POST", "/post", body=b"x" * 70000)
        eq((st, json.loads(b)), (200, {"status": 200, "sha": hashlib.sha256(b"x" * 70000).hexdigest(),
                                       "len": 70000, "method": "POST", "sni": "a.test"}), "up:post")
        st, j = get_json(g.port, "/agg/7")
        eq(st, 200, "aggregate: %r" % (j,))
        eq((j["one"]["path"], j["two"]["path"]), ("/one/7", "/two/7"), "aggregate parts")
        eq(o.tls_failures, 0, "failed handshakes at the origin")
        assert o.handshakes >= 1, o.handshakes


# ---- verification ----

VERIFY = r'''
local function route(name, servers, tls, extra)
  local spec = { servers = servers, tls = tls, retries = 0 }
  for k, v in pairs(extra or {}) do spec[k] = v end
  local up = gw.upstream(name, spec)
  gw.get("/" .. name, function(req)
    local res, err = up:get("/hello")
    if not res then return nil, err end
    return { status = 200, json = { status = res.status, sni = res:json().sni } }
  end)
end
route("good",       { "https://127.0.0.1:@A@" },  { sni = "a.test", ca = "ca.pem" })
route("wrongca",    { "https://127.0.0.1:@A@" },  { sni = "a.test", ca = "ss.pem" })
route("wrongname",  { "https://127.0.0.1:@A@" },  { sni = "b.test", ca = "ca.pem" })
route("noverify",   { "https://127.0.0.1:@A@" },  { sni = "b.test", ca = "ca.pem", verify = false })
route("selfsigned", { "https://127.0.0.1:@SS@" }, { sni = "a.test", ca = "ca.pem" })
route("trustss",    { "https://127.0.0.1:@SS@" }, { ca = "$DIR/ss.pem" })
route("ipcheck",    { "https://127.0.0.1:@A@" },  { ca = "ca.pem" })
route("system",     { "https://127.0.0.1:@A@" },  { sni = "a.test" })
route("sysdefault", { "https://127.0.0.1:@A@" },  nil)
route("passive",    { "https://127.0.0.1:@SS@" }, { sni = "a.test", ca = "ca.pem" },
      { health = { passive = { failures = 2, cooldown = 30 } } })
route("plain",      { "https://127.0.0.1:@P@" },  nil)
route("retried",    { "https://127.0.0.1:@SS@", "https://127.0.0.1:@A@" }, { sni = "a.test", ca = "ca.pem" },
      { retries = 1 })
'''


def test_certificate_verification():
    with Origin("a", tls=server_ctx("a")) as o, Origin("ss", tls=server_ctx("ss")) as ss, \
            Origin("plain") as plain, \
            Gateway(conf({"A": o, "SS": ss, "P": plain}, VERIFY), files=gw_files()) as g:
        # Verified against tls.ca (the chain a.test -> intermediate -> root).
        eq(get_json(g.port, "/good"), (200, {"status": 200, "sni": "a.test"}), "verified")
        # A self-signed certificate trusted on purpose, checked for the IP
        # address it names (and no SNI for an address).
        eq(get_json(g.port, "/trustss"), (200, {"status": 200, "sni": None}), "trusted self-signed, IP SAN")
        # verify = false: a certificate for another name passes.
        eq(get_json(g.port, "/noverify"), (200, {"status": 200, "sni": "b.test"}), "verify = false")
        refused = (
            ("wrongca", "unable to get local issuer certificate"),
            ("wrongname", "hostname mismatch"),
            ("selfsigned", "self-signed certificate"),
            ("ipcheck", "IP address mismatch"),
            # No `ca`: the system's store, which does not know the test CA.
            ("system", "unable to get local issuer certificate"),
            ("sysdefault", "unable to get local issuer certificate"),
        )
        for name, why in refused:
            st, j = get_json(g.port, "/" + name)
            eq(st, 502, name + ": " + repr(j))
            assert isinstance(j, dict) and "upstream certificate verify failed" in j.get("error", ""), (name, j)
            port = ss.port if name == "selfsigned" else o.port
            line = "upstream %s: server https://127.0.0.1:%d: TLS certificate verify failed: %s" % (
                name, port, why)
            assert g.wait_stderr(line), "log line %r not in:\n%s" % (line, g.stderr_text()[-3000:])
        # A plain HTTP server behind https://: the handshake fails, with OpenSSL's reason.
        st, j = get_json(g.port, "/plain")
        eq((st, j.get("error") if isinstance(j, dict) else j), (502, "upstream TLS handshake failed"), "plain")
        assert g.wait_stderr("upstream plain: server https://127.0.0.1:%d: TLS handshake failed: " % plain.port)
        # A refused certificate is retried on another server, as a connect error is.
        for i in range(4):
            eq(get_json(g.port, "/retried"), (200, {"status": 200, "sni": "a.test"}), "retried %d" % i)
        assert g.wait_stderr("upstream retried: server https://127.0.0.1:%d: TLS certificate verify failed"
                             % ss.port)
        # A refused certificate counts for passive health like a connect error.
        for _ in range(2):
            eq(get_json(g.port, "/passive")[0], 502, "refused certificate")
        assert g.wait_stderr("upstream passive: server https://127.0.0.1:%d marked down" % ss.port)
        st, j = get_json(g.port, "/passive")
        eq((st, j.get("error") if isinstance(j, dict) else j), (503, "no healthy server"), "after failures")


# ---- SNI ----

SNI = r'''
local function route(name, server, tls)
  local up = gw.upstream(name, { servers = { server }, tls = tls })
  gw.get("/" .. name, function(req) return up:proxy(req, { path = "/x" }) end)
end
route("byname",  "https://localhost:@A@", { verify = false })
route("byip",    "https://127.0.0.1:@A@", { verify = false })
route("given",   "https://localhost:@A@", { sni = "b.test", verify = false })
route("checked", "https://localhost:@B@", { sni = "b.test", ca = "ca.pem" })
'''


def test_sni_sent_and_ip_literals():
    first = socket.getaddrinfo("localhost", 1, socket.AF_UNSPEC, socket.SOCK_STREAM)[0][4][0]
    assert first == "127.0.0.1", "this test needs localhost to resolve to 127.0.0.1 first, not %s" % first
    with Origin("a", tls=server_ctx("a")) as o, Origin("b", tls=server_ctx("b")) as b, \
            Gateway(conf({"A": o, "B": b}, SNI), files=gw_files()) as g:
        for path, want in (("/byname", "localhost"), ("/byip", None), ("/given", "b.test"),
                           ("/checked", "b.test")):
            # The name resolves in the worker, off the loop: the first
            # request may find it not resolved yet.
            assert wait_for(lambda: get_json(g.port, path)[0] == 200, 5), path
            st, j = get_json(g.port, path)
            eq((st, j.get("sni") if isinstance(j, dict) else j), (200, want), "SNI for " + path)


# ---- keep-alive and session resumption ----

POOL = r'''
local pooled = gw.upstream("pooled", { servers = { "https://127.0.0.1:@A@" }, tls = { sni = "a.test", ca = "ca.pem" } })
local fresh = gw.upstream("fresh", { servers = { "https://127.0.0.1:@B@" }, tls = { sni = "a.test", ca = "ca.pem" },
                                     keepalive = { idle = 0 } })
gw.get("/pooled", function(req) return pooled:proxy(req, { path = "/x" }) end)
gw.get("/fresh", function(req) return fresh:proxy(req, { path = "/x" }) end)
'''


def test_keepalive_reuse_and_session_resumption():
    with Origin("a", tls=server_ctx("a")) as o, Origin("b", tls=server_ctx("a")) as fo, \
            Gateway(conf({"A": o, "B": fo}, POOL), files=gw_files()) as g:
        for i in range(6):
            st, j = get_json(g.port, "/pooled")
            eq((st, j["conn"], j["seq"]), (200, 1, i + 1), "request %d on the pooled TLS connection" % i)
        eq((o.accepts, o.handshakes, o.requests), (1, 1, 6), "one connection, one handshake, six requests")
        # Without pooling every request is a new connection: after the first,
        # each resumes the session the origin handed out before.
        resumed = []
        for i in range(5):
            st, j = get_json(g.port, "/fresh")
            eq((st, j["conn"], j["seq"]), (200, i + 1, 1), "request %d on a new connection" % i)
            resumed.append(j["resumed"])
        eq(resumed, [False, True, True, True, True], "resumed handshakes, as the origin saw them")
        eq((fo.handshakes, fo.resumed), (5, 4), "origin's handshake counts")


CLOSED = r'''
local up = gw.upstream("o", { servers = { "https://127.0.0.1:@A@" }, tls = { sni = "a.test", ca = "ca.pem" }, retries = 0 })
local idle = gw.upstream("i", { servers = { "https://127.0.0.1:@I@" }, tls = { sni = "a.test", ca = "ca.pem" }, retries = 0 })
gw.route({ "GET", "POST" }, "/o", function(req) return up:proxy(req, { path = "/x" }) end)
gw.get("/i", function(req) return idle:proxy(req, { path = "/x" }) end)
'''


def test_pooled_tls_connection_closed_by_origin():
    with Origin("a", tls=server_ctx("a"), drop_reused=True) as o, \
            Origin("i", tls=server_ctx("a"), idle_close=True) as io, \
            Gateway(conf({"A": o, "I": io}, CLOSED), files=gw_files()) as g:
        st, j = get_json(g.port, "/o")
        eq((st, j["conn"], j["seq"]), (200, 1, 1), "first")
        # The origin reads the next request on the pooled connection and
        # closes it unanswered: a GET is sent again on a new connection
        # (retries = 0: this is not a retry).
        st, j = get_json(g.port, "/o")
        eq((st, j["conn"], j["seq"]), (200, 2, 1), "GET sent again on a fresh TLS connection")
        eq([(e["conn"], e["seq"]) for e in o.log], [(1, 1), (1, 2), (2, 1)], "what the origin read")
        # A POST is not sent twice.
        st, h, b = http(g.port, "POST", "/o", body=b"once")
        eq(st, 502, "POST on a closed pooled connection: %r" % b)
        eq([(e["method"], e["conn"], e["seq"]) for e in o.log[3:]], [("POST", 2, 2)], "the POST, once")
        # An origin that closes each connection after answering: the pooled
        # connection leaves the pool when the close arrives.
        for i in range(3):
            st, j = get_json(g.port, "/i")
            eq((st, j["conn"], j["seq"]), (200, i + 1, 1), "after the origin closed (%d)" % i)


# ---- active health checks ----

HEALTH = r'''
local up = gw.upstream("h", { servers = { "https://127.0.0.1:@A@", "https://127.0.0.1:@SS@" },
                              tls = { sni = "a.test", ca = "ca.pem" },
                              health = { active = { path = "/status/200", interval = 0.2, unhealthy = 2 } } })
gw.get("/h", function(req) return up:proxy(req, { path = "/x" }) end)
'''


def test_active_health_checks_over_https():
    with Origin("a", tls=server_ctx("a")) as o, Origin("ss", tls=server_ctx("ss")) as ss, \
            Gateway(conf({"A": o, "SS": ss}, HEALTH), files=gw_files()) as g:
        line = "upstream h: server https://127.0.0.1:%d failed 2 health checks: out" % ss.port
        assert g.wait_stderr(line, timeout=5), g.stderr_text()[-3000:]
        assert wait_for(lambda: any(e["path"] == "/status/200" and
                                    e["headers"].get("user-agent") == "gateway-health-check"
                                    for e in o.log), 5), "checks over TLS reached the good server"
        for _ in range(4):
            st, j = get_json(g.port, "/h")
            eq((st, j["origin"]), (200, "a"), "only the verified server gets requests")
        eq(ss.requests, 0, "the self-signed server never got a request")


# ---- Upgrade tunnels ----

class TlsEchoUpgradeServer(EchoUpgradeServer):
    """test_upgrade's EchoUpgradeServer, over TLS."""

    def __init__(self, ctx):
        self.ctx = ctx
        super().__init__()

    def _serve(self, c):
        c.settimeout(10)
        try:
            c = self.ctx.wrap_socket(c, server_side=True)
        except OSError:
            c.close()
            return
        super()._serve(c)


UPGRADE = r'''
local be = gw.upstream("ws", { servers = { "https://127.0.0.1:@WS@" }, tls = { sni = "a.test", ca = "ca.pem" } })
gw.get("/ws", function(req) return be:proxy(req) end)
'''


def test_upgrade_tunnel_over_tls():
    ws = TlsEchoUpgradeServer(server_ctx("a"))
    try:
        with Gateway(conf({"WS": ws}, UPGRADE), files=gw_files()) as g:
            echo_tunnel(g.port, "the TLS tunnel")
        eq(len(ws.heads), 1, "one tunnel")
    finally:
        ws.stop()


# ---- timeouts ----

TIMEOUTS = r'''
local slow = gw.upstream("slow", { servers = { "https://127.0.0.1:@A@" }, tls = { sni = "a.test", ca = "ca.pem" },
                                   timeouts = { read = 0.5 }, retries = 0 })
local mute = gw.upstream("mute", { servers = { "https://127.0.0.1:@M@" }, timeouts = { connect = 0.5 }, retries = 0 })
gw.get("/slow", function(req) return slow:proxy(req, { path = "/slow", query = { ms = 2000 } }) end)
gw.get("/fast", function(req) return slow:proxy(req, { path = "/x" }) end)
gw.get("/mute", function(req)
  local res, err = mute:get("/")
  if not res then return { status = 504, body = err } end
  return "?"
end)
'''


def test_timeouts_over_tls():
    # A server whose kernel accepts the TCP connection (the backlog) but
    # that never answers the ClientHello: the handshake times out.
    mute = socket.socket()
    mute.bind(("127.0.0.1", 0))
    mute.listen(8)
    try:
        with Origin("a", tls=server_ctx("a")) as o, \
                Gateway(conf({"A": o, "M": mute.getsockname()[1]}, TIMEOUTS), files=gw_files()) as g:
            t0 = time.monotonic()
            st, h, b = http(g.port, "GET", "/slow")
            took = time.monotonic() - t0
            eq(st, 504, "read timeout over TLS: %r" % b)
            assert took < 1.8, took
            eq(http(g.port, "GET", "/fast")[0], 200, "the next request is served")
            t0 = time.monotonic()
            st, h, b = http(g.port, "GET", "/mute")
            took = time.monotonic() - t0
            eq((st, b), (504, b"TLS handshake timed out"), "handshake timeout")
            assert 0.4 < took < 1.8, took
    finally:
        mute.close()


# ---- configuration ----

def _check(spec, files=None):
    cfg = ('local gw = require "gateway"\n'
           'gw.config { listen = { "127.0.0.1:$PORT" } }\n'
           'gw.upstream("u", %s)\n' % spec)
    allf = dict(files or {})
    allf["gateway.lua"] = cfg
    return run_cli(["-t", "-c", "$DIR/gateway.lua"], allf)


def test_config_errors_at_check_time():
    good = {"ca.pem": certs()["ca.pem"], "notpem.pem": "hello\n"}
    for spec in ('{ servers = { "https://127.0.0.1:8443" } }',
                 '{ servers = { "https://example.test" }, tls = { ca = "ca.pem", sni = "a.test" } }',
                 '{ servers = { "https://127.0.0.1:8443" }, tls = { verify = false } }'):
        rc, out, err, _ = _check(spec, good)
        eq(rc, 0, spec + ": " + err + out)
    https = '{ servers = { "https://127.0.0.1:8443" }, '
    cases = (
        (https + 'tls = { ca = "missing.pem" } }',
         "gw.upstream u: tls: cannot read ca $DIR/missing.pem: No such file or directory"),
        (https + 'tls = { ca = "notpem.pem" } }', "gw.upstream u: tls: bad ca $DIR/notpem.pem: "),
        ('{ servers = { "127.0.0.1:8443" }, tls = { ca = "missing.pem" } }', "cannot read ca"),
        (https + 'tls = "yes" }', "gw.upstream: tls must be a table"),
        (https + 'tls = { verify = "no" } }', "gw.upstream: tls.verify must be true or false"),
        (https + 'tls = { sni = 5 } }', "gw.upstream: tls.sni must be a host name"),
        (https + 'tls = { sni = "a b" } }', "gw.upstream: tls.sni must be a host name"),
        (https + 'tls = { ca = 1 } }', "gw.upstream: tls.ca must be a file path"),
        (https + 'tls = { ciphers = "x" } }', "gw.upstream: tls: unknown option 'ciphers'"),
        ('{ servers = { "https://127.0.0.1:0" } }', "bad port"),
    )
    for spec, want in cases:
        rc, out, err, d = _check(spec, good)
        want = want.replace("$DIR", d)
        eq(rc, 1, spec)
        text = err + out
        assert want in text, "%s: want %r in %r" % (spec, want, text)
        assert "gateway.lua:3:" in text, "%s: file:line missing: %r" % (spec, text)


# ---- reloads ----

RELOAD = r'''
local up = gw.upstream("r", { servers = { "https://127.0.0.1:@A@" }, tls = %s })
gw.get("/r", function(req) return up:proxy(req, { path = "/x" }) end)
gw.get("/gen", function(req) return "%s" end)
'''


def test_reload_with_other_tls_settings_drops_pooled_connections():
    with Origin("a", tls=server_ctx("a")) as o:
        def config(tls, tag):
            return conf({"A": o}, RELOAD % (tls, tag))

        def reload_to(g, tls, tag, hup=False):
            text = g._substitute(config(tls, tag))
            with open(g.config_path, "w") as f:
                f.write(text)
            if hup:
                g.send_signal(signal.SIGHUP)
            assert wait_for(lambda: http(g.port, "GET", "/gen")[2] == tag.encode(), 5), \
                "no reload to %s:\n%s" % (tag, g.stderr_text()[-2000:])

        with Gateway(config('{ sni = "b.test", verify = false }', "v1"), files=gw_files()) as g:
            st, j = get_json(g.port, "/r")
            eq((st, j["conn"]), (200, 1), "verify = false: a certificate for a.test is taken for b.test")
            # Verification on: the pooled connection, made without it, is not reused.
            reload_to(g, '{ sni = "b.test", ca = "ca.pem" }', "v2")
            st, j = get_json(g.port, "/r")
            eq((st, j.get("error") if isinstance(j, dict) else j), (502, "upstream certificate verify failed"),
               "after the reload")
            eq(o.accepts, 2, "a new connection was made")
            reload_to(g, '{ sni = "a.test", ca = "ca.pem" }', "v3")
            eq(get_json(g.port, "/r")[1]["conn"], 3, "verified, on a new connection")
            eq(get_json(g.port, "/r")[1]["conn"], 3, "then pooled")
            # Same settings, same file: the pool stays.
            reload_to(g, '{ sni = "a.test", ca = "ca.pem" }', "v4", hup=True)
            eq(get_json(g.port, "/r")[1]["conn"], 3, "pooled across a reload that changed nothing")
            # Same settings, but the CA file now holds another certificate.
            with open(os.path.join(g.dir, "ca.pem"), "w") as f:
                f.write(selfsigned()[0])
            reload_to(g, '{ sni = "a.test", ca = "ca.pem" }', "v5", hup=True)
            st, j = get_json(g.port, "/r")
            eq(st, 502, "the new CA file is used: %r" % (j,))
            assert g.wait_stderr("upstream r: server https://127.0.0.1:%d: TLS certificate verify failed: "
                                 "unable to get local issuer certificate" % o.port)


class _CloseNotifyServer:
    """An https server that answers each connection with a close-delimited
    response, its last data record and close_notify in one write, then
    waits for the peer's close_notify (a bidirectional shutdown) for up to
    8 s before closing TCP."""

    def __init__(self, length=False):
        import threading
        self.length = length  # a Content-Length answer, as if the connection could be reused
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(8)
        self.port = self.sock.getsockname()[1]
        self.ctx = server_ctx("a")
        self.stopping = False
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self):
        while not self.stopping:
            try:
                s, _ = self.sock.accept()
            except OSError:
                return
            try:
                self._serve(s)
            except (OSError, EOFError, ssl.SSLError):
                pass
            finally:
                s.close()

    def _serve(self, s):
        inc, out = ssl.MemoryBIO(), ssl.MemoryBIO()
        obj = self.ctx.wrap_bio(inc, out, server_side=True)
        s.settimeout(8)

        def feed():
            d = s.recv(65536)
            if not d:
                raise EOFError
            inc.write(d)
        while True:
            try:
                obj.do_handshake()
                s.sendall(out.read())
                break
            except ssl.SSLWantReadError:
                s.sendall(out.read())
                feed()
        got = b""
        while b"\r\n\r\n" not in got:
            try:
                got += obj.read(65536)
            except ssl.SSLWantReadError:
                feed()
        length = b"Content-Length: 8\r\n" if self.length else b""
        obj.write(b'HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n' + length + b'\r\n{"a": 1}')
        try:
            obj.unwrap()
        except ssl.SSLWantReadError:
            pass
        s.sendall(out.read())
        while s.recv(65536):  # until the gateway closes (or 8 s): nothing more is answered
            pass

    def close(self):
        self.stopping = True
        self.sock.close()


CLOSE_NOTIFY = r'''
local up = gw.upstream("up", { servers = { "https://127.0.0.1:@A@" }, tls = { sni = "a.test", ca = "ca.pem" },
                               timeouts = { read = 3 }, retries = 0 })
gw.get("/proxied", function(req) return up:proxy(req, { path = "/x" }) end)
gw.get("/buffered", function(req)
  local r, e = up:get("/x")
  if not r then return nil, e end
  return { status = r.status, body = r:body() }
end)
'''


def test_a_close_notify_in_the_last_read_ends_the_body():
    # The data and the end came in one read: TLS returned the data and kept
    # the end, and the server waited for our close_notify. The answer was
    # cut (proxied) or a 504 (buffered) after timeouts.read.
    # With a Content-Length the answer looks reusable: the connection must
    # still not go back to the pool, where the next request waited for an
    # answer that never came (504 after timeouts.read).
    for length in (False, True):
        srv = _CloseNotifyServer(length)
        try:
            _close_notify_requests(srv)
        finally:
            srv.close()


def _close_notify_requests(srv):
    with Gateway(conf({"A": srv}, CLOSE_NOTIFY), files=gw_files()) as g:
        for path in ("/proxied", "/buffered", "/proxied", "/buffered"):
            t0 = time.monotonic()
            st, h, b = http(g.port, "GET", path)
            took = time.monotonic() - t0
            eq((st, b), (200, b'{"a": 1}'), path)
            assert took < 1.5, "%s took %.2fs" % (path, took)
