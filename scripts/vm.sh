#!/usr/bin/env bash
# The VM test tier (docs/VM.md): build Debian images, boot them with qemu (software
# emulation), run callerid's tests inside on stock kernels with systemd and cgroup v2.
#   bash scripts/vm.sh build SUITE...            build (or confirm current) images
#   bash scripts/vm.sh run SUITE -- CMD...       boot, run CMD as root in the guest, stop
#   bash scripts/vm.sh shell SUITE               boot and open a shell in the guest
#   bash scripts/vm.sh test [SUITE...] [--steps unit,smoke,kernel]
# Suites: bookworm (Debian 12), trixie (13), bullseye (11). Boots take the machine-wide
# heavy-test lock /tmp/callerid-heavy.lock themselves.
set -euo pipefail
repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)

log() { printf 'vm: %s\n' "$*" >&2; }

if [ "$(id -u)" -ne 0 ]; then
  log "must run as root (debootstrap, chroot, mkfs)"
  exit 2
fi

# Host tools, from Debian packages; idempotent like scripts/setup.sh.
packages=(qemu-system-x86 qemu-utils debootstrap e2fsprogs openssh-client python3-pip)
missing=()
for p in "${packages[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
  log "installing: ${missing[*]}"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -q >/dev/null
  apt-get install -y -q --no-install-recommends "${missing[@]}" >/dev/null
fi

cd "$repo"
# /usr/bin/python3: the host tooling needs only the standard library
exec /usr/bin/python3 -m tests.vm "$@"
