"""gw.mw.cors: preflights answered by the gateway, Access-Control-* on actual
answers from allowed origins only, Vary: Origin, options checked at load."""

from gwtest import PRELUDE, Gateway, eq, http, run_cli

APP = "https://app.example.com"
LOCAL = "http://localhost:3000"
EVIL = "https://evil.example.net"

CFG = PRELUDE + r'''
local hits = 0
gw.use(gw.mw.request_id())
gw.use(gw.mw.cors { origins = { "%s", "%s" }, credentials = true, max_age = 600,
                    expose = { "X-Total", "X-Page" } })
gw.use("/api", gw.mw.key_auth { keys = { k = "alice" } })
gw.route("*", "/api/items", function(req)
  hits = hits + 1
  return { json = { hits = hits } }
end)
gw.get("/public", function(req)
  -- A handler's own CORS headers are replaced by the middleware's.
  return { status = 200, headers = { ["access-control-allow-origin"] = "*", Vary = "Accept-Encoding" },
           body = "public" }
end)
gw.get("/hits", function(req) return tostring(hits) end)
''' % (APP, LOCAL)


def cors_headers(h):
    return {k: v for k, v in h.items() if k.startswith("access-control-")}


def preflight(g, origin, method="PUT", req_headers=None, path="/api/items"):
    hdrs = {"Origin": origin, "Access-Control-Request-Method": method}
    if req_headers:
        hdrs["Access-Control-Request-Headers"] = req_headers
    return http(g.port, "OPTIONS", path, hdrs)


def test_preflight_from_allowed_origin():
    with Gateway(CFG) as g:
        st, h, body = preflight(g, APP, "PUT", "content-type, x-api-key")
        eq((st, body), (204, b""), "preflight answered by the gateway")
        eq(cors_headers(h), {
            "access-control-allow-origin": APP,
            "access-control-allow-methods": "GET, HEAD, PUT, PATCH, POST, DELETE",
            "access-control-allow-headers": "content-type, x-api-key",
            "access-control-allow-credentials": "true",
            "access-control-max-age": "600",
        }, "preflight headers")
        eq(h.get("vary"), "Origin, Access-Control-Request-Method, Access-Control-Request-Headers", "Vary")
        assert h.get("x-request-id"), "outer middleware still ran: %r" % h
        eq(g.get("/hits")[2], b"0", "the route never saw the preflight (nor key_auth)")


def test_preflight_from_second_origin_and_case():
    with Gateway(CFG) as g:
        st, h, _ = preflight(g, LOCAL, "DELETE")
        eq((st, h.get("access-control-allow-origin")), (204, LOCAL), "second origin")
        assert "access-control-allow-headers" not in h, "nothing asked, nothing allowed: %r" % h
        st, h, _ = preflight(g, "HTTPS://APP.EXAMPLE.COM", "GET")
        eq((st, h.get("access-control-allow-origin")), (204, "HTTPS://APP.EXAMPLE.COM"),
           "origins compare case-insensitively; the origin is echoed as sent")


def test_preflight_from_disallowed_origin_gets_no_cors_headers():
    with Gateway(CFG) as g:
        for origin in (EVIL, APP + ".evil.net", "https://app.example.com:8443", "null", "http://app.example.com"):
            st, h, _ = preflight(g, origin, "PUT", "x-api-key")
            eq(cors_headers(h), {}, "Access-Control-* for %s" % origin)
            assert st != 204, "a disallowed preflight is not answered as one (%d)" % st


def test_actual_request_from_allowed_origin():
    with Gateway(CFG) as g:
        st, h, body = g.get("/api/items", {"Origin": APP, "X-Api-Key": "k"})
        eq(st, 200, "status")
        eq(cors_headers(h), {"access-control-allow-origin": APP,
                             "access-control-allow-credentials": "true",
                             "access-control-expose-headers": "X-Total, X-Page"}, "CORS headers")
        eq(h.get("vary"), "Origin", "Vary")


def test_actual_401_is_readable_by_the_allowed_origin():
    # cors runs before key_auth: the browser can read the refusal.
    with Gateway(CFG) as g:
        st, h, _ = g.get("/api/items", {"Origin": APP})
        eq(st, 401, "status")
        eq(h.get("access-control-allow-origin"), APP, "ACAO on the 401")
        eq(h.get("www-authenticate"), "Key", "challenge kept")


def test_actual_request_from_disallowed_origin():
    with Gateway(CFG) as g:
        st, h, body = g.get("/public", {"Origin": EVIL})
        eq((st, body), (200, b"public"), "answered")
        eq(cors_headers(h), {}, "no Access-Control-* (the handler's own is removed too)")
        eq(h.get("vary"), "Accept-Encoding, Origin", "Vary merged")


def test_request_without_origin():
    with Gateway(CFG) as g:
        st, h, _ = g.get("/public")
        eq(cors_headers(h), {}, "no Access-Control-* without Origin")
        eq(h.get("vary"), "Accept-Encoding, Origin", "Vary: Origin still (caches)")


def test_options_without_request_method_is_not_a_preflight():
    with Gateway(CFG) as g:
        st, h, body = http(g.port, "OPTIONS", "/api/items", {"Origin": APP, "X-Api-Key": "k"})
        eq(st, 200, "went to the route")
        eq(h.get("access-control-allow-origin"), APP, "ACAO")
        eq(g.get("/hits")[2], b"1", "route ran once")


def test_any_origin():
    cfg = PRELUDE + r'''
gw.use(gw.mw.cors { origins = "*", methods = { "get", "post" }, headers = { "Content-Type", "X-Token" } })
gw.get("/x", function(req) return "x" end)
'''
    with Gateway(cfg) as g:
        st, h, _ = preflight(g, EVIL, "POST", "x-other", path="/x")
        eq(st, 204, "preflight")
        eq(cors_headers(h), {"access-control-allow-origin": "*",
                             "access-control-allow-methods": "GET, POST",
                             "access-control-allow-headers": "Content-Type, X-Token"},
           "configured headers, not the asked ones; no credentials")
        st, h, _ = g.get("/x", {"Origin": EVIL})
        eq(cors_headers(h), {"access-control-allow-origin": "*"}, "actual request")
        eq(h.get("vary"), "Origin", "Vary")
        eq(cors_headers(g.get("/x")[1]), {}, "no Origin, no CORS")


def test_preflight_before_404():
    # Global middleware runs before routing fails: the preflight of an
    # unrouted path is still answered.
    cfg = PRELUDE + 'gw.use(gw.mw.cors { origins = { "%s" } })\n' % APP
    with Gateway(cfg) as g:
        st, h, _ = preflight(g, APP, "GET", path="/nowhere")
        eq((st, h.get("access-control-allow-origin")), (204, APP), "preflight")
        st, h, body = g.get("/nowhere", {"Origin": APP})
        eq((st, h.get("access-control-allow-origin")), (404, APP), "404 carries ACAO for the allowed origin")


BAD_OPTIONS = [
    ('{ origins = "*", credentials = true }', 'credentials = true needs a list of origins'),
    ('{ credentials = true }', 'credentials = true needs a list of origins'),
    ('{ origins = { "https://a.example/" } }', "origins[1] is not valid"),
    ('{ origins = { "a.example" } }', "origins[1] is not valid"),
    ('{ origins = {} }', "origins must not be empty"),
    ('{ methods = { "GET", "BAD METHOD" } }', "methods[2] is not valid"),
    ('{ headers = { "x y" } }', "headers[1] is not valid"),
    ('{ expose = 5 }', "expose must be a string or a list"),
    ('{ max_age = -1 }', "max_age must be a whole number"),
    ('{ credentials = "yes", origins = { "https://a.example" } }', "credentials must be true or false"),
    ('{ origin = "*" }', "unknown option 'origin'"),
]


def test_bad_options_fail_the_configuration():
    for opts, want in BAD_OPTIONS:
        rc, _, err, _ = run_cli(["-t", "-c", "gateway.lua"],
                                {"gateway.lua": PRELUDE + "local mw = gw.mw.cors " + opts + "\n"})
        eq(rc, 1, opts)
        assert "gateway.lua:3: cors: " in err and want in err, "%s: %s" % (opts, err)


def test_proxied_answers():
    # An upstream's own CORS headers are replaced (allowed origin) or removed
    # (other origins); its Vary is kept and extended.
    from origin import Origin, fill
    cfg = PRELUDE + r'''
local up = gw.upstream("o", { servers = { "127.0.0.1:@A@" } })
gw.use(gw.mw.cors { origins = { "%s" } })
gw.get("/p/*rest", function(req) return up:proxy(req) end)
''' % APP
    q = "/p/x?rh=Access-Control-Allow-Origin:*&rh=Access-Control-Allow-Credentials:true&rh=Vary:Accept"
    with Origin("A") as a, Gateway(fill(cfg, A=a)) as g:
        st, h, _ = g.get(q, {"Origin": APP})
        eq(st, 200, "proxied")
        eq(cors_headers(h), {"access-control-allow-origin": APP}, "upstream CORS replaced")
        eq(h.get("vary"), "Accept, Origin", "Vary")
        st, h, _ = g.get(q, {"Origin": EVIL})
        eq(cors_headers(h), {}, "upstream CORS removed for another origin")
