"""TCP sockets of the caller's network namespace, read through NETLINK_SOCK_DIAG.

Spoken directly over an AF_NETLINK socket with struct: the messages are a fixed
72-byte inet_diag_msg per socket, and decoding them by hand costs ~2 us per socket
where pyroute2 took ~50 us (plus ~1 ms to open a socket): a dump of a busy node's
20,000 sockets is then tens of milliseconds, not a second of GIL in the tracer.
"""

from __future__ import annotations

import errno
import ipaddress
import os
import socket
import struct
from dataclasses import dataclass

from callerid.inet import IPAddress, mapped16, unmapped

AF_INET = socket.AF_INET
AF_INET6 = socket.AF_INET6

# Kernel TCP states (include/net/tcp_states.h); inet_diag filters with 1 << state.
TCP_ESTABLISHED = 1
TCP_SYN_SENT = 2
TCP_SYN_RECV = 3
TCP_FIN_WAIT1 = 4
TCP_FIN_WAIT2 = 5
TCP_TIME_WAIT = 6
TCP_CLOSE = 7
TCP_CLOSE_WAIT = 8
TCP_LAST_ACK = 9
TCP_LISTEN = 10
TCP_CLOSING = 11

ESTABLISHED_ONLY = frozenset({TCP_ESTABLISHED})
ALL_STATES = frozenset(range(TCP_ESTABLISHED, TCP_CLOSING + 1))

# A module constant so a test can stand in for a kernel without tcp_diag.
_PROTOCOL = socket.IPPROTO_TCP

# inet_diag_sockid.idiag_cookie meaning "do not check the cookie" (INET_DIAG_NOCOOKIE).
_NOCOOKIE = 0xFFFFFFFFFFFFFFFF


class SockDiagError(OSError):
    """A sock_diag request failed (netlink error, no inet_diag support, ...)."""


@dataclass(frozen=True)
class TcpSocket:
    family: int
    state: int
    src: IPAddress
    sport: int
    dst: IPAddress
    dport: int
    uid: int
    inode: int
    cookie: int = 0   # the kernel's socket cookie (what bpf_get_socket_cookie gives)


NETLINK_SOCK_DIAG = 4
SOCK_DIAG_BY_FAMILY = 20
NLMSG_ERROR, NLMSG_DONE = 2, 3
NLM_F_REQUEST, NLM_F_MULTI, NLM_F_DUMP = 0x1, 0x2, 0x300
_NLMSG = struct.Struct("=IHHII")            # nlmsghdr: len, type, flags, seq, pid
_REQ = struct.Struct("=BBBxI")              # inet_diag_req_v2 up to its sockid
_SOCKID = struct.Struct(">HH16s16s")        # sport, dport (big endian), src, dst ...
_SOCKID_TAIL = struct.Struct("=IQ")         # ... if, cookie (host order)
_MSG = struct.Struct("=BBxx4x16s16s4xII12xII")  # inet_diag_msg: family, state, (ports), src, dst, cookie, uid, inode
_PORTS = struct.Struct(">HH")
_RECV_TIMEOUT = 5.0                         # the kernel answers at once; never hang on it
# Asking for socket-local BPF storage (include/uapi/linux/{inet_diag,sock_diag}.h)
_NLA = struct.Struct("=HH")
_STORAGE_REQ = struct.Struct("=HHHHI")      # nested attr holding one MAP_FD attr
NLA_F_NESTED, NLA_TYPE_MASK = 0x8000, 0x3FFF
INET_DIAG_REQ_BYTECODE = 1
INET_DIAG_REQ_SK_BPF_STORAGES = 2
INET_DIAG_BC_S_EQ, INET_DIAG_BC_D_EQ = 11, 12
_BC_OP = struct.Struct("=BBH")             # struct inet_diag_bc_op: code, yes, no
SK_DIAG_BPF_STORAGE_REQ_MAP_FD = 1
INET_DIAG_SK_BPF_STORAGES = 20
SK_DIAG_BPF_STORAGE = 1
SK_DIAG_BPF_STORAGE_MAP_VALUE = 3

def _nl_socket() -> socket.socket:
    """A sock_diag socket; one per call: it stays in the namespace it was made in,
    and callers may setns() between calls."""
    try:
        nl = socket.socket(socket.AF_NETLINK, socket.SOCK_RAW | socket.SOCK_CLOEXEC, NETLINK_SOCK_DIAG)
    except OSError as e:
        raise SockDiagError(e.errno, f"sock_diag: {e.strerror or e}") from e
    nl.settimeout(_RECV_TIMEOUT)
    return nl


def _mask(states) -> int:
    mask = 0
    for state in states:
        mask |= 1 << state
    return mask


def _request(nl: socket.socket, family: int, mask: int, sockid=None, storage_fd: int = -1,
             bytecode: bytes = b"", parse=None) -> list:
    """A TCP dump of one family, or with sockid=(src, sport, dst, dport) one exact lookup.

    The exact form (no NLM_F_DUMP) is O(1) in the kernel's hash. The kernel
    resolves an AF_INET request (and an AF_INET6 one with v4-mapped
    addresses) with inet_lookup(), which also finds dual-stack AF_INET6
    sockets; with no established match it falls back to the listener on the
    local port, so callers must re-check the tuple
    (net/ipv4/inet_diag.c: inet_diag_find_one_icsk()).

    With storage_fd (a BPF_MAP_TYPE_SK_STORAGE map's fd) each socket comes with the
    value that map holds on it, as (TcpSocket, bytes or None) pairs.
    """
    if sockid:
        src, sport, dst, dport = sockid
        # an IPv4 address fills the first 4 of the 16 bytes
        sid = _SOCKID.pack(sport, dport, src.packed.ljust(16, b"\0"), dst.packed.ljust(16, b"\0")) \
            + _SOCKID_TAIL.pack(0, _NOCOOKIE)
        flags = NLM_F_REQUEST
    else:
        sid = _SOCKID.pack(0, 0, bytes(16), bytes(16)) + _SOCKID_TAIL.pack(0, 0)
        flags = NLM_F_REQUEST | NLM_F_DUMP
    body = _REQ.pack(family, _PROTOCOL, 0, mask) + sid
    if bytecode:
        body += _NLA.pack(_NLA.size + len(bytecode), INET_DIAG_REQ_BYTECODE) + bytecode
    if storage_fd >= 0:
        body += _STORAGE_REQ.pack(_STORAGE_REQ.size, INET_DIAG_REQ_SK_BPF_STORAGES | NLA_F_NESTED,
                                  8, SK_DIAG_BPF_STORAGE_REQ_MAP_FD, storage_fd)
    seq = 1
    try:
        nl.sendto(_NLMSG.pack(_NLMSG.size + len(body), SOCK_DIAG_BY_FAMILY, flags, seq, 0) + body, (0, 0))
        found = []
        while True:
            data = nl.recv(1 << 17)
            off = 0
            while off + _NLMSG.size <= len(data):
                length, mtype, mflags, mseq, _ = _NLMSG.unpack_from(data, off)
                if length < _NLMSG.size or off + length > len(data):
                    raise SockDiagError(errno.EPROTO, "sock_diag: truncated netlink message")
                payload = off + _NLMSG.size
                off += (length + 3) & ~3
                if mseq != seq:
                    continue
                if mtype in (NLMSG_ERROR, NLMSG_DONE):
                    # both carry -errno first; a dump that failed after it started ends
                    # with a NLMSG_DONE carrying one, which must not pass for "no sockets"
                    code = -struct.unpack_from("=i", data, payload)[0] if length >= _NLMSG.size + 4 else 0
                    if code == 0 or (sockid and code == errno.ENOENT):  # ENOENT: "no such socket"
                        return found
                    raise SockDiagError(code, f"sock_diag: {os.strerror(code)}")
                if mtype == SOCK_DIAG_BY_FAMILY:
                    sock = (parse or _to_socket)(data, payload)
                    found.append(sock if storage_fd < 0 else
                                 (sock, _storage_value(data, payload + _MSG.size, off)))
                    if not sockid and not mflags & NLM_F_MULTI:
                        return found
            if sockid and found:
                return found  # an exact lookup is one message, with no DONE after it
    except socket.timeout as e:
        raise SockDiagError(errno.ETIMEDOUT, "sock_diag: no answer from the kernel") from e
    except SockDiagError:
        raise
    except OSError as e:
        raise SockDiagError(e.errno, f"sock_diag: {e.strerror or e}") from e


def _attrs(data: bytes, start: int, end: int):
    """(type without flags, value start, value end) of each netlink attribute in data[start:end]."""
    while start + _NLA.size <= end:
        length, atype = _NLA.unpack_from(data, start)
        if length < _NLA.size or start + length > end:
            return
        yield atype & NLA_TYPE_MASK, start + _NLA.size, start + length
        start += (length + 3) & ~3


def _storage_value(data: bytes, start: int, end: int) -> bytes | None:
    """The one SK_STORAGE value asked for, from the attributes after an inet_diag_msg."""
    for atype, vstart, vend in _attrs(data, start, end):
        if atype != INET_DIAG_SK_BPF_STORAGES:
            continue
        for stype, sstart, send in _attrs(data, vstart, vend):
            if stype != SK_DIAG_BPF_STORAGE:
                continue
            for ftype, fstart, fend in _attrs(data, sstart, send):
                if ftype == SK_DIAG_BPF_STORAGE_MAP_VALUE:
                    return data[fstart:fend]
    return None


def _to_socket(data: bytes, off: int) -> TcpSocket:
    # idiag_cookie is two host-order u32s, low half first (sock_diag_save_cookie)
    family, state, src, dst, cookie_lo, cookie_hi, uid, inode = _MSG.unpack_from(data, off)
    sport, dport = _PORTS.unpack_from(data, off + 4)
    if family == AF_INET:
        src, dst = src[:4], dst[:4]
    return TcpSocket(family=family, state=state, src=ipaddress.ip_address(src), sport=sport,
                     dst=ipaddress.ip_address(dst), dport=dport, uid=uid, inode=inode,
                     cookie=cookie_lo | cookie_hi << 32)


def list_tcp(states=ESTABLISHED_ONLY, families=(AF_INET, AF_INET6)) -> list[TcpSocket]:
    """All TCP sockets in the given states, one kernel dump per family.

    The kernel applies the state mask, so unwanted sockets never cross netlink.
    Dual-stack sockets (AF_INET6 with v4-mapped addresses) appear once, under
    AF_INET6: the kernel dumps by sk_family.
    """
    mask = _mask(states)
    with _nl_socket() as nl:
        return [s for family in families for s in _request(nl, family, mask)]


def list_tcp_storage(states, storage_fd: int, families=(AF_INET, AF_INET6)) -> list:
    """list_tcp with the value the SK_STORAGE map storage_fd holds on each socket:
    (TcpSocket, bytes or None) pairs."""
    mask = _mask(states)
    with _nl_socket() as nl:
        return [pair for family in families for pair in _request(nl, family, mask, None, storage_fd)]


# state, cookie halves and inode only: no address objects (the sweeper's dump of every socket)
_MSG_COOKIE = struct.Struct("=xB42xII16xI")


def _cookie_state_inode(data: bytes, off: int) -> tuple[int, int, int]:
    state, lo, hi, inode = _MSG_COOKIE.unpack_from(data, off)
    return lo | hi << 32, state, inode


def socket_cookies(states, families=(AF_INET, AF_INET6)) -> dict[int, tuple[int, int]]:
    """cookie -> (state, inode) of every TCP socket in these states: list_tcp without the
    addresses, several times faster where TIME_WAIT sockets number tens of thousands."""
    mask = _mask(states)
    with _nl_socket() as nl:
        return {c: (st, ino) for family in families
                for c, st, ino in _request(nl, family, mask, parse=_cookie_state_inode)}


def listening_ports() -> set[int]:
    """Local ports of TCP LISTEN sockets, both families."""
    return {s.sport for s in list_tcp(states={TCP_LISTEN})}


def find_tcp(src_ip, sport: int, dst_ip, dport: int) -> list[TcpSocket]:
    """Sockets whose local end is src_ip:sport and remote end dst_ip:dport.

    IPv4 and v4-mapped forms are equivalent: either finds an AF_INET socket
    and a dual-stack AF_INET6 one. Cost: one exact kernel lookup, not a dump.
    """
    src, dst = unmapped(src_ip), unmapped(dst_ip)
    if src.version != dst.version:
        return []
    return [sock for sock, _ in _find_exact(src, sport, dst, dport, -1)]


def find_tcp_storage(src_ip, sport: int, dst_ip, dport: int, storage_fd: int) -> list:
    """Like find_tcp, with the value the SK_STORAGE map storage_fd holds on each socket:
    (TcpSocket, bytes or None) pairs.

    The kernel attaches socket storage to dumps only, never to an exact lookup
    (inet_diag_cmd_exact() sets up no bpf_stg_diag), so this is a dump narrowed
    by an inet_diag bytecode filter on both ports: one socket crosses netlink, but
    the kernel walks its whole established hash table (measured in
    bench/probe_bench.py)."""
    src, dst = unmapped(src_ip), unmapped(dst_ip)
    if src.version != dst.version:
        return []
    # A dump is by the socket's family: an IPv4 tuple may also be a dual-stack AF_INET6
    # socket's (v4-mapped), asked for only when no AF_INET socket has it.
    families = (AF_INET, AF_INET6) if src.version == 4 else (AF_INET6,)
    want = (mapped16(src), sport, mapped16(dst), dport)
    mask, bc = _mask(ALL_STATES - {TCP_LISTEN}), _ports_filter(sport, dport)
    with _nl_socket() as nl:
        for family in families:
            found = [(s, v) for s, v in _request(nl, family, mask, None, storage_fd, bc)
                     if (mapped16(s.src), s.sport, mapped16(s.dst), s.dport) == want]
            if found:
                return found
    return []


def _ports_filter(sport: int, dport: int) -> bytes:
    """inet_diag bytecode: source port == sport and destination port == dport.
    Each test is an op plus a second op carrying the port; a failed test jumps
    4 bytes past the end, which rejects the socket."""
    ops = [(INET_DIAG_BC_S_EQ, sport), (INET_DIAG_BC_D_EQ, dport)]
    total = 8 * len(ops)
    out = b""
    for i, (code, port) in enumerate(ops):
        out += _BC_OP.pack(code, 8, total - 8 * i + 4) + _BC_OP.pack(0, 0, port)
    return out


def _find_exact(src, sport: int, dst, dport: int, storage_fd: int) -> list:
    family = AF_INET if src.version == 4 else AF_INET6
    with _nl_socket() as nl:
        found = _request(nl, family, _mask(ALL_STATES), (src, sport, dst, dport), storage_fd)
    if storage_fd < 0:
        found = [(sock, None) for sock in found]
    want = (mapped16(src), sport, mapped16(dst), dport)
    return [(s, v) for s, v in found if (mapped16(s.src), s.sport, mapped16(s.dst), s.dport) == want]
