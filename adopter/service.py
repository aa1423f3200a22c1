"""One login: gather facts, ask the source node if needed, decide, adopt, log, count."""

from __future__ import annotations

import json
import logging
import pwd
import time
from dataclasses import dataclass, replace
from typing import Callable

from callerid.client import RpcError, ask
from callerid.config import DEFAULT_PAM_APPLICATIONS
from callerid.inet import endpoint
from callerid.linux import sockets
from callerid.protocol import Query, Status

from . import cgroupfs, jobs, policy
from .metrics import NO_SOCKET, SECURITY_KIND, AdopterMetrics

log = logging.getLogger("callerid.adopter")


@dataclass(frozen=True)
class Reply:
    verdict: str
    exit: int
    message: str = ""
    job: str | None = None  # the job adopted into (decimal id or SLUID), else None

    def encode(self) -> bytes:
        """The reply line the hook (adopter/hook.c) reads."""
        return json.dumps({"v": 1, "verdict": self.verdict, "exit": self.exit, "message": self.message,
                           "job": self.job}).encode() + b"\n"


@dataclass
class Settings:
    nodename: str
    base_options: policy.Options
    rpc_port: int
    rpc_timeout: float
    munge_socket: str | None
    cgroup_root: str = "/sys/fs/cgroup"
    v2_mount: str | None = None
    allowed_exe: tuple = DEFAULT_PAM_APPLICATIONS


class Abandoned(Exception):
    """The login this decision was for is gone: its hook gave up, its deadline passed, or
    the process to adopt is no longer the one that asked. Nothing is applied or counted."""

    def __init__(self, reason: str):
        super().__init__(reason)
        self.reason = reason   # one of metrics.ABANDON_REASONS


def _always_wanted() -> str | None:
    return None


class Adopter:
    def __init__(self, settings: Settings, metrics: AdopterMetrics):
        self.s = settings
        self.m = metrics

    def handle(self, app_pid: int, user: str, service: str, raw_options: dict,
               deadline: float | None = None, still_wanted: Callable[[], str | None] = _always_wanted) -> Reply | None:
        """Decide for the PAM application process app_pid (already verified).

        deadline (time.monotonic()): every step that may block (the RPC, munged) ends by
        then. still_wanted(): None while the login still waits for this decision, else why
        not; asked again right before adopting. None is returned for an abandoned decision."""
        start = time.perf_counter()
        opts, warnings = policy.parse_options(raw_options, self.s.base_options)
        for w in warnings:
            log.warning("option ignored: %s", w)
        src = "-"
        try:
            decision, src = self._decide(app_pid, user, service, opts, deadline, still_wanted)
        except Abandoned as exc:
            self.m.abandoned.labels(exc.reason).inc()
            log.warning("user=%s service=%s from=%s: decision abandoned (%s) after %.1f ms: nothing applied",
                        user, service, src, exc.reason, (time.perf_counter() - start) * 1000)
            return None
        except Exception as exc:  # noqa: BLE001 - any surprise is a generic failure, never a hung login
            log.exception("internal error deciding for %s", user)
            decision = policy.generic_failure(opts, "internal_error")
            src = f"- ({type(exc).__name__})"
        elapsed = time.perf_counter() - start
        self.m.decisions.labels(decision.verdict.value, decision.reason).inc()
        self.m.decision_seconds.observe(elapsed)
        if decision.security:
            self.m.security.labels(SECURITY_KIND).inc()
        line = (f"user={user} service={service} from={src} job={decision.job_id or '-'} "
                f"decision={decision.verdict.value} reason={decision.reason} latency_ms={elapsed * 1000:.1f}")
        if decision.security:
            log.warning("SECURITY possible escape attempt: %s", line)
        else:
            log.info(line)
        adopted = decision.job_id if decision.verdict is policy.Verdict.ADOPT else None
        return Reply(decision.verdict.value, policy.pam_exit_code(decision.verdict), decision.message, adopted)

    def _decide(self, app_pid, user, service, opts, deadline, still_wanted) -> tuple[policy.Decision, str]:
        try:
            pw = pwd.getpwnam(user)
            uid = pw.pw_uid
        except KeyError:
            uid = None
        all_jobs = jobs.list_jobs(self.s.nodename, self.s.cgroup_root, self.s.v2_mount) if uid is not None else []
        mine = [j for j in all_jobs if j.uid == uid]
        facts = policy.Facts(
            service=service, user_known=uid is not None, uid=uid,
            jobs=tuple(policy.Job(j.job_id, j.uid, j.start) for j in mine),
            local_job_ids_all_users=frozenset(j.job_id for j in all_jobs),
        )
        d = policy.decide(facts, opts)
        src = "-"
        if d.verdict == policy.Verdict.NEED_RPC:
            answer, src = self._ask_source(app_pid, user, deadline)
            d = policy.decide(replace(facts, callerid=answer), opts)
        if d.verdict == policy.Verdict.ADOPT:
            job = next(j for j in mine if j.job_id == d.job_id)
            why = "deadline" if deadline is not None and time.monotonic() >= deadline else still_wanted()
            if why:
                raise Abandoned(why)
            try:
                cgroupfs.adopt(app_pid, job)
                self.m.adoptions.labels("success").inc()
                log.info("Process %d adopted into job %s", app_pid, job.job_id)
            except cgroupfs.AdoptError as exc:
                self.m.adoptions.labels(exc.reason).inc()
                log.error("adopting process %d into job %s failed (%s): %s", app_pid, job.job_id, exc.reason, exc)
                d = policy.after_adopt_failure(d)
        return d, src

    def _ask_source(self, app_pid: int, user: str, deadline: float | None) -> tuple[policy.CallerAnswer, str]:
        conn = sockets.tcp_connection(app_pid)
        if conn is None:
            self.m.rpc.labels(NO_SOCKET).inc()
            return policy.CallerAnswer(None, NO_SOCKET), "-"
        q = Query.make(conn.remote_ip, conn.remote_port, conn.local_ip, conn.local_port)
        src = endpoint(q.src_ip, q.src_port)
        timeout = self.s.rpc_timeout
        if deadline is not None:
            timeout = min(timeout, deadline - time.monotonic())
            if timeout <= 0:
                raise Abandoned("deadline")
        start = time.perf_counter()
        try:
            ans = ask((str(q.src_ip), self.s.rpc_port), q, timeout, self.s.munge_socket)
        except RpcError as exc:
            self.m.rpc_seconds.observe(time.perf_counter() - start)
            self.m.rpc.labels(exc.reason).inc()
            log.warning("callerid RPC to %s failed: %s", q.src_ip, exc)
            return policy.CallerAnswer(None, exc.reason), src
        self.m.rpc_seconds.observe(time.perf_counter() - start)
        if ans.status != Status.FOUND:
            self.m.rpc.labels("not_found").inc()
            return policy.CallerAnswer(None), src
        self.m.rpc.labels("found_job" if ans.job_id else "no_job").inc()
        log.info("From %s port %d as %s: source %s says pid %d (%s) uid %s job %s (from %s)", q.src_ip, q.src_port,
                 user, ans.node, ans.pid, ans.comm, ans.uid, ans.job_id or "-", ans.source.name.lower())
        return policy.CallerAnswer(ans.job_id), src
