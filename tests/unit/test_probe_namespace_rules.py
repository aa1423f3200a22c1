"""tracer.lookup's namespace rules for map answers (issue 12 item 7) and the sock_diag
pieces the sockstore backend adds (bytecode filter, storage attribute parsing). The kernel
side runs in tests/kernel/test_probe_namespaces.py."""

from __future__ import annotations

import struct
from types import SimpleNamespace

import pytest

from callerid.linux import procfs, sockdiag
from callerid.protocol import Query, Source, Status
from callerid.tracer.layout import Owner
from callerid.tracer.lookup import Resolver

Q = Query.make("127.0.0.1", 40000, "127.0.0.1", 2222)
OURS, THEIRS = 1, 2


class Store:
    def __init__(self, owner, namespace_exact=False):
        self.owner, self.namespace_exact = owner, namespace_exact

    def find(self, *tuple_):
        return self.owner


@pytest.fixture
def world(monkeypatch):
    w = {"procs": {}, "socks": [], "proc_answers": 0}

    def proc_info(pid, proc="/proc", ids=True):
        if pid not in w["procs"]:
            raise procfs.ProcessGone(pid)
        return w["procs"][pid]

    def find_pid(inode, proc="/proc", deadline=None):
        w["proc_answers"] += 1
        return 500

    monkeypatch.setattr(procfs, "own_netns_inode", lambda proc="/proc": OURS)
    monkeypatch.setattr(procfs, "proc_info", proc_info)
    monkeypatch.setattr(procfs, "same_start", lambda info, birth: True)
    monkeypatch.setattr(procfs, "find_pid_for_inode", find_pid)
    monkeypatch.setattr(sockdiag, "find_tcp", lambda *a: list(w["socks"]))
    return w


def info(pid, netns, uid=1000):
    return SimpleNamespace(pid=pid, netns=netns, uid=uid, gid=uid, start_boot_ns=1, comm="c",
                           cgroup_text="0::/\n")


def owner(pid, closed=0):
    return Owner(tgid=pid, tid=pid, uid=1000, gid=1000, birth_ns=5, closed_ns=closed, comm=b"mapowner")


def live_sock():
    return SimpleNamespace(uid=1000, inode=9, state=sockdiag.TCP_ESTABLISHED)


def test_owner_in_another_namespace_goes_to_our_namespaces_sockets(world):
    world["procs"] = {100: info(100, THEIRS), 500: info(500, OURS)}
    world["socks"] = [live_sock()]
    out = Resolver(Store(owner(100)), "n").lookup(Q)
    assert out.answer.status == Status.FOUND and out.answer.source == Source.PROC and out.answer.pid == 500
    assert out.fallback_reason == "map_miss"


def test_exited_owner_never_answers_over_a_live_socket_of_ours(world):
    world["procs"] = {500: info(500, OURS)}        # the map's pid 100 is gone
    world["socks"] = [live_sock()]
    out = Resolver(Store(owner(100, closed=7)), "n").lookup(Q)
    assert out.answer.pid == 500 and not out.answer.owner_exited


def test_exited_owner_answers_when_no_socket_of_ours_holds_the_tuple(world):
    world["socks"] = [SimpleNamespace(uid=0, inode=0, state=sockdiag.TCP_TIME_WAIT)]
    out = Resolver(Store(owner(100, closed=7)), "n").lookup(Q)
    assert out.answer.status == Status.FOUND and out.answer.owner_exited and out.answer.source == Source.BPF


def test_a_namespace_exact_store_is_trusted_without_asking_sock_diag(world, monkeypatch):
    monkeypatch.setattr(sockdiag, "find_tcp", lambda *a: pytest.fail("asked sock_diag"))
    out = Resolver(Store(owner(100, closed=7), namespace_exact=True), "n", fallback=False).lookup(Q)
    assert out.answer.owner_exited


def test_ports_filter_rejects_by_jumping_past_the_end():
    bc = sockdiag._ports_filter(40000, 2222)
    ops = [struct.unpack_from("=BBH", bc, off) for off in range(0, len(bc), 4)]
    assert ops == [(sockdiag.INET_DIAG_BC_S_EQ, 8, 20), (0, 0, 40000), (sockdiag.INET_DIAG_BC_D_EQ, 8, 12),
                   (0, 0, 2222)]


def nla(atype, payload: bytes) -> bytes:
    raw = struct.pack("=HH", 4 + len(payload), atype) + payload
    return raw + b"\0" * (-len(raw) % 4)


def test_storage_value_is_found_among_other_attributes():
    value = bytes(range(112))
    storage = nla(sockdiag.SK_DIAG_BPF_STORAGE | sockdiag.NLA_F_NESTED,
                  nla(2, struct.pack("=I", 42)) + nla(sockdiag.SK_DIAG_BPF_STORAGE_MAP_VALUE, value))
    data = nla(7, b"\1" * 10) + nla(sockdiag.INET_DIAG_SK_BPF_STORAGES | sockdiag.NLA_F_NESTED, storage)
    assert sockdiag._storage_value(data, 0, len(data)) == value
    assert sockdiag._storage_value(data[:16], 0, 16) is None          # no storage attribute
    assert sockdiag._storage_value(data, 0, len(data) - 9) is None    # truncated: ignored, never read past
