"""Prometheus alert rules: `promtool check rules` and `promtool test rules` pass, every alert
has a firing and a quiet test case, every expectation matters, and every alert is
documented with a runbook section in docs/OPERATIONS.md."""

from __future__ import annotations

import copy
import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest

from callerid.dashboards import alert_cases, rules
from callerid.dashboards.expressions import PROMETHEUS_SERIES, exported_metric_names, referenced_metrics
from tests.helpers import require

ROOT = Path(__file__).resolve().parents[2]
ALERTS_DIR = ROOT / "dashboards" / "alerts"
RULES = ALERTS_DIR / "callerid.yml"
TESTS = ALERTS_DIR / "tests" / "callerid_test.yml"
OPERATIONS = ROOT / "docs" / "OPERATIONS.md"

REQUIRED = {  # what the alerting brief asked for, by name
    "CallerIDTracerDown", "CallerIDAdopterDown", "CallerIDAdoptionFailures", "CallerIDDenialsSpiking",
    "CallerIDGenericFailures", "CallerIDSecurityEvent", "CallerIDFallbackRatioHigh", "CallerIDMapNearCapacity",
    "CallerIDAdopterRPCLatencyHigh", "CallerIDTracerRPCLatencyHigh", "CallerIDProbeNotLoaded",
    "CallerIDBPFUpdateFailures", "CallerIDSweeperFailing",
}


def promtool() -> str:
    path = shutil.which("promtool")
    require(path is not None, "promtool (Debian package prometheus; scripts/setup.sh installs it)")
    return path


# promtool test rules takes seconds here, and minutes under emulation (the VM tier sets
# CALLERID_TEST_READY_TIMEOUT, its slow-machine floor for waits, to 240).
PROMTOOL_TIMEOUT = max(600.0, float(os.environ.get("CALLERID_TEST_READY_TIMEOUT", "0")))


def run(*args) -> subprocess.CompletedProcess:
    return subprocess.run([promtool(), *args], check=False, capture_output=True, text=True, timeout=PROMTOOL_TIMEOUT)


def test_generated_rule_files_are_current():
    assert RULES.read_text() == rules.render_rules(), "run .venv/bin/python3 -m callerid.dashboards.build"
    assert TESTS.read_text() == alert_cases.render_tests(), "run .venv/bin/python3 -m callerid.dashboards.build"


def test_promtool_check_rules_on_every_rule_file():
    """Prometheus loads dashboards/alerts/*.yml (vagrant/provision/controller.sh): each must be a rule file."""
    files = sorted(ALERTS_DIR.glob("*.yml"))
    assert RULES in files
    for f in files:
        r = run("check", "rules", str(f))
        assert r.returncode == 0, f"promtool check rules {f.name}:\n{r.stdout}{r.stderr}"
    r = run("check", "rules", str(RULES))
    assert f"SUCCESS: {len(rules.ALERTS)} rules found" in r.stdout, r.stdout


def test_promtool_unit_tests_pass():
    r = run("test", "rules", str(TESTS))
    assert r.returncode == 0, f"promtool test rules {TESTS.relative_to(ROOT)}:\n{r.stdout}{r.stderr}"
    assert "SUCCESS" in r.stdout


def test_every_expectation_matters(tmp_path):
    """Flip each expectation (firing <-> quiet) alone: promtool must then fail, or that
    check proved nothing."""
    promtool()
    (tmp_path / "callerid.yml").write_text(RULES.read_text())
    (tmp_path / "tests").mkdir()
    doc = alert_cases.promtool_tests()
    insensitive = []
    for ti, test in enumerate(doc["tests"]):
        for ci, check in enumerate(test["alert_rule_test"]):
            one = copy.deepcopy(doc)
            one["tests"] = [one["tests"][ti]]
            flipped = one["tests"][0]["alert_rule_test"][ci]
            flipped["exp_alerts"] = [] if check["exp_alerts"] else [{"exp_labels": {"severity": "warn"}}]
            f = tmp_path / "tests" / "flipped.yml"
            f.write_text(rules.to_yaml(one))
            if run("test", "rules", str(f)).returncode == 0:
                insensitive.append(f"{alert_cases.case_title(alert_cases.CASES[ti])} at {check['eval_time']}")
    assert not insensitive, f"expectations that pass either way: {insensitive}"


def test_every_alert_has_a_firing_and_a_quiet_case():
    names = {a.name for a in rules.ALERTS}
    assert names >= REQUIRED, f"missing alerts: {REQUIRED - names}"
    firing = {c.alert for c in alert_cases.CASES for _, alerts in c.evals if alerts}
    quiet = {c.alert for c in alert_cases.CASES for _, alerts in c.evals if not alerts}
    assert names - firing == set(), f"alerts never shown firing: {names - firing}"
    assert names - quiet == set(), f"alerts never shown quiet: {names - quiet}"
    assert {c.alert for c in alert_cases.CASES} <= names, "a test case names an unknown alert"
    text = TESTS.read_text()
    for name in names:
        assert f"alertname: {name}\n" in text, name


def test_alerts_are_complete_and_documented():
    doc = OPERATIONS.read_text()
    names = [a.name for a in rules.ALERTS]
    assert len(names) == len(set(names)), "duplicate alert names"
    text = RULES.read_text()
    for a in rules.ALERTS:
        assert re.fullmatch(r"[0-9]+[smh]", a.for_), f"{a.name}: for: {a.for_!r}"
        assert a.severity in ("page", "warn"), a.name
        assert a.summary.strip() and a.description.strip(), a.name
        assert f"- alert: {a.name}\n" in text and f"for: {a.for_}\n" in text
        assert a.annotations()["runbook_url"] == f"docs/OPERATIONS.md#{a.name.lower()}"
        assert f"\n### {a.name}\n" in doc, f"docs/OPERATIONS.md has no runbook section '### {a.name}'"
        section = doc.split(f"\n### {a.name}\n", 1)[1].split("\n### ", 1)[0]
        for part in ("**Meaning.**", "**Likely causes.**", "**What to do.**"):
            assert part in section, f"docs/OPERATIONS.md {a.name}: no {part}"
        assert f"Severity {a.severity}" in " ".join(section.split()), \
            f"docs/OPERATIONS.md {a.name}: severity differs from the rule"


def test_alert_expressions_use_exported_metrics():
    exported = exported_metric_names() | PROMETHEUS_SERIES
    for a in rules.ALERTS:
        used = referenced_metrics(a.expr)
        assert used and used <= exported, f"{a.name}: {sorted(used - exported)} not exported"
        assert "$" not in a.expr, f"{a.name}: Grafana variable in an alert"


def test_down_alerts_match_the_documented_job_names():
    by_name = {a.name: a for a in rules.ALERTS}
    tracer = re.search(r'up\{job=~"([^"]+)"\} == 0', by_name["CallerIDTracerDown"].expr).group(1)
    adopter = re.search(r'up\{job=~"([^"]+)"\} == 0', by_name["CallerIDAdopterDown"].expr).group(1)
    # Prometheus anchors label regexes, as fullmatch does.
    assert re.fullmatch(tracer, "callerid-tracer") and not re.fullmatch(tracer, "callerid-adopter")
    assert re.fullmatch(adopter, "callerid-adopter") and not re.fullmatch(adopter, "callerid-tracer")
    assert re.fullmatch(tracer, "hpc1-callerid-tracer") and not re.fullmatch(tracer, "node-exporter")
    doc = OPERATIONS.read_text()
    assert "`callerid-tracer`" in doc and "`callerid-adopter`" in doc


@pytest.mark.parametrize("alert", [a for a in rules.ALERTS if "[" in a.expr], ids=lambda a: a.name)
def test_alert_windows_span_several_scrapes(alert):
    """Range windows of at least 10m: several 15 s..1 m scrapes, so rate() is never empty."""
    for window in re.findall(r"\[([0-9]+)m\]", alert.expr):
        assert int(window) >= 10, f"{alert.name}: [{window}m]"
