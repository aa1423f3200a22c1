"""Reading exactly n bytes from a blocking socket before a deadline: how the RPC client
and server read a frame's header and payload."""

from __future__ import annotations

import socket
import time


class Deadline(socket.timeout):
    """The deadline passed. `idle`: nothing of the frame had arrived and EOF was allowed,
    i.e. a keep-alive peer simply said nothing more."""

    def __init__(self, idle: bool):
        super().__init__("idle" if idle else "partial")
        self.idle = idle


class ClosedMidFrame(ConnectionError):
    """The peer closed the connection before the n bytes arrived."""


def recv_exact(sock: socket.socket, n: int, deadline: float, allow_eof: bool = False) -> bytes | None:
    """n bytes, or None if allow_eof and the peer closed before sending any of them.
    `deadline` is a time.monotonic() value; the socket's timeout is changed."""
    buf = bytearray()
    while len(buf) < n:
        left = deadline - time.monotonic()
        if left <= 0:
            raise Deadline(idle=allow_eof and not buf)
        sock.settimeout(left)
        try:
            chunk = sock.recv(n - len(buf))
        except socket.timeout:
            continue  # the loop raises Deadline
        if not chunk:
            if allow_eof and not buf:
                return None
            raise ClosedMidFrame(f"connection closed after {len(buf)} of {n} bytes")
        buf += chunk
    return bytes(buf)
