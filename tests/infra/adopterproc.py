"""Run `callerid adopter` as a real daemon process for tests, in a test host's namespace."""

import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

from .netns import Netns
from .procs import alive, stop_pid, wait_for
from .tracerproc import toml_value

CALLERID = str(Path(sys.executable).parent / "callerid")


def write_config(path: Path, munge_socket: str, nodename: str, rpc_port: int, socket: str, metrics: str,
                 **adopter) -> None:
    lines = ["[common]", f'munge_socket = "{munge_socket}"', f'nodename = "{nodename}"', 'slurm_user = "root"',
             'log_level = "debug"', f"rpc_port = {rpc_port}", "", "[adopter]", f'socket = "{socket}"',
             f'metrics = "{metrics}"']
    lines += [f"{k} = {toml_value(v)}" for k, v in adopter.items()]
    path.write_text("\n".join(lines) + "\n")


@dataclass
class AdopterProc:
    config: Path
    log: Path
    netns: Netns | None = None
    proc: subprocess.Popen | None = None

    def start(self, timeout: float = 20.0) -> "AdopterProc":
        argv = [CALLERID, "--config", str(self.config), "adopter"]
        if self.netns:
            argv = self.netns.argv(argv)
        start = self.log.stat().st_size if self.log.exists() else 0
        self._logf = open(self.log, "ab")
        self.proc = subprocess.Popen(argv, stdout=self._logf, stderr=subprocess.STDOUT)

        def ready():
            if self.proc.poll() is not None:
                raise RuntimeError(f"adopter exited {self.proc.returncode}: {self.log.read_text()[-2000:]}")
            with open(self.log, "rb") as f:
                f.seek(start)
                return b"adopter serving" in f.read()
        wait_for(ready, timeout, "the adopter daemon")
        return self

    def stop(self):
        if self.proc is not None:
            stop_pid(self.proc.pid)
            self.proc.wait(10)
            self._logf.close()
            self.proc = None

    @property
    def running(self) -> bool:
        return self.proc is not None and alive(self.proc.pid)

    def log_text(self) -> str:
        return self.log.read_text(errors="replace")


def scrape_in(netns: Netns | None, url: str) -> dict:
    """Scrape a metrics endpoint that listens inside a test host's namespace."""
    from prometheus_client.parser import text_string_to_metric_families
    code = f"import urllib.request,sys;sys.stdout.write(urllib.request.urlopen({url!r},timeout=5).read().decode())"
    argv = [sys.executable, "-c", code]
    r = subprocess.run(netns.argv(argv) if netns else argv, capture_output=True, text=True, check=True, timeout=20)
    out = {}
    for fam in text_string_to_metric_families(r.stdout):
        for s in fam.samples:
            out[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return out
