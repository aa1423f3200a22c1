"""The cookie backend's connection table: owners by socket cookie, found through sock_diag.

The BPF program (bpf/callerid_ck.bpf.c) keeps one record per outgoing TCP
connection of our network namespace, by the socket's cookie: in slot
cookie % slots of a direct-mapped array, or in the spill hash when that slot
was busy; stamped closed in place at the owner's close(). A question about a
tuple is one exact sock_diag request (O(1) in the kernel's hash, in the
tracer's own namespace), whose answer carries the socket's cookie, then one
slot read (and one hash lookup on a slot miss). Cookies are unique for the life
of the kernel and never reused, so a record can only ever name its own socket:
namespace-correct by construction, and no earlier connection's record can
answer for a later one with the same tuple.

What it cannot answer: a connection whose socket the kernel no longer has
(after TIME_WAIT, after a reset, or when the peer closed first and the owner's
close() ended it at once); those questions go to the /proc fallback, which
finds nothing either.
"""

from __future__ import annotations

import ctypes
import struct
from pathlib import Path

from callerid.linux import procfs, sockdiag

from .bpfmap import ConnMap
from .layout import ConnKey, Owner, Slot, key_tuple, make_key

# A socket in these states no longer belongs to its owner's live connection.
_GONE_STATES = frozenset({sockdiag.TCP_TIME_WAIT, sockdiag.TCP_CLOSE})
# Every state a connection's socket can be found in (LISTEN sockets are nobody's connection).
_ANY_CONNECTION = sockdiag.ALL_STATES - {sockdiag.TCP_LISTEN}
# A slot's cookie, birth_ns and closed_ns, the rest skipped (the sweeper's walk).
_SLOT_TIMES = struct.Struct(f"=Q{Slot.owner.offset - 8 + Owner.birth_ns.offset}xQQ"
                            f"{ctypes.sizeof(Slot) - Slot.owner.offset - Owner.birth_ns.offset - 16}x")


def sweep_verdict(closed_ns: int, birth_ns: int, now_ns: int, grace_ns: int, exists: bool) -> str:
    """What the sweeper does with one record (pure). exists: a socket with its cookie is
    still in the kernel (a cookie that is gone never comes back).
    'delete' - closed past the grace, or its socket is gone (nothing can find it any more);
    'delete' also for an open record whose socket has been gone longer than the grace
               (its close() was missed: the tracer was down, or a spill count was lost);
    'keep'   - otherwise (an open record whose socket is not hashed yet is young)."""
    if closed_ns:
        return "delete" if not exists or now_ns - closed_ns > grace_ns else "keep"
    return "keep" if exists or now_ns - birth_ns <= grace_ns else "delete"


class CookieStore:
    """Same questions as bpfmap.Connections, answered by cookie."""

    open = None   # no tuple-keyed map of open connections (the sweeper asks sweep() instead)
    namespace_exact = True   # every record found is our namespace's (see tracer/lookup.py)
    records_close = True     # the BPF program itself keeps the closed record (probes.self_test)

    def __init__(self, slots: ConnMap, spill: ConnMap, grace_seconds: float = 120.0, max_closed: int = 0):
        self.slots = slots
        self.spill = spill
        self.mask = slots.capacity - 1
        self.grace_ns = int(grace_seconds * 1e9)
        self.max_closed = max_closed
        self._expired_before = 0   # closed_ns at or below which slot records were counted expired

    @classmethod
    def open_pinned(cls, pin_dir: str | Path, grace_seconds: float = 120.0) -> CookieStore | None:
        slots = ConnMap.open_pinned(Path(pin_dir) / "ck_slots", key_type=ctypes.c_uint32, value_type=Slot)
        if slots is None:
            return None
        spill = ConnMap.open_pinned(Path(pin_dir) / "ck_spill", key_type=ctypes.c_uint64)
        if spill is None:
            slots.close()
            return None
        return cls(slots, spill, grace_seconds)

    @property
    def closed(self) -> ConnMap:
        """The spill hash (the map whose capacity is the backend's)."""
        return self.spill

    @property
    def capacity(self) -> int:
        return self.spill.capacity

    def capacity_by_state(self) -> dict[str, int]:
        return {"open": self.spill.capacity - self.max_closed, "closed": self.max_closed}

    def close(self):
        self.slots.close()
        self.spill.close()

    def record(self, cookie: int) -> Owner | None:
        """The record for a socket cookie: its slot's, else the spill hash's."""
        slot = self.slots.lookup(ctypes.c_uint32(cookie & self.mask))
        if slot is not None and slot.cookie == cookie:
            return Owner.from_buffer_copy(slot.owner)
        return self.spill.lookup(ctypes.c_uint64(cookie))

    def find(self, src_ip, src_port: int, dst_ip, dst_port: int) -> Owner | None:
        """The owner of the connection src -> dst in our namespace, from the record of the
        socket the kernel has for that tuple. A socket without a record (accepted, older
        than the probe, or not recorded: full) is not answered here."""
        for sock in sockdiag.find_tcp(src_ip, src_port, dst_ip, dst_port):
            owner = self.record(sock.cookie)
            if owner is None:
                return None
            now = procfs.boottime_ns()
            if owner.closed_ns and now - owner.closed_ns > self.grace_ns:
                return None   # past its grace: its slot is free for reuse already
            if not owner.closed_ns and (sock.state in _GONE_STATES or not sock.inode):
                owner.closed_ns = now   # closed while the probe was not attached: say closed
            return owner
        return None

    def _records(self) -> dict[int, Owner]:
        """cookie -> owner of every record not past its grace (forgotten ones are)."""
        out = {int(slot.cookie): Owner.from_buffer_copy(slot.owner) for _, slot in self.slots.items() if slot.cookie}
        out.update((int(k.value), v) for k, v in self.spill.items())
        now = procfs.boottime_ns()
        return {c: o for c, o in out.items() if not o.closed_ns or now - o.closed_ns <= self.grace_ns}

    def items(self):
        """(key, owner) of every record whose socket is in our namespace now (one
        sock_diag dump per family, one batched read of each map)."""
        records = self._records()
        if not records:
            return
        for sock in sockdiag.list_tcp(_ANY_CONNECTION):
            owner = records.get(sock.cookie)
            if owner is not None:
                yield make_key(sock.src, sock.sport, sock.dst, sock.dport), owner

    def record_existing(self, sock, pid: int, owner: Owner) -> bool:
        """Start-up reconcile: a socket the probe never saw, by the cookie sock_diag gave.
        Into the spill hash (its slot's spill count is the program's): its close() is then
        not seen by the program, and the sweeper stamps it closed once its socket is."""
        return bool(sock.cookie) and self.record(sock.cookie) is None and \
            self.spill.insert_if_absent(ctypes.c_uint64(sock.cookie), owner)

    def delete(self, key: ConnKey) -> bool:
        """Drop the record of the socket the kernel has now for key's tuple (tests, self-test)."""
        done = False
        for s in sockdiag.find_tcp(*key_tuple(key)):
            done |= self.forget(s.cookie)
        return done

    def forget(self, cookie: int) -> bool:
        """Drop the record of this cookie (a slot's becomes free: closed past the grace)."""
        if self.spill.delete(ctypes.c_uint64(cookie)):
            return True
        idx = ctypes.c_uint32(cookie & self.mask)
        slot = self.slots.lookup(idx)
        if slot is None or slot.cookie != cookie:
            return False
        # Closed past the grace is free to the program; the cookie stays (never reused).
        # Only this field changes meaning, and only a busy slot is written, which no
        # connect claims meanwhile.
        slot.owner.closed_ns = 1
        return self.slots.update(idx, slot)

    def lookup(self, key: ConnKey) -> Owner | None:
        """find() for a ConnKey (the self-test, tests)."""
        return self.find(*key_tuple(key))

    def sweep(self, now_ns: int, grace_ns: int) -> dict:
        """One pass over the slots and the spill hash. Closed records past the grace are
        free slots to the program already, and deleted from the spill hash; records whose
        socket is gone are freed; open records whose socket is closed (its close() was
        missed) are stamped closed now. One sock_diag dump tells which cookies exist."""
        out = {"deleted": 0, "stale": 0, "open": 0, "closed": 0}
        all_slots = self.slot_times(now_ns, grace_ns, include_expired=True)
        # A slot whose closed record passed its grace is free to the program already and is
        # never written here (a connect may be claiming it): counted deleted once, as it expires.
        cut = now_ns - grace_ns
        out["deleted"] += sum(1 for _, _, closed in all_slots if closed > 1 and self._expired_before < closed <= cut)
        self._expired_before = max(self._expired_before, cut)
        slot_times = [t for t in all_slots if not (t[2] and t[2] <= cut)]
        spill_times = [(ctypes.c_uint64.from_buffer_copy(k).value, b, c) for k, b, c in self.spill.entry_times()]
        if not slot_times and not spill_times:
            return out
        live = sockdiag.socket_cookies(_ANY_CONNECTION)   # cookie -> (state, inode)
        doomed = []
        for in_spill, times in ((False, slot_times), (True, spill_times)):
            for cookie, birth_ns, closed_ns in times:
                sock = live.get(cookie)
                v = sweep_verdict(closed_ns, birth_ns, now_ns, grace_ns, sock is not None)
                if v == "delete":
                    out["stale"] += not closed_ns
                    if in_spill:
                        doomed.append(bytes(ctypes.c_uint64(cookie)))
                    elif self.forget(cookie):
                        out["deleted"] += 1
                elif closed_ns:
                    out["closed"] += 1
                elif sock is None:
                    # young and no socket: a connect not hashed yet, or one reset while no
                    # program saw its close; either way the grace decides, on a later pass
                    out["open"] += 1
                elif sock[0] in _GONE_STATES or not sock[1]:
                    self._stamp(cookie, now_ns, in_spill)
                    out["stale"] += 1
                    out["closed"] += 1
                else:
                    out["open"] += 1
        out["deleted"] += self.spill.delete_many(doomed)
        return out

    def slot_times(self, now_ns: int, grace_ns: int, include_expired: bool = False) -> list[tuple[int, int, int]]:
        """(cookie, birth_ns, closed_ns) of every slot holding a record (open, or closed
        within the grace; with include_expired, closed past it too): one batched read,
        three integers unpacked per slot."""
        out = []
        for vbuf in self.slots.value_batches():
            for cookie, birth, closed in _SLOT_TIMES.iter_unpack(vbuf):
                if cookie and (include_expired or not (closed and now_ns - closed > grace_ns)):
                    out.append((cookie, birth, closed))
        return out

    def _stamp(self, cookie: int, now_ns: int, in_spill: bool) -> None:
        """An open record whose socket is closed: closed from now, for the grace."""
        if in_spill:
            key = ctypes.c_uint64(cookie)
            owner = self.spill.lookup(key)
            if owner is not None and not owner.closed_ns:
                owner.closed_ns = now_ns
                self.spill.update(key, owner)
            return
        idx = ctypes.c_uint32(cookie & self.mask)
        slot = self.slots.lookup(idx)
        if slot is not None and slot.cookie == cookie and not slot.owner.closed_ns:
            slot.owner.closed_ns = now_ns
            self.slots.update(idx, slot)
