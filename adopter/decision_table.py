"""The decision table for administrators: every situation adopter/policy.py tells apart,
one example each, with the outcome computed by decide()/after_adopt_failure()/
generic_failure(), so docs/DECISIONS.md cannot disagree with the code. The adopter's
metrics create their (verdict, reason) label pairs from it too.

    python3 -m callerid.adopter.decision_table > docs/DECISIONS.md
"""

from __future__ import annotations

from .policy import (
    ADOPT_FAILURE_ACTIONS,
    GENERIC_FAILURE_ACTIONS,
    NO_JOBS_ACTIONS,
    REASON_DAEMON_UNREACHABLE,
    REASON_DEADLINE,
    REASON_INTERNAL_ERROR,
    UNKNOWN_ACTIONS,
    CallerAnswer,
    Decision,
    Facts,
    Job,
    Options,
    Verdict,
    after_adopt_failure,
    decide,
    generic_failure,
    pam_return,
    show_value,
)

_UID = 1000
_OTHER_UID = 1001
_OLD = Job(job_id="101", uid=_UID, start=1000.0)
_NEW = Job(job_id="102", uid=_UID, start=2000.0)
_FOREIGN = "900"
_ELSEWHERE = "77"


def _facts(jobs=(_OLD, _NEW), callerid=None, uid=_UID, user_known=True, service="sshd") -> Facts:
    return Facts(service=service, user_known=user_known, uid=uid, jobs=tuple(jobs), callerid=callerid,
                 local_job_ids_all_users=frozenset({j.job_id for j in jobs} | {_FOREIGN}))


def _outcome(d: Decision) -> str:
    if d.verdict is Verdict.ADOPT:
        which = {_OLD.job_id: "the job the connection came from",
                 _NEW.job_id: "the user's newest job"}.get(d.job_id, "the job")
        if d.reason == "single_job":
            which = "the user's only job"
        text = f"adopt into {which}; login allowed"
    elif d.verdict is Verdict.ALLOW:
        text = "login allowed, not adopted"
    elif d.verdict is Verdict.DENY:
        text = f'login denied: "{d.message}"'
    elif d.verdict is Verdict.IGNORE:
        text = "no opinion: the other modules of the account stack decide"
    else:
        text = "ask the source node's tracer which job opened the connection, then decide again"
    if d.security:
        text += "; logged as a possible escape attempt"
    return text


def _opt_text(**kw) -> str:
    defaults = Options()
    parts = []
    for name, value in kw.items():
        s = f"{name}={show_value(value)}"
        if getattr(defaults, name) == value:
            s += " (default)"
        parts.append(s)
    return ", ".join(parts) or "any"


def decision_table() -> list[dict]:
    """Rows (situation, options, verdict, reason, outcome) for the administrators' table."""
    rows: list[dict] = []

    def row(situation: str, decision: Decision, **opts_kw):
        rows.append({"situation": situation, "options": _opt_text(**opts_kw),
                     "verdict": decision.verdict.value, "reason": decision.reason,
                     "security": decision.security, "outcome": _outcome(decision),
                     "pam": "" if decision.verdict is Verdict.NEED_RPC else pam_return(decision.verdict)})

    row("PAM service not listed in `service`", decide(_facts(service="login"), Options()))
    for a in GENERIC_FAILURE_ACTIONS:
        d = decide(_facts(user_known=False, uid=None), Options(action_generic_failure=a))
        row("PAM user has no passwd entry", d, action_generic_failure=a)
    row("user is root (with ignore_root=0, root goes through the rows below like anyone)",
        decide(_facts(uid=0, jobs=()), Options()), ignore_root=True)
    for a in NO_JOBS_ACTIONS:
        row("user has no job on this node", decide(_facts(jobs=()), Options(action_no_jobs=a)), action_no_jobs=a)
    row("user has exactly one job here", decide(_facts(jobs=(_OLD,)), Options()), single_job_skip_rpc=True)
    row("user has several jobs here (or one, with single_job_skip_rpc=0)",
        decide(_facts(), Options()))
    row("source node names one of the user's jobs here", decide(_facts(callerid=CallerAnswer(_OLD.job_id)), Options()))

    cases = (
        ("source node found no job for the connection", CallerAnswer(None)),
        ("asking the source node failed (no tracer, timeout, connection refused, no socket found)",
         CallerAnswer(None, error="timeout")),
        ("source node names **another user's** job on this node", CallerAnswer(_FOREIGN)),
        ("source node names a job that is not on this node", CallerAnswer(_ELSEWHERE)),
    )
    for situation, answer in cases:
        for a in UNKNOWN_ACTIONS:
            row(situation, decide(_facts(callerid=answer), Options(action_unknown=a)), action_unknown=a)
    for a in ADOPT_FAILURE_ACTIONS:
        opts = Options(action_adopt_failure=a)
        row("moving the sshd into the chosen job failed", after_adopt_failure(decide(_facts(jobs=(_OLD,)), opts)),
            action_adopt_failure=a)
    for reason, situation in (
        (REASON_DAEMON_UNREACHABLE, "pam_callerid.so cannot reach the adopter daemon, or its reply is unusable"),
        (REASON_DEADLINE, "pam_callerid.so's total deadline (`deadline=`, default 5 s) passed"),
        (REASON_INTERNAL_ERROR, "the adopter daemon failed while deciding"),
    ):
        for a in GENERIC_FAILURE_ACTIONS:
            row(situation, generic_failure(Options(action_generic_failure=a), reason), action_generic_failure=a)
    return rows


def verdict_reason_pairs() -> list[tuple[str, str]]:
    """Every (verdict, reason) a counted decision can have (NEED_RPC is never final)."""
    return sorted({(r["verdict"], r["reason"]) for r in decision_table() if r["verdict"] != Verdict.NEED_RPC.value})


_INTRO = """\
# What the adopter decides

Generated by `python3 -m callerid.adopter.decision_table > docs/DECISIONS.md` from the policy code
(`adopter/policy.py`); a unit test fails if this file and the code disagree.

An ssh login reaches the PAM account stack; `pam_callerid.so` (last in the stack) asks
the adopter daemon, which applies these rules **in order** and stops at the first that
matches. The options have pam_slurm_adopt's names and defaults; they are set in
`callerid.toml` `[adopter]` and can be overridden as `name=value` arguments on the
module's PAM line. An unknown option or a bad value is logged and the default kept.

"reason" is the `reason` label of the adopter's metrics and the `reason=` field of its
log lines. "Job here" means a job with an extern step on this node. "PAM return" is what
the module returns to PAM, as pam_slurm_adopt would.
"""

_NOTES = """\
## Differences from pam_slurm_adopt

- **The source's answer is checked.** pam_slurm_adopt adopts whatever job the source
  node names. callerid adopts it only if it is one of the PAM user's own jobs here. If
  it belongs to another user, the login is treated like any unresolved connection
  (`action_unknown`), never adopted into that job, and logged as a possible escape
  attempt (`foreign_job_*`).
- **Unknown user.** pam_slurm_adopt fails with a session error when the PAM user has no
  passwd entry; callerid applies `action_generic_failure`.
- **Adoption failure.** When adopting into the job the source named fails,
  pam_slurm_adopt goes on to `action_unknown` (and may adopt a different job); callerid
  applies `action_adopt_failure` directly: a session that came from job J belongs in J
  or nowhere.
- **Newest job** is the one with the latest start; on a tie the later job wins: the larger
  job id, or where Slurm 26.05 names job cgroups by SLUID, the later SLUID (SLUIDs are
  time-ordered).

## What the session gets, and what the user is told

- **Denied**: the text in the table, through the PAM conversation (`pam_error`); sshd
  shows it to the user. Nothing else reaches the user: why the daemon could not be asked
  goes to syslog (facility authpriv) and the adopter's log.
- **Adopted**: `SLURM_JOB_ID` in the PAM environment (as pam_slurm_adopt), plus the
  job's own values of the variables listed in `[adopter] job_env` (GPU visibility:
  `CUDA_VISIBLE_DEVICES`, ...), read from a process of the job. With
  `join_container=1` (default) and a `job_container/tmpfs` job, the session joins the
  job's mount namespace (its `/tmp`, `/dev/shm`).

## Audit mode

With `mode=audit` every row above is decided, logged (`decision=deny audit=1`) and
counted (`mode="audit"` label) exactly as in the default `mode=enforce`, but the login is
allowed whenever the decision would adopt or deny (PAM_SUCCESS, no message), and
nothing is adopted. Rows whose verdict is ignore or allow behave as in enforce mode.
"""


def render_markdown() -> str:
    """docs/DECISIONS.md."""
    out = [_INTRO, "| situation | option values | what happens | verdict | reason | PAM return |",
           "| --- | --- | --- | --- | --- | --- |"]
    for r in decision_table():
        out.append(f"| {r['situation']} | {r['options']} | {r['outcome']} | {r['verdict']} | `{r['reason']}` "
                   f"| {r['pam'] or '-'} |")
    out += ["", _NOTES]
    return "\n".join(out)


if __name__ == "__main__":
    import sys

    sys.stdout.write(render_markdown())
