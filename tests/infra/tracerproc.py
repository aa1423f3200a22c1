"""Run `callerid tracer` as a real daemon process for tests, and make many of them (TracerFactory)."""

from __future__ import annotations

import os
import shutil
import tempfile
import urllib.request
from pathlib import Path

from .daemonproc import DaemonProc, config_text, parse_metrics


def write_config(path: Path, munge_socket: str, pin_root: str, listen: list[str], metrics: str,
                 nodename: str = "testnode", rpc_port: int = 6828, log_level: str = "debug", **tracer) -> None:
    path.write_text(config_text(munge_socket, nodename, rpc_port, log_level, "tracer",
                                {"listen": listen, "metrics": metrics, "pin_root": pin_root, **tracer}))


class TracerProc(DaemonProc):
    subcommand = "tracer"
    ready_marker = b"tracer serving on"


def scrape(url: str) -> dict[tuple, float]:
    """Metrics as {(name, ((label, value), ...)): value}."""
    return parse_metrics(urllib.request.urlopen(url, timeout=5).read().decode())


def metric(samples: dict, name: str, **labels) -> float:
    return samples.get((name, tuple(sorted(labels.items()))), 0.0)


def metric_delta(before: dict, after: dict, name: str, **labels) -> float:
    """How much a sample grew between two scrapes."""
    return metric(after, name, **labels) - metric(before, name, **labels)


def free_port() -> int:
    import socket
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def new_pin_root() -> str:
    os.makedirs("/sys/fs/bpf", exist_ok=True)
    return tempfile.mkdtemp(prefix="callerid-test-", dir="/sys/fs/bpf")


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
        # CALLERID_TEST_PROBE runs the suite against another backend (e.g. sockstore)
        opts.setdefault("probe", os.environ.get("CALLERID_TEST_PROBE", "tracepoint"))
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
