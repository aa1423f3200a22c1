"""What both dashboards show: the shared panels (the node dashboard splits them by
instance), the label sets they single out, and the PromQL shapes they use."""

from __future__ import annotations

from callerid.adopter import policy
from callerid.adopter.metrics import RPC_FAILED_OUTCOMES

from .grafana import m, override_color, quantiles, rate, target, timeseries

# Decisions made because nothing could be checked (policy.generic_failure): the hook's
# action_generic_failure applied. daemon_unreachable and deadline are decided by the hook
# itself and never reach the daemon's counters (see docs/OPERATIONS.md, blind spots).
GENERIC = "|".join(policy.GENERIC_FAILURE_REASONS)
# Adopter-side RPC outcomes that are failures; found_job, no_job and not_found are answers.
RPC_FAILED = "|".join(RPC_FAILED_OUTCOMES)
# The map of open connections: its fill is what matters (closed ones have their own map).
OPEN_T = m("callerid_tracked_connections", 'state="open"')
OPEN_C = m("callerid_map_capacity_connections", 'state="open"')
# Tracer-side results worth a colour: someone asked what they may not see, or spoke garbage.
TRACER_ALARMING = {"denied": "orange", "bad_frame": "purple", "auth_failed": "red", "replayed": "dark-red",
                   "internal_error": "red", "busy": "yellow", "timeout": "yellow",
                   "abandoned": "red"}


def ratio(num: str, den: str, by: str = "") -> str:
    """num/den over $__rate_interval; the ratio is absent (not NaN) while den is zero."""
    grp = f" by ({by})" if by else ""
    return f"sum{grp} ({num}) / (sum{grp} ({den}) > 0)"


def per_min(expr_rate: str, by: str = "") -> str:
    grp = f" by ({by})" if by else ""
    return f"60 * sum{grp} ({expr_rate})"


# ---------------------------------------------------------------------------------------
# Panels shared by both dashboards (the node dashboard splits them by instance).

def decisions_by_verdict(by=""):
    b = f"{by}, verdict" if by else "verdict"
    return timeseries(
        "Login decisions by verdict",
        "ssh logins the adopter decided, per minute, by verdict: adopt (moved into a job), allow "
        "(let in, not adopted), deny (refused), ignore (no opinion, the rest of the PAM stack decides).",
        "reqpm", [target(per_min(rate("callerid_adopter_decisions_total"), b),
                         f"{{{{{by}}}}} {{{{verdict}}}}" if by else "{{verdict}}")],
        stack=True, overrides=[override_color("deny", "red"), override_color("adopt", "green"),
                               override_color("allow", "yellow"), override_color("ignore", "blue")])


def decisions_by_reason(by=""):
    b = f"{by}, verdict, reason" if by else "verdict, reason"
    return timeseries(
        "Login decisions by reason",
        "The same decisions split by reason (the reason= field of the adopter's log line; every reason "
        "is explained in docs/DECISIONS.md). single_job and callerid are the healthy adoptions.",
        "reqpm", [target(per_min(rate("callerid_adopter_decisions_total"), b),
                         (f"{{{{{by}}}}} " if by else "") + "{{verdict}}: {{reason}}")],
        stack=True)


def decision_latency(by=""):
    return timeseries(
        "Decision latency",
        "Time from the hook's request to the daemon's reply, p50/p95/p99 over $__rate_interval. "
        "Single-job adoptions take about a millisecond; logins that need the callerid RPC add its "
        "round trip. The hook gives up after deadline_seconds (default 5 s).",
        "s", quantiles("callerid_adopter_decision_duration_seconds_bucket", by))


def adoptions(by=""):
    b = f"{by}, result" if by else "result"
    return timeseries(
        "Adoptions by result",
        "Attempts to write an sshd pid into a job's extern-step cgroups, per minute. job_gone: the job "
        "ended meanwhile; permission and io: the cgroup write failed (see the adopter's log).",
        "cpm", [target(per_min(rate("callerid_adopter_adoptions_total"), b),
                       f"{{{{{by}}}}} {{{{result}}}}" if by else "{{result}}")],
        stack=True, overrides=[override_color("success", "green"), override_color("job_gone", "yellow"),
                               override_color("permission", "red"), override_color("io", "dark-red")])


def hook_requests(by=""):
    b = f"{by}, result" if by else "result"
    return timeseries(
        "Hook requests by result",
        "Requests on the adopter's unix socket, per minute. Anything but ok never reached a decision: "
        "not_root (caller not uid 0), bad_peer (hook's parent is not sshd), bad_request, timeout "
        "(the hook did not finish sending), internal_error.",
        "reqpm", [target(per_min(rate("callerid_adopter_hook_requests_total"), b),
                         f"{{{{{by}}}}} {{{{result}}}}" if by else "{{result}}")],
        stack=True, overrides=[override_color("ok", "green")])


def security_events():
    return timeseries(
        "Security events",
        "Logins whose connection came from another user's job on this node (a possible escape "
        "attempt), counted per $__rate_interval. Never adopted into that job; each one is also a "
        "'SECURITY possible escape attempt' line in the adopter's log. Normal is no bars at all.",
        "short", [target(f"sum by (instance, kind) "
                         f"(increase({m('callerid_adopter_security_events_total')}[$__rate_interval]))",
                         "{{instance}} {{kind}}")],
        bars=True, calcs=("sum", "max"))


def adopter_rpc_outcomes(by=""):
    b = f"{by}, outcome" if by else "outcome"
    return timeseries(
        "RPC outcomes (adopter side)",
        "callerid RPCs the adopters made to source nodes, per minute, by outcome. found_job, no_job "
        "and not_found are answers; connect, timeout, refused, bad_reply, auth and munge are failures "
        "(the login then falls to action_unknown); no_socket means the sshd's TCP socket was not "
        "found and no RPC was sent.",
        "reqpm", [target(per_min(rate("callerid_adopter_rpc_requests_total"), b),
                         f"{{{{{by}}}}} {{{{outcome}}}}" if by else "{{outcome}}")],
        stack=True, overrides=[override_color("found_job", "green")])


def adopter_rpc_latency(by=""):
    return timeseries(
        "RPC latency (adopter side)",
        "Round trip of the callerid RPC as the adopter sees it (connect, MUNGE both ways, the tracer's "
        "lookup), p50/p95/p99. Failures are included at the time they took to fail; rpc_timeout_seconds "
        "(default 2 s) caps it.",
        "s", quantiles("callerid_adopter_rpc_duration_seconds_bucket", by))


def tracer_rpc_results(by=""):
    b = f"{by}, result" if by else "result"
    return timeseries(
        "RPC requests by result (tracer)",
        "callerid RPC requests the tracers answered, per minute, by result. denied: the asker may not "
        "see this connection (answered like not_found); bad_frame and unsupported_version: garbage or a "
        "wrong client; auth_failed and replayed: MUNGE rejected the credential; busy: no worker free "
        "within the request's deadline; timeout: the header or the frame did not arrive in time; "
        "abandoned: no answer by the deadline (munged hung?).",
        "reqpm", [target(per_min(rate("callerid_rpc_requests_total"), b),
                         f"{{{{{by}}}}} {{{{result}}}}" if by else "{{result}}")],
        stack=True, overrides=[override_color("found", "green"), override_color("not_found", "blue")]
        + [override_color(k, v) for k, v in TRACER_ALARMING.items()])


def tracer_rpc_latency(by=""):
    return timeseries(
        "RPC latency (tracer)",
        "Time the tracer spends on one request (MUNGE decode, lookup, MUNGE encode), p50/p95/p99. Map "
        "answers take well under a millisecond plus munged's round trips; a /proc fallback scan takes "
        "tens to hundreds of milliseconds on a busy node.",
        "s", quantiles("callerid_rpc_request_duration_seconds_bucket", by))


def fallback_ratio():
    return timeseries(
        "Fallback ratio by node",
        "Share of tracer lookups that had to scan sock_diag + /proc instead of answering from the BPF "
        "map. Near 0 is normal with a loaded probe; 1 means the node runs without BPF (probe backend "
        "none).",
        "percentunit",
        [target(ratio(rate("callerid_fallback_lookups_total"), rate("callerid_lookups_total"), "instance"),
                "{{instance}}")],
        max_=1, threshold=0.2)


def lookups_by_source(by=""):
    b = f"{by}, source" if by else "source"
    return timeseries(
        "Lookups by source",
        "Tracer lookups per minute by what answered: bpf (the connection map), proc (sock_diag + /proc "
        "fallback), none (nothing found: the connection is unknown or already gone).",
        "reqpm", [target(per_min(rate("callerid_lookups_total"), b),
                         f"{{{{{by}}}}} {{{{source}}}}" if by else "{{source}}")],
        stack=True, overrides=[override_color("bpf", "green"), override_color("proc", "orange"),
                               override_color("none", "blue")])


def map_fill_by_node():
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


def tracked_connections(by=""):
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


def bpf_events(by=""):
    b = f"{by}, event" if by else "event"
    return timeseries(
        "BPF events",
        "What the kernel probe counted, per minute: connect (owner captured), established (map entry "
        "written), closed, connect_failed, pending_miss (a connection became established without a "
        "captured owner) and update_failed (a BPF map update returned an error).",
        "cpm", [target(per_min(rate("callerid_bpf_events_total"), b),
                       f"{{{{{by}}}}} {{{{event}}}}" if by else "{{event}}")],
        overrides=[override_color("update_failed", "red"), override_color("pending_miss", "orange")])


def sweeper_failures():
    return timeseries(
        "Sweeper failures by node",
        "Sweeper passes that raised an error, per minute. A failing sweeper leaves closed connections "
        "in the map until the LRU evicts them. Normal is a flat zero.",
        "cpm", [target(per_min(rate("callerid_sweeper_failures_total"), "instance"), "{{instance}}")])
