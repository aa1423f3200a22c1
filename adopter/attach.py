"""`callerid attach JOBID`: move one's own ssh session into another of one's own jobs on
this node, when the login's job was a guess (policy.decide_attach says when).

The caller is known from its socket's peer credentials (uid, pid). Its session is found
by walking up from that pid to the sshd [priv] process the adopter decided a login for
(recorded with the process's start time, so a reused pid is never taken for it). The
session is that process and every descendant; each is written into the target job's
extern-step cgroups, as a login's sshd is.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

from callerid.linux import procfs

MAX_DEPTH = 64          # ppid steps from the caller up to its sshd
MAX_SESSIONS = 4096     # recorded logins kept; the oldest are forgotten first


@dataclass(frozen=True)
class Login:
    """What the adopter decided for one sshd [priv] process."""

    uid: int | None
    reason: str
    job_id: str | None    # the job the session is in (None: not adopted)
    start_boot_ns: int


class Logins:
    """sshd [priv] pid -> Login, for the sessions this adopter decided."""

    def __init__(self, proc: str = "/proc"):
        self.proc = proc
        self._by_pid: dict[int, Login] = {}

    def record(self, pid: int, uid: int | None, reason: str, job_id: str | None) -> None:
        try:
            start = procfs.proc_info(pid, self.proc, ids=False).start_boot_ns
        except (procfs.ProcessGone, OSError):
            return
        self._by_pid.pop(pid, None)
        self._by_pid[pid] = Login(uid, reason, job_id, start)
        while len(self._by_pid) > MAX_SESSIONS:
            self._by_pid.pop(next(iter(self._by_pid)))

    def moved(self, pid: int, job_id: str) -> None:
        old = self._by_pid.get(pid)
        if old is not None:
            self._by_pid[pid] = Login(old.uid, old.reason, job_id, old.start_boot_ns)

    def session_of(self, pid: int) -> tuple[int, Login] | None:
        """(sshd pid, its Login) of the session process `pid` belongs to, or None."""
        for _ in range(MAX_DEPTH):
            if pid <= 1:
                return None
            try:
                info = procfs.proc_info(pid, self.proc, ids=False)
            except (procfs.ProcessGone, OSError):
                return None
            login = self._by_pid.get(pid)
            if login is not None and login.start_boot_ns == info.start_boot_ns:
                return pid, login
            pid = info.ppid
        return None


def descendants(root: int, proc: str = "/proc") -> list[int]:
    """root and every process below it, parents before children (one /proc scan)."""
    children: dict[int, list[int]] = {}
    for name in os.listdir(proc):
        if not name.isdigit():
            continue
        try:
            with open(f"{proc}/{name}/stat") as f:
                _, _, ppid, _ = procfs.parse_stat(f.read())
        except (OSError, ValueError, IndexError):
            continue
        children.setdefault(ppid, []).append(int(name))
    out, todo = [], [root]
    while todo:
        pid = todo.pop(0)
        out.append(pid)
        todo += sorted(children.get(pid, ()))
    return out
