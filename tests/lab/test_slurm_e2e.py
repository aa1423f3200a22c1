"""callerid on a real Slurm cluster (tests/infra/slurmlab/): sessions launched from jobs land in the
job they came from, callerid agrees with Slurm's own `scontrol callerid`, Slurm kills adopted
sessions at job end, and the adopter's scenario matrix holds against real jobs — side by side with
Slurm's pam_slurm_adopt on a second sshd, whose decisions are tabulated for parity."""

from __future__ import annotations

import contextlib
import json
import re
import time
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.infra import pace
from tests.infra.slurmlab import CALLERID, PSA_PORT, SSH_PORT, cgroups
from tests.lab.conftest import JOB_WAIT

pytestmark = pytest.mark.lab
# Prints the 4-tuple, the pid of sshd [priv] (the shell's grandparent: the process PAM ran in),
# the shell's cgroups, and — while the session is alive — Slurm's `scontrol listpids` on node2.
REMOTE = ('echo TUPLE $SSH_CONNECTION; echo PRIV $(cut -d" " -f4 /proc/$PPID/stat); '
          'cat /proc/self/cgroup; echo END; scontrol listpids 2>&1 | sed "s/^/LISTPIDS /"')
RESULTS = Path(__file__).resolve().parents[2] / "bench" / "results"


@dataclass
class Session:
    rc: int
    out: str
    err: str

    @property
    def four_tuple(self):
        m = re.search(r"^TUPLE (\S+) (\d+) (\S+) (\d+)$", self.out, re.M)
        return (m[1], int(m[2]), m[3], int(m[4])) if m else None

    @property
    def priv(self) -> int | None:
        m = re.search(r"^PRIV (\d+)$", self.out, re.M)
        return int(m[1]) if m else None

    def steps(self) -> dict:
        """hierarchy -> (job, step) of the session's shell (callerid.slurm_cgroup parses /proc/self/cgroup)."""
        return cgroups.job_steps(self.out, cgroups.host_cgroups().version)

    def listed_under(self, pid: int) -> tuple[int, str] | None:
        """(job, step) that `scontrol listpids` (run in the session) lists pid under."""
        for line in self.out.splitlines():
            f = line.split()
            if len(f) >= 4 and f[0] == "LISTPIDS" and f[1] == str(pid):
                return int(f[2]), f[3]
        return None

    def job(self) -> int | None:
        """The job whose extern step the session sits in (in every job hierarchy), else None."""
        where = set(self.steps().values())
        if len(where) != 1 or None in where:
            return None
        job, step = where.pop()
        return job if step == "extern" else None


def batch(lab, jobs, user, nodes="node2", n=1, script="sleep 600", extra=()) -> int:
    j = lab.sbatch("node1", user, f"#!/bin/bash\n{script}\n",
                   ["-N", str(n), "-w", nodes, "--mem=100", "-t", "10", *extra])
    jobs.append(j)
    lab.wait_job_running(j, timeout=JOB_WAIT)
    return j


def ssh_argv(lab, user, *, from_job=None, key_of=None, host=None, port=SSH_PORT, command=REMOTE, root=False):
    host = host or lab.node("node2").ip
    login = "root" if root else (key_of or user).name
    key = "/run/callerid-lab/keys/root" if root else lab.user(user).key_of((key_of or user).name)
    argv = ["ssh", "-F", "none", "-i", str(key), "-p", str(port), "-o", "BatchMode=yes", "-o", "LogLevel=INFO",
            "-o", "StrictHostKeyChecking=no", "-o", "UserKnownHostsFile=/dev/null",
            "-o", f"ConnectTimeout={pace.scaled_int(10)}", f"{login}@{host}", command]
    if from_job is not None:
        argv = ["srun", f"--jobid={from_job}", "--overlap", "-w", "node1", "-N1", "-n1", *argv]
    return argv


def ssh(lab, user, *, root=False, **kw) -> Session:
    """ssh node1 -> node2 as `user` (with key_of's key), from inside job `from_job` (an srun step on
    node1 joined to that job) or from outside any job; returns when the session has ended."""
    r = lab.run("node1", ssh_argv(lab, user, root=root, **kw), user=None if root else user, timeout=60)
    return Session(r.returncode, r.stdout, r.stderr)


@contextlib.contextmanager
def live_ssh(lab, user, **kw):
    """Like ssh(), but the session stays open (its connection alive) until the block ends."""
    import subprocess
    p = lab.popen("node1", ssh_argv(lab, user, command=REMOTE + "; echo READY; exec sleep 120", **kw),
                  user=user, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        out = []
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            line = p.stdout.readline()
            if not line or line.strip() == "READY":
                break
            out.append(line)
        yield Session(0 if out else 1, "".join(out), "")
    finally:
        p.kill()
        p.wait(10)


def callerid_answer(lab, t) -> dict:
    """callerid's answer for tuple t, asked from node2 as the adopter would (root, MUNGE)."""
    src, sport, dst, dport = t
    r = lab.run("node2", [CALLERID, "--config", "/run/callerid-lab/node2/adopter.toml", "query", "--json",
                          src, str(sport), dst, str(dport)], timeout=30)
    assert r.returncode in (0, 1), r.stderr
    return json.loads(r.stdout)


def adopter_log(lab, node="node2") -> str:
    log = next(r["log"] for r in lab.state["procs"] if r["name"] == f"adopter-{node}")
    return Path(log).read_text(errors="replace")


@pytest.mark.parametrize("family", ["ipv4", "ipv6"])
def test_session_from_a_job_lands_in_it_and_callerid_agrees_with_slurm(lab, jobs, family):
    u = lab.user("cidlab1")
    j = batch(lab, jobs, u, nodes="node1,node2", n=2)  # the job the ssh comes from
    k = batch(lab, jobs, u)                              # a newer job of the same user on node2
    n2 = lab.node("node2")
    host = n2.ip if family == "ipv4" else n2.ip6
    with live_ssh(lab, u, from_job=j, host=host) as s:
        assert s.rc == 0 and s.four_tuple, s.out + lab.logs_tail(15)
        steps = s.steps()
        assert steps == {h: (j, "extern") for h in steps}, f"landed in {steps} (J={j}, newer K={k})\n{s.out}"
        assert s.listed_under(s.priv) == (j, "extern"), s.out
        # callerid (from node1's BPF map) and Slurm (its /proc scan via slurmd) name the same job
        t = s.four_tuple
        ans = callerid_answer(lab, t)
        assert ans["status"] == "found" and ans["source"] == "bpf" and ans["node"] == "node1"
        assert ans["job_id"] == str(j)
        if family == "ipv4":
            assert lab.scontrol_callerid("node2", *t) == (j, "node1")
        else:
            # Slurm 22.05's daemons listen on IPv4 only unless CommunicationParameters=EnableIPv6,
            # so its caller ID cannot even reach node1's slurmd for an IPv6 tuple; callerid can.
            assert lab.scontrol_callerid("node2", *t) is None
    assert f"job={j} decision=adopt reason=callerid" in adopter_log(lab)


def test_srun_launched_ssh_from_several_tasks_all_land_in_the_job(lab, jobs):
    u = lab.user("cidlab1")
    # 3 tasks: 2 cores on node1 (block distribution), 1 on node2 -- node2 keeps a core for K
    j = batch(lab, jobs, u, nodes="node1,node2", n=2, extra=("-n", "3"))
    batch(lab, jobs, u)  # a second job on node2 so that every login needs the caller ID
    key = lab.user(u).key_of(u.name)
    n2 = lab.node("node2").ip
    one = (f"ssh -F none -i {key} -o BatchMode=yes -o StrictHostKeyChecking=no -o UserKnownHostsFile=/dev/null "
           f"{u.name}@{n2} 'echo CGROUPS $(cat /proc/self/cgroup)'")
    r = lab.run("node1", ["srun", f"--jobid={j}", "--overlap", "-w", "node1", "-N1", "-n2", "bash", "-c", one],
                user=u, timeout=90)
    # srun interleaves the two sessions' output: each prints its /proc/self/cgroup on one line
    lines = [line.split()[1:] for line in r.stdout.splitlines() if line.startswith("CGROUPS ")]
    assert len(lines) == 2, r.stdout + r.stderr
    for words in lines:
        steps = cgroups.job_steps("\n".join(words), lab.host.version)
        assert steps == {h: (j, "extern") for h in steps}, words


def test_slurm_kills_the_adopted_session_when_the_job_ends(lab, jobs):
    u = lab.user("cidlab1")
    j = batch(lab, jobs, u, nodes="node1,node2", n=2)
    argv = ["srun", f"--jobid={j}", "--overlap", "-w", "node1", "-N1", "-n1", "ssh", "-F", "none", "-i",
            str(lab.user(u).key_of(u.name)), "-o", "BatchMode=yes", "-o", "StrictHostKeyChecking=no",
            "-o", "UserKnownHostsFile=/dev/null", f"{u.name}@{lab.node('node2').ip}",
            'echo PRIV $(cut -d" " -f4 /proc/$PPID/stat); exec sleep 300']
    p = lab.popen("node1", argv, user=u, stdout=__import__("subprocess").PIPE, text=True)
    try:
        line = p.stdout.readline()
        priv = int(line.split()[1])
        assert priv in lab.listpids(j, "node2").get("extern", [])
        lab.scancel(j)
        deadline = time.monotonic() + 30
        while Path(f"/proc/{priv}").exists() and time.monotonic() < deadline:
            time.sleep(0.1)
        assert not Path(f"/proc/{priv}").exists(), "the adopted sshd outlived its job"
    finally:
        if p.poll() is None:
            p.kill()
        p.wait(10)


# --- the scenario matrix, against callerid (port 22) and pam_slurm_adopt (port 2222) ---

def outcome(s: Session, uid_jobs: dict) -> str:
    """One word for what happened to a login: the job it landed in (by role), 'unadopted', or 'denied'."""
    if s.rc != 0 or "END" not in s.out:
        return "denied"
    job = s.job()
    if job is None:
        return "unadopted"
    return next((role for role, jid in uid_jobs.items() if jid == job), f"job {job}")


SCENARIOS = (
    "no job on node2",
    "one job on node2",
    "two jobs, ssh from inside the older (multi-node) job",
    "two jobs, ssh from outside any job",
    "root with a job on node2",
    "user B's key from inside user A's job (B has two jobs on node2)",
)

# The same scenarios with one option changed on BOTH modules' PAM lines: every option value
# either module has (issue 14's extended matrix). name -> (base scenario, options).
OPTION_SCENARIOS = {
    "no job, action_no_jobs=ignore": ("no job on node2", ("action_no_jobs=ignore",)),
    "two jobs from outside, action_unknown=allow": ("two jobs, ssh from outside any job", ("action_unknown=allow",)),
    "two jobs from outside, action_unknown=deny": ("two jobs, ssh from outside any job", ("action_unknown=deny",)),
    "root, ignore_root=0": ("root with a job on node2", ("ignore_root=0",)),
    "one job from outside, single_job_skip_rpc=0": ("one job on node2", ("single_job_skip_rpc=0",)),
    "one job, service not handled": ("one job on node2", ("service=nosuchservice",)),
    "one job, service=*": ("one job on node2", ("service=*",)),
    "one job, join_container=0": ("one job on node2", ("join_container=0",)),
    "one job, action_adopt_failure=deny": ("one job on node2", ("action_adopt_failure=deny",)),
    "one job, action_generic_failure=deny": ("one job on node2", ("action_generic_failure=deny",)),
    "one job, unknown option bogus=1": ("one job on node2", ("bogus=1",)),
}
SCENARIOS = SCENARIOS + tuple(OPTION_SCENARIOS)

# Every difference between callerid and pam_slurm_adopt, and why (docs/PARITY.md says the same).
INTENDED_DIFFERENCES = {
    "root, ignore_root=0":
        "pam_slurm_adopt turns ignore_root=0 back into 1 when any action could lock root out (its "
        "'crazy admin' guard: action_no_jobs other than ignore, action_unknown=deny, ...), so root is "
        "ignored; callerid honours ignore_root=0: root goes through the rules like anyone and, with no "
        "job of its own, gets action_no_jobs=deny (admins keep their way in with pam_access, docs/INSTALL.md)",
    "user B's key from inside user A's job (B has two jobs on node2)":
        "pam_slurm_adopt adopts into whatever job the source names, even another user's (A's job J is "
        "on node2 too); callerid checks the job belongs to the PAM user and falls to action_unknown=newest "
        "among B's own jobs, logging a possible escape attempt",
}


def run_scenario(lab, jobs, name: str, port: int) -> tuple[str, dict]:
    if name in OPTION_SCENARIOS:
        base, options = OPTION_SCENARIOS[name]
        lab.set_hook("node2", *options)
        lab.set_psa("node2", "log_level=debug", *options)
        try:
            return run_scenario(lab, jobs, base, port)
        finally:
            lab.set_hook("node2")
            lab.set_psa("node2", "log_level=debug")
    a, b = lab.user("cidlab1"), lab.user("cidlab2")
    if name == "no job on node2":
        return outcome(ssh(lab, a, port=port), {}), {}
    if name == "one job on node2":
        j = batch(lab, jobs, a)
        return outcome(ssh(lab, a, port=port), {"J": j}), {"J": j}
    if name == "two jobs, ssh from inside the older (multi-node) job":
        j = batch(lab, jobs, a, nodes="node1,node2", n=2)
        k = batch(lab, jobs, a)
        return outcome(ssh(lab, a, from_job=j, port=port), {"J (source)": j, "K (newer)": k}), {}
    if name == "two jobs, ssh from outside any job":
        j = batch(lab, jobs, a)
        k = batch(lab, jobs, a)
        return outcome(ssh(lab, a, port=port), {"J (older)": j, "K (newer)": k}), {}
    if name == "root with a job on node2":
        j = batch(lab, jobs, a)
        return outcome(ssh(lab, a, root=True, port=port), {"A's job": j}), {}
    if name == "user B's key from inside user A's job (B has two jobs on node2)":
        j = batch(lab, jobs, a, nodes="node1,node2", n=2)
        k1 = batch(lab, jobs, b)
        k2 = batch(lab, jobs, b)
        s = ssh(lab, a, key_of=b, from_job=j, port=port)
        return outcome(s, {"A's job J (source)": j, "B's K1": k1, "B's K2 (newer)": k2}), {}
    raise ValueError(name)


EXPECTED_CALLERID = {
    "no job on node2": "denied",
    "one job on node2": "J",
    "two jobs, ssh from inside the older (multi-node) job": "J (source)",
    "two jobs, ssh from outside any job": "K (newer)",
    "root with a job on node2": "unadopted",
    "user B's key from inside user A's job (B has two jobs on node2)": "B's K2 (newer)",
    "no job, action_no_jobs=ignore": "unadopted",
    "two jobs from outside, action_unknown=allow": "unadopted",
    "two jobs from outside, action_unknown=deny": "denied",
    "root, ignore_root=0": "denied",           # root has no job of its own: action_no_jobs=deny
    "one job from outside, single_job_skip_rpc=0": "J",   # the source knows no job: newest, the only one
    "one job, service not handled": "unadopted",          # PAM_IGNORE: pam_unix's success stands
    "one job, service=*": "J",
    "one job, join_container=0": "J",
    "one job, action_adopt_failure=deny": "J",   # adoption does not fail here
    "one job, action_generic_failure=deny": "J",  # nothing fails here
    "one job, unknown option bogus=1": "J",      # logged, defaults kept
}


@pytest.fixture(scope="module")
def parity():
    table: dict[str, dict[str, str]] = {}
    yield table
    RESULTS.mkdir(parents=True, exist_ok=True)
    lines = ["| scenario | callerid | pam_slurm_adopt | intended difference |", "| --- | --- | --- | --- |"]
    for name in SCENARIOS:
        row = table.get(name, {})
        c, p = row.get("callerid", "?"), row.get("pam_slurm_adopt", "?")
        lines.append(f"| {name} | {c} | {p} | {INTENDED_DIFFERENCES.get(name, '') if c != p else ''} |")
    (RESULTS / "parity.md").write_text("\n".join(lines) + "\n")


@pytest.mark.parametrize("name", SCENARIOS)
def test_scenario_matrix_and_parity_with_pam_slurm_adopt(lab, jobs, parity, name):
    got = {}
    for via, port in (("callerid", SSH_PORT), ("pam_slurm_adopt", PSA_PORT)):
        got[via], _ = run_scenario(lab, jobs, name, port)
        for j in list(jobs):  # a clean node for the other module's run of the same scenario
            lab.scancel(j)
            lab.wait_job_done(j, timeout=JOB_WAIT)
            jobs.remove(j)
    parity[name] = got
    assert got["callerid"] == EXPECTED_CALLERID[name], (got, lab.logs_tail(15))
    if got["callerid"] != got["pam_slurm_adopt"]:
        assert name in INTENDED_DIFFERENCES, f"unexplained difference: {got}"
    if name.startswith("user B's key"):
        assert "SECURITY possible escape attempt" in adopter_log(lab)
