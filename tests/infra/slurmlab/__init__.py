"""A real Slurm 22.05 cluster of N nodes in network namespaces on this one machine.

    lab = SlurmLab(nodes=2).up()      # or: scripts/lab.sh up [--nodes N]
    job = lab.sbatch("node1", "cidlab1", "#!/bin/bash\\nsleep 60\\n", ["-w", "node2", "--mem=100"])
    lab.wait_job_running(job)
    lab.listpids(job, "node2")        # {"extern": [...], "batch": [...]}
    lab.down()                        # or, from any process: scripts/lab.sh down

Topology: a hub namespace `cidlab-hub` holding a Linux bridge; node namespaces
`cidlab-node<i>`, each with a veth `eth0` into the bridge, 198.18.40.<i>/24 and
fd00:40::<i>/64. Per node: slurmd (slurmctld too on node1), `callerid tracer`,
`callerid adopter`, sshd :22 whose PAM account stack ends with pam_callerid.so
(service `sshd-cidlab-node<i>`), sshd :2222 ending with Slurm's real
pam_slurm_adopt (service `sshd-psa-node<i>`). One private munged (its own key)
serves Slurm and callerid. Test users cidlab1/cidlab2 with keys for each other.

Everything made is recorded in /run/callerid-lab/state.json as it is made, so
`down()` from a fresh process (after an interrupted `up()` too) removes it all:
daemons by pid (checked against their start time), processes inside the lab's job
cgroups, the Slurm cgroup trees of its nodes, namespaces, PAM files, the profile.d
snippet, users, pinned BPF maps and the lab directory.

Modules: config (names, addresses, rendered slurm.conf/cgroup.conf/sshd/PAM text; pure),
cgroups (the host's cgroup version, job cgroups through callerid's own layout code),
network (namespaces, bridge, veths), procctl (start/recognise/stop processes by pid),
slurm (commands on a node, Slurm's client tools), lab (SlurmLab: up), teardown (down),
report (status), cli (`scripts/lab.sh`).

Cgroups: on a v1 or hybrid host Slurm runs cgroup/v1 (trees slurm_<node>/uid_U/job_N in every
controller); on a pure v2 host cgroup/v2 with IgnoreSystemd=yes (jobs in
system.slice/<node>_slurmstepd.scope/job_N), slurmd started in a cgroup of its own as systemd's
Delegate=yes would.

CLI: python -m tests.infra.slurmlab up [--nodes N] [--keep-on-failure] | down | status [--json]
"""
from __future__ import annotations

from ..daemonproc import CALLERID
from . import cgroups
from .cli import LOCK_FILE, lab_lock
from .config import (
    ADOPTER_METRICS_PORT,
    PSA_CANDIDATES,
    PSA_PORT,
    ROOT,
    RPC_PORT,
    SSH_PORT,
    STATE_FILE,
    TRACER_METRICS_PORT,
    USERS,
    LabUser,
    Node,
)
from .lab import SlurmLab
from .procctl import same_proc
from .slurm import JobFailed, LabBusy, LabError, parse_kv

__all__ = ["ADOPTER_METRICS_PORT", "CALLERID", "LOCK_FILE", "PSA_CANDIDATES", "PSA_PORT", "ROOT", "RPC_PORT",
           "SSH_PORT", "STATE_FILE", "TRACER_METRICS_PORT", "USERS", "JobFailed", "LabBusy", "LabError", "LabUser",
           "Node", "SlurmLab", "cgroups", "lab_lock", "parse_kv", "same_proc"]
