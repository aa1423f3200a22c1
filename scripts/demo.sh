#!/usr/bin/env bash
# Set up this machine (idempotent) and run the demo.
set -euo pipefail
repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
bash "$repo/scripts/setup.sh"
exec "$repo/.venv/bin/python3" "$repo/scripts/demo_tracer.py" "$@"
