"""The lab's Go HTTP client (main.go), built once per source into the project's cache.

    path = build()   # go build, CGO_ENABLED=0: Go's own DNS resolver
"""
from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
from pathlib import Path

SOURCE = Path(__file__).resolve().parent / "main.go"


def cache_root() -> Path:
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "svctrace"


def build() -> Path:
    """The client's binary, built from main.go on first use (fails loudly without `go`)."""
    go = shutil.which("go")
    if go is None:
        raise RuntimeError("lab: `go` is not on PATH: the Go client is built from lab/net/goclient/main.go")
    digest = hashlib.sha256(SOURCE.read_bytes()).hexdigest()[:16]
    out = cache_root() / "lab" / f"goclient-{digest}"
    if out.exists():
        return out
    out.parent.mkdir(parents=True, exist_ok=True)
    env = dict(os.environ, GOCACHE=str(cache_root() / "go" / "build"), CGO_ENABLED="0", GOTOOLCHAIN="local",
               GOFLAGS="-buildvcs=false", GO111MODULE="off")
    tmp = out.with_suffix(".tmp")
    r = subprocess.run([go, "build", "-o", str(tmp), str(SOURCE)], env=env, capture_output=True, text=True)
    if r.returncode != 0:
        raise RuntimeError(f"lab: go build of the Go client failed ({r.returncode}): {r.stderr.strip()}")
    tmp.replace(out)
    return out
