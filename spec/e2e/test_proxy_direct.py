"""Direct proxies: a route whose handler is exactly
`function(req) return UP:proxy(req) end`, with no middleware, is answered by
C when the upstream's head comes (upstream.lua proxy_direct). Nothing a client
can see may differ from the ordinary path, where Lua gets the head and
returns it: each check here sends the same request through a direct route
and through an ordinary one (`local res, err = up:proxy(req); return res, err`)
and compares the answers, for plain, HEAD, no-body, large, chunked and
pipelined answers and for the 502/503/504 errors. The recogniser itself is
checked on the shapes it must take and those it must leave alone."""

import hashlib
import json

from gwtest import Conn, Gateway, check_error, eq, parse_all, parse_response, raw, req_bytes
from origin import Origin, dead_port, fill, pattern_sha256

APP = r'''
local gw = require "gateway"
gw.config { listen = { "127.0.0.1:$PORT" } }
local up = gw.upstream("o", { servers = { "127.0.0.1:@A@" } })
local dead = gw.upstream("dead", { servers = { "127.0.0.1:@DEAD@" }, retries = 0 })
local slow = gw.upstream("slow", { servers = { "127.0.0.1:@A@" }, timeouts = { read = 0.3 } })
local tripped = gw.upstream("tripped", { servers = { "127.0.0.1:@DEAD@" }, retries = 0,
                                         breaker = { failures = 1, window = 30, cooldown = 60 } })

-- direct (the recognised shape) and ordinary twins of each upstream
gw.route("*", "/d/up/*r", function(req) return up:proxy(req) end)
gw.route("*", "/o/up/*r", function(req) local res, err = up:proxy(req); return res, err end)
gw.route("*", "/d/dead/*r", function(req) return dead:proxy(req) end)
gw.route("*", "/o/dead/*r", function(req) local res, err = dead:proxy(req); return res, err end)
gw.route("*", "/d/slow/*r", function(req) return slow:proxy(req) end)
gw.route("*", "/o/slow/*r", function(req) local res, err = slow:proxy(req); return res, err end)
gw.route("*", "/d/tripped/*r", function(req) return tripped:proxy(req) end)
gw.route("*", "/o/tripped/*r", function(req) local res, err = tripped:proxy(req); return res, err end)

-- The same handler shape inside middleware runs deferred: /m passes the
-- answer through unseen (C answers it), /r reads it (it is waited for and
-- materialised), /x drops it for its own, /w returns it unseen after a wait
-- (the head, or the failure, is in by then).
gw.use("/m", function(req, next) return next() end)
gw.use("/r", function(req, next)
  local res = next()
  res.headers["X-Seen"] = tostring(res.status)
  return res
end)
gw.use("/x", function(req, next)
  local res = next()
  return { status = 299, body = "replaced" }
end)
gw.use("/w", function(req, next)
  local res = next()
  gw.sleep(0.4)
  return res
end)
-- /s sets headers on the unseen answer (as rate_limit does): it stays
-- deferred and C adds them, replacing the upstream's of the same name.
gw.use("/s", function(req, next)
  local res = next()
  local set = res.set_header -- an upstream's answer; an error answer is a plain table
  if not set then
    set = function(r, k, v) r.headers[k] = v end
  end
  set(res, "X-Added", "1")
  set(res, "x-origin", "replaced")
  set(res, "X-Added", "2")
  return res
end)
gw.route("*", "/s/ord/*r", function(req) local res, err = up:proxy(req); return res, err end)
gw.route("*", "/s/ord-dead/*r", function(req) local res, err = dead:proxy(req); return res, err end)
for _, p in ipairs { "m", "r", "x", "w", "s" } do
  gw.route("*", "/" .. p .. "/up/*r", function(req) return up:proxy(req) end)
  gw.route("*", "/" .. p .. "/dead/*r", function(req) return dead:proxy(req) end)
  gw.route("*", "/" .. p .. "/tripped/*r", function(req) return tripped:proxy(req) end)
end

-- Ordinary handlers whose answer ends (no body bytes) while it waits for a
-- decision: returned after a wait, or read after a wait.
gw.route("*", "/w/ord/*r", function(req) local res, err = up:proxy(req); return res, err end)
gw.route("*", "/body/*r", function(req)
  local res = up:proxy(req, { path = "/" .. req.params.r })
  gw.sleep(0.3)
  local b, err = res:body()
  return { status = res.status == 204 and 200 or res.status, body = b and ("len=" .. #b) or err }
end)

-- A direct route whose UP is reassigned while the gateway runs: each
-- request proxies to the upstream the variable holds then.
local current = up
gw.route("*", "/d/current/*r", function(req) return current:proxy(req) end)
gw.route("*", "/m/current/*r", function(req) return current:proxy(req) end)
gw.post("/switch", function(req)
  current = current == up and dead or up
  return "switched"
end)

-- The recogniser, on shapes it must take (true) and must leave (false).
local U = require "gateway.upstream"
local a_global_up = up
gw.get("/shapes", function(req)
  local other = "unused"
  local up2 = slow
  local function is(f) return U.direct_proxy_upvalue(f) ~= false end
  return { json = {
    plain = is(function(req) return up:proxy(req) end),
    renamed = is(function(r) return up2:proxy(r) end),
    more_code = is(function(r) local _ = other; return up:proxy(r) end),
    with_opts = is(function(r) return up:proxy(r, { path = "/x" }) end),
    kept = is(function(r) local res = up:proxy(r); return res end),
    dotted = is(function(r) return up.proxy(up, r) end),
    get = is(function(r) return up:get(r) end),
    global = is(function(r) return a_global_up:proxy(r) end),
    two_params = is(function(r, x) return up:proxy(r) end),
    vararg = is(function(...) return up:proxy(...) end),
    not_a_function = is("up"),
  } }
end)
'''

PIPE = b"GET /%s/up/echo/p1 HTTP/1.1\r\nHost: t\r\n\r\nGET /%s/up/bytes?n=70000 HTTP/1.1\r\nHost: t\r\n\r\n"


def comparable(resp):
    h = {k: v for k, v in resp.headers.items() if k not in ("date", "x-request-id")}
    return resp.status, h, resp.body


def one(port, method, path, headers=()):
    out = raw(port, req_bytes(method, path, [("Connection", "close")] + list(headers)))
    if method == "HEAD":
        resp, rest = parse_response(out, head=True, eof=True)
        eq(rest, b"", "nothing after the answer to HEAD %s" % path)
        return resp
    rs = parse_all(out)
    assert len(rs) == 1, "one response expected for %s %s, got %r" % (method, path, out[:300])
    return rs[0]


def test_recogniser_shapes():
    with Origin("A") as a, Gateway(fill(APP, A=a, DEAD=dead_port())) as g:
        st, _, body = g.get("/shapes")
        eq(st, 200, "status")
        got = json.loads(body)
        want = {"plain": True, "renamed": True, "more_code": False, "with_opts": False,
                "kept": False, "dotted": False, "get": False, "global": True,
                "two_params": False, "vararg": False, "not_a_function": False}
        # `global` is an upvalue here too (a local of the chunk): it must be taken.
        eq(got, want, "recognised shapes")


def test_direct_answers_equal_ordinary_ones():
    with Origin("A") as a, Gateway(fill(APP, A=a, DEAD=dead_port())) as g:
        for method, path in [("GET", "/echo/x?q=1"), ("HEAD", "/echo/x"), ("GET", "/status/204"),
                             ("GET", "/status/404"), ("DELETE", "/echo/del"),
                             ("GET", "/bytes?n=300000"), ("GET", "/bytes?n=200000&chunked=1&piece=7000"),
                             ("GET", "/echo/h?rh=X-Extra:1&rh=Set-Cookie:a%3D1&rh=Set-Cookie:b%3D2")]:
            d = one(g.port, method, "/d/up" + path, [("X-Forwarded-For", "10.0.0.1")])
            o = one(g.port, method, "/o/up" + path, [("X-Forwarded-For", "10.0.0.1")])
            dc, oc = comparable(d), comparable(o)
            eq(dc[0], oc[0], "status of %s %s" % (method, path))
            if path.startswith("/echo") and method != "HEAD":
                # The echo names the path and connection it came on: compare what was forwarded.
                dj, oj = json.loads(dc[2]), json.loads(oc[2])
                for doc in (dj, oj):
                    doc.pop("path"), doc.pop("target"), doc.pop("conn"), doc.pop("seq")
                eq(dj, oj, "echo of %s %s" % (method, path))
                # (the echo's length differs with its connection number)
                dc[1].pop("content-length"), oc[1].pop("content-length")
                eq(dc[1], oc[1], "headers of %s %s" % (method, path))
            else:
                eq(dc, oc, "answer to %s %s" % (method, path))
        full = one(g.port, "GET", "/d/up/bytes?n=300000")
        eq(hashlib.sha256(full.body).hexdigest(), pattern_sha256(300000), "direct body sha256")


def test_direct_pipelined_and_keepalive():
    with Origin("A") as a, Gateway(fill(APP, A=a, DEAD=dead_port())) as g:
        with Conn(g.port) as c:
            for _ in range(3):
                c.send(PIPE.replace(b"%s", b"d"))
                r1 = c.read_response()
                r2 = c.read_response()
                eq(r1.status, 200, "first pipelined answer")
                eq(json.loads(r1.body)["path"], "/d/up/echo/p1", "first answer is the first request's")
                eq(len(r2.body), 70000, "second pipelined answer's body")


def test_direct_errors_equal_ordinary_ones():
    with Origin("A") as a, Gateway(fill(APP, A=a, DEAD=dead_port())) as g:
        for name, status in [("dead", 502), ("slow", 504)]:
            path = "/echo/e?ms=1500" if name == "slow" else "/echo/e"
            d = one(g.port, "GET", "/d/%s%s" % (name, path))
            o = one(g.port, "GET", "/o/%s%s" % (name, path))
            # check_error: JSON {error, request_id}, X-Request-Id equal to request_id
            dd, od = check_error(d, status), check_error(o, status)
            eq(dd["error"], od["error"], "%s: error text" % name)
        # The breaker opens on the first failure; then both paths get 503 at once.
        check_error(one(g.port, "GET", "/d/tripped/x"), 502)
        d = check_error(one(g.port, "GET", "/d/tripped/x"), 503)
        o = check_error(one(g.port, "GET", "/o/tripped/x"), 503)
        eq(d["error"], o["error"], "breaker open: error text")
        # The worker still serves after all of it.
        eq(one(g.port, "GET", "/d/up/status/200").status, 200, "served afterwards")


def test_deferred_inside_middleware():
    with Origin("A") as a, Gateway(fill(APP, A=a, DEAD=dead_port())) as g:
        for method, path in [("GET", "/bytes?n=300000"), ("HEAD", "/bytes?n=10"), ("GET", "/status/204"),
                             ("GET", "/bytes?n=200000&chunked=1&piece=7000"), ("GET", "/status/503")]:
            o = comparable(one(g.port, method, "/o/up" + path))
            for prefix in ("m", "w"):
                eq(comparable(one(g.port, method, "/%s/up%s" % (prefix, path))), o,
                   "%s %s through /%s (returned unseen)" % (method, path, prefix))
            r = one(g.port, method, "/r/up" + path)
            eq(r.headers.get("x-seen"), str(o[0]), "/r saw the status of %s %s" % (method, path))
            rc = comparable(r)
            rc[1].pop("x-seen")
            eq(rc, o, "%s %s through /r (read, then returned)" % (method, path))
            x = one(g.port, method, "/x/up" + path)
            eq((x.status, x.body), (299, b"" if method == "HEAD" else b"replaced"), "/x replaced it")
        # The worker still serves on the same connection after replaced answers.
        with Conn(g.port) as c:
            for path in ("/x/up/echo/1", "/m/up/echo/2", "/x/up/bytes?n=100000", "/m/up/echo/3"):
                c.send(b"GET %s HTTP/1.1\r\nHost: t\r\n\r\n" % path.encode())
                resp = c.read_response()
                want = 299 if path.startswith("/x") else 200
                eq(resp.status, want, "keep-alive answer to %s" % path)


def test_deferred_errors():
    with Origin("A") as a, Gateway(fill(APP, A=a, DEAD=dead_port())) as g:
        want = check_error(one(g.port, "GET", "/o/dead/e"), 502)["error"]
        for prefix in ("m", "w"):
            eq(check_error(one(g.port, "GET", "/%s/dead/e" % prefix), 502)["error"], want,
               "/%s: the 502 of a refused connection" % prefix)
        r = one(g.port, "GET", "/r/dead/e")
        eq(r.headers.get("x-seen"), "502", "/r saw the error's status")
        eq(check_error(r, 502)["error"], want, "/r: the same 502 body")
        eq(one(g.port, "GET", "/x/dead/e").status, 299, "/x replaced the error")
        # Breaker: opened by the first failure; then 503 at once, answered at commit.
        check_error(one(g.port, "GET", "/m/tripped/x"), 502)
        for prefix in ("m", "w", "r"):
            eq(check_error(one(g.port, "GET", "/%s/tripped/x" % prefix), 503)["error"], "breaker open",
               "/%s: breaker open" % prefix)


def test_answer_without_body_ending_before_the_decision():
    # HEAD, 204 and a zero length end the exchange right after the head; a
    # middleware that waits before returning (or a handler that reads the body
    # after a wait) must still get that answer.
    with Origin("A") as a, Gateway(fill(APP, A=a, DEAD=dead_port())) as g:
        for method, path in [("HEAD", "/bytes?n=7"), ("GET", "/status/204"), ("GET", "/bytes?n=0"),
                             ("GET", "/bytes?n=0&chunked=1"), ("HEAD", "/bytes?n=5")]:
            o = comparable(one(g.port, method, "/o/up" + path))
            for route in ("/w/ord", "/w/up"):
                eq(comparable(one(g.port, method, route + path)), o, "%s %s through %s" % (method, path, route))
        for path, want in [("status/204", b"len=0"), ("bytes?n=0", b"len=0"), ("bytes?n=3", b"len=3")]:
            resp = one(g.port, "GET", "/body/" + path)
            eq((resp.status, resp.body), (200, want), "res:body() after a wait: " + path)


def test_deferred_with_headers_set():
    with Origin("A") as a, Gateway(fill(APP, A=a, DEAD=dead_port())) as g:
        for method, path in [("GET", "/bytes?n=1000"), ("HEAD", "/bytes?n=10"), ("GET", "/status/204"),
                             ("GET", "/bytes?n=5000&chunked=1&piece=700")]:
            d = one(g.port, method, "/s/up" + path)
            o = one(g.port, method, "/s/ord" + path)
            eq(comparable(d), comparable(o), "%s %s: deferred and ordinary" % (method, path))
            eq((d.headers.get("x-added"), d.headers.get("x-origin")), ("2", "replaced"),
               "%s %s: set headers win" % (method, path))
        d, o = one(g.port, "GET", "/s/dead/e"), one(g.port, "GET", "/s/ord-dead/e")
        eq(check_error(d, 502)["error"], check_error(o, 502)["error"], "502 body")
        eq((d.headers.get("x-added"), o.headers.get("x-added")), ("2", "2"), "set headers on the 502 too")


def test_reassigned_upstream_is_followed():
    # Enough requests first for LuaJIT to compile the direct path with the
    # first upstream; each switch must still take effect at once.
    with Origin("A") as a, Gateway(fill(APP, A=a, DEAD=dead_port())) as g:
        for round_ in range(3):
            for prefix in ("d", "m"):
                with Conn(g.port) as c:
                    for i in range(300):
                        c.send(b"GET /%s/current/echo/%d HTTP/1.1\r\nHost: t\r\n\r\n" % (prefix.encode(), i))
                        eq(c.read_response().status, 200, "/%s/current before switch %d (#%d)" % (prefix, round_, i))
            eq(g.http("POST", "/switch")[0], 200, "switch to the dead upstream")
            for prefix in ("d", "m"):
                eq(one(g.port, "GET", "/%s/current/echo/x" % prefix).status, 502,
                   "/%s/current after switch %d goes to the dead upstream" % (prefix, round_))
            eq(g.http("POST", "/switch")[0], 200, "switch back")
