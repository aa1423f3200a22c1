"""Two test hosts in network namespaces: a job on 'src' connects to 'dst'; 'dst' asks src's tracer."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.helpers import require
from tests.infra.netns import Topology
from tests.infra.procs import stop_pid
from tests.kernel.conftest import close_client, start_client

pytestmark = pytest.mark.kernel
CALLERID = os.path.join(os.path.dirname(sys.executable), "callerid")
LISTENER = Path(__file__).resolve().parent.parent / "infra" / "listener_prog.py"
SRC4, DST4 = "198.18.7.1", "198.18.7.2"
SRC6, DST6 = "fd00:cafe:7::1", "fd00:cafe:7::2"
SERVICE_PORT = 2222


@pytest.fixture(scope="module")
def hosts():
    require(os.geteuid() == 0, "root (network namespaces)")
    topo = Topology(prefix=f"cid{os.getpid() % 100000}")
    try:
        src, dst = topo.host("src"), topo.host("dst")
        topo.link("src", "dst", [f"{SRC4}/24", f"{SRC6}/64"], [f"{DST4}/24", f"{DST6}/64"])
        srv = subprocess.Popen(dst.argv([sys.executable, str(LISTENER), "::", str(SERVICE_PORT)]),
                               stdout=subprocess.PIPE, text=True)
        assert srv.stdout.readline().strip() == "listening"
        yield src, dst
    finally:
        if "srv" in locals():
            stop_pid(srv.pid)
            srv.wait(5)
        topo.cleanup()


@pytest.fixture(scope="module")
def src_tracer(tracers, hosts):
    src, _ = hosts
    t = tracers.make(netns=src, listen=[])  # [] -> [::]:rpc_port, dual stack, on every address of src
    t.start()
    return t


def ask_from(ns, t, c, server=None):
    argv = [CALLERID, "--config", str(t.config), "query", "--json"]
    if server:
        argv += ["--server", server]
    r = ns.run(argv + [c["src"], str(c["sport"]), c["dst"], str(c["dport"])],
               capture_output=True, text=True, timeout=20)
    assert r.returncode in (0, 1), r.stderr
    return json.loads(r.stdout)


@pytest.mark.parametrize("family,target", [("4", DST4), ("6", DST6), ("mapped", DST4)])
def test_query_across_veth_finds_job(hosts, src_tracer, jobs, test_users, family, target):
    src, dst = hosts
    user = test_users[0]
    jobs.create(user.uid, 4301)
    p, (c,) = start_client(jobs, user, 4301, target, SERVICE_PORT, family=family, comm="cid-ssh", netns=src)
    try:
        # default server: the connection's source address at the configured RPC port
        ans = ask_from(dst, src_tracer, c)
        assert ans["status"] == "found" and ans["source"] == "bpf"
        assert ans["pid"] == p.pid and ans["uid"] == user.uid and ans["comm"] == "cid-ssh"
        assert ans["job_id"] == "4301" and ans["node"] == "testnode"
    finally:
        close_client(p)


def test_other_namespace_connections_are_not_answered(hosts, src_tracer, jobs, test_users):
    """Every tracer's probe sees every namespace; src's tracer must not answer for dst's sockets."""
    src, dst = hosts
    user = test_users[0]
    jobs.create(user.uid, 4302)
    # a connection made inside dst (to its own listener), asked of src's tracer
    p, (c,) = start_client(jobs, user, 4302, DST4, SERVICE_PORT, netns=dst)
    try:
        ans = ask_from(dst, src_tracer, c, server=f"{SRC4}:{src_tracer.port}")
        assert ans["status"] == "not_found"
    finally:
        close_client(p)


def test_tracer_unreachable_is_exit_2_within_timeout(hosts, src_tracer):
    _, dst = hosts
    c = {"src": "198.18.7.99", "sport": 1000, "dst": DST4, "dport": SERVICE_PORT}  # no such host
    r = dst.run([CALLERID, "--config", str(src_tracer.config), "query", "--timeout", "1", c["src"], "1000",
                 c["dst"], str(SERVICE_PORT)], capture_output=True, text=True, timeout=20)
    assert r.returncode == 2 and "callerid query:" in r.stderr
