"""A real `callerid tracer` daemon for the benches (the tests' TracerProc with the bench's own
config, pins, ports, syslog sink and clean-up), and its start-up measurement."""

from __future__ import annotations

import datetime
import os
import re
import shutil
import socket
import tempfile
import time
import urllib.request
from pathlib import Path

from bench.common import Cleanup, connected_pair, free_port, listener, new_pin_root
from callerid.client import RpcError, ask
from callerid.protocol import Query, Source, Status
from tests.infra.daemonproc import parse_metrics
from tests.infra.tracerproc import TracerProc, write_config

NODE = "benchnode"


class SyslogSink:
    """A /dev/log stand-in that reads and drops every datagram, as journald or rsyslog would.

    The daemon logs every answered RPC at info, to stderr and, when /dev/log exists, to
    syslog (callerid/logs.py). On a shared machine /dev/log may belong to someone's test
    listener that stops reading or vanishes mid-run (then each log record costs a blocked
    send or a printed traceback). So the bench runs each daemon in a private mount
    namespace with this sink bind-mounted over /dev/log: syslog stays in the measured path,
    at the cost of a healthy syslog daemon, and nothing outside the bench is touched."""

    def __init__(self, cleanup: Cleanup):
        import threading
        self.dir = tempfile.mkdtemp(prefix="callerid-bench-syslog-")
        cleanup.push(lambda: shutil.rmtree(self.dir, ignore_errors=True), "syslog sink dir")
        self.path = os.path.join(self.dir, "log")
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind(self.path)
        os.chmod(self.path, 0o666)
        self.sock.settimeout(0.2)
        self.received = 0
        self._stop = threading.Event()
        self._t = threading.Thread(target=self._drain, name="syslog-sink", daemon=True)
        self._t.start()
        cleanup.push(self.close, "syslog sink")

    def _drain(self):
        while not self._stop.is_set():
            try:
                self.sock.recv(65536)
                self.received += 1
            except OSError:
                continue

    def close(self):
        self._stop.set()
        self._t.join(2)
        self.sock.close()


class Daemon(TracerProc):
    """A `callerid tracer` subprocess with its own config, pins, ports and log; stopped by pid
    (tests.infra's TracerProc, plus what the benches measure: start clocks, metrics, log facts)."""

    sink: SyslogSink | None = None  # set once by a bench's main

    def __init__(self, munge_socket: str, cleanup: Cleanup, tag: str):
        self.dir = tempfile.mkdtemp(prefix=f"callerid-bench-{tag}-")
        cleanup.push(lambda: shutil.rmtree(self.dir, ignore_errors=True), f"{self.dir}")
        self.pin_root = new_pin_root()
        cleanup.push(lambda: shutil.rmtree(self.pin_root, ignore_errors=True), f"pins {self.pin_root}")
        self.port, self.mport = free_port(), free_port()
        self.munge_socket = munge_socket
        config = Path(self.dir, "callerid.toml")
        # log_level info, as in production: every answered RPC is logged at info.
        write_config(config, munge_socket, self.pin_root, [f"127.0.0.1:{self.port}"], f"127.0.0.1:{self.mport}",
                     nodename=NODE, rpc_port=self.port, log_level="info", probe="tracepoint")
        super().__init__(config, Path(self.dir, "tracer.log"))
        self.syslog = "none (no /dev/log on this machine)"
        self.t0 = self.wall0 = 0.0
        self._cleanup = cleanup
        self._stop_fn = cleanup.push(self.stop, f"tracer daemon ({tag})")

    @property
    def pins(self) -> Path:
        """The daemon's pin directory: its open (conns) and closed maps."""
        from callerid.tracer.probes import pin_dir
        return pin_dir(self.pin_root)

    def argv(self, *extra) -> list[str]:
        argv = super().argv(*extra)
        # The daemon also logs to syslog when /dev/log exists at start (callerid/logs.py):
        # give it the bench's own draining sink there, in a private mount namespace.
        if Daemon.sink is not None and os.path.exists("/dev/log") and not os.path.isdir("/dev/log"):
            self.syslog = "bench sink bind-mounted over /dev/log"
            return ["unshare", "--mount", "--propagation", "private", "--", "sh", "-c",
                    'mount --bind "$0" /dev/log && exec "$@"', Daemon.sink.path, *argv]
        return argv

    def start(self):
        self.wall0 = time.time()
        self.t0 = time.perf_counter()
        return super().start(wait=False)

    def wait_serving(self, timeout: float = 60.0):
        self.wait_ready(timeout)

    def log_text(self) -> str:
        try:
            return super().log_text()
        except OSError:
            return ""

    def logged_probe_load_seconds(self) -> float | None:
        m = re.search(r"probe backend \S+ loaded in ([0-9.]+)s", self.log_text())
        return float(m.group(1)) if m else None

    def logged_serving_after(self) -> float | None:
        """Seconds from process start to the 'tracer serving on' log line (log clock, ms resolution)."""
        m = re.search(r"^(\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3}) .*tracer serving on", self.log_text(), re.MULTILINE)
        if not m:
            return None
        t = datetime.datetime.strptime(m.group(1), "%Y-%m-%d %H:%M:%S,%f").timestamp()
        return t - self.wall0

    def metrics(self) -> dict:
        """Samples by name, labels folded into it: name{k=v,...}."""
        text = urllib.request.urlopen(f"http://127.0.0.1:{self.mport}/metrics", timeout=5).read().decode()
        return {name + ("{" + ",".join(f"{k}={v}" for k, v in labels) + "}" if labels else ""): value
                for (name, labels), value in parse_metrics(text).items()}

    def ask(self, q: Query, timeout: float = 2.0):
        return ask(("127.0.0.1", self.port), q, timeout, self.munge_socket)

    def stop(self):
        try:
            super().stop()
        except Exception:  # noqa: BLE001 - the pid got SIGKILL; keep cleaning up
            self.proc = None

    def logging_errors(self) -> int:
        """Tracebacks the daemon's logging printed (e.g. /dev/log vanished after start)."""
        return self.log_text().count("--- Logging error ---")

    def shutdown(self):
        """Stop now and remove pins and files (instead of at the end)."""
        self.stop()
        self._cleanup.remove(self._stop_fn)
        shutil.rmtree(self.pin_root, ignore_errors=True)


def measure_startup(d: Daemon, timeout: float = 60.0) -> dict:
    """Start d; poll with a fresh loopback connection each round until it shows up in the
    pinned map (t_map), then until the RPC answers FOUND from BPF for one (t_rpc)."""
    from callerid.tracer.bpfmap import Connections
    from callerid.tracer.layout import make_key

    lsock = listener()
    conns = None
    pair = None
    t_map = t_rpc = None
    d.start()
    try:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline and t_rpc is None:
            if d.proc.poll() is not None:
                raise RuntimeError(f"tracer exited with {d.proc.returncode}:\n{d.log_text()[-3000:]}")
            if pair:
                for s in pair:
                    s.close()
            pair = connected_pair(lsock)
            c = pair[0]
            sport, lport = c.getsockname()[1], lsock.getsockname()[1]
            if t_map is None:
                if conns is None:
                    try:
                        conns = Connections.open_pinned(d.pins)
                    except OSError:
                        conns = None
                if conns is not None:
                    o = conns.lookup(make_key("127.0.0.1", sport, "127.0.0.1", lport))
                    if o is not None and o.tgid == os.getpid():
                        t_map = time.perf_counter() - d.t0
            if t_map is not None:
                try:
                    a = d.ask(Query.make("127.0.0.1", sport, "127.0.0.1", lport), timeout=1.0)
                    if a.status == Status.FOUND and a.source == Source.BPF and a.pid == os.getpid():
                        t_rpc = time.perf_counter() - d.t0
                        break
                except RpcError:
                    pass
            time.sleep(0.01)
        if t_rpc is None:
            raise TimeoutError(f"tracer gave no answer within {timeout}s:\n{d.log_text()[-3000:]}")
    finally:
        if pair:
            for s in pair:
                s.close()
        lsock.close()
        if conns is not None:
            conns.close()
    d.wait_serving(10)
    m = d.metrics()
    return {"first_map_entry_s": t_map, "first_rpc_answer_s": t_rpc,
            "serving_logged_s": d.logged_serving_after(),
            "probe_load_logged_s": d.logged_probe_load_seconds(),
            "probe_load_metric_s": m.get("callerid_probe_load_duration_seconds"),
            "reconcile_s": m.get("callerid_reconcile_last_duration_seconds"),
            "reconciled_connections": m.get("callerid_reconcile_inserted_connections_total")}
