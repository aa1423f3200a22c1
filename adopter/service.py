"""One login: gather facts, ask the source node if needed, decide, adopt, log, count."""

from __future__ import annotations

import logging
import os
import pwd
import socket
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, replace
from typing import Callable

from callerid.client import RpcError, ask
from callerid.config import DEFAULT_PAM_APPLICATIONS
from callerid.inet import endpoint
from callerid.linux import sockets
from callerid.protocol import Query, Status

from . import attach, cgroupfs, jobenv, jobns, jobs, policy, stepd
from .metrics import NO_SOCKET, SECURITY_KIND, AdopterMetrics
from .pamwire import Reply
from .pamwire import escape as escape_field  # percent-encoding: a log line stays one line

log = logging.getLogger("callerid.adopter")
# One slurmstepd answer (a local Unix socket round trip); a stepd this slow is stuck.
STEPD_TIMEOUT = 0.5


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
    job_env: tuple = ()
    job_container_conf: str = "/etc/slurm/job_container.conf"
    slurm_conf: str = "/etc/slurm/slurm.conf"


@dataclass
class Session:
    """What an adopted session gets besides its cgroups."""

    env: dict
    namespace: str = ""
    group: int | None = None


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
        self.logins = attach.Logins()
        # Gathers an adopted session's environment beside the adoption's cgroup writes.
        self._pool = ThreadPoolExecutor(max_workers=4, thread_name_prefix="job-view")
        self._slurm_cache: tuple | None = None   # (what slurm.conf was read as, _slurm()'s answer)

    def handle(self, app_pid: int, user: str, service: str, raw_options: dict,
               deadline: float | None = None, still_wanted: Callable[[], str | None] = _always_wanted) -> Reply | None:
        """Decide for the PAM application process app_pid (already verified).

        deadline (time.monotonic()): every step that may block (the RPC, munged) ends by
        then. still_wanted(): None while the login still waits for this decision, else why
        not; asked again right before adopting. None is returned for an abandoned decision."""
        start = time.perf_counter()
        opts, warnings = policy.parse_options(raw_options, self.s.base_options)
        for w in warnings:
            log.warning("option ignored: %s", escape_field(w))
        src = "-"
        session = Session({})
        try:
            decision, src, session = self._decide(app_pid, user, service, opts, deadline, still_wanted)
        except Abandoned as exc:
            self.m.abandoned.labels(exc.reason).inc()
            log.warning("user=%s service=%s from=%s: decision abandoned (%s) after %.1f ms: nothing applied",
                        escape_field(user), escape_field(service), src, exc.reason,
                        (time.perf_counter() - start) * 1000)
            return None
        except Exception as exc:  # noqa: BLE001 - any surprise is a generic failure, never a hung login
            log.exception("internal error deciding for %s", escape_field(user))
            decision = policy.generic_failure(opts, "internal_error")
            src = f"- ({type(exc).__name__})"
        elapsed = time.perf_counter() - start
        self.m.decisions.labels(decision.verdict.value, decision.reason, opts.mode).inc()
        self.m.decision_seconds.observe(elapsed)
        if decision.security:
            self.m.security.labels(SECURITY_KIND).inc()
        audit = " audit=1" if opts.mode == "audit" else ""
        line = (f"user={escape_field(user)} service={escape_field(service)} from={src} "
                f"job={decision.job_id or '-'} "
                f"decision={decision.verdict.value} reason={decision.reason}{audit} latency_ms={elapsed * 1000:.1f}")
        if decision.security:
            log.warning("SECURITY possible escape attempt: %s", line)
        else:
            log.info(line)
        verdict = policy.enforced(decision, opts)
        if verdict is not decision.verdict:  # audit: allowed, adopted nowhere, nothing to tell
            return Reply(verdict.value, decision.reason)
        job = decision.job_id if verdict is policy.Verdict.ADOPT else None
        return Reply(verdict.value, decision.reason, decision.message, job, session.namespace, session.env,
                     session.group)

    def _decide(self, app_pid, user, service, opts, deadline, still_wanted) -> tuple[policy.Decision, str, Session]:
        try:
            pw = pwd.getpwnam(user)
            uid, primary_gid = pw.pw_uid, pw.pw_gid
        except KeyError:
            uid = primary_gid = None
        nodename = opts.nodename or self.s.nodename
        all_jobs = self._jobs(nodename, deadline) if uid is not None else []
        mine = [j for j in all_jobs if j.uid == uid]
        facts = policy.Facts(
            service=service, user_known=uid is not None, uid=uid,
            jobs=tuple(policy.Job(j.job_id, j.uid, j.start) for j in mine),
            local_job_ids_all_users=frozenset(j.job_id for j in all_jobs),
        )
        d = policy.decide(facts, opts)
        src = "-"
        session = Session({})
        if d.verdict == policy.Verdict.NEED_RPC:
            answer, src = self._ask_source(app_pid, user, deadline)
            d = policy.decide(replace(facts, callerid=answer), opts)
        if d.verdict == policy.Verdict.ADOPT and opts.mode != "audit":
            job = next(j for j in mine if j.job_id == d.job_id)

            def proceed() -> str | None:
                return "deadline" if deadline is not None and time.monotonic() >= deadline else still_wanted()
            why = proceed()
            if why:
                raise Abandoned(why)
            try:
                session.namespace = self._namespace(job, nodename, opts)
                # What the session takes from the job does not depend on the adoption: it is
                # gathered while the cgroup.procs writes wait in the kernel (an RCU grace period).
                view = self._pool.submit(self._job_view, job, nodename, opts, deadline)
                # The deadline bounds when a write may start; once all are done, only whether the
                # login still waits counts (the deadline keeps a margin for the reply).
                try:
                    cgroupfs.adopt(app_pid, job, proceed, still_wanted)   # on failure the view is left unread
                except cgroupfs.Stopped as exc:
                    self._stopped(app_pid, job, exc)
                    raise Abandoned(exc.reason) from exc
                env, gid = view.result()
                self.m.adoptions.labels("success").inc()
                log.info("Process %d adopted into job %s", app_pid, job.job_id)
                session.env = env
                if gid not in (None, 0, primary_gid):   # never root's group; the primary needs nothing
                    session.group = gid
            except (cgroupfs.AdoptError, jobns.NamespaceError) as exc:
                reason = getattr(exc, "reason", "namespace")
                self.m.adoptions.labels(reason).inc()
                log.error("adopting process %d into job %s failed (%s): %s", app_pid, job.job_id, reason, exc)
                d = policy.after_adopt_failure(d)
                session = Session({})
        if opts.mode != "audit" and d.verdict in (policy.Verdict.ADOPT, policy.Verdict.ALLOW):
            self.logins.record(app_pid, uid, d.reason, d.job_id if d.verdict is policy.Verdict.ADOPT else None)
        return d, src, session

    def _stopped(self, app_pid: int, job: jobs.LocalJob, exc: cgroupfs.Stopped) -> None:
        """An adoption stopped between its writes (docs/RELIABILITY.md, "An adoption past its
        deadline"): undone, or left partial where the move back failed, counted either way."""
        if not exc.written:
            return   # nothing was written: a plain abandoned decision
        if exc.left:
            self.m.abandoned_adoptions.labels("left_partial").inc()
            log.error("adoption of process %d into job %s %s: partial adoption left in place",
                      app_pid, job.job_id, exc)
        else:
            self.m.abandoned_adoptions.labels("undone").inc()
            log.warning("adoption of process %d into job %s %s: undone", app_pid, job.job_id, exc)

    def attach(self, caller_pid: int, caller_uid: int, job_id: str) -> tuple[str, str]:
        """`callerid attach`: move the caller's session into its own job job_id, if
        policy.decide_attach allows; (result, message for the user)."""
        found = self.logins.session_of(caller_pid)
        sshd, login = found if found else (None, None)
        mine = [j for j in self._jobs(self.s.nodename, None) if j.uid == caller_uid]
        result = policy.decide_attach(login.reason if login else None, login.uid if login else None,
                                      login.job_id if login else None, caller_uid, job_id,
                                      {j.job_id for j in mine})
        moved = 0
        if result == "attached":
            job = next(j for j in mine if j.job_id == job_id)
            try:
                for pid in attach.descendants(sshd):
                    try:
                        cgroupfs.adopt(pid, job)
                        moved += 1
                    except cgroupfs.AdoptError:
                        if pid == sshd:
                            raise
                        # a session process that exited meanwhile: nothing to move
                self.logins.moved(sshd, job_id)
            except cgroupfs.AdoptError as exc:
                log.error("attach: moving session %d into job %s failed: %s", sshd, job_id, exc)
                result = "failed"
        self.m.attach.labels(result).inc()
        log.info("attach uid=%d session=%s from_job=%s to_job=%s result=%s processes=%d", caller_uid,
                 sshd if sshd else "-", (login.job_id if login else None) or "-", job_id, result, moved)
        return result, policy.ATTACH_MESSAGES[result].format(job=job_id)

    def _slurm(self, nodename: str) -> tuple[str, bool]:
        """(SlurmdSpoolDir, whether jobs may forward X11) from slurm.conf as it is now; the
        file is re-read only when it changes (not at every login)."""
        try:
            st = os.stat(self.s.slurm_conf)
            key = (nodename, st.st_mtime_ns, st.st_size, st.st_ino)
        except OSError:
            key = (nodename, None)
        if self._slurm_cache is None or self._slurm_cache[0] != key:
            try:
                with open(self.s.slurm_conf) as f:
                    conf = f.read()
                x11 = stepd.may_forward_x11(conf)
            except OSError:
                conf, x11 = "", True  # Slurm's built-in SlurmdSpoolDir; X11 unknown: ask
            spool = stepd.spool_dir(conf, nodename, socket.gethostname().split(".")[0])
            self._slurm_cache = (key, (spool, x11))
        return self._slurm_cache[1]

    @staticmethod
    def _stepd_timeout(deadline: float | None) -> float:
        return STEPD_TIMEOUT if deadline is None else min(STEPD_TIMEOUT, deadline - time.monotonic())

    def _jobs(self, nodename: str, deadline: float | None) -> list[jobs.LocalJob]:
        """The node's jobs; a v2 job's owner asked of its slurmstepd, each ask bounded by
        STEPD_TIMEOUT and by the request's deadline."""
        spool, _ = self._slurm(nodename)

        def ask_slurm(job_id: str) -> int | None:
            path = stepd.socket_path(spool, nodename, job_id)
            if path is None:
                return None
            left = self._stepd_timeout(deadline)
            return stepd.extern_uid(path, left) if left > 0 else None

        return jobs.list_jobs(nodename, self.s.cgroup_root, self.s.v2_mount, ask_slurm=ask_slurm)

    def _job_view(self, job: jobs.LocalJob, nodename: str, opts: policy.Options,
                  deadline: float | None) -> tuple[dict, int | None]:
        """The session's environment from the job (its variables, then X11's) and the job's group."""
        env, gid = jobenv.job_view(job, self.s.job_env, group=opts.job_group)
        if not opts.disable_x11:
            env.update(self._x11(job, nodename, deadline))
        return env, gid

    def _x11(self, job: jobs.LocalJob, nodename: str, deadline: float | None) -> dict:
        """DISPLAY and XAUTHORITY of the job's X11 forwarding, as its extern step's slurmstepd
        tells them (pam_slurm_adopt's stepd_get_x11_display); {} if it has none. Not asked
        where slurm.conf has no PrologFlags=X11: a round trip to slurmstepd per login saved."""
        spool, x11_possible = self._slurm(nodename)
        if not x11_possible:
            return {}
        path = stepd.socket_path(spool, nodename, job.job_id or "")
        left = self._stepd_timeout(deadline)
        x11 = stepd.x11_display(path, left) if path is not None and left > 0 else None
        if x11 is None:
            return {}
        log.info("job %s forwards X11: DISPLAY=localhost:%d.0", job.job_id, x11.display)
        return x11.environment()

    def _namespace(self, job: jobs.LocalJob, nodename: str, opts: policy.Options) -> str:
        """The job's job_container/tmpfs namespace file to join, checked; "" if none."""
        if not opts.join_container or job.job_id is None:
            return ""
        try:
            with open(self.s.job_container_conf) as f:
                base = jobns.base_path(f.read(), nodename)
        except FileNotFoundError:
            return ""  # no job_container plugin on this node
        except OSError as exc:
            raise jobns.NamespaceError(f"cannot read {self.s.job_container_conf}: {exc}") from exc
        if base is None:
            return ""
        return jobns.namespace_of(base, nodename, job.job_id) or ""

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
