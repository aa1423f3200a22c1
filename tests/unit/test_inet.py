"""The one address form (callerid/inet.py): v4-mapped round trips and the endpoint spelling."""

from __future__ import annotations

import ipaddress

import pytest

from callerid.inet import endpoint, mapped16, unmapped

V4, V6 = ipaddress.IPv4Address("10.0.0.1"), ipaddress.IPv6Address("fd00::1")


@pytest.mark.parametrize("given", ["10.0.0.1", "::ffff:10.0.0.1", V4, ipaddress.IPv6Address("::ffff:10.0.0.1"),
                                   b"\x00" * 10 + b"\xff\xff" + V4.packed])
def test_every_spelling_of_an_ipv4_address_unmaps_to_ipv4(given):
    assert unmapped(given) == V4


@pytest.mark.parametrize("given", ["fd00::1", V6, V6.packed])
def test_ipv6_stays_ipv6(given):
    assert unmapped(given) == V6


def test_mapped16_and_unmapped_are_inverse():
    for ip in (V4, V6):
        assert unmapped(mapped16(ip)) == ip
    assert mapped16("10.0.0.1") == mapped16("::ffff:10.0.0.1")


@pytest.mark.parametrize("ip, port, text", [("10.0.0.1", 22, "10.0.0.1:22"), ("::ffff:10.0.0.1", 22, "10.0.0.1:22"),
                                            (V6, 6817, "[fd00::1]:6817"), ("::1", 1, "[::1]:1")])
def test_endpoint(ip, port, text):
    assert endpoint(ip, port) == text
