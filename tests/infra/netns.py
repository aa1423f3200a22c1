"""Test hosts as network namespaces joined by veth pairs (198.18.0.0/15 and fd00::/8 only).

Built with pyroute2 over netlink, so a failure is an exception (pyroute2's NetlinkError, with the
kernel's errno) rather than an `ip` exit status to check. The namespaces are the ones `ip netns`
uses (bind mounts under /run/netns): enter one with `nsenter --net=/run/netns/NAME`, never with
`ip netns exec`, which remounts /sys and hides /sys/fs/cgroup (LAB-NOTES).
"""

from __future__ import annotations

import ipaddress
import subprocess
from dataclasses import dataclass, field

from pyroute2 import NetNS
from pyroute2 import netns as _netns

ALLOWED = (ipaddress.ip_network("198.18.0.0/15"), ipaddress.ip_network("fd00::/8"))
IFA_F_NODAD = 0x02  # linux/if_addr.h: no duplicate address detection (the address is usable at once)


def _allowed(addr: str):
    ip = ipaddress.ip_interface(addr).ip
    if not any(ip in net for net in ALLOWED):
        raise ValueError(f"{addr}: test hosts use 198.18.0.0/15 and fd00::/8 only")


# ---------------------------------------------------------------- netlink primitives

def add_netns(name: str) -> None:
    """A fresh namespace `name` with lo up (a leftover of that name, from a killed run, is removed first)."""
    del_netns(name)
    _netns.create(name)
    set_up(name, "lo")


def del_netns(name: str) -> None:
    """Remove a namespace (its veths go with it); a missing one is not an error."""
    try:
        _netns.remove(name)
    except FileNotFoundError:
        pass


def list_netns() -> list[str]:
    return list(_netns.listnetns())


def _index(ns: NetNS, ifname: str) -> int:
    found = ns.link_lookup(ifname=ifname)
    if not found:
        raise LookupError(f"no interface {ifname!r} in this namespace")
    return found[0]


def set_up(netns: str, ifname: str) -> None:
    with NetNS(netns) as ns:
        ns.link("set", index=_index(ns, ifname), state="up")


def add_veth(netns_a: str, ifname_a: str, netns_b: str, ifname_b: str) -> None:
    """A veth pair: ifname_a in netns_a, its peer ifname_b in netns_b (both down)."""
    with NetNS(netns_a) as ns:
        ns.link("add", ifname=ifname_a, kind="veth", peer={"ifname": ifname_b, "net_ns_fd": netns_b})


def add_bridge(netns: str, ifname: str) -> None:
    """A Linux bridge, up, forwarding at once (no STP, no forward delay)."""
    with NetNS(netns) as ns:
        ns.link("add", ifname=ifname, kind="bridge", br_stp_state=0, br_forward_delay=0)
        ns.link("set", index=_index(ns, ifname), state="up")


def set_master(netns: str, ifname: str, bridge: str) -> None:
    with NetNS(netns) as ns:
        ns.link("set", index=_index(ns, ifname), master=_index(ns, bridge))


def add_addr(netns: str, ifname: str, addr: str) -> None:
    """Add `addr` (address/prefix, a test range only) to ifname; IPv6 without duplicate address detection."""
    _allowed(addr)
    iface = ipaddress.ip_interface(addr)
    flags = IFA_F_NODAD if iface.version == 6 else 0
    with NetNS(netns) as ns:
        ns.addr("add", index=_index(ns, ifname), address=str(iface.ip), prefixlen=iface.network.prefixlen,
                flags=flags)


# ---------------------------------------------------------------- hosts

@dataclass
class Netns:
    name: str

    @property
    def path(self) -> str:
        return f"/run/netns/{self.name}"

    def argv(self, argv: list[str]) -> list[str]:
        # nsenter, not `ip netns exec`: the latter remounts /sys and hides /sys/fs/cgroup.
        return ["nsenter", f"--net={self.path}", "--", *argv]

    def run(self, argv, **kw):
        return subprocess.run(self.argv(argv), **kw)


@dataclass
class Topology:
    """Hosts on one bridge-less chain: each pair we link gets its own veth."""

    prefix: str
    hosts: dict = field(default_factory=dict)
    links: list = field(default_factory=list)

    def host(self, short: str) -> Netns:
        ns = Netns(f"{self.prefix}{short}")
        self.hosts[short] = ns  # recorded first: cleanup() removes a half-made one
        add_netns(ns.name)
        return ns

    def link(self, a: str, b: str, addrs_a: list[str], addrs_b: list[str]) -> None:
        for addr in addrs_a + addrs_b:
            _allowed(addr)
        na, nb = self.hosts[a], self.hosts[b]
        ia, ib = f"v{len(self.links)}{a}"[:15], f"v{len(self.links)}{b}"[:15]
        add_veth(na.name, ia, nb.name, ib)
        for ns, ifname, addrs in ((na, ia, addrs_a), (nb, ib, addrs_b)):
            for addr in addrs:
                add_addr(ns.name, ifname, addr)
            set_up(ns.name, ifname)
        self.links.append((ia, ib))

    def cleanup(self) -> None:
        for ns in self.hosts.values():
            del_netns(ns.name)  # deleting a netns removes its veths
        self.hosts.clear()
