"""pymalloc's arenas on transparent huge pages against 4 KiB pages, side by side (issue 8).

    python -m bench.huge_pages [--objects N] [--reads N] [--rounds N] [--core-live] [--rate EV_PER_S]

Each measurement runs twice in fresh interpreters, one with the worker's arenas on huge pages (svctrace.memory,
the core's arenas.c) and one with SVCTRACE_HUGE_PAGES=0, alternating, --rounds times:

- random reads: --objects small objects (a tuple of an int and a str each, ~100 bytes: the size of what the
  stitch state holds) made in order, then read in a random order, as a live worker reads state made seconds
  earlier. Prints ns per read, and the ratio.
- with --core-live, bench.core_live (the stitch stage as a live worker drives it, offline) at --rate: its
  stitch advance us/event, and the ratio. Its outputs digest must be the same in both.
"""
from __future__ import annotations

import argparse
import os
import re
import statistics
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from svctrace.memory import HUGE_PAGES_ENV  # noqa: E402

READS = """
import random, sys, time
from svctrace.memory import huge_page_arenas
status = huge_page_arenas()
n, reads = int(sys.argv[1]), int(sys.argv[2])
objects = [(i, str(i)) for i in range(n)]
order = random.Random(1).sample(range(n), reads)
picked = [objects[i] for i in order]  # (list reads in order: only the objects' own reads are random)
t0 = time.perf_counter_ns()
total = 0
for o in picked:
    total += o[0]
elapsed = time.perf_counter_ns() - t0
t1 = time.perf_counter_ns()
for o in order:
    pass
baseline = time.perf_counter_ns() - t1
print(status)
print((elapsed - baseline) / reads)
"""


def _env(huge: bool) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k != HUGE_PAGES_ENV}
    if not huge:
        env[HUGE_PAGES_ENV] = "0"
    return env


def reads(objects: int, count: int, huge: bool) -> tuple[str, float]:
    done = subprocess.run([sys.executable, "-c", READS, str(objects), str(count)], cwd=ROOT, env=_env(huge),
                          capture_output=True, text=True, check=True)
    status, ns = done.stdout.splitlines()
    return status, float(ns)


def core_live(rate: float, huge: bool) -> tuple[float, str]:
    done = subprocess.run([sys.executable, "-m", "bench.core_live", "--rate", str(rate), "--seconds", "20",
                           "--warmup", "14", "--rounds", "1"], cwd=ROOT, env=_env(huge), capture_output=True,
                          text=True, check=True)
    m = re.search(r"^stitch advance ([\d.]+) us/event.*outputs digest (\w+)", done.stdout, re.M)
    if not m:
        raise RuntimeError(f"bench.core_live printed no figure:\n{done.stdout}{done.stderr}")
    return float(m.group(1)), m.group(2)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--objects", type=int, default=8_000_000, help="objects made (~100 bytes each)")
    ap.add_argument("--reads", type=int, default=2_000_000, help="random reads timed")
    ap.add_argument("--rounds", type=int, default=3, help="alternating pairs")
    ap.add_argument("--core-live", action="store_true", help="also bench.core_live, each way (~1 min a run)")
    ap.add_argument("--rate", type=float, default=100_000, help="bench.core_live's events per second")
    args = ap.parse_args()
    print(f"huge_pages: {args.objects:,} objects read {args.reads:,} times in a random order, {args.rounds} "
          f"alternating pairs, each in a fresh interpreter")
    on, off = [], []
    for _ in range(args.rounds):
        status, ns = reads(args.objects, args.reads, True)
        on.append(ns)
        _, ns_off = reads(args.objects, args.reads, False)
        off.append(ns_off)
        print(f"  random read: huge pages {ns:.1f} ns, 4 KiB pages {ns_off:.1f} ns ({status})", flush=True)
    print(f"random read, median    huge pages {statistics.median(on):8.1f} ns   4 KiB pages "
          f"{statistics.median(off):8.1f} ns   {statistics.median(off) / statistics.median(on):.2f}x")
    if args.core_live:
        on, off, digests = [], [], set()
        for _ in range(args.rounds):
            us, digest = core_live(args.rate, True)
            us_off, digest_off = core_live(args.rate, False)
            on.append(us)
            off.append(us_off)
            digests |= {digest, digest_off}
            print(f"  core_live {args.rate:,.0f} events/s: stitch advance huge pages {us:.3f} us/event, 4 KiB pages "
                  f"{us_off:.3f}", flush=True)
        print(f"stitch advance, median huge pages {statistics.median(on):8.3f} us   4 KiB pages "
              f"{statistics.median(off):8.3f} us   {statistics.median(off) / statistics.median(on):.2f}x; outputs "
              f"digest {' '.join(sorted(digests))}" + ("" if len(digests) == 1 else " (DIFFERENT)"))
        if len(digests) != 1:
            return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
