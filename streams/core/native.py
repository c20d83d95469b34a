"""The core's modules compiled by Cython: the same .py files, built into extension modules, used only
when they were built from exactly the sources beside them.

Why: the core is most of a worker's CPU (issue #8), and its time goes to interpreting many small
steps per event, no one of them a hotspot (docs/performance.md). Cython compiling the modules cuts that
interpretation (`annotation_typing=False`: the .py annotations document, they do not convert); outputs
stay byte-identical (tests/test_core_native.py compares every traffic's chains and alerts with the pure
modules').

A module in C_MODULES is written in C (arenas.c: what Python code cannot do); its .py is the stand-in that
runs where it is not built, and its .c a source like the others.

A module may have a .pxd beside it (stitch.pxd, enrich.pxd, enriched.pxd): Cython's declarations for it
(C classes, typed attributes, locals and calls), an augmenting file the .py never reads. It is a source
like the .py: its edit makes a build stale too.

How they are used: the package `svctrace.streams.core` calls `select(__path__)` before importing
any of MODULES. If `_compiled/` beside them holds one extension module for this interpreter for each
of MODULES and a SOURCES file whose digest is that of the sources now beside it (.py and .pxd files),
`_compiled/` goes first on the package's path, so `stitch` is its stitch.<abi>.so; otherwise the .py
files run, and `STATUS` says why (logged by the worker and analyze). So an edited module (or .pxd) is
never shadowed by a stale build: it runs as Python until `make setup` (or
`python -m svctrace.streams.core.build_native`) builds it again. SVCTRACE_PURE_PYTHON=1 runs the .py files whatever is built (profiling with cProfile, which
does not see into compiled functions; debugging).

Building needs Cython and a C compiler (`make setup` installs the one and has the other; the image
builds them in its compiler stage). Without them the core runs as Python, slower, otherwise the same.
"""
from __future__ import annotations

import hashlib
import os
from importlib.machinery import EXTENSION_SUFFIXES
from pathlib import Path

# The modules compiled: everything of the core an event passes through (not this one, nor __init__).
MODULES = ("alerts", "arenas", "dns", "enrich", "enriched", "graph", "http", "keys", "memo", "rules", "runner",
           "stitch", "timeorder")
# Of MODULES, those written in C (<name>.c, built as it is; <name>.py is what runs where they are not built):
# arenas, pymalloc's arenas on huge pages, which Python code cannot do (its allocator hook is C functions).
C_MODULES = ("arenas",)
BUILT = "_compiled"  # beside the modules (git-ignored)
SOURCES = "SOURCES"  # in BUILT: the digest of the sources it was built from
PURE_ENV = "SVCTRACE_PURE_PYTHON"
HERE = Path(__file__).resolve().parent


def sources_digest(folder: Path = HERE) -> str:
    """The digest of MODULES' sources in `folder` (each one's .py, and its .pxd or .c where it has one), and of
    the Python they are built for."""
    h = hashlib.sha256(EXTENSION_SUFFIXES[0].encode())
    for name in MODULES:
        h.update(b"\0" + name.encode() + b"\0")
        h.update((folder / f"{name}.py").read_bytes())
        pxd = folder / f"{name}.pxd"
        if pxd.is_file():  # (a module without one hashes as it always did)
            data = pxd.read_bytes()
            h.update(b"\0" + name.encode() + b".pxd\0" + str(len(data)).encode() + b"\0" + data)
        if name in C_MODULES:
            data = (folder / f"{name}.c").read_bytes()
            h.update(b"\0" + name.encode() + b".c\0" + str(len(data)).encode() + b"\0" + data)
    h.update(b"\0event layout\0" + _event_layout_sources())
    # stitch.pxd lays out records.Ref (a msgspec Struct, not compiled) as enriched.pxd does SyscallEvent: an edited
    # records.py makes a build stale too
    h.update(b"\0ref layout\0" + (folder / "records.py").read_bytes())
    return h.hexdigest()


def _event_layout_sources() -> bytes:
    """What compiled code reads beyond the core's own sources: enriched.pxd lays out SyscallEvent (a msgspec
    Struct) to read its fields at fixed offsets, so the model's module and msgspec's version are sources
    too. An edited model, or another msgspec, makes a build stale (the core runs as Python) instead of
    one that refuses to import."""
    from importlib.metadata import PackageNotFoundError, version

    import svctrace.schemas.models as models

    try:
        msgspec = version("msgspec")
    except PackageNotFoundError:
        msgspec = "?"
    return Path(models.__file__).read_bytes() + b"\0msgspec " + msgspec.encode()


def built_status(folder: Path = HERE) -> tuple[bool, str]:
    """Whether `folder`'s compiled modules can stand in for its .py files, and if not, why."""
    built = folder / BUILT
    try:
        recorded = (built / SOURCES).read_text().strip()
    except OSError:
        return False, "not compiled (make setup compiles it)"
    suffix = EXTENSION_SUFFIXES[0]
    missing = [name for name in MODULES if not (built / f"{name}{suffix}").is_file()]
    if missing:
        return False, f"compiled for another Python, or partly ({', '.join(missing)} missing)"
    if recorded != sources_digest(folder):
        return False, "compiled from other sources (edited since: make setup compiles them again)"
    return True, "compiled"


def select(package_path: list[str]) -> str:
    """Put the compiled modules first on the core package's path if they are current; returns the status
    line ("compiled", or "Python: <why>")."""
    if os.environ.get(PURE_ENV):
        return f"Python ({PURE_ENV} is set)"
    ok, why = built_status()
    if not ok:
        return f"Python: {why}"
    package_path.insert(0, str(HERE / BUILT))
    return "compiled"
