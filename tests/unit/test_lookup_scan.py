"""The /proc fallback of tracer.lookup.Resolver: authorised before it scans, one scan at a
time, each within its budget (issue 12, item 2). sock_diag and the scan are replaced by
recorders here; tests/kernel/test_rpc_abuse.py runs the real ones."""

from __future__ import annotations

import threading
import time

import pytest

from callerid.linux import procfs, sockdiag
from callerid.protocol import Query, Status
from callerid.tracer import lookup
from callerid.tracer.lookup import Resolver

Q = Query.make("10.0.0.1", 40000, "10.0.0.2", 22)
OWNER, OTHER = 1000, 1001


class Sock:
    def __init__(self, uid, inode=77):
        self.uid, self.inode = uid, inode


@pytest.fixture
def world(monkeypatch):
    w = {"socks": [Sock(OWNER)], "scans": 0, "scan_seconds": 0.0}

    def find_pid(inode, proc="/proc", deadline=None):
        w["scans"] += 1
        end = time.monotonic() + w["scan_seconds"]
        while time.monotonic() < end:
            if deadline is not None and time.monotonic() > deadline:
                raise procfs.ScanTimeout("budget")
            time.sleep(0.005)
        return None

    monkeypatch.setattr(sockdiag, "find_tcp", lambda *a: list(w["socks"]))
    monkeypatch.setattr(procfs, "find_pid_for_inode", find_pid)
    monkeypatch.setattr(procfs, "own_netns_inode", lambda proc="/proc": 1)
    return w


def resolver(**kw) -> Resolver:
    return Resolver(None, "node", fallback=True, **kw)


def test_stranger_gets_not_found_without_a_scan(world):
    out = resolver().lookup(Q, allowed=lambda uid: uid == OTHER)
    assert world["scans"] == 0
    assert out.denied and out.scan == ""
    missing = resolver()
    world["socks"] = []
    assert out.answer == missing.lookup(Q, allowed=lambda uid: uid == OTHER).answer
    assert out.answer.status == Status.NOT_FOUND


def test_owner_question_scans_once(world):
    out = resolver().lookup(Q, allowed=lambda uid: uid == OWNER)
    assert world["scans"] == 1
    assert not out.denied and out.scan == "not_found"


def test_scan_stops_at_its_budget(world):
    world["scan_seconds"] = 5.0
    t0 = time.monotonic()
    out = resolver(scan_budget=0.1).lookup(Q)
    assert out.scan == "budget_exceeded" and out.answer.status == Status.NOT_FOUND
    assert time.monotonic() - t0 < 1.0


def test_scans_are_serialised_and_a_waiter_gives_up_at_the_budget(world):
    world["scan_seconds"] = 0.5
    r = resolver(scan_budget=0.6)
    first = []
    t = threading.Thread(target=lambda: first.append(r.lookup(Q)))
    t.start()
    time.sleep(0.05)
    r.scan_budget = 0.1
    out = r.lookup(Q)
    t.join(5)
    assert out.scan == "busy"
    assert first[0].scan == "not_found"
    assert world["scans"] == 1


def test_scan_results_are_the_metric_labels():
    assert set(lookup.SCAN_RESULTS) == {"found", "not_found", "budget_exceeded", "busy"}
