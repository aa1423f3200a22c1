"""Generate the Grafana dashboards and Prometheus alert rules in dashboards/ (run after editing).

    .venv/bin/python3 -m callerid.dashboards.build          # rewrite the generated files
    .venv/bin/python3 -m callerid.dashboards.build --check  # exit 1 if a file is stale

The JSON and YAML are committed, because Grafana and Prometheus read them as they are;
tests/unit/test_dashboards.py and test_alert_rules.py fail when they differ from what
this generates. Metric names come from the metrics modules only (tracer/, adopter/,
callerid/metrics.py). Each dashboard is a module of its own (overview.py, node.py), the
panels both show are in panels.py, the alert rules and their tests in rules.py and
alert_cases.py.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

from . import alert_cases, rules
from .node import node
from .overview import overview

HERE = Path(__file__).resolve().parent
DASHBOARDS = {"callerid-overview.json": overview, "callerid-node.json": node}


def dump_json(obj) -> str:
    return json.dumps(obj, indent=2, sort_keys=False) + "\n"


def outputs() -> dict[Path, str]:
    """Every generated file and its content."""
    out = {HERE / name: dump_json(build()) for name, build in DASHBOARDS.items()}
    out[HERE / "alerts" / "callerid.yml"] = rules.render_rules()
    out[HERE / "alerts" / "tests" / "callerid_test.yml"] = alert_cases.render_tests()
    return out


def main(argv: list[str]) -> int:
    check = "--check" in argv
    stale = []
    for path, text in outputs().items():
        if path.exists() and path.read_text() == text:
            continue
        if check:
            stale.append(path.relative_to(HERE.parent))
        else:
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(text)
            print(f"wrote {path.relative_to(HERE.parent)}")
    if stale:
        print("stale: " + ", ".join(map(str, stale)) + " (run .venv/bin/python3 -m callerid.dashboards.build)")
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
