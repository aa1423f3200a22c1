"""The lab's network: a hub namespace with a bridge, one namespace per node with a veth into it."""

from __future__ import annotations

import subprocess

from ..netns import _allowed
from .config import HUB, NS_PREFIX, Node


class NetworkError(RuntimeError):
    pass


def _ip(*args: str, check: bool = True) -> subprocess.CompletedProcess:
    r = subprocess.run(["ip", *args], check=False, capture_output=True, text=True, timeout=30)
    if check and r.returncode != 0:
        raise NetworkError(f"ip {' '.join(args)}: {r.stderr.strip()}")
    return r


def add_netns(name: str) -> None:
    """A fresh namespace `name` (a leftover of that name is removed first) with lo up."""
    _ip("netns", "del", name, check=False)
    _ip("netns", "add", name)
    _ip("-n", name, "link", "set", "lo", "up")


def del_netns(name: str) -> None:
    """Remove a namespace (its veths go with it); a missing one is not an error."""
    _ip("netns", "del", name, check=False)


def add_bridge(ns: str) -> None:
    _ip("-n", ns, "link", "add", "br0", "type", "bridge", "stp_state", "0", "forward_delay", "0")
    _ip("-n", ns, "link", "set", "br0", "up")


def attach_node(n: Node) -> None:
    """veth vn<i> (in the hub, on the bridge) <-> eth0 (in the node) with the node's addresses."""
    _allowed(f"{n.ip}/24")
    _allowed(f"{n.ip6}/64")
    ns, port = n.netns.name, f"vn{n.index}"
    _ip("link", "add", port, "netns", HUB, "type", "veth", "peer", "name", "eth0", "netns", ns)
    _ip("-n", HUB, "link", "set", port, "master", "br0")
    _ip("-n", HUB, "link", "set", port, "up")
    _ip("-n", ns, "addr", "add", f"{n.ip}/24", "dev", "eth0")
    _ip("-n", ns, "addr", "add", f"{n.ip6}/64", "dev", "eth0", "nodad")
    _ip("-n", ns, "link", "set", "eth0", "up")


def lab_namespaces() -> list[str]:
    """Names of existing namespaces that belong to a lab (leftovers of a killed one, say)."""
    names = (line.split()[0] for line in _ip("netns", "list", check=False).stdout.splitlines() if line.split())
    return [n for n in names if n.startswith(NS_PREFIX)]
