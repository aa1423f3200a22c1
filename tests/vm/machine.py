"""One qemu boot of an image on a throwaway overlay: started under the heavy lock, stopped by pid.

TCG only: /dev/kvm on these hosts is PVM and a stock kernel crawls under it
(../shared/LAB-NOTES.md, "Virtual machines"). The guest's only network is qemu's
private user network, restricted (no route out); the runner reaches its sshd
through one loopback port forward.
"""

from __future__ import annotations

import os
import re
import signal
import socket
import subprocess
import sys
import time
from contextlib import ExitStack
from pathlib import Path

from . import cache, image, recipe
from .lock import heavy_lock

RUNS = recipe.CACHE / "runs"
# panic=1 with qemu's -no-reboot: a guest kernel panic ends qemu at once (the run sees its ssh
# close) instead of leaving a dead guest for ssh's keepalive to notice minutes later
CMDLINE = ("root=/dev/vda rw console=ttyS0 systemd.unified_cgroup_hierarchy=1 net.ifnames=0 quiet "
           "panic=1")
PANIC = "Kernel panic - not syncing"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def qemu_argv(r: recipe.Recipe, overlay: Path, serial: Path, port: int, share: Path) -> list[str]:
    return [
        "qemu-system-x86_64", "-accel", "tcg,thread=multi", "-cpu", "max", "-smp", "2", "-m", "4G",
        "-machine", "q35", "-kernel", str(r.kernel), "-initrd", str(r.initrd), "-append", CMDLINE,
        "-drive", f"file={overlay},format=qcow2,if=virtio",
        "-nic", f"user,model=virtio-net-pci,restrict=on,hostfwd=tcp:127.0.0.1:{port}-:22",
        "-virtfs", f"local,path={share},mount_tag={image.SHARE_TAG},security_model=none,readonly=on,multidevs=remap",
        "-device", "virtio-rng-pci",
        "-display", "none", "-serial", f"file:{serial}", "-monitor", "none", "-no-reboot",
    ]


class Machine:
    """Context manager: heavy lock, overlay, qemu; on exit (error and Ctrl-C included) qemu
    is stopped by its pid, the overlay deleted and the lock released."""

    def __init__(self, r: recipe.Recipe, share: Path = recipe.REPO):
        self.recipe = r
        self.share = share
        RUNS.mkdir(parents=True, exist_ok=True)
        name = f"{r.suite.name}-{os.getpid()}"
        self.overlay = RUNS / f"{name}.qcow2"
        self.serial = RUNS / f"{name}.serial.log"
        self.port = 0
        self.proc: subprocess.Popen | None = None
        self.started = 0.0
        self._stack = ExitStack()

    def __enter__(self):
        self._stack.enter_context(heavy_lock())
        cache.mark_used(self.recipe)
        self._stack.callback(self._remove_overlay)
        subprocess.run(["qemu-img", "create", "-q", "-f", "qcow2", "-F", "raw", "-b", str(self.recipe.image),
                        str(self.overlay)], check=True)
        self.port = free_port()
        # own session: a Ctrl-C reaches us, and we stop qemu ourselves, by pid
        self.proc = subprocess.Popen(qemu_argv(self.recipe, self.overlay, self.serial, self.port, self.share),
                                     stdin=subprocess.DEVNULL, start_new_session=True)
        self.started = time.monotonic()
        self._stack.callback(self.stop)
        return self

    def __exit__(self, *exc):
        self._stack.close()

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def stop(self) -> None:
        if not self.alive():
            return
        self.proc.send_signal(signal.SIGTERM)  # qemu exits at once on SIGTERM; the overlay is thrown away anyway
        try:
            self.proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()

    def _remove_overlay(self) -> None:
        try:
            self.overlay.unlink()
        except FileNotFoundError:
            pass
        if self.serial.exists():  # keep the latest boot's console per suite, not one per run
            self.serial = self.serial.replace(RUNS / f"{self.recipe.suite.name}.serial.log")

    def console(self) -> str:
        try:
            return self.serial.read_text(errors="replace")
        except FileNotFoundError:
            return ""

    def serial_tail(self, n: int = 30) -> str:
        try:
            return "\n".join(self.serial.read_text(errors="replace").splitlines()[-n:])
        except FileNotFoundError:
            return "(no serial log)"


def panic_reason(console: str) -> str | None:
    """The guest kernel's own account of why it died (its first Oops/BUG line, else the panic
    line), or None when the console shows no panic."""
    lines = console.splitlines()
    at = next((i for i, line in enumerate(lines) if PANIC in line), None)
    if at is None:
        return None
    cause = next((line for line in lines[:at] if re.search(r"\b(Oops|BUG):", line)), lines[at])
    return re.sub(r"^.*?\[\s*[\d.]+\]\s*", "", cause).strip()


def sigterm_as_interrupt() -> None:
    """SIGTERM to the runner unwinds like Ctrl-C, so every cleanup runs."""
    def handler(signum, frame):
        raise KeyboardInterrupt
    signal.signal(signal.SIGTERM, handler)
    signal.signal(signal.SIGHUP, handler)


def note(msg: str) -> None:
    print(f"vm: {msg}", file=sys.stderr, flush=True)
