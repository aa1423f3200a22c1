"""Demo of the source side: two test hosts in network namespaces, a Slurm-layout job on node1
whose process connects to node2, and node2 asking node1's tracer who that was.

Run through scripts/demo.sh (as root). Everything it creates is removed at the end.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

repo = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(repo))

from tests.infra import munged as munged_mod  # noqa: E402
from tests.infra import users  # noqa: E402
from tests.infra.jobtree import JobTree  # noqa: E402
from tests.infra.netns import Topology  # noqa: E402
from tests.infra.procs import stop_pid  # noqa: E402
from tests.infra.tracerproc import TracerProc, new_pin_root, write_config  # noqa: E402

CALLERID = str(repo / ".venv" / "bin" / "callerid")
PY = str(repo / ".venv" / "bin" / "python3")
N1, N2 = "198.18.10.1", "198.18.10.2"
RPC, METRICS, SSH = 6828, 9828, 22


def banner(text):
    print(f"\n\033[1m== {text}\033[0m", flush=True)


def show(cmd, ns=None):
    argv = ns.argv(cmd) if ns else cmd
    print("$ " + " ".join(cmd), flush=True)
    r = subprocess.run(argv, capture_output=True, text=True)
    print((r.stdout + r.stderr).rstrip(), flush=True)
    return r


def main():
    work = Path("/run/callerid-demo")
    work.mkdir(mode=0o755, exist_ok=True)
    topo = Topology(prefix="ciddemo-")
    tree = JobTree(node="node1")
    m = tracer = server = pins = None
    demo_user = None
    procs = []
    try:
        banner("setting up: munged, a demo user, hosts node1 and node2 (198.18.10.0/24, fd00:10::/64)")
        m = munged_mod.start()
        demo_user = users.ensure("ciddemo")
        n1, n2 = topo.host("node1"), topo.host("node2")
        topo.link("node1", "node2", [f"{N1}/24", "fd00:10::1/64"], [f"{N2}/24", "fd00:10::2/64"])
        cfg = work / "callerid.toml"
        pins = new_pin_root()
        write_config(cfg, m.socket, pins, [], f"127.0.0.1:{METRICS}", nodename="node1", rpc_port=RPC,
                     probe="auto")
        cfg.chmod(0o644)
        banner("starting the tracer on node1 (BPF probe, pinned maps, callerid RPC on every address)")
        tracer = TracerProc(cfg, work / "tracer.log", n1).start(timeout=60)
        for line in tracer.log_text().splitlines():
            if "probe backend" in line or "serving" in line:
                print("  " + line.split(": ", 1)[-1])
        server = subprocess.Popen(n2.argv([PY, str(repo / "tests/infra/listener_prog.py"), "::", str(SSH)]),
                                  stdout=subprocess.PIPE, text=True)
        server.stdout.readline()

        banner("job 1001 of user ciddemo runs on node1; one of its tasks connects to node2:22")
        tree.create(demo_user.uid, 1001)
        client = [PY, str(repo / "tests/infra/client_prog.py"), N2, str(SSH), "--comm", "ssh"]
        inside = tree.popen(client, demo_user.uid, demo_user.gid, 1001, "0", netns=n1.path,
                            stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
        procs.append(inside)
        c_in = json.loads(inside.stdout.readline())[0]
        print(f"  task pid {inside.pid} in {tree.step_dirs(demo_user.uid, 1001, '0')[0]}")
        print(f"  connection {c_in['src']}:{c_in['sport']} -> {c_in['dst']}:{c_in['dport']}")
        outside = subprocess.Popen(n1.argv([PY, *client[1:-1], "scp"]), stdin=subprocess.PIPE,
                                   stdout=subprocess.PIPE, text=True)
        procs.append(outside)
        c_out = json.loads(outside.stdout.readline())[0]
        print(f"  and root's scp outside any job: {c_out['src']}:{c_out['sport']} -> {c_out['dst']}:{c_out['dport']}")

        banner("node2 asks node1's tracer who opened each connection (MUNGE-signed RPC)")
        for c in (c_in, c_out):
            show([CALLERID, "--config", str(cfg), "query", c["src"], str(c["sport"]), c["dst"], str(c["dport"])], n2)
        banner("the same answer as JSON, as the adopter will consume it")
        show([CALLERID, "--config", str(cfg), "query", "--json", c_in["src"], str(c_in["sport"]), c_in["dst"],
              str(c_in["dport"])], n2)

        banner("node1's connection table (callerid conns), next to ss")
        show([CALLERID, "--config", str(cfg), "conns"], n1)
        show(["ss", "-tnpH", "state", "established", "dport", f"= :{SSH}"], n1)

        banner("a few of node1's tracer metrics")
        text = subprocess.run(n1.argv(["python3", "-c", f"import urllib.request;print(urllib.request.urlopen('http://127.0.0.1:{METRICS}/metrics').read().decode())"]),
                              capture_output=True, text=True).stdout
        for line in text.splitlines():
            if line.startswith(("callerid_rpc_requests_total{result=\"found\"", "callerid_lookups_total",
                                "callerid_probe_backend", "callerid_map_capacity", "callerid_bpf_events_total",
                                "callerid_rpc_request_duration_seconds_count")) and not line.endswith(" 0.0"):
                print("  " + line)
        banner("done: everything is being torn down (namespaces, cgroups, daemons, demo user)")
    finally:
        for p in procs:
            stop_pid(p.pid)
        if server:
            stop_pid(server.pid)
        if tracer:
            tracer.stop()
        tree.cleanup()
        topo.cleanup()
        if m:
            m.stop()
        if demo_user:
            users.remove(demo_user.name)
        subprocess.run(["rm", "-rf", str(work)] + ([pins] if pins else []))


if __name__ == "__main__":
    main()
