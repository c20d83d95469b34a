"""`svctrace capture -w FILE.scap`: record a live eBPF capture to a .scap file (readable by sysdig).

Runs until SIGTERM/SIGINT, `--duration` seconds or `--count` events. Payloads
are redacted like the agent's (`--no-redact` to keep them); kernel ring drops
are written as drop events so a reader knows the capture has holes.
"""
from __future__ import annotations

import argparse
import os
import signal
import socket
import sys
import time


def configure(p: argparse.ArgumentParser) -> None:
    p.add_argument("-w", "--write", required=True, metavar="FILE.scap", help="capture file to write")
    p.add_argument("-z", "--gzip", action="store_true", help="gzip the file (as sysdig -z does)")
    p.add_argument("--duration", type=float, default=0.0, help="stop after this many seconds (0 = until signalled)")
    p.add_argument("--count", type=int, default=0, help="stop after this many events (0 = no limit)")
    p.add_argument("--snaplen", type=int, default=256, help="payload bytes captured per event (0..4096)")
    p.add_argument("--no-redact", dest="redact", action="store_false", help="keep credentials in payloads")
    p.add_argument("--ring-mb", type=int, default=16)
    p.add_argument("--btf", default="/sys/kernel/btf/vmlinux")
    p.add_argument("--bpf-object", help="prebuilt BPF object (default: build into the cache)")
    p.add_argument("--node", help="hostname recorded in the file (default: $NODE_NAME or the hostname)")


def run(args) -> int:
    from svctrace.agents.ebpf.loader import CaptureConfig, CaptureError, EbpfCapture, boot_to_epoch_ns
    from svctrace.agents.ebpf.records import Normalizer
    from svctrace.agents.redact import redact
    from svctrace.agents.scap.writer import ScapWriter

    node = args.node or os.environ.get("NODE_NAME") or socket.gethostname()
    try:
        cap = EbpfCapture(CaptureConfig(snaplen=args.snaplen, ring_bytes=args.ring_mb * 1024 * 1024,
                                        btf_path=args.btf, object_path=args.bpf_object))
    except CaptureError as e:
        print(f"svctrace capture: {e}", file=sys.stderr)
        return 2
    stop = False

    def on_signal(_sig, _frame):
        nonlocal stop
        stop = True

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    norm = Normalizer(node, boot_to_epoch_ns())
    written = redacted = 0
    ring_drops = 0
    deadline = time.monotonic() + args.duration if args.duration > 0 else None
    print(f"svctrace capture: writing {args.write}, capturing", file=sys.stderr, flush=True)
    try:
        with ScapWriter(args.write, hostname=node, gzip=args.gzip, num_cpus=os.cpu_count() or 1) as w:
            full = False
            while True:
                # a stop (signal or --duration) seen before a drain makes that drain the last one, so
                # everything the kernel recorded before the stop is written
                last = stop or (deadline is not None and time.monotonic() >= deadline)
                events: list = []
                cap.ring.drain(norm.decode, events)
                drops = cap.drops()[0]
                if drops > ring_drops:
                    events.append(norm.lost(drops - ring_drops, time.time_ns()))
                    ring_drops = drops
                for ev in events:
                    if args.redact and ev.data:
                        clean, changed = redact(ev.data, args.snaplen)
                        if changed:
                            ev = ev.with_(data=clean, redacted=True)
                            redacted += 1
                    w.write_event(ev)
                    written += 1
                    if args.count and written >= args.count:
                        full = True
                        break
                if last or full:
                    break
                if not events:
                    cap.ring.wait(0.05)
    finally:
        cap.close()
    print(f"svctrace capture: {written} events written ({redacted} redacted, {ring_drops} lost in the kernel)",
          file=sys.stderr)
    return 0
