"""Hot reload: a changed configuration (or a Lua file it loaded) is picked up by
every worker without a restart and without dropping connections; a broken one
is refused and the old one keeps serving; in-flight work finishes on the old
generation; SIGHUP reloads too."""

import os
import signal
import threading
import time

from gwtest import PRELUDE, Conn, Gateway, eq, line_of, proc_status, req_bytes, wait_for


def version_app(tag, extra=""):
    return PRELUDE + extra + '''
gw.get("/v", function(req) return "%s" end)
gw.get("/slow", function(req) gw.sleep(1.5); return "slow %s" end)
''' % (tag, tag)


def write_config(g, text, rename=False):
    """Writes a new configuration the way an editor would: in place, or into a
    new file renamed over the old one (vim, most IDEs)."""
    text = g._substitute(text)
    path = g.config_path
    if rename:
        tmp = path + ".swp"
        with open(tmp, "w") as f:
            f.write(text)
        os.rename(tmp, path)
    else:
        with open(path, "w") as f:
            f.write(text)


def write_file(g, name, text):
    with open(os.path.join(g.dir, name), "w") as f:
        f.write(text)


def ask(conn, path="/v"):
    conn.send(req_bytes("GET", path))
    r = conn.read_response()
    return r.status, r.body.decode()


def wait_answer(conn, want, path="/v", timeout=5.0):
    """Asks on `conn` until the body is `want`; returns the last answer."""
    last = [None]

    def check():
        last[0] = ask(conn, path)
        return last[0] == (200, want)
    wait_for(check, timeout, 0.02)
    return last[0]


def test_edit_applies_on_held_keepalive_connection():
    with Gateway(version_app("v1")) as g:
        with Conn(g.port) as c:
            eq(ask(c), (200, "v1"), "before")
            write_config(g, version_app("v2"))
            eq(wait_answer(c, "v2"), (200, "v2"), "after the edit, same connection")
            assert not c.eof, "the connection was closed by the reload"
            eq(ask(c), (200, "v2"), "next request on the same connection")
        assert "generation 2 serving" in g.wait_stderr("generation 2 serving"), g.stderr_text()


def test_edit_right_after_start_is_not_missed():
    # The listener is up before the worker's file watches are: an edit in
    # between makes no event, and used to be missed for good (about one
    # start in three). The worker now compares the file with what it loaded
    # once the watches are in place.
    for _ in range(5):
        with Gateway(version_app("v1")) as g:
            write_config(g, version_app("v2"))
            with Conn(g.port) as c:
                eq(wait_answer(c, "v2"), (200, "v2"), "the edit made at start-up is served")


def test_rename_on_save_rearms_the_watch():
    with Gateway(version_app("v1")) as g:
        with Conn(g.port) as c:
            for i in range(2, 5):  # several saves: each must be seen
                write_config(g, version_app("v%d" % i), rename=True)
                eq(wait_answer(c, "v%d" % i), (200, "v%d" % i), "after rename-save %d" % i)


def test_required_module_change_reloads():
    cfg = PRELUDE + 'local lib = require "lib"\ngw.get("/v", function(req) return lib.answer end)\n'
    with Gateway(cfg, files={"lib.lua": 'return { answer = "one" }\n'}) as g:
        with Conn(g.port) as c:
            eq(ask(c), (200, "one"), "before")
            write_file(g, "lib.lua", 'return { answer = "two" }\n')
            eq(wait_answer(c, "two"), (200, "two"), "after editing lib.lua")
            # A broken module is refused; fixing just that module reloads again.
            write_file(g, "lib.lua", 'return { answer = = "three" }\n')
            g.wait_stderr("lib.lua:1:")
            eq(ask(c), (200, "two"), "broken module: the old generation serves")
            write_file(g, "lib.lua", 'return { answer = "four" }\n')
            eq(wait_answer(c, "four"), (200, "four"), "after fixing lib.lua")


def test_a_deleted_module_put_back_reloads():
    # The failed load never read the missing module, and the watch set once
    # became only what that load found: putting the file back did nothing.
    cfg = PRELUDE + 'local m = require "lib.mod"\ngw.get("/v", function(req) return m.tag end)\n'
    with Gateway(cfg, files={"lib/mod.lua": 'return { tag = "m1" }\n'}) as g:
        with Conn(g.port) as c:
            eq(ask(c), (200, "m1"), "before")
            os.unlink(os.path.join(g.dir, "lib", "mod.lua"))
            g.wait_stderr("module 'lib.mod' not found")
            eq(ask(c), (200, "m1"), "a missing module: the old generation serves")
            write_file(g, "lib/mod.lua", 'return { tag = "m2" }\n')
            eq(wait_answer(c, "m2"), (200, "m2"), "after putting the module back")


def test_a_re_pointed_symbolic_link_is_followed():
    # `ln -sfn` to another file, and a Kubernetes ConfigMap's layout (the
    # file a link through ..data, itself a link swapped to a new folder at
    # each update, the old folder removed). The watch stayed on the first
    # target: later edits, and every update after the first, were missed.
    with Gateway(version_app("v0")) as g:
        d = g.dir
        def ln(target, name):
            tmp = os.path.join(d, name + ".tmp")
            os.symlink(target, tmp)
            os.rename(tmp, os.path.join(d, name))
        # ln -sfn: gateway.lua -> a.lua, then -> b.lua, then b.lua edited.
        with open(os.path.join(d, "a.lua"), "w") as f:
            f.write(g._substitute(version_app("a")))
        with open(os.path.join(d, "b.lua"), "w") as f:
            f.write(g._substitute(version_app("b")))
        with Conn(g.port) as c:
            ln("a.lua", "gateway.lua")
            eq(wait_answer(c, "a"), (200, "a"), "linked to a.lua")
            ln("b.lua", "gateway.lua")
            eq(wait_answer(c, "b"), (200, "b"), "re-pointed to b.lua")
            with open(os.path.join(d, "b.lua"), "w") as f:
                f.write(g._substitute(version_app("b2")))
            eq(wait_answer(c, "b2"), (200, "b2"), "an edit of the new target")
            # ConfigMap: gateway.lua -> ..data/gateway.lua, ..data -> ..v1, ..v2, ...
            import shutil
            for i in range(1, 4):
                os.mkdir(os.path.join(d, "..v%d" % i))
                with open(os.path.join(d, "..v%d" % i, "gateway.lua"), "w") as f:
                    f.write(g._substitute(version_app("cm%d" % i)))
                ln("..v%d" % i, "..data")
                if i == 1:
                    ln("..data/gateway.lua", "gateway.lua")
                else:
                    shutil.rmtree(os.path.join(d, "..v%d" % (i - 1)))
                eq(wait_answer(c, "cm%d" % i), (200, "cm%d" % i), "ConfigMap update %d" % i)


def test_unrelated_file_in_folder_does_not_reload():
    with Gateway(version_app("v1")) as g:
        eq(g.get("/v")[2], b"v1", "before")
        for i in range(5):
            write_file(g, "notes.txt", "x" * i)
        time.sleep(0.5)
        assert "reload" not in g.stderr_text(), g.stderr_text()


def test_broken_edit_keeps_old_generation_and_logs_file_line():
    broken = PRELUDE + 'gw.get("/v", function(req)\n  return "v2" +\nend)\n'
    line = line_of(broken, "end)")
    with Gateway(version_app("v1")) as g:
        with Conn(g.port) as c:
            eq(ask(c), (200, "v1"), "before")
            write_config(g, broken)
            err = g.wait_stderr("reload (file change) failed")
            assert "gateway.lua:%d:" % line in err, "want gateway.lua:%d in the log:\n%s" % (line, err)
            assert "generation 1 keeps serving" in err, err
            for _ in range(5):
                eq(ask(c), (200, "v1"), "the old generation keeps serving")
            write_config(g, version_app("v3"))
            eq(wait_answer(c, "v3"), (200, "v3"), "a fixed file reloads")


def test_sighup_reloads_every_worker():
    with Gateway(version_app("v1"), workers=2) as g:
        eq(len(g.wait_workers(2)), 2, "workers")
        for n in (2, 3):
            g.send_signal(signal.SIGHUP)
            for i in range(2):
                needle = "worker %d[" % i
                ok = wait_for(lambda: any(needle in l and "(SIGHUP): generation %d serving" % n in l
                                          for l in g.stderr_text().split("\n")), 5)
                assert ok, "worker %d did not reload to generation %d:\n%s" % (i, n, g.stderr_text())
        eq({g.get("/v")[2] for _ in range(10)}, {b"v1"}, "answers after HUP")


def test_inflight_request_survives_reload():
    with Gateway(version_app("v1")) as g:
        res = {}

        def slow():
            try:
                res["r"] = g.get("/slow", timeout=10)
            except Exception as e:  # reported below
                res["e"] = e
        t = threading.Thread(target=slow)
        t.start()
        time.sleep(0.3)
        write_config(g, version_app("v2"))
        with Conn(g.port) as c:
            eq(wait_answer(c, "v2"), (200, "v2"), "new requests use the new generation")
        t.join(10)
        assert "e" not in res, "in-flight request failed: %r" % res.get("e")
        eq(res["r"][0], 200, "in-flight status")
        eq(res["r"][2], b"slow v1", "the in-flight request finished on the old generation")


TIMER_APP = PRELUDE + '''
gw.shared_dict("ticks", "1m")
gw.timer.every(0.05, function() gw.shared.ticks:incr("%s", 1, 0) end)
gw.get("/ticks/:k", function(req) return tostring(gw.shared.ticks:get(req.params.k) or 0) end)
gw.get("/v", function(req) return "%s" end)
'''


def test_repeating_timers_of_a_retired_generation_stop():
    with Gateway(TIMER_APP % ("gen1", "gen1")) as g:
        assert wait_for(lambda: int(g.get("/ticks/gen1")[2]) >= 3, 3), "gen1 timer does not run"
        write_config(g, TIMER_APP % ("gen2", "gen2"))
        with Conn(g.port) as c:
            eq(wait_answer(c, "gen2"), (200, "gen2"), "reloaded")
        assert wait_for(lambda: int(g.get("/ticks/gen2")[2]) >= 3, 3), "gen2 timer does not run"
        frozen = int(g.get("/ticks/gen1")[2])
        time.sleep(0.4)
        eq(int(g.get("/ticks/gen1")[2]), frozen, "gen1 timer still running after the reload")


def test_shared_dict_survives_reload_and_new_dict_needs_restart():
    app = PRELUDE + '''
gw.shared_dict("counts", "1m")
gw.get("/incr", function(req) return tostring(gw.shared.counts:incr("n", 1, 0)) end)
gw.get("/v", function(req) return "%s" end)
'''
    with Gateway(app % "v1") as g:
        for i in range(1, 6):
            eq(g.get("/incr")[2], str(i).encode(), "count before")
        write_config(g, app % "v2")
        with Conn(g.port) as c:
            eq(wait_answer(c, "v2"), (200, "v2"), "reloaded")
        eq(g.get("/incr")[2], b"6", "the counter survived the reload")
        added = (app % "v3").replace('gw.shared_dict("counts", "1m")',
                                     'gw.shared_dict("counts", "1m")\ngw.shared_dict("fresh", "1m")')
        write_config(g, added)
        err = g.wait_stderr("needs a restart")
        line = line_of(added, '"fresh"')
        assert "'fresh'" in err and "gateway.lua:%d:" % line in err, err
        eq(g.get("/v")[2], b"v2", "the old generation keeps serving")
        eq(g.get("/incr")[2], b"7", "and its dict")


def test_limits_change_in_place_listen_change_needs_restart():
    def app(header_bytes, port_token, tag):
        return ('local gw = require "gateway"\n'
                'gw.config { listen = { "127.0.0.1:%s" }, limits = { header_bytes = %d } }\n'
                'gw.get("/v", function(req) return "%s" end)\n' % (port_token, header_bytes, tag))
    with Gateway(app(16384, "$PORT", "v1")) as g:
        big = [("X-Big", "b" * 3000)]
        with Conn(g.port) as c:
            c.send(req_bytes("GET", "/v", big))
            eq(c.read_response().status, 200, "3000-byte header under the 16k limit")
            write_config(g, app(2048, "$PORT", "v2"))
            eq(wait_answer(c, "v2"), (200, "v2"), "reloaded")
            c.send(req_bytes("GET", "/v", big))
            eq(c.read_response().status, 431, "same connection, new 2k limit")
        write_config(g, app(2048, "$PORT2", "v3"))
        err = g.wait_stderr("listen changed")
        assert "restart" in err, err
        eq(g.get("/v")[:3:2], (200, b"v3"), "the old address serves the new routes")


# ---- under load, memory, latency (these use the admin listener) ----

ADMIN = ('local gw = require "gateway"\n'
         'gw.config { listen = { "127.0.0.1:$PORT" }, admin = "127.0.0.1:$PORT2", access_log = false }\n')


def admin_json(g, method, path):
    import json
    from gwtest import http
    st, _, body = http(g.port2, method, path)
    return st, json.loads(body)


def wait_admin(g):
    import socket

    def up():
        try:
            socket.create_connection(("127.0.0.1", g.port2), timeout=0.5).close()
            return True
        except OSError:
            return False
    assert wait_for(up, 5), "admin listener not up"


def realistic_app(tag):
    return ADMIN + '''
local lib = require "lib"
gw.shared_dict("counts", "1m")
gw.use(gw.mw.request_id())
gw.use("/api", function(req, next)
  local res = next()
  res.headers["x-tag"] = "%s"
  return res
end)
gw.timer.every(0.05, function() gw.shared.counts:incr("ticks", 1, 0) end)
for i = 1, 50 do
  gw.get("/api/r" .. i .. "/:id", function(req) return { json = { i = i, id = req.params.id } } end)
end
gw.get("/v", function(req) return lib.wrap("%s") end)
gw.get("/count", function(req) return tostring(gw.shared.counts:incr("n", 1, 0)) end)
''' % (tag, tag)


LIB = 'local M = {}\nfunction M.wrap(s) return s end\nreturn M\n'


def test_no_leak_over_500_reloads():
    # Under AddressSanitizer (make asan) freed memory waits in a quarantine of
    # up to 256 MB before reuse, so RSS grows with any churn, leak or not:
    # this test turns the quarantine off (nothing else changes).
    env = None
    if "ASAN_OPTIONS" in os.environ:
        env = {"ASAN_OPTIONS": os.environ["ASAN_OPTIONS"] + ":quarantine_size_mb=0"}
    with Gateway(realistic_app("v1"), files={"lib.lua": LIB}, env=env) as g:
        wait_admin(g)
        [pid] = g.wait_workers(1)

        def reloads(n):
            for _ in range(n):
                st, doc = admin_json(g, "POST", "/reload")
                eq((st, doc["result"]), (200, "ok"), "POST /reload")
                eq(g.get("/api/r7/x")[0], 200, "a request between reloads")
        reloads(10)
        after_10 = proc_status(pid, "VmRSS")
        reloads(240)
        after_250 = proc_status(pid, "VmRSS")
        reloads(250)
        after_500 = proc_status(pid, "VmRSS")
        st, doc = admin_json(g, "GET", "/status")
        w = doc["workers"][0]
        print("     RSS after 10 reloads: %d kB, after 250: %d kB, after 500: %d kB (%+.1f%% over the "
              "last 250); generation %d, generations alive %d, Lua heap %d kB"
              % (after_10, after_250, after_500, 100.0 * (after_500 - after_250) / after_250,
                 w["generation"], w["generations_alive"], w["lua_memory_bytes"] // 1024))
        eq(w["generation"], 501, "generation after 500 reloads")
        eq(w["reloads"]["ok"], 500, "one reload per POST (the master does not repeat it)")
        assert wait_for(lambda: admin_json(g, "GET", "/status")[1]["workers"][0]["generations_alive"] == 1, 3), \
            "retired generations still alive"
        # A leak grows with the reloads; the allocator settling does not: the
        # last 250 reloads must add nearly nothing (an injected leak of 4 kB
        # per reload adds 12%), and the whole run a bounded amount. Under ASan
        # RSS steps up once by about 11% between the 10th and the 200th
        # reload and then stays flat (3.6% before idle connections gave their
        # read buffers back, commit 35a0149; how that moves ASan's allocator
        # is not understood: the worker keeps one spare buffer, 16 kB), so
        # the whole-run bound is looser there.
        assert after_500 <= after_250 * 1.03, \
            "RSS grew from %d kB after 250 reloads to %d kB after 500" % (after_250, after_500)
        whole = 1.15 if env else 1.10
        assert after_500 <= after_10 * whole, \
            "RSS grew from %d kB after 10 reloads to %d kB after 500" % (after_10, after_500)


test_no_leak_over_500_reloads.timeout = 120


def _load_clients(port, seconds, nconns, paths, out):
    """Runs in a child process (so that the GIL of the clients cannot delay
    the reloads): nconns keep-alive connections asking in a loop for
    `seconds`; sends {"ok", "bad", "errors"} to the pipe `out`."""
    stop_at = time.monotonic() + seconds
    lock = threading.Lock()
    stats = {"ok": 0, "bad": [], "errors": []}

    def client(n):
        conn, i = None, 0
        while time.monotonic() < stop_at:
            try:
                if conn is None:
                    conn = Conn(port, timeout=10)
                conn.send(req_bytes("GET", paths[(n + i) % len(paths)]))
                r = conn.read_response()
                i += 1
                with lock:
                    if 200 <= r.status < 300:
                        stats["ok"] += 1
                    else:
                        stats["bad"].append((r.status, r.body[:200]))
            except Exception as e:  # counted: must stay zero
                with lock:
                    stats["errors"].append(repr(e))
                if conn:
                    conn.close()
                conn = None
        if conn:
            conn.close()
    threads = [threading.Thread(target=client, args=(n,)) for n in range(nconns)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(seconds + 15)
    out.send(stats)
    out.close()


def test_load_with_reloads_every_200ms():
    """50 keep-alive connections hammer the gateway while it reloads every
    200 ms for 10 s (file edits, HUP and POST /reload in turn): every answer
    must be a 2xx and no connection may fail."""
    import multiprocessing
    with Gateway(realistic_app("v1"), workers=2, files={"lib.lua": LIB}) as g:
        wait_admin(g)
        eq(len(g.wait_workers(2)), 2, "workers")
        ctx = multiprocessing.get_context("fork")
        rx, tx = ctx.Pipe(duplex=False)
        paths = ["/v", "/api/r3/abc", "/count", "/api/r50/1"]
        clients = ctx.Process(target=_load_clients, args=(g.port, 10.5, 50, paths, tx))
        clients.start()
        tx.close()
        try:
            time.sleep(0.3)
            reloads, t0 = 0, time.monotonic()
            while time.monotonic() - t0 < 10:
                reloads += 1
                time.sleep(max(0, t0 + 0.2 * reloads - time.monotonic()))
                kind = reloads % 3
                if kind == 0:
                    write_config(g, realistic_app("v%d" % reloads), rename=True)
                elif kind == 1:
                    g.send_signal(signal.SIGHUP)
                else:
                    st, _ = admin_json(g, "POST", "/reload")
                    eq(st, 200, "POST /reload")
            assert rx.poll(30), "the client process did not report"
            stats = rx.recv()
        finally:
            clients.join(5)
            if clients.is_alive():
                clients.kill()
        time.sleep(0.5)
        st, doc = admin_json(g, "GET", "/status")
        gens = [w["generation"] for w in doc["workers"]]
        failed = sum(w["reloads"]["failed"] for w in doc["workers"])
        print("     %d reloads triggered in 10 s; %d answers, %d non-2xx, %d socket errors; "
              "generations now %r; %d failed reloads"
              % (reloads, stats["ok"], len(stats["bad"]), len(stats["errors"]), gens, failed))
        eq(stats["bad"][:5], [], "non-2xx answers")
        eq(stats["errors"][:5], [], "socket errors")
        assert stats["ok"] > 1000, "too few answers: %d" % stats["ok"]
        # A file write and a HUP close together may be seen as one reload.
        assert min(gens) > 35, "workers reloaded too rarely: %r after %d triggers" % (gens, reloads)
        eq(failed, 0, "failed reloads")
        assert g.proc.poll() is None and len(g.worker_pids()) == 2, "a process died"


test_load_with_reloads_every_200ms.timeout = 90


def test_measure_reload_latency():
    """Measures (does not assert) the time from writing the file to the first
    answer of the new logic, on a held connection polling as fast as it can."""
    with Gateway(version_app("v0")) as g:
        samples = []
        with Conn(g.port) as c:
            for i in range(1, 21):
                time.sleep(0.15)  # let the previous burst settle
                t0 = time.monotonic()
                write_config(g, version_app("v%d" % i), rename=(i % 2 == 0))
                got = wait_answer(c, "v%d" % i, timeout=5)
                eq(got, (200, "v%d" % i), "new answer")
                samples.append((time.monotonic() - t0) * 1000)
        samples.sort()
        p50 = samples[len(samples) // 2]
        print("     reload latency, file write -> first new answer (20 samples): "
              "p50 %.1f ms, min %.1f ms, max %.1f ms" % (p50, samples[0], samples[-1]))


def test_a_reload_with_a_bad_server_after_a_host_name_fails_cleanly():
    # The host name's lookup once began before the bad address after it was
    # parsed; the failed reload freed that server and the lookup's answer
    # wrote into freed memory (the worker died under ASan). Now every
    # address is parsed first: the reload fails, nothing is looked up, and
    # the same worker goes on serving.
    from gwtest import http, worker_pids
    good = PRELUDE + 'gw.get("/", function() return "ok" end)\n'
    with Gateway(good) as g:
        pids = worker_pids(g.pid)
        for i in range(3):
            bad = good + 'gw.upstream("u", { servers = { "localhost:%d", "127.0.0.1:0" } })\n' % (1000 + i)
            with open(g.config_path, "w") as f:
                f.write(g._substitute(bad))
            g.send_signal(signal.SIGHUP)
            assert wait_for(lambda: g.stderr_text().count("bad port") > i, 5), "reload %d refused" % i
            time.sleep(0.3)  # a lookup begun anyway would have answered by now
            eq(http(g.port, "GET", "/")[:3:2], (200, b"ok"), "served after failed reload %d" % i)
        eq(worker_pids(g.pid), pids, "no worker died")
        assert "AddressSanitizer" not in g.stderr_text(), g.stderr_text()[-3000:]
