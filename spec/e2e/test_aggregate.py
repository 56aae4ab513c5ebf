"""Fan-out to upstreams: gw.all with concurrent upstream calls (timing, one
failing branch leaving the others intact) and gw.aggregate (merged JSON,
{param} and query in part paths, optional parts with X-Partial)."""

import json
import time

from gwtest import Gateway, eq, http
from origin import Origin, dead_port, fill

ALL = r'''
local gw = require "gateway"
gw.config { listen = { "127.0.0.1:$PORT" } }
local a = gw.upstream("a", { servers = { "127.0.0.1:@A@" } })
local b = gw.upstream("b", { servers = { "127.0.0.1:@B@" } })
local dead = gw.upstream("dead", { servers = { "127.0.0.1:@DEAD@" }, retries = 0 })

local function summary(res)
  if not res then return false end
  local doc = res:json()
  return { status = res.status, origin = doc and doc.origin, path = doc and doc.path }
end

gw.get("/two", function(req)
  local t0 = gw.now()
  local r, errs = gw.all {
    a = function() return a:get("/slow", { query = { ms = 300 } }) end,
    b = function() return b:get("/slow", { query = { ms = 300 } }) end,
  }
  return { json = { took = gw.now() - t0, a = summary(r.a), b = summary(r.b),
                    nerrs = errs and next(errs) ~= nil } }
end)

gw.get("/same", function(req)
  local t0 = gw.now()
  local r, errs = gw.all {
    x = function() return a:get("/slow", { query = { ms = 300 } }) end,
    y = function() return a:get("/slow", { query = { ms = 300 } }) end,
  }
  return { json = { took = gw.now() - t0, x = summary(r.x), y = summary(r.y) } }
end)

gw.get("/mixed", function(req)
  local t0 = gw.now()
  local r, errs = gw.all {
    ok = function() return a:get("/slow", { query = { ms = 300 } }) end,
    refused = function() return dead:get("/x") end,
    late = function() return b:get("/slow", { query = { ms = 3000 }, timeout = 0.2 }) end,
    boom = function() a:get("/echo/boom"); error("branch failed on purpose") end,
  }
  errs = errs or {}
  return { json = {
    took = gw.now() - t0,
    ok = summary(r.ok),
    refused_result = r.refused ~= nil, late_result = r.late ~= nil, boom_result = r.boom ~= nil,
    ok_err = errs.ok ~= nil,
    refused = errs.refused and tostring(errs.refused) or false,
    late = errs.late and tostring(errs.late) or false,
    boom = errs.boom and tostring(errs.boom) or false,
  } }
end)
'''


def getj(g, path, timeout=10):
    t0 = time.monotonic()
    st, h, body = http(g.port, "GET", path, timeout=timeout)
    took = time.monotonic() - t0
    try:
        return st, h, json.loads(body), took
    except ValueError:
        raise AssertionError("GET %s: %d %r" % (path, st, body[:300]))


def test_all_two_upstreams_in_parallel():
    with Origin("A") as a, Origin("B") as b, \
            Gateway(fill(ALL, A=a, B=b, DEAD=dead_port())) as g:
        st, _, d, took = getj(g, "/two")
        eq(st, 200, "status")
        eq(d["a"], {"status": 200, "origin": "A", "path": "/slow"}, "branch a")
        eq(d["b"], {"status": 200, "origin": "B", "path": "/slow"}, "branch b")
        eq(d["nerrs"], False, "no errors")
        assert 0.28 <= d["took"] < 0.55, "two 300 ms upstream calls took %.3f s in Lua" % d["took"]
        assert took < 0.55, "two 300 ms upstream calls took %.3f s at the client" % took


def test_all_two_calls_to_one_upstream_in_parallel():
    with Origin("A") as a, Gateway(fill(ALL, A=a, B=a, DEAD=dead_port())) as g:
        st, _, d, took = getj(g, "/same")
        eq(st, 200, "status")
        eq((d["x"]["status"], d["y"]["status"]), (200, 200), "both branches")
        assert d["took"] < 0.55 and took < 0.55, \
            "two 300 ms calls to one upstream took %.3f s (client %.3f s)" % (d["took"], took)
        eq(a.inflight_max, 2, "requests in flight at the origin at once")


def test_all_failing_branches_leave_others_intact():
    with Origin("A") as a, Origin("B") as b, \
            Gateway(fill(ALL, A=a, B=b, DEAD=dead_port())) as g:
        st, _, d, took = getj(g, "/mixed")
        eq(st, 200, "status")
        eq(d["ok"], {"status": 200, "origin": "A", "path": "/slow"}, "the good branch's result")
        eq(d["ok_err"], False, "no error for the good branch")
        eq(d["refused"], "connection refused", "error of the refused branch")
        eq(d["late"], "timeout", "error of the timed-out branch")
        assert d["boom"] and "branch failed on purpose" in d["boom"], "error of the raising branch: %r" % d
        eq((d["refused_result"], d["late_result"], d["boom_result"]), (False, False, False),
           "no results for failed branches")
        assert d["took"] < 0.55 and took < 0.55, "mixed gw.all took %.3f s (client %.3f s)" % (d["took"], took)


AGG = r'''
local gw = require "gateway"
gw.config { listen = { "127.0.0.1:$PORT" } }
local users = gw.upstream("users", { servers = { "127.0.0.1:@A@" } })
gw.upstream("orders", { servers = { "127.0.0.1:@B@" } })
local dead = gw.upstream("dead", { servers = { "127.0.0.1:@DEAD@" }, retries = 0 })
gw.aggregate("/agg/:id", {
  user = { upstream = users, path = "/users/{id}?ms=300" },
  orders = { upstream = "orders", path = "/orders?user={id}&ms=300" },
})
gw.aggregate("/agg-opt/:id", {
  user = { upstream = users, path = "/users/{id}" },
  extra = { upstream = dead, path = "/extra/{id}", optional = true },
})
gw.aggregate("/agg-req/:id", {
  user = { upstream = users, path = "/users/{id}" },
  must = { upstream = dead, path = "/must/{id}" },
})
'''


def test_aggregate_merges_parts_in_parallel():
    with Origin("A") as a, Origin("B") as b, \
            Gateway(fill(AGG, A=a, B=b, DEAD=dead_port())) as g:
        st, h, d, took = getj(g, "/agg/42")
        eq(st, 200, "status")
        assert h.get("content-type", "").startswith("application/json"), h
        eq(sorted(d), ["orders", "user"], "parts")
        eq((d["user"]["origin"], d["user"]["path"]), ("A", "/users/42"), "user part ({id} in the path)")
        eq((d["orders"]["origin"], d["orders"]["path"]), ("B", "/orders"), "orders part")
        eq(d["orders"]["args"].get("user"), ["42"], "{id} in the part's query")
        eq(h.get("x-partial"), None, "X-Partial on a complete answer")
        assert took < 0.55, "two 300 ms parts took %.3f s" % took


def test_aggregate_optional_part_failure_is_partial():
    with Origin("A") as a, Gateway(fill(AGG, A=a, B=a, DEAD=dead_port())) as g:
        st, h, d, _ = getj(g, "/agg-opt/7")
        eq(st, 200, "status with a failed optional part")
        eq(h.get("x-partial"), "true", "X-Partial")
        eq(sorted(d), ["user"], "the failed optional part is left out")
        eq(d["user"]["path"], "/users/7", "the other part")


def test_aggregate_required_part_failure():
    with Origin("A") as a, Gateway(fill(AGG, A=a, B=a, DEAD=dead_port())) as g:
        st, h, d, _ = getj(g, "/agg-req/7")
        assert st >= 500, "a failed required part answered %d: %r" % (st, d)
        assert isinstance(d.get("error"), str) and d["error"], d
        eq(h.get("x-request-id"), d.get("request_id"), "X-Request-Id as on every error answer")
        assert isinstance(d.get("request_id"), str) and d["request_id"], d


EXACT = r'''
local gw = require "gateway"
gw.config { listen = { "127.0.0.1:$PORT" } }
local o = gw.upstream("o", { servers = { "127.0.0.1:@A@" } })
gw.aggregate("/exact/:id", {
  doc = { upstream = o, path = "/doc?doc={id}" },
  echo = { upstream = o, path = "/e/{id}" },
})
gw.aggregate("/one/:id", { echo = { upstream = o, path = "/e/{id}" } })
gw.aggregate("/files/*rest", { echo = { upstream = o, path = "/e/{rest}" } })
gw.aggregate("/strict/:id", {
  doc = { upstream = o, path = "/doc?doc={id}", optional = true },
  echo = { upstream = o, path = "/e/x" },
})
'''


def test_aggregate_passes_each_part_through_exactly():
    # Parts were decoded and encoded again by lua-cjson: 1234567890123456
    # came out as 1.2345678901235e+15 and [] as {}. A route parameter was
    # percent-encoded a second time ("john%20doe" asked for john%2520doe).
    from urllib.parse import quote
    with Origin("A") as a, Gateway(fill(EXACT, A=a)) as g:
        for doc in ('{"id": 1234567890123456, "amount": 0.1234567890123456, "list": []}', "[]", "[[], {}]",
                    '"text"', "null", "12345678901234567890"):
            st, h, body = http(g.port, "GET", "/exact/" + quote(doc, safe=""))
            eq(st, 200, "%s: %r" % (doc, body))
            eq(h.get("content-type"), "application/json", "content type")
            merged = json.loads(body)
            eq(json.dumps(merged["doc"]), json.dumps(json.loads(doc)), "part as sent: %s" % doc)
            assert doc.encode() in body, body
            eq(merged["echo"]["target"], "/e/" + quote(doc, safe=""), "the {id} of the echo part, encoded once")
        # Escapes of structural bytes ("/", "\\", ".", NUL) and dot-segments
        # stay literal at the upstream: no traversal there.
        for raw_id, want in (("john%20doe", "john%20doe"), ("caf%C3%A9", "caf%C3%A9"), ("100%", "100%25"),
                             ("%zz", "%25zz"), ("a%2Fb", "a%252Fb"), ("..%2F..%2Fadmin", "..%252F..%252Fadmin"),
                             ("%2e%2E", "%252e%252E"), ("a%5cb", "a%255cb"), ("a%00", "a%2500"),
                             ("..", "%252E%252E"), (".", "%252E")):
            st, h, body = http(g.port, "GET", "/one/" + raw_id)
            eq((st, json.loads(body)["echo"]["target"]), (200, "/e/" + want), "{id} = %s" % raw_id)
        # A "/" of the client's path (a catch-all) is encoded once, by the gateway.
        st, h, body = http(g.port, "GET", "/files/dir/name.txt")
        eq((st, json.loads(body)["echo"]["target"]), (200, "/e/dir%2Fname.txt"), "a catch-all's /")
        # NaN, Infinity and hex numbers are not JSON: an optional part is left out.
        for doc in ('{"x": NaN}', "[Infinity]", "0x10", "{} trailing", '"a\x01b"', '"a\tb"', "1.", "[1,]"):
            st, h, body = http(g.port, "GET", "/strict/" + quote(doc, safe=""))
            eq((st, h.get("x-partial")), (200, "true"), "%s: %r" % (doc, body))
            eq(sorted(json.loads(body)), ["echo"], "the bad part is left out: %s" % doc)
