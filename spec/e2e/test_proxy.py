"""up:proxy against a real origin (spec/e2e/origin.py): what is forwarded
(method, target, headers, body, X-Forwarded-*), what is not (hop-by-hop),
script edits and overrides, middleware on proxied responses, large bodies
both ways, keep-alive pooling and stale connections, errors (502/504),
retries, and a backend killed under load."""

import hashlib
import http.client as httpclient
import json
import threading
import time

from gwtest import Conn, Gateway, check_error, eq, http, raw, req_bytes
from origin import Client, Origin, dead_port, fill, pattern, pattern_sha256

MB = 1024 * 1024

PROXY = r'''
local gw = require "gateway"
gw.config { listen = { "127.0.0.1:$PORT" }, limits = { body_bytes = 16 * 1024 * 1024 } }
local up = gw.upstream("o", { servers = { "127.0.0.1:@A@" } })

gw.use("/mw", function(req, next)
  local res = next()
  res.status = 201
  res.headers["X-Mw"] = "yes"
  res.headers["x-origin"] = nil
  return res
end)

-- A CRLF in a header set on a proxied answer: refused (500), never split
-- into lines of the script's caller's making (?how=set: res:set_header on
-- unread headers; ?how=table: res.headers after reading them).
gw.get("/splitting", function(req)
  local res = up:proxy(req, { path = "/echo/split" })
  local v = "hi\r\nSet-Cookie: session=attacker"
  if req.query.how == "set" then res:set_header("X-Note", v)
  else res.headers["X-Note"] = v end
  return res
end)

gw.route("*", "/p/*rest", function(req) return up:proxy(req) end)
-- Script edits of X-Forwarded-* (?xff=, ?proto=, ?host=) and of Connection (?conn=).
gw.get("/fwd", function(req)
  local q = req.query
  if q.xff then req.headers["X-Forwarded-For"] = q.xff end
  if q.proto then req.headers["X-Forwarded-Proto"] = q.proto ~= "-" and q.proto or nil end
  if q.host then req.headers["X-Forwarded-Host"] = q.host end
  if q.conn then req.headers["Connection"] = q.conn ~= "-" and q.conn or nil end
  return up:proxy(req, { path = "/echo/fwd" })
end)
gw.route("*", "/edit/*rest", function(req)
  req.headers["X-Added"] = "added-by-script"
  req.headers["X-Replace"] = "replaced"
  req.headers["X-Remove"] = nil
  return up:proxy(req)
end)
gw.get("/override", function(req)
  return up:proxy(req, { path = "/echo/override", query = { q = "new" },
                         headers = { ["X-Over"] = "opt", ["User-Agent"] = "gw-override" } })
end)
gw.get("/override-host", function(req)
  return up:proxy(req, { headers = { Host = "override.example" } })
end)
gw.get("/pathonly", function(req) return up:proxy(req, { path = "/echo/po" }) end)
gw.get("/mw/*rest", function(req) return up:proxy(req, { path = "/echo/mw" }) end)
gw.get("/status/:n", function(req) return up:proxy(req) end)
'''


def echo_of(body):
    try:
        return json.loads(body)
    except ValueError:
        raise AssertionError("not an echo document: %r" % body[:300])


def hvals(doc, name):
    return [v for k, v in doc["headers"] if k.lower() == name.lower()]


def hnames(doc):
    return {k.lower() for k, _ in doc["headers"]}


# ---------------------------------------------------------------------------
# 2. what is forwarded
# ---------------------------------------------------------------------------

def test_proxy_forwards_request():
    body = b'{"k": "v", "n": [1, 2, 3]}'
    with Origin("A") as a, Gateway(fill(PROXY, A=a)) as g:
        with Conn(g.port) as c:
            c.send(req_bytes("POST", "/p/a/b%20c?x=1&y=%20z&x=2", [
                ("Content-Type", "application/json"),
                ("Content-Length", str(len(body))),
                ("X-Custom", "custom-value"),
                ("Accept", "*/*"),
                ("X-Dup", "a"), ("X-Dup", "b"),
            ], body, host="client.example:8080"))
            r = c.read_response()
        eq(r.status, 200, "proxied POST status")
        eq(r.headers.get("x-origin"), "A", "origin header passed back")
        d = echo_of(r.body)
        eq((d["method"], d["target"]), ("POST", "/p/a/b%20c?x=1&y=%20z&x=2"), "method and raw target")
        eq(d["body"], body.decode(), "body")
        eq(d["body_sha256"], hashlib.sha256(body).hexdigest(), "body sha256")
        eq(hvals(d, "content-length"), [str(len(body))], "content-length")
        eq(hvals(d, "content-type"), ["application/json"], "content-type")
        eq(hvals(d, "x-custom"), ["custom-value"], "custom header")
        eq(hvals(d, "accept"), ["*/*"], "accept")
        eq(", ".join(hvals(d, "x-dup")), "a, b", "a repeated header keeps both values in order")
        eq(hvals(d, "host"), ["client.example:8080"], "client Host kept")
        eq(hvals(d, "x-forwarded-for"), ["127.0.0.1"], "X-Forwarded-For")
        eq(hvals(d, "x-forwarded-proto"), ["http"], "X-Forwarded-Proto")
        eq(hvals(d, "x-forwarded-host"), ["client.example:8080"], "X-Forwarded-Host")


def test_proxy_appends_to_x_forwarded_for():
    with Origin("A") as a, Gateway(fill(PROXY, A=a)) as g:
        st, _, body = http(g.port, "GET", "/p/xff", {"X-Forwarded-For": "10.1.2.3, 10.4.5.6"})
        eq(st, 200, "status")
        eq(hvals(echo_of(body), "x-forwarded-for"), ["10.1.2.3, 10.4.5.6, 127.0.0.1"],
           "client chain plus the client")


def test_proxy_sends_each_x_forwarded_header_once():
    # A client's X-Forwarded-Proto/Host went out before the gateway's own (a
    # plain-HTTP client's "https" first, where frameworks read), and a
    # script's X-Forwarded-For next to the gateway's.
    with Origin("A") as a, Gateway(fill(PROXY, A=a)) as g:
        spoof = {"X-Forwarded-Proto": "https", "X-Forwarded-Host": "evil.example"}
        d = echo_of(http(g.port, "GET", "/fwd", spoof)[2])
        eq((hvals(d, "x-forwarded-proto"), hvals(d, "x-forwarded-host")),
           (["http"], ["127.0.0.1:%d" % g.port]), "the gateway's own, not the client's")
        d = echo_of(http(g.port, "GET", "/fwd?xff=10.0.0.1&proto=https&host=api.example", spoof)[2])
        eq((hvals(d, "x-forwarded-for"), hvals(d, "x-forwarded-proto"), hvals(d, "x-forwarded-host")),
           (["10.0.0.1, 127.0.0.1"], ["https"], ["api.example"]), "a script's values, once each")
        d = echo_of(http(g.port, "GET", "/fwd?proto=-", spoof)[2])
        eq(hvals(d, "x-forwarded-proto"), [], "a script's removal")


def test_a_script_editing_connection_does_not_forward_what_the_client_named():
    with Origin("A") as a, Gateway(fill(PROXY, A=a)) as g:
        for q in ("conn=-", "conn=close"):
            d = echo_of(http(g.port, "GET", "/fwd?" + q, {"Connection": "x-bar", "X-Bar": "hop"})[2])
            eq(hvals(d, "x-bar"), [], "X-Bar after %s" % q)


def test_proxy_drops_hop_by_hop_request_headers():
    with Origin("A") as a, Gateway(fill(PROXY, A=a)) as g:
        with Conn(g.port) as c:
            c.send(req_bytes("GET", "/p/hop", [
                ("Connection", "keep-alive, X-Foo"),
                ("X-Foo", "named-in-connection"),
                ("Keep-Alive", "timeout=5"),
                ("TE", "trailers"),
                ("Trailer", "X-Checksum"),
                ("Proxy-Authorization", "Basic Zm9vOmJhcg=="),
                ("Proxy-Connection", "keep-alive"),
                ("X-Kept", "kept"),
            ]))
            r = c.read_response()
        eq(r.status, 200, "status")
        d = echo_of(r.body)
        eq(hvals(d, "x-kept"), ["kept"], "ordinary header kept")
        for name in ("keep-alive", "te", "trailer", "proxy-authorization", "proxy-connection"):
            eq(hvals(d, name), [], "hop-by-hop %s forwarded" % name)
        for v in hvals(d, "connection"):
            assert "x-foo" not in v.lower(), "client's Connection header forwarded: %r" % v
        eq(hvals(d, "x-foo"), [], "header named in Connection (X-Foo) forwarded")


def test_proxy_connection_cannot_strip_script_headers_or_host():
    # A client naming headers in Connection drops its own values only: the
    # headers a script wrote still go upstream with the script's values, and
    # the client's Host is kept (not replaced by the upstream's address).
    named = "X-Added, X-Replace, X-Remove, X-Other, Host, X-Forwarded-For"
    with Origin("A") as a, Gateway(fill(PROXY, A=a)) as g:
        st, _, body = http(g.port, "GET", "/edit/x", {
            "Host": "client.example", "Connection": named, "X-Added": "mallory",
            "X-Replace": "original", "X-Remove": "gone", "X-Other": "hop",
            "X-Forwarded-For": "10.9.9.9"})
        eq(st, 200, "status")
        d = echo_of(body)
        eq(hvals(d, "x-added"), ["added-by-script"], "header the script added")
        eq(hvals(d, "x-replace"), ["replaced"], "header the script replaced")
        eq(hvals(d, "x-remove"), [], "header the script removed")
        eq(hvals(d, "x-other"), [], "client header named in Connection")
        eq(hvals(d, "host"), ["client.example"], "Host named in Connection")
        eq(hvals(d, "x-forwarded-host"), ["client.example"], "X-Forwarded-Host")
        eq(hvals(d, "x-forwarded-for"), ["127.0.0.1"], "the client's own chain dropped, the client added")
        st, _, body = http(g.port, "GET", "/p/host", {"Host": "client.example", "Connection": "host"})
        eq((st, hvals(echo_of(body), "host")), (200, ["client.example"]), "Host on a plain proxy")


def test_proxy_drops_hop_by_hop_response_headers():
    with Origin("A") as a, Gateway(fill(PROXY, A=a)) as g:
        q = "rh=Connection:X-Resp-Hop&rh=X-Resp-Hop:secret&rh=Keep-Alive:timeout%3D7&rh=X-Resp-Kept:yes"
        st, h, body = http(g.port, "GET", "/p/resp-hop?" + q)
        eq(st, 200, "status")
        eq(h.get("x-resp-kept"), "yes", "ordinary response header kept")
        eq(h.get("keep-alive"), None, "upstream Keep-Alive passed to the client")
        eq(h.get("x-resp-hop"), None, "response header named in the upstream's Connection passed on")
        assert "x-resp-hop" not in (h.get("connection") or "").lower(), h


def test_proxy_script_edits_and_overrides():
    with Origin("A") as a, Gateway(fill(PROXY, A=a)) as g:
        st, _, body = http(g.port, "GET", "/edit/x?k=1",
                           {"X-Replace": "original", "X-Remove": "gone", "X-Keep": "k"})
        eq(st, 200, "status")
        d = echo_of(body)
        eq(d["target"], "/edit/x?k=1", "target")
        eq(hvals(d, "x-added"), ["added-by-script"], "header added by the script")
        eq(hvals(d, "x-replace"), ["replaced"], "header replaced by the script")
        eq(hvals(d, "x-remove"), [], "header removed by the script")
        eq(hvals(d, "x-keep"), ["k"], "untouched header")

        st, _, body = http(g.port, "GET", "/override?old=1",
                           {"X-Over": "client", "User-Agent": "client-ua"})
        eq(st, 200, "status")
        d = echo_of(body)
        eq(d["target"], "/echo/override?q=new", "opts.path + opts.query")
        eq(hvals(d, "x-over"), ["opt"], "opts.headers wins over the client's header")
        eq(hvals(d, "user-agent"), ["gw-override"], "opts.headers User-Agent")

        st, _, body = http(g.port, "GET", "/pathonly?keep=1&x=%2F")
        eq(echo_of(body)["target"], "/echo/po?keep=1&x=%2F", "opts.path keeps the client's query")

        st, _, body = http(g.port, "GET", "/override-host", {"Host": "client.example"})
        d = echo_of(body)
        eq(hvals(d, "host"), ["override.example"], "opts.headers Host")
        eq(hvals(d, "x-forwarded-host"), ["client.example"], "X-Forwarded-Host is the client's Host")


def test_proxy_upstream_interim_answers_are_skipped():
    # 1xx answers before the upstream's final one are interim (RFC 9110 15.2):
    # never passed on as the answer, whatever path the answer takes.
    cfg = PROXY + r'''
gw.get("/buffered", function(req) return up:get("/echo/b?interim=103&interim=100") end)
gw.get("/looked/*rest", function(req)
  local res = up:proxy(req)
  res.headers["X-Seen-Status"] = tostring(res.status)
  return res
end)
'''
    with Origin("A") as a, Gateway(fill(cfg, A=a)) as g:
        for path in ("/p/x?interim=103", "/p/x?interim=100&interim=103", "/looked/x?interim=102",
                     "/buffered"):
            with Conn(g.port) as c:
                c.send(req_bytes("GET", path) + req_bytes("GET", "/p/next"))
                r = c.read_response()
                eq(r.status, 200, "%s: the first answer on the wire" % path)
                eq(r.headers.get("link"), None, "%s: the interim answer's header" % path)
                eq(echo_of(r.body)["path"], "/echo/b" if path == "/buffered" else path.split("?")[0],
                   "%s: its own answer" % path)
                if path.startswith("/looked"):
                    eq(r.headers.get("x-seen-status"), "200", "the status a script sees")
                r = c.read_response()
                eq((r.status, echo_of(r.body)["path"]), (200, "/p/next"), "%s: the next answer" % path)


def test_proxy_middleware_changes_response():
    with Origin("A") as a, Gateway(fill(PROXY, A=a)) as g:
        st, h, body = http(g.port, "GET", "/mw/x?rh=X-Up:1")
        eq(st, 201, "status set by middleware on a proxied response")
        eq(h.get("x-mw"), "yes", "header added by middleware")
        eq(h.get("x-origin"), None, "header removed by middleware")
        eq(h.get("x-up"), "1", "upstream header kept")
        d = echo_of(body)
        eq(d["path"], "/echo/mw", "body streamed through")
        eq(h.get("content-length"), str(len(body)), "content-length of the proxied body")


def test_proxy_head_204_304_keep_connection_usable():
    with Origin("A") as a, Gateway(fill(PROXY, A=a)) as g:
        with Conn(g.port) as c:
            c.send(req_bytes("HEAD", "/p/bytes?n=100"))
            r = c.read_response(head=True)
            eq(r.status, 200, "HEAD status")
            eq(r.headers.get("content-length"), "100", "HEAD content-length from upstream")
            c.send(req_bytes("GET", "/status/204"))
            r = c.read_response()
            eq((r.status, r.body), (204, b""), "204 through the proxy")
            c.send(req_bytes("GET", "/status/304"))
            r = c.read_response()
            eq((r.status, r.body), (304, b""), "304 through the proxy")
            c.send(req_bytes("GET", "/p/after"))
            r = c.read_response()
            eq(r.status, 200, "request after HEAD/204/304 on the same connection")
            eq(echo_of(r.body)["path"], "/p/after", "its body")
            eq(c.buf, b"", "stray bytes after the responses")


# ---------------------------------------------------------------------------
# 3. large bodies
# ---------------------------------------------------------------------------

def test_proxy_10mb_upload_and_download():
    n = 10 * MB
    with Origin("A") as a, Gateway(fill(PROXY, A=a)) as g:
        up = pattern(n)
        t0 = time.monotonic()
        st, _, body = http(g.port, "POST", "/p/upload", {"Content-Type": "application/octet-stream"},
                           up, timeout=30)
        eq(st, 200, "10 MB upload status")
        d = echo_of(body)
        eq((d["body_len"], d["body_sha256"]), (n, pattern_sha256(n)), "10 MB upload length/sha256")

        st, h, body = http(g.port, "GET", "/p/bytes?n=%d" % n, timeout=30)
        eq(st, 200, "10 MB download status")
        eq(h.get("content-length"), str(n), "content-length kept")
        eq((len(body), hashlib.sha256(body).hexdigest()), (n, pattern_sha256(n)),
           "10 MB download length/sha256")

        st, h, body = http(g.port, "GET", "/p/bytes?n=%d&chunked=1&piece=7000" % n, timeout=30)
        eq(st, 200, "chunked 10 MB download status")
        eq(h.get("transfer-encoding"), "chunked", "chunked upstream body sent chunked to an HTTP/1.1 client")
        eq((len(body), hashlib.sha256(body).hexdigest()), (n, pattern_sha256(n)),
           "chunked 10 MB download length/sha256")
        assert time.monotonic() - t0 < 20, "took %.1fs" % (time.monotonic() - t0)


def test_proxy_chunked_upload():
    n = 3 * MB + 17
    data = pattern(n)
    with Origin("A") as a, Gateway(fill(PROXY, A=a)) as g:
        conn = httpclient.HTTPConnection("127.0.0.1", g.port, timeout=30)
        try:
            def gen():
                for i in range(0, n, 100000):
                    yield data[i:i + 100000]
            conn.request("PUT", "/p/chunked-up", body=gen(), encode_chunked=True,
                         headers={"Transfer-Encoding": "chunked"})
            res = conn.getresponse()
            body = res.read()
        finally:
            conn.close()
        eq(res.status, 200, "chunked upload status")
        d = echo_of(body)
        eq(d["method"], "PUT", "method")
        eq((d["body_len"], d["body_sha256"]), (n, pattern_sha256(n)), "chunked upload length/sha256")


def test_proxy_chunked_download_to_http10_client():
    n = 300000
    with Origin("A") as a, Gateway(fill(PROXY, A=a)) as g:
        out = raw(g.port, req_bytes("GET", "/p/bytes?n=%d&chunked=1&piece=5000" % n,
                                    version="HTTP/1.0"), timeout=10)
        head, _, body = out.partition(b"\r\n\r\n")
        assert head.startswith(b"HTTP/1.") and b" 200" in head.split(b"\r\n")[0], head[:200]
        assert b"chunked" not in head.lower(), "chunked sent to an HTTP/1.0 client: %r" % head
        eq((len(body), hashlib.sha256(body).hexdigest()), (n, pattern_sha256(n)),
           "close-delimited body to an HTTP/1.0 client")


def test_proxy_upstream_fails_mid_body():
    # The origin promises 100000 bytes and sends half: the client must not
    # get a complete-looking response; the connection is closed.
    with Origin("A") as a, Gateway(fill(PROXY, A=a)) as g:
        with Conn(g.port, timeout=5) as c:
            c.send(req_bytes("GET", "/p/truncate?n=100000"))
            data = c.read_until_close(5)
        head, _, body = data.partition(b"\r\n\r\n")
        assert b" 200" in head.split(b"\r\n")[0], head[:200]
        assert len(body) < 100000, "a truncated upstream body arrived whole (%d bytes)" % len(body)
        # The gateway still serves.
        eq(http(g.port, "GET", "/p/ok")[0], 200, "next request")


LATE_PROXY = r'''
local gw = require "gateway"
gw.config { listen = { "127.0.0.1:$PORT" } }
local up = gw.upstream("o", { servers = { "127.0.0.1:@A@" }, retries = 0 })
gw.post("/late", function(req) gw.sleep(0.2) return up:proxy(req) end)
gw.get("/ok", function() return "ok" end)
'''


def test_proxy_after_a_wait_with_a_broken_buffered_body():
    # The handler waits before proxying, so the whole chunked body, with a
    # bad chunk size, is buffered by then: up:proxy parses it inside its own
    # call. That failure used to wake the very coroutine making the call,
    # which cannot be resumed, and the worker crashed on the next resume.
    with Origin("A") as a, Gateway(fill(LATE_PROXY, A=a), workers=1) as g:
        pids = g.worker_pids()
        bad = req_bytes("POST", "/late", [("Transfer-Encoding", "chunked")],
                        b"10\r\n0123456789abcdef\r\nzz\r\n")
        for _ in range(3):
            doc = check_error(raw(g.port, bad), 502)
            eq(doc["error"], "the client body failed", "error text")
        eq(http(g.port, "GET", "/ok")[0], 200, "the gateway still serves")
        eq(g.worker_pids(), pids, "worker pids (none restarted)")
        assert "woke its own running task" not in g.stderr_text(), g.stderr_text()[-2000:]


# ---------------------------------------------------------------------------
# 4. keep-alive pool, stale connections
# ---------------------------------------------------------------------------

POOL = r'''
local gw = require "gateway"
gw.config { listen = { "127.0.0.1:$PORT" } }
local up = gw.upstream("o", { servers = { "127.0.0.1:@A@" } })
local nopool = gw.upstream("nopool", { servers = { "127.0.0.1:@B@" }, keepalive = { idle = 0 } })
local short = gw.upstream("short", { servers = { "127.0.0.1:@C@" }, keepalive = { timeout = 0.3 } })
gw.route("*", "/p/*rest", function(req) return up:proxy(req) end)
gw.get("/nopool/*rest", function(req) return nopool:proxy(req) end)
gw.get("/short/*rest", function(req) return short:proxy(req) end)
gw.get("/loop", function(req)
  for i = 1, 50 do
    local res, err = up:get("/echo/loop")
    if not res then return { status = 502, json = { err = err, at = i } } end
  end
  return "done"
end)
'''


def test_proxy_keepalive_pool_reuses_connections():
    with Origin("A") as a, Origin("B") as b, Origin("C") as c, \
            Gateway(fill(POOL, A=a, B=b, C=c)) as g:
        conns = set()
        for i in range(50):
            st, _, body = http(g.port, "GET", "/p/ka?i=%d" % i)
            eq(st, 200, "request %d" % i)
            conns.add(echo_of(body)["conn"])
        eq(a.requests, 50, "requests at the origin")
        assert a.accepts <= 2, "50 sequential proxied requests opened %d upstream connections" % a.accepts
        a.reset_counts()
        eq(http(g.port, "GET", "/loop")[:3:2], (200, b"done"), "50 up:get in one handler")
        eq(a.requests, 50, "requests at the origin (up:get loop)")
        assert a.accepts <= 1, "50 sequential up:get opened %d new upstream connections" % a.accepts


def test_proxy_keepalive_idle_zero_and_timeout():
    with Origin("A") as a, Origin("B") as b, Origin("C") as c, \
            Gateway(fill(POOL, A=a, B=b, C=c)) as g:
        for i in range(5):
            eq(http(g.port, "GET", "/nopool/x")[0], 200, "nopool request %d" % i)
        eq(b.accepts, 5, "keepalive.idle = 0: one connection per request")
        for i in range(3):
            eq(http(g.port, "GET", "/short/x")[0], 200, "short request %d" % i)
        eq(c.accepts, 1, "pooled connection reused within keepalive.timeout")
        time.sleep(0.7)
        eq(http(g.port, "GET", "/short/x")[0], 200, "after the pool timeout")
        eq(c.accepts, 2, "idle pooled connection closed after keepalive.timeout = 0.3")


def test_proxy_backend_closing_idle_connections():
    with Origin("A", idle_close=True) as a, Gateway(fill(POOL, A=a, B=dead_port(), C=dead_port())) as g:
        bad = []
        for i in range(30):
            st, _, body = http(g.port, "GET", "/p/ic?i=%d" % i)
            if st != 200:
                bad.append((i, st, body[:200]))
            if i % 3 == 0:
                time.sleep(0.02)
        eq(bad, [], "requests to a backend that closes every connection after answering")
        eq(a.requests, 30, "requests at the origin")


def test_proxy_stale_pooled_connection_retried_for_get():
    # drop_reused: the origin reads a request that arrives on a reused
    # connection and closes without answering: what a client sees when the
    # server closed an idle connection while the request was on its way.
    with Origin("A", drop_reused=True) as a, \
            Gateway(fill(POOL, A=a, B=dead_port(), C=dead_port())) as g:
        bad = []
        for i in range(20):
            st, _, body = http(g.port, "GET", "/p/stale?i=%d" % i)
            if st != 200:
                bad.append((i, st, body[:200]))
            else:
                eq(echo_of(body)["seq"], 1, "answered on a fresh connection")
        eq(bad, [], "GETs over stale pooled connections")
        gets = [e for e in a.log if e["method"] == "GET"]
        assert len(gets) >= 20, gets


def test_proxy_stale_pooled_connection_post_not_duplicated():
    # A POST that went out on a pooled connection the server then closed
    # without answering may have been processed: it must not be sent again.
    with Origin("A", drop_reused=True) as a, \
            Gateway(fill(POOL, A=a, B=dead_port(), C=dead_port())) as g:
        results = []
        for i in range(6):
            st, _, body = http(g.port, "POST", "/p/post-stale?i=%d" % i, body=b"payload-%d" % i)
            results.append(st)
        for st in results:
            assert st in (200, 502), "POST status %d" % st
        per_target = {}
        for e in a.log:
            if e["method"] == "POST":
                per_target[e["target"]] = per_target.get(e["target"], 0) + 1
        dup = {k: v for k, v in per_target.items() if v > 1}
        eq(dup, {}, "POSTs the origin received more than once")
        assert results[0] == 200, "first POST (fresh connection): %r" % results


# ---------------------------------------------------------------------------
# 5. errors and retries
# ---------------------------------------------------------------------------

ERRS = r'''
local gw = require "gateway"
gw.config { listen = { "127.0.0.1:$PORT" } }
gw.use(gw.mw.request_id())
local dead = gw.upstream("dead", { servers = { "127.0.0.1:@DEAD@" } })
local slow = gw.upstream("slow", { servers = { "127.0.0.1:@A@" }, timeouts = { read = 0.3 } })
local dropper = gw.upstream("dropper", { servers = { "127.0.0.1:@D@" }, retries = 0 })
local pair = gw.upstream("pair", { servers = { "127.0.0.1:@DEAD@", "127.0.0.1:@A@" }, retries = 1 })
local dpair = gw.upstream("dpair", { servers = { "127.0.0.1:@D@", "127.0.0.1:@A@" }, retries = 1 })
gw.route("*", "/dead/*r", function(req) return dead:proxy(req) end)
gw.route("*", "/slow/*r", function(req) return slow:proxy(req) end)
gw.route("*", "/drop/*r", function(req) return dropper:proxy(req) end)
gw.route("*", "/pair/*r", function(req) return pair:proxy(req) end)
gw.route("*", "/dpair/*r", function(req) return dpair:proxy(req) end)
'''


def test_proxy_dead_backend_502_json():
    with Gateway(fill(ERRS, DEAD=dead_port(), A=dead_port(), D=dead_port())) as g:
        resp = raw(g.port, req_bytes("GET", "/dead/x", [("Connection", "close")]))
        doc = check_error(resp, 502)
        assert "refused" in doc["error"], doc
        resp = raw(g.port, req_bytes("GET", "/dead/x", [("Connection", "close"), ("X-Request-Id", "rid-123")]))
        doc = check_error(resp, 502)
        eq(doc["request_id"], "rid-123", "request_id of the 502 is the request's id")


def test_proxy_upstream_closes_without_answer_502():
    with Origin("D", drop_all=True) as dsrv, \
            Gateway(fill(ERRS, DEAD=dead_port(), A=dead_port(), D=dsrv)) as g:
        resp = raw(g.port, req_bytes("GET", "/drop/x", [("Connection", "close")]))
        doc = check_error(resp, 502)
        eq(doc["error"], "upstream closed the connection", "error text")


def test_proxy_read_timeout_504_then_ok():
    with Origin("A") as a, Gateway(fill(ERRS, DEAD=dead_port(), A=a, D=dead_port())) as g:
        t0 = time.monotonic()
        resp = raw(g.port, req_bytes("GET", "/slow/slow?ms=2000", [("Connection", "close")]), timeout=5)
        took = time.monotonic() - t0
        doc = check_error(resp, 504)
        assert doc["error"] == "timeout", doc
        assert 0.25 <= took < 0.55, "504 for timeouts.read = 0.3 after %.2fs" % took
        eq(len([e for e in a.log if e["path"] == "/slow/slow"]), 1,
           "copies of the timed-out GET at the origin")
        st, _, body = http(g.port, "GET", "/slow/fast")
        eq(st, 200, "next request after a 504")
        eq(echo_of(body)["path"], "/slow/fast", "its body")


def test_proxy_retries_dead_server_for_get():
    with Origin("A") as a, Gateway(fill(ERRS, DEAD=dead_port(), A=a, D=dead_port())) as g:
        with Client(g.port) as cl:
            res = [cl.get("/pair/r%d" % i) for i in range(20)]
        eq([r[0] for r in res], [200] * 20, "GETs over a dead and a live server with retries = 1")
        eq({r[1].get("x-origin") for r in res}, {"A"}, "answered by the live server")


def test_proxy_post_not_retried_after_send():
    # The dropping server reads each request and closes without answering.
    # A GET may then go to the other server (idempotent); a POST must not:
    # every POST reaches exactly one server, once.
    with Origin("A") as a, Origin("D", drop_all=True) as dsrv, \
            Gateway(fill(ERRS, DEAD=dead_port(), A=a, D=dsrv)) as g:
        gets = [http(g.port, "GET", "/dpair/g%d" % i)[0] for i in range(8)]
        eq(gets, [200] * 8, "GETs over a dropping and a live server")
        posts = [http(g.port, "POST", "/dpair/p%d" % i, body=b"x%d" % i)[0] for i in range(8)]
        got = {}
        for o in (a, dsrv):
            for e in o.log:
                if e["method"] == "POST":
                    got[e["target"]] = got.get(e["target"], 0) + 1
        eq(sorted(got.items()), [("/dpair/p%d" % i, 1) for i in range(8)], "copies of each POST received")
        ok = sum(1 for st in posts if st == 200)
        eq(ok, len([e for e in a.log if e["method"] == "POST"]), "POSTs answered = POSTs at the live server")
        eq(sorted(set(posts)), [200, 502], "POST statuses (some dropped -> 502)")


# ---------------------------------------------------------------------------
# 6. a backend killed under load
# ---------------------------------------------------------------------------

KILL = r'''
local gw = require "gateway"
gw.config { listen = { "127.0.0.1:$PORT" } }
local up = gw.upstream("o", { servers = { "127.0.0.1:@A@", "127.0.0.1:@B@" } })
gw.route("*", "/p/*rest", function(req) return up:proxy(req) end)
'''


def test_proxy_backend_killed_under_load():
    a = Origin("A").start()
    try:
        with Origin("B") as b, Gateway(fill(KILL, A=a, B=b)) as g:
            results = []          # (start, end, status, origin)
            lock = threading.Lock()
            stop = threading.Event()

            def client():
                with Client(g.port, timeout=5) as cl:
                    while not stop.is_set():
                        t0 = time.monotonic()
                        try:
                            st, h, _ = cl.get("/p/load?ms=5")
                            o = h.get("x-origin")
                        except Exception as e:  # noqa: B902 - counted as a failure
                            st, o = repr(e), None
                        with lock:
                            results.append((t0, time.monotonic(), st, o))

            ths = [threading.Thread(target=client, daemon=True) for _ in range(3)]
            for t in ths:
                t.start()
            time.sleep(1.0)
            kill_start = time.monotonic()
            a.stop()
            kill_end = time.monotonic()
            time.sleep(1.5)
            stop.set()
            for t in ths:
                t.join(10)
            assert not any(t.is_alive() for t in ths), "client threads still running"
        before = [r for r in results if r[1] < kill_start]
        during = [r for r in results if r[1] >= kill_start and r[0] <= kill_end]
        after = [r for r in results if r[0] > kill_end]
        assert len(before) > 20 and len(after) > 20, "too few requests: %d before, %d after" % (len(before), len(after))
        eq({r[3] for r in before if r[2] == 200}, {"A", "B"}, "both servers served before the kill")
        eq([r for r in before if r[2] != 200], [], "failures before the kill")
        assert len([r for r in during if r[2] != 200]) <= 3, "failures in flight at the kill: %r" % during
        eq([r for r in after if r[2] != 200], [], "failures after the kill")
        eq({r[3] for r in after}, {"B"}, "servers answering after the kill")
    finally:
        a.stop()


def test_proxy_client_abort_mid_download():
    # A client that goes away after 1 MB of a 10 MB proxied download: the
    # gateway keeps serving, and the upstream connection is not left
    # half-read in the pool (the next request gets a whole, correct body).
    n = 10 * MB
    with Origin("A") as a, Gateway(fill(PROXY, A=a)) as g:
        for _ in range(3):
            with Conn(g.port, timeout=5) as c:
                c.send(req_bytes("GET", "/p/bytes?n=%d" % n))
                got = 0
                deadline = time.monotonic() + 5
                while got < MB and time.monotonic() < deadline:
                    chunk = c.sock.recv(65536)
                    if not chunk:
                        break
                    got += len(chunk)
                assert got >= MB, "only %d bytes before the abort" % got
        st, h, body = http(g.port, "GET", "/p/bytes?n=200000", timeout=10)
        eq((st, len(body), hashlib.sha256(body).hexdigest()), (200, 200000, pattern_sha256(200000)),
           "download after aborted ones")
        st, _, body = http(g.port, "GET", "/p/echo")
        eq((st, echo_of(body)["path"]), (200, "/p/echo"), "echo after aborted downloads")


SET_HEADER = r'''
local gw = require "gateway"
gw.config { listen = { "127.0.0.1:$PORT", "127.0.0.1:$PORT2" } }
gw.get("/backend/x", function(req)
  return { headers = { ["X-Up"] = "up", ["X-Replace"] = "old" }, body = "body" }
end)
local be = gw.upstream("be", { servers = { "127.0.0.1:$PORT2" } })
-- set_header without reading the headers, then (second route) after reading them
gw.get("/lazy", gw.mw.rate_limit { rate = 1000 }, function(req)
  local res = be:proxy(req, { path = "/backend/x" })
  res:set_header("X-Replace", "new")
  res:set_header("x-replace", "newer")
  return res
end)
gw.get("/read", function(req)
  local res = be:proxy(req, { path = "/backend/x" })
  res:set_header("X-Replace", "new")
  local seen = res.headers["x-up"]
  res.headers["X-Seen"] = seen
  return res
end)
'''


def test_proxy_set_header_without_reading_headers():
    with Gateway(SET_HEADER) as g:
        st, h, body = http(g.port, "GET", "/lazy")
        eq((st, body), (200, b"body"), "proxied answer")
        eq(h.get("x-up"), "up", "the upstream's own header kept")
        eq(h.get("x-replace"), "newer", "set_header replaces the upstream's (any spelling)")
        assert h.get("ratelimit-limit") == "1000" and "ratelimit-remaining" in h, h
        st, h, body = http(g.port, "GET", "/read")
        eq((h.get("x-replace"), h.get("x-seen"), body), ("new", "up", b"body"),
           "set before reading, then read and changed")


def test_a_crlf_header_on_a_proxied_answer_is_refused_not_split():
    with Origin("A") as a, Gateway(fill(PROXY, A=a)) as g:
        for how in ("set", "table"):
            out = raw(g.port, req_bytes("GET", "/splitting?how=" + how, [("Connection", "close")]))
            assert out.startswith(b"HTTP/1.1 500 "), (how, out[:300])
            assert b"set-cookie" not in out.lower(), (how, out)
        eq(http(g.port, "GET", "/p/echo/after")[0], 200, "the next request")
