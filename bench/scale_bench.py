#!/usr/bin/env python3
"""callerid scale benchmark: map memory per connection, behaviour at and beyond capacity, churn.

    sudo .venv/bin/python3 bench/scale_bench.py [--quick] [--out bench/results/scale.json]

  (a) memory: the tracepoint probe is loaded in-process with max_conns = 16384, 131072 and
      1048576 (if it loads); the maps' `memlock` from /proc/self/fdinfo gives bytes per entry.
  (b) capacity: with max_conns = 4096, child processes (bench/conn_children.py) open and
      hold 90% of capacity, then more, up to 6000 loopback connections. Counted: entries
      still in the map (oldest vs newest), and whether evicted ones are still answered by
      tracer.lookup.Resolver's fallback (sock_diag + /proc), for a bounded sample.
  (c) churn: W worker processes do connect+accept+close (RST, no TIME_WAIT) for a bounded
      time against a max_conns = 131072 map; each worker looks up a random 1% of its
      connections in the map while they are still open (must name the worker's pid).
      Meanwhile and afterwards the main process times Sweeper.sweep_once on that map.
  (c2) churn with bench/churn_gen.c (compiled with gcc into a temporary directory; skipped
      without a C compiler): 2 processes, a C connect+accept+close loop, first without our
      probe, then with it while a sampler thread opens its own connections amid the churn
      and looks each up in the map while it is open.
Everything it creates (pins under /sys/fs/bpf/callerid-bench-*, children, workers) is
removed in a finally block. All loops are bounded in count and time.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import random
import shutil
import socket
import struct
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from bench.common import (  # noqa: E402
    Cleanup,
    background_busy,
    fork_workers,
    log,
    machine_info,
    new_pin_root,
    run_cleanly,
    stop_pid,
    summary,
    write_results,
)
from bench.scale_report import render  # noqa: E402
from callerid.tracer.bpfmap import fdinfo  # noqa: E402

CHILDREN_PROG = REPO / "bench" / "conn_children.py"


def load_probe(max_conns: int, cleanup: Cleanup, max_pending: int = 16384):
    from callerid.tracer.probes import load
    root = new_pin_root()
    cleanup.push(lambda: shutil.rmtree(root, ignore_errors=True), f"pins {root}")
    probe = load("tracepoint", pin_root=root, max_conns=max_conns, max_pending=max_pending)
    cleanup.push(probe.close, f"probe max_conns={max_conns}")
    return probe, root


def unload(probe, root, cleanup: Cleanup):
    cleanup.run_one(probe.close)
    shutil.rmtree(root, ignore_errors=True)


# --------------------------------------------------------------------------- (a) memory

def bench_memory(sizes, cleanup: Cleanup) -> list:
    rows = []
    for n in sizes:
        t0 = time.monotonic()
        try:
            probe, root = load_probe(n, cleanup)
        except Exception as exc:  # noqa: BLE001 - a size that does not load is a result
            rows.append({"max_conns": n, "loaded": False, "error": f"{type(exc).__name__}: {exc}"[:300]})
            log(f"max_conns={n}: did not load: {exc}")
            continue
        try:
            ci, pi, xi = fdinfo(probe.conns.open.fd), fdinfo(probe.pending_fd), fdinfo(probe.conns.closed.fd)
            row = {"max_conns": n, "loaded": True, "load_s": time.monotonic() - t0,
                   "conns_memlock": int(ci["memlock"]), "conns_key_size": int(ci["key_size"]),
                   "conns_value_size": int(ci["value_size"]), "conns_map_type": int(ci["map_type"]),
                   "pending_max": int(pi["max_entries"]), "pending_memlock": int(pi["memlock"]),
                   "closed_max": int(xi["max_entries"]), "closed_memlock": int(xi["memlock"])}
            row["bytes_per_entry"] = row["conns_memlock"] / n
            rows.append(row)
            log(f"max_conns={n}: conns memlock {row['conns_memlock'] / 2**20:.1f} MiB = "
                f"{row['bytes_per_entry']:.0f} B/entry; pending {row['pending_memlock'] / 2**20:.1f} MiB; "
                f"closed ({row['closed_max']}) {row['closed_memlock'] / 2**20:.1f} MiB")
        finally:
            unload(probe, root, cleanup)
    return rows


# --------------------------------------------------------------------------- (b) capacity

class Kids:
    """bench/conn_children.py holding `count` connections to the given listeners."""

    def __init__(self, count: int, listeners, cleanup: Cleanup, per_listener: int = 2000):
        spec = ",".join(f"127.0.0.1:{s.getsockname()[1]}" for s in listeners)
        self.p = subprocess.Popen([sys.executable, "-I", "-S", str(CHILDREN_PROG), "--count", str(count),
                                   "--connect", spec, "--per-listener", str(per_listener)],
                                  stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
        self._stop = cleanup.push(self.stop, f"conn_children pid {self.p.pid}")
        self.cleanup = cleanup
        line = self.p.stdout.readline()
        msg = json.loads(line) if line else {"error": "no output"}
        if "error" in msg:
            raise RuntimeError(f"conn_children: {msg['error']}")
        self.rows = msg["children"]

    def stop(self):
        if self.p.poll() is None:
            try:
                self.p.stdin.write("stop\n")
                self.p.stdin.flush()
                self.p.wait(60)
            except (OSError, subprocess.TimeoutExpired):
                stop_pid(self.p.pid)

    def close(self):
        self.cleanup.run_one(self._stop)


def check_rows(conns, rows) -> list[bool]:
    from callerid.tracer.layout import make_key
    out = []
    for pid, sport, lport in rows:
        o = conns.lookup(make_key("127.0.0.1", sport, "127.0.0.1", lport))
        out.append(o is not None and o.tgid == pid)
    return out


def bench_capacity(cap: int, total: int, cleanup: Cleanup, fallback_sample: int, fallback_budget_s: float) -> dict:
    from callerid.protocol import Query, Source, Status
    from callerid.tracer.lookup import Resolver
    probe, root = load_probe(cap, cleanup)
    lsocks = []
    kids = []
    try:
        for _ in range((total + 1999) // 2000):
            s = socket.socket()
            s.bind(("127.0.0.1", 0))
            s.listen(4096)
            lsocks.append(s)
            cleanup.push(s.close, "capacity listener")
        r = {"capacity": cap, "total": total}
        # Stage 1: fill to 90% of capacity, everything must be attributable.
        below = int(cap * 0.9)
        t0 = time.monotonic()
        kids.append(Kids(below, lsocks[:1] if below <= 2000 else lsocks, cleanup))
        ok1 = check_rows(probe.conns, kids[0].rows)
        r["below"] = {"held": below, "in_map": sum(ok1), "map_entries": len(probe.conns),
                      "spawn_s": time.monotonic() - t0}
        log(f"capacity {cap}: holding {below} (90%): {sum(ok1)} attributable from the map, "
            f"map has {r['below']['map_entries']} entries")
        # Stage 2: add more connections, past capacity.
        more = total - below
        t0 = time.monotonic()
        kids.append(Kids(more, lsocks, cleanup))
        rows = kids[0].rows + kids[1].rows  # creation order: oldest first
        ok = check_rows(probe.conns, rows)
        excess = max(0, total - cap)
        r["beyond"] = {"held": total, "in_map": sum(ok), "map_entries": len(probe.conns),
                       "spawn_s": time.monotonic() - t0,
                       "oldest_excess": excess, "oldest_excess_in_map": sum(ok[:excess]),
                       "newest_cap": total - excess, "newest_cap_in_map": sum(ok[excess:]),
                       "newest_1000_in_map": sum(ok[-1000:]),
                       "first_in_map_index": ok.index(True) if any(ok) else None,
                       "in_map_by_decile": [sum(ok[i * total // 10:(i + 1) * total // 10]) for i in range(10)]}
        log(f"capacity {cap}: holding {total}: {sum(ok)} in map; "
            f"oldest {excess}: {r['beyond']['oldest_excess_in_map']} in map; "
            f"newest {total - excess}: {r['beyond']['newest_cap_in_map']}")
        # Resolver with fallback on a bounded random sample of the evicted and of the present ones.
        res = Resolver(probe.conns, "benchnode", fallback=True)
        missing = [row for row, hit in zip(rows, ok, strict=True) if not hit]
        present = [row for row, hit in zip(rows, ok, strict=True) if hit]
        rnd = random.Random(1)
        fb = {"evicted_total": len(missing), "asked": 0, "found_proc": 0, "found_bpf": 0, "right_pid": 0,
              "not_found": 0, "lat_ns": []}
        deadline = time.monotonic() + fallback_budget_s
        for pid, sport, lport in rnd.sample(missing, min(fallback_sample, len(missing))):
            if time.monotonic() > deadline:
                break
            t = time.perf_counter_ns()
            a = res.lookup(Query.make("127.0.0.1", sport, "127.0.0.1", lport)).answer
            fb["lat_ns"].append(time.perf_counter_ns() - t)
            fb["asked"] += 1
            if a.status == Status.FOUND:
                fb["found_proc" if a.source == Source.PROC else "found_bpf"] += 1
                fb["right_pid"] += a.pid == pid
            else:
                fb["not_found"] += 1
        fb["latency"] = summary(fb.pop("lat_ns"))
        r["fallback_on_evicted"] = fb
        mp = {"asked": 0, "found_bpf": 0, "right_pid": 0}
        for pid, sport, lport in rnd.sample(present, min(200, len(present))):
            a = res.lookup(Query.make("127.0.0.1", sport, "127.0.0.1", lport)).answer
            mp["asked"] += 1
            mp["found_bpf"] += a.status == Status.FOUND and a.source == Source.BPF
            mp["right_pid"] += a.pid == pid
        r["resolver_on_present"] = mp
        log(f"fallback on evicted: asked {fb['asked']}, right pid {fb['right_pid']} (proc {fb['found_proc']}), "
            f"p50 {fb['latency'].get('p50_ns', 0) / 1e6:.1f} ms")
        return r
    finally:
        for k in reversed(kids):
            k.close()
        for s in lsocks:
            cleanup.run_one(s.close)
        unload(probe, root, cleanup)


# --------------------------------------------------------------------------- (c) churn

LINGER0 = struct.pack("ii", 1, 0)


def _churn_worker(pins: str, seconds: float, max_conns: int, sample_every: int, seed: int, go, outq):
    from callerid.tracer.bpfmap import Connections
    from callerid.tracer.layout import make_key
    conns = Connections.open_pinned(pins)
    rnd = random.Random(seed)
    me = os.getpid()
    lsocks = []
    for _ in range(8):  # 8 listeners x ~28k ephemeral ports: no port exhaustion at this rate
        s = socket.socket()
        s.bind(("127.0.0.1", 0))
        s.listen(256)
        lsocks.append(s)
    addrs = [s.getsockname() for s in lsocks]
    n = sampled = hit = wrong = errors = 0
    lookup_ns = []
    go.wait(30)
    start = time.monotonic()
    end = start + seconds
    while n < max_conns:
        if (n & 63) == 0 and time.monotonic() > end:
            break
        i = n % len(addrs)
        try:
            c = socket.socket()
            c.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, LINGER0)  # RST on close: no TIME_WAIT
            c.connect(addrs[i])
            a, _ = lsocks[i].accept()
        except OSError:
            errors += 1
            c.close()
            n += 1
            continue
        if rnd.randrange(sample_every) == 0:  # a random open connection, looked up while open
            sampled += 1
            t = time.perf_counter_ns()
            o = conns.lookup(make_key("127.0.0.1", c.getsockname()[1], "127.0.0.1", addrs[i][1]))
            lookup_ns.append(time.perf_counter_ns() - t)
            if o is not None:
                hit += 1
                wrong += o.tgid != me
        c.close()
        a.close()
        n += 1
    wall = time.monotonic() - start
    for s in lsocks:
        s.close()
    conns.close()
    outq.put({"conns": n, "wall_s": wall, "sampled": sampled, "hit": hit, "wrong_pid": wrong,
              "errors": errors, "lookup_ns": lookup_ns})


def bench_churn(workers: int, seconds: float, cap: int, cleanup: Cleanup) -> dict:
    from callerid.tracer.metrics import TracerMetrics
    from callerid.tracer.probes import pin_dir
    from callerid.tracer.sweeper import Sweeper
    probe, root = load_probe(cap, cleanup)
    try:
        pins = str(pin_dir(root))
        # Long-lived connections opened before the churn: are they still in the map after it?
        hold_l = socket.socket()
        hold_l.bind(("127.0.0.1", 0))
        hold_l.listen(256)
        held = []
        for _ in range(100):
            c = socket.create_connection(hold_l.getsockname(), timeout=5)
            a, _ = hold_l.accept()
            held.append((c, a))
        cleanup.push(lambda: [x.close() for p in held for x in p] and None, "held sockets")
        from callerid.tracer.layout import make_key
        held_keys = [make_key("127.0.0.1", c.getsockname()[1], "127.0.0.1", hold_l.getsockname()[1]) for c, _ in held]

        def held_in_map():
            return sum(1 for k in held_keys if probe.conns.lookup(k) is not None)
        held_before = held_in_map()

        go, outq, reap = fork_workers(_churn_worker, [(pins, seconds, 2_000_000, 100, i) for i in range(workers)],
                                      cleanup, "churn workers")
        sweeper = Sweeper(probe.conns, TracerMetrics(), grace_seconds=120)
        time.sleep(0.3)
        go.set()
        t_start = time.monotonic()
        during = []
        # Sweep passes during the churn, as the daemon would (every 10 s there; here back to
        # back with a 1 s pause, bounded by the churn's duration).
        while time.monotonic() - t_start < seconds - 0.5 and len(during) < 20:
            time.sleep(1.0)
            c0, w0 = time.thread_time(), time.perf_counter()
            st = sweeper.sweep_once()
            during.append({"wall_s": time.perf_counter() - w0, "cpu_s": time.thread_time() - c0,
                           "entries": st["open"] + st["closed"] + st["deleted"], **st})
        results = [outq.get(timeout=seconds + 60) for _ in range(workers)]
        cleanup.run_one(reap)
        total = sum(r["conns"] for r in results)
        wall = max(r["wall_s"] for r in results)
        out = {"workers": workers, "seconds": seconds, "capacity": cap, "connections": total,
               "wall_s": wall, "conns_per_s": total / wall if wall else 0,
               "sampled": sum(r["sampled"] for r in results), "hit": sum(r["hit"] for r in results),
               "wrong_pid": sum(r["wrong_pid"] for r in results), "errors": sum(r["errors"] for r in results),
               "sample_lookup": summary([x for r in results for x in r["lookup_ns"]]),
               "per_worker_conns_per_s": [r["conns"] / r["wall_s"] for r in results],
               "map_entries_after": len(probe.conns), "stats": probe.stats(),
               "held_long_lived": len(held), "held_in_map_before": held_before, "held_in_map_after": held_in_map(),
               "sweeps_during": during}
        log(f"churn: {total} connections in {wall:.1f} s = {out['conns_per_s']:.0f}/s; sampled open "
            f"{out['sampled']}, attributable {out['hit']}, wrong pid {out['wrong_pid']}; "
            f"map {out['map_entries_after']}")
        # Sweeps after the churn, on the map it left: a keep-everything pass (grace 120 s, the
        # periodic cost) three times, then a pass that deletes every closed entry (grace 0).
        after = []
        for grace in (120, 120, 120, 0):
            sw = Sweeper(probe.conns, TracerMetrics(), grace_seconds=grace)
            n0 = len(probe.conns)
            c0, w0 = time.thread_time(), time.perf_counter()
            st = sw.sweep_once()
            after.append({"grace_s": grace, "entries": n0, "wall_s": time.perf_counter() - w0,
                          "cpu_s": time.thread_time() - c0, **st})
            log(f"sweep (grace {grace} s) over {n0} entries: {after[-1]['wall_s'] * 1e3:.0f} ms wall, "
                f"{after[-1]['cpu_s'] * 1e3:.0f} ms CPU, deleted {st['deleted']}")
        out["sweeps_after"] = after
        for c, a in held:
            c.close()
            a.close()
        hold_l.close()
        return out
    finally:
        unload(probe, root, cleanup)


# --------------------------------------------------------------------------- (c2) churn, C generator

def build_churn_gen(cleanup: Cleanup) -> str | None:
    """Compile bench/churn_gen.c into a temporary directory; None if there is no C compiler."""
    import tempfile
    cc = shutil.which("gcc") or shutil.which("cc")
    if not cc:
        return None
    d = tempfile.mkdtemp(prefix="callerid-bench-churn-")
    cleanup.push(lambda: shutil.rmtree(d, ignore_errors=True), "churn_gen build dir")
    exe = os.path.join(d, "churn_gen")
    subprocess.run([cc, "-O2", "-o", exe, str(REPO / "bench" / "churn_gen.c")], check=True, timeout=60)
    return exe


def run_churn_gen(exe: str, seconds: float, workers: int, cleanup: Cleanup) -> dict:
    p = subprocess.Popen([exe, f"{seconds:g}", str(workers), "100000000"], stdout=subprocess.PIPE, text=True)
    stop = cleanup.push(lambda: stop_pid(p.pid), f"churn_gen pid {p.pid}")
    out, _ = p.communicate(timeout=seconds + 30)
    cleanup.remove(stop)
    rows = [line.split() for line in out.splitlines() if line.startswith("worker ")]
    conns = sum(int(r[2]) for r in rows)
    wall = max((float(r[4]) for r in rows), default=0.0)
    return {"workers": workers, "connections": conns, "errors": sum(int(r[3]) for r in rows), "wall_s": wall,
            "conns_per_s": conns / wall if wall else 0.0, "exit": p.returncode}


def bench_churn_c(exe: str, workers: int, seconds: float, cap: int, cleanup: Cleanup) -> dict:
    """The C generator without our probe, then with it while a sampler thread opens its own
    connections amid the churn and looks each up in the map while it is open."""
    import threading

    from callerid.tracer.layout import make_key
    out = {"capacity": cap, "seconds": seconds}
    out["without_probe"] = run_churn_gen(exe, min(3.0, seconds), workers, cleanup)
    log(f"C churn without our probe: {out['without_probe']['conns_per_s']:,.0f}/s")
    probe, root = load_probe(cap, cleanup)
    try:
        ls = socket.socket()
        ls.bind(("127.0.0.1", 0))
        ls.listen(64)
        cleanup.push(ls.close, "sampler listener")
        samp = {"sampled": 0, "hit": 0, "wrong_pid": 0, "lat_ns": []}
        stop = threading.Event()

        def sampler():
            me = os.getpid()
            for _ in range(200000):
                if stop.is_set():
                    return
                c = socket.create_connection(ls.getsockname(), timeout=5)
                a, _ = ls.accept()
                t = time.perf_counter_ns()
                o = probe.conns.lookup(make_key("127.0.0.1", c.getsockname()[1], "127.0.0.1", ls.getsockname()[1]))
                samp["lat_ns"].append(time.perf_counter_ns() - t)
                samp["sampled"] += 1
                if o is not None:
                    samp["hit"] += 1
                    samp["wrong_pid"] += o.tgid != me
                c.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, LINGER0)
                c.close()
                a.close()
                time.sleep(0.002)
        th = threading.Thread(target=sampler, daemon=True)
        th.start()
        try:
            out["with_probe"] = run_churn_gen(exe, seconds, workers, cleanup)
        finally:
            stop.set()
            th.join(10)
            cleanup.run_one(ls.close)
        out["sampled"], out["hit"], out["wrong_pid"] = samp["sampled"], samp["hit"], samp["wrong_pid"]
        out["sample_lookup"] = summary(samp["lat_ns"])
        out["map_entries_after"] = len(probe.conns)
        w, wo = out["with_probe"], out["without_probe"]
        if w["conns_per_s"] and wo["conns_per_s"]:
            # CPU-bound loop on `workers` processes: extra time per connection per worker.
            out["added_us_per_conn_rough"] = (workers / w["conns_per_s"] - workers / wo["conns_per_s"]) * 1e6
        log(f"C churn with probe: {w['conns_per_s']:,.0f}/s; sampler {out['hit']}/{out['sampled']} attributable, "
            f"wrong pid {out['wrong_pid']}; map {out['map_entries_after']}")
        return out
    finally:
        unload(probe, root, cleanup)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true", help="smaller/shorter: no 1M map, 3 s churn")
    ap.add_argument("--out", default=str(REPO / "bench" / "results" / "scale.json"))
    ap.add_argument("--workers", type=int, default=4)
    ap.add_argument("--churn-seconds", type=float, default=None)
    args = ap.parse_args()
    if os.geteuid() != 0:
        sys.exit("scale_bench: run as root (BPF)")
    if not os.path.ismount("/sys/fs/bpf"):
        sys.exit("scale_bench: bpffs not mounted")
    secs = min(10.0, args.churn_seconds or (3.0 if args.quick else 8.0))

    r = {"mode": "quick" if args.quick else "full",
         "date": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
         "machine": machine_info(),
         "command": "sudo .venv/bin/python3 bench/scale_bench.py" + (" --quick" if args.quick else "")}

    def body(cleanup: Cleanup) -> int:
        r["background_cpu_busy_start"] = background_busy()
        log("(a) memory")
        r["memory"] = bench_memory((16384, 131072) if args.quick else (16384, 131072, 1048576), cleanup)
        log("(b) capacity")
        r["capacity"] = bench_capacity(4096, 6000, cleanup, 20 if args.quick else 60, 20 if args.quick else 60)
        log("(c) churn")
        r["churn"] = bench_churn(args.workers, secs, 131072, cleanup)
        exe = build_churn_gen(cleanup)
        if exe:
            log("(c2) churn, C generator")
            r["churn_c"] = bench_churn_c(exe, 2, secs, 131072, cleanup)
        else:
            log("(c2) skipped: no C compiler (gcc) for bench/churn_gen.c")
        r["background_cpu_busy_end"] = background_busy()
        write_results(r, args.out, render)
        return 0

    return run_cleanly(body)


if __name__ == "__main__":
    sys.exit(main())
