"""The PAM stack checks of `callerid doctor`, on PAM files written by the test."""

from __future__ import annotations

from callerid.pamstack import parse, problems

HOOK = "account required pam_callerid.so"


def write(tmp_path, name, text):
    (tmp_path / name).write_text(text)


def check(tmp_path, sshd: str, **includes) -> list[str]:
    write(tmp_path, "sshd", sshd)
    for name, text in includes.items():
        write(tmp_path, name.replace("_", "-"), text)
    return problems(parse("sshd", str(tmp_path)))


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
