"""The access log: one JSON object per line, per request."""

import json
import os
import re
import time

from gwtest import Gateway, eq, wait_for

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
