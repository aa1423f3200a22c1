"""The callerid RPC wire format: framing, request and answer encoding (pure, no I/O).

Every frame:   magic "CI" | version u8 | type u8 | payload length u32 (big endian) | payload
  REQUEST      payload = a MUNGE credential whose embedded data is a Query and an answer key
  ANSWER       payload = an Answer | HMAC-SHA256(answer key, context | Answer)
  ERROR        payload = code u8 | UTF-8 message (unsigned: it can only deny, never grant)
The request credential is encrypted and may be decoded only by root (the tracer), so
the answer key it carries is known to the asker and the tracer alone: the tag proves
the answer came from the process that decoded this very request, which is what a
second MUNGE credential would prove, for one munged round trip instead of three.
munged's replay cache rejects a request credential seen twice.
docs/PROTOCOL.md describes it for people.
"""

from __future__ import annotations

import enum
import hmac
import ipaddress
import re
import struct
from dataclasses import asdict, dataclass

from .inet import IPAddress, endpoint, mapped16, unmapped
from .slurm_cgroup import is_job_identity

MAGIC = b"CI"
# 2: answers authenticated by the request's key, not a second credential.
# 3: the job is a string (decimal job id or Slurm 26.05 SLUID), not a u32.
VERSION = 3
HEADER = struct.Struct("!2sBBI")
MAX_FRAME_PAYLOAD = 8192


class FrameType(enum.IntEnum):
    REQUEST = 1
    ANSWER = 2
    ERROR = 3


class ErrorCode(enum.IntEnum):
    BAD_FRAME = 1       # malformed, truncated or oversized frame or query
    AUTH_FAILED = 2     # credential invalid, expired or from an unknown key
    REPLAYED = 3        # credential already used
    BUSY = 4            # too many clients
    UNSUPPORTED_VERSION = 5
    INTERNAL = 6        # the server could not answer (e.g. munged unreachable)
    TIMEOUT = 7         # the request did not arrive before the read deadline


class Status(enum.IntEnum):
    FOUND = 0
    NOT_FOUND = 1       # also what an unauthorised caller gets


class Source(enum.IntEnum):
    NONE = 0
    BPF = 1
    PROC = 2


ANSWER_KEY_SIZE = 32
ANSWER_TAG_SIZE = 32
_TAG_CONTEXT = b"callerid answer v3\0"   # a tag made for anything else never verifies here
NO_ID = 0xFFFFFFFF  # uid/gid unknown: (uid_t)-1 is never a real id
ANSWER_FLAG_OWNER_EXITED = 1
ANSWER_FLAG_CLOSED = 2


class ProtocolError(ValueError):
    """Bytes that do not form a valid frame, query or answer."""

    def __init__(self, code: ErrorCode, message: str):
        super().__init__(message)
        self.code = code


def _from16(family: int, raw: bytes):
    ip6 = ipaddress.IPv6Address(raw)
    if family == 4:
        if ip6.ipv4_mapped is None:
            raise ProtocolError(ErrorCode.BAD_FRAME, "family 4 with a non-v4-mapped address")
        return ip6.ipv4_mapped
    return ip6


@dataclass(frozen=True)
class Query:
    """Who opened SRC_IP:SRC_PORT -> DST_IP:DST_PORT (as seen by the source node)?"""

    src_ip: IPAddress
    src_port: int
    dst_ip: IPAddress
    dst_port: int

    _S = struct.Struct("!BBHHH16s16s")

    @classmethod
    def make(cls, src_ip, src_port, dst_ip, dst_port) -> Query:
        # v4-mapped IPv6 is the same connection as plain IPv4: normalise once here.
        s, d = unmapped(src_ip), unmapped(dst_ip)
        if s.version != d.version:
            raise ValueError("source and destination must be the same address family")
        for p in (src_port, dst_port):
            if not 0 < int(p) < 65536:
                raise ValueError(f"port out of range: {p}")
        return cls(s, int(src_port), d, int(dst_port))

    def encode(self) -> bytes:
        return self._S.pack(VERSION, self.src_ip.version, 0, self.src_port, self.dst_port,
                            mapped16(self.src_ip), mapped16(self.dst_ip))

    @classmethod
    def decode(cls, data: bytes) -> Query:
        if len(data) != cls._S.size:
            raise ProtocolError(ErrorCode.BAD_FRAME, f"query is {len(data)} bytes, expected {cls._S.size}")
        ver, fam, reserved, sport, dport, s, d = cls._S.unpack(data)
        if ver != VERSION:
            raise ProtocolError(ErrorCode.UNSUPPORTED_VERSION, f"query version {ver}")
        if fam not in (4, 6) or reserved != 0:
            raise ProtocolError(ErrorCode.BAD_FRAME, f"bad family {fam} or reserved bits")
        if sport == 0 or dport == 0:
            raise ProtocolError(ErrorCode.BAD_FRAME, "port 0")
        return cls(_from16(fam, s), sport, _from16(fam, d), dport)

    def __str__(self):
        return f"{endpoint(self.src_ip, self.src_port)} -> {endpoint(self.dst_ip, self.dst_port)}"


@dataclass(frozen=True)
class Answer:
    """The tracer's reply. Echoes the query so an answer cannot be passed off for another."""

    query: Query
    status: Status
    source: Source = Source.NONE
    owner_exited: bool = False
    closed: bool = False
    job_id: str | None = None  # decimal job id or SLUID (callerid.slurm_cgroup.is_job_identity)
    pid: int = 0
    uid: int | None = None
    gid: int | None = None
    cgroup_id: int = 0
    birth_ns: int = 0
    comm: str = ""
    cgroup: str = ""
    node: str = ""

    _S = struct.Struct("!BBBB40sIIIQQ16sHHB")

    def encode(self) -> bytes:
        flags = (ANSWER_FLAG_OWNER_EXITED if self.owner_exited else 0) | (ANSWER_FLAG_CLOSED if self.closed else 0)
        cgroup = _clip(self.cgroup, 4096)
        node = _clip(self.node, 255)
        if self.job_id is not None and not is_job_identity(self.job_id):
            raise ValueError(f"not a job id or SLUID: {self.job_id!r}")
        job = (self.job_id or "").encode()
        try:
            head = self._S.pack(
                VERSION, self.status, self.source, flags, self.query.encode(),
                self.pid, NO_ID if self.uid is None else self.uid,
                NO_ID if self.gid is None else self.gid, self.cgroup_id, self.birth_ns,
                _clip(self.comm, 16), len(cgroup), len(node), len(job),
            )
        except struct.error as exc:  # not a ValueError: say what it is
            raise ValueError(f"answer field out of range: {exc}") from exc
        return head + cgroup + node + job

    @classmethod
    def decode(cls, data: bytes) -> Answer:
        n = cls._S.size
        if len(data) < n:
            raise ProtocolError(ErrorCode.BAD_FRAME, f"answer is {len(data)} bytes, shorter than {n}")
        (ver, status, source, flags, q, pid, uid, gid, cgid, birth, comm,
         lcg, lnode, ljob) = cls._S.unpack_from(data)
        if ver != VERSION:
            raise ProtocolError(ErrorCode.UNSUPPORTED_VERSION, f"answer version {ver}")
        if len(data) != n + lcg + lnode + ljob:
            raise ProtocolError(ErrorCode.BAD_FRAME, "answer length does not match its string lengths")
        job = data[n + lcg + lnode:].decode("ascii", errors="replace")
        if job and not is_job_identity(job):
            raise ProtocolError(ErrorCode.BAD_FRAME, f"answer job is not a job id or SLUID: {job!r}")
        try:
            return cls(
                query=Query.decode(q), status=Status(status), source=Source(source),
                owner_exited=bool(flags & ANSWER_FLAG_OWNER_EXITED), closed=bool(flags & ANSWER_FLAG_CLOSED),
                job_id=job or None, pid=pid, uid=None if uid == NO_ID else uid, gid=None if gid == NO_ID else gid,
                cgroup_id=cgid, birth_ns=birth, comm=comm.rstrip(b"\0").decode(errors="replace"),
                cgroup=data[n:n + lcg].decode(errors="replace"),
                node=data[n + lcg:n + lcg + lnode].decode(errors="replace"),
            )
        except ValueError as exc:
            raise ProtocolError(ErrorCode.BAD_FRAME, f"answer field out of range: {exc}") from exc

    def to_dict(self) -> dict:
        d = asdict(self)
        d["query"] = {"src_ip": str(self.query.src_ip), "src_port": self.query.src_port,
                      "dst_ip": str(self.query.dst_ip), "dst_port": self.query.dst_port}
        d["status"] = self.status.name.lower()
        d["source"] = self.source.name.lower()
        return d


def encode_request(query: Query, key: bytes) -> bytes:
    """The data a REQUEST credential carries: the query, then the key the answer is tagged with."""
    if len(key) != ANSWER_KEY_SIZE:
        raise ValueError(f"answer key must be {ANSWER_KEY_SIZE} bytes")
    return query.encode() + key


def decode_request(data: bytes) -> tuple[Query, bytes]:
    size = Query._S.size + ANSWER_KEY_SIZE
    if data[:1] and data[0] != VERSION:
        raise ProtocolError(ErrorCode.UNSUPPORTED_VERSION, f"query version {data[0]}")
    if len(data) != size:
        raise ProtocolError(ErrorCode.BAD_FRAME, f"request is {len(data)} bytes, expected {size}")
    return Query.decode(data[:Query._S.size]), data[Query._S.size:]


def seal_answer(answer: Answer, key: bytes) -> bytes:
    """ANSWER payload: the answer and its tag under the request's key."""
    body = answer.encode()
    return body + hmac.digest(key, _TAG_CONTEXT + body, "sha256")


def open_answer(payload: bytes, key: bytes) -> Answer:
    """Verify the tag (ProtocolError AUTH_FAILED if wrong), then decode."""
    if len(payload) < ANSWER_TAG_SIZE:
        raise ProtocolError(ErrorCode.BAD_FRAME, f"answer of {len(payload)} bytes has no tag")
    body, tag = payload[:-ANSWER_TAG_SIZE], payload[-ANSWER_TAG_SIZE:]
    if not hmac.compare_digest(tag, hmac.digest(key, _TAG_CONTEXT + body, "sha256")):
        raise ProtocolError(ErrorCode.AUTH_FAILED,
                            "answer tag does not verify: not from the tracer that read the request")
    return Answer.decode(body)


# A MUNGE credential as munged writes it: "MUNGE:", base64 (with its padding), ":".
# The smallest real one (no payload, no encryption) is over 100 characters.
MUNGE_PREFIX = b"MUNGE:"
MIN_CREDENTIAL = 64
_CREDENTIAL = re.compile(rb"MUNGE:[A-Za-z0-9+/]+={0,2}:")
_CREDENTIAL_START = re.compile(rb"[A-Za-z0-9+/]*={0,2}")


def check_credential_shape(payload: bytes, partial: bool = False) -> None:
    """ProtocolError BAD_FRAME unless payload looks like a MUNGE credential (cheap, before munged
    is asked). partial: payload is the start of a frame still arriving; refuse it as soon as
    it cannot become one."""
    head = payload[:len(MUNGE_PREFIX)]
    if head != MUNGE_PREFIX[:len(head)]:
        raise ProtocolError(ErrorCode.BAD_FRAME, "request is not a MUNGE credential")
    if partial:
        if not _CREDENTIAL_START.fullmatch(payload, len(MUNGE_PREFIX)):
            raise ProtocolError(ErrorCode.BAD_FRAME, "request is not a MUNGE credential")
        return
    if len(payload) < MIN_CREDENTIAL or not _CREDENTIAL.fullmatch(payload):
        raise ProtocolError(ErrorCode.BAD_FRAME, "request is not a MUNGE credential")


def _clip(text: str, limit: int) -> bytes:
    """UTF-8 of text, cut to limit bytes without splitting a character."""
    return text.encode()[:limit].decode(errors="ignore").encode()


def encode_frame(ftype: FrameType, payload: bytes) -> bytes:
    if len(payload) > MAX_FRAME_PAYLOAD:
        raise ValueError(f"payload of {len(payload)} bytes exceeds {MAX_FRAME_PAYLOAD}")
    return HEADER.pack(MAGIC, VERSION, ftype, len(payload)) + payload


def decode_header(head: bytes, max_payload: int = MAX_FRAME_PAYLOAD) -> tuple[FrameType, int]:
    """Validate an 8-byte header; returns (type, payload length)."""
    if len(head) != HEADER.size:
        raise ProtocolError(ErrorCode.BAD_FRAME, "truncated header")
    magic, ver, ftype, length = HEADER.unpack(head)
    if magic != MAGIC:
        raise ProtocolError(ErrorCode.BAD_FRAME, "bad magic")
    if ver != VERSION:
        raise ProtocolError(ErrorCode.UNSUPPORTED_VERSION, f"frame version {ver}, this side speaks {VERSION}")
    try:
        ftype = FrameType(ftype)
    except ValueError:
        raise ProtocolError(ErrorCode.BAD_FRAME, f"unknown frame type {ftype}") from None
    if length > max_payload:
        raise ProtocolError(ErrorCode.BAD_FRAME, f"frame of {length} bytes exceeds the {max_payload}-byte limit")
    return ftype, length


def encode_error(code: ErrorCode, message: str) -> bytes:
    return encode_frame(FrameType.ERROR, bytes([code]) + message.encode()[:512])


def decode_error(payload: bytes) -> tuple[ErrorCode, str]:
    if not payload:
        raise ProtocolError(ErrorCode.BAD_FRAME, "empty error frame")
    try:
        code = ErrorCode(payload[0])
    except ValueError:
        code = ErrorCode.INTERNAL
    return code, payload[1:].decode(errors="replace")

