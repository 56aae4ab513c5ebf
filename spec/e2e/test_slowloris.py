"""Slowloris, bounded: 1,000 connections each trickle one header byte every
0.5 s for about 4.5 s against timeouts.header = 2. The gateway must close every
one of them (the header timeout counts from the start of the head, not from
the last byte) while ordinary requests keep being answered quickly."""

import socket
import time

from gwtest import Gateway, eq, proc_status, worker_pids

CFG = r'''local gw = require "gateway"
gw.config { listen = { "127.0.0.1:$PORT" }, timeouts = { header = 2 } }
gw.get("/hello", function(req) return "hello" end)
'''

N = 1000


def test_slowloris():
    with Gateway(CFG, workers=1) as g:
        socks = []
        closed = set()
        try:
            for _ in range(N):
                s = socket.create_connection(("127.0.0.1", g.port), timeout=2)
                s.sendall(b"GET /hello HTTP/1.1\r\nHost: t\r\nX-Slow: ")
                s.setblocking(False)
                socks.append(s)
            t0 = time.monotonic()
            slowest = 0.0
            rss_kb = 0
            normal = 0
            while time.monotonic() - t0 < 4.5:
                for i, s in enumerate(socks):
                    if i in closed:
                        continue
                    try:
                        s.recv(4096)
                        # an answer (408) or EOF: the server gave up on it
                        closed.add(i)
                        continue
                    except BlockingIOError:
                        pass
                    except OSError:
                        closed.add(i)
                        continue
                    try:
                        s.send(b"a")
                    except BlockingIOError:
                        pass
                    except OSError:
                        closed.add(i)
                # a normal request in between must be served promptly
                r0 = time.monotonic()
                st, _, body = g.get("/hello", timeout=3)
                slowest = max(slowest, time.monotonic() - r0)
                eq((st, body), (200, b"hello"), "normal request during the attack")
                normal += 1
                for pid in worker_pids(g.pid):
                    rss_kb = max(rss_kb, proc_status(pid, "VmRSS"))
                time.sleep(0.5)
            # Final sweep: collect closes that happened during the last sleep.
            deadline = time.monotonic() + 1.0
            while time.monotonic() < deadline and len(closed) < N:
                for i, s in enumerate(socks):
                    if i in closed:
                        continue
                    try:
                        s.recv(4096)
                        closed.add(i)
                    except BlockingIOError:
                        pass
                    except OSError:
                        closed.add(i)
                time.sleep(0.05)
        finally:
            for s in socks:
                s.close()
        assert normal >= 5, "only %d normal requests made" % normal
        assert slowest < 1.0, "a normal request took %.2fs during the attack" % slowest
        # Each idle slow connection holds one read buffer and a few hundred
        # bytes of state: 1,000 of them stay far below 64 MB.
        assert 0 < rss_kb < 64 * 1024, "worker RSS during the attack: %d kB" % rss_kb
        eq(len(closed), N, "slow connections closed by the gateway within ~5.5 s (header = 2)")
        eq(g.get("/hello")[:3:2], (200, b"hello"), "after the attack")


test_slowloris.timeout = 60
