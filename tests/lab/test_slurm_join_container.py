"""join_container on real Slurm with JobContainerType=job_container/tmpfs: a file the job wrote in
its private /tmp is visible in an ssh session adopted into the job, through pam_callerid.so
(port 22) and through Slurm's pam_slurm_adopt (port 2222) alike; with join_container=0 it is not."""

from __future__ import annotations

import os
import time
from pathlib import Path

import pytest

from tests.infra.slurmlab import PSA_PORT, SSH_PORT
from tests.lab.conftest import JOB_WAIT

pytestmark = pytest.mark.lab


LAB_OPTIONS = {"job_container": True}   # conftest's `lab` fixture: JobContainerType=job_container/tmpfs


def ssh_cat(lab, user, path: str, port: int):
    # the job's line: v1's freezer (hybrid hosts), or cgroup v2's (systemd hosts)
    argv = lab.ssh_argv(user, lab.node("node2").ip, f"cat {path}; grep -E ':freezer:|^0::' /proc/self/cgroup",
                        port=port)
    return lab.run("node1", argv, user=user, timeout=60)


@pytest.mark.parametrize("via", ["callerid", "pam_slurm_adopt"])
def test_session_sees_the_jobs_private_tmp(lab, jobs, via):
    u = lab.user("cidlab1")
    mark = f"jc-mark-{os.getpid()}-{via}"
    job = lab.sbatch("node1", u, f"#!/bin/bash\necho secret-$SLURM_JOB_ID > /tmp/{mark}\nsleep 600\n",
                     ["-w", "node2", "--mem=100", "-t", "10"])
    jobs.append(job)
    lab.wait_job_running(job, timeout=JOB_WAIT)
    # the job's /tmp, seen from the host: Slurm 22.05 keeps it in <BasePath>/<job>/.<job>, 24.11 in
    # that directory's _tmp (seen in the Debian 13 VM): whichever this Slurm has
    base = Path(lab.root, "jc", "node2", str(job), f".{job}")
    private = (base / mark, base / "_tmp" / mark)
    end = time.monotonic() + JOB_WAIT
    while not any(p.exists() for p in private) and time.monotonic() < end:
        time.sleep(0.1)
    assert any(p.exists() for p in private), sorted(str(p) for p in Path(lab.root, "jc").rglob("*"))[:20]
    assert not Path("/tmp", mark).exists()   # private: not in the host's /tmp
    r = ssh_cat(lab, u, f"/tmp/{mark}", SSH_PORT if via == "callerid" else PSA_PORT)
    assert r.returncode == 0, r.stderr
    assert f"secret-{job}" in r.stdout, r.stdout + r.stderr
    assert f"/job_{job}/step_extern" in r.stdout
    if via == "callerid" and lab.state.get("devlog"):   # the lab's own /dev/log listener: the module's syslog
        log = Path(lab.state["devlog"]["log"]).read_text(errors="replace")
        assert f"user=cidlab1 verdict=adopt reason=single_job job={job}" in log, log[-2000:]


def test_join_container_0_keeps_the_hosts_tmp(lab, jobs):
    u = lab.user("cidlab1")
    mark = f"jc-mark-{os.getpid()}-off"
    job = lab.sbatch("node1", u, f"#!/bin/bash\necho secret > /tmp/{mark}\nsleep 600\n",
                     ["-w", "node2", "--mem=100", "-t", "10"])
    jobs.append(job)
    lab.wait_job_running(job, timeout=JOB_WAIT)
    lab.set_hook("node2", "join_container=0")
    try:
        r = ssh_cat(lab, u, f"/tmp/{mark}", SSH_PORT)
    finally:
        lab.set_hook("node2")
    assert f"/job_{job}/step_extern" in r.stdout, r.stdout + r.stderr   # adopted all the same
    assert "secret" not in r.stdout
