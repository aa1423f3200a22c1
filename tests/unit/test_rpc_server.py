"""Tests for tracer.server.RpcServer on a loopback socket, with a fake request handler."""

from __future__ import annotations

import select
import socket
import struct
import threading
import time

import pytest

from callerid.protocol import (
    HEADER,
    VERSION,
    ErrorCode,
    FrameType,
    check_credential_shape,
    decode_error,
    encode_error,
    encode_frame,
)
from callerid.tracer.metrics import RPC_RESULTS, TracerMetrics
from callerid.tracer.server import RpcServer, bind_listener
from tests.helpers import require
from tests.infra.frames import recv_frame

READ_TIMEOUT = 0.3
IO_TIMEOUT = 2.0   # upper bound for any single wait in these tests


class EchoHandler:
    """Answers b'ok:' + payload; raises for the payload b'boom'."""

    def __init__(self):
        self.calls = []
        self.lock = threading.Lock()

    def handle(self, payload: bytes, peer: str) -> bytes:
        with self.lock:
            self.calls.append((payload, peer))
        if payload == b"boom":
            raise RuntimeError("handler failure")
        return encode_frame(FrameType.ANSWER, b"ok:" + payload)


class Harness:
    def __init__(self, **kw):
        kw.setdefault("read_timeout", READ_TIMEOUT)
        kw.setdefault("check_payload", None)   # short made-up payloads; the shape check has its own tests
        self.handler = EchoHandler()
        self.metrics = TracerMetrics()
        self.server = RpcServer([bind_listener("127.0.0.1", 0)], self.handler, self.metrics, **kw)
        self.addr = self.server.addresses[0]
        self.clients = []

    def connect(self) -> socket.socket:
        c = socket.create_connection(self.addr, timeout=IO_TIMEOUT)
        self.clients.append(c)
        return c

    def count(self, result: str) -> float:
        return self.metrics.registry.get_sample_value("callerid_rpc_requests_total", {"result": result})

    def counts(self) -> dict:
        return {r: self.count(r) for r in RPC_RESULTS if self.count(r)}

    def connected(self) -> float:
        return self.metrics.registry.get_sample_value("callerid_rpc_clients")

    def close(self):
        for c in self.clients:
            c.close()
        self.server.stop()


@pytest.fixture
def make():
    made = []

    def _make(**kw) -> Harness:
        h = Harness(**kw)
        made.append(h)
        h.server.start()
        return h

    yield _make
    for h in made:
        h.close()


def wait_for(pred, timeout=IO_TIMEOUT):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if pred():
            return True
        time.sleep(0.01)
    return pred()


def wait_idle(h: Harness) -> bool:
    """No connection held any more (closing ones linger a moment)."""
    return wait_for(lambda: h.connected() == 0)


def recv_error(sock: socket.socket) -> tuple[ErrorCode, str]:
    frame = recv_frame(sock)
    assert frame is not None, "connection closed without an error frame"
    ftype, payload = frame
    assert ftype == FrameType.ERROR, (ftype, payload)
    return decode_error(payload)


def assert_closed(sock: socket.socket):
    assert sock.recv(1) == b"", "the server should have closed the connection"


def request(payload: bytes) -> bytes:
    return encode_frame(FrameType.REQUEST, payload)


def answer(payload: bytes) -> tuple[FrameType, bytes]:
    return FrameType.ANSWER, b"ok:" + payload


def is_silent(sock: socket.socket) -> bool:
    readable, _, _ = select.select([sock], [], [], 0)
    return not readable


# --- good requests ----------------------------------------------------------------------------

def test_good_request_is_answered(make):
    h = make()
    c = h.connect()
    c.sendall(request(b"hello"))
    assert recv_frame(c) == answer(b"hello")
    host, port = c.getsockname()
    assert h.handler.calls == [(b"hello", f"{host}:{port}")]
    assert h.counts() == {}   # results of answered requests are the handler's to count


def test_empty_request_payload_reaches_the_handler(make):
    h = make()
    c = h.connect()
    c.sendall(request(b""))
    assert recv_frame(c) == answer(b"")


def test_largest_request_is_accepted(make):
    h = make(max_frame=64)
    c = h.connect()
    c.sendall(request(b"x" * 64))
    assert recv_frame(c) == answer(b"x" * 64)


def test_two_requests_on_one_connection(make):
    h = make()
    c = h.connect()
    c.sendall(request(b"one"))
    assert recv_frame(c) == answer(b"one")
    c.sendall(request(b"two"))
    assert recv_frame(c) == answer(b"two")
    assert [p for p, _ in h.handler.calls] == [b"one", b"two"]


def test_two_pipelined_requests_in_one_write(make):
    h = make()
    c = h.connect()
    c.sendall(request(b"a") + request(b"bb"))
    assert recv_frame(c) == answer(b"a")
    assert recv_frame(c) == answer(b"bb")


def test_request_split_across_writes(make):
    h = make(read_timeout=IO_TIMEOUT)
    c = h.connect()
    data = request(b"split")
    c.sendall(data[:3])
    time.sleep(0.05)
    c.sendall(data[3:10])
    time.sleep(0.05)
    c.sendall(data[10:])
    assert recv_frame(c) == answer(b"split")


def test_idle_keepalive_client_is_hung_up_without_error(make):
    h = make()
    c = h.connect()
    c.sendall(request(b"x"))
    assert recv_frame(c) == answer(b"x")
    start = time.monotonic()
    assert recv_frame(c) is None, "no TIMEOUT frame after a served request"
    assert time.monotonic() - start < READ_TIMEOUT + 1.0
    assert h.counts() == {}
    assert wait_for(lambda: h.connected() == 0)


# --- malformed input ----------------------------------------------------------------------------

def test_garbage_header_is_bad_frame_and_closed(make):
    h = make(read_timeout=IO_TIMEOUT)
    c = h.connect()
    c.sendall(b"GET / HT")          # exactly one header's worth of garbage
    code, msg = recv_error(c)
    assert (code, msg) == (ErrorCode.BAD_FRAME, "bad magic")
    assert_closed(c)
    assert h.counts() == {"bad_frame": 1.0}
    assert h.handler.calls == []


def test_long_garbage_still_gets_its_error(make):
    # More bytes than one header: unread input must not turn close() into a RST that
    # destroys the error frame (an HTTP probe or a port scanner sends this).
    h = make(read_timeout=IO_TIMEOUT)
    c = h.connect()
    c.sendall(b"GET /metrics HTTP/1.1\r\nHost: tracer\r\n\r\n")
    assert recv_error(c) == (ErrorCode.BAD_FRAME, "bad magic")
    assert_closed(c)
    assert h.counts() == {"bad_frame": 1.0}


def test_oversized_length_with_body_in_flight(make):
    h = make(read_timeout=IO_TIMEOUT, max_frame=64)
    c = h.connect()
    c.sendall(struct.pack("!2sBBI", b"CI", 3, FrameType.REQUEST, 5000) + b"b" * 5000)
    assert recv_error(c)[0] == ErrorCode.BAD_FRAME
    assert h.counts() == {"bad_frame": 1.0}
    assert h.handler.calls == []


def test_oversized_length_is_refused_without_reading_the_body(make):
    # A long read timeout: a server that waited for the body would answer TIMEOUT, not BAD_FRAME.
    h = make(read_timeout=IO_TIMEOUT, max_frame=8192)
    c = h.connect()
    start = time.monotonic()
    c.sendall(struct.pack("!2sBBI", b"CI", 3, FrameType.REQUEST, 8193))
    code, msg = recv_error(c)
    assert code == ErrorCode.BAD_FRAME
    assert "8193" in msg
    assert time.monotonic() - start < 1.0
    assert_closed(c)
    assert h.counts() == {"bad_frame": 1.0}
    assert h.handler.calls == []


def test_max_frame_is_the_servers_not_the_protocols(make):
    h = make(read_timeout=IO_TIMEOUT, max_frame=16)
    c = h.connect()
    c.sendall(struct.pack("!2sBBI", b"CI", 3, FrameType.REQUEST, 17))
    assert recv_error(c)[0] == ErrorCode.BAD_FRAME
    assert h.counts() == {"bad_frame": 1.0}


@pytest.mark.parametrize("ftype", [FrameType.ANSWER, FrameType.ERROR])
def test_non_request_frame_is_bad_frame(make, ftype):
    h = make(read_timeout=IO_TIMEOUT)
    c = h.connect()
    c.sendall(struct.pack("!2sBBI", b"CI", 3, ftype, 0))
    assert recv_error(c) == (ErrorCode.BAD_FRAME, f"expected a request, got {ftype.name}")
    assert_closed(c)
    assert h.counts() == {"bad_frame": 1.0}
    assert h.handler.calls == []


def test_unknown_frame_type_is_bad_frame(make):
    h = make(read_timeout=IO_TIMEOUT)
    c = h.connect()
    c.sendall(struct.pack("!2sBBI", b"CI", 3, 9, 0))
    assert recv_error(c)[0] == ErrorCode.BAD_FRAME
    assert h.counts() == {"bad_frame": 1.0}


def test_wrong_frame_version_is_unsupported(make):
    h = make(read_timeout=IO_TIMEOUT)
    c = h.connect()
    c.sendall(struct.pack("!2sBBI", b"CI", 1, FrameType.REQUEST, 0))   # a version 1 client
    assert recv_error(c)[0] == ErrorCode.UNSUPPORTED_VERSION
    assert_closed(c)
    assert h.counts() == {"unsupported_version": 1.0}


def test_bad_frame_after_a_good_one(make):
    h = make(read_timeout=IO_TIMEOUT)
    c = h.connect()
    c.sendall(request(b"fine"))
    assert recv_frame(c) == answer(b"fine")
    c.sendall(b"\0" * HEADER.size)
    assert recv_error(c)[0] == ErrorCode.BAD_FRAME
    assert_closed(c)
    assert h.counts() == {"bad_frame": 1.0}


@pytest.mark.parametrize("data", [
    struct.pack("!2sBBI", b"CI", 3, FrameType.REQUEST, 10) + b"abcd",   # body cut short
    b"CI\x01",                                                          # header cut short
], ids=["body", "header"])
def test_truncated_frame_then_close_is_bad_frame(make, data):
    h = make(read_timeout=IO_TIMEOUT)
    c = h.connect()
    c.sendall(data)
    c.shutdown(socket.SHUT_WR)
    assert recv_frame(c) is None, "nothing to answer a half frame with"
    assert wait_for(lambda: h.count("bad_frame") == 1.0)
    assert h.counts() == {"bad_frame": 1.0}
    assert h.handler.calls == []


# --- deadlines --------------------------------------------------------------------------------

def test_slow_client_gets_timeout(make):
    h = make(read_timeout=READ_TIMEOUT)
    c = h.connect()
    start = time.monotonic()
    c.sendall(b"CI\x01")
    assert recv_error(c)[0] == ErrorCode.TIMEOUT
    elapsed = time.monotonic() - start
    assert READ_TIMEOUT - 0.05 <= elapsed < READ_TIMEOUT + 1.0
    assert_closed(c)
    assert h.counts() == {"timeout": 1.0}


def test_slow_body_gets_timeout(make):
    h = make(read_timeout=READ_TIMEOUT)
    c = h.connect()
    c.sendall(struct.pack("!2sBBI", b"CI", 3, FrameType.REQUEST, 10) + b"abc")
    assert recv_error(c)[0] == ErrorCode.TIMEOUT
    assert h.counts() == {"timeout": 1.0}
    assert h.handler.calls == []


def test_trickling_client_cannot_extend_the_deadline(make):
    h = make(read_timeout=READ_TIMEOUT)
    c = h.connect()
    data = request(b"y" * 20)
    start = time.monotonic()
    for i in range(len(data)):      # one byte every 50 ms: the whole frame would need 1.4 s
        try:
            c.sendall(data[i:i + 1])
        except OSError:
            break
        if not is_silent(c):
            break
        time.sleep(0.05)
    got = recv_error(c)
    assert got[0] == ErrorCode.TIMEOUT
    assert time.monotonic() - start < READ_TIMEOUT + 1.0
    assert h.counts() == {"timeout": 1.0}


def test_silent_client_is_counted_timeout(make):
    h = make(read_timeout=READ_TIMEOUT)
    c = h.connect()
    assert recv_error(c)[0] == ErrorCode.TIMEOUT
    assert_closed(c)
    assert h.counts() == {"timeout": 1.0}


def test_slow_clients_do_not_block_a_good_one(make):
    h = make(read_timeout=IO_TIMEOUT)
    slow = [h.connect() for _ in range(5)]
    for s in slow:
        s.sendall(b"CI\x01")
    assert wait_for(lambda: h.connected() == 5)
    good = h.connect()
    start = time.monotonic()
    good.sendall(request(b"quick"))
    assert recv_frame(good) == answer(b"quick")
    assert time.monotonic() - start < 0.5
    assert all(is_silent(s) for s in slow), "the slow clients are still waiting"
    assert h.counts() == {}


# --- capacity ---------------------------------------------------------------------------------

class GatedHandler(EchoHandler):
    """Holds every request until `gate` is set (a hung munged, seen from the server)."""

    def __init__(self):
        super().__init__()
        self.gate = threading.Event()

    def handle(self, payload: bytes, peer: str) -> bytes:
        self.gate.wait(IO_TIMEOUT * 2)
        return super().handle(payload, peer)


def evicted(h: Harness, why: str) -> float:
    return h.metrics.registry.get_sample_value("callerid_rpc_evicted_connections_total", {"reason": why})


def test_waiting_connections_take_no_worker(make):
    # The old server gave each connection a thread: two idle ones silenced it (BUSY).
    h = make(max_clients=2, read_timeout=IO_TIMEOUT)
    idle = [h.connect() for _ in range(50)]
    for s in idle[::2]:
        s.sendall(b"CI" + bytes([VERSION]))   # half of them drip a partial header
    assert wait_for(lambda: h.connected() == 50)
    for i in range(5):
        c = h.connect()
        c.sendall(request(b"q%d" % i))
        assert recv_frame(c) == answer(b"q%d" % i)
    assert all(is_silent(s) for s in idle)
    assert h.counts() == {}


def test_requests_beyond_the_workers_wait_their_turn(make):
    h = make(max_clients=2, read_timeout=IO_TIMEOUT)
    h.server.handler = h.handler = GatedHandler()
    clients = [h.connect() for _ in range(20)]
    for i, c in enumerate(clients):
        c.sendall(request(b"burst%d" % i))
    time.sleep(0.1)
    h.handler.gate.set()
    for i, c in enumerate(clients):
        assert recv_frame(c) == answer(b"burst%d" % i)
    assert h.counts() == {}, "nobody refused busy"


def test_queued_request_past_its_deadline_is_busy_and_hung_one_abandoned(make):
    h = make(max_clients=1, read_timeout=0.4)
    h.server.handler = h.handler = GatedHandler()
    first, second = h.connect(), h.connect()
    first.sendall(request(b"held"))
    time.sleep(0.05)
    second.sendall(request(b"queued"))
    start = time.monotonic()
    assert recv_error(second)[0] == ErrorCode.BUSY
    assert recv_error(first)[0] == ErrorCode.INTERNAL
    assert time.monotonic() - start < 0.4 + 0.5
    assert_closed(first)
    h.handler.gate.set()                  # the late answer is dropped, never sent
    assert wait_for(lambda: len(h.handler.calls) == 1)
    assert h.counts() == {"busy": 1.0, "abandoned": 1.0}
    assert wait_idle(h)
    c = h.connect()
    c.sendall(request(b"after"))
    assert recv_frame(c) == answer(b"after")


def test_one_peer_cannot_fill_the_table(make):
    h = make(max_connections_per_peer=3, read_timeout=IO_TIMEOUT)
    idle = [h.connect() for _ in range(3)]
    assert wait_for(lambda: h.connected() == 3)
    good = h.connect()
    good.sendall(request(b"mine"))
    assert recv_frame(good) == answer(b"mine")
    assert recv_error(idle[0]) == (ErrorCode.BUSY, "too many connections waiting")
    assert_closed(idle[0])
    assert all(is_silent(s) for s in idle[1:])
    assert evicted(h, "per_peer") == 1.0


def test_full_table_closes_the_longest_waiting(make):
    h = make(max_connections=4, read_timeout=IO_TIMEOUT)
    idle = [h.connect() for _ in range(4)]
    assert wait_for(lambda: h.connected() == 4)
    good = h.connect()
    good.sendall(request(b"fits"))
    assert recv_frame(good) == answer(b"fits")
    assert recv_error(idle[0])[0] == ErrorCode.BUSY
    assert evicted(h, "full") == 1.0


def test_waiter_whose_request_is_already_in_is_not_evicted(make):
    # Eviction reads the candidate first: a request sitting in its socket buffer is served.
    h = make(max_connections_per_peer=1, read_timeout=IO_TIMEOUT)
    h.server.handler = h.handler = GatedHandler()
    a = h.connect()
    assert wait_for(lambda: h.connected() == 1)
    a.sendall(request(b"a"))
    b = h.connect()
    b.sendall(request(b"b"))
    h.handler.gate.set()
    assert recv_frame(a) == answer(b"a")
    assert recv_frame(b) == answer(b"b")


def test_errors_release_their_connection(make):
    h = make(max_connections=1, read_timeout=IO_TIMEOUT)
    for _ in range(3):
        c = h.connect()
        c.sendall(b"\xff" * HEADER.size)
        assert recv_error(c)[0] == ErrorCode.BAD_FRAME
        c.close()
        assert wait_idle(h)
    c = h.connect()
    c.sendall(request(b"z"))
    assert recv_frame(c) == answer(b"z")
    assert h.counts() == {"bad_frame": 3.0}


def test_error_answer_closes_the_connection(make):
    h = make()
    h.server.handler = h.handler = ErrorHandler()
    c = h.connect()
    c.sendall(request(b"x") + request(b"y"))
    assert recv_error(c) == (ErrorCode.AUTH_FAILED, "credential rejected")
    assert_closed(c)
    assert [p for p, _ in h.handler.calls] == [b"x"], "nothing after an error is read"


class ErrorHandler(EchoHandler):
    def handle(self, payload: bytes, peer: str) -> bytes:
        super().handle(payload, peer)
        return encode_error(ErrorCode.AUTH_FAILED, "credential rejected")


# --- the MUNGE shape check --------------------------------------------------------------------

CRED = b"MUNGE:" + b"AwQFAAB" * 20 + b"=:"


@pytest.mark.parametrize("payload", [b"hello", b"MUNGE:not-base64!:", b"MUNGE:abc:", CRED[:-1], CRED + b"x",
                                     b"munge:" + CRED[6:]])
def test_payload_not_shaped_like_a_credential_is_refused_before_the_handler(make, payload):
    h = make(check_payload=check_credential_shape, read_timeout=IO_TIMEOUT)
    c = h.connect()
    c.sendall(request(payload))
    assert recv_error(c) == (ErrorCode.BAD_FRAME, "request is not a MUNGE credential")
    assert_closed(c)
    assert h.handler.calls == []
    assert h.counts() == {"bad_frame": 1.0}


def test_credential_shaped_payload_reaches_the_handler(make):
    h = make(check_payload=check_credential_shape)
    c = h.connect()
    c.sendall(request(CRED))
    assert recv_frame(c) == answer(CRED)


def test_non_credential_is_refused_before_the_frame_is_complete(make):
    h = make(check_payload=check_credential_shape, read_timeout=IO_TIMEOUT)
    c = h.connect()
    start = time.monotonic()
    c.sendall(struct.pack("!2sBBI", b"CI", VERSION, FrameType.REQUEST, 4000) + b"GET /")
    assert recv_error(c)[0] == ErrorCode.BAD_FRAME
    assert time.monotonic() - start < 1.0


def test_refused_client_does_not_stall_the_server(make):
    h = make(max_connections_per_peer=1, read_timeout=IO_TIMEOUT)
    holder = h.connect()
    assert wait_for(lambda: h.connected() == 1)
    refused = h.connect()   # evicts holder
    assert recv_error(holder)[0] == ErrorCode.BUSY
    stop = threading.Event()

    def trickle():   # the evicted client keeps sending a byte now and then, and never closes
        for _ in range(20):
            if stop.is_set():
                return
            try:
                holder.sendall(b"x")
            except OSError:
                return
            time.sleep(0.1)

    t = threading.Thread(target=trickle, daemon=True)
    t.start()
    try:
        refused.close()
        c = h.connect()
        start = time.monotonic()
        c.sendall(request(b"next"))
        assert recv_frame(c) == answer(b"next")
        assert time.monotonic() - start < 0.5
    finally:
        stop.set()
        t.join(IO_TIMEOUT)


# --- handler failure and shutdown ---------------------------------------------------------------

def test_handler_exception_does_not_kill_the_server(make):
    h = make()
    c = h.connect()
    c.sendall(request(b"boom"))
    assert recv_frame(c) is None, "a failed request is dropped, not answered"
    assert wait_for(lambda: h.count("internal_error") == 1.0)
    assert wait_idle(h)
    c2 = h.connect()
    c2.sendall(request(b"next"))
    assert recv_frame(c2) == answer(b"next")
    assert h.counts() == {"internal_error": 1.0}


def test_stop_closes_the_listener(make):
    h = make()
    c = h.connect()
    c.sendall(request(b"before"))
    assert recv_frame(c) == answer(b"before")
    h.server.stop()
    with pytest.raises(OSError):
        socket.create_connection(h.addr, timeout=IO_TIMEOUT).close()


def test_bind_listener_port_zero_and_v6():
    s = bind_listener("127.0.0.1", 0)
    try:
        assert s.family == socket.AF_INET
        assert s.getsockname()[1] != 0
    finally:
        s.close()
    try:
        s6 = bind_listener("::1", 0)
    except OSError:
        s6 = None
    require(s6 is not None, "an IPv6 loopback address (::1)")
    try:
        assert s6.family == socket.AF_INET6
    finally:
        s6.close()
