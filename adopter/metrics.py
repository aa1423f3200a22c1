"""The adopter's Prometheus metrics: every name the adopter exports is defined here."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Histogram, Info
from prometheus_client.core import CounterMetricFamily
from prometheus_client.process_collector import ProcessCollector

from callerid import __version__, logs
from callerid.client import RPC_ERROR_REASONS

from .decision_table import verdict_reason_pairs
from .policy import ATTACH_RESULTS, MODES

# Sub-millisecond for single-job adoptions, seconds for RPC timeouts and deadlines.
LATENCY_BUCKETS = (0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05,
                   0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)


# callerid RPC outcomes seen by the adopter: answers, the client's error reasons, and
# no_socket (the sshd held no TCP connection: nothing to ask about).
NO_SOCKET = "no_socket"
RPC_OUTCOMES = ("found_job", "no_job", "not_found", NO_SOCKET) + RPC_ERROR_REASONS
# The outcomes in which no answer came back (the dashboards' and alerts' "RPC failed").
RPC_FAILED_OUTCOMES = RPC_ERROR_REASONS + (NO_SOCKET,)
HOOK_RESULTS = ("ok", "not_root", "bad_request", "bad_peer", "timeout", "internal_error", "reply_undelivered")
ADOPT_RESULTS = ("success", "job_gone", "permission", "io", "namespace")  # namespace: join_container check failed
SECURITY_KIND = "foreign_job"  # the only decision policy flags as a possible escape
# Why a decision was dropped instead of applied: the request's deadline passed, the module
# hung up (it gave up on its own deadline), or the process to adopt changed under us.
ABANDON_REASONS = ("deadline", "hook_gone", "process_changed")


class AdopterMetrics:
    def __init__(self, registry: CollectorRegistry | None = None):
        self.registry = r = registry or CollectorRegistry()
        Info("callerid_build", "callerid build information.", registry=r).info({"version": __version__})
        self.decisions = Counter("callerid_adopter_decisions",
                                 "Login decisions by verdict and reason; mode=audit: decided and counted, "
                                 "but the login was allowed and not adopted.",
                                 ["verdict", "reason", "mode"], registry=r)
        self.decision_seconds = Histogram("callerid_adopter_decision_duration_seconds",
                                          "Time from the PAM module's request to the daemon's reply.",
                                          buckets=LATENCY_BUCKETS, registry=r)
        self.rpc = Counter("callerid_adopter_rpc_requests", "callerid RPCs to source nodes by outcome.",
                           ["outcome"], registry=r)
        self.rpc_seconds = Histogram("callerid_adopter_rpc_duration_seconds",
                                     "Duration of callerid RPCs to source nodes.", buckets=LATENCY_BUCKETS, registry=r)
        self.adoptions = Counter("callerid_adopter_adoptions",
                                 "Attempts to move an sshd into a job's extern step, by result.", ["result"],
                                 registry=r)
        self.hook_requests = Counter("callerid_adopter_hook_requests",
                                     "Requests on the hook socket by result (rejected ones never reach a decision).",
                                     ["result"], registry=r)
        self.attach = Counter("callerid_adopter_attach_requests",
                              "`callerid attach` requests by result (attached, or why not).", ["result"], registry=r)
        for v in ATTACH_RESULTS:
            self.attach.labels(v)
        self.abandoned = Counter("callerid_adopter_abandoned_decisions",
                                 "Decisions dropped, never applied nor counted as decisions, because the login "
                                 "had gone, by reason.",
                                 ["reason"], registry=r)
        for v in ABANDON_REASONS:
            self.abandoned.labels(v)
        self.security = Counter("callerid_adopter_security_events",
                                "Logins from another user's job or other possible escape attempts.", ["kind"],
                                registry=r)
        # Pre-declared label values: a series born at 1 is invisible to rate() and
        # increase(), which would hide a node's first security event or failure.
        for verdict, reason in verdict_reason_pairs():
            for mode in MODES:
                self.decisions.labels(verdict, reason, mode)
        for v in RPC_OUTCOMES:
            self.rpc.labels(v)
        for v in ADOPT_RESULTS:
            self.adoptions.labels(v)
        for v in HOOK_RESULTS:
            self.hook_requests.labels(v)
        self.security.labels(SECURITY_KIND)
        ProcessCollector(registry=r)
        r.register(_SuppressedLogCollector())


class _SuppressedLogCollector:
    """Warnings the log's rate limit dropped (callerid.logs.Guard), read when scraped."""

    def describe(self):
        return []

    def collect(self):
        fam = CounterMetricFamily("callerid_log_suppressed_messages",
                                  "Warnings not written to the log because more than 10 of one kind came "
                                  "within 10 s, by logger.",
                                  labels=["logger"])
        for name, n in sorted(logs.suppressed_counts().items()):
            fam.add_metric([name], n)
        yield fam
