"""X11 on real Slurm (PrologFlags=X11): a job allocated with `salloc --x11` from node1, where an
Xvfb display runs, forwards X11 from its extern step on node2. An ssh session adopted into that
job gets DISPLAY and XAUTHORITY as slurmstepd reports them, through pam_callerid.so (port 22)
and through pam_slurm_adopt (port 2222) alike, and an X client in it reaches the display;
with disable_x11=1 it gets neither."""

from __future__ import annotations

import os
import re
import secrets
import subprocess
import time

import pytest

from callerid.adopter import stepd
from tests.helpers import require
from tests.infra.slurmlab import PSA_PORT, SSH_PORT
from tests.lab.conftest import JOB_WAIT

pytestmark = pytest.mark.lab

LAB_OPTIONS = {"x11": True}   # conftest's `lab` fixture: PrologFlags=X11
XVFB_DISPLAY = 77
REMOTE = "echo DISPLAY=${DISPLAY:-none} XAUTHORITY=${XAUTHORITY:-none}; xdpyinfo | grep -m1 '^name of display'"


@pytest.fixture(scope="module")
def x11_job(lab):
    """Xvfb on node1 (the user's display, cookie in their ~/.Xauthority) and a job on node2
    allocated from there with `salloc --x11`; yields (user, job id)."""
    for exe in ("/usr/bin/Xvfb", "/usr/bin/xauth", "/usr/bin/xdpyinfo"):
        require(os.access(exe, os.X_OK), f"{exe} (Debian xvfb, xauth, x11-utils)")
    u = lab.user("cidlab1")
    auth = os.path.join(u.home, ".Xauthority")
    lab.run("node1", ["xauth", "-f", auth, "add", f":{XVFB_DISPLAY}", ".", secrets.token_hex(16)], user=u,
            check=True)
    xvfb = lab.popen("node1", ["Xvfb", f":{XVFB_DISPLAY}", "-nolisten", "tcp", "-auth", auth], user=u,
                     stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    salloc = None
    try:
        end = time.monotonic() + 20
        while not os.path.exists(f"/tmp/.X11-unix/X{XVFB_DISPLAY}") and time.monotonic() < end:
            time.sleep(0.1)
        probe = lab.run("node1", ["xdpyinfo"], user=u, env={"DISPLAY": f":{XVFB_DISPLAY}"}, timeout=20)
        assert probe.returncode == 0, probe.stderr
        salloc = lab.popen("node1", ["salloc", "--x11", "-w", "node2", "--mem=100", "-t", "10", "sleep", "600"],
                           user=u, env={"DISPLAY": f":{XVFB_DISPLAY}", "XAUTHORITY": auth},
                           stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        job = None
        end = time.monotonic() + JOB_WAIT
        while job is None and time.monotonic() < end and salloc.poll() is None:
            r = lab.run(lab.ctl, ["squeue", "-h", "-u", u.name, "-o", "%i"], timeout=15)
            job = int(r.stdout.split()[0]) if r.stdout.split() else None
            time.sleep(0.2)
        if job is None:
            salloc.kill()
            out, err = salloc.communicate(timeout=10)
            pytest.fail(f"salloc --x11 gave no job: rc={salloc.returncode} {err.strip()[-2000:]}")
        lab.wait_job_running(job, timeout=JOB_WAIT)
        yield u, job
        lab.scancel(job)
        lab.wait_job_done(job, timeout=JOB_WAIT)
    finally:
        for p in (salloc, xvfb):
            if p is not None and p.poll() is None:
                p.terminate()
                try:
                    p.wait(timeout=10)
                except subprocess.TimeoutExpired:
                    p.kill()
                    p.wait(timeout=10)


def session_env(r: subprocess.CompletedProcess) -> dict:
    m = re.search(r"DISPLAY=(\S+) XAUTHORITY=(\S+)", r.stdout)
    assert m, r.stdout + r.stderr
    return {"DISPLAY": m.group(1), "XAUTHORITY": m.group(2)}


def test_slurmstepd_reports_the_jobs_x11_display(lab, x11_job):
    u, job = x11_job
    x11 = stepd.x11_display(stepd.socket_path(str(lab.spool / "node2"), "node2", str(job)), 5.0)
    assert x11 is not None and x11.display > 0, x11
    print("slurmstepd:", x11)


def test_session_gets_display_and_xauthority_as_pam_slurm_adopt_sets_them(lab, x11_job):
    u, job = x11_job
    x11 = stepd.x11_display(stepd.socket_path(str(lab.spool / "node2"), "node2", str(job)), 5.0)
    got = {}
    for via, port in (("callerid", SSH_PORT), ("pam_slurm_adopt", PSA_PORT)):
        r = lab.run("node1", lab.ssh_argv(u, lab.node("node2").ip, REMOTE, port=port), user=u, timeout=60)
        got[via] = session_env(r)
        assert r.returncode == 0 and "name of display" in r.stdout, f"{via}: {r.stdout}{r.stderr}"
    print(got)
    expected = {"DISPLAY": f"localhost:{x11.display}.0", "XAUTHORITY": x11.xauthority or "none"}
    assert got["callerid"] == got["pam_slurm_adopt"] == expected


def test_disable_x11_gives_the_session_no_display(lab, x11_job):
    u, job = x11_job
    lab.set_hook("node2", "disable_x11=1")
    try:
        r = lab.run("node1", lab.ssh_argv(u, lab.node("node2").ip, REMOTE, port=SSH_PORT), user=u, timeout=60)
    finally:
        lab.set_hook("node2")
    assert session_env(r) == {"DISPLAY": "none", "XAUTHORITY": "none"}, r.stdout + r.stderr
