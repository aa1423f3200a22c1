"""What a job's extern step's slurmstepd answers, as pam_slurm_adopt asks it: the job's
owner (stepd_get_uid) and its X11 forwarding (stepd_get_x11_display).

On cgroup v2 every Slurm cgroup is root's, so the tree does not say whose a job is; on a
node of a multi-node job where only Slurm's own processes run (the extern step's, which
are root's from Slurm 23 on), no process says so either. slurmstepd knows: it listens on
<SlurmdSpoolDir>/<node>_<jobid>.<step> (a Unix socket, root only) and answers the step's
uid. The exchange, stable from Slurm 20.11 to 26.05 (src/common/stepd_api.c): send our
protocol version as a native int, read the stepd's (an int, negative on refusal); send
REQUEST_STEP_UID, read a native uint32. REQUEST_X11_DISPLAY (22.05, src/slurmd/slurmstepd/req.c
_handle_x11_display): read an int display number (0: no forwarding), then an int length and
that many bytes of the XAUTHORITY path with its NUL (length 0: no temporary XAUTHORITY file).
"""

from __future__ import annotations

import os
import socket
import struct
import time
from dataclasses import dataclass
from typing import Callable

from callerid.sockio import recv_exact

EXTERN_STEP = 0xFFFFFFFC     # SLURM_EXTERN_CONT
REQUEST_STEP_UID = 20        # step_msg_t; numbering kept with DEFUNCT placeholders
REQUEST_X11_DISPLAY = 23
MAX_XAUTHORITY = 4096        # PATH_MAX: a longer "path" is not one slurmstepd made
# slurmstepd checks only that the client's version is at least its oldest supported one
# (req.c _handle_accept) and REQUEST_STEP_UID has one wire form, so a version newer than
# any release is accepted by all of them; the stepd's own version comes back and is unused.
CLIENT_PROTOCOL = 50 << 8    # (release << 8), as SLURM_*_PROTOCOL_VERSION; 22.05 is 38 << 8
DEFAULT_SPOOL = "/var/spool/slurmd"
_INT = struct.Struct("=i")
_UID = struct.Struct("=I")
NO_UID = 0xFFFFFFFF


def _settings(conf_text: str):
    """(key lowercased, value) of each KEY=VALUE line of slurm.conf text, comments dropped."""
    for line in conf_text.splitlines():
        line = line.split("#", 1)[0].strip()
        key, sep, rest = line.partition("=")
        if sep and rest.strip():
            yield key.strip().lower(), rest.strip()


def spool_dir(conf_text: str, nodename: str, hostname: str) -> str:
    """SlurmdSpoolDir from slurm.conf text (last setting wins, keys case-insensitive), with
    %n (node name) and %h (host name) expanded; Slurm's built-in default if unset."""
    value = DEFAULT_SPOOL
    for key, rest in _settings(conf_text):
        if key == "slurmdspooldir":
            value = rest.split()[0]
    return value.replace("%n", nodename).replace("%h", hostname)


def may_forward_x11(conf_text: str) -> bool:
    """Whether jobs here can have X11 forwarding: only an extern step started with
    PrologFlags=X11 sets it up, so without it there is nothing to ask slurmstepd. A
    slurm.conf that includes other files may set it there: then the answer is yes."""
    flags = ""
    for line in conf_text.splitlines():
        if line.split("#", 1)[0].strip().lower().startswith("include"):
            return True
    for key, rest in _settings(conf_text):
        if key == "prologflags":
            flags = rest.split()[0]
    return "x11" in (f.strip().lower() for f in flags.split(","))


def socket_path(spool: str, nodename: str, job_id: str) -> str | None:
    """The extern step's socket; None for a job id slurmstepd does not name sockets by (SLUID)."""
    if not job_id.isdigit():
        return None
    return os.path.join(spool, f"{nodename}_{job_id}.{EXTERN_STEP}")


@dataclass(frozen=True)
class X11:
    """A job's X11 forwarding: the session's DISPLAY and XAUTHORITY, as pam_slurm_adopt sets them."""

    display: int
    xauthority: str | None = None

    def environment(self) -> dict:
        env = {"DISPLAY": f"localhost:{self.display}.0"}
        if self.xauthority:
            env["XAUTHORITY"] = self.xauthority
        return env


def extern_uid(path: str, timeout: float) -> int | None:
    """The uid slurmstepd at `path` runs its step for; None if it cannot tell (gone, refused,
    too slow, not root-owned). Bounded by `timeout` seconds in all."""
    def read(take: Callable[[int], bytes]) -> int | None:
        (uid,) = _UID.unpack(take(_UID.size))
        return None if uid == NO_UID else uid
    return _ask(path, timeout, REQUEST_STEP_UID, read)


def x11_display(path: str, timeout: float) -> X11 | None:
    """The X11 forwarding of the step at `path`; None if it has none or cannot tell."""
    def read(take: Callable[[int], bytes]) -> X11 | None:
        (display,) = _INT.unpack(take(_INT.size))
        (length,) = _INT.unpack(take(_INT.size))
        if not 0 <= length <= MAX_XAUTHORITY:
            raise ValueError(f"XAUTHORITY length {length}")
        raw = take(length) if length else b""
        xauth = raw.split(b"\0", 1)[0].decode("utf-8", "replace") if raw else None
        if display <= 0:
            return None
        return X11(display, xauth if xauth and xauth.startswith("/") else None)
    return _ask(path, timeout, REQUEST_X11_DISPLAY, read)


def _ask(path: str, timeout: float, request: int, read: Callable[[Callable[[int], bytes]], object]):
    """One request to the slurmstepd at `path` after the version handshake; read() parses its
    reply from take(n). None if it cannot answer (gone, refused, too slow, not root-owned,
    garbled). `timeout` bounds the whole exchange, not each step of it."""
    deadline = time.monotonic() + max(timeout, 0.001)
    try:
        st = os.lstat(path)
    except OSError:
        return None
    if st.st_uid != 0:
        return None  # slurmstepd runs as root: a socket someone else made is not its
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        s.settimeout(max(timeout, 0.001))
        s.connect(path)
        s.sendall(_INT.pack(CLIENT_PROTOCOL))
        (version,) = _INT.unpack(recv_exact(s, _INT.size, deadline))
        if version < 0:
            return None
        s.sendall(_INT.pack(request))
        return read(lambda n: recv_exact(s, n, deadline))
    except (OSError, ValueError):
        return None
    finally:
        s.close()

