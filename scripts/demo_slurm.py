"""The callerid demo on a real Slurm cluster: `bash scripts/demo.sh` (as root).

Brings up the Slurm lab of docs/LAB.md (two nodes in network namespaces, Slurm 22.05, MUNGE,
callerid's tracer and adopter, sshd with the callerid PAM hook on port 22) and LEAVES IT RUNNING,
as `scripts/lab.sh up` does. As the test user cidlab1 it submits

    job A  2 nodes (node1,node2), batch script on node1
    job B  node2 only, submitted after A (the user's newest job on node2)

then, from inside job A on node1, runs `ssh node2 ...` (a session that prints its cgroups and stays
5 minutes) and an srun-launched `ssh node2 ...`. It shows what each side saw: node2's adopter
decisions, `scontrol listpids`, the session's cgroups (job A's step_extern, not job B's), node1's
`callerid conns`, Slurm's own `scontrol callerid` agreeing, and a few metrics. Then it prints how to
look around in the running lab and how to tear it down (`bash scripts/lab.sh down`).

If a lab is already up (a previous demo or `scripts/lab.sh up`), the demo reuses it: it cancels the
jobs of a previous demo and submits new ones. A lab that belongs to a running test is never
touched: the demo waits (bounded) for the lab lock and then says what to do.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

repo = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(repo))

from tests.infra.slurmlab import (  # noqa: E402 - tests/ is not installed: the checkout goes on sys.path first
    SSH_PORT,
    STATE_FILE,
    LabBusy,
    LabError,
    SlurmLab,
    cgroups,
    lab_lock,
    same_proc,
)

PY = str(repo / ".venv" / "bin" / "python3")
CALLERID = str(repo / ".venv" / "bin" / "callerid")
USER = "cidlab1"
LOCK_WAIT = 60        # seconds to wait for the lab lock (a test run may hold it)
JOB_WAIT = 30         # a job starts in about a second here
SSH_WAIT = 30         # the ssh from job A reports in about a second
SESSION_SECONDS = 300  # how long the ssh session from job A stays, so people can look at it

TTY = sys.stdout.isatty()
BOLD, DIM, GREEN, RED, OFF = (("\033[1m", "\033[2m", "\033[32m", "\033[31m", "\033[0m") if TTY
                              else ("", "", "", "", ""))
OK, BAD = f"{GREEN}ok{OFF}", f"{RED}MISMATCH{OFF}"
T0 = time.monotonic()


def head(text: str) -> None:
    print(f"\n{BOLD}== {text}{OFF}", flush=True)


def say(text: str = "") -> None:
    print(f"  {text}" if text else "", flush=True)


def table(rows: list[list[str]], indent: str = "  ") -> None:
    """Aligned columns; the first row is the header."""
    if not rows:
        return
    width = [max(len(str(r[i])) for r in rows if i < len(r)) for i in range(max(len(r) for r in rows))]
    for n, r in enumerate(rows):
        cells = [str(c).ljust(width[i]) for i, c in enumerate(r)]
        line = indent + "  ".join(cells).rstrip()
        print(f"{DIM}{line}{OFF}" if n == 0 and TTY else line, flush=True)


def fail(msg: str) -> int:
    print(f"\n{RED}demo: {msg}{OFF}", file=sys.stderr, flush=True)
    return 1


def kv(line: str) -> dict:
    return dict(m.groups() for m in re.finditer(r"(\w+)=(\S+)", line))


# ---------------------------------------------------------------- the lab

def get_lab() -> tuple[SlurmLab, bool]:
    """The running persistent lab, or a new persistent one. Returns (lab, reused). Hold the lab lock."""
    if STATE_FILE.exists():
        try:
            old = SlurmLab.load()
        except (OSError, ValueError):
            old = None
        if old is not None and old.live_procs():
            owner = old.state.get("owner") or {}
            procs = old.state.get("procs", [])
            dead = [r["name"] for r in procs if not same_proc(r)]
            if not owner.get("persistent", True) and same_proc(owner):
                raise LabBusy(f"the lab that is up belongs to a test run (pid {owner.get('pid')}); "
                              "run the demo again when it is done")
            if dead:
                raise LabBusy(f"a lab is up but some of its daemons are gone ({', '.join(dead)}): "
                              "run `bash scripts/lab.sh down`, then the demo again")
            if owner.get("persistent", True):
                age = time.time() - old.state.get("created", time.time())
                say(f"A lab is already up (made {age / 60:.0f} min ago by `scripts/lab.sh up` or an earlier demo): "
                    "reusing it.")
                say("For a fresh one: bash scripts/lab.sh down, then this demo again.")
                return old, True
    lab = SlurmLab(nodes=2)
    say("Building it: namespaces node1/node2 (198.18.40.1-2), munged, users cidlab1/cidlab2, slurmctld,")
    say("2 slurmd, per node the callerid tracer (BPF) + adopter, sshd :22 (callerid) and :2222 (pam_slurm_adopt).")
    lab.up(timeout=90, persistent=True)
    t = lab.timings
    say(f"lab up in {t['up']:.1f} s (daemons ready {t.get('ready', 0):.1f} s: the tracers' BPF compile dominates)")
    return lab, False


def cancel_previous_demo(lab: SlurmLab) -> None:
    r = lab.run("node1", ["squeue", "-h", "-u", USER, "-n", "demo-A,demo-B", "-o", "%i"], timeout=15)
    old = [int(x) for x in r.stdout.split() if x.isdigit()]
    if not old:
        return
    say(f"cancelling the previous demo's jobs {', '.join(map(str, old))}")
    for j in old:
        lab.scancel(j)
    for j in old:
        lab.wait_job_done(j, timeout=JOB_WAIT)
    deadline = time.monotonic() + JOB_WAIT  # their CPUs must be free for the new jobs
    while time.monotonic() < deadline and set(lab.jobs()) & set(old):
        time.sleep(0.2)


# ---------------------------------------------------------------- helpers that read the lab

def adopter_log(lab: SlurmLab, node: str) -> Path:
    return Path(next(r["log"] for r in lab.state["procs"] if r["name"] == f"adopter-{node}"))


def cmdline(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace").strip()
    except OSError:
        return "(gone)"


def scrape(lab: SlurmLab, url: str) -> dict:
    """{(name, labels-tuple): value} of a metrics endpoint (scraped from inside node1's namespace)."""
    from prometheus_client.parser import text_string_to_metric_families
    code = ("import sys,urllib.request;"
            f"sys.stdout.write(urllib.request.urlopen({url!r},timeout=5).read().decode())")
    r = lab.run("node1", [PY, "-c", code], timeout=20)
    out = {}
    if r.returncode != 0:
        return out
    for fam in text_string_to_metric_families(r.stdout):
        for s in fam.samples:
            out[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return out


def series(m: dict, name: str) -> list[tuple[dict, float]]:
    return [(dict(k[1]), v) for k, v in m.items() if k[0] == name]


def one(m: dict, name: str) -> float:
    return sum(v for _, v in series(m, name))


def histogram_row(m: dict, prefix: str, name: str) -> list[str]:
    """A table row for histogram prefix+name: count / sum and the mean."""
    cnt, tot = one(m, f"{prefix}{name}_count"), one(m, f"{prefix}{name}_sum")
    return [f"  {name} count / sum", f"{cnt:g} / {tot:.4f}  (mean {tot / cnt * 1000:.1f} ms)" if cnt else f"{cnt:g}"]


def wait_file(path: Path, mark: str, timeout: float) -> str:
    deadline = time.monotonic() + timeout
    text = ""
    while time.monotonic() < deadline:
        text = path.read_text(errors="replace") if path.exists() else ""
        if mark in text:
            break
        time.sleep(0.1)
    return text


# ---------------------------------------------------------------- the demo

REMOTE = ('echo TUPLE $SSH_CONNECTION; echo PRIV $(cut -d" " -f4 /proc/$PPID/stat); '
          f'cat /proc/self/cgroup; echo END; sleep {SESSION_SECONDS}')


def job_a_script(go: str, out: str) -> str:
    return f"""#!/bin/bash
# callerid demo, job A: waits until job B runs too, then leaves node1 (its batch host) for node2.
for i in $(seq 300); do [ -e "{go}" ] && break; sleep 0.1; done
ssh node2 '{REMOTE}' > "{out}" 2>&1
"""


def run_demo(lab: SlurmLab, reused: bool) -> int:
    u = lab.user(USER)
    n1, n2 = lab.node("node1"), lab.node("node2")
    if reused:
        cancel_previous_demo(lab)
    alog = adopter_log(lab, "node2")
    log_start = alog.stat().st_size if alog.exists() else 0

    head(f"Jobs of {USER}: A spans node1+node2, B (newer) runs on node2 only")
    stamp = time.strftime("%H%M%S")
    go, out = Path(u.home, f".demo-go.{stamp}"), Path(u.home, f"demo-A.{stamp}.ssh.out")
    a = lab.sbatch("node1", u, job_a_script(str(go), str(out)),
                   ["-J", "demo-A", "-N2", "-w", "node1,node2", "--mem=100", "-t", "10", "-o", "demo-A.%j.out"])
    lab.wait_job_running(a, timeout=JOB_WAIT)
    b = lab.sbatch("node1", u, f"#!/bin/bash\nsleep {SESSION_SECONDS + 60}\n",
                   ["-J", "demo-B", "-w", "node2", "--mem=100", "-t", "10", "-o", "/dev/null"])
    lab.wait_job_running(b, timeout=JOB_WAIT)
    r = lab.run("node1", ["squeue", "-u", USER, "-o", "%i %j %u %T %N %B"], timeout=15)
    table([line.split() for line in r.stdout.splitlines()])
    batch_host = lab.job_info(a).get("BatchHost")

    head(f"From inside job A on {batch_host}: ssh node2 (session stays {SESSION_SECONDS // 60} min) "
         "and srun ... ssh node2")
    fd = os.open(go, os.O_CREAT | os.O_WRONLY, 0o644)
    os.close(fd)
    os.chown(go, u.uid, u.gid)
    text = wait_file(out, "END", SSH_WAIT)
    if "END" not in text:
        return fail(f"the ssh from job {a} did not report in {SSH_WAIT}s:\n{text}\n{lab.logs_tail(10)}")
    m = re.search(r"^TUPLE (\S+) (\d+) (\S+) (\d+)$", text, re.MULTILINE)
    src, sport, dst, dport = m[1], int(m[2]), m[3], int(m[4])
    priv = int(re.search(r"^PRIV (\d+)$", text, re.MULTILINE)[1])
    version = lab.host.version
    cg = cgroups.job_steps(text, version)
    srun = lab.run("node1", ["srun", f"--jobid={a}", "--overlap", "-N1", "-n1", "-w", "node1", "ssh", "node2",
                             "echo TUPLE $SSH_CONNECTION; cat /proc/self/cgroup"], user=u, timeout=60)
    sm = re.search(r"^TUPLE (\S+) (\d+) ", srun.stdout, re.MULTILINE)
    scg = cgroups.job_steps(srun.stdout, version)
    table([["launched by", "connection (node1 -> node2:22)", "pid of sshd [priv] on node2"],
           [f"job {a} batch script", f"{src}:{sport} -> {dst}:{dport}", str(priv)],
           [f"srun --jobid={a} --overlap", f"{sm[1]}:{sm[2]} -> {dst}:{dport}" if sm else "(no output)", "(exited)"]])
    if srun.returncode != 0:
        say(f"srun ssh exited {srun.returncode}: {srun.stderr.strip()[-300:]}")

    head("node2's adopter decided (log: one line per login)")
    lines = [ln for ln in alog.read_text(errors="replace")[log_start:].splitlines() if "decision=" in ln]
    rows = [["time", "user", "from", "job", "decision", "reason", "latency"]]
    for ln in lines:
        d = kv(ln)
        t = re.search(r"\d\d:\d\d:\d\d", ln)
        rows.append([t[0] if t else "?", d.get("user", "?"), d.get("from", "?"), d.get("job", "?"),
                     d.get("decision", "?"), d.get("reason", "?"), f"{d.get('latency_ms', '?')} ms"])
    table(rows)
    says = [ln.split(": ", 1)[-1].split(" ", 1)[-1] for ln in alog.read_text(errors="replace")[log_start:].splitlines()
            if "source node1 says" in ln]
    if says:
        say(f"{DIM}(the RPC answer: {says[0]}){OFF}")
    say(f"user {USER} has 2 jobs on node2: {a} (A) and {b} (B, newer). action_unknown=newest would have "
        f"picked {b}; the caller ID says {a}.")

    head("The session's cgroups on node2 (cat /proc/self/cgroup in the ssh session)")
    want = (a, "extern")
    rows = [["hierarchy", "job, step", ""]]
    good = True
    for h, where in cg.items():
        ok = where == want
        good &= ok
        place = f"job {where[0]} step_{where[1]}" if where else "(no job)"
        rows.append([h or "unified", place, f"job A step_extern {OK}" if ok else BAD])
    srun_ok = set(scg.values()) == {want}
    rows.append(["all", ", ".join(sorted({str(w) for w in scg.values()})),
                 "(srun-launched ssh) " + (f"job A step_extern {OK}" if srun_ok else BAD)])
    table(rows)
    b_pids = sorted(cgroups.job_pids(lab.job_cgroups("node2", b)))
    in_b = priv in b_pids
    say(f"job B ({b}) step_extern holds {len(b_pids)} process(es) ({', '.join(cmdline(p)[:20] for p in b_pids)}): "
        + (f"the session is NOT in job B {OK}" if not in_b else f"the session is in job B {BAD}"))

    head(f"scontrol listpids {a} node2 (Slurm's view: the sshd is in job A's extern step)")
    r = lab.run("node2", ["scontrol", "listpids", str(a), "node2"], timeout=30)
    rows = []
    for ln in r.stdout.splitlines():
        parts = ln.split()
        if parts and parts[0] == "PID":
            rows.append(parts + ["COMMAND"])
        elif parts and parts[0].isdigit():
            pid = int(parts[0])
            note = cmdline(pid)[:34] + ("   <- the ssh session" if pid == priv else "")
            rows.append(parts + [note])
    table(rows)

    head("callerid conns on node1 (the tracer's table: who opened which connection)")
    r = lab.run("node1", [CALLERID, "--config", str(lab.root / "node1" / "tracer.toml"), "conns"], timeout=30)
    conns = r.stdout.splitlines()
    shown = [ln for ln in conns[1:] if f"{n2.ip}:{SSH_PORT} " in ln]
    for ln in conns[:1] + shown:
        say(ln.rstrip())
    if len(conns) - 1 > len(shown):
        say(f"{DIM}({len(conns) - 1 - len(shown)} other connection(s) of node1 not shown: slurm RPCs...){OFF}")

    head(f"Who opened {src}:{sport} -> {dst}:{dport}? Asked from node2, two ways")
    q = lab.run("node2", [CALLERID, "--config", str(lab.root / "node2" / "adopter.toml"), "query", "--json",
                          src, str(sport), dst, str(dport)], timeout=30)
    try:
        ans = json.loads(q.stdout)
    except ValueError:
        ans = {}
    sc = lab.scontrol_callerid("node2", src, sport, dst, dport)
    cid = (ans.get("job_id"), ans.get("node"))
    rows = [["asked", "job", "node", "detail"],
            ["callerid query (node1's tracer, MUNGE RPC)", str(cid[0]), str(cid[1]),
             f"pid {ans.get('pid')} ({ans.get('comm')}), answered from {str(ans.get('source', '?')).lower()}"],
            ["scontrol callerid (Slurm, slurmd RPC)", str(sc[0]) if sc else "-", sc[1] if sc else "-",
             "what pam_slurm_adopt asks"]]
    table(rows)
    agree = sc is not None and cid == (str(sc[0]), sc[1]) and sc[0] == a  # callerid job ids are strings
    say(f"both say job {a} on node1 {OK}" if agree else f"answers differ {BAD}")

    head("Metrics (Prometheus text, scraped from node1's namespace)")
    am = scrape(lab, n2.adopter_metrics)
    tm = scrape(lab, n1.tracer_metrics)
    rows = [["node2 adopter  " + n2.adopter_metrics, "value"]]
    for labels, v in series(am, "callerid_adopter_decisions_total"):
        if v:
            rows.append([f'  decisions_total{{verdict="{labels["verdict"]}",reason="{labels["reason"]}"}}', f"{v:g}"])
    for labels, v in series(am, "callerid_adopter_rpc_requests_total"):
        if v:
            rows.append([f'  rpc_requests_total{{outcome="{labels["outcome"]}"}}', f"{v:g}"])
    rows.append(histogram_row(am, "callerid_adopter_", "rpc_duration_seconds"))
    rows.append(histogram_row(am, "callerid_adopter_", "decision_duration_seconds"))
    rows.append(["node1 tracer   " + n1.tracer_metrics, ""])
    for labels, v in series(tm, "callerid_lookups_total"):
        if v:
            rows.append([f'  lookups_total{{source="{labels["source"]}"}}', f"{v:g}"])
    for labels, v in series(tm, "callerid_rpc_requests_total"):
        if v:
            rows.append([f'  rpc_requests_total{{result="{labels["result"]}"}}', f"{v:g}"])
    rows.append(histogram_row(tm, "callerid_", "rpc_request_duration_seconds"))
    backend = [labels.get("backend") for labels, v in series(tm, "callerid_probe_backend") if v]
    rows.append(["  probe_backend", ", ".join(backend) or "none"])
    table(rows)
    if reused:
        say(f"{DIM}(counters include the earlier logins of this lab){OFF}")

    conf = lab.conf
    enter = f"SLURM_CONF={conf} nsenter --net={n1.netns.path} --"
    curl = "curl -s" if shutil.which("curl") else \
        "python3 -c 'import sys,urllib.request;print(urllib.request.urlopen(sys.argv[1]).read().decode())'"
    head(f"The lab keeps running: look around (as root; the ssh session lasts until about "
         f"{time.strftime('%H:%M', time.localtime(time.time() + SESSION_SECONDS))})")
    table([["what", "command"],
           ["a shell on node1 as cidlab1", f"{enter} runuser -u {USER} -- bash -l"],
           ["  then, in it", f"squeue; srun --jobid={a} --overlap -w node1 ssh node2 'cat /proc/self/cgroup'"],
           ["", "  (from job A: lands in job A; a plain `ssh node2 ...` from that shell is in no job, so"],
           ["", f"  action_unknown=newest puts it in job B {b}; `ssh node2-psa ...` goes through pam_slurm_adopt)"],
           ["jobs", f"{enter} squeue"],
           ["node1's connection table", (f"nsenter --net={n1.netns.path} -- {CALLERID} --config "
                                        f"{lab.root}/node1/tracer.toml conns")],
           ["Slurm's view of job A", f"SLURM_CONF={conf} nsenter --net={n2.netns.path} -- scontrol listpids {a} node2"],
           ["adopter decisions", f"tail -f {alog}"],
           ["pam_slurm_adopt (port 2222)", f"grep pam_slurm_adopt {lab.logdir}/syslog.log"],
           ["metrics", f"nsenter --net={n1.netns.path} -- {curl} {n2.adopter_metrics}"],
           ["", f"nsenter --net={n1.netns.path} -- {curl} {n1.tracer_metrics}"],
           ["everything (pids, logs)", "bash scripts/lab.sh status"]])
    say("More in docs/LAB.md.")
    head("Tear it down")
    say("bash scripts/lab.sh down        # cancels the jobs, stops every daemon, removes users, namespaces, files")

    checks = good and not in_b and agree and srun_ok and priv in lab.listpids(a, "node2").get("extern", [])
    print(f"\ndemo {'passed' if checks else 'FAILED'}: job A {a}, job B {b}, {time.monotonic() - T0:.1f} s",
          flush=True)
    return 0 if checks else 1


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.parse_args(argv)
    if os.geteuid() != 0:
        return fail("run as root: bash scripts/demo.sh")
    head("The Slurm lab (2 nodes in network namespaces; docs/LAB.md)")
    try:
        lock = lab_lock(timeout=0.5)
    except LabBusy:
        say(f"the lab lock is held (a test run or `scripts/lab.sh` is using the lab): waiting up to {LOCK_WAIT}s")
        try:
            lock = lab_lock(timeout=LOCK_WAIT)
        except LabBusy as exc:
            return fail(f"{exc}. Run the demo again when that is done.")
    try:
        try:
            lab, reused = get_lab()
        except LabBusy as exc:
            return fail(str(exc))
        except LabError as exc:
            return fail(f"the lab did not come up (it was torn down again):\n{exc}")
        try:
            return run_demo(lab, reused)
        except (LabError, TimeoutError, subprocess.TimeoutExpired) as exc:
            print(lab.logs_tail(8), file=sys.stderr)
            return fail(f"{exc}\nThe lab is still up: look around (bash scripts/lab.sh status), "
                        "then bash scripts/lab.sh down")
    finally:
        lock.close()


if __name__ == "__main__":
    sys.exit(main())
