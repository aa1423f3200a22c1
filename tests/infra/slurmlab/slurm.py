"""Running commands on a lab node, and the Slurm client calls tests make (sbatch, scontrol, squeue, ...).

A mixin of SlurmLab: it uses the lab's nodes, users, slurm.conf and log directory."""

from __future__ import annotations

import subprocess
import time

from .. import pace
from . import cgroups
from .config import SBIN_PATH, SSH_PORT, USER_PATH, LabUser
from .procctl import node_argv, tail

TERMINAL_JOB_STATES = {"BOOT_FAIL", "CANCELLED", "COMPLETED", "DEADLINE", "FAILED", "NODE_FAIL", "OUT_OF_MEMORY",
                       "PREEMPTED", "TIMEOUT", "REVOKED", "SPECIAL_EXIT"}


class LabError(RuntimeError):
    pass


class LabBusy(LabError):
    """Another lab is up (its daemons are alive): bring it down first."""


class JobFailed(LabError):
    pass


def parse_kv(line: str) -> dict:
    """`scontrol show ... -o` output as a dict (values with spaces are glued back)."""
    out, last = {}, None
    for tok in line.split():
        k, sep, v = tok.partition("=")
        if sep and k and k.replace("/", "").replace(":", "").replace("_", "").isalnum():
            out[k] = v
            last = k
        elif last:
            out[last] += " " + tok
    return out


def parse_listpids(text: str) -> dict[str, list[int]]:
    """`scontrol listpids` output: step ("extern", "batch", "0", ...) -> pids."""
    out: dict[str, list[int]] = {}
    for line in text.splitlines():
        parts = line.split()
        if len(parts) >= 3 and parts[0].isdigit():
            out.setdefault(parts[2], []).append(int(parts[0]))
    return out


class SlurmClient:
    """Commands inside a node's network namespace, and Slurm's client tools through them."""

    # ---- running commands on a node
    def env(self, user: LabUser | None = None, extra: dict | None = None) -> dict:
        e = {"PATH": USER_PATH if user else SBIN_PATH, "SLURM_CONF": str(self.conf), "LANG": "C.UTF-8",
             "HOME": user.home if user else "/root", "USER": user.name if user else "root",
             "LOGNAME": user.name if user else "root", "SHELL": "/bin/bash"}
        e.update(extra or {})
        return e

    def popen(self, node, argv: list[str], user: str | LabUser | None = None, env: dict | None = None,
              uts: bool = True, **kw) -> subprocess.Popen:
        """Start argv inside node's netns (own UTS namespace named like the node), as `user` if given.
        nsenter-style setns, not `ip netns exec` (which remounts /sys and hides /sys/fs/cgroup)."""
        n = self.node(node)
        u = self.user(user) if user is not None else None
        kw.setdefault("cwd", u.home if u else str(self.root))
        kw.setdefault("stdin", subprocess.DEVNULL)
        p = subprocess.Popen(node_argv(argv, n.netns.path, n.name if uts else None, u), env=self.env(u, env), **kw)
        self._children.append(p)
        return p

    def run(self, node, argv: list[str], user: str | LabUser | None = None, env: dict | None = None,
            timeout: float = 60, check: bool = False, input: str | None = None, uts: bool = True,
            **kw) -> subprocess.CompletedProcess:
        """Run argv inside node's netns with SLURM_CONF set (as `user` if given); output captured as text."""
        n = self.node(node)
        u = self.user(user) if user is not None else None
        kw.setdefault("cwd", u.home if u else str(self.root))
        kw.setdefault("capture_output", True)
        kw.setdefault("text", True)
        if input is None:
            kw.setdefault("stdin", subprocess.DEVNULL)
        r = subprocess.run(node_argv(argv, n.netns.path, n.name if uts else None, u), env=self.env(u, env),
                           input=input, timeout=timeout, check=False, **kw)
        if check and r.returncode != 0:
            raise LabError(f"{' '.join(argv)} on {n.name} as {u.name if u else 'root'} exited {r.returncode}: "
                           f"{(r.stderr or '').strip()[-1000:]}")
        return r

    # ---- Slurm
    def node_states(self) -> dict[str, str]:
        """node -> state as sinfo prints it (idle, mixed, alloc, down*, ...); {} while slurmctld is not up."""
        try:
            r = self.run(self.ctl, ["sinfo", "-h", "-N", "-o", "%N %t"], timeout=15)
        except subprocess.TimeoutExpired:
            return {}
        if r.returncode != 0:
            return {}
        return dict(line.split() for line in r.stdout.split("\n") if len(line.split()) == 2)

    def sbatch(self, node, user: str | LabUser, script_text: str, extra_args=()) -> int:
        """Submit script_text from `node` as `user`; returns the job id."""
        if not script_text.startswith("#!"):
            script_text = "#!/bin/bash\n" + script_text
        r = self.run(node, ["sbatch", "--parsable", *extra_args], user=user, input=script_text, timeout=30)
        if r.returncode != 0:
            raise LabError(f"sbatch {' '.join(extra_args)} failed ({r.returncode}): {r.stderr.strip()}")
        return int(r.stdout.strip().split(";")[0])

    def job_info(self, job_id: int) -> dict:
        r = self.run(self.ctl, ["scontrol", "show", "job", "-o", str(job_id)], timeout=15)
        if r.returncode != 0 or not r.stdout.strip():
            return {}
        return parse_kv(r.stdout.strip().splitlines()[0])

    def job_state(self, job_id: int) -> str:
        return self.job_info(job_id).get("JobState", "")

    def expand_nodelist(self, nodelist: str) -> list[str]:
        if not nodelist or nodelist == "(null)":
            return []
        r = self.run(self.ctl, ["scontrol", "show", "hostnames", nodelist], timeout=15, check=True)
        return r.stdout.split()

    def job_nodes(self, job_id: int) -> list[str]:
        return self.expand_nodelist(self.job_info(job_id).get("NodeList", ""))

    def job_uid(self, job_id: int) -> int:
        uid = self.job_info(job_id).get("UserId", "")  # "cidlab1(1001)"
        return int(uid.partition("(")[2].rstrip(")"))

    def wait_job_running(self, job_id: int, timeout: float = 60, extern: bool = True) -> dict:
        """Wait until the job RUNs and (extern=True) its extern step holds a process on every node of
        the job (PrologFlags=contain: the step that adoption puts sessions into). Returns scontrol's fields."""
        deadline = time.monotonic() + timeout
        info: dict = {}
        while time.monotonic() < deadline:
            info = self.job_info(job_id)
            st = info.get("JobState", "")
            if st in TERMINAL_JOB_STATES:
                raise JobFailed(f"job {job_id} ended as {st} before running: {info.get('Reason')}\n" +
                                "\n".join(tail(self.logdir / f"slurmd-{n.name}.log", 10) for n in self.nodes))
            if st == "RUNNING":
                if not extern:
                    return info
                nodes = self.expand_nodelist(info.get("NodeList", ""))
                if nodes and all(cgroups.job_pids(cgroups.find_job(n, job_id)) for n in nodes):
                    return info
            time.sleep(0.1)
        raise TimeoutError(f"job {job_id} not running in {timeout}s: {info.get('JobState')} "
                           f"reason={info.get('Reason')}")

    def wait_job_done(self, job_id: int, timeout: float = 60) -> str:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            st = self.job_state(job_id)
            if st == "" or st in TERMINAL_JOB_STATES:
                return st
            time.sleep(0.1)
        raise TimeoutError(f"job {job_id} still not done after {timeout}s")

    def scancel(self, job_id: int, signal_name: str | None = None) -> None:
        """Cancel (or signal) a job; a job that already ended is not an error."""
        argv = ["scancel", *([f"--signal={signal_name}"] if signal_name else []), str(job_id)]
        r = self.run(self.ctl, argv, timeout=30)
        if r.returncode != 0 and not any(x in r.stderr for x in ("already complet", "Invalid job id")):
            raise LabError(f"scancel {job_id}: {r.stderr.strip()}")

    def jobs(self) -> list[int]:
        r = self.run(self.ctl, ["squeue", "-h", "-o", "%i"], timeout=15)
        return [int(x) for x in r.stdout.split() if x.isdigit()] if r.returncode == 0 else []

    def listpids(self, job_id: int, node) -> dict[str, list[int]]:
        """`scontrol listpids JOB NODE` run on node: step ("extern", "batch", "0", ...) -> pids."""
        n = self.node(node)
        return parse_listpids(self.run(n, ["scontrol", "listpids", str(job_id), n.name], timeout=30).stdout)

    def wait_steps(self, job_id: int, node, steps=("extern", "batch"), timeout: float = 30) -> dict[str, list[int]]:
        """Wait until `scontrol listpids` on node lists a process for each of these steps; returns listpids."""
        deadline = time.monotonic() + timeout
        pids: dict[str, list[int]] = {}
        while time.monotonic() < deadline:
            pids = self.listpids(job_id, node)
            if all(pids.get(s) for s in steps):
                return pids
            time.sleep(0.1)
        raise TimeoutError(f"job {job_id} on {self.node(node).name}: steps {steps} not all running "
                           f"after {timeout}s: {pids}")

    def scontrol_callerid(self, node, src_ip: str, src_port: int, dst_ip: str,
                          dst_port: int) -> tuple[int, str] | None:
        """Slurm's own answer for a TCP tuple (`scontrol callerid`, run on node): (job id, node) or None."""
        # scontrol takes the address family as a fifth argument and defaults to IPv4
        af = "6" if ":" in src_ip else "4"
        r = self.run(node, ["scontrol", "callerid", src_ip, str(src_port), dst_ip, str(dst_port), af], timeout=30)
        parts = r.stdout.split()
        if r.returncode != 0 or len(parts) < 2 or not parts[0].isdigit():
            return None
        return int(parts[0]), parts[1]

    def ssh_argv(self, user: str | LabUser, host: str, command: str, port: int = SSH_PORT,
                 as_user: str | None = None, timeout: int = 10) -> list[str]:
        """ssh argv for `user` logging in to host as as_user (default: user) with the matching key it holds."""
        u = self.user(user)
        target = as_user or u.name
        return ["ssh", "-i", str(u.key_of(target)), "-o", "IdentitiesOnly=yes",
                "-o", f"ConnectTimeout={pace.scaled_int(timeout)}", "-o", "LogLevel=INFO",
                "-p", str(port), f"{target}@{host}", command]
