"""Delete closed connections once their grace period is over; close open entries whose socket vanished."""

from __future__ import annotations

import logging
import time

from callerid.inet import unmapped
from callerid.linux import procfs, sockdiag

from .bpfmap import Connections
from .cookiestore import CookieStore
from .layout import ConnKey, key_tuple
from .metrics import TracerMetrics
from .sockstore import SockStore

log = logging.getLogger("callerid.tracer.sweeper")


def verdict(closed_ns: int, birth_ns: int, now_ns: int, grace_ns: int) -> str:
    """What to do with one entry (pure):
    'delete' - closed longer ago than the grace period;
    'verify' - open, but older than the grace period: its close may have been
               missed (tracer down at the time), so check the socket still exists;
    'keep'   - otherwise."""
    if closed_ns:
        return "delete" if now_ns - closed_ns > grace_ns else "keep"
    return "verify" if now_ns - birth_ns > grace_ns else "keep"


# States in which a socket still holds its tuple for its owner (TIME_WAIT belongs to nobody).
ALIVE_STATES = sockdiag.ALL_STATES - {sockdiag.TCP_TIME_WAIT, sockdiag.TCP_CLOSE, sockdiag.TCP_LISTEN}


class Sweeper:
    def __init__(self, conns: Connections | SockStore | CookieStore, metrics: TracerMetrics, grace_seconds: float):
        self.conns = conns
        self.metrics = metrics
        self.grace_ns = int(grace_seconds * 1e9)

    def sweep_once(self) -> dict:
        start = time.perf_counter()
        now = procfs.boottime_ns()
        if hasattr(self.conns, "sweep"):   # the cookie backend: its own rules (tracer/cookiestore.py)
            return self._report(self.conns.sweep(now, self.grace_ns), start)
        deleted = stale = open_ = closed = 0
        # Each map on its own: a tuple reused within the grace is in both, and
        # expiring the old closed entry must not delete the new open one.
        expired = []
        for key, birth_ns, closed_ns in self.conns.closed.entry_times():
            if verdict(closed_ns, birth_ns, now, self.grace_ns) == "delete":
                expired.append(key)
            else:
                closed += 1
        deleted += self.conns.closed.delete_many(expired)
        stamped, to_verify = [], []
        # The sockstore keeps open connections on their sockets (conns.open is None):
        # they leave with the socket, nothing to verify.
        open_times = self.conns.open.entry_times() if self.conns.open is not None else ()
        for key, birth_ns, closed_ns in open_times:
            v = verdict(closed_ns, birth_ns, now, self.grace_ns)
            if v == "delete":  # stamped in place because the BPF move failed
                stamped.append(key)
                continue
            if v == "verify":
                to_verify.append(ConnKey.from_buffer_copy(key))
            open_ += 1
        if stamped:
            deleted += self.conns.open.delete_many(stamped)
        if to_verify:
            # One sock_diag dump answers for all candidates (no dump when nothing is old).
            # key_tuple gives the unmapped form already; a dual-stack socket reports v4-mapped.
            live = {(unmapped(s.src), s.sport, unmapped(s.dst), s.dport)
                    for s in sockdiag.list_tcp(states=ALIVE_STATES)}
            for key in to_verify:
                if key_tuple(key) in live:
                    continue
                owner = self.conns.open.lookup(key)
                if owner is None or owner.closed_ns:
                    continue  # closed or evicted since the walk
                owner.closed_ns = now
                if self.conns.update(key, owner):  # moves it to the closed map
                    stale += 1
                    open_ -= 1
                    closed += 1
        return self._report({"deleted": deleted, "stale": stale, "open": open_, "closed": closed}, start)

    def _report(self, out: dict, start: float) -> dict:
        m = self.metrics
        m.sweeps.inc()
        m.sweep_deleted.inc(out["deleted"])
        m.sweep_stale.inc(out["stale"])
        m.tracked.labels("open").set(out["open"])
        m.tracked.labels("closed").set(out["closed"])
        m.sweep_seconds.set(time.perf_counter() - start)
        if out["deleted"] or out["stale"]:
            log.debug("sweep: deleted %(deleted)d, marked %(stale)d stale, %(open)d open, %(closed)d closed", out)
        return out
