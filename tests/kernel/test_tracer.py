"""The tracer daemon against the real kernel: BPF probe, pinned maps, munged, RPC, sweeper."""

from __future__ import annotations

import json
import os
import socket
import struct
import subprocess
import sys
import threading
import time

import pytest

from callerid import munge
from callerid.client import RpcError, ask
from callerid.protocol import (
    HEADER,
    VERSION,
    Answer,
    ErrorCode,
    FrameType,
    Query,
    Source,
    Status,
    decode_error,
    decode_header,
    decode_request,
    encode_frame,
    encode_request,
    open_answer,
    seal_answer,
)
from tests.infra.frames import recv_payload
from tests.infra.procs import wait_for
from tests.infra.tracerproc import metric, scrape
from tests.kernel.conftest import close_client, query_for, start_client

pytestmark = pytest.mark.kernel
CALLERID = os.path.join(os.path.dirname(sys.executable), "callerid")


@pytest.fixture(scope="module")
def listener():
    """A dual-stack root listener on loopback that accepts and holds connections."""
    s = socket.socket(socket.AF_INET6, socket.SOCK_STREAM)
    s.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
    s.bind(("::", 0))
    s.listen(256)
    held = []
    stop = threading.Event()

    def loop():
        s.settimeout(0.2)
        while not stop.is_set():
            try:
                held.append(s.accept()[0])
            except OSError:
                continue

    t = threading.Thread(target=loop, daemon=True)
    t.start()
    yield s.getsockname()[1]
    stop.set()
    t.join(2)
    for c in held:
        c.close()
    s.close()


@pytest.fixture(scope="module")
def tracer(tracers):
    t = tracers.make(close_grace_seconds=2.0, sweep_interval_seconds=0.5).start()
    return t


def query(tracer, c, timeout=3.0):
    q = query_for(c)
    return ask(("127.0.0.1", tracer.port), q, timeout, tracer.munge_socket)


def query_as(user, tracer, c) -> tuple[int, dict | str]:
    """Run `callerid query --json` as another user; returns (exit code, parsed answer or stderr)."""
    r = subprocess.run([CALLERID, "--config", str(tracer.config), "query", "--json", "--server",
                        f"127.0.0.1:{tracer.port}", c["src"], str(c["sport"]), c["dst"], str(c["dport"])],
                       user=user.uid, group=user.gid, extra_groups=[], capture_output=True, text=True, timeout=20)
    assert r.returncode in (0, 1), r.stderr
    return r.returncode, json.loads(r.stdout)


@pytest.fixture(autouse=True)
def _munge_socket(tracer, munged):
    tracer.munge_socket = munged.socket


@pytest.mark.parametrize("family,host", [("4", "127.0.0.1"), ("6", "::1"), ("mapped", "127.0.0.1")])
def test_connection_after_start_found_with_owner_and_job(tracer, jobs, test_users, listener, family, host):
    user = test_users[0]
    jobs.create(user.uid, 4101)
    p, conns = start_client(jobs, user, 4101, host, listener, family=family, comm="cid-ssh")
    c = conns[0]
    ans = query(tracer, c)
    assert ans.status == Status.FOUND
    assert ans.source == Source.BPF
    assert (ans.pid, ans.uid, ans.gid) == (p.pid, user.uid, user.gid)
    assert ans.comm == "cid-ssh"
    assert ans.job_id == "4101"
    want = f"/uid_{user.uid}/job_4101" if jobs.layout == "v1" else "/slurmstepd.scope/job_4101"
    assert ans.cgroup.endswith(want), ans.cgroup
    assert not ans.closed and not ans.owner_exited
    # an AF_INET connect and a dual-stack AF_INET6 connect to the same peer are
    # found by the same query, whichever spelling (plain or v4-mapped) it uses
    if family == "4":
        other = dict(c, src=f"::ffff:{c['src']}", dst=f"::ffff:{c['dst']}")
        assert query(tracer, other).pid == p.pid
    if family == "mapped":
        assert c["src"].startswith("::ffff:")
        other = dict(c, src=c["src"][7:], dst=c["dst"][7:])
        assert query(tracer, other).pid == p.pid
    close_client(p)


def test_non_owner_gets_not_found_owner_and_root_get_answer(tracer, jobs, test_users, listener):
    owner, other = test_users
    jobs.create(owner.uid, 4102)
    p, (c,) = start_client(jobs, owner, 4102, "127.0.0.1", listener)
    before = scrape(tracer.metrics_url)
    rc, ans = query_as(other, tracer, c)
    assert rc == 1 and ans["status"] == "not_found" and ans["pid"] == 0 and ans["job_id"] is None
    rc, ans = query_as(owner, tracer, c)
    assert rc == 0 and ans["job_id"] == "4102" and ans["pid"] == p.pid
    assert query(tracer, c).job_id == "4102"  # root
    after = scrape(tracer.metrics_url)
    assert metric(after, "callerid_rpc_requests_total", result="denied") == \
        metric(before, "callerid_rpc_requests_total", result="denied") + 1
    # the denial is indistinguishable from a real miss for the caller
    unknown = dict(c, dport=1)
    rc2, miss = query_as(other, tracer, unknown)
    assert rc2 == 1 and {k: v for k, v in miss.items() if k != "query"} == \
        {k: v for k, v in ans_not_found_shape(miss).items() if k != "query"}
    close_client(p)


def ans_not_found_shape(d: dict) -> dict:
    return {**d, "status": "not_found", "source": "none", "pid": 0, "uid": None, "gid": None, "job_id": None,
            "comm": "", "cgroup": "", "cgroup_id": 0, "birth_ns": 0, "closed": False, "owner_exited": False}


def test_closed_connection_found_within_grace_then_swept(tracer, jobs, test_users, listener):
    user = test_users[0]
    jobs.create(user.uid, 4103)
    p, (c,) = start_client(jobs, user, 4103, "127.0.0.1", listener)
    close_client(p)
    ans = query(tracer, c)
    assert ans.status == Status.FOUND and ans.closed and ans.job_id == "4103" and ans.source == Source.BPF
    # grace 2 s, sweep every 0.5 s: gone within a few seconds, and the fallback finds nothing either
    wait_for(lambda: query(tracer, c).status == Status.NOT_FOUND, 10, "the sweeper to delete the entry")
    # counted by the next sweep at the latest (cookie: a record past its grace is no longer
    # answered at once, and its slot is counted deleted by the sweep after)
    wait_for(lambda: metric(scrape(tracer.metrics_url), "callerid_sweeper_deleted_connections_total") >= 1, 5,
             "the sweeper to count the deletion")


def test_failed_connect_leaves_nothing(tracer):
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        dead_port = probe.getsockname()[1]  # bound, never listening: connects are refused
        before = scrape(tracer.metrics_url)
        for _ in range(3):
            with socket.socket() as s, pytest.raises(ConnectionRefusedError):
                s.connect(("127.0.0.1", dead_port))
        after = scrape(tracer.metrics_url)
    failed = metric(after, "callerid_bpf_events_total", event="connect_failed") - \
        metric(before, "callerid_bpf_events_total", event="connect_failed")
    assert failed >= 3
    r = subprocess.run([CALLERID, "--config", str(tracer.config), "conns", "--all", "--json"],
                       capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    assert not [row for row in json.loads(r.stdout) if row["peer"].endswith(f":{dead_port}")]


def test_pid_reuse_reports_owner_exited(tracer, listener):
    """An entry whose pid now names a younger process must not name that process."""
    from callerid.tracer.conns_table import open_pinned_store
    from callerid.tracer.cookiestore import CookieStore
    from callerid.tracer.layout import Owner, make_key
    from callerid.tracer.probes import pin_dir
    from callerid.tracer.sockstore import SockStore

    store = open_pinned_store(pin_dir(tracer.pin_root), 2.0)   # the fixture's close_grace_seconds
    assert store is not None, f"the tracer pinned no maps in {pin_dir(tracer.pin_root)}"
    if isinstance(store, CookieStore):   # a record is found through a live socket's cookie
        _pid_reuse_by_cookie(tracer, store, listener)
        return
    by_socket = isinstance(store, SockStore)
    conns = store.closed if by_socket else store   # sockstore: a closed record is what a map entry can be
    try:
        key = make_key("127.0.0.1", 40000, "127.0.0.1", 40001, store.netns if by_socket else 0)
        o = Owner(tgid=os.getpid(), tid=os.getpid(), uid=0, gid=0, birth_ns=1, comm=b"old",
                  closed_ns=2 if by_socket else 0)
        assert conns.update(key, o)  # our pid, but "born" long before this process started
        ans = query(tracer, {"src": "127.0.0.1", "sport": 40000, "dst": "127.0.0.1", "dport": 40001})
        assert ans.status == Status.FOUND and ans.owner_exited and ans.job_id is None and ans.comm == "old"
        conns.delete(key)
    finally:
        store.close()


SO_COOKIE = 57   # include/uapi/asm-generic/socket.h


def _pid_reuse_by_cookie(tracer, store, listener):
    import ctypes

    from callerid.tracer.layout import Owner
    try:
        with socket.create_connection(("127.0.0.1", listener)) as s:
            cookie = ctypes.c_uint64(struct.unpack("=Q", s.getsockopt(socket.SOL_SOCKET, SO_COOKIE, 8))[0])
            o = Owner(tgid=os.getpid(), tid=os.getpid(), uid=0, gid=0, birth_ns=1, comm=b"old")
            # our pid, but "born" long before this process started: over the probe's record
            idx = ctypes.c_uint32(cookie.value & store.mask)
            slot = store.slots.lookup(idx)
            if slot.cookie == cookie.value:
                slot.owner = o
                assert store.slots.update(idx, slot)
            else:
                assert store.spill.update(cookie, o)
            c = {"src": "127.0.0.1", "sport": s.getsockname()[1], "dst": "127.0.0.1", "dport": listener}
            ans = query(tracer, c)
            assert ans.status == Status.FOUND and ans.owner_exited and ans.job_id is None and ans.comm == "old"
    finally:
        store.close()


def _raw(port, data: bytes, read=True, timeout=5.0) -> bytes:
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as s:
        s.sendall(data)
        return _read_all(s) if read else b""


def _read_all(s: socket.socket) -> bytes:
    """Everything until EOF or the socket's timeout."""
    out = b""
    while True:
        try:
            chunk = s.recv(65536)
        except socket.timeout:
            break
        if not chunk:
            break
        out += chunk
    return out


def _error_code(reply: bytes) -> ErrorCode:
    ftype, length = decode_header(reply[:HEADER.size])
    assert ftype == FrameType.ERROR
    return decode_error(reply[HEADER.size:HEADER.size + length])[0]


def test_bad_input_is_answered_counted_and_never_blocks_good_clients(tracer, jobs, test_users, listener,
                                                                   munged_other_key):
    user = test_users[0]
    jobs.create(user.uid, 4104)
    p, (c,) = start_client(jobs, user, 4104, "127.0.0.1", listener)
    port = tracer.port
    before = scrape(tracer.metrics_url)

    # slow clients first: they hold connections open while everything else goes on
    slow = []
    for _ in range(4):
        s = socket.create_connection(("127.0.0.1", port))
        s.sendall(b"CI")  # a header that never completes
        slow.append(s)
    try:
        assert _error_code(_raw(port, b"GET / HTTP/1.0\r\n\r\n")) == ErrorCode.BAD_FRAME
        assert _error_code(_raw(port, struct.pack("!2sBBI", b"CI", VERSION, 1, 10_000_000))) == ErrorCode.BAD_FRAME
        assert _error_code(_raw(port, struct.pack("!2sBBI", b"CI", 9, 1, 4))) == ErrorCode.UNSUPPORTED_VERSION
        # not shaped like a credential: refused before munged is asked; shaped but forged: munged says no
        assert _error_code(_raw(port, encode_frame(FrameType.REQUEST, b"MUNGE:not-a-credential:"))) == \
            ErrorCode.BAD_FRAME
        assert _error_code(_raw(port, encode_frame(FrameType.REQUEST, b"MUNGE:" + b"AwQF" * 40 + b":"))) == \
            ErrorCode.AUTH_FAILED
        # a well-formed request from a munged with another key (another cluster)
        q = query_for(c)
        key = os.urandom(32)
        foreign = encode_frame(FrameType.REQUEST, munge.encode(encode_request(q, key), munged_other_key.socket,
                                                               secret_for_uid=0))
        assert _error_code(_raw(port, foreign)) == ErrorCode.AUTH_FAILED
        # the same request from our munged is answered, once
        good = encode_frame(FrameType.REQUEST, munge.encode(encode_request(q, key), tracer.munge_socket,
                                                            secret_for_uid=0))
        reply = _raw(port, good)
        assert reply[2:4] == bytes([VERSION, FrameType.ANSWER])
        assert open_answer(reply[HEADER.size:], key).job_id == "4104"   # tagged with our key
        assert _error_code(_raw(port, good)) == ErrorCode.REPLAYED  # same credential again
        # a valid credential around a malformed query, and one around a version 1 query
        junk = encode_frame(FrameType.REQUEST, munge.encode(bytes([VERSION]) + b"\x04junk", tracer.munge_socket))
        assert _error_code(_raw(port, junk)) == ErrorCode.BAD_FRAME
        old = encode_frame(FrameType.REQUEST, munge.encode(b"\x01" + q.encode()[1:], tracer.munge_socket))
        assert _error_code(_raw(port, old)) == ErrorCode.UNSUPPORTED_VERSION
        # a credential the tracer (root) may not decode
        theirs = encode_frame(FrameType.REQUEST, munge.encode(encode_request(q, key), tracer.munge_socket,
                                                              secret_for_uid=65534))
        assert _error_code(_raw(port, theirs)) == ErrorCode.AUTH_FAILED
        # truncated frame: header promises 100 bytes, 10 arrive, then EOF
        _raw(port, struct.pack("!2sBBI", b"CI", VERSION, 1, 100) + b"x" * 10, read=False)
        # meanwhile a well-behaved client is answered, repeatedly and fast
        for _ in range(20):
            t0 = time.monotonic()
            assert query(tracer, c).job_id == "4104"
            assert time.monotonic() - t0 < 1.0
        # the slow clients, kept open until now, time out on the server (1 s header deadline)
        for s in slow:
            s.settimeout(5.0)
            assert _error_code(_read_all(s)) == ErrorCode.TIMEOUT
    finally:
        for s in slow:
            s.close()

    def counted():
        now = scrape(tracer.metrics_url)
        name = "callerid_rpc_requests_total"
        delta = {r: metric(now, name, result=r) - metric(before, name, result=r)
                 for r in ("bad_frame", "unsupported_version", "auth_failed", "replayed", "timeout", "found")}
        return delta if delta["timeout"] >= 4 and delta["bad_frame"] >= 5 else None
    delta = wait_for(counted, 10, "bad-frame and timeout counters")
    # bad_frame: the HTTP request, the oversized header, the payload not shaped like a credential,
    # the malformed query, the truncated frame
    assert (delta["timeout"], delta["bad_frame"]) == (4, 5)
    assert delta["unsupported_version"] == 2
    assert delta["auth_failed"] == 3
    assert delta["replayed"] == 1
    assert delta["found"] >= 21
    assert tracer.running
    close_client(p)


def test_slow_client_times_out_and_is_counted(tracer):
    before = metric(scrape(tracer.metrics_url), "callerid_rpc_requests_total", result="timeout")
    reply = _raw(tracer.port, b"CI\x01", timeout=6)  # read_timeout_seconds defaults to 2
    assert _error_code(reply) == ErrorCode.TIMEOUT
    assert metric(scrape(tracer.metrics_url), "callerid_rpc_requests_total", result="timeout") == before + 1


def test_metrics_endpoint_has_a_landing_page_and_only_serves_metrics_at_metrics(tracer):
    import urllib.error
    import urllib.request
    base = tracer.metrics_url.rsplit("/", 1)[0]
    page = urllib.request.urlopen(base + "/", timeout=5).read().decode()
    backend = os.environ.get("CALLERID_TEST_PROBE", "tracepoint")
    assert "callerid tracer on testnode" in page and f"probe backend: {backend}" in page and "href='metrics'" in page
    text = urllib.request.urlopen(base + "/metrics", timeout=5).read().decode()
    assert "callerid_rpc_requests_total" in text and "_created" not in text
    with pytest.raises(urllib.error.HTTPError) as exc:
        urllib.request.urlopen(base + "/other", timeout=5)
    assert exc.value.code == 404


def test_scrape_passes_promtool_check_metrics(tracer):
    import shutil
    import urllib.request

    from tests.helpers import require
    require(shutil.which("promtool") is not None, "promtool (Debian package prometheus)")
    text = urllib.request.urlopen(tracer.metrics_url, timeout=5).read()
    r = subprocess.run(["promtool", "check", "metrics"], input=text, capture_output=True)
    assert r.returncode == 0 and not r.stdout.strip() and not r.stderr.strip(), (r.stdout + r.stderr).decode()


def test_unreachable_tracer_is_a_clear_error(munged):
    q = Query.make("127.0.0.1", 1234, "127.0.0.1", 22)
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]  # nobody listens here
        with pytest.raises(RpcError) as exc:
            ask(("127.0.0.1", port), q, 1.0, munged.socket)
    assert exc.value.reason == "connect"


def _one_shot_server(reply_for):
    """A listener that reads one REQUEST frame and sends reply_for(credential) back: a
    stand-in for a forged or confused tracer. Returns (port, thread)."""
    srv = socket.socket()
    srv.bind(("127.0.0.1", 0))
    srv.listen(1)
    srv.settimeout(5)

    def serve():
        with srv:
            conn, _ = srv.accept()
            with conn:
                conn.sendall(reply_for(recv_payload(conn)))
    t = threading.Thread(target=serve, daemon=True)
    t.start()
    return srv.getsockname()[1], t


@pytest.mark.parametrize("forge", ["other_key", "untagged", "other_query"])
def test_client_refuses_an_answer_not_tagged_for_its_request(munged, forge):
    """The client believes only an answer tagged with the key inside its own request."""
    q = Query.make("127.0.0.1", 40000, "127.0.0.1", 22)
    lie = Answer(q, Status.FOUND, source=Source.BPF, job_id="666", pid=1, uid=0, gid=0, node="evil")

    def reply_for(cred):
        if forge == "other_key":
            payload = seal_answer(lie, os.urandom(32))
        elif forge == "untagged":
            payload = lie.encode()
        else:   # a correctly tagged answer, but about another connection (root decodes the key)
            _, key = decode_request(munge.decode(cred, munged.socket).payload)
            payload = seal_answer(Answer(Query.make("127.0.0.1", 40001, "127.0.0.1", 22), Status.FOUND,
                                         job_id="666"), key)
        return encode_frame(FrameType.ANSWER, payload)

    port, t = _one_shot_server(reply_for)
    with pytest.raises(RpcError) as exc:
        ask(("127.0.0.1", port), q, 3.0, munged.socket)
    t.join(5)
    assert exc.value.reason == ("bad_reply" if forge == "other_query" else "auth"), exc.value
