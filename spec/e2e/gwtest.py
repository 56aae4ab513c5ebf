"""Shared harness for the end-to-end tests in spec/e2e/.

Every test runs a real bin/gateway (the path comes from the GW_BIN environment
variable, default bin/gateway under the repository root) on loopback ports,
talks to it over 127.0.0.1 only, and stops every process it started by PID.

What is here:

  Gateway(config, workers=1, files=None, args=())
      A context manager that writes `config` as gateway.lua into a fresh
      temporary directory (plus `files`, a dict name -> text, beside it),
      replaces the tokens $PORT, $PORT2, $PORT3... with distinct free ports and
      $DIR with the directory, starts the binary with stdout/stderr sent to
      files in that directory, and waits until $PORT accepts a connection.
      On exit it sends SIGTERM to the master, waits up to 10 s, then SIGKILLs
      it (and any worker it had that is still alive), and removes the
      directory.
  http(port, method, path, headers=None, body=None, timeout=5)
      One request through http.client: (status, headers, body).
  raw(port, data, timeout=5, read_until_close=True)
      Sends raw bytes and returns what comes back (all of it until the server
      closes, or the first complete response).
  Conn(port)
      A raw connection with read_response() for keep-alive and pipelining.
  parse_response(buf, head=False, eof=False)
      A small HTTP/1.x response parser for raw bytes.
  curl(*args), run_cli(args, files)
      The real curl binary; the gateway binary run to completion (-t, -v).
  worker_pids(master_pid)
      The children of a master, read from /proc.
  wait_for(fn, timeout)
      Polls fn until it returns a true value.

The test runner (spec/run.py) calls reap_all() after every test so that a
failed or timed-out test cannot leave a gateway behind.
"""

import http.client as httpclient
import os
import re
import shutil
import signal
import socket
import subprocess
import tempfile
import threading
import time

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

# The configuration prelude most tests start with.
PRELUDE = 'local gw = require "gateway"\ngw.config { listen = { "127.0.0.1:$PORT" } }\n'


def gw_bin():
    """Absolute path of the gateway binary under test."""
    path = os.environ.get("GW_BIN", "bin/gateway")
    if not os.path.isabs(path):
        path = os.path.join(ROOT, path)
    return path


# Every Gateway started and not yet stopped; reap_all() stops them.
_live = []
# Every Gateway started since the last reap_all(), for failure reports.
_started = []


def free_port():
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    try:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]
    finally:
        s.close()


def run_concurrently(threads, calls, fn, timeout=30):
    """Calls fn() `calls` times in each of `threads` threads at once; returns
    (results, errors): fn's return values and the repr of what it raised."""
    results, errors, lock = [], [], threading.Lock()

    def client():
        for _ in range(calls):
            try:
                r = fn()
                with lock:
                    results.append(r)
            except Exception as e:  # reported to the caller
                with lock:
                    errors.append(repr(e))
    ts = [threading.Thread(target=client) for _ in range(threads)]
    for t in ts:
        t.start()
    for t in ts:
        t.join(timeout)
    return results, errors


def wait_for(fn, timeout=5.0, interval=0.02):
    """Calls fn until it returns a true value (returned) or timeout passes (None)."""
    deadline = time.monotonic() + timeout
    while True:
        v = fn()
        if v:
            return v
        if time.monotonic() >= deadline:
            return None
        time.sleep(interval)


def pid_alive(pid):
    """True if pid exists and is not a zombie."""
    try:
        with open("/proc/%d/stat" % pid) as f:
            stat = f.read()
    except OSError:
        return False
    state = stat.rsplit(")", 1)[1].split()[0]
    return state != "Z"


def _proc_stat(pid):
    try:
        with open("/proc/%d/stat" % pid) as f:
            fields = f.read().rsplit(")", 1)[1].split()
        return fields  # fields[0] = state, fields[1] = ppid, fields[19] = starttime
    except (OSError, IndexError):
        return None


def worker_pids(master_pid):
    """Sorted PIDs of the live children of master_pid."""
    out = []
    for name in os.listdir("/proc"):
        if not name.isdigit():
            continue
        st = _proc_stat(int(name))
        if st and st[1] == str(master_pid) and st[0] != "Z":
            out.append(int(name))
    return sorted(out)


def proc_status(pid, field):
    """The number a /proc/PID/status line gives for field ("VmRSS" in kB,
    "voluntary_ctxt_switches")."""
    with open("/proc/%d/status" % pid) as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    raise AssertionError("no %s in /proc/%d/status" % (field, pid))


class GatewayError(AssertionError):
    pass


class Gateway:
    """A running gateway; see the module docstring."""

    def __init__(self, config, workers=1, files=None, args=(), wait=True,
                 env=None, start_timeout=10.0):
        self.dir = tempfile.mkdtemp(prefix="gwtest-")
        self.ports = {}
        self.config_text = self._substitute(config)
        self.files = {k: self._substitute(v) for k, v in (files or {}).items()}
        self.workers = workers
        self.args = list(args)
        self.wait = wait
        self.env = env
        self.start_timeout = start_timeout
        self.proc = None
        self.returncode = None
        self._known_workers = set()
        self.leaked = []  # workers still alive after the master was stopped
        self._final = None

    # $PORT, $PORT2, ... become distinct free ports; $DIR the temp dir.
    def _substitute(self, text):
        def port(m):
            key = m.group(0)
            if key not in self.ports:
                p = free_port()
                while p in self.ports.values():
                    p = free_port()
                self.ports[key] = p
            return str(self.ports[key])
        text = re.sub(r"\$PORT\d*", port, text)
        return text.replace("$DIR", self.dir)

    @property
    def port(self):
        return self.ports.get("$PORT")

    @property
    def port2(self):
        return self.ports.get("$PORT2")

    @property
    def pid(self):
        return self.proc.pid if self.proc else None

    @property
    def config_path(self):
        return os.path.join(self.dir, "gateway.lua")

    def url(self, path="/"):
        return "http://127.0.0.1:%d%s" % (self.port, path)

    def __enter__(self):
        self.start()
        return self

    def __exit__(self, *exc):
        self.close()
        return False

    def start(self):
        for name, text in self.files.items():
            path = os.path.join(self.dir, name)
            os.makedirs(os.path.dirname(path), exist_ok=True)
            with open(path, "w") as f:
                f.write(text)
        with open(self.config_path, "w") as f:
            f.write(self.config_text)
        binary = gw_bin()
        if not os.access(binary, os.X_OK):
            raise GatewayError("gateway binary not found: %s" % binary)
        cmd = [binary, "-c", self.config_path]
        if self.workers is not None:
            cmd += ["-w", str(self.workers)]
        cmd += self.args
        env = dict(os.environ)
        if self.env:
            env.update(self.env)
        self._out = open(os.path.join(self.dir, "stdout.txt"), "wb")
        self._err = open(os.path.join(self.dir, "stderr.txt"), "wb")
        self.proc = subprocess.Popen(cmd, cwd=self.dir, stdin=subprocess.DEVNULL,
                                     stdout=self._out, stderr=self._err, env=env)
        _live.append(self)
        _started.append(self)
        if self.wait and self.port:
            self.wait_ready()

    def wait_ready(self, timeout=None):
        """Waits until $PORT accepts a TCP connection; raises with stderr if the
        process exits or the time runs out. The master holds the listening
        sockets, so this says the master is up, not that a worker has loaded
        the file: a request waits for the workers, but a test that rewrites
        the file at once must first wait for an answer."""
        deadline = time.monotonic() + (timeout or self.start_timeout)
        while True:
            rc = self.proc.poll()
            if rc is not None:
                raise GatewayError("gateway exited with %s before listening; stderr:\n%s"
                                   % (rc, self.stderr_text()[-3000:]))
            try:
                s = socket.create_connection(("127.0.0.1", self.port), timeout=0.5)
                s.close()
                self._remember_workers()
                return
            except OSError:
                pass
            if time.monotonic() >= deadline:
                raise GatewayError("gateway not listening on %d after %.0fs; stderr:\n%s"
                                   % (self.port, timeout or self.start_timeout,
                                      self.stderr_text()[-3000:]))
            time.sleep(0.02)

    def worker_pids(self):
        pids = worker_pids(self.pid)
        self._known_workers.update(pids)
        return pids

    def _remember_workers(self):
        if self.proc and self.proc.poll() is None:
            self.worker_pids()

    def wait_workers(self, n, timeout=5.0):
        """Waits until the master has exactly n children; returns their PIDs (or
        the last list seen)."""
        got = wait_for(lambda: (lambda p: p if len(p) == n else None)(self.worker_pids()),
                       timeout)
        return got or self.worker_pids()

    def send_signal(self, sig):
        self._remember_workers()
        os.kill(self.pid, sig)

    def wait_exit(self, timeout=10.0):
        """Waits for the master to exit; returns its status or None on timeout."""
        try:
            self.returncode = self.proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            return None
        return self.returncode

    def stop(self, sig=signal.SIGTERM, timeout=10.0):
        """Stops the master (sig, then SIGKILL after timeout) and kills any of
        its workers still alive afterwards. Returns the master's exit status."""
        if self.proc is None:
            return None
        if self.proc.poll() is None:
            self._remember_workers()
            try:
                os.kill(self.pid, sig)
            except ProcessLookupError:
                pass
            if self.wait_exit(timeout) is None:
                os.kill(self.pid, signal.SIGKILL)
                self.proc.wait()
        self.returncode = self.proc.returncode
        # Workers must go with the master; any left is killed (by PID, and only
        # if it is still the child we saw, i.e. re-parented, not a reused PID).
        for wpid in sorted(self._known_workers):
            if pid_alive(wpid):
                st = _proc_stat(wpid)
                if st and st[1] != str(self.pid):
                    self.leaked.append(wpid)
                    try:
                        os.kill(wpid, signal.SIGKILL)
                    except ProcessLookupError:
                        pass
        return self.returncode

    def close(self):
        try:
            self.stop()
        finally:
            if self._final is None:
                self._final = (self.stdout_text(), self.stderr_text())
            for f in (getattr(self, "_out", None), getattr(self, "_err", None)):
                if f:
                    f.close()
            if self in _live:
                _live.remove(self)
            shutil.rmtree(self.dir, ignore_errors=True)

    def _read(self, name):
        try:
            with open(os.path.join(self.dir, name), "rb") as f:
                return f.read().decode("utf-8", "replace")
        except OSError:
            return ""

    def stdout_text(self):
        return self._final[0] if self._final else self._read("stdout.txt")

    def stderr_text(self):
        return self._final[1] if self._final else self._read("stderr.txt")

    def wait_stderr(self, needle, timeout=3.0):
        """Waits until stderr contains needle; returns the stderr text either way."""
        wait_for(lambda: needle in self.stderr_text(), timeout)
        return self.stderr_text()

    def wait_stdout_lines(self, n, timeout=3.0):
        """Waits until stdout has at least n complete lines; returns them."""
        def lines():
            text = self.stdout_text()
            ls = [l for l in text.split("\n")[:-1] if l.strip()]
            return ls if len(ls) >= n else None
        got = wait_for(lines, timeout)
        if got is None:
            text = self.stdout_text()
            got = [l for l in text.split("\n")[:-1] if l.strip()]
        return got

    def http(self, method, path, headers=None, body=None, timeout=5):
        return http(self.port, method, path, headers, body, timeout)

    def get(self, path, headers=None, timeout=5):
        return http(self.port, "GET", path, headers, None, timeout)


def reap_all():
    """Stops every gateway still running (called by the runner after each test)
    and returns the list of gateways started since the last call."""
    for g in list(_live):
        try:
            g.close()
        except Exception:
            pass
    started = list(_started)
    del _started[:]
    return started


# ---------------------------------------------------------------------------
# Clients
# ---------------------------------------------------------------------------

def http(port, method, path, headers=None, body=None, timeout=5):
    """One request with http.client on 127.0.0.1:port.
    Returns (status, headers dict with lower-cased names, body bytes); repeated
    headers are joined with ", "."""
    conn = httpclient.HTTPConnection("127.0.0.1", port, timeout=timeout)
    try:
        if isinstance(body, str):
            body = body.encode()
        conn.request(method, path, body=body, headers=headers or {})
        res = conn.getresponse()
        data = res.read()
        hdrs = {}
        for k, v in res.getheaders():
            k = k.lower()
            hdrs[k] = hdrs[k] + ", " + v if k in hdrs else v
        return res.status, hdrs, data
    finally:
        conn.close()


class Response:
    """A parsed raw response."""

    def __init__(self, status, reason, version, headers, body, raw):
        self.status = status
        self.reason = reason
        self.version = version
        self.header_list = headers          # [(name, value)] as received
        self.headers = {}                    # lower-cased, repeats joined by ", "
        for k, v in headers:
            k = k.lower()
            self.headers[k] = self.headers[k] + ", " + v if k in self.headers else v
        self.body = body
        self.raw = raw

    def __repr__(self):
        return "<Response %d %r body=%r>" % (self.status, self.headers, self.body[:200])


class Incomplete(Exception):
    pass


def admin_answers(port):
    """True when a worker answers GET /status on the admin listener at port.
    A connection alone proves nothing: the master holds the listening sockets
    from the start, so they accept before any worker has loaded the file (a
    test that rewrites the file then could have it read by the first load).
    Admin requests are not counted in the metrics."""
    try:
        return http(port, "GET", "/status", timeout=1)[0] == 200
    except OSError:
        return False


def parse_response(buf, head=False, eof=False):
    """Parses one response at the start of buf.
    Returns (Response, rest) or raises Incomplete. head: the request was HEAD.
    eof: the peer has closed (a body without length then ends here)."""
    end = buf.find(b"\r\n\r\n")
    if end < 0:
        raise Incomplete()
    head_bytes = buf[:end].decode("latin-1")
    lines = head_bytes.split("\r\n")
    m = re.match(r"(HTTP/\d\.\d) (\d{3})(?: (.*))?$", lines[0])
    if not m:
        raise AssertionError("bad status line: %r" % lines[0])
    version, status, reason = m.group(1), int(m.group(2)), m.group(3) or ""
    headers = []
    for line in lines[1:]:
        name, sep, value = line.partition(":")
        if not sep:
            raise AssertionError("bad header line in response: %r" % line)
        headers.append((name, value.strip()))
    hmap = {k.lower(): v for k, v in headers}
    pos = end + 4
    if head or 100 <= status < 200 or status in (204, 304):
        return Response(status, reason, version, headers, b"", buf[:pos]), buf[pos:]
    if "chunked" in hmap.get("transfer-encoding", "").lower():
        body = b""
        while True:
            eol = buf.find(b"\r\n", pos)
            if eol < 0:
                raise Incomplete()
            size = int(buf[pos:eol].split(b";")[0].strip(), 16)
            pos = eol + 2
            if size == 0:
                # trailers until an empty line
                while True:
                    eol = buf.find(b"\r\n", pos)
                    if eol < 0:
                        raise Incomplete()
                    line = buf[pos:eol]
                    pos = eol + 2
                    if not line:
                        break
                return Response(status, reason, version, headers, body, buf[:pos]), buf[pos:]
            if len(buf) < pos + size + 2:
                raise Incomplete()
            body += buf[pos:pos + size]
            pos += size + 2
    if "content-length" in hmap:
        n = int(hmap["content-length"])
        if len(buf) < pos + n:
            raise Incomplete()
        return Response(status, reason, version, headers, buf[pos:pos + n], buf[:pos + n]), buf[pos + n:]
    if not eof:
        raise Incomplete()
    return Response(status, reason, version, headers, buf[pos:], buf), b""


def parse_all(buf, eof=True):
    """Every complete response in buf (a connection's whole output)."""
    out = []
    while buf:
        try:
            r, buf = parse_response(buf, eof=eof)
        except Incomplete:
            break
        out.append(r)
    return out


class Conn:
    """A raw client connection to 127.0.0.1:port."""

    def __init__(self, port, timeout=5):
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=timeout)
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.timeout = timeout
        self.buf = b""
        self.eof = False
        self.reset = False

    def send(self, data):
        if isinstance(data, str):
            data = data.encode("latin-1")
        self.sock.sendall(data)

    def _recv(self, deadline):
        left = deadline - time.monotonic()
        if left <= 0:
            raise socket.timeout()
        self.sock.settimeout(left)
        try:
            chunk = self.sock.recv(65536)
        except ConnectionResetError:
            self.reset = True
            self.eof = True
            return
        if not chunk:
            self.eof = True
        self.buf += chunk

    def read_response(self, timeout=None, head=False):
        """The next response (1xx included). Raises AssertionError on timeout or
        if the connection closes before a complete response."""
        deadline = time.monotonic() + (timeout or self.timeout)
        while True:
            try:
                r, self.buf = parse_response(self.buf, head=head, eof=self.eof)
                return r
            except Incomplete:
                pass
            if self.eof:
                raise AssertionError("connection closed before a complete response; got %r"
                                     % self.buf[:500])
            try:
                self._recv(deadline)
            except socket.timeout:
                raise AssertionError("no complete response within %ss; got %r"
                                     % (timeout or self.timeout, self.buf[:500]))

    def read_until_close(self, timeout=None):
        """Everything up to EOF; AssertionError if the peer keeps it open."""
        deadline = time.monotonic() + (timeout or self.timeout)
        while not self.eof:
            try:
                self._recv(deadline)
            except socket.timeout:
                raise AssertionError("connection still open after %ss; got %r"
                                     % (timeout or self.timeout, self.buf[:500]))
        data, self.buf = self.buf, b""
        return data

    def closed_by_peer(self, timeout=1.0):
        """True if the peer closes within timeout (unread data is discarded)."""
        deadline = time.monotonic() + timeout
        while not self.eof:
            try:
                self._recv(deadline)
            except socket.timeout:
                return False
        return True

    def close(self):
        try:
            self.sock.close()
        except OSError:
            pass

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()
        return False


def raw(port, data, timeout=5, read_until_close=True):
    """Sends data on a new connection. read_until_close: returns everything the
    server sends until it closes (AssertionError if it does not within timeout);
    otherwise returns the raw bytes of the first complete response."""
    with Conn(port, timeout) as c:
        c.send(data)
        if read_until_close:
            return c.read_until_close(timeout)
        return c.read_response(timeout).raw


def req_bytes(method, path, headers=(), body=b"", version="HTTP/1.1", host="t"):
    """Builds a raw request; headers is a list of (name, value)."""
    lines = ["%s %s %s" % (method, path, version)]
    if host is not None:
        lines.append("Host: %s" % host)
    for k, v in headers:
        lines.append("%s: %s" % (k, v))
    if isinstance(body, str):
        body = body.encode()
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1") + body


def curl(*args, timeout=20):
    """Runs the curl binary; returns (returncode, stdout, stderr) as text."""
    p = subprocess.run(["curl", *args], stdin=subprocess.DEVNULL, capture_output=True,
                       timeout=timeout)
    return p.returncode, p.stdout.decode("utf-8", "replace"), p.stderr.decode("utf-8", "replace")


def run_cli(args, files=None, timeout=10):
    """Runs the gateway binary to completion in a fresh temp dir holding files
    (name -> text; $DIR and $PORT... are replaced as for Gateway). Returns (returncode, stdout, stderr, dir);
    the dir is removed before returning, its path is only for messages."""
    d = tempfile.mkdtemp(prefix="gwtest-cli-")
    ports = {}

    def sub(text):
        text = re.sub(r"\$PORT\d*", lambda m: str(ports.setdefault(m.group(0), free_port())), text)
        return text.replace("$DIR", d)
    try:
        for name, text in (files or {}).items():
            with open(os.path.join(d, name), "w") as f:
                f.write(sub(text))
        args = [a.replace("$DIR", d) for a in args]
        p = subprocess.Popen([gw_bin(), *args], cwd=d, stdin=subprocess.DEVNULL,
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        try:
            out, err = p.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            p.kill()
            out, err = p.communicate()
            raise AssertionError("gateway %s did not exit within %ss; stderr: %s"
                                 % (" ".join(args), timeout, err.decode("utf-8", "replace")[-2000:]))
        return (p.returncode, out.decode("utf-8", "replace"),
                err.decode("utf-8", "replace"), d)
    finally:
        shutil.rmtree(d, ignore_errors=True)


def line_of(text, needle):
    """1-based line number of the first line of text containing needle."""
    for i, line in enumerate(text.split("\n"), 1):
        if needle in line:
            return i
    raise AssertionError("%r not in text" % needle)


def eq(got, want, what=""):
    """assert got == want with a message showing both."""
    assert got == want, "%s: got %r, want %r" % (what or "value", got, want)


def check_error(resp, status):
    """Asserts that resp (a Response, or raw bytes starting with one) is the
    gateway's JSON error: the status, a JSON body {"error": non-empty string,
    "request_id": non-empty string}, and X-Request-Id equal to request_id when
    the header is sent. Returns the decoded body."""
    import json
    if isinstance(resp, bytes):
        rs = parse_all(resp)
        assert rs, "no response, got %r" % resp[:300]
        resp = rs[0]
    assert resp.status == status, "status: got %d, want %d (%r)" % (resp.status, status, resp.raw[:300])
    ctype = resp.headers.get("content-type", "")
    assert ctype.startswith("application/json"), "content-type %r for a %d" % (ctype, status)
    try:
        doc = json.loads(resp.body)
    except ValueError:
        raise AssertionError("error body is not JSON: %r" % resp.body[:300])
    assert isinstance(doc.get("error"), str) and doc["error"], "error field: %r" % doc
    assert isinstance(doc.get("request_id"), str) and doc["request_id"], "request_id: %r" % doc
    if "x-request-id" in resp.headers:
        assert resp.headers["x-request-id"] == doc["request_id"], \
            "X-Request-Id %r != request_id %r" % (resp.headers["x-request-id"], doc["request_id"])
    return doc


def accept_in_threads(srv, serve):
    """Accepts on the listening socket `srv` in a daemon thread until it is
    closed, running serve(conn) in a thread of its own for each connection."""
    import threading

    def accept():
        while True:
            try:
                s, _ = srv.accept()
            except OSError:
                return
            threading.Thread(target=serve, args=(s,), daemon=True).start()
    threading.Thread(target=accept, daemon=True).start()
