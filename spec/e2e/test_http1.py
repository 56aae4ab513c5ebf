"""HTTP/1.1 on the wire: keep-alive, pipelining, chunked bodies, HTTP/1.0,
Expect: 100-continue, limits (408/413/414/431) and refused smuggling (400)."""

import socket
import struct
import time

from gwtest import PRELUDE, Conn, Gateway, check_error, eq, parse_all, proc_status, raw, req_bytes

APP = r'''
gw.get("/hello", function(req) return "hello" end)
gw.get("/seq/:n", function(req)
  local n = tonumber(req.params.n)
  gw.sleep(0.1 * (4 - n))          -- the first request is the slowest
  return "r" .. n
end)
gw.post("/echo", function(req) return { status = 200, body = req:body() } end)
gw.post("/ignore", function(req) return "ignored" end)
gw.get("/big/:n", function(req) gw.sleep(0.05) return string.rep("b", tonumber(req.params.n)) end)
gw.get("/bignow/:n", function(req) return string.rep("b", tonumber(req.params.n)) end)
gw.get("/where/*rest", function(req)
  return { json = { path = req.path, host = req.host, x = req.query.x or false } }
end)
gw.get("/", function(req) return { json = { path = req.path, host = req.host, x = req.query.x or false } } end)
gw.post("/seen", function(req)
  local body = req:body()
  local names = {}
  for _, h in ipairs(req:header_list()) do names[#names + 1] = h[1]:lower() .. "=" .. h[2] end
  return { status = body and 200 or 400,
           json = { body = body, host = req.headers.host, key = req.headers["x-api-key"] or false,
                    headers = table.concat(names, ",") } }
end)
'''

BASIC = PRELUDE + APP

LIMITS = r'''local gw = require "gateway"
gw.config {
  listen = { "127.0.0.1:$PORT" },
  limits = { header_bytes = 1024, headers = 20, body_bytes = 1024 },
  timeouts = { header = 1 },
}
''' + APP


def test_keepalive():
    with Gateway(BASIC) as g:
        with Conn(g.port) as c:
            c.send(req_bytes("GET", "/hello"))
            r1 = c.read_response()
            eq((r1.status, r1.body), (200, b"hello"), "first")
            assert r1.headers.get("connection", "").lower() != "close", r1.headers
            time.sleep(0.2)
            c.send(req_bytes("GET", "/hello"))
            r2 = c.read_response()
            eq((r2.status, r2.body), (200, b"hello"), "second on the same socket")
            c.send(req_bytes("GET", "/hello", [("Connection", "close")]))
            r3 = c.read_response()
            eq(r3.status, 200, "third")
            assert c.closed_by_peer(2), "server kept the connection after Connection: close"


def _date_of(r):
    """The response's Date header as a Unix time (IMF-fixdate, RFC 9110 5.6.7)."""
    import calendar
    value = r.headers.get("date")
    assert value, "no Date header: %r" % r.headers
    return calendar.timegm(time.strptime(value, "%a, %d %b %Y %H:%M:%S GMT"))


def test_date_header_follows_the_clock():
    # The Date of each answer is cached per second (and read from the coarse
    # clock): answers on one keep-alive connection must still carry the time
    # at which each was made, whole seconds apart.
    with Gateway(BASIC) as g:
        with Conn(g.port) as c:
            dates = []
            for i in range(3):
                if i:
                    time.sleep(1.1)
                before = time.time()
                c.send(req_bytes("GET", "/hello"))
                r = c.read_response()
                eq(r.status, 200, "answer %d" % i)
                date = _date_of(r)
                assert int(before) - 1 <= date <= time.time() + 1, \
                    "Date %d is not the time of answer %d (client clock %.1f)" % (date, i, before)
                dates.append(date)
            assert dates[0] < dates[1] < dates[2], "Date did not move with the clock: %r" % dates


def test_a_scripts_date_replaces_the_cores():
    # Date is a single field (RFC 9110 6.6.1): two would be a broken answer.
    cfg = BASIC + r'''
gw.get("/dated", function(req)
  return { headers = { date = "Tue, 01 Jan 2030 00:00:00 GMT" }, body = "dated" }
end)
gw.get("/twice", function(req)
  return { headers = { date = "Tue, 01 Jan 2030 00:00:00 GMT", Date = "Tue, 01 Jan 2030 00:00:00 GMT" }, body = "2" }
end)
'''
    with Gateway(cfg) as g:
        with Conn(g.port) as c:
            c.send(req_bytes("GET", "/dated"))
            r = c.read_response()
            eq(r.raw.lower().count(b"\r\ndate:"), 1, "one Date: %r" % r.raw)
            eq(r.headers.get("date"), "Tue, 01 Jan 2030 00:00:00 GMT", "the script's")
            c.send(req_bytes("GET", "/hello"))
            r = c.read_response()
            eq(r.raw.lower().count(b"\r\ndate:"), 1, "the next answer has the core's Date: %r" % r.raw)
            c.send(req_bytes("GET", "/twice"))
            r = c.read_response()
            eq(r.raw.lower().count(b"\r\ndate:"), 1, "two spellings in one table: %r" % r.raw)
            assert _date_of(r) > time.time() - 60, r.headers


def test_idle_keepalive_timeout():
    cfg = r'''local gw = require "gateway"
gw.config { listen = { "127.0.0.1:$PORT" }, timeouts = { idle = 1 } }
''' + APP
    with Gateway(cfg) as g:
        with Conn(g.port) as c:
            c.send(req_bytes("GET", "/hello"))
            eq(c.read_response().status, 200, "first")
            time.sleep(0.5)
            c.send(req_bytes("GET", "/hello"))
            eq(c.read_response().status, 200, "second, within the idle timeout")
            t0 = time.monotonic()
            assert c.closed_by_peer(4), "idle keep-alive connection not closed (timeouts.idle = 1)"
            took = time.monotonic() - t0
            assert 0.7 <= took <= 3, "closed after %.2fs idle" % took
            eq(c.buf, b"", "nothing sent on an idle close")


def test_pipelining():
    with Gateway(BASIC) as g:
        with Conn(g.port) as c:
            c.send(req_bytes("GET", "/seq/1") + req_bytes("GET", "/seq/2")
                   + req_bytes("GET", "/seq/3"))
            got = [c.read_response() for _ in range(3)]
            eq([(r.status, r.body) for r in got],
               [(200, b"r1"), (200, b"r2"), (200, b"r3")], "answers in order")


def test_pipelining_deep():
    with Gateway(BASIC) as g:
        with Conn(g.port) as c:
            n = 100
            c.send(b"".join(req_bytes("GET", "/hello" if i % 2 else "/nope") for i in range(n)))
            got = [c.read_response(timeout=10).status for _ in range(n)]
            eq(got, [404 if i % 2 == 0 else 200 for i in range(n)], "100 pipelined answers")


def test_pipelined_post_bodies():
    with Gateway(BASIC) as g:
        with Conn(g.port) as c:
            c.send(req_bytes("POST", "/echo", [("Content-Length", "3")], b"one")
                   + req_bytes("POST", "/ignore", [("Content-Length", "5")], b"GET /")
                   + req_bytes("POST", "/echo", [("Transfer-Encoding", "chunked")],
                               b"3\r\ntwo\r\n0\r\n\r\n")
                   + req_bytes("GET", "/hello"))
            got = [c.read_response() for _ in range(4)]
            eq([(r.status, r.body) for r in got],
               [(200, b"one"), (200, b"ignored"), (200, b"two"), (200, b"hello")],
               "bodies (read or not) are framed correctly")


def test_chunked_request_body():
    with Gateway(BASIC) as g:
        with Conn(g.port) as c:
            c.send(req_bytes("POST", "/echo", [("Transfer-Encoding", "chunked")]))
            for part in (b"4\r\nabcd\r\n", b"A\r\n0123456789\r\n", b"0\r\n", b"\r\n"):
                time.sleep(0.05)
                c.send(part)
            r = c.read_response()
            eq((r.status, r.body), (200, b"abcd0123456789"), "chunked body in pieces")


def test_chunked_trailers_are_dropped():
    # Trailer fields are not the head: they must not reach req.headers or
    # req:header_list(), however their bytes are split across reads (a name
    # split across two reads once read past the buffer's end).
    import json
    with Gateway(BASIC) as g:
        for pieces in ([b"0\r\nX-Api-Key: secret\r\nHost: evil\r\n\r\n"],
                       [b"0\r\nX-Ap", b"i-Key: sec", b"ret\r\nHo", b"st: evil\r\n\r\n"]):
            with Conn(g.port) as c:
                c.send(req_bytes("POST", "/seen", [("Transfer-Encoding", "chunked")]) + b"5\r\nhello\r\n")
                for part in pieces:
                    time.sleep(0.05)
                    c.send(part)
                r = c.read_response()
                eq(r.status, 200, "answer to a body with trailers")
                doc = json.loads(r.body)
                eq((doc["body"], doc["host"], doc["key"]), ("hello", "t", False),
                   "body, Host and X-Api-Key after trailers %r" % pieces)
                eq(doc["headers"], "host=t,transfer-encoding=chunked", "header list")
                # The connection goes on with the next request.
                c.send(req_bytes("GET", "/hello"))
                eq(c.read_response().body, b"hello", "next request on the connection")


def test_chunked_trailers_too_large_fail_the_body():
    with Gateway(LIMITS) as g:
        with Conn(g.port) as c:
            c.send(req_bytes("POST", "/seen", [("Transfer-Encoding", "chunked")]) + b"5\r\nhello\r\n0\r\n")
            for i in range(10):  # under limits.headers, over limits.header_bytes
                c.send(b"X-T%d: %s\r\n" % (i, b"t" * 200))
            c.send(b"\r\n")
            r = c.read_response(timeout=3)
            eq(r.status, 400, "trailers over limits.header_bytes fail the body")
            assert c.closed_by_peer(3), "connection kept after a failed body"
        eq(g.get("/hello")[0], 200, "still serving")


def test_blank_lines_before_a_request_are_bounded():
    # llhttp skips CR LF before a request line without beginning a message;
    # an endless stream of them must be refused, not buffered without end.
    with Gateway(LIMITS) as g:
        with Conn(g.port) as c:
            c.send(b"\r\n" * 4)
            c.send(req_bytes("GET", "/hello"))
            eq(c.read_response().body, b"hello", "a few blank lines before a request are ignored")
        with Conn(g.port) as c:
            t0 = time.monotonic()
            try:
                for _ in range(200):
                    c.send(b"\r\n" * 512)
            except OSError:
                pass  # the gateway refused and closed while we were sending
            data = c.read_until_close(3)
            check_error(data, 431)
            assert time.monotonic() - t0 < 2, "refused only after %.1fs" % (time.monotonic() - t0)
        # The same bound when the blank lines and the whole request come in
        # one read (the request was served).
        with Conn(g.port) as c:
            c.send(b"\r\n" * 3500 + req_bytes("GET", "/hello"))  # 7000 bytes: over 2 * 1024 + 4096
            check_error(c.read_until_close(3), 431)
        eq(g.get("/hello")[0], 200, "still serving")


def test_half_close_after_pipelined_requests():
    # A client may send its requests, then its FIN (shutdown(SHUT_WR)), and
    # read: every request sent before the FIN is answered, in order, also
    # when the first handler waits, and then the connection closes.
    with Gateway(BASIC) as g:
        for tail in (b"", b"GET /hello HTTP/1.1\r\nHo"):
            with Conn(g.port) as c:
                c.send(b"".join(req_bytes("GET", "/seq/%d" % n) for n in (1, 2, 3)) + tail)
                c.sock.shutdown(socket.SHUT_WR)
                rs = parse_all(c.read_until_close(5))
                eq([(r.status, r.body) for r in rs], [(200, b"r1"), (200, b"r2"), (200, b"r3")],
                   "answers before the FIN (then %r)" % tail)
        # A large answer still being written when the FIN arrives goes out
        # whole: the FIN comes while the handler waits, or after it answered
        # (the answer then sat in the write queue and was dropped).
        for path, pause in (("/big/3000000", 0), ("/bignow/8000000", 0.2)):
            with Conn(g.port) as c:
                c.send(req_bytes("GET", path))
                time.sleep(pause)
                c.sock.shutdown(socket.SHUT_WR)
                time.sleep(0.3)
                rs = parse_all(c.read_until_close(10))
                eq([(r.status, len(r.body)) for r in rs], [(200, int(path.split("/")[2]))],
                   "large answer %s with a FIN" % path)
        eq(g.get("/hello")[0], 200, "still serving")


def test_line_ends_and_versions_refused():
    # Lines end in CR LF: llhttp refuses a bare LF ending a header line, and
    # the gateway also one ending the request line or as the blank line.
    # HTTP/0.9 and other major versions are not spoken.
    with Gateway(BASIC) as g:
        for data, status, why in (
                (b"GET /hello HTTP/1.1\r\nHost: t\r\n\nGET /hello HTTP/1.1\r\nHost: x\r\n\r\n", 400,
                 "bare LF as the blank line"),
                (b"GET /hello HTTP/1.1\nHost: t\r\n\r\n", 400, "bare LF after the request line"),
                (b"POST /echo HTTP/1.1\r\nHost: t\r\nContent-Length: 5\r\n\nhello", 400,
                 "bare LF before a body"),
                (b"GET /hello\r\n\r\n", 400, "HTTP/0.9 request line"),
                (b"GET /hello HTTP/2.0\r\nHost: t\r\n\r\n", 505, "HTTP/2.0 request line")):
            rs = parse_all(raw(g.port, data))
            eq([r.status for r in rs], [status], why)
        eq(g.get("/hello")[0], 200, "still serving")


def test_http10_transfer_encoding_and_expect():
    # RFC 9112 6.1: Transfer-Encoding in an HTTP/1.0 message is faulty
    # framing. RFC 9110 10.1.1: an HTTP/1.0 client's 100-continue is ignored
    # (no 1xx answer to a 1.0 client).
    with Gateway(BASIC) as g:
        data = raw(g.port, req_bytes("POST", "/echo", [("Transfer-Encoding", "chunked"),
                                                       ("Connection", "keep-alive")],
                                     b"5\r\nhello\r\n0\r\n\r\n", version="HTTP/1.0")
                   + req_bytes("GET", "/hello"))
        eq([r.status for r in parse_all(data)], [400], "HTTP/1.0 with Transfer-Encoding")
        with Conn(g.port) as c:
            c.send(req_bytes("POST", "/echo", [("Content-Length", "5"), ("Expect", "100-continue")],
                             version="HTTP/1.0", host=None))
            time.sleep(0.2)
            c.send(b"hello")
            rs = parse_all(c.read_until_close(3))
            eq([(r.status, r.body) for r in rs], [(200, b"hello")], "no 100 Continue to an HTTP/1.0 client")


def test_absolute_form_target():
    # RFC 9112 3.2.2: an absolute-form target is accepted, routed by its
    # path, and its authority is the host (the Host header is ignored).
    import json
    with Gateway(BASIC) as g:
        for target, want in (("http://t/where/a?x=1", {"path": "/where/a", "host": "t", "x": "1"}),
                             ("HTTPS://ex.example:8443/where/b", {"path": "/where/b", "host": "ex.example",
                                                                  "x": False}),
                             ("http://ex.example?x=2", {"path": "/", "host": "ex.example", "x": "2"}),
                             ("http://ex.example", {"path": "/", "host": "ex.example", "x": False})):
            rs = parse_all(raw(g.port, req_bytes("GET", target, [("Connection", "close")], host="other")))
            eq([r.status for r in rs], [200], target)
            eq(json.loads(rs[0].body), want, target)
        for target in ("http://user@t/where/a", "http:///where/a"):
            rs = parse_all(raw(g.port, req_bytes("GET", target)))
            eq([r.status for r in rs], [400], target)


def test_half_close_with_a_body_cut_short():
    # A request whose body the FIN cut short fails its body read at once
    # (400), after the requests before it were answered; it does not wait
    # for timeouts.body.
    with Gateway(BASIC) as g:
        with Conn(g.port) as c:
            t0 = time.monotonic()
            c.send(req_bytes("GET", "/seq/3") +
                   req_bytes("POST", "/echo", [("Content-Length", "10")], b"abc"))
            c.sock.shutdown(socket.SHUT_WR)
            rs = parse_all(c.read_until_close(5))
            eq([r.status for r in rs], [200, 400], "the first answered, the cut body refused")
            assert time.monotonic() - t0 < 2, "waited %.1fs" % (time.monotonic() - t0)


def test_http10_client():
    with Gateway(BASIC) as g:
        data = raw(g.port, req_bytes("GET", "/hello", version="HTTP/1.0", host=None), timeout=3)
        rs = parse_all(data)
        eq(len(rs), 1, "one response then close")
        eq((rs[0].status, rs[0].body), (200, b"hello"), "HTTP/1.0 answer")
        assert "chunked" not in rs[0].headers.get("transfer-encoding", ""), rs[0].headers
        # With keep-alive asked, the connection stays open.
        with Conn(g.port) as c:
            c.send(req_bytes("GET", "/hello", [("Connection", "keep-alive")], version="HTTP/1.0"))
            r1 = c.read_response()
            eq((r1.status, r1.body), (200, b"hello"), "HTTP/1.0 keep-alive answer")
            eq(r1.headers.get("connection", "").lower(), "keep-alive", "Connection header")
            c.send(req_bytes("GET", "/hello", version="HTTP/1.0"))
            r2 = c.read_response()
            eq((r2.status, r2.body), (200, b"hello"), "second request on the 1.0 connection")
            assert c.closed_by_peer(2), "closed after a 1.0 request without keep-alive"


def test_expect_100_continue():
    with Gateway(BASIC) as g:
        with Conn(g.port) as c:
            c.send(req_bytes("POST", "/echo", [("Content-Length", "5"),
                                               ("Expect", "100-continue")]))
            r = c.read_response(timeout=3)
            eq(r.status, 100, "interim response before the body is sent")
            c.send(b"hello")
            r = c.read_response()
            eq((r.status, r.body), (200, b"hello"), "final response")


def test_expect_100_too_large_is_413():
    with Gateway(LIMITS) as g:
        with Conn(g.port) as c:
            c.send(req_bytes("POST", "/echo", [("Content-Length", "5000"),
                                               ("Expect", "100-continue")]))
            r = c.read_response(timeout=3)
            check_error(r, 413)


def _status(data):
    return int(data[9:12]) if data.startswith(b"HTTP/1.") else data[:80]


def test_limit_414_long_target():
    with Gateway(LIMITS) as g:
        data = raw(g.port, req_bytes("GET", "/hello?" + "a" * 2000))
        check_error(data, 414)
        eq(g.get("/hello")[0], 200, "still serving")


def test_limit_431_head_too_big():
    with Gateway(LIMITS) as g:
        data = raw(g.port, req_bytes("GET", "/hello", [("X-Big", "b" * 2000)]))
        check_error(data, 431)


def test_limit_431_too_many_headers():
    with Gateway(LIMITS) as g:
        data = raw(g.port, req_bytes("GET", "/hello", [("X-H%d" % i, "v") for i in range(30)]))
        check_error(data, 431)
        # 10 headers is under the limit.
        data = raw(g.port, req_bytes("GET", "/hello", [("X-H%d" % i, "v") for i in range(10)]
                                     + [("Connection", "close")]))
        eq(_status(data), 200, "under the limit")


def test_limit_413_body():
    with Gateway(LIMITS) as g:
        data = raw(g.port, req_bytes("POST", "/echo", [("Content-Length", "2048")], b"x" * 2048))
        check_error(data, 413)
        chunks = b"".join(b"100\r\n" + b"y" * 256 + b"\r\n" for _ in range(8)) + b"0\r\n\r\n"
        data = raw(g.port, req_bytes("POST", "/echo", [("Transfer-Encoding", "chunked")], chunks))
        check_error(data, 413)
        st, _, body = g.http("POST", "/echo", body=b"z" * 1000)
        eq((st, body), (200, b"z" * 1000), "body under the limit")


def test_limit_boundaries():
    with Gateway(LIMITS) as g:
        # Host + 19 = 20 headers is the limit itself; 21 is over.
        hdrs = [("X-H%d" % i, "v") for i in range(18)] + [("Connection", "close")]
        eq(_status(raw(g.port, req_bytes("GET", "/hello", hdrs))), 200, "exactly limits.headers")
        check_error(raw(g.port, req_bytes("GET", "/hello", hdrs + [("X-One-More", "v")])), 431)
        st, _, body = g.http("POST", "/echo", body=b"b" * 1024)
        eq((st, len(body)), (200, 1024), "body of exactly body_bytes")
        check_error(raw(g.port, req_bytes("POST", "/echo", [("Content-Length", "1025")], b"b" * 1025)), 413)


def test_body_timeout_closes():
    cfg = r'''local gw = require "gateway"
gw.config { listen = { "127.0.0.1:$PORT" }, timeouts = { body = 1 } }
''' + APP
    with Gateway(cfg) as g:
        with Conn(g.port) as c:
            t0 = time.monotonic()
            c.send(req_bytes("POST", "/echo", [("Content-Length", "10")], b"abc"))
            data = c.read_until_close(timeout=5)
            took = time.monotonic() - t0
        assert took <= 3.5, "stalled body kept for %.2fs with timeouts.body = 1" % took
        rs = parse_all(data)
        if rs:
            assert rs[0].status >= 400, "stalled body answered %d" % rs[0].status
        eq(g.get("/hello")[0], 200, "still serving")


def test_limit_408_header_timeout():
    with Gateway(LIMITS) as g:
        with Conn(g.port) as c:
            t0 = time.monotonic()
            c.send(b"GET /hello HTTP/1.1\r\nHost: t\r\n")
            data = c.read_until_close(timeout=5)
            took = time.monotonic() - t0
        check_error(data, 408)
        assert 0.8 <= took <= 3.5, "closed after %.2fs with timeouts.header = 1" % took


def test_huge_timeouts_mean_long_not_zero():
    # 1e300 s in milliseconds does not fit a uint64_t: the unchecked
    # conversion gave 0 (an immediate 408 for any head in two pieces).
    # Timeouts past a year are a year (src/config.h GW_MAX_SECONDS).
    cfg = LIMITS.replace("timeouts = { header = 1 }",
                         "timeouts = { header = 1e300, idle = math.huge, body = 1e300 }")
    with Gateway(cfg) as g:
        with Conn(g.port) as c:
            c.send(b"GET /hello HTTP/1.1\r\nHost: t\r\n")
            time.sleep(0.3)
            c.send(b"\r\n")
            r = c.read_response()
            eq(r.status, 200, "a head in two writes 0.3 s apart")
            time.sleep(0.3)
            assert not c.closed_by_peer(0.2), "idle keep-alive connection closed at once"
            c.send(req_bytes("GET", "/hello"))
            eq(c.read_response().status, 200, "the next request on it")


# Requests that could smuggle another one past a proxy: each must be refused
# with 400 and the connection closed, and nothing after it may be answered.
SMUGGLE = {
    "cl_and_te": req_bytes("POST", "/echo", [("Content-Length", "45"),
                                             ("Transfer-Encoding", "chunked")],
                           b"0\r\n\r\nGET /hello HTTP/1.1\r\nHost: t\r\n\r\n"),
    "duplicate_cl": req_bytes("POST", "/echo", [("Content-Length", "5"),
                                                ("Content-Length", "6")], b"hello!"),
    "cl_list": req_bytes("POST", "/echo", [("Content-Length", "5, 6")], b"hello!"),
    "bad_chunk_size": req_bytes("POST", "/echo", [("Transfer-Encoding", "chunked")],
                                b"zz\r\nhello\r\n0\r\n\r\n"),
    "chunk_size_overflow": req_bytes("POST", "/echo", [("Transfer-Encoding", "chunked")],
                                     b"1" + b"0" * 20 + b"\r\nhello\r\n0\r\n\r\n"),
    "te_not_chunked_last": req_bytes("POST", "/echo", [("Transfer-Encoding", "chunked, identity")],
                                     b"5\r\nhello\r\n0\r\n\r\n"),
    "obs_fold": b"GET /hello HTTP/1.1\r\nHost: t\r\nX-A: a\r\n folded\r\n\r\n",
    "bare_cr_in_value": b"GET /hello HTTP/1.1\r\nHost: t\r\nX-A: a\rb\r\n\r\n",
    "bare_cr_line_end": b"GET /hello HTTP/1.1\r\nHost: t\rX-A: b\r\n\r\n",
    "space_before_colon": b"GET /hello HTTP/1.1\r\nHost: t\r\nX-A : b\r\n\r\n",
    "http11_without_host": b"GET /hello HTTP/1.1\r\nX-A: b\r\n\r\n",
}


def _make_smuggle_test(case, data):
    def test():
        with Gateway(BASIC) as g:
            follow = req_bytes("GET", "/hello")
            got = raw(g.port, data + follow, timeout=5)
            rs = parse_all(got)
            assert rs, "%s: no response at all: %r" % (case, got[:300])
            check_error(rs[0], 400)
            eq(len(rs), 1, "%s: responses after the 400 (%r)" % (case, got[:600]))
            eq(g.get("/hello")[0], 200, "still serving")
    test.__name__ = "test_smuggle_" + case
    return test


for _case, _data in SMUGGLE.items():
    globals()["test_smuggle_" + _case] = _make_smuggle_test(_case, _data)


def test_bad_request_line_is_400():
    with Gateway(BASIC) as g:
        for bad in (b"GARBAGE\r\n\r\n", b"GET /hello HTTP/9.9\r\nHost: t\r\n\r\n",
                    b"GET hello world HTTP/1.1\r\nHost: t\r\n\r\n"):
            check_error(raw(g.port, bad), 400)
        eq(g.get("/hello")[0], 200, "still serving")


def test_client_closes_mid_request():
    with Gateway(BASIC) as g:
        for part in (b"GET /hel", b"POST /echo HTTP/1.1\r\nHost: t\r\nContent-Length: 10\r\n\r\nabc"):
            s = socket.create_connection(("127.0.0.1", g.port), timeout=2)
            s.sendall(part)
            s.close()
        s = socket.create_connection(("127.0.0.1", g.port), timeout=2)
        s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        s.sendall(b"GET /seq/1 HTTP/1.1\r\nHost: t\r\n\r\n")
        s.close()  # RST while the handler sleeps
        time.sleep(0.5)
        eq(g.get("/hello")[:3:2], (200, b"hello"), "still serving")
        assert g.proc.poll() is None, "gateway died"


def test_pipelining_without_reading_is_bounded():
    # A client that pipelines and never reads once made the worker keep
    # every answer (hundreds of MB in seconds). Past 256 KB of answers the
    # client has not taken, no further request starts and reading stops;
    # everything is answered, in order, once the client reads.
    import threading
    cfg = BASIC + 'local big = string.rep("x", 16384)\ngw.get("/piped/:n", function(req) return big .. req.params.n end)\n'
    n = 3000  # 48 MB of answers
    with Gateway(cfg) as g:
        pid = g.worker_pids()[0]
        g.get("/piped/0")
        before = proc_status(pid, "VmRSS")
        s = socket.create_connection(("127.0.0.1", g.port))
        s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 65536)
        data = b"".join(req_bytes("GET", "/piped/%d" % i) for i in range(n))
        sender = threading.Thread(target=lambda: s.sendall(data), daemon=True)
        sender.start()
        time.sleep(1.0)  # the gateway answers what it may, then waits
        grew = proc_status(pid, "VmRSS") - before
        assert grew < 20 * 1024, "worker RSS grew by %d KB while the client did not read" % grew
        s.settimeout(10)
        got, count, want = b"", 0, 0
        while count < n:
            chunk = s.recv(1 << 20)
            assert chunk, "closed after %d answers" % count
            got += chunk
            while True:
                end = got.find(b"\r\n\r\n")
                if end < 0:
                    break
                head = got[:end].decode()
                length = int([l.split(":")[1] for l in head.split("\r\n") if l.lower().startswith("content-length")][0])
                if len(got) < end + 4 + length:
                    break
                body = got[end + 4:end + 4 + length]
                eq(body[16384:], str(want).encode(), "answer %d in order" % want)
                got = got[end + 4 + length:]
                count += 1
                want += 1
        s.close()
        sender.join(5)


def test_a_slow_reader_of_a_large_answer_is_not_cut_off():
    # timeouts.idle started when the request ended, answer queued or not: a
    # client taking an 8 MB answer for longer than that lost the rest. It
    # now counts while the client takes nothing; a client that stops
    # reading is still closed after it.
    cfg = r'''local gw = require "gateway"
gw.config { listen = { "127.0.0.1:$PORT" }, timeouts = { idle = 1 } }
local big = string.rep("x", 8 * 1024 * 1024)
gw.get("/big", function() return big end)
'''
    with Gateway(cfg) as g:
        s = socket.create_connection(("127.0.0.1", g.port))
        s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 16384)
        s.sendall(req_bytes("GET", "/big"))
        s.settimeout(5)
        got, t0 = 0, time.monotonic()
        while got < 8 * 1024 * 1024:
            d = s.recv(16384)
            if not d:
                break
            got += len(d)
            time.sleep(0.01)  # about 1.6 MB/s: over 3 s for the answer
        took = time.monotonic() - t0
        assert got >= 8 * 1024 * 1024, "cut off after %d bytes and %.1f s" % (got, took)
        assert took > 2, "the client was slower than timeouts.idle (%.1f s)" % took
        s.close()
        # A client that reads nothing at all is closed after timeouts.idle.
        s = socket.create_connection(("127.0.0.1", g.port))
        s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 16384)
        s.sendall(req_bytes("GET", "/big"))
        time.sleep(3)
        s.settimeout(5)
        total = 0
        while True:
            d = s.recv(1 << 20)
            if not d:
                break
            total += len(d)
        assert total < 8 * 1024 * 1024, "a client that stalled got the whole answer"
        s.close()


def test_a_half_close_while_answers_wait_loses_no_request():
    # Pipelined requests held back for a client that does not read yet
    # (over 256 KB of answers waiting) were dropped when its FIN came.
    cfg = BASIC + '''
local big = string.rep("x", 200000)
gw.get("/slowbig/:n", function(req) gw.sleep(0.01) return big .. req.params.n end)
gw.get("/fastbig/:n", function(req) return big .. req.params.n end)
'''
    with Gateway(cfg) as g:
        for path in ("slowbig", "fastbig"):
            s = socket.create_connection(("127.0.0.1", g.port))
            s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 16384)
            s.sendall(b"".join(req_bytes("GET", "/%s/%d" % (path, i)) for i in range(40)))
            s.shutdown(socket.SHUT_WR)
            time.sleep(0.5)
            s.settimeout(5)
            got = b""
            while True:
                d = s.recv(1 << 20)
                if not d:
                    break
                got += d
            s.close()
            eq(got.count(b"HTTP/1.1 200 "), 40, "%s: every request sent before the FIN answered" % path)
