"""SlurmLab: build the lab step by step, recording everything it makes in a state file as it goes."""

from __future__ import annotations

import json
import os
import pwd
import shutil
import stat
import subprocess
import sys
import time
from pathlib import Path

from pyroute2.netlink.exceptions import NetlinkError

from .. import munged as munged_mod
from ..adopterproc import write_config as write_adopter_config
from ..daemonproc import CALLERID, READY_TIMEOUT_FLOOR
from ..netns import _allowed
from ..tracerproc import write_config as write_tracer_config
from . import cgroups, network
from .config import (
    ADOPTER_METRICS_PORT,
    DEVLOG,
    EXEC_SPOOL,
    HUB,
    NS_PREFIX,
    PIN_ROOT,
    PROFILE_DEST,
    PROFILE_SRC,
    PSA_CANDIDATES,
    ROOT,
    RPC_PORT,
    SBIN_PATH,
    TRACER_METRICS_PORT,
    LabUser,
    Node,
    cgroup_conf_text,
    job_container_conf_text,
    make_nodes,
    slurm_conf_text,
)
from .logins import Logins
from .procctl import DEVLOG_PROG, netns_inode, node_argv, proc_start, same_proc, tail
from .report import Report
from .slurm import LabBusy, LabError, SlurmClient
from .teardown import Teardown


def exec_allowed(path: Path) -> bool:
    """False where the filesystem holding `path` (or its nearest existing parent) is mounted noexec."""
    while not path.exists() and path != path.parent:
        path = path.parent
    return not os.statvfs(path).f_flag & os.ST_NOEXEC


class SlurmLab(SlurmClient, Logins, Teardown, Report):
    """A Slurm cluster of `nodes` nodes (network namespaces) with callerid, sshd and pam_slurm_adopt on each."""

    def __init__(self, nodes: int = 2, root: Path = ROOT, log=None, log_level: str = "info", probe: str = "auto",
                 syslog: bool = True, job_container: bool = False, x11: bool = False):
        """nodes: 1..16; log: a callable taking progress lines (default: silent); log_level: of the
        callerid daemons; probe: the tracers' backend
        ("auto" tries cookie, sockstore, fentry, kprobe, tracepoint in that order and settles on cookie here);
        syslog: run a /dev/log listener (log/syslog.log) if the machine has none, for pam_slurm_adopt;
        job_container: JobContainerType=job_container/tmpfs (BasePath <root>/jc), for join_container;
        x11: PrologFlags=X11, Slurm's X11 forwarding (salloc --x11)."""
        self.root = Path(root)
        self.state_file = self.root / "state.json"
        self.nodes = make_nodes(nodes)
        self.state: dict = self._empty_state()
        self.users: dict[str, LabUser] = {}
        self.timings: dict[str, float] = {}
        self.log_level = log_level
        self.probe = probe
        self.syslog = syslog
        self.job_container = job_container
        self.x11 = x11
        self.host = cgroups.host_cgroups()
        self._popens: dict[int, subprocess.Popen] = {}
        self._children: list[subprocess.Popen] = []  # started by popen(): ours to stop in down()
        self._log = log or (lambda msg: None)

    # ---- names and paths
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

    def job_cgroups(self, node, job: int):
        """Job `job` on node as callerid's adopter finds it in cgroupfs (a LocalJob: layout, uid,
        extern dirs), or None before its extern step exists and after it ends."""
        return cgroups.find_job(self.node(node).name, job)

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
        return [r for r in self.state.get("procs", []) if same_proc(r)]

    # ================================================================ up
    def up(self, timeout: float = 90.0, keep_on_failure: bool = False, persistent: bool = False) -> SlurmLab:
        """Build the lab; on failure tear down what was made (unless keep_on_failure) and raise.

        persistent=False (tests): the lab belongs to this process; if the process dies without
        down(), the next up() removes it. persistent=True (`scripts/lab.sh up`): it stays until `down`."""
        t0 = time.monotonic()
        deadline = t0 + max(timeout, READY_TIMEOUT_FLOOR)  # the VM runner raises it: BCC under emulation
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
            if isinstance(exc, (LabError, NetlinkError, OSError)):
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
        controllers = None
        if self.host.version == "v2":
            controllers = (cgroups.CGROUP_ROOT / "cgroup.controllers").read_text()
        problems += cgroups.preflight_problems(self.host, controllers)
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
                orphan = bool(live) and not owner.get("persistent", True) and not same_proc(owner)
                if orphan:
                    self._log(f"removing the lab of test process {owner.get('pid')}, which died without down()")
                    live = []
                if live:
                    raise LabBusy(f"a lab is already up ({len(live)} daemons alive, e.g. {live[0]['name']} "
                                  f"pid {live[0]['pid']}): run `scripts/lab.sh down` first")
                if not orphan:
                    self._log("removing the leftovers of a lab that is no longer running")
                old.down()
        if self.root.exists() or any(netns_inode(f"{NS_PREFIX}{n}") for n in ["hub", *[x.name for x in self.nodes]]):
            self.down_without_state(self.root, self._log)
        self.root.mkdir(parents=True)
        os.chmod(self.root, 0o755)
        self.state = self._empty_state()
        self.state["dirs"] = [str(self.root)]
        self.state["owner"] = {"pid": os.getpid(), "start": proc_start(os.getpid()), "persistent": persistent}
        self._save()

    def _network(self) -> None:
        for n in self.nodes:  # refuse addresses outside the test ranges before making anything
            _allowed(f"{n.ip}/24")
            _allowed(f"{n.ip6}/64")
        self.state["netns"].append(HUB)  # recorded before it exists: down() removes a half-made one
        self._save()
        network.add_hub()
        for n in self.nodes:
            self.state["netns"].append(n.netns.name)
            self._save()
            network.add_node(n)

    def _munge(self) -> None:
        """A private munged with the lab's own key."""
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

    # ---- configuration
    @property
    def spool(self) -> Path:
        """slurmd's spool: under the lab's root unless that filesystem is mounted noexec."""
        return self.root / "slurm" / "spool" if exec_allowed(self.root) else EXEC_SPOOL

    def slurm_conf_text(self) -> str:
        return slurm_conf_text(self.root, self.nodes, self.munge_socket, self.spool, self.job_container, self.x11)

    def cgroup_conf_text(self) -> str:
        return cgroup_conf_text(self.host.version)

    def _write_configs(self) -> None:
        sd = self.root / "slurm"
        if self.spool != sd / "spool":
            self.state["dirs"].append(str(self.spool))  # outside the root: down() removes it by name
            self._save()
        for d in (sd, sd / "state", self.spool, self.logdir, self.root / "bin"):
            d.mkdir(parents=True, exist_ok=True)
            os.chmod(d, 0o755)
        for n in self.nodes:
            (self.spool / n.name).mkdir(mode=0o755, exist_ok=True)
            (self.root / n.name).mkdir(mode=0o755)
        self.conf.write_text(self.slurm_conf_text())
        (sd / "cgroup.conf").write_text(self.cgroup_conf_text())
        if self.job_container:
            (sd / "job_container.conf").write_text(job_container_conf_text(self.root))
        self.state["slurm_conf"] = str(self.conf)
        # Recorded once this lab wrote slurm.conf: the Slurm cgroup trees down() may remove.
        self.state["cgroup_nodes"] = [n.name for n in self.nodes]
        self.state["cgroup_tops"] = [str(p) for n in self.nodes for p in cgroups.slurm_tops(n.name, self.host)]
        PIN_ROOT.mkdir(parents=True, exist_ok=True)
        self.state["dirs"].append(str(PIN_ROOT))
        for n in self.nodes:
            nd = self.root / n.name
            write_tracer_config(nd / "tracer.toml", self.munge_socket, str(PIN_ROOT / n.name), [],
                                f"{n.ip}:{TRACER_METRICS_PORT}", nodename=n.name, rpc_port=RPC_PORT,
                                log_level=self.log_level, probe=self.probe)
            write_adopter_config(nd / "adopter.toml", self.munge_socket, n.name, RPC_PORT, self.adopter_socket(n),
                                 f"{n.ip}:{ADOPTER_METRICS_PORT}", log_level=self.log_level,
                                 job_container_conf=str(sd / "job_container.conf"), slurm_conf=str(self.conf),
                                 attach_socket=str(nd / "attach" / "attach.sock"))
        self._save()

    # ---- daemons
    def _daemon_env(self) -> dict:
        return {"PATH": SBIN_PATH, "SLURM_CONF": str(self.conf), "LANG": "C.UTF-8", "HOME": "/root",
                "PYTHONUNBUFFERED": "1"}

    def _spawn(self, name: str, argv: list[str], node: Node | None, hostname: str | None = None,
               cgroup: Path | None = None, scope: list[str] | None = None) -> dict:
        log = self.logdir / f"{name}.out"
        with open(log, "ab") as f:
            p = subprocess.Popen(node_argv(argv, node.netns.path if node else None, hostname, cgroup=cgroup,
                                           scope=scope),
                                 stdin=subprocess.DEVNULL, stdout=f, stderr=subprocess.STDOUT,
                                 env=self._daemon_env(), start_new_session=True, close_fds=True)
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
            # v2: slurmd in a delegated cgroup of its own, as slurmd.service has (Delegate=yes);
            # under systemd a transient scope systemd makes, elsewhere a directory the lab makes
            systemd = cgroups.systemd_is_init()
            cg = cgroups.slurmd_cgroup(n.name, self.host, systemd)
            if cg is not None:
                self.state.setdefault("cgroup_dirs", []).append(str(cg))
                self._save()
                if not systemd:
                    cgroups.delegate_slurmd_cgroup(cg)
            self._spawn(f"slurmd-{n.name}", ["/usr/sbin/slurmd", "-D", "-N", n.name, "-f", str(self.conf)], n, n.name,
                        cgroup=None if systemd else cg,
                        scope=cgroups.systemd_scope_argv(cg) if systemd and cg is not None else None)
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
            if not same_proc(rec):
                return  # someone else's /dev/log appeared meanwhile, or bind failed: do without
            time.sleep(0.01)
        if DEVLOG.exists() and stat.S_ISSOCK(os.lstat(DEVLOG).st_mode):
            self.state["devlog"] = {"path": str(DEVLOG), "ino": os.lstat(DEVLOG).st_ino, "log": str(out)}
            self._save()

    def _wait_ready(self, deadline: float) -> None:
        marks = {"tracer-": b"tracer serving on", "adopter-": b"adopter serving", "sshd-": b"Server listening"}
        pending = [r for r in self.state["procs"] if any(r["name"].startswith(k) for k in marks)]
        idle = False
        last_sinfo = ""
        while True:
            for r in list(pending):
                if not same_proc(r):
                    raise LabError(f"{r['name']} (pid {r['pid']}) exited during start-up\n{tail(Path(r['log']))}")
                mark = next(v for k, v in marks.items() if r["name"].startswith(k))
                if mark in Path(r["log"]).read_bytes():
                    pending.remove(r)
            for r in self.state["procs"]:
                if r["name"].startswith(("slurm", "munged")) and not same_proc(r):
                    raise LabError(f"{r['name']} (pid {r['pid']}) exited during start-up\n{tail(Path(r['log']))}\n"
                                   f"{tail(self.logdir / (r['name'] + '.log'))}")
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

    # ---- context manager
    def __enter__(self) -> SlurmLab:
        return self.up()

    def __exit__(self, *exc) -> None:
        self.down()
