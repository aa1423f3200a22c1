"""ctypes mirror of bpf/callerid.h: the only Python copy of the BPF record layout."""

from __future__ import annotations

import ctypes
from pathlib import Path

from callerid.inet import mapped16, unmapped

# Must equal CALLERID_LAYOUT_VERSION in bpf/callerid.h (checked, with the structs below, against
# BCC's compiled view of the header by tests/kernel/test_tracer_lifecycle.py,
# test_layout_mirror_matches_bcc_view_of_the_header).
LAYOUT_VERSION = 4

F_RECONCILED = 1

STAT_NAMES = (
    "connect",          # owner captured at connect()
    "established",      # tuple entry written at SYN_SENT -> ESTABLISHED
    "pending_miss",     # ESTABLISHED with no captured owner
    "connect_failed",   # SYN_SENT -> CLOSE, pending entry dropped
    "closed",           # tuple entry moved to the closed map
    "update_failed",    # a BPF map update returned an error
    "over_share",       # cookie, sockstore: a closed entry not kept, its uid had used its share
    "spilled",          # cookie: the connect's slot was busy, its record went to the spill hash
)


class ConnKey(ctypes.Structure):
    _fields_ = [
        ("saddr", ctypes.c_uint8 * 16),
        ("daddr", ctypes.c_uint8 * 16),
        ("sport", ctypes.c_uint16),
        ("dport", ctypes.c_uint16),
        ("_pad", ctypes.c_uint32),
        ("netns", ctypes.c_uint64),   # netns cookie; 0 from the tuple-keyed backends
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


class SkRecord(ctypes.Structure):
    """struct callerid_sk_record: the sockstore backend's value on a socket."""
    _fields_ = [("owner", Owner), ("key", ConnKey)]


class Slot(ctypes.Structure):
    """struct callerid_ck_slot: one slot of the cookie backend's direct-mapped table."""
    _fields_ = [("cookie", ctypes.c_uint64), ("spill", ctypes.c_uint32), ("_pad", ctypes.c_uint32),
                ("owner", Owner)]


def make_key(src_ip, src_port: int, dst_ip, dst_port: int, netns: int = 0) -> ConnKey:
    key = ConnKey()
    key.netns = netns
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
    """Where the BPF sources live: the callerid.bpf package's data.

    BCC needs a real directory (it compiles a file that #includes its sibling), so
    this takes the resource root as a path: callerid is never installed zipped.
    """
    from importlib.resources import files

    return Path(str(files("callerid.bpf")))
