"""Log setup shared by the long-running commands (agent, metadata, worker).

The level comes from one place: `-v` if given, else $SVCTRACE_LOG_LEVEL (the Helm chart's
`logLevel`, in every component's environment), else the command's own default. A bad value
is an error at start, not a silent fallback. A warning or error repeated by a library in a
loop (aiokafka reports an unreachable broker every ~200 ms) is printed once per interval,
with the count of the repeats it stood for.
"""
from __future__ import annotations

import logging
import os
import time

LEVEL_ENV = "SVCTRACE_LOG_LEVEL"
LEVELS = {"debug": logging.DEBUG, "info": logging.INFO, "warning": logging.WARNING, "error": logging.ERROR}
FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"


def log_level(verbose: bool, default: str, verbose_level: str = "debug") -> int:
    """The level a command logs at (see the module docstring)."""
    if verbose:
        return LEVELS[verbose_level]
    name = os.environ.get(LEVEL_ENV, "").strip().lower() or default
    if name not in LEVELS:
        raise SystemExit(f"svctrace: ${LEVEL_ENV}={name!r}: expected one of {', '.join(LEVELS)}")
    return LEVELS[name]


class RepeatFilter(logging.Filter):
    """Lets a warning or error with the same logger and message template through once per
    `interval_s`; the next one let through says how many were held back."""

    def __init__(self, interval_s: float = 10.0, clock=time.monotonic) -> None:
        super().__init__()
        self.interval_s, self.clock = interval_s, clock
        self.seen: dict[tuple, list] = {}  # (logger, template) -> [last let through, held back]

    MAX_KEYS = 1000  # templates remembered (bounded: a message with its values in the template)

    def filter(self, record: logging.LogRecord) -> bool:
        if record.levelno < logging.WARNING:
            return True
        key = (record.name, str(record.msg))
        now = self.clock()
        entry = self.seen.get(key)
        if entry is not None and now - entry[0] < self.interval_s:
            entry[1] += 1
            return False
        if entry is not None and entry[1]:
            record.msg = f"{record.msg} (and {entry[1]} more like it in the last {now - entry[0]:.0f} s)"
        if len(self.seen) >= self.MAX_KEYS and key not in self.seen:
            self.seen.clear()
        self.seen[key] = [now, 0]
        return True


def setup_logging(verbose: bool, default: str, verbose_level: str = "debug") -> int:
    """Configure the root logger; returns the level chosen."""
    level = log_level(verbose, default, verbose_level)
    logging.basicConfig(level=level, format=FORMAT)
    for handler in logging.getLogger().handlers:
        if not any(isinstance(f, RepeatFilter) for f in handler.filters):
            handler.addFilter(RepeatFilter())
    return level
