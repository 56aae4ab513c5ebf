"""The CPU budget of scripts (timeouts.script): a handler that runs too long
without yielding is stopped with a 500 and the worker goes on; one the hook
cannot stop (a JIT-compiled loop) costs its worker, which the master
replaces, and the gateway keeps answering."""
import json
import re
import time

from gwtest import Gateway, eq, http, proc_status, raw, req_bytes, worker_pids, wait_for

CONFIG = r'''
local gw = require "gateway"
gw.config { listen = { "127.0.0.1:$PORT" }, timeouts = { script = 0.3 } }
local function spin() local n = 0 while true do n = n + 1 end end
jit.off(spin) -- interpreted: the hook reaches it
local function swallow()
  while true do pcall(function() local n = 0 while true do n = n + 1 end end) end
end
jit.off(swallow, true)
gw.get("/spin", function() spin() end)
gw.get("/swallow", function() swallow() end)
gw.get("/jit", function() local n = 0 while true do n = n + 1 end end)
gw.get("/ok", function() return "ok" end)
gw.get("/slow-but-yielding", function() for i = 1, 5 do gw.sleep(0.1) end return "done" end)
'''


def test_interpreted_overrun_is_a_500_and_the_worker_stays():
    with Gateway(CONFIG, workers=1) as g:
        pids = worker_pids(g.pid)
        t0 = time.monotonic()
        st, _, body = http(g.port, "GET", "/spin", timeout=5)
        took = time.monotonic() - t0
        eq(st, 500, "an endless interpreted loop")
        assert 0.25 < took < 1.5, "stopped after about timeouts.script: %.2fs" % took
        assert "request_id" in json.loads(body), body
        assert "timeouts.script" in g.stderr_text(), g.stderr_text()[-600:]
        eq(http(g.port, "GET", "/ok")[2], b"ok", "the same worker answers the next request")
        eq(worker_pids(g.pid), pids, "no worker was replaced")


def test_pcall_cannot_swallow_the_budget():
    with Gateway(CONFIG, workers=1) as g:
        st, _, _ = http(g.port, "GET", "/swallow", timeout=5)
        eq(st, 500, "a loop that pcalls the overrun away still ends")
        eq(http(g.port, "GET", "/ok")[2], b"ok", "and the worker goes on")


def test_an_idle_worker_is_not_woken_ten_times_a_second():
    # The watchdog's ticks stop after a second without a Lua run and start
    # again with the next one, which still has its budget.
    with Gateway(CONFIG, workers=1) as g:
        eq(http(g.port, "GET", "/ok")[2], b"ok", "a first request")
        time.sleep(1.5)
        [pid] = worker_pids(g.pid)
        before = proc_status(pid, "voluntary_ctxt_switches")
        time.sleep(2)
        woken = proc_status(pid, "voluntary_ctxt_switches") - before
        # Ticking, it would be about 20; what is left is libuv's own timers.
        assert woken <= 6, "an idle worker woke %d times in 2 s" % woken
        t0 = time.monotonic()
        st, _, _ = http(g.port, "GET", "/spin", timeout=5)
        took = time.monotonic() - t0
        eq(st, 500, "an endless loop after the idle time")
        assert 0.25 < took < 1.5, "stopped after about timeouts.script: %.2fs" % took


def test_yielding_handlers_are_not_limited():
    with Gateway(CONFIG, workers=1) as g:
        st, _, body = http(g.port, "GET", "/slow-but-yielding", timeout=5)
        eq((st, body), (200, b"done"), "0.5 s of waiting is not 0.5 s of running")


BLOCKING = r'''
local gw = require "gateway"
gw.config { listen = { "127.0.0.1:$PORT" }, timeouts = { script = 3 } }
gw.get("/pipe", function()
  local f = assert(io.popen("sleep 0.6; echo from the pipe"))
  local s = f:read("*a")
  f:close()
  return s
end)
'''


def test_the_watchdogs_ticks_do_not_cut_a_scripts_blocking_calls():
    # The watchdog's timer signal comes every 100 ms on the worker's thread:
    # a read a script blocks in across several ticks must go on
    # (SA_RESTART), not fail with EINTR.
    with Gateway(BLOCKING, workers=1) as g:
        st, _, body = http(g.port, "GET", "/pipe", timeout=5)
        eq((st, body), (200, b"from the pipe\n"), "a read across six ticks")


def test_compiled_loop_costs_its_worker_not_the_gateway():
    with Gateway(CONFIG, workers=1) as g:
        before = worker_pids(g.pid)
        try:
            data = raw(g.port, req_bytes("GET", "/jit", [("Connection", "close")]), timeout=5)
        except ConnectionResetError:
            data = b""  # the worker was ended with the connection open
        # Either the hook stopped it (a 500) or the worker was ended (nothing).
        assert data == b"" or data.startswith(b"HTTP/1.1 500"), data[:200]
        def answers():
            try:
                return http(g.port, "GET", "/ok", timeout=2)[2] == b"ok"
            except OSError:
                return False  # queued on the ended worker's socket: reset
        wait_for(answers, timeout=5)
        if data == b"":
            assert worker_pids(g.pid) != before, "a new worker replaced the stuck one"
            # Logged from the watchdog's signal handler, just before the end.
            assert re.search(r"\[error\] worker 0\[\d+\]: a script ran \d+\.\d s without yielding "
                             r"\(timeouts.script 0\.3 s\) and could not be stopped; ending this worker",
                             g.stderr_text()), g.stderr_text()[-600:]


ADMIN_APP = r'''
local gw = require "gateway"
gw.config { listen = { "127.0.0.1:$PORT" }, admin = "127.0.0.1:$PORT2", timeouts = { script = 0.3 } }
gw.get("/v", function() return "v1" end)
'''
# A plain loop (JIT-compiled if the JIT ran), and one that pcalls the
# overrun away.
LOAD_LOOPS = ['local n = 0 while true do n = n + 1 end\n',
              'while true do pcall(function() local n = 0 while true do n = n + 1 end end) end\n',
              # jit.on() is held until the load ends: the loop stays interpreted.
              'jit.on() local n = 0 while true do n = n + 1 end\n']


def test_a_looping_configuration_load_fails_the_reload():
    from gwtest import admin_answers, line_of
    with Gateway(ADMIN_APP, workers=1) as g:
        assert wait_for(lambda: admin_answers(g.port2), 5), "admin listener up"
        pids = worker_pids(g.pid)
        for loop in LOAD_LOOPS:
            text = ADMIN_APP + loop
            with open(g.config_path, "w") as f:
                f.write(g._substitute(text))
            t0 = time.monotonic()
            st, _, body = http(g.port2, "POST", "/reload", timeout=5)
            took = time.monotonic() - t0
            eq(st, 422, "a reload whose load loops")
            doc = json.loads(body)
            assert "configuration load exceeded timeouts.script (0.3 s)" in doc["message"], doc
            eq(doc["line"], line_of(text, loop.strip()), "the line the load was running")
            assert took < 2, "stopped after about timeouts.script: %.2fs" % took
            eq(http(g.port, "GET", "/v")[2], b"v1", "the old generation keeps serving")
        eq(worker_pids(g.pid), pids, "no worker was replaced")


def _check_stops_a_looping_load(app, budget, within, why):
    """gateway -t on `app` fails for the load's CPU budget of `budget`
    (as the message writes it) in less than `within` seconds."""
    from gwtest import run_cli
    t0 = time.monotonic()
    rc, out, err, _ = run_cli(["-t", "-c", "$DIR/loop.lua"], {"loop.lua": app}, timeout=15)
    took = time.monotonic() - t0
    eq(rc, 1, "exit status")
    assert "configuration load exceeded timeouts.script (%s s)" % budget in out + err, out + err
    assert took < within, "%s: %.1fs" % (why, took)


def test_a_looping_configuration_fails_the_check():
    from gwtest import PRELUDE
    # At start-up no configuration is known yet: the default budget (5 s).
    _check_stops_a_looping_load(PRELUDE + LOAD_LOOPS[0], "5.0", 8, "the default budget")


def test_a_configuration_load_has_the_budget_the_file_sets():
    # At start-up (-t here) the budget is the default only until gw.config
    # sets timeouts.script: from then on the file's own value holds,
    # counted from the start of the load.
    app = ('local gw = require "gateway"\n'
           'gw.config { listen = { "127.0.0.1:1" }, timeouts = { script = 0.3 } }\n' + LOAD_LOOPS[0])
    _check_stops_a_looping_load(app, "0.3", 3, "stopped after about the file's 0.3 s, not the default 5 s")


def test_a_reload_may_raise_its_own_load_budget():
    # The running configuration allows 0.3 s; the new one raises it to 10 s
    # before a load step that takes about 1 s of CPU: the reload succeeds.
    from gwtest import admin_answers
    slow = ('gw.config { timeouts = { script = 10 } }\n'
            'local t0 = os.clock() while os.clock() - t0 < 1 do end\n'
            'gw.get("/v2", function() return "v2" end)\n')
    with Gateway(ADMIN_APP, workers=1) as g:
        assert wait_for(lambda: admin_answers(g.port2), 5), "admin listener up"
        with open(g.config_path, "w") as f:
            f.write(g._substitute(ADMIN_APP + slow))
        st, _, body = http(g.port2, "POST", "/reload", timeout=15)
        eq(st, 200, "the reload of a file that raised its own budget: %r" % body)
        eq(http(g.port, "GET", "/v2")[2], b"v2", "the new generation serves")


def test_a_configurations_jit_choice_is_kept_after_its_load():
    # The load runs with the JIT engine off (for its CPU budget); what the
    # configuration itself asked, on or off, holds once the load is over.
    from gwtest import PRELUDE
    for call, want in (("", b"true"), ("jit.off()\n", b"false"), ("jit.off() jit.on()\n", b"true")):
        app = PRELUDE + call + 'gw.get("/jit", function() return tostring((jit.status())) end)\n'
        with Gateway(app, workers=1) as g:
            eq(http(g.port, "GET", "/jit")[2], want, "jit.status() after a load with %r" % call)
