#!/bin/bash
# Build the pam_exec hook: build_hook.sh [OUTPUT]  (default build/callerid-pam-hook).
# The one place its compile flags live: scripts/setup.sh, the tests and docs/INSTALL.md use it.
set -euo pipefail
here=$(cd "$(dirname "$0")/.." && pwd)
out=${1:-$here/build/callerid-pam-hook}
src=$here/adopter/hook.c
mkdir -p "$(dirname "$out")"
if [ -x "$out" ] && [ "$out" -nt "$src" ] && [ "$out" -nt "$0" ]; then
  exit 0   # up to date
fi
cc -std=c11 -O2 -Wall -Wextra -Werror -Wformat=2 -Wshadow -D_FORTIFY_SOURCE=2 \
   -fstack-protector-strong -fPIE -pie -Wl,-z,relro,-z,now \
   -o "$out.tmp.$$" "$src"
install -m 0755 "$out.tmp.$$" "$out"
rm -f "$out.tmp.$$"
echo "built $out"
