"""Commands in a running guest over ssh (root, the runner's key): output streamed, exit status returned."""

from __future__ import annotations

import shlex
import subprocess
import sys
import time
from pathlib import Path

from . import image, recipe
from .machine import Machine, note

SSH_OPTS = ["-F", "/dev/null", "-o", "StrictHostKeyChecking=no", "-o", "UserKnownHostsFile=/dev/null",
            "-o", "LogLevel=ERROR", "-o", "BatchMode=yes", "-o", "IdentitiesOnly=yes",
            "-o", "ConnectTimeout=10", "-o", "ServerAliveInterval=15", "-o", "ServerAliveCountMax=8"]
BOOT_TIMEOUT = 300


class Guest:
    def __init__(self, machine: Machine):
        self.machine = machine

    def ssh_argv(self, tty: bool = False) -> list[str]:
        return ["ssh", *SSH_OPTS, "-i", str(recipe.SSH_KEY), "-p", str(self.machine.port),
                *(["-t"] if tty else []), "root@127.0.0.1"]

    def wait_ready(self, timeout: float = BOOT_TIMEOUT) -> float:
        """Seconds from qemu start until ssh runs a command and the share is mounted."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if not self.machine.alive():
                raise RuntimeError(f"qemu exited during boot:\n{self.machine.serial_tail()}")
            try:
                r = subprocess.run(self.ssh_argv() + [f"mountpoint -q {image.SHARE_MOUNT}"],
                                   stdin=subprocess.DEVNULL, capture_output=True, timeout=60)
            except subprocess.TimeoutExpired:
                continue  # sshd accepted but the guest is still too busy booting to answer
            if r.returncode == 0:
                return time.monotonic() - self.machine.started
            time.sleep(2)
        raise TimeoutError(f"guest not reachable by ssh in {timeout:.0f} s:\n{self.machine.serial_tail()}")

    def run(self, argv: list[str], tty: bool = False, tee: Path | None = None) -> int:
        """argv in the guest as root, with /etc/callerid-vm.env exported; returns its exit status.
        With tee, the output is also appended to that file."""
        env = "set -a; . /etc/callerid-vm.env; set +a; "
        remote = env + ("exec " + shlex.join(argv) if argv else "exec bash -l")
        if tee is None:
            return subprocess.run(self.ssh_argv(tty) + [remote], stdin=None if tty else subprocess.DEVNULL).returncode
        with open(tee, "a", buffering=1) as out:  # line-buffered: the log follows the run
            p = subprocess.Popen(self.ssh_argv() + [remote], stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                                 stderr=subprocess.STDOUT, text=True, errors="replace")
            for line in p.stdout:
                sys.stdout.write(line)
                sys.stdout.flush()
                out.write(line)
            return p.wait()


def announce_boot(g: Guest) -> float:
    note(f"booting {g.machine.recipe.image.name} (TCG, ssh on 127.0.0.1:{g.machine.port}, "
         f"serial {g.machine.serial})")
    secs = g.wait_ready()
    note(f"guest ready in {secs:.0f} s")
    return secs
