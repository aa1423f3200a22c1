"""Address facts shared by every layer: the one 16-byte form (IPv4 v4-mapped) and its inverse."""

from __future__ import annotations

import ipaddress
from typing import Union

IPAddress = Union[ipaddress.IPv4Address, ipaddress.IPv6Address]


def mapped16(addr: str | IPAddress) -> bytes:
    """16-byte form used in map keys and on the wire: IPv6 as is, IPv4 as ::ffff:a.b.c.d."""
    ip = ipaddress.ip_address(addr) if isinstance(addr, str) else addr
    if ip.version == 4:
        return b"\x00" * 10 + b"\xff\xff" + ip.packed
    return ip.packed


def unmapped(raw: bytes) -> IPAddress:
    """Inverse of mapped16: v4-mapped addresses come back as IPv4."""
    ip6 = ipaddress.IPv6Address(bytes(raw))
    return ip6.ipv4_mapped or ip6
