"""The request object: fields, query, headers, params, ctx, body and json."""

import json

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
