"""gw.mw.jwt against tokens made at test time: HS* by Python's hmac/hashlib,
RS256/ES256 by `openssl dgst -sign` over keys from `openssl genpkey` (see
authkit.py). Every acceptance and every refusal is its own test, and each
refusal asserts the reason in the RFC 6750 challenge, so a token refused for
the wrong reason fails too."""

import base64
import json
import os
import shutil
import subprocess
import tempfile
import time

import authkit
from authkit import b64url, token
from gwtest import PRELUDE, Conn, Gateway, check_error, eq, gw_bin, req_bytes, run_cli

SECRET = "a-shared-secret-of-at-least-32-bytes!"
OTHER_SECRET = "another-secret-of-at-least-32-bytes!!"

CFG = PRELUDE + r'''
local S = "%s"
local function me(req) return { json = { consumer = req.consumer } } end
gw.use(gw.mw.request_id())
gw.get("/hs", gw.mw.jwt { secret = S }, me)
gw.get("/hs-strict", gw.mw.jwt { secret = S, aud = { "api-1", "api-2" }, iss = "https://issuer.example",
                                 leeway = 30 }, me)
gw.get("/hs-exp", gw.mw.jwt { secret = S, require_exp = true }, me)
gw.get("/hs256-only", gw.mw.jwt { secret = S, algorithms = { "HS256" } }, me)
gw.get("/rs", gw.mw.jwt { key = "keys/rsa.pub.pem" }, me)          -- relative to the config
gw.get("/es", gw.mw.jwt { key = "$DIR/keys/ec.pub.pem", realm = "orders" }, me) -- absolute
gw.get("/jwks", gw.mw.jwt { jwks = "keys/jwks.json" }, me)
''' % SECRET


def files():
    rsa, ec = authkit.keypair("rsa"), authkit.keypair("ec")
    jwks = {"keys": [
        dict(authkit.jwk(rsa, kid="r1"), use="sig", alg="RS256"),
        authkit.jwk(ec, kid="e1"),
        dict(authkit.jwk(authkit.keypair("rsa", "enc"), kid="enc1"), use="enc"),  # skipped
        {"kty": "EC", "crv": "P-384", "kid": "p384", "x": b64url(os.urandom(48)),
         "y": b64url(os.urandom(48))},  # skipped: not ES256
        {"kty": "OKP", "crv": "Ed25519", "kid": "ed", "x": b64url(os.urandom(32))},  # skipped
    ]}
    return {"keys/rsa.pub.pem": rsa["pub"], "keys/ec.pub.pem": ec["pub"],
            "keys/jwks.json": json.dumps(jwks)}


def now():
    return int(time.time())


def claims(**kw):
    c = {"sub": "alice", "iat": now(), "exp": now() + 300}
    c.update(kw)
    return {k: v for k, v in c.items() if v is not None}


def rsa():
    return authkit.keypair("rsa")


def ec():
    return authkit.keypair("ec")


def send(g, path, auth):
    headers = [] if auth is None else [("Authorization", auth)]
    with Conn(g.port) as c:
        c.send(req_bytes("GET", path, headers))
        return c.read_response()


def bearer(t):
    return "Bearer " + t


# ---- tokens that must pass ----

def resign(t, alg="HS256", key=SECRET):
    """Re-signs header.payload of token t (to build well-signed odd tokens)."""
    h, p, _ = t.split(".")
    return h + "." + p + "." + b64url(authkit.sign(alg, key, h + "." + p))


def raw_token(header, payload_bytes, alg="HS256", key=SECRET):
    """A token whose payload is given as raw bytes (possibly not JSON)."""
    si = b64url(json.dumps(header)) + "." + b64url(payload_bytes)
    return si + "." + b64url(authkit.sign(alg, key, si))


ACCEPT = {
    "hs256": ("/hs", lambda: token(claims(), "HS256", SECRET), "alice"),
    "hs384": ("/hs", lambda: token(claims(sub="bob"), "HS384", SECRET), "bob"),
    "hs512": ("/hs", lambda: token(claims(), "HS512", SECRET), "alice"),
    "no_exp_allowed_by_default": ("/hs", lambda: token(claims(exp=None), "HS256", SECRET), "alice"),
    "nbf_in_the_past": ("/hs", lambda: token(claims(nbf=now() - 5), "HS256", SECRET), "alice"),
    "lowercase_scheme": ("/hs", lambda: token(claims(), "HS256", SECRET), "alice"),
    "rs256_pem": ("/rs", lambda: token(claims(), "RS256", rsa()), "alice"),
    "es256_pem": ("/es", lambda: token(claims(), "ES256", ec()), "alice"),
    "jwks_rs256_by_kid": ("/jwks", lambda: token(claims(), "RS256", rsa(), kid="r1"), "alice"),
    "jwks_es256_by_kid": ("/jwks", lambda: token(claims(), "ES256", ec(), kid="e1"), "alice"),
    "aud_string_iss_ok": ("/hs-strict", lambda: token(claims(aud="api-2", iss="https://issuer.example"),
                                                      "HS256", SECRET), "alice"),
    "aud_list_one_matches": ("/hs-strict", lambda: token(
        claims(aud=["other", "api-1"], iss="https://issuer.example"), "HS256", SECRET), "alice"),
    "expired_within_leeway": ("/hs-strict", lambda: token(
        claims(exp=now() - 10, aud="api-1", iss="https://issuer.example"), "HS256", SECRET), "alice"),
    "nbf_within_leeway": ("/hs-strict", lambda: token(
        claims(nbf=now() + 10, aud="api-1", iss="https://issuer.example"), "HS256", SECRET), "alice"),
    "require_exp_with_exp": ("/hs-exp", lambda: token(claims(), "HS256", SECRET), "alice"),
}


def test_accept_token_between_blanks():
    # "Bearer" 1*SP token, with tabs and trailing blanks tolerated.
    t = token(claims(), "HS256", SECRET)
    with Gateway(CFG, files=files()) as g:
        for value in ("Bearer \t " + t + "  ", "BEARER " + t + "\t"):
            r = send(g, "/hs", value)
            eq(r.status, 200, "status for %r (%r)" % (value[:12], r.body[:200]))


def _make_accept(path, make, name, lower=False):
    def test():
        t = make()
        with Gateway(CFG, files=files()) as g:
            r = send(g, path, ("bearer " if lower else "Bearer ") + t)
            eq(r.status, 200, "status (%r)" % r.body[:300])
            doc = json.loads(r.body)
            eq(doc["consumer"]["name"], name, "consumer name")
            payload = json.loads(base64.urlsafe_b64decode(t.split(".")[1] + "=="))
            eq(doc["consumer"]["claims"], payload, "consumer claims")
    return test


for _n, (_path, _make, _name) in ACCEPT.items():
    globals()["test_accept_" + _n] = _make_accept(_path, _make, _name, _n == "lowercase_scheme")


# ---- tokens that must be refused: (path, Authorization value, reason) ----
# reason None: no bearer token at all (the bare challenge).

def _alg_none():
    h = b64url(json.dumps({"alg": "none", "typ": "JWT"}))
    return h + "." + b64url(json.dumps(claims())) + "."


def _alg_none_signed():
    # "none" with an HMAC signature attached: still refused.
    return resign(token(claims(), "HS256", SECRET, header={"alg": "none"}))


def _alg_none_uppercase():
    return resign(token(claims(), "HS256", SECRET, header={"alg": "NONE"}))


def _changed_payload():
    good = token(claims(), "HS256", SECRET)
    h, _, s = good.split(".")
    return h + "." + b64url(json.dumps(claims(sub="admin"))) + "." + s


def _changed_header():
    good = token(claims(), "HS256", SECRET)
    _, p, s = good.split(".")
    return b64url(json.dumps({"alg": "HS256", "typ": "JWT", "kid": "x"})) + "." + p + "." + s


def _changed_signature():
    good = token(claims(), "HS256", SECRET)
    h, p, s = good.split(".")
    return h + "." + p + "." + ("A" if s[0] != "A" else "B") + s[1:]


def _confusion(alg, pem_variant=lambda pem: pem):
    # The classic attack: HMAC keyed with the server's public key.
    return lambda: token(claims(sub="admin"), alg, pem_variant(rsa()["pub"]))


def _jwks_confusion():
    return token(claims(sub="admin"), "HS256", rsa()["pub"], kid="r1")


def _other_rsa():
    return token(claims(), "RS256", authkit.keypair("rsa", "other"))


def _other_ec():
    return token(claims(), "ES256", authkit.keypair("ec", "other"))


def _rs_header_on_es_signature():
    return token(claims(), "ES256", ec(), header={"alg": "RS256"})


REFUSE = {
    "no_token": ("/hs", None, None),
    "basic_scheme": ("/hs", "Basic YWxpY2U6cHc=", None),
    "bearer_without_token": ("/hs", "Bearer ", None),
    "bearer_only_blanks": ("/hs", "Bearer \t  ", None),
    "bearer_glued_to_token": ("/hs", lambda: "Bearer" + token(claims(), "HS256", SECRET), None),
    "two_tokens": ("/hs", lambda: bearer(token(claims(), "HS256", SECRET) + " x"), "malformed token"),
    "alg_none": ("/hs", lambda: bearer(_alg_none()), "algorithm not allowed"),
    "alg_none_with_signature": ("/hs", lambda: bearer(_alg_none_signed()), "algorithm not allowed"),
    "alg_none_uppercase": ("/hs", lambda: bearer(_alg_none_uppercase()), "algorithm not allowed"),
    "alg_none_on_rs_route": ("/rs", lambda: bearer(_alg_none()), "algorithm not allowed"),
    "changed_payload": ("/hs", lambda: bearer(_changed_payload()), "bad signature"),
    "changed_header": ("/hs", lambda: bearer(_changed_header()), "bad signature"),
    "changed_signature": ("/hs", lambda: bearer(_changed_signature()), "bad signature"),
    "wrong_secret": ("/hs", lambda: bearer(token(claims(), "HS256", OTHER_SECRET)), "bad signature"),
    "empty_signature": ("/hs", lambda: bearer(token(claims(), "HS256", SECRET).rsplit(".", 1)[0] + "."),
                        "bad signature"),
    "rs256_other_key": ("/rs", lambda: bearer(_other_rsa()), "bad signature"),
    "es256_other_key": ("/es", lambda: bearer(_other_ec()), "bad signature"),
    "rs256_changed_payload": ("/rs", lambda: bearer(
        token(claims(), "RS256", rsa()).split(".")[0] + "." + b64url(json.dumps(claims(sub="admin"))) + "."
        + token(claims(), "RS256", rsa()).split(".")[2]), "bad signature"),
    "es256_token_on_rs_key": ("/rs", lambda: bearer(token(claims(), "ES256", ec())), "algorithm not allowed"),
    "rs256_token_on_es_key": ("/es", lambda: bearer(token(claims(), "RS256", rsa())), "algorithm not allowed"),
    "es_signature_with_rs_header": ("/es", lambda: bearer(_rs_header_on_es_signature()),
                                    "algorithm not allowed"),
    "hs_token_on_rs_key": ("/rs", lambda: bearer(token(claims(), "HS256", SECRET)), "algorithm not allowed"),
    "confusion_hs256_with_rsa_pem": ("/rs", lambda: bearer(_confusion("HS256")()), "algorithm not allowed"),
    "confusion_hs384_with_rsa_pem": ("/rs", lambda: bearer(_confusion("HS384")()), "algorithm not allowed"),
    "confusion_hs512_with_rsa_pem": ("/rs", lambda: bearer(_confusion("HS512")()), "algorithm not allowed"),
    "confusion_pem_without_newline": ("/rs", lambda: bearer(_confusion("HS256", lambda p: p.strip())()),
                                      "algorithm not allowed"),
    "confusion_hs256_with_ec_pem": ("/es", lambda: bearer(token(claims(), "HS256", ec()["pub"])),
                                    "algorithm not allowed"),
    "confusion_via_jwks": ("/jwks", lambda: bearer(_jwks_confusion()), "algorithm not allowed"),
    "expired": ("/hs", lambda: bearer(token(claims(exp=now() - 1), "HS256", SECRET)), "token expired"),
    "expired_beyond_leeway": ("/hs-strict", lambda: bearer(token(
        claims(exp=now() - 60, aud="api-1", iss="https://issuer.example"), "HS256", SECRET)), "token expired"),
    "expired_rs256": ("/rs", lambda: bearer(token(claims(exp=now() - 5), "RS256", rsa())), "token expired"),
    "not_yet_valid": ("/hs", lambda: bearer(token(claims(nbf=now() + 60), "HS256", SECRET)),
                      "token not yet valid"),
    "not_yet_valid_beyond_leeway": ("/hs-strict", lambda: bearer(token(
        claims(nbf=now() + 90, aud="api-1", iss="https://issuer.example"), "HS256", SECRET)),
        "token not yet valid"),
    "wrong_aud_string": ("/hs-strict", lambda: bearer(token(
        claims(aud="api-3", iss="https://issuer.example"), "HS256", SECRET)), "wrong audience"),
    "wrong_aud_array": ("/hs-strict", lambda: bearer(token(
        claims(aud=["api-3", "api-4"], iss="https://issuer.example"), "HS256", SECRET)), "wrong audience"),
    "missing_aud": ("/hs-strict", lambda: bearer(token(
        claims(iss="https://issuer.example"), "HS256", SECRET)), "wrong audience"),
    "wrong_iss": ("/hs-strict", lambda: bearer(token(
        claims(aud="api-1", iss="https://evil.example"), "HS256", SECRET)), "wrong issuer"),
    "missing_iss": ("/hs-strict", lambda: bearer(token(claims(aud="api-1"), "HS256", SECRET)),
                    "wrong issuer"),
    "missing_exp_when_required": ("/hs-exp", lambda: bearer(token(claims(exp=None), "HS256", SECRET)),
                                  "token has no exp claim"),
    "exp_not_a_number": ("/hs", lambda: bearer(token(claims(exp="tomorrow"), "HS256", SECRET)),
                         "malformed exp claim"),
    "nbf_not_a_number": ("/hs", lambda: bearer(token(claims(nbf=[1]), "HS256", SECRET)),
                         "malformed nbf claim"),
    # NaN and Infinity are not JSON, but lua-cjson reads them, and a NaN exp
    # compared false with the clock: such a token never expired.
    "exp_nan": ("/hs-exp", lambda: bearer(token(claims(exp=float("nan")), "HS256", SECRET)),
                "malformed exp claim"),
    "exp_infinity": ("/hs-exp", lambda: bearer(token(claims(exp=float("inf")), "HS256", SECRET)),
                     "malformed exp claim"),
    "nbf_nan": ("/hs", lambda: bearer(token(claims(nbf=float("nan")), "HS256", SECRET)),
                "malformed nbf claim"),
    "sub_not_a_string": ("/hs", lambda: bearer(token(claims(sub=42), "HS256", SECRET)),
                         "malformed sub claim"),
    "algorithm_outside_allow_list": ("/hs256-only", lambda: bearer(token(claims(), "HS512", SECRET)),
                                     "algorithm not allowed"),
    "unknown_algorithm": ("/hs", lambda: bearer(resign(token(claims(), "HS256", SECRET,
                                                             header={"alg": "HS1024"}))),
                          "algorithm not allowed"),
    "crit_header": ("/hs", lambda: bearer(token(claims(), "HS256", SECRET,
                                                header={"crit": ["exp"], "exp": 1})), "unsupported crit header"),
    "jwks_unknown_kid": ("/jwks", lambda: bearer(token(claims(), "RS256", rsa(), kid="nope")), "unknown key id"),
    "jwks_skipped_enc_key": ("/jwks", lambda: bearer(token(claims(), "RS256", authkit.keypair("rsa", "enc"),
                                                           kid="enc1")), "unknown key id"),
    "jwks_no_kid": ("/jwks", lambda: bearer(token(claims(), "RS256", rsa())), "token has no kid"),
    "jwks_kid_of_other_type": ("/jwks", lambda: bearer(token(claims(), "RS256", rsa(), kid="e1")),
                               "algorithm not allowed"),
    "malformed_one_part": ("/hs", "Bearer abcdef", "malformed token"),
    "malformed_two_parts": ("/hs", lambda: bearer(".".join(token(claims(), "HS256", SECRET).split(".")[:2])),
                            "malformed token"),
    "malformed_four_parts": ("/hs", lambda: bearer(token(claims(), "HS256", SECRET) + ".x"), "malformed token"),
    "malformed_padding": ("/hs", lambda: bearer(token(claims(), "HS256", SECRET).replace(".", "=.", 1)),
                          "malformed token"),
    "malformed_header_base64": ("/hs", lambda: bearer("e" + token(claims(), "HS256", SECRET)),
                                "malformed token"),
    "malformed_header_chars": ("/hs", lambda: bearer("ey!J." + token(claims(), "HS256", SECRET).split(".", 1)[1]),
                               "malformed token"),
    "header_not_json": ("/hs", lambda: bearer(b64url(b"{alg: HS256}") + "."
                                              + token(claims(), "HS256", SECRET).split(".", 1)[1]),
                        "malformed token"),
    "header_json_array": ("/hs", lambda: bearer(b64url(b'["HS256"]') + "."
                                                + token(claims(), "HS256", SECRET).split(".", 1)[1]),
                          "malformed token"),
    "header_without_alg": ("/hs", lambda: bearer(resign(token(claims(), "HS256", SECRET, header={"alg": None}))),
                           "malformed token"),
    "signature_bad_base64": ("/hs", lambda: bearer(token(claims(), "HS256", SECRET)[:-1] + "*"),
                             "malformed token"),
    "payload_not_json": ("/hs", lambda: bearer(raw_token({"alg": "HS256"}, b"not json")), "malformed claims"),
    "payload_json_array": ("/hs", lambda: bearer(raw_token({"alg": "HS256"}, b'["alice"]')), "malformed claims"),
    # lua-cjson decodes [] to the same empty table as {}.
    "payload_empty_json_array": ("/hs", lambda: bearer(raw_token({"alg": "HS256"}, b' []')), "malformed claims"),
    "payload_json_string": ("/hs", lambda: bearer(raw_token({"alg": "HS256"}, b'"alice"')), "malformed claims"),
    "payload_bad_utf8_json": ("/hs", lambda: bearer(raw_token({"alg": "HS256"}, b'{"sub": "\xff')),
                              "malformed claims"),
}


def _make_refuse(path, auth, reason):
    def test():
        a = auth() if callable(auth) else auth
        with Gateway(CFG, files=files()) as g:
            r = send(g, path, a)
            doc = check_error(r, 401)
            realm = 'Bearer realm="orders"' if path == "/es" else 'Bearer realm="api"'
            if reason is None:
                eq(r.headers.get("www-authenticate"), realm, "bare challenge")
                eq(doc["error"], "missing bearer token", "error")
            else:
                eq(r.headers.get("www-authenticate"),
                   realm + ', error="invalid_token", error_description="%s"' % reason, "challenge")
                eq(doc["error"], "invalid token: " + reason, "error")
    return test


for _n, (_path, _auth, _reason) in REFUSE.items():
    globals()["test_refuse_" + _n] = _make_refuse(_path, _auth, _reason)


def test_consumer_claims_are_per_request():
    cfg = CFG + r'''
gw.get("/mutate", gw.mw.jwt { secret = S }, function(req)
  local name = req.consumer.name
  req.consumer.claims.sub = "mallory"
  return name
end)
'''
    with Gateway(cfg, files=files()) as g:
        t = token(claims(), "HS256", SECRET)
        for _ in range(3):
            r = send(g, "/mutate", bearer(t))
            eq((r.status, r.body), (200, b"alice"), "consumer name")


def test_key_path_is_relative_to_the_configuration_folder():
    # Run from another directory: the key is found beside the configuration.
    d = tempfile.mkdtemp(prefix="gwtest-jwt-")
    try:
        os.makedirs(os.path.join(d, "conf/keys"))
        with open(os.path.join(d, "conf/keys/rsa.pub.pem"), "w") as f:
            f.write(rsa()["pub"])
        with open(os.path.join(d, "conf/gw.lua"), "w") as f:
            f.write(PRELUDE.replace("$PORT", "1") + 'local m = gw.mw.jwt { key = "keys/rsa.pub.pem" }\n')
        p = subprocess.run([gw_bin(), "-t", "-c", "conf/gw.lua"], cwd=d, capture_output=True, text=True,
                           timeout=10)
        eq(p.returncode, 0, "gateway -t (%s)" % p.stderr.strip())
        os.makedirs(os.path.join(d, "keys"))
        os.rename(os.path.join(d, "conf/keys/rsa.pub.pem"), os.path.join(d, "keys/rsa.pub.pem"))
        p = subprocess.run([gw_bin(), "-t", "-c", "conf/gw.lua"], cwd=d, capture_output=True, text=True,
                           timeout=10)
        eq(p.returncode, 1, "a key beside the cwd, not the configuration, is not found")
        assert "conf/keys/rsa.pub.pem" in p.stderr, p.stderr
    finally:
        shutil.rmtree(d, ignore_errors=True)


def _bad_option_files():
    f = files()
    f["keys/rsa1024.pem"] = authkit.keypair("rsa1024")["pub"]
    f["keys/ec384.pem"] = authkit.keypair("ec384")["pub"]
    f["keys/garbage.pem"] = "-----BEGIN PUBLIC KEY-----\nnot base64\n-----END PUBLIC KEY-----\n"
    f["keys/not-json.json"] = "{ keys: "
    f["keys/empty.json"] = json.dumps({"keys": [dict(authkit.jwk(rsa()), use="enc")]})
    f["keys/dup.json"] = json.dumps({"keys": [authkit.jwk(rsa(), kid="a"), authkit.jwk(ec(), kid="a")]})
    f["keys/broken.json"] = json.dumps({"keys": [{"kty": "EC", "crv": "P-256", "kid": "b",
                                                  "x": b64url(bytes(32)), "y": b64url(bytes(32))}]})
    return f


BAD_OPTIONS = [
    ("{}", "give exactly one of secret, key or jwks"),
    ('{ secret = "s", key = "keys/rsa.pub.pem" }', "give exactly one of secret, key or jwks"),
    ('{ secret = "" }', "secret must be a non-empty string"),
    ('{ secret = "s", algorithms = { "RS256" } }', "algorithm RS256 does not fit the configured key"),
    ('{ secret = "s", algorithms = { "none" } }', "unsupported algorithm none"),
    ('{ secret = "s", algorithms = {} }', "algorithms must not be empty"),
    ('{ key = "keys/rsa.pub.pem", algorithms = { "HS256" } }', "algorithm HS256 does not fit"),
    ('{ key = "keys/missing.pem" }', "cannot read key file"),
    ('{ key = "keys/garbage.pem" }', "not a PEM public key"),
    ('{ key = "keys/rsa1024.pem" }', "RSA key of 1024 bits (2048 at least)"),
    ('{ key = "keys/ec384.pem" }', "ES256 needs P-256"),
    ('{ jwks = "keys/not-json.json" }', 'not a JSON object with a "keys" list'),
    ('{ jwks = "keys/empty.json" }', "no RS256 or ES256 signing key"),
    ('{ jwks = "keys/dup.json" }', "duplicate kid a"),
    ('{ jwks = "keys/broken.json" }', "key #1: invalid public key"),
    ('{ secret = "s", leeway = -1 }', "leeway must be a number"),
    ('{ secret = "s", aud = 5 }', "aud must be a string or a list"),
    ('{ secret = "s", iss = { "" } }', "iss[1] is not valid"),
    ('{ secret = "s", require_exp = "yes" }', "require_exp must be true or false"),
    ('{ secret = "s", realm = "a\\"b" }', "realm must be printable ASCII"),
    ('{ secret = "s", audience = "x" }', "unknown option 'audience'"),
]


def test_bad_options_fail_the_configuration():
    f = _bad_option_files()
    for opts, want in BAD_OPTIONS:
        f2 = dict(f)
        f2["gateway.lua"] = PRELUDE + "local mw = gw.mw.jwt " + opts + "\n"
        # run_cli writes flat files only: put the keys beside the config.
        flat = {k.replace("keys/", ""): v for k, v in f2.items()}
        flat["gateway.lua"] = flat["gateway.lua"].replace("keys/", "")
        rc, _, err, _ = run_cli(["-t", "-c", "gateway.lua"], flat)
        eq(rc, 1, opts)
        assert "gateway.lua:3: jwt: " in err and want in err, "%s: %s" % (opts, err)


def test_example_script():
    # scripts/examples/jwt.lua, driven as its header comment says.
    with open(os.path.join(os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))),
                           "scripts/examples/jwt.lua")) as f:
        text = f.read().replace("127.0.0.1:8085", "127.0.0.1:$PORT")
    with Gateway(text) as g:
        eq(g.get("/public")[0], 200, "public")
        r = send(g, "/api/me", None)
        check_error(r, 401)
        eq(r.headers.get("www-authenticate"), 'Bearer realm="demo"', "challenge")
        st, _, tok = g.get("/demo/token?sub=alice")
        eq(st, 200, "token issued")
        tok = tok.decode()
        r = send(g, "/api/me", bearer(tok))
        eq((r.status, json.loads(r.body)["name"]), (200, "alice"), "token accepted")
        r = send(g, "/api/me", bearer(tok + "x"))
        eq(r.status, 401, "changed token")
        assert 'error_description="bad signature"' in r.headers["www-authenticate"], r.headers
        tok = g.get("/demo/token?sub=bob&ttl=-5")[2].decode()
        r = send(g, "/api/me", bearer(tok))
        eq(r.status, 401, "expired token")
        assert 'error_description="token expired"' in r.headers["www-authenticate"], r.headers


def test_verified_token_cache_respects_expiry_and_isolation():
    from gwtest import Gateway, eq, http
    # A token that passed is remembered (not verified again) but only until
    # it expires; each request gets its own copy of the claims.
    import time as _time
    secret = "cache-secret-0123456789abcdef-0123456789"
    cfg = PRELUDE_CACHE.replace("@SECRET@", secret)
    with Gateway(cfg) as g:
        tok = hs_token_for_cache(secret, {"sub": "alice", "exp": int(_time.time()) + 2})
        h = {"Authorization": "Bearer " + tok}
        st, _, body = http(g.port, "GET", "/me", headers=h)
        eq((st, body), (200, b"alice:1"), "first use; the handler marks its claims")
        st, _, body = http(g.port, "GET", "/me", headers=h)
        eq((st, body), (200, b"alice:1"), "second use: served from the cache, claims not shared")
        _time.sleep(2.2)
        st, _, _ = http(g.port, "GET", "/me", headers=h)
        eq(st, 401, "once expired the cached token is refused")


PRELUDE_CACHE = r'''
local gw = require "gateway"
gw.config { listen = { "127.0.0.1:$PORT" } }
gw.use(gw.mw.jwt { secret = "@SECRET@" })
gw.get("/me", function(req)
  local c = req.consumer.claims
  c.seen = (c.seen or 0) + 1
  return req.consumer.name .. ":" .. c.seen
end)
'''


def hs_token_for_cache(secret, claims):
    import base64, hashlib, hmac, json as _json
    def b64(b):
        return base64.urlsafe_b64encode(b).rstrip(b"=").decode()
    h = b64(_json.dumps({"alg": "HS256", "typ": "JWT"}).encode())
    p = b64(_json.dumps(claims).encode())
    sig = hmac.new(secret.encode(), (h + "." + p).encode(), hashlib.sha256).digest()
    return h + "." + p + "." + b64(sig)
