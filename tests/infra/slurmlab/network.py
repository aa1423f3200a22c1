"""The lab's network: a hub namespace with a bridge, one namespace per node with a veth into it."""

from __future__ import annotations

from .. import netns
from .config import HUB, NS_PREFIX, Node

BRIDGE = "br0"


def add_hub() -> None:
    netns.add_netns(HUB)
    netns.add_bridge(HUB, BRIDGE)


def add_node(n: Node) -> None:
    """The node's namespace and veth vn<i> (in the hub, on the bridge) <-> eth0 (in the node), addressed."""
    ns, port = n.netns.name, f"vn{n.index}"
    netns.add_netns(ns)
    netns.add_veth(HUB, port, ns, "eth0")
    netns.set_master(HUB, port, BRIDGE)
    netns.set_up(HUB, port)
    netns.add_addr(ns, "eth0", f"{n.ip}/24")
    netns.add_addr(ns, "eth0", f"{n.ip6}/64")
    netns.set_up(ns, "eth0")


def lab_namespaces() -> list[str]:
    """Existing namespaces that belong to a lab (leftovers of a killed one, say)."""
    return [n for n in netns.list_netns() if n.startswith(NS_PREFIX)]
