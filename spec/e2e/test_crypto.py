"""gw.crypto and gw.base64 in the real binary, checked against independent
implementations: Python's hashlib/hmac/base64, and keys and signatures made
by the openssl command line (see authkit.py)."""

import base64
import hashlib
import hmac
import json
import os
import subprocess
import time

import authkit
from gwtest import PRELUDE, Gateway, eq, gw_bin, http, run_cli

# Routes that expose gw.crypto and gw.base64; binary values travel as hex
# or base64 in JSON so that the test compares exact bytes.
CFG = PRELUDE + r'''
local c, b64 = gw.crypto, gw.base64
local function hexs(s) return s and c.hex(s) end
gw.post("/sha256", function(req) return c.hex(c.sha256(req:body())) end)
gw.post("/digest/:alg", function(req) return c.hex(c.digest(req.params.alg, req:body())) end)
gw.post("/hmac/:alg", function(req)
  local key = b64.decode(req.headers["x-key"] or "")
  return c.hex(c.hmac(req.params.alg, key, req:body()))
end)
gw.get("/random/:n", function(req) return c.hex(c.random(tonumber(req.params.n))) end)
gw.post("/equal", function(req)
  local t = req:json()
  return { json = { eq = c.equal(t.a, t.b) } }
end)
gw.post("/b64/:op", function(req)
  local v, err = b64[req.params.op](req:body())
  if v == nil then return { status = 422, json = { err = err } } end
  return v
end)
gw.post("/verify", function(req)
  local t = req:json()
  local key, err
  if t.pem then key, err = c.public_key(t.pem) else key, err = c.public_key_jwk(t.jwk) end
  if not key then return { json = { ok = false, err = "key: " .. err } } end
  local ok, verr = key:verify(t.alg, t.data, b64.decode(t.sig))
  return { json = { ok = ok, err = verr or false, kind = key.kind, bits = key.bits,
                    curve = key.curve or false } }
end)
gw.post("/crypt", function(req)
  local t = req:json()
  local t0 = gw.now()
  return { json = { ok = c.crypt_verify(t.password, t.hash), supported = c.crypt_supported(t.hash),
                    ms = (gw.now() - t0) * 1000 } }
end)
gw.get("/fast", function(req) return "fast" end)
'''


def post(g, path, body, headers=None):
    if isinstance(body, (dict, list)):
        body = json.dumps(body)
    return http(g.port, "POST", path, headers, body)


def test_binary_links_libcrypto_and_libcrypt():
    # ffi.C resolves OpenSSL symbols only because the binary depends on
    # libcrypto; libcrypt survives --as-needed because src/ffi_crypto.c uses it.
    out = subprocess.run(["readelf", "-d", gw_bin()], capture_output=True, text=True).stdout
    assert "libcrypto.so" in out, out
    assert "libcrypt.so" in out, out


def test_sha256_and_digests():
    data = [b"", b"abc", os.urandom(1000), bytes(range(256)) * 40]
    with Gateway(CFG) as g:
        for d in data:
            eq(post(g, "/sha256", d)[2].decode(), hashlib.sha256(d).hexdigest(), "sha256 of %d bytes" % len(d))
            for alg in ("sha256", "sha384", "sha512"):
                eq(post(g, "/digest/" + alg, d)[2].decode(), hashlib.new(alg, d).hexdigest(),
                   "%s of %d bytes" % (alg, len(d)))


def test_hmac_against_python():
    # Keys shorter than, equal to and longer than the block size, and empty.
    keys = [b"", b"Jefe", os.urandom(64), os.urandom(200)]
    msgs = [b"", b"what do ya want for nothing?", os.urandom(5000)]
    with Gateway(CFG) as g:
        for alg in ("sha256", "sha384", "sha512"):
            for k in keys:
                for m in msgs:
                    hdr = {"X-Key": base64.b64encode(k).decode()}
                    got = post(g, "/hmac/" + alg, m, hdr)[2].decode()
                    eq(got, hmac.new(k, m, alg).hexdigest(), "hmac %s key %d msg %d" % (alg, len(k), len(m)))


def test_random_bytes():
    with Gateway(CFG) as g:
        for n in (0, 1, 16, 32, 1000):
            st, _, body = g.get("/random/%d" % n)
            eq((st, len(body)), (200, 2 * n), "random(%d) length" % n)
        a, b = g.get("/random/32")[2], g.get("/random/32")[2]
        assert a != b, "two random(32) calls returned the same bytes"


def test_constant_time_equal():
    with Gateway(CFG) as g:
        for a, b, want in [("", "", True), ("abc", "abc", True), ("abc", "abd", False),
                           ("abc", "abcd", False), ("x" * 100, "x" * 99 + "y", False)]:
            eq(json.loads(post(g, "/equal", {"a": a, "b": b})[2])["eq"], want, "equal(%r, %r)" % (a, b))


def test_base64_round_trips():
    samples = [b"", b"f", b"fo", b"foo", b"foob", b"fooba", b"foobar", bytes(range(256)), os.urandom(999)]
    with Gateway(CFG) as g:
        for s in samples:
            std = base64.b64encode(s)
            url = base64.urlsafe_b64encode(s).rstrip(b"=")
            eq(post(g, "/b64/encode", s)[2], std, "encode %r" % s[:10])
            eq(post(g, "/b64/decode", std)[2], s, "decode %r" % std[:10])
            eq(post(g, "/b64/encode_url", s)[2], url, "encode_url %r" % s[:10])
            eq(post(g, "/b64/decode_url", url)[2], s, "decode_url %r" % url[:10])
            eq(post(g, "/b64/decode_url", base64.urlsafe_b64encode(s))[2], s, "decode_url padded")


def test_base64_rejects_invalid():
    bad_std = ["Zm9v!", "Zm9", "Zm=v", "Zm9v\n", " Zm9v", "Zm9vYg", "Zm9vYg=", "Zh==", "Zm9=",
               "Zm-v", "Zm_v", "===="]
    bad_url = ["Zm9v+", "Zm9v/", "Z", "Zm9vY", "Zh", "Zm9", "Zm9v=", "Zm!v"]
    with Gateway(CFG) as g:
        for s in bad_std:
            st, _, body = post(g, "/b64/decode", s)
            eq((st, json.loads(body)), (422, {"err": "invalid base64"}), "decode(%r)" % s)
        for s in bad_url:
            st, _, body = post(g, "/b64/decode_url", s)
            eq((st, json.loads(body)), (422, {"err": "invalid base64"}), "decode_url(%r)" % s)


def _verify(g, alg, key, data, sig):
    doc = {"alg": alg, "data": data, "sig": base64.b64encode(sig).decode()}
    doc.update(key)
    st, _, body = post(g, "/verify", doc)
    eq(st, 200, "verify status")
    return json.loads(body)


def test_rs256_verify_pem_and_jwk():
    pair = authkit.keypair("rsa")
    data = "header.payload"
    sig = authkit.sign("RS256", pair, data)
    with Gateway(CFG) as g:
        for key in ({"pem": pair["pub"]}, {"jwk": authkit.jwk(pair)}):
            r = _verify(g, "RS256", key, data, sig)
            eq((r["ok"], r["kind"], r["bits"]), (True, "RSA", 2048), "good RS256 signature (%s)" % list(key))
            r = _verify(g, "RS256", key, data + "x", sig)
            eq((r["ok"], r["err"]), (False, "bad signature"), "changed data")
            bad = bytes([sig[0] ^ 1]) + sig[1:]
            eq(_verify(g, "RS256", key, data, bad)["ok"], False, "changed signature")
            eq(_verify(g, "RS256", key, data, sig[:-1])["ok"], False, "short signature")
            r = _verify(g, "ES256", key, data, sig)
            eq((r["ok"], r["err"]), (False, "key does not fit the algorithm"), "RSA key for ES256")


def test_es256_verify_pem_and_jwk():
    pair = authkit.keypair("ec")
    data = "header.payload"
    sig = authkit.sign("ES256", pair, data)
    eq(len(sig), 64, "raw r||s length")
    with Gateway(CFG) as g:
        for key in ({"pem": pair["pub"]}, {"jwk": authkit.jwk(pair)}):
            r = _verify(g, "ES256", key, data, sig)
            eq((r["ok"], r["kind"], r["curve"]), (True, "EC", "prime256v1"), "good ES256 (%s)" % list(key))
            eq(_verify(g, "ES256", key, data + "x", sig)["ok"], False, "changed data")
            eq(_verify(g, "ES256", key, data, sig[:32] + bytes(32))["ok"], False, "s = 0")
            eq(_verify(g, "ES256", key, data, sig[:63])["ok"], False, "63-byte signature")
            eq(_verify(g, "RS256", key, data, sig)["ok"], False, "EC key for RS256")
        # The DER form is not a JWS signature.
        der = authkit.openssl("dgst", "-sha256", "-sign", pair["priv"], data=data.encode())
        eq(_verify(g, "ES256", {"pem": pair["pub"]}, data, der)["ok"], False, "DER signature refused")


def test_bad_keys():
    ec = authkit.jwk(authkit.keypair("ec"))
    off_curve = dict(ec, y=authkit.b64url(bytes(31) + b"\1"))
    cases = [
        ({"pem": "not a key"}, "key: not a PEM public key"),
        ({"pem": authkit.keypair("rsa")["pub"].replace("A", "B", 3)}, "key: "),
        ({"jwk": {"kty": "oct", "k": "c2VjcmV0"}}, "key: unsupported JWK kty oct"),
        ({"jwk": dict(ec, crv="P-384")}, "key: unsupported EC curve"),
        ({"jwk": dict(ec, x="short")}, "key: P-256 JWK needs 32-byte x and y"),
        ({"jwk": off_curve}, "key: invalid public key"),
        ({"jwk": {"kty": "RSA", "n": "AQAB"}}, "key: RSA JWK needs base64url n and e"),
    ]
    with Gateway(CFG) as g:
        for key, want in cases:
            r = _verify(g, "RS256", key, "x", b"x")
            assert r["ok"] is False and r["err"].startswith(want), "%r: %r" % (key, r)
        eq(g.get("/fast")[0], 200, "still serving")


def test_crypt_verify_methods():
    with Gateway(CFG) as g:
        for m in ("2b", "2a", "2y", "y", "gy", "7", "6"):
            h = authkit.crypt_hash(m, "s3cret pw")
            r = json.loads(post(g, "/crypt", {"password": "s3cret pw", "hash": h})[2])
            eq((r["ok"], r["supported"]), (True, True), "$%s$ right password" % m)
            r = json.loads(post(g, "/crypt", {"password": "s3cret pX", "hash": h})[2])
            eq(r["ok"], False, "$%s$ wrong password" % m)
        for m in ("5", "1"):
            h = authkit.crypt_hash(m, "pw")
            r = json.loads(post(g, "/crypt", {"password": "pw", "hash": h})[2])
            eq(r["supported"], False, "$%s$ is rated legacy" % m)
        r = json.loads(post(g, "/crypt", {"password": "pw", "hash": "*"})[2])
        eq((r["ok"], r["supported"]), (False, False), "not a hash")


def test_crypt_runs_off_the_loop():
    # A bcrypt hash of cost 13 takes a good fraction of a second; while it is
    # checked, the same single worker keeps answering other requests.
    import threading
    h = authkit.crypt_hash("2b", "pw").replace("$2b$04$", "$2b$13$")
    with Gateway(CFG, workers=1) as g:
        out = {}

        def slow():
            out["r"] = post(g, "/crypt", {"password": "pw", "hash": h})
        th = threading.Thread(target=slow)
        th.start()
        time.sleep(0.05)
        t0 = time.monotonic()
        for _ in range(5):
            eq(g.get("/fast")[0], 200, "fast request during the hash")
        fast_ms = (time.monotonic() - t0) * 1000
        th.join(20)
        r = json.loads(out["r"][2])
        eq(r["ok"], False, "the changed cost changes the hash")
        assert r["ms"] > 4 * fast_ms, "hash %.0f ms, fast requests %.0f ms" % (r["ms"], fast_ms)


test_crypt_runs_off_the_loop.timeout = 60


def test_misuse_is_a_configuration_error():
    for snippet, want in [('gw.crypto.hmac("md5", "k", "d")', "unknown algorithm md5"),
                          ('gw.crypto.random(-1)', "n must be a whole number"),
                          ('gw.crypto.sha256(42)', "data must be a string"),
                          ('gw.base64.decode(nil)', "a string is required")]:
        rc, out, err, _ = run_cli(["-t", "-c", "gateway.lua"],
                                  {"gateway.lua": PRELUDE + "\n" + snippet + "\n"})
        eq(rc, 1, snippet)
        assert "gateway.lua:4:" in err and want in err, "%s: %s" % (snippet, err)


def test_crypt_client_gone_mid_hash():
    # Clients leave while their hashes run or wait on the pool (more jobs than
    # threads). The core lets a half-closed request finish, so each job ends
    # normally and its answer goes nowhere; the worker lives on. (A task that
    # ends while its job is queued or running is covered by
    # spec/c/test_ffi_crypto.c.)
    import socket
    h = authkit.crypt_hash("2b", "pw").replace("$2b$04$", "$2b$12$")
    body = json.dumps({"password": "pw", "hash": h}).encode()
    with Gateway(CFG, workers=1) as g:
        pids = g.worker_pids()
        for _ in range(6):  # more than the pool's 4 threads: some jobs wait queued
            s = socket.create_connection(("127.0.0.1", g.port))
            s.sendall(b"POST /crypt HTTP/1.1\r\nHost: t\r\nContent-Length: %d\r\n\r\n" % len(body) + body)
            time.sleep(0.02)
            s.close()
        time.sleep(1.5)
        eq(g.get("/fast")[0], 200, "still serving")
        eq(g.worker_pids(), pids, "same worker")
        r = json.loads(post(g, "/crypt", {"password": "pw", "hash": authkit.crypt_hash("y", "pw")})[2])
        eq(r["ok"], True, "hashing still works")
    assert "AddressSanitizer" not in g.stderr_text(), g.stderr_text()[-2000:]


test_crypt_client_gone_mid_hash.timeout = 60
