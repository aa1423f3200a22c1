"""pam_callerid.so in a real OpenSSH sshd with Linux-PAM, against the real adopter daemon:
return codes as pam_slurm_adopt's, the session's environment, what the user is told, the
admins' way in when the adopter is down, the module's deadline, audit mode."""

from __future__ import annotations

import os
import signal
import sys
import time
from pathlib import Path

import pytest

from callerid.adopter import policy
from tests.infra.tracerproc import metric
from tests.lab.conftest import LOGIN_OWN_TIME

pytestmark = pytest.mark.lab

# Anything the module or daemon knows internally; none of it may reach the ssh user.
INTERNAL = ("adopter", "unavailable", "refused", "deadline", "action_", "socket", "reason", "verdict")


def only_documented_text(err: str, text: str) -> bool:
    """ssh's stderr holds text, and no line of it mentions anything internal."""
    return text in err and not any(w in line.lower() for line in err.splitlines() for w in INTERNAL)


def job_cgroup(login) -> str:
    """The session's line of the hierarchy Slurm tracks jobs in: v1's freezer where the host
    mounts it (the test trees follow the host's layout, tests/infra/jobtree.py), else cgroup v2."""
    lines = login.cgroup_lines()
    freezer = [line for line in lines if ":freezer:" in line]
    return (freezer or [line for line in lines if line.startswith("0::")] or [""])[0]


# --- return codes ----------------------------------------------------------------------

@pytest.mark.parametrize("alone", [True, False], ids=["callerid-alone", "after-pam_permit"])
def test_ignore_success_and_perm_denied_are_distinct(cl, alone):
    """PAM_IGNORE is neither a success nor a failure: alone in the account stack it leaves
    PAM with no decision (login refused, no message); after pam_permit it lets pam_permit's
    success stand. PAM_SUCCESS and PAM_PERM_DENIED are what they say, with the deny text."""
    a = cl.users[0]
    first = [] if alone else ["account  required pam_permit.so"]
    cl.set_account_stack(*first, "account  required {callerid} action_no_jobs=ignore")
    ignore = cl.ssh(a)                                 # -> PAM_IGNORE (reason no_jobs_ignored)
    cl.set_account_stack(*first, "account  required {callerid}")
    deny = cl.ssh(a)                                   # -> PAM_PERM_DENIED (no_jobs)
    cl.dst_jobs.create(a.uid, 5401)
    success = cl.ssh(a)                                # -> PAM_SUCCESS (single_job)
    assert success.rc == 0 and "job_5401/step_extern" in job_cgroup(success), success.err + cl.logs()
    assert deny.rc == 255 and only_documented_text(deny.err, policy.MSG_NO_JOBS), deny.err
    if alone:
        assert ignore.rc == 255 and "Access denied" not in ignore.err, ignore.err
    else:
        assert ignore.rc == 0 and not job_cgroup(ignore).count("/job_"), ignore.err
    assert "decision=ignore reason=no_jobs_ignored" in cl.adopter.log_text()


def test_root_and_other_services_get_pam_ignore(cl):
    """Alone in the stack, PAM_IGNORE refuses (no module decided): root and an unhandled
    service are ignored, not allowed."""
    cl.set_account_stack("account  required {callerid}")
    assert cl.ssh_root().rc == 255
    cl.set_account_stack("account  required pam_permit.so", "account  required {callerid}")
    root = cl.ssh_root()
    assert root.rc == 0 and "/job_" not in root.out, root.err
    assert "decision=ignore reason=root" in cl.adopter.log_text()


# --- the session ------------------------------------------------------------------------

def test_adopted_session_gets_slurm_job_id_and_the_jobs_device_variables(cl):
    a = cl.users[0]
    cl.dst_jobs.create(a.uid, 5411)
    job_env = {"PATH": "/usr/bin:/bin", "CUDA_VISIBLE_DEVICES": "2,3", "SLURM_JOB_GPUS": "2,3",
               "NOT_LISTED": "x"}
    cl.dst_jobs.popen(["sleep", "120"], a.uid, a.gid, 5411, "0", env=job_env)
    # a plain `ssh host cmd` reads no profile: only PAM's environment can set these
    login = cl.ssh(a, command="cat /proc/self/cgroup; echo JOB=$SLURM_JOB_ID CUDA=$CUDA_VISIBLE_DEVICES "
                              "GPUS=$SLURM_JOB_GPUS OTHER=${NOT_LISTED:-none}")
    assert login.rc == 0, login.err + cl.logs()
    assert "JOB=5411 CUDA=2,3 GPUS=2,3 OTHER=none" in login.out, login.out + cl.logs()


JOB_GID = 64123   # a group the test user is not in: what `sbatch --gid` gives a job


@pytest.mark.parametrize("on", [True, False])
def test_adopted_session_gets_the_jobs_group(cl, on):
    a = cl.users[0]
    cl.dst_jobs.create(a.uid, 5441)
    cl.dst_jobs.popen(["sleep", "120"], a.uid, JOB_GID, 5441, "0", env={"PATH": "/usr/bin:/bin"})
    cl.set_hook(*([] if on else ["job_group=0"]))
    login = cl.ssh(a, command="cat /proc/self/cgroup; echo GROUPS $(id -G) REAL $(id -rg)")
    assert login.rc == 0 and "job_5441/step_extern" in job_cgroup(login), login.err + cl.logs()
    groups = next(line for line in login.out.splitlines() if line.startswith("GROUPS")).split()
    assert (str(JOB_GID) in groups[1:groups.index("REAL")]) is on, login.out
    assert groups[-1] == str(a.gid)   # the real gid stays the user's: newgrp for ptrace and new files


def test_unadopted_session_gets_no_slurm_job_id(cl):
    a = cl.users[0]
    cl.set_hook("action_no_jobs=ignore")
    login = cl.ssh(a, command="echo JOB=${SLURM_JOB_ID:-none}")
    assert login.rc == 0 and "JOB=none" in login.out, login.err


# --- what the user is told ---------------------------------------------------------------

@pytest.mark.parametrize("how", ["down", "hung"])
def test_user_sees_only_the_documented_text_when_the_adopter_cannot_answer(cl, how):
    a = cl.users[0]
    cl.dst_jobs.create(a.uid, 5421)
    cl.set_hook("deadline=2", "action_generic_failure=deny")
    if how == "down":
        cl.adopter.stop()
        login = cl.ssh(a)
    else:
        os.kill(cl.adopter.proc.pid, signal.SIGSTOP)
        try:
            login = cl.ssh(a)
        finally:
            os.kill(cl.adopter.proc.pid, signal.SIGCONT)
        assert login.seconds < 2 + LOGIN_OWN_TIME, login.seconds   # the module's own deadline bounds the login
    assert login.rc == 255
    assert only_documented_text(login.err, policy.MSG_GENERIC), login.err


def test_the_modules_deadline_bounds_the_daemons_work(cl):
    """The module sends its time left with the request: with deadline=0.8 (the daemon's own
    is 4 s, its RPC timeout 1 s) and the source node's tracer stopped, the daemon gives the
    RPC only what the module had left and abandons the decision for its deadline, instead of
    waiting out the RPC and deciding for a login that has already gone."""
    a = cl.users[0]
    cl.dst_jobs.create(a.uid, 5471)
    cl.dst_jobs.create(a.uid, 5472)          # two jobs: the daemon must ask the source node
    cl.set_hook("deadline=0.8")
    abandoned = {r: metric(cl.adopter_metrics(), "callerid_adopter_abandoned_decisions_total", reason=r)
                 for r in ("deadline", "hook_gone")}
    os.kill(cl.tracer.proc.pid, signal.SIGSTOP)
    try:
        login = cl.ssh(a)
        time.sleep(1.5)                      # past the RPC timeout: a daemon still working would end now
    finally:
        os.kill(cl.tracer.proc.pid, signal.SIGCONT)
    after = {r: metric(cl.adopter_metrics(), "callerid_adopter_abandoned_decisions_total", reason=r)
             for r in abandoned}
    assert after == {"deadline": abandoned["deadline"] + 1, "hook_gone": abandoned["hook_gone"]}, cl.logs()
    line = next(x for x in reversed(cl.adopter.log_text().splitlines()) if "decision abandoned (deadline)" in x)
    ms = float(line.split(" after ")[1].split(" ms")[0])
    assert ms < 800, line                    # within the module's 0.8 s, not the RPC's 1 s
    assert "job_547" not in login.out, login.out + login.err   # not adopted, whatever the stack says


def test_root_logs_in_when_the_adopter_is_down(cl, tmp_path):
    """docs/INSTALL.md: pam_access (sufficient) for the admins ahead of the module, which is
    `-account` (a missing module file is skipped, not fatal)."""
    access = tmp_path / "access-callerid.conf"
    access.write_text("+:root:ALL\n-:ALL:ALL\n")
    os.chmod(tmp_path, 0o755)
    cl.set_account_stack("account  required pam_unix.so",
                         f"account  sufficient pam_access.so accessfile={access}",
                         "-account required {callerid} action_generic_failure=deny")
    cl.adopter.stop()
    root = cl.ssh_root()
    assert root.rc == 0, root.err
    user = cl.ssh(cl.users[0])
    assert user.rc == 255 and only_documented_text(user.err, policy.MSG_GENERIC), user.err
    # and with the module file gone altogether, `-account` skips it
    missing = "/nonexistent/pam_callerid.so"
    cl.set_account_stack("account  required pam_unix.so",
                         f"account  sufficient pam_access.so accessfile={access}",
                         f"-account required {missing} action_generic_failure=deny")
    assert cl.ssh_root().rc == 0


# --- audit mode ---------------------------------------------------------------------------

def test_audit_mode_decides_and_counts_but_allows_and_adopts_nothing(cl):
    a = cl.users[0]
    deny_before = metric(cl.adopter_metrics(), "callerid_adopter_decisions_total", verdict="deny",
                         reason="no_jobs", mode="audit")
    cl.set_hook("mode=audit")
    nojob = cl.ssh(a)
    assert nojob.rc == 0 and "Access denied" not in nojob.err, nojob.err
    cl.dst_jobs.create(a.uid, 5431)
    one = cl.ssh(a, command="cat /proc/self/cgroup; echo JOB=${SLURM_JOB_ID:-none}")
    assert one.rc == 0 and "/job_" not in job_cgroup(one) and "JOB=none" in one.out, one.out
    log = cl.adopter.log_text()
    assert "decision=deny reason=no_jobs audit=1" in log
    assert "decision=adopt reason=single_job audit=1" in log
    assert metric(cl.adopter_metrics(), "callerid_adopter_decisions_total", verdict="deny", reason="no_jobs",
                  mode="audit") == deny_before + 1


# --- callerid attach -----------------------------------------------------------------------

CALLERID = str(Path(sys.executable).parent / "callerid")


def attach_cmd(cl, job: int) -> str:
    sock = os.path.join(str(cl.dir), "attach", "attach.sock")
    return f"{CALLERID} attach --socket {sock} {job}; echo RC=$?; cat /proc/self/cgroup"


def test_attach_corrects_a_guess_into_the_users_own_job_only(cl):
    a, b = cl.users[0], cl.users[1]
    cl.dst_jobs.create(a.uid, 5451)          # older
    time.sleep(1.1)                          # 'newest' is by start time
    cl.dst_jobs.create(a.uid, 5452)          # newer: where a guess from outside any job goes
    cl.dst_jobs.create(b.uid, 5453)          # another user's job
    before = metric(cl.adopter_metrics(), "callerid_adopter_attach_requests_total", result="attached")
    moved = cl.ssh(a, command=attach_cmd(cl, 5451))
    assert "RC=0" in moved.out and "job_5451/step_extern" in job_cgroup(moved), moved.out + moved.err + cl.logs()
    assert metric(cl.adopter_metrics(), "callerid_adopter_attach_requests_total", result="attached") == before + 1
    assert "result=attached" in cl.adopter.log_text()
    foreign = cl.ssh(a, command=attach_cmd(cl, 5453))
    assert "RC=1" in foreign.out and "job_5452/step_extern" in job_cgroup(foreign), foreign.out
    assert "not one of your jobs" in foreign.err


def test_attach_never_moves_a_session_the_caller_id_placed(cl):
    a = cl.users[0]
    cl.dst_jobs.create(a.uid, 5461)
    cl.dst_jobs.create(a.uid, 5462)
    cl.src_jobs.create(a.uid, 5461)
    login = cl.ssh(a, job=5461, command=attach_cmd(cl, 5462))   # from inside job 5461: determined
    assert "RC=1" in login.out and "job_5461/step_extern" in job_cgroup(login), login.out + cl.logs()
    assert "determined by where the connection came from" in login.err
