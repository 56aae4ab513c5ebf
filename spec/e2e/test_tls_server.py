"""TLS listeners, continued: session tickets shared by all workers and
rotated (python ssl and openssl s_client resuming TLS 1.2 and 1.3 sessions
on a 2-worker gateway), client certificates (verify_client "on" and
"optional", req.client_cert), certificates read again on reload (serial
before and after, open connections keep theirs, a bad file keeps the old
one and shows in /status), and their configuration errors at `gateway -t`.
Certificates come from test_tls.certs() (openssl CLI)."""

import json
import os
import re
import signal
import socket
import ssl
import subprocess
import time

from gwtest import eq, run_cli, wait_for, http
from test_tls import _check, certs, tls_gateway, CaFile, s_client, read_responses, get

WORKERS_CONFIG = r'''local gw = require "gateway"
gw.config {
  listen = { { addr = "127.0.0.1:$PORT", tls = { cert = "a.pem", key = "a.key" } } },
  tls = { ticket_rotate = %s },
  admin = "127.0.0.1:$PORT2",
}
gw.get("/w", function(req) return tostring(gw.worker_id()) end)
'''


def wait_port(port):
    """The gateway's readiness check covers $PORT only; a second listener
    opens just after it."""
    def accepts():
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            return True
        except OSError:
            return False
    assert wait_for(accepts, 5), "nothing listens on %d" % port


def client_ctx(cafile, version=None, cert=None):
    ctx = ssl.create_default_context(cafile=cafile)
    if version == "1.2":
        ctx.maximum_version = ssl.TLSVersion.TLSv1_2
    elif version == "1.3":
        ctx.minimum_version = ssl.TLSVersion.TLSv1_3
    if cert:
        ctx.load_cert_chain(cert + ".pem", cert + ".key")
    return ctx


def fetch(port, ctx, path, session=None, name="a.test"):
    """One request on a new TLS connection (Connection: close). Returns
    (status, body, session_reused, session after the answer)."""
    raw = socket.create_connection(("127.0.0.1", port), timeout=5)
    s = ctx.wrap_socket(raw, server_hostname=name, session=session)
    try:
        s.sendall(("GET %s HTTP/1.1\r\nHost: %s\r\nConnection: close\r\n\r\n" % (path, name)).encode())
        r = read_responses(s, 1)
        assert r, "no answer on %s" % path
        # TLS 1.3 tickets come after the handshake: reading the answer took them in.
        return r[0].status, r[0].body.decode(), s.session_reused, s.session
    finally:
        s.close()


def test_sessions_resume_on_every_worker_tls12_and_tls13():
    with tls_gateway(WORKERS_CONFIG % "3600", workers=2) as g, CaFile() as ca:
        eq(len(g.wait_workers(2)), 2, "two workers")
        wait_port(g.port2)
        for version in ("1.2", "1.3"):
            ctx = client_ctx(ca, version)
            status, first, reused, sess = fetch(g.port, ctx, "/w")
            eq((status, reused), (200, False), "TLS %s first connection: a full handshake" % version)
            assert sess is not None and sess.has_ticket, "TLS %s: a ticket was issued" % version
            served = {first: 0}
            for i in range(24):
                status, w, reused, newer = fetch(g.port, ctx, "/w", session=sess)
                eq((status, reused), (200, True),
                   "TLS %s reconnect %d (worker %s, first was worker %s) resumed" % (version, i, w, first))
                served[w] = served.get(w, 0) + 1
                sess = newer  # the ticket the last handshake issued, as a browser would
            # The kernel spread the connections: both workers resumed sessions
            # whose tickets the other one had issued.
            eq(sorted(served), ["0", "1"], "TLS %s: workers that served %s" % (version, served))
        st = json.loads(http(g.port2, "GET", "/status")[2])
        eq(st["tls"]["ticket_keys_made"], 1, "one key for the whole gateway")
        eq(st["tls"]["ticket_lifetime"], 7200, "ticket lifetime 2 x ticket_rotate")
        # Worker 0 ran the record code's start-up checks (worker.c): on this
        # machine every suite passes them, so nothing is logged.
        assert "TLS: " not in g.stderr_text(), g.stderr_text()


def _ticket_name(sess_file):
    """The key name (first 16 bytes) of the ticket in an s_client -sess_out file."""
    out = subprocess.run(["openssl", "sess_id", "-in", sess_file, "-noout", "-text"],
                         capture_output=True, text=True, timeout=10).stdout
    m = re.search(r"TLS session ticket:\s*\n((?:\s*[0-9a-f]{4} - .*\n)+)", out)
    assert m, out
    hexes = re.findall(r"\b[0-9a-f]{2}\b", " ".join(l.split(" - ", 1)[1][:48] for l in m.group(1).splitlines()))
    return "".join(hexes[:16])


def test_ticket_keys_rotate_and_old_tickets_expire():
    """ticket_rotate = 2: a key encrypts new tickets for 2 s, tickets live 4 s.
    A ticket resumes before and after a rotation (on either worker), its
    renewed ticket is under the new key (before the rotation, under the same
    one), and once it is older than every key
    kept it gets a full handshake."""
    with tls_gateway(WORKERS_CONFIG % "2", workers=2) as g, CaFile() as ca:
        g.wait_workers(2)
        d = g.dir

        def connect(sess_in=None, sess_out=None):
            args = ["-tls1_3", "-servername", "a.test", "-CAfile", ca, "-ign_eof"]
            if sess_in:
                args += ["-sess_in", os.path.join(d, sess_in)]
            if sess_out:
                args += ["-sess_out", os.path.join(d, sess_out)]
            out = s_client(g.port, *args, data=b"GET /w HTTP/1.1\r\nHost: a.test\r\nConnection: close\r\n\r\n")
            assert "HTTP/1.1 200" in out, out[-1500:]
            return "Reused, TLSv1.3" in out, out

        t0 = time.monotonic()
        reused, out = connect(sess_out="first.pem")
        assert not reused and "New, TLSv1.3" in out, out[-1500:]
        assert re.search(r"lifetime hint: 4 \(seconds\)", out), out[-1500:]
        k0 = _ticket_name(os.path.join(d, "first.pem"))
        reused, out = connect(sess_in="first.pem", sess_out="again.pem")
        assert reused, "resumed at once"
        assert time.monotonic() - t0 < 1.8, "machine too slow for this test's timing"
        # Every resumption renews the ticket; before the rotation, under the same key.
        eq(_ticket_name(os.path.join(d, "again.pem")), k0, "no rotation yet: the same key")
        # After a rotation: the old ticket still resumes; its renewal is under a new key.
        time.sleep(max(0, t0 + 2.6 - time.monotonic()))
        reused, _ = connect(sess_in="first.pem", sess_out="rotated.pem")
        assert reused, "a 2.6 s old ticket (lifetime 4 s) resumes after the key rotated"
        k1 = _ticket_name(os.path.join(d, "rotated.pem"))
        assert k1 != k0, "the renewed ticket is under the new key (%s)" % k1
        st = json.loads(http(g.port2, "GET", "/status")[2])
        eq(st["tls"]["ticket_keys_made"], 2, "one rotation, shared by both workers")
        # Past its lifetime and its key's: a full handshake, and a new ticket works.
        time.sleep(max(0, t0 + 6.3 - time.monotonic()))
        reused, out = connect(sess_in="first.pem", sess_out="fresh.pem")
        assert not reused and "New, TLSv1.3" in out, "an expired ticket: full handshake"
        reused, _ = connect(sess_in="fresh.pem")
        assert reused, "the fresh ticket resumes"


def test_session_tickets_off():
    """tls.session_tickets = false: no ticket is issued, and a client offering
    a session (from a gateway that had tickets on, same certificate) gets a
    full handshake."""
    cfg = WORKERS_CONFIG.replace("ticket_rotate = %s", "session_tickets = false")
    with tls_gateway(WORKERS_CONFIG % "3600") as on, tls_gateway(cfg) as off, CaFile() as ca:
        for version in ("1.2", "1.3"):
            ctx = client_ctx(ca, version)
            _, _, _, sess = fetch(on.port, ctx, "/w")
            assert sess.has_ticket, "tickets on: a ticket"
            status, _, reused, after = fetch(off.port, ctx, "/w")
            eq((status, reused, after.has_ticket), (200, False, False), "TLS %s tickets off: none issued" % version)
            for i in range(3):
                status, _, reused, _ = fetch(off.port, ctx, "/w", session=after)
                eq((status, reused), (200, False), "TLS %s tickets off: full handshake %d" % (version, i))
        wait_port(off.port2)
        st = json.loads(http(off.port2, "GET", "/status")[2])
        eq(st["tls"]["ticket_keys_made"], 0, "no key was ever made")


# ---- client certificates ----

MTLS_CONFIG = r'''local gw = require "gateway"
gw.config {
  listen = {
    { addr = "127.0.0.1:$PORT", tls = { cert = "a.pem", key = "a.key", client_ca = "clientca.pem" } },
    { addr = "127.0.0.1:$PORT2", tls = { certs = { { cert = "a.pem", key = "a.key" },
                                                  { cert = "b.pem", key = "b.key" } },
                                        client_ca = "clientca.pem", verify_client = "optional" } },
  },
}
gw.get("/cert", function(req)
  local c = req.client_cert
  if c == nil then return "none" end
  return { status = 200, json = c }
end)
'''


def mtls_gateway():
    g = tls_gateway(MTLS_CONFIG)
    g.files["clientca.pem"] = certs()["ca.pem"]
    return g


def x509(pem_text, *args):
    p = subprocess.run(["openssl", "x509", "-noout", *args], input=pem_text, capture_output=True,
                       text=True, timeout=10)
    return p.stdout.strip()


def refused(port, ctx, name="a.test"):
    """True if no answer comes: the handshake or the first read fails."""
    try:
        status, *_ = fetch(port, ctx, "/cert", name=name)
    except (ssl.SSLError, ConnectionResetError, BrokenPipeError, AssertionError) as e:
        return str(e) or True
    return False


def test_client_certificate_required():
    with mtls_gateway() as g, CaFile() as ca:
        alice = os.path.join(g.dir, "alice")
        for version in ("1.2", "1.3"):
            status, body, _, _ = fetch(g.port, client_ctx(ca, version, alice), "/cert")
            eq(status, 200, body)
            c = json.loads(body)
            eq((c["subject"], c["issuer"], c["verified"]), ("CN=alice,O=Example", "CN=gwtest intermediate", True),
               "TLS %s client_cert" % version)
            assert "error" not in c, c
            pem = certs()["alice.pem"]
            eq(c["serial"], x509(pem, "-serial").split("=", 1)[1], "serial as openssl prints it")
            eq(c["fingerprint"], x509(pem, "-fingerprint", "-sha256").split("=", 1)[1].replace(":", "").lower(),
               "sha256 fingerprint")
            assert refused(g.port, client_ctx(ca, version)), "TLS %s without a certificate" % version
            assert refused(g.port, client_ctx(ca, version, os.path.join(g.dir, "mallory"))), \
                "TLS %s with a certificate that does not chain to client_ca" % version
        # curl too; and a resumed session still knows its client certificate.
        ctx = client_ctx(ca, "1.3", alice)
        _, _, _, sess = fetch(g.port, ctx, "/cert")
        status, body, reused, _ = fetch(g.port, ctx, "/cert", session=sess)
        eq((status, reused, json.loads(body)["subject"]), (200, True, "CN=alice,O=Example"), "resumed")
        from gwtest import curl
        rc, body, err = curl("-sS", "--cacert", ca, "--resolve", "a.test:%d:127.0.0.1" % g.port,
                             "--cert", alice + ".pem", "--key", alice + ".key", "https://a.test:%d/cert" % g.port)
        eq((rc, json.loads(body)["subject"] if rc == 0 else err), (0, "CN=alice,O=Example"), "curl")
        rc, body, err = curl("-sS", "--cacert", ca, "--resolve", "a.test:%d:127.0.0.1" % g.port,
                             "https://a.test:%d/cert" % g.port)
        assert rc != 0, "curl without a certificate got %r" % body


def test_client_certificate_optional():
    with mtls_gateway() as g, CaFile() as ca:
        wait_port(g.port2)
        for name in ("a.test", "b.test"):  # also after SNI switched certificates
            status, body, _, _ = fetch(g.port2, client_ctx(ca), "/cert", name=name)
            eq((status, body), (200, "none"), "no certificate: req.client_cert is nil")
            status, body, _, _ = fetch(g.port2, client_ctx(ca, cert=os.path.join(g.dir, "alice")), "/cert",
                                       name=name)
            c = json.loads(body)
            eq((status, c["subject"], c["verified"]), (200, "CN=alice,O=Example", True), name)
            status, body, _, _ = fetch(g.port2, client_ctx(ca, cert=os.path.join(g.dir, "mallory")), "/cert",
                                       name=name)
            c = json.loads(body)
            eq((status, c["subject"], c["issuer"], c["verified"]), (200, "CN=mallory", "CN=mallory", False), name)
            assert "self-signed" in c["error"] or "self signed" in c["error"], c


def test_client_certificate_config_errors():
    c = certs()
    files = {"a.pem": c["a.pem"], "a.key": c["a.key"], "ca.pem": c["ca.pem"]}
    base = 'cert = "a.pem", key = "a.key"'
    for opts in ('client_ca = "ca.pem"', 'client_ca = "ca.pem", verify_client = "optional"',
                 'client_ca = "ca.pem", verify_client = "on"'):
        rc, out, err, _ = _check("{ %s, %s }" % (base, opts), files)
        eq(rc, 0, opts + ": " + err)
    cases = (
        ('client_ca = "missing.pem"', "cannot read client_ca"),
        ('client_ca = "a.key"', "bad client_ca"),
        ('client_ca = "ca.pem", verify_client = "maybe"', 'verify_client must be "on" or "optional"'),
        ('client_ca = "ca.pem", verify_client = true', 'verify_client must be "on" or "optional"'),
        ('verify_client = "on"', "verify_client needs client_ca"),
        ('client_ca = 5', "client_ca must be a path"),
    )
    for opts, want in cases:
        rc, out, err, _ = _check("{ %s, %s }" % (base, opts), files)
        assert rc != 0, "accepted " + opts
        assert "gateway.lua:2:" in err and want in err, (opts, err)
    rc, out, err, _ = run_cli(["-t", "-c", "$DIR/gateway.lua"], {
        "gateway.lua": 'local gw = require "gateway"\ngw.config { tls = { ticket_rotate = 0 } }\n'})
    assert rc != 0 and "gateway.lua:2:" in err and "tls.ticket_rotate" in err, err
    rc, out, err, _ = run_cli(["-t", "-c", "$DIR/gateway.lua"], {
        "gateway.lua": 'local gw = require "gateway"\ngw.config { tls = { session_tickets = "no" } }\n'})
    assert rc != 0 and "gateway.lua:2:" in err and "tls.session_tickets must be true or false" in err, err


# ---- certificates read again on reload ----

def _serial(port):
    out = s_client(port, "-servername", "a.test")
    m = re.search(r"-----BEGIN CERTIFICATE-----.*?-----END CERTIFICATE-----", out, re.S)
    assert m, out[-1500:]
    return x509(m.group(0) + "\n", "-serial")


def test_reload_reads_certificates_again():
    c = certs()
    config = r'''local gw = require "gateway"
gw.config {
  listen = { { addr = "127.0.0.1:$PORT", tls = { cert = "site.pem", key = "site.key" } } },
  admin = "127.0.0.1:$PORT2",
}
gw.get("/hello", function(req) return "hello" end)
'''
    g = tls_gateway(config)
    g.files["site.pem"], g.files["site.key"] = c["a.pem"], c["a.key"]
    with g, CaFile() as ca:
        wait_port(g.port2)
        serial_a, serial_b = x509(c["a.pem"], "-serial"), x509(c["b.pem"], "-serial")
        assert serial_a != serial_b
        eq(_serial(g.port), serial_a, "before")
        old = ssl.create_default_context(cafile=ca).wrap_socket(
            socket.create_connection(("127.0.0.1", g.port), timeout=5), server_hostname="a.test")
        try:
            old.sendall(get("/hello"))
            eq([x.body for x in read_responses(old, 1)], [b"hello"], "an open connection")
            # Renewed files, same paths, same configuration: a reload reads them.
            for name, key in (("site.pem", "b.pem"), ("site.key", "b.key")):
                with open(os.path.join(g.dir, name), "w") as f:
                    f.write(c[key])
            g.send_signal(signal.SIGHUP)
            assert wait_for(lambda: _serial(g.port) == serial_b, 5), "new connections get the new certificate"
            old.sendall(get("/hello"))
            eq([x.body for x in read_responses(old, 1)], [b"hello"], "the open connection goes on")
            eq(x509(ssl.DER_cert_to_PEM_cert(old.getpeercert(True)), "-serial"), serial_a,
               "with the certificate it started with")
            # A bad certificate: the reload fails, /status says why, the last good one stays.
            with open(os.path.join(g.dir, "site.pem"), "w") as f:
                f.write("-----BEGIN CERTIFICATE-----\nnot base64\n-----END CERTIFICATE-----\n")
            g.send_signal(signal.SIGHUP)

            def reload_error():
                st = json.loads(http(g.port2, "GET", "/status")[2])
                e = st.get("last_reload_error")
                return e if e and "site.pem" in json.dumps(e) else None
            e = wait_for(reload_error, 5)
            assert e and "bad certificate" in json.dumps(e), e
            eq(_serial(g.port), serial_b, "the last good certificate is still served")
            old.sendall(get("/hello"))
            eq([x.body for x in read_responses(old, 1)], [b"hello"], "and the old connection still works")
        finally:
            old.close()
