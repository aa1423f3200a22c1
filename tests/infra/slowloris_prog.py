"""An unauthenticated attacker for tests and benches: hold COUNT connections to HOST:PORT
for SECONDS, half of them idle, half drip-feeding a MUNGE-shaped request one byte a second;
reopen each one the server closes. Prints one JSON line of what happened.

    slowloris_prog.py HOST PORT COUNT SECONDS

Stdlib only; run as a non-root user. Bounded in connections and time.
"""

from __future__ import annotations

import json
import resource
import selectors
import socket
import struct
import sys
import time

from callerid.protocol import VERSION

HEADER = struct.pack("!2sBBI", b"CI", VERSION, 1, 4000)   # a request header promising 4000 bytes


def main() -> int:
    host, port, count, seconds = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), float(sys.argv[4])
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (min(hard, max(soft, count + 64)), hard))
    sel = selectors.DefaultSelector()
    stats = {"opened": 0, "closed_by_server": 0, "error_frames": 0, "connect_errors": 0, "peak_held": 0,
             "drip_bytes": 0}
    drip_next: dict[socket.socket, float] = {}

    def open_one(i: int):
        s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        s.setblocking(False)
        try:
            s.connect_ex((host, port))
        except OSError:
            stats["connect_errors"] += 1
            s.close()
            return
        stats["opened"] += 1
        sel.register(s, selectors.EVENT_READ, i)
        if i % 2:
            drip_next[s] = time.monotonic() + 0.05

    for i in range(count):
        open_one(i)
    sent: dict[socket.socket, int] = {}
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        stats["peak_held"] = max(stats["peak_held"], len(sel.get_map()))
        for key, _ in sel.select(0.05):
            s, i = key.fileobj, key.data
            try:
                data = s.recv(4096)
            except OSError:
                data = b""
            if data[:2] == b"CI":
                stats["error_frames"] += 1
            stats["closed_by_server"] += 1
            sel.unregister(s)
            drip_next.pop(s, None)
            sent.pop(s, None)
            s.close()
            open_one(i)
        now = time.monotonic()
        for s, due in list(drip_next.items()):
            if due > now:
                continue
            n = sent.get(s, 0)
            chunk = HEADER + b"MUNGE:" if n == 0 else b"A"
            try:
                s.send(chunk)
                stats["drip_bytes"] += len(chunk)
            except OSError:
                pass
            sent[s] = n + 1
            drip_next[s] = now + 1.0
    for key in list(sel.get_map().values()):
        key.fileobj.close()
    print(json.dumps(stats), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
