#!/usr/bin/env bash
# The VM tier's whole-system steps, run inside a guest by tests/vm/in_guest.sh from the
# guest's copy of the checkout (the current directory), after scripts/setup.sh:
#   demo   the README's first command, `bash scripts/demo.sh`, then `scripts/lab.sh down`
#   lab    the README's lab tests, tests/lab, against the real Slurm lab (cgroup v2 here)
#   units  tests/vm/units_check.py: the packaging/systemd units installed as docs/INSTALL.md says,
#          running under the guest's systemd (only meaningful in a VM guest)
# Exit status: the step's.
set -uo pipefail
step=${1:?usage: guest_steps.sh demo|lab|units}
py=./.venv/bin/python3

case $step in
  demo)
    rc=0
    bash scripts/demo.sh || rc=$?
    # the demo leaves the lab running on purpose; the next step needs the machine clean
    bash scripts/lab.sh down || rc=${rc:-1}
    exit "$rc"
    ;;
  lab)
    exec "$py" -m pytest -ra -p no:cacheprovider --durations=12 tests/lab
    ;;
  units)
    exec "$py" -m pytest -ra -p no:cacheprovider tests/vm/units_check.py
    ;;
  *)
    echo "guest_steps.sh: unknown step $step" >&2
    exit 2
    ;;
esac
