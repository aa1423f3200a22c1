"""What an adopted session takes from its job: environment variables (adopter/jobenv.py)
and the job_container/tmpfs namespace file (adopter/jobns.py), on trees made by the test."""

from __future__ import annotations

import os

import pytest

from callerid.adopter import jobenv, jobns
from callerid.adopter.jobs import LocalJob
from tests.helpers import require

NAMES = ("CUDA_VISIBLE_DEVICES", "SLURM_JOB_GPUS")


def test_parse_environ_keeps_listed_utf8_first_values():
    raw = (b"PATH=/bin\0CUDA_VISIBLE_DEVICES=0,1\0CUDA_VISIBLE_DEVICES=9\0SLURM_JOB_GPUS=\xff\0"
           b"\xffBAD=1\0noequals\0")
    assert jobenv.parse_environ(raw, NAMES) == {"CUDA_VISIBLE_DEVICES": "0,1"}
    assert jobenv.parse_environ(b"CUDA_VISIBLE_DEVICES=" + b"x" * (jobenv.MAX_VALUE + 1), NAMES) == {}


def test_steps_batch_first_then_numbered_then_interactive():
    names = ["step_interactive", "step_10", "step_2", "step_batch"]
    assert sorted(names, key=jobenv.step_order) == ["step_batch", "step_2", "step_10", "step_interactive"]


def _fake(tmp_path, procs: dict, steps: dict):
    """A v1 job dir with step dirs holding pids, and a fake /proc with status and environ."""
    jdir = tmp_path / "freezer" / "slurm_n1" / "uid_1000" / "job_7"
    for step, pids in steps.items():
        (jdir / step).mkdir(parents=True)
        (jdir / step / "cgroup.procs").write_text("".join(f"{p}\n" for p in pids))
    proc = tmp_path / "proc"
    for pid, (uid, env) in procs.items():
        (proc / str(pid)).mkdir(parents=True)
        (proc / str(pid) / "status").write_text(f"Name:\tx\nUid:\t{uid}\t{uid}\t{uid}\t{uid}\nGid:\t1\t1\t1\t1\n")
        (proc / str(pid) / "environ").write_bytes(env)
    job = LocalJob("7", 1000, 1.0, "v1", (str(jdir / "step_extern"),))
    return job, str(proc)


def test_job_environment_comes_from_the_users_process_in_a_job_step(tmp_path):
    job, proc = _fake(tmp_path, {
        10: (0, b"CUDA_VISIBLE_DEVICES=root\0"),      # slurmstepd: root, never used
        11: (1000, b"CUDA_VISIBLE_DEVICES=extern\0"),  # extern step: not the job's view
        12: (1000, b"PATH=/bin\0"),                   # no listed variable: try the next
        13: (1000, b"CUDA_VISIBLE_DEVICES=0,1\0SLURM_JOB_GPUS=0,1\0"),
    }, {"step_extern": [11], "step_batch": [10, 12], "step_0": [13]})
    assert jobenv.job_environment(job, NAMES, proc) == {"CUDA_VISIBLE_DEVICES": "0,1", "SLURM_JOB_GPUS": "0,1"}
    assert jobenv.job_environment(job, (), proc) == {}


def test_job_group_is_the_real_gid_of_the_users_job_process(tmp_path):
    job, proc = _fake(tmp_path, {10: (0, b""), 12: (1000, b"")}, {"step_extern": [], "step_batch": [10, 12]})
    assert jobenv.job_group(job, proc) == 1   # _fake writes Gid 1
    job, proc = _fake(tmp_path / "b", {10: (0, b"")}, {"step_extern": [], "step_batch": [10]})
    assert jobenv.job_group(job, proc) is None


def test_job_environment_is_empty_without_a_users_process(tmp_path):
    job, proc = _fake(tmp_path, {10: (0, b"CUDA_VISIBLE_DEVICES=0\0")}, {"step_extern": [], "step_batch": [10, 99]})
    assert jobenv.job_environment(job, NAMES, proc) == {}


@pytest.mark.parametrize("text, node, want", [
    ("AutoBasePath=true\nBasePath=/var/spool/jc\n", "n1", "/var/spool/jc"),
    ("BasePath=/a # comment\nNodeName=n1,n2 BasePath=/b\n", "n2", "/b"),
    ("BasePath=/a\nNodeName=n1 BasePath=/b\n", "n3", "/a"),
    ("NodeName=n1 BasePath=/b\n", "n3", None),
    ("basepath=relative\n", "n1", None),
    ("", "n1", None),
])
def test_base_path(text, node, want):
    assert jobns.base_path(text, node) == want


def test_namespace_of_a_job_without_one_is_none(tmp_path):
    assert jobns.namespace_of(str(tmp_path), "n1", 5) is None


def test_namespace_file_must_be_a_mount_namespace_in_roots_directories(tmp_path):
    require(os.geteuid() == 0, "root (the namespace path must be owned by root)")
    os.chmod(tmp_path, 0o755)
    (tmp_path / "n1" / "5").mkdir(parents=True)
    ns = tmp_path / "n1" / "5" / ".ns"
    ns.write_text("")   # what an unmounted .ns looks like
    with pytest.raises(jobns.NamespaceError, match="not a namespace file"):
        jobns.namespace_of(str(tmp_path), "n1", 5)
    os.chmod(tmp_path / "n1", 0o777)   # anyone could have made 5/.ns
    with pytest.raises(jobns.NamespaceError, match="writable only by root"):
        jobns.namespace_of(str(tmp_path), "n1", 5)
    os.chmod(tmp_path / "n1", 0o755)
    ns.unlink()
    ns.symlink_to("/proc/self/ns/mnt")
    with pytest.raises(jobns.NamespaceError, match="symlink"):
        jobns.namespace_of(str(tmp_path), "n1", 5)
