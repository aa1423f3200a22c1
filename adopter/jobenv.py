"""What an adopted session takes from its job: device-visibility variables from the
environment of one of the job's own processes (HTCondor's ssh_to_job does the same), and
the group the job runs under.

Slurm sets CUDA_VISIBLE_DEVICES and friends per step (gres/gpu), so they live only in
the environments of the job's processes; /proc/<pid>/environ is readable by root. The
variables come from a process of the job's user in a step other than the extern step
(batch first, then numbered steps), so they are the job's own view of its devices.
"""

from __future__ import annotations

import os
import re

from callerid.linux.procfs import parse_status_ids

from .jobs import LocalJob, parse_procs

MAX_VALUE = 4096          # a longer value is skipped, never truncated
MAX_PROCESSES = 64        # processes looked at per login, at most
_STEP = re.compile(r"step_(batch|interactive|\d+)\Z")


def parse_environ(raw: bytes, names) -> dict[str, str]:
    """The variables among `names` in NUL-separated environ bytes; values that are not
    UTF-8, or longer than MAX_VALUE, are left out. The first occurrence wins (as getenv)."""
    wanted = set(names)
    out: dict[str, str] = {}
    for entry in raw.split(b"\0"):
        name, sep, value = entry.partition(b"=")
        try:
            key = name.decode("ascii")
        except UnicodeDecodeError:
            continue
        if not sep or key not in wanted or key in out or len(value) > MAX_VALUE:
            continue
        try:
            out[key] = value.decode()
        except UnicodeDecodeError:
            continue
    return out


def step_order(name: str) -> tuple:
    """Sort key of a step directory: batch, then numbered steps, then interactive."""
    m = _STEP.match(name)
    kind = m.group(1)
    return (0, 0) if kind == "batch" else (2, 0) if kind == "interactive" else (1, int(kind))


def job_dir(job: LocalJob) -> str:
    """The job's directory in its first hierarchy (v1: .../job_J; v2: .../job_J above step_extern/user/task_special)."""
    extern = job.extern[0]
    return os.path.dirname(extern) if job.layout == "v1" else os.path.dirname(os.path.dirname(os.path.dirname(extern)))


def _read(path: str) -> bytes | None:
    try:
        with open(path, "rb") as f:
            return f.read(1 << 20)
    except OSError:
        return None


def _step_pids(step: str) -> list[int]:
    pids, level = [], [step]
    for _ in range(4):  # v2: step/user/task_N; v1 cpuacct: step/task_N
        nxt = []
        for d in level:
            pids += parse_procs((_read(os.path.join(d, "cgroup.procs")) or b"").decode())
            try:
                nxt += [e.path for e in os.scandir(d) if e.is_dir(follow_symlinks=False)]
            except OSError:
                pass
        level = nxt
    return pids


def job_processes(job: LocalJob, proc: str = "/proc"):
    """(pid, real gid) of the job user's processes in the job's non-extern steps, batch
    first; at most MAX_PROCESSES looked at. slurmstepd and other root processes are not
    the job's."""
    jdir = job_dir(job)
    try:
        steps = sorted((e.name for e in os.scandir(jdir) if e.is_dir(follow_symlinks=False) and _STEP.match(e.name)),
                       key=step_order)
    except OSError:
        return
    seen = 0
    for step in steps:
        for pid in _step_pids(os.path.join(jdir, step)):
            seen += 1
            if seen > MAX_PROCESSES:
                return
            status = _read(f"{proc}/{pid}/status")
            try:
                uid, _, gid = parse_status_ids(status.decode(errors="replace")) if status else (None, None, None)
            except ValueError:
                continue
            if uid == job.uid:
                yield pid, gid


def job_view(job: LocalJob, names, group: bool = True, proc: str = "/proc") -> tuple[dict[str, str], int | None]:
    """What a session takes from its job, in one walk of the job's processes: `names` as
    the job sees them (from its first process whose environ holds any of them; {} if
    none) and, if `group`, the group the job runs under (sbatch --gid may differ from the
    user's primary group): the real gid of its first process. Only a privileged process
    can change a real gid, so the user cannot choose it; None if there is no process."""
    env: dict[str, str] = {}
    gid = None
    if not names and not group:
        return env, gid
    for pid, pgid in job_processes(job, proc):
        if group and gid is None:
            gid = pgid
        if names and not env:
            env = parse_environ(_read(f"{proc}/{pid}/environ") or b"", names)
        if (env or not names) and (gid is not None or not group):
            break
    return env, gid


def job_environment(job: LocalJob, names, proc: str = "/proc") -> dict[str, str]:
    return job_view(job, names, group=False, proc=proc)[0]


def job_group(job: LocalJob, proc: str = "/proc") -> int | None:
    return job_view(job, (), group=True, proc=proc)[1]
