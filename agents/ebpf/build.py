"""Build the BPF object: `python -m svctrace.agents.ebpf.build [--force]`.

The object is compiled with the machine's clang against a `vmlinux.h` dumped by
bpftool from the running kernel's BTF, both cached under
`${XDG_CACHE_HOME:-$HOME/.cache}/svctrace/bpf/`. The object's file name carries
a hash of everything it is built from (source, compiler, flags, kernel BTF), so
a changed input simply builds a new object: never a stale one.
CO-RE relocations make the object load on any kernel with BTF; regenerating per
kernel only keeps vmlinux.h honest about the types the program names.
"""
from __future__ import annotations

import argparse
import hashlib
import os
import shutil
import subprocess
import sys
from importlib import resources
from pathlib import Path

DEFAULT_BTF = "/sys/kernel/btf/vmlinux"
SOURCE_NAME = "svctrace.bpf.c"
CFLAGS = ("-O2", "-g", "-target", "bpf", "-D__TARGET_ARCH_x86", "-Wall", "-Wno-unused-function")


class BuildError(RuntimeError):
    """The BPF object cannot be built; the message says what to install or fix."""


def cache_dir() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "svctrace" / "bpf"


def source_path() -> Path:
    return Path(str(resources.files("svctrace.agents").joinpath("bpf", SOURCE_NAME)))


def _tool(name: str) -> str:
    path = shutil.which(name) or next((p for p in (f"/usr/sbin/{name}", f"/sbin/{name}") if os.path.exists(p)), None)
    if not path:
        raise BuildError(f"{name} not found: install the Debian packages clang, bpftool and libbpf-dev (make system-deps)")
    return path


def _digest(*parts: bytes) -> str:
    h = hashlib.sha256()
    for p in parts:
        h.update(len(p).to_bytes(8, "little"))
        h.update(p)
    return h.hexdigest()[:16]


def _run(cmd: list[str], what: str) -> bytes:
    proc = subprocess.run(cmd, capture_output=True)
    if proc.returncode != 0:
        raise BuildError(f"{what} failed ({' '.join(cmd[:3])} ...): {proc.stderr.decode(errors='replace').strip()[-2000:]}")
    return proc.stdout


def vmlinux_header(btf: str = DEFAULT_BTF, out_dir: Path | None = None) -> Path:
    """vmlinux.h for the kernel BTF at `btf`, dumped once per distinct BTF."""
    if not os.path.exists(btf):
        raise BuildError(f"kernel BTF not found at {btf}: this kernel lacks CONFIG_DEBUG_INFO_BTF, eBPF capture needs it")
    out_dir = out_dir or cache_dir()
    btf_bytes = Path(btf).read_bytes()
    header = out_dir / f"vmlinux-{_digest(btf_bytes)}" / "vmlinux.h"
    if not header.exists():
        text = _run([_tool("bpftool"), "btf", "dump", "file", btf, "format", "c"], "bpftool btf dump")
        header.parent.mkdir(parents=True, exist_ok=True)
        tmp = header.with_suffix(f".tmp{os.getpid()}")
        tmp.write_bytes(text)
        tmp.replace(header)
    return header


def build(force: bool = False, btf: str = DEFAULT_BTF, out_dir: Path | None = None) -> Path:
    """Path of the compiled object, building it when missing or stale."""
    out_dir = out_dir or cache_dir()
    src = source_path()
    if not src.exists():
        raise BuildError(f"BPF source missing from the package: {src}")
    header = vmlinux_header(btf, out_dir)
    clang = _tool("clang")
    version = _run([clang, "--version"], "clang --version")
    key = _digest(src.read_bytes(), header.read_bytes(), version, " ".join(CFLAGS).encode())
    obj = out_dir / f"svctrace-{key}.bpf.o"
    if obj.exists() and not force:
        return obj
    out_dir.mkdir(parents=True, exist_ok=True)
    tmp = obj.with_suffix(f".tmp{os.getpid()}")
    _run([clang, *CFLAGS, "-I", str(header.parent), "-c", str(src), "-o", str(tmp)], "clang (BPF)")
    tmp.replace(obj)
    return obj


NATIVE_SOURCE = "fastpath.c"
NATIVE_CFLAGS = ("-O2", "-shared", "-fPIC", "-Wall", "-Wextra", "-Wno-unused-parameter")


def native_source_path() -> Path:
    return Path(str(resources.files("svctrace.agents").joinpath("ebpf", NATIVE_SOURCE)))


def _compiler() -> str:
    for name in ("cc", "gcc", "clang"):
        path = shutil.which(name)
        if path:
            return path
    raise BuildError("no C compiler found (cc, gcc or clang): install the Debian package gcc or clang")


def build_native(force: bool = False, out_dir: Path | None = None) -> Path:
    """Path of the agent's native fast path (a shared library loaded with ctypes), building it
    when missing or stale: named by a hash of its source, the compiler and the flags."""
    out_dir = (out_dir or cache_dir()).parent / "native"
    src = native_source_path()
    if not src.exists():
        raise BuildError(f"native fast path source missing from the package: {src}")
    cc = _compiler()
    version = _run([cc, "--version"], f"{cc} --version")
    key = _digest(src.read_bytes(), version, " ".join(NATIVE_CFLAGS).encode())
    lib = out_dir / f"fastpath-{key}.so"
    if lib.exists() and not force:
        return lib
    out_dir.mkdir(parents=True, exist_ok=True)
    tmp = out_dir / f"fastpath-{key}.tmp{os.getpid()}.so"
    _run([cc, *NATIVE_CFLAGS, "-o", str(tmp), str(src)], "cc (native fast path)")
    tmp.replace(lib)
    return lib


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m svctrace.agents.ebpf.build", description=__doc__.splitlines()[0])
    ap.add_argument("--force", action="store_true", help="rebuild even when the cached object is current")
    ap.add_argument("--btf", default=DEFAULT_BTF, help="kernel BTF to generate vmlinux.h from")
    ap.add_argument("--native", action="store_true",
                    help="build the agent's native per-event loop (a shared library) instead of the BPF object")
    args = ap.parse_args(argv)
    try:
        # one path per run: the image build captures it (the BPF object, or with --native the library)
        print(build_native(force=args.force) if args.native else build(force=args.force, btf=args.btf))
    except BuildError as e:
        print(f"svctrace: cannot build the {'native fast path' if args.native else 'BPF object'}: {e}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
