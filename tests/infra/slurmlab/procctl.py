"""Process control for the lab: start daemons in a node's namespaces, recognise them later by pid and
start time, and stop only processes the lab started (by pid, never by name)."""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path

from ..procs import alive, in_cgroups, in_netns

# A /dev/log listener for pam_slurm_adopt (it logs only through syslog): one line per datagram.
DEVLOG_PROG = r"""
import os, socket, sys, time
path, out = sys.argv[1], sys.argv[2]
s = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
s.bind(path)
os.chmod(path, 0o666)
print("listening", flush=True)
with open(out, "ab", buffering=0) as f:
    while True:
        d = s.recv(65536)
        f.write(time.strftime("%H:%M:%S ").encode() + d.rstrip(b"\0\n") + b"\n")
"""


def _stat_fields(pid: int) -> list[str] | None:
    """/proc/PID/stat after the command name (field 3 onwards)."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(") ", 1)[1].split()
    except (OSError, IndexError):
        return None


def proc_start(pid: int) -> int | None:
    """Start time of a process in clock ticks since boot (field 22 of /proc/PID/stat)."""
    fields = _stat_fields(pid)
    try:
        return int(fields[19]) if fields else None
    except (IndexError, ValueError):
        return None


def ppid(pid: int) -> int | None:
    fields = _stat_fields(pid)
    try:
        return int(fields[1]) if fields else None
    except (IndexError, ValueError):
        return None


def same_proc(rec: dict) -> bool:
    """The recorded process is still the one we started (not a reused pid) and is not a zombie."""
    return alive(rec["pid"]) and proc_start(rec["pid"]) == rec.get("start")


def node_argv(argv: list[str], netns_path: str | None, hostname: str | None = None, user=None,
              cgroup: Path | None = None, scope: list[str] | None = None) -> list[str]:
    """argv run, in this order, in a cgroup (v2 slurmd), in the network namespace at netns_path,
    in a UTS namespace of its own named `hostname`, and as `user` (a LabUser, with its groups).

    Programs in front of argv that each exec the next (the pid stays the one Popen returns),
    not preexec_fn, which can deadlock in a process that has threads (tests/infra/procs.py)."""
    if user is not None:
        argv = ["setpriv", f"--reuid={user.uid}", f"--regid={user.gid}", "--init-groups", "--", *argv]
    if hostname:
        argv = ["unshare", "--uts", "--", "sh", "-c", 'hostname "$0" && exec "$@"', hostname, *argv]
    if netns_path:
        argv = in_netns(argv, netns_path)
    if cgroup is not None:
        argv = in_cgroups(argv, [str(cgroup / "cgroup.procs")])
    if scope:  # e.g. cgroups.systemd_scope_argv(): in front of everything, it places the pid
        argv = [*scope, *argv]
    return argv


def all_pids() -> list[int]:
    return [int(p) for p in os.listdir("/proc") if p.isdigit()]


def cmdline(pid: int) -> str:
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            return f.read().replace(b"\0", b" ").decode(errors="replace").strip()
    except OSError:
        return "?"


def netns_inode(name: str) -> int | None:
    try:
        return os.stat(f"/run/netns/{name}").st_ino
    except OSError:
        return None


def pids_in_netns(inode: int) -> set[int]:
    out = set()
    for pid in all_pids():
        try:
            if os.stat(f"/proc/{pid}/ns/net").st_ino == inode and alive(pid):
                out.add(pid)
        except OSError:
            pass
    return out


def stepds(netns_names) -> set[int]:
    """slurmstepd processes in these namespaces (they outlive slurmd)."""
    out = set()
    for ns in netns_names:
        inode = netns_inode(ns)
        if inode is None:
            continue
        for pid in pids_in_netns(inode):
            try:
                if os.readlink(f"/proc/{pid}/exe") == "/usr/sbin/slurmstepd":
                    out.add(pid)
            except OSError:
                pass
    return out


def descendants(roots: set[int]) -> set[int]:
    children: dict[int, list[int]] = {}
    for pid in all_pids():
        pp = ppid(pid)
        if pp is not None:
            children.setdefault(pp, []).append(pid)
    out, todo = set(), list(roots)
    while todo:
        for c in children.get(todo.pop(), []):
            if c not in out:
                out.add(c)
                todo.append(c)
    return out


def _kill(pids, sig) -> None:
    for pid in pids:
        try:
            os.kill(pid, sig)
        except (ProcessLookupError, PermissionError):
            pass


def terminate(pids: list[int], timeout: float) -> None:
    """SIGTERM these pids, wait up to timeout, SIGKILL the rest."""
    pids = [p for p in pids if alive(p)]
    if not pids:
        return
    _kill(pids, signal.SIGTERM)
    end = time.monotonic() + timeout
    while time.monotonic() < end and any(alive(p) for p in pids):
        time.sleep(0.02)
    _kill([p for p in pids if alive(p)], signal.SIGKILL)
    end = time.monotonic() + 2
    while time.monotonic() < end and any(alive(p) for p in pids):
        time.sleep(0.02)


def tail(path: Path, lines: int = 25) -> str:
    try:
        text = path.read_text(errors="replace").splitlines()[-lines:]
    except OSError:
        return f"--- {path}: (none)"
    return f"--- {path}:\n" + "\n".join(text)
