"""Where a long-running svctrace process keeps its Python objects: on transparent huge pages.

`huge_page_arenas()`, called as a worker, `svctrace analyze` or `svctrace watch` starts (and by the benches, so
both runners they compare have it), moves the arenas pymalloc makes from then on into one region the kernel
backs with 2 MiB pages (the core's compiled arenas.c: why, how, and what it keeps). The state those processes
hold is ~1 GB of small objects read seconds after they were made; on 4 KiB pages nearly every such read misses
the TLB (docs/performance.md, "pymalloc's arenas and glibc's malloc on transparent huge pages"). Arenas it
frees are kept for reuse, so the memory a process holds stays at its peak.

`huge_page_malloc()`, called first thing as a worker starts, does the same for what pymalloc does not serve and
glibc's malloc does (objects over 512 bytes: the tables of large dicts, the arrays of long lists, payloads):
glibc reads its `glibc.malloc.hugetlb` tunable only as a process starts, so a worker started without it starts
itself again at once (exec: the same process id and arguments) with it set in `$GLIBC_TUNABLES`.

`$SVCTRACE_HUGE_PAGES=0` turns both off. Where the core is not compiled (the arenas), the C library is not glibc
2.35 or later (malloc), or the kernel has no transparent huge pages ("never", or none at all), nothing changes.
"""
from __future__ import annotations

import os
import sys
from pathlib import Path

HUGE_PAGES_ENV = "SVCTRACE_HUGE_PAGES"
# Address space, not memory: nothing is committed until pymalloc touches it (MAP_NORESERVE). Past it, arenas
# come from the system as before.
RESERVE = 64 << 30
THP_SETTING = Path("/sys/kernel/mm/transparent_hugepage/enabled")
GLIBC_TUNABLE = "glibc.malloc.hugetlb"  # 1: its heap and mmapped blocks marked MADV_HUGEPAGE (glibc 2.35+)
_STARTED_AGAIN = "SVCTRACE_STARTED_FOR_HUGE_PAGES"  # (set on the exec: never a second one)


def thp_mode(setting: Path = THP_SETTING) -> str | None:
    """The kernel's transparent huge page mode ("always", "madvise", "never"), None where it has none."""
    try:
        text = setting.read_text()
    except OSError:
        return None
    start, end = text.find("["), text.find("]")
    return text[start + 1:end] if 0 <= start < end else None


def _turned_off() -> str | None:
    """Why neither the arenas nor malloc go on huge pages here, if they do not: the switch, or the kernel."""
    if os.environ.get(HUGE_PAGES_ENV, "1").strip() == "0":
        return f"off (${HUGE_PAGES_ENV}=0)"
    mode = thp_mode()
    if mode in (None, "never"):
        return f"off (transparent huge pages: {mode or 'none in this kernel'})"
    return None


def huge_page_arenas(reserve: int = RESERVE) -> str:
    """Put pymalloc's next arenas on transparent huge pages where this process can; returns what happened,
    one line for the process's log ("on (...)" or "off (why)")."""
    off = _turned_off()
    if off:
        return off
    from svctrace.streams.core import arenas

    if not arenas.COMPILED:
        return "off (the core is not compiled)"
    mode = thp_mode()
    if not arenas.use_huge_pages(reserve):
        return "off (the kernel refused the region)"
    return f"on (transparent huge pages: {mode})"


def glibc_version() -> tuple[int, int] | None:
    """The C library's version if it is glibc, else None."""
    try:
        name, version = os.confstr("CS_GNU_LIBC_VERSION").split()
        major, minor = version.split(".")[:2]
        return (int(major), int(minor)) if name == "glibc" else None
    except (ValueError, OSError, AttributeError):
        return None


def huge_page_malloc(argv: list[str] | None = None) -> str:
    """Have glibc's malloc put its memory on transparent huge pages: if its tunable is not set yet, start this
    process again with it (os.execve: it does not return). Call it first in a command's run, before any thread
    or open connection, and only in a process of its own (a CLI command, never a library call). Returns what
    holds, one line for the log ("on (...)" or "off (why)")."""
    off = _turned_off()
    if off:
        return off
    tunables = os.environ.get("GLIBC_TUNABLES", "")
    if GLIBC_TUNABLE in tunables:  # (set by the operator, or by our own exec)
        value = tunables.split(GLIBC_TUNABLE + "=", 1)[-1].split(":", 1)[0]
        return f"on ({GLIBC_TUNABLE}={value})" if value in ("1", "2") else f"off ({GLIBC_TUNABLE}={value})"
    version = glibc_version()
    if version is None or version < (2, 35):
        return "off (the C library is not glibc 2.35 or later)"
    if os.environ.get(_STARTED_AGAIN):
        return "off (started again with the tunable, which was not kept)"
    env = dict(os.environ, GLIBC_TUNABLES=":".join(filter(None, (tunables, f"{GLIBC_TUNABLE}=1"))))
    env[_STARTED_AGAIN] = "1"
    for stream in (sys.stdout, sys.stderr):
        stream.flush()
    os.execve(sys.executable, argv or sys.orig_argv, env)
    raise AssertionError("unreachable")  # (execve returns only by raising)
