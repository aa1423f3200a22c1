"""The PAM stack checks of `callerid doctor`, on PAM files written by the test."""

from __future__ import annotations

import subprocess

from callerid.pamstack import parse, problems

HOOK = "account required pam_callerid.so"


def write(tmp_path, name, text):
    (tmp_path / name).write_text(text)


def check(tmp_path, sshd: str, **includes) -> list[str]:
    write(tmp_path, "sshd", sshd)
    for name, text in includes.items():
        write(tmp_path, name.replace("_", "-"), text)
    return [p.text for p in problems(parse("sshd", str(tmp_path)), str(tmp_path))]


def test_good_stack_has_no_problems(tmp_path):
    assert check(tmp_path, f"account required pam_unix.so\n{HOOK}\nsession required pam_unix.so\n") == []


def test_jump_past_the_hook_is_reported(tmp_path):
    found = check(tmp_path, f"account [success=2 default=ignore] pam_unix.so\naccount requisite pam_deny.so\n{HOOK}\n")
    assert any("can end the account stack" in p for p in found), found


def test_debian_common_account_jump_is_not_a_problem_when_it_lands_before_the_hook(tmp_path):
    # Debian's common-account: success=1 skips pam_deny and lands on pam_permit, still before the hook.
    found = check(tmp_path, f"@include common-account\n{HOOK}\n",
                  common_account="account [success=1 new_authtok_reqd=done default=ignore] pam_unix.so\n"
                                 "account requisite pam_deny.so\naccount required pam_permit.so\n")
    assert found == [], found


def test_pam_systemd_in_session_is_reported(tmp_path):
    found = check(tmp_path, f"{HOOK}\nsession optional pam_systemd.so\n")
    assert any("pam_systemd.so" in p for p in found)


def test_missing_hook_is_reported(tmp_path):
    assert check(tmp_path, "account required pam_unix.so\n") == [
        "the account stack has no callerid module (pam_callerid.so)"]


def test_sufficient_before_the_hook_is_reported(tmp_path):
    found = check(tmp_path, f"account sufficient pam_localuser.so\n{HOOK}\n")
    assert any("sufficient pam_localuser.so" in p for p in found)


def test_hook_not_last_is_reported(tmp_path):
    found = check(tmp_path, f"{HOOK}\naccount required pam_access.so\n")
    assert any("not last" in p and "pam_access.so" in p for p in found)


def test_continuations_and_comments(tmp_path):
    text = ("# comment\naccount required pam_unix.so\n"
            "account required \\\n   /usr/local/lib/security/pam_callerid.so action_unknown=deny\n")
    assert check(tmp_path, text) == []


def test_include_and_substack_keep_only_their_type(tmp_path):
    found = check(tmp_path, f"account include other-account\nsession substack other-session\n{HOOK}\n",
                  other_account="account required pam_unix.so\nsession optional pam_systemd.so\n",
                  other_session="session optional pam_systemd.so\n")
    assert sum("pam_systemd.so" in p for p in found) == 1


# Debian 12's files as pam-auth-update writes them (pam_systemd only in the interactive one).
DEBIAN_COMMON_SESSION = """\
session [default=1] pam_permit.so
session requisite pam_deny.so
session required pam_permit.so
session required pam_unix.so
session optional pam_systemd.so
"""
DEBIAN_COMMON_SESSION_NONINTERACTIVE = DEBIAN_COMMON_SESSION.replace("session optional pam_systemd.so\n", "")
DEBIAN_SSHD = f"""\
@include common-auth
account required pam_nologin.so
@include common-account
{HOOK}
session required pam_loginuid.so
@include common-session
session required pam_limits.so
"""


def debian(tmp_path, sshd=DEBIAN_SSHD):
    write(tmp_path, "sshd", sshd)
    write(tmp_path, "common-auth", "auth required pam_unix.so\n")
    write(tmp_path, "common-account", "account required pam_unix.so\n")
    write(tmp_path, "common-session", DEBIAN_COMMON_SESSION)
    write(tmp_path, "common-session-noninteractive", DEBIAN_COMMON_SESSION_NONINTERACTIVE)
    return problems(parse("sshd", str(tmp_path)), str(tmp_path))


def test_debian_pam_systemd_fix_is_the_noninteractive_session_stack_and_it_works(tmp_path):
    (found,) = debian(tmp_path)
    assert f"{tmp_path}/common-session:5: pam_systemd.so" in found.text
    assert f"in {tmp_path}/sshd line 6, include common-session-noninteractive instead of common-session" in found.fix
    # The fix as printed, applied: the stack is clean and keeps the rest of the session modules.
    command = found.fix.split("(", 1)[1].split(")", 1)[0]
    subprocess.run(command, shell=True, check=True)
    assert problems(parse("sshd", str(tmp_path)), str(tmp_path)) == []
    assert [r.module for r in parse("sshd", str(tmp_path)) if r.type == "session"] == [
        "pam_loginuid.so", "pam_permit.so", "pam_deny.so", "pam_permit.so", "pam_unix.so", "pam_limits.so"]
    assert (tmp_path / "common-session").read_text() == DEBIAN_COMMON_SESSION   # other services keep logind


def test_pam_systemd_fix_when_the_alternative_has_it_too(tmp_path):
    debian(tmp_path)
    write(tmp_path, "common-session-noninteractive", DEBIAN_COMMON_SESSION)   # e.g. edited by hand
    (found,) = problems(parse("sshd", str(tmp_path)), str(tmp_path))
    assert found.fix.startswith(f"{tmp_path}/sshd line 6 brings it in from {tmp_path}/common-session:5: "
                                "replace that include")


def test_pam_systemd_fix_for_a_line_of_the_service_itself(tmp_path):
    (found,) = debian(tmp_path, sshd=f"{HOOK}\nsession optional pam_systemd.so\n")
    assert found.fix == f"delete or comment out {tmp_path}/sshd line 2"
