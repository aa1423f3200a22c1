"""Baselines for a caller-ID lookup: Slurm's /proc scan, psutil, ss (the benches measure them,
tests/kernel checks they agree with callerid's sock_diag + /proc answers)."""

from __future__ import annotations

import ipaddress
import os
import re
import subprocess

# What Slurm's slurmd does for REQUEST_NETWORK_CALLERID, re-implemented from
# SchedMD/slurm src/common/callerid.c (callerid_find_inode_by_conn,
# find_pid_by_inode) and src/slurmd/slurmd/req.c (_rpc_network_callerid):
#
# - The request's source end is the local end of the socket on this node
#   (req.c swaps src/dst: "my remote is the other's source").
# - /proc/net/tcp is scanned line by line, then /proc/net/tcp6, whatever the
#   request's address family; the first line whose local and remote
#   address:port equal the tuple gives the inode. The state is not checked.
# - Addresses are compared as raw bytes: 4 of them when scanning tcp, all 16
#   when scanning tcp6. An IPv4 tuple therefore never matches a dual-stack
#   (v4-mapped) socket in tcp6, and a v4-mapped tuple never matches tcp.
# - Then /proc is read in directory order and, per pid, every /proc/<pid>/fd
#   entry is stat()ed (following the link) until st_ino equals the inode;
#   the first pid wins. It compares st_ino only (not st_dev, not "socket:[N]").
#
# Endianness: the kernel prints each address as %08X of the 32-bit words as
# stored (network order) read as host integers, so on little-endian 127.0.0.1
# is "0100007F" and each of tcp6's four words is byte-swapped the same way.
# Slurm parses the hex into bytes in text order and then htonl()s every
# 32-bit word; we do the same swap. Ports are printed as plain host numbers.


def _addr_bytes(ip) -> bytes:
    """The request's address bytes as slurmd holds them (4 for v4, 16 for v6)."""
    return ipaddress.ip_address(str(ip)).packed


def _hex_to_net(hexaddr: str) -> bytes:
    # Each 8-hex-digit group is a host-order u32 holding network-order bytes.
    raw = bytes.fromhex(hexaddr)
    return b"".join(raw[i:i + 4][::-1] for i in range(0, len(raw), 4))


def find_inode_by_conn(src_ip, sport: int, dst_ip, dport: int, proc: str = "/proc") -> int | None:
    """Inode of the socket with local end src_ip:sport and remote dst_ip:dport."""
    src, dst = _addr_bytes(src_ip), _addr_bytes(dst_ip)
    for name, width in (("tcp", 4), ("tcp6", 16)):
        try:
            f = open(f"{proc}/net/{name}")  # noqa: SIM115 - closed by the with below; only the open may fail
        except OSError:
            continue  # Slurm skips a table it cannot open
        with f:
            for line in f:
                cols = line.split()
                if len(cols) < 10 or ":" not in cols[1] or cols[0] == "sl":
                    continue  # the header line
                local, remote = cols[1].split(":"), cols[2].split(":")
                if int(local[1], 16) != sport or int(remote[1], 16) != dport:
                    continue
                # Slurm compares `width` bytes of 16-byte buffers: a short v4
                # request is zero-padded, so pad both sides before comparing.
                row_local = _hex_to_net(local[0]).ljust(16, b"\x00")[:width]
                row_remote = _hex_to_net(remote[0]).ljust(16, b"\x00")[:width]
                if row_local == src.ljust(16, b"\x00")[:width] and row_remote == dst.ljust(16, b"\x00")[:width]:
                    return int(cols[9])
    return None


def find_pid_by_inode(inode: int, proc: str = "/proc") -> int | None:
    """First pid (in /proc directory order) with an fd whose stat() st_ino is inode."""
    for name in os.listdir(proc):
        if not name[0].isdigit():
            continue
        fddir = f"{proc}/{name}/fd"
        try:
            fds = os.listdir(fddir)
        except OSError:
            continue  # processes come and go; Slurm ignores errors silently
        for fd in fds:
            try:
                if os.stat(f"{fddir}/{fd}").st_ino == inode:
                    return int(name)
            except OSError:
                continue
    return None


def slurm_scan(src_ip, sport: int, dst_ip, dport: int, proc: str = "/proc") -> tuple[int, int] | None:
    """(inode, pid) as slurmd finds them, or None."""
    inode = find_inode_by_conn(src_ip, sport, dst_ip, dport, proc)
    if inode is None:
        return None
    pid = find_pid_by_inode(inode, proc)
    return None if pid is None else (inode, pid)


def slurm_lookup(src_ip, sport: int, dst_ip, dport: int) -> int | None:
    """Owning pid by Slurm's algorithm, or None."""
    found = slurm_scan(src_ip, sport, dst_ip, dport)
    return None if found is None else found[1]


def _norm(ip) -> ipaddress.IPv4Address | ipaddress.IPv6Address:
    # psutil and ss report dual-stack sockets as ::ffff:a.b.c.d; compare v4 forms.
    ip = ipaddress.ip_address(str(ip))
    return (ip.ipv4_mapped or ip) if ip.version == 6 else ip


def psutil_lookup(src_ip, sport: int, dst_ip, dport: int) -> int | None:
    """Owning pid via psutil.net_connections(kind='tcp') (reads every fd of every process)."""
    import psutil

    want = (_norm(src_ip), sport, _norm(dst_ip), dport)
    for c in psutil.net_connections(kind="tcp"):
        if not c.raddr or c.pid is None:
            continue
        if (_norm(c.laddr.ip), c.laddr.port, _norm(c.raddr.ip), c.raddr.port) == want:
            return c.pid
    return None


_SS_PID = re.compile(r"pid=(\d+)")


def _ss_endpoint(ip, port: int) -> str:
    # ss matches an IPv4 filter against v4-mapped sockets too, not the reverse.
    ip = _norm(ip)
    return f"[{ip}]:{port}" if ip.version == 6 else f"{ip}:{port}"


def ss_lookup(src_ip, sport: int, dst_ip, dport: int) -> int | None:
    """Owning pid via `ss -tnpH state established src ... dst ...`."""
    out = subprocess.run(
        ["ss", "-tnpH", "state", "established",
         "src", _ss_endpoint(src_ip, sport), "dst", _ss_endpoint(dst_ip, dport)],
        capture_output=True, text=True, check=True,
    ).stdout
    m = _SS_PID.search(out)
    return int(m.group(1)) if m else None
