"""A private munged for tests and the lab: its own socket, stopped by pid."""

from __future__ import annotations

import os
import pwd
import stat
import subprocess
import tempfile
from dataclasses import dataclass

from .procs import stop_pid, wait_for

MUNGED = "/usr/sbin/munged"
KEY = "/etc/munge/munge.key"


@dataclass
class Munged:
    pid: int
    socket: str
    dir: str

    def stop(self):
        stop_pid(self.pid)


def start(key: str = KEY, parent: str | None = None, new_key: bool = False) -> Munged:
    """parent: where to make munged's directory (default: the temp dir); it and its
    ancestors must be traversable by user munge and by the test users.
    new_key: ignore `key` and use a fresh random key (a munged of another cluster),
    kept in munged's directory."""
    pw = pwd.getpwnam("munge")
    # Not under pytest's tmp_path: its parents are 0700 and munged runs as munge;
    # 0755 so non-root test users can reach the socket.
    d = tempfile.mkdtemp(prefix="callerid-munge-", dir=parent)
    os.chmod(d, 0o755)
    os.chown(d, pw.pw_uid, pw.pw_gid)
    if new_key:
        key = f"{d}/munge.key"
        fd = os.open(key, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o400)
        with open(fd, "wb") as f:
            f.write(os.urandom(1024))
        os.chown(key, pw.pw_uid, pw.pw_gid)
    sock, pidfile = f"{d}/munge.sock", f"{d}/munged.pid"
    r = subprocess.run(["runuser", "-u", "munge", "--", MUNGED, f"--socket={sock}", f"--pid-file={pidfile}",
                        f"--log-file={d}/munged.log", f"--seed-file={d}/seed", f"--key-file={key}"],
                       capture_output=True, text=True, timeout=20)
    if r.returncode != 0:
        raise RuntimeError(f"munged failed to start: {r.stderr.strip()}")

    def ready():
        if os.path.exists(sock) and stat.S_ISSOCK(os.stat(sock).st_mode) and os.path.exists(pidfile):
            with open(pidfile) as f:
                text = f.read().strip()
            return int(text) if text else None
        return None

    pid = wait_for(ready, 10, "munged socket")
    return Munged(pid, sock, d)
