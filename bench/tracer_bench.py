#!/usr/bin/env python3
"""callerid tracer benchmark: map lookup and RPC vs Slurm's /proc scan, probe cost, start-up, throughput.

    sudo .venv/bin/python3 bench/tracer_bench.py [--quick] [--out bench/results/tracer.json]

One run measures, side by side:
  1. answering "who owns SRC:SPORT->DST:DPORT" on a node with N helper processes, each
     holding one connected loopback TCP socket (N = 100, 1000, 10000; quick: 100, 1000):
     (a) in-process BPF map lookup (raw ConnMap.lookup, and the full Resolver answer),
     (b) end-to-end RPC with MUNGE against a real `callerid tracer` daemon,
     (c) Slurm's /proc scan (bench/slurm_proc_scan.py), (d) `ss -tnp`, (e) psutil;
  2. the probe's added cost per loopback connect+accept+close;
  3. tracer start-up: process start to first map entry and first RPC answer;
  4. RPC throughput and latency with 1 and 16 concurrent client processes;
  and profiles the RPC path (py-spy on the daemon if installed, plus cProfile of the client).
Everything it starts (children, daemons, munged, bpffs pin dirs, job cgroups) is removed
in a finally block, also on Ctrl-C and SIGTERM. docs/BENCHMARKS.md has a full run.
"""

from __future__ import annotations

import argparse
import cProfile
import datetime
import json
import math
import multiprocessing
import os
import platform
import pstats
import re
import select
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import traceback
import urllib.request
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from bench.slurm_proc_scan import (
    find_inode_by_conn,
    find_pid_by_inode,
    psutil_lookup,
    slurm_lookup,
    ss_lookup,
)
from callerid import munge
from tests.infra.procs import stop_pid
from callerid.client import RpcError, ask
from callerid.protocol import Query, Source, Status

VENV_BIN = Path(sys.executable).parent
CHILDREN_PROG = REPO / "bench" / "conn_children.py"
JOB_ID = 4242
PER_LISTENER = 2000        # connections left in one listener's accept queue (somaxconn is larger)
LISTEN_BACKLOG = 4096
NODE = "benchnode"

TARGETS = {
    "map_flat": "map lookup flat in process count (p50 at the largest N within 1.5x of the smallest)",
    "rpc_p99": "end-to-end RPC p99 < 1 ms on loopback",
    "inproc_speedup": "at 10,000 processes: in-process lookup >= 10,000x faster than the /proc scan",
    "rpc_speedup": "at 10,000 processes: end-to-end RPC >= 1,000x faster than the /proc scan",
    "probe_cost": "probe cost < 1 us per connection",
}


# --------------------------------------------------------------------------- utilities

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


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def new_pin_root() -> str:
    return tempfile.mkdtemp(prefix="callerid-bench-", dir="/sys/fs/bpf")


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


# --------------------------------------------------------------------------- tracer daemon

class SyslogSink:
    """A /dev/log stand-in that reads and drops every datagram, as journald or rsyslog would.

    The daemon logs every answered RPC at info, to stderr and, when /dev/log exists, to
    syslog (callerid/logs.py). On a shared machine /dev/log may belong to someone's test
    listener that stops reading or vanishes mid-run (then each log record costs a blocked
    send or a printed traceback). So the bench runs each daemon in a private mount
    namespace with this sink bind-mounted over /dev/log: syslog stays in the measured path,
    at the cost of a healthy syslog daemon, and nothing outside the bench is touched."""

    def __init__(self, cleanup: Cleanup):
        import threading
        self.dir = tempfile.mkdtemp(prefix="callerid-bench-syslog-")
        cleanup.push(lambda: shutil.rmtree(self.dir, ignore_errors=True), "syslog sink dir")
        self.path = os.path.join(self.dir, "log")
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind(self.path)
        os.chmod(self.path, 0o666)
        self.sock.settimeout(0.2)
        self.received = 0
        self._stop = threading.Event()
        self._t = threading.Thread(target=self._drain, name="syslog-sink", daemon=True)
        self._t.start()
        cleanup.push(self.close, "syslog sink")

    def _drain(self):
        while not self._stop.is_set():
            try:
                self.sock.recv(65536)
                self.received += 1
            except OSError:
                continue

    def close(self):
        self._stop.set()
        self._t.join(2)
        self.sock.close()


class Daemon:
    """A `callerid tracer` subprocess with its own config, pins, ports and log; stopped by pid."""

    sink: SyslogSink | None = None  # set once by main()

    def __init__(self, munge_socket: str, cleanup: Cleanup, tag: str):
        self.dir = tempfile.mkdtemp(prefix=f"callerid-bench-{tag}-")
        cleanup.push(lambda: shutil.rmtree(self.dir, ignore_errors=True), f"{self.dir}")
        self.pin_root = new_pin_root()
        cleanup.push(lambda: shutil.rmtree(self.pin_root, ignore_errors=True), f"pins {self.pin_root}")
        self.port, self.mport = free_port(), free_port()
        self.munge_socket = munge_socket
        self.config = Path(self.dir, "callerid.toml")
        self.log = Path(self.dir, "tracer.log")
        # log_level info, as in production: every answered RPC is logged at info.
        self.config.write_text("\n".join([
            "[common]", f'munge_socket = "{munge_socket}"', f'nodename = "{NODE}"', 'slurm_user = "root"',
            'log_level = "info"', f"rpc_port = {self.port}", "", "[tracer]",
            f'listen = ["127.0.0.1:{self.port}"]', f'metrics = "127.0.0.1:{self.mport}"',
            f'pin_root = "{self.pin_root}"', 'probe = "tracepoint"', ""]))
        self.proc = None
        self._logf = None
        self.t0 = self.wall0 = 0.0
        self._cleanup = cleanup
        self._stop_fn = cleanup.push(self.stop, f"tracer daemon ({tag})")

    @property
    def pins(self) -> Path:
        """The daemon's pin directory: its open (conns) and closed maps."""
        from callerid.tracer.probes import pin_dir
        return pin_dir(self.pin_root)

    def start(self):
        argv = [str(VENV_BIN / "callerid"), "--config", str(self.config), "tracer"]
        # The daemon also logs to syslog when /dev/log exists at start (callerid/logs.py):
        # give it the bench's own draining sink there, in a private mount namespace.
        self.syslog = "none (no /dev/log on this machine)"
        if Daemon.sink is not None and os.path.exists("/dev/log") and not os.path.isdir("/dev/log"):
            argv = ["unshare", "--mount", "--propagation", "private", "--", "sh", "-c",
                    'mount --bind "$0" /dev/log && exec "$@"', Daemon.sink.path] + argv
            self.syslog = "bench sink bind-mounted over /dev/log"
        self._logf = open(self.log, "ab")  # noqa: SIM115 - open for the daemon's lifetime, closed in stop()
        self.wall0 = time.time()
        self.t0 = time.perf_counter()
        self.proc = subprocess.Popen(argv, stdout=self._logf, stderr=subprocess.STDOUT)
        return self

    def wait_serving(self, timeout: float = 60.0):
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if "tracer serving on" in self.log_text():
                return
            if self.proc.poll() is not None:
                raise RuntimeError(f"tracer exited with {self.proc.returncode}:\n{self.log_text()[-3000:]}")
            time.sleep(0.02)
        raise TimeoutError(f"tracer not serving after {timeout}s:\n{self.log_text()[-3000:]}")

    def log_text(self) -> str:
        try:
            return self.log.read_text(errors="replace")
        except OSError:
            return ""

    def logged_probe_load_seconds(self) -> float | None:
        m = re.search(r"probe backend \S+ loaded in ([0-9.]+)s", self.log_text())
        return float(m.group(1)) if m else None

    def logged_serving_after(self) -> float | None:
        """Seconds from process start to the 'tracer serving on' log line (log clock, ms resolution)."""
        m = re.search(r"^(\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3}) .*tracer serving on", self.log_text(), re.MULTILINE)
        if not m:
            return None
        t = datetime.datetime.strptime(m.group(1), "%Y-%m-%d %H:%M:%S,%f").timestamp()
        return t - self.wall0

    def metrics(self) -> dict:
        from prometheus_client.parser import text_string_to_metric_families
        text = urllib.request.urlopen(f"http://127.0.0.1:{self.mport}/metrics", timeout=5).read().decode()
        out = {}
        for fam in text_string_to_metric_families(text):
            for s in fam.samples:
                if not s.labels:
                    out[s.name] = s.value
                else:
                    out[s.name + "{" + ",".join(f"{k}={v}" for k, v in sorted(s.labels.items())) + "}"] = s.value
        return out

    def ask(self, q: Query, timeout: float = 2.0):
        return ask(("127.0.0.1", self.port), q, timeout, self.munge_socket)

    def stop(self):
        if self.proc is not None:
            stop_pid(self.proc.pid)
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                pass
            self.proc = None
        if self._logf is not None:
            self._logf.close()
            self._logf = None

    def logging_errors(self) -> int:
        """Tracebacks the daemon's logging printed (e.g. /dev/log vanished after start)."""
        return self.log_text().count("--- Logging error ---")

    def shutdown(self):
        """Stop now and remove pins and files (instead of at the end)."""
        self.stop()
        self._cleanup.remove(self._stop_fn)
        shutil.rmtree(self.pin_root, ignore_errors=True)


def measure_startup(d: Daemon, timeout: float = 60.0) -> dict:
    """Start d; poll with a fresh loopback connection each round until it shows up in the
    pinned map (t_map), then until the RPC answers FOUND from BPF for one (t_rpc)."""
    from callerid.tracer.bpfmap import Connections
    from callerid.tracer.layout import make_key

    lsock = listener()
    conns = None
    pair = None
    t_map = t_rpc = None
    d.start()
    try:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline and t_rpc is None:
            if d.proc.poll() is not None:
                raise RuntimeError(f"tracer exited with {d.proc.returncode}:\n{d.log_text()[-3000:]}")
            if pair:
                for s in pair:
                    s.close()
            pair = connected_pair(lsock)
            c = pair[0]
            sport, lport = c.getsockname()[1], lsock.getsockname()[1]
            if t_map is None:
                if conns is None:
                    try:
                        conns = Connections.open_pinned(d.pins)
                    except OSError:
                        conns = None
                if conns is not None:
                    o = conns.lookup(make_key("127.0.0.1", sport, "127.0.0.1", lport))
                    if o is not None and o.tgid == os.getpid():
                        t_map = time.perf_counter() - d.t0
            if t_map is not None:
                try:
                    a = d.ask(Query.make("127.0.0.1", sport, "127.0.0.1", lport), timeout=1.0)
                    if a.status == Status.FOUND and a.source == Source.BPF and a.pid == os.getpid():
                        t_rpc = time.perf_counter() - d.t0
                        break
                except RpcError:
                    pass
            time.sleep(0.01)
        if t_rpc is None:
            raise TimeoutError(f"tracer gave no answer within {timeout}s:\n{d.log_text()[-3000:]}")
    finally:
        if pair:
            for s in pair:
                s.close()
        lsock.close()
        if conns is not None:
            conns.close()
    d.wait_serving(10)
    m = d.metrics()
    return {"first_map_entry_s": t_map, "first_rpc_answer_s": t_rpc,
            "serving_logged_s": d.logged_serving_after(),
            "probe_load_logged_s": d.logged_probe_load_seconds(),
            "probe_load_metric_s": m.get("callerid_probe_load_duration_seconds"),
            "reconcile_s": m.get("callerid_reconcile_last_duration_seconds"),
            "reconciled_connections": m.get("callerid_reconcile_inserted_connections_total")}


# --------------------------------------------------------------------------- 2. probe cost

TRACEPOINTS = ((b"sock:inet_sock_set_state", b"tracepoint__sock__inet_sock_set_state"),)


def conn_loop_ns(lsock: socket.socket, n: int, max_s: float, chunk: int = 250) -> list:
    """ns per connect+accept+close, one value per chunk of `chunk` iterations."""
    addr = lsock.getsockname()
    out = []
    start = time.monotonic()
    done = 0
    while done < n and time.monotonic() - start < max_s:
        t0 = time.perf_counter_ns()
        for _ in range(chunk):
            c = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            c.connect(addr)
            s, _ = lsock.accept()
            s.close()
            c.close()
        out.append((time.perf_counter_ns() - t0) / chunk)
        done += chunk
    return out


def _prog_run_stats(fd: int) -> tuple[int, int]:
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


def bpf_program_time(probe, lsock, iters: int, cleanup: Cleanup) -> dict:
    """Time spent inside the BPF programs per connection, from the kernel's own BPF run-time
    statistics (a separate phase: turning the statistics on adds a clock read per run).
    The rest of the added cost is the tracepoint dispatch (perf event, argument record)."""
    path = Path("/proc/sys/kernel/bpf_stats_enabled")
    try:
        fds = {fn.decode(): probe.bpf.funcs[fn].fd for _, fn in TRACEPOINTS}
        before = path.read_text().strip()
    except (KeyError, OSError, AttributeError) as exc:
        return {"error": f"BPF run-time statistics unavailable: {exc}"}
    restore = cleanup.push(lambda: path.write_text(before), "kernel.bpf_stats_enabled")
    try:
        path.write_text("1")
        s0 = {k: _prog_run_stats(fd) for k, fd in fds.items()}
        n = len(conn_loop_ns(lsock, iters, 10, 100)) * 100
        s1 = {k: _prog_run_stats(fd) for k, fd in fds.items()}
    finally:
        cleanup.run_one(restore)
    out = {"connections": n}
    for k in fds:
        dt, dc = s1[k][0] - s0[k][0], s1[k][1] - s0[k][1]
        out[k] = {"runs_per_connection": dc / n, "ns_per_connection": dt / n, "ns_per_run": dt / dc if dc else None}
    out["ns_per_connection"] = sum(out[k]["ns_per_connection"] for k in fds)
    out["runs_per_connection"] = sum(out[k]["runs_per_connection"] for k in fds)
    return out


def loaded_callerid_programs() -> int:
    """BPF tracepoint programs on this kernel named like callerid's (sock__inet_sock,
    tcp__tcp_destro): another tracer (e.g. tests run by others) adds its own cost and noise.
    -1 if the kernel's program list cannot be read."""
    import ctypes
    try:
        from bcc import libbcc
        lib = libbcc.lib
        lib.bpf_prog_get_next_id.argtypes = [ctypes.c_uint32, ctypes.POINTER(ctypes.c_uint32)]
        nxt, cur, count = ctypes.c_uint32(0), 0, 0
        for _ in range(100000):
            if lib.bpf_prog_get_next_id(cur, ctypes.byref(nxt)) != 0:
                break
            cur = nxt.value
            fd = lib.bpf_prog_get_fd_by_id(cur)
            if fd < 0:
                continue
            buf, ln = ctypes.create_string_buffer(256), ctypes.c_uint32(256)
            try:
                if lib.bpf_obj_get_info_by_fd(fd, buf, ctypes.byref(ln)) != 0:
                    continue
            finally:
                os.close(fd)
            # struct bpf_prog_info: type at offset 0, name[16] at offset 64
            if int.from_bytes(buf.raw[0:4], "little") == 5 and buf.raw[64:80].split(b"\0")[0] in (
                    b"sock__inet_sock", b"tcp__tcp_destro"):
                count += 1
        return count
    except Exception:  # noqa: BLE001 - informational only
        return -1


def bench_probe_cost(args, cleanup: Cleanup) -> dict:
    """ns per loopback connect+accept+close without and with the tracepoint probe.

    The probe is loaded once; its tracepoint is detached and re-attached between
    short chunks (250 connections, ~12 ms) in an ABBA order, so slow drifts in machine
    load cancel out in each pair's difference. A detached tracepoint costs nothing, the
    same as no probe; a never-loaded baseline is measured before and after as a check."""
    from callerid.tracer import probes

    chunk, pairs = 100, (150 if args.quick else 500)
    pin_root = new_pin_root()
    cleanup.push(lambda: shutil.rmtree(pin_root, ignore_errors=True), f"pins {pin_root}")
    lsock = listener(512)
    cleanup.push(lsock.close, "probe-cost listener")
    conn_loop_ns(lsock, 2000, 5, chunk)  # warm-up
    unloaded = conn_loop_ns(lsock, 10 * chunk, 10, chunk)
    log(f"probe cost: no probe loaded: {fmt_ns(statistics.median(unloaded))} per connection")
    probe = probes.load("tracepoint", pin_root=pin_root)
    cleanup.push(probe.close, "in-process probe")
    load_s = probe.load_seconds
    stats0 = probe.stats()
    attached = True

    def set_attached(want: bool):
        nonlocal attached
        if want == attached:
            return
        for tp, fn in TRACEPOINTS:
            if want:
                probe.bpf.attach_tracepoint(tp=tp, fn_name=fn)
            else:
                probe.bpf.detach_tracepoint(tp)
        attached = want

    with_probe, without, added = [], [], []
    other_progs = max(-1, loaded_callerid_programs() - 2)  # minus our two
    if other_progs:
        log(f"probe cost: note: {other_progs} other callerid-like BPF programs are loaded on this kernel")
    try:
        deadline = time.monotonic() + (30 if args.quick else 90)
        for i in range(pairs):
            if time.monotonic() > deadline:
                break
            order = (True, False) if i % 2 == 0 else (False, True)  # ABBA
            got = {}
            for want in order:
                set_attached(want)
                got[want] = conn_loop_ns(lsock, chunk, 5, chunk)[0]
            with_probe.append(got[True])
            without.append(got[False])
            added.append(got[True] - got[False])
        set_attached(True)
        stats1 = probe.stats()
        prog_time = bpf_program_time(probe, lsock, 50 * chunk, cleanup)
    finally:
        cleanup.run_one(probe.close)
    unloaded2 = conn_loop_ns(lsock, 10 * chunk, 10, chunk)
    cleanup.run_one(lsock.close)
    n_attached = len(with_probe) * chunk
    est = stats1["established"] - stats0["established"]
    log(f"probe cost: {len(added)} pairs, added p50 {fmt_ns(statistics.median(added))}")
    return {
        "chunk": chunk, "pairs": len(added), "probe_load_s": load_s,
        "baseline_ns": statistics.median(without), "with_probe_ns": statistics.median(with_probe),
        "never_loaded_ns_before": statistics.median(unloaded), "never_loaded_ns_after": statistics.median(unloaded2),
        "added_ns": statistics.median(added), "added_ns_p25": pctl(added, 25), "added_ns_p75": pctl(added, 75),
        "added_ns_min": min(added), "added_ns_max": max(added),
        "map_entries_per_attached_connection": est / n_attached if n_attached else None,
        # Interference (other work on the 2 cores) only ever adds time: the least disturbed
        # chunks, the 10th percentiles, give a second estimate that noise cannot inflate.
        "added_ns_p10_vs_p10": pctl(with_probe, 10) - pctl(without, 10),
        "bpf_program": prog_time, "other_callerid_programs_loaded": other_progs,
    }


# --------------------------------------------------------------------------- 1. lookup vs busyness

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
    from tests.infra.jobtree import JobTree
    from callerid.tracer.bpfmap import Connections
    from callerid.tracer.layout import make_key
    from callerid.tracer.lookup import Resolver

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
        out = {"n": n, "spawn_s": spawn_s, "node": counts, "target": {"pid": pid, "query": str(q),
               "index_in_proc_order": target_index}, "methods": res, "correct": ok, "slurm_scan_split": slurm_split, "daemon": dstate}
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


# --------------------------------------------------------------------------- 4. throughput

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


# --------------------------------------------------------------------------- profile

def munge_microbench(munge_socket: str, n: int) -> dict:
    payload = b"x" * 72   # a request's size: query + answer key, encrypted for root as the client does
    enc, creds = [], []
    for _ in range(n):
        t0 = time.perf_counter_ns()
        creds.append(munge.encode(payload, munge_socket, secret_for_uid=0))
        enc.append(time.perf_counter_ns() - t0)
    dec = []
    for c in creds:
        t0 = time.perf_counter_ns()
        munge.decode(c, munge_socket)
        dec.append(time.perf_counter_ns() - t0)
    return {"encode": summary(enc), "decode": summary(dec)}


_PYSPY_FRAME = re.compile(r"^(?P<func>.+?) \((?P<file>[^():]*)(?::(?P<line>\d+))?\)$")
_SRC_CACHE: dict[str, list[str]] = {}


def _frames(stack: str) -> list[tuple[str, str, int]]:
    """py-spy raw frames 'Qual.name (pkg/file.py:line)' -> (qualname, pkg/file.py, line)."""
    out = []
    for fr in stack.split(";"):
        m = _PYSPY_FRAME.match(fr.strip())
        if m:
            out.append((m.group("func"), m.group("file"), int(m.group("line") or 0)))
        else:
            out.append((fr.strip(), "", 0))
    return out


def _src_line(file: str, line: int) -> str:
    """Source text of a product file's line (py-spy names them relative to the repo)."""
    if file not in _SRC_CACHE:
        try:
            _SRC_CACHE[file] = (REPO / file).read_text().splitlines()
        except OSError:
            _SRC_CACHE[file] = []
    lines = _SRC_CACHE[file]
    return lines[line - 1] if 0 < line <= len(lines) else ""


SERVER_BUCKETS = (  # the first frame from the leaf outwards that matches names the bucket
    ("munged: decode the request credential", lambda f: f[0] == "decode" and f[1].endswith("callerid/munge.py")),
    ("Resolver.lookup (map + /proc + job parse)", lambda f: f[0] == "Resolver.lookup"),
    ("logging the answer (log.info per RPC)", lambda f: f[1].startswith("logging/")),
    ("prometheus metrics", lambda f: f[1].startswith("prometheus_client/")),
    ("reading the request frame", lambda f: f[0] == "_recv_exact"),
    ("sending the answer", lambda f: f[0] == "RpcServer._serve_frames" and "sendall" in _src_line(f[1], f[2])),
    ("wire encoding/decoding (protocol.py)", lambda f: f[1].endswith("callerid/protocol.py")),
)


def _pyspy_bucket(fr) -> str | None:
    """Name what a daemon thread is doing in one py-spy sample; None for idle waits of
    threads that do not serve requests (the accept thread waiting in accept(), sweeper sleeps)."""
    names = [f[0] for f in fr]
    if "RpcServer._serve" in names:
        for f in reversed(fr):
            hit = next((lab for lab, pred in SERVER_BUCKETS if pred(f)), None)
            if hit:
                return hit
        return "rpc thread: other (thread bootstrap/exit, socket close, loop)"
    if "RpcServer._accept_loop" in names:
        leaf = fr[-1]
        if leaf[0] == "socket.accept" or (leaf[0] == "RpcServer._accept_loop" and "accept()" in _src_line(leaf[1], leaf[2])):
            return None
        return "accept thread: starting a thread per connection" if "Thread.start" in names else "accept thread: other"
    if "Tracer._sweep_loop" in names:
        return None if "Event.wait" in names else "sweeper: walking the whole map"
    return None  # main thread, metrics HTTP server: idle here


def summarize_pyspy(raw: str, rate: int, requests: int) -> dict:
    """ms per request in each bucket (samples / rate / requests)."""
    buckets: dict[str, int] = {}
    for line in raw.splitlines():
        stack, _, count = line.rpartition(" ")
        if not count.isdigit():
            continue
        label = _pyspy_bucket(_frames(stack))
        if label:
            buckets[label] = buckets.get(label, 0) + int(count)
    per = 1000 / rate / requests if requests else 0
    return {k: v * per for k, v in sorted(buckets.items(), key=lambda kv: -kv[1])}


def run_pyspy(daemon: Daemon, qargs, dur: float, idle: bool, cleanup: Cleanup, keep: Path | None) -> dict:
    """py-spy record the daemon while one client asks back to back."""
    rate = 500
    raw = Path(daemon.dir, f"pyspy-{'wall' if idle else 'cpu'}.raw")
    argv = [str(VENV_BIN / "py-spy"), "record", "-p", str(daemon.proc.pid), "-d", str(int(dur) + 1), "-r", str(rate),
            "-f", "raw", "-o", str(raw), "--nonblocking"] + (["--idle"] if idle else [])
    rec = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    stop_rec = cleanup.push(lambda: stop_pid(rec.pid), "py-spy")
    time.sleep(0.5)
    tp = bench_throughput(daemon, 1, dur - 1, qargs, cleanup)
    try:
        _, err = rec.communicate(timeout=dur + 30)
    except subprocess.TimeoutExpired:
        err = "timeout"
    cleanup.run_one(stop_rec)
    if not raw.exists():
        return {"error": (err or "no output")[-500:]}
    # Samples cover dur+1 s while requests ran dur-1 s: scale to the requests' window.
    text = raw.read_text()
    if keep:
        shutil.copy(raw, keep)
    window = (int(dur) + 1) / tp["duration_s"] if tp["duration_s"] else 1
    per_req = {k: v / window for k, v in summarize_pyspy(text, rate, tp["requests"]).items()}
    return {"ms_per_request": per_req, "requests": tp["requests"], "rpc_p50_ns_under_profiler": tp.get("p50_ns")}


def profile_rpc(daemon: Daemon, qargs, args, cleanup: Cleanup) -> dict:
    out = {}
    dur = 4 if args.quick else 8
    if (VENV_BIN / "py-spy").exists():
        # Wall view (--idle): where a request's rpc thread spends its time, blocked or not.
        out["pyspy_wall"] = run_pyspy(daemon, qargs, dur, True, cleanup, Path(args.out).with_suffix(".pyspy-wall.raw"))
        # CPU view: where the daemon burns CPU per request, all threads.
        out["pyspy_cpu"] = run_pyspy(daemon, qargs, dur, False, cleanup, Path(args.out).with_suffix(".pyspy-cpu.raw"))
    else:
        out["pyspy_error"] = "py-spy not installed (.venv/bin/pip install py-spy)"

    # Client side: cProfile (wall clock) of ask() in this process.
    q = Query.make(*qargs)
    prof = cProfile.Profile()
    n = 0
    start = time.monotonic()
    prof.enable()
    while n < 300 and time.monotonic() - start < 10:
        daemon.ask(q)
        n += 1
    prof.disable()
    st = pstats.Stats(prof)
    total = enc = dec = conn = 0.0
    for (file, _, func), (_, _, _, ct, _) in st.stats.items():
        if file.endswith("callerid/client.py") and func == "ask":
            total = ct
        elif file.endswith("callerid/munge.py") and func == "encode":
            enc = ct
        elif file.endswith("callerid/protocol.py") and func == "open_answer":
            dec = ct
        elif func == "create_connection" and file.endswith("socket.py"):
            conn = ct
    out["client_cprofile"] = {
        "calls": n, "ask_ns": total / n * 1e9 if n else None,
        "munge_encode_share": enc / total if total else None, "tag_check_share": dec / total if total else None,
        "tcp_connect_share": conn / total if total else None,
        "rest_share (server time + framing)": (total - enc - dec - conn) / total if total else None,
    }
    out["munge_microbench"] = munge_microbench(daemon.munge_socket, 200 if not args.quick else 100)
    return out


# --------------------------------------------------------------------------- report

METHOD_NAMES = (
    ("map_raw", "(a) map lookup, raw (ConnMap.lookup)"),
    ("resolver", "(a) Resolver.lookup (map + /proc check + job)"),
    ("rpc", "(b) RPC end-to-end with MUNGE"),
    ("slurm_scan", "(c) Slurm /proc scan (slurm_lookup)"),
    ("ss", "(d) ss -tnp (ss_lookup)"),
    ("psutil", "(e) psutil.net_connections"),
)


def verdicts(r: dict, quick: bool) -> list[dict]:
    out = []
    lk = r["lookup"]
    ns = sorted(int(k) for k in lk)
    lo, hi = lk[str(ns[0])]["methods"], lk[str(ns[-1])]["methods"]
    f = hi["map_raw"]["p50_ns"] / lo["map_raw"]["p50_ns"]
    fr = hi["resolver"]["p50_ns"] / lo["resolver"]["p50_ns"]
    out.append({"target": TARGETS["map_flat"], "met": f <= 1.5 and fr <= 1.5,
                "result": f"raw map p50 x{f:.2f}, Resolver p50 x{fr:.2f} from N={ns[0]} to N={ns[-1]}"})
    worst = max((lk[str(n)]["methods"]["rpc"]["p99_ns"], n) for n in ns)
    out.append({"target": TARGETS["rpc_p99"], "met": worst[0] < 1e6,
                "result": f"worst sequential p99 {fmt_ns(worst[0])} (N={worst[1]}) = {worst[0] / 1e6:.2f}x the 1 ms budget; "
                          f"1 client p99 {fmt_ns(r['throughput']['1']['p99_ns'])}, "
                          f"16 clients p99 {fmt_ns(r['throughput']['16']['p99_ns'])}"})
    top = lk[str(ns[-1])]["methods"]
    scan = top["slurm_scan"]["p50_ns"]
    have10k = 10000 in ns
    label = "" if have10k else f" [quick mode: largest N is {ns[-1]}, target not assessable]"
    sr, sm = scan / top["resolver"]["p50_ns"], scan / top["map_raw"]["p50_ns"]
    out.append({"target": TARGETS["inproc_speedup"] + " [raw map lookup]", "met": (sm >= 10000) if have10k else None,
                "result": f"{fmt_x(sm)} (p50 vs p50 at N={ns[-1]}){label}"})
    out.append({"target": TARGETS["inproc_speedup"] + " [full Resolver answer: map + /proc check + job]",
                "met": (sr >= 10000) if have10k else None,
                "result": f"{fmt_x(sr)} (p50 vs p50 at N={ns[-1]}){label}"})
    rr = scan / top["rpc"]["p50_ns"]
    rr99 = scan / top["rpc"]["p99_ns"]
    out.append({"target": TARGETS["rpc_speedup"], "met": (rr >= 1000) if have10k else None,
                "result": f"{fmt_x(rr)} (p50 vs p50), {fmt_x(rr99)} (scan p50 vs RPC p99) at N={ns[-1]}{label}"})
    pc = r["probe_cost"]["added_ns"]
    out.append({"target": TARGETS["probe_cost"], "met": pc < 1000,
                "result": f"{fmt_ns(pc)} added per connect+accept+close (= {pc / 1000:.2f}x the 1 us budget; "
                          f"interquartile {fmt_ns(r['probe_cost']['added_ns_p25'])}..{fmt_ns(r['probe_cost']['added_ns_p75'])})"})
    return out


def render(r: dict) -> str:
    L = []
    m = r["machine"]
    L.append(f"callerid tracer benchmark, {r['mode']} mode, {r['date']}")
    L.append(f"machine: {m['os']}, kernel {m['kernel']}, {m['cpu']}, {m['cores']} cores, {m['mem_gib']} GiB; "
             f"Python {m['python']}, BCC {m['bcc']}, {m['munge']}")
    env = r.get("daemon_env", {})
    L.append(f"background CPU busy (others' work) at start / end: {r['background_cpu_busy_start'] * 100:.0f}% / "
             f"{r['background_cpu_busy_end'] * 100:.0f}%")
    L.append(f"tracer daemons log at info to a file and to syslog: {env.get('syslog')} ({env.get('syslog_records')} "
             f"records); daemon logging errors: {env.get('logging_errors', '?')}")
    L.append("")
    lk = r["lookup"]
    ns = sorted(int(k) for k in lk)
    L.append("1. Lookup of one connection vs node busyness: p50 / p99 (runs)")
    hdr = f"{'method':<48}" + "".join(f"{'N=' + str(n):>30}" for n in ns)
    L.append(hdr)
    for key, name in METHOD_NAMES:
        row = f"{name:<48}"
        for n in ns:
            s = lk[str(n)]["methods"][key]
            ok = "" if lk[str(n)]["correct"][key] else " WRONG"
            row += f"{fmt_ns(s['p50_ns']) + ' / ' + fmt_ns(s['p99_ns']) + ' (' + str(s['n']) + ')' + ok:>30}"
        L.append(row)
    L.append(f"{'  node: processes / open fds / TCP sockets':<48}" + "".join(
        f"{str(lk[str(n)]['node']['processes']) + ' / ' + str(lk[str(n)]['node']['fds']) + ' / ' + str(lk[str(n)]['node']['tcp_sockets']):>30}"
        for n in ns))
    L.append(f"{'  (c) split: /proc/net/tcp parse + fd walk':<48}" + "".join(
        f"{fmt_ns(lk[str(n)]['slurm_scan_split']['tcp_table_ns']) + ' + ' + fmt_ns(lk[str(n)]['slurm_scan_split']['fd_walk_ns']):>30}"
        for n in ns))
    L.append(f"{'  (c) fd walk CPU, tick-sampled: kernel + user':<48}" + "".join(
        f"{fmt_ns(lk[str(n)]['slurm_scan_split']['fd_walk_kernel_ns']) + ' + ' + fmt_ns(lk[str(n)]['slurm_scan_split']['fd_walk_user_ns']):>30}"
        for n in ns))
    L.append(f"{'  tracer sweeper: last sweep / map entries':<48}" + "".join(
        f"{fmt_ns(lk[str(n)]['daemon'].get('sweep_last_ns')) + ' / ' + str(lk[str(n)]['daemon'].get('map_entries')):>30}"
        for n in ns))
    L.append("   speed-up vs the Slurm /proc scan (scan p50 / method p50):")
    for key, name in METHOD_NAMES:
        if key == "slurm_scan":
            continue
        row = f"{'   ' + name:<48}"
        for n in ns:
            mm = lk[str(n)]["methods"]
            row += f"{fmt_x(mm['slurm_scan']['p50_ns'] / mm[key]['p50_ns']):>30}"
        L.append(row)
    L.append("")
    pc = r["probe_cost"]
    L.append(f"2. Probe cost per loopback connect+accept+close (Python loop; {pc['pairs']} ABBA pairs of "
             f"{pc['chunk']}-connection chunks, probe attached / detached)")
    L.append(f"   added {fmt_ns(pc['added_ns'])} per connection (median of the pairs' differences; interquartile range "
             f"{fmt_ns(pc['added_ns_p25'])}..{fmt_ns(pc['added_ns_p75'])})")
    L.append(f"   chunk medians: no probe {fmt_ns(pc['baseline_ns'])}, with probe {fmt_ns(pc['with_probe_ns'])} (machine "
             f"load drifts between pairs dominate these; the paired difference cancels it)")
    L.append(f"   least-disturbed chunks (p10 with probe - p10 without): {fmt_ns(pc['added_ns_p10_vs_p10'])} added")
    L.append(f"   never-loaded baseline before/after: {fmt_ns(pc['never_loaded_ns_before'])} / "
             f"{fmt_ns(pc['never_loaded_ns_after'])}; other callerid-like BPF programs loaded meanwhile (others' tests): "
             f"{pc['other_callerid_programs_loaded'] if pc['other_callerid_programs_loaded'] >= 0 else 'unknown'}")
    L.append(f"   probe load (compile+load+attach+self-test) in-process: {pc['probe_load_s']:.2f} s; "
             f"map entries per connection while attached: {pc['map_entries_per_attached_connection']:.2f}")
    bp = pc.get("bpf_program", {})
    if "ns_per_connection" in bp:
        L.append(f"   time inside the BPF programs (kernel.bpf_stats_enabled, separate phase): {fmt_ns(bp['ns_per_connection'])} "
                 f"per connection over {bp['runs_per_connection']:.1f} program runs "
                 f"({fmt_ns(bp['ns_per_connection'] / bp['runs_per_connection'])} per run)")
    elif bp:
        L.append(f"   BPF program run time: {bp.get('error')}")
    L.append("")
    st = r["startup"]
    L.append("3. Start-up of `callerid tracer` (process start -> ...), runs: " + ", ".join(
        f"map {x['first_map_entry_s']:.2f} s / RPC {x['first_rpc_answer_s']:.2f} s (probe load {x['probe_load_logged_s']:.2f} s, "
        f"reconcile {x['reconcile_s'] * 1000:.0f} ms)" for x in st["runs"]))
    L.append(f"   median: first map entry {st['median_first_map_entry_s']:.2f} s, first RPC answer "
             f"{st['median_first_rpc_answer_s']:.2f} s, probe load as logged {st['median_probe_load_s']:.2f} s")
    busy = r.get("startup_busy")
    if busy:
        L.append(f"   on the busy node (N={busy['n']}): first map entry {busy['first_map_entry_s']:.2f} s, first RPC "
                 f"answer {busy['first_rpc_answer_s']:.2f} s, probe load {busy['probe_load_logged_s']:.2f} s, reconcile "
                 f"{busy['reconcile_s']:.2f} s ({busy['reconciled_connections'] or 0:.0f} connections put in the map)")
    L.append("")
    L.append("4. RPC throughput (each client a process doing ask() back to back)")
    for c in ("1", "16"):
        t = r["throughput"][c]
        L.append(f"   {c:>2} client(s): {t['req_per_s']:.0f} req/s over {t['duration_s']:.1f} s, p50 {fmt_ns(t['p50_ns'])}, "
                 f"p99 {fmt_ns(t['p99_ns'])}, errors {t['errors']}")
        cpu = t.get("cpu_ms_per_request")
        if cpu:
            L.append(f"      CPU per request: daemon {cpu['daemon']:.2f} ms, munged {cpu['munged']:.2f} ms, client "
                     f"processes {cpu['clients']:.2f} ms; machine CPU busy {t['machine_cpu_busy'] * 100:.0f}% "
                     f"of {r['machine']['cores']} cores; daemon-measured handler time (decode + lookup + encode "
                     f"+ log) mean {fmt_ns(t.get('daemon_handle_mean_ns'))}")
    L.append("")
    p = r.get("profile", {})
    L.append("Profile of the RPC path")
    for key, title in (("pyspy_wall", "server, wall time per request (py-spy --idle, rpc thread blocked or running)"),
                       ("pyspy_cpu", "server, CPU time per request (py-spy, on-CPU samples of all daemon threads)")):
        ps = p.get(key)
        if not ps:
            continue
        if "error" in ps:
            L.append(f"   {title}: py-spy failed: {ps['error']}")
            continue
        L.append(f"   {title}; {ps['requests']} requests from 1 client, p50 under the profiler "
                 f"{fmt_ns(ps['rpc_p50_ns_under_profiler'])}:")
        for k, v in sorted(ps["ms_per_request"].items(), key=lambda kv: -kv[1]):
            if v >= 0.005:
                L.append(f"     {v * 1000:6.0f} us  {k}")
    if "pyspy_error" in p:
        L.append(f"   py-spy: {p['pyspy_error']}")
    c = p.get("client_cprofile")
    if c:
        L.append(f"   client (cProfile of ask(), {c['calls']} calls, {fmt_ns(c['ask_ns'])} each): munge.encode "
                 f"{c['munge_encode_share'] * 100:.0f}%, answer tag check {c['tag_check_share'] * 100:.0f}%, "
                 f"TCP connect {c['tcp_connect_share'] * 100:.0f}%, waiting for the server + framing "
                 f"{c['rest_share (server time + framing)'] * 100:.0f}%")
    mb = p.get("munge_microbench")
    if mb:
        L.append(f"   one libmunge round trip to munged: encode p50 {fmt_ns(mb['encode']['p50_ns'])} "
                 f"(p99 {fmt_ns(mb['encode']['p99_ns'])}), decode p50 {fmt_ns(mb['decode']['p50_ns'])} "
                 f"(p99 {fmt_ns(mb['decode']['p99_ns'])}); an RPC makes 2 of them (the client encodes, the server decodes)")
    L.append("")
    L.append("Targets")
    for v in r["verdicts"]:
        tag = "MET   " if v["met"] else ("n/a   " if v["met"] is None else "MISSED")
        L.append(f"   {tag} {v['target']}: {v['result']}")
    return "\n".join(L)


# --------------------------------------------------------------------------- main

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


def write_results(r: dict, out: str, render) -> None:
    """Results as JSON at out, the rendered report beside it (.txt) and on stdout."""
    Path(out).parent.mkdir(parents=True, exist_ok=True)
    with open(out, "w") as f:
        json.dump(r, f, indent=2, sort_keys=True)
    text = render(r)
    Path(out).with_suffix(".txt").write_text(text + "\n")
    print(text)


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
         "date": datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d %H:%M UTC"),
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
