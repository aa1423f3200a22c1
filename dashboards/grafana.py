"""Small builders for Grafana 10 dashboard JSON (schemaVersion 39): panels, targets, variables, layout."""

from __future__ import annotations

import re

# Why plain dicts and not Grafana's grafana-foundation-sdk (evaluated 2026-12-01, version
# 1769699796!10.4.0, on two panels: "Decision latency" and "Fallback ratio by node"): the
# SDK's typed builders did catch a wrong method name at once, and the target + timeseries
# helpers shrink from 46 to 21 non-blank lines; extrapolated, this module would go from 289
# to about 200 lines and the dashboard modules (calls to these helpers) would not change. But the
# SDK requires Python >= 3.11 (typing.Self, enum.StrEnum) while callerid supports 3.9, so
# `build` and the freshness test could no longer run on Debian 11 or Python 3.9/3.10; it
# pins by an epoch per build (about 400 releases); it emits defaults we do not set
# ("transparent", "repeatDirection", gridPos h=9) and no panel ids, so every committed JSON
# would change; and "valid by construction" covers field names and enum values only, not
# the rules that matter here (datasource variable, unit and description on every panel,
# $__rate_interval), which tests/unit/test_dashboards.py checks either way. Not adopted.

# Everything here produces plain dicts; overview.py and node.py assemble them, build.py
# writes the JSON. The rules the dashboards must follow (datasource variable everywhere, a unit and a
# description on every panel, $__rate_interval in every rate) are enforced by
# tests/unit/test_dashboards.py on the written files, not trusted to these helpers.

SCHEMA_VERSION = 39  # Grafana 10.4

DS = {"type": "prometheus", "uid": "${datasource}"}

# Label matchers every query carries. The instance variable holds host names with the
# port stripped (see instance_var), so one choice selects both daemons of a node
# (tracer on :9828, adopter on :9829); the optional port group matches either.
SEL = 'job=~"$job", instance=~"$instance(:[0-9]+)?"'


def m(name: str, extra: str = "") -> str:
    """A metric selector with the dashboard's job/instance matchers (and `extra` ones)."""
    return f"{name}{{{extra + ', ' if extra else ''}{SEL}}}"


def rate(name: str, extra: str = "", fn: str = "rate") -> str:
    return f"{fn}({m(name, extra)}[$__rate_interval])"


def by_node(expr: str) -> str:
    """expr with a `node` label: instance without its port, so tracer and adopter rows join."""
    return f'label_replace({expr}, "node", "$1", "instance", "(.*?)(:[0-9]+)?")'


def quantiles(bucket: str, by: str = "", qs=(0.5, 0.95, 0.99)) -> list[dict]:
    """histogram_quantile targets (p50/p95/p99) over the rate of a _bucket series."""
    grp = f"{by}, le" if by else "le"
    out = []
    for i, q in enumerate(qs):
        legend = f"p{round(q * 100)}" + (f" {{{{{by}}}}}" if by else "")
        out.append(target(f"histogram_quantile({q}, sum by ({grp}) ({rate(bucket)}))", legend, chr(ord("A") + i)))
    return out


def target(expr: str, legend: str = "", ref: str = "A", instant: bool = False, table: bool = False) -> dict:
    t = {
        "datasource": DS,
        "editorMode": "code",
        "expr": expr,
        "instant": instant or table,
        "legendFormat": legend or "__auto",
        "range": not (instant or table),
        "refId": ref,
    }
    if table:
        t["format"] = "table"
    return t


def _thresholds(steps):
    out = [{"color": "green", "value": None}]
    out += [{"color": color, "value": value} for value, color in steps]
    return {"mode": "absolute", "steps": out}


def timeseries(title: str, description: str, unit: str, targets: list[dict], *, stack: bool = False,
               bars: bool = False, max_: float | None = None, threshold: float | None = None,
               overrides: list | None = None, calcs=("mean", "max", "lastNotNull")) -> dict:
    custom = {
        "drawStyle": "bars" if bars else "line",
        "fillOpacity": 60 if bars else (25 if stack else 10),
        "lineWidth": 1,
        "showPoints": "never",
        "spanNulls": False,
        "stacking": {"group": "A", "mode": "normal" if stack else "none"},
        "thresholdsStyle": {"mode": "dashed" if threshold is not None else "off"},
    }
    defaults = {"unit": unit, "min": 0, "color": {"mode": "palette-classic"}, "custom": custom,
                "thresholds": _thresholds([(threshold, "red")] if threshold is not None else [])}
    if max_ is not None:
        defaults["max"] = max_
    return {
        "type": "timeseries",
        "title": title,
        "description": description,
        "datasource": DS,
        "fieldConfig": {"defaults": defaults, "overrides": overrides or []},
        "options": {
            "legend": {"calcs": list(calcs), "displayMode": "table", "placement": "bottom", "showLegend": True,
                       "sortBy": "Max", "sortDesc": True},
            "tooltip": {"mode": "multi", "sort": "desc"},
        },
        "targets": targets,
    }


def stat(title: str, description: str, unit: str, targets: list[dict], *, steps=(), text_mode: str = "auto",
         mappings: list | None = None, graph: bool = True, decimals: int | None = None,
         overrides: list | None = None) -> dict:
    defaults = {"unit": unit, "color": {"mode": "thresholds"}, "thresholds": _thresholds(steps),
                "mappings": mappings or []}
    if decimals is not None:
        defaults["decimals"] = decimals
    return {
        "type": "stat",
        "title": title,
        "description": description,
        "datasource": DS,
        "fieldConfig": {"defaults": defaults, "overrides": overrides or []},
        "options": {
            "colorMode": "value",
            "graphMode": "area" if graph else "none",
            "justifyMode": "auto",
            "orientation": "auto",
            "reduceOptions": {"calcs": ["lastNotNull"], "fields": "", "values": False},
            "showPercentChange": False,
            "textMode": text_mode,
            "wideLayout": True,
        },
        "targets": targets,
    }


def gauge(title: str, description: str, unit: str, targets: list[dict], *, max_: float, steps=()) -> dict:
    return {
        "type": "gauge",
        "title": title,
        "description": description,
        "datasource": DS,
        "fieldConfig": {"defaults": {"unit": unit, "min": 0, "max": max_, "color": {"mode": "thresholds"},
                                     "thresholds": _thresholds(steps)}, "overrides": []},
        "options": {
            "minVizHeight": 75,
            "minVizWidth": 75,
            "orientation": "auto",
            "reduceOptions": {"calcs": ["lastNotNull"], "fields": "", "values": False},
            "showThresholdLabels": False,
            "showThresholdMarkers": True,
            "sizing": "auto",
        },
        "targets": targets,
    }


def table(title: str, description: str, unit: str, targets: list[dict], *, columns: dict[str, dict],
          hide: tuple[str, ...] = ("Time",), order: tuple[str, ...] = (), links: dict[str, list] | None = None,
          sort_by: str | None = None) -> dict:
    """A table of instant queries merged on their shared labels.

    columns: value field name (e.g. "Value #A") -> {"title", "unit", optional "steps", "decimals"}.
    """
    overrides = []
    for field, spec in columns.items():
        props = [{"id": "displayName", "value": spec["title"]}, {"id": "unit", "value": spec["unit"]}]
        if "decimals" in spec:
            props.append({"id": "decimals", "value": spec["decimals"]})
        if "steps" in spec:
            props += [{"id": "thresholds", "value": _thresholds(spec["steps"])},
                      {"id": "custom.cellOptions", "value": {"type": "color-text"}}]
        overrides.append({"matcher": {"id": "byName", "options": field}, "properties": props})
    for field, field_links in (links or {}).items():
        overrides.append({"matcher": {"id": "byName", "options": field},
                          "properties": [{"id": "links", "value": field_links}]})
    return {
        "type": "table",
        "title": title,
        "description": description,
        "datasource": DS,
        "fieldConfig": {"defaults": {"unit": unit, "custom": {"align": "auto", "cellOptions": {"type": "auto"},
                                                              "inspect": False},
                                     "thresholds": _thresholds([])},
                        "overrides": overrides},
        "options": {"cellHeight": "sm", "footer": {"show": False, "reducer": ["sum"], "countRows": False,
                                                     "fields": ""},
                    "showHeader": True, "sortBy": [{"displayName": sort_by, "desc": False}] if sort_by else []},
        "targets": targets,
        "transformations": [
            {"id": "merge", "options": {}},
            {"id": "organize", "options": {"excludeByName": {h: True for h in hide},
                                           "indexByName": {name: i for i, name in enumerate(order)},
                                           "renameByName": {}}},
        ],
    }


def row(title: str) -> dict:
    return {"type": "row", "title": title, "collapsed": False, "panels": []}


def override_color(series: str, color: str) -> dict:
    """Colour the series whose legend is `series`, or ends in " <series>" (legends prefixed by instance)."""
    return {"matcher": {"id": "byRegexp", "options": f"^(.+ )?{re.escape(series)}$"},
            "properties": [{"id": "color", "value": {"fixedColor": color, "mode": "fixed"}}]}


class Layout:
    """Place panels left to right on Grafana's 24-column grid, wrapping to a new line."""

    def __init__(self):
        self.panels: list[dict] = []
        self.x = self.y = self.line_h = 0

    def add(self, panel: dict, w: int = 12, h: int = 8):
        if panel["type"] == "row":
            self._newline()
            w, h = 24, 1
        elif self.x + w > 24:
            self._newline()
        panel = {"id": len(self.panels) + 1, **panel, "gridPos": {"h": h, "w": w, "x": self.x, "y": self.y}}
        self.panels.append(panel)
        self.x += w
        self.line_h = max(self.line_h, h)
        if panel["type"] == "row":
            self._newline()

    def _newline(self):
        if self.x:
            self.y += self.line_h
        self.x = self.line_h = 0


def datasource_var() -> dict:
    return {"type": "datasource", "name": "datasource", "label": "Data source", "query": "prometheus",
            "current": {}, "hide": 0, "includeAll": False, "multi": False, "options": [], "refresh": 1,
            "regex": "", "skipUrlSync": False}


def _query_var(name: str, label: str, query: str, *, regex: str = "", multi: bool = True,
               include_all: bool = True) -> dict:
    v = {
        "type": "query",
        "name": name,
        "label": label,
        "datasource": DS,
        "definition": query,
        "query": {"query": query, "refId": "PrometheusVariableQueryEditor-VariableQuery"},
        "current": {"selected": True, "text": ["All"], "value": ["$__all"]} if include_all else {},
        "hide": 0,
        "includeAll": include_all,
        "multi": multi,
        "options": [],
        "refresh": 2,  # on time range change: nodes come and go
        "regex": regex,
        "skipUrlSync": False,
        "sort": 1,
    }
    if include_all:
        v["allValue"] = ".*"
    return v


def job_var() -> dict:
    return _query_var("job", "Scrape job", "label_values(callerid_build_info, job)")


def instance_var(*, include_all: bool = True) -> dict:
    # The regex keeps the host part of host:port ([v6]:port too): one value per node.
    # multi=True even where one node is the point: Grafana's Prometheus data source
    # regex-escapes only multi-value or include-all variables, and an unescaped
    # [v6-address] or dotted name would not match itself in =~.
    return _query_var("instance", "Node", 'label_values(callerid_build_info{job=~"$job"}, instance)',
                      regex="/^(.*?)(?::[0-9]+)?$/", include_all=include_all)


def dashboard(uid: str, title: str, description: str, panels: list[dict], variables: list[dict],
              links: list[dict]) -> dict:
    return {
        "annotations": {"list": []},
        "description": description,
        "editable": True,
        "fiscalYearStartMonth": 0,
        "graphTooltip": 1,
        "id": None,
        "links": links,
        "liveNow": False,
        "panels": panels,
        "refresh": "1m",
        "schemaVersion": SCHEMA_VERSION,
        "tags": ["callerid", "slurm"],
        "templating": {"list": variables},
        "time": {"from": "now-6h", "to": "now"},
        "timepicker": {},
        "timezone": "",
        "title": title,
        "uid": uid,
        "version": 1,
        "weekStart": "",
    }
