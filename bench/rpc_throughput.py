"""Bench phase 4: RPC throughput and latency with concurrent client processes, each asking back
to back, with the CPU each party spends per request."""

from __future__ import annotations

import multiprocessing
import os
import time

from bench.common import Cleanup, machine_busy, proc_cpu_s, stop_pid, summary
from bench.daemon import Daemon
from callerid.client import RpcError, ask
from callerid.protocol import Query, Status


def _rpc_worker(port, munge_socket, qargs, duration, max_n, go, outq):
    q = Query.make(*qargs)
    lat, errors = [], 0
    go.wait(30)
    start = time.monotonic()
    while time.monotonic() - start < duration and len(lat) < max_n:
        t0 = time.perf_counter_ns()
        try:
            a = ask(("127.0.0.1", port), q, 2.0, munge_socket)
            if a.status != Status.FOUND:
                errors += 1
                continue
        except RpcError:
            errors += 1
            continue
        lat.append(time.perf_counter_ns() - t0)
    t = os.times()
    outq.put((lat, errors, time.monotonic() - start, t.user + t.system))


def bench_throughput(daemon: Daemon, clients: int, duration: float, qargs, cleanup: Cleanup,
                     munged_pid: int | None = None) -> dict:
    ctx = multiprocessing.get_context("fork")
    go, outq = ctx.Event(), ctx.Queue()
    procs = [ctx.Process(target=_rpc_worker, args=(daemon.port, daemon.munge_socket, qargs, duration, 200000, go, outq),
                         daemon=True) for _ in range(clients)]
    for p in procs:
        p.start()

    def reap():
        for p in procs:
            if p.is_alive():
                stop_pid(p.pid)
            p.join(5)
    cleanup.push(reap, f"{clients} RPC client processes")
    try:
        time.sleep(0.2)
        h0 = daemon.metrics()
        cpu0 = (proc_cpu_s(daemon.proc.pid), proc_cpu_s(munged_pid) if munged_pid else 0.0, machine_busy())
        go.set()
        results = [outq.get(timeout=duration + 60) for _ in procs]
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
