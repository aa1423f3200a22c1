#!/usr/bin/env bash
# Print the lab's slurm.conf for NODES compute nodes (the settings pam_slurm_adopt and
# callerid need: proctrack/cgroup, task/cgroup, PrologFlags=contain).
set -euo pipefail
nodes=$1
cat <<CONF
ClusterName=callerid
SlurmctldHost=ctl
SlurmUser=slurm
AuthType=auth/munge
CredType=cred/munge
ProctrackType=proctrack/cgroup
TaskPlugin=task/cgroup,task/affinity
PrologFlags=contain
SelectType=select/cons_tres
SelectTypeParameters=CR_Core_Memory
DefMemPerCPU=200
ReturnToService=2
SlurmctldLogFile=/var/log/slurm/slurmctld.log
SlurmdLogFile=/var/log/slurm/slurmd.log
StateSaveLocation=/var/lib/slurm/slurmctld
SlurmdSpoolDir=/var/lib/slurm/slurmd
CONF
for i in $(seq 1 "$nodes"); do
  echo "NodeName=node$i CPUs=2 RealMemory=1800 State=UNKNOWN"
done
echo "PartitionName=debug Nodes=ALL Default=YES MaxTime=INFINITE State=UP"
