#!/usr/bin/env bash
# Set up this machine (idempotent) and run the whole test suite as CI does.
# Tests that need root, BPF, munged or namespaces fail (never skip) under CI=true.
set -euo pipefail
repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
bash "$repo/scripts/setup.sh"
cd "$repo"
export CI=${CI:-true}
exec "$repo/.venv/bin/python3" -m pytest -ra -p no:cacheprovider "$@"
