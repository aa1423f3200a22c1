"""callerid RPC client: ask a node's tracer who opened a connection, and check the answer's tag."""

from __future__ import annotations

import os
import random
import socket
import time

from . import munge
from .protocol import (
    ANSWER_KEY_SIZE,
    HEADER,
    Answer,
    ErrorCode,
    FrameType,
    ProtocolError,
    Query,
    decode_error,
    decode_header,
    encode_frame,
    encode_request,
    open_answer,
)
from .sockio import ClosedMidFrame, recv_exact

# RpcError.reason: stable snake_case, used as a metric label and in dashboards and alerts.
RPC_ERROR_REASONS = ("connect", "timeout", "refused", "bad_reply", "auth", "munge")


class RpcError(Exception):
    """The question could not be answered: unreachable, timeout, refused or a bad reply."""

    def __init__(self, reason: str, message: str):
        super().__init__(message)
        self.reason = reason  # one of RPC_ERROR_REASONS


TRACER_UID = 0  # the tracer loads BPF programs: it runs as root


BUSY_RETRY_PAUSE = (0.005, 0.05)   # seconds, random within: callers retrying together spread out


def ask(server: tuple[str, int], query: Query, timeout: float = 2.0, munge_socket: str | None = None) -> Answer:
    """One request, one answer, all within `timeout` seconds — munged, connect, reads and
    any retries included.

    The request carries a fresh random key, encrypted in a credential only root can
    decode; an answer counts only if it is tagged with that key. A BUSY refusal comes
    before the tracer decodes anything, so the same credential is sent again after a
    short random pause, as long as the deadline allows.
    """
    deadline = time.monotonic() + timeout
    key = os.urandom(ANSWER_KEY_SIZE)
    try:
        cred = munge.encode(encode_request(query, key), munge_socket, secret_for_uid=TRACER_UID,
                            timeout=deadline - time.monotonic())
    except munge.MungeError as exc:
        raise RpcError("munge", f"cannot sign the request: {exc}") from exc
    frame = encode_frame(FrameType.REQUEST, cred)
    busy = ""   # the server's last BUSY message, once it has said so
    while True:
        try:
            ftype, payload = _exchange(server, frame, deadline, timeout)
        except RpcError as exc:
            if not busy or exc.reason != "timeout":
                raise
            # the deadline ran out in a retry: the server's last word was BUSY, say that
            raise RpcError("refused", f"{server[0]}:{server[1]} refused the request: busy: {busy} "
                                      f"(no answer to the retry within {timeout:.1f}s)") from exc
        if ftype != FrameType.ERROR:
            break
        code, msg = decode_error(payload)
        pause = random.uniform(*BUSY_RETRY_PAUSE)
        if code != ErrorCode.BUSY or time.monotonic() + pause >= deadline:
            raise RpcError("refused", f"{server[0]}:{server[1]} refused the request: {code.name.lower()}: {msg}")
        busy = msg or "busy"
        time.sleep(pause)
    host, port = server
    if ftype != FrameType.ANSWER:
        raise RpcError("bad_reply", f"unexpected {ftype.name} frame from {host}:{port}")
    try:
        answer = open_answer(payload, key)
    except ProtocolError as exc:
        reason = "auth" if exc.code == ErrorCode.AUTH_FAILED else "bad_reply"
        raise RpcError(reason, f"bad answer from {host}:{port}: {exc}") from exc
    if answer.query != query:
        raise RpcError("bad_reply", f"answer from {host}:{port} is for another connection ({answer.query})")
    return answer


def _exchange(server: tuple[str, int], frame: bytes, deadline: float, timeout: float) -> tuple[FrameType, bytes]:
    """Connect, send one frame, read one frame, close; all before deadline."""
    host, port = server
    left = deadline - time.monotonic()
    if left <= 0:
        raise RpcError("timeout", f"no answer from {host}:{port} within {timeout:.1f}s")
    try:
        sock = socket.create_connection((host, port), timeout=left)
    except socket.timeout as exc:
        raise RpcError("timeout", f"connect to {host}:{port} timed out") from exc
    except OSError as exc:
        raise RpcError("connect", f"cannot connect to {host}:{port}: {exc.strerror or exc}") from exc
    with sock:
        try:
            sock.sendall(frame)
            head = recv_exact(sock, HEADER.size, deadline)
            ftype, length = decode_header(head)
            return ftype, recv_exact(sock, length, deadline)
        except socket.timeout as exc:
            raise RpcError("timeout", f"no answer from {host}:{port} within {timeout:.1f}s") from exc
        except (ProtocolError, ClosedMidFrame) as exc:
            raise RpcError("bad_reply", f"bad reply from {host}:{port}: {exc}") from exc
        except OSError as exc:
            raise RpcError("connect", f"connection to {host}:{port} failed: {exc}") from exc

