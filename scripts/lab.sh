#!/usr/bin/env bash
# The Slurm + callerid lab: N nodes in network namespaces on this machine (docs/LAB.md).
#   scripts/lab.sh up [--nodes N] [--keep-on-failure]   set up the machine (scripts/setup.sh), build the lab
#   scripts/lab.sh down                                 remove everything the lab made (works from any shell)
#   scripts/lab.sh status [--json]                      nodes, daemons and pids, sinfo, how to enter a node
set -euo pipefail
repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
venv=${CALLERID_VENV:-$repo/.venv}

if [ "$(id -u)" -ne 0 ]; then
  echo "lab: must run as root (namespaces, cgroups, Slurm, sshd, users)" >&2
  exit 2
fi
cmd=${1:-}
case "$cmd" in
  up) bash "$repo/scripts/setup.sh" ;;
  down|status) ;;
  *) echo "usage: $0 up [--nodes N] [--keep-on-failure] | down | status [--json]" >&2; exit 2 ;;
esac
cd "$repo"
exec "$venv/bin/python3" -m tests.infra.slurmlab "$@"
