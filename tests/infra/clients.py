"""Test clients: processes that open TCP connections from inside a job, as a test user."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from callerid.protocol import Query

from .jobtree import JobTree

INFRA = Path(__file__).resolve().parent


def start_client(tree: JobTree, user, job: int, host: str, port: int, family="4", comm="cidclient",
                 count=1, netns=None, sport=0):
    """Start tests/infra/client_prog.py as `user` inside job `job`; returns (proc, [tuples])."""
    argv = [sys.executable, str(INFRA / "client_prog.py"), host, str(port), "--family", family,
            "--comm", comm, "--count", str(count)] + (["--sport", str(sport)] if sport else [])
    p = tree.popen(argv, user.uid, user.gid, job, "0", netns=netns.path if netns else None,
                   stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    line = p.stdout.readline()
    if not line:
        raise RuntimeError(f"client failed to connect (rc {p.wait(5)})")
    return p, json.loads(line)


def query_for(c: dict) -> Query:
    """The question about one of the connections start_client reported."""
    return Query.make(c["src"], c["sport"], c["dst"], c["dport"])


def close_client(p):
    p.stdin.write("close\n")
    p.stdin.flush()
    assert p.stdout.readline().strip() == "closed"
