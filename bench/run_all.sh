#!/usr/bin/env bash
# The whole callerid performance suite in one command, as root, from anywhere in the checkout:
#
#   sudo bash bench/run_all.sh [--quick]
#
# Runs, one after the other (each bench starts and removes everything it uses):
#   bench/tracer_bench.py    lookup vs node size, probe cost, start-up, RPC throughput
#   bench/rpc_load_bench.py  RPC with 1/16/256 clients plus slow and malformed clients
#   bench/scale_bench.py     map memory per entry, capacity (LRU + fallback), churn + sweeper
#   bench/login_bench.py     ssh login latency on the Slurm lab (skipped with a message if
#                            the lab's tools are missing: run scripts/setup.sh first)
#   bench/plot.py            PNGs from bench/results/*.json into docs/img/
# --quick passes --quick to every bench (about 4 minutes instead of about 10 here).
# Results: bench/results/{tracer,rpc_load,scale,login}.json (quick mode writes the login
# bench's results to login-quick.json and the others to *-quick.json, so a quick run never
# overwrites the full-run files the docs quote). Exit status: the number of benches that failed.
set -u

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
repo=$(dirname "$here")
py="$repo/.venv/bin/python3"
quick=()
suffix=""
for arg in "$@"; do
    case "$arg" in
        --quick) quick=(--quick); suffix="-quick" ;;
        -h|--help) sed -n '2,17p' "${BASH_SOURCE[0]}"; exit 0 ;;
        *) echo "run_all.sh: unknown argument: $arg" >&2; exit 2 ;;
    esac
done

if [ "$(id -u)" -ne 0 ]; then
    echo "run_all.sh: run as root (BPF, munged, cgroups, the lab)" >&2
    exit 2
fi
if [ ! -x "$py" ]; then
    echo "run_all.sh: $py missing: run scripts/setup.sh first" >&2
    exit 2
fi

results="$repo/bench/results"
mkdir -p "$results"
failed=0

run() {
    local name=$1
    shift
    echo "=== $name: $*"
    local start=$SECONDS
    if "$@"; then
        echo "=== $name: ok ($((SECONDS - start)) s)"
    else
        echo "=== $name: FAILED with status $? ($((SECONDS - start)) s)" >&2
        failed=$((failed + 1))
    fi
}

cd "$repo" || exit 2
run tracer_bench timeout 900 "$py" bench/tracer_bench.py "${quick[@]}" --out "$results/tracer$suffix.json"
run rpc_load_bench timeout 600 "$py" bench/rpc_load_bench.py "${quick[@]}" --out "$results/rpc_load$suffix.json"
run scale_bench timeout 600 "$py" bench/scale_bench.py "${quick[@]}" --out "$results/scale$suffix.json"
if command -v slurmctld >/dev/null 2>&1 && [ -x /usr/sbin/sshd ]; then
    run login_bench timeout 1800 "$py" bench/login_bench.py "${quick[@]}"
else
    echo "=== login_bench: skipped (no slurmctld/sshd: run scripts/setup.sh for the lab)"
fi
if "$py" -c 'import matplotlib' 2>/dev/null; then
    if [ -n "$suffix" ]; then
        # Plot the quick results into a scratch directory, not over the committed PNGs.
        tmp=$(mktemp -d)
        for f in tracer rpc_load scale; do
            [ -f "$results/$f$suffix.json" ] && cp "$results/$f$suffix.json" "$tmp/$f.json"
        done
        [ -f "$results/login-quick.json" ] && cp "$results/login-quick.json" "$tmp/login.json"
        run plot "$py" bench/plot.py --results "$tmp" --out "$results/img-quick"
        rm -rf "$tmp"
    else
        run plot "$py" bench/plot.py
    fi
else
    echo "=== plot: skipped (matplotlib missing: $py -m pip install matplotlib)"
fi
echo "=== done: $failed failed"
exit "$failed"
