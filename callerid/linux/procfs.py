"""Narrow /proc reader: process identity, socket fds, network namespace."""

from __future__ import annotations

import functools
import os
import re
import time
from dataclasses import dataclass

_SOCKET_LINK = re.compile(r"socket:\[(\d+)\]\Z")
_CLK_TCK = os.sysconf("SC_CLK_TCK")
TICK_NS = 1_000_000_000 // _CLK_TCK


class ProcessGone(LookupError):
    """The process exited (or its pid was reused, or we may not look at it)."""


@dataclass(frozen=True)
class ProcInfo:
    pid: int
    ppid: int
    uid: int
    euid: int
    gid: int
    comm: str
    start_boot_ns: int
    cgroup_text: str
    netns: int


def _gone_is_lookup(fn):
    """The one place where "the process is not there" errnos become ProcessGone.

    ESRCH shows up when a task dies while its files are read; EACCES when
    hidepid= or ptrace rules hide it, which for a caller means the same.
    """
    @functools.wraps(fn)
    def wrapper(pid, *args, **kwargs):
        try:
            return fn(pid, *args, **kwargs)
        except (FileNotFoundError, ProcessLookupError, PermissionError) as e:
            raise ProcessGone(pid) from e
    return wrapper


def parse_stat(text: str) -> tuple[int, str, int, int]:
    """(pid, comm, ppid, starttime in clock ticks) from a /proc/<pid>/stat line.

    comm may hold spaces and parentheses, so it ends at the LAST ')'.
    """
    head, _, rest = text.rpartition(")")
    pid_s, _, comm = head.partition(" (")
    fields = rest.split()
    # fields[0] is field 3 (state): field n of proc(5) is fields[n - 3].
    return int(pid_s), comm, int(fields[4 - 3]), int(fields[22 - 3])


def parse_status_ids(text: str) -> tuple[int, int, int]:
    """(real uid, effective uid, real gid) from /proc/<pid>/status; ValueError if the
    text has no complete Uid and Gid lines."""
    ids = {}
    for line in text.splitlines():
        key, _, value = line.partition(":")
        if key in ("Uid", "Gid"):
            ids[key] = [int(v) for v in value.split()]
    if len(ids.get("Uid", ())) < 2 or not ids.get("Gid"):
        raise ValueError("no Uid and Gid lines in /proc/<pid>/status text")
    return ids["Uid"][0], ids["Uid"][1], ids["Gid"][0]


def _read(name: str, dir_fd: int) -> str:
    fd = os.open(name, os.O_RDONLY, dir_fd=dir_fd)
    with open(fd, "rb") as f:
        return f.read().decode(errors="replace")


@_gone_is_lookup
def proc_info(pid: int, proc: str = "/proc", ids: bool = True) -> ProcInfo:
    """ids=False skips /proc/<pid>/status (uid/euid/gid come back as -1): the map path
    has the ids from the probe already, and status is the costliest file to parse."""
    # Every file is opened relative to one /proc/<pid> directory fd: it stays
    # bound to the task it was opened for, so if that task dies and the pid is
    # reused mid-read, reads fail (ESRCH/ENOENT) instead of mixing two processes.
    dfd = os.open(f"{proc}/{pid}", os.O_RDONLY | os.O_DIRECTORY)
    try:
        _, comm, ppid, start_ticks = parse_stat(_read("stat", dfd))
        uid, euid, gid = parse_status_ids(_read("status", dfd)) if ids else (-1, -1, -1)
        cgroup_text = _read("cgroup", dfd)
        netns = os.stat("ns/net", dir_fd=dfd).st_ino
    finally:
        os.close(dfd)
    return ProcInfo(
        pid=pid,
        ppid=ppid,
        uid=uid,
        euid=euid,
        gid=gid,
        comm=comm,
        start_boot_ns=start_ticks * 1_000_000_000 // _CLK_TCK,
        cgroup_text=cgroup_text,
        netns=netns,
    )


def boottime_ns() -> int:
    """Now on CLOCK_BOOTTIME, the clock of stat's starttime and bpf_ktime_get_boot_ns."""
    return time.clock_gettime_ns(time.CLOCK_BOOTTIME)


@_gone_is_lookup
def socket_fds(pid: int, proc: str = "/proc") -> list[int]:
    """The process's fd numbers that are sockets."""
    dfd = os.open(f"{proc}/{pid}/fd", os.O_RDONLY | os.O_DIRECTORY)
    try:
        found = []
        for name in os.listdir(dfd):
            try:
                if _SOCKET_LINK.match(os.readlink(name, dir_fd=dfd)):
                    found.append(int(name))
            except FileNotFoundError:
                continue  # fd closed between listdir and readlink
        return sorted(found)
    finally:
        os.close(dfd)


@_gone_is_lookup
def socket_inodes(pid: int, proc: str = "/proc") -> set[int]:
    """Inodes of the sockets among the process's open fds."""
    dfd = os.open(f"{proc}/{pid}/fd", os.O_RDONLY | os.O_DIRECTORY)
    try:
        found = set()
        for name in os.listdir(dfd):
            try:
                m = _SOCKET_LINK.match(os.readlink(name, dir_fd=dfd))
            except FileNotFoundError:
                continue  # fd closed between listdir and readlink
            if m:
                found.add(int(m.group(1)))
        return found
    finally:
        os.close(dfd)


def _pids(proc: str) -> list[int]:
    # /proc lists thread-group leaders only; threads share their fd table
    # unless they unshare(CLONE_FILES), which is rare enough to ignore.
    return sorted(int(n) for n in os.listdir(proc) if n.isdigit())


class ScanTimeout(Exception):
    """A /proc scan ran out of its time budget before it was complete."""


def pids_by_socket_inode(inodes: set[int] | None = None, proc: str = "/proc",
                         deadline: float | None = None) -> dict[int, list[int]]:
    """inode -> sorted tgids holding it, from one scan of every /proc/<pid>/fd.

    With inodes given, only those are reported and the scan stops once each
    has been seen, so a list then holds the lowest holder (and any holders
    met before the scan stopped), not necessarily all of them.
    deadline (time.monotonic()): ScanTimeout if the scan is not done by then.
    """
    wanted = None if inodes is None else set(inodes)
    found: dict[int, list[int]] = {}
    for pid in _pids(proc):
        if deadline is not None and time.monotonic() > deadline:
            raise ScanTimeout(f"/proc scan not done within its budget (at pid {pid})")
        try:
            held = socket_inodes(pid, proc)
        except ProcessGone:
            continue  # exited during the scan
        if wanted is not None:
            held &= wanted
        for inode in held:
            found.setdefault(inode, []).append(pid)
        if wanted is not None and wanted.issubset(found):
            break
    return found


def find_pid_for_inode(inode: int, proc: str = "/proc", deadline: float | None = None) -> int | None:
    """Lowest tgid holding the socket inode, or None."""
    return pids_by_socket_inode({inode}, proc, deadline).get(inode, [None])[0]


def own_netns_inode(proc: str = "/proc") -> int:
    """Inode of the calling thread's network namespace.

    thread-self, not self: setns() is per thread, and sock_diag answers for
    the namespace of the thread that opened the netlink socket.
    """
    return os.stat(f"{proc}/thread-self/ns/net").st_ino


def same_start(info: ProcInfo, birth_boot_ns: int) -> bool:
    """Pid-reuse guard: could this process be the one alive at birth_boot_ns?

    starttime has clock-tick resolution (truncated), so allow one tick of slack;
    a process that started later than that is a newer process with the same pid.
    """
    return info.start_boot_ns <= birth_boot_ns + TICK_NS
