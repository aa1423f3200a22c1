"""Run `callerid adopter` as a real daemon process for tests, in a test host's namespace."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from .daemonproc import DaemonProc, parse_metrics
from .netns import Netns
from .tracerproc import toml_value


def write_config(path: Path, munge_socket: str, nodename: str, rpc_port: int, socket: str, metrics: str,
                 log_level: str = "debug", **adopter) -> None:
    lines = ["[common]", f'munge_socket = "{munge_socket}"', f'nodename = "{nodename}"', 'slurm_user = "root"',
             f'log_level = "{log_level}"', f"rpc_port = {rpc_port}", "", "[adopter]", f'socket = "{socket}"',
             f'metrics = "{metrics}"']
    lines += [f"{k} = {toml_value(v)}" for k, v in adopter.items()]
    path.write_text("\n".join(lines) + "\n")


class AdopterProc(DaemonProc):
    subcommand = "adopter"
    ready_marker = b"adopter serving"


def scrape_in(netns: Netns | None, url: str) -> dict:
    """Scrape a metrics endpoint that listens inside a test host's namespace."""
    code = f"import urllib.request,sys;sys.stdout.write(urllib.request.urlopen({url!r},timeout=5).read().decode())"
    argv = [sys.executable, "-c", code]
    r = subprocess.run(netns.argv(argv) if netns else argv, capture_output=True, text=True, check=True, timeout=20)
    return parse_metrics(r.stdout)
