"""What both daemons' Prometheus registries share: the build info, the process and
suppressed-log collectors, and pre-declared label values. Each daemon's own metric names
stay in its metrics module (tracer/metrics.py, adopter/metrics.py)."""

from __future__ import annotations

from collections.abc import Iterable

from prometheus_client import CollectorRegistry, Counter, Info
from prometheus_client.core import CounterMetricFamily
from prometheus_client.process_collector import ProcessCollector

from callerid import __version__, logs


def daemon_registry(registry: CollectorRegistry | None = None) -> CollectorRegistry:
    """registry (or a new one) with the metrics every callerid daemon exports."""
    r = registry or CollectorRegistry()
    Info("callerid_build", "callerid build information.", registry=r).info({"version": __version__})
    ProcessCollector(registry=r)
    r.register(SuppressedLogCollector())
    return r


def predeclared(metric, values: Iterable):
    """metric with a series at 0 for each label value (a tuple where it has several labels):
    a series born at 1 is invisible to rate() and increase(), which would hide a node's first
    security event or failure."""
    for v in values:
        metric.labels(*(v if isinstance(v, tuple) else (v,)))
    return metric


def labelled_counter(name: str, doc: str, label: str, values: Iterable[str],
                     registry: CollectorRegistry) -> Counter:
    """A counter with one label whose values are all pre-declared."""
    return predeclared(Counter(name, doc, [label], registry=registry), values)


class SuppressedLogCollector:
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
