"""Middleware: order (global, prefix, route), short-circuit, changing the
response after next(), global middleware before a 404."""

import json

from gwtest import PRELUDE, Gateway, eq

# Each middleware appends its letter to req.ctx.trace on the way in and to the
# x-out response header on the way out.
TRACE = PRELUDE + r'''
local function mark(letter)
  return function(req, next)
    req.ctx.trace = (req.ctx.trace or "") .. letter
    local res = next()
    res.headers["x-out"] = (res.headers["x-out"] or "") .. letter
    return res
  end
end
gw.use(mark("a"))
gw.use(mark("b"))
gw.use("/api", mark("p"))
gw.get("/plain", function(req) return { status = 200, body = req.ctx.trace } end)
gw.get("/api/x", function(req) return { status = 200, body = req.ctx.trace } end)
gw.route("GET", "/api/r", mark("1"), mark("2"), function(req)
  return { status = 200, body = req.ctx.trace }
end)
gw.route { method = "GET", path = "/tbl", use = { mark("t") },
           handler = function(req) return { status = 200, body = req.ctx.trace } end }
'''


def test_global_order():
    with Gateway(TRACE) as g:
        st, h, body = g.get("/plain")
        eq((st, body), (200, b"ab"), "trace for /plain")
        eq(h.get("x-out"), "ba", "x-out: inner middleware finishes first")


def test_prefix_middleware():
    with Gateway(TRACE) as g:
        st, h, body = g.get("/api/x")
        eq((st, body), (200, b"abp"), "global then prefix")
        eq(h.get("x-out"), "pba", "x-out")
        eq(g.get("/plain")[2], b"ab", "prefix mw not applied outside /api")


def test_route_middleware():
    with Gateway(TRACE) as g:
        st, h, body = g.get("/api/r")
        eq((st, body), (200, b"abp12"), "global, prefix, then route middleware in order")
        eq(h.get("x-out"), "21pba", "x-out")
        st, h, body = g.get("/tbl")
        eq((st, body), (200, b"abt"), "table form use = {...}")


def test_short_circuit():
    cfg = PRELUDE + r'''
local hits = 0
gw.use(function(req, next)
  if req.headers["x-key"] ~= "ok" then
    return { status = 401, json = { error = "no key" } }
  end
  return next()
end)
gw.get("/protected", function(req) hits = hits + 1; return "in" end)
gw.get("/hits", function(req) return tostring(hits) end)
'''
    with Gateway(cfg) as g:
        st, h, body = g.get("/protected")
        eq(st, 401, "short-circuit status")
        eq(json.loads(body), {"error": "no key"}, "short-circuit body")
        st, _, body = g.get("/protected", {"X-Key": "ok"})
        eq((st, body), (200, b"in"), "passes with key")
        eq(g.get("/hits", {"X-Key": "ok"})[2], b"1", "handler ran only once")


def test_change_response_after_next():
    cfg = PRELUDE + r'''
gw.use(function(req, next)
  local res = next()
  res.status = 201
  res.headers["x-foo"] = "bar"
  return res
end)
gw.get("/t", function(req) return { status = 200, body = "table" } end)
gw.get("/s", function(req) return "string" end)
gw.get("/j", function(req) return { json = { a = 1 } } end)
'''
    with Gateway(cfg) as g:
        st, h, body = g.get("/t")
        eq((st, h.get("x-foo"), body), (201, "bar", b"table"), "table response changed")
        st, h, body = g.get("/s")
        eq((st, h.get("x-foo"), body), (201, "bar", b"string"), "string response changed")
        assert h.get("content-type", "").startswith("text/plain"), h
        st, h, body = g.get("/j")
        eq((st, h.get("x-foo")), (201, "bar"), "json response changed")
        eq(json.loads(body), {"a": 1}, "json body")


def test_global_middleware_runs_before_404():
    cfg = PRELUDE + r'''
gw.use(function(req, next)
  if req.path == "/blocked" then return { status = 403, body = "blocked" } end
  local res = next()
  res.headers["x-global"] = "seen"
  return res
end)
gw.get("/exists", function(req) return "yes" end)
'''
    with Gateway(cfg) as g:
        st, h, body = g.get("/blocked")
        eq((st, body), (403, b"blocked"), "global mw answers an unrouted path")
        st, h, body = g.get("/missing")
        eq(st, 404, "404 status")
        eq(h.get("x-global"), "seen", "global mw saw the 404 response")
        doc = json.loads(body)
        assert doc.get("error") and doc.get("request_id"), doc
        st, h, body = g.http("POST", "/exists")
        eq((st, h.get("x-global")), (405, "seen"), "global mw saw the 405 response")


NEXT_RULES = PRELUDE + r'''
gw.use("/twice", function(req, next)
  next()
  return next()
end)
gw.use("/spawned", function(req, next)
  -- next() from a light thread of the same request, while the request waits
  local th = gw.spawn(function() gw.sleep(0.05); return next() end)
  local res = th:wait()
  res.headers["x-via"] = "thread"
  return res
end)
gw.use("/kept", function(req, next)
  kept_next = next -- called later from another request: must not run this one's chain
  return next()
end)
gw.get("/twice", function(req) return "handler" end)
gw.get("/spawned", function(req) gw.sleep(0.05); return "from the handler" end)
gw.get("/kept", function(req) return "kept" end)
gw.get("/late", function(req)
  local ok, err = pcall(kept_next)
  return { json = { ok = ok, err = tostring(err) } }
end)
'''


def test_next_called_twice_is_an_error():
    with Gateway(NEXT_RULES) as g:
        st, _, body = g.get("/twice")
        eq(st, 500, "status when next() is called twice")
        eq(json.loads(body)["error"], "internal error", "error body")
        g.wait_stderr("next() called twice")
        eq(g.get("/twice")[0], 500, "the same again (nothing left over from the first request)")


def test_next_from_a_spawned_thread():
    with Gateway(NEXT_RULES) as g:
        st, h, body = g.get("/spawned")
        eq((st, body), (200, b"from the handler"), "handler answer through next() in a thread")
        eq(h.get("x-via"), "thread", "middleware changed it after")


def test_next_kept_and_called_from_another_request():
    with Gateway(NEXT_RULES) as g:
        eq(g.get("/kept")[2], b"kept", "first request")
        st, _, body = g.get("/late")
        doc = json.loads(body)
        eq((st, doc["ok"]), (200, False), "a kept next() fails in another request")
        assert "next()" in doc["err"], doc


# Without prefix middleware a route's chain is made once and kept
# (runtime.lua build_chain): each route must still get its own, every time.
NO_PREFIX = TRACE.replace('gw.use("/api", mark("p"))\n', "")


def test_kept_chains_stay_per_route():
    assert NO_PREFIX != TRACE
    with Gateway(NO_PREFIX) as g:
        want = {"/plain": (b"ab", "ba"), "/api/r": (b"ab12", "21ba"), "/tbl": (b"abt", "tba"),
                "/api/x": (b"ab", "ba")}
        for i in range(60):
            for path, (body, out) in want.items():
                st, h, got = g.get(path)
                eq((st, got, h.get("x-out")), (200, body, out), "%s, request %d" % (path, i))
            st, h, _ = g.get("/nope")
            eq((st, h.get("x-out")), (404, "ba"), "global middleware around the 404, request %d" % i)


def test_request_id_mw_sends_one_id_whatever_the_spelling():
    # The answer's own "x-request-id" (an upstream's, a handler's) went out
    # next to the middleware's X-Request-Id: two different ids.
    from gwtest import parse_all, raw, req_bytes
    from origin import Origin, fill
    cfg = PRELUDE + r'''
gw.use(gw.mw.request_id())
local up = gw.upstream("o", { servers = { "127.0.0.1:@A@" } })
gw.get("/p/*r", function(req) return up:proxy(req) end)
gw.get("/t", function(req) return { status = 200, headers = { ["x-request-id"] = "handler-id" }, body = "x" } end)
'''
    with Origin("o") as o, Gateway(fill(cfg, A=o)) as g:
        for path in ("/p/x?rh=X-Request-Id:upstream-id", "/t"):
            out = raw(g.port, req_bytes("GET", path, [("X-Request-Id", "client-id"), ("Connection", "close")]))
            r = parse_all(out, eof=True)[0]
            ids = [v for k, v in r.header_list if k.lower() == "x-request-id"]
            eq(ids, ["client-id"], path)
