"""The cookie backend's pure pieces: the sweeper's verdict per record, and the socket
cookie read from an inet_diag_msg (tracer/cookiestore.py, callerid/linux/sockdiag.py)."""

from __future__ import annotations

import ipaddress
import struct

import pytest

from callerid.linux import sockdiag
from callerid.tracer.cookiestore import sweep_verdict

S = 1_000_000_000
GRACE = 120 * S
NOW = 10_000 * S


@pytest.mark.parametrize("closed_ns,birth_ns,exists,want", [
    (NOW - 10 * S, NOW - 20 * S, True, "keep"),      # closed within its grace, socket still there
    (NOW - 121 * S, NOW - 200 * S, True, "delete"),  # closed past its grace
    (NOW - 1 * S, NOW - 2 * S, False, "delete"),     # closed, its socket gone: nothing can find it
    (0, NOW - 1 * S, False, "keep"),                 # open and young: its socket may not be hashed yet
    (0, NOW - 500 * S, False, "delete"),             # open, old, socket gone: its close() was missed
    (0, NOW - 500 * S, True, "keep"),                # a long-lived open connection
])
def test_sweep_verdict(closed_ns, birth_ns, exists, want):
    assert sweep_verdict(closed_ns, birth_ns, NOW, GRACE, exists) == want


def test_cookie_is_read_from_the_two_host_order_halves_of_idiag_cookie():
    cookie = 0x0000_0123_89AB_CDEF
    msg = struct.pack("=BBBB", 2, 6, 0, 0) + struct.pack(">HH", 40000, 22) \
        + ipaddress.ip_address("10.0.0.1").packed.ljust(16, b"\0") \
        + ipaddress.ip_address("10.0.0.2").packed.ljust(16, b"\0") \
        + struct.pack("=III", 0, cookie & 0xFFFFFFFF, cookie >> 32) + struct.pack("=IIIII", 0, 0, 0, 1000, 77)
    assert len(msg) == sockdiag._MSG.size
    s = sockdiag._to_socket(msg, 0)
    assert (s.cookie, s.state, s.sport, s.dport, s.uid, s.inode) == (cookie, sockdiag.TCP_TIME_WAIT, 40000, 22,
                                                                    1000, 77)
    assert str(s.src) == "10.0.0.1" and str(s.dst) == "10.0.0.2"
    assert sockdiag._cookie_state_inode(msg, 0) == (cookie, sockdiag.TCP_TIME_WAIT, 77)   # the sweeper's parse


@pytest.mark.parametrize("conns,closed,want", [(131072, 65536, 262144), (13, 3, 16), (1, 1, 2), (100, 0, 128)])
def test_slot_count_is_the_power_of_two_at_or_above_every_record(conns, closed, want):
    from callerid.tracer.probes import cookie_slots
    assert cookie_slots(conns, closed) == want
