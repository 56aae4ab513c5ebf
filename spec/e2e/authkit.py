"""Keys, signatures, tokens and password hashes for the auth and crypto tests.

Everything is made here, at test time, by independent tools: key pairs and
RS256/ES256 signatures by the `openssl` command line, HS* tokens by Python's
hmac/hashlib/base64/json, crypt(3) hashes by Python's `crypt` module (3.11),
`openssl passwd -6`, or libcrypt itself through ctypes for the methods
neither knows ($y$, $gy$, $7$). Nothing secret is committed.

  keypair(kind)              kind "rsa" (2048), "rsa1024", "ec" (P-256), "ec384":
                             {"priv": path, "pub": PEM text}, made once per run
  b64url(data)               base64url without padding (str)
  sign(alg, key, data)       raw JWS signature bytes; key is bytes (HS*) or a keypair
  token(claims, alg, key, header=None, kid=None)
                             a compact JWS
  jwk(kind, pair, kid=None)  the public JWK (dict) of a keypair
  crypt_hash(method, pw)     a crypt(3) hash: "2b", "2a", "2y", "y", "gy", "7", "6",
                             "5", "1"
"""

import atexit
import base64
import ctypes
import ctypes.util
import hashlib
import hmac
import json
import os
import re
import shutil
import subprocess
import tempfile
import warnings

_dir = None
_pairs = {}


def workdir():
    global _dir
    if _dir is None:
        _dir = tempfile.mkdtemp(prefix="gwtest-keys-")
        atexit.register(shutil.rmtree, _dir, True)
    return _dir


def openssl(*args, data=None):
    p = subprocess.run(["openssl", *args], input=data, capture_output=True, timeout=60)
    if p.returncode != 0:
        raise AssertionError("openssl %s failed: %s" % (" ".join(args), p.stderr.decode()[-500:]))
    return p.stdout


KINDS = {
    "rsa": ["-algorithm", "RSA", "-pkeyopt", "rsa_keygen_bits:2048"],
    "rsa1024": ["-algorithm", "RSA", "-pkeyopt", "rsa_keygen_bits:1024"],
    "ec": ["-algorithm", "EC", "-pkeyopt", "ec_paramgen_curve:P-256"],
    "ec384": ["-algorithm", "EC", "-pkeyopt", "ec_paramgen_curve:P-384"],
}


def keypair(kind="rsa", name=None):
    """A key pair made by openssl genpkey, once per (kind, name) and run."""
    k = (kind, name)
    if k not in _pairs:
        priv = os.path.join(workdir(), "%s-%s.key" % (kind, name or "main"))
        openssl("genpkey", *KINDS[kind], "-out", priv)
        pub = openssl("pkey", "-in", priv, "-pubout").decode()
        _pairs[k] = {"priv": priv, "pub": pub, "kind": kind}
    return _pairs[k]


def b64url(data):
    if isinstance(data, str):
        data = data.encode()
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def _der_len(buf, pos):
    n = buf[pos]
    if n < 0x80:
        return n, pos + 1
    k = n & 0x7F
    return int.from_bytes(buf[pos + 1:pos + 1 + k], "big"), pos + 1 + k


def der_to_raw(der, size=32):
    """An ECDSA-Sig-Value (SEQUENCE of INTEGER r, INTEGER s) as r || s."""
    assert der[0] == 0x30, der
    _, pos = _der_len(der, 1)
    out = b""
    for _ in range(2):
        assert der[pos] == 0x02, der
        n, pos = _der_len(der, pos + 1)
        v = der[pos:pos + n]
        pos += n
        out += v.lstrip(b"\0").rjust(size, b"\0")
    return out


HS = {"HS256": hashlib.sha256, "HS384": hashlib.sha384, "HS512": hashlib.sha512}


def sign(alg, key, data):
    if isinstance(data, str):
        data = data.encode()
    if alg in HS:
        if isinstance(key, str):
            key = key.encode()
        return hmac.new(key, data, HS[alg]).digest()
    if alg == "RS256":
        return openssl("dgst", "-sha256", "-sign", key["priv"], data=data)
    if alg == "ES256":
        return der_to_raw(openssl("dgst", "-sha256", "-sign", key["priv"], data=data))
    raise ValueError(alg)


def token(claims, alg="HS256", key=b"secret", header=None, kid=None):
    h = {"alg": alg, "typ": "JWT"}
    if kid is not None:
        h["kid"] = kid
    if header:
        h.update(header)
    signing_input = b64url(json.dumps(h, separators=(",", ":"))) + "." + \
        b64url(json.dumps(claims, separators=(",", ":")))
    return signing_input + "." + b64url(sign(alg, key, signing_input))


def jwk(pair, kid=None):
    """The public JWK of a keypair, from openssl's own view of the key."""
    if pair["kind"].startswith("rsa"):
        text = openssl("rsa", "-in", pair["priv"], "-noout", "-modulus").decode()
        n = bytes.fromhex(text.strip().split("=", 1)[1])
        m = re.search(r"publicExponent: (\d+)",
                      openssl("rsa", "-in", pair["priv"], "-noout", "-text").decode())
        e = int(m.group(1))
        out = {"kty": "RSA", "n": b64url(n), "e": b64url(e.to_bytes((e.bit_length() + 7) // 8, "big"))}
    else:
        der = openssl("pkey", "-in", pair["priv"], "-pubout", "-outform", "DER")
        point = der[-65:]
        assert point[0] == 4, point
        out = {"kty": "EC", "crv": "P-256", "x": b64url(point[1:33]), "y": b64url(point[33:])}
    if kid is not None:
        out["kid"] = kid
    return out


def _libcrypt():
    path = ctypes.util.find_library("crypt") or "libcrypt.so.1"
    lib = ctypes.CDLL(path)
    lib.crypt_gensalt.restype = ctypes.c_char_p
    lib.crypt_gensalt.argtypes = [ctypes.c_char_p, ctypes.c_ulong, ctypes.c_char_p, ctypes.c_int]
    lib.crypt.restype = ctypes.c_char_p
    lib.crypt.argtypes = [ctypes.c_char_p, ctypes.c_char_p]
    return lib


def crypt_hash(method, password):
    """A crypt(3) hash of password with a cheap cost (tests stay fast)."""
    if method == "6":
        return openssl("passwd", "-6", password).decode().strip()
    if method == "2b":
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", DeprecationWarning)
                import crypt
            return crypt.crypt(password, crypt.mksalt(crypt.METHOD_BLOWFISH, rounds=16))
        except ImportError:
            pass
    if method == "1":
        return openssl("passwd", "-1", password).decode().strip()
    lib = _libcrypt()
    prefix = {"2b": b"$2b$", "2a": b"$2a$", "2y": b"$2y$", "y": b"$y$", "gy": b"$gy$",
              "7": b"$7$", "5": b"$5$"}[method]
    count = 4 if method.startswith("2") else 0
    setting = lib.crypt_gensalt(prefix, count, None, 0)
    assert setting, "crypt_gensalt(%r) failed" % prefix
    out = lib.crypt(password.encode(), setting)
    assert out and not out.startswith(b"*"), out
    return out.decode()
