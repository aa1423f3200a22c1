#!/usr/bin/env bash
# Idempotent machine setup for callerid on Debian (12 first; 11 and 13 in VMs): packages, BCC's kernel
# headers arrangement, tracefs/bpffs mounts, MUNGE key, and the project venv.
# Safe to run any number of times; every step checks before it acts.
set -euo pipefail

repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
venv=${CALLERID_VENV:-$repo/.venv}

log() { printf 'setup: %s\n' "$*" >&2; }

if [ "$(id -u)" -ne 0 ]; then
  log "must run as root (BPF, cgroups, network namespaces, sshd and Slurm need it)"
  exit 2
fi

# --- Debian packages -------------------------------------------------------
# python3-bpfcc: BCC's Python bindings come from the distribution, not PyPI.
# linux-headers-amd64: BCC compiles against headers; there is none for the
#   running kernel here, and Debian's 6.1 headers work for programs that only
#   use tracepoint args and BPF helpers (see ../shared/LAB-NOTES.md).
# munge/libmunge2: credentials for the callerid RPC, as Slurm uses them.
# slurm*, openssh-server, libpam-slurm-adopt: the lab and the reference module.
# xvfb, xauth, x11-utils: Slurm's X11 forwarding in the lab (an X display, its cookie, xdpyinfo).
# prometheus: promtool and a real server for the observability tests.
# systemd, shellcheck, vagrant: offline checks of the units, scripts and Vagrantfile.
# debootstrap: Debian 11/12/13 chroots for the Python-version and package tests (tests/package).
# gcc, libc6-dev, libpam0g-dev: pam_callerid.so (adopter/pam/) and the churn generator of bench/.
packages=(
  python3-bpfcc python3-venv python3-pip linux-headers-amd64 gcc libc6-dev libpam0g-dev
  munge libmunge2 iproute2 procps psmisc util-linux passwd
  openssh-server openssh-client slurmctld slurmd slurm-client libpam-slurm-adopt xvfb xauth x11-utils
  prometheus systemd shellcheck vagrant debootstrap
)
missing=()
for p in "${packages[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
  export DEBIAN_FRONTEND=noninteractive
  # Offline installs (CALLERID_WHEELS, e.g. the VM images) use the package lists they were built with.
  [ -n "${CALLERID_WHEELS:-}" ] || apt-get update -q >/dev/null
  # A package this Debian release does not have (not every suite has vagrant) is
  # skipped aloud; the tests that need it say what is missing.
  installable=()
  for p in "${missing[@]}"; do
    if apt-cache show "$p" >/dev/null 2>&1; then installable+=("$p"); else log "not in this release, skipped: $p"; fi
  done
  if [ ${#installable[@]} -gt 0 ]; then
    log "installing: ${installable[*]}"
    apt-get install -y -q --no-install-recommends "${installable[@]}" >/dev/null
  fi
fi

# --- kernel headers where BCC looks for them --------------------------------
kver=$(uname -r)
moddir=/lib/modules/$kver
if [ ! -e "$moddir/build/include/linux/kconfig.h" ] && [ ! -e "$moddir/build/Makefile" ]; then
  build=$(find /usr/src -maxdepth 1 -name 'linux-headers-*-amd64' | sort -V | tail -n 1)
  common=$(find /usr/src -maxdepth 1 -name 'linux-headers-*-common' | sort -V | tail -n 1)
  if [ -z "$build" ] || [ -z "$common" ]; then
    log "no Debian kernel headers under /usr/src; BCC cannot compile"
    exit 1
  fi
  log "linking $moddir/{build,source} to $build, $common"
  mkdir -p "$moddir"
  ln -sfn "$build" "$moddir/build"
  ln -sfn "$common" "$moddir/source"
fi

# --- tracefs and bpffs --------------------------------------------------------
mountpoint -q /sys/kernel/tracing || mount -t tracefs nodev /sys/kernel/tracing
mountpoint -q /sys/fs/bpf || mount -t bpf bpf /sys/fs/bpf

# --- MUNGE ----------------------------------------------------------------------
# The Debian package creates a key at install; make sure one exists anyway.
if [ ! -s /etc/munge/munge.key ]; then
  log "creating /etc/munge/munge.key"
  install -d -o munge -g munge -m 0700 /etc/munge
  dd if=/dev/urandom of=/etc/munge/munge.key bs=1024 count=1 status=none
  chown munge:munge /etc/munge/munge.key
  chmod 0400 /etc/munge/munge.key
fi
install -d -o munge -g munge -m 0755 /run/munge

# --- the venv ---------------------------------------------------------------------
# Built from /usr/bin/python3 with system site packages: only that interpreter
# imports Debian's bcc module.
if [ ! -x "$venv/bin/python3" ] || ! "$venv/bin/python3" -c 'import bcc' 2>/dev/null; then
  log "creating venv $venv"
  rm -rf "$venv"
  /usr/bin/python3 -m venv --system-site-packages "$venv"
fi
stamp=$venv/.callerid-installed
if [ ! -f "$stamp" ] || [ "$repo/pyproject.toml" -nt "$stamp" ]; then
  log "installing callerid into the venv"
  # CALLERID_WHEELS=DIR: install from wheels downloaded beforehand (a VM guest has no index)
  pip_source=()
  [ -z "${CALLERID_WHEELS:-}" ] || pip_source=(--no-index --find-links "$CALLERID_WHEELS")
  # pip < 21.3 (Debian 11's) cannot install a pyproject.toml-only project in editable mode (PEP 660)
  if ! "$venv/bin/python3" -c 'import pip, sys; sys.exit(tuple(map(int, pip.__version__.split(".")[:2])) < (21, 3))'; then
    "$venv/bin/python3" -m pip install -q --disable-pip-version-check "${pip_source[@]}" --upgrade "pip>=21.3"
  fi
  # the build backend pyproject.toml names, in the venv itself: `pip wheel --no-build-isolation`
  # (tests/unit/test_install.py) otherwise meets the distribution's setuptools (Debian 11: 52,
  # which cannot read [project] and names the wheel UNKNOWN)
  "$venv/bin/python3" -m pip install -q --disable-pip-version-check "${pip_source[@]}" "setuptools>=61"
  "$venv/bin/python3" -m pip install -q --disable-pip-version-check "${pip_source[@]}" -e "${repo}[test,bench]"
  touch "$stamp"
fi
bash "$repo/scripts/build_pam.sh" "$repo/build"
log "ready: $venv/bin/callerid, $repo/build/pam_callerid.so"
