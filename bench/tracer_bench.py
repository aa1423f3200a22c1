#!/usr/bin/env python3
"""callerid tracer benchmark: map lookup and RPC vs Slurm's /proc scan, probe cost, start-up, throughput.

    sudo .venv/bin/python3 bench/tracer_bench.py [--quick] [--out bench/results/tracer.json]

One run measures, side by side:
  1. answering "who owns SRC:SPORT->DST:DPORT" on a node with N helper processes, each
     holding one connected loopback TCP socket (N = 100, 1000, 10000; quick: 100, 1000):
     (a) in-process BPF map lookup (raw ConnMap.lookup, and the full Resolver answer),
     (b) end-to-end RPC with MUNGE against a real `callerid tracer` daemon,
     (c) Slurm's /proc scan (tests/infra/slurm_proc_scan.py), (d) `ss -tnp`, (e) psutil;
  2. the probe's added cost per loopback connect+accept+close;
  3. tracer start-up: process start to first map entry and first RPC answer;
  4. RPC throughput and latency with 1 and 16 concurrent client processes;
  and profiles the RPC path (py-spy on the daemon if installed, plus cProfile of the client).
Everything it starts (children, daemons, munged, bpffs pin dirs, job cgroups) is removed
in a finally block, also on Ctrl-C and SIGTERM. docs/BENCHMARKS.md has a full run.

Modules: bench/common.py (shared plumbing), bench/daemon.py (the tracer daemon, start-up),
bench/lookup_cost.py (1), bench/probe_cost.py (2), bench/rpc_throughput.py (4),
bench/rpc_profile.py (profile), bench/tracer_report.py (verdicts and the text report).
"""

from __future__ import annotations

import argparse
import datetime
import os
import shutil
import statistics
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from bench.common import (  # noqa: E402
    VENV_BIN,
    Cleanup,
    background_busy,
    connected_pair,
    listener,
    log,
    machine_info,
    run_cleanly,
    wait_quiet,
    wait_time_wait_drained,
    write_results,
)
from bench.daemon import Daemon, SyslogSink, measure_startup  # noqa: E402
from bench.lookup_cost import PER_LISTENER, bench_lookup  # noqa: E402
from bench.probe_cost import bench_probe_cost  # noqa: E402
from bench.rpc_profile import profile_rpc  # noqa: E402
from bench.rpc_throughput import bench_throughput  # noqa: E402
from bench.tracer_report import render, verdicts  # noqa: E402


def preflight(ns) -> None:
    problems = []
    if os.geteuid() != 0:
        problems.append("run as root (BPF, munged, cgroups)")
    if not os.path.ismount("/sys/fs/bpf"):
        problems.append("bpffs not mounted: mount -t bpf bpf /sys/fs/bpf")
    if not os.path.ismount("/sys/kernel/tracing"):
        problems.append("tracefs not mounted: mount -t tracefs nodev /sys/kernel/tracing")
    if not (VENV_BIN / "callerid").exists():
        problems.append(f"{VENV_BIN / 'callerid'} missing: run with the project venv's python")
    if not os.path.ismount("/sys/fs/cgroup/freezer"):
        problems.append("cgroup v1 freezer not mounted at /sys/fs/cgroup/freezer (job cgroup for the target)")
    pid_max = int(Path("/proc/sys/kernel/pid_max").read_text())
    procs = sum(1 for n in os.listdir("/proc") if n.isdigit())
    if procs + max(ns) + 500 > pid_max:
        problems.append(f"pid_max {pid_max} too small for {max(ns)} more processes (sysctl kernel.pid_max)")
    somax = int(Path("/proc/sys/net/core/somaxconn").read_text())
    if somax < PER_LISTENER:
        problems.append(f"net.core.somaxconn {somax} < {PER_LISTENER}")
    if problems:
        sys.exit("tracer_bench: " + "; ".join(problems))


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true", help="N = 100, 1000 only and shorter phases (about 1.5 min)")
    ap.add_argument("--out", default=str(REPO / "bench" / "results" / "tracer.json"), help="JSON results file")
    args = ap.parse_args()
    args.ns = (100, 1000) if args.quick else (100, 1000, 10000)
    preflight(args.ns)
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)

    started = time.monotonic()
    r = {"mode": "quick" if args.quick else "full",
         "date": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
         "machine": machine_info(), "command": "sudo .venv/bin/python3 bench/tracer_bench.py"
         + (" --quick" if args.quick else "")}

    def body(cleanup: Cleanup) -> int:
        r["time_wait_at_start"] = wait_time_wait_drained()
        r["background_cpu_busy_start"] = wait_quiet()
        Daemon.sink = SyslogSink(cleanup)
        from tests.infra.munged import start as start_munged
        md = start_munged()
        cleanup.push(lambda: shutil.rmtree(md.dir, ignore_errors=True), "munged dir")
        cleanup.push(md.stop, f"munged pid {md.pid}")
        log(f"private munged pid {md.pid} on {md.socket}")

        log("3. start-up")
        runs = []
        daemon = None
        for i in range(1 if args.quick else 3):
            if daemon is not None:
                daemon.shutdown()
            daemon = Daemon(md.socket, cleanup, f"main{i}")
            runs.append(measure_startup(daemon))
            log(f"start-up run {i + 1}: first map entry {runs[-1]['first_map_entry_s']:.2f} s, first RPC answer "
                f"{runs[-1]['first_rpc_answer_s']:.2f} s, probe load {runs[-1]['probe_load_logged_s']:.2f} s")
        r["startup"] = {"runs": runs,
                        "median_first_map_entry_s": statistics.median(x["first_map_entry_s"] for x in runs),
                        "median_first_rpc_answer_s": statistics.median(x["first_rpc_answer_s"] for x in runs),
                        "median_probe_load_s": statistics.median(x["probe_load_logged_s"] for x in runs)}

        log("1. lookup vs node busyness")
        r["lookup"] = {}
        for n in args.ns:
            res = bench_lookup(n, daemon, args, cleanup)
            if "startup_busy" in res:
                r["startup_busy"] = dict(res.pop("startup_busy"), n=n)
            r["lookup"][str(n)] = res

        log("4. throughput")
        lsock = listener()
        cleanup.push(lsock.close, "throughput listener")
        c, s = connected_pair(lsock)  # opened after the daemon's probe: in the map
        cleanup.push(c.close, "target client socket")
        cleanup.push(s.close, "target server socket")
        qargs = ("127.0.0.1", c.getsockname()[1], "127.0.0.1", lsock.getsockname()[1])
        dur = 3 if args.quick else 10
        r["throughput"] = {}
        for k in (1, 16):
            r["throughput"][str(k)] = bench_throughput(daemon, k, dur, qargs, cleanup, md.pid)
            log(f"{k} clients: {r['throughput'][str(k)]['req_per_s']:.0f} req/s")

        log("profile")
        r["profile"] = profile_rpc(daemon, qargs, args, cleanup)
        r["daemon_env"] = {"syslog": daemon.syslog, "syslog_records": Daemon.sink.received,
                           "logging_errors": daemon.logging_errors()}
        daemon.shutdown()  # no callerid probe of ours attached while the probe cost is measured

        log("2. probe cost")
        r["probe_cost"] = bench_probe_cost(args, cleanup)

        r["background_cpu_busy_end"] = background_busy()
        r["verdicts"] = verdicts(r, args.quick)
        r["elapsed_s"] = time.monotonic() - started
        write_results(r, args.out, render)
        print(f"\n(results in {args.out}; {r['elapsed_s']:.0f} s)")
        return 0

    return run_cleanly(body)


if __name__ == "__main__":
    sys.exit(main())


if __name__ == "__main__":
    sys.exit(main())
