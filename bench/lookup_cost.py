"""Bench phase 1: answering "who owns this connection" on a node with N helper processes, each
holding one connected loopback socket: the BPF map (raw and the full Resolver answer), the RPC,
and the baselines (Slurm's /proc scan, ss, psutil) from tests/infra/slurm_proc_scan.py."""

from __future__ import annotations

import json
import math
import os
import select
import statistics
import subprocess
import sys
import time

from bench.common import REPO, Cleanup, fmt_ns, listener, log, node_counts, stop_pid, summary, time_calls
from bench.daemon import NODE, Daemon, measure_startup
from callerid.protocol import Query, Status
from tests.infra.slurm_proc_scan import find_inode_by_conn, find_pid_by_inode, psutil_lookup, slurm_lookup, ss_lookup

CHILDREN_PROG = REPO / "bench" / "conn_children.py"
JOB_ID = 4242
PER_LISTENER = 2000        # connections left in one listener's accept queue (somaxconn is larger)
LISTEN_BACKLOG = 4096


class Children:
    """bench/conn_children.py: N sleeping children, each holding one connected socket."""

    def __init__(self, n: int, target_index: int, cgroup_procs: list[str], cleanup: Cleanup):
        self.listeners = [listener(LISTEN_BACKLOG) for _ in range(max(1, math.ceil(n / PER_LISTENER)))]
        self._cleanup = cleanup
        self._close_l = cleanup.push(self._close_listeners, f"listeners for {n} children")
        argv = [sys.executable, "-I", "-S", str(CHILDREN_PROG), "--count", str(n), "--per-listener", str(PER_LISTENER),
                "--connect", ",".join(f"127.0.0.1:{s.getsockname()[1]}" for s in self.listeners),
                "--target-index", str(target_index), "--target-cgroup-procs", ",".join(cgroup_procs)]
        self.proc = subprocess.Popen(argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
        self._stop = cleanup.push(self.stop, f"{n} children (parent pid {self.proc.pid})")
        line = self._readline(30 + n * 0.02)
        msg = json.loads(line) if line else {"error": "no report"}
        if "children" not in msg:
            raise RuntimeError(f"children failed: {msg.get('error')}")
        self.rows = msg["children"]

    def _readline(self, timeout: float) -> str:
        ready = select.select([self.proc.stdout], [], [], timeout)[0]
        return self.proc.stdout.readline() if ready else ""

    def _close_listeners(self):
        for s in self.listeners:
            s.close()

    def stop(self):
        if self.proc is None:
            return
        try:
            self.proc.stdin.write("stop\n")
            self.proc.stdin.flush()
            self._readline(90)
            self.proc.wait(timeout=30)
        except (OSError, subprocess.TimeoutExpired, ValueError):
            stop_pid(self.proc.pid)  # children die with it (PR_SET_PDEATHSIG)
            self.proc.wait(timeout=10)
        self.proc = None

    def close(self):
        self._cleanup.run_one(self._stop)
        self._cleanup.run_one(self._close_l)


def bench_lookup(n: int, daemon: Daemon, args, cleanup: Cleanup) -> dict:
    from callerid.tracer.bpfmap import Connections
    from callerid.tracer.layout import make_key
    from callerid.tracer.lookup import Resolver
    from tests.infra.jobtree import JobTree

    jobs = JobTree(node=f"bench{os.getpid()}")
    jobs_clean = cleanup.push(jobs.cleanup, "job cgroups")
    jobs.create(0, JOB_ID, steps=("0",))
    target_index = n // 2  # middle of /proc order: the Slurm scan's average case
    t0 = time.monotonic()
    kids = conns = None
    kids = Children(n, target_index, [str(f) for f in jobs.procs_file(0, JOB_ID, "0")], cleanup)
    spawn_s = time.monotonic() - t0
    try:
        conns = Connections.open_pinned(daemon.pins)
        cleanup.push(conns.close, "pinned map fds")
        pid, sport, lport = kids.rows[target_index]
        src, dst = "127.0.0.1", "127.0.0.1"
        key = make_key(src, sport, dst, lport)
        q = Query.make(src, sport, dst, lport)
        counts = node_counts()
        log(f"N={n}: {n} children up in {spawn_s:.1f}s; node has {counts['processes']} processes, "
            f"{counts['fds']} fds, {counts['tcp_sockets']} TCP sockets; target pid {pid} {src}:{sport}->{dst}:{lport}")
        owner = conns.lookup(key)
        if owner is None or owner.tgid != pid:
            raise RuntimeError(f"target connection not in the tracer's map (got {owner and owner.tgid})")
        resolver = Resolver(conns, NODE)
        budget = 5 if args.quick else 20
        res, ok = {}, {}

        for name, fn in (("slurm_scan", slurm_lookup), ("ss", ss_lookup), ("psutil", psutil_lookup)):
            vals, got = time_calls(lambda fn=fn: fn(src, sport, dst, lport), 50, budget, min_n=3)
            res[name], ok[name] = summary(vals), got == pid
            log(f"N={n}: {name}: p50 {fmt_ns(res[name]['p50_ns'])} over {len(vals)} runs, found pid {got}")
        # Where the Slurm scan spends its time: the /proc/net/tcp{,6} parse, then the fd walk.
        split = {"tcp_table_ns": [], "fd_walk_ns": []}
        for _ in range(3):
            t0 = time.perf_counter_ns()
            inode = find_inode_by_conn(src, sport, dst, lport)
            t1 = time.perf_counter_ns()
            find_pid_by_inode(inode)
            split["tcp_table_ns"].append(t1 - t0)
            split["fd_walk_ns"].append(time.perf_counter_ns() - t1)
        slurm_split = {k: statistics.median(v) for k, v in split.items()}
        # CPU split of the fd walk: kernel time (readdir + stat of every fd) is the floor any
        # implementation pays, C included; user time is this Python re-implementation's overhead.
        import resource
        ku = []
        for _ in range(3):
            r0 = resource.getrusage(resource.RUSAGE_THREAD)
            find_pid_by_inode(inode)
            r1 = resource.getrusage(resource.RUSAGE_THREAD)
            ku.append(((r1.ru_stime - r0.ru_stime) * 1e9, (r1.ru_utime - r0.ru_utime) * 1e9))
        slurm_split["fd_walk_kernel_ns"] = statistics.median(k for k, _ in ku)
        slurm_split["fd_walk_user_ns"] = statistics.median(u for _, u in ku)
        vals, o = time_calls(lambda: conns.open.lookup(key), 20000, 2)  # the one syscall of an open hit
        res["map_raw"], ok["map_raw"] = summary(vals), o is not None and o.tgid == pid
        vals, out = time_calls(lambda: resolver.lookup(q), 5000, 3)
        a = out.answer
        res["resolver"] = summary(vals)
        ok["resolver"] = a.status == Status.FOUND and a.pid == pid and a.job_id == str(JOB_ID) and not a.owner_exited
        vals, a = time_calls(lambda: daemon.ask(q), 100 if args.quick else 200, 30, min_n=20)
        res["rpc"], ok["rpc"] = summary(vals), a.status == Status.FOUND and a.pid == pid and a.job_id == str(JOB_ID)
        dm = daemon.metrics()  # the sweeper walks the whole map every 10 s in the daemon: a p99 suspect
        dstate = {"sweep_last_ns": dm.get("callerid_sweeper_last_duration_seconds", 0) * 1e9,
                  "map_entries": int(sum(v for k, v in dm.items() if k.startswith("callerid_tracked_connections{")))}
        log(f"N={n}: map {fmt_ns(res['map_raw']['p50_ns'])}, resolver {fmt_ns(res['resolver']['p50_ns'])}, "
            f"rpc {fmt_ns(res['rpc']['p50_ns'])} (p99 {fmt_ns(res['rpc']['p99_ns'])})")
        out = {"n": n, "spawn_s": spawn_s, "node": counts,
               "target": {"pid": pid, "query": str(q), "index_in_proc_order": target_index},
               "methods": res, "correct": ok, "slurm_scan_split": slurm_split, "daemon": dstate}
        if n == max(args.ns) and not args.quick:
            log(f"N={n}: start-up of a second tracer on the busy node (reconciles {n}+ connections)")
            d2 = Daemon(daemon.munge_socket, cleanup, "busy")
            try:
                out["startup_busy"] = measure_startup(d2)
            finally:
                d2.shutdown()
        return out
    finally:
        if conns is not None:
            cleanup.run_one(conns.close)
        if kids is not None:
            kids.close()
        cleanup.run_one(jobs_clean)
