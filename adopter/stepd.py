"""A job's owner asked of its extern step's slurmstepd, as pam_slurm_adopt does (stepd_get_uid).

On cgroup v2 every Slurm cgroup is root's, so the tree does not say whose a job is; on a
node of a multi-node job where only Slurm's own processes run (the extern step's, which
are root's from Slurm 23 on), no process says so either. slurmstepd knows: it listens on
<SlurmdSpoolDir>/<node>_<jobid>.<step> (a Unix socket, root only) and answers the step's
uid. The exchange, stable from Slurm 20.11 to 26.05 (src/common/stepd_api.c): send our
protocol version as a native int, read the stepd's (an int, negative on refusal); send
REQUEST_STEP_UID, read a native uint32.
"""

from __future__ import annotations

import os
import socket
import struct

EXTERN_STEP = 0xFFFFFFFC     # SLURM_EXTERN_CONT
REQUEST_STEP_UID = 20        # step_msg_t; numbering kept with DEFUNCT placeholders
# slurmstepd checks only that the client's version is at least its oldest supported one
# (req.c _handle_accept) and REQUEST_STEP_UID has one wire form, so a version newer than
# any release is accepted by all of them; the stepd's own version comes back and is unused.
CLIENT_PROTOCOL = 50 << 8    # (release << 8), as SLURM_*_PROTOCOL_VERSION; 22.05 is 38 << 8
DEFAULT_SPOOL = "/var/spool/slurmd"
_INT = struct.Struct("=i")
_UID = struct.Struct("=I")
NO_UID = 0xFFFFFFFF


def spool_dir(conf_text: str, nodename: str, hostname: str) -> str:
    """SlurmdSpoolDir from slurm.conf text (last setting wins, keys case-insensitive), with
    %n (node name) and %h (host name) expanded; Slurm's built-in default if unset."""
    value = DEFAULT_SPOOL
    for line in conf_text.splitlines():
        line = line.split("#", 1)[0].strip()
        key, sep, rest = line.partition("=")
        if sep and key.strip().lower() == "slurmdspooldir" and rest.strip():
            value = rest.strip().split()[0]
    return value.replace("%n", nodename).replace("%h", hostname)


def socket_path(spool: str, nodename: str, job_id: str) -> str | None:
    """The extern step's socket; None for a job id slurmstepd does not name sockets by (SLUID)."""
    if not job_id.isdigit():
        return None
    return os.path.join(spool, f"{nodename}_{job_id}.{EXTERN_STEP}")


def extern_uid(path: str, timeout: float) -> int | None:
    """The uid slurmstepd at `path` runs its step for; None if it cannot tell (gone, refused,
    too slow, not root-owned). Bounded by `timeout` seconds in all."""
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
        (version,) = _INT.unpack(_recv(s, _INT.size))
        if version < 0:
            return None
        s.sendall(_INT.pack(REQUEST_STEP_UID))
        (uid,) = _UID.unpack(_recv(s, _UID.size))
    except (OSError, ValueError):
        return None
    finally:
        s.close()
    return None if uid == NO_UID else uid


def _recv(s: socket.socket, n: int) -> bytes:
    buf = b""
    while len(buf) < n:
        chunk = s.recv(n - len(buf))
        if not chunk:
            raise ValueError("slurmstepd closed the connection")
        buf += chunk
    return buf
