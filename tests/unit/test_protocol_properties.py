"""Property tests of every decoder in callerid/protocol.py (hypothesis): whatever the bytes,
a decoder returns a value or raises ProtocolError — never anything else — and what an
encoder writes decodes back to what it was given."""

from __future__ import annotations

import base64
import ipaddress
import os

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from callerid.protocol import (
    ANSWER_KEY_SIZE,
    HEADER,
    MAX_FRAME_PAYLOAD,
    Answer,
    ErrorCode,
    FrameType,
    ProtocolError,
    Query,
    Source,
    Status,
    check_credential_shape,
    decode_error,
    decode_header,
    decode_request,
    encode_error,
    encode_frame,
    encode_request,
    open_answer,
    seal_answer,
)

SETTINGS = settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
ports = st.integers(1, 65535)
v4 = st.builds(ipaddress.IPv4Address, st.integers(0, 2**32 - 1))
v6 = st.builds(ipaddress.IPv6Address, st.integers(0, 2**128 - 1)).filter(lambda a: a.ipv4_mapped is None)
queries = st.one_of(
    st.builds(Query.make, v4, ports, v4, ports),
    st.builds(Query.make, v6, ports, v6, ports),
)
u32 = st.integers(0, 2**32 - 2)
# A job as the answer names it: a decimal job id, or a Slurm 26.05 SLUID.
job_ids = st.one_of(st.integers(1, 2**32 - 1).map(str),
                    st.from_regex(r"s[0-9A-HJKMNP-TV-Z]{13}", fullmatch=True))
answers = st.builds(
    Answer, query=queries, status=st.sampled_from(Status), source=st.sampled_from(Source),
    owner_exited=st.booleans(), closed=st.booleans(), job_id=st.one_of(st.none(), job_ids),
    pid=st.integers(0, 2**32 - 1), uid=st.one_of(st.none(), u32), gid=st.one_of(st.none(), u32),
    cgroup_id=st.integers(0, 2**64 - 1), birth_ns=st.integers(0, 2**64 - 1),
    comm=st.text(max_size=15).filter(lambda t: len(t.encode()) <= 16 and "\0" not in t),
    cgroup=st.text(max_size=200), node=st.text(max_size=60),
)
keys = st.binary(min_size=ANSWER_KEY_SIZE, max_size=ANSWER_KEY_SIZE)


def only_protocol_errors(fn, *args):
    try:
        return fn(*args)
    except ProtocolError as exc:
        assert isinstance(exc.code, ErrorCode)
        return None


@SETTINGS
@given(queries)
def test_query_round_trips(q):
    assert Query.decode(q.encode()) == q


@SETTINGS
@given(st.binary(min_size=40, max_size=40))
def test_query_decoder_takes_any_40_bytes(raw):
    q = only_protocol_errors(Query.decode, raw)
    if q is not None:
        assert Query.decode(q.encode()) == q


@SETTINGS
@given(st.binary(max_size=100))
def test_query_decoder_refuses_other_lengths(raw):
    if len(raw) != 40:
        assert only_protocol_errors(Query.decode, raw) is None


@SETTINGS
@given(answers)
def test_answer_round_trips(a):
    back = Answer.decode(a.encode())
    assert back.query == a.query and back.status == a.status and back.source == a.source
    assert (back.pid, back.uid, back.gid, back.job_id) == (a.pid, a.uid, a.gid, a.job_id)
    assert (back.cgroup_id, back.birth_ns, back.owner_exited, back.closed) == \
        (a.cgroup_id, a.birth_ns, a.owner_exited, a.closed)
    assert back.comm == a.comm and back.node == a.node[:len(back.node)]
    assert a.cgroup.startswith(back.cgroup) or back.cgroup == a.cgroup


@SETTINGS
@given(st.binary(max_size=400))
def test_answer_decoder_takes_any_bytes(raw):
    only_protocol_errors(Answer.decode, raw)


@SETTINGS
@given(answers, keys)
def test_sealed_answer_opens_only_intact_and_under_its_key(a, key):
    sealed = seal_answer(a, key)
    assert open_answer(sealed, key).query == a.query
    flip = bytearray(sealed)
    flip[len(flip) // 2] ^= 0x01
    assert only_protocol_errors(open_answer, bytes(flip), key) is None
    other = bytes(b ^ 0xFF for b in key)
    assert only_protocol_errors(open_answer, sealed, other) is None


@SETTINGS
@given(st.binary(max_size=300), keys)
def test_open_answer_takes_any_bytes(raw, key):
    assert only_protocol_errors(open_answer, raw, key) is None   # nothing forged verifies


@SETTINGS
@given(queries, keys)
def test_request_round_trips(q, key):
    assert decode_request(encode_request(q, key)) == (q, key)


@SETTINGS
@given(st.binary(max_size=120))
def test_request_decoder_takes_any_bytes(raw):
    got = only_protocol_errors(decode_request, raw)
    if got is not None:
        assert len(got[1]) == ANSWER_KEY_SIZE


@SETTINGS
@given(st.binary(min_size=8, max_size=8), st.integers(0, 2**32 - 1))
def test_header_decoder_takes_any_8_bytes_and_bounds_the_length(raw, limit):
    got = only_protocol_errors(decode_header, raw, limit)
    if got is not None:
        ftype, length = got
        assert isinstance(ftype, FrameType) and length <= limit


@SETTINGS
@given(st.sampled_from(FrameType), st.binary(max_size=MAX_FRAME_PAYLOAD))
def test_frame_header_round_trips(ftype, payload):
    frame = encode_frame(ftype, payload)
    assert decode_header(frame[:HEADER.size]) == (ftype, len(payload))


@SETTINGS
@given(st.binary(max_size=600))
def test_error_decoder_takes_any_bytes(raw):
    got = only_protocol_errors(decode_error, raw)
    assert (got is None) == (raw == b"")


@SETTINGS
@given(st.sampled_from(ErrorCode), st.text(max_size=600))
def test_error_round_trips(code, message):
    frame = encode_error(code, message)
    got_code, got_msg = decode_error(frame[HEADER.size:])
    assert got_code == code and message.encode()[:512].decode(errors="replace") == got_msg


def credential(body: bytes) -> bytes:
    return b"MUNGE:" + base64.b64encode(body) + b":"


@SETTINGS
@given(st.binary(min_size=48, max_size=2000))
def test_every_credential_shape_and_every_prefix_of_it_is_accepted(body):
    cred = credential(body)
    check_credential_shape(cred)
    for cut in range(0, len(cred), 7):
        check_credential_shape(cred[:cut], partial=True)


@SETTINGS
@given(st.binary(max_size=300))
def test_shape_check_takes_any_bytes_and_a_refused_prefix_stays_refused(raw):
    if only_protocol_errors(check_credential_shape, raw, True) is None:
        for extra in (b"", b"A", b":", os.urandom(8)):
            assert only_protocol_errors(check_credential_shape, raw + extra, True) is None
            assert only_protocol_errors(check_credential_shape, raw + extra) is None
