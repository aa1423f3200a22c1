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


# cookie keys on our network namespace's cookie (SO_NETNS_COOKIE, Linux 5.14) and its programs
# compare-and-swap a slot (5.12): on Debian 11's 5.10 the tracer refuses it and `auto` goes on.
COOKIE_KERNEL_FLOOR = (5, 14)


def kernel_version() -> tuple[int, ...]:
    return tuple(int(x) for x in os.uname().release.split("-")[0].split(".")[:2])


def expected_auto_pick() -> str:
    """What `auto` must pick on this guest: its first backend that can load here."""
    import bcc

    from callerid.tracer.probes import SOCKSTORE_BCC_FLOOR, bcc_version
    if kernel_version() >= COOKIE_KERNEL_FLOOR:
        return "cookie"
    if bcc_version(bcc) >= SOCKSTORE_BCC_FLOOR:
        return "sockstore"
    return "fentry"   # every image's kernel has BTF and fentry (docs/VM.md, "Platforms")


@pytest.mark.parametrize("backend", ["auto", "cookie", "sockstore", "fentry", "kprobe", "tracepoint"])
def test_backend_attributes_loopback_connection(tracers, listener, backend):
    import bcc

    from callerid.tracer.probes import SOCKSTORE_BCC_FLOOR, bcc_version
    if backend == "cookie" and kernel_version() < COOKIE_KERNEL_FLOOR:
        # the tracer must refuse cookie at start-up, saying why
        t = tracers.make(probe=backend)
        t.start(wait=False)
        assert t.proc.wait(timeout=600) == 1
        assert "cookie: this kernel cannot tell the network namespace's cookie" in t.log_text(), t.log_text()[-2000:]
        print(f"cookie: refused on kernel {os.uname().release}, as documented")
        return
    if backend == "sockstore" and bcc_version(bcc) < SOCKSTORE_BCC_FLOOR:
        # this BCC cannot make sockstore's pinned map: the tracer must refuse at start-up, saying why
        t = tracers.make(probe=backend)
        t.start(wait=False)
        assert t.proc.wait(timeout=600) == 1
        assert "cannot create the pinned socket-storage map" in t.log_text(), t.log_text()[-2000:]
        print(f"sockstore: refused on BCC {bcc.__version__}, as documented")
        return
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
