"""Script errors become a 500 JSON answer for that request only, with the
traceback in the log; header values with CR/LF never reach the client."""

import itertools
import json
import time

from gwtest import PRELUDE, Conn, Gateway, eq, line_of, raw, req_bytes, run_concurrently

ERRORS = PRELUDE + r'''
gw.get("/boom", function(req)
  error("boom in handler")
end)
gw.get("/nilindex", function(req)
  local t = nil
  return t.field
end)
gw.use("/mw", function(req, next)
  error("boom in middleware")
end)
gw.get("/mw/x", function(req) return "unreachable" end)
gw.get("/ok", function(req) return "ok" end)
gw.get("/wait/boom", function(req)
  gw.sleep(0.05)
  error("boom after a wait")
end)
gw.get("/wait/ok/:n", function(req)
  gw.sleep(0.05)
  return "ok " .. req.params.n
end)
'''


def _check_500(st, h, body):
    eq(st, 500, "status")
    assert h.get("content-type", "").startswith("application/json"), h
    doc = json.loads(body)
    assert isinstance(doc.get("error"), str) and doc["error"], doc
    assert isinstance(doc.get("request_id"), str) and doc["request_id"], doc
    text = body.decode("utf-8", "replace")
    # The traceback goes to the log, never to the client.
    for leak in ("boom in", "gateway.lua", "traceback", "stack"):
        assert leak not in text.lower(), "500 body leaks %r: %s" % (leak, text)
    return doc


def test_script_error_is_500_and_logged():
    with Gateway(ERRORS) as g:
        line = line_of(g.config_text, 'error("boom in handler")')
        st, h, body = g.get("/boom")
        _check_500(st, h, body)
        err = g.wait_stderr("gateway.lua:%d" % line)
        assert "gateway.lua:%d" % line in err, "stderr lacks gateway.lua:%d:\n%s" % (line, err)
        assert "boom in handler" in err, err
        # The same (only) worker keeps serving.
        eq(g.get("/ok")[:3:2], (200, b"ok"), "next request")


def test_runtime_error_and_keepalive_survives():
    with Gateway(ERRORS) as g:
        line = line_of(g.config_text, "return t.field")
        with Conn(g.port) as c:
            c.send(req_bytes("GET", "/nilindex"))
            r = c.read_response()
            _check_500(r.status, r.headers, r.body)
            # A script error is not a protocol error: the connection may stay.
            if not c.eof and r.headers.get("connection", "").lower() != "close":
                c.send(req_bytes("GET", "/ok"))
                r2 = c.read_response()
                eq((r2.status, r2.body), (200, b"ok"), "next request on the same connection")
        err = g.wait_stderr("gateway.lua:%d" % line)
        assert "gateway.lua:%d" % line in err, "stderr lacks gateway.lua:%d:\n%s" % (line, err)
        eq(g.get("/ok")[:3:2], (200, b"ok"), "next request")


def test_middleware_error_is_500():
    with Gateway(ERRORS) as g:
        line = line_of(g.config_text, 'error("boom in middleware")')
        st, h, body = g.get("/mw/x")
        _check_500(st, h, body)
        err = g.wait_stderr("gateway.lua:%d" % line)
        assert "gateway.lua:%d" % line in err, err
        eq(g.get("/ok")[:3:2], (200, b"ok"), "next request")


def test_error_request_id_is_logged():
    with Gateway(ERRORS) as g:
        st, h, body = g.get("/boom")
        rid = json.loads(body)["request_id"]
        err = g.wait_stderr(rid)
        assert rid in err, "request id %s not in the error log:\n%s" % (rid, err)


BAD_HEADERS = PRELUDE + r'''
gw.get("/crlf-value", function(req)
  return { status = 200, headers = { ["x-bad"] = "a\r\nInjected: yes" }, body = "x" }
end)
gw.get("/lf-value", function(req)
  return { status = 200, headers = { ["x-bad"] = "a\nInjected: yes" }, body = "x" }
end)
gw.get("/cr-name", function(req)
  return { status = 200, headers = { ["x-bad\r\nInjected"] = "yes" }, body = "x" }
end)
gw.use("/mw", function(req, next)
  local res = next()
  res.headers["x-bad"] = "v\r\nInjected: yes"
  return res
end)
gw.get("/mw/x", function(req) return "x" end)
gw.get("/ok", function(req) return "ok" end)
'''


def test_crlf_in_response_header_is_500():
    with Gateway(BAD_HEADERS) as g:
        for path in ("/crlf-value", "/lf-value", "/cr-name", "/mw/x"):
            data = raw(g.port, req_bytes("GET", path, [("Connection", "close")]))
            assert b"Injected" not in data, "%s: injected header reached the client:\n%r" % (path, data)
            assert data.startswith(b"HTTP/1.1 500 "), "%s: want a 500, got %r" % (path, data[:300])
        err = g.stderr_text().lower()
        assert "x-bad" in err or "header" in err, "the log does not say why:\n" + err
        eq(g.get("/ok")[:3:2], (200, b"ok"), "next request")


INTERIM = PRELUDE + r'''
local C = require("gateway.base").C
gw.get("/number", function(req) return 100 end)
gw.get("/table", function(req) return { status = 103, body = "early" } end)
gw.get("/json", function(req) return { status = 199, json = { a = 1 } } end)
gw.get("/switch", function(req) return { status = 101 } end)
gw.get("/raised", function(req) error({ status = 100, message = "continue" }) end)
gw.get("/fraction", function(req) return { status = 200.5 } end)
gw.get("/nan", function(req) return { status = 0/0 } end)
gw.get("/big", function(req) return 600 end)
gw.use("/mw", function(req, next)
  local res = next()
  res.status = 102
  return res
end)
gw.get("/mw/x", function(req) return "x" end)
-- Past runtime.lua's check, straight to the C calls: C refuses it too.
gw.get("/ffi", function(req)
  C.gw_ffi_resp_start(req._r, req._s, 100)
  C.gw_ffi_resp_send(req._r, req._s, "interim?", 8)
  return ""
end)
gw.get("/secret", function(req) return "answer-for-secret" end)
'''


def _make_final_status(path, logged):
    def test():
        with Gateway(INTERIM) as g:
            # The next request rides on the same connection: with a 1xx as the
            # answer, a client would take the next answer for this one's.
            with Conn(g.port) as c:
                c.send(req_bytes("GET", path) + req_bytes("GET", "/secret"))
                r = c.read_response()
                _check_500(r.status, r.headers, r.body)
                r = c.read_response()
                eq((r.status, r.body), (200, b"answer-for-secret"), "the next answer")
            err = g.wait_stderr(logged)
            assert logged in err, "the log does not name the status (%r):\n%s" % (logged, err[-2000:])
    return test


for _path, _logged in (("/number", "not 100"), ("/table", "not 103"), ("/json", "not 199"),
                       ("/switch", "not 101"), ("/raised", "status = 100"), ("/fraction", "not 200.5"),
                       ("/nan", "not nan"), ("/big", "not 600"), ("/mw/x", "not 102"),
                       ("/ffi", "status 100 cannot be a final answer")):
    globals()["test_bad_final_status_is_500_" + _path.strip("/").replace("/", "_")] = \
        _make_final_status(_path, _logged)


def test_raised_error_table_with_a_non_text_message():
    # error({ status = 4xx, message = <not text> }): the answer keeps the
    # status with a generic message; it used to fail the JSON encoder.
    cfg = PRELUDE + r'''
gw.get("/fn", function(req) error({ status = 403, message = function() end }) end)
gw.get("/tbl", function(req) error({ status = 409, message = { a = 1 } }) end)
gw.get("/num", function(req) error({ status = 422, message = 42 }) end)
gw.get("/ok", function(req) return "ok" end)
'''
    with Gateway(cfg) as g:
        for path, status, msg in (("/fn", 403, "error"), ("/tbl", 409, "error"), ("/num", 422, "42")):
            st, h, body = g.get(path)
            eq((st, json.loads(body)["error"]), (status, msg), path)
        eq(g.get("/ok")[0], 200, "still serving")


def test_errors_between_requests_many_times():
    # A request coroutine serves request after request inside one protected
    # call, restarted after each error (runtime.lua serve): errors mixed with
    # answers, on one connection and on many at once, while others wait.
    with Gateway(ERRORS) as g:
        with Conn(g.port) as c:
            for i in range(150):
                path = ("/boom", "/ok", "/nilindex", "/ok", "/mw/x")[i % 5]
                c.send(req_bytes("GET", path))
                r = c.read_response()
                eq(r.status, 200 if path == "/ok" else 500, "%s (#%d)" % (path, i))
        numbers = itertools.count()

        def one():
            k = next(numbers)
            path = "/wait/boom" if k % 2 else "/wait/ok/%d" % k
            return (k,) + g.get(path)[:3:2]

        results, errors = run_concurrently(20, 1, one)
        eq(errors, [], "client errors")
        eq(sorted(k for k, _, _ in results), list(range(20)), "every concurrent request answered")
        for k, status, body in results:
            eq(status, 500 if k % 2 else 200, "concurrent request %d" % k)
            if not k % 2:
                eq(body, b"ok %d" % k, "answer of concurrent request %d" % k)
        eq(g.get("/ok")[:3:2], (200, b"ok"), "next request")


YIELDS = PRELUDE + r'''
gw.get("/y1", function(req) coroutine.yield(1) return "after" end)
gw.get("/yp", function(req) return pcall(coroutine.yield, 1) end)
gw.get("/ok", function(req) return "ok" end)
gw.timer.after(0, function() coroutine.yield(1) end)
'''


def test_yield_outside_the_gateways_waits_is_500():
    # Nothing in C waits for such a yield, so it would never be resumed: the
    # client got no answer and the task pinned its generation for good.
    with Gateway(YIELDS) as g:
        g.wait_stderr("yielded outside the gateway's waits")  # the timer's
        for path in ("/y1", "/yp"):
            st, h, body = g.get(path, timeout=3)
            _check_500(st, h, body)
        err = g.wait_stderr("yielded outside")
        assert err.count("yielded outside the gateway's waits") >= 3, err
        eq(g.get("/ok")[:3:2], (200, b"ok"), "next request")


OWN_YIELDS = PRELUDE + r'''
local values = { none = function() coroutine.yield() end, zero = function() coroutine.yield(0) end,
                 text = function() coroutine.yield("x") end, nothing = function() coroutine.yield(nil, 1) end }
gw.get("/y/:kind", function(req)
  local who = req.headers["x-user"]
  values[req.params.kind]()
  return "private data of " .. who
end)
gw.get("/ok", function(req) return "ok for " .. req.headers["x-user"] end)
local fired = 0
gw.timer.every(0.05, function()
  fired = fired + 1
  if fired == 1 then coroutine.yield(0) end
  gw.log.info("timer run " .. fired .. " done")
end)
'''


def test_a_yield_that_is_not_the_gateways_never_ends_the_task():
    # Any value but the gateway's own markers (nothing, 0, a string): the
    # task fails, and no later request or timer firing resumes the handler
    # that yielded (it once went back to the pool suspended, and the next
    # request, another client's, got its answer).
    with Gateway(OWN_YIELDS) as g:
        for kind in ("none", "zero", "text", "nothing"):
            st, h, body = g.get("/y/" + kind, {"X-User": "alice"}, timeout=3)
            _check_500(st, h, body)
            for n in range(3):
                st, _, body = g.get("/ok", {"X-User": "bob"})
                eq((st, body), (200, b"ok for bob"), "the next request after a yield of %s" % kind)
        err = g.wait_stderr("timer run 3 done")
        assert "private data" not in err, err
        assert err.count("yielded outside the gateway's waits") >= 5, err


LOG_FORGE = PRELUDE + r'''
gw.get("/log", function(req)
  gw.log.warn("note: " .. req.query.v)
  return "logged"
end)
gw.get("/fail", function(req) error("bad input: " .. req.query.v) end)
'''


def test_client_text_cannot_write_a_log_line_of_its_own():
    # gw.log writes one line (control bytes escaped); an error message keeps
    # its line feeds for tracebacks, but each following line is indented,
    # so no client text can start a line that looks like the gateway's.
    from urllib.parse import quote
    forged = "x\r\n2026-01-01T00:00:00.000Z [error] master[1]: FORGED\x1b[31m"
    with Gateway(LOG_FORGE) as g:
        eq(g.get("/log?v=" + quote(forged))[2], b"logged", "gw.log")
        eq(g.get("/fail?v=" + quote(forged))[0], 500, "error()")
        err = g.wait_stderr("request GET /fail")
        time.sleep(0.2)
        err = g.stderr_text()
        lines = err.split("\n")
        assert not any(l.startswith("2026-01-01") for l in lines), err
        assert "\x1b" not in err and "\r" not in err, repr(err)
        logged = [l for l in lines if "note: x" in l]
        eq(len(logged), 1, "the gw.log line: %r" % err)
        assert "note: x\\r\\n2026-01-01T00:00:00.000Z [error] master[1]: FORGED\\x1b[31m" in logged[0], logged
        assert "\n\t2026-01-01T00:00:00.000Z [error] master[1]: FORGED" in err, repr(err)


NIL_ERR = PRELUDE + r'''
local errs = { text = "broken", timeout = "timeout", number = 42, table = { code = 42 },
               fn = function() end }
gw.get("/nilerr/:kind", function(req) return nil, errs[req.params.kind] end)
'''


def test_nil_err_answers_never_show_a_heap_address():
    with Gateway(NIL_ERR) as g:
        for kind, status, msg in (("text", 502, "broken"), ("timeout", 504, "timeout"),
                                  ("number", 502, "42"), ("table", 502, "upstream error"),
                                  ("fn", 502, "upstream error")):
            st, _, body = g.get("/nilerr/" + kind)
            eq((st, json.loads(body)["error"]), (status, msg), "nil, %s" % kind)


OVERFLOW = PRELUDE + r'''
local function deep(n) return deep(n + 1) + 1 end
gw.get("/so", function(req) return tostring(deep(1)) end)
'''


def test_a_stack_overflow_is_logged_with_its_message():
    # The traceback handler once failed on the full stack, and the log said
    # only "failed: nil" (xpcall's answer then is a string, not the table).
    with Gateway(OVERFLOW) as g:
        st, h, body = g.get("/so")
        _check_500(st, h, body)
        err = g.wait_stderr("request GET /so")
        line = [l for l in err.split("\n") if "request GET /so" in l][0]
        # The traceback handler runs on the full stack: it names the
        # overflow, or when even it has no room, LuaJIT's own message.
        assert ("gateway.lua:%d: stack overflow" % line_of(OVERFLOW, "local function deep") in line
                or line.endswith("failed: error in error handling")), line
        eq(g.get("/so")[0], 500, "again, same worker")
