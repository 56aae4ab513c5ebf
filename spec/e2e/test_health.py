"""Shared upstream health: active checks (worker 0 checks, every worker
obeys), the circuit breaker (open after failures in a window, 503 while
open, one half-open probe after the cooldown), and what /status and
/metrics say about upstreams."""
import json
import time

from gwtest import Gateway, eq, http, raw, req_bytes, check_error, wait_for
from origin import dead_port

CONFIG = r'''
local gw = require "gateway"
gw.config { listen = { "127.0.0.1:$PORT", "127.0.0.1:$PORT2" }, admin = "127.0.0.1:$PORT3" }
gw.shared_dict("flags", "1m")
gw.get("/backend/health", function(req)
  if gw.shared.flags:get("sick") then return { status = 503, body = "sick" } end
  return "ok"
end)
gw.get("/backend/x", function(req) return "x" end)
local a = gw.upstream("a", { servers = { "127.0.0.1:$PORT2", "127.0.0.1:@DEAD@" }, retries = 0,
  health = { active = { path = "/backend/health", interval = 0.2, healthy = 2, unhealthy = 2, timeout = 0.5 } } })
local b = gw.upstream("b", { servers = { "127.0.0.1:@DEAD2@" }, retries = 0,
  breaker = { failures = 3, window = 10, cooldown = 1 } })
local function report(res, err) return { json = { ok = res ~= nil, err = err or false } } end
gw.get("/a", function(req) return report(a:get("/backend/x")) end)
gw.get("/b", function(req) return report(b:get("/backend/x")) end)
gw.get("/b-raw", function(req) return b:get("/backend/x") end)
gw.get("/sick/:v", function(req)
  if req.params.v == "1" then gw.shared.flags:set("sick", true) else gw.shared.flags:delete("sick") end
  return "set"
end)
'''


def cfg(dead=None):
    dead = dead or dead_port()
    return CONFIG.replace("@DEAD@", str(dead)).replace("@DEAD2@", str(dead_port()))


def getj(g, path):
    st, _, body = http(g.port, "GET", path)
    return st, json.loads(body)


def status(g):
    st, _, body = http(g.ports["$PORT3"], "GET", "/status")
    eq(st, 200, "/status")
    return json.loads(body)


def server(doc, group, addr_port):
    for up in doc["upstreams"]:
        if up["name"] == group:
            for s in up["servers"]:
                if s["addr"].endswith(":%s" % addr_port):
                    return s
    raise AssertionError("no server %s in %s: %r" % (addr_port, group, doc["upstreams"]))


def test_active_checks_take_dead_server_out_for_every_worker():
    dead = dead_port()
    with Gateway(cfg(dead), workers=2) as g:
        # Two failed checks, 0.2 s apart: the dead server is out well within 1.5 s.
        wait_for(lambda: not server(status(g), "a", dead)["healthy"], timeout=3)
        s = server(status(g), "a", dead)
        eq((s["active_down"], s["passive_down"]), (True, False), "out by active checks")
        # No request reaches the dead server now, on either worker (retries = 0).
        bad = [d for _, d in (getj(g, "/a") for _ in range(40)) if not d["ok"]]
        eq(bad, [], "requests after the checks took the dead server out")


def test_active_checks_bring_a_server_back():
    with Gateway(cfg(), workers=1) as g:
        live = str(g.ports["$PORT2"])
        eq(http(g.port, "GET", "/sick/1")[0], 200, "make the live server fail its checks")
        wait_for(lambda: not server(status(g), "a", live)["healthy"], timeout=3)
        st, d = getj(g, "/a")
        eq(d, {"ok": False, "err": "no healthy server"}, "both servers out")
        http(g.port, "GET", "/sick/0")
        wait_for(lambda: server(status(g), "a", live)["healthy"], timeout=3)
        eq(getj(g, "/a")[1], {"ok": True, "err": False}, "back after healthy = 2 good checks")


def test_breaker_opens_then_half_opens():
    with Gateway(cfg(), workers=2) as g:
        seq = [getj(g, "/b")[1]["err"] for _ in range(5)]
        eq(seq, ["connection refused"] * 3 + ["breaker open"] * 2,
           "3 failures in the window open the breaker for every worker")
        check_error(raw(g.port, req_bytes("GET", "/b-raw", [("Connection", "close")])), 503)
        doc = status(g)
        eq([u["breaker"] for u in doc["upstreams"] if u["name"] == "b"], ["open"], "/status breaker")
        st, _, body = http(g.ports["$PORT3"], "GET", "/metrics")
        assert 'gateway_upstream_breaker_open{upstream="b"} 1' in body.decode(), body.decode()[-800:]
        time.sleep(1.2)
        # After the cooldown one probe goes through; it fails, so the breaker opens again.
        eq(getj(g, "/b")[1]["err"], "connection refused", "the half-open probe")
        eq(getj(g, "/b")[1]["err"], "breaker open", "open again after a failed probe")


def test_status_and_metrics_list_upstream_servers():
    with Gateway(cfg(), workers=1) as g:
        for _ in range(3):
            getj(g, "/a")
        doc = status(g)
        names = sorted(u["name"] for u in doc["upstreams"])
        eq(names, ["a", "b"], "groups in /status")
        live = server(doc, "a", g.ports["$PORT2"])
        assert live["requests"] >= 1 and live["weight"] == 1, live
        st, _, body = http(g.ports["$PORT3"], "GET", "/metrics")
        text = body.decode()
        assert 'gateway_upstream_healthy{upstream="a",server="127.0.0.1:%s"} 1' % g.ports["$PORT2"] in text
        assert "gateway_upstream_requests_total{" in text and "gateway_upstream_failures_total{" in text


BREAKER_PROBE = r'''
local gw = require "gateway"
gw.config { listen = { "127.0.0.1:$PORT", "127.0.0.1:$PORT2" } }
gw.get("/backend/slow", function(req) gw.sleep(1) return "late" end)
local b = gw.upstream("b", { servers = { "127.0.0.1:$PORT2" }, retries = 0,
  timeouts = { read = 0.2 }, breaker = { failures = 1, window = 10, cooldown = 0.3 } })
gw.get("/call", function(req)
  local r, e = b:get("/backend/slow")
  return { json = { ok = r ~= nil, err = e or false } }
end)
-- The probe is started in a thread the handler does not wait for: it is
-- abandoned when the request ends.
gw.get("/abandon", function(req)
  gw.spawn(function() b:get("/backend/slow") end)
  return "gone"
end)
'''


def test_breaker_abandoned_probe_does_not_wedge_it():
    with Gateway(BREAKER_PROBE, workers=1) as g:
        eq(getj(g, "/call")[1]["err"], "timeout", "a failure opens the breaker (failures = 1)")
        eq(getj(g, "/call")[1]["err"], "breaker open", "open")
        time.sleep(0.4)
        st, _, body = http(g.port, "GET", "/abandon")
        eq((st, body), (200, b"gone"), "the probe's request ended at once")
        # The abandoned probe re-opened the breaker for one cooldown; after
        # that a new probe is let through instead of "breaker open" for ever.
        time.sleep(0.4)
        eq(getj(g, "/call")[1]["err"], "timeout", "a new probe after the cooldown")


HASH_AFTER_WAIT = r'''
local gw = require "gateway"
gw.config { listen = { "127.0.0.1:$PORT", "127.0.0.1:$PORT2", "127.0.0.1:$PORT3" } }
gw.get("/backend/who", function(req) return req.headers.host end)
local h = gw.upstream("h", { servers = { "127.0.0.1:$PORT2", "127.0.0.1:$PORT3" }, balance = "hash",
  hash_key = function(req) return req.headers["x-key"] end })
gw.get("/k", function(req)
  gw.sleep(tonumber(req.query.wait or "0"))
  local r = h:get("/backend/who")
  return r:body()
end)
'''


def test_hash_key_sees_its_own_request_after_a_wait():
    import threading
    with Gateway(HASH_AFTER_WAIT, workers=1) as g:
        def who(key, wait="0"):
            return http(g.port, "GET", "/k?wait=" + wait, headers={"x-key": key})[2]
        # Find two keys that go to different servers.
        keys, seen = [], {}
        for i in range(40):
            k = "key-%d" % i
            s = who(k)
            if s not in seen:
                seen[s] = k
        eq(len(seen), 2, "two servers reached by hashing")
        (s1, k1), (s2, k2) = sorted(seen.items())
        out = {}
        t = threading.Thread(target=lambda: out.setdefault("slow", who(k1, "0.3")))
        t.start()
        time.sleep(0.1)
        out["fast"] = who(k2)  # runs while the slow one waits
        t.join(5)
        eq(out, {"slow": s1, "fast": s2}, "each request hashed with its own key after its wait")
