"""promtool unit tests of the alert rules: the cases, and the test file written from them.

dashboards/build.py writes dashboards/alerts/tests/callerid_test.yml from CASES here; the
alerts themselves are in dashboards/rules.py. Every alert has at least one case where it
fires and one where it does not (tests/unit/test_alert_rules.py checks that).
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

from .rules import ALERTS, to_yaml


@dataclass
class Case:
    """One promtool test: input series, then at each eval time the alerts expected (labels)."""

    alert: str
    name: str
    series: dict[str, str]
    evals: list[tuple[str, list[dict]]] = field(default_factory=list)



# ---------------------------------------------------------------------------------------
# promtool test cases: every alert has at least one case where it fires and one where it
# does not (tests/unit/test_alert_rules.py checks that).

TRACER = {"job": "callerid-tracer", "instance": "node1:9828"}
ADOPTER = {"job": "callerid-adopter", "instance": "node1:9829"}


def s(name: str, base: dict, **labels) -> str:
    """A series selector with base labels (job, instance) and extra ones."""
    items = {**base, **labels}
    return name + "{" + ",".join(f'{k}="{v}"' for k, v in items.items()) + "}"


def fired(base: dict, **labels) -> dict:
    return {**base, **labels}


def map_fill(open_used: int, closed_used: int, minutes: int = 30) -> dict[str, str]:
    """A tracer's map series, constant for `minutes`: entries in use and the default capacities."""
    return {s("callerid_tracked_connections", TRACER, state="open"): f"{open_used}x{minutes}",
            s("callerid_tracked_connections", TRACER, state="closed"): f"{closed_used}x{minutes}",
            s("callerid_map_capacity_connections", TRACER, state="open"): f"131072x{minutes}",
            s("callerid_map_capacity_connections", TRACER, state="closed"): f"65536x{minutes}"}


DEC = "callerid_adopter_decisions_total"
ADO = "callerid_adopter_adoptions_total"
ARPC = "callerid_adopter_rpc_requests_total"


def _hist(name: str, base: dict, per_min: dict[str, str]) -> dict[str, str]:
    """Histogram series: per_min maps le -> values; _count follows +Inf."""
    out = {s(f"{name}_bucket", base, le=le): v for le, v in per_min.items()}
    out[s(f"{name}_count", base)] = per_min["+Inf"]
    return out


CASES = [
    Case("CallerIDTracerDown", "tracer down for 10 minutes", {s("up", TRACER): "0x20"},
         [("3m", []), ("10m", [fired(TRACER)])]),
    Case("CallerIDTracerDown", "tracer up; a down adopter is not a tracer alert",
         {s("up", TRACER): "1x20", s("up", ADOPTER): "0x20"}, [("10m", [])]),
    Case("CallerIDAdopterDown", "adopter down for 10 minutes", {s("up", ADOPTER): "0x20"},
         [("3m", []), ("10m", [fired(ADOPTER)])]),
    Case("CallerIDAdopterDown", "adopter up; a down tracer is not an adopter alert",
         {s("up", ADOPTER): "1x20", s("up", TRACER): "0x20"}, [("10m", [])]),

    Case("CallerIDAdoptionFailures", "2 of 12 adoptions per minute fail",
         {s(ADO, ADOPTER, result="success"): "0+10x40", s(ADO, ADOPTER, result="permission"): "0+2x40"},
         [("30m", [fired(ADOPTER)])]),
    Case("CallerIDAdoptionFailures", "one job_gone race, no other failure",
         {s(ADO, ADOPTER, result="success"): "0+10x40", s(ADO, ADOPTER, result="job_gone"): "0x5 1x35"},
         [("30m", [])]),
    Case("CallerIDAdoptionFailures", "failures below 10% of a busy node's adoptions",
         {s(ADO, ADOPTER, result="success"): "0+100x40", s(ADO, ADOPTER, result="io"): "0+3x40"},
         [("30m", [])]),

    Case("CallerIDAdoptionLeftPartial", "one adoption left partial",
         {s("callerid_adopter_abandoned_adoptions_total", ADOPTER, result="left_partial"): "0x5 1x20"},
         [("10m", [fired(ADOPTER)])]),
    Case("CallerIDAdoptionLeftPartial", "stopped adoptions all undone",
         {s("callerid_adopter_abandoned_adoptions_total", ADOPTER, result="left_partial"): "0x20",
          s("callerid_adopter_abandoned_adoptions_total", ADOPTER, result="undone"): "0+1x20"},
         [("10m", [])]),

    Case("CallerIDDenialsSpiking", "two thirds of logins denied",
         {s(DEC, ADOPTER, verdict="deny", reason="no_jobs"): "0+2x40",
          s(DEC, ADOPTER, verdict="adopt", reason="single_job"): "0+1x40"},
         [("30m", [fired(ADOPTER)])]),
    Case("CallerIDDenialsSpiking", "a sixth of logins denied",
         {s(DEC, ADOPTER, verdict="deny", reason="no_jobs"): "0+1x40",
          s(DEC, ADOPTER, verdict="adopt", reason="single_job"): "0+5x40"},
         [("30m", [])]),
    Case("CallerIDDenialsSpiking", "all denied, but too few to matter",
         {s(DEC, ADOPTER, verdict="deny", reason="no_jobs"): "0+0.5x40"},
         [("30m", [])]),

    Case("CallerIDGenericFailures", "adopter internal errors",
         {s(DEC, ADOPTER, verdict="ignore", reason="internal_error"): "0+1x30"},
         [("20m", [fired(ADOPTER)])]),
    Case("CallerIDGenericFailures", "hook requests time out",
         {s("callerid_adopter_hook_requests_total", ADOPTER, result="ok"): "0+10x30",
          s("callerid_adopter_hook_requests_total", ADOPTER, result="timeout"): "0+1x30"},
         [("20m", [fired(ADOPTER)])]),
    Case("CallerIDGenericFailures", "denials and a non-root poke are not generic failures",
         {s(DEC, ADOPTER, verdict="deny", reason="no_jobs"): "0+5x30",
          s("callerid_adopter_hook_requests_total", ADOPTER, result="ok"): "0+5x30",
          s("callerid_adopter_hook_requests_total", ADOPTER, result="not_root"): "0+1x30"},
         [("20m", [])]),

    Case("CallerIDSecurityEvent", "first event ever: the series appears at 1",
         {s("callerid_adopter_security_events_total", ADOPTER, kind="foreign_job"): "_x10 1x30"},
         [("12m", [fired(ADOPTER, kind="foreign_job")]), ("40m", [])]),
    Case("CallerIDSecurityEvent", "an existing counter goes up",
         {s("callerid_adopter_security_events_total", ADOPTER, kind="foreign_job"): "2x20 3x20"},
         [("25m", [fired(ADOPTER, kind="foreign_job")])]),
    Case("CallerIDSecurityEvent", "old events only",
         {s("callerid_adopter_security_events_total", ADOPTER, kind="foreign_job"): "2x40"},
         [("30m", [])]),

    Case("CallerIDSourceRPCFailing", "half of the RPCs time out",
         {s(ARPC, ADOPTER, outcome="found_job"): "0+2x40", s(ARPC, ADOPTER, outcome="timeout"): "0+2x40"},
         [("35m", [fired(ADOPTER)])]),
    Case("CallerIDSourceRPCFailing", "one RPC in twenty times out",
         {s(ARPC, ADOPTER, outcome="found_job"): "0+20x40", s(ARPC, ADOPTER, outcome="timeout"): "0+1x40"},
         [("35m", [])]),

    Case("CallerIDAdopterRPCLatencyHigh", "every RPC takes between 0.5 and 1 s",
         _hist("callerid_adopter_rpc_duration_seconds", ADOPTER,
               {"0.01": "0x40", "0.5": "0x40", "1.0": "0+1x40", "+Inf": "0+1x40"}),
         [("30m", [fired(ADOPTER)])]),
    Case("CallerIDAdopterRPCLatencyHigh", "every RPC under 10 ms",
         _hist("callerid_adopter_rpc_duration_seconds", ADOPTER,
               {"0.01": "0+1x40", "0.5": "0+1x40", "1.0": "0+1x40", "+Inf": "0+1x40"}),
         [("30m", [])]),
    Case("CallerIDAdopterRPCLatencyHigh", "slow, but too few RPCs to judge",
         _hist("callerid_adopter_rpc_duration_seconds", ADOPTER,
               {"0.01": "0x40", "0.5": "0x40", "1.0": "0+0.2x40", "+Inf": "0+0.2x40"}),
         [("30m", [])]),

    Case("CallerIDTracerRPCLatencyHigh", "every request takes between 0.25 and 0.5 s",
         _hist("callerid_rpc_request_duration_seconds", TRACER,
               {"0.01": "0x40", "0.25": "0x40", "0.5": "0+1x40", "+Inf": "0+1x40"}),
         [("30m", [fired(TRACER)])]),
    Case("CallerIDTracerRPCLatencyHigh", "every request under 10 ms",
         _hist("callerid_rpc_request_duration_seconds", TRACER,
               {"0.01": "0+1x40", "0.25": "0+1x40", "0.5": "0+1x40", "+Inf": "0+1x40"}),
         [("30m", [])]),

    Case("CallerIDFallbackRatioHigh", "40% of lookups fall back with a probe loaded",
         {s("callerid_lookups_total", TRACER, source="bpf"): "0+6x40",
          s("callerid_lookups_total", TRACER, source="proc"): "0+4x40",
          s("callerid_fallback_lookups_total", TRACER, reason="map_miss"): "0+4x40",
          s("callerid_probe_backend", TRACER, backend="tracepoint"): "1x40",
          s("callerid_probe_backend", TRACER, backend="none"): "0x40"},
         [("35m", [fired(TRACER)])]),
    Case("CallerIDFallbackRatioHigh", "10% fall back",
         {s("callerid_lookups_total", TRACER, source="bpf"): "0+9x40",
          s("callerid_lookups_total", TRACER, source="proc"): "0+1x40",
          s("callerid_fallback_lookups_total", TRACER, reason="map_miss"): "0+1x40",
          s("callerid_probe_backend", TRACER, backend="tracepoint"): "1x40"},
         [("35m", [])]),
    Case("CallerIDFallbackRatioHigh", "no probe: CallerIDProbeNotLoaded says it already",
         {s("callerid_lookups_total", TRACER, source="proc"): "0+10x40",
          s("callerid_fallback_lookups_total", TRACER, reason="no_bpf"): "0+10x40",
          s("callerid_probe_backend", TRACER, backend="none"): "1x40"},
         [("35m", [])]),
    Case("CallerIDFallbackRatioHigh", "all fall back, but too few lookups to judge",
         {s("callerid_lookups_total", TRACER, source="proc"): "0+0.5x40",
          s("callerid_fallback_lookups_total", TRACER, reason="map_miss"): "0+0.5x40",
          s("callerid_probe_backend", TRACER, backend="kprobe"): "1x40"},
         [("35m", [])]),

    Case("CallerIDMapNearCapacity", "120000 of 131072 open entries used", map_fill(120000, 2000),
         [("10m", []), ("20m", [fired(TRACER)])]),
    Case("CallerIDMapNearCapacity", "a quiet map", map_fill(1000, 200), [("20m", [])]),
    Case("CallerIDMapNearCapacity", "churn fills only the closed map", map_fill(1000, 65536), [("20m", [])]),

    Case("CallerIDProbeNotLoaded", "fallback only",
         {s("callerid_probe_backend", TRACER, backend="none"): "1x20",
          s("callerid_probe_backend", TRACER, backend="tracepoint"): "0x20"},
         [("5m", []), ("15m", [fired(TRACER, backend="none")])]),
    Case("CallerIDProbeNotLoaded", "tracepoint backend loaded",
         {s("callerid_probe_backend", TRACER, backend="none"): "0x20",
          s("callerid_probe_backend", TRACER, backend="tracepoint"): "1x20"},
         [("15m", [])]),

    Case("CallerIDBPFUpdateFailures", "one failed update at 11m",
         {s("callerid_bpf_events_total", TRACER, event="update_failed"): "0x10 1x20"},
         [("18m", [fired(TRACER)]), ("30m", [])]),
    Case("CallerIDBPFUpdateFailures", "old failures from before the window",
         {s("callerid_bpf_events_total", TRACER, event="update_failed"): "3x30",
          s("callerid_bpf_events_total", TRACER, event="connect"): "0+50x30"},
         [("18m", [])]),

    Case("CallerIDSweeperFailing", "every pass fails",
         {s("callerid_sweeper_failures_total", TRACER): "0+6x40",
          s("callerid_sweeper_runs_total", TRACER): "100x40"},
         [("35m", [fired(TRACER)])]),
    Case("CallerIDSweeperFailing", "one pass in six fails",
         {s("callerid_sweeper_failures_total", TRACER): "0+1x40",
          s("callerid_sweeper_runs_total", TRACER): "0+5x40"},
         [("35m", [])]),
    Case("CallerIDSweeperFailing", "no sweeper (no probe): nothing moves",
         {s("callerid_sweeper_failures_total", TRACER): "0x40",
          s("callerid_sweeper_runs_total", TRACER): "0x40"},
         [("35m", [])]),

    Case("CallerIDReconcileFailed", "reconcile ran and failed",
         {s("callerid_reconcile_last_success", TRACER): "0x20",
          s("callerid_reconcile_last_duration_seconds", TRACER): "0.5x20"},
         [("10m", [fired(TRACER)])]),
    Case("CallerIDReconcileFailed", "reconcile did not run (0 with zero duration)",
         {s("callerid_reconcile_last_success", TRACER): "0x20",
          s("callerid_reconcile_last_duration_seconds", TRACER): "0x20"},
         [("10m", [])]),
    Case("CallerIDReconcileFailed", "reconcile completed",
         {s("callerid_reconcile_last_success", TRACER): "1x20",
          s("callerid_reconcile_last_duration_seconds", TRACER): "0.3x20"},
         [("10m", [])]),

    Case("CallerIDRPCAuthFailures", "a credential rejected every minute",
         {s("callerid_rpc_requests_total", TRACER, result="auth_failed"): "0+1x30"},
         [("15m", [fired(TRACER)])]),
    Case("CallerIDRPCAuthFailures", "denied and found are not MUNGE failures",
         {s("callerid_rpc_requests_total", TRACER, result="found"): "0+10x30",
          s("callerid_rpc_requests_total", TRACER, result="denied"): "0+5x30",
          s("callerid_rpc_requests_total", TRACER, result="auth_failed"): "0x30"},
         [("15m", [])]),
]


def _render_template(text: str, labels: dict) -> str:
    """The alert's annotation as Prometheus renders it: only {{ $labels.X }} is used here."""
    def sub(mo):
        return labels.get(mo.group(1), "")
    out = re.sub(r"\{\{ \$labels\.([a-zA-Z_][a-zA-Z0-9_]*) \}\}", sub, text)
    assert "{{" not in out, f"unsupported template in {text!r}"
    return out


def case_title(c) -> str:
    return f"{c.alert}: {c.name}"


def promtool_tests() -> dict:
    """One test group per case, in CASES order. Groups carry no `name` field: promtool before
    2.3x (Debian 11's 2.24) rejects it; render_tests writes each case's title as a comment."""
    by_name = {a.name: a for a in ALERTS}
    tests = []
    for c in CASES:
        a = by_name[c.alert]
        checks = []
        for eval_time, alerts in c.evals:
            exp = []
            for labels in alerts:
                full = {"severity": a.severity, **labels}
                exp.append({"exp_labels": full,
                            "exp_annotations": {k: _render_template(v, full) for k, v in a.annotations().items()}})
            checks.append({"eval_time": eval_time, "alertname": a.name, "exp_alerts": exp})
        tests.append({"interval": "1m",
                      "input_series": [{"series": k, "values": v} for k, v in c.series.items()],
                      "alert_rule_test": checks})
    return {"rule_files": ["../callerid.yml"], "evaluation_interval": "1m", "tests": tests}


def render_tests() -> str:
    titles = iter(case_title(c) for c in CASES)
    lines = []
    for line in to_yaml(promtool_tests()).splitlines(keepends=True):
        if line.startswith("  - interval:"):   # each test group's first line
            lines.append(f"  # {next(titles)}\n")
        lines.append(line)
    return ("# Generated by `.venv/bin/python3 -m callerid.dashboards.build` from dashboards/alert_cases.py: "
            "edit there.\n"
            "# Run: promtool test rules dashboards/alerts/tests/callerid_test.yml\n"
            + "".join(lines))
