"""`callerid tracer`: load the probe, reconcile, serve the RPC and /metrics, sweep, stop on SIGTERM."""

from __future__ import annotations

import logging
import resource
import threading
import time

from callerid import config as cfgmod
from callerid import httpd, logs
from callerid.config import Config, parse_addr
from callerid.userdb import uid_of

from . import bpfmap, probes
from .lookup import Resolver
from .metrics import TracerMetrics
from .reconcile import reconcile
from .rpcconn import bind_listener
from .server import RpcServer
from .service import RequestHandler
from .sweeper import Sweeper

log = logging.getLogger("callerid.tracer")


class Tracer:
    """Everything the tracer runs, so tests and benchmarks can start one in-process."""

    def __init__(self, cfg: Config):
        self.cfg = cfg
        t = cfg.tracer
        self.metrics = TracerMetrics()
        self.probe = self._load_probe()
        self.metrics.set_probe(self.probe)
        self._conns = conns = self.probe.conns if self.probe else None
        self.resolver = Resolver(conns, cfg.common.node(), fallback=t.fallback)
        handler = RequestHandler(self.resolver, self.metrics, uid_of(cfg.common.slurm_user), cfg.common.munge_socket)
        listen = t.listen or [f"[::]:{cfg.common.rpc_port}"]
        raise_open_files(t.max_rpc_connections + t.max_clients + 256)
        self.server = RpcServer([bind_listener(*parse_addr(a, cfg.common.rpc_port)) for a in listen], handler,
                                self.metrics, t.max_clients, t.read_timeout_seconds, t.max_frame_bytes,
                                header_timeout=t.header_timeout_seconds, max_connections=t.max_rpc_connections,
                                max_connections_per_peer=t.max_rpc_connections_per_peer)
        self.sweeper = Sweeper(conns, self.metrics, t.close_grace_seconds) if conns is not None else None
        self._stop = threading.Event()
        self._http = None

    def _load_probe(self):
        t = self.cfg.tracer
        try:
            return probes.load(t.probe, t.pin_root, t.max_connections, t.max_pending, t.replace_pinned,
                               t.max_closed_connections, t.close_grace_seconds, t.closed_share_per_uid)
        except probes.ProbeLoadError as exc:
            if t.probe != "auto" or t.require_bpf:
                raise
            log.error("no probe backend could be loaded (%s); answering from sock_diag + /proc only", exc)
            return None

    def _reconcile(self, conns):
        start = time.perf_counter()
        try:
            self.metrics.reconcile_inserted.inc(reconcile(conns))
            self.metrics.reconcile_success.set(1)
        except Exception:  # noqa: BLE001 - reconcile is best effort; the fallback still answers
            log.exception("start-up reconcile failed")
            self.metrics.reconcile_success.set(0)
        self.metrics.reconcile_seconds.set(time.perf_counter() - start)

    def start(self):
        m = self.cfg.tracer.metrics
        if m:
            host, port = parse_addr(m, 9828)
            self._http = httpd.serve(host, port, self.metrics.registry, f"callerid tracer on {self.resolver.node}",
                                     self._landing)
        self.server.start()
        if self._conns is not None and self.cfg.tracer.reconcile:
            # After the server: until reconcile is done, older connections are still
            # answered, by the fallback; a busy node's reconcile takes seconds.
            threading.Thread(target=self._reconcile, args=(self._conns,), name="reconcile", daemon=True).start()
        if self.sweeper is not None:
            threading.Thread(target=self._sweep_loop, name="sweeper", daemon=True).start()
        log.info("tracer serving on %s (probe %s, node %s)",
                 ", ".join(f"{h}:{p}" for h, p in self.server.addresses),
                 self.probe.backend if self.probe else "none", self.resolver.node)
        if self._conns is not None and not bpfmap.LIBBCC_HAS_BATCH:
            log.warning("this libbcc has no batch map operations (BCC 0.18, Debian 11): the sweeper and "
                        "`callerid conns` read the maps one entry per syscall, slower on large maps")

    def _landing(self) -> list[str]:
        probe = self.probe.backend if self.probe else "none (answering from /proc only)"
        return [f"probe backend: {probe}",
                "RPC on " + ", ".join(f"{h}:{p}" for h, p in self.server.addresses),
                f"pinned maps: {self.probe.pin_dir if self.probe else '-'}"]

    def _sweep_loop(self):
        while not self._stop.wait(self.cfg.tracer.sweep_interval_seconds):
            try:
                self.sweeper.sweep_once()
            except Exception:  # noqa: BLE001 - keep sweeping next time
                self.metrics.sweep_failures.inc()
                log.exception("sweep failed")

    def stop(self):
        self._stop.set()
        self.server.stop()
        if self._http is not None:
            self._http.shutdown()
        if self.probe is not None:
            self.probe.close()  # maps stay pinned: the next tracer keeps every entry


def raise_open_files(wanted: int) -> None:
    """Lift RLIMIT_NOFILE's soft limit (1024 by default) so every RPC connection the
    server may hold fits, plus maps, /proc files and sockets of its own."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft == resource.RLIM_INFINITY or soft >= wanted:
        return
    target = wanted if hard == resource.RLIM_INFINITY else min(wanted, hard)
    try:
        resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
    except (ValueError, OSError) as exc:
        log.warning("cannot raise the open-file limit from %d to %d: %s", soft, target, exc)
        return
    if target < wanted:
        log.warning("open-file limit %d (hard) is below the %d that max_rpc_connections needs", target, wanted)


def run(args) -> int:
    cfg = cfgmod.load(args.config)
    if args.listen:
        cfg.tracer.listen = list(args.listen)
    if args.metrics is not None:
        cfg.tracer.metrics = args.metrics
    if args.probe:
        cfg.tracer.probe = args.probe
    logs.setup("callerid-tracer", cfg.common.log_level)
    try:
        tracer = Tracer(cfg)
    except (probes.ProbeLoadError, probes.PinnedMapMismatch, OSError) as exc:
        log.error("cannot start: %s", exc)
        return 1
    return logs.serve_until_signalled(tracer, log)
