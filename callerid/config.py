"""Configuration: one TOML file, one dataclass per daemon, every option with its default.

docs/CONFIG.md is generated from the `help` metadata here (callerid config --doc).
"""

from __future__ import annotations

import socket
from dataclasses import dataclass, field, fields
from pathlib import Path

try:  # Python 3.11+; RHEL/Rocky 9's system Python (3.9), which its BCC binds to, needs tomli
    import tomllib
except ImportError:  # pragma: no cover - exercised on the Python 3.9 platform
    import tomli as tomllib

DEFAULT_CONFIG = Path("/etc/callerid/callerid.toml")
DEFAULT_RPC_PORT = 6828
DEFAULT_TRACER_METRICS = "[::]:9828"
DEFAULT_ADOPTER_METRICS = "[::]:9829"


class ConfigError(ValueError):
    """The configuration file is unreadable or has a bad key or value."""


def opt(default, help: str):
    if isinstance(default, list):
        return field(default_factory=lambda: list(default), metadata={"help": help})
    return field(default=default, metadata={"help": help})


@dataclass
class CommonConfig:
    munge_socket: str = opt("/run/munge/munge.socket.2", "munged's socket, for making and checking RPC credentials.")
    slurm_user: str = opt("slurm", "SlurmUser of the cluster: besides root, the only user any answer is given to.")
    nodename: str = opt("", "This node's Slurm NodeName; empty means the short host name.")
    log_level: str = opt("info", "debug, info, warning or error.")
    rpc_port: int = opt(DEFAULT_RPC_PORT, "TCP port of the callerid RPC (the tracer listens, the adopter asks).")

    def node(self) -> str:
        return self.nodename or socket.gethostname().split(".")[0]


@dataclass
class TracerConfig:
    listen: list = opt([], "RPC listen addresses as ADDR:PORT or [ADDR6]:PORT; empty means [::]:rpc_port, dual stack.")
    metrics: str = opt(DEFAULT_TRACER_METRICS, "Address of the /metrics endpoint; empty disables it.")
    probe: str = opt("auto",
        "Probe backend: auto, tracepoint, kprobe or fentry. A forced backend that cannot load is fatal.")
    pin_root: str = opt("/sys/fs/bpf/callerid", "bpffs directory for pinned maps; the layout version is appended.")
    replace_pinned: bool = opt(False, "Replace pinned maps whose layout does not match instead of refusing to start.")
    max_connections: int = opt(131072,
        "Capacity of the map of open connections. It is an LRU map: from about 90% full the kernel evicts the least "
        "recently used entries; evicted connections are still answered, slowly, by the /proc fallback. Closed "
        "connections live in a map of their own (max_closed_connections), so churn does not fill this one.")
    max_closed_connections: int = opt(65536,
        "Capacity of the map of closed connections kept for close_grace_seconds. A map of its own so that closed "
        "entries can never evict open ones. Above max_closed_connections / close_grace_seconds closes per second "
        "(546/s at the defaults) the kernel evicts the oldest closed entries before their grace ends; that is harmless"
        " to open connections and only shortens the grace of those entries (a login racing their close is then not "
        "answered).")
    max_pending: int = opt(16384, "Capacity of the map of connects not yet established.")
    close_grace_seconds: float = opt(120.0,
        "How long a closed connection stays answerable (covers TIME_WAIT, 60 s on Linux).")
    sweep_interval_seconds: float = opt(10.0, "How often closed entries past their grace are deleted.")
    reconcile: bool = opt(True, "At start, attribute connections that already exist (sock_diag + /proc).")
    fallback: bool = opt(True, "Answer from sock_diag + /proc when the map has no entry or BPF is unavailable.")
    require_bpf: bool = opt(False, "Exit if no probe backend loads, instead of serving from the /proc fallback only.")
    max_clients: int = opt(64, "Concurrent RPC clients; more get a BUSY error at once.")
    read_timeout_seconds: float = opt(2.0, "Deadline for a client to deliver a whole request frame.")
    max_frame_bytes: int = opt(8192, "Largest request payload accepted.")


@dataclass
class AdopterConfig:
    socket: str = opt("/run/callerid/adopter.sock", "Unix socket pam_callerid.so talks to (root only).")
    metrics: str = opt(DEFAULT_ADOPTER_METRICS, "Address of the adopter's /metrics endpoint; empty disables it.")
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
    rpc_timeout_seconds: float = opt(2.0, "Deadline for the callerid RPC to the source node.")
    deadline_seconds: float = opt(5.0,
        "How long the daemon waits for a request line. The PAM module's own total deadline is its deadline= "
        "option (default 5 s); past it the module applies action_generic_failure.")
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
    job_env: list = opt(["CUDA_VISIBLE_DEVICES", "ROCR_VISIBLE_DEVICES", "HIP_VISIBLE_DEVICES", "GPU_DEVICE_ORDINAL",
                         "ZE_AFFINITY_MASK", "SLURM_JOB_GPUS", "SLURM_STEP_GPUS"],
        "Variables copied from a process of the job into an adopted session (device visibility).")
    cgroup_root: str = opt("/sys/fs/cgroup", "Where cgroup hierarchies are mounted.")
    adopt_exe: list = opt(["sshd"],
        "Executables (basename) of PAM applications served: the process on the socket (pam_callerid.so runs "
        "inside it) must run one of them as root.")


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
        if want in (int, float) and value < 0:
            raise ConfigError(f"{where}.{key}: must not be negative, got {value!r}")
        if want is int and key.startswith("max_") and value == 0:
            raise ConfigError(f"{where}.{key}: must be at least 1")
        setattr(section, key, value)


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


def reference() -> str:
    """Markdown reference of every option (docs/CONFIG.md)."""
    out = ["# callerid configuration", "",
           f"One TOML file, by default `{DEFAULT_CONFIG}`, passed with `--config`. "
           "Unknown sections or keys are errors. Generated by `callerid config --doc`.", ""]
    for sect in fields(Config):
        out += [f"## [{sect.name}]", "", "| option | default | meaning |", "| --- | --- | --- |"]
        for f in fields(sect.default_factory()):
            default = f.default_factory() if callable(f.default_factory) else f.default
            out.append(f"| `{f.name}` | `{default!r}` | {f.metadata['help']} |")
        out.append("")
    return "\n".join(out)
