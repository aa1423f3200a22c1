"""A backend the running kernel cannot serve is refused at start-up with a reason, not an errno."""

from __future__ import annotations

import errno

import pytest

from callerid.tracer import probes


def test_a_kernel_without_netns_cookies_refuses_the_backend_saying_why(monkeypatch):
    def no_netns_cookie():   # Debian 11's 5.10: getsockopt(SO_NETNS_COOKIE) is ENOPROTOOPT
        raise OSError(errno.ENOPROTOOPT, "Protocol not available")
    monkeypatch.setattr(probes, "own_netns_cookie", no_netns_cookie)
    with pytest.raises(probes.ProbeLoadError) as err:
        probes.netns_cookie_or_refuse("cookie")
    assert str(err.value).startswith("cookie: this kernel cannot tell the network namespace's cookie")
    assert "Linux 5.14" in str(err.value) and "Protocol not available" in str(err.value)


def test_a_kernel_with_netns_cookies_gives_ours(monkeypatch):
    monkeypatch.setattr(probes, "own_netns_cookie", lambda: 4096)
    assert probes.netns_cookie_or_refuse("sockstore") == 4096


def test_the_tests_expect_the_tracers_refusals_in_its_order():
    # tests/infra/backend_floors.py: which backends a platform refuses (the kernel and VM tiers assert
    # the refusal there); Debian 11 is kernel 5.10 with BCC 0.18, Debian 12 6.1 with BCC 0.26
    from tests.infra.backend_floors import COOKIE_REFUSAL, SOCKSTORE_BCC_REFUSAL, kernel_version, refusal
    debian11, debian12 = {"kernel": (5, 10), "bcc": (0, 18, 0)}, {"kernel": (6, 1), "bcc": (0, 26, 0)}
    assert refusal("cookie", **debian11) == f"cookie: {COOKIE_REFUSAL}"
    assert refusal("sockstore", **debian11) == SOCKSTORE_BCC_REFUSAL   # BCC checked first
    assert refusal("sockstore", kernel=(5, 10), bcc=(0, 26, 0)) == f"sockstore: {COOKIE_REFUSAL}"
    assert all(refusal(b, **debian11) is None for b in ("fentry", "kprobe", "tracepoint"))
    assert all(refusal(b, **debian12) is None for b in ("cookie", "sockstore", "fentry", "kprobe", "tracepoint"))
    assert kernel_version("6.12.118+deb13-amd64") == (6, 12) and kernel_version("5.10.0-32-amd64") == (5, 10)
