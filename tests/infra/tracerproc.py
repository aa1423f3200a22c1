"""Run `callerid tracer` as a real daemon process for tests: config file, log file, stop by pid."""

import os
import shutil
import subprocess
import sys
import tempfile
import time
import urllib.request
from dataclasses import dataclass
from pathlib import Path

from .netns import Netns
from .procs import alive, stop_pid

VENV_BIN = Path(sys.executable).parent


def toml_value(v) -> str:
    """A Python value as TOML (the few types test configs use)."""
    if isinstance(v, bool):
        return str(v).lower()
    if isinstance(v, str):
        return f'"{v}"'
    if isinstance(v, (list, tuple)):
        return "[" + ", ".join(toml_value(x) for x in v) + "]"
    return str(v)


def write_config(path: Path, munge_socket: str, pin_root: str, listen: list[str], metrics: str,
                 nodename: str = "testnode", rpc_port: int = 6828, **tracer) -> None:
    lines = ["[common]", f'munge_socket = "{munge_socket}"', f'nodename = "{nodename}"',
             'slurm_user = "root"', 'log_level = "debug"', f"rpc_port = {rpc_port}", "", "[tracer]",
             "listen = [" + ", ".join(f'"{a}"' for a in listen) + "]", f'metrics = "{metrics}"',
             f'pin_root = "{pin_root}"']
    lines += [f"{k} = {toml_value(v)}" for k, v in tracer.items()]
    path.write_text("\n".join(lines) + "\n")


@dataclass
class TracerProc:
    config: Path
    log: Path
    netns: Netns | None = None
    proc: subprocess.Popen | None = None

    def start(self, *extra, wait: bool = True, timeout: float = 30.0) -> "TracerProc":
        argv = [str(VENV_BIN / "callerid"), "--config", str(self.config), "tracer", *extra]
        if self.netns:
            argv = self.netns.argv(argv)
        if getattr(self, "_logf", None):
            self._logf.close()
        self._logf = open(self.log, "ab")
        self._log_start = self.log.stat().st_size
        self.proc = subprocess.Popen(argv, stdout=self._logf, stderr=subprocess.STDOUT)
        if wait:
            self.wait_ready(timeout)
        return self

    def log_text(self) -> str:
        return self.log.read_text(errors="replace")

    def wait_ready(self, timeout: float):
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            with open(self.log, "rb") as f:
                f.seek(self._log_start)
                if b"tracer serving on" in f.read():
                    return
            if self.proc.poll() is not None:
                raise RuntimeError(f"tracer exited with {self.proc.returncode}:\n{self.log_text()[-3000:]}")
            time.sleep(0.05)
        raise TimeoutError(f"tracer not ready in {timeout}s:\n{self.log_text()[-3000:]}")

    def stop(self):
        if self.proc is not None:
            stop_pid(self.proc.pid)
            self.proc.wait(timeout=10)
            self._logf.close()

    @property
    def running(self) -> bool:
        return self.proc is not None and alive(self.proc.pid)


def scrape(url: str) -> dict[tuple, float]:
    """Metrics as {(name, ((label, value), ...)): value}."""
    from prometheus_client.parser import text_string_to_metric_families
    text = urllib.request.urlopen(url, timeout=5).read().decode()
    out = {}
    for fam in text_string_to_metric_families(text):
        for s in fam.samples:
            out[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return out


def metric(samples: dict, name: str, **labels) -> float:
    return samples.get((name, tuple(sorted(labels.items()))), 0.0)


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
