"""Tests for adopter.policy: an exhaustive table against an independent reference, then the edges."""

from __future__ import annotations

import itertools
from dataclasses import dataclass
from pathlib import Path

import pytest

from callerid.adopter import policy
from callerid.adopter.decision_table import decision_table, render_markdown
from callerid.adopter.policy import (
    CallerAnswer,
    Decision,
    Facts,
    Job,
    Options,
    Verdict,
    after_adopt_failure,
    decide,
    enforced,
    generic_failure,
    pam_return,
    parse_options,
)

DECISIONS_MD = Path(__file__).resolve().parents[2] / "docs" / "DECISIONS.md"

USER = 1000
OTHER = 1001
FOREIGN_JOB = "900"    # another user's job on this node
ELSEWHERE_JOB = "77"   # a job that has no extern step on this node
OLD_ID, NEW_ID = "205", "201" # the newer job has the LOWER id: 'newest' must go by start time first

# ---------------------------------------------------------------------------
# The exhaustive table. Each dimension is listed once; the reference below is a
# deliberately plain, situation-by-situation restatement of docs/REFERENCE "Flow"
# plus callerid's ownership check, sharing no code with adopter.policy. Nor with
# adopter/decision_table.py: its rows are decide()'s own output, so checking decide()
# against them could never fail; the import list is all the two files share.

SERVICE_CASES = ("listed", "star", "not_listed")
ANSWERS = ("none", "own", "foreign", "not_here", "no_job", "error")
DIMENSIONS = dict(
    service_case=SERVICE_CASES,
    user_known=(True, False),
    root=(False, True),
    njobs=(0, 1, 2),
    single_job_skip_rpc=(True, False),
    answer=ANSWERS,
    action_no_jobs=("deny", "ignore"),
    action_unknown=("newest", "allow", "deny"),
    action_adopt_failure=("allow", "deny"),
    action_generic_failure=("ignore", "allow", "deny"),
    ignore_root=(True, False),
)


@dataclass(frozen=True)
class Case:
    service_case: str
    user_known: bool
    root: bool
    njobs: int
    single_job_skip_rpc: bool
    answer: str
    action_no_jobs: str
    action_unknown: str
    action_adopt_failure: str
    action_generic_failure: str
    ignore_root: bool


def all_cases():
    for values in itertools.product(*DIMENSIONS.values()):
        yield Case(*values)


def build(case: Case) -> tuple[Facts, Options]:
    uid = None if not case.user_known else (0 if case.root else USER)
    owner = uid if uid is not None else USER
    old = Job(job_id=OLD_ID, uid=owner, start=100.0)
    new = Job(job_id=NEW_ID, uid=owner, start=500.0)
    jobs = (old, new)[: case.njobs]
    answer = {
        "none": None,
        "own": CallerAnswer(OLD_ID),
        "foreign": CallerAnswer(FOREIGN_JOB),
        "not_here": CallerAnswer(ELSEWHERE_JOB),
        "no_job": CallerAnswer(None),
        "error": CallerAnswer(None, error="timeout"),
    }[case.answer]
    service_opt = {"listed": ("sshd",), "star": ("*",), "not_listed": ("login", "su")}[case.service_case]
    facts = Facts(service="sshd", user_known=case.user_known, uid=uid, jobs=jobs, callerid=answer,
                  local_job_ids_all_users=frozenset({j.job_id for j in jobs} | {FOREIGN_JOB}))
    opts = Options(action_no_jobs=case.action_no_jobs, action_unknown=case.action_unknown,
                   action_adopt_failure=case.action_adopt_failure,
                   action_generic_failure=case.action_generic_failure, ignore_root=case.ignore_root,
                   single_job_skip_rpc=case.single_job_skip_rpc, service=service_opt)
    return facts, opts


def reference(c: Case) -> tuple:
    """(verdict, reason, job_id, on_adopt_failure, security) by hand, one situation at a time."""
    if c.service_case == "not_listed":
        return ("ignore", "service_not_handled", None, None, False)

    if not c.user_known:
        if c.action_generic_failure == "ignore":
            return ("ignore", "unknown_user", None, None, False)
        if c.action_generic_failure == "allow":
            return ("allow", "unknown_user", None, None, False)
        return ("deny", "unknown_user", None, None, False)

    if c.root and c.ignore_root:
        return ("ignore", "root", None, None, False)

    if c.njobs == 0:
        if c.action_no_jobs == "deny":
            return ("deny", "no_jobs", None, None, False)
        return ("ignore", "no_jobs_ignored", None, None, False)

    fallback = "allow" if c.action_adopt_failure == "allow" else "deny"

    if c.njobs == 1 and c.single_job_skip_rpc:
        return ("adopt", "single_job", OLD_ID, fallback, False)

    if c.answer == "none":
        return ("need_rpc", "need_rpc", None, None, False)

    if c.answer == "own":
        return ("adopt", "callerid", OLD_ID, fallback, False)

    newest_id = NEW_ID if c.njobs == 2 else OLD_ID
    if c.answer == "foreign":
        prefix, alarm = "foreign_job", True
    elif c.answer == "not_here":
        prefix, alarm = "job_not_here", False
    elif c.answer == "no_job":
        prefix, alarm = "no_answer", False
    else:
        prefix, alarm = "rpc_failed", False

    if c.action_unknown == "newest":
        return ("adopt", prefix + "_newest", newest_id, fallback, alarm)
    if c.action_unknown == "allow":
        return ("allow", prefix + "_allow", None, None, alarm)
    return ("deny", prefix + "_deny", None, None, alarm)


def summary(d: Decision) -> tuple:
    return (d.verdict.value, d.reason, d.job_id,
            d.on_adopt_failure.value if d.on_adopt_failure is not None else None, d.security)


@pytest.fixture(scope="module")
def table():
    rows = []
    for case in all_cases():
        facts, opts = build(case)
        rows.append((case, facts, decide(facts, opts)))
    return rows


def test_table_size(table):
    n = 1
    for values in DIMENSIONS.values():
        n *= len(values)
    assert len(table) == n == 31104


def test_exhaustive_against_reference(table):
    mismatches = []
    for case, _, got in table:
        want = reference(case)
        if summary(got) != want:
            mismatches.append(f"{case}: got {summary(got)}, want {want}")
    assert not mismatches, f"{len(mismatches)} mismatches, first: " + "\n".join(mismatches[:5])


def test_messages_only_on_denial(table):
    for case, _, d in table:
        if d.verdict is Verdict.DENY:
            assert d.message.startswith("Access denied by callerid: "), case
        else:
            assert d.message == "", case


def test_deny_messages(table):
    for case, _, d in table:
        if d.reason == "no_jobs":
            assert d.message == "Access denied by callerid: you have no active jobs on this node"
        elif d.verdict is Verdict.DENY and d.reason.endswith("_deny") and d.reason != "adopt_failed_deny":
            assert d.message == ("Access denied by callerid: the source of this connection is not one of "
                                 "your jobs on this node"), case


def test_foreign_job_is_never_adopted(table):
    seen_foreign = 0
    for case, facts, d in table:
        assert d.job_id != FOREIGN_JOB, case
        assert d.job_id != ELSEWHERE_JOB, case
        if d.verdict is Verdict.ADOPT:
            own = {j.job_id for j in facts.jobs if j.uid == facts.uid}
            assert d.job_id in own, case
            assert after_adopt_failure(d).job_id == d.job_id
        if d.reason.startswith("foreign_job"):
            seen_foreign += 1
            assert d.security
    assert seen_foreign > 0


def test_security_only_for_foreign_job(table):
    for case, _, d in table:
        assert d.security == d.reason.startswith("foreign_job_"), case


def test_adopt_carries_failure_action_and_nothing_else_does(table):
    for case, _, d in table:
        if d.verdict is Verdict.ADOPT:
            assert d.on_adopt_failure is Verdict(case.action_adopt_failure)
            assert d.job_id is not None
        else:
            assert d.on_adopt_failure is None
            assert d.job_id is None


def test_every_reason_is_declared(table):
    seen = {d.reason for _, _, d in table}
    assert seen <= set(policy.REASONS)
    reachable_by_decide = set(policy.REASONS) - {"adopt_failed_allow", "adopt_failed_deny"} - {
        r for r in policy.GENERIC_FAILURE_REASONS if r != "unknown_user"}
    assert seen == reachable_by_decide
    assert len(set(policy.REASONS)) == len(policy.REASONS)
    for r in policy.REASONS:
        assert r.replace("_", "").isalpha() and r == r.lower()


def test_need_rpc_then_rpc_failure_adopts_single_job():
    job = Job("7", USER, 1.0)
    facts = Facts("sshd", True, USER, (job,), None, frozenset({"7"}))
    opts = Options(single_job_skip_rpc=False)
    assert decide(facts, opts).verdict is Verdict.NEED_RPC
    after = Facts("sshd", True, USER, (job,), CallerAnswer(None, error="connect"), frozenset({"7"}))
    d = decide(after, opts)
    assert (d.verdict, d.reason, d.job_id, d.on_adopt_failure) == (
        Verdict.ADOPT, "rpc_failed_newest", "7", Verdict.ALLOW)


# ---------------------------------------------------------------------------
# Edges the table does not reach.

def facts_with(jobs, answer=None, others=(), uid=USER):
    return Facts("sshd", True, uid, tuple(jobs), answer,
                 frozenset({j.job_id for j in jobs} | set(others)))


def test_newest_tie_broken_by_larger_job_id():
    jobs = (Job("10", USER, 50.0), Job("12", USER, 50.0), Job("11", USER, 50.0))
    d = decide(facts_with(jobs, CallerAnswer(None)), Options())
    assert (d.verdict, d.reason, d.job_id) == (Verdict.ADOPT, "no_answer_newest", "12")
    assert policy.newest(jobs).job_id == "12"


def test_newest_start_beats_job_id():
    jobs = (Job("99", USER, 10.0), Job("3", USER, 20.0))
    assert decide(facts_with(jobs, CallerAnswer(None)), Options()).job_id == "3"


def test_newest_tie_broken_by_later_job_ids_as_numbers_not_text():
    jobs = (Job("9", USER, 50.0), Job("10", USER, 50.0))
    assert policy.newest(jobs).job_id == "10"


def test_newest_sluid_named_jobs_tie_broken_by_later_sluid():
    # Slurm 26.05 (CgroupJobIdPaths=no): no numeric id to compare; SLUIDs are time-ordered.
    older, newer = Job("s7000000001J00", USER, 50.0), Job("s7000000001J01", USER, 50.0)
    assert policy.newest((newer, older)).job_id == policy.newest((older, newer)).job_id == newer.job_id
    d = decide(facts_with((older, newer), CallerAnswer(None)), Options())
    assert (d.verdict, d.reason, d.job_id) == (Verdict.ADOPT, "no_answer_newest", newer.job_id)


def test_source_naming_a_sluid_job_adopts_into_it():
    a, b = Job("sBR1JB8J1YM400", USER, 1.0), Job("sBR1JB8J1YM401", USER, 2.0)
    d = decide(facts_with((a, b), CallerAnswer("sBR1JB8J1YM400")), Options())
    assert (d.verdict, d.reason, d.job_id) == (Verdict.ADOPT, "callerid", "sBR1JB8J1YM400")


def test_rpc_error_wins_over_a_job_id():
    jobs = (Job("1", USER, 1.0), Job("2", USER, 2.0))
    d = decide(facts_with(jobs, CallerAnswer("1", error="timeout")), Options(action_unknown="deny"))
    assert (d.verdict, d.reason) == (Verdict.DENY, "rpc_failed_deny")


def test_known_user_without_uid_is_unknown_user():
    d = decide(Facts("sshd", True, None, ()), Options(action_generic_failure="deny"))
    assert (d.verdict, d.reason) == (Verdict.DENY, "unknown_user")


def test_service_star_in_a_list_and_other_services():
    opts = Options(service=("login", "*"))
    d = decide(Facts("anything", True, USER, ()), opts)
    assert d.reason == "no_jobs"
    assert decide(Facts("su", True, USER, ()), Options()).reason == "service_not_handled"


def test_job_of_another_uid_leaked_by_discovery_is_not_the_users():
    mine, leaked = Job("1", USER, 1.0), Job("2", OTHER, 9.0)
    # Only the leaked job: the user has no job here.
    assert decide(facts_with((leaked,)), Options()).reason == "no_jobs"
    # With one own job it is the single job, not the (newer) leaked one.
    d = decide(facts_with((mine, leaked)), Options())
    assert (d.reason, d.job_id) == ("single_job", "1")
    # The source naming the leaked job is a foreign job, and newest skips it.
    d = decide(facts_with((mine, leaked), CallerAnswer("2")), Options(single_job_skip_rpc=False))
    assert (d.reason, d.job_id, d.security) == ("foreign_job_newest", "1", True)


def test_root_with_ignore_root_off_is_handled_like_anyone():
    jobs = (Job("5", 0, 1.0),)
    d = decide(facts_with(jobs, uid=0), Options(ignore_root=False))
    assert (d.verdict, d.reason, d.job_id) == (Verdict.ADOPT, "single_job", "5")


# ---------------------------------------------------------------------------
# after_adopt_failure, generic_failure, pam_return, enforced

@pytest.mark.parametrize("action, verdict", [("allow", Verdict.ALLOW), ("deny", Verdict.DENY)])
def test_after_adopt_failure(action, verdict):
    adopt = decide(facts_with((Job("4", USER, 1.0),)), Options(action_adopt_failure=action))
    d = after_adopt_failure(adopt)
    assert (d.verdict, d.reason, d.job_id, d.on_adopt_failure) == (verdict, f"adopt_failed_{action}", "4", None)
    assert bool(d.message) == (verdict is Verdict.DENY)


def test_after_adopt_failure_keeps_security_flag():
    jobs = (Job("1", USER, 1.0), Job("2", USER, 2.0))
    facts = facts_with(jobs, CallerAnswer(FOREIGN_JOB), others={FOREIGN_JOB})
    adopt = decide(facts, Options(action_adopt_failure="deny"))
    assert adopt.security and adopt.job_id == "2"
    d = after_adopt_failure(adopt)
    assert (d.verdict, d.reason, d.security) == (Verdict.DENY, "adopt_failed_deny", True)


@pytest.mark.parametrize("d", [Decision(Verdict.ALLOW, "x"), Decision(Verdict.NEED_RPC, "need_rpc"),
                               Decision(Verdict.ADOPT, "x", job_id="1")])
def test_after_adopt_failure_rejects_non_adoptions(d):
    with pytest.raises(ValueError):
        after_adopt_failure(d)


@pytest.mark.parametrize("action, verdict", [("ignore", Verdict.IGNORE), ("allow", Verdict.ALLOW),
                                             ("deny", Verdict.DENY)])
def test_generic_failure(action, verdict):
    d = generic_failure(Options(action_generic_failure=action), "daemon_unreachable")
    assert (d.verdict, d.reason, d.job_id, d.on_adopt_failure, d.security) == (
        verdict, "daemon_unreachable", None, None, False)
    assert bool(d.message) == (verdict is Verdict.DENY)


def test_pam_return_is_pam_slurm_adopts():
    assert pam_return(Verdict.ADOPT) == "PAM_SUCCESS"
    assert pam_return(Verdict.ALLOW) == "PAM_SUCCESS"
    assert pam_return(Verdict.IGNORE) == "PAM_IGNORE"
    assert pam_return(Verdict.DENY) == "PAM_PERM_DENIED"
    assert pam_return("deny") == "PAM_PERM_DENIED"
    with pytest.raises(ValueError):
        pam_return(Verdict.NEED_RPC)


@pytest.mark.parametrize("verdict, audited", [(Verdict.ADOPT, Verdict.ALLOW), (Verdict.DENY, Verdict.ALLOW),
                                              (Verdict.ALLOW, Verdict.ALLOW), (Verdict.IGNORE, Verdict.IGNORE)])
def test_audit_mode_allows_what_enforce_would_adopt_or_deny(verdict, audited):
    d = Decision(verdict, "x", job_id=1 if verdict is Verdict.ADOPT else None)
    assert enforced(d, Options()) is verdict
    assert enforced(d, Options(mode="audit")) is audited


# ---------------------------------------------------------------------------
# Options and parse_options

def test_defaults_are_pam_slurm_adopts():
    o = Options()
    assert (o.action_no_jobs, o.action_unknown, o.action_adopt_failure, o.action_generic_failure) == (
        "deny", "newest", "allow", "ignore")
    assert o.ignore_root is True and o.single_job_skip_rpc is True
    assert o.service == ("sshd",)


def test_options_validate_and_take_lists():
    assert Options(service=["sshd", "login"]).service == ("sshd", "login")
    for bad in (dict(action_no_jobs="allow"), dict(action_unknown="oldest"), dict(action_adopt_failure="ignore"),
                dict(action_generic_failure="newest"), dict(ignore_root=1), dict(service=()), dict(service=("",))):
        with pytest.raises(ValueError):
            Options(**bad)


def test_parse_good_values():
    pairs = dict(action_no_jobs="ignore", action_unknown="deny", action_adopt_failure="deny",
                 action_generic_failure="allow", ignore_root="0", single_job_skip_rpc="no", service="sshd,login")
    opts, warnings = parse_options(pairs, Options())
    assert warnings == []
    assert opts == Options(action_no_jobs="ignore", action_unknown="deny", action_adopt_failure="deny",
                           action_generic_failure="allow", ignore_root=False, single_job_skip_rpc=False,
                           service=("sshd", "login"))


def test_parse_is_case_insensitive_and_strips():
    opts, warnings = parse_options({"Action_Unknown": " DENY "}, Options())
    assert warnings == [] and opts.action_unknown == "deny"


def test_parse_empty_returns_base():
    base = Options(action_unknown="allow")
    assert parse_options({}, base) == (base, [])


def test_parse_unknown_name_warns_and_keeps_base():
    base = Options(action_unknown="allow")
    opts, warnings = parse_options({"action_unkown": "deny"}, base)
    assert opts == base
    assert len(warnings) == 1 and "action_unkown" in warnings[0] and "unknown option" in warnings[0]


@pytest.mark.parametrize("name", ["log_level", "disable_x11"])
def test_parse_module_only_names_are_taken_silently(name):
    opts, warnings = parse_options({name: "1"}, Options())
    assert (opts, warnings) == (Options(), [])


def test_parse_join_container_nodename_and_mode():
    opts, warnings = parse_options({"join_container": "false", "nodename": "cn7", "mode": "Audit"}, Options())
    assert warnings == []
    assert (opts.join_container, opts.nodename, opts.mode) == (False, "cn7", "audit")
    for name, bad in (("nodename", "../x"), ("mode", "dry"), ("join_container", "maybe")):
        opts, warnings = parse_options({name: bad}, Options())
        assert opts == Options() and len(warnings) == 1 and "keeping" in warnings[0]


@pytest.mark.parametrize("name, value", [
    ("action_no_jobs", "allow"), ("action_unknown", "oldest"), ("action_adopt_failure", "ignore"),
    ("action_generic_failure", ""), ("ignore_root", "2"), ("single_job_skip_rpc", "maybe"),
    ("service", ""), ("service", " , ,"),
])
def test_parse_bad_value_warns_and_keeps_base(name, value):
    base = Options(action_no_jobs="ignore", action_unknown="allow", action_adopt_failure="deny",
                   action_generic_failure="deny", ignore_root=False, single_job_skip_rpc=False,
                   service=("login",))
    other = "ignore_root" if name != "ignore_root" else "single_job_skip_rpc"
    opts, warnings = parse_options({name: value, other: "1"}, base)
    assert getattr(opts, name) == getattr(base, name)
    assert len(warnings) == 1 and name in warnings[0] and "keeping" in warnings[0]
    assert getattr(opts, other) is True  # the good setting next to the bad one still applies


@pytest.mark.parametrize("text, value", [("1", True), ("0", False), ("yes", True), ("no", False),
                                         ("true", True), ("false", False), ("TRUE", True), ("No", False)])
@pytest.mark.parametrize("name", ["ignore_root", "single_job_skip_rpc"])
def test_parse_booleans(name, text, value):
    base = Options(**{name: not value})
    opts, warnings = parse_options({name: text}, base)
    assert warnings == [] and getattr(opts, name) is value


@pytest.mark.parametrize("text, value", [
    ("sshd", ("sshd",)), ("sshd,login", ("sshd", "login")), (" sshd , su ,", ("sshd", "su")),
    ("*", ("*",)), ("sshd,*", ("sshd", "*")),
])
def test_parse_service_lists(text, value):
    opts, warnings = parse_options({"service": text}, Options())
    assert warnings == [] and opts.service == value


def test_parsed_star_matches_every_service():
    opts, _ = parse_options({"service": "*"}, Options())
    for service in ("sshd", "login", "su", "gdm-password"):
        assert decide(Facts(service, True, USER, ()), opts).reason == "no_jobs"


# ---------------------------------------------------------------------------
# The administrators' table and docs/DECISIONS.md

def test_decision_table_rows_and_reasons():
    rows = decision_table()
    for r in rows:
        assert set(r) >= {"situation", "options", "verdict", "reason"}
        assert r["verdict"] in {v.value for v in Verdict}
    assert {r["reason"] for r in rows} == set(policy.REASONS)
    foreign = [r for r in rows if r["reason"].startswith("foreign_job")]
    assert foreign and all(r["security"] for r in foreign)


def test_decisions_md_matches_code():
    assert DECISIONS_MD.read_text() == render_markdown(), (
        "docs/DECISIONS.md is stale: python3 -m callerid.adopter.decision_table > docs/DECISIONS.md")


# ---------------------------------------------------------------------------
# decide_attach: `callerid attach JOBID`

@pytest.mark.parametrize("reason, s_uid, s_job, target, own, want", [
    ("no_answer_newest", USER, 2, 1, {1, 2}, "attached"),          # a guess: the user corrects it
    ("rpc_failed_allow", USER, None, 1, {1, 2}, "attached"),       # let in unadopted: may join one
    ("job_not_here_newest", USER, 2, 1, {1, 2}, "attached"),
    (None, None, None, 1, {1}, "no_session"),                      # not a login this adopter decided
    ("no_answer_newest", USER + 1, 2, 1, {1, 2}, "not_your_session"),
    ("callerid", USER, 1, 2, {1, 2}, "determined"),                # the caller ID placed it: stays
    ("single_job", USER, 1, 2, {1, 2}, "determined"),
    ("foreign_job_newest", USER, 2, 1, {1, 2}, "determined"),      # a possible escape: stays
    ("no_answer_newest", USER, 2, 900, {1, 2}, "not_your_job"),    # another user's job: never
    ("no_answer_newest", USER, 2, 2, {1, 2}, "same_job"),
])
def test_decide_attach(reason, s_uid, s_job, target, own, want):
    assert policy.decide_attach(reason, s_uid, s_job, USER, target, own) == want
    assert want in policy.ATTACH_RESULTS and want in policy.ATTACH_MESSAGES
