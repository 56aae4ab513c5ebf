"""gw.mw.headers: request edits seen by the handler and the upstream,
response edits on handler, upstream and error answers, names
case-insensitive, options checked at load."""

import json

from gwtest import PRELUDE, Gateway, eq, run_cli
from origin import Origin, fill

CFG = PRELUDE + r'''
local up = gw.upstream("o", { servers = { "127.0.0.1:@A@" } })
gw.use(gw.mw.headers {
  request = { set = { ["X-Gateway"] = "gw-1", ["x-client"] = "forced", ["X-Num"] = 42 },
              remove = { "Cookie", "X-Secret" } },
  response = { set = { ["X-Frame-Options"] = "DENY", ["Cache-Control"] = "no-store" },
               remove = { "X-Powered-By", "Server", "X-Origin" } },
})
gw.use("/locked", gw.mw.key_auth { keys = { k = "a" } })
gw.get("/local", function(req)
  return { status = 200,
           headers = { ["x-powered-by"] = "lua", ["cache-control"] = "max-age=60", ["X-Kept"] = "1" },
           json = { gateway = req.headers["x-gateway"], client = req.headers["X-Client"],
                    num = req.headers["x-num"], cookie = req.headers.cookie or false,
                    secret = req.headers["x-secret"] or false, other = req.headers["x-other"] } }
end)
gw.get("/locked/x", function(req) return "never" end)
gw.get("/p/*rest", function(req) return up:proxy(req) end)
'''

SENT = {"Cookie": "session=1", "X-Secret": "s", "X-Client": "mine", "X-Other": "o"}


def test_request_edits_reach_the_handler():
    with Origin("A") as a, Gateway(fill(CFG, A=a)) as g:
        st, h, body = g.get("/local", SENT)
        eq(st, 200, "status")
        eq(json.loads(body), {"gateway": "gw-1", "client": "forced", "num": "42", "cookie": False,
                              "secret": False, "other": "o"}, "request headers seen by the handler")


def test_request_edits_reach_the_upstream():
    with Origin("A") as a, Gateway(fill(CFG, A=a)) as g:
        st, _, body = g.get("/p/echo", SENT)
        eq(st, 200, "status")
        got = {}
        for k, v in json.loads(body)["headers"]:
            got.setdefault(k.lower(), []).append(v)
        eq(got.get("x-gateway"), ["gw-1"], "set")
        eq(got.get("x-client"), ["forced"], "client value replaced, not doubled")
        eq(got.get("x-num"), ["42"], "number value")
        eq(got.get("x-other"), ["o"], "untouched header")
        assert "cookie" not in got and "x-secret" not in got, "removed headers went upstream: %r" % got


def test_response_edits_on_handler_answer():
    with Origin("A") as a, Gateway(fill(CFG, A=a)) as g:
        st, h, _ = g.get("/local")
        eq(h.get("x-frame-options"), "DENY", "set")
        eq(h.get("cache-control"), "no-store", "replaced (one header, whatever its case)")
        assert "x-powered-by" not in h, "removed despite another case: %r" % h
        eq(h.get("x-kept"), "1", "untouched header")


def test_response_edits_on_upstream_answer():
    with Origin("A") as a, Gateway(fill(CFG, A=a)) as g:
        st, h, _ = g.get("/p/echo?rh=X-Powered-By:php&rh=Cache-Control:public")
        eq(st, 200, "status")
        for gone in ("x-powered-by", "server", "x-origin"):
            assert gone not in h, "%s still sent: %r" % (gone, h)
        eq((h.get("x-frame-options"), h.get("cache-control")), ("DENY", "no-store"), "set")


def test_response_edits_on_error_answers():
    with Origin("A") as a, Gateway(fill(CFG, A=a)) as g:
        st, h, _ = g.get("/locked/x")
        eq((st, h.get("x-frame-options"), h.get("www-authenticate")), (401, "DENY", "Key"), "401")
        st, h, _ = g.get("/nowhere")
        eq((st, h.get("x-frame-options")), (404, "DENY"), "404 (global middleware)")


BAD_OPTIONS = [
    ('{ request = { set = { ["bad name"] = "v" } } }', 'request.set: "bad name" is not a header name'),
    ('{ response = { set = { ["X-A"] = "a\\r\\nX-B: b" } } }', "without CR, LF or NUL"),
    ('{ response = { set = { ["X-A"] = true } } }', "without CR, LF or NUL"),
    ('{ request = { set = { ["Content-Length"] = "0" } } }', "Content-Length is set by the gateway"),
    ('{ response = { remove = { "transfer-encoding" } } }', "transfer-encoding is set by the gateway"),
    ('{ request = { set = "X-A: 1" } }', "request.set must be a table"),
    ('{ request = { add = { ["X-A"] = "1" } } }', "headers: request: unknown option 'add'"),
    ('{ requests = {} }', "unknown option 'requests'"),
    ('{ response = { remove = { "ok", "not ok" } } }', '"not ok" is not a header name'),
]


def test_bad_options_fail_the_configuration():
    for opts, want in BAD_OPTIONS:
        rc, _, err, _ = run_cli(["-t", "-c", "gateway.lua"],
                                {"gateway.lua": PRELUDE + "local mw = gw.mw.headers " + opts + "\n"})
        eq(rc, 1, opts)
        assert "gateway.lua:3: headers: " in err and want in err, "%s: %s" % (opts, err)
