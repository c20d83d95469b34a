"""Where the agent's events come from: the live kernel (eBPF) or a .scap file replay.

A source is polled by the agent loop: `read(max_events)` returns the events
available now (possibly none), `lost()` the events lost before the agent saw
them since the previous call, `exhausted` tells a finite source has ended.
"""
from __future__ import annotations

import logging
import time
from typing import Iterator

from svctrace.schemas.models import SyscallEvent

log = logging.getLogger("svctrace.agent")


class LossWindows:
    """Kernel ring drops as loss markers that say WHEN the events were lost: the drop counter
    only tells how many since it was last read, so a marker covers the window from that read (or
    the capture's start) to now (SyscallEvent.lost_since_ns .. ts). An agent stalled longer than
    a chain waits (a lookup's timeout, the idle timeout) still marks the chains it may have cut.
    `read_drops()`: the counter's total; `clock()`: ns since the epoch (the events' time)."""

    def __init__(self, normalizer, read_drops, started_ns: int, clock=time.time_ns) -> None:
        self.normalizer, self.read_drops, self.clock = normalizer, read_drops, clock
        self.since = started_ns  # drops counted before this read are in earlier markers
        self.seen = 0  # the counter's total at the last read

    def check(self) -> tuple[int, list[SyscallEvent]]:
        """(drops since the last check, [their marker] or [])."""
        checked = self.clock()  # (before the read: a drop counted by it happened after this)
        total = self.read_drops()
        since, self.since = self.since, checked
        new = total - self.seen
        if new <= 0:
            return 0, []
        self.seen = total
        return new, [self.normalizer.lost(new, self.clock()).with_(lost_since_ns=since)]


class EbpfSource:
    name = "ebpf"
    exhausted = False
    live = True  # records keep arriving: a stop drains what the kernel recorded before it

    def __init__(self, node: str, config) -> None:
        from svctrace.agents.ebpf.containers import ContainerIds
        from svctrace.agents.ebpf.loader import EbpfCapture, boot_to_epoch_ns
        from svctrace.agents.ebpf.records import Normalizer, restart_safe_first_n

        self.started_ns = started = time.time_ns()  # no event it captures is older
        self.capture = EbpfCapture(config)
        self.containers = ContainerIds()
        self.containers.refresh()
        self.normalizer = Normalizer(node, boot_to_epoch_ns(), first_n=restart_safe_first_n(time.time_ns()),
                                     containers=self.containers)
        self._missed = 0
        self._losses = LossWindows(self.normalizer, self._ring_drops, started, clock=self.clock_ns)
        self._next_loss_check = 0.0
        self.payload = None
        self.native = None  # fastpath.NativeRing once `encode_with(..., native=True)` loaded it
        self.drops_with_room = 0  # ring drops while the ring had room (read at close)
        self.saved_by_retry = 0  # records written on a retry after such a failure (read at close)
        self.handed_back = 0  # records the native loop left to the Python encoder (read at close)

    def clock_ns(self) -> int:
        """Now, on its events' clock: the kernel's monotonic one (bpf_ktime_get_ns) plus the offset taken at the
        start, which a step of the wall clock since does not move."""
        return time.monotonic_ns() + self.normalizer.offset

    def encode_with(self, payload, native: bool = True, native_lib: str | None = None) -> None:
        """From now on `read` returns each event's JSON (bytes), payloads through `payload(data)`
        (redaction, base64; see pipeline.payload_encoder): the agent's fast path. With `native`,
        `read_batches` runs the per-event loop in C (fastpath.c) when it can be built and loaded
        (writing either form: `batcher_for`); otherwise the reason is logged and the Python path stays."""
        self.payload = payload
        if not native:
            return
        from svctrace.agents.ebpf.fastpath import NativeEncoder, NativeRing, NativeUnavailable

        try:
            self.native = NativeRing(self.capture.ring, NativeEncoder(self.normalizer, payload, native_lib))
        except NativeUnavailable as e:
            log.warning("native fast path unavailable (%s): encoding events in Python", e)

    def batcher_for(self, batcher):
        """The batcher to fill: with the native loop and the syscall-columns form, one whose open batch the
        loop holds in C (fastpath.NativeColumns, `batcher`'s bounds); else `batcher` itself. The Python loop
        hands each event's JSON to the batcher, which keeps the event of it (either form)."""
        if self.native is not None and batcher.form == "msgpack":
            return self.native.encoder.columns_batcher(batcher)
        return batcher

    def read_batches(self, batcher, max_events: int, now: float) -> tuple[int, int, list]:
        """The native path: (records consumed, events, batches closed) straight into `batcher`."""
        return self.native.drain(batcher, max_events, now)

    def read(self, max_events: int) -> list:
        """Events in their wire form: dicts with SyscallEvent's fields, or their JSON after
        `encode_with` (no object per event either way)."""
        out: list = []
        if self.payload is None:
            self.capture.ring.drain_many(self.normalizer.decode_many, out, max_events)
        else:
            payload, encode = self.payload, self.normalizer.encode_ring
            snaplen, suspicious = payload.snaplen, payload.suspicious
            self.capture.ring.drain_walk(
                lambda buf, cons, prod, base, mask, limit, o: encode(buf, cons, prod, base, mask, limit, o, payload,
                                                                     snaplen, suspicious), out, max_events)
        return out

    LOSS_CHECK_S = 0.02  # the per-CPU drop counters are read at most this often (two syscalls)

    def lost(self, final: bool = False) -> tuple[int, list[SyscallEvent]]:
        """(ring-buffer drops since the last call, loss marker events with their window:
        LossWindows); `final`: read the counters now, however recently they were read."""
        now = time.monotonic()
        if now < self._next_loss_check and not final:
            return 0, []
        self._next_loss_check = now + self.LOSS_CHECK_S
        return self._losses.check()

    def _ring_drops(self) -> int:
        drops, self._missed = self.capture.drops()
        return drops

    def maintain(self) -> None:
        """Timer work (the agent calls it every second): resolve new cgroups to container ids."""
        if self.containers.missing:
            self.containers.refresh()

    def drops_per_cpu(self) -> list[int]:
        return self.capture.drops_per_cpu(0)

    def missed_entries(self) -> int:
        return self._missed

    def close(self) -> None:
        try:
            self.drops_with_room = self.capture.drops_with_room()  # for the exit summary
            self.saved_by_retry = self.capture.saved_by_retry()
        except Exception:  # noqa: BLE001 - a diagnostic only; closing must go on
            pass
        if self.native is not None:
            self.handed_back = self.native.encoder.handed_back  # for the exit summary
            self.native.close()
            self.native = None
        self.capture.close()


class ScapSource:
    """Replays a capture file, at its recorded pace (`speed` x) or as fast as possible (speed=0)."""

    name = "scap"

    def __init__(self, path: str, node: str | None, speed: float) -> None:
        from svctrace.agents.scap import open_capture

        self.reader = open_capture(path)
        self.events: Iterator[SyscallEvent] = iter(self.reader)
        self.node = node
        self.speed = speed
        self.exhausted = False
        self._next: SyscallEvent | None = None
        self._t0_capture: int | None = None
        self._t0_wall = 0.0
        self._lost = 0
        # the first event read now: the capture's machine block, read before it, names the node the
        # events carry, which is also the batches' node (their key) unless --node says otherwise
        self._next = next(self.events, None)

    def _due(self, ev: SyscallEvent) -> bool:
        if self.speed <= 0:
            return True
        if self._t0_capture is None:
            self._t0_capture, self._t0_wall = ev.ts, time.monotonic()
            return True
        return (ev.ts - self._t0_capture) / 1e9 / self.speed <= time.monotonic() - self._t0_wall

    def read(self, max_events: int) -> list[SyscallEvent]:
        out: list[SyscallEvent] = []
        node = self.node
        while len(out) < max_events:
            ev = self._next
            self._next = None
            if ev is None:
                ev = next(self.events, None)
                if ev is None:
                    self.exhausted = True
                    break
            if not self._due(ev):
                self._next = ev
                break
            if node is not None and ev.node != node:
                ev = ev.with_(node=node)
            if ev.kind == "lost":
                self._lost += max(ev.res, 1)
            out.append(ev)
        return out

    def seconds_until_next(self) -> float:
        if self._next is None or self.speed <= 0 or self._t0_capture is None:
            return 0.0
        wait = (self._next.ts - self._t0_capture) / 1e9 / self.speed - (time.monotonic() - self._t0_wall)
        return max(0.0, wait)

    def lost(self, final: bool = False) -> tuple[int, list[SyscallEvent]]:
        """The file's own DROP events are already in the stream as kind="lost" markers: only counted."""
        lost, self._lost = self._lost, 0
        return lost, []

    def close(self) -> None:
        close = getattr(self.reader, "close", None)
        if close:
            close()
