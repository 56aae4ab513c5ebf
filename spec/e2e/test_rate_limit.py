"""gw.mw.rate_limit: an exact GCRA limit across workers (dict:gcra), the
RateLimit-* headers on every answer, 429 with Retry-After and the JSON
error, refill, key = "ip" | "consumer" | function, a declared or the
gateway's own dict, and configuration errors with file:line."""

import json
import threading
import time

from gwtest import (PRELUDE, Conn, Gateway, admin_answers, check_error, eq, http, line_of, req_bytes, run_cli,
                    run_concurrently, wait_for)

CFG = PRELUDE + r'''
gw.use(gw.mw.request_id())
gw.use(function(req, next)
  local res = next()
  res.headers["X-Worker"] = tostring(gw.worker_id())
  return res
end)
local function ok(req) return { json = { ok = true } } end
-- 10 per minute: the refill (one per 6 s) cannot happen during a test.
gw.get("/exact", gw.mw.rate_limit { rate = 10, per = 60 }, ok)
gw.get("/persec", gw.mw.rate_limit { rate = 10, per = 1, burst = 10 }, ok)
gw.get("/three", gw.mw.rate_limit { rate = 3, per = 60 }, ok)
gw.get("/fast", gw.mw.rate_limit { rate = 2, per = 1 }, ok)
gw.get("/tenant", gw.mw.rate_limit { rate = 1, per = 60, key = function(req) return req.headers["x-tenant"] end }, ok)
local by_consumer = gw.mw.rate_limit { rate = 1, per = 60, key = "consumer" }
gw.get("/api/me", gw.mw.key_auth { keys = { ka = "alice", kb = "bob" } }, by_consumer, ok)
gw.get("/open", by_consumer, ok)
gw.shared_dict("mine", "64k")
gw.get("/mine", gw.mw.rate_limit { rate = 1, per = 60, burst = 2, dict = "mine" }, ok)
'''


def get(g, path, headers=None):
    with Conn(g.port) as c:
        c.send(req_bytes("GET", path, list((headers or {}).items())))
        return c.read_response()


def check_429(r, limit, reset=None, retry_after=None):
    doc = check_error(r, 429)
    eq(doc["error"], "rate limit exceeded", "error message")
    eq(r.headers.get("ratelimit-limit"), limit, "RateLimit-Limit on a 429")
    eq(r.headers.get("ratelimit-remaining"), "0", "RateLimit-Remaining on a 429")
    assert "ratelimit-reset" in r.headers, r.headers
    ra = r.headers.get("retry-after")
    assert ra is not None and ra.isdigit() and int(ra) >= 1, "Retry-After %r" % ra
    if reset is not None:
        eq(r.headers["ratelimit-reset"], reset, "RateLimit-Reset on a 429")
    if retry_after is not None:
        eq(ra, retry_after, "Retry-After")
    return doc


def test_exact_limit_across_two_workers():
    with Gateway(CFG, workers=2) as g:
        eq(len(g.wait_workers(2)), 2, "workers")
        def one():
            st, h, _ = g.get("/exact")
            return st, h.get("x-worker")
        seen, errors = run_concurrently(8, 8, one)
        eq(errors, [], "client errors")
        eq(len(seen), 64, "answers")
        eq(sum(1 for s, _ in seen if s == 200), 10, "requests let through (rate 10, burst 10)")
        eq(sum(1 for s, _ in seen if s == 429), 54, "requests refused")
        eq({w for _, w in seen}, {"0", "1"}, "workers that answered (both must take part)")


def test_ten_per_second_across_two_workers():
    """rate 10 per second, burst 10, 30 requests at once over both workers:
    10 pass, plus at most one per 100 ms the burst took (the rate refills)."""
    with Gateway(CFG, workers=2) as g:
        eq(len(g.wait_workers(2)), 2, "workers")
        seen, lock = [], threading.Lock()
        barrier = threading.Barrier(10)

        def client():
            barrier.wait(5)
            for _ in range(3):
                t = time.monotonic()
                st, h, _ = g.get("/persec")
                with lock:
                    seen.append((st, h.get("x-worker"), t))
        threads = [threading.Thread(target=client) for _ in range(10)]
        start = time.monotonic()
        for t in threads:
            t.start()
        for t in threads:
            t.join(30)
        elapsed = time.monotonic() - start
        eq(len(seen), 30, "answers")
        passed = sum(1 for s, _, _ in seen if s == 200)
        eq(sum(1 for s, _, _ in seen if s in (200, 429)), 30, "only 200 and 429")
        assert 10 <= passed <= 10 + int(elapsed / 0.1) + 1, "%d passed in %.3f s" % (passed, elapsed)
        if elapsed < 0.1:
            eq(passed, 10, "passed within one emission interval")


def test_headers_and_429():
    with Gateway(CFG) as g:
        for remaining, reset in (("2", "20"), ("1", "40"), ("0", "60")):
            r = get(g, "/three")
            eq(r.status, 200, "status")
            eq((r.headers.get("ratelimit-limit"), r.headers.get("ratelimit-remaining"),
                r.headers.get("ratelimit-reset")), ("3", remaining, reset), "RateLimit-* headers")
        r = get(g, "/three", {"X-Request-Id": "rl-test-1"})
        doc = check_429(r, "3", reset="60", retry_after="20")
        eq(doc["request_id"], "rl-test-1", "request_id in the 429")
        # The refusal did not count: still refused with the same times.
        check_429(get(g, "/three"), "3", reset="60", retry_after="20")


def test_refill_after_the_period():
    with Gateway(CFG) as g:
        eq([get(g, "/fast").status for _ in range(3)], [200, 200, 429], "burst of 2, then refused")
        r = get(g, "/fast")
        check_429(r, "2", retry_after="1")
        time.sleep(0.6)  # one emission interval (0.5 s) later: exactly one more
        eq([get(g, "/fast").status for _ in range(2)], [200, 429], "one refilled")
        time.sleep(1.1)  # a whole period: the full burst is back
        r = get(g, "/fast")
        eq((r.status, r.headers.get("ratelimit-remaining")), (200, "1"), "full burst again")


def test_key_function():
    with Gateway(CFG) as g:
        eq([get(g, "/tenant", {"X-Tenant": "a"}).status for _ in range(2)], [200, 429], "tenant a")
        eq(get(g, "/tenant", {"X-Tenant": "b"}).status, 200, "tenant b has its own limit")
        for _ in range(3):
            r = get(g, "/tenant")
            eq(r.status, 200, "no key: not limited")
            assert "ratelimit-limit" not in r.headers, "no RateLimit headers without a key: %r" % r.headers


def test_consumer_key_falls_back_to_ip():
    with Gateway(CFG) as g:
        eq([get(g, "/api/me", {"X-Api-Key": "ka"}).status for _ in range(2)], [200, 429], "alice")
        eq(get(g, "/api/me", {"X-Api-Key": "kb"}).status, 200, "bob counts apart from alice")
        eq(get(g, "/api/me").status, 401, "auth runs first: no key is 401, not counted")
        eq([get(g, "/open").status for _ in range(2)], [200, 429], "no consumer: limited by IP")


def test_declared_dict_and_burst():
    with Gateway(CFG) as g:
        eq([get(g, "/mine").status for _ in range(3)], [200, 200, 429], "burst 2 in dict 'mine'")


def check_cli_error(cfg, needle):
    rc, out, err, _ = run_cli(["-t", "-c", "$DIR/gateway.lua"], {"gateway.lua": cfg})
    text = out + err
    assert rc != 0, "-t accepted a bad configuration: %s" % text
    assert needle in text, "%r not in %r" % (needle, text)
    line = line_of(cfg, "gw.mw.rate_limit")
    assert ("gateway.lua:%d:" % line) in text, "no file:line %d in %r" % (line, text)


REDIS_APP = PRELUDE + r'''
gw.use(gw.mw.rate_limit { rate = 10, per = 60, burst = 10, policy = "redis",
                          redis = "redis://127.0.0.1:@REDIS@", on_error = "@ON_ERROR@",
                          redis_timeout = 0.3 })
gw.get("/r", function(req) return "ok" end)
'''


def redis_app(port, on_error="allow"):
    return REDIS_APP.replace("@REDIS@", str(port)).replace("@ON_ERROR@", on_error)


def test_redis_policy_one_limit_for_two_gateways():
    # Two gateway processes on different ports, one Redis: 10 per minute in all.
    from test_redis import RedisServer
    with RedisServer() as redis:
        with Gateway(redis_app(redis.port)) as g1, Gateway(redis_app(redis.port)) as g2:
            statuses = []
            for i in range(30):
                g = g1 if i % 2 == 0 else g2
                st, h, _ = http(g.port, "GET", "/r")
                statuses.append(st)
                if st == 429:
                    assert int(h["retry-after"]) >= 1, h
                    eq(h["ratelimit-remaining"], "0", "remaining on a refusal")
                else:
                    eq(h["ratelimit-limit"], "10", "RateLimit-Limit")
            eq(statuses.count(200), 10, "one combined limit across both gateways: %r" % statuses)
            eq(statuses[:10], [200] * 10, "the first 10 pass, alternating gateways")


def test_redis_policy_on_error():
    from test_redis import RedisServer
    with RedisServer() as redis:
        port = redis.port
        with Gateway(redis_app(port, "allow")) as ga, Gateway(redis_app(port, "deny")) as gd:
            eq(http(ga.port, "GET", "/r")[0], 200, "allow, Redis up")
            eq(http(gd.port, "GET", "/r")[0], 200, "deny, Redis up")
            redis.stop()
            t0 = time.monotonic()
            eq(http(ga.port, "GET", "/r", timeout=5)[0], 200, "on_error = allow: goes through")
            st, _, body = http(gd.port, "GET", "/r", timeout=5)
            took = time.monotonic() - t0
            eq(st, 503, "on_error = deny: refused")
            assert json.loads(body)["error"] == "rate limiter unavailable", body
            assert took < 2.0, "a dead Redis held requests for %.2fs" % took


def test_redis_policy_unexpected_replies_follow_on_error():
    # A reply of the wrong shape (SCRIPT LOAD not answering a SHA1, the
    # script's answer not four integers) is a failure to ask Redis, so
    # on_error decides; it used to be a 500, and a bad SHA1 was kept for
    # every later request.
    from test_redis import _ScriptedRedis
    shapes = {b"SCRIPT": (b":1\r\n", b"$40\r\n" + b"a" * 40 + b"\r\n"),
              b"EVALSHA": (b"*0\r\n", b"*2\r\n$1\r\nx\r\n$-1\r\n")}
    for i in range(2):
        fake = _ScriptedRedis(lambda name, i=i: shapes.get(name, (b"+OK\r\n",) * 2)[i])
        try:
            with Gateway(redis_app(fake.port, "allow")) as ga, Gateway(redis_app(fake.port, "deny")) as gd:
                for _ in range(2):
                    eq(http(ga.port, "GET", "/r")[0], 200, "on_error = allow, shape %d" % i)
                    st, _, body = http(gd.port, "GET", "/r")
                    eq(st, 503, "on_error = deny, shape %d" % i)
                    eq(json.loads(body)["error"], "rate limiter unavailable", "deny body")
        finally:
            fake.close()


def test_configuration_errors():
    cases = [
        ('local rl = gw.mw.rate_limit { rate = 5, dict = "nope" }\n', "dict 'nope' is not declared"),
        ('local rl = gw.mw.rate_limit { rate = 0 }\n', "rate must be a number > 0"),
        ('local rl = gw.mw.rate_limit { rate = 5, burst = 1.5 }\n', "burst must be a whole number"),
        ('local rl = gw.mw.rate_limit { rate = 5, key = "host" }\n', "key must be"),
        ('local rl = gw.mw.rate_limit { rate = 5, rates = 1 }\n', "unknown option 'rates'"),
        ('local rl = gw.mw.rate_limit { rate = 5, policy = "memcached" }\n', "policy must be"),
    ]
    for body, needle in cases:
        check_cli_error(PRELUDE + body, needle)


def test_check_mode_accepts_the_config():
    rc, out, err, _ = run_cli(["-t", "-c", "$DIR/gateway.lua"], {"gateway.lua": CFG})
    assert "is ok" in out + err, out + err
    eq(rc, 0, "exit status")


OWN = ('local gw = require "gateway"\n'
       'gw.config { listen = { "127.0.0.1:$PORT" }, admin = "127.0.0.1:$PORT2" }\n'
       'gw.get("/v", %s function(req) return "%s" end)\n')


def test_own_dict_is_made_by_the_master_and_kept_across_reloads():
    with Gateway(OWN % ("gw.mw.rate_limit { rate = 2, per = 60 },", "v1")) as g:
        eq([g.get("/v")[0] for _ in range(3)], [200, 200, 429], "limited in the gateway's own dict")
        assert wait_for(lambda: admin_answers(g.port2), 5), "admin listener"
        st, _, body = http(g.port2, "GET", "/status")
        dicts = {d["name"]: d for d in json.loads(body)["shared_dicts"]}
        assert "gw.rate_limit" in dicts, dicts
        eq(dicts["gw.rate_limit"]["size"], 1024 * 1024, "size of the gateway's own dict")
        # A reload keeps the dict, and the counters of an unchanged limit.
        st, _, _ = http(g.port2, "POST", "/reload")
        eq(st, 200, "reload")
        eq(g.get("/v")[0], 429, "still limited after a reload")


def test_own_dict_added_by_a_reload_needs_a_restart():
    with Gateway(OWN % ("", "v1")) as g:
        assert wait_for(lambda: admin_answers(g.port2), 5), "admin listener"
        new = g._substitute(OWN % ("gw.mw.rate_limit { rate = 2, per = 60 },", "v2"))
        with open(g.config_path, "w") as f:
            f.write(new)
        err = g.wait_stderr("needs a restart")
        assert "rate_limit" in err and "gw.rate_limit" in err, err
        eq(g.get("/v")[2], b"v1", "the old configuration keeps serving")




GCRA = PRELUDE + r'''
gw.shared_dict("d", "64k")
gw.get("/gcra", function(req)
  local d, out = gw.shared.d, {}
  for i = 1, 4 do
    local ok, rem, reset, retry = d:gcra("k", 3, 60)
    out[i] = { ok, rem, math.floor(reset + 0.5), math.floor(retry + 0.5) }
  end
  d:set("s", "text")
  local v, err = d:gcra("s", 1)
  out.str = { v == nil, err }
  out.bad = select(2, pcall(d.gcra, d, "k", 0))
  out.nan = select(2, pcall(d.gcra, d, "k", 0/0, 1, 5))
  out.inf = select(2, pcall(d.gcra, d, "k", 1, math.huge, 5))
  out.tiny = select(2, pcall(d.gcra, d, "k", 1e-320, 1, 1))
  out.burst = select(2, pcall(d.gcra, d, "k", 1, 1, 0.5))
  return { json = out }
end)
'''


def test_dict_gcra_from_lua():
    with Gateway(GCRA) as g:
        st, _, body = g.get("/gcra")
        eq(st, 200, "status (%r)" % body[:300])
        doc = json.loads(body)
        # 3 per minute, burst 3: allowed, remaining, reset (s), retry_after (s)
        eq([doc[str(i)] for i in (1, 2, 3, 4)],
           [[True, 2, 20, 0], [True, 1, 40, 0], [True, 0, 60, 0], [False, 0, 60, 20]], "decisions")
        eq(doc["str"], [True, "not a number"], "a string under the key")
        for k in ("bad", "nan", "inf"):
            assert "rate and per must be finite numbers > 0" in doc[k], (k, doc[k])
        assert "no finite interval" in doc["tiny"], doc["tiny"]
        assert "burst must be a whole number" in doc["burst"], doc["burst"]
