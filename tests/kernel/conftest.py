"""Kernel-test fixtures: tracer daemons and job cgroups."""

from __future__ import annotations

import os

import pytest

from tests.helpers import require, require_bpf
from tests.infra.clients import close_client, start_client  # noqa: F401 - re-exported for tests
from tests.infra.jobtree import JobTree
from tests.infra.tracerproc import TracerFactory


@pytest.fixture(scope="module")
def tracers(munged):
    require_bpf()
    f = TracerFactory(munged.socket)
    try:
        yield f
    finally:
        f.cleanup()


@pytest.fixture
def jobs():
    require(os.geteuid() == 0, "root (creating job cgroups)")
    require(os.path.ismount("/sys/fs/cgroup/freezer"), "cgroup v1 freezer at /sys/fs/cgroup/freezer")
    tree = JobTree(node=f"t{os.getpid()}")
    try:
        yield tree
    finally:
        tree.cleanup()


