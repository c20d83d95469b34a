"""Debian's sysdig 0.29.3 as the oracle of the native .scap reader.

`sysdig -r FILE` needs no kernel driver. The harness installs sysdig through
the project's Debian package list (.ci/install-system-deps) when missing and
fails loudly when it still cannot run. Outputs are cached per session and on
disk under ${XDG_CACHE_HOME:-~/.cache}/svctrace/sysdig/ keyed by the capture's
sha256, the field list and the sysdig version.
"""
from __future__ import annotations

import gzip
import hashlib
import os
import shutil
import subprocess
from pathlib import Path

import orjson

REPO = Path(__file__).resolve().parents[2]

# Every event (the leading '*' keeps events lacking a field), with what the
# oracle tests compare. -b prints evt.buffer in base64: byte-exact payloads.
FIELDS = (
    "evt.num evt.rawtime evt.dir evt.type thread.tid proc.pid proc.name fd.num fd.type fd.l4proto "
    "fd.cip fd.cport fd.sip fd.sport evt.rawres evt.buflen evt.buffer container.id"
)


class SysdigUnavailable(RuntimeError):
    pass


def _cache_dir() -> Path:
    base = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
    d = base / "svctrace" / "sysdig"
    d.mkdir(parents=True, exist_ok=True)
    return d


class Sysdig:
    def __init__(self, binary: str):
        self.binary = binary
        out = subprocess.run([binary, "--version"], capture_output=True, text=True, timeout=60)
        self.version = out.stdout.strip()
        if out.returncode != 0 or "sysdig version" not in self.version:
            raise SysdigUnavailable(f"{binary} --version failed: {out.stdout} {out.stderr}")
        self._memo: dict[tuple, list[dict]] = {}

    def run(self, args: list[str], timeout: float = 300) -> subprocess.CompletedProcess:
        return subprocess.run([self.binary, *args], capture_output=True, timeout=timeout)

    def events(self, path: Path, fields: str = FIELDS) -> list[dict]:
        """All events of a capture as sysdig prints them (one dict per event)."""
        data = Path(path).read_bytes()
        key = hashlib.sha256(data + fields.encode() + self.version.encode()).hexdigest()[:32]
        if key in self._memo:
            return self._memo[key]
        cached = _cache_dir() / f"{key}.jsonl.gz"
        if cached.exists():
            raw = gzip.decompress(cached.read_bytes())
        else:
            fmt = "*%" + " %".join(fields.split())
            proc = self.run(["-r", str(path), "-b", "-j", "-p", fmt])
            if proc.returncode != 0:
                raise SysdigUnavailable(f"sysdig -r {Path(path).name} failed: {proc.stderr.decode()[-400:]}")
            raw = proc.stdout
            tmp = cached.with_suffix(".tmp")
            tmp.write_bytes(gzip.compress(raw, 1))
            tmp.replace(cached)
        out = [orjson.loads(line) for line in raw.splitlines() if line.strip()]
        self._memo[key] = out
        return out

    def can_read(self, path: Path) -> tuple[bool, str]:
        proc = self.run(["-r", str(path), "-j"])
        return proc.returncode == 0 and not proc.stderr.strip(), proc.stderr.decode(errors="replace")


def install_sysdig() -> str:
    found = shutil.which("sysdig")
    if found:
        return found
    script = REPO / ".ci" / "install-system-deps"
    proc = subprocess.run(["bash", str(script)], capture_output=True, text=True, timeout=1800)
    found = shutil.which("sysdig")
    if not found:
        raise SysdigUnavailable(
            f"sysdig is not installed and {script.name} could not install it "
            f"(exit {proc.returncode}): {proc.stderr[-800:]}")
    return found


_SESSION: Sysdig | None = None


def get_sysdig() -> Sysdig:
    """The session's sysdig oracle; raises SysdigUnavailable (tests then fail)."""
    global _SESSION
    if _SESSION is None:
        _SESSION = Sysdig(install_sysdig())
    return _SESSION
