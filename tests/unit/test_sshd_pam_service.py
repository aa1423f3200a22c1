"""Test sshds get their own PAM service on every OpenSSH: by program name before 10, by
PAMServiceName from 10 on (whose default, "sshd", would run the system's stack)."""

from __future__ import annotations

from tests.infra.slurmlab.config import sshd_config_text
from tests.infra.sshd import pam_service_lines


def test_openssh_10_gets_pam_service_name(tmp_path):
    sshd = tmp_path / "sshd"
    sshd.write_bytes(b"\x7fELF...\0pamservicename\0permitrootlogin\0")
    assert pam_service_lines("sshd-cid1", str(sshd)) == ["PAMServiceName sshd-cid1"]


def test_older_openssh_is_named_by_its_program(tmp_path):
    sshd = tmp_path / "sshd"
    sshd.write_bytes(b"\x7fELF...\0permitrootlogin\0usepam\0")
    assert pam_service_lines("sshd-cid1", str(sshd)) == []


def test_lab_config_carries_the_extra_lines(tmp_path):
    text = sshd_config_text(22, tmp_path / "k", tmp_path, tmp_path / "a", tmp_path / "slurm.conf",
                            ("PAMServiceName sshd-cidlab-node1",))
    assert "\nPAMServiceName sshd-cidlab-node1\n" in text
