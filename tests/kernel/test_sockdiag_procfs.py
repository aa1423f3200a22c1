"""sock_diag + /proc lookups on real loopback connections, checked against Slurm's scan, psutil and ss."""

from __future__ import annotations

import errno
import ipaddress
import os
import shutil
import socket
import struct
import subprocess
import time

import pytest

from callerid.linux import procfs, sockdiag
from tests.helpers import has_ipv6_loopback, require

V4 = "127.0.0.1"
MAPPED = "::ffff:127.0.0.1"



@pytest.fixture(scope="module")
def bench():
    require(os.geteuid() == 0, "root (reading every process's /proc/<pid>/fd)")
    require(shutil.which("ss") is not None, "ss (iproute2)")
    from tests.infra import slurm_proc_scan
    return slurm_proc_scan


class Conn:
    """A loopback connection held by this process: client and accepted ends."""

    def __init__(self, listen_family, listen_addr, client_family, connect_addr):
        self.listener = socket.socket(listen_family, socket.SOCK_STREAM)
        if listen_family == socket.AF_INET6:
            # Explicit: dual-stack must not depend on net.ipv6.bindv6only.
            self.listener.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
        self.listener.bind((listen_addr, 0))
        self.listener.listen()
        self.lport = self.listener.getsockname()[1]
        self.client = socket.socket(client_family, socket.SOCK_STREAM)
        self.client.connect((connect_addr, self.lport))
        self.server, _ = self.listener.accept()
        self.src, self.sport = self.client.getsockname()[:2]
        self.dst, self.dport = self.client.getpeername()[:2]
        self.client_ino = os.fstat(self.client.fileno()).st_ino
        self.server_ino = os.fstat(self.server.fileno()).st_ino

    def close(self):
        for s in (self.client, self.server, self.listener):
            s.close()


CASES = {
    # name: (listener family, bind address, client family, connect address, query forms)
    "ipv4": (socket.AF_INET, V4, socket.AF_INET, V4, (V4, MAPPED)),
    "ipv6": (socket.AF_INET6, "::1", socket.AF_INET6, "::1", ("::1",)),
    "dual": (socket.AF_INET6, "::", socket.AF_INET6, MAPPED, (V4, MAPPED)),
}


@pytest.fixture(params=sorted(CASES))
def conn(request, bench):
    lf, laddr, cf, caddr, forms = CASES[request.param]
    if "::1" in (laddr, caddr):
        require(has_ipv6_loopback(), "IPv6 on loopback (::1)")
    c = Conn(lf, laddr, cf, caddr)
    c.name, c.forms, c.family = request.param, forms, cf
    yield c
    c.close()


def test_find_tcp_both_forms(conn):
    for form in conn.forms:
        found = sockdiag.find_tcp(form, conn.sport, form, conn.dport)
        assert [s.inode for s in found] == [conn.client_ino], form
        s = found[0]
        assert s.family == conn.family and s.state == sockdiag.TCP_ESTABLISHED
        assert s.uid == os.geteuid()
        # Addresses come back in the socket's own family: mapped stays IPv6.
        assert s.src == ipaddress.ip_address(conn.src) and s.sport == conn.sport
        assert s.dst == ipaddress.ip_address(conn.dst) and s.dport == conn.dport
        # The accepted end is the reversed tuple.
        back = sockdiag.find_tcp(form, conn.dport, form, conn.sport)
        assert [x.inode for x in back] == [conn.server_ino]
    # A tuple that does not exist (the kernel may answer with the listener).
    assert sockdiag.find_tcp(conn.forms[0], conn.dport, conn.forms[0], 1) == []


def test_pids_by_socket_inode(conn):
    got = procfs.pids_by_socket_inode({conn.client_ino, conn.server_ino})
    assert got == {conn.client_ino: [os.getpid()], conn.server_ino: [os.getpid()]}
    assert procfs.find_pid_for_inode(conn.client_ino) == os.getpid()
    assert {conn.client_ino, conn.server_ino} <= procfs.socket_inodes(os.getpid())


def test_baselines_agree(conn, bench):
    me = os.getpid()
    for form in conn.forms:
        assert bench.psutil_lookup(form, conn.sport, form, conn.dport) == me, form
        assert bench.ss_lookup(form, conn.sport, form, conn.dport) == me, form
        # Slurm compares raw bytes per table: a tuple only matches in the
        # family form the socket itself uses (REFERENCE.md, "Limits").
        own_form = (":" in form) == (ipaddress.ip_address(conn.src).version == 6)
        expect = (conn.client_ino, me) if own_form else None
        assert bench.slurm_scan(form, conn.sport, form, conn.dport) == expect, form


def _ss_established():
    """(local ip, port, peer ip, port, uid, inode) of ESTABLISHED sockets, from ss -tneH."""
    out = subprocess.run(["ss", "-tneH", "state", "established"],
                         capture_output=True, text=True, check=True).stdout
    rows = set()
    for line in out.splitlines():
        cols = line.split()
        (lip, lport), (pip, pport) = (c.rsplit(":", 1) for c in cols[2:4])
        ext = dict(kv.split(":", 1) for kv in cols[4:] if kv.startswith(("uid:", "ino:")))
        rows.add((ipaddress.ip_address(lip.strip("[]")), int(lport),
                  ipaddress.ip_address(pip.strip("[]")), int(pport),
                  int(ext.get("uid", 0)), int(ext["ino"])))
    return rows


def test_list_tcp_matches_ss(conn):
    ours = {conn.sport, conn.dport}
    mine = {(s.src, s.sport, s.dst, s.dport, s.uid, s.inode)
            for s in sockdiag.list_tcp() if {s.sport, s.dport} == ours}
    theirs = {r for r in _ss_established() if {r[1], r[3]} == ours}
    assert len(mine) == 2 and mine == theirs
    assert conn.lport in sockdiag.listening_ports()
    # Only listeners when asked for LISTEN.
    assert all(s.state == sockdiag.TCP_LISTEN for s in sockdiag.list_tcp(states={sockdiag.TCP_LISTEN}))


def test_errors_are_sockdiag_errors(bench, monkeypatch):
    # No inet_diag handler for this protocol: the kernel answers ENOENT, to a
    # dump in NLMSG_DONE, which must not pass for "no sockets".
    monkeypatch.setattr(sockdiag, "_PROTOCOL", 200)
    with pytest.raises(sockdiag.SockDiagError) as e:
        sockdiag.list_tcp()
    assert isinstance(e.value, OSError) and e.value.errno == errno.ENOENT
    with pytest.raises(sockdiag.SockDiagError):
        sockdiag.list_tcp(families=(socket.AF_INET6,))


def test_child_holder_then_gone(bench):
    with socket.socket(socket.AF_INET) as listener:
        listener.bind((V4, 0))
        listener.listen()
        lport = listener.getsockname()[1]
        to_parent_r, to_parent_w = os.pipe()
        to_child_r, to_child_w = os.pipe()
        pid = os.fork()
        if pid == 0:  # child: hold one client socket until told to exit
            try:
                c = socket.socket(socket.AF_INET)
                # RST on close, so the socket vanishes at exit (no FIN_WAIT/TIME_WAIT).
                c.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
                c.connect((V4, lport))
                os.write(to_parent_w, str(c.getsockname()[1]).encode())
                os.read(to_child_r, 1)
            finally:
                os._exit(0)
        os.close(to_parent_w)
        os.close(to_child_r)
        try:
            sport = int(os.read(to_parent_r, 16))
            server, _ = listener.accept()
            found = sockdiag.find_tcp(V4, sport, V4, lport)
            assert len(found) == 1
            ino = found[0].inode
            assert procfs.pids_by_socket_inode({ino}) == {ino: [pid]}
            assert procfs.find_pid_for_inode(ino) == pid
            assert bench.slurm_scan(V4, sport, V4, lport) == (ino, pid)
            assert bench.psutil_lookup(V4, sport, V4, lport) == pid
            assert bench.ss_lookup(V4, sport, V4, lport) == pid
        finally:
            os.write(to_child_w, b"x")
            os.close(to_child_w)
            os.close(to_parent_r)
            os.waitpid(pid, 0)
        deadline = time.monotonic() + 2
        while sockdiag.find_tcp(V4, sport, V4, lport) and time.monotonic() < deadline:
            time.sleep(0.01)
        server.close()
        assert sockdiag.find_tcp(V4, sport, V4, lport) == []
        assert procfs.find_pid_for_inode(ino) is None
        assert bench.slurm_scan(V4, sport, V4, lport) is None
        assert bench.psutil_lookup(V4, sport, V4, lport) is None
        assert bench.ss_lookup(V4, sport, V4, lport) is None
