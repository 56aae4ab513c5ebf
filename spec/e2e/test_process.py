"""The process model: workers, restart after a crash, graceful SIGTERM/SIGINT,
SIGUSR1 log reopening."""

import os
import signal
import socket
import threading
import time

from gwtest import PRELUDE, Gateway, eq, pid_alive, run_cli, wait_for

APP = PRELUDE + r'''
gw.get("/hello", function(req) return "hello" end)
gw.get("/slow", function(req) gw.sleep(0.5); return "done" end)
'''


def test_two_workers():
    with Gateway(APP, workers=2) as g:
        pids = g.wait_workers(2)
        eq(len(pids), 2, "worker count (children %r)" % pids)
        for _ in range(10):
            eq(g.get("/hello")[:3:2], (200, b"hello"), "request")


def test_workers_from_config():
    cfg = r'''local gw = require "gateway"
gw.config { workers = 3, listen = { "127.0.0.1:$PORT" } }
gw.get("/hello", function(req) return "hello" end)
'''
    with Gateway(cfg, workers=None) as g:
        pids = g.wait_workers(3)
        eq(len(pids), 3, "workers = 3 in the config (children %r)" % pids)


def test_worker_restarted_after_kill():
    with Gateway(APP, workers=2) as g:
        before = g.wait_workers(2)
        eq(len(before), 2, "worker count")
        victim = before[0]
        os.kill(victim, signal.SIGKILL)
        wait_for(lambda: not pid_alive(victim), 3)
        # Requests keep succeeding while and after the master replaces it.
        for _ in range(20):
            eq(g.get("/hello")[:3:2], (200, b"hello"), "request after the kill")
        after = wait_for(lambda: (lambda p: p if len(p) == 2 and victim not in p else None)(
            g.worker_pids()), 5)
        assert after, "no replacement worker: children now %r (before %r)" % (g.worker_pids(), before)
        new = set(after) - set(before)
        eq(len(new), 1, "one new worker pid")
        assert g.proc.poll() is None, "master died"
        for _ in range(20):
            eq(g.get("/hello")[:3:2], (200, b"hello"), "request after the restart")


def _read_all(sock, timeout):
    sock.settimeout(timeout)
    data = b""
    while True:
        chunk = sock.recv(65536)
        if not chunk:
            return data
        data += chunk


def test_connections_queued_on_a_dead_worker_are_served():
    """Connections the kernel queued on a worker's socket while that worker
    could not accept (stopped here) are answered by its replacement after it
    is killed: the master keeps each slot's listening socket."""
    with Gateway(APP, workers=2) as g:
        victim = g.wait_workers(2)[0]
        os.kill(victim, signal.SIGSTOP)
        socks = []
        try:
            for _ in range(40):
                s = socket.create_connection(("127.0.0.1", g.port), timeout=5)
                s.sendall(b"GET /hello HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
                socks.append(s)
        finally:
            os.kill(victim, signal.SIGKILL)
        answers = []
        for s in socks:
            try:
                answers.append(_read_all(s, 10))
            except OSError as e:
                answers.append(repr(e).encode())
            finally:
                s.close()
        bad = [a[:60] for a in answers if not (a.startswith(b"HTTP/1.1 200") and a.endswith(b"hello"))]
        eq(bad, [], "answers that are not 200 hello (of %d)" % len(answers))


def _all_answered(port, n, timeout=2):
    """n requests on new connections: the number answered 200 hello."""
    ok = 0
    for _ in range(n):
        s = socket.create_connection(("127.0.0.1", port), timeout=timeout)
        try:
            s.sendall(b"GET /hello HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
            ok += _read_all(s, timeout).startswith(b"HTTP/1.1 200")
        finally:
            s.close()
    return ok


def _kill_first_worker(g):
    before = g.wait_workers(2)
    os.kill(before[0], signal.SIGKILL)
    wait_for(lambda: not pid_alive(before[0]), 3)


def test_listen_changed_on_disk_then_a_worker_dies():
    """listen changes need a restart: a worker restarted with another address
    in the file does not start (and says why), and the slot's socket, which
    nobody would accept on, is closed: the live worker answers everything."""
    with Gateway(APP + "-- $PORT2\n", workers=2) as g:
        # The port accepts as soon as the master holds it: give both workers
        # time to load the first file before it changes.
        time.sleep(1.0)
        with open(g.config_path, "w") as f:
            f.write(g._substitute(APP.replace("$PORT", "$PORT2")))
        time.sleep(1.1)  # the workers are past their start
        _kill_first_worker(g)
        g.wait_stderr("restart it to apply them")
        # Two failed starts: the master now waits 2 s before the third.
        wait_for(lambda: g.stderr_text().count("exited with status 2") >= 2, 5)
        eq(_all_answered(g.port, 30), 30, "answered on the first port")


def test_a_worker_that_cannot_start_again_leaves_no_socket_behind():
    """A broken file, then a crash: the replacement exits 2 again and again;
    while the master waits to try again, new connections all go to the live
    worker (none waits on the dead slot's socket)."""
    with Gateway(APP, workers=2) as g:
        time.sleep(1.1)
        with open(g.config_path, "w") as f:
            f.write("this is not lua\n")
        _kill_first_worker(g)
        # Two failed starts: the master now waits 2 s before the third.
        wait_for(lambda: g.stderr_text().count("exited with status 2") >= 2, 5)
        eq(_all_answered(g.port, 30), 30, "answered while the slot is down")


def test_port_taken_fails_the_start_with_its_address():
    """A listen address another program holds: the master says which, exits 1."""
    holder = socket.socket()
    try:
        holder.bind(("127.0.0.1", 0))
        holder.listen(1)
        port = holder.getsockname()[1]
        cfg = PRELUDE.replace("$PORT", str(port)) + 'gw.get("/", function() return "x" end)\n'
        rc, out, err, d = run_cli(["-c", "$DIR/gw.lua", "-w", "2"], {"gw.lua": cfg})
        eq(rc, 1, "exit status (stderr: %s)" % err[-500:])
        assert ("cannot listen on 127.0.0.1:%d: address already in use" % port) in err, err[-500:]
    finally:
        holder.close()


def test_worker_crash_in_handler():
    cfg = PRELUDE + r'''
gw.get("/hello", function(req) return "hello" end)
gw.get("/crash", function(req)
  local ffi = require "ffi"
  return tostring(ffi.cast("int *", 0)[0])   -- SIGSEGV in the worker
end)
'''
    with Gateway(cfg, workers=1) as g:
        before = g.wait_workers(1)
        eq(len(before), 1, "worker count")
        try:
            st = g.get("/crash", timeout=5)[0]
        except (ConnectionError, OSError, Exception) as e:  # the connection dies with the worker
            st = type(e).__name__
        assert st != 200, "crash route answered 200"
        after = wait_for(lambda: (lambda p: p if len(p) == 1 and p != before else None)(
            g.worker_pids()), 5)
        assert after, "crashed worker not replaced: children %r (before %r)" % (g.worker_pids(), before)
        def hello_ok():
            try:  # the new worker may not be listening yet
                return g.get("/hello")[0] == 200
            except OSError:
                return False
        ok = wait_for(hello_ok, 3)
        assert ok, "requests fail after the restart"
        assert g.proc.poll() is None, "master died"
        err = g.stderr_text().lower()
        assert str(before[0]) in err or "signal" in err or "crash" in err, \
            "the master does not log the worker's death:\n" + err[-1500:]


def _in_flight_then_signal(sig):
    cfg = r'''local gw = require "gateway"
gw.config { listen = { "127.0.0.1:$PORT" }, timeouts = { drain = 5 } }
gw.get("/slow", function(req) gw.sleep(0.5); return "done" end)
gw.get("/hello", function(req) return "hello" end)
'''
    with Gateway(cfg, workers=2) as g:
        workers = g.wait_workers(2)
        eq(len(workers), 2, "worker count")
        res = {}

        def run():
            try:
                res["r"] = g.get("/slow", timeout=10)
            except Exception as e:  # reported below
                res["e"] = e
        th = threading.Thread(target=run, daemon=True)
        th.start()
        time.sleep(0.15)
        t0 = time.monotonic()
        g.send_signal(sig)
        time.sleep(0.25)
        # The listeners close at once.
        refused = False
        try:
            socket.create_connection(("127.0.0.1", g.port), timeout=1).close()
        except ConnectionRefusedError:
            refused = True
        rc = g.wait_exit(8)
        took = time.monotonic() - t0
        th.join(5)
        assert "e" not in res, "in-flight request failed: %r" % res.get("e")
        eq(res["r"][:3:2], (200, b"done"), "in-flight request finished")
        eq(rc, 0, "master exit status (None = still running after 8 s)")
        assert took < 5, "exit took %.2fs" % took
        assert refused, "new connections still accepted after the signal"
        left = [p for p in workers if pid_alive(p)]
        eq(left, [], "workers left after the master exited")


def test_sigterm_graceful():
    _in_flight_then_signal(signal.SIGTERM)


def test_sigint_graceful():
    _in_flight_then_signal(signal.SIGINT)


def test_sigterm_idle_exits_fast():
    with Gateway(APP, workers=2) as g:
        workers = g.wait_workers(2)
        eq(len(workers), 2, "worker count")
        eq(g.get("/hello")[0], 200, "request")
        t0 = time.monotonic()
        g.send_signal(signal.SIGTERM)
        rc = g.wait_exit(5)
        eq(rc, 0, "exit status")
        assert time.monotonic() - t0 < 2, "idle gateway took %.2fs to stop" % (time.monotonic() - t0)
        eq([p for p in workers if pid_alive(p)], [], "workers left after the master exited")


def test_sigusr1_reopens_access_log():
    cfg = r'''local gw = require "gateway"
gw.config { listen = { "127.0.0.1:$PORT" }, access_log = "$DIR/access.log" }
gw.get("/hello", function(req) return "hello" end)
'''
    with Gateway(cfg, workers=2) as g:
        log = os.path.join(g.dir, "access.log")
        eq(g.get("/before")[0], 404, "first request")

        def has(path, needle):
            try:
                with open(path) as f:
                    return needle in f.read()
            except OSError:
                return False
        assert wait_for(lambda: has(log, "/before"), 3), "no access log line for /before"
        os.rename(log, log + ".1")
        g.send_signal(signal.SIGUSR1)

        # Both workers must reopen: ask until every new request shows up in
        # the new file (the old one may get a line only before the reopen).
        def reopened():
            g.get("/after")
            return has(log, "/after")
        assert wait_for(reopened, 5, 0.1), "new access.log never got a line after USR1"
        time.sleep(0.2)
        with open(log + ".1") as f:
            old_lines = f.read().count("/after")
        for i in range(10):
            g.get("/late%d" % i)
        time.sleep(0.3)
        with open(log) as f:
            new = f.read()
        for i in range(10):
            assert "/late%d" % i in new, "request /late%d not in the reopened log" % i
        with open(log + ".1") as f:
            eq(f.read().count("/after"), old_lines, "old file still written after reopen")
        assert g.proc.poll() is None, "master died on USR1"


SLOW_LOAD = PRELUDE + r'''
local t0 = os.clock() while os.clock() - t0 < 0.8 do end
gw.get("/up", function() return "up" end)
'''


def test_hup_or_usr1_during_start_up_do_not_kill_the_gateway():
    # The master once set its handlers only after loading the file: a HUP
    # (or USR1) sent by a deploy script while it loaded ended it at once.
    for sig in (signal.SIGHUP, signal.SIGUSR1):
        with Gateway(SLOW_LOAD, wait=False) as g:
            time.sleep(0.3)
            assert g.proc.poll() is None, "the master is loading"
            g.send_signal(sig)
            g.wait_ready(timeout=10)
            eq(g.get("/up")[:3:2], (200, b"up"), "serving after %s during start-up" % sig.name)
