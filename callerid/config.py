"""Configuration: one TOML file, one dataclass per daemon, every option with its default.

docs/CONFIG.md is generated from the `help` metadata here (callerid config --doc).
"""

from __future__ import annotations

import socket
from dataclasses import dataclass, field, fields
from pathlib import Path

from .protocol import MAX_FRAME_PAYLOAD

try:  # Python 3.11+; RHEL/Rocky 9's system Python (3.9), which its BCC binds to, needs tomli
    import tomllib
except ImportError:  # pragma: no cover - exercised on the Python 3.9 platform
    import tomli as tomllib

DEFAULT_CONFIG = Path("/etc/callerid/callerid.toml")
# The PAM applications (pam_callerid.so runs inside them) the adopter serves by default (adopt_exe).
# OpenSSH >= 9.8 runs each connection's privileged half, the one that calls PAM and holds
# the TCP socket, as a separate program, /usr/lib/openssh/sshd-session (Debian 13,
# RHEL 10); before that it is sshd itself.
DEFAULT_PAM_APPLICATIONS = ("sshd", "sshd-session")
DEFAULT_RPC_PORT = 6828
DEFAULT_TRACER_METRICS = "[::]:9828"
DEFAULT_ADOPTER_METRICS = "[::]:9829"


class ConfigError(ValueError):
    """The configuration file is unreadable or has a bad key or value."""


def opt(default, help: str, lo=None, hi=None, choices: tuple = (), address: bool = False):
    """An option: its default, its help text (docs/CONFIG.md), and the values it accepts —
    numbers from lo to hi inclusive, strings among choices, addresses parse_addr() reads
    (address=True; an empty string switches an endpoint off). The adopter's action_*
    values are checked by adopter.policy, their one definition."""
    meta = {"help": help, "lo": lo, "hi": hi, "choices": choices, "address": address}
    if isinstance(default, list):
        return field(default_factory=lambda: list(default), metadata=meta)
    return field(default=default, metadata=meta)


MAP_MAX = 1 << 24   # BPF hash maps this large take GiBs of kernel memory: surely a typo


@dataclass
class CommonConfig:
    munge_socket: str = opt("/run/munge/munge.socket.2", "munged's socket, for making and checking RPC credentials.")
    slurm_user: str = opt("slurm", "SlurmUser of the cluster: besides root, the only user any answer is given to.")
    nodename: str = opt("", "This node's Slurm NodeName; empty means the short host name.")
    log_level: str = opt("info", "debug, info, warning or error.", choices=("debug", "info", "warning", "error"))
    rpc_port: int = opt(DEFAULT_RPC_PORT,
        "TCP port of the callerid RPC (the tracer listens, the adopter asks).", lo=1, hi=65535)

    def node(self) -> str:
        return self.nodename or socket.gethostname().split(".")[0]


@dataclass
class TracerConfig:
    listen: list = opt([], "RPC listen addresses as ADDR:PORT or [ADDR6]:PORT; empty means [::]:rpc_port, dual stack.",
        address=True)
    metrics: str = opt(DEFAULT_TRACER_METRICS, "Address of the /metrics endpoint; empty disables it.", address=True)
    probe: str = opt("auto",
        "Probe backend: auto, cookie, sockstore, fentry, kprobe or tracepoint. auto tries them in that order "
        "(cheapest first) and takes the first that passes its self-test. A forced backend that cannot load is fatal.",
        choices=("auto", "cookie", "sockstore", "tracepoint", "kprobe", "fentry"))
    pin_root: str = opt("/sys/fs/bpf/callerid", "bpffs directory for pinned maps; the layout version is appended.")
    replace_pinned: bool = opt(False, "Replace pinned maps whose layout does not match instead of refusing to start.")
    max_connections: int = opt(131072,
        "Capacity of the map of open connections. It is an LRU map: from about 90% full the kernel evicts the least "
        "recently used entries; evicted connections are still answered, slowly, by the /proc fallback. Closed "
        "connections live in a map of their own (max_closed_connections), so churn does not fill this one. "
        "cookie backend: outgoing connections of this node open at once; its one preallocated hash holds "
        "max_connections + max_closed_connections records and never evicts: a connect finding it full is not "
        "recorded (counted as update_failed) and is answered by the /proc fallback.",
        lo=1, hi=MAP_MAX)
    max_closed_connections: int = opt(65536,
        "Capacity of the map of closed connections kept for close_grace_seconds; a map of its own so that closed "
        "entries can never evict open ones. tracepoint, kprobe, fentry: an LRU map; above max_closed_connections / "
        "close_grace_seconds closes per second, by all users together (546/s at the defaults), the kernel evicts the "
        "oldest closed entries, anyone's, before their grace ends (a login racing such a close is then not "
        "answered). sockstore: a plain hash that never evicts; each uid adds at most closed_share_per_uid entries "
        "per grace window and so holds at most 3 x closed_share_per_uid at once (while sweep_interval_seconds < "
        "close_grace_seconds); a close by a user within their share goes unrecorded only when "
        "max_closed_connections / (3 x closed_share_per_uid) uids (21 at the defaults) are at their share at once. "
        "cookie: closed records share the one hash, bounded by the same per-uid share and, for all uids together, "
        "by max_closed_connections / 3 per grace window, so they never take more than max_closed_connections of it.",
        lo=1, hi=MAP_MAX)
    closed_share_per_uid: int = opt(1024,
        "cookie and sockstore backends: closed connections one uid may add to the closed map per "
        "close_grace_seconds window. "
        "Past it, that uid's further closes in the window are not kept (counted as over_share); nobody's entry is "
        "ever evicted, so one user's churn cannot shorten another's grace.", lo=1, hi=MAP_MAX)
    max_pending: int = opt(16384, "Capacity of the map of connects not yet established.", lo=1,
        hi=MAP_MAX)
    close_grace_seconds: float = opt(120.0,
        "How long a closed connection stays answerable (covers TIME_WAIT, 60 s on Linux).", lo=0.0, hi=86400.0)
    sweep_interval_seconds: float = opt(10.0, "How often closed entries past their grace are deleted.", lo=0.1,
        hi=3600.0)
    reconcile: bool = opt(True, "At start, attribute connections that already exist (sock_diag + /proc).")
    fallback: bool = opt(True, "Answer from sock_diag + /proc when the map has no entry or BPF is unavailable.")
    require_bpf: bool = opt(False, "Exit if no probe backend loads, instead of serving from the /proc fallback only.")
    max_clients: int = opt(64,
        "RPC requests answered at once (worker threads). More complete requests wait their turn in a queue, and "
        "get a BUSY error only if no worker is free within read_timeout_seconds.", lo=1, hi=1024)
    read_timeout_seconds: float = opt(2.0,
        "Deadline of a request: its whole frame must arrive, and its answer be ready, this long after the "
        "connection (or its previous answer).", lo=0.05, hi=60.0)
    header_timeout_seconds: float = opt(1.0,
        "Deadline for a connection's 8-byte frame header (at most read_timeout_seconds); a connection that sends "
        "nothing is closed this soon.", lo=0.05, hi=60.0)
    max_rpc_connections: int = opt(4096,
        "RPC connections held open at once. A connection waiting for its request costs a buffer, not a thread; "
        "when the table is full the one that has waited longest without a whole request is closed (BUSY). The "
        "tracer raises its open-file limit to fit.", lo=1, hi=1_000_000)
    max_rpc_connections_per_peer: int = opt(512,
        "RPC connections from one address waiting for their request (read and buffered); one more is parked, "
        "held unread until one of them ends or its header deadline passes, so one host cannot take the table.",
        lo=1, hi=1_000_000)
    max_frame_bytes: int = opt(8192, "Largest request payload accepted.", lo=256, hi=MAX_FRAME_PAYLOAD)


@dataclass
class AdopterConfig:
    socket: str = opt("/run/callerid/adopter.sock", "Unix socket pam_callerid.so talks to (root only).")
    metrics: str = opt(DEFAULT_ADOPTER_METRICS,
        "Address of the adopter's /metrics endpoint; empty disables it.", address=True)
    action_no_jobs: str = opt("deny", "deny or ignore, when the user has no job on this node.")
    action_unknown: str = opt("newest",
        "newest, allow or deny, when the user has several jobs and the source could not say which.")
    action_adopt_failure: str = opt("allow", "allow or deny, when moving the sshd into the chosen job failed.")
    action_generic_failure: str = opt("ignore",
        "ignore, allow or deny, when nothing could be determined (also applied by pam_callerid.so when the daemon "
        "is unreachable).")
    ignore_root: bool = opt(True, "Never adopt root; root logins get PAM_IGNORE before any work.")
    single_job_skip_rpc: bool = opt(True, "With exactly one job, adopt into it without asking the source node.")
    service: list = opt(["sshd"], "PAM services handled ('*' for all); others get PAM_IGNORE.")
    rpc_timeout_seconds: float = opt(2.0, "Deadline for the callerid RPC to the source node.", lo=0.05, hi=60.0)
    deadline_seconds: float = opt(5.0,
        "The daemon's budget per login (request line, RPC, adoption), at most the module's own time left. "
        "pam_callerid.so's total deadline is its deadline= option (default 5 s); past it the module applies "
        "action_generic_failure.", lo=0.1, hi=3600.0)
    mode: str = opt("enforce",
        "enforce, or audit: decide, log and count as enforce would, but allow every login and adopt nothing.")
    join_container: bool = opt(True,
        "Join the job's mount namespace (job_container/tmpfs) when adopting, as pam_slurm_adopt.")
    attach_socket: str = opt("/run/callerid-attach/attach.sock",
        "Socket any user may use for `callerid attach JOBID` (moving their own session into another of their "
        "jobs when its job was a guess); empty disables it.")
    job_group: bool = opt(True,
        "Add the job's group (sbatch --gid) to an adopted session's supplementary groups; needs "
        "`auth optional pam_callerid.so` in the auth stack (pam_setcred).")
    job_container_conf: str = opt("/etc/slurm/job_container.conf",
        "Slurm's job_container.conf: its BasePath is where job namespaces may be joined from.")
    slurm_conf: str = opt("/etc/slurm/slurm.conf",
        "Slurm's slurm.conf: its SlurmdSpoolDir is where slurmstepd is asked whose a job is (cgroup v2).")
    job_env: list = opt(["CUDA_VISIBLE_DEVICES", "ROCR_VISIBLE_DEVICES", "HIP_VISIBLE_DEVICES", "GPU_DEVICE_ORDINAL",
                         "ZE_AFFINITY_MASK", "SLURM_JOB_GPUS", "SLURM_STEP_GPUS"],
        "Variables copied from a process of the job into an adopted session (device visibility).")
    cgroup_root: str = opt("/sys/fs/cgroup", "Where cgroup hierarchies are mounted.")
    adopt_exe: list = opt(list(DEFAULT_PAM_APPLICATIONS),
        "Executables (basename) of PAM applications served: the process on the socket (pam_callerid.so runs "
        "inside it) must run one of them as root (OpenSSH 9.8 and later: sshd-session).")


@dataclass
class Config:
    common: CommonConfig = field(default_factory=CommonConfig)
    tracer: TracerConfig = field(default_factory=TracerConfig)
    adopter: AdopterConfig = field(default_factory=AdopterConfig)


def _apply(section, values: dict, where: str):
    known = {f.name: f for f in fields(section)}
    for key, value in values.items():
        f = known.get(key)
        if f is None:
            raise ConfigError(f"{where}: unknown option {key!r}")
        want = type(getattr(section, key))
        if want is float and isinstance(value, int) and not isinstance(value, bool):
            value = float(value)
        if not isinstance(value, want) or (want is int and isinstance(value, bool)):
            raise ConfigError(f"{where}.{key}: expected {want.__name__}, got {value!r}")
        if want is list and not all(isinstance(v, str) for v in value):
            raise ConfigError(f"{where}.{key}: expected a list of strings, got {value!r}")
        _check_range(f"{where}.{key}", value, f.metadata)
        setattr(section, key, value)


def _check_range(name: str, value, meta) -> None:
    lo, hi, choices = meta.get("lo"), meta.get("hi"), meta.get("choices")
    if lo is not None and value < lo or hi is not None and value > hi:
        raise ConfigError(f"{name}: must be between {lo} and {hi}, got {value!r}")
    if choices and value not in choices:
        raise ConfigError(f"{name}: must be one of {', '.join(choices)}, got {value!r}")
    if meta.get("address"):
        for text in value if isinstance(value, list) else [value] if value else []:
            try:
                parse_addr(text, 1)
            except ConfigError as exc:
                raise ConfigError(f"{name}: {exc}") from None


def load(path: str | Path | None = None) -> Config:
    """Read the TOML file at path (None: the default path if it exists, else defaults)."""
    cfg = Config()
    if path is None:
        if not DEFAULT_CONFIG.exists():
            return cfg
        path = DEFAULT_CONFIG
    try:
        with open(path, "rb") as f:
            data = tomllib.load(f)
    except (OSError, tomllib.TOMLDecodeError) as exc:
        raise ConfigError(f"{path}: {exc}") from exc
    sections = {f.name for f in fields(Config)}
    for name, values in data.items():
        section = getattr(cfg, name) if name in sections else None
        if section is None or not isinstance(values, dict):
            raise ConfigError(f"{path}: unknown section [{name}]")
        _apply(section, values, f"{path} [{name}]")
    return cfg


def parse_addr(text: str, default_port: int) -> tuple[str, int]:
    """'1.2.3.4:5', '[::1]:5', '[::]', 'host' -> (host, port); ConfigError otherwise."""
    t = text.strip()
    try:
        if t.startswith("["):
            host, close, rest = t[1:].partition("]")
            if not close or (rest and not rest.startswith(":")):
                raise ValueError("expected [ADDR6] or [ADDR6]:PORT")
            port = int(rest[1:]) if rest else default_port
        elif t.count(":") == 1:
            host, p = t.split(":")
            port = int(p)
        else:
            host, port = t, default_port
        if not host or not 0 <= port < 65536:
            raise ValueError("empty host or port out of range")
    except ValueError as exc:
        raise ConfigError(f"bad address {text!r}: {exc}") from None
    return host, port


def _toml_value(value) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str):
        return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'
    if isinstance(value, list):
        return "[" + ", ".join(_toml_value(v) for v in value) + "]"
    return repr(value)


def sample() -> str:
    """The default configuration file (packaging/callerid.toml): every option, commented
    out at its default, so a package upgrade never hides a changed default."""
    out = [f"# {DEFAULT_CONFIG}: callerid's configuration (docs/CONFIG.md). Every option is shown",
           "# commented out at its default; uncomment and change what this node needs.",
           "# Generated by `callerid config --sample`."]
    for sect in fields(Config):
        out += ["", f"[{sect.name}]"]
        for f in fields(sect.default_factory()):
            default = f.default_factory() if callable(f.default_factory) else f.default
            out += [f"# {f.metadata['help']}", f"#{f.name} = {_toml_value(default)}"]
    return "\n".join(out) + "\n"


def reference() -> str:
    """Markdown reference of every option (docs/CONFIG.md)."""
    out = ["# callerid configuration", "",
           f"One TOML file, by default `{DEFAULT_CONFIG}`, passed with `--config`. "
           "Unknown sections or keys are errors. Generated by `callerid config --doc`.", ""]
    for sect in fields(Config):
        out += [f"## [{sect.name}]", "", "| option | default | meaning |", "| --- | --- | --- |"]
        for f in fields(sect.default_factory()):
            default = f.default_factory() if callable(f.default_factory) else f.default
            accepts = ""
            if f.metadata.get("lo") is not None:
                accepts = f" Accepted: {f.metadata['lo']} to {f.metadata['hi']}."
            elif f.metadata.get("choices"):
                accepts = f" Accepted: {', '.join(f.metadata['choices'])}."
            out.append(f"| `{f.name}` | `{default!r}` | {f.metadata['help']}{accepts} |")
        out.append("")
    return "\n".join(out)
