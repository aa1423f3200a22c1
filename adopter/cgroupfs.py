"""Adoption I/O: write a pid into a job's extern-step cgroups and read it back."""

from __future__ import annotations

# Only cgroup.procs files that Slurm made are written: nothing is ever created here
# (no mkdir, no O_CREAT), so a job that ended cannot be resurrected as an empty cgroup.
# Writing a pid to cgroup.procs moves the whole thread group; children forked later
# start in the same cgroups (cgroup v1 and v2 alike).
import errno
import os

from .jobs import LocalJob


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


def _write_pid(path: str, pid: int) -> None:
    fd = os.open(os.path.join(path, "cgroup.procs"), os.O_WRONLY | os.O_CLOEXEC)
    try:
        os.write(fd, str(pid).encode())  # one write: cgroup.procs takes one pid per write()
    finally:
        os.close(fd)


def adopt(pid: int, job: LocalJob) -> list[str]:
    """Move process `pid` into every extern dir of `job`, first dir first; returns the dirs.

    A failure on the first dir with ENOENT/ENODEV is AdoptError('job_gone') with nothing
    moved; any failure after that is an AdoptError whose `written` names the dirs done.
    """
    if not isinstance(pid, int) or pid <= 0:
        # "0" written to cgroup.procs means "the writer": never adopt ourselves by accident.
        raise ValueError(f"pid must be a positive int, not {pid!r}")
    if not job.extern:
        raise AdoptError("job_gone", f"adopting pid {pid}: job {job.job_id} has no extern step dirs")
    written: list[str] = []
    for path in job.extern:
        try:
            _write_pid(path, pid)
        except OSError as exc:
            raise _error(exc, pid, path, tuple(written)) from exc
        written.append(path)
    return written
