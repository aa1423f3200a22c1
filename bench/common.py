"""What every callerid bench shares: logging, statistics, sockets, an undo list and the main
wrapper that runs it on any exit, machine facts, CPU-busy checks and the results writer.

Benches import the tests' infrastructure (tests.infra: munged, tracer daemons, job cgroups), never
the other way round.
"""

from __future__ import annotations

import json
import math
import os
import platform
import signal
import socket
import statistics
import subprocess
import sys
import time
import traceback
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from tests.infra.procs import stop_pid  # noqa: E402,F401 - re-exported for the benches
from tests.infra.tracerproc import free_port, new_pin_root  # noqa: E402,F401 - re-exported for the benches

VENV_BIN = Path(sys.executable).parent


def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def pctl(values, p: float):
    """Nearest-rank percentile (p in 0..100) of a non-empty list."""
    s = sorted(values)
    k = max(0, min(len(s) - 1, math.ceil(p / 100 * len(s)) - 1))
    return s[k]


def summary(ns: list) -> dict:
    if not ns:
        return {"n": 0}
    return {"n": len(ns), "p50_ns": statistics.median(ns), "p99_ns": pctl(ns, 99), "mean_ns": statistics.fmean(ns),
            "min_ns": min(ns), "max_ns": max(ns)}


def fmt_ns(ns) -> str:
    if ns is None:
        return "-"
    if ns < 1_000:
        return f"{ns:.0f} ns"
    if ns < 1_000_000:
        return f"{ns / 1e3:.1f} us"
    if ns < 1_000_000_000:
        return f"{ns / 1e6:.2f} ms"
    return f"{ns / 1e9:.2f} s"


def fmt_x(x) -> str:
    if x is None:
        return "-"
    return f"{x:,.0f}x" if x >= 10 else f"{x:.1f}x"


def time_calls(fn, max_n: int, budget_s: float, min_n: int = 1, hard_s: float | None = None) -> tuple[list, object]:
    """Per-call wall times (ns) of fn(): at most max_n calls, stop after budget_s once
    min_n are done, and never run past hard_s (default 3 x budget)."""
    hard_s = hard_s if hard_s is not None else 3 * budget_s
    out, res = [], None
    start = time.monotonic()
    while len(out) < max_n:
        el = time.monotonic() - start
        if el >= hard_s or (el >= budget_s and len(out) >= min_n):
            break
        t0 = time.perf_counter_ns()
        res = fn()
        out.append(time.perf_counter_ns() - t0)
    return out, res


def listener(backlog: int = 128, host: str = "127.0.0.1") -> socket.socket:
    s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    s.bind((host, 0))
    s.listen(backlog)
    return s


def connected_pair(lsock: socket.socket) -> tuple[socket.socket, socket.socket]:
    c = socket.create_connection(lsock.getsockname()[:2], timeout=5)
    s, _ = lsock.accept()
    return c, s


class Cleanup:
    """LIFO list of undo actions; every action runs even if an earlier one fails."""

    def __init__(self):
        self._fns = []

    def push(self, fn, what: str):
        self._fns.append((fn, what))
        return fn

    def remove(self, fn):
        self._fns = [(f, w) for f, w in self._fns if f is not fn]

    def run_one(self, fn):
        """Run one registered action now and forget it."""
        for f, w in list(self._fns):
            if f is fn:
                self.remove(f)
                self._call(f, w)

    @staticmethod
    def _call(fn, what):
        try:
            fn()
        except BaseException as exc:  # noqa: BLE001 - keep cleaning up
            log(f"cleanup of {what} failed: {type(exc).__name__}: {exc}")

    def run(self):
        while self._fns:
            fn, what = self._fns.pop()
            self._call(fn, what)


def run_cleanly(body) -> int:
    """A bench's main: body(cleanup) -> exit status. SIGTERM and SIGHUP count as Ctrl-C
    (130); an error prints its traceback (1); either way everything pushed on the
    Cleanup is undone before returning."""
    def on_term(*_):
        raise KeyboardInterrupt
    signal.signal(signal.SIGTERM, on_term)
    signal.signal(signal.SIGHUP, on_term)
    cleanup = Cleanup()
    try:
        return body(cleanup)
    except KeyboardInterrupt:
        log("interrupted: cleaning up")
        return 130
    except Exception:  # noqa: BLE001 - report, then clean up in finally
        traceback.print_exc()
        return 1
    finally:
        cleanup.run()
        log("cleaned up")


def machine_info() -> dict:
    cpu = ""
    with open("/proc/cpuinfo") as f:
        for line in f:
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    mem_kib = 0
    with open("/proc/meminfo") as f:
        for line in f:
            if line.startswith("MemTotal:"):
                mem_kib = int(line.split()[1])
    try:
        bcc_version = __import__("bcc").__version__
    except Exception:  # noqa: BLE001
        bcc_version = "?"
    try:
        munged_v = subprocess.run(["/usr/sbin/munged", "--version"], capture_output=True, text=True,
                                  timeout=5, check=False).stdout.strip().splitlines()[0]
    except Exception:  # noqa: BLE001
        munged_v = "?"
    return {
        "kernel": platform.release(), "os": _os_release(), "cpu": cpu, "cores": os.cpu_count(),
        "mem_gib": round(mem_kib / 2**20, 1), "python": platform.python_version(), "bcc": bcc_version,
        "munge": munged_v, "pid_max": int(Path("/proc/sys/kernel/pid_max").read_text()),
        "somaxconn": int(Path("/proc/sys/net/core/somaxconn").read_text()),
    }


def _os_release() -> str:
    try:
        for line in Path("/etc/os-release").read_text().splitlines():
            if line.startswith("PRETTY_NAME="):
                return line.split("=", 1)[1].strip('"')
    except OSError:
        pass
    return "?"


def time_wait_count() -> int:
    with open("/proc/net/sockstat") as f:
        for line in f:
            if line.startswith("TCP:"):
                parts = line.split()
                return int(parts[parts.index("tw") + 1])
    return 0


def wait_time_wait_drained(limit: int = 2000, max_s: float = 70) -> int:
    """TIME_WAIT sockets (e.g. from an earlier run) are lines in /proc/net/tcp that the Slurm
    scan has to parse: let them expire (60 s on Linux) before measuring, bounded in time."""
    deadline = time.monotonic() + max_s
    n = time_wait_count()
    if n > limit:
        log(f"waiting for {n} TIME_WAIT sockets from earlier work to expire (at most {max_s:.0f} s)")
    while n > limit and time.monotonic() < deadline:
        time.sleep(1)
        n = time_wait_count()
    return n


def node_counts() -> dict:
    """Processes and open fds on the node (what a /proc scan has to walk)."""
    procs = fds = 0
    for name in os.listdir("/proc"):
        if not name.isdigit():
            continue
        procs += 1
        try:
            fds += len(os.listdir(f"/proc/{name}/fd"))
        except OSError:
            pass
    tcp = 0
    for t in ("tcp", "tcp6"):
        try:
            with open(f"/proc/net/{t}") as f:
                tcp += sum(1 for _ in f) - 1
        except OSError:
            pass
    return {"processes": procs, "fds": fds, "tcp_sockets": tcp, "time_wait": time_wait_count()}


def proc_cpu_s(pid: int) -> float:
    """user+system CPU seconds of a process (all its threads)."""
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(") ", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def machine_busy() -> tuple[int, int]:
    """(busy, total) jiffies over all CPUs from /proc/stat."""
    with open("/proc/stat") as f:
        v = [int(x) for x in f.readline().split()[1:]]
    idle = v[3] + v[4]
    return sum(v) - idle, sum(v)


def background_busy(seconds: float = 3.0) -> float:
    """Share of all CPUs busy while this bench sits idle: other people's work on the machine."""
    b0 = machine_busy()
    time.sleep(seconds)
    b1 = machine_busy()
    return (b1[0] - b0[0]) / max(1, b1[1] - b0[1])


def wait_quiet(limit: float = 0.25, max_s: float = 180) -> float:
    """Others share this machine: wait (bounded) until their CPU use is under `limit`."""
    deadline = time.monotonic() + max_s
    busy = background_busy()
    if busy > limit:
        log(f"machine {busy * 100:.0f}% busy with other work: waiting up to {max_s:.0f} s for it to calm down")
    while busy > limit and time.monotonic() < deadline:
        busy = background_busy(5)
    if busy > limit:
        log(f"still {busy * 100:.0f}% busy: measuring anyway (recorded in the results)")
    return busy


def read_from_offset(path, offset: int) -> str:
    """What was appended to a log file since `offset` (its size before a measurement)."""
    with open(path, "rb") as f:
        f.seek(offset)
        return f.read().decode(errors="replace")


class SyslogSince:
    """System log lines written after a mark: from a file (the Slurm lab's own /dev/log
    listener), or, where journald owns /dev/log (systemd; the lab then starts no listener),
    from the journal, by cursor."""

    def __init__(self, path=None):
        self.path = Path(path) if path else None

    def mark(self):
        if self.path is not None:
            return self.path.stat().st_size
        out = subprocess.run(["journalctl", "-q", "-n", "0", "--show-cursor", "--no-pager"],
                             capture_output=True, text=True, timeout=30).stdout
        return out.rsplit("-- cursor: ", 1)[-1].strip() if "-- cursor: " in out else ""

    def since(self, mark) -> str:
        if self.path is not None:
            return read_from_offset(self.path, mark)
        # --sync: journald writes out what it has received first (root), so no line is read late
        subprocess.run(["journalctl", "--sync"], capture_output=True, timeout=30)
        journalctl = ["journalctl", "-q", "-o", "short", "--no-pager"]
        where = [f"--after-cursor={mark}"] if mark else []   # no cursor: the journal was empty at the mark
        return subprocess.run(journalctl + where, capture_output=True, text=True, timeout=60).stdout


def write_results(r: dict, out: str, render) -> None:
    """Results as JSON at out, the rendered report beside it (.txt) and on stdout."""
    Path(out).parent.mkdir(parents=True, exist_ok=True)
    with open(out, "w") as f:
        json.dump(r, f, indent=2, sort_keys=True)
    text = render(r)
    Path(out).with_suffix(".txt").write_text(text + "\n")
    print(text)


def connect_accept_close_ns(lsock: socket.socket, n: int, client_closes_first: bool = True) -> float:
    """ns per loopback connect+accept+close, over n connections to lsock. client_closes_first:
    the ordinary FIN close from the connecting side (False: the accepted side closes first)."""
    addr = lsock.getsockname()
    t0 = time.perf_counter_ns()
    for _ in range(n):
        c = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        c.connect(addr)
        s, _ = lsock.accept()
        first, second = (c, s) if client_closes_first else (s, c)
        first.close()
        second.close()
    return (time.perf_counter_ns() - t0) / n


def prog_run_stats(fd: int) -> tuple[int, int]:
    """(run_time_ns, run_cnt) of a BPF program from its fdinfo (counted only while
    kernel.bpf_stats_enabled is 1)."""
    t = c = 0
    with open(f"/proc/self/fdinfo/{fd}") as f:
        for line in f:
            k, _, v = line.partition(":")
            if k == "run_time_ns":
                t = int(v)
            elif k == "run_cnt":
                c = int(v)
    return t, c


def fork_workers(target, arg_tuples, cleanup: Cleanup, what: str):
    """Fork one process per argument tuple, each running target(*args, go, outq) and waiting
    on go before it starts its bounded loop; stopping them (by pid) is on cleanup.
    Returns (go, outq, reap): go.set() starts them all at once, cleanup.run_one(reap) stops them."""
    import multiprocessing
    ctx = multiprocessing.get_context("fork")
    go, outq = ctx.Event(), ctx.Queue()
    procs = [ctx.Process(target=target, args=(*args, go, outq), daemon=True) for args in arg_tuples]
    for p in procs:
        p.start()

    def reap():
        for p in procs:
            if p.is_alive():
                stop_pid(p.pid)
            p.join(5)
    cleanup.push(reap, what)
    return go, outq, reap


def ask_loop(port: int, munge_socket: str, q, duration: float, max_n: int, rate: float | None = None
             ) -> tuple[list, int, dict]:
    """Ask the tracer on loopback port about q until duration or max_n requests, back to back
    or paced at rate per second (a late start counts against latency). Returns (ns of each
    FOUND answer, BUSY refusals, other failures by reason); a BUSY client backs off 10 ms."""
    import random

    from callerid.client import RpcError, ask
    from callerid.protocol import Status
    lat, busy, errs = [], 0, {}
    end = time.monotonic() + duration
    interval_ns = int(1e9 / rate) if rate else 0
    due = time.perf_counter_ns() + int(random.random() * interval_ns)
    for _ in range(max_n):
        if time.monotonic() >= end:
            break
        if interval_ns:
            wait = due - time.perf_counter_ns()
            if wait > 0:
                time.sleep(wait / 1e9)
            t0, due = due, due + interval_ns
        else:
            t0 = time.perf_counter_ns()
        try:
            a = ask(("127.0.0.1", port), q, 2.0, munge_socket)
        except RpcError as exc:
            if "busy" in str(exc):
                busy += 1
                time.sleep(0.01)
            else:
                errs[exc.reason] = errs.get(exc.reason, 0) + 1
            continue
        if a.status != Status.FOUND:
            errs["not_found"] = errs.get("not_found", 0) + 1
            continue
        lat.append(time.perf_counter_ns() - t0)
    return lat, busy, errs
