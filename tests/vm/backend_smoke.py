"""Each probe backend, chosen explicitly, attributes a loopback connection to its owner (VM tier smoke).

Run inside a VM guest by tests/vm/in_guest.sh; not collected on hosts (no test_ prefix),
where kprobe and fentry are expected to fail (../shared/LAB-NOTES.md).
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time

import pytest

from callerid.tracer.probes import AUTO_ORDER
from tests.infra.backend_floors import refusal, refused_here

CALLERID = os.path.join(os.path.dirname(sys.executable), "callerid")
CLIENT = "import socket,sys,time; s=socket.create_connection(('127.0.0.1', int(sys.argv[1]))); " \
         "print(s.getsockname()[1], flush=True); time.sleep(600)"


@pytest.fixture(scope="module")
def listener():
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    s.listen(16)
    yield s
    s.close()


def expected_auto_pick() -> str:
    """What `auto` must pick on this guest: its first backend that can load here."""
    return next(b for b in AUTO_ORDER if refusal(b) is None)


@pytest.mark.parametrize("backend", ["auto", "cookie", "sockstore", "fentry", "kprobe", "tracepoint"])
def test_backend_attributes_loopback_connection(tracers, listener, backend):
    if backend != "auto" and refused_here(tracers, backend):
        return   # refused at start-up, saying why (Debian 11: cookie by its kernel, sockstore by its BCC)
    t0 = time.monotonic()
    t = tracers.make(probe=backend).start()
    started = time.monotonic() - t0
    port = listener.getsockname()[1]
    client = subprocess.Popen([sys.executable, "-c", CLIENT, str(port)], stdout=subprocess.PIPE, text=True)
    try:
        sport = client.stdout.readline().strip()
        listener.accept()[0].close()
        r = subprocess.run([CALLERID, "--config", str(t.config), "query", "--json", "--server",
                            f"127.0.0.1:{t.port}", "127.0.0.1", sport, "127.0.0.1", str(port)],
                           capture_output=True, text=True, timeout=60)
        assert r.returncode == 0, r.stdout + r.stderr
        ans = json.loads(r.stdout)
        print(f"{backend}: tracer ready in {started:.1f} s; answer {ans}")
        loaded = expected_auto_pick() if backend == "auto" else backend
        assert f"probe backend {loaded} loaded in" in t.log_text(), t.log_text()[-2000:]
        assert ans["pid"] == client.pid, ans
        assert ans["source"] == "bpf", ans
    finally:
        client.kill()
        client.wait()
        t.stop()
