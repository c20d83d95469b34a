"""Where a long-running svctrace process keeps its Python objects: pymalloc's arenas on transparent huge pages.

`huge_page_arenas()`, called as a worker, `svctrace analyze` or `svctrace watch` starts (and by the benches, so
both runners they compare have it), moves the arenas pymalloc makes from then on into one region the kernel
backs with 2 MiB pages (the core's compiled arenas.c: why, how, and what it keeps). The state those processes
hold is ~1 GB of small objects read seconds after they were made; on 4 KiB pages nearly every such read misses
the TLB (docs/performance.md, "pymalloc's arenas on huge pages"). Arenas it frees are kept for reuse, so the
memory a process holds stays at its peak.

`$SVCTRACE_HUGE_PAGES=0` leaves the arenas as pymalloc makes them. Where the core is not compiled, or the kernel
has no transparent huge pages ("never", or none at all), nothing changes either.
"""
from __future__ import annotations

import os
from pathlib import Path

HUGE_PAGES_ENV = "SVCTRACE_HUGE_PAGES"
# Address space, not memory: nothing is committed until pymalloc touches it (MAP_NORESERVE). Past it, arenas
# come from the system as before.
RESERVE = 64 << 30
THP_SETTING = Path("/sys/kernel/mm/transparent_hugepage/enabled")


def thp_mode(setting: Path = THP_SETTING) -> str | None:
    """The kernel's transparent huge page mode ("always", "madvise", "never"), None where it has none."""
    try:
        text = setting.read_text()
    except OSError:
        return None
    start, end = text.find("["), text.find("]")
    return text[start + 1:end] if 0 <= start < end else None


def huge_page_arenas(reserve: int = RESERVE) -> str:
    """Put pymalloc's next arenas on transparent huge pages where this process can; returns what happened,
    one line for the process's log ("on (...)" or "off (why)")."""
    if os.environ.get(HUGE_PAGES_ENV, "1").strip() == "0":
        return f"off (${HUGE_PAGES_ENV}=0)"
    from svctrace.streams.core import arenas

    if not arenas.COMPILED:
        return "off (the core is not compiled)"
    mode = thp_mode()
    if mode in (None, "never"):
        return f"off (transparent huge pages: {mode or 'none in this kernel'})"
    if not arenas.use_huge_pages(reserve):
        return "off (the kernel refused the region)"
    return f"on (transparent huge pages: {mode})"
