"""libbcc without batch map operations (BCC 0.18, Debian 11) must not break the tracer's import."""

from __future__ import annotations

import ctypes
import ctypes.util

from bcc import libbcc

from callerid.tracer import bpfmap


def test_a_libbcc_without_batch_wrappers_is_detected_not_fatal():
    libc = ctypes.CDLL(ctypes.util.find_library("c"))   # a real library that has no bpf_lookup_batch
    assert bpfmap.bind_batch(libc) is False


def test_this_hosts_libbcc_batch_wrappers_are_bound():
    assert bpfmap.bind_batch(libbcc.lib) is hasattr(libbcc.lib, "bpf_lookup_batch")
    assert bpfmap.LIBBCC_HAS_BATCH is hasattr(libbcc.lib, "bpf_lookup_batch")
