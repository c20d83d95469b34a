"""pymalloc's arenas on transparent huge pages: the stand-in for arenas.c where the core is not compiled.

The compiled module (arenas.c, built with the core by build_native.py) moves pymalloc's arenas onto huge pages;
its comment says why and how. Uncompiled (no C compiler, SVCTRACE_PURE_PYTHON=1, sources edited since the build)
this one runs instead and changes nothing. Callers use svctrace.memory.huge_page_arenas().
"""
from __future__ import annotations

COMPILED = 0


def use_huge_pages(reserve: int) -> bool:
    """Nothing to do as Python: the arenas stay where pymalloc puts them."""
    return False


def stats() -> dict | None:
    return None
