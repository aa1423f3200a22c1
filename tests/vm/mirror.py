"""The Debian mirror apt already uses on this host, read from its deb822 sources."""

import re
from pathlib import Path

SOURCES = Path("/etc/apt/sources.list.d/debian.sources")
DEFAULT = ("http://deb.debian.org/debian", "http://deb.debian.org/debian-security")


def mirrors() -> tuple[str, str]:
    """(archive URI, security URI)."""
    archive, security = DEFAULT
    if SOURCES.exists():
        for stanza in SOURCES.read_text().split("\n\n"):
            uri = re.search(r"^URIs:\s*(\S+)", stanza, re.M)
            suites = re.search(r"^Suites:\s*(.+)$", stanza, re.M)
            if not uri or not suites:
                continue
            if "-security" in suites.group(1):
                security = uri.group(1).rstrip("/")
            else:
                archive = uri.group(1).rstrip("/")
    return archive, security


def sources_list(suite: str) -> str:
    archive, security = mirrors()
    return (f"deb {archive} {suite} main\n"
            f"deb {archive} {suite}-updates main\n"
            f"deb {security} {suite}-security main\n")
