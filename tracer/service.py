"""Turn one REQUEST payload into one reply frame: authenticate, look up, authorise, tag."""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from typing import Callable

from callerid import munge
from callerid.protocol import (
    Answer,
    ErrorCode,
    FrameType,
    ProtocolError,
    Status,
    decode_request,
    encode_error,
    encode_frame,
    seal_answer,
)

from .lookup import Outcome, Resolver
from .metrics import TracerMetrics

log = logging.getLogger("callerid.tracer.rpc")

_MUNGE_REASONS = {"cred_replayed": ("replayed", ErrorCode.REPLAYED)}
# Failures of our own munged or libmunge: the caller's credential may be fine.
_LOCAL_MUNGE_FAULTS = {"socket", "timeout", "library", "no_memory", "snafu"}


def may_see(requester_uid: int, owner_uid: int | None, slurm_uid: int | None) -> bool:
    """Slurm's rule: root, SlurmUser, or the uid that owns the connection's process."""
    if requester_uid == 0 or (slurm_uid is not None and requester_uid == slurm_uid):
        return True
    return owner_uid is not None and requester_uid == owner_uid


@dataclass
class RequestHandler:
    resolver: Resolver
    metrics: TracerMetrics
    slurm_uid: int | None
    munge_socket: str | None = None
    # injectable for unit tests of pure paths; the daemon uses libmunge
    decode: Callable = munge.decode

    def handle(self, payload: bytes, peer: str) -> bytes:
        start = time.perf_counter()
        result, frame = self._handle(payload, peer)
        self.metrics.requests.labels(result).inc()
        self.metrics.request_seconds.observe(time.perf_counter() - start)
        return frame

    def _handle(self, payload: bytes, peer: str) -> tuple[str, bytes]:
        try:
            cred = self.decode(payload, self.munge_socket)
        except munge.MungeError as exc:
            result, code = _MUNGE_REASONS.get(exc.reason, ("auth_failed", ErrorCode.AUTH_FAILED))
            if exc.reason in _LOCAL_MUNGE_FAULTS:
                result, code = "internal_error", ErrorCode.INTERNAL
            log.warning("rpc from %s: credential rejected (%s): %s", peer, exc.reason, exc)
            return result, encode_error(code, f"credential rejected: {exc.reason}")
        try:
            query, key = decode_request(cred.payload)
        except ProtocolError as exc:
            result = "unsupported_version" if exc.code == ErrorCode.UNSUPPORTED_VERSION else "bad_frame"
            log.warning("rpc from %s uid=%d: bad query: %s", peer, cred.uid, exc)
            return result, encode_error(exc.code, str(exc))

        outcome = self.resolver.lookup(query, lambda owner: may_see(cred.uid, owner, self.slurm_uid))
        self._count_lookup(outcome)
        answer, result = outcome.answer, "found" if outcome.answer.status == Status.FOUND else "not_found"
        hidden = answer.status == Status.FOUND and not may_see(cred.uid, outcome.owner_uid, self.slurm_uid)
        if outcome.denied or hidden:
            # Indistinguishable from "not found" for the caller; loud in the log, like Slurm.
            log.warning("rpc from %s: uid %d asked about %s owned by uid %s: denied (security)",
                        peer, cred.uid, query, outcome.owner_uid)
            answer, result = Answer(query, Status.NOT_FOUND, node=answer.node), "denied"
        else:
            log.info("rpc from %s uid=%d: %s -> %s job=%s pid=%s source=%s%s", peer, cred.uid, query,
                     answer.status.name.lower(), answer.job_id, answer.pid, answer.source.name.lower(),
                     f" ({outcome.detail})" if outcome.detail else "")
        try:
            sealed = seal_answer(answer, key)
        except ValueError as exc:  # a field out of its wire range (Answer.encode)
            log.error("cannot encode answer for %s: %s", query, exc)
            return "internal_error", encode_error(ErrorCode.INTERNAL, "tracer cannot encode this answer")
        return result, encode_frame(FrameType.ANSWER, sealed)

    def _count_lookup(self, outcome: Outcome):
        m = self.metrics
        if outcome.fallback_reason:
            m.fallbacks.labels(outcome.fallback_reason).inc()
        if outcome.scan:
            m.fallback_scans.labels(outcome.scan).inc()
        ans = outcome.answer
        m.lookups.labels(ans.source.name.lower() if ans.status == Status.FOUND else "none").inc()
        if ans.owner_exited:
            m.owner_exited.inc()
