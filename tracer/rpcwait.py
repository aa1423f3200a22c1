"""Who is waiting for their request on the RPC listener, by address: the I/O thread's
bookkeeping for the per-peer limit and its parked connections (tracer/server.py)."""

from __future__ import annotations

import collections

from .rpcconn import Conn


class WaitingTable:
    """Waiting connections (read, buffered) and parked ones (held unread past their
    address's limit), each oldest first, in total and per address."""

    def __init__(self, max_per_peer: int):
        self.max_per_peer = max_per_peer
        self.waiting: collections.OrderedDict[Conn, None] = collections.OrderedDict()
        self._per_peer: dict[str, collections.OrderedDict[Conn, None]] = {}
        self._parked: dict[str, collections.OrderedDict[Conn, None]] = {}
        self._room: set[str] = set()   # addresses whose slot freed while some of theirs are parked

    def peer_full(self, host: str) -> bool:
        return len(self._per_peer.get(host, ())) >= self.max_per_peer

    def add(self, conn: Conn):
        self.waiting[conn] = None
        self._per_peer.setdefault(conn.host, collections.OrderedDict())[conn] = None

    def remove(self, conn: Conn):
        if self.waiting.pop(conn, False) is False:
            return
        mine = self._per_peer[conn.host]
        del mine[conn]
        if not mine:
            del self._per_peer[conn.host]
        if conn.host in self._parked:
            self._room.add(conn.host)

    def park(self, conn: Conn):
        self._parked.setdefault(conn.host, collections.OrderedDict())[conn] = None

    def unpark(self, conn: Conn):
        mine = self._parked.get(conn.host)
        if mine is not None and mine.pop(conn, False) is not False and not mine:
            del self._parked[conn.host]

    def oldest_parked(self) -> Conn | None:
        """The longest-parked connection of the address parked first (eviction order)."""
        for mine in self._parked.values():
            return next(iter(mine))
        return None

    def promotable(self):
        """Parked connections that now fit their address's limit, oldest first; the caller
        moves each to waiting (add) before taking the next."""
        while self._room:
            host = self._room.pop()
            while host in self._parked and not self.peer_full(host):
                conn = next(iter(self._parked[host]))
                self.unpark(conn)
                yield conn

    def everyone(self) -> list[Conn]:
        return list(self.waiting) + [c for mine in self._parked.values() for c in mine]
