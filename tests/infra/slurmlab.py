"""A real Slurm 22.05 cluster of N nodes in network namespaces on this one machine.

    lab = SlurmLab(nodes=2).up()      # or: scripts/lab.sh up [--nodes N]
    job = lab.sbatch("node1", "cidlab1", "#!/bin/bash\\nsleep 60\\n", ["-w", "node2", "--mem=100"])
    lab.wait_job_running(job)
    lab.listpids(job, "node2")        # {"extern": [...], "batch": [...]}
    lab.down()                        # or, from any process: scripts/lab.sh down

Topology: a hub namespace `cidlab-hub` holding a Linux bridge; node namespaces
`cidlab-node<i>`, each with a veth `eth0` into the bridge, 198.18.40.<i>/24 and
fd00:40::<i>/64. Per node: slurmd (slurmctld too on node1), `callerid tracer`,
`callerid adopter`, sshd :22 whose PAM account stack ends with the callerid hook
(service `sshd-cidlab-node<i>`), sshd :2222 ending with Slurm's real
pam_slurm_adopt (service `sshd-psa-node<i>`). One private munged (its own key)
serves Slurm and callerid. Test users cidlab1/cidlab2 with keys for each other.

Everything made is recorded in /run/callerid-lab/state.json as it is made, so
`down()` from a fresh process (after an interrupted `up()` too) removes it all:
daemons by pid (checked against their start time), processes inside the lab's job
cgroups, the slurm_<node> cgroup trees, namespaces, PAM files, the profile.d
snippet, users, pinned BPF maps and the lab directory.

CLI: python -m tests.infra.slurmlab up [--nodes N] [--keep-on-failure] | down | status [--json]
"""

from __future__ import annotations

import argparse
import ctypes
import fcntl
import json
import os
import pwd
import shutil
import signal
import socket
import stat
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from . import munged as munged_mod
from .adopterproc import write_config as write_adopter_config
from .daemonproc import CALLERID
from .jobtree import setns_net
from .netns import Netns, _allowed
from .procs import alive
from .sshd import keygen, pam_stack
from .tracerproc import write_config as write_tracer_config

REPO = Path(__file__).resolve().parents[2]
ROOT = Path("/run/callerid-lab")
STATE_FILE = ROOT / "state.json"
NS_PREFIX = "cidlab-"
HUB = f"{NS_PREFIX}hub"
NET4, NET6 = "198.18.40", "fd00:40::"
CLUSTER = "cidlab"
PARTITION = "lab"
USERS = ("cidlab1", "cidlab2")
SLURMCTLD_PORT, SLURMD_PORT = 6817, 6818
RPC_PORT, TRACER_METRICS_PORT, ADOPTER_METRICS_PORT = 6828, 9828, 9829
SSH_PORT, PSA_PORT = 22, 2222
PIN_ROOT = Path("/sys/fs/bpf/callerid-lab")
PROFILE_SRC = REPO / "adopter" / "callerid-profile.sh"
PROFILE_DEST = Path("/etc/profile.d/callerid-lab.sh")
PAM_DIR = Path("/etc/pam.d")
DEVLOG = Path("/dev/log")
MAX_NODES = 16
CPUS, REAL_MEMORY, DEF_MEM_PER_CPU = 2, 2000, 100
SBIN_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
USER_PATH = "/usr/local/bin:/usr/bin:/bin"
# Debian installs the module outside the multiarch PAM directory, so a bare
# "pam_slurm_adopt.so" is not found by Linux-PAM there: give PAM the full path.
PSA_CANDIDATES = ("/lib/security/pam_slurm_adopt.so", "/usr/lib/security/pam_slurm_adopt.so",
                  "/lib/x86_64-linux-gnu/security/pam_slurm_adopt.so",
                  "/usr/lib/x86_64-linux-gnu/security/pam_slurm_adopt.so", "/usr/lib64/security/pam_slurm_adopt.so")
TERMINAL_JOB_STATES = {"BOOT_FAIL", "CANCELLED", "COMPLETED", "DEADLINE", "FAILED", "NODE_FAIL", "OUT_OF_MEMORY",
                       "PREEMPTED", "TIMEOUT", "REVOKED", "SPECIAL_EXIT"}

CLONE_NEWUTS = 0x04000000
_libc = ctypes.CDLL(None, use_errno=True)

# A /dev/log listener for pam_slurm_adopt (it logs only through syslog): one line per datagram.
DEVLOG_PROG = r"""
import os, socket, sys, time
path, out = sys.argv[1], sys.argv[2]
s = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
s.bind(path)
os.chmod(path, 0o666)
print("listening", flush=True)
with open(out, "ab", buffering=0) as f:
    while True:
        d = s.recv(65536)
        f.write(time.strftime("%H:%M:%S ").encode() + d.rstrip(b"\0\n") + b"\n")
"""


class LabError(RuntimeError):
    pass


class LabBusy(LabError):
    """Another lab is up (its daemons are alive): bring it down first."""


class JobFailed(LabError):
    pass


@dataclass(frozen=True)
class LabUser:
    name: str
    uid: int
    gid: int
    home: str

    @property
    def ssh_dir(self) -> Path:
        return Path(self.home) / ".ssh"

    @property
    def key(self) -> Path:
        """This user's own private key (owned by the user, 0600)."""
        return self.ssh_dir / "id_ed25519"

    def key_of(self, owner: str) -> Path:
        """A private key this user holds that logs in as `owner` (a copy of owner's key, owned by this user)."""
        return self.key if owner == self.name else self.ssh_dir / f"id_{owner}"


@dataclass(frozen=True)
class Node:
    name: str
    index: int

    @property
    def ip(self) -> str:
        return f"{NET4}.{self.index}"

    @property
    def ip6(self) -> str:
        return f"{NET6}{self.index}"

    @property
    def netns(self) -> Netns:
        return Netns(f"{NS_PREFIX}{self.name}")

    @property
    def tracer_metrics(self) -> str:
        return f"http://{self.ip}:{TRACER_METRICS_PORT}/metrics"

    @property
    def adopter_metrics(self) -> str:
        return f"http://{self.ip}:{ADOPTER_METRICS_PORT}/metrics"


# ---------------------------------------------------------------- small helpers

def proc_start(pid: int) -> int | None:
    """Start time of a process in clock ticks since boot (field 22 of /proc/PID/stat)."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return int(f.read().rsplit(") ", 1)[1].split()[19])
    except (OSError, IndexError, ValueError):
        return None


def _same_proc(rec: dict) -> bool:
    """The recorded process is still the one we started (not a reused pid) and is not a zombie."""
    return alive(rec["pid"]) and proc_start(rec["pid"]) == rec.get("start")


def _ip(*args: str, check: bool = True) -> subprocess.CompletedProcess:
    r = subprocess.run(["ip", *args], capture_output=True, text=True, timeout=30)
    if check and r.returncode != 0:
        raise LabError(f"ip {' '.join(args)}: {r.stderr.strip()}")
    return r


def _preexec(netns_path: str | None, hostname: str | None = None, user: LabUser | None = None):
    """Run in the child before exec: join the netns (as root), own UTS namespace + host name, drop to user."""
    def fn():
        if netns_path:
            setns_net(netns_path)
        if hostname:
            if _libc.unshare(CLONE_NEWUTS) != 0:
                err = ctypes.get_errno()
                raise OSError(err, f"unshare(CLONE_NEWUTS): {os.strerror(err)}")
            socket.sethostname(hostname)
        if user is not None:
            os.initgroups(user.name, user.gid)
            os.setgid(user.gid)
            os.setuid(user.uid)
    return fn


def _v1_mounts() -> list[Path]:
    """Mount points of the cgroup v1 hierarchies (hybrid machine: /sys/fs/cgroup/<ctrl>)."""
    out = []
    with open("/proc/self/mountinfo") as f:
        for line in f:
            pre, _, post = line.partition(" - ")
            if post.split()[:1] == ["cgroup"]:
                mp = Path(pre.split()[4])
                if mp not in out:
                    out.append(mp)
    return out


def _netns_inode(name: str) -> int | None:
    try:
        return os.stat(f"/run/netns/{name}").st_ino
    except OSError:
        return None


def _all_pids() -> list[int]:
    return [int(p) for p in os.listdir("/proc") if p.isdigit()]


def _ppid(pid: int) -> int | None:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return int(f.read().rsplit(") ", 1)[1].split()[1])
    except (OSError, IndexError, ValueError):
        return None


def _cmdline(pid: int) -> str:
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            return f.read().replace(b"\0", b" ").decode(errors="replace").strip()
    except OSError:
        return "?"


def _kill(pids, sig) -> None:
    for pid in pids:
        try:
            os.kill(pid, sig)
        except (ProcessLookupError, PermissionError):
            pass


def _tail(path: Path, lines: int = 25) -> str:
    try:
        text = path.read_text(errors="replace").splitlines()[-lines:]
    except OSError:
        return f"--- {path}: (none)"
    return f"--- {path}:\n" + "\n".join(text)


def parse_kv(line: str) -> dict:
    """`scontrol show ... -o` output as a dict (values with spaces are glued back)."""
    out, last = {}, None
    for tok in line.split():
        k, sep, v = tok.partition("=")
        if sep and k and k.replace("/", "").replace(":", "").replace("_", "").isalnum():
            out[k] = v
            last = k
        elif last:
            out[last] += " " + tok
    return out


# ---------------------------------------------------------------- the lab

class SlurmLab:
    """A Slurm cluster of `nodes` nodes (network namespaces) with callerid, sshd and pam_slurm_adopt on each."""

    def __init__(self, nodes: int = 2, root: Path = ROOT, log=None, log_level: str = "info", probe: str = "auto",
                 syslog: bool = True, job_container: bool = False):
        """nodes: 1..16; log: a callable taking progress lines (default: silent); log_level: of the
        callerid daemons; probe: the tracers' backend
        ("auto" tries fentry, kprobe, tracepoint: about 3 s more per tracer here than "tracepoint");
        syslog: run a /dev/log listener (log/syslog.log) if the machine has none, for pam_slurm_adopt;
        job_container: JobContainerType=job_container/tmpfs (BasePath <root>/jc), for join_container."""
        if not 1 <= nodes <= MAX_NODES:
            raise ValueError(f"nodes must be 1..{MAX_NODES}")
        self.root = Path(root)
        self.state_file = self.root / "state.json"
        self.nodes = [Node(f"node{i}", i) for i in range(1, nodes + 1)]
        self.state: dict = self._empty_state()
        self.users: dict[str, LabUser] = {}
        self.timings: dict[str, float] = {}
        self.log_level = log_level
        self.probe = probe
        self.syslog = syslog
        self.job_container = job_container
        self._popens: dict[int, subprocess.Popen] = {}
        self._children: list[subprocess.Popen] = []  # started by popen(): ours to stop in down()
        self._log = log or (lambda msg: None)

    # ---- paths
    @property
    def conf(self) -> Path:
        return self.root / "slurm" / "slurm.conf"

    @property
    def logdir(self) -> Path:
        return self.root / "log"

    @property
    def ctl(self) -> Node:
        return self.nodes[0]

    @property
    def munge_socket(self) -> str:
        return self.state.get("munge", {}).get("socket", "")

    def node(self, node: str | int | Node) -> Node:
        if isinstance(node, Node):
            return node
        name = f"node{node}" if isinstance(node, int) else node
        for n in self.nodes:
            if n.name == name:
                return n
        raise KeyError(f"no node {node!r} in this lab ({', '.join(n.name for n in self.nodes)})")

    def user(self, user: str | LabUser) -> LabUser:
        if isinstance(user, LabUser):
            return user
        if user not in self.users:
            pw = pwd.getpwnam(user)
            self.users[user] = LabUser(pw.pw_name, pw.pw_uid, pw.pw_gid, pw.pw_dir)
        return self.users[user]

    def adopter_socket(self, node) -> str:
        return str(self.root / self.node(node).name / "adopter" / "adopter.sock")

    def cidlab_service(self, node) -> str:
        return f"sshd-cidlab-{self.node(node).name}"

    def psa_service(self, node) -> str:
        return f"sshd-psa-{self.node(node).name}"

    def cgroup(self, node, uid: int, job: int, step: str | None = "extern", ctrl: str = "freezer") -> Path:
        p = Path("/sys/fs/cgroup", ctrl, f"slurm_{self.node(node).name}", f"uid_{uid}", f"job_{job}")
        return p / f"step_{step}" if step else p

    # ---- state
    def _empty_state(self) -> dict:
        return {"version": 1, "nodes": [n.name for n in self.nodes], "netns": [], "procs": [], "users": [],
                "files": [], "dirs": [], "devlog": None, "munge": {}, "created": time.time()}

    def _save(self) -> None:
        self.root.mkdir(parents=True, exist_ok=True)
        tmp = self.state_file.with_suffix(".tmp")
        tmp.write_text(json.dumps(self.state, indent=1))
        os.replace(tmp, self.state_file)

    @classmethod
    def load(cls, root: Path = ROOT, log=None) -> SlurmLab:
        """The lab described by the state file (for `down`/`status` from another process)."""
        state = json.loads((Path(root) / "state.json").read_text())
        lab = cls(nodes=max(1, len(state.get("nodes", [])) or 1), root=root, log=log)
        lab.state = state
        for name in state.get("users", []):
            try:
                lab.user(name)
            except KeyError:
                pass
        return lab

    def live_procs(self) -> list[dict]:
        return [r for r in self.state.get("procs", []) if _same_proc(r)]

    # ================================================================ up
    def up(self, timeout: float = 90.0, keep_on_failure: bool = False, persistent: bool = False) -> SlurmLab:
        """Build the lab; on failure tear down what was made (unless keep_on_failure) and raise.

        persistent=False (tests): the lab belongs to this process; if the process dies without
        down(), the next up() removes it. persistent=True (`scripts/lab.sh up`): it stays until `down`."""
        t0 = time.monotonic()
        deadline = t0 + timeout
        self._preflight()
        self._claim(persistent)
        try:
            self._step("network", self._network)
            self._step("munge", self._munge)
            self._step("users", self._users)
            self._step("config", self._write_configs)
            self._step("spawn", self._spawn_all)
            self._step("ready", lambda: self._wait_ready(deadline))
            self._step("profile", self._install_profile)
        except BaseException as exc:
            detail = self.logs_tail(15)
            if not keep_on_failure:
                try:
                    self.down()
                except Exception as exc2:  # report the first failure, not the clean-up's
                    detail += f"\n(down after the failed up also failed: {exc2})"
            if isinstance(exc, LabError):
                raise LabError(f"{exc}\n{detail}") from exc
            raise
        self.timings["up"] = time.monotonic() - t0
        self.state["timings"] = self.timings
        self._save()
        self._log(f"lab up: {len(self.nodes)} nodes in {self.timings['up']:.1f}s")
        return self

    def _step(self, name: str, fn) -> None:
        t = time.monotonic()
        fn()
        self.timings[name] = round(time.monotonic() - t, 3)
        self._log(f"  {name}: {self.timings[name]:.2f}s")

    def _preflight(self) -> None:
        problems = []
        if os.geteuid() != 0:
            problems.append("must run as root")
        for exe in ("/usr/sbin/slurmctld", "/usr/sbin/slurmd", "/usr/bin/sbatch", "/usr/sbin/sshd", munged_mod.MUNGED,
                    CALLERID):
            if not os.access(exe, os.X_OK):
                problems.append(f"missing {exe} (scripts/setup.sh installs it)")
        if not any(os.path.exists(p) for p in PSA_CANDIDATES):
            problems.append("missing pam_slurm_adopt.so (Debian package libpam-slurm-adopt)")
        if not os.path.ismount("/sys/fs/cgroup/freezer"):
            problems.append("cgroup v1 freezer at /sys/fs/cgroup/freezer (Slurm's cgroup/v1 proctrack)")
        if not os.path.ismount("/sys/fs/bpf"):
            problems.append("bpffs at /sys/fs/bpf (scripts/setup.sh mounts it)")
        if problems:
            raise LabError("cannot build the lab: " + "; ".join(problems))

    def _claim(self, persistent: bool) -> None:
        """Refuse if a lab is up; clean a dead one's leftovers (or an orphaned test lab); start a fresh state."""
        if self.state_file.exists():
            try:
                old = SlurmLab.load(self.root, self._log)
            except (ValueError, OSError):
                old = None
            if old is not None:
                live = old.live_procs()
                owner = old.state.get("owner") or {}
                orphan = bool(live) and not owner.get("persistent", True) and not _same_proc(owner)
                if orphan:
                    self._log(f"removing the lab of test process {owner.get('pid')}, which died without down()")
                    live = []
                if live:
                    raise LabBusy(f"a lab is already up ({len(live)} daemons alive, e.g. {live[0]['name']} "
                                  f"pid {live[0]['pid']}): run `scripts/lab.sh down` first")
                if not orphan:
                    self._log("removing the leftovers of a lab that is no longer running")
                old.down()
        if self.root.exists() or any(_netns_inode(f"{NS_PREFIX}{n}") for n in ["hub", *[x.name for x in self.nodes]]):
            SlurmLab._down_without_state(self.root, self._log)
        self.root.mkdir(parents=True)
        os.chmod(self.root, 0o755)
        self.state = self._empty_state()
        self.state["dirs"] = [str(self.root)]
        self.state["owner"] = {"pid": os.getpid(), "start": proc_start(os.getpid()), "persistent": persistent}
        self._save()

    # ---- network: hub bridge + one veth per node
    def _network(self) -> None:
        for n in self.nodes:
            _allowed(f"{n.ip}/24")
            _allowed(f"{n.ip6}/64")
        self._add_netns(HUB)
        _ip("-n", HUB, "link", "add", "br0", "type", "bridge", "stp_state", "0", "forward_delay", "0")
        _ip("-n", HUB, "link", "set", "br0", "up")
        for n in self.nodes:
            ns = n.netns.name
            self._add_netns(ns)
            port = f"vn{n.index}"
            _ip("link", "add", port, "netns", HUB, "type", "veth", "peer", "name", "eth0", "netns", ns)
            _ip("-n", HUB, "link", "set", port, "master", "br0")
            _ip("-n", HUB, "link", "set", port, "up")
            _ip("-n", ns, "addr", "add", f"{n.ip}/24", "dev", "eth0")
            _ip("-n", ns, "addr", "add", f"{n.ip6}/64", "dev", "eth0", "nodad")
            _ip("-n", ns, "link", "set", "eth0", "up")

    def _add_netns(self, name: str) -> None:
        _ip("netns", "del", name, check=False)
        _ip("netns", "add", name)
        self.state["netns"].append(name)
        self._save()
        _ip("-n", name, "link", "set", "lo", "up")

    # ---- MUNGE: a private munged with the lab's own key
    def _munge(self) -> None:
        mpw = pwd.getpwnam("munge")
        kdir = self.root / "munge-key"
        kdir.mkdir(mode=0o700)
        os.chown(kdir, mpw.pw_uid, mpw.pw_gid)
        key = kdir / "munge.key"
        fd = os.open(key, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o400)
        with os.fdopen(fd, "wb") as f:
            f.write(os.urandom(1024))
        os.chown(key, mpw.pw_uid, mpw.pw_gid)
        m = munged_mod.start(key=str(key), parent=str(self.root))
        self.state["munge"] = {"socket": m.socket, "dir": m.dir, "key": str(key)}
        self.state["procs"].append({"name": "munged", "pid": m.pid, "start": proc_start(m.pid), "node": None,
                                    "log": f"{m.dir}/munged.log"})
        self._save()

    # ---- users and keys
    def _users(self) -> None:
        home_root = self.root / "home"
        home_root.mkdir(mode=0o755)
        for name in USERS:
            try:
                pwd.getpwnam(name)
                subprocess.run(["userdel", "--force", name], capture_output=True, timeout=30)  # a leftover
            except KeyError:
                pass
            self.state["users"].append(name)
            self._save()
            r = subprocess.run(["useradd", "--shell", "/bin/bash", "--user-group", "--create-home", "--home-dir",
                                str(home_root / name), name], capture_output=True, text=True, timeout=30)
            if r.returncode != 0:
                raise LabError(f"useradd {name}: {r.stderr.strip()}")
            self.users.pop(name, None)
            self.user(name)
        keys = self.root / "keys"
        keys.mkdir(mode=0o755)
        for name in (*USERS, "root"):
            keygen(keys / name)
        hostkeys = self.root / "hostkeys"
        hostkeys.mkdir(mode=0o755)
        known = []
        for n in self.nodes:
            keygen(hostkeys / n.name)
            pub = " ".join((hostkeys / f"{n.name}.pub").read_text().split()[:2])
            known.append(f"{n.name},{n.ip},{n.ip6} {pub}")
            known.append(f"[{n.name}]:{PSA_PORT},[{n.ip}]:{PSA_PORT},[{n.ip6}]:{PSA_PORT} {pub}")
        (self.root / "known_hosts").write_text("\n".join(known) + "\n")
        auth = self.root / "ssh" / "authorized"
        auth.mkdir(parents=True, mode=0o755)
        os.chmod(auth.parent, 0o755)
        for name in (*USERS, "root"):
            (auth / name).write_text((keys / f"{name}.pub").read_text())
            os.chmod(auth / name, 0o644)
        hosts = []
        for n in self.nodes:
            hosts += [f"Host {n.name}", f"  HostName {n.ip}", f"  HostKeyAlias {n.name}", "",
                      f"Host {n.name}-psa", f"  HostName {n.ip}", f"  Port {PSA_PORT}",
                      f"  HostKeyAlias [{n.name}]:{PSA_PORT}", ""]
        hosts += ["Host *", "  BatchMode yes", "  StrictHostKeyChecking yes", ""]
        for name in USERS:
            u = self.user(name)
            d = u.ssh_dir
            d.mkdir(mode=0o700, exist_ok=True)
            for owner in USERS:
                dst = u.key_of(owner)
                shutil.copy(keys / owner, dst)
                os.chmod(dst, 0o600)
                if owner == name:
                    shutil.copy(keys / f"{owner}.pub", f"{dst}.pub")
            (d / "known_hosts").write_text((self.root / "known_hosts").read_text())
            (d / "config").write_text("\n".join(hosts))
            for p in [d, *d.iterdir()]:
                os.chown(p, u.uid, u.gid)
                if p != d:
                    os.chmod(p, 0o600)

    # ---- Slurm configuration
    def slurm_conf_text(self) -> str:
        r = self.root
        nodes = ",".join(n.name for n in self.nodes)
        lines = [
            "# Written by tests/infra/slurmlab.py; removed by `scripts/lab.sh down`.",
            f"ClusterName={CLUSTER}",
            f"SlurmctldHost={self.ctl.name}({self.ctl.ip})",
            "SlurmUser=root",
            "SlurmdUser=root",
            f"SlurmctldPort={SLURMCTLD_PORT}",
            f"SlurmdPort={SLURMD_PORT}",
            "AuthType=auth/munge",
            "CredType=cred/munge",
            f"AuthInfo=socket={self.munge_socket}",
            f"StateSaveLocation={r}/slurm/state",
            f"SlurmdSpoolDir={r}/slurm/spool/%n",
            f"SlurmctldPidFile={r}/slurm/slurmctld.pid",
            f"SlurmdPidFile={r}/slurm/slurmd-%n.pid",
            f"SlurmctldLogFile={r}/log/slurmctld.log",
            f"SlurmdLogFile={r}/log/slurmd-%n.log",
            "SlurmctldDebug=info",
            "SlurmdDebug=info",
            "ProctrackType=proctrack/cgroup",
            "TaskPlugin=task/cgroup,task/affinity",
            "PrologFlags=contain",
            *(["JobContainerType=job_container/tmpfs"] if self.job_container else []),
            "JobAcctGatherType=jobacct_gather/none",
            "AccountingStorageType=accounting_storage/none",
            "JobCompType=jobcomp/none",
            "MpiDefault=none",
            "SchedulerType=sched/backfill",
            "SelectType=select/cons_tres",
            "SelectTypeParameters=CR_Core_Memory",
            f"DefMemPerCPU={DEF_MEM_PER_CPU}",
            "ReturnToService=2",
            "SlurmctldTimeout=60",
            "SlurmdTimeout=120",
            "MessageTimeout=10",
            "TCPTimeout=2",
            "KillWait=2",
            "InactiveLimit=0",
            "MinJobAge=120",
            "UnkillableStepTimeout=20",
            "MailProg=/bin/true",
            *[f"NodeName={n.name} NodeAddr={n.ip} NodeHostname={n.name} CPUs={CPUS} RealMemory={REAL_MEMORY} "
              "State=UNKNOWN" for n in self.nodes],
            # Cores may be shared by up to 4 jobs: tests need a user with several jobs on one
            # 2-core node (plus another user's job there) at once; memory is still enforced.
            f"PartitionName={PARTITION} Nodes={nodes} Default=YES MaxTime=INFINITE State=UP OverSubscribe=FORCE:4",
            "",
        ]
        return "\n".join(lines)

    @staticmethod
    def cgroup_conf_text() -> str:
        return "\n".join([
            "# Written by tests/infra/slurmlab.py. Hybrid machine: v1 controllers at /sys/fs/cgroup/<ctrl>.",
            "CgroupPlugin=cgroup/v1",
            "CgroupMountpoint=/sys/fs/cgroup",
            "CgroupAutomount=no",
            "ConstrainCores=yes",
            "ConstrainRAMSpace=yes",
            "ConstrainSwapSpace=no",
            "ConstrainDevices=no",
            "",
        ])

    def _write_configs(self) -> None:
        sd = self.root / "slurm"
        for d in (sd, sd / "state", sd / "spool", self.logdir, self.root / "bin"):
            d.mkdir(parents=True, exist_ok=True)
            os.chmod(d, 0o755)
        for n in self.nodes:
            (sd / "spool" / n.name).mkdir(mode=0o755)
            (self.root / n.name).mkdir(mode=0o755)
        self.conf.write_text(self.slurm_conf_text())
        (sd / "cgroup.conf").write_text(self.cgroup_conf_text())
        if self.job_container:
            (sd / "job_container.conf").write_text(f"AutoBasePath=true\nBasePath={self.root / 'jc'}\n")
        self.state["slurm_conf"] = str(self.conf)
        self.state["cgroup_nodes"] = [n.name for n in self.nodes]
        PIN_ROOT.mkdir(parents=True, exist_ok=True)
        self.state["dirs"].append(str(PIN_ROOT))
        for n in self.nodes:
            nd = self.root / n.name
            write_tracer_config(nd / "tracer.toml", self.munge_socket, str(PIN_ROOT / n.name), [],
                                f"{n.ip}:{TRACER_METRICS_PORT}", nodename=n.name, rpc_port=RPC_PORT, probe=self.probe)
            write_adopter_config(nd / "adopter.toml", self.munge_socket, n.name, RPC_PORT, self.adopter_socket(n),
                                 f"{n.ip}:{ADOPTER_METRICS_PORT}", job_container_conf=str(sd / "job_container.conf"),
                                 attach_socket=str(nd / "attach" / "attach.sock"))
            for f in (nd / "tracer.toml", nd / "adopter.toml"):
                f.write_text(f.read_text().replace('log_level = "debug"', f'log_level = "{self.log_level}"'))
        self._save()

    # ---- daemons
    def _daemon_env(self) -> dict:
        return {"PATH": SBIN_PATH, "SLURM_CONF": str(self.conf), "LANG": "C.UTF-8", "HOME": "/root",
                "PYTHONUNBUFFERED": "1"}

    def _spawn(self, name: str, argv: list[str], node: Node | None, hostname: str | None = None,
               env: dict | None = None) -> dict:
        log = self.logdir / f"{name}.out"
        f = open(log, "ab")
        try:
            p = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=f, stderr=subprocess.STDOUT,
                                 env=env or self._daemon_env(), start_new_session=True, close_fds=True,
                                 preexec_fn=_preexec(node.netns.path if node else None, hostname))
        finally:
            f.close()
        self._popens[p.pid] = p
        rec = {"name": name, "pid": p.pid, "start": proc_start(p.pid), "node": node.name if node else None,
               "log": str(log)}
        self.state["procs"].append(rec)
        self._save()
        return rec

    def _spawn_all(self) -> None:
        if self.syslog and not DEVLOG.exists():
            self._start_devlog()
        for n in self.nodes:  # the slowest to start (BPF compile): first
            self._spawn(f"tracer-{n.name}", [CALLERID, "--config", str(self.root / n.name / "tracer.toml"), "tracer"],
                        n, n.name)
        self._spawn("slurmctld", ["/usr/sbin/slurmctld", "-D", "-i", "-f", str(self.conf)], self.ctl, self.ctl.name)
        for n in self.nodes:
            self._spawn(f"slurmd-{n.name}", ["/usr/sbin/slurmd", "-D", "-N", n.name, "-f", str(self.conf)], n, n.name)
        for n in self.nodes:
            self._spawn(f"adopter-{n.name}", [CALLERID, "--config", str(self.root / n.name / "adopter.toml"),
                                              "adopter"], n, n.name)
        for n in self.nodes:
            self._start_sshds(n)

    def _start_devlog(self) -> None:
        out = self.logdir / "syslog.log"
        rec = self._spawn("devlog", [sys.executable, "-c", DEVLOG_PROG, str(DEVLOG), str(out)], None)
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline and not DEVLOG.exists():
            if not _same_proc(rec):
                return  # someone else's /dev/log appeared meanwhile, or bind failed: do without
            time.sleep(0.01)
        if DEVLOG.exists() and stat.S_ISSOCK(os.lstat(DEVLOG).st_mode):
            self.state["devlog"] = {"path": str(DEVLOG), "ino": os.lstat(DEVLOG).st_ino, "log": str(out)}
            self._save()

    def _psa_module(self) -> str:
        return next(p for p in PSA_CANDIDATES if os.path.exists(p))

    def pam_psa_text(self, node, *options: str) -> str:
        n = self.node(node)
        opts = list(options)
        if not any(o.startswith("service=") for o in opts):
            opts.insert(0, f"service={self.psa_service(n)}")
        if not any(o.startswith("nodename=") for o in opts):
            opts.insert(1, f"nodename={n.name}")
        return "\n".join([
            "# written by tests/infra/slurmlab.py; removed by `scripts/lab.sh down`",
            "auth     required pam_unix.so",
            "account  required pam_unix.so",
            f"account  required {self._psa_module()} " + " ".join(opts),
            "session  required pam_unix.so",
            "",
        ])

    def pam_cidlab_text(self, node, *args: str) -> str:
        n = self.node(node)
        args = list(args)
        if not any(a.startswith("service=") for a in args):
            args.insert(0, f"service={self.cidlab_service(n)}")
        return pam_stack(args, self.adopter_socket(n))

    def set_hook(self, node, *args: str) -> None:
        """Rewrite node's callerid PAM line with these hook arguments (PAM re-reads the file at each login)."""
        (PAM_DIR / self.cidlab_service(node)).write_text(self.pam_cidlab_text(node, *args))

    def set_psa(self, node, *options: str) -> None:
        """Rewrite node's pam_slurm_adopt line with these options (service= and nodename= are added if absent)."""
        (PAM_DIR / self.psa_service(node)).write_text(self.pam_psa_text(node, *options))

    def _start_sshds(self, n: Node) -> None:
        Path("/run/sshd").mkdir(mode=0o755, exist_ok=True)  # privilege separation directory
        for service, port, text in ((self.cidlab_service(n), SSH_PORT, self.pam_cidlab_text(n)),
                                    (self.psa_service(n), PSA_PORT, self.pam_psa_text(n, "log_level=debug"))):
            d = self.root / n.name / service
            d.mkdir(mode=0o755)
            pam = PAM_DIR / service
            self.state["files"].append(str(pam))
            self._save()
            pam.write_text(text)
            cfg = d / "sshd_config"
            cfg.write_text("\n".join([
                f"Port {port}", "ListenAddress 0.0.0.0", "ListenAddress ::",
                f"HostKey {self.root / 'hostkeys' / n.name}", f"PidFile {d}/sshd.pid",
                "UsePAM yes", "PubkeyAuthentication yes", "PasswordAuthentication no",
                "KbdInteractiveAuthentication no", "PermitRootLogin prohibit-password",
                f"AuthorizedKeysFile {self.root / 'ssh' / 'authorized'}/%u", "StrictModes no", "LogLevel VERBOSE",
                "UseDNS no", "PrintMotd no", "PrintLastLog no", "AcceptEnv none", "X11Forwarding no",
                f"SetEnv SLURM_CONF={self.conf}", "",
            ]))
            link = self.root / "bin" / service  # sshd's PAM service name is its program name
            link.symlink_to("/usr/sbin/sshd")
            # SLURM_CONF in sshd's own environment: pam_slurm_adopt runs inside sshd [priv] and reads slurm.conf.
            self._spawn(service, [str(link), "-D", "-e", "-f", str(cfg)], n, n.name)

    def _wait_ready(self, deadline: float) -> None:
        marks = {"tracer-": b"tracer serving on", "adopter-": b"adopter serving", "sshd-": b"Server listening"}
        pending = [r for r in self.state["procs"] if any(r["name"].startswith(k) for k in marks)]
        idle = False
        last_sinfo = ""
        while True:
            for r in list(pending):
                if not _same_proc(r):
                    raise LabError(f"{r['name']} (pid {r['pid']}) exited during start-up\n{_tail(Path(r['log']))}")
                mark = next(v for k, v in marks.items() if r["name"].startswith(k))
                if mark in Path(r["log"]).read_bytes():
                    pending.remove(r)
            for r in self.state["procs"]:
                if r["name"].startswith(("slurm", "munged")) and not _same_proc(r):
                    raise LabError(f"{r['name']} (pid {r['pid']}) exited during start-up\n{_tail(Path(r['log']))}\n"
                                   f"{_tail(self.logdir / (r['name'] + '.log'))}")
            if not idle:
                states = self.node_states()
                last_sinfo = str(states)
                idle = len(states) == len(self.nodes) and all(s == "idle" for s in states.values())
            if idle and not pending:
                return
            if time.monotonic() > deadline:
                raise LabError(f"lab not ready in time: nodes {last_sinfo}; still starting: "
                               f"{[r['name'] for r in pending]}")
            time.sleep(0.1)

    def _install_profile(self) -> None:
        self.state["files"].append(str(PROFILE_DEST))
        self._save()
        shutil.copy(PROFILE_SRC, PROFILE_DEST)
        os.chmod(PROFILE_DEST, 0o644)

    # ================================================================ using the lab
    def env(self, user: LabUser | None = None, extra: dict | None = None) -> dict:
        e = {"PATH": USER_PATH if user else SBIN_PATH, "SLURM_CONF": str(self.conf), "LANG": "C.UTF-8",
             "HOME": user.home if user else "/root", "USER": user.name if user else "root",
             "LOGNAME": user.name if user else "root", "SHELL": "/bin/bash"}
        e.update(extra or {})
        return e

    def popen(self, node, argv: list[str], user: str | LabUser | None = None, env: dict | None = None,
              uts: bool = True, **kw) -> subprocess.Popen:
        """Start argv inside node's netns (own UTS namespace named like the node), as `user` if given.
        nsenter-style setns, not `ip netns exec` (which remounts /sys and hides /sys/fs/cgroup)."""
        n = self.node(node)
        u = self.user(user) if user is not None else None
        kw.setdefault("cwd", u.home if u else str(self.root))
        kw.setdefault("stdin", subprocess.DEVNULL)
        p = subprocess.Popen(argv, env=self.env(u, env), preexec_fn=_preexec(n.netns.path, n.name if uts else None, u),
                             **kw)
        self._children.append(p)
        return p

    def run(self, node, argv: list[str], user: str | LabUser | None = None, env: dict | None = None,
            timeout: float = 60, check: bool = False, input: str | None = None, uts: bool = True,
            **kw) -> subprocess.CompletedProcess:
        """Run argv inside node's netns with SLURM_CONF set (as `user` if given); output captured as text."""
        n = self.node(node)
        u = self.user(user) if user is not None else None
        kw.setdefault("cwd", u.home if u else str(self.root))
        kw.setdefault("capture_output", True)
        kw.setdefault("text", True)
        if input is None:
            kw.setdefault("stdin", subprocess.DEVNULL)
        r = subprocess.run(argv, env=self.env(u, env), input=input, timeout=timeout,
                           preexec_fn=_preexec(n.netns.path, n.name if uts else None, u), **kw)
        if check and r.returncode != 0:
            raise LabError(f"{' '.join(argv)} on {n.name} as {u.name if u else 'root'} exited {r.returncode}: "
                           f"{(r.stderr or '').strip()[-1000:]}")
        return r

    # ---- Slurm helpers
    def node_states(self) -> dict[str, str]:
        """node -> state as sinfo prints it (idle, mixed, alloc, down*, ...); {} while slurmctld is not up."""
        try:
            r = self.run(self.ctl, ["sinfo", "-h", "-N", "-o", "%N %t"], timeout=15)
        except subprocess.TimeoutExpired:
            return {}
        if r.returncode != 0:
            return {}
        out = {}
        for line in r.stdout.split("\n"):
            parts = line.split()
            if len(parts) == 2:
                out[parts[0]] = parts[1]
        return out

    def sbatch(self, node, user: str | LabUser, script_text: str, extra_args=()) -> int:
        """Submit script_text from `node` as `user`; returns the job id."""
        if not script_text.startswith("#!"):
            script_text = "#!/bin/bash\n" + script_text
        r = self.run(node, ["sbatch", "--parsable", *extra_args], user=user, input=script_text, timeout=30)
        if r.returncode != 0:
            raise LabError(f"sbatch {' '.join(extra_args)} failed ({r.returncode}): {r.stderr.strip()}")
        return int(r.stdout.strip().split(";")[0])

    def job_info(self, job_id: int) -> dict:
        r = self.run(self.ctl, ["scontrol", "show", "job", "-o", str(job_id)], timeout=15)
        if r.returncode != 0 or not r.stdout.strip():
            return {}
        return parse_kv(r.stdout.strip().splitlines()[0])

    def job_state(self, job_id: int) -> str:
        return self.job_info(job_id).get("JobState", "")

    def expand_nodelist(self, nodelist: str) -> list[str]:
        if not nodelist or nodelist == "(null)":
            return []
        r = self.run(self.ctl, ["scontrol", "show", "hostnames", nodelist], timeout=15, check=True)
        return r.stdout.split()

    def job_nodes(self, job_id: int) -> list[str]:
        return self.expand_nodelist(self.job_info(job_id).get("NodeList", ""))

    def job_uid(self, job_id: int) -> int:
        uid = self.job_info(job_id).get("UserId", "")  # "cidlab1(1001)"
        return int(uid.partition("(")[2].rstrip(")"))

    def wait_job_running(self, job_id: int, timeout: float = 60, extern: bool = True) -> dict:
        """Wait until the job RUNs and (extern=True) its extern step holds a process on every node of
        the job (PrologFlags=contain: the step that adoption puts sessions into). Returns scontrol's fields."""
        deadline = time.monotonic() + timeout
        info: dict = {}
        while time.monotonic() < deadline:
            info = self.job_info(job_id)
            st = info.get("JobState", "")
            if st in TERMINAL_JOB_STATES:
                raise JobFailed(f"job {job_id} ended as {st} before running: {info.get('Reason')}\n" +
                                "\n".join(_tail(self.logdir / f"slurmd-{n.name}.log", 10) for n in self.nodes))
            if st == "RUNNING":
                if not extern:
                    return info
                uid = int(info["UserId"].partition("(")[2].rstrip(")"))
                nodes = self.expand_nodelist(info.get("NodeList", ""))
                if nodes and all(self._has_procs(self.cgroup(n, uid, job_id)) for n in nodes):
                    return info
            time.sleep(0.1)
        raise TimeoutError(f"job {job_id} not running in {timeout}s: {info.get('JobState')} "
                           f"reason={info.get('Reason')}")

    def wait_job_done(self, job_id: int, timeout: float = 60) -> str:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            st = self.job_state(job_id)
            if st == "" or st in TERMINAL_JOB_STATES:
                return st
            time.sleep(0.1)
        raise TimeoutError(f"job {job_id} still not done after {timeout}s")

    @staticmethod
    def _has_procs(cg: Path) -> bool:
        try:
            return bool((cg / "cgroup.procs").read_text().split())
        except OSError:
            return False

    def scancel(self, job_id: int, signal_name: str | None = None) -> None:
        """Cancel (or signal) a job; a job that already ended is not an error."""
        argv = ["scancel", *([f"--signal={signal_name}"] if signal_name else []), str(job_id)]
        r = self.run(self.ctl, argv, timeout=30)
        if r.returncode != 0 and not any(x in r.stderr for x in ("already complet", "Invalid job id")):
            raise LabError(f"scancel {job_id}: {r.stderr.strip()}")

    def jobs(self) -> list[int]:
        r = self.run(self.ctl, ["squeue", "-h", "-o", "%i"], timeout=15)
        return [int(x) for x in r.stdout.split() if x.isdigit()] if r.returncode == 0 else []

    def listpids(self, job_id: int, node) -> dict[str, list[int]]:
        """`scontrol listpids JOB NODE` run on node: step ("extern", "batch", "0", ...) -> pids."""
        n = self.node(node)
        r = self.run(n, ["scontrol", "listpids", str(job_id), n.name], timeout=30)
        out: dict[str, list[int]] = {}
        for line in r.stdout.splitlines():
            parts = line.split()
            if len(parts) >= 3 and parts[0].isdigit():
                out.setdefault(parts[2], []).append(int(parts[0]))
        return out

    def wait_steps(self, job_id: int, node, steps=("extern", "batch"), timeout: float = 30) -> dict[str, list[int]]:
        """Wait until `scontrol listpids` on node lists a process for each of these steps; returns listpids."""
        deadline = time.monotonic() + timeout
        pids: dict[str, list[int]] = {}
        while time.monotonic() < deadline:
            pids = self.listpids(job_id, node)
            if all(pids.get(s) for s in steps):
                return pids
            time.sleep(0.1)
        raise TimeoutError(f"job {job_id} on {self.node(node).name}: steps {steps} not all running "
                           f"after {timeout}s: {pids}")

    def scontrol_callerid(self, node, src_ip: str, src_port: int, dst_ip: str,
                          dst_port: int) -> tuple[int, str] | None:
        """Slurm's own answer for a TCP tuple (`scontrol callerid`, run on node): (job id, node) or None."""
        # scontrol takes the address family as a fifth argument and defaults to IPv4
        af = "6" if ":" in src_ip else "4"
        r = self.run(node, ["scontrol", "callerid", src_ip, str(src_port), dst_ip, str(dst_port), af], timeout=30)
        parts = r.stdout.split()
        if r.returncode != 0 or len(parts) < 2 or not parts[0].isdigit():
            return None
        return int(parts[0]), parts[1]

    def ssh_argv(self, user: str | LabUser, host: str, command: str, port: int = SSH_PORT,
                 as_user: str | None = None, timeout: int = 10) -> list[str]:
        """ssh argv for `user` logging in to host as as_user (default: user) with the matching key it holds."""
        u = self.user(user)
        target = as_user or u.name
        return ["ssh", "-i", str(u.key_of(target)), "-o", "IdentitiesOnly=yes", "-o", f"ConnectTimeout={timeout}",
                "-o", "LogLevel=INFO", "-p", str(port), f"{target}@{host}", command]

    # ---- information
    def logs_tail(self, lines: int = 20) -> str:
        paths = [Path(r["log"]) for r in self.state.get("procs", [])]
        paths += [self.logdir / "slurmctld.log", *[self.logdir / f"slurmd-{n.name}.log" for n in self.nodes]]
        if self.state.get("devlog"):
            paths.append(Path(self.state["devlog"]["log"]))
        return "\n".join(_tail(p, lines) for p in paths if p.exists())

    def describe(self) -> dict:
        procs = [{**r, "alive": _same_proc(r)} for r in self.state.get("procs", [])]
        return {
            "root": str(self.root), "slurm_conf": str(self.conf), "munge_socket": self.munge_socket,
            "nodes": [{"name": n.name, "ip": n.ip, "ip6": n.ip6, "netns": n.netns.path,
                       "tracer_metrics": n.tracer_metrics, "adopter_metrics": n.adopter_metrics,
                       "adopter_socket": self.adopter_socket(n), "ssh": f"{n.ip}:{SSH_PORT} ({self.cidlab_service(n)})",
                       "ssh_psa": f"{n.ip}:{PSA_PORT} ({self.psa_service(n)})"} for n in self.nodes],
            "daemons": procs,
            "users": [{"name": u.name, "uid": u.uid, "home": u.home, "key": str(u.key)}
                      for u in (self.user(x) for x in self.state.get("users", []) if x in self.users)],
            "syslog": (self.state.get("devlog") or {}).get("log"),
            "timings": self.state.get("timings", {}),
        }

    def status_text(self) -> str:
        d = self.describe()
        out = [f"callerid Slurm lab (cluster {CLUSTER}), state {self.state_file}",
               f"slurm.conf {self.conf}, munge socket {self.munge_socket}", "", "nodes:"]
        for n in d["nodes"]:
            out.append(f"  {n['name']:7} {n['ip']:14} {n['ip6']:12} netns {n['netns']}")
            out.append(f"          metrics: tracer {n['tracer_metrics']}  adopter {n['adopter_metrics']}")
            out.append(f"          sshd: {n['ssh']}  {n['ssh_psa']}")
        out += ["", "daemons:"]
        for p in d["daemons"]:
            out.append(f"  {p['name']:24} pid {p['pid']:<8} {'running' if p['alive'] else 'DEAD'}  log {p['log']}")
        out += ["", "users:"] + [f"  {u['name']} uid {u['uid']} home {u['home']} key {u['key']}" for u in d["users"]]
        if self.live_procs():
            r = self.run(self.ctl, ["sinfo"], timeout=15)
            out += ["", "sinfo:", *["  " + x for x in (r.stdout or r.stderr).rstrip().splitlines()]]
            r = self.run(self.ctl, ["squeue"], timeout=15)
            out += ["", "squeue:", *["  " + x for x in (r.stdout or r.stderr).rstrip().splitlines()]]
        out += ["", "enter a node (as root):",
                f"  SLURM_CONF={self.conf} nsenter --net={self.ctl.netns.path} -- bash",
                "as a test user:",
                f"  SLURM_CONF={self.conf} nsenter --net={self.ctl.netns.path} -- runuser -u cidlab1 -- bash -l"]
        if d["syslog"]:
            out += ["", f"syslog (pam_slurm_adopt, callerid): {d['syslog']}"]
        return "\n".join(out)

    # ================================================================ down
    def down(self, timeout: float = 30.0) -> list[str]:
        """Remove everything the state file lists. Safe to call twice, after a failed up, from any process."""
        t0 = time.monotonic()
        notes: list[str] = []
        st = self.state  # only what this object made or load() read: never another lab's
        for p in self._children:
            if p.poll() is None:
                p.kill()
                try:
                    p.wait(timeout=5)
                except subprocess.TimeoutExpired:
                    notes.append(f"pid {p.pid} (started by popen) did not die")
        self._children.clear()
        procs = [r for r in st.get("procs", []) if _same_proc(r)]
        slurmctld = [r for r in procs if r["name"] == "slurmctld"]
        nodes = st.get("cgroup_nodes") or []  # recorded once this lab wrote slurm.conf: its slurm_<node> trees

        # 1. jobs: cancel them while Slurm still runs, so slurmstepd ends them and removes their cgroups
        if slurmctld and Path(st.get("slurm_conf", self.conf)).exists():
            try:
                jobs = self.jobs()
                if jobs:
                    self.run(self.ctl, ["scancel", *map(str, jobs)], timeout=20)
                    end = time.monotonic() + min(15.0, timeout / 2)
                    while time.monotonic() < end and self.jobs():
                        time.sleep(0.2)
            except (subprocess.TimeoutExpired, OSError) as exc:
                notes.append(f"cancelling jobs: {exc}")

        # 2. what else must go: descendants of our daemons, processes in the lab's job cgroups,
        #    slurmstepd processes in the lab's namespaces (they outlive slurmd)
        ours = {r["pid"] for r in procs}
        victims = self._descendants(ours) | self._cgroup_pids(nodes) | self._stepds(st.get("netns", []))
        victims -= ours
        victims.discard(os.getpid())

        # 3. daemons by pid (munged last: the others may still talk to it)
        daemons = [r for r in procs if r["name"] != "munged"]
        self._terminate([r["pid"] for r in daemons], 5.0)
        self._terminate(sorted(victims), 3.0)
        late = self._cgroup_pids(nodes) - {os.getpid()}
        if late:
            self._terminate(sorted(late), 2.0)
        for r in procs:
            if r["name"] == "munged":
                self._terminate([r["pid"]], 5.0)
        for p in self._popens.values():
            try:
                p.wait(timeout=2)
            except subprocess.TimeoutExpired:
                pass
        self._popens.clear()

        # 4. cgroups Slurm made for the lab's nodes
        for node in nodes:
            for mp in _v1_mounts():
                top = mp / f"slurm_{node}"
                if top.is_dir() and not self._rm_cgroup_tree(top, time.monotonic() + 5):
                    notes.append(f"left {top}: not empty (pids "
                                 f"{sorted(self._cgroup_pids([node], jobs_only=False))[:5]})")

        # 5. namespaces (deleting a namespace removes its veths; the bridge goes with the hub)
        for ns in reversed(st.get("netns", [])):
            inode = _netns_inode(ns)
            if inode is not None:
                left = self._pids_in_netns(inode)
                if left:
                    notes.append(f"processes still in {ns} (not started by the lab, left alone): "
                                 + ", ".join(f"{p} {_cmdline(p)[:40]}" for p in sorted(left)[:5]))
                _ip("netns", "del", ns, check=False)

        # 6. files: PAM services, profile.d snippet, our /dev/log
        for f in st.get("files", []):
            try:
                os.unlink(f)
            except FileNotFoundError:
                pass
        dl = st.get("devlog")
        if dl:
            try:
                s = os.lstat(dl["path"])
                if stat.S_ISSOCK(s.st_mode) and s.st_ino == dl["ino"]:
                    os.unlink(dl["path"])
            except FileNotFoundError:
                pass

        # 7. users (homes live under the lab directory)
        for name in st.get("users", []):
            try:
                pwd.getpwnam(name)
            except KeyError:
                continue
            r = subprocess.run(["userdel", "--force", name], capture_output=True, text=True, timeout=30)
            if r.returncode not in (0, 6):
                notes.append(f"userdel {name}: {r.stderr.strip()}")

        # 8. directories: pinned maps, the lab directory (state file last); job_container/tmpfs
        #    mounts a job's /tmp and pins its namespace under <root>/jc: a killed slurmd leaves them
        for mp in sorted(_mounts_under(self.root), reverse=True):
            subprocess.run(["umount", "-l", mp], capture_output=True, timeout=10)
        for d in reversed(st.get("dirs", [])):
            if d != str(self.root):
                shutil.rmtree(d, ignore_errors=True)
        if str(self.root) in st.get("dirs", []) and self.root.exists():
            shutil.rmtree(self.root, ignore_errors=True)
        self.timings["down"] = time.monotonic() - t0
        self.state = self._empty_state()
        for n in notes:
            self._log(f"down: {n}")
        self._log(f"lab down in {self.timings['down']:.1f}s")
        return notes

    @staticmethod
    def _down_without_state(root: Path, log) -> None:
        """Leftovers with no state file (killed before it was written): names only the lab uses."""
        for line in _ip("netns", "list", check=False).stdout.splitlines():
            name = line.split()[0] if line.split() else ""
            if name.startswith(NS_PREFIX):
                log(f"removing leftover namespace {name}")
                _ip("netns", "del", name, check=False)
        if root.exists():
            shutil.rmtree(root, ignore_errors=True)

    @staticmethod
    def _terminate(pids: list[int], timeout: float) -> None:
        pids = [p for p in pids if alive(p)]
        if not pids:
            return
        _kill(pids, signal.SIGTERM)
        end = time.monotonic() + timeout
        while time.monotonic() < end and any(alive(p) for p in pids):
            time.sleep(0.02)
        _kill([p for p in pids if alive(p)], signal.SIGKILL)
        end = time.monotonic() + 2
        while time.monotonic() < end and any(alive(p) for p in pids):
            time.sleep(0.02)

    @staticmethod
    def _descendants(roots: set[int]) -> set[int]:
        children: dict[int, list[int]] = {}
        for pid in _all_pids():
            pp = _ppid(pid)
            if pp is not None:
                children.setdefault(pp, []).append(pid)
        out, todo = set(), list(roots)
        while todo:
            for c in children.get(todo.pop(), []):
                if c not in out:
                    out.add(c)
                    todo.append(c)
        return out

    @staticmethod
    def _cgroup_pids(nodes, jobs_only: bool = True) -> set[int]:
        """Processes in the lab nodes' job cgroups (slurm_<node>/uid_*/job_*/...), or anywhere in the
        slurm_<node> trees with jobs_only=False (for reporting only)."""
        out = set()
        for node in nodes:
            for mp in _v1_mounts():
                top = mp / f"slurm_{node}"
                if not top.is_dir():
                    continue
                for d, _, _ in os.walk(top):
                    rel = Path(d).relative_to(top).parts
                    if jobs_only and not (len(rel) >= 2 and rel[1].startswith("job_")):
                        continue
                    try:
                        out |= {int(x) for x in Path(d, "cgroup.procs").read_text().split()}
                    except OSError:
                        pass
        return out

    @staticmethod
    def _pids_in_netns(inode: int) -> set[int]:
        out = set()
        for pid in _all_pids():
            try:
                if os.stat(f"/proc/{pid}/ns/net").st_ino == inode and alive(pid):
                    out.add(pid)
            except OSError:
                pass
        return out

    def _stepds(self, netns_names) -> set[int]:
        out = set()
        for ns in netns_names:
            inode = _netns_inode(ns)
            if inode is None:
                continue
            for pid in self._pids_in_netns(inode):
                try:
                    if os.readlink(f"/proc/{pid}/exe") == "/usr/sbin/slurmstepd":
                        out.add(pid)
                except OSError:
                    pass
        return out

    @staticmethod
    def _rm_cgroup_tree(top: Path, deadline: float) -> bool:
        while True:
            for d, _, _ in os.walk(top, topdown=False):
                try:
                    os.rmdir(d)
                except FileNotFoundError:
                    pass
                except OSError:
                    pass
            if not top.exists():
                return True
            if time.monotonic() > deadline:
                return False
            time.sleep(0.05)

    # ---- context manager
    def __enter__(self) -> SlurmLab:
        return self.up()

    def __exit__(self, *exc) -> None:
        self.down()


# ---------------------------------------------------------------- CLI

LOCK_FILE = "/run/lock/callerid-lab.lock"


def _mounts_under(root: Path) -> list[str]:
    """Mount points strictly below root (from /proc/self/mountinfo; octal escapes decoded)."""
    prefix = str(root).rstrip("/") + "/"
    out = []
    with open("/proc/self/mountinfo") as f:
        for line in f:
            mp = line.split()[4].encode().decode("unicode_escape")
            if mp.startswith(prefix):
                out.append(mp)
    return out


def lab_lock(timeout: float = 120.0):
    """Serialise `up`/`down` of the lab on this machine (the CLI, and test fixtures for their whole
    module, hold it). Returns the open lock file: close it to release."""
    os.makedirs(os.path.dirname(LOCK_FILE), exist_ok=True)
    f = open(LOCK_FILE, "w")
    deadline = time.monotonic() + timeout
    while True:
        try:
            fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
            return f
        except BlockingIOError:
            if time.monotonic() > deadline:
                f.close()
                raise LabBusy(f"{LOCK_FILE} held for {timeout:.0f}s by another lab command or test run")
            time.sleep(0.2)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="lab", description="A Slurm 22.05 + callerid lab in network namespaces.")
    sub = p.add_subparsers(dest="cmd", required=True)
    u = sub.add_parser("up", help="build the lab and leave it running")
    u.add_argument("--nodes", type=int, default=2)
    u.add_argument("--keep-on-failure", action="store_true", help="leave a failed lab up for inspection")
    u.add_argument("--timeout", type=float, default=90.0)
    sub.add_parser("down", help="remove everything the lab made")
    s = sub.add_parser("status", help="nodes, daemons, sinfo, how to enter a node")
    s.add_argument("--json", action="store_true")
    a = p.parse_args(argv)

    def say(msg):
        print(msg, file=sys.stderr, flush=True)

    if a.cmd == "status":
        lock = None  # read-only
    else:
        try:
            lock = lab_lock()
        except LabBusy as exc:
            say(str(exc))
            return 1
    try:
        if a.cmd == "up":
            lab = SlurmLab(nodes=a.nodes, log=say)
            try:
                lab.up(timeout=a.timeout, keep_on_failure=a.keep_on_failure, persistent=True)
            except LabError as exc:
                say(f"lab up failed: {exc}")
                return 1
            print(lab.status_text())
            return 0
        if not STATE_FILE.exists():
            if a.cmd == "down":
                SlurmLab._down_without_state(ROOT, say)
                say("no lab state: nothing (else) to remove")
                return 0
            print("no lab is up (no state file at %s)" % STATE_FILE)
            return 1
        lab = SlurmLab.load(log=say)
        if a.cmd == "down":
            notes = lab.down()
            return 1 if notes else 0
        if a.json:
            print(json.dumps(lab.describe(), indent=1))
        else:
            print(lab.status_text())
        return 0
    finally:
        if lock:
            lock.close()


if __name__ == "__main__":
    sys.exit(main())
