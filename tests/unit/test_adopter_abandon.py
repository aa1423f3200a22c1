"""adopter.service.Adopter drops a decision whose login has gone (issue 12, item 3): on a
fake cgroup tree (tests/unit/test_jobs_discovery.py's FakeNode), nothing is written and
nothing counted as a decision or an adoption."""

from __future__ import annotations

import os
import pwd
import time
from pathlib import Path

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


# ---------------------------------------------- the cgroup writes themselves (item 3's last part)

def stop_after(calls: int, reason: str):
    """A still_wanted() that says the login is there for `calls` questions, then `reason`."""
    asked = []

    def still_wanted():
        asked.append(1)
        return None if len(asked) <= calls else reason
    return still_wanted, asked


def test_login_gone_between_two_controllers_stops_the_writes(node):
    # The decision path asks once before adopting; adopt() asks before each of the job's v1
    # controller writes. The login goes after the first write: the second is never made.
    a, m = adopter(node)
    (job,) = [j for j in a._jobs("n1", None) if j.job_id == "4301"]
    assert len(job.extern) >= 2
    still_wanted, asked = stop_after(2, "hook_gone")
    assert a.handle(os.getpid(), USER, "sshd", {}, time.monotonic() + 5, still_wanted) is None
    assert len(asked) == 3
    assert str(os.getpid()) in Path(job.extern[0], "cgroup.procs").read_text()
    assert all(Path(d, "cgroup.procs").read_text() == "" for d in job.extern[1:]), "no write after"
    assert m.registry.get_sample_value("callerid_adopter_abandoned_decisions_total", {"reason": "hook_gone"}) == 1.0
    assert counted(m, "callerid_adopter_decisions") == 0
    assert counted(m, "callerid_adopter_adoptions") == 0
    # A fake tree moves nothing, so there is no earlier cgroup to move back to: reported as left.
    assert m.registry.get_sample_value("callerid_adopter_abandoned_adoptions_total",
                                       {"result": "left_partial"}) == 1.0


def test_deadline_passing_between_two_controllers_stops_the_writes(node):
    # The first write is let through, then the time passes the deadline (as a write that
    # waited in the kernel would make it): the second controller is never written.
    a, m = adopter(node)
    (job,) = [j for j in a._jobs("n1", None) if j.job_id == "4301"]
    deadline = time.monotonic() + 1.0
    asked = []

    def still_wanted():
        asked.append(1)
        if len(asked) == 2:   # right before the first write
            time.sleep(max(0.0, deadline - time.monotonic()) + 0.01)
        return None
    assert a.handle(os.getpid(), USER, "sshd", {}, deadline, still_wanted) is None
    assert len(asked) == 2
    assert str(os.getpid()) in Path(job.extern[0], "cgroup.procs").read_text()
    assert all(Path(d, "cgroup.procs").read_text() == "" for d in job.extern[1:])
    assert m.registry.get_sample_value("callerid_adopter_abandoned_decisions_total", {"reason": "deadline"}) == 1.0
    assert counted(m, "callerid_adopter_adoptions") == 0


@pytest.mark.parametrize("written, now, want", [
    # v1 hybrid: freezer moved from the root cgroup; cpu,cpuacct from ssh.service
    ("/sys/fs/cgroup/freezer/slurm_n1/uid_5/job_7/step_extern",
     {"freezer": "/", "cpu,cpuacct": "/system.slice/ssh.service", "": "/system.slice/ssh.service"},
     ("unknown", None)),
    ("/sys/fs/cgroup/freezer/slurm_n1/uid_5/job_7/step_extern",
     {"freezer": "/slurm_n1/uid_5/job_7/step_extern", "cpu,cpuacct": "/system.slice/ssh.service",
      "": "/system.slice/ssh.service"},
     ("moved", "/sys/fs/cgroup/freezer")),
    ("/sys/fs/cgroup/cpu,cpuacct/slurm_n1/uid_5/job_7/step_extern",
     {"freezer": "/slurm_n1/uid_5/job_7/step_extern", "cpu,cpuacct": "/slurm_n1/uid_5/job_7/step_extern",
      "": "/system.slice/ssh.service"},
     ("moved", "/sys/fs/cgroup/cpu,cpuacct/system.slice/ssh.service")),
    # the same path in two hierarchies: the mount's name says which line is the dir's
    ("/sys/fs/cgroup/cpu,cpuacct/slurm_n1/uid_5/job_7/step_extern",
     {"freezer": "/slurm_n1/uid_5/job_7/step_extern", "cpu,cpuacct": "/system.slice/ssh.service", "": "/x"},
     ("unknown", None)),
    # cgroup v2
    ("/sys/fs/cgroup/system.slice/slurmstepd.scope/job_7/step_extern/user/task_special",
     {"": "/system.slice/slurmstepd.scope/job_7/step_extern/user/task_special"},
     ("moved", "/sys/fs/cgroup/system.slice/ssh.service")),
])
def test_where_an_adopted_process_came_from(written, now, want):
    from callerid.adopter.cgroupfs import origin_of
    before = {"freezer": "/", "cpu,cpuacct": "/system.slice/ssh.service", "": "/system.slice/ssh.service"}
    assert origin_of(written, before, now) == want


def test_a_process_already_in_the_job_is_not_moved_back():
    from callerid.adopter.cgroupfs import origin_of
    here = {"freezer": "/slurm_n1/uid_5/job_7/step_extern"}
    assert origin_of("/sys/fs/cgroup/freezer/slurm_n1/uid_5/job_7/step_extern", here, here) == ("unmoved", None)


def test_adoption_whose_last_write_ends_past_the_deadline_stands_while_the_login_waits(tmp_path):
    # The deadline bounds when a write may start. A job with one dir: the write starts in
    # time and ends past the deadline; the module is still connected, so the adoption is
    # complete and replied to (the deadline keeps a margin for the reply).
    n = FakeNode(tmp_path)
    n.v1_job(pwd.getpwnam(USER).pw_uid, 4302, node="n1", ctrls=("freezer",))
    a, m = adopter(n)
    deadline = time.monotonic() + 1.0
    asked = []

    def still_wanted():
        asked.append(1)
        if len(asked) == 2:   # right before the one write: it ends past the deadline
            time.sleep(max(0.0, deadline - time.monotonic()) + 0.01)
        return None
    reply = a.handle(os.getpid(), USER, "sshd", {}, deadline, still_wanted)
    assert reply is not None and reply.verdict == "adopt" and len(asked) == 3
    assert m.registry.get_sample_value("callerid_adopter_adoptions_total", {"result": "success"}) == 1.0


def test_adoption_complete_after_the_module_hung_up_is_undone(tmp_path):
    n = FakeNode(tmp_path)
    n.v1_job(pwd.getpwnam(USER).pw_uid, 4303, node="n1", ctrls=("freezer",))
    a, m = adopter(n)
    asked = []

    def still_wanted():   # gone by the check after the last write
        asked.append(1)
        return "hook_gone" if len(asked) > 2 else None
    assert a.handle(os.getpid(), USER, "sshd", {}, time.monotonic() + 5, still_wanted) is None
    assert m.registry.get_sample_value("callerid_adopter_abandoned_decisions_total", {"reason": "hook_gone"}) == 1.0
    assert counted(m, "callerid_adopter_adoptions") == 0
