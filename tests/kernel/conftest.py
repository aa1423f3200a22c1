"""Kernel-test fixtures: job cgroups (tracer daemons: tests/conftest.py)."""

from __future__ import annotations

import os

import pytest

from callerid.adopter.jobs import is_cgroup2
from tests.helpers import require
from tests.infra.clients import close_client, query_for, start_client  # noqa: F401 - re-exported for tests
from tests.infra.jobtree import JobTree


@pytest.fixture
def jobs():
    require(os.geteuid() == 0, "root (creating job cgroups)")
    tree = JobTree(node=f"t{os.getpid()}")   # v1 where this host mounts it, else cgroup v2
    require(tree.layout == "v1" or is_cgroup2(tree.v2_mount), f"cgroup v1 freezer or cgroup2 under {tree.root}")
    try:
        yield tree
    finally:
        tree.cleanup()


