"""How much slower than a development host this machine runs: one factor for the waits tests bound.

A test's timeouts are set for a host. Under software emulation (the VM tier: qemu TCG) the
same work takes many times longer, and a bound that is generous on a host (ssh's 10 s to
exchange banners, 64 logins in 90 s) fails there although nothing is wrong. The VM runner sets
CALLERID_TEST_SLOWDOWN (tests/vm/in_guest.sh); everywhere else it is 1. Only time bounds scale,
never counts or what a test asserts: speed is measured in benchmarks, not asserted in tests.
Daemon readiness has its own floor, CALLERID_TEST_READY_TIMEOUT (a BCC compile, tests/infra/daemonproc.py).
"""

from __future__ import annotations

import os

SLOWDOWN = max(1.0, float(os.environ.get("CALLERID_TEST_SLOWDOWN", "1")))


def scaled(seconds: float) -> float:
    """A host-sized time bound, stretched for this machine."""
    return seconds * SLOWDOWN


def scaled_int(seconds: int) -> int:
    """scaled() for options that take whole seconds (ssh's ConnectTimeout)."""
    return int(round(seconds * SLOWDOWN))
