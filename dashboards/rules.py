"""Prometheus alerting rules for callerid, written as YAML (their promtool tests: alert_cases.py).

dashboards/build.py writes dashboards/alerts/callerid.yml (loaded by Prometheus) from the
data here, and dashboards/alerts/tests/callerid_test.yml (`promtool test rules`) from
dashboards/alert_cases.py.
The test file sits in a subdirectory on purpose: Prometheus configs (the Vagrant
controller's among them) load dashboards/alerts/*.yml as rule files, and a promtool test
file there would stop Prometheus from loading its rules.

Expected scrape job names: callerid-tracer (port 9828) and callerid-adopter (port 9829).
The up-alerts match any job name containing callerid and tracer/adopter, so
site prefixes (cluster1-callerid-tracer) keep working.
"""

from __future__ import annotations

from dataclasses import dataclass

from callerid.adopter import policy
from callerid.adopter.metrics import RPC_FAILED_OUTCOMES

TRACER_JOB_RE = ".*callerid.*tracer.*"
ADOPTER_JOB_RE = ".*callerid.*adopter.*"
GENERIC = "|".join(policy.GENERIC_FAILURE_REASONS)
HOOK_FAILED = "timeout|internal_error|bad_request|bad_peer"
RPC_FAILED = "|".join(RPC_FAILED_OUTCOMES)
RUNBOOK = "docs/OPERATIONS.md#{anchor}"


@dataclass
class Alert:
    name: str
    expr: str
    for_: str
    severity: str  # page: wake someone; warn: look during working hours
    summary: str
    description: str
    group: str

    @property
    def anchor(self) -> str:
        return self.name.lower()  # GitHub's anchor for the heading "### <name>"

    def annotations(self) -> dict:
        return {"summary": self.summary, "description": self.description,
                "runbook_url": RUNBOOK.format(anchor=self.anchor)}


def _dedent(text: str) -> str:
    lines = text.strip("\n").split("\n")
    pad = min(len(x) - len(x.lstrip()) for x in lines if x.strip())
    return "\n".join(x[pad:].rstrip() for x in lines)


ALERTS = [
    # --- availability --------------------------------------------------------------------
    Alert("CallerIDTracerDown", f'up{{job=~"{TRACER_JOB_RE}"}} == 0', "5m", "warn",
          "callerid tracer on {{ $labels.instance }} is not being scraped",
          """\
          Prometheus cannot scrape the callerid tracer on {{ $labels.instance }} (job {{ $labels.job }}).
          If the daemon is down, adopters asking this node which job opened a connection get no
          answer and fall back to action_unknown (default: adopt into the user's newest job).
          Check `systemctl status callerid-tracer` and `journalctl -u callerid-tracer` on the node.""",
          "callerid-availability"),
    Alert("CallerIDAdopterDown", f'up{{job=~"{ADOPTER_JOB_RE}"}} == 0', "5m", "page",
          "callerid adopter on {{ $labels.instance }} is not being scraped",
          """\
          Prometheus cannot scrape the callerid adopter on {{ $labels.instance }} (job {{ $labels.job }}).
          If the daemon is down, every ssh login to this node gets action_generic_failure from the
          PAM hook after its deadline: with the default (ignore) sessions land outside any job, with
          deny nobody can log in. Check `systemctl status callerid-adopter` on the node.""",
          "callerid-availability"),
    # --- adopter (destination side) ------------------------------------------------------------
    Alert("CallerIDAdoptionFailures",
          """\
          sum by (job, instance) (increase(callerid_adopter_adoptions_total{result!="success"}[15m])) >= 3
          and
          sum by (job, instance) (increase(callerid_adopter_adoptions_total{result!="success"}[15m]))
            / sum by (job, instance) (increase(callerid_adopter_adoptions_total[15m])) > 0.1""",
          "5m", "warn",
          "ssh sessions on {{ $labels.instance }} cannot be moved into their jobs",
          """\
          More than 10% of the attempts to write sshd pids into a job's extern-step cgroups on
          {{ $labels.instance }} failed in the last 15 minutes (at least 3). Those sessions run outside
          the job (action_adopt_failure=allow) or were refused (deny). See the result label on the
          Adoptions panel and the adopter's log lines "adopting process ... failed".""",
          "callerid-adopter"),
    Alert("CallerIDDenialsSpiking",
          """\
          sum by (job, instance) (increase(callerid_adopter_decisions_total{verdict="deny"}[15m])) >= 10
          and
          sum by (job, instance) (increase(callerid_adopter_decisions_total{verdict="deny"}[15m]))
            / sum by (job, instance) (increase(callerid_adopter_decisions_total[15m])) > 0.5""",
          "10m", "warn",
          "most ssh logins to {{ $labels.instance }} are being denied",
          """\
          More than half of the login decisions on {{ $labels.instance }} in the last 15 minutes were
          denials (at least 10). Look at the reason on the "Login decisions by reason" panel: no_jobs
          for users who do have jobs there means job discovery broke (cgroup layout, Slurm upgrade);
          *_deny reasons mean attribution fails under action_unknown=deny.""",
          "callerid-adopter"),
    Alert("CallerIDGenericFailures",
          f"""\
          sum by (job, instance) (
              increase(callerid_adopter_decisions_total{{reason=~"{GENERIC}"}}[10m])
            or
              increase(callerid_adopter_hook_requests_total{{result=~"{HOOK_FAILED}"}}[10m])
          ) >= 3""",
          "5m", "page",
          "the callerid adopter on {{ $labels.instance }} cannot check logins",
          """\
          At least 3 logins on {{ $labels.instance }} in 10 minutes were decided by
          action_generic_failure (unknown user, internal error) or failed on the hook socket (timeout,
          bad request, bad peer, internal error). Those sessions are not adopted, or refused if
          action_generic_failure=deny. Read `journalctl -u callerid-adopter` on the node; check sssd /
          the user database and that the hook runs from sshd.""",
          "callerid-adopter"),
    Alert("CallerIDSecurityEvent",
          """\
          sum by (job, instance, kind) (increase(callerid_adopter_security_events_total[15m])) > 0
          or
          sum by (job, instance, kind) (
            callerid_adopter_security_events_total unless callerid_adopter_security_events_total offset 15m
          ) > 0""",
          "0m", "page",
          "possible escape attempt: login to {{ $labels.instance }} came from another user's job",
          """\
          The adopter on {{ $labels.instance }} saw a login whose connection, according to the source
          node's tracer, was opened by a job of another user on this node (kind {{ $labels.kind }}). It was
          not adopted into that job. Find the "SECURITY possible escape attempt" line in the adopter's
          log (user, source address, job) and follow your security procedure.""",
          "callerid-adopter"),
    Alert("CallerIDAdoptionLeftPartial",
          """\
          sum by (job, instance) (increase(callerid_adopter_abandoned_adoptions_total{result="left_partial"}[15m])) > 0
          or
          sum by (job, instance) (
            callerid_adopter_abandoned_adoptions_total{result="left_partial"}
              unless callerid_adopter_abandoned_adoptions_total{result="left_partial"} offset 15m
          ) > 0""",
          "0m", "warn",
          "an sshd on {{ $labels.instance }} was left partly inside a job",
          """\
          A login on {{ $labels.instance }} went away (its deadline passed or its PAM module hung up)
          while the adopter was moving its sshd into a job's cgroups, and moving it back failed for
          some of them: that sshd now runs in those controllers of the job. Find the adopter's log
          line "partial adoption left in place" (pid, job, dirs).""",
          "callerid-adopter"),
    Alert("CallerIDSourceRPCFailing",
          f"""\
          sum by (job, instance) (increase(callerid_adopter_rpc_requests_total{{outcome=~"{RPC_FAILED}"}}[15m])) >= 3
          and
          sum by (job, instance) (increase(callerid_adopter_rpc_requests_total{{outcome=~"{RPC_FAILED}"}}[15m]))
            / sum by (job, instance) (increase(callerid_adopter_rpc_requests_total[15m])) > 0.2""",
          "15m", "warn",
          "the adopter on {{ $labels.instance }} often gets no answer from source nodes",
          """\
          More than 20% of the callerid RPCs the adopter on {{ $labels.instance }} made in 15 minutes
          failed (connect, timeout, refused, bad reply, auth, munge, no socket). Those logins fall to
          action_unknown. The outcome label on "RPC outcomes (adopter side)" says which: connect or
          timeout point at a tracer down or a firewall on port 6828, auth or munge at MUNGE keys or
          clocks.""",
          "callerid-adopter"),
    Alert("CallerIDAdopterRPCLatencyHigh",
          """\
          histogram_quantile(0.99,
            sum by (job, instance, le) (rate(callerid_adopter_rpc_duration_seconds_bucket[10m]))
          ) > 0.5
          and
          sum by (job, instance) (increase(callerid_adopter_rpc_duration_seconds_count[10m])) >= 5""",
          "15m", "warn",
          "callerid RPCs from {{ $labels.instance }} are slow (p99 over 0.5 s)",
          """\
          The 99th percentile of the callerid RPC round trip seen by the adopter on
          {{ $labels.instance }} has been above 0.5 s for 15 minutes. Every login that needs the RPC
          waits that long, and past rpc_timeout_seconds (2 s) it fails. Compare with "RPC latency
          (tracer)": if the tracers are fast, look at the network and munged on this node; if not,
          at the tracers' fallback ratio.""",
          "callerid-adopter"),
    # --- tracer (source side) -----------------------------------------------------------------
    Alert("CallerIDTracerRPCLatencyHigh",
          """\
          histogram_quantile(0.99,
            sum by (job, instance, le) (rate(callerid_rpc_request_duration_seconds_bucket[10m]))
          ) > 0.25
          and
          sum by (job, instance) (increase(callerid_rpc_request_duration_seconds_count[10m])) >= 5""",
          "15m", "warn",
          "the callerid tracer on {{ $labels.instance }} answers slowly (p99 over 0.25 s)",
          """\
          The 99th percentile of the time the tracer on {{ $labels.instance }} spends per request has
          been above 0.25 s for 15 minutes. Map answers take under a millisecond plus munged; slow
          answers come from the /proc fallback (check the fallback ratio and the probe backend) or a
          slow munged.""",
          "callerid-tracer"),
    Alert("CallerIDFallbackRatioHigh",
          """\
          (
            sum by (job, instance) (rate(callerid_fallback_lookups_total[15m]))
              / sum by (job, instance) (rate(callerid_lookups_total[15m])) > 0.2
          )
          and sum by (job, instance) (increase(callerid_lookups_total[15m])) >= 10
          unless on (job, instance) callerid_probe_backend{backend="none"} == 1""",
          "15m", "warn",
          "the tracer on {{ $labels.instance }} answers many lookups from /proc instead of its BPF map",
          """\
          More than 20% of the lookups on {{ $labels.instance }} in 15 minutes missed the BPF map and
          went to the sock_diag + /proc fallback, although a probe is loaded. Fallback answers are
          slower and miss processes that already exited. Look for map_miss with BPF pending_miss or
          update_failed events, a full map, or connections opened while the tracer was down.""",
          "callerid-tracer"),
    Alert("CallerIDMapNearCapacity",
          """\
          max by (job, instance) (callerid_tracked_connections{state="open"})
            / max by (job, instance) (callerid_map_capacity_connections{state="open"}) > 0.9""",
          "15m", "warn",
          "the map of open connections on {{ $labels.instance }} is over 90% full",
          """\
          The tracer's map of open connections on {{ $labels.instance }} holds more than 90% of
          max_connections. It is an LRU map: from about 90% full the kernel evicts the least recently
          used entries silently; those connections are then answered only by the slow /proc fallback
          (and not at all once their process exits). Raise max_connections in callerid.toml (restart
          the tracer with replace_pinned = true). Closed connections have a map of their own and
          do not count here.""",
          "callerid-tracer"),
    Alert("CallerIDProbeNotLoaded", 'callerid_probe_backend{backend="none"} == 1', "10m", "warn",
          "the tracer on {{ $labels.instance }} runs without a BPF probe",
          """\
          No probe backend could be loaded on {{ $labels.instance }}; the tracer answers every lookup
          from sock_diag + /proc. Answers are slower and miss short-lived processes. Run `callerid
          doctor` on the node (BTF, tracefs, bpffs, kernel headers) and read the tracer's start-up log.""",
          "callerid-tracer"),
    Alert("CallerIDBPFUpdateFailures",
          'sum by (job, instance) (increase(callerid_bpf_events_total{event="update_failed"}[15m])) > 0',
          "5m", "warn",
          "BPF map updates fail on {{ $labels.instance }}",
          """\
          The tracer's BPF program on {{ $labels.instance }} failed to write map entries in the last 15
          minutes: those connections are not recorded and their lookups go to the /proc fallback. Both
          maps are LRU, so a full map evicts rather than fails; an update fails when the kernel finds no
          free element, typically a burst of connects on many CPUs while a map is nearly full. Raise
          max_pending / max_connections.""",
          "callerid-tracer"),
    Alert("CallerIDSweeperFailing",
          """\
          sum by (job, instance) (increase(callerid_sweeper_failures_total[15m]))
            / (
                sum by (job, instance) (increase(callerid_sweeper_failures_total[15m]))
              + sum by (job, instance) (increase(callerid_sweeper_runs_total[15m]))
            )
          > 0.5""",
          "15m", "warn",
          "the connection-map sweeper on {{ $labels.instance }} keeps failing",
          """\
          More than half of the sweeper passes on {{ $labels.instance }} raised an error in the last 15
          minutes. Closed connections then stay in the map until the LRU evicts them, and the map fills.
          The traceback is in `journalctl -u callerid-tracer` ("sweep failed").""",
          "callerid-tracer"),
    Alert("CallerIDReconcileFailed",
          "callerid_reconcile_last_success == 0 and callerid_reconcile_last_duration_seconds > 0",
          "5m", "warn",
          "the tracer's start-up reconcile failed on {{ $labels.instance }}",
          """\
          The tracer on {{ $labels.instance }} could not add the connections that existed before it
          started to its map. Lookups for them go to the /proc fallback until they close. The error is
          in the tracer's start-up log ("start-up reconcile failed"); restart the tracer once it is
          fixed (the alert clears with the next successful start).""",
          "callerid-tracer"),
    Alert("CallerIDRPCAuthFailures",
          'sum by (job, instance) (increase(callerid_rpc_requests_total{result=~"auth_failed|replayed"}[15m])) >= 3',
          "5m", "warn",
          "the tracer on {{ $labels.instance }} rejects MUNGE credentials",
          """\
          The tracer on {{ $labels.instance }} rejected at least 3 requests in 15 minutes because MUNGE
          refused their credential (auth_failed) or saw it twice (replayed). Usual causes: a node with a
          different munge.key, clocks more than the credential TTL apart, or someone replaying captured
          requests. Check `munge -n | ssh <node> unmunge` between the nodes involved.""",
          "callerid-tracer"),
]
for _a in ALERTS:
    _a.expr = _dedent(_a.expr)
    _a.description = _dedent(_a.description)

GROUPS = ("callerid-availability", "callerid-adopter", "callerid-tracer")

# ---------------------------------------------------------------------------------------
# YAML output: PyYAML (a build/test dependency, imported here only: the daemons never load it).


def to_yaml(doc) -> str:
    """`doc` (dicts, lists, strings, numbers) as block-style YAML in insertion order; multi-line
    strings (annotations) as literal blocks. PyYAML quotes every scalar that would otherwise read
    back as something else (0x30, yes, a leading '{'), so the file means what `doc` says."""
    import yaml

    class Dumper(yaml.SafeDumper):
        def increase_indent(self, flow=False, indentless=False):
            return super().increase_indent(flow, False)  # indent lists under their key

    def text(dumper, value):
        style = "|" if "\n" in value else None
        return dumper.represent_scalar("tag:yaml.org,2002:str", value, style=style)

    Dumper.add_representer(str, text)
    return yaml.dump(doc, Dumper=Dumper, sort_keys=False, default_flow_style=False, allow_unicode=True, width=1000)


def rule_groups() -> dict:
    groups = []
    for g in GROUPS:
        rules = [{"alert": a.name, "expr": a.expr, "for": a.for_, "labels": {"severity": a.severity},
                  "annotations": a.annotations()} for a in ALERTS if a.group == g]
        groups.append({"name": g, "rules": rules})
    return {"groups": groups}


HEADER = """\
# Generated by `.venv/bin/python3 -m callerid.dashboards.build` from dashboards/rules.py: edit there.
# What each alert means and what to do: docs/OPERATIONS.md (runbook_url).
# Expected scrape jobs: callerid-tracer (:9828) and callerid-adopter (:9829).
"""


def render_rules() -> str:
    return HEADER + to_yaml(rule_groups())
