#!/usr/bin/env python3
"""The gateway's one test runner: `make test` runs
`GW_BIN=bin/gateway python3 spec/run.py` from the repository root.

It runs three layers, in this order, and adds up their counts:

1. C unit tests, spec/c/test_*.c. Each file is one program that #includes the
   .c files it tests (to reach their statics), runs its own tests and prints
   "N passed, N failed" as its last line. The runner builds it with

     cc -std=c11 -D_GNU_SOURCE -Isrc -Ivendor/llhttp -Ibuild \
        $(pkg-config --cflags luajit libuv openssl) FILE -o build/spec/NAME \
        $(pkg-config --libs luajit libuv openssl) -lm [EXTRA]

   where EXTRA is whatever follows "spec-ldflags:" on a line of the file (for
   example `/* spec-ldflags: -lcrypt */`), then runs build/spec/NAME from the
   repository root. A build failure, a crash, a missing summary line or a
   non-zero exit with "0 failed" each count as one failure.

2. Lua unit tests, spec/lua/test_*.lua, each run as `luajit FILE` from the
   repository root; the last line of its output is "N passed, N failed".

3. End-to-end tests, spec/e2e/test_*.py. Every function named test_* in such
   a module is run in this process, one after the other, in the order the
   module defines them, against the real binary (GW_BIN). A test passes when
   it returns and fails when it raises; each has a hard timeout (60 s, or the
   function's `timeout` attribute) enforced with SIGALRM, and every gateway it
   started is stopped afterwards even if it failed.

Arguments are substrings: only tests whose name contains one of them run (for
e2e tests the name is "file::function", e.g. test_http1.py::test_keepalive;
for C and Lua tests it is the file's path). `-x` stops at the first failure.

The last line printed is always "N passed, N failed"; the exit status is 0
only when nothing failed and something passed.
"""

import glob
import importlib.util
import os
import re
import shlex
import signal
import subprocess
import sys
import time
import traceback

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SUMMARY = re.compile(r"^\s*(\d+) passed, (\d+) failed\s*$")
E2E_TIMEOUT = 60          # seconds per e2e test unless the test says otherwise
UNIT_TIMEOUT = 300        # seconds per C or Lua test program

passed = 0
failed = 0
failures = []             # names, for the recap at the end


def out(line=""):
    print(line, flush=True)


def indent(text, n=4, tail=40):
    lines = text.rstrip("\n").split("\n")
    if len(lines) > tail:
        lines = ["..."] + lines[-tail:]
    return "\n".join(" " * n + l for l in lines)


def selected(name, filters):
    return not filters or any(f in name for f in filters)


def record(ok, name, detail=None, elapsed=None):
    global passed, failed
    if ok:
        passed += 1
        out("ok   %s%s" % (name, " (%.1fs)" % elapsed if elapsed is not None else ""))
    else:
        failed += 1
        failures.append(name)
        out("FAIL %s: %s" % (name, detail or ""))


def run_program(name, cmd, timeout):
    """Runs a unit-test program and adds its summary line to the totals."""
    global passed, failed
    t0 = time.monotonic()
    try:
        p = subprocess.run(cmd, cwd=ROOT, stdin=subprocess.DEVNULL, capture_output=True,
                           timeout=timeout)
    except subprocess.TimeoutExpired:
        record(False, name, "timed out after %ds" % timeout)
        return
    text = (p.stdout + p.stderr).decode("utf-8", "replace")
    elapsed = time.monotonic() - t0
    lines = [l for l in p.stdout.decode("utf-8", "replace").split("\n") if l.strip()]
    m = SUMMARY.match(lines[-1]) if lines else None
    if not m:
        record(False, name, "no 'N passed, N failed' line (exit %d)\n%s"
               % (p.returncode, indent(text)))
        return
    np, nf = int(m.group(1)), int(m.group(2))
    passed += np
    failed += nf
    if nf:
        failures.append(name)
        out("FAIL %s: %d passed, %d failed\n%s" % (name, np, nf, indent(text)))
    elif p.returncode != 0:
        failed += 1
        failures.append(name)
        out("FAIL %s: exit status %d with 0 failed\n%s" % (name, p.returncode, indent(text)))
    else:
        out("ok   %s (%d passed, %.1fs)" % (name, np, elapsed))


def run_c_tests(filters):
    files = sorted(glob.glob(os.path.join(ROOT, "spec/c/test_*.c")))
    files = [f for f in files if selected(os.path.relpath(f, ROOT), filters)]
    if not files:
        return
    os.makedirs(os.path.join(ROOT, "build/spec"), exist_ok=True)
    cflags = subprocess.run(["pkg-config", "--cflags", "luajit", "libuv", "openssl"],
                            capture_output=True, text=True).stdout.split()
    libs = subprocess.run(["pkg-config", "--libs", "luajit", "libuv", "openssl"],
                          capture_output=True, text=True).stdout.split()
    for f in files:
        rel = os.path.relpath(f, ROOT)
        name = os.path.splitext(os.path.basename(f))[0]
        exe = os.path.join("build/spec", name)
        extra = []
        with open(f, errors="replace") as fh:
            for line in fh:
                m = re.search(r"spec-ldflags:\s*(.*?)\s*(\*/)?\s*$", line)
                if m:
                    extra += shlex.split(m.group(1))
        cmd = (["cc", "-std=c11", "-D_GNU_SOURCE", "-Isrc", "-Ivendor/llhttp", "-Ibuild"]
               + cflags + [rel, "-o", exe] + libs + ["-lm"] + extra)
        b = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True)
        if b.returncode != 0:
            record(False, rel, "build failed: %s\n%s" % (" ".join(cmd), indent(b.stderr)))
            continue
        run_program(rel, [os.path.join(ROOT, exe)], UNIT_TIMEOUT)


def run_lua_tests(filters):
    files = sorted(glob.glob(os.path.join(ROOT, "spec/lua/test_*.lua")))
    for f in files:
        rel = os.path.relpath(f, ROOT)
        if selected(rel, filters):
            run_program(rel, ["luajit", rel], UNIT_TIMEOUT)


class TestTimeout(Exception):
    pass


def on_alarm(signum, frame):
    raise TestTimeout("test timed out (hard limit)")


def load_module(path):
    name = os.path.splitext(os.path.basename(path))[0]
    spec = importlib.util.spec_from_file_location(name, path)
    mod = importlib.util.module_from_spec(spec)
    sys.modules[name] = mod
    spec.loader.exec_module(mod)
    return mod


def run_e2e_tests(filters, stop_early):
    e2e = os.path.join(ROOT, "spec/e2e")
    files = sorted(glob.glob(os.path.join(e2e, "test_*.py")))
    if not files:
        return
    sys.path.insert(0, e2e)
    import gwtest
    signal.signal(signal.SIGALRM, on_alarm)
    for f in files:
        base = os.path.basename(f)
        # Load the module only if one of its tests could be selected.
        try:
            mod = load_module(f)
        except Exception:
            if selected(base, filters) or not filters:
                record(False, base + "::<import>", "\n" + indent(traceback.format_exc()))
            continue
        tests = [(n, fn) for n, fn in vars(mod).items()
                 if n.startswith("test_") and callable(fn)
                 and getattr(fn, "__module__", None) == mod.__name__]
        for n, fn in tests:
            name = "%s::%s" % (base, n)
            if not selected(name, filters):
                continue
            limit = int(getattr(fn, "timeout", E2E_TIMEOUT))
            t0 = time.monotonic()
            err = None
            signal.alarm(limit)
            try:
                fn()
            except BaseException as e:  # noqa: B902 - a test may raise anything
                if isinstance(e, KeyboardInterrupt):
                    signal.alarm(0)
                    gwtest.reap_all()
                    raise
                err = e
                tb = traceback.format_exc()
            finally:
                signal.alarm(0)
            # Stop whatever the test left running; this is bounded too.
            signal.alarm(30)
            try:
                started = gwtest.reap_all()
            except TestTimeout:
                started = []
            finally:
                signal.alarm(0)
            elapsed = time.monotonic() - t0
            leaked = [p for g in started for p in g.leaked]
            if err is None:
                record(True, name, elapsed=elapsed)
            else:
                if isinstance(err, TestTimeout):
                    msg = "timed out after %ds" % limit
                else:
                    msg = ("%s: %s" % (type(err).__name__, err)).split("\n")[0][:300]
                detail = msg + "\n" + indent(tb, tail=25)
                for g in started:
                    se = g.stderr_text().strip()
                    if se:
                        detail += "\n    -- gateway stderr (%s, tail):\n%s" % (
                            os.path.basename(g.dir), indent(se, 6, tail=15))
                record(False, name, detail, elapsed)
                if stop_early:
                    return True
            if leaked:
                out("     note: %s left worker(s) %s running after the master exited (killed)"
                    % (name, leaked))
    return False


def main(argv):
    os.chdir(ROOT)
    stop_early = "-x" in argv
    filters = [a for a in argv if a != "-x"]
    t0 = time.monotonic()
    run_c_tests(filters)
    if not (stop_early and failed):
        run_lua_tests(filters)
    if not (stop_early and failed):
        run_e2e_tests(filters, stop_early)
    out()
    if failures:
        out("failed: " + ", ".join(failures))
    out("took %.1fs" % (time.monotonic() - t0))
    out("%d passed, %d failed" % (passed, failed))
    return 0 if failed == 0 and passed > 0 else 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
