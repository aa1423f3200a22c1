"""Bench phase 4: RPC throughput and latency with concurrent client processes, each asking back
to back, with the CPU each party spends per request."""

from __future__ import annotations

import os
import time

from bench.common import Cleanup, ask_loop, fork_workers, machine_busy, proc_cpu_s, summary
from bench.daemon import Daemon
from callerid.protocol import Query


def _rpc_worker(port, munge_socket, qargs, duration, max_n, go, outq):
    go.wait(30)
    start = time.monotonic()
    lat, busy, errs = ask_loop(port, munge_socket, Query.make(*qargs), duration, max_n)
    t = os.times()
    outq.put((lat, busy + sum(errs.values()), time.monotonic() - start, t.user + t.system))


def bench_throughput(daemon: Daemon, clients: int, duration: float, qargs, cleanup: Cleanup,
                     munged_pid: int | None = None) -> dict:
    go, outq, reap = fork_workers(_rpc_worker, [(daemon.port, daemon.munge_socket, qargs, duration, 200000)] * clients,
                                  cleanup, f"{clients} RPC client processes")
    try:
        time.sleep(0.2)
        h0 = daemon.metrics()
        cpu0 = (proc_cpu_s(daemon.proc.pid), proc_cpu_s(munged_pid) if munged_pid else 0.0, machine_busy())
        go.set()
        results = [outq.get(timeout=duration + 60) for _ in range(clients)]
        cpu1 = (proc_cpu_s(daemon.proc.pid), proc_cpu_s(munged_pid) if munged_pid else 0.0, machine_busy())
        h1 = daemon.metrics()
    finally:
        cleanup.run_one(reap)
    lat = [x for r in results for x in r[0]]
    errors = sum(r[1] for r in results)
    wall = max(r[2] for r in results)
    s = summary(lat)
    s.update({"clients": clients, "duration_s": wall, "requests": len(lat), "errors": errors,
              "req_per_s": len(lat) / wall if wall else 0})
    if lat:
        per = 1000 / len(lat)
        busy = (cpu1[2][0] - cpu0[2][0]) / max(1, cpu1[2][1] - cpu0[2][1])
        s.update({"cpu_ms_per_request": {"daemon": (cpu1[0] - cpu0[0]) * per, "munged": (cpu1[1] - cpu0[1]) * per,
                                         "clients": sum(r[3] for r in results) * per},
                  "machine_cpu_busy": busy})
    hs = "callerid_rpc_request_duration_seconds"
    dn = h1.get(hs + "_count", 0) - h0.get(hs + "_count", 0)
    if dn:
        s["daemon_handle_mean_ns"] = (h1[hs + "_sum"] - h0[hs + "_sum"]) / dn * 1e9
    return s
