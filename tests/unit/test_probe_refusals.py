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
