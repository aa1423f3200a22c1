"""One RPC connection's state, and the listening socket: what the I/O thread and the
workers of tracer/server.py hand each other."""

from __future__ import annotations

import socket

from callerid.inet import endpoint

_READ_CHUNK = 65536

# Who owns a connection. READING: the I/O thread (registered in the selector).
# QUEUED: the work queue. WORKING: a worker, until it answers or the deadline passes,
# whichever claims it first. REPLYING: the worker that claimed it. LINGERING: the I/O
# thread, discarding input after a last frame. CLOSED: nobody.
# PARKED: accepted past its peer's limit of waiting connections: the I/O thread holds only
# its descriptor (not read, not in the selector) until a slot of its peer frees or its
# header deadline passes.
READING, QUEUED, WORKING, REPLYING, LINGERING, CLOSED, PARKED = range(7)


def bind_listener(host: str, port: int, backlog: int = socket.SOMAXCONN,
                  defer_accept: int = 1) -> socket.socket:
    """Listen on host:port; '::' is dual stack (IPv4 clients arrive v4-mapped).

    A long accept queue costs nothing and turns a burst of connects into prompt
    answers, where a full one drops SYNs (clients retry after 1 s, 3 s).

    TCP_DEFER_ACCEPT (seconds): the kernel hands over a connection only once its first
    data has arrived, or after that long. Every client sends its request right after
    connecting, so honest callers are not delayed; a connection that sends nothing stays
    a half-open entry in the kernel's SYN queue and costs the daemon nothing for that
    long, instead of a wake-up, an accept, a slot and a close it would reopen at once."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    s = socket.socket(family, socket.SOCK_STREAM)
    s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    if family == socket.AF_INET6 and host in ("::", ""):
        s.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
    if defer_accept:
        s.setsockopt(socket.IPPROTO_TCP, socket.TCP_DEFER_ACCEPT, defer_accept)
    s.bind((host, port))
    s.listen(backlog)
    return s


class Conn:
    __slots__ = ("sock", "addr", "_peer", "host", "buf", "need", "wait_start", "deadline", "served", "state", "gen",
                 "payload")

    def __init__(self, sock: socket.socket, addr: tuple):
        self.sock = sock
        self.addr = addr
        self._peer = ""
        self.host = addr[0]       # the peer address without port: the per-peer limit's key
        self.buf = bytearray()
        self.need = 0             # whole frame length once the header is in, else 0
        self.wait_start = 0.0
        self.deadline = 0.0
        self.served = 0
        self.state = READING
        self.gen = 0              # bumped at every timer change; stale timer entries are skipped
        self.payload = b""

    @property
    def peer(self) -> str:
        """host:port for the log, made only when something is logged (most connections
        of a flood never are)."""
        if not self._peer:
            self._peer = endpoint(self.addr[0], self.addr[1])
        return self._peer


def drain(sock: socket.socket) -> bool:
    """Read and discard what is there; False at EOF."""
    try:
        while True:
            chunk = sock.recv(_READ_CHUNK)
            if not chunk:
                return False
    except (BlockingIOError, InterruptedError):
        return True
    except OSError:
        return False


def send_now(conn: Conn, frame: bytes) -> bool:
    """Never blocks the I/O thread: an error frame fits any socket's send buffer."""
    try:
        conn.sock.send(frame)
        conn.sock.shutdown(socket.SHUT_WR)
        return True
    except OSError:
        return False
