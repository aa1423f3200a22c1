"""Where an RPC's time goes: py-spy on the daemon (wall and CPU views, bucketed by what the thread
is doing), cProfile of the client's ask(), and one libmunge round trip."""

from __future__ import annotations

import cProfile
import pstats
import re
import shutil
import subprocess
import time
from pathlib import Path

from bench.common import REPO, VENV_BIN, Cleanup, stop_pid, summary
from bench.daemon import Daemon
from bench.rpc_throughput import bench_throughput
from callerid import munge
from callerid.protocol import Query


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
    ("reading the request frame", lambda f: f[0] == "recv_exact"),
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
        waiting = leaf[0] == "RpcServer._accept_loop" and "accept()" in _src_line(leaf[1], leaf[2])
        if leaf[0] == "socket.accept" or waiting:
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
