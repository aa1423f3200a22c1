"""Fixtures shared by kernel, lab and VM tests: private munged daemons, non-root test users,
tracer daemons."""

from __future__ import annotations

import os
import shutil
import subprocess

import pytest

from tests.helpers import require, require_bpf
from tests.infra import munged as munged_mod
from tests.infra import pace
from tests.infra import users as users_mod
from tests.infra.jobtree import JobTree
from tests.infra.tracerproc import TracerFactory

TEST_USERS = ("cidtest1", "cidtest2")


def pytest_collection_modifyitems(config, items):
    """On a slow machine (tests/infra/pace.py) pytest-timeout's bound per test stretches too."""
    if pace.SLOWDOWN == 1:
        return
    default = float(config.getini("timeout") or 0)
    for item in items:
        mark = item.get_closest_marker("timeout")
        base = float(mark.args[0]) if mark is not None and mark.args else default
        if base > 0:
            item.add_marker(pytest.mark.timeout(pace.scaled(base)), append=False)


@pytest.fixture(scope="session")
def munged():
    yield from _private_munged()


@pytest.fixture(scope="session")
def munged_other_key():
    """A second private munged with a key of its own: another cluster's credentials."""
    yield from _private_munged(new_key=True)


def _private_munged(**start):
    require(os.geteuid() == 0, "root (to start a private munged as user munge)")
    require(os.access(munged_mod.MUNGED, os.X_OK), f"{munged_mod.MUNGED} (Debian package munge)")
    require(os.path.exists(munged_mod.KEY), f"{munged_mod.KEY} (scripts/setup.sh creates it)")
    d = munged_mod.start(**start)
    try:
        yield d
    finally:
        d.stop()
        shutil.rmtree(d.dir, ignore_errors=True)


@pytest.fixture(scope="session")
def test_users():
    require(os.geteuid() == 0, "root (to create test users)")
    users = [users_mod.ensure(name) for name in TEST_USERS]
    try:
        yield users
    finally:
        for u in users:
            users_mod.remove(u.name)


@pytest.fixture(scope="module")
def tracers(munged):
    """Makes `callerid tracer` daemons (tests/infra/tracerproc.py); stops them all after the module."""
    require_bpf()
    f = TracerFactory(munged.socket)
    try:
        yield f
    finally:
        f.cleanup()


@pytest.fixture
def trees():
    """Makes JobTree(**kw) job cgroup trees (tests/infra/jobtree.py); each cleaned up after the test."""
    made = []

    def make(**kw):
        t = JobTree(**kw)
        made.append(t)
        return t
    try:
        yield make
    finally:
        for t in made:
            t.cleanup()


@pytest.fixture
def children():
    """Starts processes (subprocess.Popen) as root outside any job; killed after the test."""
    procs = []

    def start(argv, **kw):
        p = subprocess.Popen(argv, **kw)
        procs.append(p)
        return p
    try:
        yield start
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
            p.wait(timeout=5)
