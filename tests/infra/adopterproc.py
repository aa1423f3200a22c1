"""Run `callerid adopter` as a real daemon process for tests, in a test host's namespace."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from .daemonproc import DaemonProc, config_text, parse_metrics
from .netns import Netns


def write_config(path: Path, munge_socket: str, nodename: str, rpc_port: int, socket: str, metrics: str,
                 log_level: str = "debug", **adopter) -> None:
    path.write_text(config_text(munge_socket, nodename, rpc_port, log_level, "adopter",
                                {"socket": socket, "metrics": metrics, **adopter}))


class AdopterProc(DaemonProc):
    subcommand = "adopter"
    ready_marker = b"adopter serving"


def scrape_in(netns: Netns | None, url: str) -> dict:
    """Scrape a metrics endpoint that listens inside a test host's namespace."""
    code = f"import urllib.request,sys;sys.stdout.write(urllib.request.urlopen({url!r},timeout=5).read().decode())"
    argv = [sys.executable, "-c", code]
    r = subprocess.run(netns.argv(argv) if netns else argv, capture_output=True, text=True, check=True, timeout=20)
    return parse_metrics(r.stdout)
