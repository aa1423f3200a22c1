#!/bin/bash
# Build pam_callerid.so and its two test harnesses: build_pam.sh [OUTDIR]  (default build/).
# The one place their compile flags live: scripts/setup.sh, the tests and docs/INSTALL.md use it.
# Needs gcc and libpam0g-dev.
set -euo pipefail
here=$(cd "$(dirname "$0")/.." && pwd)
out=${1:-$here/build}
src=$here/adopter/pam
mkdir -p "$out"
cflags=(-std=c11 -O2 -Wall -Wextra -Werror -Wformat=2 -Wshadow -Wconversion -Wno-sign-conversion
        -D_FORTIFY_SOURCE=2 -fstack-protector-strong -fstack-clash-protection -fcf-protection)
ldflags=("-Wl,-z,relro,-z,now" "-Wl,-z,noexecstack")
newer() {  # newer TARGET SOURCES...: TARGET is missing or older than a source or this script
  local t=$1; shift
  [ -e "$t" ] || return 0
  for s in "$@" "$0"; do [ "$s" -nt "$t" ] && return 0; done
  return 1
}
build() {  # build TARGET MODE CC-ARGS...
  local t=$1 mode=$2; shift 2
  cc "${cflags[@]}" "$@" "${ldflags[@]}" -o "$t.tmp.$$"
  chmod "$mode" "$t.tmp.$$"
  mv -f "$t.tmp.$$" "$t"   # a rename: sshd never dlopen()s a half-written module
  echo "built $t"
}
if newer "$out/pam_callerid.so" "$src"/pam_callerid.c "$src"/wireline.[ch]; then
  build "$out/pam_callerid.so" 0644 -fPIC -shared -fvisibility=hidden "$src"/pam_callerid.c "$src"/wireline.c -lpam
fi
if newer "$out/callerid-wire-harness" "$src"/wire_harness.c "$src"/wireline.[ch]; then
  build "$out/callerid-wire-harness" 0755 -fPIE -pie "$src"/wire_harness.c "$src"/wireline.c
fi
if newer "$out/callerid-pam-harness" "$src"/pam_harness.c; then
  build "$out/callerid-pam-harness" 0755 -fPIE -pie "$src"/pam_harness.c -lpam -ldl
fi
