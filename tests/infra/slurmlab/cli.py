"""`scripts/lab.sh up|down|status`: the lab as a command, serialised by a machine-wide lock."""

from __future__ import annotations

import argparse
import fcntl
import json
import os
import sys
import time

from .config import ROOT, STATE_FILE
from .lab import SlurmLab
from .slurm import LabBusy, LabError

LOCK_FILE = "/run/lock/callerid-lab.lock"


def lab_lock(timeout: float = 120.0):
    """Serialise `up`/`down` of the lab on this machine (the CLI, and test fixtures for their whole
    module, hold it). Returns the open lock file: close it to release."""
    os.makedirs(os.path.dirname(LOCK_FILE), exist_ok=True)
    f = open(LOCK_FILE, "w")  # noqa: SIM115 - returned open: the caller holds the lock until it closes it
    deadline = time.monotonic() + timeout
    while True:
        try:
            fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
            return f
        except BlockingIOError:
            if time.monotonic() > deadline:
                f.close()
                raise LabBusy(f"{LOCK_FILE} held for {timeout:.0f}s by another lab command or test run") from None
            time.sleep(0.2)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="lab", description="A Slurm 22.05 + callerid lab in network namespaces.")
    sub = p.add_subparsers(dest="cmd", required=True)
    u = sub.add_parser("up", help="build the lab and leave it running")
    u.add_argument("--nodes", type=int, default=2)
    u.add_argument("--keep-on-failure", action="store_true", help="leave a failed lab up for inspection")
    u.add_argument("--timeout", type=float, default=90.0)
    sub.add_parser("down", help="remove everything the lab made")
    s = sub.add_parser("status", help="nodes, daemons, sinfo, how to enter a node")
    s.add_argument("--json", action="store_true")
    a = p.parse_args(argv)

    def say(msg):
        print(msg, file=sys.stderr, flush=True)

    if a.cmd == "status":
        lock = None  # read-only
    else:
        try:
            lock = lab_lock()
        except LabBusy as exc:
            say(str(exc))
            return 1
    try:
        if a.cmd == "up":
            lab = SlurmLab(nodes=a.nodes, log=say)
            try:
                lab.up(timeout=a.timeout, keep_on_failure=a.keep_on_failure, persistent=True)
            except LabError as exc:
                say(f"lab up failed: {exc}")
                return 1
            print(lab.status_text())
            return 0
        if not STATE_FILE.exists():
            if a.cmd == "down":
                SlurmLab.down_without_state(ROOT, say)
                say("no lab state: nothing (else) to remove")
                return 0
            print(f"no lab is up (no state file at {STATE_FILE})")
            return 1
        lab = SlurmLab.load(log=say)
        if a.cmd == "down":
            return 1 if lab.down() else 0
        print(json.dumps(lab.describe(), indent=1) if a.json else lab.status_text())
        return 0
    finally:
        if lock:
            lock.close()
