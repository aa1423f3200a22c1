"""A two-node cluster of test hosts for the adopter: 'src' runs the tracer and the jobs users
ssh from; 'dst' runs a real sshd whose PAM account stack ends with pam_callerid.so, and the
adopter daemon. Jobs are Slurm-layout cgroup trees (tests/infra/jobtree.py) on each node."""

from __future__ import annotations

import contextlib
import os
import shutil
import subprocess
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from tests.helpers import require, require_bpf
from tests.infra import pace
from tests.infra.adopterproc import AdopterProc, scrape_in
from tests.infra.adopterproc import write_config as write_adopter_config
from tests.infra.jobtree import JobTree
from tests.infra.netns import Topology
from tests.infra.procs import as_user, in_netns
from tests.infra.slurmlab import PSA_CANDIDATES, LabBusy, SlurmLab, cgroups, lab_lock
from tests.infra.sshd import Sshd, keygen, pam_module, pam_stack, ssh_argv
from tests.infra.tracerproc import TracerFactory, free_port

SRC4, DST4 = "198.18.30.1", "198.18.30.2"
SRC6, DST6 = "fd00:30::1", "fd00:30::2"
JOB_WAIT = 60      # a job must start within this (it takes well under a second here)
# The lab adopter's rpc_timeout_seconds: tests assert that a dead or unreachable source is
# given up on within it, under a module deadline of 4 s, so it stays 1 s even under emulation
RPC_TIMEOUT = 1.0
# What an ssh login takes besides the wait a test bounds (key exchange, session, command):
# 3 s on a host, stretched under emulation (tests/infra/pace.py), where that part took
# 3.5-4.6 s in Debian 12's guest (2026-12-02). There the outcome assertions (which job, which
# action, the adopter's reason) tell a wait that held from one that ran into the next bound.
LOGIN_OWN_TIME = pace.scaled(3.0)


@dataclass
class Login:
    rc: int
    out: str
    err: str
    seconds: float

    def cgroup_lines(self) -> list[str]:
        return [line for line in self.out.splitlines() if line[:1].isdigit() and ":" in line]


@dataclass
class Cluster:
    dir: Path
    topo: Topology
    src_jobs: JobTree
    dst_jobs: JobTree
    tracer: object
    adopter: AdopterProc
    sshd: Sshd
    keys: dict
    users: list
    munge_socket: str
    hook_args: list = field(default_factory=list)
    adopter_socket: str = ""
    dst_node: str = ""
    adopter_config: tuple = ()   # (path, args, options) the adopter was started with

    @contextlib.contextmanager
    def adopter_options(self, **changed):
        """The adopter restarted with some options changed, for one test; restored after,
        also when the test fails. No restart when nothing changes (a host's pace factor is 1)."""
        path, args, base = self.adopter_config
        if all(base.get(k) == v for k, v in changed.items()):
            yield
            return
        try:
            write_adopter_config(path, *args, **{**base, **changed})
            self.adopter.stop()
            self.adopter.start()
            yield
        finally:   # also when the changed adopter failed to start
            write_adopter_config(path, *args, **base)
            self.adopter.stop()
            self.adopter.start()

    @property
    def src(self):
        return self.topo.hosts["src"]

    @property
    def dst(self):
        return self.topo.hosts["dst"]

    def set_hook(self, *args: str):
        """Rewrite pam_callerid.so's arguments on the PAM line (PAM re-reads the file at every
        login). The lab's sshd runs as PAM service sshd-cid<N>: it is the handled service
        unless a test says otherwise."""
        if not any(a.startswith("service=") for a in args):
            args = (f"service={self.sshd.name}", *args)
        self.sshd.pam_file.write_text(pam_stack(list(args), self.adopter_socket))

    def set_account_stack(self, *lines: str):
        """Replace the whole account stack (pam_callerid.so's line: "{callerid} ARGS")."""
        line = f"{pam_module()} socket={self.adopter_socket} service={self.sshd.name}"
        self.sshd.pam_file.write_text("\n".join(
            ["auth     required pam_unix.so", *(x.format(callerid=line) for x in lines),
             "session  required pam_unix.so", ""]))

    def ssh(self, user, key_of=None, job: int | None = None, command: str = "cat /proc/self/cgroup",
            host: str = DST4, timeout: float = 30) -> Login:
        """ssh from src as `user` (inside `job` on src, or outside any job) with key_of's key."""
        key = self.keys[(user.name, (key_of or user).name)]
        argv = ssh_argv(key, (key_of or user).name, host, command)
        t0 = time.monotonic()
        out = {"stdout": subprocess.PIPE, "stderr": subprocess.PIPE, "text": True,
               "env": {"HOME": "/nonexistent", "PATH": "/usr/bin:/bin"}}
        if job is None:
            p = subprocess.Popen(in_netns(as_user(argv, user.uid, user.gid), self.src.path), **out)
        else:
            p = self.src_jobs.popen(argv, user.uid, user.gid, job, "0", netns=self.src.path, **out)
        out, err = p.communicate(timeout=pace.scaled(timeout))
        return Login(p.returncode, out, err, time.monotonic() - t0)

    def ssh_root(self, command: str = "cat /proc/self/cgroup", host: str = DST4) -> Login:
        argv = ssh_argv(self.keys[("root", "root")], "root", host, command)
        t0 = time.monotonic()
        p = subprocess.Popen(self.src.argv(argv), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        out, err = p.communicate(timeout=pace.scaled(30))
        return Login(p.returncode, out, err, time.monotonic() - t0)

    def logs(self, lines: int = 30) -> str:
        """The tail of the adopter's and sshd's logs, for assertion messages."""
        out = []
        for name, path in (("adopter", self.adopter.log), ("sshd", self.sshd.log)):
            text = path.read_text(errors="replace").splitlines()[-lines:] if path.exists() else []
            out.append(f"--- {name} ---\n" + "\n".join(text))
        return "\n".join(out)

    def adopter_metrics(self) -> dict:
        return scrape_in(self.dst, self.adopter_metrics_url)

    def tracer_metrics(self) -> dict:
        return scrape_in(self.src, self.tracer.metrics_url)


@pytest.fixture(scope="module")
def cluster(munged, test_users):
    require_bpf()
    require(shutil.which("sshd") or os.path.exists("/usr/sbin/sshd"), "OpenSSH sshd (openssh-server)")
    require(os.path.exists("/usr/include/security/pam_modules.h"),
            "Linux-PAM headers (libpam0g-dev) to build pam_callerid.so")
    host = cgroups.host_cgroups()  # job trees in the running system's layout (tests/infra/jobtree.py)
    require(host.version == "v2" or os.path.ismount("/sys/fs/cgroup/freezer"),
            "Slurm's cgroups: a v1 freezer (hybrid host) or cgroup v2 at /sys/fs/cgroup")
    tag = f"{os.getpid() % 100000}"
    d = Path(tempfile.mkdtemp(prefix="callerid-lab-"))
    os.chmod(d, 0o755)
    topo = Topology(prefix=f"cl{tag}")
    # v2: each job's extern step holds a process of its user, as Slurm 22.05's (no slurmstepd here)
    src_jobs = JobTree(node=f"src{tag}", extern_process=True)
    dst_jobs = JobTree(node=f"dst{tag}", extern_process=True)
    tracers = TracerFactory(munged.socket)
    adopter = sshd = None
    try:
        topo.host("src")
        topo.host("dst")
        topo.link("src", "dst", [f"{SRC4}/24", f"{SRC6}/64"], [f"{DST4}/24", f"{DST6}/64"])
        port = free_port()
        tracer = tracers.make(netns=topo.hosts["src"], listen=[], nodename=f"src{tag}")
        tracer.start()
        # keys: (ssh runs as, key of) -> private key file owned by the one who runs ssh
        keys = {}
        pubs = {}
        kdir = d / "keys"
        kdir.mkdir()
        for u in test_users:
            keygen(kdir / u.name)
            pubs[u.name] = [(kdir / f"{u.name}.pub").read_text().strip()]
        for runner in test_users:
            for owner in test_users:
                f = kdir / f"{owner.name}-as-{runner.name}"
                shutil.copy(kdir / owner.name, f)
                os.chown(f, runner.uid, runner.gid)
                os.chmod(f, 0o600)
                keys[(runner.name, owner.name)] = f
        keygen(kdir / "root")
        pubs["root"] = [(kdir / "root.pub").read_text().strip()]
        keys[("root", "root")] = kdir / "root"
        sock = str(d / "adopter" / "adopter.sock")
        mport = port
        acfg = d / "adopter.toml"
        # The daemon decides within the smaller of its deadline_seconds and the module's time
        # left: a test that stretches the module's deadline on a slow machine (pace) needs this
        # one stretched too, or 64 queued logins under emulation are abandoned at 4 s.
        adopter_args = (munged.socket, f"dst{tag}", tracer.port, sock, f"127.0.0.1:{mport}")
        adopter_opts = {"rpc_timeout_seconds": RPC_TIMEOUT, "deadline_seconds": pace.scaled(4.0),
                        "attach_socket": str(d / "attach" / "attach.sock")}
        write_adopter_config(acfg, *adopter_args, **adopter_opts)
        adopter = AdopterProc(acfg, d / "adopter.log", topo.hosts["dst"]).start()
        sshd = Sshd(f"sshd-cid{tag}", d / "sshd", topo.hosts["dst"], pam_text=pam_stack(["deadline=4"], sock))
        sshd.start(pubs)
        c = Cluster(d, topo, src_jobs, dst_jobs, tracer, adopter, sshd, keys, test_users, munged.socket,
                    adopter_socket=sock, dst_node=f"dst{tag}", adopter_config=(acfg, adopter_args, adopter_opts))
        c.adopter_metrics_url = f"http://127.0.0.1:{mport}/metrics"
        yield c
    finally:
        if sshd:
            sshd.cleanup()
        if adopter:
            adopter.stop()
        tracers.cleanup()
        src_jobs.cleanup()
        dst_jobs.cleanup()
        topo.cleanup()
        shutil.rmtree(d, ignore_errors=True)


@pytest.fixture
def cl(cluster):
    """Per test: default hook arguments, no jobs left over, both daemons up."""
    cluster.set_hook("deadline=4")
    if not cluster.adopter.running:
        cluster.adopter.start()
    yield cluster
    cluster.src_jobs.cleanup()
    cluster.dst_jobs.cleanup()


# --- the real Slurm lab (tests/infra/slurmlab/), one per test module ---

@pytest.fixture(scope="module")
def lab(request):
    """The lab, with the test module's LAB_OPTIONS (SlurmLab keyword arguments) if it has any."""
    require_bpf()
    for exe in ("/usr/sbin/slurmctld", "/usr/sbin/slurmd", "/usr/bin/sbatch", "/usr/sbin/sshd", "/usr/sbin/munged"):
        require(os.access(exe, os.X_OK), f"{exe} (scripts/setup.sh installs slurmctld slurmd slurm-client "
                                         "openssh-server munge)")
    require(any(os.path.exists(p) for p in PSA_CANDIDATES), "pam_slurm_adopt.so (Debian libpam-slurm-adopt)")
    host = cgroups.host_cgroups()
    controllers = (cgroups.CGROUP_ROOT / "cgroup.controllers").read_text() if host.version == "v2" else None
    problems = cgroups.preflight_problems(host, controllers)
    require(not problems, "; ".join(problems))
    try:
        lock = lab_lock(timeout=120)  # held for the module: `scripts/lab.sh up/down` wait for us
    except LabBusy as exc:
        require(False, f"the lab lock ({exc})")
    lab = SlurmLab(nodes=2, **getattr(request.module, "LAB_OPTIONS", {}))
    try:
        try:
            lab.up(timeout=90)
        except LabBusy as exc:
            require(False, f"no other lab up on this machine: {exc}")
        print(f"lab up in {lab.timings['up']:.1f}s: {lab.timings}")
        yield lab
    finally:
        lab.down()
        print(f"lab down in {lab.timings.get('down', 0):.1f}s")
        lock.close()


@pytest.fixture
def jobs(lab):
    """Job ids a test submits; cancelled (and waited for) after it, so the next test finds free nodes."""
    ids: list[int] = []
    yield ids
    for j in ids:
        if lab.job_state(j) not in ("", "COMPLETED", "CANCELLED", "FAILED"):
            lab.scancel(j)
    for j in ids:
        lab.wait_job_done(j, timeout=JOB_WAIT)
    deadline = time.monotonic() + JOB_WAIT
    while time.monotonic() < deadline and set(lab.node_states().values()) != {"idle"}:
        time.sleep(0.2)
