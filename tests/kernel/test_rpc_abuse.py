"""The tracer daemon under abuse: held connections, bursts of callers, a hung munged (issue 12)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from callerid.client import RpcError, ask
from callerid.protocol import Query
from tests.infra import pace
from tests.infra.frames import recv_payload
from tests.infra.procs import wait_for
from tests.infra.tracerproc import metric, scrape
from tests.kernel.conftest import close_client, query_for, start_client
from tests.kernel.test_tracer import listener  # noqa: F401 - the fixture
from tests.reliability import record

pytestmark = pytest.mark.kernel
SLOWLORIS = Path(__file__).resolve().parents[1] / "infra" / "slowloris_prog.py"


@pytest.fixture(scope="module")
def tracer(tracers):
    return tracers.make().start()


def run_as(user, argv) -> subprocess.Popen:
    def drop():
        os.setgroups([])
        os.setgid(user.gid)
        os.setuid(user.uid)
    return subprocess.Popen(argv, preexec_fn=drop, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def rpc_counts(tracer) -> dict:
    now = scrape(tracer.metrics_url)
    return {k[1][0][1]: v for k, v in now.items() if k[0] == "callerid_rpc_requests_total" and v}


def _owners_connection(jobs, owner, job: int, port: int):
    """owner's connection to 127.0.0.1:port from inside a job of its own: (its client process,
    the connection's tuple, the question about it)."""
    jobs.create(owner.uid, job)
    p, (c,) = start_client(jobs, owner, job, "127.0.0.1", port)
    return p, c, query_for(c)


def _root_credential(q: Query, munge_socket: str) -> bytes:
    """q's request, signed through munged as root's client signs it: made ahead, before munged is
    stopped or gone."""
    from callerid import munge
    from callerid.protocol import encode_request
    return munge.encode(encode_request(q, os.urandom(32)), munge_socket, secret_for_uid=0)


def _send_request(port: int, cred: bytes) -> tuple[bytes, float]:
    """Send one REQUEST frame to the tracer: (its first reply bytes, seconds until then)."""
    import socket as socketmod

    from callerid.protocol import FrameType, encode_frame
    t0 = time.monotonic()
    with socketmod.create_connection(("127.0.0.1", port), timeout=10) as s:
        s.sendall(encode_frame(FrameType.REQUEST, cred))
        reply = s.recv(4096)
    return reply, time.monotonic() - t0


def test_a_thousand_unauthenticated_connections_do_not_silence_the_tracer(tracer, munged, jobs, test_users,
                                                                          listener):  # noqa: F811
    owner, attacker = test_users
    p, c, q = _owners_connection(jobs, owner, 4201, listener)
    # the attack outlasts root's asking; both stretch on a slow machine (tests/infra/pace.py),
    # where 8 s held too few queries (69 under emulation) to judge a 99 % answer rate
    attack_seconds, asking_seconds = pace.scaled(12), pace.scaled(8)
    evil = run_as(attacker, [sys.executable, str(SLOWLORIS), "127.0.0.1", str(tracer.port), "1000",
                             str(int(attack_seconds))])
    try:
        # One address may hold max_rpc_connections_per_peer (512) waiting connections:
        # past that the attacker's are parked (held unread); silent ones arrive after the
        # listener's 1 s TCP_DEFER_ACCEPT.
        wait_for(lambda: metric(scrape(tracer.metrics_url), "callerid_rpc_clients") >= 450, pace.scaled(10),
                 "the attacker's connections held by the tracer")
        answered, wrong, failed, latencies = 0, 0, [], []
        end = time.monotonic() + asking_seconds
        asked = 0
        while time.monotonic() < end and asked < 400:
            asked += 1
            t0 = time.monotonic()
            try:
                ans = ask(("127.0.0.1", tracer.port), q, 2.0, munged.socket)
            except RpcError as exc:
                failed.append(exc.reason)
                continue
            latencies.append(time.monotonic() - t0)
            if ans.job_id == "4201" and ans.uid == owner.uid:
                answered += 1
            else:
                wrong += 1
            time.sleep(0.01)
        held = metric(scrape(tracer.metrics_url), "callerid_rpc_clients")
    finally:
        out, err = evil.communicate(timeout=attack_seconds + pace.scaled(30))
        close_client(p)
    stats = json.loads(out)
    latencies.sort()
    print(f"slowloris: {stats}; root asked {asked}, answered {answered}, wrong {wrong}, failed {failed}, "
          f"p50 {latencies[len(latencies) // 2] * 1000:.1f} ms, "
          f"p99 {latencies[int(len(latencies) * 0.99)] * 1000:.1f} ms, "
          f"tracer held {held:.0f} connections")
    assert stats["peak_held"] >= 900, f"the attacker did not hold its connections: {stats} {err}"
    assert held >= 400, "the attack was still on while root asked"
    assert wrong == 0
    assert asked >= 100 and answered >= 0.99 * asked, f"answered {answered} of {asked}: {failed}"
    assert tracer.running
    record("kernel/test_rpc_abuse.py::thousand_unauthenticated_connections", "load",
           f"1,000 connections held idle or drip-fed by a non-root user for {attack_seconds:.0f} s "
           f"({stats['opened']:,} opened as the tracer closed them), root asking every 10 ms",
           f"{answered} of {asked} root queries answered right (p50 {latencies[len(latencies) // 2] * 1000:.0f} ms,"
           f" p99 {latencies[int(len(latencies) * 0.99)] * 1000:.0f} ms on a shared 2-core machine)")


def test_a_burst_of_256_simultaneous_queries_is_answered(tracers, munged, jobs, test_users, listener):  # noqa: F811
    # Its own tracer: a request's deadline (read_timeout_seconds, 2 s) and the client's stretch on a
    # slow machine (tests/infra/pace.py); under emulation half the burst missed 2 s. On a host both are 2 s.
    deadline = pace.scaled(2.0)
    tracer = tracers.make(read_timeout_seconds=min(deadline, 60.0)).start()
    owner = test_users[0]
    jobs.create(owner.uid, 4202)
    p, conns = start_client(jobs, owner, 4202, "127.0.0.1", listener, count=8)
    before = rpc_counts(tracer)
    go = threading.Barrier(256)
    results: list = [None] * 256

    def one(i):
        c = conns[i % len(conns)]
        q = query_for(c)
        go.wait(30)
        t0 = time.monotonic()
        try:
            ans = ask(("127.0.0.1", tracer.port), q, deadline, munged.socket)
            results[i] = ("ok" if ans.job_id == "4202" and ans.query == q else "wrong", time.monotonic() - t0)
        except RpcError as exc:
            results[i] = (exc.reason, time.monotonic() - t0)

    threads = [threading.Thread(target=one, args=(i,)) for i in range(256)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(pace.scaled(60))
    close_client(p)
    after = rpc_counts(tracer)
    outcome = {}
    for r in results:
        outcome[r[0] if r else "none"] = outcome.get(r[0] if r else "none", 0) + 1
    slowest = max(r[1] for r in results if r)
    busy = after.get("busy", 0) - before.get("busy", 0)
    print(f"burst of 256: {outcome}, slowest {slowest * 1000:.0f} ms, tracer said busy {busy:.0f} times")
    assert outcome == {"ok": 256}
    record("kernel/test_rpc_abuse.py::burst_of_256", "load", "256 queries released at once from one host",
           f"256 of 256 answered right, the slowest in {slowest * 1000:.0f} ms; tracer said BUSY {busy:.0f} times")


def test_a_hung_munged_is_abandoned_at_the_deadline_and_the_tracer_recovers(tracer, munged, jobs, test_users,
                                                                           listener):  # noqa: F811
    owner = test_users[0]
    p, c, q = _owners_connection(jobs, owner, 4203, listener)
    # The client's credential is made first: then munged stops, so the tracer's decode hangs.
    from callerid.protocol import FrameType
    cred = _root_credential(q, munged.socket)
    before = rpc_counts(tracer)
    os.kill(munged.pid, signal.SIGSTOP)
    try:
        reply, elapsed = _send_request(tracer.port, cred)
    finally:
        os.kill(munged.pid, signal.SIGCONT)
    from callerid.protocol import HEADER, ErrorCode, decode_error
    assert reply[3] == FrameType.ERROR and decode_error(reply[HEADER.size:])[0] == ErrorCode.INTERNAL
    assert elapsed < 2.0 + 0.5, f"answered after {elapsed:.2f}s, past the 2 s request deadline"
    assert wait_for(lambda: rpc_counts(tracer).get("abandoned", 0) - before.get("abandoned", 0) == 1, 5,
                    "abandoned counted")
    # munged is back: the tracer answers again (its stuck worker returns in its own time)
    assert wait_for(lambda: _answers(tracer, q, munged.socket) == "4203", 15, "answers after munged resumed")
    close_client(p)
    record("kernel/test_rpc_abuse.py::hung_munged_tracer_side", "fault", "the tracer's munged stopped (SIGSTOP) "
           "while it decodes a request", f"the client got INTERNAL after {elapsed:.2f} s (deadline 2 s), counted "
           "abandoned; answers again once munged resumed", "that one answer")


def test_an_unreachable_munged_is_an_internal_error_at_once_and_the_tracer_recovers(tracer, munged, jobs,
                                                                                   test_users, listener):  # noqa: F811
    # Issue 12, munged unreachable on the tracer's side: its socket is gone (munged down,
    # socket removed) while a request arrives. The decode fails at once: the client gets
    # INTERNAL well inside its deadline, the tracer keeps serving and answers again once
    # munged is back.
    owner = test_users[0]
    p, c, q = _owners_connection(jobs, owner, 4205, listener)
    from callerid.protocol import HEADER, ErrorCode, FrameType, decode_error
    cred = _root_credential(q, munged.socket)
    before = rpc_counts(tracer)
    away = munged.socket + ".away"
    os.rename(munged.socket, away)
    try:
        reply, elapsed = _send_request(tracer.port, cred)
    finally:
        os.rename(away, munged.socket)
    assert reply[3] == FrameType.ERROR and decode_error(reply[HEADER.size:])[0] == ErrorCode.INTERNAL
    assert elapsed < 1.0, f"answered after {elapsed:.2f}s: an unreachable munged must fail at once"
    assert wait_for(lambda: rpc_counts(tracer).get("internal_error", 0) - before.get("internal_error", 0) == 1, 5,
                    "the failure counted")
    assert tracer.running
    assert wait_for(lambda: _answers(tracer, q, munged.socket) == "4205", 15, "answers once munged is back")
    close_client(p)
    record("kernel/test_rpc_abuse.py::unreachable_munged_tracer_side", "fault",
           "the tracer's munged unreachable (its socket gone) while a request arrives",
           f"the client got INTERNAL after {elapsed * 1000:.0f} ms, counted (internal_error); the tracer kept "
           "serving and answered again once munged was back", "that one answer")


def test_every_worker_stuck_on_a_hung_munged_other_clients_are_still_answered(tracers, munged, jobs, test_users,
                                                                              listener):  # noqa: F811
    # Issue 12: both workers of a 2-worker tracer are stuck in a MUNGE decode (munged
    # stopped). The I/O thread must still answer everyone else: a malformed frame at once,
    # a queued request with BUSY and the stuck ones with INTERNAL, each by its own deadline;
    # and once munged is back, new questions are answered right.
    import socket as socketmod

    from callerid.protocol import HEADER, ErrorCode, FrameType, decode_error, encode_frame
    owner = test_users[0]
    t = tracers.make(max_clients=2).start()
    p, c, q = _owners_connection(jobs, owner, 4205, listener)
    creds = [_root_credential(q, munged.socket) for _ in range(3)]
    before = rpc_counts(t)
    outcome: dict = {}

    def send(name: str, frame: bytes):
        t0 = time.monotonic()
        try:
            with socketmod.create_connection(("127.0.0.1", t.port), timeout=10) as s:
                s.sendall(frame)
                reply = s.recv(4096)
            code = decode_error(reply[HEADER.size:])[0] if reply[3] == FrameType.ERROR else FrameType(reply[3])
        except OSError as exc:
            code = exc
        outcome[name] = (code, time.monotonic() - t0)

    os.kill(munged.pid, signal.SIGSTOP)
    try:
        stuck = [threading.Thread(target=send, args=(f"stuck{i}", encode_frame(FrameType.REQUEST, creds[i])))
                 for i in range(2)]
        for th in stuck:
            th.start()
        assert wait_for(lambda: metric(scrape(t.metrics_url), "callerid_rpc_clients") >= 2, 2, "both workers busy")
        time.sleep(0.2)
        queued = threading.Thread(target=send, args=("queued", encode_frame(FrameType.REQUEST, creds[2])))
        queued.start()
        send("garbage", b"\xff" * HEADER.size)
        for th in [*stuck, queued]:
            th.join(10)
    finally:
        os.kill(munged.pid, signal.SIGCONT)
    print(f"hung munged, 2 workers: {outcome}")
    assert outcome["garbage"][0] == ErrorCode.BAD_FRAME and outcome["garbage"][1] < 0.5, outcome
    for name in ("stuck0", "stuck1"):
        assert outcome[name][0] == ErrorCode.INTERNAL and outcome[name][1] < 2.0 + 0.5, outcome
    assert outcome["queued"][0] in (ErrorCode.BUSY, ErrorCode.INTERNAL) and outcome["queued"][1] < 2.0 + 0.5, outcome
    assert wait_for(lambda: _answers(t, q, munged.socket) == "4205", 15, "answers after munged resumed")
    after = rpc_counts(t)
    assert after.get("abandoned", 0) - before.get("abandoned", 0) >= 2
    close_client(p)
    t.stop()
    record("kernel/test_rpc_abuse.py::every_worker_stuck_on_hung_munged", "fault",
           "munged stopped while both workers of a 2-worker tracer decode; a third request and a malformed "
           "frame arrive meanwhile",
           f"malformed frame refused in {outcome['garbage'][1] * 1000:.0f} ms; stuck requests INTERNAL and the "
           f"queued one {outcome['queued'][0].name} within the 2 s deadline; answers again once munged resumed",
           "the three answers munged could not give")


def _answers(tracer, q, sock):
    try:
        return ask(("127.0.0.1", tracer.port), q, 2.0, sock).job_id
    except RpcError:
        return None


def test_strangers_question_about_an_unmapped_socket_scans_nothing_and_looks_like_not_found(
        tracers, jobs, test_users, listener):  # noqa: F811
    from tests.kernel.test_tracer import query_as

    owner, other = test_users
    jobs.create(owner.uid, 4204)
    # The connection exists before this tracer starts, and it does not reconcile: only
    # sock_diag and /proc know it, whatever the probe backend.
    p, (c,) = start_client(jobs, owner, 4204, "127.0.0.1", listener)
    late = tracers.make(reconcile=False).start()

    def scans():
        now = scrape(late.metrics_url)
        return sum(v for k, v in now.items() if k[0] == "callerid_fallback_scans_total")

    before = scans()
    rc, theirs = query_as(other, late, c)
    assert scans() == before, "a stranger's question walked /proc"
    rc2, missing = query_as(other, late, dict(c, dport=1))
    assert rc == rc2 == 1
    assert {k: v for k, v in theirs.items() if k != "query"} == {k: v for k, v in missing.items() if k != "query"}
    rc, mine = query_as(owner, late, c)
    assert rc == 0 and mine["job_id"] == "4204" and mine["source"] == "proc"
    assert scans() == before + 1
    close_client(p)
    late.stop()
    record("kernel/test_rpc_abuse.py::strangers_question_scans_nothing", "input",
           "a non-owner asks about an existing socket the map does not have",
           "answered exactly like a missing socket, no /proc walk; the owner's question walks once")


FUZZ_FRAMES = 20_000


def _fuzz_frames(rng, creds: list[bytes], n: int):
    """n byte strings, each sent on its own connection: the kinds of input a fuzzer (or an
    attacker) tries, drawn with a fixed seed so a failure can be replayed."""
    import base64
    import struct as st

    from callerid.protocol import FrameType, encode_frame
    b64 = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/"
    for _ in range(n):
        kind = rng.randrange(9)
        if kind == 0:                                    # noise
            yield rng.randbytes(rng.randrange(1, 64))
        elif kind == 1:                                  # any header, short payload
            yield st.pack("!2sBBI", b"CI", rng.randrange(4), rng.randrange(5), rng.randrange(2**32)) + \
                rng.randbytes(rng.randrange(32))
        elif kind == 2:                                  # a request of random bytes
            yield encode_frame(FrameType.REQUEST, rng.randbytes(rng.randrange(200)))
        elif kind == 3:                                  # MUNGE-shaped garbage: munged says no
            body = bytes(rng.choice(b64) for _ in range(rng.randrange(60, 300)))
            yield encode_frame(FrameType.REQUEST, b"MUNGE:" + body + b":")
        elif kind == 4:                                  # a real credential, one character changed
            cred = bytearray(rng.choice(creds))
            i = rng.randrange(6, len(cred) - 1)
            cred[i] = rng.choice(b64.replace(bytes([cred[i]]), b""))
            yield encode_frame(FrameType.REQUEST, bytes(cred))
        elif kind == 5:                                  # a real frame cut short
            frame = encode_frame(FrameType.REQUEST, rng.choice(creds))
            yield frame[:rng.randrange(1, len(frame))]
        elif kind == 6:                                  # a real credential, replayed
            yield encode_frame(FrameType.REQUEST, rng.choice(creds))
        elif kind == 7:                                  # a credential around a random payload
            yield encode_frame(FrameType.REQUEST, base64.b64encode(rng.randbytes(40)))
        else:                                            # two frames at once, the second garbage
            yield encode_frame(FrameType.REQUEST, rng.choice(creds)) + rng.randbytes(rng.randrange(1, 40))


def test_protocol_fuzz_crashes_nothing_and_good_clients_stay_answered(tracer, munged, jobs, test_users,
                                                                      listener):  # noqa: F811
    import random
    import socket as socketmod
    from concurrent.futures import ThreadPoolExecutor

    owner = test_users[0]
    p, c, q = _owners_connection(jobs, owner, 4205, listener)
    creds = [_root_credential(q, munged.socket) for _ in range(40)]
    rng = random.Random(12)
    frames = list(_fuzz_frames(rng, creds, FUZZ_FRAMES))
    before = rpc_counts(tracer)
    rss0 = metric(scrape(tracer.metrics_url), "process_resident_memory_bytes")

    def send(data: bytes) -> str:
        try:
            with socketmod.create_connection(("127.0.0.1", tracer.port), timeout=5) as s:
                s.sendall(data)
                s.shutdown(socketmod.SHUT_WR)
                reply = s.recv(8)
                return "reply" if reply else "closed"
        except OSError:
            return "reset"

    seen: dict = {}
    good, t0 = 0, time.monotonic()
    with ThreadPoolExecutor(8) as pool:
        for i in range(0, len(frames), 1000):
            for r in pool.map(send, frames[i:i + 1000]):
                seen[r] = seen.get(r, 0) + 1
            assert ask(("127.0.0.1", tracer.port), q, 2.0, munged.socket).job_id == "4205"
            good += 1
            assert time.monotonic() - t0 < 240, "bounded in time"
    close_client(p)
    after = rpc_counts(tracer)
    rss1 = metric(scrape(tracer.metrics_url), "process_resident_memory_bytes")
    delta = {k: after.get(k, 0) - before.get(k, 0) for k in after}
    print(f"fuzz: {len(frames)} frames in {time.monotonic() - t0:.1f}s, client saw {seen}, tracer counted {delta}, "
          f"RSS {rss0 / 1e6:.1f} -> {rss1 / 1e6:.1f} MB")
    assert tracer.running
    assert good == len(frames) // 1000
    assert delta.get("found", 0) >= good
    assert sum(v for k, v in delta.items() if k not in ("found", "not_found")) >= 0.9 * len(frames)
    assert rss1 - rss0 < 50e6
    record("kernel/test_rpc_abuse.py::protocol_fuzz", "input",
           f"{len(frames):,} fuzzed frames of nine kinds (noise, bad headers, random and MUNGE-shaped payloads, "
           "mutated, truncated, replayed and pipelined real credentials), seed 12",
           f"no crash; a good client answered after every 1,000; RSS {rss0 / 1e6:.0f} -> {rss1 / 1e6:.0f} MB")


def _busy_then_answer_server(busy_times: int, munge_socket: str, then: str = "answer"):
    """Says BUSY to the first busy_times connections, then answers (then="silence": reads the
    next request and says nothing until the client hangs up); records the credentials."""
    import socket as socketmod

    from callerid import munge
    from callerid.protocol import (
        Answer,
        ErrorCode,
        FrameType,
        Status,
        decode_request,
        encode_error,
        encode_frame,
        seal_answer,
    )
    srv = socketmod.socket()
    srv.bind(("127.0.0.1", 0))
    srv.listen(8)
    srv.settimeout(5)
    seen: list[bytes] = []

    def serve():
        with srv:
            for i in range(busy_times + 1):
                try:
                    conn, _ = srv.accept()
                except OSError:
                    return   # the client gave up
                with conn:
                    cred = recv_payload(conn)
                    seen.append(cred)
                    if i < busy_times:
                        conn.sendall(encode_error(ErrorCode.BUSY, "too many clients"))
                        continue
                    if then == "silence":
                        conn.settimeout(30)
                        conn.recv(1)   # returns when the client gives up and closes
                        return
                    q, key = decode_request(munge.decode(cred, munge_socket).payload)
                    conn.sendall(encode_frame(FrameType.ANSWER, seal_answer(Answer(q, Status.FOUND, job_id="7"), key)))

    t = threading.Thread(target=serve, daemon=True)
    t.start()
    return srv.getsockname()[1], t, seen


def test_client_retries_busy_within_its_deadline_with_the_same_credential(munged):
    port, t, seen = _busy_then_answer_server(3, munged.socket)
    q = Query.make("127.0.0.1", 40000, "127.0.0.1", 22)
    t0 = time.monotonic()
    assert ask(("127.0.0.1", port), q, 2.0, munged.socket).job_id == "7"
    assert time.monotonic() - t0 < 2.0
    t.join(5)
    assert len(seen) == 4 and len(set(seen)) == 1, "BUSY comes before decoding: the credential is reused"


def test_client_whose_retry_after_busy_is_cut_by_its_deadline_says_busy(munged):
    port, t, seen = _busy_then_answer_server(1, munged.socket, then="silence")
    q = Query.make("127.0.0.1", 40000, "127.0.0.1", 22)
    with pytest.raises(RpcError) as exc:
        ask(("127.0.0.1", port), q, pace.scaled(0.5), munged.socket)
    assert exc.value.reason == "refused" and "busy: too many clients" in str(exc.value), exc.value
    assert "no answer to the retry" in str(exc.value)
    t.join(pace.scaled(5))
    assert len(seen) == 2


def test_client_gives_up_on_busy_at_its_deadline(munged):
    port, t, seen = _busy_then_answer_server(1000, munged.socket)
    q = Query.make("127.0.0.1", 40000, "127.0.0.1", 22)
    deadline = pace.scaled(0.5)   # at least 3 retries fit in it on this machine
    t0 = time.monotonic()
    with pytest.raises(RpcError) as exc:
        ask(("127.0.0.1", port), q, deadline, munged.socket)
    # refused with the server's reason even when the deadline cuts a retry short
    assert exc.value.reason == "refused" and "busy" in str(exc.value)
    assert time.monotonic() - t0 < deadline + pace.scaled(0.2)
    assert len(seen) >= 3
