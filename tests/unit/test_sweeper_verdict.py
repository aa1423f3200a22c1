"""Table test for tracer.sweeper.verdict: what the sweeper does with one map entry."""

from __future__ import annotations

import pytest

from callerid.tracer.sweeper import verdict

S = 1_000_000_000          # one second in ns
GRACE = 120 * S
NOW = 10_000 * S           # boot time is large enough that every birth below is in the past


@pytest.mark.parametrize("closed_ns, birth_ns, now_ns, grace_ns, want", [
    # closed entries: deleted strictly after the grace period, whatever their age
    (NOW - GRACE - 1, NOW - 5000 * S, NOW, GRACE, "delete"),
    (NOW - GRACE - 10 * S, NOW - 200 * S, NOW, GRACE, "delete"),
    (NOW - GRACE, NOW - 5000 * S, NOW, GRACE, "keep"),        # exactly at the grace: keep
    (NOW - GRACE + 1, NOW - 5000 * S, NOW, GRACE, "keep"),
    (NOW - 1, NOW - 5000 * S, NOW, GRACE, "keep"),            # just closed, old connection: never verify
    (NOW, NOW, NOW, GRACE, "keep"),
    (NOW + S, NOW - S, NOW, GRACE, "keep"),                   # closed "in the future" (clock skew): keep
    (1, 0, NOW, GRACE, "delete"),                             # smallest nonzero closed_ns is a close time
    # zero grace: anything closed before now is deleted, anything born before now is verified
    (NOW - 1, NOW - 2, NOW, 0, "delete"),
    (NOW, NOW - 2, NOW, 0, "keep"),
    # open entries (closed_ns == 0): verified once older than the grace period
    (0, NOW - GRACE - 1, NOW, GRACE, "verify"),
    (0, NOW - 5000 * S, NOW, GRACE, "verify"),
    (0, 0, NOW, GRACE, "verify"),                             # unknown birth: old enough to check
    (0, NOW - GRACE, NOW, GRACE, "keep"),                     # exactly at the grace: keep
    (0, NOW - GRACE + 1, NOW, GRACE, "keep"),
    (0, NOW, NOW, GRACE, "keep"),
    (0, NOW + S, NOW, GRACE, "keep"),                         # born "in the future": keep
    (0, NOW - 1, NOW, 0, "verify"),
    (0, NOW, NOW, 0, "keep"),
    # early after boot: now smaller than the grace
    (0, 0, GRACE // 2, GRACE, "keep"),
    (1, 0, GRACE // 2, GRACE, "keep"),
])
def test_verdict(closed_ns, birth_ns, now_ns, grace_ns, want):
    assert verdict(closed_ns, birth_ns, now_ns, grace_ns) == want


def test_verdict_values_are_the_documented_three():
    seen = {verdict(c, b, NOW, GRACE) for c in (0, NOW - 1, NOW - GRACE - 1) for b in (0, NOW - 1)}
    assert seen == {"delete", "verify", "keep"}
