"""The one definition of the line format between pam_callerid.so and the adopter daemon.

One line each way, so the C side needs no JSON parser (adopter/pam/wireline.c is its
twin, tested against this module and fuzzed):

    request  v=1 user=U service=S [left_ms=N] opt.NAME=VALUE ...\\n
    reply    v=1 verdict=V reason=R [job=J] [msg=M] [ns=PATH] [gid=G] [env.NAME=VALUE ...]\\n

Tokens are separated by one space; a token is KEY=VALUE split at its first '='. Keys and
values are percent-encoded: every byte <= 0x20 (space, controls), >= 0x7f, '%' and '='
is written %XX (two hex digits; %00 is refused, C strings cannot hold it), everything
else as itself. So a line is
printable ASCII, a token never contains a space, and its first '=' is the separator.
A key may appear once; the version is the first token. Lines are at most MAX_LINE bytes
including the newline. The request carries no pid: the daemon takes the process to
adopt from the socket's peer credentials. left_ms is the module's own deadline, the
milliseconds it had left when it sent the request: the daemon's work ends before it.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

VERSION = "1"
MAX_LINE = 16384
MAX_TOKENS = 256
MAX_ENV = 64          # environment variables in one reply
MAX_LEFT_MS = 3_600_000   # pam_callerid.so's deadline= is at most 3600 s
OPT_PREFIX = "opt."
ENV_PREFIX = "env."
VERDICTS = ("adopt", "allow", "deny", "ignore")
ENV_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
JOB = re.compile(r"[0-9A-Za-z_.-]{1,64}")   # a decimal job id or a Slurm 26.05 SLUID

_HEX = "0123456789ABCDEF"
_HEXDIGITS = frozenset(b"0123456789ABCDEFabcdef")


class WireError(ValueError):
    """A line that is not in the format above."""


def _plain(b: int) -> bool:
    return 0x20 < b < 0x7F and b not in (0x25, 0x3D)  # not '%', not '='


def escape(text: str | bytes) -> str:
    """The percent-encoded form of text (str is UTF-8 encoded first)."""
    raw = text.encode() if isinstance(text, str) else text
    return "".join(chr(b) if _plain(b) else "%" + _HEX[b >> 4] + _HEX[b & 15] for b in raw)


def unescape(token: bytes) -> bytes:
    out = bytearray()
    i = 0
    while i < len(token):
        b = token[i]
        if b == 0x25:
            h = token[i + 1:i + 3]
            if len(h) < 2 or not all(c in _HEXDIGITS for c in h):
                raise WireError("bad or truncated %XX escape")
            if h == b"00":
                raise WireError("NUL byte (%00) is not allowed")  # C strings end at NUL
            out.append(int(h, 16))
            i += 3
        elif _plain(b):
            out.append(b)
            i += 1
        else:
            raise WireError(f"byte 0x{b:02x} must be escaped")
    return bytes(out)


def encode(pairs: list[tuple[str, str]]) -> bytes:
    """A line of KEY=VALUE tokens, v=1 first."""
    line = " ".join(f"{escape(k)}={escape(v)}" for k, v in [("v", VERSION), *pairs]).encode() + b"\n"
    if len(line) > MAX_LINE:
        raise WireError(f"line of {len(line)} bytes is over {MAX_LINE}")
    return line


def decode(line: bytes) -> dict[str, str]:
    """KEY -> VALUE of one line (with its newline); raises WireError on anything malformed."""
    if len(line) > MAX_LINE:
        raise WireError(f"line of {len(line)} bytes is over {MAX_LINE}")
    if not line.endswith(b"\n"):
        raise WireError("no newline at the end of the line")
    tokens = line[:-1].split(b" ")
    if len(tokens) > MAX_TOKENS:
        raise WireError(f"more than {MAX_TOKENS} tokens")
    out: dict[str, str] = {}
    for n, tok in enumerate(tokens):
        key, sep, value = tok.partition(b"=")
        if not sep or not key:
            raise WireError(f"token {n} is not KEY=VALUE")
        try:
            k, v = unescape(key).decode(), unescape(value).decode()
        except UnicodeDecodeError as exc:
            raise WireError(f"token {n} is not UTF-8") from exc
        if k in out:
            raise WireError(f"key {k!r} repeated")
        if n == 0 and (k, v) != ("v", VERSION):
            raise WireError(f"first token must be v={VERSION}")
        out[k] = v
    return out


@dataclass(frozen=True)
class Request:
    user: str
    service: str
    options: dict = field(default_factory=dict)  # PAM-line options, name -> value, as written
    left_ms: int | None = None   # the module's time left when it sent this; None: not given

    def encode(self) -> bytes:
        left = [] if self.left_ms is None else [("left_ms", str(self.left_ms))]
        return encode([("user", self.user), ("service", self.service), *left,
                       *((OPT_PREFIX + k, v) for k, v in self.options.items())])


def parse_request(line: bytes) -> Request:
    """The module's request; unknown keys (a pid to adopt, anything else) are refused."""
    fields_ = decode(line)
    options = {k[len(OPT_PREFIX):]: v for k, v in fields_.items() if k.startswith(OPT_PREFIX)}
    other = set(fields_) - {"v", "user", "service", "left_ms"} - {OPT_PREFIX + k for k in options}
    if other:
        raise WireError(f"unexpected request keys: {sorted(other)}")
    if "user" not in fields_ or "service" not in fields_:
        raise WireError("request needs user and service")
    if "" in options:
        raise WireError("empty option name")
    left = fields_.get("left_ms")
    if left is not None and not (left.isascii() and left.isdigit() and len(left) <= 7
                                 and int(left) <= MAX_LEFT_MS):
        raise WireError(f"left_ms must be milliseconds, 0 .. {MAX_LEFT_MS}")
    return Request(fields_["user"], fields_["service"], options, int(left) if left is not None else None)


@dataclass(frozen=True)
class Reply:
    """What the module acts on: verdict (adopt/allow -> PAM_SUCCESS, ignore -> PAM_IGNORE,
    deny -> PAM_PERM_DENIED), the message to show, the job for SLURM_JOB_ID, the mount
    namespace to join, the job's environment variables to put into the session and the
    job's group to add to the session's supplementary groups."""

    verdict: str
    reason: str
    message: str = ""
    job_id: str | None = None
    namespace: str = ""
    env: dict = field(default_factory=dict)
    group: int | None = None

    def encode(self) -> bytes:
        if self.verdict not in VERDICTS:
            raise WireError(f"verdict {self.verdict!r} is not one of {VERDICTS}")
        pairs = [("verdict", self.verdict), ("reason", self.reason)]
        if self.job_id is not None:
            pairs.append(("job", str(self.job_id)))
        if self.message:
            pairs.append(("msg", self.message))
        if self.namespace:
            pairs.append(("ns", self.namespace))
        if self.group is not None:
            pairs.append(("gid", str(self.group)))
        bad = [k for k in self.env if not ENV_NAME.fullmatch(k)]
        if bad or len(self.env) > MAX_ENV:
            raise WireError(f"bad environment: names {bad}, {len(self.env)} variables (at most {MAX_ENV})")
        pairs += [(ENV_PREFIX + k, v) for k, v in self.env.items()]
        return encode(pairs)


def parse_reply(line: bytes) -> Reply:
    """The daemon's reply, as the module reads it (tests check the C parser agrees).
    Unknown keys are ignored, so a newer daemon can add fields."""
    f = decode(line)
    if f.get("verdict") not in VERDICTS:
        raise WireError(f"verdict {f.get('verdict')!r} is not one of {VERDICTS}")
    job, gid = f.get("job"), f.get("gid")
    if job is not None and not JOB.fullmatch(job):
        raise WireError("job must be 1-64 of [0-9A-Za-z_.-]")
    if gid is not None and not (gid.isdigit() and gid.isascii() and len(gid) <= 10):
        raise WireError("gid must be a decimal number of at most 10 digits")
    if gid is not None and not 0 < int(gid) < 2**32 - 1:
        raise WireError("gid must be 1 .. 2**32-2")
    env = {k[len(ENV_PREFIX):]: v for k, v in f.items() if k.startswith(ENV_PREFIX)}
    bad = [k for k in env if not ENV_NAME.fullmatch(k)]
    if bad or len(env) > MAX_ENV:
        raise WireError(f"bad environment: names {bad}, {len(env)} variables (at most {MAX_ENV})")
    return Reply(f["verdict"], f.get("reason", ""), f.get("msg", ""), job, f.get("ns", ""), env,
                 int(gid) if gid is not None else None)
