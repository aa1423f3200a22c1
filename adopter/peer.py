"""Who is asking on the hook socket, which process to adopt, and which TCP connection it serves."""

import ctypes
import errno
import ipaddress
import logging
import os
import socket
import struct
from dataclasses import dataclass

from tracer import procfs, sockdiag


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


@dataclass(frozen=True)
class Connection:
    """The login's TCP connection from the destination's side."""
    remote_ip: object
    remote_port: int
    local_ip: object
    local_port: int


log = logging.getLogger("callerid.adopter.peer")
_pidfd_warned = False
_SYS_PIDFD_GETFD = 438  # the same number on every architecture (Linux 5.6+)
_libc = ctypes.CDLL(None, use_errno=True)


def _ip(host: str):
    return ipaddress.ip_address(host.split("%", 1)[0])   # drop an IPv6 scope (fe80::1%eth0)


def _connection_via_pidfd(pid: int, proc: str) -> Connection | None:
    """Read the connection's ends from sshd's own socket: duplicate each of its socket
    fds (pidfd_getfd, needs CAP_SYS_PTRACE) and ask getpeername/getsockname. O(1),
    where a sock_diag dump reads every TCP socket of the node. Raises OSError when
    the kernel or a seccomp filter refuses pidfd_getfd."""
    fds = procfs.socket_fds(pid, proc)
    if not fds:
        return None
    pidfd = os.pidfd_open(pid)
    try:
        for fd in fds:
            dup = _libc.syscall(_SYS_PIDFD_GETFD, pidfd, fd, 0)
            if dup < 0:
                err = ctypes.get_errno()
                if err == errno.EBADF:
                    continue  # closed since we listed it
                raise OSError(err, f"pidfd_getfd: {os.strerror(err)}")
            try:
                s = socket.socket(fileno=dup)
            except OSError:
                os.close(dup)   # the fd number now names something else (sshd reused it)
                continue
            with s:   # closes our duplicate only; sshd's descriptor stays open
                if s.family not in (socket.AF_INET, socket.AF_INET6) or s.type != socket.SOCK_STREAM \
                        or s.proto != socket.IPPROTO_TCP:
                    continue
                try:
                    remote, local = s.getpeername(), s.getsockname()
                except OSError:
                    continue  # not connected
                return Connection(_ip(remote[0]), remote[1], _ip(local[0]), local[1])
        return None
    finally:
        os.close(pidfd)


def tcp_connection(pid: int, proc: str = "/proc") -> Connection | None:
    """The established TCP connection held by pid (sshd [priv] holds the client's socket).

    From the socket itself when the kernel allows (see _connection_via_pidfd); else
    from a sock_diag dump, done in the caller's network namespace, which must be
    sshd's. With several, the first is used (sshd holds exactly one).
    """
    global _pidfd_warned
    if proc == "/proc":
        try:
            return _connection_via_pidfd(pid, proc)
        except OSError as exc:  # kernel < 5.6, a seccomp filter, no CAP_SYS_PTRACE: dump instead
            if not _pidfd_warned:
                _pidfd_warned = True
                log.warning("cannot read sshd's socket with pidfd_getfd (%s): finding it in a sock_diag dump "
                            "of every TCP socket instead, slower on busy nodes", exc)
    inodes = procfs.socket_inodes(pid, proc)
    if not inodes:
        return None
    for s in sockdiag.list_tcp():
        if s.inode in inodes:
            return Connection(s.dst, s.dport, s.src, s.sport)
    return None
