"""Each probe backend, chosen explicitly, attributes a loopback connection to its owner (VM tier smoke).

Run inside a VM guest by tests/vm/in_guest.sh; not collected on hosts (no test_ prefix),
where kprobe and fentry are expected to fail (../shared/LAB-NOTES.md).
"""

import json
import os
import socket
import subprocess
import sys
import time

import pytest

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


@pytest.mark.parametrize("backend", ["fentry", "kprobe", "tracepoint"])
def test_backend_attributes_loopback_connection(tracers, listener, backend):
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
        assert f"probe backend {backend} loaded in" in t.log_text(), t.log_text()[-2000:]
        assert ans["pid"] == client.pid, ans
        assert ans["source"] == "bpf", ans
    finally:
        client.kill()
        client.wait()
        t.stop()
