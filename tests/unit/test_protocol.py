"""Wire-format tests for callerid.protocol: round trips, and decoders fed hand-built bytes."""

from __future__ import annotations

import hashlib
import hmac
import ipaddress
import struct

import pytest

from callerid import protocol
from callerid.protocol import (
    MAX_FRAME_PAYLOAD,
    Answer,
    ErrorCode,
    FrameType,
    ProtocolError,
    Query,
    Source,
    Status,
    decode_error,
    decode_header,
    encode_error,
    encode_frame,
)

# The layouts below are written out by hand from the documented wire format, not taken
# from callerid.protocol, so a change to the module's structs makes these tests fail.
#   query:  version u8 | family u8 | reserved u16 | sport u16 | dport u16 | src 16 | dst 16
#   answer: version u8 | status u8 | source u8 | flags u8 | query 40 | pid u32 |
#           uid i32 | gid i32 | cgroup_id u64 | birth_ns u64 | comm 16 | len(cgroup) u16 |
#           len(node) u16 | len(job) u8 | cgroup | node | job (ASCII: job id or SLUID)
#   header: "CI" | version u8 | type u8 | length u32, all big endian
Q_FMT = "!BBHHH16s16s"
A_FMT = "!BBBB40sIiiQQ16sHHB"
H_FMT = "!2sBBI"
Q_SIZE = 40
A_SIZE = 4 + 40 + 4 + 4 + 4 + 8 + 8 + 16 + 2 + 2 + 1
V4MAP = b"\x00" * 10 + b"\xff\xff"


def v4(text: str) -> bytes:
    return V4MAP + ipaddress.IPv4Address(text).packed


def v6(text: str) -> bytes:
    return ipaddress.IPv6Address(text).packed


def raw_query(ver=3, fam=4, reserved=0, sport=40000, dport=22, src=None, dst=None) -> bytes:
    return struct.pack(Q_FMT, ver, fam, reserved, sport, dport,
                       v4("10.0.0.1") if src is None else src, v4("10.0.0.2") if dst is None else dst)


def raw_answer(ver=3, status=0, source=1, flags=0, query=None, job=b"42", pid=1234, uid=1000, gid=1000,
               cgid=77, birth=123456789, comm=b"sleep", cgroup=b"/slurm/uid_1000/job_42/step_extern",
               node=b"node1", lcg=None, lnode=None, ljob=None) -> bytes:
    head = struct.pack(A_FMT, ver, status, source, flags, raw_query() if query is None else query,
                       pid, uid, gid, cgid, birth, comm,
                       len(cgroup) if lcg is None else lcg, len(node) if lnode is None else lnode,
                       len(job) if ljob is None else ljob)
    return head + cgroup + node + job


def raw_header(magic=b"CI", ver=3, ftype=1, length=0) -> bytes:
    return struct.pack(H_FMT, magic, ver, ftype, length)


def assert_protocol_error(code, fn, *args, **kw):
    with pytest.raises(ProtocolError) as info:
        fn(*args, **kw)
    assert info.value.code == code, f"{info.value.code!r} != {code!r}: {info.value}"
    return info.value


# --- layout sanity: the module's structs have the sizes the wire format promises ------------

def test_struct_sizes_match_the_wire_format():
    assert struct.calcsize(Q_FMT) == Q_SIZE
    assert struct.calcsize(A_FMT) == A_SIZE == 93
    assert protocol.HEADER.size == 8
    assert len(Query.make("10.0.0.1", 1, "10.0.0.2", 2).encode()) == Q_SIZE


# --- Query.make --------------------------------------------------------------------------------

def test_make_v4_mapped_v6_equals_plain_v4():
    mapped = Query.make("::ffff:10.0.0.1", 40000, "::ffff:10.0.0.2", 22)
    plain = Query.make("10.0.0.1", 40000, "10.0.0.2", 22)
    assert mapped == plain
    assert mapped.src_ip == ipaddress.IPv4Address("10.0.0.1")
    assert mapped.dst_ip.version == 4
    assert mapped.encode() == plain.encode()


def test_make_mixed_mapped_and_plain_v4_is_one_family():
    q = Query.make("::ffff:10.0.0.1", 1, "10.0.0.2", 2)
    assert q.src_ip.version == q.dst_ip.version == 4


def test_make_accepts_address_objects_and_string_ports():
    q = Query.make(ipaddress.ip_address("fd00::1"), "40000", ipaddress.ip_address("fd00::2"), 22)
    assert q == Query(ipaddress.IPv6Address("fd00::1"), 40000, ipaddress.IPv6Address("fd00::2"), 22)
    assert isinstance(q.src_port, int)


@pytest.mark.parametrize("src, dst", [("10.0.0.1", "fd00::2"), ("fd00::1", "10.0.0.2")])
def test_make_rejects_family_mismatch(src, dst):
    with pytest.raises(ValueError, match="family"):
        Query.make(src, 1000, dst, 22)


@pytest.mark.parametrize("sport, dport", [(0, 22), (22, 0), (65536, 22), (22, 65536), (-1, 22)])
def test_make_rejects_bad_ports(sport, dport):
    with pytest.raises(ValueError, match="port out of range"):
        Query.make("10.0.0.1", sport, "10.0.0.2", dport)


@pytest.mark.parametrize("port", [1, 65535])
def test_make_accepts_port_bounds(port):
    q = Query.make("10.0.0.1", port, "10.0.0.2", port)
    assert (q.src_port, q.dst_port) == (port, port)


def test_make_rejects_non_address():
    with pytest.raises(ValueError):
        Query.make("not-an-ip", 1, "10.0.0.2", 2)


def test_query_str():
    assert str(Query.make("10.0.0.1", 1, "10.0.0.2", 2)) == "10.0.0.1:1 -> 10.0.0.2:2"
    assert str(Query.make("fd00::1", 1, "fd00::2", 2)) == "[fd00::1]:1 -> [fd00::2]:2"


# --- Query round trips and hand-built decoding --------------------------------------------------

@pytest.mark.parametrize("src, dst", [("10.0.0.1", "192.168.1.200"), ("fd00::1", "2001:db8::ffff"),
                                      ("::1", "::1"), ("0.0.0.0", "255.255.255.255")])
def test_query_round_trip(src, dst):
    q = Query.make(src, 40000, dst, 65535)
    assert Query.decode(q.encode()) == q


def test_query_encode_matches_hand_built_bytes_v4():
    assert Query.make("10.0.0.1", 40000, "10.0.0.2", 22).encode() == raw_query()


def test_query_encode_matches_hand_built_bytes_v6():
    q = Query.make("fd00::1", 5, "fd00::2", 6)
    assert q.encode() == raw_query(fam=6, sport=5, dport=6, src=v6("fd00::1"), dst=v6("fd00::2"))


def test_query_decode_hand_built_v4():
    q = Query.decode(raw_query(sport=40000, dport=22))
    assert q == Query(ipaddress.IPv4Address("10.0.0.1"), 40000, ipaddress.IPv4Address("10.0.0.2"), 22)


def test_query_decode_hand_built_v6():
    q = Query.decode(raw_query(fam=6, src=v6("2001:db8::1"), dst=v6("2001:db8::2")))
    assert q.src_ip == ipaddress.IPv6Address("2001:db8::1")
    assert q.dst_ip == ipaddress.IPv6Address("2001:db8::2")


@pytest.mark.parametrize("n", [0, 1, Q_SIZE - 1])
def test_query_decode_truncated(n):
    assert_protocol_error(ErrorCode.BAD_FRAME, Query.decode, raw_query()[:n])


def test_query_decode_trailing_bytes():
    assert_protocol_error(ErrorCode.BAD_FRAME, Query.decode, raw_query() + b"\0")


@pytest.mark.parametrize("ver", [0, 1, 2, 255])
def test_query_decode_wrong_version(ver):
    assert_protocol_error(ErrorCode.UNSUPPORTED_VERSION, Query.decode, raw_query(ver=ver))


def test_query_decode_family4_with_non_mapped_address():
    err = assert_protocol_error(ErrorCode.BAD_FRAME, Query.decode, raw_query(fam=4, src=v6("fd00::1")))
    assert "v4-mapped" in str(err)
    assert_protocol_error(ErrorCode.BAD_FRAME, Query.decode, raw_query(fam=4, dst=v6("fd00::2")))


@pytest.mark.parametrize("fam", [0, 2, 5, 10, 255])
def test_query_decode_unknown_family(fam):
    assert_protocol_error(ErrorCode.BAD_FRAME, Query.decode, raw_query(fam=fam))


@pytest.mark.parametrize("reserved", [1, 0x8000, 0xFFFF])
def test_query_decode_nonzero_reserved(reserved):
    assert_protocol_error(ErrorCode.BAD_FRAME, Query.decode, raw_query(reserved=reserved))


@pytest.mark.parametrize("sport, dport", [(0, 22), (22, 0), (0, 0)])
def test_query_decode_port_zero(sport, dport):
    assert_protocol_error(ErrorCode.BAD_FRAME, Query.decode, raw_query(sport=sport, dport=dport))


def test_query_decode_family6_with_mapped_address_stays_v6():
    # Family says 6: the decoder takes the sender at its word (make() normalises on the client side).
    q = Query.decode(raw_query(fam=6))
    assert q.src_ip == ipaddress.IPv6Address("::ffff:10.0.0.1")


# --- Answer round trips and hand-built decoding --------------------------------------------------

def full_answer(query, **kw) -> Answer:
    base = dict(query=query, status=Status.FOUND, source=Source.BPF, owner_exited=True, closed=True,
                job_id="4242", pid=31337, uid=1000, gid=100, cgroup_id=2 ** 63 + 5, birth_ns=2 ** 64 - 1,
                comm="sshd", cgroup="/slurm/uid_1000/job_4242/step_extern", node="cn-07")
    base.update(kw)
    return Answer(**base)


def test_answer_round_trip_v4():
    a = full_answer(Query.make("10.0.0.1", 40000, "10.0.0.2", 22))
    assert Answer.decode(a.encode()) == a


def test_answer_round_trip_v6():
    a = full_answer(Query.make("fd00::1", 40000, "fd00::2", 22), source=Source.PROC, owner_exited=False)
    assert Answer.decode(a.encode()) == a


def test_answer_round_trip_minimal_not_found():
    a = Answer(Query.make("10.0.0.1", 1, "10.0.0.2", 2), Status.NOT_FOUND)
    b = Answer.decode(a.encode())
    assert b == a
    assert (b.job_id, b.uid, b.gid, b.pid, b.cgroup, b.node, b.comm) == (None, None, None, 0, "", "", "")
    assert len(a.encode()) == A_SIZE


@pytest.mark.parametrize("uid, gid", [(None, None), (0, None), (None, 0), (0, 0)])
def test_answer_round_trip_none_and_zero_ids(uid, gid):
    a = full_answer(Query.make("10.0.0.1", 1, "10.0.0.2", 2), uid=uid, gid=gid)
    b = Answer.decode(a.encode())
    assert (b.uid, b.gid) == (uid, gid)


def test_answer_long_cgroup_truncated_to_4096_bytes():
    a = full_answer(Query.make("10.0.0.1", 1, "10.0.0.2", 2), cgroup="/" + "x" * 5000)
    data = a.encode()
    assert len(data) == A_SIZE + 4096 + len("cn-07") + len("4242")
    b = Answer.decode(data)
    assert b.cgroup == ("/" + "x" * 5000)[:4096]
    assert b.node == "cn-07"


def test_answer_long_comm_truncated_to_16_bytes():
    a = full_answer(Query.make("10.0.0.1", 1, "10.0.0.2", 2), comm="c" * 40)
    assert Answer.decode(a.encode()).comm == "c" * 16


def test_answer_unicode_node_and_cgroup():
    a = full_answer(Query.make("10.0.0.1", 1, "10.0.0.2", 2), node="nœud-é-東京", cgroup="/slurm/ü")
    b = Answer.decode(a.encode())
    assert b.node == "nœud-é-東京"
    assert b.cgroup == "/slurm/ü"


def test_answer_decode_hand_built():
    a = Answer.decode(raw_answer(flags=3, uid=-1, gid=-1))
    assert a.query == Query.make("10.0.0.1", 40000, "10.0.0.2", 22)
    assert (a.status, a.source, a.owner_exited, a.closed) == (Status.FOUND, Source.BPF, True, True)
    assert (a.job_id, a.pid, a.uid, a.gid, a.cgroup_id, a.birth_ns) == ("42", 1234, None, None, 77, 123456789)
    assert (a.comm, a.cgroup, a.node) == ("sleep", "/slurm/uid_1000/job_42/step_extern", "node1")


def test_answer_decode_empty_job_is_none():
    assert Answer.decode(raw_answer(job=b"")).job_id is None


def test_answer_carries_a_sluid_named_job():
    # Slurm 26.05 names v2 job cgroups by SLUID; the answer names the job the same way.
    a = full_answer(Query.make("10.0.0.1", 1, "10.0.0.2", 2), job_id="sBR1JB8J1YM400",
                    cgroup="/system.slice/node1_slurmstepd.scope/sBR1JB8J1YM400")
    data = a.encode()
    assert data.endswith(b"sBR1JB8J1YM400") and Answer.decode(data) == a


@pytest.mark.parametrize("job", [b"0", b"042", b"4294967296", b"sbr1jb8j1ym400", b"x", b"4 2", b"\xff"])
def test_answer_with_a_malformed_job_is_a_bad_frame(job):
    assert_protocol_error(ErrorCode.BAD_FRAME, Answer.decode, raw_answer(job=job))


@pytest.mark.parametrize("job", ["0", "job_42", "42\n", "s" * 14])
def test_answer_encode_refuses_a_malformed_job(job):
    with pytest.raises(ValueError, match="not a job id or SLUID"):
        full_answer(Query.make("10.0.0.1", 1, "10.0.0.2", 2), job_id=job).encode()


def test_answer_encode_matches_hand_built_bytes():
    a = Answer(Query.make("10.0.0.1", 40000, "10.0.0.2", 22), Status.FOUND, Source.BPF, job_id="42",
               pid=1234, uid=1000, gid=1000, cgroup_id=77, birth_ns=123456789, comm="sleep",
               cgroup="/slurm/uid_1000/job_42/step_extern", node="node1")
    assert a.encode() == raw_answer()


@pytest.mark.parametrize("n", [0, 1, 40, A_SIZE - 1])
def test_answer_shorter_than_fixed_part(n):
    assert_protocol_error(ErrorCode.BAD_FRAME, Answer.decode, raw_answer(cgroup=b"", node=b"")[:n])


@pytest.mark.parametrize("lcg, lnode, extra", [
    (10, 5, b""),        # claims more than is there
    (0, 0, b""),         # claims less than is there (strings present, lengths zero)
    (34, 6, b""),        # node one byte longer than present
    (None, None, b"!"),  # trailing byte after the node
])
def test_answer_string_lengths_disagree_with_size(lcg, lnode, extra):
    data = raw_answer(lcg=lcg, lnode=lnode) + extra
    err = assert_protocol_error(ErrorCode.BAD_FRAME, Answer.decode, data)
    assert "length" in str(err)


def test_answer_wrong_version():
    assert_protocol_error(ErrorCode.UNSUPPORTED_VERSION, Answer.decode, raw_answer(ver=1))


@pytest.mark.parametrize("status", [2, 7, 255])
def test_answer_unknown_status(status):
    assert_protocol_error(ErrorCode.BAD_FRAME, Answer.decode, raw_answer(status=status))


@pytest.mark.parametrize("source", [3, 9, 255])
def test_answer_unknown_source(source):
    assert_protocol_error(ErrorCode.BAD_FRAME, Answer.decode, raw_answer(source=source))


def test_answer_with_bad_embedded_query():
    assert_protocol_error(ErrorCode.BAD_FRAME, Answer.decode, raw_answer(query=raw_query(sport=0)))
    assert_protocol_error(ErrorCode.BAD_FRAME, Answer.decode, raw_answer(query=raw_query(reserved=1)))


def test_answer_to_dict():
    d = Answer(Query.make("fd00::1", 1, "fd00::2", 2), Status.NOT_FOUND, node="n").to_dict()
    assert d["query"] == {"src_ip": "fd00::1", "src_port": 1, "dst_ip": "fd00::2", "dst_port": 2}
    assert (d["status"], d["source"], d["uid"], d["node"]) == ("not_found", "none", None, "n")


# --- frame header -----------------------------------------------------------------------------

def test_encode_frame_hand_checked():
    assert encode_frame(FrameType.ANSWER, b"abc") == b"CI\x03\x02\x00\x00\x00\x03abc"
    assert encode_frame(FrameType.REQUEST, b"") == b"CI\x03\x01\x00\x00\x00\x00"


def test_decode_header_good():
    assert decode_header(raw_header(ftype=1, length=MAX_FRAME_PAYLOAD)) == (FrameType.REQUEST, MAX_FRAME_PAYLOAD)
    assert decode_header(raw_header(ftype=3, length=0)) == (FrameType.ERROR, 0)
    assert decode_header(raw_header(ftype=2, length=100), max_payload=100) == (FrameType.ANSWER, 100)


@pytest.mark.parametrize("magic", [b"IC", b"ci", b"\0\0", b"GE"])
def test_decode_header_bad_magic(magic):
    err = assert_protocol_error(ErrorCode.BAD_FRAME, decode_header, raw_header(magic=magic))
    assert "magic" in str(err)


@pytest.mark.parametrize("ver", [0, 1, 2, 255])
def test_decode_header_wrong_version(ver):
    assert_protocol_error(ErrorCode.UNSUPPORTED_VERSION, decode_header, raw_header(ver=ver))


@pytest.mark.parametrize("ftype", [0, 4, 255])
def test_decode_header_unknown_type(ftype):
    err = assert_protocol_error(ErrorCode.BAD_FRAME, decode_header, raw_header(ftype=ftype))
    assert "unknown frame type" in str(err)


def test_decode_header_oversized_length():
    assert_protocol_error(ErrorCode.BAD_FRAME, decode_header, raw_header(length=MAX_FRAME_PAYLOAD + 1))
    assert_protocol_error(ErrorCode.BAD_FRAME, decode_header, raw_header(length=2 ** 32 - 1))
    assert_protocol_error(ErrorCode.BAD_FRAME, decode_header, raw_header(length=101), max_payload=100)


@pytest.mark.parametrize("n", [0, 1, 7])
def test_decode_header_truncated(n):
    assert_protocol_error(ErrorCode.BAD_FRAME, decode_header, raw_header()[:n])


def test_decode_header_too_long():
    assert_protocol_error(ErrorCode.BAD_FRAME, decode_header, raw_header() + b"x")


def test_encode_frame_refuses_oversized_payload():
    assert len(encode_frame(FrameType.REQUEST, b"x" * MAX_FRAME_PAYLOAD)) == 8 + MAX_FRAME_PAYLOAD
    with pytest.raises(ValueError, match="exceeds"):
        encode_frame(FrameType.REQUEST, b"x" * (MAX_FRAME_PAYLOAD + 1))


# --- error frames -----------------------------------------------------------------------------

@pytest.mark.parametrize("code", list(ErrorCode))
def test_error_round_trip(code):
    frame = encode_error(code, "why: ü")
    ftype, length = decode_header(frame[:8])
    assert ftype == FrameType.ERROR
    assert length == len(frame) - 8
    assert frame[8] == int(code)
    assert decode_error(frame[8:]) == (code, "why: ü")


def test_encode_error_truncates_message_to_512_bytes():
    frame = encode_error(ErrorCode.INTERNAL, "m" * 2000)
    assert len(frame) == 8 + 1 + 512


def test_decode_error_hand_built():
    assert decode_error(b"\x04too many clients") == (ErrorCode.BUSY, "too many clients")
    assert decode_error(b"\x07") == (ErrorCode.TIMEOUT, "")


@pytest.mark.parametrize("byte", [0, 8, 200, 255])
def test_decode_error_unknown_code_is_internal(byte):
    assert decode_error(bytes([byte]) + b"future") == (ErrorCode.INTERNAL, "future")


def test_decode_error_empty():
    assert_protocol_error(ErrorCode.BAD_FRAME, decode_error, b"")


def test_decode_error_invalid_utf8_does_not_raise():
    code, msg = decode_error(b"\x01\xff\xfe")
    assert code == ErrorCode.BAD_FRAME
    assert "\ufffd" in msg


# --- request body and answer tag ----------------------------------------------------------------

KEY = bytes(range(32))


def test_request_is_the_query_then_the_key():
    q = Query.make("10.0.0.1", 40000, "10.0.0.2", 22)
    body = protocol.encode_request(q, KEY)
    assert body == raw_query() + KEY
    assert protocol.decode_request(body) == (q, KEY)


@pytest.mark.parametrize("key", [b"", b"k" * 31, b"k" * 33])
def test_request_refuses_a_key_of_another_size(key):
    with pytest.raises(ValueError):
        protocol.encode_request(Query.make("10.0.0.1", 1, "10.0.0.2", 2), key)


@pytest.mark.parametrize("body", [raw_query(), raw_query() + KEY[:31], raw_query() + KEY + b"x", b""])
def test_request_of_the_wrong_length_is_a_bad_frame(body):
    assert_protocol_error(ErrorCode.BAD_FRAME, protocol.decode_request, body)


@pytest.mark.parametrize("ver", [0, 1, 2, 255])
def test_request_of_another_version_is_unsupported_whatever_its_length(ver):
    # a v1 client's request is 40 bytes: it must hear "unsupported version", not "bad frame"
    assert_protocol_error(ErrorCode.UNSUPPORTED_VERSION, protocol.decode_request, raw_query(ver=ver))


def test_sealed_answer_is_answer_then_hmac_sha256_of_context_and_answer():
    a = Answer.decode(raw_answer())
    sealed = protocol.seal_answer(a, KEY)
    assert sealed[:-32] == raw_answer()
    assert sealed[-32:] == hmac.new(KEY, b"callerid answer v3\0" + raw_answer(), hashlib.sha256).digest()
    assert protocol.open_answer(sealed, KEY) == a


def test_answer_under_another_key_is_refused_as_auth_failure():
    sealed = protocol.seal_answer(Answer.decode(raw_answer()), KEY)
    assert_protocol_error(ErrorCode.AUTH_FAILED, protocol.open_answer, sealed, bytes(32))


@pytest.mark.parametrize("where", [0, 4, 44, -33, -1])
def test_any_flipped_bit_is_refused(where):
    sealed = bytearray(protocol.seal_answer(Answer.decode(raw_answer()), KEY))
    sealed[where] ^= 0x01
    assert_protocol_error(ErrorCode.AUTH_FAILED, protocol.open_answer, bytes(sealed), KEY)


@pytest.mark.parametrize("n", [0, 1, 31])
def test_answer_shorter_than_a_tag_is_a_bad_frame(n):
    assert_protocol_error(ErrorCode.BAD_FRAME, protocol.open_answer, b"x" * n, KEY)


def test_tag_is_checked_before_the_answer_is_parsed():
    # garbage with a valid tag is a bad frame; garbage with a wrong tag never reaches the parser
    garbage = b"\x03junk"
    tagged = garbage + hmac.new(KEY, b"callerid answer v3\0" + garbage, hashlib.sha256).digest()
    assert_protocol_error(ErrorCode.BAD_FRAME, protocol.open_answer, tagged, KEY)
    assert_protocol_error(ErrorCode.AUTH_FAILED, protocol.open_answer, garbage + bytes(32), KEY)
