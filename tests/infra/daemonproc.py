"""A callerid daemon run as a real process for tests: config file, log file, ready marker, stop by pid."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

from .netns import Netns
from .procs import alive, stop_pid

CALLERID = str(Path(sys.executable).parent / "callerid")
# Least seconds to wait for a daemon's readiness; set by the VM runner, where a BCC
# compile under emulation takes 33-55 s (../shared/LAB-NOTES.md, "Virtual machines").
READY_TIMEOUT_FLOOR = float(os.environ.get("CALLERID_TEST_READY_TIMEOUT", "0"))


def toml_value(v) -> str:
    """A Python value as TOML (the few types test configs use)."""
    if isinstance(v, bool):
        return str(v).lower()
    if isinstance(v, str):
        return f'"{v}"'
    if isinstance(v, (list, tuple)):
        return "[" + ", ".join(toml_value(x) for x in v) + "]"
    return str(v)


def config_text(munge_socket: str, nodename: str, rpc_port: int, log_level: str, section: str,
                options: dict) -> str:
    """A test daemon's callerid.toml: the [common] every test daemon shares (slurm_user root:
    the tests ask as root), then [section] with options."""
    common = {"munge_socket": munge_socket, "nodename": nodename, "slurm_user": "root", "log_level": log_level,
              "rpc_port": rpc_port}
    lines = ["[common]"] + [f"{k} = {toml_value(v)}" for k, v in common.items()] + ["", f"[{section}]"]
    lines += [f"{k} = {toml_value(v)}" for k, v in options.items()]
    return "\n".join(lines) + "\n"


def parse_metrics(text: str) -> dict[tuple, float]:
    """Prometheus text as {(name, ((label, value), ...)): value}."""
    from prometheus_client.parser import text_string_to_metric_families
    out = {}
    for fam in text_string_to_metric_families(text):
        for s in fam.samples:
            out[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return out


class DaemonProc:
    """`callerid --config CONFIG <subcommand>`, optionally inside a test host's namespace.
    Ready when the log, from this start on, contains `ready_marker`."""

    subcommand = ""
    ready_marker = b""

    def __init__(self, config: Path, log: Path, netns: Netns | None = None):
        self.config = config
        self.log = log
        self.netns = netns
        self.proc: subprocess.Popen | None = None
        self.env: dict[str, str] | None = None   # the daemon's environment; None: the test's
        self._logf = None
        self._log_start = 0

    def argv(self, *extra) -> list[str]:
        """The command line start() runs (a subclass may wrap it)."""
        argv = [CALLERID, "--config", str(self.config), self.subcommand, *extra]
        return self.netns.argv(argv) if self.netns else argv

    def start(self, *extra, wait: bool = True, timeout: float = 30.0):
        argv = self.argv(*extra)
        if self._logf:
            self._logf.close()
        self._logf = open(self.log, "ab")  # noqa: SIM115 - the daemon's stdout until it is restarted or stopped
        self._log_start = self.log.stat().st_size
        self.proc = subprocess.Popen(argv, stdout=self._logf, stderr=subprocess.STDOUT, env=self.env)
        if wait:
            self.wait_ready(timeout)
        return self

    def wait_ready(self, timeout: float):
        timeout = max(timeout, READY_TIMEOUT_FLOOR)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            with open(self.log, "rb") as f:
                f.seek(self._log_start)
                if self.ready_marker in f.read():
                    return
            if self.proc.poll() is not None:
                raise RuntimeError(f"{self.subcommand} exited with {self.proc.returncode}:\n{self.log_text()[-3000:]}")
            time.sleep(0.05)
        raise TimeoutError(f"{self.subcommand} not ready in {timeout}s:\n{self.log_text()[-3000:]}")

    def stop(self):
        if self.proc is not None:
            stop_pid(self.proc.pid)
            self.proc.wait(timeout=10)
            self._logf.close()
            self._logf = None
            self.proc = None

    @property
    def running(self) -> bool:
        return self.proc is not None and alive(self.proc.pid)

    def log_text(self) -> str:
        return self.log.read_text(errors="replace")
