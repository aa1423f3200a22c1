"""A guest kernel panic under emulation: how the VM runner recognises it and which steps it runs
again on a fresh boot (tests/vm/__main__.py:run_suite)."""

from tests.vm.machine import panic_reason
from tests.vm.report import failed_tests, steps_left

# the console of CI's Debian 13 guest at 18:18 on 2026-12-01, shortened
CONSOLE = """\
cid-trixie login: [  274.245261] Oops: int3: 0000 [#1] PREEMPT SMP NOPTI
[  274.245893] CPU: 0 UID: 0 PID: 1228 Comm: hostname Not tainted 6.12.118+deb13-amd64 #1  Debian 6.12.118-1
[  274.246194] RIP: 0010:__alloc_pages_noprof+0xe4/0x310
[  274.249826] Oops: int3: 0000 [#2] PREEMPT SMP NOPTI
[  274.250129] Kernel panic - not syncing: Fatal exception in interrupt
[  276.139843] ---[ end Kernel panic - not syncing: Fatal exception in interrupt ]---
"""


def test_a_panic_is_reported_by_its_first_oops():
    assert panic_reason(CONSOLE) == "Oops: int3: 0000 [#1] PREEMPT SMP NOPTI"


def test_a_panic_without_an_oops_is_reported_by_its_panic_line():
    console = "[    9.1] systemd[1]: started\n[   12.5] Kernel panic - not syncing: Attempted to kill init!\n"
    assert panic_reason(console) == "Kernel panic - not syncing: Attempted to kill init!"


def test_a_console_without_a_panic_has_no_reason():
    # an Oops that did not panic the kernel fails the tests it broke; it is no reason to rerun
    assert panic_reason("[  5.0] Oops: general protection fault\n[  6.0] login:\n") is None
    assert panic_reason("") is None


def test_steps_that_ended_are_not_run_again():
    ended = [("copy", 0, 4), ("setup", 0, 88), ("import", 0, 1), ("smoke", 0, 163)]
    assert steps_left(["smoke", "demo", "kernel"], ended) == ["demo", "kernel"]


def test_a_failed_step_that_ended_keeps_its_result():
    ended = [("copy", 0, 4), ("setup", 0, 88), ("import", 0, 1), ("smoke", 1, 163), ("demo", 0, 40)]
    assert steps_left(["smoke", "demo", "kernel"], ended) == ["kernel"]


def test_install_steps_alone_leave_every_step_to_run():
    assert steps_left(["smoke", "demo"], [("copy", 0, 4), ("setup", 0, 88)]) == ["smoke", "demo"]


def test_the_summary_names_each_failed_test_once():
    # CI prints only the end of the run: the summary must say which tests failed, not only "FAIL(1)"
    log = """\
tests/kernel/test_probe_namespaces.py ...F.                              [ 52%]
FAILED tests/kernel/test_probe_namespaces.py::test_churn[cookie] - AssertionError: {'birth_ns': 0}
ERROR tests/kernel/test_munge.py::test_x - RuntimeError: munged
  FAILED tests/not/a/summary/line
FAILED tests/kernel/test_probe_namespaces.py::test_churn[cookie] - AssertionError: again, after a retry
"""
    assert failed_tests(log) == [
        "FAILED tests/kernel/test_probe_namespaces.py::test_churn[cookie] - AssertionError: {'birth_ns': 0}",
        "ERROR tests/kernel/test_munge.py::test_x - RuntimeError: munged"]
    long = "FAILED tests/a.py::t - " + "x" * 500
    assert failed_tests(long) == ["FAILED tests/a.py::t - " + "x" * 160 + "..."]
    assert failed_tests("=== 106 passed ===\n") == []
