#!/usr/bin/env python3
"""callerid RPC under load: 1, 16 and 256 concurrent well-behaved clients, with bounded abuse alongside.

    sudo .venv/bin/python3 bench/rpc_load_bench.py [--quick] [--out bench/results/rpc_load.json]

Against a real `callerid tracer` daemon (bench/daemon.py's Daemon: own config, pins,
ports, private munged, syslog sink), for two configurations — the default max_clients = 64
and max_clients raised to 512 — and for each client count, for a bounded time:
  good clients   call callerid.client.ask() for one connection opened after the probe
                 loaded (expected answer FOUND from the map); at most 16 client processes,
                 more clients are threads inside them (256 = 16 x 16). A BUSY answer is
                 counted and retried after 10 ms; any other error is an error.
                 Closed loop: each client asks again as soon as it has its answer (the
                 server's saturation throughput; latency is then queueing, by Little's
                 law p50 ~ clients / throughput). Paced: each client asks R times a
                 second on a fixed schedule with a random phase, and latency counts from
                 the scheduled time, so a late start is not hidden (no coordinated
                 omission) — what 16 nodes' adopters asking at once during a login storm see.
  slow clients   4 threads, each holding a connection that sent 3 bytes of a header and
                 then nothing (the daemon's read deadline, 2 s, drops it; the thread then
                 reconnects), so 4 of the daemon's client slots are always taken.
  malformed      1 thread sending a stream of bad frames (wrong magic, oversized length,
                 garbage credential), 50 per second, each on a new connection.
A cell "16 clients, no abuse" is the reference. Reported per cell: good requests/s, p50,
p99, max, BUSY count, other errors, what the abusers got back, and the daemon's metrics.
Everything started is stopped by pid in a finally block; every loop is bounded.
"""

from __future__ import annotations

import argparse
import datetime
import os
import shutil
import socket
import struct
import sys
import threading
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from bench.common import (  # noqa: E402
    Cleanup,
    ask_loop,
    background_busy,
    connected_pair,
    fork_workers,
    listener,
    log,
    machine_info,
    proc_cpu_s,
    run_cleanly,
    summary,
    write_results,
)
from bench.daemon import Daemon, SyslogSink  # noqa: E402
from callerid.client import RpcError  # noqa: E402
from callerid.protocol import HEADER, MAGIC, VERSION, FrameType, Query  # noqa: E402

MAX_PROCS = 16
# (clients, abuse alongside, requests/s per client or None for back to back)
CELLS = ((16, False, None), (1, True, None), (16, True, None), (256, True, None),
         (16, True, 10), (16, True, 25))
GARBAGE = b"MUNGE:garbage-that-is-not-a-credential:"


def listen_overflows() -> int:
    """TcpExt ListenOverflows of this network namespace (SYNs dropped: accept queue full)."""
    with open("/proc/net/netstat") as f:
        lines = f.read().splitlines()
    for head, vals in zip(lines[::2], lines[1::2], strict=False):
        if head.startswith("TcpExt:"):
            return int(dict(zip(head.split()[1:], vals.split()[1:], strict=True))["ListenOverflows"])
    return 0


def _good_proc(port, munge_socket, qargs, threads, duration, rate, go, outq):
    q = Query.make(*qargs)
    res = []

    def run():
        res.append(ask_loop(port, munge_socket, q, duration, 100000, rate))

    go.wait(30)
    ts = [threading.Thread(target=run) for _ in range(threads)]
    t0 = time.monotonic()
    for t in ts:
        t.start()
    for t in ts:
        t.join(duration + 30)
    wall = time.monotonic() - t0
    lat = [x for r in res for x in r[0]]
    errs = {}
    for r in res:
        for k, v in r[2].items():
            errs[k] = errs.get(k, 0) + v
    outq.put({"lat": lat, "busy": sum(r[1] for r in res), "errors": errs, "wall": wall})


class Abuse:
    """Slow clients and a malformed-frame stream, in threads of the bench, bounded in time."""

    def __init__(self, port: int, duration: float, slow: int = 4, bad_per_s: float = 50):
        self.port, self.duration, self.slow, self.bad_per_s = port, duration, slow, bad_per_s
        self.stats = {"slow_connections": 0, "slow_dropped_by_server": 0, "slow_got": {},
                      "bad_sent": 0, "bad_replies": {}, "bad_connect_errors": 0}
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self.threads = [threading.Thread(target=self._slow, daemon=True) for _ in range(slow)]
        self.threads.append(threading.Thread(target=self._bad, daemon=True))

    def _count(self, d, k):
        with self._lock:
            self.stats[d][k] = self.stats[d].get(k, 0) + 1

    @staticmethod
    def _reply_kind(s: socket.socket) -> str:
        try:
            head = s.recv(HEADER.size)
        except TimeoutError:
            return "no reply"
        except OSError as exc:
            return type(exc).__name__
        if len(head) < HEADER.size:
            return "closed"
        _, _, ftype, _ = HEADER.unpack(head)
        return "error frame" if ftype == FrameType.ERROR else f"frame type {ftype}"

    def _slow(self):
        end = time.monotonic() + self.duration
        while not self._stop.is_set() and time.monotonic() < end:
            try:
                s = socket.create_connection(("127.0.0.1", self.port), timeout=5)
            except OSError:
                time.sleep(0.1)
                continue
            with s:
                with self._lock:
                    self.stats["slow_connections"] += 1
                s.sendall(MAGIC + bytes([VERSION]))  # 3 bytes of an 8-byte header, then nothing
                s.settimeout(max(0.1, end - time.monotonic()))
                kind = self._reply_kind(s)
                self._count("slow_got", kind)
                if kind != "no reply":
                    with self._lock:
                        self.stats["slow_dropped_by_server"] += 1

    def _bad(self):
        frames = [b"XX" + bytes([VERSION, 1]) + struct.pack("!I", 10) + b"0123456789",     # wrong magic
                  HEADER.pack(MAGIC, VERSION, FrameType.REQUEST, 1 << 30),                   # oversized length
                  HEADER.pack(MAGIC, VERSION, FrameType.REQUEST, len(GARBAGE)) + GARBAGE,    # not a credential
                  HEADER.pack(MAGIC, 99, FrameType.REQUEST, 4) + b"abcd"]                     # unknown version
        end = time.monotonic() + self.duration
        i = 0
        while not self._stop.is_set() and time.monotonic() < end and i < 100000:
            t0 = time.monotonic()
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=2) as s:
                    s.sendall(frames[i % len(frames)])
                    s.settimeout(1)
                    self._count("bad_replies", self._reply_kind(s))
            except OSError:
                with self._lock:
                    self.stats["bad_connect_errors"] += 1
            i += 1
            with self._lock:
                self.stats["bad_sent"] += 1
            time.sleep(max(0.0, 1 / self.bad_per_s - (time.monotonic() - t0)))

    def start(self):
        for t in self.threads:
            t.start()

    def stop(self):
        self._stop.set()
        for t in self.threads:
            t.join(5)


def run_cell(daemon: Daemon, clients: int, duration: float, qargs, abuse: bool, cleanup: Cleanup, munged_pid: int,
             rate: float | None = None) -> dict:
    """One cell; rate = requests per second per client (paced), None = back to back."""
    procs_n = min(MAX_PROCS, clients)
    per = [clients // procs_n + (1 if i < clients % procs_n else 0) for i in range(procs_n)]
    go, outq, reap = fork_workers(_good_proc, [(daemon.port, daemon.munge_socket, qargs, t, duration, rate)
                                               for t in per], cleanup, f"{clients} RPC clients")
    ab = Abuse(daemon.port, duration) if abuse else None
    try:
        time.sleep(0.3)
        m0 = daemon.metrics()
        cpu0 = (proc_cpu_s(daemon.proc.pid), proc_cpu_s(munged_pid))
        lo0 = listen_overflows()
        if ab:
            ab.start()
            time.sleep(0.2)  # slow clients hold their slots before the good ones start
        go.set()
        results = [outq.get(timeout=duration + 90) for _ in per]
        cpu1 = (proc_cpu_s(daemon.proc.pid), proc_cpu_s(munged_pid))
        lo1 = listen_overflows()
        if ab:
            ab.stop()
        m1 = daemon.metrics()
    finally:
        cleanup.run_one(reap)
        if ab:
            ab.stop()
    lat = [x for r in results for x in r["lat"]]
    errs = {}
    for r in results:
        for k, v in r["errors"].items():
            errs[k] = errs.get(k, 0) + v
    wall = max(r["wall"] for r in results)
    out = summary(lat)
    out.update({"clients": clients, "abuse": abuse, "rate_per_client": rate, "duration_s": wall, "requests": len(lat),
                "req_per_s": len(lat) / wall if wall else 0, "busy": sum(r["busy"] for r in results),
                "errors": errs, "errors_total": sum(errs.values()),
                "daemon_cpu_ms_per_request": (cpu1[0] - cpu0[0]) * 1000 / max(1, len(lat)),
                "munged_cpu_ms_per_request": (cpu1[1] - cpu0[1]) * 1000 / max(1, len(lat)),
                "daemon_alive": daemon.proc.poll() is None, "listen_overflows": lo1 - lo0,
                "daemon_results": {k.split("result=")[1].rstrip("}"): m1.get(k, 0) - m0.get(k, 0)
                                   for k in m1 if k.startswith("callerid_rpc_requests_total{")
                                   and m1.get(k, 0) - m0.get(k, 0)}})
    if ab:
        out["abuse_stats"] = ab.stats
    # A reference answer right after the cell: the server still answers at once.
    t0 = time.perf_counter_ns()
    try:
        a = daemon.ask(Query.make(*qargs))
        out["after_cell_answer"] = {"status": a.status.name, "ms": (time.perf_counter_ns() - t0) / 1e6}
    except RpcError as exc:
        out["after_cell_answer"] = {"status": f"error: {exc}", "ms": (time.perf_counter_ns() - t0) / 1e6}
    return out


def fmt_ms(ns) -> str:
    return f"{ns / 1e6:.2f}" if ns is not None else "-"


def render(r: dict) -> str:
    m = r["machine"]
    L = [f"callerid RPC under load, {r['mode']} mode, {r['date']}",
         (f"machine: {m.get('os')}, kernel {m.get('kernel')}, {m.get('cpu')}, {m.get('cores')} cores; "
          f"Python {m.get('python')}, {m.get('munge')}"),
         (f"background CPU busy (others' work) at start / end: {r['background_cpu_busy_start'] * 100:.0f}% / "
         f"{r.get('background_cpu_busy_end', 0) * 100:.0f}%; {r['duration_s']:.0f} s per cell"), "",
         (f"{'max_clients':>11} {'clients':>7} {'paced':>9} {'abuse':>5} {'req/s':>7} {'p50 ms':>8} {'p99 ms':>8} "
          f"{'max ms':>8} "
         f"{'BUSY':>6} {'errors':>6} {'SYN drops':>9} {'daemon CPU/req':>14}  after-cell answer")]
    for cfg in r["configs"]:
        for c in cfg["cells"]:
            paced = f"{c['rate_per_client']:g}/s each" if c.get("rate_per_client") else "no"
            abuse = "yes" if c["abuse"] else "no"
            L.append(f"{cfg['max_clients']:>11} {c['clients']:>7} {paced:>9} {abuse:>5} {c['req_per_s']:>7.0f} "
                     f"{fmt_ms(c.get('p50_ns')):>8} {fmt_ms(c.get('p99_ns')):>8} {fmt_ms(c.get('max_ns')):>8} "
                     f"{c['busy']:>6} {c['errors_total']:>6} {c['listen_overflows']:>9} "
                     f"{c['daemon_cpu_ms_per_request']:>11.2f} ms  "
                     f"{c['after_cell_answer']['status']} {c['after_cell_answer']['ms']:.1f} ms")
    L.append("")
    L.append("abuse seen per cell (slow = 4 half-header holders; bad = malformed frames at 50/s):")
    for cfg in r["configs"]:
        for c in cfg["cells"]:
            a = c.get("abuse_stats")
            if not a:
                continue
            L.append(f"  max_clients {cfg['max_clients']}, {c['clients']} clients: "
                     f"slow connections {a['slow_connections']} "
                     f"(server answered/dropped {a['slow_dropped_by_server']}: {a['slow_got']}); "
                     f"bad frames {a['bad_sent']} -> {a['bad_replies']}, "
                     f"connect errors {a['bad_connect_errors']}; daemon counted {c['daemon_results']}"
                     + ("" if not c["errors"] else f"; good-client errors {c['errors']}"))
    return "\n".join(L)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true", help="3 s per cell instead of 6")
    ap.add_argument("--out", default=str(REPO / "bench" / "results" / "rpc_load.json"))
    args = ap.parse_args()
    if os.geteuid() != 0:
        sys.exit("rpc_load_bench: run as root (BPF, munged)")
    dur = 3.0 if args.quick else 6.0

    r = {"mode": "quick" if args.quick else "full", "duration_s": dur,
         "date": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"), "machine": machine_info(),
         "command": "sudo .venv/bin/python3 bench/rpc_load_bench.py" + (" --quick" if args.quick else "")}

    def body(cleanup: Cleanup) -> int:
        r["background_cpu_busy_start"] = background_busy()
        Daemon.sink = SyslogSink(cleanup)
        from tests.infra.munged import start as start_munged
        md = start_munged()
        cleanup.push(lambda: shutil.rmtree(md.dir, ignore_errors=True), "munged dir")
        cleanup.push(md.stop, f"munged pid {md.pid}")
        r["configs"] = []
        for max_clients in (64, 512):
            d = Daemon(md.socket, cleanup, f"load{max_clients}")
            if max_clients != 64:
                with open(d.config, "a") as f:  # [tracer] is the config's last section
                    f.write(f"max_clients = {max_clients}\n")
            d.start()
            d.wait_serving()
            lsock = listener()
            cleanup.push(lsock.close, "target listener")
            c, s = connected_pair(lsock)  # opened after the probe loaded: in the map
            cleanup.push(c.close, "target client")
            cleanup.push(s.close, "target server")
            qargs = ("127.0.0.1", c.getsockname()[1], "127.0.0.1", lsock.getsockname()[1])
            cfg = {"max_clients": max_clients, "cells": []}
            for clients, abuse, rate in CELLS:
                cell = run_cell(d, clients, dur, qargs, abuse, cleanup, md.pid, rate)
                cfg["cells"].append(cell)
                log(f"max_clients {max_clients}, {clients} clients, rate {rate}, abuse {abuse}: "
                    f"{cell['req_per_s']:.0f} req/s, p50 {fmt_ms(cell.get('p50_ns'))} ms, "
                    f"p99 {fmt_ms(cell.get('p99_ns'))} ms, busy {cell['busy']}, "
                    f"errors {cell['errors']}")
            cfg["daemon_logging_errors"] = d.logging_errors()
            r["configs"].append(cfg)
            for x in (c, s, lsock):
                cleanup.run_one(x.close)
            d.shutdown()
        r["background_cpu_busy_end"] = background_busy()
        write_results(r, args.out, render)
        return 0

    return run_cleanly(body)


if __name__ == "__main__":
    sys.exit(main())
