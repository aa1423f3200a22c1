"""Tracer start-up, restart, probe selection and pinned-map layout against the real kernel."""

from __future__ import annotations

import ctypes
import json
import os
import subprocess
import sys

import pytest

from callerid.client import ask
from callerid.protocol import Source, Status
from callerid.tracer.probes import AUTO_ORDER
from tests.infra.procs import wait_for
from tests.infra.tracerproc import TracerProc, metric, scrape
from tests.kernel.conftest import close_client, query_for, start_client
from tests.kernel.test_tracer import listener  # noqa: F401 - shared fixture

pytestmark = pytest.mark.kernel
CALLERID = os.path.join(os.path.dirname(sys.executable), "callerid")


def query(t, c, munge_socket):
    return ask(("127.0.0.1", t.port), query_for(c), 3.0, munge_socket)


def conns_json(t) -> list[dict]:
    r = subprocess.run([CALLERID, "--config", str(t.config), "conns", "--json", "--all"],
                       capture_output=True, text=True, check=True)
    return json.loads(r.stdout)


def test_connections_opened_before_start_are_reconciled(tracers, munged, jobs, test_users, listener):  # noqa: F811
    user = test_users[0]
    jobs.create(user.uid, 4201)
    p, (c,) = start_client(jobs, user, 4201, "127.0.0.1", listener)
    t = tracers.make().start()  # fresh pins: the map knows nothing of this connection
    try:
        wait_for(lambda: "reconcile:" in t.log_text(), 30, "the start-up reconcile")
        ans = query(t, c, munged.socket)
        assert ans.status == Status.FOUND and ans.pid == p.pid and ans.job_id == "4201" and ans.uid == user.uid
        assert ans.source == Source.BPF  # reconcile put it in the map
        row = [r for r in conns_json(t) if r["local"] == f"127.0.0.1:{c['sport']}"]
        assert row and row[0]["origin"] == "reconcile" and row[0]["job_id"] == "4201"
        assert metric(scrape(t.metrics_url), "callerid_reconcile_inserted_connections_total") >= 1
    finally:
        t.stop()
        close_client(p)


def test_fallback_answers_when_map_misses(tracers, munged, jobs, test_users, listener):  # noqa: F811
    user = test_users[0]
    jobs.create(user.uid, 4202)
    p, (c,) = start_client(jobs, user, 4202, "127.0.0.1", listener, family="mapped")
    t = tracers.make(reconcile=False).start()
    try:
        ans = query(t, c, munged.socket)
        assert ans.status == Status.FOUND and ans.source == Source.PROC
        assert ans.pid == p.pid and ans.job_id == "4202"
        s = scrape(t.metrics_url)
        assert metric(s, "callerid_fallback_lookups_total", reason="map_miss") == 1
        assert metric(s, "callerid_lookups_total", source="proc") == 1
    finally:
        t.stop()
        close_client(p)


def test_restart_keeps_attribution_from_the_pinned_map(tracers, munged, jobs, test_users, listener):  # noqa: F811
    user = test_users[0]
    jobs.create(user.uid, 4203)
    t = tracers.make(reconcile=False).start()
    p = None
    try:
        p, (c,) = start_client(jobs, user, 4203, "::1", listener, family="6")
        assert query(t, c, munged.socket).source == Source.BPF
        t.stop()
        t.start()  # same pins, reconcile off: only the pinned map can know this connection
        ans = query(t, c, munged.socket)
        assert ans.status == Status.FOUND and ans.source == Source.BPF and ans.pid == p.pid and ans.job_id == "4203"
        row = [r for r in conns_json(t) if r["local"] == f"[::1]:{c['sport']}"]
        assert row and row[0]["origin"] == "probe"
    finally:
        t.stop()
        if p:
            close_client(p)


DENY_BPF_ATTACH = os.path.join(os.path.dirname(__file__), "..", "infra", "deny_bpf_attach.py")
DENIED = ("cookie", "sockstore", "fentry")   # the backends that attach through bpf(2) links, which the filter refuses


def with_bpf_attach_denied(t: TracerProc) -> TracerProc:
    """Start this tracer under a seccomp filter refusing bpf(2) link attachment
    (tests/infra/deny_bpf_attach.py): cookie, sockstore and fentry then fail for real, on kernels
    where they work as on kernels where they do not; kprobe and tracepoint are untouched."""
    plain = t.argv
    t.argv = lambda *extra: [sys.executable, DENY_BPF_ATTACH, "--", *plain(*extra)]
    return t


@pytest.fixture(scope="module")
def working_backends(munged, tmp_path_factory):
    """The backends this kernel really loads, in auto's order, and `callerid doctor --json`
    (which loads each one) for the checks that read it."""
    cfg = tmp_path_factory.mktemp("doctor") / "c.toml"
    cfg.write_text(f'[common]\nmunge_socket = "{munged.socket}"\n')
    r = subprocess.run([CALLERID, "--config", str(cfg), "doctor", "--json"], capture_output=True, text=True,
                       timeout=600)
    checks = {c["name"]: c for c in json.loads(r.stdout)}
    return [b for b in AUTO_ORDER if checks[f"probe {b}"]["status"] == "ok"], checks


def test_forced_unavailable_backend_fails_clearly(tracers):
    t = with_bpf_attach_denied(tracers.make(probe="fentry"))
    t.start(wait=False)
    assert t.proc.wait(timeout=600) == 1
    log = t.log_text()
    assert "cannot start" in log and "fentry" in log, log[-3000:]


@pytest.mark.timeout(1800)   # under emulation: doctor loads all four backends, then auto compiles three
def test_auto_falls_over_to_a_working_backend(tracers, working_backends):
    available, _ = working_backends
    expected = [b for b in available if b not in DENIED][:1]
    assert expected, available   # tracepoint works everywhere the tracer is supported
    t = with_bpf_attach_denied(tracers.make(probe="auto"))
    t.start(timeout=60)
    try:
        s = scrape(t.metrics_url)
        loaded = [b for b in AUTO_ORDER if metric(s, "callerid_probe_backend", backend=b) == 1]
        assert loaded == expected, (available, s)
        log = t.log_text()
        assert f"probe backend {expected[0]} loaded" in log
        for b in AUTO_ORDER[:AUTO_ORDER.index(expected[0])]:   # each tried first and failed, logged, not fatal
            assert f"probe backend {b} unavailable" in log, log[-3000:]
    finally:
        t.stop()


@pytest.mark.timeout(1800)
def test_auto_picks_the_first_backend_that_works_on_this_kernel(tracers, working_backends):
    available, _ = working_backends
    assert "tracepoint" in available
    t = tracers.make(probe="auto").start(timeout=60)
    try:
        s = scrape(t.metrics_url)
        loaded = [b for b in AUTO_ORDER if metric(s, "callerid_probe_backend", backend=b) == 1]
        assert loaded == available[:1], (available, s)
        log = t.log_text()
        for b in AUTO_ORDER[:AUTO_ORDER.index(available[0])]:   # tried first, and failed here
            assert f"probe backend {b} unavailable" in log, log[-3000:]
    finally:
        t.stop()


def test_pinned_map_with_other_layout_is_refused_then_replaced(tracers):
    from callerid.tracer.bpfmap import BPF_MAP_TYPE_LRU_HASH, MapInfo, create_pinned
    from callerid.tracer.probes import pin_dir
    t = tracers.make()
    pins = pin_dir(t.pin_root)
    pins.mkdir(parents=True)
    # a map of the same name but another type or value size, pinned where ours goes (made as the
    # tracer makes its own, not by BPF_TABLE_PINNED, which BCC 0.18 cannot create with)
    name = {"sockstore": "sk_closed", "cookie": "ck_spill"}.get(os.environ.get("CALLERID_TEST_PROBE", ""), "conns")
    create_pinned(pins / name, name, MapInfo(BPF_MAP_TYPE_LRU_HASH, 8, 8, 1024))
    assert (pins / name).exists()
    t.start(wait=False)
    assert t.proc.wait(timeout=60) == 1
    assert "refusing to reuse it" in t.log_text()
    # with replace_pinned the tracer starts and serves
    t.config.write_text(t.config.read_text() + "replace_pinned = true\n")
    t.start()
    try:
        assert "replacing it as asked" in t.log_text()
    finally:
        t.stop()


def test_layout_mirror_matches_bcc_view_of_the_header():
    """tracer/layout.py must agree with what BCC compiles from bpf/callerid.h."""
    from bcc import BPF

    from callerid.tracer import layout
    src = f'#include "{layout.header_path()}"\nBPF_HASH(m, struct callerid_key, struct callerid_owner, 1);' \
        '\nBPF_ARRAY(s, struct callerid_ck_slot, 1);'
    b = BPF(text=src.encode())
    try:
        tbl = b["m"]
        for mine, theirs in ((layout.ConnKey, tbl.Key), (layout.Owner, tbl.Leaf), (layout.Slot, b["s"].Leaf)):
            assert ctypes.sizeof(mine) == ctypes.sizeof(theirs)
            for name, _ in mine._fields_:
                assert getattr(mine, name).offset == getattr(theirs, name).offset, name
    finally:
        b.cleanup()
    hdr = layout.header_path().read_text()
    assert f"#define CALLERID_LAYOUT_VERSION {layout.LAYOUT_VERSION}\n" in hdr


@pytest.mark.parametrize("backend", ["tracepoint", "cookie"])
def test_conns_of_an_idle_node_is_an_empty_table(tracers, backend):
    """Pinned but empty maps are an idle node, not a missing tracer: `conns` lists nothing and
    succeeds. (An empty store is falsy; conns once took that for "no maps pinned", which is
    how it failed in Debian 12's guest, where nothing else connects.)"""
    from callerid.tracer.probes import pin_dir, prepare_pins
    t = tracers.make(probe=backend)   # a config and a pin root; no daemon, so nothing fills the maps
    prepare_pins(pin_dir(t.pin_root), 64, 16, 16, replace=False, backend=backend)
    r = subprocess.run([CALLERID, "--config", str(t.config), "conns", "--json", "--all"],
                       capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout) == []


def test_conns_agrees_with_ss(tracers, munged, jobs, test_users, listener):  # noqa: F811
    user = test_users[0]
    jobs.create(user.uid, 4204)
    t = tracers.make(reconcile=False).start()
    p = None
    try:
        p, conns = start_client(jobs, user, 4204, "127.0.0.1", listener, count=5)
        ss = subprocess.run(["ss", "-tnpH", "state", "established", "dport", f"= :{listener}"],
                            capture_output=True, text=True, check=True).stdout
        rows = {r["local"]: r for r in conns_json(t) if r["state"] == "open"}
        for c in conns:
            local = f"127.0.0.1:{c['sport']}"
            assert f"{local} " in ss and f"pid={p.pid}," in ss
            assert rows[local]["pid"] == p.pid and rows[local]["job_id"] == "4204" and rows[local]["user"] == user.name
    finally:
        t.stop()
        if p:
            close_client(p)


def test_doctor_reports_backends_and_munge(working_backends):
    _, checks = working_backends
    assert checks["probe tracepoint"]["status"] == "ok"
    assert checks["munge"]["status"] == "ok"
    assert checks["bpffs"]["status"] == "ok" and checks["tracefs"]["status"] == "ok"
    for b in ("kprobe", "fentry"):
        assert checks[f"probe {b}"]["status"] in ("ok", "warn")


def test_batched_map_walk_sees_every_entry(tracers):
    """The sweeper walks the maps in batches: the same entries as one key at a time."""
    from callerid.tracer.bpfmap import LIBBCC_HAS_BATCH, Connections, _NoBatch
    from callerid.tracer.layout import Owner, make_key
    from callerid.tracer.probes import pin_dir
    t = tracers.make(probe="tracepoint", max_connections=16384).start()   # the tuple-keyed maps' walk
    try:
        conns = Connections.open_pinned(pin_dir(t.pin_root))
        try:
            want = {}
            for i in range(10000):  # more than two batches
                key = make_key("198.18.0.1", 1024 + i % 60000, "198.18.0.2", 22 + i // 60000)
                conns.update(key, Owner(tgid=i + 1, birth_ns=i))  # open: the open map
                want[bytes(key)] = i + 1
            got = {bytes(k): v.tgid for k, v in conns.items() if bytes(k) in want}
            assert got == want
            # and the batched path itself, not its per-key fallback, produced them; a libbcc
            # without batch wrappers (BCC 0.18, Debian 11) says so and everything below is the fallback's
            if LIBBCC_HAS_BATCH:
                assert {bytes(k): v.tgid for k, v in conns.open._items_batched() if bytes(k) in want} == want
            else:
                with pytest.raises(_NoBatch):
                    next(conns.open._items_batched())
            assert sorted(bytes(k) for k in conns.keys() if bytes(k) in want) == sorted(want)  # noqa: SIM118 - not a dict
            # the sweeper's walk: the same keys, with each entry's own two timestamps
            times = {k: (b, c) for k, b, c in conns.open.entry_times() if k in want}
            assert times == {k: (tgid - 1, 0) for k, tgid in want.items()}
            # batched delete: every other key, plus keys that are not there (skipped, not fatal)
            doomed = sorted(want)[::2]
            ghosts = [bytes(make_key("198.18.1.1", 7, "198.18.1.2", p)) for p in (1, 2, 3)]
            mixed = doomed[:100] + ghosts[:1] + doomed[100:5000] + ghosts[1:] + doomed[5000:]
            assert conns.open.delete_many(mixed) == len(doomed)
            left = {k for k, _, _ in conns.open.entry_times() if k in want}
            assert left == set(want) - set(doomed)
            assert conns.open.delete_many([]) == 0
        finally:
            conns.close()
    finally:
        t.stop()
