"""The lab's cgroups: which cgroup version the host runs, where Slurm puts each node's jobs, and
removing what Slurm left. Job directories are found with callerid's own layout code
(callerid.adopter.jobs, callerid.slurm_cgroup), so the lab and the adopter agree on what a job is."""

from __future__ import annotations

import os
import time
from dataclasses import dataclass
from pathlib import Path

from callerid.adopter.jobs import LocalJob, default_v2_mount, list_jobs, parse_procs
from callerid.slurm_cgroup import job_from_cgroup_path

CGROUP_ROOT = Path("/sys/fs/cgroup")
# Controllers Slurm's task/cgroup + proctrack/cgroup need on a pure v2 host (ConstrainCores, ConstrainRAMSpace).
V2_CONTROLLERS = ("cpuset", "cpu", "memory", "pids")
# Where a v2 lab starts slurmd: a cgroup of its own under system.slice, as systemd gives
# slurmd.service with Delegate=yes (Slurm 22.05 then makes <it>/slurmd and moves itself there).
V2_SLURMD_PARENT = "system.slice"


@dataclass(frozen=True)
class HostCgroups:
    """What /proc/self/mountinfo says about cgroups. version: "v1" (legacy or hybrid: Slurm uses
    cgroup/v1) or "v2" (cgroup2 mounted at the root itself)."""

    version: str
    v1_mounts: tuple[str, ...]  # mount points of v1 hierarchies (with controllers or named)
    v2_mount: str | None        # the cgroup2 mount (the root on v2, <root>/unified on hybrid)


def parse_mountinfo(text: str, root: str = str(CGROUP_ROOT)) -> HostCgroups:
    """Pure: the host's cgroup layout from /proc/self/mountinfo text."""
    v1: list[str] = []
    v2 = None
    for line in text.splitlines():
        pre, sep, post = line.partition(" - ")
        fields, fstype = pre.split(), post.split()[:1]
        if not sep or len(fields) < 5 or not fstype:
            continue
        mp = fields[4]
        if fstype == ["cgroup"] and mp not in v1:
            v1.append(mp)
        elif fstype == ["cgroup2"] and (v2 is None or mp == root):
            v2 = mp
    version = "v2" if v2 == root and not v1 else "v1"
    return HostCgroups(version, tuple(v1), v2)


def host_cgroups() -> HostCgroups:
    with open("/proc/self/mountinfo") as f:
        return parse_mountinfo(f.read())


def preflight_problems(host: HostCgroups, controllers_text: str | None) -> list[str]:
    """Pure: why Slurm's cgroup plugins cannot run on this host ([] if they can).
    controllers_text: <root>/cgroup.controllers on a v2 host."""
    if host.version == "v1":
        if f"{CGROUP_ROOT}/freezer" not in host.v1_mounts:
            return [f"cgroup v1 freezer at {CGROUP_ROOT}/freezer (Slurm's cgroup/v1 proctrack)"]
        return []
    have = set((controllers_text or "").split())
    missing = [c for c in V2_CONTROLLERS if c not in have]
    return [f"cgroup v2 controllers {', '.join(missing)} in {CGROUP_ROOT}/cgroup.controllers"] if missing else []


def slurm_tops(node: str, host: HostCgroups) -> list[Path]:
    """Pure: the directories Slurm makes for `node` (the lab's slurm.conf: multiple-slurmd naming)."""
    if host.version == "v1":
        return [Path(mp, f"slurm_{node}") for mp in host.v1_mounts]
    return [Path(host.v2_mount or CGROUP_ROOT, V2_SLURMD_PARENT, f"{node}_slurmstepd.scope")]


def slurmd_cgroup(node: str, host: HostCgroups, systemd: bool = False) -> Path | None:
    """Pure: the cgroup the lab starts node's slurmd in (v2 only; None on v1): under systemd the
    transient scope systemd_scope_argv() asks for, elsewhere a directory the lab makes."""
    if host.version == "v1":
        return None
    kind = "scope" if systemd else "service"
    return Path(host.v2_mount or CGROUP_ROOT, V2_SLURMD_PARENT, f"cidlab-slurmd-{node}.{kind}")


def systemd_is_init() -> bool:
    """systemd runs as PID 1 (sd_booted(3)'s test): it owns the cgroup tree and must be asked for one."""
    return Path("/run/systemd/system").is_dir()


def systemd_scope_argv(cgroup: Path) -> list[str]:
    """Programs in front of argv that run it (same pid, exec) in a transient systemd scope named
    after `cgroup` with Delegate=yes, as slurmd.service has: systemd then enables every controller
    on the way down and leaves the subtree to slurmd. A directory made behind systemd's back loses
    its controllers the next time systemd realises system.slice (Slurm's cgroup_v2.c says as much)."""
    return ["systemd-run", "--quiet", "--scope", "--collect", f"--slice={cgroup.parent.name}",
            f"--unit={cgroup.name}", "-p", "Delegate=yes", "--"]


def delegate_slurmd_cgroup(path: Path, root: Path = CGROUP_ROOT) -> None:
    """v2: make `path` and enable V2_CONTROLLERS on the way down, so slurmd started in it can
    give its job cgroups those controllers (what systemd's Delegate=yes does for slurmd.service).
    Only directories the lab owns are made; the root and system.slice only gain controllers."""
    top = root
    for part in path.relative_to(top).parts:
        want = set(V2_CONTROLLERS) & set((top / "cgroup.controllers").read_text().split())
        (top / "cgroup.subtree_control").write_text(" ".join(f"+{c}" for c in sorted(want)))
        top = top / part
        top.mkdir(exist_ok=True)


def find_job(node: str, job_id: int | str, root: Path = CGROUP_ROOT) -> LocalJob | None:
    """Job `job_id` on `node` as callerid's adopter sees it (only once its extern step exists).
    callerid names a job by the string its cgroup has (decimal id or SLUID)."""
    for j in list_jobs(node, str(root), default_v2_mount(str(root))):
        if j.job_id == str(job_id):
            return j
    return None


def job_dirs(j: LocalJob) -> list[Path]:
    """The job-level directory of `j` in every hierarchy it has (parsed from its extern dirs)."""
    refs = (job_from_cgroup_path(ext, j.layout) for ext in j.extern)
    return [Path(r.path) for r in refs if r is not None]


def job_pids(j: LocalJob | None) -> set[int]:
    """Processes in the extern step of `j` (every hierarchy), empty if the job is gone. On v2 the
    whole step_extern subtree: slurmstepd sits in step_extern/slurm, the user's side in
    step_extern/user/task_special (the adopter's leaf), and `scontrol listpids` lists both."""
    out: set[int] = set()
    for d in (j.extern if j else ()):
        step = Path(d).parents[1] if j.layout == "v2" else Path(d)
        for sub, _, _ in os.walk(step):
            try:
                out |= set(parse_procs(Path(sub, "cgroup.procs").read_text()))
            except OSError:
                pass
    return out


def tree_pids(tops: list[Path], jobs_only: bool = True) -> set[int]:
    """Processes under these Slurm tops: in jobs only (a job_* directory at any depth: v1 has
    uid_U/job_N, v2 job_N), or anywhere with jobs_only=False (for reporting)."""
    out: set[int] = set()
    for top in tops:
        for d, _, _ in os.walk(top):
            rel = Path(d).relative_to(top).parts
            if jobs_only and not any(p.startswith("job_") for p in rel[:2]):
                continue
            try:
                out |= set(parse_procs(Path(d, "cgroup.procs").read_text()))
            except OSError:
                pass
    return out


def rm_tree(top: Path, deadline: float) -> bool:
    """rmdir a cgroup tree bottom-up until it is gone or the deadline passes (tasks leave asynchronously)."""
    while True:
        for d, _, _ in os.walk(top, topdown=False):
            try:
                os.rmdir(d)
            except OSError:
                pass
        if not top.exists():
            return True
        if time.monotonic() > deadline:
            return False
        time.sleep(0.05)


# The hierarchies the lab's Slurm puts a job's processes in: proctrack/cgroup (freezer) and
# task/cgroup (cpuset, memory) on v1; the one unified hierarchy on v2 (the "0::" line of
# /proc/<pid>/cgroup, named "" here).
JOB_HIERARCHIES = {"v1": ("freezer", "cpuset", "memory"), "v2": ("",)}


def job_steps(proc_cgroup_text: str, version: str) -> dict[str, tuple[int | str | None, str | None] | None]:
    """Pure: for each job hierarchy of cgroup `version`, the (job, step) that /proc/<pid>/cgroup text
    puts the process in, parsed by callerid.slurm_cgroup; None where it is in no job."""
    out: dict[str, tuple[int | str | None, str | None] | None] = {h: None for h in JOB_HIERARCHIES[version]}
    for line in proc_cgroup_text.splitlines():
        hid, _, rest = line.partition(":")
        ctrls, sep, path = rest.partition(":")
        if not sep:
            continue
        layout = "v2" if hid == "0" and ctrls == "" else "v1"
        names = [""] if layout == "v2" else ctrls.split(",")
        for h in out.keys() & set(names):
            ref = job_from_cgroup_path(path, layout) if layout == version else None
            # Slurm's job id as the lab's commands print it (an int); a SLUID stays a string.
            job = (int(ref.job_id) if ref.job_id.isdigit() else ref.job_id) if ref else None
            out[h] = (job, ref.step) if ref else None
    return out


def memory_limit(j: LocalJob) -> int:
    """The job's memory limit in bytes as task/cgroup set it (v1 memory.limit_in_bytes, v2 memory.max)."""
    for d in job_dirs(j):
        f = d / ("memory.max" if j.layout == "v2" else "memory.limit_in_bytes")
        if f.exists():
            return int(f.read_text())
    raise FileNotFoundError(f"no memory limit file for job {j.job_id} in {job_dirs(j)}")
