"""Routing and responses: strings, json, status/headers, params, catch-all,
404/405 errors, HEAD, host routing, method lists."""

import json
import re

from gwtest import PRELUDE, Conn, Gateway, curl, eq, http, req_bytes

ROUTES = PRELUDE + r'''
gw.get("/hello", function(req) return "hello world" end)
gw.get("/json", function(req)
  return { json = { name = "gw", list = { 1, 2, 3 }, nested = { ok = true } } }
end)
gw.get("/custom", function(req)
  return { status = 201, headers = { ["X-Custom"] = "yes", ["Content-Type"] = "text/csv" },
           body = "a,b\n1,2\n" }
end)
gw.get("/users/:id", function(req) return "user " .. req.params.id end)
gw.get("/users/me", function(req) return "me" end)
gw.get("/users/:id/posts/:post", function(req) return { json = req.params } end)
gw.get("/static/*path", function(req) return "static:" .. req.params.path end)
gw.post("/items", function(req) return { status = 201, body = "created" } end)
gw.get("/both", function(req) return "get" end)
gw.post("/both", function(req) return "post" end)
gw.route({ "PUT", "PATCH" }, "/multi", function(req) return "multi " .. req.method end)
gw.route("*", "/any", function(req) return "any " .. req.method end)
gw.put("/sh", function(req) return "put" end)
gw.patch("/sh", function(req) return "patch" end)
gw.delete("/sh", function(req) return "delete" end)
'''


def test_string_is_200_text_plain():
    with Gateway(ROUTES) as g:
        st, h, body = g.get("/hello")
        eq(st, 200, "status")
        assert h.get("content-type", "").startswith("text/plain"), h
        eq(body, b"hello world", "body")
        eq(h.get("content-length"), "11", "content-length")


def test_json_response():
    with Gateway(ROUTES) as g:
        st, h, body = g.get("/json")
        eq(st, 200, "status")
        assert h.get("content-type", "").startswith("application/json"), h
        eq(json.loads(body), {"name": "gw", "list": [1, 2, 3], "nested": {"ok": True}}, "json")


def test_status_and_headers_from_table():
    with Gateway(ROUTES) as g:
        st, h, body = g.get("/custom")
        eq(st, 201, "status")
        eq(h.get("x-custom"), "yes", "x-custom")
        eq(h.get("content-type"), "text/csv", "content-type")
        eq(body, b"a,b\n1,2\n", "body")


def test_params_and_static_priority():
    with Gateway(ROUTES) as g:
        eq(g.get("/users/42")[2], b"user 42", "/users/42")
        eq(g.get("/users/me")[2], b"me", "static beats param")
        st, h, body = g.get("/users/7/posts/abc")
        eq(st, 200, "status")
        eq(json.loads(body), {"id": "7", "post": "abc"}, "params")


def test_catch_all():
    with Gateway(ROUTES) as g:
        st, _, body = g.get("/static/css/site.css")
        eq((st, body), (200, b"static:css/site.css"), "catch-all")
        eq(g.get("/static/")[2], b"static:", "empty catch-all")


def _check_error_json(st, h, body, status):
    eq(st, status, "status")
    assert h.get("content-type", "").startswith("application/json"), h
    doc = json.loads(body)
    assert isinstance(doc.get("error"), str) and doc["error"], doc
    assert isinstance(doc.get("request_id"), str) and doc["request_id"], doc
    return doc


def test_404_json():
    with Gateway(ROUTES) as g:
        st, h, body = g.get("/nope/nothing")
        _check_error_json(st, h, body, 404)
        # Request ids differ between requests.
        a = json.loads(g.get("/nope")[2])["request_id"]
        b = json.loads(g.get("/nope")[2])["request_id"]
        assert a != b, (a, b)


def test_405_with_allow():
    with Gateway(ROUTES) as g:
        st, h, body = g.get("/items")
        _check_error_json(st, h, body, 405)
        allow = {m.strip() for m in h.get("allow", "").split(",") if m.strip()}
        eq(allow, {"POST"}, "Allow for POST-only route")
        st, h, body = g.http("DELETE", "/both")
        _check_error_json(st, h, body, 405)
        allow = {m.strip() for m in h.get("allow", "").split(",") if m.strip()}
        eq(allow, {"GET", "HEAD", "POST"}, "Allow for GET+POST route")


def test_head_on_get_route():
    with Gateway(ROUTES) as g:
        st, h, body = g.http("HEAD", "/hello")
        eq(st, 200, "HEAD status")
        eq(h.get("content-length"), "11", "HEAD content-length")
        eq(body, b"", "HEAD body")
        # On the wire: HEAD then GET on one connection; the HEAD answer must
        # carry no body bytes, so the GET answer follows the HEAD head at once.
        with Conn(g.port) as c:
            c.send(req_bytes("HEAD", "/hello") + req_bytes("GET", "/hello"))
            r1 = c.read_response(head=True)
            eq(r1.status, 200, "HEAD status (raw)")
            eq(r1.headers.get("content-length"), "11", "HEAD content-length (raw)")
            r2 = c.read_response()
            eq(r2.status, 200, "GET after HEAD")
            eq(r2.body, b"hello world", "GET body after HEAD")


def test_host_routing():
    cfg = PRELUDE + r'''
gw.route { method = "GET", path = "/who", host = "api.example.com",
           handler = function(req) return "exact" end }
gw.route { method = "GET", path = "/who", host = "*.example.com",
           handler = function(req) return "wild" end }
gw.get("/who", function(req) return "default" end)
'''
    with Gateway(cfg) as g:
        eq(g.get("/who", {"Host": "api.example.com"})[2], b"exact", "exact host")
        eq(g.get("/who", {"Host": "API.Example.com:8080"})[2], b"exact", "host case/port")
        eq(g.get("/who", {"Host": "www.example.com"})[2], b"wild", "wildcard host")
        eq(g.get("/who", {"Host": "example.org"})[2], b"default", "other host")
        eq(g.get("/who")[2], b"default", "ip host")


def test_method_lists_star_and_shorthands():
    with Gateway(ROUTES) as g:
        eq(g.http("PUT", "/multi")[2], b"multi PUT", "PUT in list")
        eq(g.http("PATCH", "/multi")[2], b"multi PATCH", "PATCH in list")
        eq(g.http("GET", "/multi")[0], 405, "GET not in list")
        eq(g.http("OPTIONS", "/any")[2], b"any OPTIONS", "* matches OPTIONS")
        eq(g.http("DELETE", "/any")[2], b"any DELETE", "* matches DELETE")
        eq(g.http("PUT", "/sh")[2], b"put", "gw.put")
        eq(g.http("PATCH", "/sh")[2], b"patch", "gw.patch")
        eq(g.http("DELETE", "/sh")[2], b"delete", "gw.delete")
        st, _, body = g.http("POST", "/items", body=b"x")
        eq((st, body), (201, b"created"), "gw.post")


def test_with_curl():
    with Gateway(ROUTES) as g:
        # Two URLs in one curl run: the second reuses the kept-alive connection.
        rc, out, err = curl("-sS", "-v", "--http1.1", g.url("/hello"), g.url("/users/9"))
        eq(rc, 0, "curl exit status (%s)" % err[-500:])
        eq(out, "hello worlduser 9", "bodies")
        assert re.search(r"Re-?using existing connection", err, re.I), \
            "curl did not reuse the connection:\n" + err[-1500:]
        rc, out, err = curl("-sS", "-o", "/dev/null", "-w", "%{http_code}", "-X", "POST",
                            "-H", "Transfer-Encoding: chunked", "--data-binary", "abc",
                            g.url("/items"))
        eq((rc, out), (0, "201"), "chunked POST with curl (%s)" % err[-300:])


def test_request_id_middleware_matches_error_body():
    cfg = PRELUDE + r'''
gw.use(gw.mw.request_id())
gw.get("/id", function(req) return req.id end)
'''
    with Gateway(cfg) as g:
        st, h, body = g.get("/nope")
        doc = _check_error_json(st, h, body, 404)
        eq(doc["request_id"], h.get("x-request-id"), "404 request_id vs X-Request-Id")
        st, h, body = g.get("/id", {"X-Request-Id": "abc-123"})
        eq(body, b"abc-123", "incoming id kept in req.id")
        eq(h.get("x-request-id"), "abc-123", "incoming id sent back")
        st, h, body = g.get("/id")
        assert body and body.decode() == h.get("x-request-id"), (body, h)


def test_request_id_keeps_only_safe_ids():
    cfg = PRELUDE + r'''
gw.use(gw.mw.request_id())
gw.get("/id", function(req) return req.id .. " " .. req.headers["x-request-id"] end)
'''
    kept = ["abc-123", "A_b.c:9", "f47ac10b-58cc-4372-a567-0e02b2c3d479", "x" * 128]
    replaced = ['a"b', "a\\b", "a b", "a,b", "a{b}", "x" * 129, "caf\u00e9"]
    with Gateway(cfg) as g:
        for rid in kept:
            st, h, body = g.get("/id", {"X-Request-Id": rid})
            eq((st, body.decode(), h.get("x-request-id")), (200, rid + " " + rid, rid), "id %r kept" % rid)
        for rid in replaced:
            st, h, body = g.get("/id", {"X-Request-Id": rid.encode("utf-8")})
            new = h.get("x-request-id", "")
            assert re.fullmatch(r"[0-9a-f]{32}", new), "id %r: sent back %r" % (rid, new)
            # The fresh id replaces the client's in req.id and upstream alike.
            eq((st, body.decode()), (200, new + " " + new), "id %r replaced" % rid)


def test_module_beside_config_and_stdlib():
    cfg = PRELUDE + r'''
local helper = require "helper"
gw.get("/helper", function(req) return helper.greet(req.params.x or "you") end)
gw.get("/stdlib", function(req)
  local f = assert(io.open("$DIR/data.txt", "r"))
  local text = f:read("*a")
  f:close()
  return { json = { text = text, floor = math.floor(2.7), upper = string.upper("ab"),
                    joined = table.concat({ "a", "b" }, "-"), time = type(os.time()) } }
end)
'''
    files = {"helper.lua": 'local M = {}\nfunction M.greet(n) return "hi " .. n end\nreturn M\n',
             "data.txt": "from a file"}
    with Gateway(cfg, files=files) as g:
        eq(g.get("/helper")[:3:2], (200, b"hi you"), "require of a module beside the config")
        st, _, body = g.get("/stdlib")
        eq(st, 200, "status")
        eq(json.loads(body), {"text": "from a file", "floor": 2, "upper": "AB",
                              "joined": "a-b", "time": "number"}, "standard libraries")


def test_two_listeners():
    cfg = r'''local gw = require "gateway"
gw.config { listen = { "127.0.0.1:$PORT", "127.0.0.1:$PORT2" } }
gw.get("/hello", function(req) return "hello" end)
'''
    with Gateway(cfg) as g:
        eq(http(g.port, "GET", "/hello")[:3:2], (200, b"hello"), "first listener")
        eq(http(g.port2, "GET", "/hello")[:3:2], (200, b"hello"), "second listener")


def test_empty_and_large_responses():
    cfg = PRELUDE + r'''
gw.get("/nocontent", function(req) return { status = 204 } end)
gw.get("/empty", function(req) return "" end)
gw.get("/big", function(req) return string.rep("0123456789", 200000) end)
'''
    with Gateway(cfg) as g:
        with Conn(g.port) as c:
            c.send(req_bytes("GET", "/nocontent") + req_bytes("GET", "/empty")
                   + req_bytes("GET", "/big"))
            r = c.read_response()
            eq((r.status, r.body), (204, b""), "204")
            assert "content-length" not in r.headers or r.headers["content-length"] == "0", r.headers
            r = c.read_response()
            eq((r.status, r.body, r.headers.get("content-length")), (200, b"", "0"), "empty string")
            r = c.read_response(timeout=10)
            eq(r.status, 200, "big status")
            eq(len(r.body), 2000000, "big body length")
            assert r.body == b"0123456789" * 200000, "big body content"


def test_multi_value_response_header():
    cfg = PRELUDE + r'''
gw.get("/cookies", function(req)
  return { status = 200, headers = { ["Set-Cookie"] = { "a=1", "b=2" } }, body = "c" }
end)
'''
    with Gateway(cfg) as g:
        with Conn(g.port) as c:
            c.send(req_bytes("GET", "/cookies"))
            r = c.read_response()
            eq(r.status, 200, "status")
            cookies = [v for k, v in r.header_list if k.lower() == "set-cookie"]
            eq(cookies, ["a=1", "b=2"], "one Set-Cookie line per value")
