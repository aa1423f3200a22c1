"""Every PromQL expression the dashboards and alert rules use, ready to send to a Prometheus.

    from callerid.dashboards.expressions import all_expressions
    for where, expr in all_expressions():
        ...  # e.g. GET /api/v1/query?query=expr against a Prometheus scraping the daemons

Panel expressions are read from the dashboard JSON files (what Grafana runs), with the
Grafana variables made concrete: $__rate_interval -> 1m, $job and $instance -> .* (every
selector uses =~ for them, so .* is valid). Alert expressions come from
dashboards/rules.py, which dashboards/alerts/callerid.yml is generated from (a unit test
keeps the two equal).

Also here, for the tests: the metric names the daemons export (from fresh TracerMetrics()
and AdopterMetrics() registries) and the metric names an expression references.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

HERE = Path(__file__).resolve().parent
DEFAULTS = {"__rate_interval": "1m", "job": ".*", "instance": ".*"}

# Grafana's variable syntaxes: $name, ${name}, ${name:format}, [[name]].
_VAR = re.compile(r"\$\{(\w+)(?::[^}]*)?\}|\$(\w+)|\[\[(\w+)(?::\w+)?\]\]")


def dashboard_files() -> list[Path]:
    return sorted(HERE.glob("*.json"))


def panels(dashboard: dict):
    """Every panel, rows' collapsed children included."""
    for p in dashboard.get("panels", []):
        yield p
        yield from p.get("panels", []) or []


def substitute(expr: str, values: dict[str, str] | None = None) -> str:
    """expr with Grafana variables replaced; $1-style label_replace references are kept."""
    values = {**DEFAULTS, **(values or {})}

    def sub(mo):
        name = mo.group(1) or mo.group(2) or mo.group(3)
        if name.isdigit():
            return mo.group(0)
        if name not in values:
            raise KeyError(f"no value for Grafana variable ${name} in {expr!r}")
        return values[name]
    return _VAR.sub(sub, expr)


def panel_expressions() -> list[tuple[str, str]]:
    """(where, expr as written in the JSON) for every panel target."""
    out = []
    for path in dashboard_files():
        dash = json.loads(path.read_text())
        for p in panels(dash):
            for t in p.get("targets", []):
                if t.get("expr"):
                    out.append((f"{path.name} panel {p['id']} {p['title']!r} {t.get('refId', '')}", t["expr"]))
    return out


def alert_expressions() -> list[tuple[str, str]]:
    from .rules import ALERTS
    return [(f"alerts/callerid.yml {a.name}", a.expr) for a in ALERTS]


def all_expressions(values: dict[str, str] | None = None) -> list[tuple[str, str]]:
    """(where, expr) for every panel target and every alert rule, variables substituted."""
    return [(w, substitute(e, values)) for w, e in panel_expressions()] + alert_expressions()


# ---------------------------------------------------------------------------------------

_SUFFIXES = {"counter": ("_total", "_created"), "histogram": ("_bucket", "_count", "_sum", "_created"),
             "summary": ("", "_count", "_sum", "_created"), "info": ("_info",), "gaugehistogram": (
                 "_bucket", "_gcount", "_gsum"), "stateset": ("",), "gauge": ("",), "unknown": ("",)}


def registries():
    """Fresh registries of both daemons, as `callerid tracer` / `callerid adopter` build them."""
    from callerid.adopter.metrics import AdopterMetrics
    from callerid.tracer.metrics import TracerMetrics
    return {"tracer": TracerMetrics().registry, "adopter": AdopterMetrics().registry}


def exported_metric_names() -> set[str]:
    """Every series name the daemons can export (families with or without samples yet)."""
    names = set()
    for reg in registries().values():
        for fam in reg.collect():
            names.update(fam.name + suf for suf in _SUFFIXES.get(fam.type, ("",)))
            names.update(sample.name for sample in fam.samples)
    return names


# Prometheus' own series, not exported by the daemons (alerts may use them, panels do not).
PROMETHEUS_SERIES = {"up", "scrape_duration_seconds", "scrape_samples_scraped"}

_KEYWORDS = {"by", "without", "on", "ignoring", "group_left", "group_right", "bool", "and", "or", "unless",
             "offset", "inf", "nan", "atan2"}


def referenced_metrics(expr: str) -> set[str]:
    """Metric names an expression selects (strings, label matchers, groupings removed)."""
    e = re.sub(r'"(?:\\.|[^"\\])*"|\'(?:\\.|[^\'\\])*\'|`[^`]*`', '""', expr)  # string literals
    e = re.sub(r"\{[^}]*\}", " ", e)                                              # label matchers
    e = re.sub(r"\b(by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)", " ", e)
    e = re.sub(r"\[[^\]]*\]", " ", e)                                             # ranges, subqueries
    e = re.sub(r"\boffset\s+-?[0-9a-z]+", " ", e)
    e = re.sub(r"(?<![\w:])[0-9]+(?:\.[0-9]*)?(?:e[-+]?[0-9]+)?", " ", e, flags=re.IGNORECASE)  # numbers
    names = set()
    for mo in re.finditer(r"[a-zA-Z_:][a-zA-Z0-9_:]*", e):
        word, rest = mo.group(0), e[mo.end():].lstrip()
        if rest.startswith("(") or word.lower() in _KEYWORDS:
            continue  # a function, an aggregation or a keyword
        names.add(word)
    return names
