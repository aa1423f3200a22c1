"""Slurm-layout job cgroups made by tests (v1 and v2), and processes started inside them.

Laid out exactly as slurmd makes them, so callerid cannot tell them from real
jobs: v1 <ctrl>/slurm_<node>/uid_<uid>/job_<id>/step_<step> in each controller,
v2 <cgroup2>/system.slice/[<node>_]slurmstepd.scope/<jobdir>/step_<step>/user/task_special,
<jobdir> job_<id>, or the SLUID itself when `job` is one (Slurm 26.05).
With extern_process (the lab's trees), a v2 job's extern step holds a process of the job's
user in task_special, as Slurm 22.05's does (its extern `sleep`): v2 job directories carry no
uid, and with no slurmstepd to ask, that process is how the adopter learns the owner
(adopter/jobs.py v2_owner). Off by default: tests of the lookup itself make empty jobs.
By default the layout is the running system's: v1 where a v1 freezer is mounted (hybrid
hosts such as the development machines), else v2 on the cgroup2 hierarchy (a systemd host).
"""

from __future__ import annotations

import os
import pwd
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path

from callerid.adopter.jobs import DEFAULT_ROOT, LocalJob, default_v2_mount, list_jobs, parse_procs

from .procs import as_user, in_cgroups, in_netns, wait_started

CLONE_NEWNET = 0x40000000


def setns_net(path: str) -> None:
    """Join the network namespace at path (os.setns arrived only in Python 3.12)."""
    import ctypes
    libc = ctypes.CDLL(None, use_errno=True)
    fd = os.open(path, os.O_RDONLY)
    try:
        if libc.setns(fd, CLONE_NEWNET) != 0:
            err = ctypes.get_errno()
            raise OSError(err, f"setns({path}): {os.strerror(err)}")
    finally:
        os.close(fd)


V1_CONTROLLERS = ("freezer", "memory", "devices", "cpuset", "cpuacct")


def _v1_available(root: str) -> list[str]:
    return [c for c in V1_CONTROLLERS if os.path.ismount(f"{root}/{c}")]


def system_layout(root: str = DEFAULT_ROOT) -> str:
    """The layout Slurm's proctrack/cgroup would use here: v1 if a v1 freezer is mounted."""
    return "v1" if os.path.ismount(f"{root}/freezer") else "v2"


def job_dir(job: int | str) -> str:
    """A job's directory name: job_<id>, or a SLUID as it is (Slurm 26.05, v2)."""
    return job if isinstance(job, str) and job.startswith("s") else f"job_{job}"


@dataclass
class JobTree:
    node: str
    root: str = DEFAULT_ROOT
    layout: str = ""    # "v1" or "v2"; empty: the running system's (system_layout)
    v2_mount: str = ""  # empty: the cgroup2 hierarchy under root (root itself, or root/unified)
    scope: str = "slurmstepd.scope"   # v2; stock Debian builds say "<node>_slurmstepd.scope"
    extern_process: bool = False  # v2: the job's user runs a process in step_extern (22.05)
    created: list = field(default_factory=list)
    procs: list = field(default_factory=list)
    holders: dict = field(default_factory=dict)   # (uid, job) -> the extern step's process

    def __post_init__(self):
        self.layout = self.layout or system_layout(self.root)
        self.v2_mount = self.v2_mount or default_v2_mount(self.root)

    def _mk(self, path: Path):
        if not path.exists():
            path.mkdir()
            self.created.append(path)
        if path.parent.name == "cpuset" or "cpuset" in path.parts:
            # cpuset v1 refuses tasks until cpus and mems are set: copy the parent's.
            for f in ("cpuset.cpus", "cpuset.mems"):
                if (path / f).exists() and not (path / f).read_text().strip():
                    (path / f).write_text((path.parent / f).read_text())

    def step_dirs(self, uid: int, job: int | str, step: str) -> list[Path]:
        if self.layout == "v1":
            return [Path(self.root, c, f"slurm_{self.node}", f"uid_{uid}", job_dir(job), f"step_{step}")
                    for c in _v1_available(self.root)]
        base = Path(self.v2_mount, "system.slice", self.scope, job_dir(job), f"step_{step}")
        return [base / "user" / "task_special"] if step == "extern" else [base / "user" / "task_0"]

    def create(self, uid: int, job: int | str, steps=("extern", "0")) -> None:
        for step in steps:
            for leaf in self.step_dirs(uid, job, step):
                top = next(i for i, part in enumerate(leaf.parts)
                           if part.startswith("slurm_") or part == "system.slice")
                p = Path(*leaf.parts[:top])
                for part in leaf.parts[top:]:
                    p = p / part
                    self._mk(p)
        if self.layout == "v2" and "extern" in steps and self.extern_process:
            gid = _gid_of(uid)
            self.holders[(uid, job)] = self.popen(["sleep", "infinity"], uid, gid, job, "extern")

    def refuse_tasks(self, uid: int, job: int | str) -> None:
        """Make the job's extern step refuse new tasks, so an adoption write fails (EINVAL/EBUSY),
        with what the running layout has. v1: an empty cpuset (cpuset refuses tasks without
        cpus). v2: a domain controller enabled in the leaf's cgroup.subtree_control (the
        no-internal-process rule); the extern process moves to step 0 first, where it still
        names the job's owner."""
        if self.layout == "v1":
            cpuset = [d for d in self.step_dirs(uid, job, "extern") if "cpuset" in d.parts]
            if not cpuset:
                raise AssertionError(f"v1 layout without a cpuset controller under {self.root}: "
                                     "nothing here makes a v1 step refuse tasks")
            (cpuset[0] / "cpuset.cpus").write_text("\n")
            return
        leaf = self.step_dirs(uid, job, "extern")[0]
        holder = self.holders.get((uid, job))
        if holder is not None:
            self.create(uid, job, steps=("0",))
            self.procs_file(uid, job, "0")[0].write_text(str(holder.pid))
        slice_dir = Path(self.v2_mount, "system.slice")
        domain = [c for c in ("memory", "io") if c in (slice_dir / "cgroup.subtree_control").read_text().split()]
        if not domain:
            raise AssertionError(f"{slice_dir}/cgroup.subtree_control enables neither memory nor io: "
                                 "no domain controller to make a v2 step refuse tasks")
        # from the stepd scope down (never the machine's own slices); each level needs its parent's
        for d in reversed([leaf, *[q for q in leaf.parents if slice_dir in q.parents]]):
            if domain[0] not in (d / "cgroup.subtree_control").read_text().split():
                (d / "cgroup.subtree_control").write_text(f"+{domain[0]}")

    def procs_file(self, uid: int, job: int | str, step: str) -> list[Path]:
        return [d / "cgroup.procs" for d in self.step_dirs(uid, job, step)]

    def pids(self, uid: int, job: int | str, step: str) -> set[int]:
        out = set()
        for f in self.procs_file(uid, job, step):
            out |= {int(x) for x in f.read_text().split()}
        return out

    def popen(self, argv, uid: int, gid: int, job: int | str, step: str = "0", netns: str | None = None,
              **kw) -> subprocess.Popen:
        """Start argv as uid:gid inside the job step (joins before exec, like slurmstepd),
        optionally in the network namespace at path `netns` (joined while still root)."""
        files = [str(f) for f in self.procs_file(uid, job, step)]
        wrapped = as_user(argv, uid, gid)
        if netns:
            wrapped = in_netns(wrapped, netns)
        p = subprocess.Popen(in_cgroups(wrapped, files), **kw)
        self.procs.append(p)
        wait_started(p, argv[0], uid)
        return p

    def cleanup(self) -> None:
        for p in self.procs:
            if p.poll() is None:
                p.kill()
                p.wait(timeout=5)
        for path in reversed(self.created):
            procs = path / "cgroup.procs"
            if procs.exists():
                for pid in procs.read_text().split():
                    try:
                        os.kill(int(pid), 9)  # only pids inside cgroups this tree created
                    except ProcessLookupError:
                        pass
            for _ in range(100):  # killed tasks leave the cgroup asynchronously
                try:
                    path.rmdir()
                    break
                except FileNotFoundError:
                    break
                except OSError:
                    time.sleep(0.02)
        self.created.clear()
        self.holders.clear()


def _gid_of(uid: int) -> int:
    try:
        return pwd.getpwuid(uid).pw_gid
    except KeyError:
        return uid


def jobs_of(uid: int, nodename: str, root: str = DEFAULT_ROOT, v2_mount: str | None = None,
            proc: str = "/proc") -> list[LocalJob]:
    """The jobs of user `uid` with an extern step on node `nodename`, oldest first."""
    if uid < 0:
        return []
    return [j for j in list_jobs(nodename, root, v2_mount, proc) if j.uid == uid]


def pid_in_extern(pid: int, job: LocalJob) -> bool:
    """True if `pid` is listed in cgroup.procs of every extern dir of `job` (read back)."""
    if not job.extern:
        return False
    for path in job.extern:
        try:
            with open(os.path.join(path, "cgroup.procs"), "rb") as f:
                pids = parse_procs(f.read().decode(errors="replace"))
        except OSError:
            return False
        if pid not in pids:
            return False
    return True
