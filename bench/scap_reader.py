"""Benchmark: the native scap reader vs `sysdig -r F -j`, side by side.

    python -m bench.scap_reader [--repeat N] [FILE ...]

For each capture (default: every public capture sysdig can read, via
SVCTRACE_CAPTURES or ../shared/captures) it measures
  ours   : open_capture(F), every SyscallEvent serialized to a JSON line
           (what `svctrace read F --json` does), in this process;
  raw    : every event of any type decoded with all params and printed as a
           JSON line (the like-for-like of sysdig -j, which prints every event);
  ours-cli: `svctrace read F --json > /dev/null` as a subprocess (includes
           interpreter start-up and imports);
  sysdig : `sysdig -r F -j > /dev/null` as a subprocess.
Rate = event blocks in the file / time (both readers walk every event; sysdig
prints every non-meta event, we print the network ones). Time is CPU time
(user+sys, of the child for subprocesses): the machine may be shared; wall
times are printed too. Best of N repetitions. The target (issue 3 item 7) is
ours >= 1.0x sysdig.
"""
from __future__ import annotations

import argparse
import os
import resource
import shutil
import subprocess
import sys
import time
from pathlib import Path

import orjson

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from svctrace.agents.scap import open_capture  # noqa: E402
from svctrace.agents.scap.cli import _default  # noqa: E402
from svctrace.agents.scap.event_table import EVENTS  # noqa: E402

UNREADABLE_BY_SYSDIG = {"libs__curl_google_comments.scap"}


def _ours(path: Path) -> tuple[float, float, int, int]:
    t0, c0 = time.perf_counter(), time.process_time()
    reader = open_capture(path)
    dumps = orjson.dumps
    lines = [dumps(ev, default=_default) for ev in reader]
    out = b"\n".join(lines)
    return time.perf_counter() - t0, time.process_time() - c0, reader.stats.event_blocks, len(out)


def _ours_raw(path: Path) -> tuple[float, float, int, int]:
    """Every event decoded and printed (like sysdig -j prints every event)."""
    t0, c0 = time.perf_counter(), time.process_time()
    reader = open_capture(path)
    dumps = orjson.dumps
    names = [(e.name, e.direction) for e in EVENTS]
    lines = [dumps({"n": r.n, "ts": r.ts, "tid": r.tid, "type": names[r.code][0], "dir": names[r.code][1],
                    "params": r.params}, default=_default) for r in reader.raw_events()]
    out = b"\n".join(lines)
    return time.perf_counter() - t0, time.process_time() - c0, reader.stats.event_blocks, len(out)


def _child(cmd: list[str]) -> tuple[float, float]:
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    t0 = time.perf_counter()
    subprocess.run(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, check=True)
    wall = time.perf_counter() - t0
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    return wall, (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("files", nargs="*", type=Path)
    ap.add_argument("--repeat", type=int, default=3)
    args = ap.parse_args(argv)
    sysdig = shutil.which("sysdig")
    if not sysdig:
        print("sysdig not found: run `make system-deps` (Debian package sysdig)", file=sys.stderr)
        return 2
    files = args.files
    if not files:
        d = Path(os.environ.get("SVCTRACE_CAPTURES", REPO.parent / "shared" / "captures"))
        files = sorted(p for p in d.glob("*.scap") if p.name not in UNREADABLE_BY_SYSDIG)
    if not files:
        print("no captures found (set SVCTRACE_CAPTURES)", file=sys.stderr)
        return 2
    svctrace = [sys.executable, "-m", "svctrace", "read", "--json"]
    print(f"{'capture':44} {'events':>7} {'ours ev/s':>10} {'raw ev/s':>10} {'cli ev/s':>10} {'sysdig ev/s':>11} "
          f"{'ratio':>6} {'raw':>6} {'cli':>6}   (CPU time; wall ms ours/raw/cli/sysdig)")
    tot = {"events": 0, "ours": 0.0, "raw": 0.0, "cli": 0.0, "sysdig": 0.0}
    for path in files:
        best = {"ours": (9e9, 9e9), "raw": (9e9, 9e9), "cli": (9e9, 9e9), "sysdig": (9e9, 9e9)}
        events = 0
        for _ in range(args.repeat):
            wall, cpu, events, _size = _ours(path)
            best["ours"] = min(best["ours"], (cpu, wall))
            wall, cpu, _events, _size = _ours_raw(path)
            best["raw"] = min(best["raw"], (cpu, wall))
            wall, cpu = _child(svctrace + [str(path)])
            best["cli"] = min(best["cli"], (cpu, wall))
            wall, cpu = _child([sysdig, "-r", str(path), "-j"])
            best["sysdig"] = min(best["sysdig"], (cpu, wall))
        rate = {k: events / max(v[0], 1e-6) for k, v in best.items()}
        tot["events"] += events
        for k in ("ours", "raw", "cli", "sysdig"):
            tot[k] += best[k][0]
        sd = rate["sysdig"]
        print(f"{path.name[:44]:44} {events:7d} {rate['ours']:10.0f} {rate['raw']:10.0f} {rate['cli']:10.0f} "
              f"{sd:11.0f} {rate['ours'] / sd:5.2f}x {rate['raw'] / sd:5.2f}x {rate['cli'] / sd:5.2f}x   "
              + "/".join(f"{best[k][1] * 1e3:.0f}" for k in ("ours", "raw", "cli", "sysdig")))
    ours, raw, cli, sd = (tot["events"] / tot[k] for k in ("ours", "raw", "cli", "sysdig"))
    print(f"{'ALL':44} {tot['events']:7d} {ours:10.0f} {raw:10.0f} {cli:10.0f} {sd:11.0f} "
          f"{ours / sd:5.2f}x {raw / sd:5.2f}x {cli / sd:5.2f}x")
    print(f"target: ours >= 1.0x sysdig -> {'met' if ours >= sd else 'NOT met'} (normalized JSON in-process "
          f"{ours / sd:.2f}x; every event decoded and printed {raw / sd:.2f}x; `svctrace read --json` "
          f"subprocess incl. interpreter start {cli / sd:.2f}x)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
