"""The callerid RPC listener: bounded clients, a deadline on every read, never blocked by one peer."""

from __future__ import annotations

import logging
import socket
import threading
import time

from callerid.inet import endpoint
from callerid.protocol import HEADER, ErrorCode, FrameType, ProtocolError, decode_header, encode_error
from callerid.sockio import Deadline, recv_exact

from .metrics import TracerMetrics

log = logging.getLogger("callerid.tracer.server")


def bind_listener(host: str, port: int, backlog: int = socket.SOMAXCONN) -> socket.socket:
    """Listen on host:port; '::' is dual stack (IPv4 clients arrive v4-mapped).

    A long accept queue costs nothing and turns a burst of connects into prompt
    answers or BUSY frames, where a full one drops SYNs (clients retry after 1 s, 3 s)."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    s = socket.socket(family, socket.SOCK_STREAM)
    s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    if family == socket.AF_INET6 and host in ("::", ""):
        s.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
    s.bind((host, port))
    s.listen(backlog)
    return s


class RpcServer:
    def __init__(self, listeners: list[socket.socket], handler, metrics: TracerMetrics,
                 max_clients: int = 64, read_timeout: float = 2.0, max_frame: int = 8192):
        self.listeners = listeners
        self.handler = handler
        self.metrics = metrics
        self.read_timeout = read_timeout
        self.max_frame = max_frame
        self.max_clients = max_clients
        self._slots = threading.BoundedSemaphore(max_clients)
        self._stop = threading.Event()
        self._threads: list[threading.Thread] = []

    @property
    def addresses(self):
        return [s.getsockname()[:2] for s in self.listeners]

    def start(self):
        # Every thread accepts and serves what it accepted: no hand-off from an accept
        # thread to a worker, a wake-up that cost ~0.1-0.3 ms per RPC on an idle node.
        # One more thread than client slots, so a free one is always there to say BUSY.
        # Blocking accept() wakes one waiter per connection (no thundering herd).
        old = threading.stack_size(256 * 1024)
        try:
            for s in self.listeners:
                for i in range(self.max_clients + 1):
                    t = threading.Thread(target=self._accept_loop, args=(s,), daemon=True,
                                         name=f"rpc-{s.getsockname()[1]}-{i}")
                    t.start()
                    self._threads.append(t)
        finally:
            threading.stack_size(old)

    def stop(self):
        self._stop.set()
        for s in self.listeners:
            try:
                s.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
            s.close()

    def _accept_loop(self, lsock: socket.socket):
        while not self._stop.is_set():
            try:
                conn, addr = lsock.accept()
            except OSError:
                if self._stop.is_set():
                    return
                time.sleep(0.01)  # e.g. EMFILE: do not spin
                continue
            peer = endpoint(addr[0], addr[1])
            if not self._slots.acquire(blocking=False):
                self.metrics.requests.labels("busy").inc()
                log.warning("rpc from %s: refused, %s: too many clients", peer, "busy")
                # no draining here: this thread must get back to accepting at once
                _send_quietly(conn, encode_error(ErrorCode.BUSY, "too many clients"), drain=False)
                conn.close()
                continue
            self._serve(conn, peer)

    def _serve(self, conn: socket.socket, peer: str):
        self.metrics.clients.inc()
        try:
            with conn:
                self._serve_frames(conn, peer)
        except Exception:  # noqa: BLE001 - one client's failure must never end the server
            log.exception("rpc from %s: unexpected error", peer)
            self.metrics.requests.labels("internal_error").inc()
        finally:
            self.metrics.clients.dec()
            self._slots.release()

    def _serve_frames(self, conn: socket.socket, peer: str):
        served = 0
        while not self._stop.is_set():
            deadline = time.monotonic() + self.read_timeout
            try:
                head = recv_exact(conn, HEADER.size, deadline, allow_eof=True)
                if head is None:
                    return  # clean close between frames
                ftype, length = decode_header(head, self.max_frame)
                if ftype != FrameType.REQUEST:
                    raise ProtocolError(ErrorCode.BAD_FRAME, f"expected a request, got {ftype.name}")
                payload = recv_exact(conn, length, deadline)
            except Deadline as exc:
                if exc.idle and served:
                    return  # keep-alive client went quiet after its answers: just hang up
                self.metrics.requests.labels("timeout").inc()
                log.warning("rpc from %s: request not complete within %.1fs", peer, self.read_timeout)
                _send_quietly(conn, encode_error(ErrorCode.TIMEOUT, "request not complete before the deadline"))
                return
            except ProtocolError as exc:
                result = "unsupported_version" if exc.code == ErrorCode.UNSUPPORTED_VERSION else "bad_frame"
                self.metrics.requests.labels(result).inc()
                log.warning("rpc from %s: %s", peer, exc)
                _send_quietly(conn, encode_error(exc.code, str(exc)))
                return  # cannot resynchronise a byte stream after a bad frame
            except ConnectionError:
                self.metrics.requests.labels("bad_frame").inc()
                log.warning("rpc from %s: connection closed mid-frame", peer)
                return
            conn.settimeout(self.read_timeout)
            served += 1
            try:
                conn.sendall(self.handler.handle(payload, peer))
            except OSError as exc:
                log.warning("rpc from %s: cannot send answer: %s", peer, exc)
                return


def _send_quietly(conn: socket.socket, data: bytes, drain: bool = True):
    """Send a last frame and half-close. Unread input would make close() send a
    RST that can destroy the frame in flight, so drain a little first (bounded)."""
    try:
        conn.settimeout(0.5 if drain else 0.05)
        conn.sendall(data)
        conn.shutdown(socket.SHUT_WR)
        if not drain:
            return
        conn.settimeout(0.2)
        for _ in range(16):
            if not conn.recv(4096):
                break
    except OSError:
        pass

