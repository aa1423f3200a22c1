"""The real-Slurm lab (tests/infra/slurmlab/) works end to end: slurmctld + one slurmd per
network-namespace node, MUNGE, the job cgroup trees of the host's cgroup version, and an ssh
session opened from inside a job landing in that job on the other node — through callerid (port 22)
and through Slurm's own pam_slurm_adopt (port 2222) — with Slurm's `scontrol listpids` and
`scontrol callerid` agreeing."""

from __future__ import annotations

import re
import time
from pathlib import Path

import pytest

from callerid.adopter import stepd
from tests.infra.slurmlab import PSA_PORT, SSH_PORT, cgroups
from tests.lab.conftest import JOB_WAIT

pytestmark = pytest.mark.lab

SSH_WAIT = 30      # the ssh session started from a job must report within this


def test_all_nodes_idle(lab):
    assert lab.node_states() == {"node1": "idle", "node2": "idle"}


def test_batch_job_runs_on_node2_with_extern_step_cgroups(lab, jobs):
    u = lab.user("cidlab1")
    job = lab.sbatch("node1", u, "#!/bin/bash\nsleep 120\n", ["-w", "node2", "--mem=100", "-t", "5"])
    jobs.append(job)
    info = lab.wait_job_running(job, timeout=JOB_WAIT)
    assert lab.job_nodes(job) == ["node2"]
    assert info["UserId"].startswith(f"cidlab1({u.uid})")
    # callerid's adopter finds the job in cgroupfs as Slurm made it, owned by the user
    cg = lab.job_cgroups("node2", job)
    assert cg is not None and cg.uid == u.uid and cg.layout == lab.host.version, cg
    base = cgroups.job_dirs(cg)
    assert all((d / "step_extern").is_dir() for d in base), base
    # the extern step's holder process (PrologFlags=contain) and the batch script, in Slurm's view and
    # ours (the batch step starts a moment after the extern step)
    pids = lab.wait_steps(job, "node2", ("extern", "batch"), timeout=JOB_WAIT)
    assert all((d / "step_batch").is_dir() for d in base), base
    assert set(pids["extern"]) <= cgroups.job_pids(cg)
    # the job's owner as its extern step's slurmstepd tells it (what the adopter asks on cgroup v2)
    sock = stepd.socket_path(str(lab.spool / "node2"), "node2", str(job))
    assert stepd.extern_uid(sock, 5.0) == u.uid, sock
    if cg.layout == "v1":  # proctrack/cgroup's freezer, task/cgroup's cpuset and memory
        assert {"freezer", "cpuset", "memory"} <= {Path(d).parts[4] for d in cg.extern}, cg.extern
    # --mem=100 is enforced by task/cgroup (ConstrainRAMSpace)
    assert cgroups.memory_limit(cg) == 100 * 1024 * 1024
    lab.scancel(job)
    assert lab.wait_job_done(job, timeout=JOB_WAIT) in ("CANCELLED", "")
    deadline = time.monotonic() + 30
    while any(d.exists() for d in base) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not any(d.exists() for d in base), "Slurm removes a job's cgroups when it ends"


# The remote command prints the TCP tuple, the pid of sshd [priv] (the shell's grandparent: the
# process PAM ran in, which adoption moves), and its own cgroups.
REMOTE = ('echo TUPLE $SSH_CONNECTION; echo PRIV $(cut -d" " -f4 /proc/$PPID/stat); '
          'cat /proc/self/cgroup; echo END; sleep 60')


@pytest.mark.parametrize("via", ["callerid", "pam_slurm_adopt"])
def test_ssh_from_a_job_lands_in_that_job(lab, jobs, via):
    u = lab.user("cidlab1")
    port = SSH_PORT if via == "callerid" else PSA_PORT
    node1, node2 = lab.node("node1"), lab.node("node2")
    # Job J spans node1 and node2; its batch script (on node1) waits for a go file, then ssh'es to node2.
    script = f"""#!/bin/bash
for i in $(seq 1200); do [ -e "$HOME/go.$SLURM_JOB_ID" ] && break; sleep 0.1; done
ssh -i {u.key} -p {port} -o BatchMode=yes {u.name}@{node2.ip} '{REMOTE}' > "$HOME/ssh.$SLURM_JOB_ID.out" 2>&1
"""
    j = lab.sbatch("node1", u, script, ["-N2", "-w", "node1,node2", "--mem=100", "-t", "5"])
    jobs.append(j)
    lab.wait_job_running(j, timeout=JOB_WAIT)
    assert lab.job_info(j)["BatchHost"] == "node1"
    # A second, newer job of the same user on node2: "newest" would pick it, only the caller ID finds J.
    k = lab.sbatch("node1", u, "#!/bin/bash\nsleep 300\n", ["-w", "node2", "--mem=100", "-t", "5"])
    jobs.append(k)
    lab.wait_job_running(k, timeout=JOB_WAIT)

    Path(u.home, f"go.{j}").touch()
    out_file = Path(u.home, f"ssh.{j}.out")
    deadline = time.monotonic() + SSH_WAIT
    out = ""
    while time.monotonic() < deadline:
        out = out_file.read_text(errors="replace") if out_file.exists() else ""
        if "END" in out:
            break
        time.sleep(0.1)
    assert "END" in out, f"ssh from job {j} gave:\n{out}\n{lab.logs_tail(15)}"

    m = re.search(r"^TUPLE (\S+) (\d+) (\S+) (\d+)$", out, re.M)
    assert m, out
    src, sport, dst, dport = m[1], int(m[2]), m[3], int(m[4])
    assert (src, dst, dport) == (node1.ip, node2.ip, port)
    priv = int(re.search(r"^PRIV (\d+)$", out, re.M)[1])

    # the session's processes sit in J's extern step on node2, in every controller Slurm made
    steps = cgroups.job_steps(out, lab.host.version)
    assert steps == {h: (j, "extern") for h in steps}, f"{steps} (K={k})\n{out}"

    # Slurm agrees: listpids names the adopted sshd under J's extern step, not under K
    pids = lab.listpids(j, "node2")
    assert priv in pids.get("extern", []), (priv, pids)
    assert priv not in sum(lab.listpids(k, "node2").values(), [])
    # and Slurm's own caller ID for the session's tuple names J on node1
    assert lab.scontrol_callerid("node2", src, sport, dst, dport) == (j, "node1")

    if via == "callerid":
        log = Path(next(r["log"] for r in lab.state["procs"] if r["name"] == "adopter-node2")).read_text()
        assert f"from={src}:{sport} job={j} decision=adopt reason=callerid" in log, log[-3000:]
    elif lab.state.get("devlog"):
        syslog = Path(lab.state["devlog"]["log"]).read_text(errors="replace")
        assert f"Process {priv} adopted into job {j}" in syslog, syslog[-3000:]
