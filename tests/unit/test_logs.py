"""What reaches the daemons' logs: one line per record whatever came from outside, and a
bounded number of lines however many times the same warning fires (issue 12, items 4 and 5)."""

from __future__ import annotations

import logging
import socket
import subprocess
import sys
import time

import pytest

from callerid import logs
from callerid.protocol import HEADER, VERSION
from callerid.tracer.metrics import TracerMetrics
from callerid.tracer.server import RpcServer, bind_listener
from tests.reliability import record


@pytest.mark.parametrize("raw,shown", [
    ("cidlab1", "cidlab1"),
    ("a\nb", "a\\nb"),
    ("a\r\nb", "a\\r\\nb"),
    ("back\\slash", "back\\\\slash"),
    ("\x1b[31mred", "\\x1b[31mred"),
    ("evil\u202egnp.exe", "evil\\u202egnp.exe"),      # right-to-left override
    ("zero\u200bwidth", "zero\\u200bwidth"),
    ("line\u2028sep", "line\\u2028sep"),
    ("\x85next", "\\x85next"),                         # C1 NEL
    ("ünïcödé ok", "ünïcödé ok"),
])
def test_escape(raw, shown):
    assert logs.escape(raw) == shown


def test_escape_is_one_printable_line():
    every = "".join(chr(c) for c in range(0, 0x3000))
    out = logs.escape(every)
    assert out.isprintable()
    assert "\n" not in out and "\r" not in out


# The adopter's decision line, with a PAM_USER carrying a forged second line and a bidi
# override, through the daemons' real log setup (stderr handler behind the queue).
FORGE = r'''
import logging, sys, time
from callerid import logs
logs.setup("callerid-adopter", "info", syslog=False)
log = logging.getLogger("callerid.adopter")
user = "cidlab1\nuser=cidlab1 decision=adopt reason=single_job\u202e"
log.info("user=%s service=%s decision=%s reason=%s", user, "sshd", "deny", "no_jobs")
log.warning("hook socket: bad request from pid %d: %s", 7, ValueError("x\r\ny"))
try:
    raise RuntimeError("boom\nforged")
except RuntimeError:
    log.exception("internal error deciding for %s", user)
time.sleep(0.2)
'''


def test_forged_newline_in_pam_user_cannot_make_a_second_log_line():
    r = subprocess.run([sys.executable, "-c", FORGE], capture_output=True, text=True, timeout=30)
    assert r.returncode == 0, r.stderr
    lines = r.stderr.splitlines()
    records = [line for line in lines if " callerid-adopter[" in line]
    decisions = [line for line in lines if "decision=" in line]
    assert len(decisions) == 2, lines   # the decision line, and the exception's message line
    assert all(" callerid-adopter[" in line for line in decisions), "a decision= line no record began"
    forged = "user=cidlab1\\nuser=cidlab1 decision=adopt reason=single_job\\u202e service=sshd decision=deny"
    assert forged in records[0]
    assert "\u202e" not in r.stderr
    for line in lines:   # every line is a record's, or a marked line of a traceback
        assert " callerid-adopter[" in line or line.startswith(logs.TRACEBACK_MARK), line
    # the exception's own newline stays a traceback line, marked as one
    assert lines[lines.index(f"{logs.TRACEBACK_MARK}RuntimeError: boom") + 1] == f"{logs.TRACEBACK_MARK}forged"
    assert "x\\r\\ny" in records[1]
    record("unit/test_logs.py::forged_newline_in_pam_user", "input",
           "a PAM_USER with a newline, a forged decision line and a right-to-left override; an exception text "
           "with CR LF", "each stayed on its own record's line, escaped (\\n, \\u202e)")


class _Collect(logging.Handler):
    def __init__(self, lines: list):
        super().__init__()
        self.lines = lines

    def emit(self, record):
        self.lines.append(record.getMessage())


def collected(logger: str, guard: logs.Guard):
    """(logger, handler, lines): the messages the logger's records bring through guard; the
    test removes the handler."""
    lines: list[str] = []
    h = _Collect(lines)
    h.addFilter(guard)
    lg = logging.getLogger(logger)
    lg.addHandler(h)
    return lg, h, lines


def test_repeated_warnings_are_limited_per_kind_and_summarised():
    guard = logs.Guard(burst=3, window=0.2)
    lg, h, lines = collected("callerid.test.flood", guard)
    lg.setLevel(logging.INFO)
    lg.propagate = False
    try:
        for i in range(1000):
            lg.warning("rpc from %s: bad", f"10.0.0.{i % 250}")
            lg.warning("another kind %d", i)
        lg.info("info is never limited")
        time.sleep(0.25)
        guard.flush_reports()
        lg.warning("rpc from %s: bad", "later")
    finally:
        lg.removeHandler(h)
    assert len(lines) == 3 + 3 + 1 + 2 + 1
    summaries = sorted(line.rsplit(" in the last ", 1)[0] for line in lines if "suppressed" in line)
    assert summaries == ['997 more like "another kind %d" suppressed', '997 more like "rpc from %s: bad" suppressed']
    assert lines[-1] == "rpc from later: bad"
    assert guard.suppressed_total == {"callerid.test.flood": 2 * 997}


def test_ten_thousand_refused_connections_make_a_bounded_number_of_lines():
    guard = logs.Guard()              # the daemons' limits: 10 per kind per 10 s
    lg, h, lines = collected("callerid.tracer.server", guard)
    metrics = TracerMetrics()
    server = RpcServer([bind_listener("127.0.0.1", 0)], None, metrics)
    server.start()
    addr = server.addresses[0]
    try:
        t0 = time.monotonic()
        for i in range(10_000):
            with socket.create_connection(addr, timeout=5) as c:
                c.sendall(b"GET / HTTP/1.0\r\n\r\n" if i % 2 else HEADER.pack(b"CI", VERSION, 1, 0x50) + b"MUNGE:!")
            assert time.monotonic() - t0 < 120, "bounded in time"
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline and \
                metrics.registry.get_sample_value("callerid_rpc_requests_total", {"result": "bad_frame"}) < 10_000:
            time.sleep(0.05)
        guard.flush_reports(time.monotonic() + guard.window)
    finally:
        server.stop()
        lg.removeHandler(h)
    assert metrics.registry.get_sample_value("callerid_rpc_requests_total", {"result": "bad_frame"}) == 10_000
    assert len(lines) <= 10 * 3 + 3, lines[:40]
    assert sum(guard.suppressed_total.values()) >= 10_000 - len(lines)
    assert any("more like" in line and "suppressed" in line for line in lines)
    record("unit/test_logs.py::ten_thousand_refused_connections", "input",
           "10,000 connections refused as bad frames (HTTP requests, non-credential payloads)",
           f"{len(lines)} log lines, with the suppressed count; every refusal counted in the metrics")
