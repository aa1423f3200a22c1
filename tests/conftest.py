"""Session fixtures shared by kernel and lab tests: private munged daemons and non-root test users."""

from __future__ import annotations

import os
import shutil

import pytest

from tests.helpers import require
from tests.infra import munged as munged_mod
from tests.infra import users as users_mod

TEST_USERS = ("cidtest1", "cidtest2")


@pytest.fixture(scope="session")
def munged():
    require(os.geteuid() == 0, "root (to start a private munged as user munge)")
    require(os.access(munged_mod.MUNGED, os.X_OK), f"{munged_mod.MUNGED} (Debian package munge)")
    require(os.path.exists(munged_mod.KEY), f"{munged_mod.KEY} (scripts/setup.sh creates it)")
    d = munged_mod.start()
    try:
        yield d
    finally:
        d.stop()
        shutil.rmtree(d.dir, ignore_errors=True)


@pytest.fixture(scope="session")
def munged_other_key():
    """A second private munged with a key of its own: another cluster's credentials."""
    d = munged_mod.start(new_key=True)
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
