"""The adopter end to end on a fake cgroup v2 tree with Slurm 26.05's SLUID-named job
directories under the node-prefixed scope of stock Debian: discovery, decision, the
cgroup.procs write, the log line, the metrics and the hook's reply all name the SLUID."""

from __future__ import annotations

import logging
import os
import pwd
import subprocess

import pytest

from callerid.adopter import policy
from callerid.adopter.metrics import AdopterMetrics
from callerid.adopter.pamwire import parse_reply
from callerid.adopter.service import Adopter, Settings
from tests.helpers import require_root

SLUID_OLD, SLUID_NEW = "s7000000001J00", "s7000000001J01"
NODE = "n1"


@pytest.fixture
def user_process():
    """A process of user 'nobody': v2 job ownership is read from the extern step's processes."""
    require_root()
    p = subprocess.Popen(["sleep", "60"], user="nobody", group="nogroup")
    try:
        yield p
    finally:
        p.kill()
        p.wait()


def v2_tree(root, jobdirs, pid):
    (root / "cgroup.controllers").write_text("")
    leaves = {}
    for jobdir in jobdirs:
        job = root / "system.slice" / f"{NODE}_slurmstepd.scope" / jobdir
        (job / "step_extern" / "slurm").mkdir(parents=True)
        leaf = job / "step_extern" / "user" / "task_special"
        leaf.mkdir(parents=True)
        (leaf / "cgroup.procs").write_text(f"{pid}\n")
        leaves[jobdir] = leaf
    return leaves


def adopter(root, **opts):
    s = Settings(nodename=NODE, base_options=policy.Options(**opts), rpc_port=1, rpc_timeout=0.1,
                 munge_socket=None, cgroup_root=str(root), v2_mount=str(root))
    return Adopter(s, AdopterMetrics())


def test_single_sluid_job_is_adopted_and_named_everywhere(tmp_path, user_process, caplog):
    leaves = v2_tree(tmp_path, [SLUID_OLD], user_process.pid)
    a = adopter(tmp_path)
    with caplog.at_level(logging.INFO, logger="callerid.adopter"):
        reply = a.handle(user_process.pid, "nobody", "sshd", {})
    assert (reply.verdict, reply.job_id) == ("adopt", SLUID_OLD)
    assert parse_reply(reply.encode()).job_id == SLUID_OLD   # what pam_callerid.so reads, and puts in SLURM_JOB_ID
    # the pid was written to the SLUID job's task_special (a plain file here: the write replaced its text)
    assert (leaves[SLUID_OLD] / "cgroup.procs").read_text().split() == [str(user_process.pid)]
    assert f"Process {user_process.pid} adopted into job {SLUID_OLD}" in caplog.text
    assert f"job={SLUID_OLD} decision=adopt reason=single_job" in caplog.text
    assert a.m.decisions.labels("adopt", "single_job", "enforce")._value.get() == 1


def test_several_sluid_jobs_and_no_source_answer_go_to_the_later_sluid(tmp_path, user_process):
    v2_tree(tmp_path, [SLUID_NEW, SLUID_OLD], user_process.pid)
    # Same start (mtime) to the second is likely in a test: the later SLUID must win the tie.
    for d in (SLUID_OLD, SLUID_NEW):
        ext = tmp_path / "system.slice" / f"{NODE}_slurmstepd.scope" / d / "step_extern"
        os.utime(ext, (1_000, 1_000))
    # The hook's pid is ours: it holds no TCP socket, so the RPC fails with no_socket.
    reply = adopter(tmp_path).handle(user_process.pid, "nobody", "sshd", {})
    assert (reply.verdict, reply.job_id) == ("adopt", SLUID_NEW)


def test_a_sluid_job_of_another_user_is_not_adopted(tmp_path, user_process):
    v2_tree(tmp_path, [SLUID_OLD], user_process.pid)
    other = next(p.pw_name for p in pwd.getpwall() if p.pw_uid not in (0, pwd.getpwnam("nobody").pw_uid))
    reply = adopter(tmp_path).handle(user_process.pid, other, "sshd", {})
    assert (reply.verdict, reply.job_id) == ("deny", None)
