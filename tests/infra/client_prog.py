"""A test client: connect, report the 4-tuple on stdout, then obey 'close' / EOF on stdin.

Run as the test user inside a job cgroup; it names itself with --comm so the
test can check the comm the probe recorded.
"""

from __future__ import annotations

import argparse
import json
import socket
import sys


def main():
    p = argparse.ArgumentParser()
    p.add_argument("host")
    p.add_argument("port", type=int)
    p.add_argument("--family", choices=("4", "6", "mapped"), default="4")
    p.add_argument("--comm")
    p.add_argument("--count", type=int, default=1)
    p.add_argument("--sport", type=int, default=0, help="bind this source port (with --count 1)")
    a = p.parse_args()
    if a.comm:
        with open("/proc/self/comm", "w") as f:
            f.write(a.comm)
    fam = socket.AF_INET if a.family == "4" else socket.AF_INET6
    host = f"::ffff:{a.host}" if a.family == "mapped" else a.host
    socks = []
    for _ in range(a.count):
        s = socket.socket(fam, socket.SOCK_STREAM)
        s.settimeout(5)
        if a.sport:
            s.bind(("::" if fam == socket.AF_INET6 else "0.0.0.0", a.sport))
        s.connect((host, a.port))
        socks.append(s)
    print(json.dumps([{"src": s.getsockname()[0], "sport": s.getsockname()[1],
                       "dst": s.getpeername()[0], "dport": s.getpeername()[1]} for s in socks]), flush=True)
    for line in sys.stdin:
        if line.strip() == "close":
            for s in socks:
                s.close()
            print("closed", flush=True)
    for s in socks:
        s.close()


if __name__ == "__main__":
    main()
