"""The tracer's Prometheus metrics: every name the tracer exports is defined here."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

from callerid.metrics import daemon_registry, labelled_counter

from .layout import STAT_NAMES
from .lookup import SCAN_RESULTS

# Sub-millisecond resolution for map answers, seconds for munged or /proc trouble.
LATENCY_BUCKETS = (0.00005, 0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01,
                   0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)

RPC_RESULTS = ("found", "not_found", "denied", "bad_frame", "auth_failed", "replayed",
               "busy", "unsupported_version", "timeout", "internal_error", "abandoned")
# Why a connection was closed before it sent a whole request: full (max_rpc_connections
# open in total). Past max_rpc_connections_per_peer a connection is parked, not closed.
EVICT_REASONS = ("full",)


class TracerMetrics:
    def __init__(self, registry: CollectorRegistry | None = None):
        self.registry = r = daemon_registry(registry)
        self.requests = labelled_counter("callerid_rpc_requests",
                                         "callerid RPC requests by result (denied answers look like not_found to "
                                         "the caller).", "result", RPC_RESULTS, r)
        self.request_seconds = Histogram("callerid_rpc_request_duration_seconds",
                                         "Time from a complete request frame to its reply being ready (credential "
                                         "check, lookup, tagging); frames refused before that are counted, not timed.",
                                         buckets=LATENCY_BUCKETS, registry=r)
        self.clients = Gauge("callerid_rpc_clients",
                             "RPC connections open now (waiting for a request, queued, being answered or closing).",
                             registry=r)
        self.evicted = labelled_counter("callerid_rpc_evicted_connections",
                                        "Connections closed without a whole request because too many were waiting, "
                                        "by limit: full.", "reason", EVICT_REASONS, r)
        self.parked = Counter("callerid_rpc_parked_connections",
                              "Connections accepted while their address had max_rpc_connections_per_peer waiting: "
                              "held unread until one of those ended or their header deadline passed.",
                              registry=r)
        self.accept_failures = Counter("callerid_rpc_accept_failures",
                                       "accept() failures on the RPC listener (EMFILE, ENOBUFS, ...).", registry=r)
        self.lookups = labelled_counter("callerid_lookups", "Lookups by the source that answered (none: nothing "
                                        "found).", "source", ("bpf", "proc", "none"), r)
        self.fallbacks = labelled_counter("callerid_fallback_lookups", "Lookups that went to sock_diag + /proc, by "
                                          "reason.", "reason", ("map_miss", "no_bpf"), r)
        self.fallback_scans = labelled_counter("callerid_fallback_scans",
                                               "Walks of /proc/*/fd by the fallback (one at a time, within a time "
                                               "budget), by how they ended: found, not_found, budget_exceeded, busy "
                                               "(another scan held the turn past the budget). Questions about another "
                                               "uid's socket never scan.", "result", SCAN_RESULTS, r)
        self.owner_exited = Counter("callerid_owner_exited_answers",
                                    "Map hits whose recorded process has exited or whose pid was reused.", registry=r)
        self.probe_info = Gauge("callerid_probe_backend", "1 for the probe backend in use (none: fallback only).",
                                ["backend"], registry=r)
        self.probe_load_seconds = Gauge("callerid_probe_load_duration_seconds",
                                        "Time to compile, load, attach and self-test the probe.", registry=r)
        self.sweeps = Counter("callerid_sweeper_runs", "Completed sweeper passes over the connection maps.", registry=r)
        self.sweep_failures = Counter("callerid_sweeper_failures", "Sweeper passes that raised an error.", registry=r)
        self.sweep_deleted = Counter("callerid_sweeper_deleted_connections",
                                     "Closed connections deleted after their grace period.", registry=r)
        self.sweep_stale = Counter("callerid_sweeper_stale_closed_connections",
                                   "Entries marked closed by the sweeper because their socket no longer exists.",
                                   registry=r)
        self.sweep_seconds = Gauge("callerid_sweeper_last_duration_seconds", "Duration of the last sweep.", registry=r)
        self.tracked = Gauge("callerid_tracked_connections",
                             "Entries in the connection maps at the last sweep, by map: open, or closed "
                             "(kept for the grace period).",
                             ["state"], registry=r)
        self.reconcile_inserted = Counter("callerid_reconcile_inserted_connections",
                                          "Connections found at start-up and written to the map.", registry=r)
        self.reconcile_seconds = Gauge("callerid_reconcile_last_duration_seconds",
                                       "Duration of the start-up reconcile.", registry=r)
        self.reconcile_success = Gauge("callerid_reconcile_last_success", "1 if the last reconcile completed.",
                                       registry=r)
        self._probe = None
        r.register(_ProbeCollector(self))

    def set_probe(self, loaded):
        """loaded: tracer.probes.LoadedProbe or None (fallback only)."""
        self._probe = loaded
        for b in ("cookie", "sockstore", "tracepoint", "kprobe", "fentry", "none"):
            self.probe_info.labels(b).set(0)
        self.probe_info.labels(loaded.backend if loaded else "none").set(1)
        if loaded:
            self.probe_load_seconds.set(loaded.load_seconds)


class _ProbeCollector:
    """Reads map capacity and the BPF-side per-CPU counters when scraped."""

    def __init__(self, metrics: TracerMetrics):
        self.m = metrics

    def describe(self):
        return []

    def collect(self):
        probe = self.m._probe
        cap = GaugeMetricFamily("callerid_map_capacity_connections",
                                "Capacity of the connection maps, by map: open (max_connections) or closed "
                                "(max_closed_connections); 0 without a probe.",
                                labels=["state"])
        events = CounterMetricFamily("callerid_bpf_events", "Events counted by the BPF program, by kind.",
                                     labels=["event"])
        if probe is not None:
            by_state = getattr(probe.conns, "capacity_by_state", None)
            if by_state is not None:   # cookie: one map, closed records bounded within it
                for state, n in by_state().items():
                    cap.add_metric([state], n)
            else:
                # sockstore keeps open connections on their sockets: no capacity to report
                cap.add_metric(["open"], probe.conns.open.capacity if probe.conns.open is not None else 0)
                cap.add_metric(["closed"], probe.conns.closed.capacity)
            for name, value in probe.stats().items():
                events.add_metric([name], value)
        else:
            for state in ("open", "closed"):
                cap.add_metric([state], 0)
            for name in STAT_NAMES:
                events.add_metric([name], 0)
        yield cap
        yield events

