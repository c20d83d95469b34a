"""The agents' completeness claims, measured on the live kernel: is COMPLETE_MARGIN_NS enough?

    python -m bench.ebpf_claims [--seconds 15] [--loaders 8]

A live agent claims that every event of its node older than the start of its last read that emptied the
kernel's ring, less COMPLETE_MARGIN_NS, has been read (svctrace-complete, docs/architecture.md). An event
stamped before a drain began but written into the ring after the drain passed it would break that claim by
as much as it came late. This drains the ring as the agent does (agents.agent.live.LiveCapture, the events'
clock), under --loaders processes making loopback TCP connections as fast as they can (more processes than
cores: the BPF programs and the drains get preempted), and counts the events a drain read that were stamped
before an earlier drain's start, and by how much at worst, beside the margin. Needs root.
"""
from __future__ import annotations

import argparse
import os
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from svctrace.agents.agent.live import LiveCapture, add_options  # noqa: E402
from svctrace.agents.agent.pipeline import COMPLETE_MARGIN_NS  # noqa: E402

LOADER = """
import socket, sys
while True:
    s = socket.create_connection(("127.0.0.1", int(sys.argv[1]))); s.send(b"hi"); s.recv(10); s.close()
"""


def _serve(srv: socket.socket) -> None:
    while True:
        c, _ = srv.accept()
        c.recv(100)
        c.send(b"x")
        c.close()


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seconds", type=float, default=15.0)
    ap.add_argument("--loaders", type=int, default=8, help="processes making loopback connections")
    add_options(ap)
    args = ap.parse_args(argv)
    args.redact = False
    live = LiveCapture.open(args, "bench.ebpf_claims")
    if live is None:
        return 1
    srv = socket.socket()
    srv.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    srv.bind(("127.0.0.1", 0))  # (loopback only)
    srv.listen(512)
    threading.Thread(target=_serve, args=(srv,), daemon=True).start()
    loaders = [subprocess.Popen([sys.executable, "-c", LOADER, str(srv.getsockname()[1])])
               for _ in range(args.loaders)]
    events = drains = behind = 0
    worst = 0
    closest = None  # the smallest (event time - the earlier drain's start): how near the check comes
    last_start = None
    try:
        end = time.monotonic() + args.seconds
        while time.monotonic() < end:
            start = live.clock_ns()  # (the events' clock, as the agent's claims)
            got = live.read()
            events += len(got)
            drains += 1
            if last_start is not None:
                for e in got:
                    if e.kind == "lost":
                        continue
                    gap = e.ts - last_start
                    if closest is None or gap < closest:
                        closest = gap
                    if gap < 0:
                        behind += 1
                        worst = max(worst, -gap)
            last_start = start
            live.wait(0.005)  # (the agent's poll)
    finally:
        for p in loaders:
            p.kill()
            p.wait()
        live.close()
    print(f"ebpf claims: {events:,} events in {drains:,} drains over {args.seconds:g} s, {args.loaders} loaders "
          f"on {len(os.sched_getaffinity(0))} cores; kernel drops {live.drops}")
    print(f"  events stamped before an earlier drain's start: {behind:,}; the worst by {worst / 1e6:.3f} ms "
          f"(the nearest any event came to it: {(closest or 0) / 1e3:+.1f} us)")
    print(f"  the claims' margin (COMPLETE_MARGIN_NS): {COMPLETE_MARGIN_NS / 1e6:g} ms"
          + (f", {COMPLETE_MARGIN_NS / worst:.0f}x the worst" if worst else ", none to cover here"))
    return 0 if worst < COMPLETE_MARGIN_NS else 1


if __name__ == "__main__":
    sys.exit(main())
