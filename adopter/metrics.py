"""The adopter's Prometheus metrics: every name the adopter exports is defined here."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Histogram

from callerid.client import RPC_ERROR_REASONS
from callerid.metrics import daemon_registry, labelled_counter, predeclared

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
# An adoption stopped between its cgroup.procs writes (one per v1 controller) because the
# login had gone: undone (moved back where it was), or left_partial (the move back failed).
ABANDONED_ADOPTION_RESULTS = ("undone", "left_partial")


class AdopterMetrics:
    def __init__(self, registry: CollectorRegistry | None = None):
        self.registry = r = daemon_registry(registry)
        self.decisions = Counter("callerid_adopter_decisions",
                                 "Login decisions by verdict and reason; mode=audit: decided and counted, "
                                 "but the login was allowed and not adopted.",
                                 ["verdict", "reason", "mode"], registry=r)
        self.decision_seconds = Histogram("callerid_adopter_decision_duration_seconds",
                                          "Time from the PAM module's request to the daemon's reply.",
                                          buckets=LATENCY_BUCKETS, registry=r)
        self.rpc = labelled_counter("callerid_adopter_rpc_requests", "callerid RPCs to source nodes by outcome.",
                                    "outcome", RPC_OUTCOMES, r)
        self.rpc_seconds = Histogram("callerid_adopter_rpc_duration_seconds",
                                     "Duration of callerid RPCs to source nodes.", buckets=LATENCY_BUCKETS, registry=r)
        self.adoptions = labelled_counter("callerid_adopter_adoptions",
                                          "Attempts to move an sshd into a job's extern step, by result.",
                                          "result", ADOPT_RESULTS, r)
        self.hook_requests = labelled_counter("callerid_adopter_hook_requests",
                                              "Requests on the hook socket by result (rejected ones never reach "
                                              "a decision).", "result", HOOK_RESULTS, r)
        self.attach = labelled_counter("callerid_adopter_attach_requests",
                                       "`callerid attach` requests by result (attached, or why not).",
                                       "result", ATTACH_RESULTS, r)
        self.abandoned = labelled_counter("callerid_adopter_abandoned_decisions",
                                          "Decisions dropped, never applied nor counted as decisions, because the "
                                          "login had gone, by reason.", "reason", ABANDON_REASONS, r)
        self.abandoned_adoptions = labelled_counter(
            "callerid_adopter_abandoned_adoptions",
            "Adoptions stopped between their cgroup.procs writes because the login had gone (its decision is "
            "counted as abandoned): undone, or left_partial where moving the process back failed.",
            "result", ABANDONED_ADOPTION_RESULTS, r)
        self.security = labelled_counter("callerid_adopter_security_events",
                                         "Logins from another user's job or other possible escape attempts.",
                                         "kind", (SECURITY_KIND,), r)
        predeclared(self.decisions, [(verdict, reason, mode) for verdict, reason in verdict_reason_pairs()
                                     for mode in MODES])

