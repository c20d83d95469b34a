"""The live eBPF capture as the node's interactive commands drive it (`svctrace capture`,
`svctrace watch`): opened from their options, stopped by SIGTERM/SIGINT or a deadline, drained
into SyscallEvents with kernel ring drops as loss markers and payloads redacted like the agent's.

    live = LiveCapture.open(args, "svctrace watch")   # None: the error is printed
    while True:
        last = live.stopping()        # a stop seen before a drain makes that drain the last one
        events = live.read()
        ...
        if last: break
        if not events: live.wait(0.05)
    live.close()

(The agent itself reads the ring on its own fast path: agents/agent/sources.py.)
"""
from __future__ import annotations

import os
import signal
import socket
import sys
import time

from svctrace.agents.agent.pipeline import COMPLETE_MARGIN_NS


def add_options(parser, *, snaplen: int = 256) -> None:
    """The capture options the live commands share."""
    parser.add_argument("--duration", type=float, default=0.0, help="stop after this many seconds (0: when signalled)")
    parser.add_argument("--snaplen", type=int, default=snaplen, help="payload bytes captured per event (0..4096)")
    parser.add_argument("--no-redact", dest="redact", action="store_false", help="keep credentials in payloads")
    parser.add_argument("--ring-mb", type=int, default=16, help="kernel ring buffer size (MiB, a power of two)")
    parser.add_argument("--btf", default="/sys/kernel/btf/vmlinux", help="kernel BTF for CO-RE relocations")
    parser.add_argument("--bpf-object", help="prebuilt BPF object (default: build into the cache)")
    parser.add_argument("--node", help="node name (default: $NODE_NAME, else the hostname)")


class LiveCapture:
    def __init__(self, cap, norm, node: str, snaplen: int, redact: bool, duration: float,
                 started_ns: int | None = None) -> None:
        from svctrace.agents.agent.sources import LossWindows

        self.cap, self.norm, self.node = cap, norm, node
        # every event older than this was read (nothing was captured before the start); read() moves it
        self.complete_ns = time.time_ns() if started_ns is None else started_ns
        self.snaplen, self.redact = snaplen, redact
        self.deadline = time.monotonic() + duration if duration > 0 else None
        self.stopped = False
        self.redacted = 0
        # kernel drops, each marker with its window: since the previous drain (or the capture's start)
        self.losses = LossWindows(norm, lambda: cap.drops()[0], time.time_ns() if started_ns is None else started_ns,
                                  clock=self.clock_ns)
        signal.signal(signal.SIGTERM, self._on_signal)
        signal.signal(signal.SIGINT, self._on_signal)

    @classmethod
    def open(cls, args, prog: str, containers: bool = False) -> "LiveCapture | None":
        """From the commands' options; None after printing why it cannot capture (privileges,
        BTF, ring size). `containers`: events carry container ids (cgroup lookups)."""
        from svctrace.agents.ebpf.containers import ContainerIds
        from svctrace.agents.ebpf.loader import CaptureConfig, CaptureError, EbpfCapture, boot_to_epoch_ns
        from svctrace.agents.ebpf.records import Normalizer

        node = args.node or os.environ.get("NODE_NAME") or socket.gethostname()
        started = time.time_ns()
        try:
            cap = EbpfCapture(CaptureConfig(snaplen=args.snaplen, ring_bytes=args.ring_mb << 20,
                                            btf_path=args.btf, object_path=args.bpf_object))
        except CaptureError as e:
            print(f"{prog}: error: {e}", file=sys.stderr)
            return None
        norm = Normalizer(node, boot_to_epoch_ns(), containers=ContainerIds() if containers else None)
        return cls(cap, norm, node, args.snaplen, args.redact, args.duration, started)

    def clock_ns(self) -> int:
        """Now, on the events' clock (EbpfSource.clock_ns)."""
        return time.monotonic_ns() + self.norm.offset

    @property
    def drops(self) -> int:
        """Events the kernel dropped so far (as the markers counted them)."""
        return self.losses.seen

    def _on_signal(self, _sig, _frame) -> None:
        self.stopped = True

    def stopping(self) -> bool:
        """Signalled, or past the deadline."""
        return self.stopped or (self.deadline is not None and time.monotonic() >= self.deadline)

    def read(self) -> list:
        """What the ring holds now, and a loss marker for what the kernel dropped since the
        previous drain (its window: lost_since_ns .. ts). Then `complete_ns` is the time before
        which every event was read (an agent's completeness claim, svctrace-complete)."""
        from svctrace.agents.redact import redact

        events: list = []
        started = self.clock_ns()
        self.cap.ring.drain(self.norm.decode, events)
        events += self.losses.check()[1]
        self.complete_ns = started - COMPLETE_MARGIN_NS
        if self.redact:
            for i, ev in enumerate(events):
                if ev.data:
                    clean, changed = redact(ev.data, self.snaplen)
                    if changed:
                        events[i] = ev.with_(data=clean, redacted=True)
                        self.redacted += 1
        return events

    def wait(self, seconds: float) -> None:
        self.cap.ring.wait(seconds)

    def close(self) -> None:
        self.cap.close()
