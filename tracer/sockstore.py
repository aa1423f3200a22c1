"""The sockstore backend's connection table: owners on sockets, closed ones by tuple + netns.

Open connections: the owner record the BPF program put on the socket
(BPF_MAP_TYPE_SK_STORAGE), read back with one exact sock_diag request for the
tuple. sock_diag answers in the tracer's own network namespace, so an equal
tuple in another namespace is another socket and never seen: namespace-correct
by construction. Closed connections: a copy kept at close() in a hash map whose
key holds the socket's netns cookie; looked up with the tracer's own cookie.
"""

from __future__ import annotations

import ctypes
import errno
import os
import socket
from pathlib import Path

from callerid.linux import procfs, sockdiag

from .bpfmap import BPF_NOEXIST, ConnMap, _lib, open_pinned
from .layout import ConnKey, Owner, SkRecord, key_tuple, make_key

SO_NETNS_COOKIE = 71   # include/uapi/asm-generic/socket.h, Linux 5.14+
_SYS_PIDFD_GETFD = 438
_libc = ctypes.CDLL(None, use_errno=True)

# A socket in these states no longer belongs to its owner's live connection.
_GONE_STATES = frozenset({sockdiag.TCP_TIME_WAIT, sockdiag.TCP_CLOSE})
_ALIVE = sockdiag.ALL_STATES - {sockdiag.TCP_LISTEN, sockdiag.TCP_TIME_WAIT, sockdiag.TCP_CLOSE}


def own_netns_cookie() -> int:
    """The netns cookie of the caller's network namespace (what bpf_get_netns_cookie gives)."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        return int.from_bytes(s.getsockopt(socket.SOL_SOCKET, SO_NETNS_COOKIE, 8), "little")


def _owner(value: bytes | None) -> Owner | None:
    if value is None or len(value) < ctypes.sizeof(Owner):
        return None
    return Owner.from_buffer_copy(value)


class SockStore:
    """Same questions as bpfmap.Connections, answered from socket-local storage."""

    open = None   # no tuple-keyed map of open connections: nothing for the sweeper there
    namespace_exact = True   # every record found is our namespace's (see tracer/lookup.py)

    def __init__(self, owners_fd: int, closed: ConnMap, owns_fd: bool = False):
        self.owners_fd = owners_fd
        self.closed = closed
        self._owns_fd = owns_fd
        self.netns = own_netns_cookie()

    @classmethod
    def open_pinned(cls, pin_dir: str | Path) -> SockStore | None:
        owners = open_pinned(Path(pin_dir) / "owners")
        if owners is None:
            return None
        closed = ConnMap.open_pinned(Path(pin_dir) / "sk_closed")
        if closed is None:
            os.close(owners)
            return None
        return cls(owners, closed, owns_fd=True)

    @property
    def capacity(self) -> int:
        return self.closed.capacity

    def close(self):
        self.closed.close()
        if self._owns_fd and self.owners_fd >= 0:
            os.close(self.owners_fd)
            self.owners_fd = -1

    def find(self, src_ip, src_port: int, dst_ip, dst_port: int) -> Owner | None:
        """The owner of the connection src -> dst in our namespace: on its socket while
        it lives, else the closed record. A live socket without a record (accepted,
        older than the probe) is not answered from a closed record of an earlier
        connection with the same tuple."""
        found = sockdiag.find_tcp_storage(src_ip, src_port, dst_ip, dst_port, self.owners_fd)
        for sock, value in found:
            # An orphan (inode 0: no process holds it any more, FIN_WAIT*, LAST_ACK)
            # still carries the record, but its owner has closed it: the closed
            # record below answers, with its close time.
            if sock.state in _GONE_STATES or not sock.inode:
                continue
            owner = _owner(value)
            if owner is not None:
                return owner
            return None   # a live socket the probe did not see: never an earlier connection's record
        return self.closed.lookup(make_key(src_ip, src_port, dst_ip, dst_port, self.netns))

    def items(self):
        """(key, owner) of every recorded live connection of our namespace (one
        sock_diag dump per family), then of every closed record of our namespace."""
        for sock, value in sockdiag.list_tcp_storage(_ALIVE, self.owners_fd):
            owner = _owner(value)
            if owner is not None:
                yield make_key(sock.src, sock.sport, sock.dst, sock.dport, self.netns), owner
        for key, owner in self.closed.items():
            if key.netns == self.netns:
                yield key, owner

    def record_existing(self, sock, pid: int, owner: Owner) -> bool:
        return self.record_socket(pid, sock.inode, owner)

    def record_socket(self, pid: int, inode: int, owner: Owner) -> bool:
        """Put owner on a socket the probe never saw (start-up reconcile): take a copy of
        the holder's descriptor (pidfd_getfd) and write the storage through it, unless
        the probe already has (BPF_NOEXIST)."""
        fd = _fd_of_inode(pid, inode)
        if fd is None:
            return False
        pidfd = os.pidfd_open(pid)
        try:
            dup = _libc.syscall(_SYS_PIDFD_GETFD, pidfd, fd, 0)
            if dup < 0:
                err = ctypes.get_errno()
                if err in (errno.EBADF, errno.ESRCH):
                    return False
                raise OSError(err, f"pidfd_getfd: {os.strerror(err)}")
        finally:
            os.close(pidfd)
        try:
            if os.fstat(dup).st_ino != inode:
                return False   # the fd number was reused meanwhile
            sk = socket.socket(fileno=os.dup(dup))
            with sk:
                local, remote = sk.getsockname(), sk.getpeername()
            record = SkRecord(owner=owner, key=make_key(local[0], local[1], remote[0], remote[1], self.netns))
            key = ctypes.c_int(dup)
            return _lib.bpf_update_elem(self.owners_fd, ctypes.byref(key), ctypes.byref(record), BPF_NOEXIST) == 0
        finally:
            os.close(dup)

    def delete(self, key: ConnKey) -> bool:
        """Drop the closed record for key's tuple in our namespace (an open one leaves
        with its socket)."""
        return self.closed.delete(make_key(*key_tuple(key), self.netns))

    def lookup(self, key: ConnKey) -> Owner | None:
        """find() for a ConnKey (the self-test, tests)."""
        return self.find(*key_tuple(key))


def _fd_of_inode(pid: int, inode: int) -> int | None:
    want = f"socket:[{inode}]"
    try:
        for fd in procfs.socket_fds(pid):
            try:
                if os.readlink(f"/proc/{pid}/fd/{fd}") == want:
                    return fd
            except OSError:
                continue
    except procfs.ProcessGone:
        return None
    return None
