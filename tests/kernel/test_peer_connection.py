"""callerid.linux.sockets.tcp_connection on real sockets: the pidfd path (sshd's own socket) and
the sock_diag fallback must name the same connection, for IPv4, dual-stack and IPv6."""

from __future__ import annotations

import os
import socket
import subprocess

import pytest

from callerid.inet import unmapped
from callerid.linux import procfs, sockets
from tests.helpers import has_ipv6_loopback, require

pytestmark = pytest.mark.kernel



@pytest.fixture(params=["v4", "dual-stack", "v6"])
def holder(request):
    """A process holding a unix socket and (like sshd [priv]) the accepted end of one TCP
    connection; yields (pid, (client_addr, server_addr))."""
    require(os.geteuid() == 0, "root (pidfd_getfd needs CAP_SYS_PTRACE)")
    family, host = {"v4": (socket.AF_INET, "127.0.0.1"), "dual-stack": (socket.AF_INET6, "::"),
                    "v6": (socket.AF_INET6, "::1")}[request.param]
    if family == socket.AF_INET6:
        require(has_ipv6_loopback(), "IPv6 on loopback")
    lsock = socket.socket(family, socket.SOCK_STREAM)
    if request.param == "dual-stack":
        lsock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
    lsock.bind((host, 0))
    lsock.listen(1)
    port = lsock.getsockname()[1]
    client = socket.create_connection(("127.0.0.1" if request.param != "v6" else "::1", port), timeout=5)
    server, _ = lsock.accept()
    a, b = socket.socketpair()
    # A fresh process holding exactly these sockets (a forked pytest would also hold
    # every socket the session has open, and the first TCP one would win).
    child = subprocess.Popen(["sleep", "60"], pass_fds=(server.fileno(), a.fileno()))
    expected = (client.getsockname(), server.getsockname())
    server.close()
    lsock.close()
    try:
        yield child.pid, expected
    finally:
        child.kill()
        child.wait(10)
        client.close()
        a.close()
        b.close()


def _norm(addr):
    return (unmapped(addr[0]), addr[1])


def test_pidfd_and_sock_diag_name_the_same_connection(holder, monkeypatch):
    pid, (client_end, server_end) = holder
    direct = sockets._connection_via_pidfd(pid, "/proc")
    assert direct is not None
    assert (_norm((str(direct.remote_ip), direct.remote_port)), _norm((str(direct.local_ip), direct.local_port))) \
        == (_norm(client_end), _norm(server_end))
    assert sockets.tcp_connection(pid) == direct

    def refused(*_):
        raise OSError(1, "pidfd_getfd refused (as under a seccomp filter)")
    monkeypatch.setattr(sockets, "_connection_via_pidfd", refused)
    dumped = sockets.tcp_connection(pid)
    assert dumped is not None
    assert (_norm((str(dumped.remote_ip), dumped.remote_port)), _norm((str(dumped.local_ip), dumped.local_port))) \
        == (_norm(client_end), _norm(server_end))


def test_process_without_tcp_sockets_has_no_connection():
    require(os.geteuid() == 0, "root (pidfd_getfd needs CAP_SYS_PTRACE)")
    a, b = socket.socketpair()
    child = subprocess.Popen(["sleep", "60"], pass_fds=(a.fileno(), b.fileno()))
    try:
        assert procfs.socket_fds(child.pid), "the holder should have its unix sockets"
        assert sockets._connection_via_pidfd(child.pid, "/proc") is None
        assert sockets.tcp_connection(child.pid) is None
    finally:
        child.kill()
        child.wait(10)
        a.close()
        b.close()
