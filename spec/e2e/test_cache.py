"""gw.mw.cache: GET answers stored in a shared dict, X-Cache MISS then HIT
(across workers), HEAD served from a stored GET, Cache-Control no-store /
private / max-age on the response and no-cache on the request, Set-Cookie
and non-200 answers never stored, the key function, proxied answers
buffered and stored, and configuration errors with file:line."""

import json
import time

from gwtest import PRELUDE, Conn, Gateway, eq, line_of, req_bytes, run_cli
from origin import Origin, fill, pattern

CFG = PRELUDE + r'''
gw.use(gw.mw.request_id())
gw.shared_dict("cache", "4m")
gw.shared_dict("counts", "64k")
local counts = gw.shared.counts
local cache = gw.mw.cache { dict = "cache", ttl = 60 }

-- Each run of a handler answers a new number, so a cached answer shows.
local function counted(headers, status)
  return function(req)
    local n = counts:incr(req.path, 1, 0)
    return { status = status or 200, headers = headers or {}, json = { n = n, worker = gw.worker_id() } }
  end
end
gw.route({ "GET", "HEAD" }, "/c/plain", cache, counted({ ["X-Kept"] = "yes" }))
gw.route({ "GET", "HEAD" }, "/c/head", cache, counted())
gw.get("/c/nostore", cache, counted({ ["Cache-Control"] = "no-store" }))
gw.get("/c/private", cache, counted({ ["Cache-Control"] = "private, max-age=60" }))
gw.get("/c/maxage", cache, counted({ ["Cache-Control"] = "public, max-age=1" }))
gw.get("/c/maxage0", cache, counted({ ["Cache-Control"] = "max-age=0" }))
gw.get("/c/cookie", cache, counted({ ["Set-Cookie"] = "s=1" }))
gw.get("/c/auth", cache, counted())
gw.get("/c/authpublic", cache, counted({ ["Cache-Control"] = "public" }))
gw.get("/c/varystar", cache, counted({ ["Vary"] = "*" }))
-- The answer depends on Accept-Language and says so.
gw.get("/c/vary", cache, function(req)
  local n = counts:incr("vary", 1, 0)
  return { headers = { ["Vary"] = "Accept-Language, accept-encoding" },
           json = { n = n, lang = req.headers["accept-language"] or "none" } }
end)
gw.get("/c/missing", cache, counted(nil, 404))
gw.get("/c/short", gw.mw.cache { dict = "cache", ttl = 0.5 }, counted())
gw.get("/c/bypath", gw.mw.cache { dict = "cache", ttl = 60, key = function(req) return "p:" .. req.path end }, counted())
gw.get("/c/getonly", gw.mw.cache { dict = "cache", ttl = 60, methods = { "GET" } }, counted())
-- A header the core refuses to send (CR LF inside): never stored, where it
-- would have come back as two lines of the handler's making.
gw.get("/c/crlf", cache, counted({ ["X-Note"] = "a\r\nX-Injected: yes" }))
gw.get("/c/text", cache, function(req)
  return "text " .. counts:incr("text", 1, 0)
end)
local up = gw.upstream("o", { servers = { "127.0.0.1:@A@" } })
gw.get("/p/*rest", cache, function(req) return up:proxy(req, { path = "/" .. req.params.rest }) end)
'''


def get(g, path, headers=None, method="GET"):
    with Conn(g.port) as c:
        c.send(req_bytes(method, path, list((headers or {}).items())))
        return c.read_response(head=(method == "HEAD"))


def n_of(r):
    eq(r.status, 200, "status (%r)" % r.raw[:300])
    return json.loads(r.body)["n"]


def xc(r):
    return r.headers.get("x-cache")


def run(fn, workers=1):
    with Origin("A") as o, Gateway(fill(CFG, A=o), workers=workers) as g:
        fn(g, o)


def test_miss_then_hit():
    def t(g, o):
        r1 = get(g, "/c/plain")
        eq((xc(r1), n_of(r1)), ("MISS", 1), "first GET")
        assert "age" not in r1.headers, r1.headers
        r2 = get(g, "/c/plain", {"X-Request-Id": "cache-req-2"})
        eq((xc(r2), n_of(r2)), ("HIT", 1), "second GET is the stored answer")
        eq(r2.headers.get("x-kept"), "yes", "stored header")
        eq(r2.headers.get("content-type"), "application/json", "content type")
        eq(r2.headers.get("x-request-id"), "cache-req-2", "a hit carries this request's id")
        assert r2.headers.get("age", "").isdigit(), "Age on a hit: %r" % r2.headers
        eq(r2.body, r1.body, "same body")
        r3 = get(g, "/c/plain?x=1")
        eq((xc(r3), n_of(r3)), ("MISS", 2), "the query is part of the default key")
    run(t)


def test_head_uses_a_stored_get_and_stores_nothing():
    def t(g, o):
        h1 = get(g, "/c/head", method="HEAD")
        eq((h1.status, xc(h1), h1.body), (200, "MISS", b""), "HEAD first: a miss")
        r = get(g, "/c/head")
        eq((xc(r), n_of(r)), ("MISS", 2), "the HEAD stored nothing")
        h2 = get(g, "/c/head", method="HEAD")
        eq((h2.status, xc(h2), h2.body), (200, "HIT", b""), "HEAD after GET: a hit without body")
        eq(h2.headers.get("content-length"), str(len(r.body)), "the GET's length")
        g2 = get(g, "/c/getonly")
        eq(xc(g2), "MISS", "getonly")
        eq(xc(get(g, "/c/getonly", method="HEAD")), None, "HEAD not in methods: not served from the cache")
    run(t)


def test_not_stored():
    def t(g, o):
        for path in ("/c/nostore", "/c/private", "/c/maxage0", "/c/cookie"):
            ns = [n_of(get(g, path)) for _ in range(2)]
            eq(ns, [1, 2], "%s is not stored" % path)
        r = get(g, "/c/cookie")
        eq((xc(r), r.headers.get("set-cookie")), ("MISS", "s=1"), "Set-Cookie passes, uncached")
        eq([n_of(get(g, "/c/varystar")) for _ in range(2)], [1, 2], "Vary: * is not stored")
        auth = {"Authorization": "Bearer x"}
        eq([n_of(get(g, "/c/auth", auth)) for _ in range(2)], [1, 2], "with Authorization: not stored")
        eq([xc(get(g, "/c/authpublic", auth)) for _ in range(2)], ["MISS", "HIT"],
           "with Authorization and Cache-Control: public: stored")
        r = get(g, "/c/missing")
        r = get(g, "/c/missing")
        eq((r.status, xc(r), json.loads(r.body)["n"]), (404, "MISS", 2), "a 404 is not stored")
    run(t)


def test_vary_stores_one_answer_per_value():
    def t(g, o):
        def ask(lang=None, enc=None):
            h = {}
            if lang is not None:
                h["Accept-Language"] = lang
            if enc is not None:
                h["Accept-Encoding"] = enc
            r = get(g, "/c/vary", h)
            body = json.loads(r.body)
            return xc(r), body["n"], body["lang"]
        eq(ask("en"), ("MISS", 1, "en"), "en first")
        eq(ask("fr"), ("MISS", 2, "fr"), "fr is another variant")
        eq(ask("en"), ("HIT", 1, "en"), "en again: its own stored answer")
        eq(ask("fr"), ("HIT", 2, "fr"), "fr again")
        eq(ask("  en "), ("HIT", 1, "en"), "blanks around the value do not matter")
        eq(ask(), ("MISS", 3, "none"), "no Accept-Language: a variant of its own")
        eq(ask(""), ("MISS", 4, ""), "an empty one is another")
        eq(ask(), ("HIT", 3, "none"), "absent again")
        eq(ask("en", "gzip"), ("MISS", 5, "en"), "every header Vary names counts")
        eq(ask("en"), ("HIT", 1, "en"), "the first en variant is still there")
    run(t)


def test_max_age_overrides_ttl_and_ttl_expires():
    def t(g, o):
        eq([xc(get(g, "/c/maxage")) for _ in range(2)], ["MISS", "HIT"], "max-age=1")
        eq([xc(get(g, "/c/short")) for _ in range(2)], ["MISS", "HIT"], "ttl 0.5")
        time.sleep(1.2)
        r = get(g, "/c/maxage")
        eq((xc(r), n_of(r)), ("MISS", 2), "max-age=1 over ttl=60: gone after 1.2 s")
        r = get(g, "/c/short")
        eq((xc(r), n_of(r)), ("MISS", 2), "ttl 0.5 gone after 1.2 s")
    run(t)


def test_request_no_cache_refreshes():
    def t(g, o):
        eq(n_of(get(g, "/c/plain")), 1, "stored")
        r = get(g, "/c/plain", {"Cache-Control": "no-cache"})
        eq((xc(r), n_of(r)), ("MISS", 2), "no-cache skips the look-up")
        r = get(g, "/c/plain")
        eq((xc(r), n_of(r)), ("HIT", 2), "and stored the fresh answer")
        r = get(g, "/c/plain", {"Cache-Control": "no-store"})
        eq((xc(r), n_of(r)), ("HIT", 2), "no-store on the request still reads")
    run(t)


def test_key_function():
    def t(g, o):
        eq(n_of(get(g, "/c/bypath?a=1")), 1, "first")
        r = get(g, "/c/bypath?a=2")
        eq((xc(r), n_of(r)), ("HIT", 1), "the key ignores the query")
    run(t)


def test_text_answer():
    def t(g, o):
        a, b = get(g, "/c/text"), get(g, "/c/text")
        eq((a.body, xc(a)), (b"text 1", "MISS"), "first")
        eq((b.body, xc(b), b.headers.get("content-type")), (b"text 1", "HIT", "text/plain; charset=utf-8"), "hit")
    run(t)


def test_proxied_answer_is_buffered_and_stored():
    def t(g, o):
        r1 = get(g, "/p/bytes?n=200000")
        eq((r1.status, xc(r1), r1.body), (200, "MISS", pattern(200000)), "first, from the origin")
        r2 = get(g, "/p/bytes?n=200000")
        eq((r2.status, xc(r2), r2.body), (200, "HIT", pattern(200000)), "second, from the cache")
        eq(r2.headers.get("x-origin"), "A", "the origin's header is kept")
        eq(o.requests, 1, "requests that reached the origin")
        # The origin's Set-Cookie and Cache-Control are honoured.
        eq([xc(get(g, "/p/echo?rh=Set-Cookie:a%3D1")) for _ in range(2)], ["MISS", "MISS"], "origin Set-Cookie")
        eq([xc(get(g, "/p/echo?rh=Cache-Control:no-store")) for _ in range(2)], ["MISS", "MISS"], "origin no-store")
        eq([xc(get(g, "/p/status/500")) for _ in range(2)], ["MISS", "MISS"], "origin 500")
    run(t)


def test_shared_across_workers():
    def t(g, o):
        eq(len(g.wait_workers(2)), 2, "workers")
        first = get(g, "/c/plain")
        eq(n_of(first), 1, "first")
        for _ in range(30):
            r = get(g, "/c/plain")
            doc = json.loads(r.body)
            eq((xc(r), doc["n"]), ("HIT", 1), "every later answer is the stored one")
        # Whichever worker took a request, none ran the handler again.
        eq(n_of(get(g, "/c/plain?other")), 2, "the handler ran only twice in all")
    run(t, workers=2)


def check_cli_error(cfg, needle):
    rc, out, err, _ = run_cli(["-t", "-c", "$DIR/gateway.lua"], {"gateway.lua": cfg})
    text = out + err
    assert rc != 0, "-t accepted a bad configuration: %s" % text
    assert needle in text, "%r not in %r" % (needle, text)
    line = line_of(cfg, "gw.mw.cache")
    assert ("gateway.lua:%d:" % line) in text, "no file:line %d in %r" % (line, text)


def test_configuration_errors():
    d = 'gw.shared_dict("c", "1m")\n'
    cases = [
        ('local m = gw.mw.cache { ttl = 5 }\n', "dict (the name of a gw.shared_dict) is required"),
        ('local m = gw.mw.cache { dict = "nope", ttl = 5 }\n', "dict 'nope' is not declared"),
        (d + 'local m = gw.mw.cache { dict = "c" }\n', "ttl must be"),
        (d + 'local m = gw.mw.cache { dict = "c", ttl = 5, methods = { "POST" } }\n', "methods may only be GET and HEAD"),
        (d + 'local m = gw.mw.cache { dict = "c", ttl = 5, key = "path" }\n', "key must be a function"),
        (d + 'local m = gw.mw.cache { dict = "c", ttl = 5, size = 1 }\n', "unknown option 'size'"),
    ]
    for body, needle in cases:
        check_cli_error(PRELUDE + body, needle)


def test_an_answer_with_a_crlf_header_is_never_stored():
    def t(g, o):
        for n in range(3):
            r = get(g, "/c/crlf")
            eq(r.status, 500, "the handler's answer cannot be sent (%r)" % r.raw[:200])
            assert b"x-injected" not in r.raw.lower(), r.raw
        g.wait_stderr("cache: an answer with an invalid header is not stored")
    run(t)


def test_headers_named_in_connection_are_not_stored():
    # An upstream's Connection header names hop-by-hop headers: the answer
    # drops them, and a hit replayed them from the store.
    def t(g, o):
        path = "/p/echo/nominated?rh=Connection:x-secret&rh=X-Secret:1&rh=X-Kept:yes"
        r1 = get(g, path)
        eq((xc(r1), r1.headers.get("x-secret"), r1.headers.get("x-kept")), ("MISS", None, "yes"), "a miss")
        r2 = get(g, path)
        eq((xc(r2), r2.headers.get("x-secret"), r2.headers.get("x-kept")), ("HIT", None, "yes"), "a hit")
    run(t)
