"""adopter.service.Adopter drops a decision whose login has gone (issue 12, item 3): on a
fake cgroup tree (tests/unit/test_jobs_discovery.py's FakeNode), nothing is written and
nothing counted as a decision or an adoption."""

from __future__ import annotations

import os
import pwd
import time

import pytest

from callerid.adopter import policy
from callerid.adopter.daemon import decision_deadline
from callerid.adopter.metrics import ABANDON_REASONS, AdopterMetrics
from callerid.adopter.service import Adopter, Settings
from tests.unit.test_jobs_discovery import FakeNode

USER = "nobody"


@pytest.fixture
def node(tmp_path):
    n = FakeNode(tmp_path)
    n.v1_job(pwd.getpwnam(USER).pw_uid, 4301, node="n1")
    return n


def adopter(node) -> tuple[Adopter, AdopterMetrics]:
    m = AdopterMetrics()
    s = Settings(nodename="n1", base_options=policy.Options(), rpc_port=1, rpc_timeout=1.0, munge_socket=None,
                 cgroup_root=str(node.root), v2_mount=str(node.v2))
    return Adopter(s, m), m


def procs_files(node) -> dict:
    return {p: p.read_text() for p in node.root.rglob("cgroup.procs")}


def counted(m: AdopterMetrics, name: str) -> float:
    return sum(s.value for fam in m.registry.collect() if fam.name == name for s in fam.samples
               if s.name.endswith("_total"))


@pytest.mark.parametrize("reason", ["hook_gone", "process_changed"])
def test_decision_whose_login_has_gone_is_abandoned(node, reason):
    a, m = adopter(node)
    before = procs_files(node)
    reply = a.handle(os.getpid(), USER, "sshd", {}, time.monotonic() + 5, lambda: reason)
    assert reply is None
    assert procs_files(node) == before, "nothing written to cgroup.procs"
    assert m.registry.get_sample_value("callerid_adopter_abandoned_decisions_total", {"reason": reason}) == 1.0
    assert counted(m, "callerid_adopter_decisions") == 0
    assert counted(m, "callerid_adopter_adoptions") == 0


def test_decision_past_its_deadline_is_abandoned(node):
    a, m = adopter(node)
    before = procs_files(node)
    assert a.handle(os.getpid(), USER, "sshd", {}, time.monotonic() - 0.01, lambda: None) is None
    assert procs_files(node) == before
    assert m.registry.get_sample_value("callerid_adopter_abandoned_decisions_total", {"reason": "deadline"}) == 1.0


def test_abandon_reasons_are_declared():
    m = AdopterMetrics()
    for r in ABANDON_REASONS:
        assert m.registry.get_sample_value("callerid_adopter_abandoned_decisions_total", {"reason": r}) == 0.0


@pytest.mark.parametrize("own, left_ms, budget", [
    (5.0, None, 4.75),      # an older module that sends no time left: the daemon's own deadline
    (5.0, 2000, 1.75),      # the module's time left is shorter: it bounds the daemon's work
    (1.0, 60000, 0.75),     # the daemon's own deadline is shorter
    (5.0, 400, 0.3),        # a short budget keeps a quarter of it for the reply
    (5.0, 0, 0.0),
])
def test_decision_deadline_is_the_shorter_of_the_daemons_and_the_modules(own, left_ms, budget):
    assert decision_deadline(100.0, own, left_ms) == pytest.approx(100.0 + budget)
