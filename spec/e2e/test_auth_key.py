"""gw.mw.key_auth: the key from the header or the query, req.consumer, 401
with `WWW-Authenticate: Key` and the JSON error, options checked when the
configuration loads."""

import json

from gwtest import PRELUDE, Conn, Gateway, check_error, eq, req_bytes, run_cli

CFG = PRELUDE + r'''
gw.use(gw.mw.request_id())
gw.use("/api", gw.mw.key_auth { keys = { ["secret-1"] = "alice", ["s2"] = "bob" } })
gw.get("/api/me", function(req)
  return { json = { consumer = req.consumer, forwarded = req.headers["x-api-key"] or false } }
end)
gw.get("/open", function(req) return { json = { consumer = req.consumer or false } } end)
'''


def me(g, path="/api/me", headers=None):
    st, h, body = g.get(path, headers)
    return st, h, json.loads(body)


def check_401(g, path, headers=None, message=None):
    with Conn(g.port) as c:
        hdrs = list((headers or {}).items())
        c.send(req_bytes("GET", path, hdrs))
        r = c.read_response()
    doc = check_error(r, 401)
    eq(r.headers.get("www-authenticate"), "Key", "WWW-Authenticate")
    if message:
        eq(doc["error"], message, "error message")
    return r, doc


def test_key_in_header():
    with Gateway(CFG) as g:
        st, _, doc = me(g, headers={"X-Api-Key": "secret-1"})
        eq((st, doc["consumer"]), (200, {"name": "alice"}), "header key")
        st, _, doc = me(g, headers={"x-api-key": "s2"})
        eq((st, doc["consumer"]), (200, {"name": "bob"}), "second key")


def test_key_in_query():
    with Gateway(CFG) as g:
        st, _, doc = me(g, "/api/me?apikey=secret-1")
        eq((st, doc["consumer"]), (200, {"name": "alice"}), "query key")
        st, _, doc = me(g, "/api/me?x=1&apikey=s%32")
        eq((st, doc["consumer"]), (200, {"name": "bob"}), "url-encoded query key")


def test_header_wins_over_query():
    with Gateway(CFG) as g:
        check_401(g, "/api/me?apikey=secret-1", {"X-Api-Key": "wrong"}, "invalid API key")


def test_missing_key_401():
    with Gateway(CFG) as g:
        r, doc = check_401(g, "/api/me", message="missing API key")
        eq(r.headers.get("x-request-id"), doc["request_id"], "request id")
        check_401(g, "/api/me", {"X-Api-Key": ""}, "missing API key")
        check_401(g, "/api/me?apikey", message="missing API key")


def test_wrong_key_401():
    with Gateway(CFG) as g:
        for bad in ("secret-", "secret-12", "Secret-1", "s", "x" * 4000):
            check_401(g, "/api/me", {"X-Api-Key": bad}, "invalid API key")
        check_401(g, "/api/me?apikey=secret-2", message="invalid API key")
        check_401(g, "/api/me?apikey=secret-1&apikey=secret-1", message="missing API key")


def test_only_under_prefix_and_before_404():
    with Gateway(CFG) as g:
        st, _, doc = me(g, "/open")
        eq((st, doc), (200, {"consumer": False}), "no auth outside /api")
        check_401(g, "/api/nothing-here", message="missing API key")
        eq(g.get("/api/nothing-here", {"X-Api-Key": "s2"})[0], 404, "authenticated 404")


def test_custom_names_and_disabled_query():
    cfg = PRELUDE + r'''
gw.use(gw.mw.key_auth { keys = { k = "carol" }, header = "Authorization-Key", query = false })
gw.get("/x", function(req) return req.consumer.name end)
'''
    with Gateway(cfg) as g:
        eq(g.get("/x", {"Authorization-Key": "k"})[:3:2], (200, b"carol"), "custom header")
        eq(g.get("/x", {"X-Api-Key": "k"})[0], 401, "default header no longer read")
        eq(g.get("/x?apikey=k")[0], 401, "query disabled")
    cfg2 = PRELUDE + r'''
gw.use(gw.mw.key_auth { keys = { k = "dave" }, header = false, query = "token" })
gw.get("/x", function(req) return req.consumer.name end)
'''
    with Gateway(cfg2) as g:
        eq(g.get("/x?token=k")[:3:2], (200, b"dave"), "custom query")
        eq(g.get("/x", {"X-Api-Key": "k"})[0], 401, "headers disabled")


def test_consumer_is_fresh_per_request():
    # A handler that changes req.consumer must not change the next request's.
    cfg = PRELUDE + r'''
gw.use(gw.mw.key_auth { keys = { k = "erin" } })
gw.get("/x", function(req)
  local before = req.consumer.name
  req.consumer.name = "mallory"
  return before
end)
'''
    with Gateway(cfg) as g:
        for _ in range(3):
            eq(g.get("/x", {"X-Api-Key": "k"})[2], b"erin", "consumer name")


BAD_OPTIONS = [
    ("gw.mw.key_auth()", "keys must be a non-empty table"),
    ("gw.mw.key_auth { keys = {} }", "keys must be a non-empty table"),
    ('gw.mw.key_auth { keys = { [""] = "a" } }', "every key must be a non-empty string"),
    ('gw.mw.key_auth { keys = { k = 1 } }', "must be a non-empty name"),
    ('gw.mw.key_auth { keys = { k = "a" }, header = "bad header" }', "header must be a header name"),
    ('gw.mw.key_auth { keys = { k = "a" }, header = false, query = false }', "cannot both be false"),
    ('gw.mw.key_auth { keys = { k = "a" }, hedaer = "x" }', "unknown option 'hedaer'"),
]


def test_bad_options_fail_the_configuration():
    for snippet, want in BAD_OPTIONS:
        rc, _, err, _ = run_cli(["-t", "-c", "gateway.lua"],
                                {"gateway.lua": PRELUDE + "local mw = " + snippet + "\n"})
        eq(rc, 1, snippet)
        assert "gateway.lua:3: key_auth: " in err and want in err, "%s: %s" % (snippet, err)
