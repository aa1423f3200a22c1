"""The cookie backend's connection table: owners keyed by socket cookie, found through sock_diag.

The BPF program (bpf/callerid_ck.bpf.c) keeps one record per outgoing TCP
connection of our network namespace, keyed by the socket's cookie, stamped
closed in place at the owner's close(). A question about a tuple is one exact
sock_diag request (O(1) in the kernel's hash, in the tracer's own namespace),
whose answer carries the socket's cookie, then one map lookup by that cookie.
Cookies are unique for the life of the kernel and never reused, so a record can
only ever name its own socket: namespace-correct by construction, and no
earlier connection's record can answer for a later one with the same tuple.

What it cannot answer: a connection whose socket the kernel no longer has
(after TIME_WAIT, after a reset, or when the peer closed first and the owner's
close() ended it at once); those questions go to the /proc fallback, which
finds nothing either.
"""

from __future__ import annotations

import ctypes
from pathlib import Path

from callerid.linux import procfs, sockdiag

from .bpfmap import ConnMap
from .layout import ConnKey, Owner, key_tuple, make_key

# A socket in these states no longer belongs to its owner's live connection.
_GONE_STATES = frozenset({sockdiag.TCP_TIME_WAIT, sockdiag.TCP_CLOSE})
# Every state a connection's socket can be found in (LISTEN sockets are nobody's connection).
_ANY_CONNECTION = sockdiag.ALL_STATES - {sockdiag.TCP_LISTEN}


def _cookie(value: int) -> ctypes.c_uint64:
    return ctypes.c_uint64(value)


def sweep_verdict(closed_ns: int, birth_ns: int, now_ns: int, grace_ns: int, exists: bool) -> str:
    """What the sweeper does with one record (pure). exists: a socket with its cookie is
    still in the kernel (a cookie that is gone never comes back).
    'delete' - closed past the grace, or its socket is gone (nothing can find it any more);
    'stamp'  - open, but its socket is closed or gone: its close() was missed (tracer down);
               kept as closed for the grace when the socket still exists, else deleted;
    'keep'   - otherwise."""
    if closed_ns:
        return "delete" if not exists or now_ns - closed_ns > grace_ns else "keep"
    return "keep" if exists or now_ns - birth_ns <= grace_ns else "delete"


class CookieStore:
    """Same questions as bpfmap.Connections, answered by cookie."""

    open = None   # no tuple-keyed map of open connections (the sweeper asks sweep() instead)
    namespace_exact = True   # every record found is our namespace's (see tracer/lookup.py)
    records_close = True     # the BPF program itself keeps the closed record (probes.self_test)

    def __init__(self, owners: ConnMap, max_closed: int = 0):
        self.owners = owners
        self.max_closed = max_closed

    @classmethod
    def open_pinned(cls, pin_dir: str | Path) -> CookieStore | None:
        owners = ConnMap.open_pinned(Path(pin_dir) / "ck_owners", key_type=ctypes.c_uint64)
        return None if owners is None else cls(owners)

    @property
    def closed(self) -> ConnMap:
        """The one map (open and closed records together)."""
        return self.owners

    @property
    def capacity(self) -> int:
        return self.owners.capacity

    def capacity_by_state(self) -> dict[str, int]:
        return {"open": self.owners.capacity - self.max_closed, "closed": self.max_closed}

    def close(self):
        self.owners.close()

    def find(self, src_ip, src_port: int, dst_ip, dst_port: int) -> Owner | None:
        """The owner of the connection src -> dst in our namespace, from the record of the
        socket the kernel has for that tuple. A socket without a record (accepted, older
        than the probe, or its record was full/over share) is not answered here."""
        for sock in sockdiag.find_tcp(src_ip, src_port, dst_ip, dst_port):
            owner = self.owners.lookup(_cookie(sock.cookie))
            if owner is None:
                return None
            if not owner.closed_ns and (sock.state in _GONE_STATES or not sock.inode):
                # closed while the probe was not attached: say closed, with the time we know
                owner.closed_ns = procfs.boottime_ns()
            return owner
        return None

    def items(self):
        """(key, owner) of every record whose socket is in our namespace now (one
        sock_diag dump per family, one batched read of the map)."""
        records = {int(k.value): v for k, v in self.owners.items()}
        if not records:
            return
        for sock in sockdiag.list_tcp(_ANY_CONNECTION):
            owner = records.get(sock.cookie)
            if owner is not None:
                yield make_key(sock.src, sock.sport, sock.dst, sock.dport), owner

    def record_existing(self, sock, pid: int, owner: Owner) -> bool:
        """Start-up reconcile: a socket the probe never saw, by the cookie sock_diag gave."""
        return bool(sock.cookie) and self.owners.insert_if_absent(_cookie(sock.cookie), owner)

    def delete(self, key: ConnKey) -> bool:
        """Drop the record of the socket the kernel has now for key's tuple."""
        socks = sockdiag.find_tcp(*key_tuple(key))
        return any(self.owners.delete(_cookie(s.cookie)) for s in socks)

    def lookup(self, key: ConnKey) -> Owner | None:
        """find() for a ConnKey (the self-test, tests)."""
        return self.find(*key_tuple(key))

    def sweep(self, now_ns: int, grace_ns: int) -> dict:
        """One pass: delete closed records past the grace or whose socket is gone, and
        records whose close() was missed (tracer down at the time) once their socket is gone.
        One sock_diag dump (only when there are records) tells which cookies still exist."""
        times = list(self.owners.entry_times())
        out = {"deleted": 0, "stale": 0, "open": 0, "closed": 0}
        if not times:
            return out
        live = {s.cookie: s for s in sockdiag.list_tcp(_ANY_CONNECTION)}
        doomed = []
        for key, birth_ns, closed_ns in times:
            sock = live.get(ctypes.c_uint64.from_buffer_copy(key).value)
            exists = sock is not None
            v = sweep_verdict(closed_ns, birth_ns, now_ns, grace_ns, exists)
            if v == "delete":
                doomed.append(key)
                if not closed_ns:
                    out["stale"] += 1
            elif closed_ns:
                out["closed"] += 1
            elif sock.state in _GONE_STATES or not sock.inode:
                owner = self.owners.lookup(ctypes.c_uint64.from_buffer_copy(key))
                if owner is not None and not owner.closed_ns:
                    owner.closed_ns = now_ns   # its close() was missed: closed from now, for the grace
                    self.owners.update(ctypes.c_uint64.from_buffer_copy(key), owner)
                    out["stale"] += 1
                out["closed"] += 1
            else:
                out["open"] += 1
        out["deleted"] = self.owners.delete_many(doomed)
        return out
