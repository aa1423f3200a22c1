"""Namespace-correct answers and per-user closed-entry shares, for each probe design.

Issue 12 items 7 and 8: the same 4-tuple open in two network namespaces at once
(container loopback) must be answered for each namespace's own process, also once
the other namespace's owner has exited; and one user's churn must not take the
grace period of another user's closed connection.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from callerid.linux import sockdiag
from tests.helpers import require
from tests.infra.backend_floors import refused_here
from tests.infra.netns import Topology
from tests.infra.procs import stop_pid, wait_for
from tests.infra.tracerproc import free_port, metric, scrape
from tests.kernel.conftest import close_client, start_client
from tracer.cookiestore import CookieStore
from tracer.probes import pin_dir

pytestmark = pytest.mark.kernel
CALLERID = os.path.join(os.path.dirname(sys.executable), "callerid")
LISTENER = Path(__file__).resolve().parent.parent / "infra" / "listener_prog.py"
PORT = 2222
BACKENDS = ("cookie", "sockstore", "tracepoint")


@pytest.fixture(scope="module")
def twins():
    """Two namespaces, each with a loopback listener on 127.0.0.1:PORT."""
    require(os.geteuid() == 0, "root (network namespaces)")
    topo = Topology(prefix=f"cidt{os.getpid() % 100000}")
    servers = []
    try:
        hosts = [topo.host("a"), topo.host("b")]
        for ns in hosts:
            srv = subprocess.Popen(ns.argv([sys.executable, str(LISTENER), "127.0.0.1", str(PORT)]),
                                   stdout=subprocess.PIPE, text=True)
            servers.append(srv)
            assert srv.stdout.readline().strip() == "listening"
        yield hosts
    finally:
        for srv in servers:
            stop_pid(srv.pid)
            srv.wait(5)
        topo.cleanup()


def ask_in(ns, tracer, c) -> dict:
    r = ns.run([CALLERID, "--config", str(tracer.config), "query", "--json", "--server",
                f"127.0.0.1:{tracer.port}", c["src"], str(c["sport"]), c["dst"], str(c["dport"])],
               capture_output=True, text=True, timeout=20)
    assert r.returncode in (0, 1), r.stderr
    return json.loads(r.stdout)


@pytest.mark.parametrize("backend", BACKENDS)
def test_same_tuple_in_two_namespaces_is_answered_for_each(tracers, twins, jobs, test_users, backend):
    if refused_here(tracers, backend):
        return   # cookie and sockstore on Debian 11: refused at start-up, saying why (asserted)
    a, b = twins
    ta = tracers.make(netns=a, listen=[], probe=backend).start()   # [] -> [::]:port inside the namespace
    tb = tracers.make(netns=b, listen=[], probe=backend).start()
    ua, ub = test_users[0], test_users[1]
    jobs.create(ua.uid, 5101)
    jobs.create(ub.uid, 5102)
    # one port per backend case: the other case's connection may still sit in TIME_WAIT
    sport = 40000 + (2 * os.getpid() + BACKENDS.index(backend)) % 20000
    pa, (ca,) = start_client(jobs, ua, 5101, "127.0.0.1", PORT, netns=a, sport=sport)
    pb = None
    try:
        pb, (cb,) = start_client(jobs, ub, 5102, "127.0.0.1", PORT, netns=b, sport=sport)
        assert ca == cb   # one tuple, two namespaces, both open at once
        got_a, got_b = ask_in(a, ta, ca), ask_in(b, tb, cb)
        assert (got_a["status"], str(got_a.get("job_id")), got_a.get("uid")) == ("found", "5101", ua.uid), got_a
        assert (got_b["status"], str(got_b.get("job_id")), got_b.get("uid")) == ("found", "5102", ub.uid), got_b
        assert not got_a.get("owner_exited") and not got_b.get("owner_exited")
        # b's owner exits (its socket closes): a's live connection still names a's owner,
        # never "owner exited" from b's closed entry
        stop_pid(pb.pid)
        pb.wait(5)
        pb = None
        got_a = ask_in(a, ta, ca)
        assert (got_a["status"], str(got_a.get("job_id")), got_a.get("owner_exited", False)) == \
            ("found", "5101", False), got_a
        if backend in ("cookie", "sockstore"):
            assert got_a["source"] == "bpf"   # by construction, no fallback needed
    finally:
        if pb is not None:
            stop_pid(pb.pid)
        stop_pid(pa.pid)


@pytest.mark.parametrize("backend", ("cookie", "sockstore"))
def test_one_users_churn_keeps_within_its_share_and_never_takes_anothers_grace(tracers, jobs, test_users, backend):
    """cookie, sockstore: a uid past closed_share_per_uid in a grace window loses only its own new
    closed records; another uid's closed connection stays answerable for its whole grace."""
    if refused_here(tracers, backend):
        return
    t = tracers.make(probe=backend, close_grace_seconds=60.0, closed_share_per_uid=20,
                     max_closed_connections=1024).start()
    port = free_port()
    listener = subprocess.Popen([sys.executable, str(LISTENER), "127.0.0.1", str(port)], stdout=subprocess.PIPE,
                                text=True)
    try:
        assert listener.stdout.readline().strip() == "listening"
        victim, churner = test_users[0], test_users[1]
        jobs.create(victim.uid, 5201)
        jobs.create(churner.uid, 5202)
        pv, (cv,) = start_client(jobs, victim, 5201, "127.0.0.1", port)
        close_client(pv)
        closed_at = time.monotonic()
        before = scrape(t.metrics_url)
        pc, churned = start_client(jobs, churner, 5202, "127.0.0.1", port, count=200)
        close_client(pc)
        wait_for(lambda: metric(scrape(t.metrics_url), "callerid_bpf_events_total", event="over_share")
                 - metric(before, "callerid_bpf_events_total", event="over_share") >= 180, 10,
                 "the churner's closes past its share to be counted")
        got = _ask(t, cv)
        assert (got["status"], str(got.get("job_id")), got.get("closed")) == ("found", "5201", True), \
            _why_lost(t, backend, cv, churned, closed_at, before, got)
        # the churner's first closes (within its share) are still answered too
        assert _ask(t, churned[0])["status"] == "found"
    finally:
        stop_pid(listener.pid)
        listener.wait(5)


def _why_lost(t, backend, c, churned, closed_at, before, got) -> str:
    """What the kernel and the tracer say of a closed connection the tracer did not answer
    (one VM run of CI lost the victim's record: say which part lost it). Never raises: the
    failure it explains must stay the one reported."""
    lines = [f"answer {got}", f"{time.monotonic() - closed_at:.1f} s after the victim's close"]
    try:
        _explain(t, backend, c, churned, before, lines)
    except Exception as exc:  # noqa: BLE001 - a diagnostic's own failure is only one more line
        lines.append(f"(diagnostics stopped: {exc!r})")
    return "\n".join(lines)


def _explain(t, backend, c, churned, before, lines: list) -> None:
    socks = sockdiag.find_tcp(c["src"], c["sport"], c["dst"], c["dport"])
    seen = ", ".join(f"state {s.state} cookie {s.cookie} inode {s.inode}" for s in socks) or "no socket"
    lines += [f"sock_diag for {c}: {seen}", f"the churner reused the victim's tuple: {c in churned}"]
    if backend == "cookie":
        store = CookieStore.open_pinned(pin_dir(t.pin_root))
        if store is not None:
            try:
                for s in socks:
                    rec = store.record(s.cookie)
                    lines.append(f"record of cookie {s.cookie}: "
                                 + (f"uid {rec.uid} closed_ns {rec.closed_ns}" if rec else "none"))
            finally:
                store.close()
    now = scrape(t.metrics_url)
    for name in ("callerid_bpf_events_total", "callerid_sweeper_deleted_connections_total",
                 "callerid_sweeper_stale_closed_connections_total"):
        lines += [f"{name}{dict(labels)}: {before.get((n, labels), 0)} -> {v}"
                  for (n, labels), v in sorted(now.items()) if n == name]
    # the tracer's own account: its rpc line (with why nothing was found) and any sweeper line
    lines += ["tracer log:"] + t.log_text().splitlines()[-12:]


def _ask(t, c) -> dict:
    r = subprocess.run([CALLERID, "--config", str(t.config), "query", "--json", "--server", f"127.0.0.1:{t.port}",
                        c["src"], str(c["sport"]), c["dst"], str(c["dport"])], capture_output=True, text=True,
                       timeout=20)
    assert r.returncode in (0, 1), r.stderr
    return json.loads(r.stdout)
