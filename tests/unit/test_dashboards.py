"""Grafana dashboards: generated files are current, every dashboard follows the provisioning
rules, and every panel queries only metrics the daemons export, in valid PromQL."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from pathlib import Path

import pytest

from callerid.dashboards import build, expressions
from callerid.dashboards.expressions import exported_metric_names, panels, referenced_metrics
from callerid.dashboards.rules import to_yaml
from tests.helpers import require

ROOT = Path(__file__).resolve().parents[2]
DASHBOARDS = sorted((ROOT / "dashboards").glob("*.json"))
# Stable uids: links, bookmarks and the overview's node links depend on them.
UIDS = {"callerid-overview.json": "callerid-overview", "callerid-node.json": "callerid-node"}
SCHEMA_VERSION = 39  # Grafana 10.4
DS_REF = {"type": "prometheus", "uid": "${datasource}"}
RANGE_FUNCS = re.compile(r"\b(rate|irate|increase)\s*\(")


def load(path: Path) -> dict:
    return json.loads(path.read_text())


def real_panels(dash: dict) -> list[dict]:
    return [p for p in panels(dash) if p["type"] != "row"]


def variables(dash: dict) -> dict[str, dict]:
    return {v["name"]: v for v in dash["templating"]["list"]}


@pytest.fixture(params=DASHBOARDS, ids=lambda p: p.name)
def dash_file(request) -> Path:
    return request.param


def test_generated_files_are_current():
    stale = [str(p.relative_to(ROOT)) for p, text in build.outputs().items()
             if not p.exists() or p.read_text() != text]
    assert not stale, f"stale generated files {stale}: run .venv/bin/python3 -m callerid.dashboards.build"


def test_the_two_dashboards_exist():
    assert {p.name for p in DASHBOARDS} == set(UIDS)


def test_schema_uid_and_no_import_leftovers(dash_file):
    d = load(dash_file)
    assert d["schemaVersion"] == SCHEMA_VERSION
    assert d["uid"] == UIDS.get(dash_file.name), f"{dash_file.name}: add its fixed uid to UIDS"
    assert d.get("id") is None, "provisioned dashboards carry no numeric id"
    assert "__inputs" not in d and "__requires" not in d, "exported-for-sharing JSON: use the datasource variable"
    assert d["title"] and d["description"]


def test_datasource_variable(dash_file):
    v = variables(load(dash_file))
    assert "datasource" in v, "a `datasource` template variable is required"
    ds = v["datasource"]
    assert ds["type"] == "datasource" and ds["query"] == "prometheus"
    assert ds.get("current") in ({}, None), "no data source chosen in the file: Grafana picks the default"


def test_job_and_instance_variables(dash_file):
    v = variables(load(dash_file))
    job, inst = v["job"], v["instance"]
    assert job["type"] == inst["type"] == "query"
    assert job["datasource"] == inst["datasource"] == DS_REF
    assert re.fullmatch(r"label_values\(callerid_build_info(\{[^}]*\})?, job\)", job["definition"])
    assert re.fullmatch(r"label_values\(callerid_build_info(\{[^}]*\})?, instance\)", inst["definition"])
    assert job["query"]["query"] == job["definition"] and inst["query"]["query"] == inst["definition"]
    # Grafana's Prometheus data source regex-escapes only multi/include-all values; the
    # expressions use =~, so an unescaped host name could not match itself.
    assert job["multi"] and inst["multi"]
    for var in (job, inst):
        if var["includeAll"]:
            assert var["allValue"] == ".*"


def _walk(obj, path="$"):
    if isinstance(obj, dict):
        yield path, obj
        for k, v in obj.items():
            yield from _walk(v, f"{path}.{k}")
    elif isinstance(obj, list):
        for i, v in enumerate(obj):
            yield from _walk(v, f"{path}[{i}]")


def test_no_hard_coded_datasource(dash_file):
    d = load(dash_file)
    for path, node in _walk(d):
        if "datasource" in node and not (node.get("type") == "datasource" and node.get("name") == "datasource"):
            assert node["datasource"] == DS_REF, f"{path}: datasource {node['datasource']!r}, expected {DS_REF}"
    text = dash_file.read_text()
    uids = set(re.findall(r'"uid":\s*"([^"]*)"', text)) - {"${datasource}", d["uid"]}
    assert not uids, f"hard-coded uids {uids}"


def test_every_panel_has_unit_description_and_datasource(dash_file):
    for p in real_panels(load(dash_file)):
        where = f"{dash_file.name} panel {p['id']} {p['title']!r}"
        assert p.get("description", "").strip(), f"{where}: no description"
        assert p.get("fieldConfig", {}).get("defaults", {}).get("unit"), f"{where}: no fieldConfig.defaults.unit"
        assert p["datasource"] == DS_REF, where
        assert p["targets"], f"{where}: no query"
        refs = [t["refId"] for t in p["targets"]]
        assert len(refs) == len(set(refs)), f"{where}: duplicate refIds"
        for t in p["targets"]:
            assert t["datasource"] == DS_REF, f"{where} {t['refId']}"
            assert t["expr"].strip(), f"{where} {t['refId']}: empty expr"


def test_rows_are_only_containers(dash_file):
    for p in panels(load(dash_file)):
        if p["type"] == "row":
            assert p["title"] and not p.get("targets") and not p.get("panels")


def test_panel_ids_unique(dash_file):
    ids = [p["id"] for p in panels(load(dash_file))]
    assert len(ids) == len(set(ids)), f"duplicate panel ids in {dash_file.name}"


def test_panels_fit_the_grid_without_overlap(dash_file):
    cells: dict[tuple[int, int], int] = {}
    for p in panels(load(dash_file)):
        g = p["gridPos"]
        assert g["x"] >= 0 and g["x"] + g["w"] <= 24, p["title"]
        for x in range(g["x"], g["x"] + g["w"]):
            for y in range(g["y"], g["y"] + g["h"]):
                assert (x, y) not in cells, f"{p['title']!r} overlaps panel {cells[(x, y)]}"
                cells[(x, y)] = p["id"]


def test_rates_use_rate_interval(dash_file):
    for p in real_panels(load(dash_file)):
        for t in p["targets"]:
            expr, where = t["expr"], f"{dash_file.name} {p['title']!r} {t['refId']}"
            code = re.sub(r'"(?:\\.|[^"\\])*"', '""', expr)  # string literals hold regexes like [0-9]
            ranges = re.findall(r"\[([^\]]*)\]", code)
            assert all(r == "$__rate_interval" for r in ranges), f"{where}: range {ranges} in {expr}"
            assert len(RANGE_FUNCS.findall(code)) <= len(ranges), f"{where}: rate without a range: {expr}"
            assert "$__interval" not in expr and "$__range" not in expr, where


def test_selectors_use_regex_matchers_for_variables(dash_file):
    """$job/$instance only after =~, so all_expressions() may substitute .* for them."""
    for p in real_panels(load(dash_file)):
        for t in p["targets"]:
            for mo in re.finditer(r'(\w+)\s*(=~|!~|=|!=)\s*"[^"]*\$(job|instance)', t["expr"]):
                assert mo.group(2) == "=~", f"{p['title']!r}: {mo.group(0)}"


def test_panels_reference_only_exported_metrics(dash_file):
    exported = exported_metric_names()
    for p in real_panels(load(dash_file)):
        for t in p["targets"]:
            used = referenced_metrics(t["expr"])
            assert used, f"{p['title']!r}: no metric found in {t['expr']}"
            unknown = used - exported
            assert not unknown, (f"{dash_file.name} {p['title']!r} {t['refId']}: {sorted(unknown)} not exported "
                                 f"by TracerMetrics()/AdopterMetrics()")


def test_referenced_metrics_parser():
    expr = ('histogram_quantile(0.99, sum by (le, instance) (rate(callerid_x_bucket{job=~"a|b", le!="0.5"}'
            '[$__rate_interval]))) / on (instance) group_left (version) callerid_build_info offset 5m '
            '> bool 1e-3 or label_replace(vector(0), "node", "$1", "instance", "(.*)") unless up')
    assert referenced_metrics(expr) == {"callerid_x_bucket", "callerid_build_info", "up"}
    assert referenced_metrics("sum(callerid_nope_total) and callerid_adopter_decisions_total") == {
        "callerid_nope_total", "callerid_adopter_decisions_total"}
    exported = exported_metric_names()
    assert "callerid_nope_total" not in exported
    for name in ("callerid_rpc_requests_total", "callerid_rpc_request_duration_seconds_bucket",
                 "callerid_adopter_decision_duration_seconds_count", "callerid_build_info",
                 "callerid_map_capacity_connections", "callerid_bpf_events_total",
                 "callerid_adopter_security_events_total", "process_start_time_seconds"):
        assert name in exported, name


def test_all_expressions_cover_every_target_and_alert():
    from callerid.dashboards.rules import ALERTS
    targets = sum(len(p["targets"]) for f in DASHBOARDS for p in real_panels(load(f)))
    exprs = expressions.all_expressions()
    assert len(exprs) == targets + len(ALERTS)
    assert len({w for w, _ in exprs}) == len(exprs), "every `where` names one expression"
    for where, expr in exprs:
        assert not re.search(r"\$(?!\d)", expr), f"{where}: unsubstituted variable in {expr}"
    assert any("[1m]" in e for _, e in exprs)


def test_every_expression_is_valid_promql(tmp_path):
    promtool = shutil.which("promtool")
    require(promtool is not None, "promtool (Debian package prometheus; scripts/setup.sh installs it)")
    exprs = expressions.all_expressions()
    doc = {"groups": [{"name": "expressions", "rules": [{"record": f"check:expr_{i}", "expr": e}
                                                         for i, (_, e) in enumerate(exprs)]}]}
    f = tmp_path / "expressions.yml"
    f.write_text(to_yaml(doc))
    r = subprocess.run([promtool, "check", "rules", str(f)], check=False, capture_output=True, text=True)
    if r.returncode != 0:
        where = {f"check:expr_{i}": w for i, (w, _) in enumerate(exprs)}
        msg = re.sub(r"check:expr_\d+", lambda mo: where.get(mo.group(0), mo.group(0)), r.stdout + r.stderr)
        pytest.fail(f"promtool rejects a dashboard or alert expression:\n{msg}")
    assert f"SUCCESS: {len(exprs)} rules found" in r.stdout


def test_provisioning_provider():
    prov = ROOT / "dashboards" / "provisioning"
    files = sorted(p.name for p in prov.iterdir())
    assert files == ["callerid.yml"], "vagrant/provision/controller.sh copies dashboards/provisioning/*.yml"
    text = (prov / "callerid.yml").read_text()
    assert re.search(r"^apiVersion: 1$", text, re.MULTILINE)
    assert re.search(r"^\s+type: file$", text, re.MULTILINE)
    assert re.search(r"^\s+allowUiUpdates: false$", text, re.MULTILINE)
    path = re.search(r"^\s+path: (\S+)$", text, re.MULTILINE)
    assert path and path.group(1).startswith("/"), "the provider needs an absolute path"
    # The lab rsyncs the checkout to /opt/callerid/src: the provider must find the JSON there.
    assert path.group(1).rstrip("/") == "/opt/callerid/src/dashboards"


def test_every_panel_is_explained_in_operations_md():
    doc = (ROOT / "docs" / "OPERATIONS.md").read_text()
    for f in DASHBOARDS:
        d = load(f)
        head = f"## Dashboard: {d['title']}\n"
        assert head in doc, f"docs/OPERATIONS.md has no section {head.strip()!r}"
        section = doc.split(head, 1)[1].split("\n## ", 1)[0]
        for p in panels(d):
            heading = f"### Row: {p['title']}\n" if p["type"] == "row" else f"#### {p['title']}\n"
            assert heading in section, f"docs/OPERATIONS.md, {d['title']}: no {heading.strip()!r}"
