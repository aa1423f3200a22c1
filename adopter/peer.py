"""Who is asking on the hook socket, and which process to adopt."""

from __future__ import annotations

import os
import select
import socket
import struct
from dataclasses import dataclass

from callerid.linux import procfs


class PeerError(Exception):
    """The hook socket's peer is not a pam_exec child of a PAM application we adopt."""


@dataclass(frozen=True)
class Peer:
    pid: int
    uid: int
    gid: int


def peer_credentials(conn: socket.socket) -> Peer:
    """SO_PEERCRED: set by the kernel at connect(), cannot be forged by the client."""
    raw = conn.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, struct.calcsize("3i"))
    pid, uid, gid = struct.unpack("3i", raw)
    return Peer(pid, uid, gid)


def pam_application(peer: Peer, allowed_exe: tuple[str, ...], proc: str = "/proc") -> procfs.ProcInfo:
    """The process to adopt: the hook's parent (pam_exec forks the hook from sshd's
    `[priv]` process), checked to be a root process running one of `allowed_exe`."""
    try:
        hook = procfs.proc_info(peer.pid, proc)
        parent = procfs.proc_info(hook.ppid, proc)
        exe = os.path.basename(os.readlink(f"{proc}/{parent.pid}/exe"))
    except (procfs.ProcessGone, OSError) as exc:
        raise PeerError(f"peer pid {peer.pid} or its parent vanished: {exc}") from exc
    if exe.endswith(" (deleted)"):
        exe = exe[: -len(" (deleted)")]
    if exe not in allowed_exe:
        raise PeerError(f"peer pid {peer.pid}'s parent {parent.pid} runs {exe!r}, not one of {', '.join(allowed_exe)}")
    if parent.euid != 0:
        raise PeerError(f"parent {parent.pid} is not running as root")
    return parent


def still_waiting(conn: socket.socket) -> bool:
    """Whether the hook is still connected and waiting for its reply. Once it has given up
    (its own deadline) the socket reads EOF: a decision made after that is nobody's."""
    p = select.poll()
    p.register(conn, select.POLLIN | select.POLLHUP | select.POLLERR)
    if not p.poll(0):
        return True
    try:
        return conn.recv(1, socket.MSG_PEEK | socket.MSG_DONTWAIT) != b""
    except BlockingIOError:
        return True
    except OSError:
        return False


def same_application(peer: Peer, app: procfs.ProcInfo, proc: str = "/proc") -> bool:
    """Right before adopting: app.pid is still the process checked at the start (same start
    time, not a reused pid) and still the hook's parent."""
    try:
        now = procfs.proc_info(app.pid, proc, ids=False)
        hook = procfs.proc_info(peer.pid, proc, ids=False)
    except procfs.ProcessGone:
        return False
    return now.start_boot_ns == app.start_boot_ns and hook.ppid == app.pid
