"""callerid.munge's deadline for libmunge calls, which have none of their own (issue 12, item 3).
The calls here are stand-ins that block; tests/lab/test_adopter.py stops a real munged."""

from __future__ import annotations

import os
import threading
import time

import pytest

from callerid import munge


def test_result_and_exception_come_back():
    b = munge._BoundedCalls(4)
    assert b.run(lambda: 42, 1.0, None) == 42
    with pytest.raises(ZeroDivisionError):
        b.run(lambda: 1 / 0, 1.0, None)


def test_a_hung_call_is_left_behind_at_the_deadline():
    b = munge._BoundedCalls(4)
    release = threading.Event()
    t0 = time.monotonic()
    with pytest.raises(munge.MungeError) as exc:
        b.run(lambda: release.wait(10), 0.2, "/run/munge/sock")
    assert exc.value.reason == "timeout"
    assert 0.15 < time.monotonic() - t0 < 1.0
    assert b.run(lambda: "next", 1.0, None) == "next"   # another thread serves the next call
    release.set()


def test_hung_calls_are_bounded_in_number():
    b = munge._BoundedCalls(2)
    release = threading.Event()
    for _ in range(2):
        with pytest.raises(munge.MungeError):
            b.run(lambda: release.wait(10), 0.05, None)
    t0 = time.monotonic()
    with pytest.raises(munge.MungeError) as exc:
        b.run(lambda: "never started", 0.1, None)
    assert "too many calls pending" in str(exc.value)
    assert time.monotonic() - t0 < 1.0
    release.set()
    time.sleep(0.1)
    assert b.run(lambda: "after", 1.0, None) == "after"


def test_zero_time_left_is_a_timeout_without_a_call():
    with pytest.raises(munge.MungeError) as exc:
        munge._BoundedCalls(1).run(lambda: pytest.fail("called"), 0.0, None)
    assert exc.value.reason == "timeout"


def test_works_in_a_forked_child():
    munge._bounded.run(lambda: 1, 1.0, None)   # the parent has a pool thread now
    pid = os.fork()
    if pid == 0:
        try:
            t0 = time.monotonic()
            ok = munge._bounded.run(lambda: 2, 1.0, None) == 2 and time.monotonic() - t0 < 0.5
        except BaseException:  # noqa: BLE001
            ok = False
        os._exit(0 if ok else 1)
    assert os.waitpid(pid, 0)[1] == 0
