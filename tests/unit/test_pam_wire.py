"""The line format between pam_callerid.so and the daemon: adopter/pamwire.py (the definition)
and its C twin adopter/pam/wireline.c, run through build/callerid-wire-harness.

The C parser must accept exactly the lines the Python parser accepts, with the same fields,
on hand-built lines and on hypothesis-generated ones; the C encoder's requests must be what
the daemon's parse_request reads."""

from __future__ import annotations

import subprocess

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from callerid.adopter import pamwire
from callerid.adopter.pamwire import Reply, Request, WireError, parse_reply, parse_request
from tests.infra.sshd import pam_build


@pytest.fixture(scope="module")
def harness():
    return str(pam_build() / "callerid-wire-harness")


def c_parse(harness, line: bytes):
    """The C parser's reading of line: None if refused, else a Reply."""
    r = subprocess.run([harness, "reply"], input=line, capture_output=True, timeout=10)
    out = r.stdout.decode()
    if out == "error\n":
        assert r.returncode == 1
        return None
    assert r.returncode == 0, r.stderr
    f, env = {}, {}
    for row in out.splitlines():
        parts = row.split(" ")
        if parts[0] == "env":
            env[bytes.fromhex(parts[1]).decode()] = bytes.fromhex(parts[2]).decode()
        else:
            f[parts[0]] = bytes.fromhex(parts[1]).decode()
    job, gid = f.get("job"), f.get("gid")
    return Reply(f["verdict"], f["reason"], f["msg"], job, f["ns"], env, int(gid) if gid is not None else None)


def py_parse(line: bytes):
    try:
        return parse_reply(line)
    except WireError:
        return None


def c_request(harness, user: str, service: str, args: list[str], left_ms: int | None = None) -> bytes:
    env = None if left_ms is None else {"WL_LEFT_MS": str(left_ms)}
    r = subprocess.run([harness, "request", user, service, *args], capture_output=True, timeout=10, env=env)
    assert r.returncode == 0, r.stdout
    return r.stdout


# --- the Python definition ---------------------------------------------------------------

def test_escape_leaves_a_line_of_printable_tokens():
    assert pamwire.escape("a b=c%d\ne\x7fé") == "a%20b%3Dc%25d%0Ae%7F%C3%A9"


def test_request_round_trip():
    req = Request("alice", "sshd", {"action_unknown": "deny", "odd": "a=b c"})
    assert req.encode() == b"v=1 user=alice service=sshd opt.action_unknown=deny opt.odd=a%3Db%20c\n"
    assert parse_request(req.encode()) == req


def test_request_carries_the_modules_time_left():
    req = Request("alice", "sshd", {"deadline": "ignored-by-daemon"}, left_ms=1500)
    assert req.encode().startswith(b"v=1 user=alice service=sshd left_ms=1500 opt.")
    assert parse_request(req.encode()) == req
    assert parse_request(b"v=1 user=a service=s\n").left_ms is None   # optional


def test_c_module_sends_its_time_left_and_the_daemon_reads_it(harness):
    req = parse_request(c_request(harness, "alice", "sshd", ["deadline=2", "mode=audit"], left_ms=1999))
    assert req.left_ms == 1999 and req.options == {"mode": "audit"}
    assert parse_request(c_request(harness, "alice", "sshd", [])).left_ms is None


@pytest.mark.parametrize("line, why", [
    (b"v=1 user=a service=s left_ms=-1\n", "left_ms"),
    (b"v=1 user=a service=s left_ms=1.5\n", "left_ms"),
    (b"v=1 user=a service=s left_ms=3600001\n", "left_ms"),
    (b"v=1 user=a service=s left_ms=%D9%A1\n", "left_ms"),           # a non-ASCII digit

    (b"v=1 user=a service=s pid=42\n", "unexpected request keys"),      # never a pid from the request
    (b"v=1 user=a\n", "needs user and service"),
    (b"v=2 user=a service=s\n", "first token"),
    (b"user=a v=1 service=s\n", "first token"),
    (b"v=1 user=a service=s user=b\n", "repeated"),
    (b"v=1 user=a service=s", "no newline"),
    (b"v=1 user=a service=s opt.=x\n", "empty option name"),
    (b"v=1 user=a  service=s\n", "not KEY=VALUE"),
    (b"v=1 user=a\tb service=s\n", "must be escaped"),
    (b"v=1 user=a%0 service=s\n", "escape"),
    (b"v=1 user=a%00 service=s\n", "NUL"),
    (b"v=1 user=%C3%28 service=s\n", "UTF-8"),
    (b"v=1 user=" + b"x" * pamwire.MAX_LINE + b" service=s\n", "over"),
])
def test_bad_requests_are_refused(line, why):
    with pytest.raises(WireError, match=why):
        parse_request(line)


def test_reply_round_trip():
    rep = Reply("adopt", "callerid", "", "42", "/var/spool/jc/n1/42/.ns", {"CUDA_VISIBLE_DEVICES": "0,1"})
    assert parse_reply(rep.encode()) == rep
    with pytest.raises(WireError):
        Reply("maybe", "x").encode()


# --- C against Python, hand-built ----------------------------------------------------------

GOOD = [
    Reply("deny", "no_jobs", "Access denied by callerid: you have no active jobs on this node"),
    Reply("ignore", "root"),
    Reply("allow", "adopt_failed_allow", job_id=None),
    Reply("adopt", "single_job", "", "7", "/b/n/7/.ns", {"CUDA_VISIBLE_DEVICES": "0", "X_1": "a b=c\n%é"}, 4242),
]


@pytest.mark.parametrize("rep", GOOD, ids=lambda r: r.reason)
def test_c_parser_reads_the_daemons_replies(harness, rep):
    assert c_parse(harness, rep.encode()) == rep


@pytest.mark.parametrize("line", [
    b"", b"\n", b"garbage\n", b"v=1 verdict=allow", b"v=1 verdict=maybe\n", b"v=1 reason=x\n",
    b"v=2 verdict=allow\n", b"verdict=allow v=1\n", b"v=1 verdict=allow verdict=deny\n",
    b"v=1 verdict=allow job=12%20a\n", b"v=1 verdict=allow job=\n", b"v=1 verdict=allow env.1X=a\n",
    b"v=1 verdict=allow env.=a\n", b"v=1 verdict=allow msg=%0\n", b"v=1 verdict=allow msg=%zz\n",
    b"v=1 verdict=allow msg=%00\n", b"v=1 verdict=allow msg=a\x00b\n", b"v=1 verdict=allow msg=\xff\n",
    b"v=1 verdict=allow msg=%C0%80\n", b"v=1 verdict=allow msg=%ED%A0%80\n", b"v=1  verdict=allow\n",
    b"v=1 verdict=allow =x\n", b"v=1 verdict=allow\r\n", b"v=1 verdict=allow gid=0\n",
    b"v=1 verdict=allow gid=4294967295\n", b"v=1 verdict=allow job=" + b"1" * 65 + b"\n", b"v=1 verdict=allow gid=-1\n",
    b"v=1 verdict=allow job=a/b\n",
    b"v=1 verdict=allow " + b" ".join(b"k%d=v" % i for i in range(pamwire.MAX_TOKENS)) + b"\n",
    b"v=1 verdict=allow " + b" ".join(b"env.V%d=v" % i for i in range(pamwire.MAX_ENV + 1)) + b"\n",
    b"v=1 verdict=allow msg=" + b"x" * pamwire.MAX_LINE + b"\n",
])
def test_c_and_python_refuse_the_same_malformed_replies(harness, line):
    assert py_parse(line) is None
    assert c_parse(harness, line) is None


def test_unknown_reply_keys_are_ignored_by_both(harness):
    line = b"v=1 verdict=allow future=1 reason=x\n"
    assert c_parse(harness, line) == py_parse(line) == Reply("allow", "x")


# --- C against Python, generated (hypothesis) ---------------------------------------------

_text = st.text(st.characters(blacklist_categories=("Cs",), blacklist_characters="\x00"), max_size=40)
_env_name = st.from_regex(r"[A-Za-z_][A-Za-z0-9_]{0,15}", fullmatch=True)
_replies = st.builds(
    Reply, st.sampled_from(pamwire.VERDICTS), _text, _text,
    st.one_of(st.none(), st.from_regex(r"[0-9A-Za-z_.-]{1,64}", fullmatch=True)),
    _text, st.dictionaries(_env_name, _text, max_size=5),
    st.one_of(st.none(), st.integers(1, 2**32 - 2)))


@settings(max_examples=150, deadline=None)
@given(_replies)
def test_c_reads_every_reply_the_daemon_can_send(rep):
    harness = str(pam_build() / "callerid-wire-harness")
    assert c_parse(harness, rep.encode()) == rep


_line_bytes = st.one_of(
    st.binary(max_size=80),
    st.lists(st.sampled_from([b"v=1", b"verdict=allow", b"verdict=deny", b"reason=%41", b"job=12", b"job=x",
                              b"env.A=1", b"env.A=2", b"env.9=1", b"msg=%", b"msg=%4", b"msg=%E2%82%AC",
                              b"msg=%FF", b"ns=/x", b"=", b"a", b"", b"v=2", b"k=\x7f", b"k=%00", b"gid=0",
                              b"gid=7", b"gid=4294967294", b"gid=4294967295", b"job=99999999999"]),
             max_size=8).map(lambda toks: b" ".join(toks) + b"\n"),
)


@settings(max_examples=300, deadline=None)
@given(_line_bytes)
def test_c_parser_agrees_with_python_on_any_line(line):
    harness = str(pam_build() / "callerid-wire-harness")
    assert c_parse(harness, line) == py_parse(line), line


_opt_name = st.text(st.characters(blacklist_categories=("Cs",), blacklist_characters="\x00="), min_size=1, max_size=12)


@settings(max_examples=150, deadline=None)
@given(_text.filter(bool), _text, st.lists(st.tuples(_opt_name, st.one_of(st.none(), _text)), max_size=6))
def test_c_requests_are_what_the_daemon_parses(user, service, opts):
    harness = str(pam_build() / "callerid-wire-harness")
    args = [n if v is None else f"{n}={v}" for n, v in opts]
    expected = {}
    for n, v in opts:               # the last of a repeated option wins, as on any PAM line
        if n in ("socket", "deadline"):
            continue                # the module's own: never sent
        expected.pop(n, None)
        expected[n] = v or ""
    req = parse_request(c_request(harness, user, service, args))
    assert (req.user, req.service) == (user, service)
    assert req.options == expected
