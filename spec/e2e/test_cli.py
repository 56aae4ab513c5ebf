"""The command line: -t checks a configuration (with file:line errors, also
from required modules), -v prints versions, bad configurations fail to start."""

import os
import re
import subprocess

from gwtest import PRELUDE, Gateway, GatewayError, eq, gw_bin, line_of, run_cli

GOOD = PRELUDE + r'''
local helper = require "helper"
gw.get("/x", function(req) return helper.greet() end)
'''
HELPER = 'local M = {}\nfunction M.greet() return "hi" end\nreturn M\n'


def test_check_good_config():
    rc, out, err, d = run_cli(["-t", "-c", "$DIR/good.lua"], {"good.lua": GOOD, "helper.lua": HELPER})
    both = out + err
    assert "configuration %s/good.lua is ok" % d in both, "output: %r" % both
    eq(rc, 0, "exit status")


def test_check_does_not_listen():
    # -t only loads and checks: it must work while the port is taken.
    import socket
    s = socket.socket()
    s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    s.bind(("127.0.0.1", 0))
    s.listen(1)
    port = s.getsockname()[1]
    try:
        cfg = GOOD.replace("$PORT", str(port))
        rc, out, err, d = run_cli(["-t", "-c", "$DIR/good.lua"], {"good.lua": cfg, "helper.lua": HELPER})
        assert "is ok" in out + err, out + err
        eq(rc, 0, "exit status with the port in use")
    finally:
        s.close()


def test_check_default_config_path():
    rc, out, err, d = run_cli(["-t"], {"gateway.lua": GOOD, "helper.lua": HELPER})
    both = out + err
    assert re.search(r"configuration \S*gateway\.lua is ok", both), "output: %r" % both
    eq(rc, 0, "exit status")


def test_check_syntax_error():
    bad = PRELUDE + 'gw.get("/x", function(req)\n  local x = = 1\n  return "x"\nend)\n'
    line = line_of(bad, "local x = = 1")
    rc, out, err, d = run_cli(["-t", "-c", "$DIR/bad.lua"], {"bad.lua": bad})
    both = out + err
    assert "bad.lua:%d:" % line in both, "want bad.lua:%d in %r" % (line, both)
    assert "is ok" not in both, both
    eq(rc, 1, "exit status")


def test_check_runtime_error_in_config():
    bad = PRELUDE + 'gw.get("/x", function(req) return "x" end)\nlocal n = nil\nprint(n.field)\n'
    line = line_of(bad, "n.field")
    rc, out, err, d = run_cli(["-t", "-c", "$DIR/bad.lua"], {"bad.lua": bad})
    both = out + err
    assert "bad.lua:%d:" % line in both, "want bad.lua:%d in %r" % (line, both)
    eq(rc, 1, "exit status")


def test_check_bad_route_blames_the_config_line():
    bad = PRELUDE + 'gw.get("/ok", function(req) return "x" end)\ngw.get("no-slash", function(req) return "x" end)\n'
    line = line_of(bad, "no-slash")
    rc, out, err, d = run_cli(["-t", "-c", "$DIR/bad.lua"], {"bad.lua": bad})
    both = out + err
    assert "bad.lua:%d:" % line in both, "want bad.lua:%d in %r" % (line, both)
    eq(rc, 1, "exit status")


def test_check_route_errors_name_the_line_on_the_message_itself():
    # Checked on the message's first line: the traceback after it names the
    # line too, which once hid messages that had none (a bare gw.redis call,
    # gw.upstream number options) or were an internal error (`use = 5`).
    cases = [('gw.route{ method = "GET", path = "/x", use = 5, handler = function() return "x" end }',
              "gw.route: use must be a function or a list of functions"),
             ('gw.get("no-slash", function(req) return "x" end)', "gw.route: pattern must start with '/'"),
             ('gw.redis("redis://")', "gw.redis: the URL has no host"),
             ('gw.upstream("u", { servers = { "127.0.0.1:1" }, retries = -1 })', "gw.upstream: retries must be")]
    for code, msg in cases:
        bad = PRELUDE + code + "\n"
        rc, out, err, d = run_cli(["-t", "-c", "$DIR/bad.lua"], {"bad.lua": bad})
        first = (out + err).splitlines()[0]
        assert ("bad.lua:%d: %s" % (line_of(bad, code), msg)) in first, first
        eq(rc, 1, "exit status")


def test_check_error_in_required_module():
    mod = 'local M = {}\nerror("mylib is broken")\nreturn M\n'
    cfg = PRELUDE + 'local mylib = require "mylib"\n'
    rc, out, err, d = run_cli(["-t", "-c", "$DIR/cfg.lua"], {"cfg.lua": cfg, "mylib.lua": mod})
    both = out + err
    assert "mylib.lua:2:" in both, "want mylib.lua:2 in %r" % both
    assert "mylib is broken" in both, both
    eq(rc, 1, "exit status")


def test_check_syntax_error_in_required_module():
    mod = 'local M = {}\n\nfunction M.f(\nreturn M\n'
    cfg = PRELUDE + 'local mylib = require "mylib"\n'
    rc, out, err, d = run_cli(["-t", "-c", "$DIR/cfg.lua"], {"cfg.lua": cfg, "mylib.lua": mod})
    both = out + err
    assert re.search(r"mylib\.lua:\d+:", both), "want mylib.lua:N in %r" % both
    eq(rc, 1, "exit status")


def test_check_missing_file():
    rc, out, err, d = run_cli(["-t", "-c", "$DIR/nope.lua"])
    both = out + err
    assert "nope.lua" in both, both
    eq(rc, 1, "exit status")


def _check_refused(cfg, want):
    rc, out, err, d = run_cli(["-t", "-c", "$DIR/bad.lua"], {"bad.lua": cfg})
    both = out + err
    assert want in both, "want %r in %r" % (want, both)
    eq(rc, 1, "exit status of -t for %r" % want)


def test_check_refuses_nan_and_out_of_range_numbers():
    # Numbers C turns into integers: NaN, or past what the C type holds, was
    # undefined behaviour in C; they are refused where they are written.
    cases = [
        ("gw.config { timeouts = { header = 0/0 } }", "gw.config: timeouts.header must be a number > 0"),
        ("gw.config { tls = { ticket_rotate = 0/0 } }", "gw.config: tls.ticket_rotate must be a number > 0"),
        ("gw.config { limits = { body_bytes = 1e300 } }", "gw.config: limits.body_bytes must be a whole number from 1 to 2^53"),
        ("gw.config { workers = 1e300 }", "gw.config: workers must be \"auto\" or a whole number from 1 to 1024"),
        ('gw.shared_dict("d", 1e300)', "gw.shared_dict: size must be bytes"),
        ('gw.upstream("u", { servers = { "127.0.0.1:1" }, timeouts = { read = 0/0 } })',
         "gw.upstream: timeouts.read must be a number >= 0"),
        ('gw.upstream("u", { servers = { "127.0.0.1:1" }, retries = 1e300 })',
         "gw.upstream: retries must be a number >= 0 and <= 2^31-1"),
        ('gw.upstream("u", { servers = { "127.0.0.1:1" }, max_body = math.huge })',
         "gw.upstream: max_body must be a number >= 0 and <= 2^53"),
        ('gw.upstream("u", { servers = { { addr = "127.0.0.1:1", weight = 0/0 } } })',
         "gw.upstream: server #1: weight must be >= 1"),
        ('gw.redis("redis://127.0.0.1:1", { timeout = 0/0 })', "gw.redis: timeout must be a number of seconds > 0"),
        ("gw.timer.every(0/0, function() end)", "gw.timer.every: seconds must be > 0"),
    ]
    for line, want in cases:
        cfg = PRELUDE + line + "\n"
        _check_refused(cfg, want)
        _check_refused(cfg, "bad.lua:%d:" % line_of(cfg, line))


def test_version():
    for flag in ("-v", "--version"):
        rc, out, err, d = run_cli([flag])
        both = (out + err).lower()
        eq(rc, 0, "%s exit status" % flag)
        for name in ("gateway", "luajit", "libuv", "llhttp", "openssl", "hiredis"):
            assert re.search(r"^.*%s.*\d+\.\d+" % name, both, re.M), \
                "%s: no line naming %s with a version in %r" % (flag, name, both)


def test_start_with_bad_config_fails_fast():
    bad = PRELUDE + 'gw.get("/x", function(req)\n  return "x"\n'   # missing end
    g = Gateway(bad, start_timeout=8)
    try:
        g.start()
        raise AssertionError("gateway started with a broken configuration")
    except GatewayError as e:
        msg = str(e)
        assert "exited with" in msg, msg
        assert "gateway.lua:" in msg, "stderr lacks the file:line: %s" % msg
        assert g.proc.returncode != 0, g.proc.returncode
    finally:
        g.close()


def test_unknown_option():
    p = subprocess.run([gw_bin(), "--no-such-option"], capture_output=True, timeout=10,
                       stdin=subprocess.DEVNULL)
    assert p.returncode != 0, "unknown option accepted"


def test_bad_worker_counts_and_missing_values_are_refused():
    # atoi once took "-w 2x" as 2 and wrapped 4294967298 to 2.
    for value in ("2x", "4294967298", "0", "-3", "1025", "", " 2"):
        rc, out, err, d = run_cli(["-w", value, "-t", "-c", "$DIR/good.lua"], {"good.lua": GOOD, "helper.lua": HELPER})
        eq(rc, 1, "exit status for -w %r" % value)
        assert "-w needs a whole number from 1 to 1024 (got '%s')" % value in err, err
    for args in (["-c"], ["-t", "-w"]):
        rc, out, err, d = run_cli(args)
        eq(rc, 1, "exit status for %r" % args)
        assert "%s needs a value" % args[-1] in err, err
    rc, out, err, d = run_cli(["-w", "1024", "-t", "-c", "$DIR/good.lua"], {"good.lua": GOOD, "helper.lua": HELPER})
    eq(rc, 0, "-w 1024: %s" % err)


def test_check_creates_no_log_file():
    # -t checks that the logs could be opened; it once did so by creating
    # them. A missing file in a folder it could be made in is fine, and
    # stays missing; a folder where a file is expected is refused.
    import shutil
    import tempfile
    logs = tempfile.mkdtemp(prefix="gwtest-logs-")
    try:
        cfg = PRELUDE + 'gw.config { error_log = "%s/error.log", access_log = "%s/access.log" }\n' % (logs, logs)
        rc, out, err, d = run_cli(["-t", "-c", "$DIR/gateway.lua"], {"gateway.lua": cfg})
        eq(rc, 0, "-t with logs not made yet: %s" % err)
        eq(sorted(os.listdir(logs)), [], "files -t left in the log folder")
        # A symbolic link to a missing file: fine when the file could be
        # made where it points (and it still is not made), refused when
        # the folder it points into is missing.
        os.mkdir(os.path.join(logs, "real"))
        os.symlink("real/error.log", os.path.join(logs, "error.log"))
        rc, out, err, d = run_cli(["-t", "-c", "$DIR/gateway.lua"], {"gateway.lua": cfg})
        eq(rc, 0, "-t with error_log a link to a file not made yet: %s" % err)
        eq(os.listdir(os.path.join(logs, "real")), [], "files -t left where the link points")
        os.unlink(os.path.join(logs, "error.log"))
        os.symlink("missing/error.log", os.path.join(logs, "error.log"))
        rc, out, err, d = run_cli(["-t", "-c", "$DIR/gateway.lua"], {"gateway.lua": cfg})
        eq(rc, 1, "-t with error_log a link into a missing folder")
        assert "cannot open error log %s/error.log: No such file or directory" % logs in err, err
        os.unlink(os.path.join(logs, "error.log"))
        os.mkdir(os.path.join(logs, "error.log"))
        rc, out, err, d = run_cli(["-t", "-c", "$DIR/gateway.lua"], {"gateway.lua": cfg})
        eq(rc, 1, "-t with a folder as error_log")
        assert "cannot open error log %s/error.log: Is a directory" % logs in err, err
        rc, out, err, d = run_cli(["-t", "-c", "$DIR/gateway.lua"],
                                  {"gateway.lua": PRELUDE + 'gw.config { error_log = "" }\n'})
        eq(rc, 1, "-t with an empty error_log")
        assert "cannot open error log : No such file or directory" in err, err
    finally:
        shutil.rmtree(logs)


def test_check_refuses_log_paths_that_cannot_be_opened():
    # -t once said "ok" and the start then failed (error_log), or logged
    # nowhere (access_log).
    for key in ("error_log", "access_log"):
        cfg = PRELUDE + 'gw.config { %s = "$DIR/no/such/folder/x.log" }\n' % key
        rc, out, err, d = run_cli(["-t", "-c", "$DIR/gateway.lua"], {"gateway.lua": cfg})
        eq(rc, 1, "exit status for an unopenable %s" % key)
        what = key.replace("_", " ")
        assert "cannot open %s" % what in err and "No such file or directory" in err, err
