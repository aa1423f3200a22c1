"""Tiny parent for tracer_bench.py: fork N children that each hold one connected TCP socket.

Run with `python3 -I -S bench/conn_children.py --count N --connect H:P[,H:P...]` (stdlib
only, so the parent stays small and forks cheaply). Each child connects to one of the
listeners (round robin in blocks of --per-listener), reports "pid sport lport" to the
parent over a pipe, points fds 0-2 at /dev/null and execs `sleep`, keeping the socket
open: an exec'd sleep costs a few hundred KiB, a forked Python several MiB.
Children get PR_SET_PDEATHSIG=SIGKILL, so they die with this parent whatever happens.

Protocol with the bench: one JSON line on stdout once every child is connected
({"children": [[pid, sport, lport], ...]} or {"error": "..."}); then the parent waits
for a line (or EOF) on stdin, SIGKILLs and reaps every child it made, prints
{"stopped": n} and exits. SIGTERM does the same.
"""

from __future__ import annotations

import argparse
import ctypes
import json
import os
import select
import signal
import socket
import sys
import time

PR_SET_PDEATHSIG = 1
SLEEP = "/bin/sleep"

_children: list[int] = []


def _libc():
    return ctypes.CDLL(None, use_errno=True)


def stop_children() -> int:
    for pid in _children:
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    reaped = 0
    deadline = time.monotonic() + 60
    for pid in _children:
        while time.monotonic() < deadline:
            try:
                done, _ = os.waitpid(pid, os.WNOHANG)
            except ChildProcessError:
                break
            if done:
                reaped += 1
                break
            time.sleep(0.001)
    _children.clear()
    return reaped


def child(addr, wfd: int, parent: int, cgroup_procs: list[str]) -> None:
    """Runs in the forked child; never returns."""
    try:
        _libc().prctl(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
        if os.getppid() != parent:
            os._exit(3)  # the parent died before the prctl: do not linger
        for f in cgroup_procs:  # join the job cgroups before connecting, as a job task would
            with open(f, "w") as fh:
                fh.write("0")
        s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        s.settimeout(10)
        s.connect(addr)
        os.write(wfd, f"{os.getpid()} {s.getsockname()[1]} {addr[1]}\n".encode())
        fd = s.detach()
        os.set_inheritable(fd, True)
        null = os.open("/dev/null", os.O_RDWR)
        for n in (0, 1, 2):
            os.dup2(null, n)
        os.execv(SLEEP, ["sleep", "86400"])
    except BaseException:  # noqa: BLE001 - a child must never run the parent's code
        os._exit(2)
    os._exit(2)


def main() -> int:
    p = argparse.ArgumentParser()
    p.add_argument("--count", type=int, required=True)
    p.add_argument("--connect", required=True, help="host:port[,host:port...] listeners")
    p.add_argument("--per-listener", type=int, default=2000)
    p.add_argument("--target-index", type=int, default=-1)
    p.add_argument("--target-cgroup-procs", default="", help="comma-separated cgroup.procs files")
    p.add_argument("--timeout", type=float, default=10.0, help="per child")
    a = p.parse_args()

    _libc().prctl(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)  # die with the bench
    signal.signal(signal.SIGTERM, lambda *_: (stop_children(), os._exit(0)))
    addrs = []
    for hp in a.connect.split(","):
        h, _, port = hp.rpartition(":")
        addrs.append((h, int(port)))
    cg = [f for f in a.target_cgroup_procs.split(",") if f]
    rfd, wfd = os.pipe()  # O_CLOEXEC: gone from the children once they exec
    me = os.getpid()
    rows, buf, error = [], b"", None
    try:
        for i in range(a.count):
            addr = addrs[min(i // a.per_listener, len(addrs) - 1)]
            pid = os.fork()
            if pid == 0:
                os.close(rfd)
                child(addr, wfd, me, cg if i == a.target_index else [])
            _children.append(pid)
            deadline = time.monotonic() + a.timeout
            while b"\n" not in buf:
                left = deadline - time.monotonic()
                if left <= 0 or not select.select([rfd], [], [], left)[0]:
                    raise TimeoutError(f"child {i} (pid {pid}) did not report within {a.timeout}s")
                buf += os.read(rfd, 4096)
            line, _, buf = buf.partition(b"\n")
            cpid, sport, lport = (int(x) for x in line.split())
            if cpid != pid:
                raise RuntimeError(f"report from pid {cpid}, expected {pid}")
            rows.append([cpid, sport, lport])
    except Exception as exc:  # noqa: BLE001 - reported to the bench as JSON
        error = f"{type(exc).__name__}: {exc}"
    sys.stdout.write(json.dumps({"error": error} if error else {"children": rows}) + "\n")
    sys.stdout.flush()
    try:
        sys.stdin.readline()
    finally:
        n = stop_children()
        try:
            sys.stdout.write(json.dumps({"stopped": n}) + "\n")
            sys.stdout.flush()
        except OSError:
            pass
    return 0


if __name__ == "__main__":
    sys.exit(main())
