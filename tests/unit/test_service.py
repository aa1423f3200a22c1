"""Tests for tracer.service: the authorisation rule and RequestHandler with fake munge and resolver.

The tracer's answers are checked the way the client checks them: open_answer with the request's key."""

from __future__ import annotations

import ipaddress
import struct

import pytest

from callerid import munge
from callerid.protocol import (
    HEADER,
    Answer,
    ErrorCode,
    FrameType,
    Query,
    Source,
    Status,
    decode_error,
    decode_header,
    open_answer,
)
from callerid.tracer.lookup import Outcome
from callerid.tracer.metrics import RPC_RESULTS, TracerMetrics
from callerid.tracer.service import RequestHandler, may_see

ROOT, SLURM, OWNER, OTHER = 0, 500, 1000, 1001
SOCK = "/run/test/munge.sock"
NODE = "cn-07"
CRED = b"CRED:"   # fake credential = prefix + embedded payload
KEY = bytes(range(100, 132))  # the answer key the asker put in its request
Q = Query.make("10.0.0.1", 40000, "10.0.0.2", 22)
PEER = "10.0.0.2:51000"


# --- may_see ----------------------------------------------------------------------------------

@pytest.mark.parametrize("requester, owner, slurm, allowed", [
    # root sees everything
    (ROOT, OWNER, SLURM, True),
    (ROOT, OWNER, None, True),
    (ROOT, None, SLURM, True),
    (ROOT, None, None, True),
    (ROOT, ROOT, None, True),
    # SlurmUser sees everything, but only when it is known
    (SLURM, OWNER, SLURM, True),
    (SLURM, None, SLURM, True),
    (SLURM, OWNER, None, False),
    (SLURM, None, None, False),
    (SLURM, SLURM, SLURM, True),
    # the owner sees its own connection
    (OWNER, OWNER, SLURM, True),
    (OWNER, OWNER, None, True),
    (OWNER, None, SLURM, False),
    (OWNER, None, None, False),
    (OWNER, ROOT, SLURM, False),     # a root-owned connection is not the caller's
    # anybody else sees nothing
    (OTHER, OWNER, SLURM, False),
    (OTHER, OWNER, None, False),
    (OTHER, None, SLURM, False),
    (OTHER, None, None, False),
    (OTHER, ROOT, SLURM, False),
])
def test_may_see(requester, owner, slurm, allowed):
    assert may_see(requester, owner, slurm) is allowed


# --- fakes ------------------------------------------------------------------------------------

class FakeMunge:
    """decode with the signature of callerid.munge; records the socket it was given."""

    def __init__(self, uid=OWNER, gid=100, decode_error=None):
        self.uid, self.gid = uid, gid
        self.decode_error = decode_error
        self.decoded = []

    def decode(self, cred, socket_path):
        self.decoded.append((cred, socket_path))
        if self.decode_error is not None:
            raise self.decode_error
        assert cred.startswith(CRED)
        return munge.Decoded(cred[len(CRED):], self.uid, self.gid)


class FakeResolver:
    def __init__(self, make_outcome):
        self.make_outcome = make_outcome
        self.queries = []

    def lookup(self, query, allowed=None):
        self.queries.append(query)
        self.allowed = allowed
        return self.make_outcome(query)


def found(query, **kw) -> Outcome:
    fields = dict(source=Source.BPF, job_id="42", pid=4321, uid=OWNER, gid=100, cgroup_id=99,
                  birth_ns=123456, comm="sleep", cgroup="/slurm/uid_1000/job_42/step_extern", node=NODE)
    reason = kw.pop("fallback_reason", "")
    owner = kw.pop("owner_uid", OWNER)
    fields.update(kw)
    return Outcome(Answer(query, Status.FOUND, **fields), owner, reason)


def not_found(query, reason="", detail="no such socket") -> Outcome:
    # exactly what tracer.lookup.Resolver returns when nothing is found
    return Outcome(Answer(query, Status.NOT_FOUND, node=NODE), None, reason, detail)


class Setup:
    def __init__(self, make_outcome=found, slurm_uid=SLURM, **munge_kw):
        self.metrics = TracerMetrics()   # a fresh registry per test
        self.munge = FakeMunge(**munge_kw)
        self.resolver = FakeResolver(make_outcome)
        self.handler = RequestHandler(self.resolver, self.metrics, slurm_uid, munge_socket=SOCK,
                                      decode=self.munge.decode)

    def ask(self, embedded: bytes = None) -> bytes:
        return self.handler.handle(CRED + (Q.encode() + KEY if embedded is None else embedded), PEER)

    def sample(self, name, **labels):
        return self.metrics.registry.get_sample_value(name, labels)

    def results(self) -> dict:
        """Every rpc result counter that is not zero."""
        out = {r: self.sample("callerid_rpc_requests_total", result=r) for r in RPC_RESULTS}
        return {r: v for r, v in out.items() if v}


def split(frame: bytes) -> tuple[FrameType, bytes]:
    ftype, length = decode_header(frame[:HEADER.size])
    assert len(frame) == HEADER.size + length
    return ftype, frame[HEADER.size:]


def answer_of(frame: bytes) -> Answer:
    ftype, payload = split(frame)
    assert ftype == FrameType.ANSWER
    return open_answer(payload, KEY)  # raises unless tagged with the request's key


def error_of(frame: bytes) -> tuple[ErrorCode, str]:
    ftype, payload = split(frame)
    assert ftype == FrameType.ERROR
    return decode_error(payload)


# --- answers ----------------------------------------------------------------------------------

@pytest.mark.parametrize("requester", [OWNER, ROOT, SLURM])
def test_found_for_an_allowed_requester(requester):
    s = Setup(uid=requester)
    frame = s.ask()
    ans = answer_of(frame)
    assert ans == found(Q).answer
    assert s.resolver.queries == [Q]
    assert s.munge.decoded == [(CRED + Q.encode() + KEY, SOCK)]
    assert s.results() == {"found": 1.0}
    assert s.sample("callerid_lookups_total", source="bpf") == 1.0
    assert s.sample("callerid_rpc_request_duration_seconds_count") == 1.0


def test_not_found_is_tagged_and_counted():
    s = Setup(make_outcome=not_found)
    ans = answer_of(s.ask())
    assert ans == Answer(Q, Status.NOT_FOUND, node=NODE)
    assert s.results() == {"not_found": 1.0}
    assert s.sample("callerid_lookups_total", source="none") == 1.0


def test_found_for_another_uid_is_denied_and_looks_like_not_found():
    denied = Setup(uid=OTHER, make_outcome=lambda q: found(q, owner_exited=True, closed=True))
    frame = denied.ask()
    assert denied.results() == {"denied": 1.0}

    genuine = Setup(uid=OTHER, make_outcome=not_found)
    assert frame == genuine.ask(), "a denial must be byte-identical to a genuine not-found"

    ans = answer_of(frame)
    assert ans.query == Q
    assert ans.status == Status.NOT_FOUND
    assert ans.source == Source.NONE
    assert (ans.pid, ans.uid, ans.gid, ans.job_id) == (0, None, None, None)
    assert (ans.cgroup, ans.cgroup_id, ans.comm, ans.birth_ns) == ("", 0, "", 0)
    assert (ans.owner_exited, ans.closed) == (False, False)
    assert ans.node == NODE
    # the bytes sent carry nothing about the real owner
    assert b"sleep" not in frame and b"job_42" not in frame
    assert struct.pack("!I", 4321) not in frame


def test_socket_of_another_uid_denied_before_any_scan_looks_like_not_found():
    denied = Setup(uid=OTHER, make_outcome=lambda q: Outcome(Answer(q, Status.NOT_FOUND, node=NODE), OWNER, "map_miss",
                                                                "socket of another uid: no scan", denied=True))
    frame = denied.ask()
    assert denied.results() == {"denied": 1.0}
    assert frame == Setup(uid=OTHER, make_outcome=lambda q: not_found(q, "map_miss")).ask()
    # the resolver was told who may see what: the requester, root and SlurmUser, not others
    allowed = denied.resolver.allowed
    assert allowed(OTHER) and not allowed(OWNER) and not allowed(None)
    owner = Setup(uid=OWNER)
    owner.ask()
    assert owner.resolver.allowed(OWNER) and owner.resolver.allowed(12345) is False


def test_found_with_unknown_owner_is_denied_to_non_root():
    s = Setup(uid=OWNER, make_outcome=lambda q: found(q, owner_uid=None))
    assert answer_of(s.ask()).status == Status.NOT_FOUND
    assert s.results() == {"denied": 1.0}


def test_slurm_user_unknown_is_denied():
    s = Setup(uid=SLURM, slurm_uid=None)
    assert answer_of(s.ask()).status == Status.NOT_FOUND
    assert s.results() == {"denied": 1.0}


def test_v6_query_round_trips_through_the_handler():
    q6 = Query.make("fd00::1", 40000, "fd00::2", 22)
    s = Setup()
    ans = answer_of(s.handler.handle(CRED + q6.encode() + KEY, PEER))
    assert ans.query == q6
    assert ans.query.src_ip == ipaddress.IPv6Address("fd00::1")


# --- credential errors --------------------------------------------------------------------------

def test_replayed_credential():
    s = Setup(decode_error=munge.MungeError(17, "Replayed credential", SOCK))
    assert error_of(s.ask()) == (ErrorCode.REPLAYED, "credential rejected: cred_replayed")
    assert s.results() == {"replayed": 1.0}
    assert s.resolver.queries == []


@pytest.mark.parametrize("code, reason", [
    (3, "bad_length"), (8, "bad_cred"), (9, "bad_version"), (10, "bad_cipher"), (11, "bad_mac"),
    (12, "bad_zip"), (13, "bad_realm"), (14, "cred_invalid"), (15, "cred_expired"),
    (16, "cred_rewound"), (18, "cred_unauthorized"), (99, "other"),
])
def test_other_munge_errors_are_auth_failed(code, reason):
    s = Setup(decode_error=munge.MungeError(code, "nope", SOCK))
    assert error_of(s.ask()) == (ErrorCode.AUTH_FAILED, f"credential rejected: {reason}")
    assert s.results() == {"auth_failed": 1.0}
    assert s.resolver.queries == []


def test_munged_unreachable_is_internal():
    s = Setup(decode_error=munge.MungeError(6, "Failed to connect", SOCK))
    assert error_of(s.ask()) == (ErrorCode.INTERNAL, "credential rejected: socket")
    assert s.results() == {"internal_error": 1.0}
    assert s.resolver.queries == []


# --- bad queries inside a valid credential -------------------------------------------------------

def hand_query(ver=3, fam=4, reserved=0, sport=40000, dport=22, src=None, dst=None) -> bytes:
    m = b"\x00" * 10 + b"\xff\xff"
    return struct.pack("!BBHHH16s16s", ver, fam, reserved, sport, dport,
                       src or m + bytes([10, 0, 0, 1]), dst or m + bytes([10, 0, 0, 2]))


@pytest.mark.parametrize("embedded", [
    b"",
    b"\x03junk",
    hand_query(),
    hand_query() + KEY[:-1],
    hand_query() + KEY + b"\0",
    hand_query(reserved=1) + KEY,
    hand_query(sport=0) + KEY,
    hand_query(fam=9) + KEY,
    hand_query(fam=4, src=ipaddress.IPv6Address("fd00::1").packed) + KEY,
], ids=["empty", "junk", "no-key", "truncated", "trailing", "reserved", "port0", "family", "v4-not-mapped"])
def test_bad_query_in_valid_credential(embedded):
    s = Setup()
    assert hand_query() == Q.encode()  # the hand-built base is a valid query
    code, _ = error_of(s.ask(embedded))
    assert code == ErrorCode.BAD_FRAME
    assert s.results() == {"bad_frame": 1.0}
    assert s.resolver.queries == []


@pytest.mark.parametrize("ver", [0, 1, 2, 255])
@pytest.mark.parametrize("key", [b"", KEY], ids=["v1-shaped", "v2-and-v3-shaped"])
def test_query_of_another_version(ver, key):
    s = Setup()
    code, msg = error_of(s.ask(hand_query(ver=ver) + key))
    assert code == ErrorCode.UNSUPPORTED_VERSION
    assert str(ver) in msg
    assert s.results() == {"unsupported_version": 1.0}
    assert s.resolver.queries == []


# --- lookup metrics -------------------------------------------------------------------------------

@pytest.mark.parametrize("make_outcome, source, reason, exited", [
    (lambda q: found(q), "bpf", "", 0),
    (lambda q: found(q, owner_exited=True), "bpf", "", 1),
    (lambda q: found(q, source=Source.PROC, fallback_reason="map_miss"), "proc", "map_miss", 0),
    (lambda q: found(q, source=Source.PROC, fallback_reason="no_bpf"), "proc", "no_bpf", 0),
    (lambda q: not_found(q, "map_miss"), "none", "map_miss", 0),
    (lambda q: not_found(q, "no_bpf"), "none", "no_bpf", 0),
    (lambda q: not_found(q, ""), "none", "", 0),
], ids=["bpf", "bpf-exited", "proc-map-miss", "proc-no-bpf", "none-map-miss", "none-no-bpf", "none"])
def test_lookup_metrics(make_outcome, source, reason, exited):
    s = Setup(make_outcome=make_outcome)
    s.ask()
    s.ask()
    for src in ("bpf", "proc", "none"):
        assert s.sample("callerid_lookups_total", source=src) == (2.0 if src == source else 0.0), src
    for r in ("map_miss", "no_bpf"):
        assert s.sample("callerid_fallback_lookups_total", reason=r) == (2.0 if r == reason else 0.0), r
    assert s.sample("callerid_owner_exited_answers_total") == 2.0 * exited
    assert s.sample("callerid_rpc_request_duration_seconds_count") == 2.0


def test_denied_lookup_is_still_counted_by_source():
    s = Setup(uid=OTHER, make_outcome=lambda q: found(q, source=Source.PROC, fallback_reason="map_miss"))
    s.ask()
    assert s.sample("callerid_lookups_total", source="proc") == 1.0
    assert s.sample("callerid_fallback_lookups_total", reason="map_miss") == 1.0
    assert s.results() == {"denied": 1.0}


def test_errors_do_not_count_lookups():
    s = Setup(decode_error=munge.MungeError(15, "Expired credential", SOCK))
    s.ask()
    for src in ("bpf", "proc", "none"):
        assert s.sample("callerid_lookups_total", source=src) == 0.0
    assert s.sample("callerid_rpc_request_duration_seconds_count") == 1.0


# --- values at the edge of the wire format ----------------------------------------------------

def test_uid_above_2_31_is_answered():
    big = 2 ** 31
    s = Setup(uid=ROOT, make_outcome=lambda q: found(q, uid=big, owner_uid=big))
    assert answer_of(s.ask()).uid == big


def test_uid_beyond_uid_t_is_an_internal_error_not_an_escape_from_the_handler():
    # Once the handler's own except clause missed struct.error (not a ValueError), and the
    # client got no reply at all.
    s = Setup(uid=ROOT, make_outcome=lambda q: found(q, uid=2 ** 32, owner_uid=2 ** 32))
    assert error_of(s.ask())[0] == ErrorCode.INTERNAL
    assert s.results() == {"internal_error": 1.0}
