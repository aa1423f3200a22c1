"""Adoption I/O: write a pid into a job's extern-step cgroups and read it back."""

from __future__ import annotations

# Only cgroup.procs files that Slurm made are written: nothing is ever created here
# (no mkdir, no O_CREAT), so a job that ended cannot be resurrected as an empty cgroup.
# Writing a pid to cgroup.procs moves the whole thread group; children forked later
# start in the same cgroups (cgroup v1 and v2 alike).
import errno
import os
from typing import Callable, Optional

from .jobs import LocalJob

# Asked right before a cgroup.procs write (proceed) or after the last one (keep): None to go
# on, else why the adoption must not happen any more (the caller's words, e.g. "deadline").
Proceed = Callable[[], Optional[str]]


class AdoptError(Exception):
    """Adoption failed. reason: 'job_gone' | 'permission' | 'io' (a metrics label: keep it closed).

    `written` lists the dirs the pid was already moved into: non-empty means a partial
    adoption (the first dir succeeded, a later controller failed); nothing is undone.
    """

    def __init__(self, reason: str, message: str, *, path: str | None = None,
                 written: tuple[str, ...] = (), errno_: int | None = None):
        super().__init__(message)
        self.reason = reason
        self.path = path
        self.written = written
        self.errno = errno_


_JOB_GONE = (errno.ENOENT, errno.ENODEV)   # dir removed (ENOENT), or removed after open (ENODEV)
_PERMISSION = (errno.EACCES, errno.EPERM, errno.EROFS)
# Why a write can fail with the rest, in words for the log.
_HINTS = {
    # cpuset v1 refuses tasks while cpuset.cpus or cpuset.mems is empty (cgroup-v1/cpusets.rst).
    errno.ENOSPC: "the cpuset cgroup has an empty cpuset.cpus or cpuset.mems, so it cannot hold tasks",
    errno.ESRCH: "the process to adopt no longer exists",
    # cgroup v2 "no internal processes": a cgroup with controllers enabled in its
    # cgroup.subtree_control cannot hold processes (cgroup-v2.rst).
    errno.EBUSY: "the cgroup is not a leaf (cgroup v2 no-internal-process rule)",
    errno.EOPNOTSUPP: "the cgroup cannot hold processes (cgroup v2 invalid domain or threaded)",
    errno.EINVAL: "the kernel refused this process (kernel thread, or not in this pid namespace)",
}


def _error(exc: OSError, pid: int, path: str, written: tuple[str, ...]) -> AdoptError:
    """The one place where errno becomes an AdoptError reason."""
    code = exc.errno
    if code in _JOB_GONE:
        reason, why = "job_gone", "the job's cgroup is gone (the job ended)"
    elif code in _PERMISSION:
        reason, why = "permission", "not allowed to move the process (adoption needs root)"
    else:
        reason, why = "io", _HINTS.get(code, "unexpected error")
    partial = f"; partial adoption, already in {', '.join(written)}" if written else ""
    msg = f"adopting pid {pid}: writing {path}/cgroup.procs: {os.strerror(code or 0)}: {why}{partial}"
    return AdoptError(reason, msg, path=path, written=written, errno_=code)


class Stopped(Exception):
    """adopt() stopped because proceed() or keep() gave a reason. What it had written was undone:
    the process is back in the cgroups it was in before, except in `left` (dirs the move
    back failed for, or whose earlier cgroup could not be told), which is then a partial
    adoption left in place and reported."""

    def __init__(self, reason: str, written: tuple[str, ...], left: tuple[str, ...]):
        where = f"; could not move it back out of {', '.join(left)}" if left else ""
        super().__init__(f"stopped ({reason}) after {len(written)} of the job's cgroups{where}")
        self.reason = reason
        self.written = written
        self.left = left


def parse_cgroups(text: str) -> dict[str, str]:
    """/proc/<pid>/cgroup as {controllers: path}; cgroup v2's line has controllers ""."""
    out = {}
    for line in text.splitlines():
        parts = line.split(":", 2)
        if len(parts) == 3:
            out[parts[1]] = parts[2]
    return out


def origin_of(written: str, before: dict[str, str], now: dict[str, str]) -> tuple[str, str | None]:
    """Where the process was, in the hierarchy of dir `written`, before it was written there.

    ("moved", dir) once the hierarchy is told: its line in `now` (the process's cgroups
    after the write) is the tail of `written`, so `written` minus that tail is the mount,
    and the mount plus the line's path in `before` is the dir it came from; for a v1
    hierarchy the mount's name must also be the line's controllers. ("unmoved", None): the
    process was already there. ("unknown", None): no line fits.
    """
    for ctrls, path in now.items():
        if path in ("", "/") or not written.endswith(path.rstrip("/")):
            continue
        mount = written[: len(written) - len(path)]
        if ctrls and set(os.path.basename(mount).split(",")) != set(ctrls.split(",")):
            continue
        if ctrls not in before:
            continue
        if before[ctrls] == path:
            return "unmoved", None
        return "moved", (mount + before[ctrls]).rstrip("/") or "/"
    return "unknown", None


def _read_cgroups(pid: int) -> dict[str, str]:
    try:
        with open(f"/proc/{pid}/cgroup") as f:
            return parse_cgroups(f.read())
    except OSError:
        return {}


def _undo(pid: int, written: list[str], before: dict[str, str]) -> tuple[str, ...]:
    """Move pid back out of the dirs in `written`; returns those it could not be moved out of."""
    now = _read_cgroups(pid)
    left = []
    for path in written:
        state, origin = origin_of(path, before, now)
        if state == "unmoved":
            continue
        try:
            if origin is None:
                raise FileNotFoundError(path)
            _write_pid(origin, pid)
        except OSError:
            left.append(path)
    return tuple(left)


def _write_pid(path: str, pid: int) -> None:
    fd = os.open(os.path.join(path, "cgroup.procs"), os.O_WRONLY | os.O_CLOEXEC)
    try:
        os.write(fd, str(pid).encode())  # one write: cgroup.procs takes one pid per write()
    finally:
        os.close(fd)


def adopt(pid: int, job: LocalJob, proceed: Proceed | None = None, keep: Proceed | None = None) -> list[str]:
    """Move process `pid` into every extern dir of `job`, first dir first; returns the dirs.

    A failure on the first dir with ENOENT/ENODEV is AdoptError('job_gone') with nothing
    moved; any failure after that is an AdoptError whose `written` names the dirs done.

    proceed() is asked right before each write (v1 writes one dir per controller, and each
    write may wait in the kernel), keep() (default: proceed) once after the last: when
    either gives a reason, nothing more is written, what was written is undone, and Stopped
    is raised. One write, once started, is not interrupted; keep() decides whether one that
    ended late stands.
    """
    if not isinstance(pid, int) or pid <= 0:
        # "0" written to cgroup.procs means "the writer": never adopt ourselves by accident.
        raise ValueError(f"pid must be a positive int, not {pid!r}")
    if not job.extern:
        raise AdoptError("job_gone", f"adopting pid {pid}: job {job.job_id} has no extern step dirs")
    before = _read_cgroups(pid) if proceed is not None else {}
    written: list[str] = []
    for path in job.extern:
        _check(proceed, pid, written, before)
        try:
            _write_pid(path, pid)
        except OSError as exc:
            raise _error(exc, pid, path, tuple(written)) from exc
        written.append(path)
    _check(keep or proceed, pid, written, before)
    return written


def _check(proceed: Proceed | None, pid: int, written: list[str], before: dict[str, str]) -> None:
    why = proceed() if proceed is not None else None
    if why:
        raise Stopped(why, tuple(written), _undo(pid, written, before) if written else ())
