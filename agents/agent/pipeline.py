"""The agent's pure parts: redaction step, batching, the bounded buffer and counters.

No I/O here: the asyncio shell (agent.py) feeds events in and moves encoded
batches out, so every rule below is unit-tested without a kernel or a broker.
"""
from __future__ import annotations

import time
from binascii import b2a_base64
from collections import deque
from dataclasses import dataclass, field

from svctrace.agents.redact import _MAYBE, redact
from svctrace.schemas.models import AgentStats, SyscallBatch, SyscallEvent, encode_batch

# A base64 payload grows by 4/3; the other fields of an event take ~400 bytes of JSON.
EVENT_JSON_OVERHEAD = 400


@dataclass
class Counters:
    """Cumulative per-run counters (published as AgentStats and as Prometheus metrics)."""

    captured: int = 0
    published: int = 0
    dropped: int = 0
    lost: int = 0
    redacted: int = 0
    batches: int = 0

    def stats(self, node: str, source: str, ts: int | None = None) -> AgentStats:
        return AgentStats(node=node, source=source, ts=ts if ts is not None else time.time_ns(),
                          captured=self.captured, published=self.published, dropped=self.dropped,
                          lost=self.lost, redacted=self.redacted, batches=self.batches)


def redact_events(events: list, snaplen: int, counters: Counters, redact_on: bool = True) -> list:
    """Mask credentials in payloads (and bound them to snaplen); counts redacted events.

    Events are SyscallEvents or their wire dicts (the eBPF fast path); a dict's
    payload is turned into its base64 text here, once, so encoding needs no
    per-event callback.
    """
    out = events
    maybe = _MAYBE.search
    for i, ev in enumerate(events):
        if type(ev) is dict:
            data = ev["data"]
            if data is None or type(data) is str:
                continue
            if len(data) > snaplen:
                data = data[:snaplen]
            if redact_on and maybe(data.lower()):  # the common case skips redact() entirely
                data, changed = redact(data, snaplen)
                if changed:
                    ev["redacted"] = True
                    counters.redacted += 1
            ev["data"] = b2a_base64(data, newline=False).decode("ascii")
            continue
        data = ev.data
        if data is None:
            continue
        clean, changed = redact(data, snaplen) if redact_on else (data[:snaplen], False)
        if changed or len(clean) != len(data):
            if out is events:
                out = list(events)
            out[i] = ev.with_(data=clean, redacted=changed or ev.redacted)
            counters.redacted += changed
    return out


def _json_payload_len(ev) -> int:
    if type(ev) is dict:
        data = ev["data"]
        return len(data) if data else 0  # already base64 text
    return len(ev.data) * 4 // 3 if ev.data else 0


@dataclass
class EncodedBatch:
    seq: int
    events: int
    value: bytes


@dataclass
class Batcher:
    """Groups events into SyscallBatch records: at most `max_events` events or about
    `max_bytes` of JSON per record, and never older than `linger_s` (event arrival time)."""

    node: str
    source: str
    max_events: int = 2000
    max_bytes: int = 600_000
    linger_s: float = 0.2
    seq: int = 0
    pending: list[SyscallEvent] = field(default_factory=list)
    pending_bytes: int = 0
    pending_lost: int = 0
    opened_at: float = 0.0

    def add(self, events: list, now: float) -> list[EncodedBatch]:
        """Events are SyscallEvents or their wire dicts (orjson encodes both the same way)."""
        out = []
        if events and not self.pending:
            self.opened_at = now
        for ev in events:
            self.pending.append(ev)
            if type(ev) is dict:
                data = ev["data"]
                self.pending_bytes += EVENT_JSON_OVERHEAD + (len(data) if data else 0)  # base64 text already
            else:
                self.pending_bytes += EVENT_JSON_OVERHEAD + _json_payload_len(ev)
            if len(self.pending) >= self.max_events or self.pending_bytes >= self.max_bytes:
                out.append(self._close())
                self.opened_at = now
        return out

    def add_marker(self, ev: SyscallEvent, now: float) -> None:
        """A loss marker goes into the open batch whatever its size (never closes one)."""
        if not self.pending:
            self.opened_at = now
        self.pending.append(ev)
        self.pending_bytes += EVENT_JSON_OVERHEAD

    def note_lost(self, count: int) -> None:
        """Events lost before this batch (kernel drops, buffer overflow): carried in its `lost`."""
        self.pending_lost += count

    def due(self, now: float) -> bool:
        return bool(self.pending) and now - self.opened_at >= self.linger_s

    def flush(self) -> EncodedBatch | None:
        return self._close() if self.pending or self.pending_lost else None

    def _close(self) -> EncodedBatch:
        batch = SyscallBatch(node=self.node, source=self.source, seq=self.seq, events=self.pending, lost=self.pending_lost)
        encoded = EncodedBatch(self.seq, len(self.pending), encode_batch(batch))
        self.seq += 1
        self.pending = []
        self.pending_bytes = 0
        self.pending_lost = 0
        return encoded


class BoundedBuffer:
    """FIFO of encoded batches bounded in events; a batch that does not fit is dropped
    (counted), never blocking the capture. A failed send goes back to the front."""

    def __init__(self, max_events: int) -> None:
        self.max_events = max_events
        self.items: deque[EncodedBatch] = deque()
        self.events = 0

    def offer(self, batch: EncodedBatch) -> bool:
        if self.events + batch.events > self.max_events and self.items:
            return False
        self.items.append(batch)
        self.events += batch.events
        return True

    def push_front(self, batch: EncodedBatch) -> None:
        self.items.appendleft(batch)
        self.events += batch.events

    def pop(self) -> EncodedBatch | None:
        if not self.items:
            return None
        b = self.items.popleft()
        self.events -= b.events
        return b

    def __len__(self) -> int:
        return len(self.items)
