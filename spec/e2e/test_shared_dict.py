"""Shared dicts: gw.shared_dict(NAME, SIZE) and gw.shared.NAME:get/set/add/incr/delete,
shared by every worker, with TTLs, LRU eviction and clear errors."""

import json
import time

from gwtest import PRELUDE, Gateway, eq, line_of, run_cli, run_concurrently

APP = PRELUDE + r'''
gw.shared_dict("counts", "1m")
gw.shared_dict("small", "16k")
local counts = gw.shared.counts

gw.get("/incr", function(req)
  local n = counts:incr("hits", 1, 0)
  return { json = { n = n, worker = gw.worker_id() } }
end)
gw.get("/whoami", function(req) return { json = { worker = gw.worker_id() } } end)
gw.get("/get/:k", function(req)
  local v = counts:get(req.params.k)
  return { json = { v = v, t = type(v) } }
end)
gw.get("/semantics", function(req)
  local d = gw.shared.counts
  local out = {}
  out.set = d:set("s", "hello")
  out.get = d:get("s")
  out.add_ok, out.add_err = d:add("s", "again")
  out.add_new = d:add("fresh", 42)
  out.num = d:get("fresh")
  out.bool_set = d:set("flag", false)
  out.bool = d:get("flag")
  out.incr_missing, out.incr_missing_err = d:incr("nothing", 1)
  out.incr_str, out.incr_str_err = d:incr("s", 1)
  out.incr_init = d:incr("c", 5, 10)
  out.incr_more = d:incr("c", -2)
  out.incr_float = d:incr("f", 0.25, 0)
  out.delete = d:delete("s")
  out.after_delete = d:get("s") == nil
  d:set("gone", "x")
  d:set("gone", nil)
  out.set_nil_deletes = d:get("gone") == nil
  out.missing = d:get("never") == nil
  out.binary = d:set("bin", "a\0b") and d:get("bin") == "a\0b"
  return { json = out }
end)
gw.get("/ttl", function(req)
  local d = gw.shared.counts
  d:set("t", "short", 0.2)
  d:incr("tc", 1, 0, 0.2)
  local before = d:get("t")
  gw.sleep(0.35)
  return { json = { before = before, after = d:get("t") or "nil", counter = d:get("tc") or "nil",
                    re_add = d:add("t", "back") } }
end)
gw.get("/lru", function(req)
  local d = gw.shared.small
  local v = string.rep("v", 500)
  for i = 1, 200 do
    assert(d:set("k" .. i, v))
    assert(d:get("k1") == v)   -- k1 stays recently used
  end
  local big_ok, big_err = d:set("big", string.rep("x", 20000))
  return { json = { k1 = d:get("k1") ~= nil, k2 = d:get("k2") ~= nil, k200 = d:get("k200") ~= nil,
                    big_ok = big_ok, big_err = big_err } }
end)
gw.get("/misuse/:what", function(req)
  local d, w = gw.shared.counts, req.params.what
  if w == "dot" then return tostring(d.get("k")) end
  if w == "key" then return tostring(d:get(42)) end
  if w == "value" then return tostring(d:set("k", {})) end
  if w == "ttl" then return tostring(d:set("k", "v", -1)) end
  if w == "unknown" then return tostring(gw.shared.nosuch) end
  return "?"
end)
'''


def get_json(g, path):
    st, _, body = g.get(path)
    eq(st, 200, "status of %s (%r)" % (path, body[:300]))
    return json.loads(body)


def test_semantics():
    with Gateway(APP) as g:
        got = get_json(g, "/semantics")
        want = {
            "set": True, "get": "hello", "add_ok": False, "add_err": "exists", "add_new": True,
            "num": 42, "bool_set": True, "bool": False, "incr_missing_err": "not found",
            "incr_str_err": "not a number", "incr_init": 15, "incr_more": 13, "incr_float": 0.25,
            "delete": True, "after_delete": True, "set_nil_deletes": True, "missing": True,
            "binary": True,
        }
        for k, v in want.items():
            eq(got.get(k), v, "semantics field %s (whole answer %r)" % (k, got))
        assert "incr_missing" not in got and "incr_str" not in got, got


def test_ttl_expiry():
    with Gateway(APP) as g:
        got = get_json(g, "/ttl")
        eq(got, {"before": "short", "after": "nil", "counter": "nil", "re_add": True}, "ttl")


def test_lru_eviction_and_no_memory():
    with Gateway(APP) as g:
        got = get_json(g, "/lru")
        eq(got, {"k1": True, "k2": False, "k200": True, "big_ok": False, "big_err": "no memory"},
           "LRU in a 16k dict")


def test_misuse_is_a_script_error():
    with Gateway(APP) as g:
        for what, needle in [("dot", "must be called with a colon"), ("key", "non-empty string"),
                             ("value", "strings, numbers or booleans"), ("ttl", "ttl must be"),
                             ("unknown", "no such shared dict")]:
            st, _, body = g.get("/misuse/" + what)
            eq(st, 500, "status for %s" % what)
            g.wait_stderr(needle)
            assert needle in g.stderr_text(), "log lacks %r:\n%s" % (needle, g.stderr_text()[-1500:])


def test_counter_exact_across_two_workers():
    with Gateway(APP, workers=2) as g:
        eq(len(g.wait_workers(2)), 2, "workers")
        # A worker that is still starting takes no connections: wait until
        # both have answered (without touching the counter), so that the
        # exact count below is spread over both.
        answered = set()
        deadline = time.monotonic() + 10
        while answered != {0, 1} and time.monotonic() < deadline:
            answered.add(json.loads(g.get("/whoami")[2])["worker"])
        eq(answered, {0, 1}, "both workers answer before the count starts")
        def one():
            st, _, body = g.get("/incr")
            doc = json.loads(body)
            return st, doc["worker"], doc["n"]
        seen, errors = run_concurrently(8, 25, one)
        eq(errors, [], "client errors")
        eq(len(seen), 200, "answers")
        eq({s for s, _, _ in seen}, {200}, "statuses")
        workers = {w for _, w, _ in seen}
        eq(workers, {0, 1}, "workers that served (both must take part)")
        values = sorted(n for _, _, n in seen)
        eq(values, list(range(1, 201)), "every increment returned a distinct value 1..200")
        eq(get_json(g, "/get/hits"), {"v": 200, "t": "number"}, "final count")


def test_check_mode_accepts_dicts():
    rc, out, err, _ = run_cli(["-t", "-c", "$DIR/gateway.lua"], {"gateway.lua": APP})
    assert "is ok" in out + err, out + err
    eq(rc, 0, "exit status")


def test_bad_declarations_report_file_line():
    cases = [
        ('gw.shared_dict("d", "tiny")\n', "size must be"),
        ('gw.shared_dict("d", "1k")\n', "too small"),
        ('gw.shared_dict("d", "1m")\ngw.shared_dict("d", "2m")\n', "declared twice"),
        ('gw.shared_dict("a b", "1m")\n', "the name must be"),
    ]
    for text, needle in cases:
        cfg = PRELUDE + text
        line = len(cfg.rstrip("\n").split("\n"))
        rc, out, err, _ = run_cli(["-t", "-c", "$DIR/gateway.lua"], {"gateway.lua": cfg})
        both = out + err
        eq(rc, 1, "exit status for %r" % text)
        assert needle in both, "want %r in %r" % (needle, both)
        assert "gateway.lua:%d:" % line in both, "want gateway.lua:%d in %r" % (line, both)
