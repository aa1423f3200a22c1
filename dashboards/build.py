"""Generate the Grafana dashboards and Prometheus alert rules in dashboards/ (run after editing).

    .venv/bin/python3 -m callerid.dashboards.build          # rewrite the generated files
    .venv/bin/python3 -m callerid.dashboards.build --check  # exit 1 if a file is stale

The JSON and YAML are committed, because Grafana and Prometheus read them as they are;
tests/unit/test_dashboards.py and test_alert_rules.py fail when they differ from what
this generates. Metric names come from tracer/metrics.py and adopter/metrics.py only.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

from callerid.adopter import policy
from callerid.adopter.metrics import RPC_FAILED_OUTCOMES

from . import alert_cases, rules
from .grafana import (
    Layout,
    by_node,
    dashboard,
    datasource_var,
    gauge,
    instance_var,
    job_var,
    m,
    override_color,
    quantiles,
    rate,
    row,
    stat,
    table,
    target,
    timeseries,
)

HERE = Path(__file__).resolve().parent

# Decisions made because nothing could be checked (policy.generic_failure): the hook's
# action_generic_failure applied. daemon_unreachable and deadline are decided by the hook
# itself and never reach the daemon's counters (see docs/OPERATIONS.md, blind spots).
GENERIC = "|".join(policy.GENERIC_FAILURE_REASONS)
# Adopter-side RPC outcomes that are failures; found_job, no_job and not_found are answers.
RPC_FAILED = "|".join(RPC_FAILED_OUTCOMES)
# Tracer-side results worth a colour: someone asked what they may not see, or spoke garbage.
# The map of open connections: its fill is what matters (closed ones have their own map).
OPEN_T = m("callerid_tracked_connections", 'state="open"')
OPEN_C = m("callerid_map_capacity_connections", 'state="open"')
TRACER_ALARMING = {"denied": "orange", "bad_frame": "purple", "auth_failed": "red", "replayed": "dark-red",
                   "internal_error": "red", "busy": "yellow", "timeout": "yellow",
                   "abandoned": "red"}

NODE_LINK = [{"title": "Open the node dashboard for ${__data.fields.node}",
              "url": "/d/callerid-node/callerid-node?${datasource:queryparam}&${job:queryparam}"
                     "&var-instance=${__data.fields.node}&${__url_time_range}"}]


def _ratio(num: str, den: str, by: str = "") -> str:
    """num/den over $__rate_interval; the ratio is absent (not NaN) while den is zero."""
    grp = f" by ({by})" if by else ""
    return f"sum{grp} ({num}) / (sum{grp} ({den}) > 0)"


def _per_min(expr_rate: str, by: str = "") -> str:
    grp = f" by ({by})" if by else ""
    return f"60 * sum{grp} ({expr_rate})"


# ---------------------------------------------------------------------------------------
# Panels shared by both dashboards (the node dashboard splits them by instance).

def _decisions_by_verdict(by=""):
    b = f"{by}, verdict" if by else "verdict"
    return timeseries(
        "Login decisions by verdict",
        "ssh logins the adopter decided, per minute, by verdict: adopt (moved into a job), allow "
        "(let in, not adopted), deny (refused), ignore (no opinion, the rest of the PAM stack decides).",
        "reqpm", [target(_per_min(rate("callerid_adopter_decisions_total"), b),
                         f"{{{{{by}}}}} {{{{verdict}}}}" if by else "{{verdict}}")],
        stack=True, overrides=[override_color("deny", "red"), override_color("adopt", "green"),
                               override_color("allow", "yellow"), override_color("ignore", "blue")])


def _decisions_by_reason(by=""):
    b = f"{by}, verdict, reason" if by else "verdict, reason"
    return timeseries(
        "Login decisions by reason",
        "The same decisions split by reason (the reason= field of the adopter's log line; every reason "
        "is explained in docs/DECISIONS.md). single_job and callerid are the healthy adoptions.",
        "reqpm", [target(_per_min(rate("callerid_adopter_decisions_total"), b),
                         (f"{{{{{by}}}}} " if by else "") + "{{verdict}}: {{reason}}")],
        stack=True)


def _decision_latency(by=""):
    return timeseries(
        "Decision latency",
        "Time from the hook's request to the daemon's reply, p50/p95/p99 over $__rate_interval. "
        "Single-job adoptions take about a millisecond; logins that need the callerid RPC add its "
        "round trip. The hook gives up after deadline_seconds (default 5 s).",
        "s", quantiles("callerid_adopter_decision_duration_seconds_bucket", by))


def _adoptions(by=""):
    b = f"{by}, result" if by else "result"
    return timeseries(
        "Adoptions by result",
        "Attempts to write an sshd pid into a job's extern-step cgroups, per minute. job_gone: the job "
        "ended meanwhile; permission and io: the cgroup write failed (see the adopter's log).",
        "cpm", [target(_per_min(rate("callerid_adopter_adoptions_total"), b),
                       f"{{{{{by}}}}} {{{{result}}}}" if by else "{{result}}")],
        stack=True, overrides=[override_color("success", "green"), override_color("job_gone", "yellow"),
                               override_color("permission", "red"), override_color("io", "dark-red")])


def _hook_requests(by=""):
    b = f"{by}, result" if by else "result"
    return timeseries(
        "Hook requests by result",
        "Requests on the adopter's unix socket, per minute. Anything but ok never reached a decision: "
        "not_root (caller not uid 0), bad_peer (hook's parent is not sshd), bad_request, timeout "
        "(the hook did not finish sending), internal_error.",
        "reqpm", [target(_per_min(rate("callerid_adopter_hook_requests_total"), b),
                         f"{{{{{by}}}}} {{{{result}}}}" if by else "{{result}}")],
        stack=True, overrides=[override_color("ok", "green")])


def _security_events():
    return timeseries(
        "Security events",
        "Logins whose connection came from another user's job on this node (a possible escape "
        "attempt), counted per $__rate_interval. Never adopted into that job; each one is also a "
        "'SECURITY possible escape attempt' line in the adopter's log. Normal is no bars at all.",
        "short", [target(f"sum by (instance, kind) "
                         f"(increase({m('callerid_adopter_security_events_total')}[$__rate_interval]))",
                         "{{instance}} {{kind}}")],
        bars=True, calcs=("sum", "max"))


def _adopter_rpc_outcomes(by=""):
    b = f"{by}, outcome" if by else "outcome"
    return timeseries(
        "RPC outcomes (adopter side)",
        "callerid RPCs the adopters made to source nodes, per minute, by outcome. found_job, no_job "
        "and not_found are answers; connect, timeout, refused, bad_reply, auth and munge are failures "
        "(the login then falls to action_unknown); no_socket means the sshd's TCP socket was not "
        "found and no RPC was sent.",
        "reqpm", [target(_per_min(rate("callerid_adopter_rpc_requests_total"), b),
                         f"{{{{{by}}}}} {{{{outcome}}}}" if by else "{{outcome}}")],
        stack=True, overrides=[override_color("found_job", "green")])


def _adopter_rpc_latency(by=""):
    return timeseries(
        "RPC latency (adopter side)",
        "Round trip of the callerid RPC as the adopter sees it (connect, MUNGE both ways, the tracer's "
        "lookup), p50/p95/p99. Failures are included at the time they took to fail; rpc_timeout_seconds "
        "(default 2 s) caps it.",
        "s", quantiles("callerid_adopter_rpc_duration_seconds_bucket", by))


def _tracer_rpc_results(by=""):
    b = f"{by}, result" if by else "result"
    return timeseries(
        "RPC requests by result (tracer)",
        "callerid RPC requests the tracers answered, per minute, by result. denied: the asker may not "
        "see this connection (answered like not_found); bad_frame and unsupported_version: garbage or a "
        "wrong client; auth_failed and replayed: MUNGE rejected the credential; busy: no worker free "
        "within the request's deadline; timeout: the header or the frame did not arrive in time; "
        "abandoned: no answer by the deadline (munged hung?).",
        "reqpm", [target(_per_min(rate("callerid_rpc_requests_total"), b),
                         f"{{{{{by}}}}} {{{{result}}}}" if by else "{{result}}")],
        stack=True, overrides=[override_color("found", "green"), override_color("not_found", "blue")]
        + [override_color(k, v) for k, v in TRACER_ALARMING.items()])


def _tracer_rpc_latency(by=""):
    return timeseries(
        "RPC latency (tracer)",
        "Time the tracer spends on one request (MUNGE decode, lookup, MUNGE encode), p50/p95/p99. Map "
        "answers take well under a millisecond plus munged's round trips; a /proc fallback scan takes "
        "tens to hundreds of milliseconds on a busy node.",
        "s", quantiles("callerid_rpc_request_duration_seconds_bucket", by))


def _fallback_ratio():
    return timeseries(
        "Fallback ratio by node",
        "Share of tracer lookups that had to scan sock_diag + /proc instead of answering from the BPF "
        "map. Near 0 is normal with a loaded probe; 1 means the node runs without BPF (probe backend "
        "none).",
        "percentunit",
        [target(_ratio(rate("callerid_fallback_lookups_total"), rate("callerid_lookups_total"), "instance"),
                "{{instance}}")],
        max_=1, threshold=0.2)


def _lookups_by_source(by=""):
    b = f"{by}, source" if by else "source"
    return timeseries(
        "Lookups by source",
        "Tracer lookups per minute by what answered: bpf (the connection map), proc (sock_diag + /proc "
        "fallback), none (nothing found: the connection is unknown or already gone).",
        "reqpm", [target(_per_min(rate("callerid_lookups_total"), b),
                         f"{{{{{by}}}}} {{{{source}}}}" if by else "{{source}}")],
        stack=True, overrides=[override_color("bpf", "green"), override_color("proc", "orange"),
                               override_color("none", "blue")])


def _map_fill_by_node():
    return timeseries(
        "Map fill by node",
        "Entries in the map of open connections divided by its capacity (max_connections). The map "
        "is LRU: near 100% the least recently used entries are evicted silently and their connections "
        "are answered only by the slow /proc fallback. Closed connections have a map of their own "
        "and do not count here. The alert fires at 90%.",
        "percentunit",
        [target(f"sum by (instance) ({OPEN_T}) "
                f"/ sum by (instance) ({OPEN_C})", "{{instance}}")],
        max_=1, threshold=0.9)


def _tracked_connections(by=""):
    b = f"{by}, state" if by else "state"
    return timeseries(
        "Tracked connections and map capacity",
        "Entries in the connection maps at the last sweep, by map (open; closed, kept for the grace "
        "period), against each map's capacity (max_connections, max_closed_connections). A full "
        "closed map only shortens the grace of the oldest closed entries. Summed over the selected nodes.",
        "short",
        [target(f"sum by ({b}) ({m('callerid_tracked_connections')})",
                f"{{{{{by}}}}} {{{{state}}}}" if by else "{{state}}", "A"),
         target(f"sum by ({b}) ({m('callerid_map_capacity_connections')})",
                f"{{{{{by}}}}} {{{{state}}}} capacity" if by else "{{state}} capacity", "B")],
        overrides=[override_color("open capacity", "red"), override_color("closed capacity", "orange")])


def _bpf_events(by=""):
    b = f"{by}, event" if by else "event"
    return timeseries(
        "BPF events",
        "What the kernel probe counted, per minute: connect (owner captured), established (map entry "
        "written), closed, connect_failed, pending_miss (a connection became established without a "
        "captured owner) and update_failed (a BPF map update returned an error).",
        "cpm", [target(_per_min(rate("callerid_bpf_events_total"), b),
                       f"{{{{{by}}}}} {{{{event}}}}" if by else "{{event}}")],
        overrides=[override_color("update_failed", "red"), override_color("pending_miss", "orange")])


def _sweeper_failures():
    return timeseries(
        "Sweeper failures by node",
        "Sweeper passes that raised an error, per minute. A failing sweeper leaves closed connections "
        "in the map until the LRU evicts them. Normal is a flat zero.",
        "cpm", [target(_per_min(rate("callerid_sweeper_failures_total"), "instance"), "{{instance}}")])


# ---------------------------------------------------------------------------------------

def overview() -> dict:
    L = Layout()
    L.add(row("Logins (adopter)"))
    decisions = rate("callerid_adopter_decisions_total")
    L.add(stat("Login decisions per minute",
               "ssh logins decided per minute on the selected nodes (all verdicts).",
               "reqpm", [target(_per_min(decisions))]), 4, 4)
    L.add(stat("Denial ratio",
               "Share of login decisions that refused the login. no_jobs denials (users without a job on "
               "the node) are expected; see the reason panel for the rest.",
               "percentunit", [target(_ratio(rate("callerid_adopter_decisions_total", 'verdict="deny"'), decisions))],
               steps=[(0.2, "orange"), (0.5, "red")]), 4, 4)
    L.add(stat("Generic-failure ratio",
               "Share of login decisions made without being able to check anything "
               "(action_generic_failure): unknown user or an internal error in the adopter.",
               "percentunit",
               [target(_ratio(rate("callerid_adopter_decisions_total", f'reason=~"{GENERIC}"'), decisions))],
               steps=[(0.01, "orange"), (0.05, "red")]), 4, 4)
    L.add(stat("Adoption failure ratio",
               "Share of attempts to move an sshd into a job's cgroups that failed.",
               "percentunit",
               [target(_ratio(rate("callerid_adopter_adoptions_total", 'result!="success"'),
                              rate("callerid_adopter_adoptions_total")))],
               steps=[(0.05, "orange"), (0.1, "red")]), 4, 4)
    L.add(stat("Source RPC failure ratio",
               "Share of the adopters' callerid RPCs that got no answer (connect, timeout, refused, "
               "bad reply, auth, munge, no socket).",
               "percentunit",
               [target(_ratio(rate("callerid_adopter_rpc_requests_total", f'outcome=~"{RPC_FAILED}"'),
                              rate("callerid_adopter_rpc_requests_total")))],
               steps=[(0.05, "orange"), (0.2, "red")]), 4, 4)
    L.add(stat("Security events since adopter start",
               "Possible escape attempts counted by the adopters since they started (the counter resets "
               "on restart). Anything above zero deserves a look at the adopter's log.",
               "none", [target(f"sum({m('callerid_adopter_security_events_total')}) or vector(0)")],
               steps=[(1, "red")], graph=False, decimals=0), 4, 4)
    L.add(_decisions_by_verdict())
    L.add(_decisions_by_reason())
    L.add(timeseries(
        "Audit-mode decisions (what enforce would do)",
        "Logins decided on nodes whose PAM line says mode=audit, per minute, by the verdict enforce mode "
        "would have given. Every one of these logins was let in and none was adopted: read deny here as "
        "'would have been refused'. Switch a node to enforce when this shows only what you expect.",
        "reqpm", [target(_per_min(rate("callerid_adopter_decisions_total", 'mode="audit"'), "verdict, reason"),
                         "{{verdict}} {{reason}}")],
        stack=True, overrides=[override_color("deny", "red"), override_color("adopt", "green")]))
    L.add(_decision_latency())
    L.add(timeseries(
        "Denial and generic-failure ratios",
        "The two ratios above over time. A step in the denial ratio together with no_jobs usually "
        "means job discovery broke (cgroup layout); a step in generic failures means the adopter or "
        "the user database is in trouble.",
        "percentunit",
        [target(_ratio(rate("callerid_adopter_decisions_total", 'verdict="deny"'), decisions), "denied", "A"),
         target(_ratio(rate("callerid_adopter_decisions_total", f'reason=~"{GENERIC}"'), decisions),
                "generic failure", "B")],
        max_=1))
    L.add(_adoptions())
    L.add(_hook_requests())
    L.add(_security_events(), 24, 6)

    L.add(row("callerid RPC seen from the adopters"))
    L.add(_adopter_rpc_outcomes())
    L.add(_adopter_rpc_latency())

    L.add(row("Tracers"))
    L.add(_tracer_rpc_results())
    L.add(_tracer_rpc_latency())
    L.add(_fallback_ratio())
    L.add(_lookups_by_source())
    L.add(_map_fill_by_node())
    L.add(_tracked_connections())
    L.add(stat("Nodes per probe backend",
               "How many tracers run each probe backend (sockstore, fentry, kprobe, tracepoint). none means the "
               "tracer answers from sock_diag + /proc only: slower, and blind to short-lived processes.",
               "none", [target(f"count by (backend) ({m('callerid_probe_backend')} == 1)", "{{backend}}")],
               graph=False, decimals=0), 6, 8)
    L.add(_bpf_events(), 9, 8)
    L.add(_sweeper_failures(), 9, 8)

    L.add(row("Nodes"))
    L.add(table(
        "Nodes",
        "One row per node (instance without its port, so the tracer and the adopter of a node share a "
        "row): login decisions per minute, the tracer's fallback ratio, map fill, probe backend and "
        "RPC requests answered per minute. Click a node to open its dashboard.",
        "short",
        [target(_per_min(by_node(decisions), "node"), ref="A", table=True),
         target(_ratio(by_node(rate("callerid_fallback_lookups_total")), by_node(rate("callerid_lookups_total")),
                       "node"), ref="B", table=True),
         target(f"sum by (node) ({by_node(OPEN_T)}) "
                f"/ sum by (node) ({by_node(OPEN_C)})", ref="C", table=True),
         target(f"max by (node, backend) ({by_node(m('callerid_probe_backend') + ' == 1')})", ref="D", table=True),
         target(_per_min(by_node(rate("callerid_rpc_requests_total")), "node"), ref="E", table=True)],
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
    L.add(_tracked_connections(BY), 9, 8)
    L.add(_bpf_events(BY), 9, 8)
    L.add(timeseries(
        "Sweeper passes and failures",
        "Sweeper passes per minute (every sweep_interval_seconds, default 10 s: about 6/min) and the "
        "passes that raised an error.",
        "cpm", [target(_per_min(rate("callerid_sweeper_runs_total"), BY), "{{instance}} completed", "A"),
                target(_per_min(rate("callerid_sweeper_failures_total"), BY), "{{instance}} failed", "B")],
        overrides=[]), 8, 8)
    L.add(timeseries(
        "Sweeper deletions",
        "Closed connections deleted after their grace period, and open entries the sweeper marked "
        "closed because their socket had vanished (a close the probe missed, e.g. while the tracer "
        "was down), per minute.",
        "cpm", [target(_per_min(rate("callerid_sweeper_deleted_connections_total"), BY),
                       "{{instance}} deleted", "A"),
                target(_per_min(rate("callerid_sweeper_stale_closed_connections_total"), BY),
                       "{{instance}} marked stale", "B")]), 8, 8)
    L.add(timeseries(
        "Sweep duration",
        "Duration of the last sweep. It walks the whole map, so it grows with tracked connections; it "
        "must stay well under sweep_interval_seconds.",
        "s", [target(f"max by (instance) ({m('callerid_sweeper_last_duration_seconds')})", "{{instance}}")]),
        8, 8)

    L.add(row("Tracer: callerid RPC"))
    L.add(_tracer_rpc_results(BY))
    L.add(_tracer_rpc_latency(BY))
    L.add(_lookups_by_source(BY), 8, 8)
    L.add(timeseries(
        "Fallback lookups by reason",
        "Lookups that went to sock_diag + /proc, per minute: map_miss (the probe is loaded but the map "
        "had no entry) or no_bpf (no probe loaded).",
        "reqpm", [target(_per_min(rate("callerid_fallback_lookups_total"), f"{BY}, reason"),
                         "{{instance}} {{reason}}")], stack=True), 8, 8)
    L.add(timeseries(
        "Fallback ratio",
        "Share of lookups that needed the /proc fallback. Near 0 with a loaded probe.",
        "percentunit",
        [target(_ratio(rate("callerid_fallback_lookups_total"), rate("callerid_lookups_total"), BY),
                "{{instance}}")], max_=1, threshold=0.2), 8, 8)
    L.add(timeseries(
        "Owner-exited answers",
        "Map hits whose recorded process had exited or whose pid now belongs to a younger process, per "
        "minute: the answer then says the owner exited instead of naming a wrong job.",
        "cpm", [target(_per_min(rate("callerid_owner_exited_answers_total"), BY), "{{instance}}")]), 12, 8)
    L.add(timeseries(
        "RPC clients connected",
        "RPC connections open on the tracer right now. Waiting ones cost a buffer, not a worker; past "
        "max_rpc_connections_per_peer from one address more are parked unread.",
        "short", [target(f"sum by (instance) ({m('callerid_rpc_clients')})", "{{instance}}")]), 12, 8)

    L.add(row("Adopter"))
    L.add(_decisions_by_verdict(BY))
    L.add(_decisions_by_reason(BY))
    L.add(_decision_latency(BY))
    L.add(_adoptions(BY))
    L.add(_hook_requests(BY))
    L.add(_security_events())
    L.add(_adopter_rpc_outcomes(BY))
    L.add(_adopter_rpc_latency(BY))

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
