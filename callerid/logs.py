"""Logging for the daemons: stderr always, syslog (authpriv, like pam_slurm_adopt) when /dev/log exists."""

from __future__ import annotations

import atexit
import logging
import logging.handlers
import os
import queue
import sys
import threading
import time


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
    qh = logging.handlers.QueueHandler(q)
    qh.addFilter(GUARD)
    root.addHandler(qh)
    GUARD.start_reporting()


# --- what reaches a log line ------------------------------------------------------------------
#
# Every record of the daemons passes one filter (Guard) before it is queued: it escapes the
# formatted message, so nothing that came from outside — a PAM_USER, a peer address, frame
# contents, an exception's text — can start a second line or reorder one (issue 12, item 5),
# and it limits how often one kind of warning is written, so a flood of bad connections
# cannot flood the log (item 4).

_ESCAPES = {"\\": "\\\\", "\n": "\\n", "\r": "\\r", "\t": "\\t"}


TRACEBACK_MARK = "| "
_TRACEBACK = logging.Formatter()


def escape(text: str) -> str:
    """text as one line of printable characters: control characters, line and paragraph
    separators and invisible format characters (bidi overrides like U+202E, zero-width
    ones) become \\xNN / \\uNNNN escapes, and a backslash becomes two."""
    if text.isprintable() and "\\" not in text:
        return text
    out = []
    for ch in text:
        if ch in _ESCAPES:
            out.append(_ESCAPES[ch])
        elif ch.isprintable():
            out.append(ch)
        elif ord(ch) < 0x100:
            out.append(f"\\x{ord(ch):02x}")
        elif ord(ch) < 0x10000:
            out.append(f"\\u{ord(ch):04x}")
        else:
            out.append(f"\\U{ord(ch):08x}")
    return "".join(out)


class Guard(logging.Filter):
    """Escapes every record's message; lets at most `burst` warnings (or worse) of one kind
    through per `window` seconds, and reports how many more there were in one line.

    A kind is the logger and the message's format string: "rpc from %s: request not
    complete" is one kind whatever the peer."""

    def __init__(self, burst: int = 10, window: float = 10.0):
        super().__init__()
        self.burst, self.window = burst, window
        self._lock = threading.Lock()
        self._kinds: dict[tuple, list] = {}          # kind -> [window start, written, suppressed]
        self.suppressed_total: dict[str, int] = {}   # by logger name, for the daemons' metrics
        self._reporter: threading.Thread | None = None

    def filter(self, record: logging.LogRecord) -> bool:
        if record.levelno >= logging.WARNING and not getattr(record, "callerid_summary", False):
            kind = (record.name, record.levelno, str(record.msg))
            now = time.monotonic()
            with self._lock:
                state = self._kinds.get(kind)
                if state is None or (now - state[0] >= self.window and not state[2]):
                    state = self._kinds[kind] = [now, 0, 0]
                if state[1] >= self.burst:
                    # the window stays open until flush_reports() has said how many were dropped
                    state[2] += 1
                    self.suppressed_total[record.name] = self.suppressed_total.get(record.name, 0) + 1
                    return False
                state[1] += 1
        record.msg = escape(record.getMessage())
        record.args = None
        if record.exc_info and not record.exc_text:
            # A traceback is many lines by nature, and its last one carries the exception's
            # own text: escape each line and mark it, so none can pass for a record's line.
            text = _TRACEBACK.formatException(record.exc_info)
            record.exc_text = "\n".join(TRACEBACK_MARK + escape(line) for line in text.splitlines())
        return True

    def flush_reports(self, now: float | None = None) -> None:
        """Close the windows that have ended; one line for each that dropped something."""
        now = time.monotonic() if now is None else now
        reports = []
        with self._lock:
            for kind, (start, _, suppressed) in list(self._kinds.items()):
                if now - start >= self.window:
                    del self._kinds[kind]
                    if suppressed:
                        reports.append((kind, suppressed, now - start))
        for (name, level, msg), suppressed, span in reports:
            logger = logging.getLogger(name)
            rec = logger.makeRecord(name, level, "(callerid.logs)", 0, '%d more like "%s" suppressed in the last %.1fs',
                                    (suppressed, msg[:160], span), None)
            rec.callerid_summary = True
            logger.handle(rec)

    def start_reporting(self) -> None:
        if self._reporter is not None:
            return

        def loop():
            while True:
                time.sleep(self.window / 2)
                self.flush_reports()

        self._reporter = threading.Thread(target=loop, name="log-suppressed", daemon=True)
        self._reporter.start()


GUARD = Guard()


def suppressed_counts() -> dict[str, int]:
    """Warnings not written because of the rate limit, by logger, since start."""
    with GUARD._lock:
        return dict(GUARD.suppressed_total)


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

