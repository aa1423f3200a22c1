#!/usr/bin/env bash
# Set up this machine (idempotent) and run the demo.
#   bash scripts/demo.sh                 the Slurm lab demo (scripts/demo_slurm.py): brings the lab up and
#                                        LEAVES IT RUNNING; `bash scripts/lab.sh down` removes it
#   bash scripts/demo.sh --tracer-only   the source side alone, without Slurm (scripts/demo_tracer.py);
#                                        removes everything it made
set -euo pipefail
repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
demo=demo_slurm.py
if [ "${1:-}" = "--tracer-only" ]; then
  demo=demo_tracer.py
  shift
fi
bash "$repo/scripts/setup.sh"
exec "$repo/.venv/bin/python3" "$repo/scripts/$demo" "$@"
