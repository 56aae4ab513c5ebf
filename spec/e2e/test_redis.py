"""gw.redis(URL): r:call against a real redis-server started by each test on a
free loopback port (no persistence), stopped by PID at the end: reply
conversion, nil and error replies, binary-safe values, pooling, a dead Redis
(fails fast, recovers), command timeouts, concurrency with gw.all, two workers."""

import json
import os
import re
import shutil
import signal
import socket
import subprocess
import tempfile
import time

from gwtest import PRELUDE, Gateway as _Gateway, eq, free_port, line_of, run_cli, wait_for

REDIS = shutil.which("redis-server")


def _debug_args():
    """Redis 7 refuses DEBUG (used for DEBUG SLEEP) unless enabled."""
    out = subprocess.run([REDIS, "--version"], capture_output=True, text=True).stdout
    m = re.search(r"v=(\d+)", out)
    return ["--enable-debug-command", "yes"] if m and int(m.group(1)) >= 7 else []


class RedisServer:
    """A redis-server on 127.0.0.1:port, in a temp dir, stopped by PID."""

    def __init__(self, port=None, args=()):
        self.port = port or free_port()
        self.args = list(args)
        self.dir = tempfile.mkdtemp(prefix="gwredis-")
        self.proc = None

    def start(self):
        assert REDIS, "redis-server is not installed (tools/install-deps.sh)"
        self.proc = subprocess.Popen(
            [REDIS, "--port", str(self.port), "--bind", "127.0.0.1", "--save", "",
             "--appendonly", "no", "--dir", self.dir] + _debug_args() + self.args,
            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        ok = wait_for(lambda: self._ping(), timeout=10)
        assert ok, "redis-server did not start on port %d" % self.port
        return self

    def _ping(self):
        try:
            return self.cmd("PING") in ("PONG", "NOAUTH Authentication required.")
        except OSError:
            return False

    def cmd(self, *args):
        """One command over a fresh connection; the reply decoded (bytes as str)."""
        s = socket.create_connection(("127.0.0.1", self.port), timeout=5)
        try:
            out = b"*%d\r\n" % len(args)
            for a in args:
                a = a if isinstance(a, bytes) else str(a).encode()
                out += b"$%d\r\n%s\r\n" % (len(a), a)
            s.sendall(out)
            f = s.makefile("rb")
            return _read_reply(f)
        finally:
            s.close()

    def clients(self):
        """How many clients are connected, not counting the one asking."""
        text = self.cmd("CLIENT", "LIST")
        return len([l for l in text.splitlines() if l.strip()]) - 1

    def stop(self):
        if self.proc and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(timeout=10)
        self.proc = None

    def __enter__(self):
        return self.start()

    def __exit__(self, *exc):
        self.stop()
        shutil.rmtree(self.dir, ignore_errors=True)


class Gateway(_Gateway):
    """The harness's Gateway, also failing the test when a sanitizer (make
    asan) reported anything or a worker died."""

    def __exit__(self, *exc):
        r = super().__exit__(*exc)
        text = self.stderr_text()
        for bad in ("AddressSanitizer", "runtime error:", "restarting"):
            assert bad not in text, "%r in the gateway's stderr:\n%s" % (bad, text[-3000:])
        return r


def _read_reply(f):
    line = f.readline()
    if not line:
        raise OSError("closed")
    t, rest = line[:1], line[1:-2]
    if t in (b"+", b"-"):
        return rest.decode()
    if t == b":":
        return int(rest)
    if t == b"$":
        n = int(rest)
        if n < 0:
            return None
        data = f.read(n + 2)[:-2]
        return data.decode("latin-1")
    if t == b"*":
        n = int(rest)
        return None if n < 0 else [_read_reply(f) for _ in range(n)]
    raise OSError("bad reply %r" % line)


APP = PRELUDE + r'''
local r = gw.redis("redis://127.0.0.1:$RPORT")
local short = gw.redis("redis://127.0.0.1:$RPORT", { timeout = 0.3 })

local function run(client, req)
  local args = gw.json.decode(req:body())
  local t0 = gw.now()
  local v, err = client:call(unpack(args))
  return { json = { v = v == nil and "<nil>" or v, err = err or "<none>", t = gw.now() - t0,
                    type = type(v) } }
end
gw.post("/cmd", function(req) return run(r, req) end)
gw.post("/short", function(req) return run(short, req) end)

gw.put("/bin/:k", function(req)
  local v, err = r:call("SET", req.params.k, req:body())
  if not v then return { status = 500, body = err } end
  return v
end)
gw.get("/bin/:k", function(req)
  local v, err = r:call("GET", req.params.k)
  if v == nil then return { status = 404, body = err or "nil" } end
  return { status = 200, headers = { ["content-type"] = "application/octet-stream" }, body = v }
end)

gw.get("/all", function(req)
  local fns = {}
  for i = 1, 20 do
    fns["k" .. i] = function() return r:call("INCRBY", "allc", i) end
  end
  local t0 = gw.now()
  local res, errs = gw.all(fns)
  local n = 0
  for _ in pairs(res) do n = n + 1 end
  return { json = { n = n, errs = next(errs) and errs or nil, t = gw.now() - t0 } }
end)

gw.get("/slowall", function(req)
  -- Two blocking pops in parallel finish together: each has its own
  -- connection, neither waits behind the other.
  local t0 = gw.now()
  local res, errs = gw.all {
    a = function() local v, err = r:call("BLPOP", "none1", "0.4") return v == nil and err == nil end,
    b = function() local v, err = r:call("BLPOP", "none2", "0.4") return v == nil and err == nil end,
  }
  return { json = { a = res.a, b = res.b, t = gw.now() - t0 } }
end)

gw.get("/block", function(req)
  local v, err = short:call("BLPOP", "blk", "0.2")
  return { json = { v = v, err = err } }
end)

gw.get("/stats", function(req)
  local open, idle = r:pool_stats()
  return { json = { open = open, idle = idle, worker = gw.worker_id() } }
end)

gw.get("/evalsha", function(req)
  local script = "return redis.call('INCRBY', KEYS[1], ARGV[1])"
  local sha = req.query.sha
  local v, err = r:evalsha(sha, script, { "ev" }, { 5 })
  return { json = { v = v, err = err } }
end)

gw.get("/nocall", function(req)
  local ok, err = pcall(r.call, r, "SET", "k", {})
  return { json = { ok = ok, err = err } }
end)
'''


def app(redis):
    return APP.replace("$RPORT", str(redis.port))


def cmd(g, *args, path="/cmd"):
    status, _, body = g.http("POST", path, body=json.dumps(list(args)).encode(), timeout=10)
    eq(status, 200, "POST %s %r: %r" % (path, args, body))
    return json.loads(body)


def test_redis_replies():
    with RedisServer() as rs, Gateway(app(rs)) as g:
        d = cmd(g, "SET", "a", "hello")
        eq((d["v"], d["type"], d["err"]), ("OK", "string", "<none>"), "SET: status reply")
        eq(cmd(g, "GET", "a")["v"], "hello", "GET: string reply")
        d = cmd(g, "INCR", "n")
        eq((d["v"], d["type"]), (1, "number"), "INCR: integer reply")
        eq(cmd(g, "INCRBY", "n", 41)["v"], 42, "a number argument")
        cmd(g, "INCRBY", "big", 2 ** 53 - 1)
        eq(rs.cmd("GET", "big"), str(2 ** 53 - 1), "a large integer argument, all its digits")
        eq(cmd(g, "INCRBYFLOAT", "f", 0.25)["v"], "0.25", "a float argument")
        eq(cmd(g, "LPUSH", "l", "x", "y", "z")["v"], 3, "LPUSH")
        eq(cmd(g, "LRANGE", "l", 0, -1)["v"], ["z", "y", "x"], "LRANGE: array reply")
        eq(cmd(g, "HSET", "h", "f1", "v1", "f2", "v2")["v"], 2, "HSET")
        got = cmd(g, "HGETALL", "h")["v"]
        eq(dict(zip(got[::2], got[1::2])), {"f1": "v1", "f2": "v2"}, "HGETALL")
        # A nil inside an array stays in place as JSON null (cjson.null).
        eq(cmd(g, "MGET", "a", "missing", "a")["v"], ["hello", None, "hello"], "MGET with a nil")
        # Nested arrays.
        d = cmd(g, "EVAL", "return {1, {'a', {2}}, 'b'}", 0)
        eq(d["v"], [1, ["a", [2]], "b"], "nested arrays")
        eq(rs.cmd("GET", "a"), "hello", "the value really is in Redis")


def test_redis_nil_and_error_replies():
    with RedisServer() as rs, Gateway(app(rs)) as g:
        d = cmd(g, "GET", "nothing")
        eq((d["v"], d["err"]), ("<nil>", "<none>"), "a nil reply is nil with no error")
        cmd(g, "SET", "s", "str")
        d = cmd(g, "INCR", "s")
        eq(d["v"], "<nil>", "an error reply gives nil")
        assert d["err"].startswith("ERR value is not an integer"), d
        d = cmd(g, "LPUSH", "s", "x")
        assert d["err"].startswith("WRONGTYPE"), d
        d = cmd(g, "NOSUCHCOMMAND")
        assert d["err"].startswith("ERR unknown command"), d
        # The connection is still usable after error replies.
        eq(cmd(g, "GET", "s")["v"], "str", "after errors")
        # Misuse raises.
        status, _, body = g.get("/nocall")
        d = json.loads(body)
        eq(d["ok"], False, "a table argument raises")
        assert "argument #3 must be a string or a number" in d["err"], d


def test_redis_binary_safe():
    with RedisServer() as rs, Gateway(app(rs)) as g:
        value = bytes(range(256)) * 4 + b"\r\n$3\r\n\x00end"
        status, _, body = g.http("PUT", "/bin/k1", body=value)
        eq((status, body), (200, b"OK"), "SET binary")
        status, _, body = g.get("/bin/k1")
        eq(status, 200, "GET binary")
        eq(body, value, "the bytes come back unchanged")
        eq(rs.cmd("STRLEN", "k1"), len(value), "Redis has every byte")
        status, _, body = g.http("PUT", "/bin/empty", body=b"")
        eq(status, 200, "SET empty")
        eq(rs.cmd("EXISTS", "empty"), 1, "an empty value is a value")


def test_redis_pooling():
    with RedisServer() as rs, Gateway(app(rs)) as g:
        for i in range(50):
            eq(cmd(g, "INCR", "p")["v"], i + 1, "INCR %d" % i)
        eq(rs.clients(), 1, "50 requests on one worker reuse one connection")
        d = json.loads(g.get("/stats")[2])
        eq((d["open"], d["idle"]), (1, 1), "pool stats")


def test_redis_idle_connection_closed_by_redis():
    # Redis closes the pooled connection (as its `timeout` setting would):
    # it leaves the pool at once, and the next call opens a new one.
    with RedisServer() as rs, Gateway(app(rs)) as g:
        eq(cmd(g, "SET", "k", "v")["v"], "OK", "first")
        eq(rs.clients(), 1, "one pooled connection")
        rs.cmd("CLIENT", "KILL", "TYPE", "normal")
        eq(wait_for(lambda: json.loads(g.get("/stats")[2])["open"] == 0, timeout=3), True,
           "the closed connection left the pool")
        d = cmd(g, "GET", "k")
        eq((d["v"], d["err"]), ("v", "<none>"), "the next call works")


def test_redis_concurrency_gw_all():
    with RedisServer() as rs, Gateway(app(rs)) as g:
        status, _, body = g.get("/all", timeout=10)
        d = json.loads(body)
        eq((status, d["n"], d.get("errs")), (200, 20, None), "20 concurrent calls")
        eq(rs.cmd("GET", "allc"), str(sum(range(1, 21))), "each INCRBY ran once")
        # The pool keeps at most 10 idle connections (the default). Closes
        # (the pool's extra connections, this test's own GET just before)
        # reach Redis a moment later: wait for the count to settle.
        wait_for(lambda: 1 <= rs.clients() <= 10, timeout=3)
        n = rs.clients()
        assert 1 <= n <= 10, n
        status, _, body = g.get("/slowall", timeout=10)
        d = json.loads(body)
        eq((d["a"], d["b"]), (True, True), "two BLPOPs time out with nil")
        assert d["t"] < 0.75, "parallel, not queued: %r" % d


def test_redis_down_fails_fast_and_recovers():
    rs = RedisServer()
    port = rs.port
    with rs:
        with Gateway(app(rs)) as g:
            eq(cmd(g, "SET", "x", "1")["v"], "OK", "up")
            rs.stop()
            t0 = time.monotonic()
            d = cmd(g, "GET", "x")
            took = time.monotonic() - t0
            eq(d["v"], "<nil>", "down: nil")
            assert d["err"] in ("connection refused", "connection lost"), d
            assert took < 0.5, "fails fast, took %.2fs" % took
            # Later calls: refused at once.
            for _ in range(3):
                d = cmd(g, "GET", "x")
                eq(d["err"], "connection refused", "still down")
                assert d["t"] < 0.2, d
            rs2 = RedisServer(port=port)
            rs2.start()
            try:
                d = wait_for(lambda: cmd(g, "SET", "x", "2")["v"] == "OK", timeout=5)
                assert d, "recovers when Redis is back"
                eq(cmd(g, "GET", "x")["v"], "2", "reads after recovery")
            finally:
                rs2.stop()
                shutil.rmtree(rs2.dir, ignore_errors=True)


def test_redis_client_gone_before_reply():
    # The task ends (its client left) while its command waits: the reply
    # that comes later is ignored, and the gateway keeps working.
    with RedisServer() as rs, Gateway(app(rs)) as g:
        for _ in range(5):
            s = socket.create_connection(("127.0.0.1", g.port), timeout=5)
            s.sendall(b"GET /block HTTP/1.1\r\nHost: t\r\n\r\n")
            time.sleep(0.05)
            s.close()
        time.sleep(0.4)
        eq(cmd(g, "SET", "after", "1")["v"], "OK", "still serving")
        eq(cmd(g, "GET", "after")["v"], "1", "and reading")


def test_redis_timeout():
    with RedisServer() as rs, Gateway(app(rs)) as g:
        eq(cmd(g, "SET", "t", "1", path="/short")["v"], "OK", "short client works")
        t0 = time.monotonic()
        d = cmd(g, "DEBUG", "SLEEP", "2", path="/short")
        took = time.monotonic() - t0
        eq((d["v"], d["err"]), ("<nil>", "timeout"), "DEBUG SLEEP 2 with timeout = 0.3")
        assert 0.25 <= d["t"] < 0.7, "timed out after ~0.3 s: %r" % d
        assert took < 1.5, took
        # The next call does not wait behind the sleeping one (that
        # connection was dropped); Redis itself is busy until the sleep
        # ends, so this one may time out too, but never later than 0.3 s.
        d = cmd(g, "GET", "t", path="/short")
        assert d["t"] < 0.7, d
        time.sleep(2)
        eq(cmd(g, "GET", "t", path="/short")["v"], "1", "fine again after the sleep")
test_redis_timeout.timeout = 30


def _full_listener():
    """A loopback listener that never accepts, its backlog filled: a new
    connect to it gets no answer at all (the SYN is dropped)."""
    ls = socket.socket()
    ls.bind(("127.0.0.1", 0))
    ls.listen(0)
    fillers = []
    for _ in range(16):
        c = socket.socket()
        c.setblocking(False)
        c.connect_ex(ls.getsockname())
        fillers.append(c)
    time.sleep(0.1)
    probe = socket.socket()
    probe.settimeout(0.3)
    try:
        probe.connect(ls.getsockname())
        hangs = False
    except OSError:
        hangs = True
    probe.close()
    return ls, fillers, hangs


def test_redis_connect_timeout():
    ls, fillers, hangs = _full_listener()
    try:
        cfg = PRELUDE + r'''
local r = gw.redis("redis://127.0.0.1:%d", { timeout = 0.3 })
gw.get("/", function(req)
  local t0 = gw.now()
  local v, err = r:call("PING")
  return { json = { err = err, t = gw.now() - t0 } }
end)
''' % ls.getsockname()[1]
        with Gateway(cfg) as g:
            status, _, body = g.get("/", timeout=5)
            d = json.loads(body)
            if hangs:
                eq(d["err"], "timeout", "a connect that gets no answer")
                assert 0.25 <= d["t"] < 0.7, d
            else:  # this kernel answered the probe: at least no hang
                assert d["err"] and d["t"] < 0.7, d
    finally:
        for c in fillers:
            c.close()
        ls.close()


def test_redis_evalsha():
    with RedisServer() as rs, Gateway(app(rs)) as g:
        d = json.loads(g.get("/evalsha?sha=" + "0" * 40)[2])
        eq(d["v"], 5, "NOSCRIPT falls back to EVAL")
        sha = rs.cmd("SCRIPT", "LOAD", "return redis.call('INCRBY', KEYS[1], ARGV[1])")
        d = json.loads(g.get("/evalsha?sha=" + sha)[2])
        eq(d["v"], 10, "EVALSHA with a known sha")


def test_redis_db_and_password():
    with RedisServer(args=["--requirepass", "s3cret"]) as rs:
        cfg = PRELUDE + r'''
local good = gw.redis("redis://:s3cret@127.0.0.1:$RPORT/3")
local bad = gw.redis("redis://:wrong@127.0.0.1:$RPORT")
gw.get("/", function(req)
  local ok = good:call("SET", "dbkey", "v")
  local v, err = bad:call("PING")
  return { json = { ok = ok, bad = err } }
end)
'''.replace("$RPORT", str(rs.port))
        with Gateway(cfg) as g:
            d = json.loads(g.get("/")[2])
            eq(d["ok"], "OK", "AUTH then SELECT 3")
            eq(d["bad"], "authentication failed", "a wrong password")
        s = socket.create_connection(("127.0.0.1", rs.port), timeout=5)
        s.sendall(b"AUTH s3cret\r\nSELECT 3\r\nGET dbkey\r\n")
        f = s.makefile("rb")
        got = [_read_reply(f) for _ in range(3)]
        s.close()
        eq(got, ["OK", "OK", "v"], "the key is in db 3")


def test_redis_two_workers():
    with RedisServer() as rs, Gateway(app(rs), workers=2) as g:
        for i in range(40):
            cmd(g, "INCR", "w")
        eq(rs.cmd("GET", "w"), "40", "every INCR counted")
        n = rs.clients()
        assert 1 <= n <= 2, "at most one connection per worker: %d" % n


BAD_URLS = [
    ("http://127.0.0.1:6379", "must start with redis://"),
    ("redis://", "has no host"),
    ("redis://example.com:6379", "must be an IP address"),
    ("redis://127.0.0.1:99999", "bad port"),
    ("redis://127.0.0.1:6379/x", "unexpected characters"),
]


def _bad_url_test(url, msg):
    def t():
        # A bare call (no `local r =`) lost the file:line once.
        cfg = ('local gw = require "gateway"\n'
               'gw.config { listen = { "127.0.0.1:$PORT" } }\n'
               'gw.redis("%s")\n' % url)
        rc, out, err, _ = run_cli(["-t", "-c", "$DIR/gateway.lua"], files={"gateway.lua": cfg})
        out = out + err
        eq(rc, 1, "-t fails for %s" % url)
        assert msg in out, out
        # On the message's own line, not only in the traceback after it.
        assert "gateway.lua:3: gw.redis" in out.splitlines()[0], "file:line: %s" % out
    return t


for _i, (_url, _msg) in enumerate(BAD_URLS):
    globals()["test_redis_bad_url_%d" % _i] = _bad_url_test(_url, _msg)


def test_redis_in_a_timer():
    with RedisServer() as rs:
        cfg = PRELUDE + r'''
local r = gw.redis("redis://127.0.0.1:%d")
gw.timer.every(0.05, function()
  local n, err = r:call("INCR", "ticks")
  if not n then gw.log.error("tick: " .. err) end
end)
gw.get("/", function(req) return "up" end)
''' % rs.port
        with Gateway(cfg) as g:
            ok = wait_for(lambda: int(rs.cmd("GET", "ticks") or 0) >= 3, timeout=5)
            assert ok, "a timer's r:call ran: %r; %s" % (rs.cmd("GET", "ticks"), g.stderr_text())


RELOAD_APP = PRELUDE + r'''
local r = gw.redis("redis://127.0.0.1:$RPORT", { timeout = 3 })
gw.get("/v", function(req) return "%s " .. r:call("INCR", "v") end)
gw.get("/block", function(req)
  local v, err = r:call("BLPOP", "nothing", "0.8")
  return { json = { isnil = v == nil, err = err, gen = "%s" } }
end)
'''


def test_redis_across_a_reload():
    # A command in flight on the old configuration finishes there; the
    # new configuration's client uses the same pool.
    import threading
    with RedisServer() as rs:
        app1 = RELOAD_APP.replace("$RPORT", str(rs.port)) % ("v1", "v1")
        app2 = RELOAD_APP.replace("$RPORT", str(rs.port)) % ("v2", "v2")
        with Gateway(app1) as g:
            eq(g.get("/v")[2], b"v1 1", "before")
            res = {}
            t = threading.Thread(target=lambda: res.update(r=g.get("/block", timeout=10)))
            t.start()
            time.sleep(0.2)
            with open(g.config_path, "w") as f:
                f.write(g._substitute(app2))
            ok = wait_for(lambda: g.get("/v")[2].startswith(b"v2"), timeout=5)
            assert ok, "reloaded"
            t.join(10)
            status, _, body = res["r"]
            eq((status, json.loads(body)), (200, {"isnil": True, "gen": "v1"}),
               "the in-flight BLPOP finished on the old generation")
            n = rs.clients()
            assert 1 <= n <= 2, "the pool survived the reload: %d connections" % n


class _ScriptedRedis:
    """A fake Redis on a loopback port: each command read gets the bytes
    `answer(name)` returns (all of them in one write), then, when `later`
    is set, those bytes 0.2 s afterwards. Stopped with close()."""

    def __init__(self, answer, later=None):
        import threading
        self.answer, self.later = answer, later
        self.ls = socket.socket()
        self.ls.bind(("127.0.0.1", 0))
        self.ls.listen(16)
        self.port = self.ls.getsockname()[1]
        self.conns = []
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self):
        import threading
        while True:
            try:
                s, _ = self.ls.accept()
            except OSError:
                return
            self.conns.append(s)
            threading.Thread(target=self._serve, args=(s,), daemon=True).start()

    def _serve(self, s):
        f = s.makefile("rb")
        try:
            while True:
                line = f.readline()
                if not line.startswith(b"*"):
                    return
                args = []
                for _ in range(int(line[1:])):
                    n = int(f.readline()[1:])
                    args.append(f.read(n + 2)[:-2])
                s.sendall(self.answer(args[0].upper()))
                if self.later:
                    time.sleep(0.2)
                    s.sendall(self.later)
        except (OSError, ValueError):
            pass

    def close(self):
        self.ls.close()
        for s in self.conns:
            try:
                s.close()
            except OSError:
                pass


FAKE_APP = PRELUDE + r'''
local r = gw.redis("redis://127.0.0.1:$RPORT", { timeout = 1 })
gw.get("/get", function(req)
  local v, err = r:call("GET", "k")
  return { json = { v = v or false, err = err or false } }
end)
gw.get("/ok", function(req) return "ok" end)
'''


def test_redis_misbehaving_server_fails_the_call_not_the_worker():
    # hiredis 0.14 aborts the process on a reply no command waits for, and
    # allocates an announced array's pointers before reading them: the
    # gateway counts and bounds replies first (src/resp_scan.c), so such a
    # server costs its own connection only. The Gateway subclass above
    # fails the test if a worker died or a sanitizer spoke.
    cases = (
        (lambda name: b"$2\r\nhi\r\n+EXTRA\r\n", None, {"v": False, "err": "unexpected reply"}),
        (lambda name: b"$2\r\nhi\r\n", b"+PUSH\r\n", {"v": "hi", "err": False}),
        (lambda name: b"*2147483647\r\n", None, {"v": False, "err": "reply too large"}),
        (lambda name: b"$99999999999\r\n", None, {"v": False, "err": "reply too large"}),
    )
    for answer, later, want in cases:
        fake = _ScriptedRedis(answer, later)
        try:
            with Gateway(FAKE_APP.replace("$RPORT", str(fake.port)), workers=1) as g:
                st, _, body = g.get("/get")
                eq((st, json.loads(body)), (200, want), "GET against %r" % answer(b"GET"))
                time.sleep(0.4)  # the late reply arrives on the idle connection
                t0 = time.monotonic()
                eq(g.get("/ok")[0], 200, "the worker still serves")
                assert time.monotonic() - t0 < 0.5, "the worker stalled"
        finally:
            fake.close()


def test_redis_pub_sub_commands_are_refused():
    # SUBSCRIBE left hiredis holding the command as the callback for the
    # messages to come, after the command's record was freed: the first
    # message was a use-after-free. Refused before anything is sent.
    fake = _ScriptedRedis(lambda name: b"*3\r\n$9\r\nsubscribe\r\n$2\r\nch\r\n:1\r\n",
                          b"*3\r\n$7\r\nmessage\r\n$2\r\nch\r\n$2\r\nhi\r\n")
    app = PRELUDE + r'''
local r = gw.redis("redis://127.0.0.1:$RPORT", { timeout = 1 })
gw.get("/sub/:cmd", function(req)
  local v, err = r:call(req.params.cmd, "ch")
  return { json = { v = v and true or false, err = err or false } }
end)
'''
    try:
        with Gateway(app.replace("$RPORT", str(fake.port)), workers=1) as g:
            for name in ("SUBSCRIBE", "psubscribe", "Monitor", "ssubscribe"):
                st, _, body = g.get("/sub/" + name)
                eq((st, json.loads(body)), (200, {"v": False, "err": "pub/sub and MONITOR are not supported"}),
                   name)
            time.sleep(0.4)
            eq(fake.conns, [], "nothing was sent to the server")
    finally:
        fake.close()
