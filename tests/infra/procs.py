"""Start and stop test daemons by pid: never by name, never anything we did not start."""

from __future__ import annotations

import os
import shutil
import signal
import time

from callerid.linux import procfs

# Changing identity, namespace or cgroup between fork and exec is done by programs in
# front of argv (each execs the next, so the pid stays the one Popen returns), not by
# preexec_fn, which can deadlock in a process that has threads.

def as_user(argv: list[str], uid: int, gid: int) -> list[str]:
    """argv run as uid:gid with no supplementary groups (util-linux setpriv)."""
    return ["setpriv", f"--reuid={uid}", f"--regid={gid}", "--clear-groups", "--", *argv]


def in_netns(argv: list[str], netns: str) -> list[str]:
    """argv run in the network namespace at path netns (nsenter: `ip netns exec` would
    remount /sys and hide /sys/fs/cgroup)."""
    return ["nsenter", f"--net={netns}", "--", *argv]


def in_cgroups(argv: list[str], procs_files: list[str]) -> list[str]:
    """argv run after joining every cgroup whose cgroup.procs file is listed."""
    script = 'n=$1; shift; while [ "$n" -gt 0 ]; do echo 0 > "$1"; shift; n=$((n - 1)); done; exec "$@"'
    return ["/bin/sh", "-c", script, "sh", str(len(procs_files)), *procs_files, *argv]


def wait_started(p, argv0: str, uid: int, timeout: float = 10.0) -> None:
    """Wait until p runs argv0 as uid, i.e. every program in front of it has done its part
    (what preexec_fn gave for free: Popen returned after the final exec). Returns early
    if p has exited."""
    target = os.path.realpath(shutil.which(argv0) or argv0)

    def started():
        if p.poll() is not None:
            return True
        try:
            exe = os.readlink(f"/proc/{p.pid}/exe")
            with open(f"/proc/{p.pid}/status") as f:
                status = f.read()
        except OSError:
            return False
        return exe == target and procfs.parse_status_ids(status)[0] == uid
    # a slow machine (emulation, 64 logins at once) gets at least CALLERID_TEST_READY_TIMEOUT
    timeout = max(timeout, float(os.environ.get("CALLERID_TEST_READY_TIMEOUT", "0")))
    wait_for(started, timeout, f"{argv0} (pid {p.pid}) running as uid {uid}")


def alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(") ", 1)[1][0] != "Z"
    except (FileNotFoundError, ProcessLookupError, IndexError):
        # ESRCH: the process was reaped between open and read (seen on Linux 5.10)
        return False


def stop_pid(pid: int | None, timeout: float = 5.0) -> None:
    """SIGTERM, wait, then SIGKILL: only the pid given."""
    if not pid or not alive(pid):
        return
    try:
        os.kill(pid, signal.SIGTERM)
    except ProcessLookupError:
        return
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and alive(pid):
        time.sleep(0.02)
    if alive(pid):
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass


def wait_for(pred, timeout: float, what: str, interval: float = 0.02):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        v = pred()
        if v:
            return v
        time.sleep(interval)
    raise TimeoutError(f"timed out after {timeout:.1f}s waiting for {what}")
