"""The request object: fields, query, headers, params, ctx, body and json."""

import json
import time

from gwtest import PRELUDE, Conn, Gateway, eq, req_bytes

DUMP = PRELUDE + r'''
gw.use(function(req, next)
  req.headers["X-Added"] = "by-mw"
  req.headers["x-remove-me"] = nil
  req.ctx.from_mw = "hello"
  return next()
end)
gw.route("*", "/dump/:name/*rest", function(req)
  return { json = {
    method = req.method, path = req.path, uri = req.uri,
    query = req.query, params = req.params,
    ip = req.ip, scheme = req.scheme, host = req.host,
    id = req.id, route = req.route,
    ctx_type = type(req.ctx), ctx = req.ctx.from_mw,
    h_lower = req.headers["x-mixed-case"], h_upper = req.headers["X-MIXED-CASE"],
    h_added = req.headers["x-added"], h_removed = req.headers["X-Remove-Me"] == nil,
  } }
end)
gw.post("/echo", function(req) return { status = 200, body = req:body() } end)
gw.post("/len", function(req) return tostring(#req:body()) end)
gw.post("/twice", function(req)
  local a = req:body()
  local b = req:body()
  return { json = { same = a == b, len = #a } }
end)
gw.post("/json", function(req)
  local v, err = req:json()
  if v == nil then
    return { status = 422, json = { bad = true, err = tostring(err), errtype = type(err) } }
  end
  return { json = { got = v } }
end)
'''


def test_request_fields():
    with Gateway(DUMP) as g:
        st, h, body = g.http("PATCH", "/dump/bob/a/b?a=1&b=x%20y",
                             {"Host": "example.com", "X-Mixed-Case": "MiXeD",
                              "X-Remove-Me": "gone"})
        eq(st, 200, "status")
        d = json.loads(body)
        eq(d["method"], "PATCH", "method")
        eq(d["path"], "/dump/bob/a/b", "path")
        eq(d["uri"], "/dump/bob/a/b?a=1&b=x%20y", "uri")
        eq(d["query"], {"a": "1", "b": "x y"}, "query")
        eq(d["params"], {"name": "bob", "rest": "a/b"}, "params")
        eq(d["ip"], "127.0.0.1", "ip")
        eq(d["scheme"], "http", "scheme")
        eq(d["host"], "example.com", "host")
        assert isinstance(d.get("id"), str) and d["id"], "id: %r" % d.get("id")
        eq(d["route"], "/dump/:name/*rest", "route")
        eq(d["ctx_type"], "table", "ctx type")
        eq(d["ctx"], "hello", "ctx passed from middleware")
        eq(d["h_lower"], "MiXeD", "header by lower-case name")
        eq(d["h_upper"], "MiXeD", "header by upper-case name")
        eq(d["h_added"], "by-mw", "header written by a middleware")
        eq(d["h_removed"], True, "header removed by a middleware")


def test_request_ids_differ():
    with Gateway(DUMP) as g:
        a = json.loads(g.get("/dump/x/y")[2])["id"]
        b = json.loads(g.get("/dump/x/y")[2])["id"]
        assert a and b and a != b, (a, b)


def test_body_content_length():
    with Gateway(DUMP) as g:
        payload = bytes(range(256)) * 4
        st, h, body = g.http("POST", "/echo", {"Content-Type": "application/octet-stream"},
                             payload)
        eq(st, 200, "status")
        eq(body, payload, "binary body echoed")


def test_body_large():
    with Gateway(DUMP) as g:
        payload = b"x" * (3 * 1024 * 1024)
        st, _, body = g.http("POST", "/len", body=payload, timeout=15)
        eq((st, body), (200, str(len(payload)).encode()), "3 MiB body length")


def test_body_chunked():
    with Gateway(DUMP) as g:
        with Conn(g.port) as c:
            c.send(req_bytes("POST", "/echo", [("Transfer-Encoding", "chunked")])
                   + b"5\r\nhello\r\n6;ext=1\r\n world\r\n0\r\n\r\n")
            r = c.read_response()
            eq((r.status, r.body), (200, b"hello world"), "chunked body")


def test_json_body():
    with Gateway(DUMP) as g:
        st, h, body = g.http("POST", "/json", {"Content-Type": "application/json"},
                             b'{"a": [1, 2], "b": {"c": "d"}}')
        eq(st, 200, "status")
        eq(json.loads(body), {"got": {"a": [1, 2], "b": {"c": "d"}}}, "decoded json")


def test_json_body_invalid():
    with Gateway(DUMP) as g:
        st, h, body = g.http("POST", "/json", {"Content-Type": "application/json"},
                             b'{"a": [1, 2')
        eq(st, 422, "nil, err for invalid json (handler answered 422)")
        d = json.loads(body)
        eq(d["errtype"], "string", "err is a string")
        assert d["err"], d


def test_body_read_twice():
    with Gateway(DUMP) as g:
        st, _, body = g.http("POST", "/twice", body=b"q" * 5000)
        eq(st, 200, "status")
        eq(json.loads(body), {"same": True, "len": 5000}, "req:body() twice")


NON_STRING_HEADER_KEYS = PRELUDE + r'''
gw.get("/hkeys", function(req)
  local read = { req.headers[1] == nil, req.headers[true] == nil }
  local ok, err = pcall(function() req.headers[1] = "x" end)
  return { json = { absent = read[1] and read[2], raised = not ok and tostring(err):match("header names are strings") ~= nil,
                    after = req.headers["x-probe"] } }
end)
'''


def test_header_keys_that_are_not_strings():
    # No key may reach the proxy's own slot: reading one gives nil, writing
    # one raises, and the request's headers still work after.
    with Gateway(NON_STRING_HEADER_KEYS) as g:
        st, _, body = g.get("/hkeys", {"X-Probe": "still"})
        eq((st, json.loads(body)), (200, {"absent": True, "raised": True, "after": "still"}), "answer")


PARAMS = PRELUDE + r'''
local cjson = require "cjson"
local late = {}
gw.use(function(req, next)
  -- A middleware that rewrites the path before anything read the params.
  local to = req.headers["x-rewrite"]
  if to then req.path = to end
  if req.headers["x-params-in-mw"] then
    local p = req.params
    p.seen_by_mw = "yes"  -- {} for no route: a table of the request's own
  end
  return next()
end)
gw.route("*", "/p/:a/:b/*rest", function(req)
  return { json = { params = req.params, path = req.path, route = req.route } }
end)
gw.get("/later/:id/*rest", function(req)
  -- Read only after the request has finished, from a timer, and after the
  -- handler set another path (a number, for /later/n/...).
  req.path = req.headers["x-number-path"] and 42 or "/internal"
  gw.timer.after(0.01, function() late[#late + 1] = req.params end)
  return "ok"
end)
gw.get("/late", function()
  local p = table.remove(late, 1)
  return { json = { params = p or "none" } }
end)
gw.get("/plain", function(req)
  local ok = pcall(function() req.params.x = 1 end)
  return { json = { n = next(req.params) == nil, writable = ok } }
end)
'''


def test_params_are_those_the_request_was_routed_by():
    # req.params is built when a script first reads it, from the path as
    # the request came and the route routing found.
    with Gateway(PARAMS) as g:
        def params(path, headers=None):
            st, _, body = g.http("GET", path, headers or {})
            eq(st, 200, "status of %s" % path)
            return json.loads(body)
        d = params("/p/x/y/z/w")
        eq(d["params"], {"a": "x", "b": "y", "rest": "z/w"}, "params")
        eq(d["route"], "/p/:a/:b/*rest", "route")
        eq(params("/p/%41/y/")["params"], {"a": "%41", "b": "y", "rest": ""},
           "escapes kept, empty catch-all")
        eq(params("/p/x/y//a/")["params"], {"a": "x", "b": "y", "rest": "/a/"},
           "catch-all with empty segments")
        # A middleware that set req.path before the handler read the params:
        # they stay those of the path the route was found by.
        d = params("/p/x/y/z", {"X-Rewrite": "/other/1/2/3"})
        eq(d["path"], "/other/1/2/3", "path rewritten")
        eq(d["params"], {"a": "x", "b": "y", "rest": "z"}, "params of the routed path")
        # Read first in the middleware (before the route's handler ran).
        eq(params("/p/1/2/3", {"X-Params-In-Mw": "1"})["params"],
           {"a": "1", "b": "2", "rest": "3", "seen_by_mw": "yes"}, "read in a middleware")
        # An absolute-form target is routed by its path.
        with Conn(g.port) as c:
            c.send(b"GET http://example.com/p/u/v/w?q=1 HTTP/1.1\r\nHost: example.com\r\n\r\n")
            r = c.read_response()
            eq(r.status, 200, "absolute-form status")
            eq(json.loads(r.body)["params"], {"a": "u", "b": "v", "rest": "w"}, "absolute-form params")
        # After the request finished (a timer holding the req), the path
        # having been set to another string, or to a number.
        for headers in ({}, {"X-Number-Path": "1"}):
            eq(g.http("GET", "/later/42/a/b", headers)[0], 200, "later")
            for _ in range(100):
                d = params("/late")
                if d["params"] != "none":
                    break
                time.sleep(0.01)
            eq(d["params"], {"id": "42", "rest": "a/b"},
               "params read after the request finished, req.path set (%s)" % headers)
        # No parameters: an empty table that cannot be written.
        eq(params("/plain"), {"n": True, "writable": False}, "route without parameters")
        # No route: an empty table of the request's own.
        st, _, _ = g.http("GET", "/nothing/here", {"X-Params-In-Mw": "1"})
        eq(st, 404, "no route")
