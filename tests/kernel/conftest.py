"""Kernel-test fixtures: a running tracer daemon, job cgroups, and a client helper."""

import json
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

from tests.helpers import require
from tests.infra.jobtree import JobTree
from tests.infra.tracerproc import TracerProc, free_port, new_pin_root, write_config

INFRA = Path(__file__).resolve().parent.parent / "infra"


def require_bpf():
    require(os.geteuid() == 0, "root (loading BPF)")
    require(os.path.ismount("/sys/fs/bpf"), "bpffs at /sys/fs/bpf (scripts/setup.sh mounts it)")
    require(os.path.ismount("/sys/kernel/tracing"), "tracefs at /sys/kernel/tracing (scripts/setup.sh mounts it)")
    try:
        import bcc  # noqa: F401
    except ImportError:
        require(False, "BCC Python bindings (python3-bpfcc; venv with --system-site-packages)")


class TracerFactory:
    """Makes tracer daemons with their own config, pins and ports; stops them all at the end."""

    def __init__(self, munge_socket: str):
        self.munge_socket = munge_socket
        self.made: list[TracerProc] = []
        self.dirs: list[str] = []

    def make(self, netns=None, listen=None, pin_root=None, **opts) -> TracerProc:
        d = tempfile.mkdtemp(prefix="callerid-tracer-")
        os.chmod(d, 0o755)  # test users run `callerid --config` from here
        self.dirs.append(d)
        pin_root = pin_root or new_pin_root()
        self.dirs.append(pin_root)
        port = free_port()
        mport = free_port()
        opts.setdefault("probe", "tracepoint")
        listen = [f"127.0.0.1:{port}", f"[::1]:{port}"] if listen is None else listen
        cfg = Path(d, "callerid.toml")
        write_config(cfg, self.munge_socket, pin_root, listen, f"127.0.0.1:{mport}", rpc_port=port, **opts)
        t = TracerProc(cfg, Path(d, "tracer.log"), netns)
        t.port, t.metrics_url, t.pin_root = port, f"http://127.0.0.1:{mport}/metrics", pin_root
        self.made.append(t)
        return t

    def cleanup(self):
        for t in self.made:
            t.stop()
        for d in self.dirs:
            shutil.rmtree(d, ignore_errors=True)


@pytest.fixture(scope="module")
def tracers(munged):
    require_bpf()
    f = TracerFactory(munged.socket)
    try:
        yield f
    finally:
        f.cleanup()


@pytest.fixture
def jobs():
    require(os.geteuid() == 0, "root (creating job cgroups)")
    require(os.path.ismount("/sys/fs/cgroup/freezer"), "cgroup v1 freezer at /sys/fs/cgroup/freezer")
    tree = JobTree(node=f"t{os.getpid()}")
    try:
        yield tree
    finally:
        tree.cleanup()


def start_client(tree: JobTree, user, job: int, host: str, port: int, family="4", comm="cidclient",
                 count=1, netns=None):
    """Start tests/infra/client_prog.py as `user` inside job `job`; returns (proc, [tuples])."""
    argv = [sys.executable, str(INFRA / "client_prog.py"), host, str(port), "--family", family,
            "--comm", comm, "--count", str(count)]
    p = tree.popen(argv, user.uid, user.gid, job, "0", netns=netns.path if netns else None,
                   stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    line = p.stdout.readline()
    if not line:
        raise RuntimeError(f"client failed to connect (rc {p.wait(5)})")
    return p, json.loads(line)


def close_client(p):
    p.stdin.write("close\n")
    p.stdin.flush()
    assert p.stdout.readline().strip() == "closed"
