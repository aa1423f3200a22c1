"""callerid.munge against a real, private munged (tests/conftest.py)."""

from __future__ import annotations

import base64
import os
import threading
import time

import pytest

from callerid import munge
from tests.helpers import require

pytestmark = pytest.mark.kernel

MUNGED = "/usr/sbin/munged"
KEY = "/etc/munge/munge.key"
NOBODY = 65534


@pytest.fixture(scope="module")
def munged(munged):
    """The session's private munged (tests/conftest.py); these tests use its socket path."""
    return munged.socket


def test_round_trip_gives_payload_and_root_ids(munged):
    got = munge.decode(munge.encode(b"job 42 \x00\xff", munged), munged)
    assert got == munge.Decoded(payload=b"job 42 \x00\xff", uid=0, gid=0)


def test_credential_is_ascii_armored(munged):
    cred = munge.encode(b"x", munged)
    assert cred.startswith(b"MUNGE:") and cred.endswith(b":")
    cred.decode("ascii")


def test_empty_payload(munged):
    assert munge.decode(munge.encode(b"", munged), munged).payload == b""


def test_replayed_credential_is_rejected(munged):
    cred = munge.encode(b"once", munged)
    munge.decode(cred, munged)
    with pytest.raises(munge.MungeError) as ei:
        munge.decode(cred, munged)
    assert ei.value.reason == "cred_replayed"
    assert ei.value.code == 17
    assert munged in str(ei.value)


def test_tampered_credential_is_invalid(munged):
    cred = munge.encode(b"payload", munged)
    i = len(cred) - 10  # inside the encrypted body, not the armor or header
    bad = cred[:i] + (b"A" if cred[i:i + 1] != b"A" else b"B") + cred[i + 1:]
    with pytest.raises(munge.MungeError) as ei:
        munge.decode(bad, munged)
    assert ei.value.reason == "cred_invalid"


def test_credential_from_a_munged_with_another_key_is_invalid(munged, munged_other_key):
    cred = munge.encode(b"payload", munged_other_key.socket)
    assert munge.decode(cred, munged_other_key.socket).payload == b"payload"  # it is a good credential there
    with pytest.raises(munge.MungeError) as ei:
        munge.decode(cred, munged)
    assert ei.value.reason == "cred_invalid"


def test_garbage_is_a_bad_credential(munged):
    with pytest.raises(munge.MungeError) as ei:
        munge.decode(b"not a credential", munged)
    assert ei.value.reason == "bad_cred"


def test_embedded_nul_is_rejected_before_libmunge(munged):
    cred = munge.encode(b"x", munged)
    with pytest.raises(munge.MungeError) as ei:
        munge.decode(cred + b"\0junk", munged)
    assert ei.value.reason == "bad_arg"


def test_missing_socket_fails_fast(tmp_path):
    path = str(tmp_path / "no-such.sock")
    t0 = time.monotonic()
    with pytest.raises(munge.MungeError) as ei:
        munge.encode(b"x", path)
    assert time.monotonic() - t0 < 2.0
    assert ei.value.reason == "socket"
    assert path in str(ei.value)
    assert munge.available(path) is not None


def test_encode_as_nobody_decodes_to_nobody(munged):
    require(os.geteuid() == 0, "root (to switch a child to uid 65534)")
    r, w = os.pipe()
    child = os.fork()
    if child == 0:  # pragma: no cover - runs in the child
        status = 1
        try:
            os.close(r)
            os.setgroups([])
            os.setgid(NOBODY)
            os.setuid(NOBODY)
            os.write(w, munge.encode(b"from nobody", munged))
            status = 0
        finally:
            os._exit(status)
    os.close(w)
    with os.fdopen(r, "rb") as f:
        cred = f.read()
    _, status = os.waitpid(child, 0)
    assert os.waitstatus_to_exitcode(status) == 0
    got = munge.decode(cred, munged)
    assert (got.payload, got.uid, got.gid) == (b"from nobody", NOBODY, NOBODY)


def _decode_as_nobody(cred: bytes, munged: str) -> str:
    """Try to decode cred in a child running as nobody; returns 'ok' or the munge reason."""
    r, w = os.pipe()
    child = os.fork()
    if child == 0:  # pragma: no cover - runs in the child
        try:
            os.close(r)
            os.setgroups([])
            os.setgid(NOBODY)
            os.setuid(NOBODY)
            try:
                munge.decode(cred, munged)
                os.write(w, b"ok")
            except munge.MungeError as exc:
                os.write(w, exc.reason.encode())
        finally:
            os._exit(0)
    os.close(w)
    with os.fdopen(r, "rb") as f:
        out = f.read().decode()
    os.waitpid(child, 0)
    return out


def test_secret_credential_is_decoded_by_its_uid_only(munged):
    """What the RPC's answer key relies on: only root can read a request credential."""
    require(os.geteuid() == 0, "root (to switch a child to uid 65534)")
    cred = munge.encode(b"answer key", munged, secret_for_uid=0)
    assert _decode_as_nobody(cred, munged) == "cred_unauthorized"
    # the refused attempt did not use the credential up: root still decodes it, once
    assert munge.decode(cred, munged).payload == b"answer key"
    with pytest.raises(munge.MungeError) as ei:
        munge.decode(cred, munged)
    assert ei.value.reason == "cred_replayed"
    # and a credential for nobody is refused to root
    with pytest.raises(munge.MungeError) as ei:
        munge.decode(munge.encode(b"x", munged, secret_for_uid=NOBODY), munged)
    assert ei.value.reason == "cred_unauthorized"


def test_secret_payload_is_not_in_the_credential_text(munged):
    secret = b"0123456789abcdef" * 4
    armored = munge.encode(secret, munged, secret_for_uid=0).split(b":")[1]
    body = base64.b64decode(armored + b"=" * (-len(armored) % 4))
    assert len(body) > len(secret)
    assert secret[:8] not in body and secret[-8:] not in body


def test_ttl_is_honoured(munged):
    cred = munge.encode(b"short", munged, ttl=1)
    time.sleep(2.2)
    with pytest.raises(munge.MungeError) as ei:
        munge.decode(cred, munged)
    assert ei.value.reason == "cred_expired"


def test_available(munged):
    assert munge.available(munged) is None


def test_concurrent_calls_are_independent(munged):
    errors = []

    def work(n):
        try:
            for i in range(20):
                body = f"{n}:{i}".encode()
                assert munge.decode(munge.encode(body, munged), munged).payload == body
        except Exception as e:  # collected: a thread's assert would be lost otherwise
            errors.append(e)

    threads = [threading.Thread(target=work, args=(n,)) for n in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
