"""`callerid adopter`: serve the PAM hook on a root-only unix socket, decide, adopt, export metrics."""

from __future__ import annotations

import logging
import os
import socket
import threading
import time

from callerid import config as cfgmod
from callerid import httpd, logs

from . import pamwire, peer, policy
from .metrics import AdopterMetrics
from .service import Adopter, Settings

log = logging.getLogger("callerid.adopter.daemon")
HOOK_DEADLINE_MARGIN = 0.25   # seconds: a decision must reach the module before the module gives up


def decision_deadline(start: float, deadline_seconds: float, left_ms: int | None) -> float:
    """When the daemon's work on one request must end (time.monotonic()): within its own
    deadline_seconds and within the time the module had left (the request's left_ms), less a
    margin for the reply to reach the module (a quarter of a short budget)."""
    budget = deadline_seconds if left_ms is None else min(deadline_seconds, left_ms / 1000)
    return start + max(0.0, budget - min(HOOK_DEADLINE_MARGIN, budget / 4))


def base_options(a: cfgmod.AdopterConfig) -> policy.Options:
    opts, warnings = policy.parse_options({
        "action_no_jobs": a.action_no_jobs, "action_unknown": a.action_unknown,
        "action_adopt_failure": a.action_adopt_failure, "action_generic_failure": a.action_generic_failure,
        "ignore_root": str(a.ignore_root), "single_job_skip_rpc": str(a.single_job_skip_rpc),
        "service": ",".join(a.service), "mode": a.mode, "join_container": str(a.join_container),
        "job_group": str(a.job_group),
    }, policy.Options())
    if warnings:
        raise cfgmod.ConfigError("[adopter]: " + "; ".join(warnings))
    return opts


class AdopterDaemon:
    def __init__(self, cfg: cfgmod.Config):
        self.cfg = cfg
        a = cfg.adopter
        self.metrics = AdopterMetrics()
        self.settings = Settings(
            nodename=cfg.common.node(), base_options=base_options(a), rpc_port=cfg.common.rpc_port,
            rpc_timeout=a.rpc_timeout_seconds, munge_socket=cfg.common.munge_socket,
            cgroup_root=a.cgroup_root, allowed_exe=tuple(a.adopt_exe), job_env=tuple(a.job_env),
            job_container_conf=a.job_container_conf, slurm_conf=a.slurm_conf)
        self.adopter = Adopter(self.settings, self.metrics)
        self.sock = self._bind(a.socket)
        self.attach_sock = self._bind(a.attach_socket, public=True) if a.attach_socket else None
        self._stop = threading.Event()
        self._http = None

    @staticmethod
    def _bind(path: str, public: bool = False) -> socket.socket:
        """A listening unix socket: root only, or (public) for every user, who is then known
        by the peer credentials of each connection."""
        d = os.path.dirname(path)
        os.makedirs(d, mode=0o755 if public else 0o700, exist_ok=True)
        try:
            os.unlink(path)
        except FileNotFoundError:
            pass
        s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        old = os.umask(0o077)  # root only, from the first instant
        try:
            s.bind(path)
        finally:
            os.umask(old)
        os.chmod(path, 0o666 if public else 0o600)
        s.listen(64)
        return s

    def start(self):
        m = self.cfg.adopter.metrics
        if m:
            host, port = cfgmod.parse_addr(m, 9829)
            self._http = httpd.serve(host, port, self.metrics.registry, f"callerid adopter on {self.settings.nodename}",
                                     lambda: [f"PAM module socket: {self.cfg.adopter.socket}",
                                              f"options: {vars(self.settings.base_options)}"])
        threading.Thread(target=self._accept_loop, name="hook-accept", daemon=True).start()
        if self.attach_sock is not None:
            threading.Thread(target=self._accept_loop, args=(self.attach_sock, self._serve_attach),
                             name="attach-accept", daemon=True).start()
        log.info("adopter serving %s for node %s (%s)", self.cfg.adopter.socket, self.settings.nodename,
                 ", ".join(f"{k}={v}" for k, v in vars(self.settings.base_options).items()))

    def stop(self):
        self._stop.set()
        try:
            self.sock.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass
        self.sock.close()
        if self.attach_sock is not None:
            self.attach_sock.close()
        if self._http is not None:
            self._http.shutdown()

    def _accept_loop(self, sock: socket.socket | None = None, serve=None):
        sock, serve = sock or self.sock, serve or self._serve
        while not self._stop.is_set():
            try:
                conn, _ = sock.accept()
            except OSError:
                if self._stop.is_set():
                    return
                time.sleep(0.01)
                continue
            threading.Thread(target=serve, args=(conn,), name="hook", daemon=True).start()

    def _serve_attach(self, conn: socket.socket):
        """One `callerid attach` request: v=1 job=J -> v=1 result=R msg=M. The caller is its peer credentials."""
        with conn:
            try:
                who = peer.peer_credentials(conn)
                conn.settimeout(2.0)
                raw = b""
                while not raw.endswith(b"\n") and len(raw) < 256:
                    chunk = conn.recv(256)
                    if not chunk:
                        break
                    raw += chunk
                try:
                    req = pamwire.decode(raw)
                    job = req.get("job", "")
                    if set(req) != {"v", "job"} or not pamwire.JOB.fullmatch(job):
                        raise pamwire.WireError("expected v=1 job=JOBID")
                except pamwire.WireError as exc:
                    self.metrics.attach.labels("bad_request").inc()
                    log.warning("attach: bad request from uid %d pid %d: %s", who.uid, who.pid, exc)
                    result, msg = "bad_request", policy.ATTACH_MESSAGES["bad_request"]
                else:
                    result, msg = self.adopter.attach(who.pid, who.uid, job)
                conn.sendall(pamwire.encode([("result", result), ("msg", msg)]))
            except (OSError, socket.timeout) as exc:
                log.warning("attach: %s", exc)
            except Exception:  # never leave the caller without an answer or the thread dead silently
                log.exception("attach request failed")

    def _serve(self, conn: socket.socket):
        with conn:
            try:
                reply = self._handle(conn)
            except Exception:  # noqa: BLE001 - never leave the module without an answer
                log.exception("hook request failed")
                self.metrics.hook_requests.labels("internal_error").inc()
                reply = None
            if reply is not None:
                try:
                    conn.settimeout(1.0)
                    conn.sendall(reply.encode())
                except OSError as exc:
                    # The module gave up (its deadline) and applied action_generic_failure itself.
                    self.metrics.hook_requests.labels("reply_undelivered").inc()
                    log.warning("PAM module went away before its reply (%s): the login got action_generic_failure", exc)

    def _handle(self, conn: socket.socket) -> pamwire.Reply | None:
        who = peer.peer_credentials(conn)
        if who.uid != 0:
            self.metrics.hook_requests.labels("not_root").inc()
            log.warning("hook socket: refused uid %d (pid %d): only root may ask", who.uid, who.pid)
            return None
        start = time.monotonic()   # the module's time left was measured just before it connected
        conn.settimeout(self.cfg.adopter.deadline_seconds)
        raw = b""
        try:
            while not raw.endswith(b"\n") and len(raw) <= pamwire.MAX_LINE:
                chunk = conn.recv(4096)
                if not chunk:
                    break
                raw += chunk
        except socket.timeout:
            self.metrics.hook_requests.labels("timeout").inc()
            log.warning("hook socket: pid %d sent no complete request in time", who.pid)
            return None
        try:
            req = pamwire.parse_request(raw)
        except pamwire.WireError as exc:
            self.metrics.hook_requests.labels("bad_request").inc()
            log.warning("hook socket: bad request from pid %d: %s", who.pid, exc)
            return None
        deadline = decision_deadline(start, self.cfg.adopter.deadline_seconds, req.left_ms)
        opts, _ = policy.parse_options(req.options, self.settings.base_options)
        try:
            app = peer.pam_application(who, self.settings.allowed_exe)
        except peer.PeerError as exc:
            self.metrics.hook_requests.labels("bad_peer").inc()
            log.warning("hook socket: %s", exc)
            d = policy.generic_failure(opts, "bad_peer")
            return pamwire.Reply(d.verdict.value, d.reason, d.message)
        self.metrics.hook_requests.labels("ok").inc()

        def still_wanted() -> str | None:
            if not peer.still_waiting(conn):
                return "hook_gone"
            if not peer.same_application(who, app):
                return "process_changed"
            return None

        return self.adopter.handle(app.pid, req.user, req.service, req.options, deadline, still_wanted)


def run(args) -> int:
    cfg = cfgmod.load(args.config)
    logs.setup("callerid-adopter", cfg.common.log_level)
    try:
        d = AdopterDaemon(cfg)
    except (cfgmod.ConfigError, OSError) as exc:
        log.error("cannot start: %s", exc)
        return 1
    return logs.serve_until_signalled(d, log)
