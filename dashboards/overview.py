"""The fleet dashboard (callerid-overview.json): every node at once, worst first."""

from __future__ import annotations

from .grafana import (
    Layout,
    by_node,
    dashboard,
    datasource_var,
    instance_var,
    job_var,
    m,
    override_color,
    rate,
    row,
    stat,
    table,
    target,
    timeseries,
)
from .panels import (
    GENERIC,
    OPEN_C,
    OPEN_T,
    RPC_FAILED,
    adopter_rpc_latency,
    adopter_rpc_outcomes,
    adoptions,
    bpf_events,
    decision_latency,
    decisions_by_reason,
    decisions_by_verdict,
    fallback_ratio,
    hook_requests,
    lookups_by_source,
    map_fill_by_node,
    per_min,
    ratio,
    security_events,
    sweeper_failures,
    tracer_rpc_latency,
    tracer_rpc_results,
    tracked_connections,
)

# A node's row in the fleet table opens the node dashboard for it.
NODE_LINK = [{"title": "Open the node dashboard for ${__data.fields.node}",
              "url": "/d/callerid-node/callerid-node?${datasource:queryparam}&${job:queryparam}"
                     "&var-instance=${__data.fields.node}&${__url_time_range}"}]


def overview() -> dict:
    L = Layout()
    L.add(row("Logins (adopter)"))
    decisions = rate("callerid_adopter_decisions_total")
    L.add(stat("Login decisions per minute",
               "ssh logins decided per minute on the selected nodes (all verdicts).",
               "reqpm", [target(per_min(decisions))]), 4, 4)
    L.add(stat("Denial ratio",
               "Share of login decisions that refused the login. no_jobs denials (users without a job on "
               "the node) are expected; see the reason panel for the rest.",
               "percentunit", [target(ratio(rate("callerid_adopter_decisions_total", 'verdict="deny"'), decisions))],
               steps=[(0.2, "orange"), (0.5, "red")]), 4, 4)
    L.add(stat("Generic-failure ratio",
               "Share of login decisions made without being able to check anything "
               "(action_generic_failure): unknown user or an internal error in the adopter.",
               "percentunit",
               [target(ratio(rate("callerid_adopter_decisions_total", f'reason=~"{GENERIC}"'), decisions))],
               steps=[(0.01, "orange"), (0.05, "red")]), 4, 4)
    L.add(stat("Adoption failure ratio",
               "Share of attempts to move an sshd into a job's cgroups that failed.",
               "percentunit",
               [target(ratio(rate("callerid_adopter_adoptions_total", 'result!="success"'),
                              rate("callerid_adopter_adoptions_total")))],
               steps=[(0.05, "orange"), (0.1, "red")]), 4, 4)
    L.add(stat("Source RPC failure ratio",
               "Share of the adopters' callerid RPCs that got no answer (connect, timeout, refused, "
               "bad reply, auth, munge, no socket).",
               "percentunit",
               [target(ratio(rate("callerid_adopter_rpc_requests_total", f'outcome=~"{RPC_FAILED}"'),
                              rate("callerid_adopter_rpc_requests_total")))],
               steps=[(0.05, "orange"), (0.2, "red")]), 4, 4)
    L.add(stat("Security events since adopter start",
               "Possible escape attempts counted by the adopters since they started (the counter resets "
               "on restart). Anything above zero deserves a look at the adopter's log.",
               "none", [target(f"sum({m('callerid_adopter_security_events_total')}) or vector(0)")],
               steps=[(1, "red")], graph=False, decimals=0), 4, 4)
    L.add(decisions_by_verdict())
    L.add(decisions_by_reason())
    L.add(timeseries(
        "Audit-mode decisions (what enforce would do)",
        "Logins decided on nodes whose PAM line says mode=audit, per minute, by the verdict enforce mode "
        "would have given. Every one of these logins was let in and none was adopted: read deny here as "
        "'would have been refused'. Switch a node to enforce when this shows only what you expect.",
        "reqpm", [target(per_min(rate("callerid_adopter_decisions_total", 'mode="audit"'), "verdict, reason"),
                         "{{verdict}} {{reason}}")],
        stack=True, overrides=[override_color("deny", "red"), override_color("adopt", "green")]))
    L.add(decision_latency())
    L.add(timeseries(
        "Denial and generic-failure ratios",
        "The two ratios above over time. A step in the denial ratio together with no_jobs usually "
        "means job discovery broke (cgroup layout); a step in generic failures means the adopter or "
        "the user database is in trouble.",
        "percentunit",
        [target(ratio(rate("callerid_adopter_decisions_total", 'verdict="deny"'), decisions), "denied", "A"),
         target(ratio(rate("callerid_adopter_decisions_total", f'reason=~"{GENERIC}"'), decisions),
                "generic failure", "B")],
        max_=1))
    L.add(adoptions())
    L.add(hook_requests())
    L.add(security_events(), 24, 6)

    L.add(row("callerid RPC seen from the adopters"))
    L.add(adopter_rpc_outcomes())
    L.add(adopter_rpc_latency())

    L.add(row("Tracers"))
    L.add(tracer_rpc_results())
    L.add(tracer_rpc_latency())
    L.add(fallback_ratio())
    L.add(lookups_by_source())
    L.add(map_fill_by_node())
    L.add(tracked_connections())
    L.add(stat("Nodes per probe backend",
               "How many tracers run each probe backend (cookie, sockstore, fentry, kprobe, tracepoint). none means "
               "the tracer answers from sock_diag + /proc only: slower, and blind to short-lived processes.",
               "none", [target(f"count by (backend) ({m('callerid_probe_backend')} == 1)", "{{backend}}")],
               graph=False, decimals=0), 6, 8)
    L.add(bpf_events(), 9, 8)
    L.add(sweeper_failures(), 9, 8)

    L.add(row("Nodes"))
    L.add(table(
        "Nodes",
        "One row per node (instance without its port, so the tracer and the adopter of a node share a "
        "row): login decisions per minute, the tracer's fallback ratio, map fill, probe backend and "
        "RPC requests answered per minute. Click a node to open its dashboard.",
        "short",
        [target(per_min(by_node(decisions), "node"), ref="A", table=True),
         target(ratio(by_node(rate("callerid_fallback_lookups_total")), by_node(rate("callerid_lookups_total")),
                       "node"), ref="B", table=True),
         target(f"sum by (node) ({by_node(OPEN_T)}) "
                f"/ sum by (node) ({by_node(OPEN_C)})", ref="C", table=True),
         target(f"max by (node, backend) ({by_node(m('callerid_probe_backend') + ' == 1')})", ref="D", table=True),
         target(per_min(by_node(rate("callerid_rpc_requests_total")), "node"), ref="E", table=True)],
        columns={
            "Value #A": {"title": "Decisions/min", "unit": "reqpm", "decimals": 2},
            "Value #B": {"title": "Fallback ratio", "unit": "percentunit", "decimals": 1,
                         "steps": [(0.2, "red")]},
            "Value #C": {"title": "Map fill", "unit": "percentunit", "decimals": 1,
                         "steps": [(0.75, "orange"), (0.9, "red")]},
            "backend": {"title": "Probe backend", "unit": "none"},
            "Value #E": {"title": "Tracer RPC/min", "unit": "reqpm", "decimals": 2},
        },
        hide=("Time", "Value #D"),
        order=("node", "Value #A", "Value #B", "Value #C", "backend", "Value #E"),
        links={"node": NODE_LINK}, sort_by="node"), 24, 10)

    return dashboard(
        "callerid-overview", "callerid overview",
        "ssh login adoption (adopter) and connection attribution (tracer) across the cluster. "
        "Panels are explained in docs/OPERATIONS.md.",
        L.panels, [datasource_var(), job_var(), instance_var()],
        [{"asDropdown": False, "icon": "dashboard", "includeVars": True, "keepTime": True,
          "tags": ["callerid"], "targetBlank": False, "title": "callerid", "type": "dashboards"}])
