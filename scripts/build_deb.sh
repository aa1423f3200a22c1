#!/usr/bin/env bash
# Build the Debian package with Debian's own tooling (debhelper, dh-python/pybuild):
#   bash scripts/build_deb.sh      ->  build/callerid_<version>_<arch>.deb
# The checkout as it is now (tracked and new files) is copied to build/deb/ and built
# there, so dpkg-buildpackage's output and intermediate files never land in the checkout.
# Installs the build dependencies from Debian when they are missing (needs root then).
set -euo pipefail

repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
log() { printf 'build_deb: %s\n' "$*" >&2; }

# debian/control's Build-Depends, plus build-essential and libpam0g-dev for a PAM module.
packages=(build-essential debhelper dh-python python3-all pybuild-plugin-pyproject python3-setuptools
          libpam0g-dev gcc libc6-dev)
missing=()
for p in "${packages[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
  [ "$(id -u)" -eq 0 ] || { log "missing build dependencies (${missing[*]}); run as root to install them"; exit 2; }
  log "installing: ${missing[*]}"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -q >/dev/null
  apt-get install -y -q --no-install-recommends "${missing[@]}" >/dev/null
fi

version=$(dpkg-parsechangelog -l "$repo/debian/changelog" -S Version)
work=$repo/build/deb
src=$work/callerid-$version
rm -rf "$work"
mkdir -p "$src"
(cd "$repo" && git ls-files -z --cached --others --exclude-standard | xargs -0 -r stat --printf '%n\0' 2>/dev/null \
  | tar --null -T - -cf -) | tar -C "$src" -xf -

log "dpkg-buildpackage in $src"
# Debian's python3 only (pybuild runs "python3.X" from PATH): a pyenv or venv interpreter
# first on PATH would build against the wrong Python.
(cd "$src" && env PATH=/usr/sbin:/usr/bin:/sbin:/bin dpkg-buildpackage -us -uc -b) >"$work/build.log" 2>&1 \
  || { tail -n 40 "$work/build.log" >&2; log "failed: see $work/build.log"; exit 1; }
rm -f "$repo"/build/callerid_*.deb
mv "$work"/callerid_*.deb "$repo/build/"
ls "$repo"/build/callerid_*.deb
