"""The BCC version floor for the sockstore backend: versions read as numbers, compared as tuples."""

from __future__ import annotations

import pytest

from callerid.tracer.probes import SOCKSTORE_BCC_FLOOR, bcc_version


class FakeBcc:
    def __init__(self, version=None):
        if version is not None:
            self.__version__ = version


@pytest.mark.parametrize("text,expected", [("0.18.0", (0, 18, 0)), ("0.26.0", (0, 26, 0)),
                                           ("0.31.0-1", (0, 31, 0)), ("0.20", (0, 20))])
def test_versions_read_as_numbers(text, expected):
    assert bcc_version(FakeBcc(text)) == expected


def test_floor_separates_debian_11_from_12():
    assert bcc_version(FakeBcc("0.18.0")) < SOCKSTORE_BCC_FLOOR <= bcc_version(FakeBcc("0.26.0"))


def test_unknown_version_counts_as_below_every_floor():
    assert bcc_version(FakeBcc()) == (0,) < SOCKSTORE_BCC_FLOOR
