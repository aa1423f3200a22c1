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
    pam_exit_code,
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
                     "exit": "" if decision.verdict is Verdict.NEED_RPC else str(pam_exit_code(decision.verdict))})

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
        (REASON_DAEMON_UNREACHABLE, "the PAM hook cannot reach the adopter daemon"),
        (REASON_DEADLINE, "the PAM hook's total deadline (`deadline_seconds`) passed"),
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

An ssh login reaches the PAM account stack; the callerid hook (`pam_exec`, last in the
stack) asks the adopter daemon, which applies these rules **in order** and stops at the
first that matches. The options have pam_slurm_adopt's names and defaults; they are set
in `callerid.toml` `[adopter]` and can be overridden as `name=value` arguments of the
hook. An unknown option or a bad value is logged and the default kept.

"reason" is the `reason` label of the adopter's metrics and the `reason=` field of its
log lines. "Job here" means a job with an extern step on this node. "hook exit" is the
PAM hook's exit status (see the end of this page).
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

## Exit status seen by PAM

`pam_exec` maps exit status 0 to PAM_SUCCESS and any other status to PAM_SYSTEM_ERR; it
cannot return PAM_IGNORE. The hook therefore exits 0 for adopt, allow and ignore, and 1
only for deny. Since the hook is last in the account stack, the modules before it have
already decided, and exit 0 only means "no objection". pam_exec passes the hook's
standard output (the deny message) on to sshd only with its `stdout` option.
"""


def render_markdown() -> str:
    """docs/DECISIONS.md."""
    out = [_INTRO, "| situation | option values | what happens | verdict | reason | hook exit |",
           "| --- | --- | --- | --- | --- | --- |"]
    for r in decision_table():
        out.append(f"| {r['situation']} | {r['options']} | {r['outcome']} | {r['verdict']} | `{r['reason']}` "
                   f"| {r['exit'] or '-'} |")
    out += ["", _NOTES]
    return "\n".join(out)


if __name__ == "__main__":
    import sys

    sys.stdout.write(render_markdown())
