"""The daemons' metrics: the reference in docs/OPERATIONS.md matches the code, the exposition
passes `promtool check metrics`, and every name and label follows the project's conventions."""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import pytest
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest

from callerid.adopter import policy
from callerid.adopter.metrics import AdopterMetrics
from callerid.tracer.metrics import TracerMetrics
from scripts import gen_operations
from tests.helpers import require

ROOT = Path(__file__).resolve().parents[2]
FORBIDDEN_LABELS = {"job", "instance", "user", "uid", "job_id", "jobid", "username", "gid", "pid"}
DEFINITIONS = {ROOT / "tracer" / "metrics.py", ROOT / "adopter" / "metrics.py", ROOT / "callerid" / "metrics.py"}


def fresh() -> dict[str, object]:
    return {"tracer": TracerMetrics(), "adopter": AdopterMetrics()}


def populated() -> dict[str, object]:
    """Registries with a sample behind every family, so label sets are linted too."""
    t, a = TracerMetrics(), AdopterMetrics()
    t.set_probe(None)
    t.tracked.labels("open").set(3)
    t.tracked.labels("closed").set(1)
    t.request_seconds.observe(0.002)
    for reason in policy.REASONS:
        a.decisions.labels("adopt", reason, "enforce").inc()
    a.decision_seconds.observe(0.001)
    for outcome in ("found_job", "no_job", "not_found", "no_socket", "timeout"):
        a.rpc.labels(outcome).inc()
    a.rpc_seconds.observe(0.003)
    a.security.labels("foreign_job").inc()
    return {"tracer": t, "adopter": a}


def families(metrics) -> list:
    return [f for f in metrics.registry.collect() if not f.name.startswith("process_")]


def label_names(metrics, fam) -> set[str]:
    names = {k for s in fam.samples for k in s.labels}
    names.update(gen_operations._declared_labelnames(metrics).get(fam.name, ()))
    return names - {"le"}


def test_operations_metrics_reference_is_current():
    doc = (ROOT / "docs" / "OPERATIONS.md").read_text()
    assert gen_operations.generated_section(doc) == gen_operations.render_metrics_reference(), \
        "docs/OPERATIONS.md metrics reference is stale: run .venv/bin/python3 scripts/gen_operations.py"


def test_reference_lists_every_exported_family():
    text = gen_operations.render_metrics_reference()
    for metrics in fresh().values():
        for fam in families(metrics):
            exposed = fam.name + {"counter": "_total", "info": "_info"}.get(fam.type, "")
            assert f"| `{exposed}` | {fam.type} |" in text, exposed


@pytest.mark.parametrize("state", ["fresh", "populated"])
@pytest.mark.parametrize("daemon", ["tracer", "adopter"])
def test_promtool_check_metrics(daemon, state):
    promtool = shutil.which("promtool")
    require(promtool is not None, "promtool (Debian package prometheus; scripts/setup.sh installs it)")
    metrics = (fresh if state == "fresh" else populated)()[daemon]
    exposition = generate_latest(metrics.registry)
    r = subprocess.run([promtool, "check", "metrics"], input=exposition, check=False, capture_output=True,
                       timeout=60)
    problems = (r.stdout + r.stderr).decode().strip()
    assert r.returncode == 0 and not problems, f"promtool check metrics ({daemon}, {state}):\n{problems}"


def naming_problems(metrics) -> list[str]:
    """Convention breaches in a *Metrics object's registry (process_* metrics excluded)."""
    out = []
    for fam in families(metrics):
        name = fam.name
        if not name.startswith("callerid_"):
            out.append(f"{name}: prefix callerid_")
        if not re.fullmatch(r"[a-z][a-z0-9_]*", name):
            out.append(f"{name}: lower snake case")
        sample_names = {s.name for s in fam.samples}
        if fam.type == "counter" and not all(n.endswith(("_total", "_created")) for n in sample_names):
            out.append(f"{name}: counters end in _total")
        if fam.type != "counter" and name.endswith("_total"):
            out.append(f"{name}: only counters end in _total")
        timing = "duration" in name or re.match(r"(time|duration)\b", fam.documentation, re.IGNORECASE)
        if (timing or fam.type == "histogram") and not name.endswith("_seconds"):
            out.append(f"{name}: durations are in seconds (_seconds)")
        if re.search(r"_(ms|msec|milliseconds|us|usec|microseconds|minutes|hours)$", name):
            out.append(f"{name}: base units only")
        if not fam.documentation.strip():
            out.append(f"{name}: no help text")
        bad = label_names(metrics, fam) & FORBIDDEN_LABELS
        if bad:
            out.append(f"{name}: label(s) {sorted(bad)} (no identities, never job/instance)")
    return out


@pytest.mark.parametrize("daemon", ["tracer", "adopter"])
def test_naming_conventions(daemon):
    assert naming_problems(populated()[daemon]) == []


def test_naming_check_catches_breaches():
    class Bad:
        def __init__(self):
            self.registry = r = CollectorRegistry()
            self.a = Counter("logins", "Logins.", ["user"], registry=r)
            self.b = Gauge("callerid_decision_duration_ms", "Duration of a decision.", registry=r)
            self.c = Histogram("callerid_rpc_latency", "Time of an RPC.", ["instance"], registry=r)
            self.d = Gauge("callerid_open_total", "Open things.", ["job_id"], registry=r)
    problems = "\n".join(naming_problems(Bad()))
    for expected in ("logins: prefix callerid_", "logins: label(s) ['user']",
                     "callerid_decision_duration_ms: durations", "callerid_decision_duration_ms: base units",
                     "callerid_rpc_latency: durations", "callerid_rpc_latency: label(s) ['instance']",
                     "callerid_open_total: only counters", "callerid_open_total: label(s) ['job_id']"):
        assert expected in problems, expected


def test_metric_names_defined_only_in_the_metrics_modules():
    """tracer/metrics.py and adopter/metrics.py define every metric, callerid/metrics.py the
    ones both daemons export; nowhere else may."""
    ctor = re.compile(r"\b(Counter|Gauge|Histogram|Summary|Info|Enum|\w+MetricFamily)\(\s*[\"']")
    offenders = []
    for pkg in ("tracer", "adopter", "callerid"):
        for f in sorted((ROOT / pkg).rglob("*.py")):
            if f in DEFINITIONS:
                continue
            for n, line in enumerate(f.read_text().splitlines(), 1):
                if ctor.search(line):
                    offenders.append(f"{f.relative_to(ROOT)}:{n}")
    assert not offenders, f"metrics defined outside the metrics modules: {offenders}"
