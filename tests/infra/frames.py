"""Reading callerid frames off a socket, for tests that stand on the far side of one (a fake
tracer, or a client of the real one)."""

from __future__ import annotations

import socket
import time

from callerid.protocol import HEADER, FrameType, decode_header
from callerid.sockio import recv_exact

IO_TIMEOUT = 5.0


def recv_frame(sock: socket.socket, timeout: float = IO_TIMEOUT) -> tuple[FrameType, bytes] | None:
    """(type, payload) of the next frame, or None if the peer closed before sending any of it.
    A close mid-frame or no whole frame within timeout raises (callerid.sockio)."""
    deadline = time.monotonic() + timeout
    head = recv_exact(sock, HEADER.size, deadline, allow_eof=True)
    if head is None:
        return None
    ftype, length = decode_header(head)
    return ftype, recv_exact(sock, length, deadline)


def recv_payload(sock: socket.socket, timeout: float = IO_TIMEOUT) -> bytes:
    """The payload of the next frame, which must come whole."""
    frame = recv_frame(sock, timeout)
    assert frame is not None, "the peer closed before sending a frame"
    return frame[1]
