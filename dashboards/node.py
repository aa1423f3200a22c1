"""The node dashboard (callerid-node.json): one node (or a few) in detail, each panel split by
instance."""

from __future__ import annotations

from .grafana import (
    Layout,
    dashboard,
    datasource_var,
    gauge,
    instance_var,
    job_var,
    m,
    rate,
    row,
    stat,
    target,
    timeseries,
)
from .panels import (
    OPEN_C,
    OPEN_T,
    adopter_rpc_latency,
    adopter_rpc_outcomes,
    adoptions,
    bpf_events,
    decision_latency,
    decisions_by_reason,
    decisions_by_verdict,
    hook_requests,
    lookups_by_source,
    per_min,
    ratio,
    security_events,
    tracer_rpc_latency,
    tracer_rpc_results,
    tracked_connections,
)


def node() -> dict:
    L = Layout()
    BY = "instance"  # split every panel by instance
    L.add(row("Daemons"))
    L.add(stat("Daemon uptime",
               "Time since each callerid process on this node started (tracer and adopter).",
               "s", [target(f"time() - max by (job, instance) ({m('process_start_time_seconds')})",
                            "{{job}} {{instance}}")], graph=False), 6, 4)
    L.add(stat("Version",
               "callerid version each daemon reports (callerid_build_info).",
               "none", [target(f"max by (job, instance, version) ({m('callerid_build_info')})",
                               "{{job}}: {{version}}")], text_mode="name", graph=False), 6, 4)
    L.add(stat("Probe backend",
               "The kernel probe the tracer loaded at start. none: no BPF, every answer comes from the "
               "sock_diag + /proc fallback.",
               "none", [target(f"max by (instance, backend) ({m('callerid_probe_backend')}) == 1",
                               "{{backend}}")], text_mode="name", graph=False), 4, 4)
    L.add(stat("Probe load time",
               "Time the tracer took to compile, load, attach and self-test its probe at start "
               "(BCC compiles with clang: seconds are normal).",
               "s", [target(f"max by (instance) ({m('callerid_probe_load_duration_seconds')})")],
               graph=False), 4, 4)
    L.add(stat("Start-up reconcile",
               "Whether the tracer's start-up reconcile (adding connections that existed before it "
               "started) completed, and how many connections it added. 'not run or failed' with a zero "
               "duration means it did not run (no probe, or reconcile disabled).",
               "none",
               [target(f"max by (instance) ({m('callerid_reconcile_last_success')})", "{{instance}} result", "A"),
                target(f"max by (instance) ({m('callerid_reconcile_last_duration_seconds')})",
                       "{{instance}} duration", "B"),
                target(f"sum by (instance) ({m('callerid_reconcile_inserted_connections_total')})",
                       "{{instance}} connections added", "C")],
               graph=False, decimals=0,
               overrides=[
                   {"matcher": {"id": "byFrameRefID", "options": "A"},
                    "properties": [{"id": "mappings", "value": [
                        {"type": "value", "options": {"1": {"text": "completed", "color": "green"},
                                                      "0": {"text": "not run or failed", "color": "orange"}}}]}]},
                   {"matcher": {"id": "byFrameRefID", "options": "B"},
                    "properties": [{"id": "unit", "value": "s"}, {"id": "decimals", "value": 2}]},
               ]), 4, 4)

    L.add(row("Tracer: connection map"))
    L.add(gauge("Map fill",
                "Entries in the map of open connections divided by its capacity (max_connections). The "
                "map is LRU: near 100% the least recently used entries are evicted and their connections "
                "are answered only by the slow /proc fallback. Closed connections do not count here.",
                "percentunit",
                [target(f"sum by (instance) ({OPEN_T}) "
                        f"/ sum by (instance) ({OPEN_C})", "{{instance}}")],
                max_=1, steps=[(0.75, "orange"), (0.9, "red")]), 6, 8)
    L.add(tracked_connections(BY), 9, 8)
    L.add(bpf_events(BY), 9, 8)
    L.add(timeseries(
        "Sweeper passes and failures",
        "Sweeper passes per minute (every sweep_interval_seconds, default 10 s: about 6/min) and the "
        "passes that raised an error.",
        "cpm", [target(per_min(rate("callerid_sweeper_runs_total"), BY), "{{instance}} completed", "A"),
                target(per_min(rate("callerid_sweeper_failures_total"), BY), "{{instance}} failed", "B")],
        overrides=[]), 8, 8)
    L.add(timeseries(
        "Sweeper deletions",
        "Closed connections deleted after their grace period, and open entries the sweeper marked "
        "closed because their socket had vanished (a close the probe missed, e.g. while the tracer "
        "was down), per minute.",
        "cpm", [target(per_min(rate("callerid_sweeper_deleted_connections_total"), BY),
                       "{{instance}} deleted", "A"),
                target(per_min(rate("callerid_sweeper_stale_closed_connections_total"), BY),
                       "{{instance}} marked stale", "B")]), 8, 8)
    L.add(timeseries(
        "Sweep duration",
        "Duration of the last sweep. It walks the whole map, so it grows with tracked connections; it "
        "must stay well under sweep_interval_seconds.",
        "s", [target(f"max by (instance) ({m('callerid_sweeper_last_duration_seconds')})", "{{instance}}")]),
        8, 8)

    L.add(row("Tracer: callerid RPC"))
    L.add(tracer_rpc_results(BY))
    L.add(tracer_rpc_latency(BY))
    L.add(lookups_by_source(BY), 8, 8)
    L.add(timeseries(
        "Fallback lookups by reason",
        "Lookups that went to sock_diag + /proc, per minute: map_miss (the probe is loaded but the map "
        "had no entry) or no_bpf (no probe loaded).",
        "reqpm", [target(per_min(rate("callerid_fallback_lookups_total"), f"{BY}, reason"),
                         "{{instance}} {{reason}}")], stack=True), 8, 8)
    L.add(timeseries(
        "Fallback ratio",
        "Share of lookups that needed the /proc fallback. Near 0 with a loaded probe.",
        "percentunit",
        [target(ratio(rate("callerid_fallback_lookups_total"), rate("callerid_lookups_total"), BY),
                "{{instance}}")], max_=1, threshold=0.2), 8, 8)
    L.add(timeseries(
        "Owner-exited answers",
        "Map hits whose recorded process had exited or whose pid now belongs to a younger process, per "
        "minute: the answer then says the owner exited instead of naming a wrong job.",
        "cpm", [target(per_min(rate("callerid_owner_exited_answers_total"), BY), "{{instance}}")]), 12, 8)
    L.add(timeseries(
        "RPC clients connected",
        "RPC connections open on the tracer right now. Waiting ones cost a buffer, not a worker; past "
        "max_rpc_connections_per_peer from one address the longest-waiting is closed.",
        "short", [target(f"sum by (instance) ({m('callerid_rpc_clients')})", "{{instance}}")]), 12, 8)

    L.add(row("Adopter"))
    L.add(decisions_by_verdict(BY))
    L.add(decisions_by_reason(BY))
    L.add(decision_latency(BY))
    L.add(adoptions(BY))
    L.add(hook_requests(BY))
    L.add(security_events())
    L.add(adopter_rpc_outcomes(BY))
    L.add(adopter_rpc_latency(BY))

    L.add(row("Processes"))
    L.add(timeseries(
        "Resident memory",
        "Resident set size of each callerid daemon.",
        "bytes", [target(f"max by (job, instance) ({m('process_resident_memory_bytes')})", "{{job}}")]), 8, 8)
    L.add(timeseries(
        "CPU usage",
        "CPU time used by each callerid daemon, in cores (100% = one core busy).",
        "percentunit", [target(f"sum by (job, instance) ({rate('process_cpu_seconds_total')})", "{{job}}")]),
        8, 8)
    L.add(timeseries(
        "Open file descriptors",
        "Open file descriptors of each daemon against its limit. The tracer holds one per RPC client "
        "and the BPF maps; a steady climb is a leak.",
        "short", [target(f"max by (job, instance) ({m('process_open_fds')})", "{{job}} open", "A"),
                  target(f"max by (job, instance) ({m('process_max_fds')})", "{{job}} limit", "B")]), 8, 8)

    return dashboard(
        "callerid-node", "callerid node",
        "One node (or a few) in detail: tracer map, sweeper, RPC and fallback; adopter decisions, "
        "adoptions and RPCs; process resources. Panels are explained in docs/OPERATIONS.md.",
        L.panels, [datasource_var(), job_var(), instance_var(include_all=False)],
        [{"asDropdown": False, "icon": "dashboard", "includeVars": True, "keepTime": True,
          "tags": ["callerid"], "targetBlank": False, "title": "callerid", "type": "dashboards"}])
