"""Every configuration shipped (gateway.lua.example and scripts/examples/*.lua)
passes `gateway -t`, starts, and answers the first curl command of its header
comment. Fixed ports in the files are replaced by free ones."""
import glob
import os
import re

from gwtest import Gateway, eq, free_port, http, run_cli

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def _with_free_ports(text):
    ports = {}
    def repl(m):
        p = m.group(1)
        ports.setdefault(p, str(free_port()))
        return "127.0.0.1:" + ports[p]
    return re.sub(r"127\.0\.0\.1:(\d{4,5})", repl, text), ports


def _load(path):
    with open(os.path.join(ROOT, path)) as f:
        return f.read()


def test_every_example_passes_check():
    files = ["gateway.lua.example"] + sorted(
        os.path.relpath(p, ROOT) for p in glob.glob(os.path.join(ROOT, "scripts/examples/*.lua")))
    assert len(files) >= 4, files
    for f in files:
        rc, out, err, _ = run_cli(["-t", "-c", os.path.join(ROOT, f)])
        eq(rc, 0, "%s: gateway -t (%s)" % (f, err.strip()))


# (file, first listen port in the file, path, expected text in the body)
SMOKE = [
    ("gateway.lua.example", "8080", "/dashboard/1", '"user"'),
    ("scripts/examples/hello.lua", "8081", "/hello/ada", '"hello":"ada"'),
    ("scripts/examples/middleware.lua", "8082", "/public", '"ok":true'),
    ("scripts/examples/aggregation.lua", "8083", "/summary/7", '"orders"'),
    ("scripts/examples/proxy.lua", "8084", "/api/headers", '"x-api-version":"2"'),
    ("scripts/examples/jwt.lua", "8085", "/public", '"ok":true'),
    ("scripts/examples/ratelimit.lua", "8086", "/hello", '"hello":"world"'),
]


def test_examples_serve():
    for f, port, path, want in SMOKE:
        text, ports = _with_free_ports(_load(f))
        main = ports[port]
        text = text.replace("127.0.0.1:" + main, "127.0.0.1:$PORT")
        with Gateway(text, workers=1) as g:
            st, _, body = http(g.port, "GET", path, timeout=5)
            eq(st, 200, "%s GET %s" % (f, path))
            assert want in body.decode(), "%s GET %s: %r lacks %r" % (f, path, body[:300], want)
