"""Address facts shared by every layer: the one 16-byte form (IPv4 v4-mapped), its inverse,
and how an endpoint is written for people."""

from __future__ import annotations

import ipaddress
from typing import Union

IPAddress = Union[ipaddress.IPv4Address, ipaddress.IPv6Address]
_V4_MAPPED_PREFIX = b"\x00" * 10 + b"\xff\xff"


def mapped16(addr: str | IPAddress) -> bytes:
    """16-byte form used in map keys and on the wire: IPv6 as is, IPv4 as ::ffff:a.b.c.d."""
    ip = ipaddress.ip_address(addr) if isinstance(addr, str) else addr
    if ip.version == 4:
        return _V4_MAPPED_PREFIX + ip.packed
    return ip.packed


def unmapped(addr: str | bytes | IPAddress) -> IPAddress:
    """The address with v4-mapped IPv6 turned back into IPv4, from 16 raw bytes (mapped16's
    form), a string or an address: an AF_INET socket and a dual-stack AF_INET6 one to
    the same IPv4 peer compare equal in this form."""
    if isinstance(addr, (bytes, bytearray, memoryview)):
        ip: IPAddress = ipaddress.IPv6Address(bytes(addr))
    elif isinstance(addr, (ipaddress.IPv4Address, ipaddress.IPv6Address)):
        ip = addr
    else:
        ip = ipaddress.ip_address(addr)
    if ip.version == 6:
        return ip.ipv4_mapped or ip
    return ip


def endpoint(ip: str | IPAddress, port: int) -> str:
    """ip:port for people and logs: IPv4 (v4-mapped too) as a.b.c.d:port, IPv6 as [v6]:port."""
    addr = unmapped(ip)
    return f"[{addr}]:{port}" if addr.version == 6 else f"{addr}:{port}"
