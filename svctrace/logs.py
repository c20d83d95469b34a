"""Log setup shared by the long-running commands (agent, metadata, worker).

The level comes from one place: `-v` if given, else $SVCTRACE_LOG_LEVEL (the Helm chart's
`logLevel`, in every component's environment), else the command's own default. A bad value
is an error at start, not a silent fallback.
"""
from __future__ import annotations

import logging
import os

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


def setup_logging(verbose: bool, default: str, verbose_level: str = "debug") -> int:
    """Configure the root logger; returns the level chosen."""
    level = log_level(verbose, default, verbose_level)
    logging.basicConfig(level=level, format=FORMAT)
    return level
