"""`svctrace capture -w FILE.scap`: record a live eBPF capture to a .scap file (readable by sysdig).

Runs until SIGTERM/SIGINT, `--duration` seconds or `--count` events. Payloads
are redacted like the agent's (`--no-redact` to keep them); kernel ring drops
are written as drop events so a reader knows the capture has holes.
"""
from __future__ import annotations

import argparse
import os
import sys

from .live import LiveCapture, add_options

PROG = "svctrace capture"


def configure(p: argparse.ArgumentParser) -> None:
    p.add_argument("-w", "--write", required=True, metavar="FILE.scap", help="capture file to write")
    p.add_argument("-z", "--gzip", action="store_true", help="gzip the file (as sysdig -z does)")
    p.add_argument("--count", type=int, default=0, help="stop after this many events (0 = no limit)")
    add_options(p)


def run(args) -> int:
    from svctrace.agents.scap.writer import ScapWriter

    live = LiveCapture.open(args, PROG)
    if live is None:
        return 2
    written = 0
    print(f"{PROG}: writing {args.write}, capturing", file=sys.stderr, flush=True)
    try:
        with ScapWriter(args.write, hostname=live.node, gzip=args.gzip, num_cpus=os.cpu_count() or 1) as w:
            full = False
            while True:
                # a stop (signal or --duration) seen before a drain makes that drain the last one, so
                # everything the kernel recorded before the stop is written
                last = live.stopping()
                events = live.read()
                for ev in events:
                    w.write_event(ev)
                    written += 1
                    if args.count and written >= args.count:
                        full = True
                        break
                if last or full:
                    break
                if not events:
                    live.wait(0.05)
    finally:
        live.close()
    print(f"{PROG}: {written} events written ({live.redacted} redacted, {live.drops} lost in the kernel)",
          file=sys.stderr)
    return 0
