#!/usr/bin/env bash
# Run the unit tests under another Debian release's Python, in a chroot (no VM):
#   bash scripts/python_check.sh bullseye    # Python 3.9, the floor (RHEL/Rocky 9's system Python)
#   bash scripts/python_check.sh trixie      # Python 3.13
# Extra arguments go to pytest (default: tests/unit).
#
# The chroot (debootstrap minbase + python3, BCC, gcc: 1-2 min the first time) and the wheels
# (downloaded on the host: pip inside a chroot lacks the host's index settings) are cached
# under $CALLERID_CHROOT_CACHE (default /var/cache/callerid-chroot), outside the checkout.
# Each run copies the committed and modified files of the checkout into the chroot's /src
# and installs them (editable) into a fresh venv there, so nothing is written into the checkout.
# Tests that need a tool the chroot lacks (promtool, systemd-analyze, gcc, ...) skip: this
# check is about the Python version, the host run covers the tools. Needs root.
set -euo pipefail

repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
suite=${1:?usage: python_check.sh bullseye|bookworm|trixie [pytest args]}
shift
cache=${CALLERID_CHROOT_CACHE:-/var/cache/callerid-chroot}
root=$cache/$suite
log() { printf 'python_check: %s\n' "$*" >&2; }

[ "$(id -u)" -eq 0 ] || { log "must run as root (debootstrap, chroot, mounts)"; exit 2; }
case $suite in
  bullseye) pyver=3.9 ;;
  bookworm) pyver=3.11 ;;
  trixie) pyver=3.13 ;;
  *) log "unknown suite $suite (bullseye, bookworm or trixie)"; exit 2 ;;
esac

# python3-bpfcc: the tracer imports BCC, Debian's for that release (0.18, 0.26, 0.31);
# gcc, libpam0g-dev: tests build the PAM module and its harness.
include=python3,python3-venv,python3-bpfcc,gcc,libc6-dev,libpam0g-dev
if [ ! -x "$root/usr/bin/python$pyver" ] || [ ! -x "$root/usr/bin/gcc" ] || [ ! -e "$root/usr/include/security/pam_modules.h" ]; then
  command -v debootstrap >/dev/null || { apt-get update -q >/dev/null; apt-get install -y -q debootstrap >/dev/null; }
  mirror=$(sed -n 's/^URIs: *//p' /etc/apt/sources.list.d/debian.sources 2>/dev/null | head -n 1)
  log "debootstrap $suite into $root"
  rm -rf "$root.partial" "$root"
  debootstrap --variant=minbase --include="$include" "$suite" "$root.partial" \
    "${mirror:-http://deb.debian.org/debian}" >"$cache/debootstrap-$suite.log" 2>&1 \
    || { log "debootstrap failed: see $cache/debootstrap-$suite.log"; exit 1; }
  mv "$root.partial" "$root"
fi

# The project's runtime and test dependencies (pyproject.toml), as wheels for that Python.
# pip resolves dependencies' environment markers for the running interpreter, so the
# back-ports older Pythons need are named here.
wheels=$cache/wheels-py${pyver/./}
mapfile -t want < <(/usr/bin/python3 - "$repo/pyproject.toml" <<'PY'
import sys, tomllib
project = tomllib.load(open(sys.argv[1], "rb"))["project"]
for req in project["dependencies"] + project["optional-dependencies"]["test"]:
    print(req.split(";")[0].strip())
PY
)
want+=(pip setuptools wheel)
[ "$pyver" = 3.9 ] && want+=(exceptiongroup typing_extensions)
stamp="$wheels/.want-$(printf '%s ' "${want[@]}" | sha256sum | cut -c1-16)"
if [ ! -e "$stamp" ]; then
  log "downloading wheels for Python $pyver into $wheels"
  mkdir -p "$wheels"
  python3 -m pip download -q --disable-pip-version-check --python-version "$pyver" --only-binary=:all: \
    --platform manylinux2014_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux_2_28_x86_64 \
    --platform any -d "$wheels" "${want[@]}"
  touch "$stamp"
fi

mounted=()
cleanup() {
  for ((i = ${#mounted[@]} - 1; i >= 0; i--)); do umount -l "${mounted[$i]}" 2>/dev/null || true; done
}
trap cleanup EXIT
bind() {  # bind SRC DST [ro]
  mkdir -p "$2"
  mount --bind "$1" "$2"
  mounted+=("$2")
  if [ "${3:-}" = ro ]; then mount -o remount,bind,ro "$2"; fi
}
mkdir -p "$root/proc" "$root/dev" "$root/tmp"
mount -t proc proc "$root/proc"; mounted+=("$root/proc")
bind /dev "$root/dev"
bind "$wheels" "$root/wheels" ro

# The checkout as it is now (tracked and new files, .gitignore'd ones left out).
rm -rf "$root/src" "$root/venv"
mkdir -p "$root/src"
(cd "$repo" && git ls-files -z --cached --others --exclude-standard | xargs -0 -r stat --printf '%n\0' 2>/dev/null \
  | tar --null -T - -cf -) | tar -C "$root/src" -xf -

log "Python $pyver ($suite): venv, install, pytest ${*:-tests/unit}"
# pip inside (also the tests' own installs) takes the wheels, never an index.
chroot "$root" /usr/bin/env -i PATH=/usr/bin:/bin HOME=/root LANG=C.UTF-8 PIP_NO_INDEX=1 PIP_FIND_LINKS=/wheels /bin/sh -euc '
  python3 -m venv --system-site-packages /venv
  pip() { /venv/bin/pip install -q --disable-pip-version-check --no-index --find-links /wheels "$@"; }
  pip --upgrade pip setuptools wheel   # the distribution'"'"'s pip and setuptools may predate editable installs (PEP 660)
  # Editable, as scripts/setup.sh installs it: the tests run from /src, where a plain
  # install would be shadowed by the callerid/ folder without its subpackages.
  pip --no-build-isolation -e "/src[test]"
  cd /src
  /venv/bin/python3 --version
  exec /venv/bin/python3 -m pytest -q -p no:cacheprovider -rfE "$@"
' python_check "${@:-tests/unit}"
