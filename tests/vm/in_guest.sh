#!/usr/bin/env bash
# Runs inside a VM guest (scripts/vm.sh test): copy the read-only shared checkout to a
# guest-local dir, install it as on a host (scripts/setup.sh, offline wheels), then run
# the named steps. Every step runs even if an earlier one failed; a line per step, printed as
# it ends ("vm-step NAME rc=N secs=S"), lets the host report and, after a guest kernel panic,
# run only the steps that had not ended (tests/vm/__main__.py); exit status 0 only if all passed.
set -uo pipefail
src=${CALLERID_SHARE:-/mnt/callerid}
work=/srv/callerid   # not under /root (0700 on Debian): test users run the venv's callerid
steps=("$@")
[ ${#steps[@]} -gt 0 ] || steps=(unit smoke)

# BCC compiles under emulation take 33-55 s per tracer start (../shared/LAB-NOTES.md)
export CALLERID_TEST_READY_TIMEOUT=${CALLERID_TEST_READY_TIMEOUT:-240}
# every other time bound of the tests, ×10 (tests/infra/pace.py): TCG runs the guest 10-30×
# slower than the host (docs/VM.md); 64 logins at once missed ssh's 10 s banner exchange
export CALLERID_TEST_SLOWDOWN=${CALLERID_TEST_SLOWDOWN:-10}
export CI=true
# The guest has no package index (qemu's restricted network): every pip in it, the tests' own
# too (tests/unit/test_install.py installs the wheel into a fresh venv), takes the image's
# wheels, as scripts/python_check.sh does in its chroot. Without them Debian 11 (its
# prometheus-client 0.9, no tomli) had to reach PyPI for the wheel's dependencies.
if [ -n "${CALLERID_WHEELS:-}" ]; then export PIP_NO_INDEX=1 PIP_FIND_LINKS=$CALLERID_WHEELS; fi

fail=0
step() {
  local name=$1; shift
  local t0=$SECONDS rc=0
  echo "=== vm-step $name: $*"
  "$@" || rc=$?
  echo "vm-step $name rc=$rc secs=$((SECONDS - t0))"
  [ "$rc" -eq 0 ] || fail=1
  return 0
}

# shellcheck disable=SC2317  # functions run through step()
copy_checkout() {
  rm -rf "$work" && mkdir -p "$work" &&
    tar -C "$src" --exclude=./.venv --exclude=./build --exclude=./.git --exclude='*.egg-info' \
      --exclude=__pycache__ -cf - . | tar -C "$work" -xf - &&
    # tests run programs of the checkout (and its venv) as test users: /root is 0700 on Debian
    chmod o+x /root && chmod -R a+rX "$work"
}

# shellcheck disable=SC2317
# --durations: where the emulated minutes go (which tests to keep in CI's plan)
pytest() { "$work/.venv/bin/python3" -m pytest -ra -p no:cacheprovider --durations=12 "$@"; }

# shellcheck disable=SC1091
echo "guest: $(. /etc/os-release; echo "$PRETTY_NAME"), kernel $(uname -r), $(/usr/bin/python3 -V)," \
  "cgroup $(stat -fc %T /sys/fs/cgroup), PID 1 $(cat /proc/1/comm)"
step copy copy_checkout
cd "$work" || exit 1
step setup bash scripts/setup.sh
# Does the installed package import on the venv of the distribution's interpreter (the one BCC binds to)?
step import "$work/.venv/bin/python3" -c 'import bcc, callerid.cli'
if [ ! -x "$work/.venv/bin/callerid" ]; then
  # no installed callerid: the test steps cannot run; say so rather than fail obscurely
  for s in "${steps[@]}"; do echo "vm-step $s rc=125 secs=0"; done
  steps=()
  fail=1
fi
for s in "${steps[@]}"; do
  case $s in
    unit) step unit pytest tests/unit ;;
    smoke) step smoke pytest -rA tests/vm/backend_smoke.py ;;  # -rA: each backend prints its start-up time
    kernel) step kernel pytest tests/kernel ;;
    # the tracer's attribution tests against one backend, as CALLERID_TEST_PROBE does on a host
    kernel-cookie|kernel-sockstore|kernel-fentry|kernel-kprobe|kernel-tracepoint)
      step "$s" env CALLERID_TEST_PROBE="${s#kernel-}" "$work/.venv/bin/python3" -m pytest -ra -p no:cacheprovider \
        tests/kernel/test_tracer.py ;;
    demo|lab|units) step "$s" bash tests/vm/guest_steps.sh "$s" ;;  # tests/vm/guest_steps.sh
    # benches (docs/BENCHMARKS.md), --quick: under emulation compare their ratios, never absolute times
    bench-probe) step "$s" "$work/.venv/bin/python3" bench/probe_bench.py --quick ;;  # auto, cookie, sockstore, tracepoint (the default set)
    bench-login) step "$s" "$work/.venv/bin/python3" bench/login_bench.py --quick ;;
    *) step "$s" pytest "$s" ;;
  esac
done
# The guest kernel's own complaints (a time-wait table overflow, orphaned sockets, BPF
# warnings): the console is thrown away with the run, this log is kept
echo "=== guest kernel warnings (dmesg --level=emerg,alert,crit,err,warn, last 40)"
dmesg --level=emerg,alert,crit,err,warn 2>&1 | tail -40
exit "$fail"
