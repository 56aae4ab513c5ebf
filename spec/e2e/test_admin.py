"""The admin listener: GET /status (JSON), GET /metrics (Prometheus text), POST
/reload; only where gw.config{ admin = ... } is set, never mixed with the public
routes."""

import hashlib
import json
import os
import re
import socket
import threading
import time

from gwtest import Conn, Gateway, admin_answers, eq, gw_bin, http, line_of, req_bytes, run_cli, wait_for

ADMIN_PRELUDE = ('local gw = require "gateway"\n'
                 'gw.config { listen = { "127.0.0.1:$PORT" }, admin = "127.0.0.1:$PORT2", access_log = false }\n')

APP = ADMIN_PRELUDE + r'''
gw.shared_dict("counts", "1m")
gw.get("/users/:id", function(req) return { json = { id = req.params.id } } end)
gw.post("/users", function(req) return { status = 201, body = "made" } end)
gw.get("/slow", function(req) gw.sleep(0.3); return "slow" end)
gw.get("/boom", function(req) error("boom") end)
gw.get("/status", function(req) return "public status route" end)
'''


def admin(g, method, path, body=None):
    return http(g.port2, method, path, body=body)


def wait_admin(g):
    """Waits until a worker answers on the admin listener (gwtest.admin_answers)."""
    ok = wait_for(lambda: admin_answers(g.port2), 5)
    assert ok, "admin listener not up on %d:\n%s" % (g.port2, g.stderr_text())


def _connects(port):
    try:
        socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
        return True
    except OSError:
        return False


def status(g):
    st, hdrs, body = admin(g, "GET", "/status")
    eq(st, 200, "GET /status")
    assert hdrs.get("content-type", "").startswith("application/json"), hdrs
    return json.loads(body)


# ---- a strict reader of the Prometheus text format (version 0.0.4) ----

SAMPLE = re.compile(r'^([a-zA-Z_:][a-zA-Z0-9_:]*)(\{(.*)\})? (\S+)$')
LABEL = re.compile(r'([a-zA-Z_][a-zA-Z0-9_]*)="((?:[^"\\\n]|\\[\\"n])*)"(,|$)')


def parse_prometheus(text):
    """Returns ({(name, frozenset(labels)): value}, {family: type}); raises on
    anything that is not valid exposition text."""
    assert text.endswith("\n"), "exposition must end with a newline"
    samples, types = {}, {}
    for n, line in enumerate(text.split("\n")[:-1], 1):
        if line.startswith("# HELP "):
            assert re.match(r"^# HELP [a-zA-Z_:][a-zA-Z0-9_:]* .+$", line), "line %d: %r" % (n, line)
            continue
        if line.startswith("# TYPE "):
            m = re.match(r"^# TYPE ([a-zA-Z_:][a-zA-Z0-9_:]*) (counter|gauge|histogram|summary|untyped)$", line)
            assert m, "line %d: %r" % (n, line)
            assert m.group(1) not in types, "line %d: TYPE repeated for %s" % (n, m.group(1))
            types[m.group(1)] = m.group(2)
            continue
        assert not line.startswith("#") and line.strip(), "line %d: %r" % (n, line)
        m = SAMPLE.match(line)
        assert m, "line %d is not a sample: %r" % (n, line)
        name, labels_text, value = m.group(1), m.group(3), m.group(4)
        labels = {}
        if labels_text:
            pos = 0
            while pos < len(labels_text):
                lm = LABEL.match(labels_text, pos)
                assert lm, "line %d: bad labels %r" % (n, labels_text)
                labels[lm.group(1)] = lm.group(2).replace('\\"', '"').replace("\\n", "\n").replace("\\\\", "\\")
                pos = lm.end()
        family = re.sub(r"_(bucket|sum|count)$", "", name) if name not in types else name
        assert family in types, "line %d: sample %s before its TYPE" % (n, name)
        v = float(value)  # raises on a malformed number ("+Inf" parses too)
        key = (name, frozenset(labels.items()))
        assert key not in samples, "line %d: duplicate sample %r" % (n, line)
        samples[key] = v
    return samples, types


def metric(samples, name, **labels):
    return samples.get((name, frozenset(labels.items())))


def check_histograms(samples, family):
    """Buckets cumulative and ending in +Inf == _count, for every label set."""
    series = {}
    for (name, labels), v in samples.items():
        if name == family + "_bucket":
            d = dict(labels)
            le = d.pop("le")
            series.setdefault(frozenset(d.items()), []).append((float(le), v))
    assert series, "no %s buckets" % family
    for labels, buckets in series.items():
        buckets.sort()
        values = [v for _, v in buckets]
        eq(values, sorted(values), "%s buckets cumulative for %r" % (family, dict(labels)))
        assert buckets[-1][0] == float("inf"), "last bucket is +Inf"
        count = samples.get((family + "_count", labels))
        eq(buckets[-1][1], count, "+Inf bucket == _count for %r" % dict(labels))
        assert samples.get((family + "_sum", labels)) is not None, "_sum for %r" % dict(labels)
    return series


# ---- tests ----

def test_status_document():
    with Gateway(APP, workers=2) as g:
        wait_admin(g)
        pids = g.wait_workers(2)
        for i in range(6):
            eq(g.get("/users/%d" % i)[0], 200, "request")
        doc = status(g)
        version = os_version()
        eq(doc["version"], version, "version")
        assert isinstance(doc["uptime"], (int, float)) and 0 <= doc["uptime"] < 60, doc["uptime"]
        eq(doc["master_pid"], g.pid, "master pid")
        eq(len(doc["workers"]), 2, "workers")
        eq(sorted(w["pid"] for w in doc["workers"]), pids, "worker pids")
        for w in doc["workers"]:
            eq(w["generation"], 1, "generation")
            for k in ("requests", "connections", "lua_memory_bytes"):
                assert isinstance(w[k], int) and w[k] >= 0, (k, w)
            assert w["lua_memory_bytes"] > 0, w
        eq(sum(w["requests"] for w in doc["workers"]), 6, "requests over the workers")
        with open(g.config_path, "rb") as f:
            digest = hashlib.sha256(f.read()).hexdigest()
        eq(doc["config"]["hash"], digest, "configuration hash")
        eq(doc["config"]["path"], g.config_path, "configuration path")
        assert re.match(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z$", doc["config"]["loaded_at"]), doc["config"]
        eq(doc["last_reload_error"], None, "no reload error yet")
        eq(doc["last_reload"], None, "no reload yet")
        eq(doc["restart_needed"], None, "nothing needs a restart")
        eq(doc["upstreams"], [], "upstreams (none yet)")
        eq([d["name"] for d in doc["shared_dicts"]], ["counts"], "shared dicts")


def os_version():
    import subprocess
    out = subprocess.run([gw_bin(), "-v"], capture_output=True, text=True).stdout
    return re.match(r"gateway (\S+)", out).group(1)


def test_metrics_prometheus_text_summed_over_workers():
    with Gateway(APP, workers=2) as g:
        wait_admin(g)
        eq(len(g.wait_workers(2)), 2, "workers")
        for i in range(20):
            eq(g.get("/users/%d" % i)[0], 200, "GET")
        for i in range(3):
            eq(g.http("POST", "/users", body="x")[0], 201, "POST")
        for i in range(4):
            eq(g.get("/nowhere/%d" % i)[0], 404, "404")
        eq(g.http("DELETE", "/users/1")[0], 405, "405")
        eq(g.get("/boom")[0], 500, "500")
        t0 = time.monotonic()
        eq(g.get("/slow")[0], 200, "slow")
        slow_client = time.monotonic() - t0
        doc = status(g)
        assert all(w["requests"] > 0 for w in doc["workers"]), \
            "both workers should have served (spread by the kernel): %r" % doc["workers"]
        st, hdrs, body = admin(g, "GET", "/metrics")
        eq(st, 200, "GET /metrics")
        assert hdrs["content-type"].startswith("text/plain; version=0.0.4"), hdrs
        samples, types = parse_prometheus(body.decode())
        eq(types.get("gateway_requests_total"), "counter", "type")
        eq(types.get("gateway_request_duration_seconds"), "histogram", "type")
        for name, want in [("gateway_connections", "gauge"), ("gateway_reloads_total", "counter"),
                           ("gateway_lua_memory_bytes", "gauge")]:
            eq(types.get(name), want, "type of " + name)
        rt = "gateway_requests_total"
        eq(metric(samples, rt, route="/users/:id", status="200"), 20, "GET /users/:id 200")
        eq(metric(samples, rt, route="/users", status="201"), 3, "POST /users 201")
        eq(metric(samples, rt, route="", status="404"), 4, "no route: empty route label")
        eq(metric(samples, rt, route="", status="405"), 1, "405: no route matched that method")
        eq(metric(samples, rt, route="/boom", status="500"), 1, "500")
        admin_counted = [k for k in samples if k[0] == rt and dict(k[1]).get("route") in ("/status", "/metrics")]
        eq(admin_counted, [], "admin requests are not counted")
        series = check_histograms(samples, "gateway_request_duration_seconds")
        slow = dict(series[frozenset({("route", "/slow")})])
        eq(slow[0.25], 0, "the 0.3 s request is above 0.25")
        # The gateway's own measure is within the client's: every bucket at
        # or above what the client saw holds it (no fixed upper bound).
        for bound, n in slow.items():
            if bound >= slow_client:
                eq(n, 1, "bucket %s (the client saw %.3f s)" % (bound, slow_client))
        eq(metric(samples, "gateway_request_duration_seconds_count", route="/users/:id"), 20, "histogram count")
        assert metric(samples, "gateway_request_duration_seconds_sum", route="/slow") >= 0.3, "sum"
        eq(metric(samples, "gateway_reloads_total", result="ok"), 0, "reloads ok")
        eq(metric(samples, "gateway_reloads_total", result="failed"), 0, "reloads failed")
        assert metric(samples, "gateway_lua_memory_bytes") > 0, "lua memory"
        assert metric(samples, "gateway_connections") >= 1, "connections (this one at least)"


def test_metrics_count_interleaved_routes_apart():
    # metrics.c tries the previous request's route slot first: requests that
    # alternate between routes must still each be counted under their own.
    with Gateway(APP) as g:
        wait_admin(g)
        for i in range(12):
            eq(g.get("/users/%d" % i)[0], 200, "GET")
            eq(g.http("POST", "/users", body="x")[0], 201, "POST")
            if i % 3 == 0:
                eq(g.get("/nowhere")[0], 404, "404")
        samples, _ = parse_prometheus(admin(g, "GET", "/metrics")[2].decode())
        rt = "gateway_requests_total"
        eq(metric(samples, rt, route="/users/:id", status="200"), 12, "GET /users/:id")
        eq(metric(samples, rt, route="/users", status="201"), 12, "POST /users")
        eq(metric(samples, rt, route="", status="404"), 4, "no route")
        eq(metric(samples, "gateway_request_duration_seconds_count", route="/users"), 12, "histogram count")


def test_connections_gauge_counts_open_connections():
    with Gateway(APP) as g:
        wait_admin(g)
        conns = [Conn(g.port) for _ in range(5)]
        try:
            for c in conns:
                c.send(req_bytes("GET", "/users/1"))
                eq(c.read_response().status, 200, "keep-alive request")
            samples, _ = parse_prometheus(admin(g, "GET", "/metrics")[2].decode())
            eq(metric(samples, "gateway_connections"), 6, "5 public + this admin connection")
        finally:
            for c in conns:
                c.close()
        assert wait_for(lambda: status(g)["workers"][0]["connections"] == 1, 3), "closed connections counted"


def test_admin_and_public_paths_never_mix():
    with Gateway(APP) as g:
        wait_admin(g)
        # The public listener runs the configuration's routes only.
        eq(g.get("/status")[2], b"public status route", "public /status is the script's route")
        eq(g.get("/metrics")[0], 404, "no /metrics on the public listener")
        eq(g.http("POST", "/reload")[0], 404, "no /reload on the public listener")
        # The admin listener never runs the configuration's routes.
        st, _, body = admin(g, "GET", "/users/1")
        eq(st, 404, "public route on the admin listener")
        assert b"admin" in body, body
        st, hdrs, _ = admin(g, "GET", "/reload")
        eq(st, 405, "GET /reload")
        eq(hdrs.get("allow"), "POST", "Allow")
        eq(admin(g, "POST", "/status")[0], 405, "POST /status")
        eq(admin(g, "HEAD", "/status")[0], 200, "HEAD /status")


def test_no_admin_listener_unless_configured():
    cfg = ('local gw = require "gateway"\n'
           'gw.config { listen = { "127.0.0.1:$PORT" } }\n'
           '-- $PORT2 is reserved but unused\n'
           'gw.get("/x", function(req) return "x" end)\n')
    with Gateway(cfg) as g:
        eq(g.get("/x")[0], 200, "public")
        assert not _connects(g.port2), "something listens on the admin port without admin set"


def test_admin_address_checked():
    # Another spelling of a listen socket, or the same port on every
    # interface, would have the kernel share one port between the admin and
    # a public listener (SO_REUSEPORT): refused, as are addresses the
    # gateway could not listen on at all.
    share, numeric = "must not share a port with the listen address", "a numeric address"
    for listen, admin_addr, needle in [("127.0.0.1:$PORT", "127.0.0.1:$PORT", share),
                                       ("127.0.0.1:$PORT", "127.0.0.1:0$PORT", share),
                                       ("127.0.0.1:$PORT", "0.0.0.0:$PORT", share),
                                       ("127.0.0.1:$PORT", ":$PORT", share),
                                       ("0.0.0.0:$PORT", "127.0.0.1:$PORT", share),
                                       ("[::]:$PORT", "127.0.0.1:$PORT", share),
                                       ("[::1]:$PORT", "[0:0::0001]:$PORT", share),
                                       ("127.0.0.1:$PORT", "nonsense", numeric),
                                       ("127.0.0.1:$PORT", "localhost:$PORT2", numeric),
                                       ("127.0.0.1:$PORT", "127.0.0.1:99999", numeric),
                                       ("127.0.0.1:$PORT", "127.0.0.1:0", numeric),
                                       ("127.0.0.1:$PORT", "127.0.0.256:$PORT2", numeric)]:
        cfg = ('local gw = require "gateway"\n'
               'gw.config { listen = { "%s" }, admin = "%s" }\n' % (listen, admin_addr))
        rc, out, err, _ = run_cli(["-t", "-c", "$DIR/gateway.lua"], {"gateway.lua": cfg})
        eq(rc, 1, "exit status for listen %r, admin %r" % (listen, admin_addr))
        assert needle in out + err and "gateway.lua:2:" in out + err, out + err
    # Another address on the same port, or the same address on another port, is fine.
    for listen, admin_addr in [("127.0.0.1:$PORT", "127.0.0.2:$PORT"), ("127.0.0.1:$PORT", "127.0.0.1:$PORT2")]:
        cfg = ('local gw = require "gateway"\n'
               'gw.config { listen = { "%s" }, admin = "%s" }\n' % (listen, admin_addr))
        rc, out, err, _ = run_cli(["-t", "-c", "$DIR/gateway.lua"], {"gateway.lua": cfg})
        eq(rc, 0, "listen %r, admin %r: %s" % (listen, admin_addr, out + err))


def reads_file_app(tag_file):
    # The answer comes from a plain text file the watcher does not follow,
    # so only an explicit reload (POST /reload, HUP) picks a change up.
    return ADMIN_PRELUDE + '''
local f = assert(io.open("%s"))
local answer = f:read("*l")
f:close()
gw.get("/v", function(req) return answer end)
''' % tag_file


def test_post_reload_reloads_every_worker():
    with Gateway(reads_file_app("$DIR/answer.txt"), workers=2, files={"answer.txt": "one\n"}) as g:
        wait_admin(g)
        eq(len(g.wait_workers(2)), 2, "workers")
        eq({g.get("/v")[2] for _ in range(10)}, {b"one"}, "before")
        with open(os.path.join(g.dir, "answer.txt"), "w") as f:
            f.write("two\n")
        st, _, body = admin(g, "POST", "/reload")
        eq(st, 200, "POST /reload (%r)" % body)
        doc = json.loads(body)
        eq((doc["result"], doc["generation"]), ("ok", 2), "answer")
        # The worker that took the request reloaded before answering; the
        # other one reloads on the master's HUP.
        ok = wait_for(lambda: [w["generation"] for w in status(g)["workers"]] == [2, 2], 5)
        assert ok, "both workers at generation 2: %r" % status(g)["workers"]
        eq({g.get("/v")[2] for _ in range(20)}, {b"two"}, "after, on every worker")
        doc = status(g)
        eq(doc["last_reload"]["result"], "ok", "last reload")
        eq(sorted(w["reloads"]["ok"] for w in doc["workers"]), [1, 1], "one reload per worker, not two")


def test_reload_error_shown_in_status_with_file_line():
    good = APP + 'gw.get("/v", function(req) return "v1" end)\n'
    broken = good + 'gw.get("/w", function(req)\n  return = 1\nend)\n'
    line = line_of(broken, "return = 1")
    with Gateway(good) as g:
        wait_admin(g)
        with open(g.config_path, "w") as f:
            f.write(g._substitute(broken))
        ok = wait_for(lambda: status(g)["last_reload_error"] is not None, 5)
        assert ok, "no reload error in /status:\n" + g.stderr_text()
        doc = status(g)
        err = doc["last_reload_error"]
        eq(err["file"], g.config_path, "file")
        eq(err["line"], line, "line")
        assert err["message"].startswith("%s:%d:" % (g.config_path, line)), err
        eq(err["generation"], 2, "the generation that failed")
        eq(doc["last_reload"]["result"], "failed", "last reload")
        eq(doc["config"]["generation"], 1, "generation 1 keeps serving")
        eq(doc["workers"][0]["reloads"], {"ok": 0, "failed": 1}, "reload counts")
        eq(g.get("/v")[2], b"v1", "old answers")
        samples, _ = parse_prometheus(admin(g, "GET", "/metrics")[2].decode())
        eq(metric(samples, "gateway_reloads_total", result="failed"), 1, "failed reloads metric")
        # POST /reload answers with the error too.
        st, _, body = admin(g, "POST", "/reload")
        eq(st, 422, "POST /reload of a broken file")
        doc = json.loads(body)
        eq((doc["result"], doc["line"], doc["file"]), ("failed", line, g.config_path), "reload answer")
        # Fixed: a reload succeeds; the error stays on record with its time.
        with open(g.config_path, "w") as f:
            f.write(g._substitute(good.replace('"v1"', '"v3"')))
        assert wait_for(lambda: g.get("/v")[2] == b"v3", 5), "fixed file not loaded"
        doc = status(g)
        eq(doc["last_reload"]["result"], "ok", "last reload after the fix")
        assert doc["last_reload_error"]["line"] == line, "the last error is kept on record"


def _reload_failing_with(g, lua_error_call):
    with open(g.config_path, "w") as f:
        f.write(g._substitute(APP + lua_error_call + "\n"))
    st, _, body = admin(g, "POST", "/reload")
    eq(st, 422, "POST /reload of a failing file")
    # Strict: the body must be UTF-8 (json.loads on bytes would guess).
    return json.loads(body.decode("utf-8"))


def test_reload_error_with_invalid_utf8_is_valid_json():
    with Gateway(APP) as g:
        wait_admin(g)
        # A stray byte (\255) and a valid two-byte character (é, \195\169).
        doc = _reload_failing_with(g, r'error("bad byte \255 here, caf\195\169", 0)')
        eq(doc["message"], "bad byte \ufffd here, caf\u00e9", "POST /reload message")
        st, _, body = admin(g, "GET", "/status")
        err = json.loads(body.decode("utf-8"))["last_reload_error"]
        eq(err["message"], "bad byte \ufffd here, caf\u00e9", "/status message")
        # /status keeps 1023 bytes of the text: the cut falls inside an é and
        # goes back to its start rather than leave half a character.
        doc = _reload_failing_with(g, r'error(("x"):rep(1022) .. ("\195\169"):rep(10), 0)')
        eq(doc["message"], "x" * 1022 + "\u00e9" * 10, "POST /reload keeps the whole text")
        st, _, body = admin(g, "GET", "/status")
        err = json.loads(body.decode("utf-8"))["last_reload_error"]
        eq(err["message"], "x" * 1022, "/status cut at a character boundary")


def test_reload_error_without_a_file_has_null_file_and_line():
    with Gateway(APP) as g:
        wait_admin(g)
        # host:port: in the script's own words is no file:line.
        text = "upstream 127.0.0.1:8080: connection refused"
        doc = _reload_failing_with(g, 'error("%s", 0)' % text)
        eq((doc["message"], doc["file"], doc["line"]), (text, None, None), "POST /reload answer")
        st, _, body = admin(g, "GET", "/status")
        err = json.loads(body)["last_reload_error"]
        eq((err["message"], err["file"], err["line"]), (text, None, None), "/status")
        # A leading FILE:LINE: that names a .lua file is still taken.
        doc = _reload_failing_with(g, 'error("mod.lua:12: bad value", 0)')
        eq((doc["file"], doc["line"]), ("mod.lua", 12), "a .lua file")


def test_restart_needed_shown_in_status():
    with Gateway(APP) as g:
        wait_admin(g)
        with open(g.config_path, "w") as f:
            f.write(g._substitute(APP.replace('listen = { "127.0.0.1:$PORT" }',
                                              'listen = { "127.0.0.1:$PORT", "127.0.0.1:$PORT3" }')))
        ok = wait_for(lambda: status(g)["restart_needed"], 5)
        assert ok and "listen" in ok, "restart_needed: %r" % ok
        eq(status(g)["workers"][0]["restart_needed"], ok, "per worker too")
        assert not _connects(g.ports["$PORT3"]), "a new listen address must wait for a restart"


def test_retired_generations_are_freed():
    app = APP + '''
gw.timer.every(0.02, function() gw.shared.counts:incr("ticks", 1, 0) end)
gw.get("/slow2", function(req) gw.sleep(0.8); return "slow2" end)
'''
    with Gateway(app) as g:
        wait_admin(g)
        res = {}
        t = threading.Thread(target=lambda: res.update(r=g.get("/slow2", timeout=5)))
        t.start()
        time.sleep(0.2)
        eq(admin(g, "POST", "/reload")[0], 200, "reload")
        eq(status(g)["workers"][0]["generations_alive"], 2, "the old generation finishes the request")
        t.join(5)
        eq(res["r"][2], b"slow2", "in-flight answer")
        # The old generation's repeating timer was stopped and its request is
        # done: nothing holds it any more.
        ok = wait_for(lambda: status(g)["workers"][0]["generations_alive"] == 1, 3)
        assert ok, "old generation still alive: %r" % status(g)["workers"][0]


UPSTREAM_TIMES = r'''
local gw = require "gateway"
gw.config { listen = { "127.0.0.1:$PORT", "127.0.0.1:$PORT3" }, admin = "127.0.0.1:$PORT2" }
gw.get("/backend/slow", function(req) gw.sleep(0.03); return "slow" end)
local up = gw.upstream("timed", { servers = { "127.0.0.1:$PORT3" } })
local dead = gw.upstream("gone", { servers = { "127.0.0.1:@DEAD@" }, retries = 0 })
gw.get("/via", function(req) return up:proxy(req, { path = "/backend/slow" }) end)
gw.get("/dead", function(req) return dead:proxy(req) end)
'''


def test_upstream_duration_histogram():
    from origin import dead_port
    dead = dead_port()
    with Gateway(UPSTREAM_TIMES.replace("@DEAD@", str(dead)), workers=2) as g:
        wait_admin(g)
        for _ in range(12):
            eq(g.get("/via")[0], 200, "proxied")
        for _ in range(2):
            eq(g.get("/dead")[0], 502, "refused")
        fam = "gateway_upstream_duration_seconds"
        timed = {"upstream": "timed", "server": "127.0.0.1:%d" % g.ports["$PORT3"]}
        gone = {"upstream": "gone", "server": "127.0.0.1:%d" % dead}
        # A try is counted just after its answer's last bytes are written, and
        # /metrics may be served by the other worker in between: wait for it.
        got = {}

        def counted():
            got["samples"], got["types"] = parse_prometheus(admin(g, "GET", "/metrics")[2].decode())
            return metric(got["samples"], fam + "_count", **timed) == 12
        wait_for(counted, 5)
        samples, types = got["samples"], got["types"]
        eq(types.get(fam), "histogram", "type")
        series = check_histograms(samples, fam)
        eq(metric(samples, fam + "_count", **timed), 12, "every try counted, summed over workers")
        eq(metric(samples, fam + "_count", **gone), 2, "failed tries counted too")
        # The backend sleeps 30 ms: no try can be shorter (lower bounds only).
        eq(dict(series[frozenset(timed.items())])[0.025], 0, "nothing under 25 ms")
        assert metric(samples, fam + "_sum", **timed) >= 12 * 0.03, "sum of 12 tries of 30 ms or more"


def test_a_long_route_name_is_cut_on_a_character_boundary_in_metrics():
    # Route labels are cut to 199 bytes; cut inside "é" (here a parameter's
    # name) they made /metrics invalid UTF-8, which Prometheus refuses whole.
    cfg = ADMIN_PRELUDE + 'gw.get("/" .. string.rep("a", 195) .. "/:\\195\\169", function(req) return "long" end)\n'
    with Gateway(cfg) as g:
        wait_admin(g)
        eq(g.get("/" + "a" * 195 + "/x")[:3:2], (200, b"long"), "the long route")
        st, _, body = admin(g, "GET", "/metrics")
        eq(st, 200, "GET /metrics")
        text = body.decode("utf-8")  # raises on half a character
        assert 'route="/' + "a" * 195 + '/:"' in text, text[-2000:]


def test_a_workers_change_needs_a_restart_unless_w_is_given():
    # The master once handed its count to every worker as if -w had been
    # given, so a change of `workers` was never reported.
    one = APP.replace('access_log = false }', 'access_log = false, workers = 1 }')
    two = one.replace("workers = 1 }", "workers = 2 }")
    assert one != APP and two != one
    for w_flag, want in ((None, "workers changed (1 -> 2)"), (1, None)):
        with Gateway(one, workers=w_flag) as g:
            wait_admin(g)
            with open(g.config_path, "w") as f:
                f.write(g._substitute(two))
            st, _, body = admin(g, "POST", "/reload")
            eq(st, 200, "reload: %r" % body)
            eq(status(g)["restart_needed"], want, "with -w %r" % w_flag)


def test_a_reload_to_a_log_path_that_cannot_be_opened_fails():
    with Gateway(APP) as g:
        wait_admin(g)
        bad = APP.replace("access_log = false", 'access_log = "$DIR/no/such/folder/a.log"')
        assert bad != APP
        with open(g.config_path, "w") as f:
            f.write(g._substitute(bad))
        st, _, body = admin(g, "POST", "/reload")
        eq(st, 422, "reload: %r" % body)
        assert "cannot open access log" in json.loads(body)["message"], body
        assert "cannot open access log" in status(g)["last_reload_error"]["message"], status(g)
