"""The machine-wide heavy-test lock: a VM takes both cores, so it never runs beside other heavy tests."""

from __future__ import annotations

import fcntl
import os
import sys
from contextlib import contextmanager

# CALLERID_VM_LOCK: developers running a VM beside host work queue VMs on a lock of their own.
LOCK = os.environ.get("CALLERID_VM_LOCK", "/tmp/callerid-heavy.lock")


@contextmanager
def heavy_lock():
    """flock(2) on the same file flock(1) uses. CALLERID_HEAVY_LOCK_HELD=1 when the caller
    already holds it (e.g. `flock /tmp/callerid-heavy.lock scripts/vm.sh ...`): taking it
    again on a new open file would wait for ourselves forever."""
    if os.environ.get("CALLERID_HEAVY_LOCK_HELD") == "1":
        yield
        return
    with open(LOCK, "a") as f:
        try:
            fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            print(f"vm: waiting for {LOCK} (another heavy test is running)", file=sys.stderr, flush=True)
            fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)
