"""Hot reload: a changed configuration (or a Lua file it loaded) is picked up by
every worker without a restart and without dropping connections; a broken one
is refused and the old one keeps serving; in-flight work finishes on the old
generation; SIGHUP reloads too."""

import os
import signal
import threading
import time

from gwtest import PRELUDE, Conn, Gateway, eq, line_of, req_bytes, wait_for


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
