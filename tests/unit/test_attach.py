"""callerid attach's session bookkeeping (adopter/attach.py) on real processes: a caller is
traced up to the login the adopter recorded, and the whole session below it is found."""

from __future__ import annotations

import os
import subprocess
import time
from pathlib import Path

from callerid.adopter.attach import MAX_SESSIONS, Logins, descendants


def _tree():
    """sh (the 'sshd') -> sh -> sleep: returns (top, leaf pid)."""
    top = subprocess.Popen(["sh", "-c", "sh -c 'sleep 30' & wait"])
    end = time.monotonic() + 5
    while time.monotonic() < end:
        kids = [p for p in descendants(top.pid) if p != top.pid]
        leaves = [p for p in kids if Path(f"/proc/{p}/comm").read_text().strip() == "sleep"]
        if leaves:
            return top, leaves[0]
        time.sleep(0.02)
    raise AssertionError("no sleep under the test tree")


def test_a_callers_session_is_the_recorded_login_above_it():
    top, leaf = _tree()
    try:
        logins = Logins()
        assert logins.session_of(leaf) is None
        logins.record(top.pid, 1000, "no_answer_newest", 7)
        pid, login = logins.session_of(leaf)
        assert (pid, login.uid, login.reason, login.job_id) == (top.pid, 1000, "no_answer_newest", 7)
        logins.moved(top.pid, 8)
        assert logins.session_of(leaf)[1].job_id == 8
        assert set(descendants(top.pid)) >= {top.pid, leaf}
        assert descendants(top.pid)[0] == top.pid
        assert os.getpid() not in descendants(top.pid)
    finally:
        for p in reversed(descendants(top.pid)):
            try:
                os.kill(p, 9)
            except ProcessLookupError:
                pass
        top.wait(5)


def test_a_reused_pid_is_not_the_recorded_login():
    logins = Logins()
    logins.record(os.getpid(), 1000, "no_answer_newest", 7)
    own = logins.session_of(os.getpid())
    assert own is not None
    # same pid, another start time: what a recycled pid looks like
    logins._by_pid[os.getpid()] = own[1].__class__(1000, "no_answer_newest", 7, own[1].start_boot_ns + 1)
    assert logins.session_of(os.getpid()) is None


def test_recorded_logins_are_bounded():
    logins = Logins()
    for _ in range(3):
        logins.record(os.getpid(), 1000, "x", None)
    assert len(logins._by_pid) == 1 and MAX_SESSIONS >= 1
