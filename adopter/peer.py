"""Who is asking on the hook socket, and which process to adopt."""

from __future__ import annotations

import os
import select
import socket
import struct
from dataclasses import dataclass

from callerid.linux import procfs


class PeerError(Exception):
    """The socket's peer is not a PAM application we adopt (pam_callerid.so runs inside it)."""


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
    """The process to adopt: the peer itself (pam_callerid.so runs inside sshd's `[priv]`
    process and connects from it), checked to be a root process running one of `allowed_exe`."""
    try:
        app = procfs.proc_info(peer.pid, proc)
        exe = os.path.basename(os.readlink(f"{proc}/{peer.pid}/exe"))
    except (procfs.ProcessGone, OSError) as exc:
        raise PeerError(f"peer pid {peer.pid} vanished: {exc}") from exc
    if exe.endswith(" (deleted)"):
        exe = exe[: -len(" (deleted)")]
    if exe not in allowed_exe:
        raise PeerError(f"peer pid {peer.pid} runs {exe!r}, not one of {', '.join(allowed_exe)}")
    if app.euid != 0:
        raise PeerError(f"peer pid {peer.pid} is not running as root")
    return app


def still_waiting(conn: socket.socket) -> bool:
    """Whether the module is still connected and waiting for its reply. Once it has given up
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
    time, not a reused pid) and still the socket's peer (pam_callerid.so runs inside it)."""
    try:
        now = procfs.proc_info(app.pid, proc, ids=False)
    except procfs.ProcessGone:
        return False
    return now.start_boot_ns == app.start_boot_ns and peer.pid == app.pid
