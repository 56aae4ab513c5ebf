"""gw.mw.basic_auth: clear passwords and crypt(3) hashes (made by Python's crypt
module, `openssl passwd` and libcrypt), the Basic challenge, malformed
Authorization headers (always 401, never 500), options checked at load."""

import base64
import json

import authkit
from gwtest import PRELUDE, Conn, Gateway, check_error, eq, req_bytes, run_cli


def basic(user, pw):
    raw = (user + ":" + pw).encode() if isinstance(user, str) else user + b":" + pw
    return "Basic " + base64.b64encode(raw).decode()


def config(users_lua, realm=None):
    opts = "users = { %s }" % users_lua
    if realm is not None:
        opts += ", realm = %s" % json.dumps(realm)
    return PRELUDE + r'''
gw.use(gw.mw.request_id())
gw.use("/private", gw.mw.basic_auth { %s })
gw.get("/private/me", function(req) return { json = { consumer = req.consumer } } end)
gw.get("/open", function(req) return "open" end)
''' % opts


CLEAR = config('alice = "wonder land", ["bob"] = "p:a:ss", ["zoë"] = "pässwörd"')
CHALLENGE = 'Basic realm="api"'


def send(g, auth=None, path="/private/me"):
    """The raw response; auth is a str (latin-1 on the wire) or bytes."""
    headers = []
    if auth is not None:
        headers.append(("Authorization", auth if isinstance(auth, str) else auth.decode("latin-1")))
    with Conn(g.port) as c:
        c.send(req_bytes("GET", path, headers))
        return c.read_response()


def assert_401(r, message=None, challenge=CHALLENGE):
    doc = check_error(r, 401)
    eq(r.headers.get("www-authenticate"), challenge, "WWW-Authenticate")
    if message:
        eq(doc["error"], message, "error message")


def assert_ok(r, user):
    eq(r.status, 200, "status (%r)" % r.body[:200])
    eq(json.loads(r.body), {"consumer": {"name": user}}, "consumer")


def test_clear_passwords():
    with Gateway(CLEAR) as g:
        assert_ok(send(g, basic("alice", "wonder land")), "alice")
        assert_ok(send(g, basic("bob", "p:a:ss")), "bob")  # split at the first ':'
        assert_ok(send(g, basic("zoë", "pässwörd")), "zoë")  # UTF-8 both sides
        assert_ok(send(g, "basic " + basic("alice", "wonder land")[6:]), "alice")  # scheme case
        assert_ok(send(g, "BASIC  " + basic("alice", "wonder land")[6:]), "alice")


def test_wrong_password():
    with Gateway(CLEAR) as g:
        for pw in ("wonder lan", "wonder land ", "Wonder land", "", "x" * 2000):
            assert_401(send(g, basic("alice", pw)), "invalid credentials")


def test_unknown_user():
    with Gateway(CLEAR) as g:
        assert_401(send(g, basic("mallory", "wonder land")), "invalid credentials")
        assert_401(send(g, basic("Alice", "wonder land")), "invalid credentials")
        assert_401(send(g, basic("", "wonder land")), "invalid credentials")


def test_missing_credentials():
    with Gateway(CLEAR) as g:
        r = send(g)
        assert_401(r, "missing credentials")
        eq(send(g, path="/open").status, 200, "no auth outside the prefix")


# Each malformed header is its own test: a 401 with the challenge, never a 500.
MALFORMED = {
    "scheme_only": "Basic",
    "scheme_and_space": "Basic ",
    "bearer": "Bearer abc.def.ghi",
    "no_space": "Basic" + base64.b64encode(b"alice:wonder land").decode(),
    "not_base64": "Basic !!!notbase64!!!",
    "bad_padding": "Basic YWxpY2U6d29uZGVyIGxhbmQ",
    "non_canonical_bits": "Basic YR==",
    "no_colon": "Basic " + base64.b64encode(b"alicewonderland").decode(),
    "two_tokens": "Basic " + base64.b64encode(b"alice:wonder land").decode() + " extra",
    "url_alphabet": "Basic " + base64.urlsafe_b64encode(b"\xfb\xff:\xfe?").decode(),
    "binary_garbage": b"Basic \xff\xfe\x80",
    "nul_in_credentials": "Basic " + base64.b64encode(b"alice\0:wonder land").decode(),
    "nul_in_password": "Basic " + base64.b64encode(b"alice:wonder\0land").decode(),
    "empty_decoded": "Basic ====",
    "huge": "Basic " + "QUFB" * 3000,
}


def _make_malformed(auth):
    def test():
        with Gateway(CLEAR) as g:
            r = send(g, auth)
            assert_401(r)
            eq(send(g, basic("alice", "wonder land")).status, 200, "still serving")
    return test


for _name, _auth in MALFORMED.items():
    globals()["test_malformed_" + _name] = _make_malformed(_auth)


# Every hash method claimed in docs/middleware.md, each its own test.
HASHED = ["2b", "2a", "2y", "y", "gy", "7", "6"]


def _make_hashed(method):
    def test():
        h = authkit.crypt_hash(method, "correct horse")
        assert h.startswith("$%s$" % method), h
        other = authkit.crypt_hash(method, "battery staple")
        cfg = config('carol = %s, dave = %s' % (json.dumps(h), json.dumps(other)))
        with Gateway(cfg) as g:
            assert_ok(send(g, basic("carol", "correct horse")), "carol")
            assert_ok(send(g, basic("carol", "correct horse")), "carol")  # remembered
            assert_401(send(g, basic("carol", "correct horsE")), "invalid credentials")
            assert_401(send(g, basic("carol", "")), "invalid credentials")
            # One user's password (even once remembered) never opens another's account.
            assert_401(send(g, basic("dave", "correct horse")), "invalid credentials")
            assert_ok(send(g, basic("dave", "battery staple")), "dave")
            assert_401(send(g, basic("carol", h)), "invalid credentials")  # the hash is no password
    return test


for _m in HASHED:
    globals()["test_hash_" + _m.replace("2", "bcrypt_2")] = _make_hashed(_m)


def test_realm_option():
    with Gateway(config('u = "p"', realm="Ops Console")) as g:
        assert_401(send(g), challenge='Basic realm="Ops Console"')


BAD_OPTIONS = [
    ("users = {}", "users must be a non-empty table"),
    ('users = { ["a:b"] = "p" }', "without ':'"),
    ('users = { ["a\\0b"] = "p" }', "or control characters"),
    ('users = { a = "" }', "password of user 'a' must be a non-empty string"),
    ('users = { a = 5 }', "password of user 'a' must be a non-empty string"),
    ('users = { a = "p" }, realm = \'say "hi"\'', "realm must be printable ASCII"),
    ('users = { a = "p" }, realm = ""', "realm must be printable ASCII"),
    ('users = { a = "p" }, relam = "x"', "unknown option 'relam'"),
    ('users = { a = "$1$abcdefgh$0123456789012345678901" }', "legacy hash method"),
    ('users = { a = "%s" }' % authkit.crypt_hash("5", "pw"), "legacy hash method"),
    ('users = { a = "$apr1$abc$def" }', "not a valid crypt(3) hash"),
    ('users = { a = "$6$" }', "incomplete crypt(3) hash"),
    ('users = { a = "$6$rounds=5000$salt" }', "incomplete crypt(3) hash"),
    ('users = { a = "$y$j9T$saltsaltsalt$" }', "incomplete crypt(3) hash"),
    ('users = { a = "$2b$04$tooshort" }', "incomplete crypt(3) hash"),
]


def test_bad_options_fail_the_configuration():
    for opts, want in BAD_OPTIONS:
        snippet = "local mw = gw.mw.basic_auth { %s }\n" % opts
        rc, _, err, _ = run_cli(["-t", "-c", "gateway.lua"], {"gateway.lua": PRELUDE + snippet})
        eq(rc, 1, opts)
        assert "gateway.lua:3: basic_auth: " in err and want in err, "%s: %s" % (opts, err)
