"""Compile the core's modules with Cython (see native.py for what is compiled and when it is used):

    python -m svctrace.streams.core.build_native [--check]

`make setup` runs it. Needs Cython and a C compiler."""
from __future__ import annotations

import os
import shutil
import sys
from pathlib import Path

from svctrace.streams.core.native import BUILT, C_MODULES, HERE, MODULES, SOURCES, built_status, sources_digest


def build(out: Path = HERE / BUILT, jobs: int = 2) -> Path:
    """Compile MODULES into `out` (by default where select() looks). Unchanged modules are not compiled
    again (their C and objects are kept in out/.build). SOURCES is written last: a build that fails
    half-way leaves no set select() would take."""
    from Cython.Build import cythonize
    from setuptools import Distribution, Extension
    from setuptools.command.build_ext import build_ext

    digest = sources_digest()
    work = out / ".build"
    out.mkdir(parents=True, exist_ok=True)
    (out / SOURCES).unlink(missing_ok=True)
    # A module's .pxd (its C types) is found by the module's full name, svctrace.streams.core.<name>, which
    # the source tree does not spell (the package installs from streams/): a copy under that path is.
    include = work / "include"
    package = include / "svctrace" / "streams" / "core"
    shutil.rmtree(include, ignore_errors=True)
    package.mkdir(parents=True)
    for name in MODULES:
        if (HERE / f"{name}.pxd").is_file():
            shutil.copy2(HERE / f"{name}.pxd", package / f"{name}.pxd")  # (its time: cythonize compares it with the C's)
    extensions = cythonize(
        [Extension(f"svctrace.streams.core.{name}", [str(HERE / f"{name}.py")]) for name in MODULES
         if name not in C_MODULES],
        build_dir=str(work / "c"), language_level=3, nthreads=jobs, quiet=True, include_path=[str(include)],
        compiler_directives={"annotation_typing": False})
    extensions += [Extension(f"svctrace.streams.core.{name}", [str(HERE / f"{name}.c")]) for name in C_MODULES]
    command = build_ext(Distribution({"ext_modules": extensions, "script_name": "native"}))
    command.build_lib, command.build_temp, command.parallel = str(work / "lib"), str(work / "tmp"), jobs
    command.ensure_finalized()
    command.run()
    for path in command.get_outputs():  # a new file each (a running process may have the old one mapped)
        target = out / Path(path).name
        shutil.copy2(path, target.with_name(target.name + ".new"))
        os.replace(target.with_name(target.name + ".new"), target)
    (out / SOURCES).write_text(digest + "\n")
    return out


def main(argv: list[str] | None = None) -> int:
    import argparse

    ap = argparse.ArgumentParser(prog="python -m svctrace.streams.core.build_native", description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, default=HERE / BUILT, help="where to put them (default: beside the modules)")
    ap.add_argument("-j", "--jobs", type=int, default=os.cpu_count() or 1)
    ap.add_argument("--check", action="store_true", help="only say whether the built modules are current")
    args = ap.parse_args(argv)
    if args.check:
        ok, why = built_status()
        print(why)
        return 0 if ok else 1
    print(f"compiled into {build(args.out, args.jobs)}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
