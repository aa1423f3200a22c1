"""Shared test helpers: preconditions that skip locally but fail loudly in CI."""

from __future__ import annotations

import os
import socket

import pytest

IN_CI = os.environ.get("CI") == "true"


def require(condition: bool, what: str) -> None:
    """Skip locally when a precondition is missing; in CI (CI=true) fail saying what is missing."""
    if condition:
        return
    if IN_CI:
        pytest.fail(f"precondition missing in CI: {what}", pytrace=False)
    pytest.skip(f"precondition missing: {what}")


def require_root() -> None:
    require(os.geteuid() == 0, "root (BPF, cgroups, network namespaces)")


def require_bpf():
    require(os.geteuid() == 0, "root (loading BPF)")
    require(os.path.ismount("/sys/fs/bpf"), "bpffs at /sys/fs/bpf (scripts/setup.sh mounts it)")
    require(os.path.ismount("/sys/kernel/tracing"), "tracefs at /sys/kernel/tracing (scripts/setup.sh mounts it)")
    try:
        import bcc  # noqa: F401
    except ImportError:
        require(False, "BCC Python bindings (python3-bpfcc; venv with --system-site-packages)")


def has_ipv6_loopback() -> bool:
    """Whether ::1 can be bound here (some CI containers have IPv6 disabled)."""
    try:
        with socket.socket(socket.AF_INET6) as s:
            s.bind(("::1", 0))
        return True
    except OSError:
        return False
