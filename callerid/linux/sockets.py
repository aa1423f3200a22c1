"""The TCP connection a process holds, read from its own socket (pidfd_getfd) or a sock_diag dump."""

from __future__ import annotations

import ctypes
import errno
import ipaddress
import logging
import os
import socket
from dataclasses import dataclass

from . import procfs, sockdiag


@dataclass(frozen=True)
class Connection:
    """The login's TCP connection from the destination's side."""
    remote_ip: object
    remote_port: int
    local_ip: object
    local_port: int


log = logging.getLogger("callerid.linux.sockets")
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
