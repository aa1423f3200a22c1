"""Logging for the daemons: stderr always, syslog (authpriv, like pam_slurm_adopt) when /dev/log exists."""

import logging
import logging.handlers
import os
import sys


def setup(ident: str, level: str = "info", syslog: bool = True) -> None:
    root = logging.getLogger()
    root.handlers.clear()
    root.setLevel(getattr(logging, level.upper(), logging.INFO))
    err = logging.StreamHandler(sys.stderr)
    err.setFormatter(logging.Formatter(f"%(asctime)s {ident}[%(process)d]: %(levelname)s %(message)s"))
    root.addHandler(err)
    if syslog and os.path.exists("/dev/log"):
        try:
            h = logging.handlers.SysLogHandler("/dev/log", facility=logging.handlers.SysLogHandler.LOG_AUTHPRIV)
        except OSError:
            return
        h.setFormatter(logging.Formatter(f"{ident}[%(process)d]: %(message)s"))
        root.addHandler(h)


def serve_until_signalled(daemon, log) -> int:
    """Start daemon, block until SIGTERM or SIGINT, stop it cleanly; the exit code."""
    import signal
    import threading

    done = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: done.set())
    signal.signal(signal.SIGINT, lambda *_: done.set())
    daemon.start()
    done.wait()
    log.info("stopping")
    daemon.stop()
    return 0
