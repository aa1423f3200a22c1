"""Shared test helpers: preconditions that skip locally but fail loudly in CI."""

import os

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
