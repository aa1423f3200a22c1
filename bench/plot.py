#!/usr/bin/env python3
"""PNG plots from bench/results/*.json into docs/img/ (bench-only dependency: matplotlib).

    .venv/bin/pip install matplotlib     # once
    .venv/bin/python3 bench/plot.py [--results bench/results] [--out docs/img]

  lookup-vs-processes.png  tracer.json: p50 (line) and p99 (dotted, same colour) of one
                           lookup vs node processes, log-log, one line per method
  rpc-vs-clients.png       rpc_load.json: good-client p50/p99 and throughput vs
                           concurrent clients (tracer.json's 1/16-client run as well)
  login-latency.png        login.json: ssh login p50 bars with p99 whiskers per configuration
  scale-capacity.png       scale.json: share of held connections still in a 4096-entry map,
                           by age decile
A missing results file skips its plot (with a message); nothing else is read or written.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent

METHODS = [("map_raw", "map lookup, raw (ConnMap.lookup)"),
           ("resolver", "Resolver.lookup (map + /proc check + job)"),
           ("rpc", "RPC end-to-end with MUNGE (p50)"),
           ("slurm_scan", "Slurm /proc scan (slurm_lookup)"),
           ("ss", "ss -tnp"),
           ("psutil", "psutil.net_connections")]


def _load(path: Path):
    if not path.exists():
        print(f"plot: {path} missing, skipping its plot", file=sys.stderr)
        return None
    return json.loads(path.read_text())


def plot_lookup(r: dict, out: Path, plt) -> Path:
    fig, ax = plt.subplots(figsize=(8.5, 5.5), dpi=110)
    lk = r["lookup"]
    ns = sorted(lk, key=int)
    for key, label in METHODS:
        xs, p50, p99 = [], [], []
        for n in ns:
            m = lk[n]["methods"].get(key)
            if not m:
                continue
            xs.append(lk[n]["node"]["processes"])
            p50.append(m["p50_ns"] / 1e3)
            p99.append(m["p99_ns"] / 1e3)
        if not xs:
            continue
        line, = ax.plot(xs, p50, marker="o", label=label)
        ax.plot(xs, p99, linestyle=":", color=line.get_color(), alpha=0.7)
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel("processes on the node (N helper processes + the rest)")
    ax.set_ylabel("latency of one lookup, µs (solid p50, dotted p99)")
    ax.set_title(f"Who owns this connection? Lookup latency vs node size\n"
                 f"tracer_bench {r['mode']} run {r['date']}, {r['machine']['cpu']} "
                 f"{r['machine']['cores']} cores (shared)")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=8, loc="upper left")
    fig.tight_layout()
    p = out / "lookup-vs-processes.png"
    fig.savefig(p)
    plt.close(fig)
    return p


def plot_rpc(rl: dict | None, tr: dict | None, out: Path, plt) -> Path | None:
    if rl is None and tr is None:
        return None
    fig, (ax, ax2) = plt.subplots(1, 2, figsize=(11, 4.8), dpi=110)
    if rl:
        for cfg in rl["configs"]:
            cells = sorted((c for c in cfg["cells"] if c["abuse"] and not c.get("rate_per_client")),
                           key=lambda c: c["clients"])
            x = [c["clients"] for c in cells]
            line, = ax.plot(x, [c["p50_ns"] / 1e6 for c in cells], marker="o",
                            label=f"p50, max_clients={cfg['max_clients']}, with abuse, back to back")
            ax.plot(x, [c["p99_ns"] / 1e6 for c in cells], marker="s", linestyle=":", color=line.get_color(),
                    label=f"p99, max_clients={cfg['max_clients']}, with abuse, back to back")
            ax2.plot(x, [c["req_per_s"] for c in cells], marker="o",
                     label=f"max_clients={cfg['max_clients']}, with abuse")
            for c in (c for c in cfg["cells"] if c.get("rate_per_client")):
                # paced cells: a slight x offset per rate so the markers do not overlap
                xp = c["clients"] * (1.06 if c["rate_per_client"] > 10 else 0.94)
                ax.plot([xp, xp], [c["p50_ns"] / 1e6, c["p99_ns"] / 1e6], color=line.get_color(), marker="*",
                        linewidth=0.8, label=f"p50..p99, max_clients={cfg['max_clients']}, "
                                             f"paced {c['rate_per_client']:g}/s per client")
    if tr and "throughput" in tr:
        t = sorted(tr["throughput"].values(), key=lambda c: c["clients"])
        x = [c["clients"] for c in t]
        run = f"tracer_bench {tr['date'][11:]} (no abuse)"
        ax.plot(x, [c["p50_ns"] / 1e6 for c in t], marker="^", color="grey", label=f"p50, {run}")
        ax.plot(x, [c["p99_ns"] / 1e6 for c in t], marker="v", color="grey", linestyle=":", label=f"p99, {run}")
        ax2.plot(x, [c["req_per_s"] for c in t], marker="^", color="grey", label=run)
    ax.axhline(1.0, color="red", linewidth=0.8, linestyle="--", label="target: p99 < 1 ms (16 clients)")
    for a in (ax, ax2):
        a.set_xscale("log", base=2)
        a.set_xticks([1, 4, 16, 64, 256])
        a.set_xticklabels(["1", "4", "16", "64", "256"])
        a.set_xlabel("concurrent well-behaved clients")
        a.grid(True, which="both", alpha=0.3)
    ax.set_yscale("log")
    ax.set_ylabel("RPC latency, ms (ask(), new TCP conn + MUNGE each)")
    ax2.set_ylabel("answered requests / s")
    ax2.set_ylim(bottom=0)
    ax.legend(fontsize=7)
    ax2.legend(fontsize=7)
    when = rl["date"] if rl else tr["date"]
    fig.suptitle(f"callerid RPC latency and throughput vs concurrent clients (loopback, 2 shared cores, {when})",
                 fontsize=10)
    fig.tight_layout()
    p = out / "rpc-vs-clients.png"
    fig.savefig(p)
    plt.close(fig)
    return p


def plot_login(lg: dict, out: Path, plt) -> Path:
    fig, ax = plt.subplots(figsize=(9, 4.8), dpi=110)
    order = ["none", "psa", "callerid", "callerid_S"]
    names = {"none": "no hook", "psa": "pam_slurm_adopt", "callerid": "callerid",
             "callerid_S": "callerid -S (proposed)"}
    groups = list(lg["results"])
    width = 0.8 / len(order)
    for i, k in enumerate(order):
        xs, p50, err = [], [], []
        for g, grp in enumerate(groups):
            c = lg["results"][grp].get(k)
            if not c:
                continue
            xs.append(g + (i - (len(order) - 1) / 2) * width)
            p50.append(c["p50_ms"])
            err.append(c["p99_ms"] - c["p50_ms"])
        bars = ax.bar(xs, p50, width, yerr=[[0] * len(err), err], capsize=3, label=names[k])
        for b, v in zip(bars, p50, strict=True):
            ax.text(b.get_x() + b.get_width() / 2, v / 2, f"{v:.0f}", ha="center", va="center", fontsize=8,
                    color="white")
    ax.set_xticks(range(len(groups)))
    ax.set_xticklabels([f"{g} on node2" for g in groups])
    ax.set_ylabel("`ssh node2 true` wall time, ms (bar p50, whisker p99)")
    ax.set_title(f"ssh login latency by PAM account hook ({lg['n_per_cell']} logins per cell, {lg['time'][:16]})",
                 fontsize=10)
    ax.legend(fontsize=8, loc="upper center", ncol=4)
    ax.set_ylim(0, max(c["p99_ms"] for g in lg["results"].values() for c in g.values()) * 1.2)
    ax.grid(True, axis="y", alpha=0.3)
    fig.tight_layout()
    p = out / "login-latency.png"
    fig.savefig(p)
    plt.close(fig)
    return p


def plot_scale(sc: dict, out: Path, plt) -> Path | None:
    c = sc.get("capacity")
    if not c:
        return None
    dec = c["beyond"]["in_map_by_decile"]
    per = c["beyond"]["held"] / 10
    fig, ax = plt.subplots(figsize=(8, 4.2), dpi=110)
    ax.bar([f"{i + 1}" for i in range(10)], [d / per * 100 for d in dec], color="tab:blue")
    ax.set_xlabel(f"age decile of the {c['beyond']['held']} held connections (1 = oldest, 10 = newest)")
    ax.set_ylabel("% still attributable from the map")
    ax.set_ylim(0, 105)
    ax.set_title(f"{c['beyond']['held']} open connections vs a map of {c['capacity']} entries (LRU); "
                 f"evicted ones: fallback found {c['fallback_on_evicted']['right_pid']}/"
                 f"{c['fallback_on_evicted']['asked']} sampled",
                 fontsize=9)
    ax.grid(True, axis="y", alpha=0.3)
    fig.tight_layout()
    p = out / "scale-capacity.png"
    fig.savefig(p)
    plt.close(fig)
    return p


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--results", default=str(REPO / "bench" / "results"))
    ap.add_argument("--out", default=str(REPO / "docs" / "img"))
    a = ap.parse_args()
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("plot: matplotlib missing: .venv/bin/pip install matplotlib", file=sys.stderr)
        return 2
    res, out = Path(a.results), Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    tr, rl = _load(res / "tracer.json"), _load(res / "rpc_load.json")
    lg, sc = _load(res / "login.json"), _load(res / "scale.json")
    made = []
    if tr:
        made.append(plot_lookup(tr, out, plt))
    made.append(plot_rpc(rl, tr, out, plt))
    if lg:
        made.append(plot_login(lg, out, plt))
    if sc:
        made.append(plot_scale(sc, out, plt))
    for p in made:
        if p:
            print(p)
    return 0


if __name__ == "__main__":
    sys.exit(main())
