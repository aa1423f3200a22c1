"""Logging for the daemons: stderr always, syslog (authpriv, like pam_slurm_adopt) when /dev/log exists."""

from __future__ import annotations

import atexit
import logging
import logging.handlers
import os
import queue
import sys


def setup(ident: str, level: str = "info", syslog: bool = True) -> None:
    """Request threads only put records on a bounded queue; one thread writes them out,
    so a stuck syslog reader or a vanished /dev/log never stalls an answer or a login."""
    logging.raiseExceptions = False  # a broken log sink must not print a traceback per record
    handlers = []
    err = logging.StreamHandler(sys.stderr)
    err.setFormatter(logging.Formatter(f"%(asctime)s {ident}[%(process)d]: %(levelname)s %(message)s"))
    handlers.append(err)
    if syslog and os.path.exists("/dev/log"):
        try:
            h = logging.handlers.SysLogHandler("/dev/log", facility=logging.handlers.SysLogHandler.LOG_AUTHPRIV)
            h.setFormatter(logging.Formatter(f"{ident}[%(process)d]: %(message)s"))
            handlers.append(h)
        except OSError:
            pass
    q = _DroppingQueue(10000)
    listener = logging.handlers.QueueListener(q, *handlers, respect_handler_level=False)
    listener.start()
    atexit.register(listener.stop)  # write out what is queued, also on an error exit
    root = logging.getLogger()
    root.handlers.clear()
    root.setLevel(getattr(logging, level.upper(), logging.INFO))
    root.addHandler(logging.handlers.QueueHandler(q))


class _DroppingQueue(queue.Queue):
    """Drops records when full instead of blocking the logging thread's producers."""

    def put(self, item, block=True, timeout=None):
        try:
            super().put(item, block=False)
        except queue.Full:
            pass

    def put_nowait(self, item):
        self.put(item)


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
