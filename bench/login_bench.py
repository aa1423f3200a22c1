"""ssh login latency on the Slurm lab: no account hook vs Slurm's pam_slurm_adopt vs callerid.

    sudo .venv/bin/python3 bench/login_bench.py [--quick] [--n N] [--rounds R] [--json PATH]

Brings up the lab of docs/LAB.md itself (waiting for the lab lock, bounded) and tears it down at
the end. Measures, on node1 as the test user cidlab1, the wall time of `ssh node2 true` (from
starting ssh until it exits: TCP connect, key exchange, public key auth, the PAM account stack,
session, the command) N times per cell, for

  none      port-22 sshd with a PAM stack of pam_unix only (no account hook); the lab's callerid
            stack is put back afterwards (finally)
  psa       port-2222 sshd: pam_unix + Slurm's real pam_slurm_adopt
  callerid  port-22 sshd: pam_unix + pam_callerid.so (adopter/pam/)

in two situations: the user has ONE job on node2 (job A, on node1+node2: both hooks adopt without
an RPC), and SEVERAL (job A plus a newer job B on node2: callerid asks node1's tracer, pam_slurm_adopt
asks node1's slurmd with Slurm's caller-ID RPC). Every ssh is started from inside job A on node1
(`srun --jobid=A --overlap` runs a small driver there), so the right answer is always job A.

Cells are interleaved: R rounds, each running N/R logins of every configuration (order rotated), so
drift on a shared machine spreads over all of them. Each batch starts with one warm-up login
(discarded) and ends with one `cat /proc/self/cgroup` login that checks where the session landed;
every login is also checked in the logs (node2's adopter decision lines, pam_slurm_adopt's
"Process N adopted into job A" in syslog): a cell whose logins were not all adopted where expected
is flagged.

Also measured: the module's cost through build/callerid-pam-harness and its round trip to the daemon, the adopter
daemon's decision time (its log's latency_ms, its RPC histogram), and the pieces of a decision
(cgroupfs job listing, sock_diag dump) timed in node2's namespace.

Output: a table on stdout, JSON in bench/results/login.json (--quick: login-quick.json).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import statistics
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from bench.common import SyslogSince, read_from_offset  # noqa: E402
from tests.infra.slurmlab import LabBusy, SlurmLab, cgroups, lab_lock  # noqa: E402

VENV_PY = str(Path(sys.executable))
LOCK_WAIT = 900        # the lab is shared with other people's test runs: wait this long for it, at most
JOB_WAIT = 60
LOGIN_TIMEOUT = 60     # one ssh, bounded
USER = "cidlab1"

CONFIGS = {  # name: (label, ssh host alias in the user's ~/.ssh/config, port-22 PAM stack or None)
    "none": ("no account hook (:22, pam_unix only)", "node2", "none"),
    "psa": ("pam_slurm_adopt (:2222)", "node2-psa", None),
    "callerid": ("callerid (:22, pam_callerid.so)", "node2", "callerid"),
}

# Runs as cidlab1 inside job A on node1 (srun step): time `ssh HOST true` COUNT times after WARM
# discarded ones, then one login that prints the session's cgroups.
DRIVER = r"""
import json, subprocess, sys, threading, time
host, count, warm, limit = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), float(sys.argv[4])
argv = ["ssh", "-o", "ConnectTimeout=10", host]

def login(cmd, out):
    # wait() without a timeout blocks in waitpid (with a timeout, Popen polls with growing sleeps,
    # which would quantise the measurement); a timer bounds it instead.
    t = time.perf_counter()
    p = subprocess.Popen(argv + [cmd], stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.PIPE)
    killer = threading.Timer(limit, p.kill)
    killer.start()
    err = p.stderr.read()
    p.wait()
    dt = time.perf_counter() - t
    killer.cancel()
    return p.returncode, dt, err.decode(errors="replace")

times, fails = [], []
for i in range(warm + count):
    rc, dt, err = login("true", subprocess.DEVNULL)
    if rc != 0:
        fails.append(err[-300:])
    elif i >= warm:
        times.append(dt)
v = subprocess.run(argv + ["cat /proc/self/cgroup"], stdin=subprocess.DEVNULL, capture_output=True, timeout=limit)
print(json.dumps({"times": times, "fails": fails, "verify": v.stdout.decode(errors="replace"),
                  "verify_rc": v.returncode, "logins": warm + count + 1}))
"""

# Timed in node2's namespace by a root process: the pieces of an adopter decision.
PIECES = r"""
import json, sys, time
sys.path.insert(0, sys.argv[1])
from callerid.adopter import jobs
from callerid.linux import sockdiag
def t(fn, n=30):
    fn()
    xs = []
    for _ in range(n):
        s = time.perf_counter(); fn(); xs.append((time.perf_counter() - s) * 1000)
    xs.sort()
    return xs[len(xs) // 2]
print(json.dumps({"list_jobs_ms": t(lambda: jobs.list_jobs(sys.argv[2])),
                  "sockdiag_list_tcp_ms": t(lambda: sockdiag.list_tcp())}))
"""


# Timed in node2's namespace by a small root process: interleaved rounds, p50 and min per argv.
SPAWN_TIMER = r"""
import json, subprocess, sys, threading, time
variants, rounds, gap = json.loads(sys.argv[1]), int(sys.argv[2]), float(sys.argv[3])
env = {"PAM_USER": "cidlab1", "PAM_SERVICE": "bench", "PAM_TYPE": "account"}
xs = {k: [] for k in variants}
for r in range(rounds + 2):
    for k, argv in variants.items():
        time.sleep(gap)
        t = time.perf_counter()
        p = subprocess.Popen(argv, env=env, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                             stderr=subprocess.DEVNULL, cwd="/")
        killer = threading.Timer(30, p.kill)  # bound; wait() itself must block in waitpid, not poll
        killer.start()
        p.wait()
        dt = time.perf_counter() - t
        killer.cancel()
        if r >= 2:
            xs[k].append(dt * 1000)
print(json.dumps({k: {"p50_ms": sorted(v)[len(v) // 2], "min_ms": min(v)} for k, v in xs.items()}))
"""

# The kernel's part of an adoption: writing a pid into cgroup.procs of 3 v1 controllers (freezer, memory,
# cpuset: the job's extern dirs here), 200 ms apart like logins, in temporary cgroups made and removed here.
CGROUP_TIMER = r"""
import json, os, subprocess, time
p = subprocess.Popen(["sleep", "60"])
ctrls, dirs = ("freezer", "memory", "cpuset"), {}
try:
    for c in ctrls:
        base = "/sys/fs/cgroup/" + c
        d = "%s/callerid-login-bench-%d" % (base, os.getpid())
        os.mkdir(d)
        dirs[c] = d
        if c == "cpuset":
            for f in ("cpuset.cpus", "cpuset.mems"):
                with open(base + "/" + f) as src, open(d + "/" + f, "w") as dst:
                    dst.write(src.read())
    with open("/proc/%d/cgroup" % p.pid) as f:
        orig = {ln.split(":")[1]: ln.split(":", 2)[2].strip() for ln in f}
    first, rest = [], []
    for i in range(15):
        time.sleep(0.2)
        ts = []
        for c in ctrls:
            t = time.perf_counter()
            with open(dirs[c] + "/cgroup.procs", "w") as f:
                f.write(str(p.pid))
            ts.append((time.perf_counter() - t) * 1000)
        first.append(ts[0])
        rest.append(sum(ts[1:]))
        time.sleep(0.2)
        for c in ctrls:
            with open("/sys/fs/cgroup/%s%s/cgroup.procs" % (c, orig[c]), "w") as f:
                f.write(str(p.pid))
    print(json.dumps({"cgroup_first_write_ms": sorted(first)[7], "cgroup_next_two_writes_ms": sorted(rest)[7]}))
finally:
    p.kill()
    p.wait()
    for d in dirs.values():
        os.rmdir(d)
"""


def log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def pct(xs: list[float], q: float) -> float:
    """Percentile with linear interpolation between closest ranks (q in 0..100)."""
    s = sorted(xs)
    if not s:
        return float("nan")
    k = (len(s) - 1) * q / 100
    lo = int(k)
    hi = min(lo + 1, len(s) - 1)
    return s[lo] + (s[hi] - s[lo]) * (k - lo)


def machine() -> dict:
    def first(path, key):
        try:
            for line in Path(path).read_text().splitlines():
                if line.startswith(key):
                    return line.split(":", 1)[1].strip()
        except OSError:
            pass
        return "?"

    def cmd(argv):
        try:
            r = subprocess.run(argv, capture_output=True, text=True, timeout=10, check=False)
            return (r.stdout or r.stderr).strip().splitlines()[0]
        except (OSError, IndexError, subprocess.TimeoutExpired):
            return "?"
    return {
        "cpu": first("/proc/cpuinfo", "model name"), "cpus": os.cpu_count(),
        "memory": first("/proc/meminfo", "MemTotal"), "kernel": platform.release(),
        "debian": Path("/etc/debian_version").read_text().strip() if Path("/etc/debian_version").exists() else "?",
        "python": platform.python_version(), "openssh": cmd(["ssh", "-V"]),
        "slurm": "slurm " + cmd(["dpkg-query", "-W", "-f", "${Version}", "slurmd"]),
        "loadavg_start": Path("/proc/loadavg").read_text().split()[:3],
    }


class Bench:
    def __init__(self, lab: SlurmLab, n: int, rounds: int, configs: list[str]):
        self.lab = lab
        self.n, self.rounds, self.configs = n, rounds, configs
        self.u = lab.user(USER)
        self.pam = Path("/etc/pam.d") / lab.cidlab_service("node2")
        self.pam_callerid = self.pam.read_text()
        self.adopter_log = Path(next(r["log"] for r in lab.state["procs"] if r["name"] == "adopter-node2"))
        self.syslog = SyslogSince((lab.state.get("devlog") or {}).get("log"))   # pam_slurm_adopt's lines
        module = re.search(r"(\S*pam_callerid\.so)\b", self.pam_callerid)[1]
        conf = lab.root / "bench-pam.d"   # the module outside sshd: the harness calls pam_sm_acct_mgmt
        conf.mkdir(exist_ok=True)
        (conf / "callerid-bench").write_text("account required pam_permit.so\n")
        self.hook = [str(Path(module).parent / "callerid-pam-harness"), str(conf), "callerid-bench", USER, module]
        self.stacks = {
            "callerid": self.pam_callerid,
            "none": ("# login_bench.py: no account hook\nauth     required pam_unix.so\n"
                     "account  required pam_unix.so\nsession  required pam_unix.so\n"),
        }
        self.results: dict = {}
        self.loads: list = []  # [scenario, round, 1-min load average after it]: the machine is shared

    def set_stack(self, name: str | None) -> None:
        if name is not None:
            self.pam.write_text(self.stacks[name])

    def restore(self) -> None:
        if self.pam.exists():
            self.pam.write_text(self.pam_callerid)

    # ---- one batch of logins, run from inside job A on node1
    def batch(self, job_a: int, cfg: str, count: int) -> dict:
        _, host, stack = CONFIGS[cfg]
        self.set_stack(stack)
        a0 = self.adopter_log.stat().st_size
        s0 = self.syslog.mark()
        try:
            r = self.lab.run("node1", ["srun", f"--jobid={job_a}", "--overlap", "-N1", "-n1", "-w", "node1",
                                       "/usr/bin/python3", "-c", DRIVER, host, str(count), "1", str(LOGIN_TIMEOUT)],
                             user=self.u, timeout=30 + count * LOGIN_TIMEOUT)
        finally:
            if stack is not None:
                self.restore()
        try:
            out = json.loads(r.stdout.strip().splitlines()[-1])
        except (ValueError, IndexError) as exc:
            raise RuntimeError(f"driver for {cfg} failed ({r.returncode}): {r.stdout[-500:]} "
                               f"{r.stderr[-1500:]}") from exc
        time.sleep(0.05)  # let the daemons' log lines land
        decisions = [kv(ln) for ln in read_from_offset(self.adopter_log, a0).splitlines() if "decision=" in ln]
        psa_adopted = [ln for ln in self.syslog.since(s0).splitlines()
                       if "pam_slurm_adopt" in ln and f"adopted into job {job_a}" in ln]
        # Where the verifying session sat, per job hierarchy (callerid.slurm_cgroup parses it):
        # one (job, step) if it sat in one place in all of them, else what each said.
        steps = set(cgroups.job_steps(out["verify"], self.lab.host.version).values())
        where = steps.pop() if len(steps) == 1 else sorted(map(str, steps))
        out.update(decisions=decisions, psa_adopted=len(psa_adopted), session=where)
        return out

    def scenario(self, name: str, job_a: int, n_jobs: int) -> None:
        per = [self.n // self.rounds + (1 if i < self.n % self.rounds else 0) for i in range(self.rounds)]
        cells = {c: {"times": [], "fails": [], "logins": 0, "checked": [], "decisions": [], "psa_adopted": 0}
                 for c in self.configs}
        want = (job_a, "extern")
        for rnd, count in enumerate(per):
            order = self.configs[rnd % len(self.configs):] + self.configs[:rnd % len(self.configs)]
            for cfg in order:
                b = self.batch(job_a, cfg, count)
                c = cells[cfg]
                c["times"] += b["times"]
                c["fails"] += b["fails"]
                c["logins"] += b["logins"] - len(b["fails"])
                c["checked"].append(b["session"])
                c["decisions"] += b["decisions"]
                c["psa_adopted"] += b["psa_adopted"]
            load = Path("/proc/loadavg").read_text().split()[0]
            self.loads.append([name, rnd + 1, float(load)])
            log(f"  {name}: round {rnd + 1}/{self.rounds} done ({count} logins per configuration, load {load})")
        for cfg, c in cells.items():
            ms = [x * 1000 for x in c["times"]]
            adopts = [d for d in c["decisions"] if d.get("decision") == "adopt" and d.get("job") == str(job_a)]
            if cfg == "psa":
                adopted_ok = c["psa_adopted"] == c["logins"] and all(f == want for f in c["checked"])
                adopted = f"{c['psa_adopted']}/{c['logins']} job A"
            elif cfg == "none":
                adopted_ok = not c["decisions"] and all(f is None for f in c["checked"])
                adopted = f"0/{c['logins']} (none expected)" if adopted_ok else f"{len(c['decisions'])} decisions"
            else:
                adopted_ok = len(adopts) == c["logins"] and all(f == want for f in c["checked"])
                reasons = sorted({d.get("reason", "?") for d in adopts})
                adopted = f"{len(adopts)}/{c['logins']} job A ({','.join(reasons)})"
            lat = [float(d["latency_ms"]) for d in c["decisions"] if "latency_ms" in d]
            self.results.setdefault(name, {})[cfg] = {
                "label": CONFIGS[cfg][0], "jobs_on_node2": n_jobs, "n": len(ms),
                "samples_ms": [round(x, 3) for x in ms],
                "p50_ms": pct(ms, 50), "p99_ms": pct(ms, 99), "mean_ms": statistics.fmean(ms) if ms else None,
                "min_ms": min(ms, default=None), "max_ms": max(ms, default=None),
                "failed_logins": c["fails"][:5], "n_failed": len(c["fails"]),
                "adopted": adopted, "adopted_as_expected": adopted_ok, "session_cgroups_checked": c["checked"],
                "daemon_decision_p50_ms": pct(lat, 50) if lat else None,
                "daemon_decision_p99_ms": pct(lat, 99) if lat else None,
                "daemon_reasons": sorted({d.get("reason", "?") for d in c["decisions"]}),
            }

    # ---- where callerid's time goes
    def components(self) -> dict:
        lab = self.lab
        # The hook started on its own against a socket that does not exist: it fails fast
        # (action_generic_failure=ignore) after its imports, so this is interpreter + imports + exit.
        nosock = "socket=/nonexistent/adopter.sock"
        sock = lab.adopter_socket("node2")
        variants = {
            "/bin/true (fork+exec baseline)": ["/bin/true"],
            "pam_callerid.so (harness), no daemon socket": [*self.hook, nosock],
            # Against node2's real adopter: not a child of sshd, so the daemon refuses it as bad_peer after
            # reading the request and checking the peer: the round trip without the decision itself.
            "pam_callerid.so (harness) asking node2's adopter (bad_peer)": [*self.hook, f"socket={sock}"],
        }
        start = {}
        # back to back (warm caches), then a few spaced 250 ms apart like the logins (colder: the
        # cost a login actually sees)
        spaced = ["/bin/true (fork+exec baseline)", "pam_callerid.so (harness) asking node2's adopter (bad_peer)"]
        for gap, names, rounds in ((0.0, list(variants), 40), (0.25, spaced, 25)):
            sel = {(k if not gap else f"{k}, 250 ms apart"): variants[k] for k in names}
            r = lab.run("node2", ["/usr/bin/python3", "-I", "-S", "-c", SPAWN_TIMER, json.dumps(sel), str(rounds),
                                  str(gap)], timeout=300, uts=False)
            try:
                start.update(json.loads(r.stdout.strip().splitlines()[-1]))
            except (ValueError, IndexError):
                start[f"error (gap {gap})"] = (r.stderr or r.stdout)[-500:]
        p = lab.run("node2", [VENV_PY, "-c", PIECES, str(REPO), "node2"], timeout=60, uts=False)
        try:
            pieces = json.loads(p.stdout.strip().splitlines()[-1])
        except (ValueError, IndexError):
            pieces = {"error": (p.stderr or p.stdout)[-500:]}
        r = subprocess.run(["/usr/bin/python3", "-I", "-S", "-c", CGROUP_TIMER], capture_output=True, text=True,
                           timeout=60, check=False)
        try:
            pieces.update(json.loads(r.stdout.strip().splitlines()[-1]))
        except (ValueError, IndexError):
            pieces["cgroup_error"] = (r.stderr or r.stdout)[-500:]
        return {"process_start": start, "daemon_pieces": pieces, "metrics": self.lab_metrics()}

    def lab_metrics(self) -> dict:
        from prometheus_client.parser import text_string_to_metric_families
        out = {}
        for key, url in (("adopter_node2", self.lab.node("node2").adopter_metrics),
                         ("tracer_node1", self.lab.node("node1").tracer_metrics)):
            code = ("import sys,urllib.request;"
                    f"sys.stdout.write(urllib.request.urlopen({url!r},timeout=5).read().decode())")
            r = self.lab.run("node1", [VENV_PY, "-c", code], timeout=20)
            vals = {}
            for fam in text_string_to_metric_families(r.stdout if r.returncode == 0 else ""):
                for s in fam.samples:
                    if s.name.endswith(("_count", "_sum")) and "duration" in s.name:
                        vals[s.name] = s.value
            out[key] = vals
        for key, base in (("adopter_node2", "callerid_adopter_rpc_duration_seconds"),
                          ("adopter_node2", "callerid_adopter_decision_duration_seconds"),
                          ("tracer_node1", "callerid_rpc_request_duration_seconds")):
            c, s = out[key].get(f"{base}_count", 0), out[key].get(f"{base}_sum", 0)
            out[key][f"{base}_mean_ms"] = s / c * 1000 if c else None
        return out


def kv(line: str) -> dict:
    return dict(m.groups() for m in re.finditer(r"(\w+)=(\S+)", line))


def fmt(x, nd=1) -> str:
    return "-" if x is None else f"{x:.{nd}f}"


def ratio(c: dict, ref: dict | None, key: str) -> str:
    return f"{c[key] / ref[key]:.2f}" if ref and ref.get(key) and c.get(key) else "-"


def report(res: dict, comp: dict, mach: dict, args) -> str:
    lines = [(f"ssh login latency: `ssh node2 true` from inside job A on node1, as {USER}; "
              f"{args.n} logins per cell in {args.rounds} interleaved rounds"),
             (f"machine: {mach['cpu']}, {mach['cpus']} CPUs, {mach['memory']}, kernel {mach['kernel']}, Debian "
              f"{mach['debian']}, {mach['openssh']}, {mach['slurm']}; load {' '.join(mach['loadavg_start'])} at "
              f"start, {' '.join(mach.get('loadavg_end', []))} at end"), ""]
    hdr = ["jobs on node2", "configuration", "p50 ms", "p99 ms", "p50/psa", "p99/psa", "p50/none", "p99/none",
           "daemon p50", "adopted"]
    rows = [hdr]
    for scen, cells in res.items():
        psa, none = cells.get("psa"), cells.get("none")
        for c in cells.values():
            rows.append([scen, c["label"], fmt(c["p50_ms"]), fmt(c["p99_ms"]), ratio(c, psa, "p50_ms"),
                         ratio(c, psa, "p99_ms"), ratio(c, none, "p50_ms"), ratio(c, none, "p99_ms"),
                         fmt(c["daemon_decision_p50_ms"]) + (" ms" if c["daemon_decision_p50_ms"] else ""),
                         c["adopted"] + ("" if c["adopted_as_expected"] else "  <-- NOT AS EXPECTED")])
    width = [max(len(r[i]) for r in rows) for i in range(len(hdr))]
    for r in rows:
        lines.append("  ".join(x.ljust(width[i]) if i < 2 else x.rjust(width[i]) if i < 9 else x
                               for i, x in enumerate(r)).rstrip())
    lines += ["", "where callerid's time goes:",
              "  process start, run alone in node2's namespace (p50, interleaved):"]
    for k, v in comp["process_start"].items():
        if isinstance(v, dict):
            lines.append(f"    {k:66} {v['p50_ms']:6.1f} ms")
    dp = comp["daemon_pieces"]
    lines.append("  adopter daemon pieces: " + ", ".join(f"{k} {v:.2f} ms" for k, v in dp.items()
                                                         if isinstance(v, float)))
    m = comp["metrics"]
    lines.append("  metrics: adopter decision mean "
                 f"{fmt(m['adopter_node2'].get('callerid_adopter_decision_duration_seconds_mean_ms'), 2)} ms, "
                 f"adopter RPC mean {fmt(m['adopter_node2'].get('callerid_adopter_rpc_duration_seconds_mean_ms'), 2)} "
                 f"ms, tracer RPC handling mean "
                 f"{fmt(m['tracer_node1'].get('callerid_rpc_request_duration_seconds_mean_ms'), 2)} ms")
    return "\n".join(lines)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--quick", action="store_true", help="15 logins per cell, 3 rounds")
    p.add_argument("--n", type=int, help="logins per cell (default 50, --quick 15)")
    p.add_argument("--rounds", type=int, help="interleaved rounds (default 5, --quick 3)")
    p.add_argument("--json", help="output file (default bench/results/login.json, --quick login-quick.json)")
    args = p.parse_args(argv)
    args.n = max(1, min(args.n or (15 if args.quick else 50), 1000))
    args.rounds = max(1, min(args.rounds or (3 if args.quick else 5), args.n))
    out = Path(args.json or REPO / "bench" / "results" / ("login-quick.json" if args.quick else "login.json"))
    if os.geteuid() != 0:
        log("login_bench: run as root (sudo .venv/bin/python3 bench/login_bench.py)")
        return 2
    configs = ["none", "psa", "callerid"]
    mach = machine()
    t0 = time.monotonic()
    log(f"waiting for the lab lock (up to {LOCK_WAIT}s: other test runs may be using the lab)")
    try:
        lock = lab_lock(timeout=LOCK_WAIT)
    except LabBusy as exc:
        log(f"login_bench: {exc}")
        return 1
    lab = SlurmLab(nodes=2, probe="tracepoint", log=log)
    bench = None
    try:
        try:
            lab.up(timeout=120)
        except LabBusy as exc:
            log(f"login_bench: {exc}")
            return 1
        bench = Bench(lab, args.n, args.rounds, configs)
        u = bench.u
        job_a = lab.sbatch("node1", u, "#!/bin/bash\nsleep 3600\n",
                           ["-J", "bench-A", "-N2", "-w", "node1,node2", "--mem=100", "-t", "60", "-o", "/dev/null"])
        lab.wait_job_running(job_a, timeout=JOB_WAIT)
        log(f"job A {job_a} on node1+node2; scenario 1: {USER} has ONE job on node2")
        bench.scenario("1 job", job_a, 1)
        job_b = lab.sbatch("node1", u, "#!/bin/bash\nsleep 3600\n",
                           ["-J", "bench-B", "-w", "node2", "--mem=100", "-t", "60", "-o", "/dev/null"])
        lab.wait_job_running(job_b, timeout=JOB_WAIT)
        log(f"job B {job_b} on node2; scenario 2: {USER} has TWO jobs on node2, logins come from job A")
        bench.scenario("2 jobs", job_a, 2)
        comp = bench.components()
        mach["loadavg_end"] = Path("/proc/loadavg").read_text().split()[:3]
        text = report(bench.results, comp, mach, args)
        print(text, flush=True)
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps({
            "benchmark": "ssh login latency (login_bench.py)", "time": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
            "machine": mach, "n_per_cell": args.n, "rounds": args.rounds, "jobs": {"A": job_a, "B": job_b},
            "method": "wall time of `ssh node2 true` (node2-psa for pam_slurm_adopt) run by a driver in job A's "
                      "srun step on node1; one warm-up login per batch discarded",
            "results": bench.results, "components": comp, "load_per_round": bench.loads, "report": text,
            "duration_s": round(time.monotonic() - t0, 1)}, indent=1))
        log(f"wrote {out} ({time.monotonic() - t0:.0f} s)")
        ok = all(c["adopted_as_expected"] and not c["n_failed"] for s in bench.results.values() for c in s.values())
        return 0 if ok else 1
    finally:
        if bench is not None:
            bench.restore()
        lab.down()
        lock.close()


if __name__ == "__main__":
    sys.exit(main())
