"""The callerid RPC listener: one I/O thread holds every connection until a whole,
MUNGE-shaped request has arrived; only such requests reach the worker threads.

Why this shape (issue 12): a connection that has not sent a request must cost the
server almost nothing, or anyone who can reach the port silences it by holding
connections open — 300 idle ones took every slot of the old thread-per-client server.
Here a waiting connection is a buffer and a selector entry; its header and its frame
have deadlines; when the table is full (in total, or for one peer address) the
connection that has waited longest without completing a request is closed. Complete
requests wait for a worker in a FIFO queue within their deadline instead of being
refused at once, so a burst of callers is answered, not turned away.
"""

from __future__ import annotations

import collections
import heapq
import itertools
import logging
import queue
import selectors
import socket
import threading
import time

from callerid.protocol import (
    HEADER,
    ErrorCode,
    FrameType,
    ProtocolError,
    check_credential_shape,
    decode_header,
    encode_error,
)

from .metrics import TracerMetrics
from .rpcconn import CLOSED, LINGERING, PARKED, QUEUED, READING, REPLYING, WORKING, drain, send_now
from .rpcconn import Conn as _Conn
from .rpcwait import WaitingTable

log = logging.getLogger("callerid.tracer.server")

_READ_CHUNK = 65536
_SEND_TIMEOUT = 0.5    # a reply is small; a peer that cannot take it in this time is gone
_LINGER = 0.2          # after a last frame, read and discard input this long before closing
_FRAME_TYPE_OFFSET = 3
_EXPIRE_BATCH = 64     # deadlines handled per wake-up (see _expire)
_ACCEPT_BATCH = 256    # per wake-up; the rest wait for the next select, after others' reads

class RpcServer:
    def __init__(self, listeners: list[socket.socket], handler, metrics: TracerMetrics,
                 max_clients: int = 64, read_timeout: float = 2.0, max_frame: int = 8192,
                 header_timeout: float = 1.0, max_connections: int = 4096, max_connections_per_peer: int = 512,
                 check_payload=check_credential_shape):
        self.listeners = listeners
        self.handler = handler
        self.metrics = metrics
        self.read_timeout = read_timeout                       # whole frame, and a queued request's wait
        self.header_timeout = min(header_timeout, read_timeout)
        self.max_frame = max_frame
        self.max_clients = max_clients                         # worker threads: requests handled at once
        self.max_connections = max_connections
        self.check_payload = check_payload
        self._stop = threading.Event()
        self._threads: list[threading.Thread] = []
        self._sel = selectors.DefaultSelector()
        # _lock guards state changes a worker can race with, the counters and the queues;
        # the tables below it belong to the I/O thread alone.
        self._lock = threading.Lock()
        self._work: collections.deque[_Conn] = collections.deque()   # FIFO; the I/O thread refuses late ones
        self._work_tokens: queue.SimpleQueue = queue.SimpleQueue()    # one per append: wakes one worker
        self._working: set[_Conn] = set()
        self._returned: collections.deque[tuple[_Conn, bool]] = collections.deque()
        self._open = 0
        self._table = WaitingTable(max_connections_per_peer)   # READING and PARKED connections
        self._timers: list[tuple[float, int, int, _Conn]] = []   # (deadline, seq, gen, conn)
        self._seq = itertools.count()
        self._wake_r, self._wake_w = socket.socketpair()
        self._wake_r.setblocking(False)
        self._wake_w.setblocking(False)

    @property
    def addresses(self):
        return [s.getsockname()[:2] for s in self.listeners]

    # --- lifecycle ---------------------------------------------------------------------------

    def start(self):
        for s in self.listeners:
            s.setblocking(False)
            self._sel.register(s, selectors.EVENT_READ, None)
        self._sel.register(self._wake_r, selectors.EVENT_READ, "wake")
        old = threading.stack_size(256 * 1024)
        try:
            self._spawn(self._io_loop, "rpc-io")
            for i in range(self.max_clients):
                self._spawn(self._worker, f"rpc-worker-{i}")
        finally:
            threading.stack_size(old)

    def _spawn(self, target, name: str):
        t = threading.Thread(target=target, daemon=True, name=name)
        t.start()
        self._threads.append(t)

    def stop(self):
        self._stop.set()
        for _ in range(self.max_clients):
            self._work_tokens.put(None)
        self._wake()
        for s in self.listeners:
            try:
                s.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
            s.close()

    def _wake(self):
        try:
            self._wake_w.send(b"\0")
        except OSError:
            pass   # the pipe is full: a wake-up is pending anyway

    # --- the I/O thread ------------------------------------------------------------------------

    def _io_loop(self):
        try:
            while not self._stop.is_set():
                events = self._sel.select(self._next_timeout())
                now = time.monotonic()
                for key, _ in events:
                    if key.data is None:
                        self._accept(key.fileobj, now)
                    elif key.data == "wake":
                        drain(self._wake_r)
                    else:
                        self._on_readable(key.data, now)
                now = time.monotonic()
                self._take_back(now)
                self._expire(now)
                self._promote(now)
        except Exception:  # noqa: BLE001 - nothing is answered any more: make it loud
            log.exception("rpc I/O thread failed")
        finally:
            self._close_all()

    def _next_timeout(self) -> float:
        cap = 0.05 if self._working or self._work else 1.0   # their deadlines are not on the timer heap
        if not self._timers:
            return cap
        return max(0.0, min(cap, self._timers[0][0] - time.monotonic()))

    def _accept(self, lsock: socket.socket, now: float):
        """Take what is in the accept queue in two passes. Triage first: accept and read
        each once, so a whole request (every honest client sends one right after
        connecting) goes to a worker at once, behind nothing but other accepts. Only then
        make room for the ones still incomplete: the per-peer and total limits, and their
        evictions, cost a flood's connections, never the honest caller queued behind them."""
        if self._stop.is_set():
            return   # stop() closed the listener under the selector
        fresh = []
        for _ in range(_ACCEPT_BATCH):
            try:
                sock, addr = lsock.accept()
            except (BlockingIOError, InterruptedError):
                break
            except OSError as exc:
                # EMFILE/ENFILE/ENOBUFS: the rest stay in the backlog; the selector fires again
                self.metrics.accept_failures.inc()
                log.warning("rpc: accept failed: %s", exc)
                break
            sock.setblocking(False)
            with self._lock:
                self._open += 1
            self.metrics.clients.inc()
            conn = _Conn(sock, addr)
            conn.wait_start = now
            conn.deadline = now + self.header_timeout
            self._on_readable(conn, now)   # a client sends its request right after connecting
            if conn.state == READING:
                fresh.append(conn)
        evicted: dict[str, int] = {}
        self._make_room(now, evicted)   # requests taken whole count too: the total bounds descriptors
        for conn in fresh:
            if conn.state != READING:
                continue
            if self._table.peer_full(conn.host):
                self._park(conn)
                continue
            if not self._make_room(now, evicted):
                evicted["full"] = evicted.get("full", 0) + 1
                self.metrics.evicted.labels("full").inc()
                send_now(conn, encode_error(ErrorCode.BUSY, "too many connections"))
                self._close(conn)
                continue
            self._start_waiting(conn, now)
        for why, n in evicted.items():
            # one line per batch, not per connection: a flood is many of these a second
            log.warning("rpc: closed %d connection(s) without a whole request: too many waiting (%s)", n, why)

    def _park(self, conn: _Conn):
        """Past its peer's limit of waiting connections: hold the descriptor, nothing more.

        Closing it (or the peer's oldest, as before) made a flood reconnect at once, and the
        close-reconnect loop ran as fast as two processes can spin, taking the CPU the honest
        callers needed. A parked connection is left alone: it gets its peer's next free slot
        or its header deadline's TIMEOUT. An honest caller is never parked in practice: its
        whole request arrives with its first data (the listener defers accept until then)
        and goes to a worker in the accept triage."""
        conn.state = PARKED
        self.metrics.parked.inc()
        self._table.park(conn)
        self._set_timer(conn, conn.deadline)

    def _promote(self, now: float):
        """A parked connection takes each slot its peer freed, oldest first, with the
        deadline it has had since it was accepted."""
        for conn in self._table.promotable():
            start, deadline = conn.wait_start, conn.deadline
            self._start_waiting(conn, now)
            conn.wait_start = start
            self._set_timer(conn, deadline)
            self._on_readable(conn, now)

    def _make_room(self, now: float, evicted: dict[str, int]) -> bool:
        """Close the longest-waiting connections (parked ones first) until one more fits in total."""
        while self._open > self.max_connections and self._table.oldest_parked() is not None:
            conn = self._table.oldest_parked()
            self._table.unpark(conn)
            conn.state = READING   # read like a waiter: its request may be whole by now
            self._evict(conn, now, "full", evicted)
        while self._open > self.max_connections and self._table.waiting:
            self._evict(next(iter(self._table.waiting)), now, "full", evicted)
        return self._open <= self.max_connections

    def _evict(self, conn: _Conn, now: float, why: str, evicted: dict[str, int]):
        """Give the oldest waiter a last read; close it unless that completed its request."""
        self._on_readable(conn, now)
        if conn.state != READING:
            return
        self.metrics.evicted.labels(why).inc()
        evicted[why] = evicted.get(why, 0) + 1
        send_now(conn, encode_error(ErrorCode.BUSY, "too many connections waiting"))
        self._close(conn)

    def _start_waiting(self, conn: _Conn, now: float):
        conn.state = READING
        conn.wait_start = now
        self._set_timer(conn, now + (self.header_timeout if conn.need == 0 else self.read_timeout))
        self._table.add(conn)
        self._register(conn)

    def _set_timer(self, conn: _Conn, deadline: float):
        conn.deadline = deadline
        conn.gen += 1
        heapq.heappush(self._timers, (deadline, next(self._seq), conn.gen, conn))

    def _register(self, conn: _Conn):
        try:
            self._sel.register(conn.sock, selectors.EVENT_READ, conn)
        except KeyError:
            self._sel.modify(conn.sock, selectors.EVENT_READ, conn)

    def _stop_waiting(self, conn: _Conn):
        self._table.remove(conn)
        try:
            self._sel.unregister(conn.sock)
        except (KeyError, ValueError):
            pass

    def _on_readable(self, conn: _Conn, now: float):
        if conn.state == LINGERING:
            if not drain(conn.sock):
                self._close(conn)
            return
        if conn.state != READING:
            return
        try:
            while True:
                chunk = conn.sock.recv(_READ_CHUNK)
                if not chunk:
                    if conn.buf:
                        self.metrics.requests.labels("bad_frame").inc()
                        log.warning("rpc from %s: connection closed mid-frame", conn.peer)
                    self._close(conn)
                    return
                conn.buf += chunk
                if len(chunk) < _READ_CHUNK:
                    break
        except (BlockingIOError, InterruptedError):
            pass
        except OSError:
            self._close(conn)
            return
        self._parse(conn, now)

    def _parse(self, conn: _Conn, now: float):
        """Advance conn's frame; a complete, well-shaped request goes to the work queue."""
        try:
            if not conn.need:
                if len(conn.buf) < HEADER.size:
                    return
                ftype, length = decode_header(bytes(conn.buf[:HEADER.size]), self.max_frame)
                if ftype != FrameType.REQUEST:
                    raise ProtocolError(ErrorCode.BAD_FRAME, f"expected a request, got {ftype.name}")
                conn.need = HEADER.size + length
                self._set_timer(conn, conn.wait_start + self.read_timeout)   # the header is in: the frame's deadline
            if len(conn.buf) < conn.need:
                if self.check_payload is not None:
                    self.check_payload(bytes(conn.buf[HEADER.size:]), partial=True)
                return
            payload = bytes(conn.buf[HEADER.size:conn.need])
            if self.check_payload is not None:
                self.check_payload(payload)
        except ProtocolError as exc:
            result = "unsupported_version" if exc.code == ErrorCode.UNSUPPORTED_VERSION else "bad_frame"
            self.metrics.requests.labels(result).inc()
            log.warning("rpc from %s: %s", conn.peer, exc)
            self._stop_waiting(conn)
            self._last_frame(conn, encode_error(exc.code, str(exc)), now)   # cannot resynchronise a byte stream
            return
        del conn.buf[:conn.need]
        conn.need = 0
        conn.payload = payload
        self._stop_waiting(conn)
        conn.gen += 1
        with self._lock:
            conn.state = QUEUED
            conn.deadline = conn.wait_start + self.read_timeout   # the request's deadline, queue wait included
            self._work.append(conn)
        self._work_tokens.put(None)

    def _last_frame(self, conn: _Conn, frame: bytes, now: float):
        """Send a last frame, half-close, and discard input for a moment before closing:
        unread input would make close() send a RST that can destroy the frame in flight."""
        if not send_now(conn, frame):
            self._close(conn)
            return
        conn.state = LINGERING
        self._set_timer(conn, now + _LINGER)
        self._register(conn)
        if not drain(conn.sock):
            self._close(conn)

    def _take_back(self, now: float):
        """Connections workers are done with: wait for the next request, or linger and close."""
        while self._returned:
            conn, keep = self._returned.popleft()
            conn.sock.setblocking(False)
            if not keep:
                conn.state = LINGERING
                self._set_timer(conn, now + _LINGER)
                self._register(conn)
                continue
            self._start_waiting(conn, now)
            if conn.buf:
                self._parse(conn, now)   # a pipelined request is already here

    def _expire(self, now: float):
        # At most _EXPIRE_BATCH deadlines per wake-up: a flood's connections time out in
        # waves (all opened in the same second), and a wave handled in one go would hold up
        # the accepts and reads of the callers that arrived meanwhile. The rest are due, so
        # the next select does not sleep.
        handled = 0
        while self._timers and self._timers[0][0] <= now and handled < _EXPIRE_BATCH:
            _, _, gen, conn = heapq.heappop(self._timers)
            if gen != conn.gen:
                continue
            handled += 1
            if conn.state == LINGERING:
                self._close(conn)
            elif conn.state == PARKED:
                self._table.unpark(conn)
                self.metrics.requests.labels("timeout").inc()
                log.warning("rpc from %s: request not complete within %.1fs (parked: its peer's limit of "
                            "waiting connections was reached)", conn.peer, now - conn.wait_start)
                self._last_frame(conn, encode_error(ErrorCode.TIMEOUT, "request not complete before the deadline"), now)
            elif conn.state == READING:
                self._stop_waiting(conn)
                if not conn.buf and conn.served:
                    self._close(conn)   # a keep-alive client went quiet after its answers: hang up
                    continue
                self.metrics.requests.labels("timeout").inc()
                log.warning("rpc from %s: request not complete within %.1fs", conn.peer, now - conn.wait_start)
                self._last_frame(conn, encode_error(ErrorCode.TIMEOUT, "request not complete before the deadline"), now)
        if self._work and self._work[0].deadline <= now:
            self._refuse_late_queued(now)
        if self._working:
            self._abandon_late(now)

    def _refuse_late_queued(self, now: float):
        """Requests no worker took within their deadline (every worker stuck): BUSY now,
        so the client can retry elsewhere in time instead of waiting for nothing."""
        late = []
        with self._lock:
            while self._work and self._work[0].deadline <= now:
                conn = self._work.popleft()
                conn.state = LINGERING
                late.append(conn)
        for conn in late:
            self.metrics.requests.labels("busy").inc()
            log.warning("rpc from %s: no worker free within %.1fs: busy", conn.peer, self.read_timeout)
            self._last_frame(conn, encode_error(ErrorCode.BUSY, "too many clients"), now)

    def _abandon_late(self, now: float):
        """A worker held a request past its deadline (munged hung, say): answer INTERNAL
        now and close; the worker's late answer is dropped, never sent."""
        with self._lock:
            late = [c for c in self._working if c.deadline <= now]
            for c in late:
                self._working.discard(c)
                c.state = LINGERING
        for c in late:
            self.metrics.requests.labels("abandoned").inc()
            log.warning("rpc from %s: no answer within its %.1fs deadline: abandoned", c.peer, self.read_timeout)
            self._last_frame(c, encode_error(ErrorCode.INTERNAL, "the tracer could not answer in time"), now)

    def _close(self, conn: _Conn):
        self._stop_waiting(conn)
        if conn.state == PARKED:
            self._table.unpark(conn)
        with self._lock:
            if conn.state == CLOSED:
                return
            conn.state = CLOSED
            self._open -= 1
        conn.gen += 1
        try:
            conn.sock.close()
        except OSError:
            pass
        self.metrics.clients.dec()

    def _close_all(self):
        for conn in self._table.everyone():
            self._close(conn)
        for s in (self._wake_r, self._wake_w):
            s.close()
        self._sel.close()

    # --- the workers ----------------------------------------------------------------------------

    def _worker(self):
        while True:
            self._work_tokens.get()   # a C-level queue: the cheapest wake-up CPython has
            if self._stop.is_set():
                return
            with self._lock:
                if not self._work:
                    continue   # the I/O thread refused it as late
                conn = self._work.popleft()
                late = time.monotonic() >= conn.deadline
                if late:
                    conn.state = REPLYING
                else:
                    conn.state = WORKING
                    self._working.add(conn)
            if late:
                self.metrics.requests.labels("busy").inc()
                log.warning("rpc from %s: no worker free within %.1fs: busy", conn.peer, self.read_timeout)
                self._reply(conn, encode_error(ErrorCode.BUSY, "too many clients"))
            else:
                self._serve(conn)

    def _serve(self, conn: _Conn):
        try:
            reply = self.handler.handle(conn.payload, conn.peer)
        except Exception:  # noqa: BLE001 - one client's failure must never end the server
            log.exception("rpc from %s: unexpected error", conn.peer)
            self.metrics.requests.labels("internal_error").inc()
            reply = None
        with self._lock:
            if conn.state != WORKING:
                return   # abandoned at its deadline: the I/O thread answered and closes it
            self._working.discard(conn)
            conn.state = REPLYING
        conn.payload = b""
        self._reply(conn, reply)

    def _reply(self, conn: _Conn, reply: bytes | None):
        keep = False
        if reply is not None:
            try:
                conn.sock.settimeout(_SEND_TIMEOUT)
                conn.sock.sendall(reply)
                conn.served += 1
                # The protocol: an error frame ends the connection.
                keep = reply[_FRAME_TYPE_OFFSET] != FrameType.ERROR
                if not keep:
                    conn.sock.shutdown(socket.SHUT_WR)
            except OSError as exc:
                log.warning("rpc from %s: cannot send the answer: %s", conn.peer, exc)
        self._returned.append((conn, keep and not self._stop.is_set()))
        self._wake()

