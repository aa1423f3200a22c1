"""A real Prometheus scrapes every callerid daemon of the Slurm lab while real logins happen; then
every expression of every dashboard panel and alert rule is evaluated through its query API."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest

from callerid.dashboards.expressions import all_expressions
from tests.helpers import require
from tests.infra.procs import stop_pid
from tests.infra.slurmlab import ADOPTER_METRICS_PORT, TRACER_METRICS_PORT
from tests.lab.test_slurm_e2e import batch, ssh

pytestmark = pytest.mark.lab
ROOT = Path(__file__).resolve().parents[2]
PROM_PORT = 9090

# Panels allowed to return no series after the scenarios below (none today): a panel that
# stays empty in the lab is a broken panel. Alert expressions must parse; empty = not firing.
MAY_BE_EMPTY: dict[str, str] = {}

QUERY = """
import json, sys, urllib.parse, urllib.request
base, exprs = sys.argv[1], json.load(sys.stdin)
out = []
for e in exprs:
    url = base + "/api/v1/query?" + urllib.parse.urlencode({"query": e})
    try:
        r = json.load(urllib.request.urlopen(url, timeout=10))
    except urllib.error.HTTPError as err:
        r = json.load(err)
    out.append(r)
json.dump(out, sys.stdout)
"""


@pytest.fixture(scope="module")
def prometheus(lab):
    require(shutil.which("prometheus") is not None, "prometheus (Debian package prometheus)")
    d = Path(tempfile.mkdtemp(prefix="callerid-prom-"))
    tracers = [f"'{n.ip}:{TRACER_METRICS_PORT}'" for n in lab.nodes]
    adopters = [f"'{n.ip}:{ADOPTER_METRICS_PORT}'" for n in lab.nodes]
    (d / "prometheus.yml").write_text(f"""global:
  scrape_interval: 1s
  evaluation_interval: 1s
rule_files:
  - {ROOT}/dashboards/alerts/callerid.yml
scrape_configs:
  - job_name: callerid-tracer
    static_configs: [{{targets: [{", ".join(tracers)}]}}]
  - job_name: callerid-adopter
    static_configs: [{{targets: [{", ".join(adopters)}]}}]
""")
    ip = lab.node("node1").ip
    with open(d / "prometheus.log", "w") as log:  # prometheus keeps its own copy of the descriptor
        p = lab.popen("node1", ["prometheus", f"--config.file={d}/prometheus.yml", f"--storage.tsdb.path={d}/data",
                                f"--web.listen-address={ip}:{PROM_PORT}", "--log.level=warn"],
                      stdout=subprocess.DEVNULL, stderr=log)
    base = f"http://{ip}:{PROM_PORT}"

    def query(exprs: list[str]) -> list[dict]:
        r = lab.run("node1", [sys.executable, "-c", QUERY, base], input=json.dumps(exprs), timeout=120)
        assert r.returncode == 0, r.stderr
        return json.loads(r.stdout)

    try:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            ready = f"import urllib.request;urllib.request.urlopen('{base}/-/ready')"
            r = lab.run("node1", [sys.executable, "-c", ready])
            if r.returncode == 0:
                break
            time.sleep(0.5)
        else:
            pytest.fail("Prometheus not ready: " + (d / "prometheus.log").read_text()[-2000:])
        yield query
    finally:
        stop_pid(p.pid)
        p.wait(10)
        shutil.rmtree(d, ignore_errors=True)


def test_every_dashboard_and_alert_expression_parses_and_panels_have_data(lab, jobs, prometheus):
    a, b = lab.user("cidlab1"), lab.user("cidlab2")
    # logins that touch every part: single job, caller ID from a job, newest, a denial, a foreign job
    assert ssh(lab, a).rc == 255                        # no job: denied
    j = batch(lab, jobs, a, nodes="node1,node2", n=2)
    batch(lab, jobs, a)
    assert ssh(lab, a, from_job=j).job() == j           # caller ID answered from node1's map
    assert ssh(lab, a).rc == 0                          # outside any job: newest
    k1 = batch(lab, jobs, b)
    assert ssh(lab, b).job() == k1                      # single job, no RPC
    batch(lab, jobs, b)
    assert ssh(lab, a, key_of=b, from_job=j).rc == 0    # A's job, B's key: foreign job
    time.sleep(5)  # several scrapes after the events, so rate() over 1m has two samples of each

    up = prometheus(['up{job=~"callerid-.*"}'])[0]
    assert up["status"] == "success" and len(up["data"]["result"]) == 2 * len(lab.nodes)
    assert all(r["value"][1] == "1" for r in up["data"]["result"]), up

    exprs = all_expressions()
    results = prometheus([e for _, e in exprs])
    errors = [(w, e, r.get("error")) for (w, e), r in zip(exprs, results) if r.get("status") != "success"]
    assert not errors, "expressions Prometheus rejects:\n" + "\n".join(map(str, errors))
    empty = [w for (w, e), r in zip(exprs, results)
             if not w.startswith("alerts/") and not r["data"]["result"]
             and not any(name in w for name in MAY_BE_EMPTY)]
    assert not empty, "panels with no data after the scenarios:\n" + "\n".join(empty)
    # the security alert really fires on the foreign-job login
    alerts = prometheus(['ALERTS{alertname="CallerIDSecurityEvent"}'])[0]["data"]["result"]
    assert alerts, "CallerIDSecurityEvent did not fire"
