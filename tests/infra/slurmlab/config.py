"""The lab's fixed facts (names, addresses, ports) and its configuration files, rendered as text (pure, no I/O)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from ..netns import Netns

REPO = Path(__file__).resolve().parents[3]
ROOT = Path("/run/callerid-lab")
STATE_FILE = ROOT / "state.json"
# slurmd execs batch scripts from its spool: where ROOT's filesystem is mounted noexec (Debian
# mounts /run so under systemd), the spool goes here instead.
EXEC_SPOOL = Path("/var/spool/callerid-lab")
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
WRITTEN_BY = "# Written by tests/infra/slurmlab; removed by `scripts/lab.sh down`."


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


def make_nodes(count: int) -> list[Node]:
    if not 1 <= count <= MAX_NODES:
        raise ValueError(f"nodes must be 1..{MAX_NODES}")
    return [Node(f"node{i}", i) for i in range(1, count + 1)]


def slurm_conf_text(root: Path, nodes: list[Node], munge_socket: str, spool: Path | None = None,
                    job_container: bool = False, x11: bool = False) -> str:
    """slurm.conf of a lab whose private files live under `root` (slurmd spools under `spool`,
    default <root>/slurm/spool); nodes[0] runs slurmctld;
    job_container: JobContainerType=job_container/tmpfs (job_container_conf_text beside it);
    x11: Slurm's own X11 forwarding (PrologFlags=X11, set up by the job's extern step)."""
    ctl = nodes[0]
    spool = spool or root / "slurm" / "spool"
    lines = [
        WRITTEN_BY,
        f"ClusterName={CLUSTER}",
        f"SlurmctldHost={ctl.name}({ctl.ip})",
        "SlurmUser=root",
        "SlurmdUser=root",
        f"SlurmctldPort={SLURMCTLD_PORT}",
        f"SlurmdPort={SLURMD_PORT}",
        "AuthType=auth/munge",
        "CredType=cred/munge",
        f"AuthInfo=socket={munge_socket}",
        f"StateSaveLocation={root}/slurm/state",
        f"SlurmdSpoolDir={spool}/%n",
        f"SlurmctldPidFile={root}/slurm/slurmctld.pid",
        f"SlurmdPidFile={root}/slurm/slurmd-%n.pid",
        f"SlurmctldLogFile={root}/log/slurmctld.log",
        f"SlurmdLogFile={root}/log/slurmd-%n.log",
        "SlurmctldDebug=info",
        "SlurmdDebug=info",
        # The same plugins on cgroup v1 and v2: the cgroup version is cgroup.conf's CgroupPlugin.
        "ProctrackType=proctrack/cgroup",
        "TaskPlugin=task/cgroup,task/affinity",
        "PrologFlags=contain,x11" if x11 else "PrologFlags=contain",
        *(["JobContainerType=job_container/tmpfs"] if job_container else []),
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
          "State=UNKNOWN" for n in nodes],
        # Cores may be shared by up to 4 jobs: tests need a user with several jobs on one
        # 2-core node (plus another user's job there) at once; memory is still enforced.
        f"PartitionName={PARTITION} Nodes={','.join(n.name for n in nodes)} Default=YES MaxTime=INFINITE State=UP "
        "OverSubscribe=FORCE:4",
        "",
    ]
    return "\n".join(lines)


def job_container_conf_text(root: Path) -> str:
    """job_container.conf: each job's /tmp and /dev/shm private under <root>/jc (Slurm makes it)."""
    return f"AutoBasePath=true\nBasePath={root / 'jc'}\n"


def cgroup_conf_text(version: str) -> str:
    """cgroup.conf for a host whose Slurm cgroups are `version` "v1" (legacy or hybrid) or "v2" (pure cgroup2)."""
    if version == "v1":
        head = ["# Hybrid or legacy host: v1 controllers at /sys/fs/cgroup/<ctrl>, job trees slurm_<node>/uid_U/job_N.",
                "CgroupPlugin=cgroup/v1"]
    elif version == "v2":
        # Slurm 22.05 cgroup/v2 asks systemd over D-Bus for <node>_slurmstepd.scope unless
        # IgnoreSystemd=yes, which makes slurmd mkdir system.slice/<node>_slurmstepd.scope
        # itself; CgroupAutomount=yes (v2: effective only with IgnoreSystemd) then enables the
        # needed controllers on slurmd's and slurmstepd's cgroups (cgroup.conf(5) of 22.05;
        # 23.02 renames it EnableControllers). slurmd must start in a cgroup of its own, as
        # systemd's Delegate=yes would give it: cgroups.py makes one.
        head = ["# Pure cgroup v2 host: jobs in system.slice/<node>_slurmstepd.scope/job_N/step_*.",
                "CgroupPlugin=cgroup/v2", "IgnoreSystemd=yes"]
    else:
        raise ValueError(f"cgroup version must be 'v1' or 'v2', not {version!r}")
    return "\n".join([
        WRITTEN_BY, *head,
        "CgroupMountpoint=/sys/fs/cgroup",
        # v1: use the hierarchies the host mounted, never mount one.
        f"CgroupAutomount={'no' if version == 'v1' else 'yes'}",
        "ConstrainCores=yes",
        "ConstrainRAMSpace=yes",
        "ConstrainSwapSpace=no",
        "ConstrainDevices=no",
        "",
    ])


def pam_psa_text(module: str, service: str, node: str, options: list[str]) -> str:
    """PAM service ending with Slurm's pam_slurm_adopt; service= and nodename= are added if absent."""
    opts = list(options)
    if not any(o.startswith("service=") for o in opts):
        opts.insert(0, f"service={service}")
    if not any(o.startswith("nodename=") for o in opts):
        opts.insert(1, f"nodename={node}")
    return "\n".join([
        WRITTEN_BY,
        "auth     required pam_unix.so",
        "account  required pam_unix.so",
        f"account  required {module} " + " ".join(opts),
        "session  required pam_unix.so",
        "",
    ])


def sshd_config_text(port: int, host_key: Path, rundir: Path, authorized: Path, slurm_conf: Path,
                     extra: tuple[str, ...] = ()) -> str:
    # SLURM_CONF in the sessions' environment: pam_slurm_adopt (inside sshd [priv]) gets it from
    # sshd's own environment, the session's shell from SetEnv.
    return "\n".join([
        f"Port {port}", "ListenAddress 0.0.0.0", "ListenAddress ::",
        f"HostKey {host_key}", f"PidFile {rundir}/sshd.pid",
        "UsePAM yes", "PubkeyAuthentication yes", "PasswordAuthentication no",
        "KbdInteractiveAuthentication no", "PermitRootLogin prohibit-password",
        f"AuthorizedKeysFile {authorized}/%u", "StrictModes no", "LogLevel VERBOSE",
        "UseDNS no", "PrintMotd no", "PrintLastLog no", "AcceptEnv none", "X11Forwarding no",
        f"SetEnv SLURM_CONF={slurm_conf}", *extra, "",
    ])


def known_hosts_text(nodes: list[Node], host_keys: dict[str, str]) -> str:
    """known_hosts for both sshds of every node; host_keys: node name -> "type base64"."""
    lines = []
    for n in nodes:
        pub = host_keys[n.name]
        lines.append(f"{n.name},{n.ip},{n.ip6} {pub}")
        lines.append(f"[{n.name}]:{PSA_PORT},[{n.ip}]:{PSA_PORT},[{n.ip6}]:{PSA_PORT} {pub}")
    return "\n".join(lines) + "\n"


def ssh_client_config_text(nodes: list[Node]) -> str:
    """~/.ssh/config of the test users: `ssh nodeN` (callerid hook) and `ssh nodeN-psa` (pam_slurm_adopt)."""
    hosts = []
    for n in nodes:
        hosts += [f"Host {n.name}", f"  HostName {n.ip}", f"  HostKeyAlias {n.name}", "",
                  f"Host {n.name}-psa", f"  HostName {n.ip}", f"  Port {PSA_PORT}",
                  f"  HostKeyAlias [{n.name}]:{PSA_PORT}", ""]
    hosts += ["Host *", "  BatchMode yes", "  StrictHostKeyChecking yes", ""]
    return "\n".join(hosts)
