"""Test hosts as network namespaces joined by veth pairs (198.18.0.0/15 and fd00::/8 only)."""

from __future__ import annotations

import ipaddress
import subprocess
from dataclasses import dataclass, field

ALLOWED = (ipaddress.ip_network("198.18.0.0/15"), ipaddress.ip_network("fd00::/8"))


def _ip(*args, check=True):
    return subprocess.run(["ip", *args], check=check, capture_output=True, text=True)


def _allowed(addr: str):
    ip = ipaddress.ip_interface(addr).ip
    if not any(ip in net for net in ALLOWED):
        raise ValueError(f"{addr}: test hosts use 198.18.0.0/15 and fd00::/8 only")


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
        _ip("netns", "del", ns.name, check=False)  # leftover of a killed run
        _ip("netns", "add", ns.name)
        _ip("-n", ns.name, "link", "set", "lo", "up")
        self.hosts[short] = ns
        return ns

    def link(self, a: str, b: str, addrs_a: list[str], addrs_b: list[str]) -> None:
        for addr in addrs_a + addrs_b:
            _allowed(addr)
        na, nb = self.hosts[a], self.hosts[b]
        ia, ib = f"v{len(self.links)}{a}"[:15], f"v{len(self.links)}{b}"[:15]
        _ip("link", "add", ia, "netns", na.name, "type", "veth", "peer", "name", ib, "netns", nb.name)
        for ns, ifname, addrs in ((na, ia, addrs_a), (nb, ib, addrs_b)):
            for addr in addrs:
                extra = ["nodad"] if ":" in addr else []
                _ip("-n", ns.name, "addr", "add", addr, "dev", ifname, *extra)
            _ip("-n", ns.name, "link", "set", ifname, "up")
        self.links.append((ia, ib))

    def cleanup(self) -> None:
        for ns in self.hosts.values():
            _ip("netns", "del", ns.name, check=False)  # deleting a netns removes its veths
        self.hosts.clear()
