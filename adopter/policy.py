"""The adopter's decision (adopt, allow, deny or ignore an ssh login) as pure functions over plain data.

No I/O here: the daemon gathers `Facts` (PAM service and user, the user's jobs on this
node, the source node's callerid answer) and acts on the returned `Decision`. The
options mirror pam_slurm_adopt's, with the same names and defaults; the one addition is
that the job named by the source node is checked against the PAM user's uid before it
is adopted (pam_slurm_adopt adopts whatever job the RPC names).

Every situation these functions tell apart, with its decision, is in adopter/decision_table.py
(docs/DECISIONS.md and the metrics' label sets come from there).
"""

from __future__ import annotations

from dataclasses import dataclass, fields, replace
from enum import Enum

from callerid.slurm_cgroup import job_order


class Verdict(str, Enum):
    ADOPT = "adopt"        # move the sshd into decision.job_id, then PAM success
    ALLOW = "allow"        # PAM success, session not adopted
    DENY = "deny"          # PAM failure, decision.message shown to the user
    IGNORE = "ignore"      # PAM_IGNORE in spirit: let the rest of the stack decide
    NEED_RPC = "need_rpc"  # not final: ask the source node, put its answer in Facts.callerid, decide again


NO_JOBS_ACTIONS = ("deny", "ignore")
UNKNOWN_ACTIONS = ("newest", "allow", "deny")
MODES = ("enforce", "audit")
ADOPT_FAILURE_ACTIONS = ("allow", "deny")
GENERIC_FAILURE_ACTIONS = ("ignore", "allow", "deny")

_CHOICES = {
    "action_no_jobs": NO_JOBS_ACTIONS,
    "action_unknown": UNKNOWN_ACTIONS,
    "action_adopt_failure": ADOPT_FAILURE_ACTIONS,
    "action_generic_failure": GENERIC_FAILURE_ACTIONS,
    "mode": MODES,
}
_BOOLS = ("ignore_root", "single_job_skip_rpc", "join_container", "job_group", "disable_x11")


@dataclass(frozen=True)
class Options:
    """pam_slurm_adopt's options, same names and defaults, plus callerid's `mode`.

    `mode=audit` decides, logs and counts as `enforce` would, but allows every login and
    adopts nothing. `join_container`, `job_group` (add the job's group to an adopted
    session's supplementary groups), `disable_x11` (no DISPLAY/XAUTHORITY from the job's
    X11 forwarding) and `nodename` are not used by decide(): the daemon reads them
    (nodename "" means callerid.toml's)."""

    action_no_jobs: str = "deny"
    action_unknown: str = "newest"
    action_adopt_failure: str = "allow"
    action_generic_failure: str = "ignore"
    ignore_root: bool = True
    single_job_skip_rpc: bool = True
    service: tuple[str, ...] = ("sshd",)  # '*' matches every service
    mode: str = "enforce"
    join_container: bool = True
    job_group: bool = True
    disable_x11: bool = False
    nodename: str = ""

    def __post_init__(self):
        # Options built by hand (e.g. from callerid.toml, where service is a list) get the
        # same checks as parsed ones, so decide() never meets a value it cannot act on.
        if not isinstance(self.service, tuple):
            object.__setattr__(self, "service", tuple(self.service))
        for name, allowed in _CHOICES.items():
            if getattr(self, name) not in allowed:
                raise ValueError(f"{name}={getattr(self, name)!r}: expected one of {', '.join(allowed)}")
        for name in _BOOLS:
            if not isinstance(getattr(self, name), bool):
                raise ValueError(f"{name}={getattr(self, name)!r}: expected a boolean")
        if not self.service or not all(isinstance(s, str) and s for s in self.service):
            raise ValueError(f"service={self.service!r}: expected a non-empty list of service names")

    def handles(self, service: str) -> bool:
        return "*" in self.service or service in self.service


_TRUE = ("1", "yes", "true")
_FALSE = ("0", "no", "false")

# Options of the PAM line that pam_callerid.so itself reads (log_level: its syslog
# level); the daemon takes them without a warning.
MODULE_ONLY = ("log_level",)


def _parse_value(name: str, text: str):
    """The typed value of option `name`, or raise ValueError with a short reason."""
    value = text.strip()
    if name in _CHOICES:
        v = value.lower()
        if v not in _CHOICES[name]:
            raise ValueError(f"expected one of {', '.join(_CHOICES[name])}")
        return v
    if name in _BOOLS:
        v = value.lower()
        if v in _TRUE:
            return True
        if v in _FALSE:
            return False
        raise ValueError("expected 1/0, yes/no or true/false")
    if name == "service":
        services = tuple(s.strip() for s in value.split(",") if s.strip())
        if not services:
            raise ValueError("expected a comma-separated list of PAM service names or '*'")
        return services
    if name == "nodename":
        if not value or "/" in value or value in (".", ".."):
            raise ValueError("expected a Slurm node name")
        return value
    raise KeyError(name)


def parse_options(pairs: dict[str, str], base: Options) -> tuple[Options, list[str]]:
    """Apply 'name=value' settings over base; return the options and a list of warnings.

    As in pam_slurm_adopt, an unknown name or a bad value is not fatal: it is reported
    and the base value is kept, so a typo on a PAM line never locks everyone out.
    Names and choice values are matched case-insensitively.
    """
    known = {f.name for f in fields(Options)}
    changes: dict = {}
    warnings: list[str] = []
    for raw_name, text in pairs.items():
        name = raw_name.strip().lower()
        if name in MODULE_ONLY:
            continue
        if name not in known:
            warnings.append(f"{raw_name}={text}: unknown option; ignored")
            continue
        try:
            changes[name] = _parse_value(name, text)
        except ValueError as exc:
            warnings.append(f"{raw_name}={text}: bad value ({exc}); keeping {name}={show_value(getattr(base, name))}")
    return replace(base, **changes), warnings


def show_value(value) -> str:
    """An option value as it is written on a PAM line or in callerid.toml."""
    if isinstance(value, bool):
        return "1" if value else "0"
    if isinstance(value, tuple):
        return ",".join(value)
    return str(value)


@dataclass(frozen=True)
class Job:
    job_id: str   # identity as Slurm's cgroup names it: decimal job id or SLUID (callerid.slurm_cgroup)
    uid: int
    start: float  # for 'newest': larger is newer; ties broken by job_order (the later job)


@dataclass(frozen=True)
class CallerAnswer:
    """What the source node's tracer said, already reduced to plain data."""

    job_id: str | None        # job named by the answer (None: found no job / not found)
    error: str | None = None  # why the RPC failed ('timeout', 'connect', 'no_socket', ...); None if it answered


@dataclass(frozen=True)
class Facts:
    service: str
    user_known: bool          # PAM_USER resolved to a passwd entry
    uid: int | None
    jobs: tuple[Job, ...]     # extern steps on this node owned by uid (ownership is re-checked here anyway)
    callerid: CallerAnswer | None = None  # None until the RPC has been made
    local_job_ids_all_users: frozenset[str] = frozenset()  # every job with an extern step here, any owner


@dataclass(frozen=True)
class Decision:
    verdict: Verdict
    reason: str                                # stable snake_case token: metric label and log field
    job_id: str | None = None                  # the job to adopt into (ADOPT, and adopt_failed_*)
    on_adopt_failure: Verdict | None = None    # ALLOW or DENY, for ADOPT
    message: str = ""                          # shown to the user on DENY
    security: bool = False                     # log as a possible escape attempt


MSG_NO_JOBS = "Access denied by callerid: you have no active jobs on this node"
MSG_UNKNOWN = "Access denied by callerid: the source of this connection is not one of your jobs on this node"
MSG_ADOPT_FAILED = "Access denied by callerid: your session could not be added to your job on this node"
MSG_GENERIC = "Access denied by callerid: access to this node could not be checked"

# Why the source node's answer did not lead to an adoption; the reason token is
# f"{why}_{action_unknown}", e.g. "rpc_failed_newest", "foreign_job_deny".
UNKNOWN_WHYS = ("no_answer", "rpc_failed", "foreign_job", "job_not_here")

# Reasons callers pass to generic_failure(): the daemon when the PAM user has no passwd
# entry; the PAM module when it gets no usable answer from the daemon in time.
REASON_UNKNOWN_USER = "unknown_user"
REASON_DAEMON_UNREACHABLE = "daemon_unreachable"
REASON_DEADLINE = "deadline"
REASON_INTERNAL_ERROR = "internal_error"
GENERIC_FAILURE_REASONS = (REASON_UNKNOWN_USER, REASON_DAEMON_UNREACHABLE, REASON_DEADLINE, REASON_INTERNAL_ERROR)

# Every reason decide(), after_adopt_failure() and generic_failure() (with the reasons
# above) can return: the label values to pre-initialise metrics with.
REASONS = (
    ("service_not_handled", "root", "no_jobs", "no_jobs_ignored", "single_job", "need_rpc", "callerid")
    + tuple(f"{why}_{action}" for why in UNKNOWN_WHYS for action in UNKNOWN_ACTIONS)
    + tuple(f"adopt_failed_{action}" for action in ADOPT_FAILURE_ACTIONS)
    + GENERIC_FAILURE_REASONS
)


def _adopt(job_id: str, reason: str, opts: Options, security: bool = False) -> Decision:
    on_failure = Verdict.ALLOW if opts.action_adopt_failure == "allow" else Verdict.DENY
    return Decision(Verdict.ADOPT, reason, job_id=job_id, on_adopt_failure=on_failure, security=security)


def newest(jobs) -> Job:
    """The newest job: latest start, then the later job: highest job id (as current
    pam_slurm_adopt), or for SLUID-named jobs (Slurm 26.05) the later SLUID."""
    return max(jobs, key=lambda j: (j.start, job_order(j.job_id)))


def decide(facts: Facts, opts: Options) -> Decision:
    """What to do with this login, given what is known so far (see docs/DECISIONS.md)."""
    if not opts.handles(facts.service):
        return Decision(Verdict.IGNORE, "service_not_handled")
    # pam_slurm_adopt fails the session outright when the user lookup fails; callerid
    # treats it like any other "nothing could be determined" case (action_generic_failure).
    if not facts.user_known or facts.uid is None:
        return generic_failure(opts, REASON_UNKNOWN_USER)
    if facts.uid == 0 and opts.ignore_root:
        return Decision(Verdict.IGNORE, "root")

    # Discovery already lists only the user's jobs; re-check, so a job owned by someone
    # else can never be adopted into, and counts as foreign if the source names it.
    own = tuple(j for j in facts.jobs if j.uid == facts.uid)
    own_ids = {j.job_id for j in own}
    others_here = set(facts.local_job_ids_all_users) | {j.job_id for j in facts.jobs}
    others_here -= own_ids

    if not own:
        if opts.action_no_jobs == "deny":
            return Decision(Verdict.DENY, "no_jobs", message=MSG_NO_JOBS)
        return Decision(Verdict.IGNORE, "no_jobs_ignored")
    if len(own) == 1 and opts.single_job_skip_rpc:
        return _adopt(own[0].job_id, "single_job", opts)
    if facts.callerid is None:
        return Decision(Verdict.NEED_RPC, "need_rpc")

    answer = facts.callerid
    security = False
    if answer.error is not None:
        # An error wins over any job id that came with it: a failed RPC proves nothing.
        why = "rpc_failed"
    elif answer.job_id is None:
        why = "no_answer"
    elif answer.job_id in own_ids:
        return _adopt(answer.job_id, "callerid", opts)
    elif answer.job_id in others_here:
        # The connection comes from another user's job on this very node: someone is
        # trying to get into a job that is not theirs (pam_slurm_adopt would adopt it).
        why, security = "foreign_job", True
    else:
        why = "job_not_here"

    reason = f"{why}_{opts.action_unknown}"
    if opts.action_unknown == "newest":
        return _adopt(newest(own).job_id, reason, opts, security=security)
    if opts.action_unknown == "allow":
        return Decision(Verdict.ALLOW, reason, security=security)
    return Decision(Verdict.DENY, reason, message=MSG_UNKNOWN, security=security)


def after_adopt_failure(decision: Decision) -> Decision:
    """The decision once adopting into decision.job_id failed (action_adopt_failure).

    Unlike pam_slurm_adopt, which falls back to action_unknown when adopting the job
    the RPC named fails, no other job is tried: a session that came from job J belongs
    in J or nowhere.
    """
    if decision.verdict is not Verdict.ADOPT or decision.on_adopt_failure not in (Verdict.ALLOW, Verdict.DENY):
        raise ValueError(f"not an adoption decision: {decision!r}")
    if decision.on_adopt_failure is Verdict.ALLOW:
        return Decision(Verdict.ALLOW, "adopt_failed_allow", job_id=decision.job_id, security=decision.security)
    return Decision(Verdict.DENY, "adopt_failed_deny", job_id=decision.job_id,
                    message=MSG_ADOPT_FAILED, security=decision.security)


def generic_failure(opts: Options, reason: str) -> Decision:
    """action_generic_failure applied; reason is the caller's token (see GENERIC_FAILURE_REASONS)."""
    if opts.action_generic_failure == "allow":
        return Decision(Verdict.ALLOW, reason)
    if opts.action_generic_failure == "deny":
        return Decision(Verdict.DENY, reason, message=MSG_GENERIC)
    return Decision(Verdict.IGNORE, reason)


PAM_RETURN = {Verdict.ADOPT: "PAM_SUCCESS", Verdict.ALLOW: "PAM_SUCCESS", Verdict.IGNORE: "PAM_IGNORE",
              Verdict.DENY: "PAM_PERM_DENIED"}


def pam_return(verdict: Verdict) -> str:
    """What pam_callerid.so returns for a verdict, as pam_slurm_adopt does
    (adopter/pam/pam_callerid.c pam_code; a unit test runs the module to check)."""
    verdict = Verdict(verdict)
    if verdict is Verdict.NEED_RPC:
        raise ValueError("need_rpc is not a final verdict")
    return PAM_RETURN[verdict]


def enforced(decision: Decision, opts: Options) -> Verdict:
    """The verdict the PAM module acts on: the decision's, except in mode=audit, where
    a login that would be adopted or denied is allowed (and nothing is adopted)."""
    if opts.mode == "audit" and decision.verdict in (Verdict.ADOPT, Verdict.DENY):
        return Verdict.ALLOW
    return decision.verdict


# ---------------------------------------------------------------------------
# `callerid attach JOBID`: the user corrects a guess (like PBS's pbs_attach -j).

# Sessions whose job was a guess (or that were let in unadopted) because the source node
# could not say: only these may be moved by their user. A session the caller ID placed
# (reason "callerid"), a single job, and a login from another user's job (foreign_job_*,
# a possible escape) stay where the decision put them.
ATTACH_FROM_WHYS = ("no_answer", "rpc_failed", "job_not_here")
ATTACH_RESULTS = ("attached", "no_session", "not_your_session", "determined", "not_your_job", "same_job",
                  "bad_request", "failed")


ATTACH_MESSAGES = {
    "attached": "callerid: this session is now in job {job}",
    "no_session": "callerid: this is not an ssh session the adopter placed on this node",
    "not_your_session": "callerid: this session belongs to another user",
    "determined": "callerid: this session's job was determined by where the connection came from; it stays there",
    "not_your_job": "callerid: job {job} is not one of your jobs on this node",
    "same_job": "callerid: this session is already in job {job}",
    "bad_request": "callerid: usage: callerid attach JOBID",
    "failed": "callerid: moving this session into job {job} failed; see the adopter's log",
}


def decide_attach(session_reason: str | None, session_uid: int | None, session_job: str | None,
                  caller_uid: int, target_job: str, own_job_ids) -> str:
    """Whether a caller may move its ssh session into target_job: "attached" (go ahead) or
    the reason it may not (ATTACH_RESULTS). session_*: what the adopter recorded when it
    decided the session's login (None: no login of this adopter)."""
    if session_reason is None:
        return "no_session"
    if session_uid != caller_uid:
        return "not_your_session"
    if not any(session_reason.startswith(f"{why}_") for why in ATTACH_FROM_WHYS):
        return "determined"
    if target_job not in set(own_job_ids):
        return "not_your_job"   # another user's job, or not on this node: never
    if target_job == session_job:
        return "same_job"
    return "attached"
