"""ctypes mirror of bpf/callerid.h: the only Python copy of the BPF record layout."""

import ctypes
import ipaddress
from pathlib import Path

# Must equal CALLERID_LAYOUT_VERSION in bpf/callerid.h (checked by
# tests/kernel/test_layout.py against BCC's compiled view of the header).
LAYOUT_VERSION = 2

F_RECONCILED = 1

STAT_NAMES = (
    "connect",          # owner captured at connect()
    "established",      # tuple entry written at SYN_SENT -> ESTABLISHED
    "pending_miss",     # ESTABLISHED with no captured owner
    "connect_failed",   # SYN_SENT -> CLOSE, pending entry dropped
    "closed",           # tuple entry moved to the closed map
    "update_failed",    # a BPF map update returned an error
)


class ConnKey(ctypes.Structure):
    _fields_ = [
        ("saddr", ctypes.c_uint8 * 16),
        ("daddr", ctypes.c_uint8 * 16),
        ("sport", ctypes.c_uint16),
        ("dport", ctypes.c_uint16),
        ("_pad", ctypes.c_uint32),
    ]


class Owner(ctypes.Structure):
    _fields_ = [
        ("tgid", ctypes.c_uint32),
        ("tid", ctypes.c_uint32),
        ("uid", ctypes.c_uint32),
        ("gid", ctypes.c_uint32),
        ("cgroup_id", ctypes.c_uint64),
        ("birth_ns", ctypes.c_uint64),
        ("closed_ns", ctypes.c_uint64),
        ("flags", ctypes.c_uint32),
        ("_pad", ctypes.c_uint32),
        ("comm", ctypes.c_char * 16),
    ]


def mapped16(addr: str | ipaddress.IPv4Address | ipaddress.IPv6Address) -> bytes:
    """16-byte form used in keys: IPv6 as is, IPv4 as ::ffff:a.b.c.d."""
    ip = ipaddress.ip_address(addr) if isinstance(addr, str) else addr
    if ip.version == 4:
        return b"\x00" * 10 + b"\xff\xff" + ip.packed
    return ip.packed


def unmapped(raw: bytes) -> ipaddress.IPv4Address | ipaddress.IPv6Address:
    """Inverse of mapped16: v4-mapped addresses come back as IPv4."""
    ip6 = ipaddress.IPv6Address(bytes(raw))
    return ip6.ipv4_mapped or ip6


def make_key(src_ip, src_port: int, dst_ip, dst_port: int) -> ConnKey:
    key = ConnKey()
    ctypes.memmove(key.saddr, mapped16(src_ip), 16)
    ctypes.memmove(key.daddr, mapped16(dst_ip), 16)
    key.sport = src_port
    key.dport = dst_port
    return key


def key_tuple(key: ConnKey):
    return (unmapped(bytes(key.saddr)), key.sport, unmapped(bytes(key.daddr)), key.dport)


def header_path() -> Path:
    return bpf_dir() / "callerid.h"


def bpf_dir() -> Path:
    """Where the BPF sources live: the checkout, else the installed data dir."""
    import sys

    here = Path(__file__).resolve().parent.parent / "bpf"
    if (here / "callerid.bpf.c").exists():
        return here
    return Path(sys.prefix) / "share" / "callerid" / "bpf"
