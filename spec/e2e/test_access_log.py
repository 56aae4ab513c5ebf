"""The access log: one JSON object per line, per request."""

import json
import os
import re
import time

from gwtest import Gateway, check_error, eq, raw, req_bytes, wait_for

APP = r'''
gw.get("/hello", function(req) return "hello" end)
gw.post("/echo", function(req) return req:body() end)
gw.get("/boom", function(req) error("boom") end)
'''


def _entries(text):
    out = []
    for line in text.split("\n"):
        if line.strip():
            try:
                out.append(json.loads(line))
            except ValueError:
                raise AssertionError("access log line is not JSON: %r" % line)
    return out


def _duration(entry):
    for k, v in entry.items():
        if re.search(r"duration|latency|request_time|elapsed", k) and isinstance(v, (int, float)):
            return v
    raise AssertionError("no numeric duration field in %r" % entry)


def _find(entries, path):
    for e in entries:
        if e.get("path") == path:
            return e
    raise AssertionError("no entry with path %r in %r" % (path, entries))


def test_access_log_stdout():
    cfg = ('local gw = require "gateway"\n'
           'gw.config { listen = { "127.0.0.1:$PORT" }, access_log = "stdout" }\n') + APP
    with Gateway(cfg) as g:
        t0 = time.monotonic()
        g.get("/hello?x=1")
        client_ms = (time.monotonic() - t0) * 1000
        g.http("POST", "/echo", body=b"abc")
        g.get("/missing")
        g.get("/boom")
        lines = g.wait_stdout_lines(4)
        entries = _entries("\n".join(lines))
        eq(len(entries), 4, "one line per request")
        e = _find(entries, "/hello")
        eq((e.get("method"), e.get("status")), ("GET", 200), "GET /hello entry")
        # duration_ms: from the request's first byte to the answer's last,
        # so within what the client measured around the whole exchange.
        d = _duration(e)
        assert 0 < d <= client_ms, "duration %r ms, the client saw %.3f ms" % (d, client_ms)
        e = _find(entries, "/echo")
        eq((e.get("method"), e.get("status")), ("POST", 200), "POST /echo entry")
        eq(_find(entries, "/missing").get("status"), 404, "404 entry")
        eq(_find(entries, "/boom").get("status"), 500, "500 entry")


def test_access_log_file_and_off():
    cfg = ('local gw = require "gateway"\n'
           'gw.config { listen = { "127.0.0.1:$PORT" }, access_log = "$DIR/a.log" }\n') + APP
    with Gateway(cfg) as g:
        g.get("/hello")
        path = os.path.join(g.dir, "a.log")

        def read():
            try:
                with open(path) as f:
                    text = f.read()
            except OSError:
                return None
            return text if "/hello" in text else None
        text = wait_for(read, 3)
        assert text, "no /hello line in %s" % path
        e = _find(_entries(text), "/hello")
        eq(e.get("status"), 200, "status in file")
        assert "/hello" not in g.stdout_text(), "file log also went to stdout"
    cfg = ('local gw = require "gateway"\n'
           'gw.config { listen = { "127.0.0.1:$PORT" }, access_log = false }\n') + APP
    with Gateway(cfg) as g:
        eq(g.get("/hello")[0], 200, "request")
        g.get("/hello")
    assert "/hello" not in g.stdout_text(), "access_log = false still logs: %r" % g.stdout_text()


# A request id written to close the JSON string and add keys of its own, and
# the same trick in an id a script sets (any bytes but CR, LF and NUL).
FORGED = 'x","status":200,"path":"/forged","ip":"10.9.9.9'
SCRIPT_ID = 'x","status":201,"path":"/forged'

ESCAPE_APP = r'''
local dead = gw.upstream("dead", { servers = { "127.0.0.1:$PORT2" }, retries = 0 })
gw.use("/mw", gw.mw.request_id())
gw.get("/mw/hello", function(req) return "hello" end)
-- The middleware returns the deferred answer unseen, so C makes the 502 when
-- the upstream refuses (upstream.lua commit_deferred), with the script's id.
local function set_id(req, next)
  req.id = 'x","status":201,"path":"/forged'
  return next()
end
gw.get("/script-id", set_id, function(req) return dead:proxy(req) end)
gw.get("/files/*rest", function(req) return "file" end)
'''


def test_access_log_fields_cannot_be_forged():
    # $PORT2 has no listener: the proxied route fails with a JSON error made in C.
    cfg = ('local gw = require "gateway"\n'
           'gw.config { listen = { "127.0.0.1:$PORT" }, access_log = "stdout" }\n') + ESCAPE_APP
    with Gateway(cfg) as g:
        forged = [("X-Request-Id", FORGED), ("Connection", "close")]
        resp = raw(g.port, req_bytes("GET", "/mw/hello", forged))
        assert resp.startswith(b"HTTP/1.1 200"), resp[:200]
        doc = check_error(raw(g.port, req_bytes("GET", "/mw/missing", forged)), 404)
        assert re.fullmatch(r"[0-9a-f]{32}", doc["request_id"]), \
            "a quoting X-Request-Id was kept: %r" % doc["request_id"]
        resp = raw(g.port, req_bytes("GET", "/script-id", [("Connection", "close")]))
        eq(check_error(resp, 502)["request_id"], SCRIPT_ID, "request_id of the C-made 502")
        # llhttp takes '"' and '\\' as they are in a target.
        resp = raw(g.port, b'GET /files/a"b\\c HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n')
        assert resp.startswith(b"HTTP/1.1 200"), resp[:200]
        entries = _entries("\n".join(g.wait_stdout_lines(4)))
        eq([(e["path"], e["status"], e["ip"]) for e in entries],
           [("/mw/hello", 200, "127.0.0.1"), ("/mw/missing", 404, "127.0.0.1"),
            ("/script-id", 502, "127.0.0.1"), ('/files/a"b\\c', 200, "127.0.0.1")],
           "path, status and ip of each line")
        eq(entries[2]["request_id"], SCRIPT_ID, "a script's id, logged as one string")
        for e in entries[:2]:
            assert re.fullmatch(r"[0-9a-f]{32}", e["request_id"]), e


def test_route_field_is_the_pattern_or_what_a_script_set():
    # req.route is read from routing when asked; a script may set its own,
    # which then labels the log line (and the metrics) instead.
    cfg = ('local gw = require "gateway"\n'
           'gw.config { listen = { "127.0.0.1:$PORT" }, access_log = "stdout" }\n'
           'gw.get("/users/:id", function(req) return req.route end)\n'
           'gw.get("/named/:id", function(req) req.route = "custom" return req.route end)\n'
           'gw.get("/hide/:id", function(req) req.route = nil\n'
           '  return tostring(req.route) .. " " .. req.params.id end)\n')
    with Gateway(cfg) as g:
        eq(g.get("/users/7")[2], b"/users/:id", "req.route read by the handler")
        eq(g.get("/named/7")[2], b"custom", "req.route set by the handler")
        eq(g.get("/hide/7")[2], b"nil 7", "req.route set to nil; the params stay")
        g.get("/nowhere")
        entries = _entries("\n".join(g.wait_stdout_lines(4)))
        eq(_find(entries, "/users/7").get("route"), "/users/:id", "logged route")
        eq(_find(entries, "/named/7").get("route"), "custom", "logged route set by the script")
        eq(_find(entries, "/hide/7").get("route"), "", "route set to nil: no label")
        eq(_find(entries, "/nowhere").get("route"), "", "no route")
