"""The agent's pure parts: redaction step, batching, the bounded buffer and counters.

No I/O here: the asyncio shell (agent.py) feeds events in and moves encoded
batches out, so every rule below is unit-tested without a kernel or a broker.
"""
from __future__ import annotations

import time
from binascii import b2a_base64
from collections import deque
from dataclasses import asdict, dataclass, field

from svctrace.agents.redact import _MAYBE, redact
from svctrace.schemas.models import SCHEMA_VERSION, AgentStats, SyscallBatch, SyscallEvent, dumps
from svctrace.schemas.syscall_columns import STRING_FIELDS, encode_columns

# A batch is one Kafka record: its JSON must stay under the producer's max_request_size (1 MiB,
# svctrace.kafka.clients) with room for the record's framing.
MAX_BATCH_BYTES = 1_048_576 - 16_384


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
        # (the counters are AgentStats' counter fields, by name)
        return AgentStats(node=node, source=source, ts=ts if ts is not None else time.time_ns(), **asdict(self))


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


def payload_encoder(snaplen: int, counters: Counters, redact_on: bool = True):
    """`payload(data) -> bytes` for `Normalizer.encode_ring`: the payload bounded to snaplen,
    credentials masked (counted in `counters.redacted`), as its JSON "data"/"redacted" members
    (records.payload_json)."""
    from svctrace.agents.ebpf.records import payload_json

    maybe = _MAYBE.search

    def payload(data: bytes) -> bytes:
        if len(data) > snaplen:
            data = data[:snaplen]
        if redact_on and maybe(data.lower()):  # the common case skips redact() entirely
            data, changed = redact(data, snaplen)
            if changed:
                counters.redacted += 1
                return payload_json(data, True)
        return b'"%b","redacted":false' % b2a_base64(data, newline=False)  # payload_json(data), inlined

    # what encode_ring needs to encode the payloads the pre-check clears without calling us
    payload.snaplen = snaplen
    payload.suspicious = maybe if redact_on else None
    return payload


@dataclass
class EncodedBatch:
    seq: int
    events: int
    value: bytes
    complete_ns: int | None = None  # sent as COMPLETE_HEADER (live sources): see Agent._enqueue


# A live agent's completeness mark trails the read it comes from by this much: an event stamped just before
# a read began may still be on its way into the ring buffer (stamped at the syscall's exit, written right
# after, by a CPU the scheduler may take away in between). Measured (bench.ebpf_claims, 2 cores, 8 processes
# making connections): of 2.8M events none came after a drain that began after its stamp, the nearest ~10 us
# after it; so 1000x that. The read's start is taken on the events' own clock (the source's clock_ns), so a
# step of the wall clock does not move it.
COMPLETE_MARGIN_NS = 10_000_000


# A batch is one Kafka record: its JSON must stay under the producer's max_request_size (1 MiB,
# svctrace.kafka.clients) with room for the record's own framing.
MAX_BATCH_BYTES = 1_048_576 - 16_384


# The record forms an agent writes on svctrace.syscalls: the syscall-columns form (msgpack,
# schemas/syscall_columns.py; the default) or the syscall-batch JSON.
FORMS = ("msgpack", "json")
DEFAULT_FORM = "msgpack"


def _compile_bound():
    """bound(ev) -> an upper bound of the bytes an event adds to a syscall-columns record: 9 per value (the
    largest msgpack integer, or an index into the strings table), plus its payload and its strings (each
    distinct string is written once per record: at most once per event). Like the JSON's size, a bound
    the record's bytes stay under, for max_bytes."""
    fixed = 9 * len(SyscallEvent.__struct_fields__) + 5
    terms = [f"(0 if (v := ev.{name}) is None else len(v))" for name in (*STRING_FIELDS, "data")]
    scope: dict = {}
    exec(f"def bound(ev):\n    return {fixed} + " + " + ".join(terms) + "\n", scope)  # noqa: S102
    return scope["bound"]


_bound = _compile_bound()


def encode_syscall_batch(batch: SyscallBatch, form: str = DEFAULT_FORM) -> bytes:
    """A SyscallBatch -> the svctrace.syscalls record an agent writes of it (its default form, or JSON)."""
    if form == "json":
        from svctrace.schemas.models import encode_batch

        return encode_batch(batch)
    return encode_columns(batch.node, batch.source, batch.seq, batch.lost, batch.events)


def _as_event(ev) -> SyscallEvent:
    """A SyscallEvent from what `Batcher.add` takes: an event, its wire dict (payload as base64) or its JSON."""
    if type(ev) is SyscallEvent:
        return ev
    if type(ev) is bytes:
        return _event_json.decode(ev)
    return SyscallEvent.from_wire(ev)


_event_json = None  # (a msgspec JSON decoder of one event, made on first use: the agent's own events need none)


@dataclass
class Batcher:
    """Groups events into SyscallBatch records: at most `max_events` events and `max_bytes` of
    encoded events per record, never older than `linger_s` (arrival time). A batch closes at
    max_events, or before the event that would take it past max_bytes (one event alone larger than
    max_bytes still goes, alone).

    `form`: "msgpack" (the default), the syscall-columns form (schemas/syscall_columns.py): the
    events are kept as they come and the record is written at close, each event counted by a bound
    of its bytes (`_bound`); "json", the syscall-batch JSON: each event is encoded on arrival (exact
    sizes), the form the eBPF source writes itself (`add_joined`, and events given as JSON bytes)."""

    node: str
    source: str
    max_events: int = 2000
    max_bytes: int = 600_000
    linger_s: float = 0.2
    seq: int = 0
    pending: list = field(default_factory=list)  # events (msgpack), or event JSON or runs of it joined by commas
    pending_events: int = 0
    pending_bytes: int = 0  # bytes of the pending events (JSON: plus one separator each)
    pending_lost: int = 0
    opened_at: float = 0.0
    form: str = DEFAULT_FORM

    def __post_init__(self) -> None:
        if not 0 < self.max_bytes <= MAX_BATCH_BYTES:
            raise ValueError(f"batch bytes must be within 1..{MAX_BATCH_BYTES} (a batch is one Kafka record "
                             f"of at most 1 MiB), got {self.max_bytes}")
        if self.max_events < 1:
            raise ValueError(f"batch events must be >= 1, got {self.max_events}")
        if self.form not in FORMS:
            raise ValueError(f"batch form must be one of {', '.join(FORMS)}, got {self.form!r}")

    def _encoded(self, events: list) -> tuple[list, list | None]:
        """The items to keep for `events`, and their sizes (None: the items' own lengths plus one)."""
        if self.form == "json":
            return [ev if type(ev) is bytes else dumps(ev) for ev in events], None
        if not all(type(ev) is SyscallEvent for ev in events):
            global _event_json
            if _event_json is None:
                import msgspec

                _event_json = msgspec.json.Decoder(SyscallEvent)
            events = list(map(_as_event, events))
        return events, list(map(_bound, events))

    def add(self, events: list, now: float) -> list[EncodedBatch]:
        """Events are SyscallEvents, their wire dicts (orjson encodes both the same way) or
        their JSON already (bytes, from `Normalizer.encode_ring`)."""
        events, sizes = self._encoded(events)
        out = []
        if events and not self.pending:
            self.opened_at = now
        i, total = 0, len(events)
        while i < total:
            room = self.max_events - self.pending_events
            chunk = events[i:i + room]
            size = sum(map(len, chunk)) + len(chunk) if sizes is None else sum(sizes[i:i + room])
            if self.pending_bytes + size <= self.max_bytes:  # the common case: whole slices
                self.pending.extend(chunk)
                self.pending_events += len(chunk)
                self.pending_bytes += size
                i += len(chunk)
            else:
                for ev in chunk:
                    size = len(ev) + 1 if sizes is None else sizes[i]
                    if self.pending_events and self.pending_bytes + size > self.max_bytes:
                        break
                    self.pending.append(ev)
                    self.pending_events += 1
                    self.pending_bytes += size
                    i += 1
            if i < total or self.pending_events >= self.max_events:
                out.append(self.close(now))
        return out

    def add_joined(self, joined: bytes, events: int, size: int, now: float) -> list[EncodedBatch]:
        """A run of `events` event JSONs joined by commas, `size` bytes counted as `add` counts
        them (the native fast path fills the open batch's room exactly). JSON form only."""
        if self.form != "json":
            raise ValueError("joined event JSON goes into a batcher of the json form")
        if not self.pending:
            self.opened_at = now
        self.pending.append(joined)
        self.pending_events += events
        self.pending_bytes += size
        if self.pending_events >= self.max_events:
            return [self.close(now)]
        return []

    def add_marker(self, ev: SyscallEvent, now: float) -> None:
        """A loss marker goes into the open batch whatever its size (never closes one)."""
        if not self.pending:
            self.opened_at = now
        if self.form == "json":
            js = dumps(ev)
            self.pending.append(js)
            self.pending_bytes += len(js) + 1
        else:
            self.pending.append(ev)
            self.pending_bytes += _bound(ev)
        self.pending_events += 1

    def note_lost(self, count: int) -> None:
        """Events lost before this batch (kernel drops, buffer overflow): carried in its `lost`."""
        self.pending_lost += count

    def due(self, now: float) -> bool:
        return bool(self.pending) and now - self.opened_at >= self.linger_s

    def flush(self) -> EncodedBatch | None:
        return self._close() if self.pending or self.pending_lost else None

    def empty(self) -> EncodedBatch:
        """A batch of no events, when none is open: what a live agent sends while its node is quiet, for the
        completeness it claims (Agent._capture)."""
        if self.pending_events or self.pending_lost:
            raise ValueError("a batch is open: flush it")
        return self._close()

    def close(self, now: float) -> EncodedBatch:
        """Close the open batch; the next one opens now."""
        self.opened_at = now
        return self._close()

    def _close(self) -> EncodedBatch:
        if self.form != "json":
            value = encode_columns(self.node, self.source, self.seq, self.pending_lost, self.pending)
            return self._closed(value)
        # the document encode_batch writes, around events that are JSON already
        head = b'{"schema":"svctrace.syscall-batch","version":%d,"node":%b,"source":%b,"seq":%d,"lost":%d,"events":[' % (
            SCHEMA_VERSION, dumps(self.node), dumps(self.source), self.seq, self.pending_lost)
        pending = self.pending
        parts = [b","] * (2 * len(pending) + 1)  # head, item, ",", item, ..., "]}": one copy of the JSON
        parts[1::2] = pending
        parts[0], parts[-1] = head, b"]}"
        if not pending:
            parts = [head, b"]}"]
        return self._closed(b"".join(parts))

    def _closed(self, value: bytes) -> EncodedBatch:
        encoded = EncodedBatch(self.seq, self.pending_events, value)
        self.seq += 1
        self.pending = []
        self.pending_events = 0
        self.pending_bytes = 0
        self.pending_lost = 0
        return encoded


class BoundedBuffer:
    """FIFO of encoded batches bounded in events; a batch that does not fit is dropped
    (counted), never blocking the capture. A failed send goes back in seq order, in front of newer ones."""

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
        """Put back a batch whose send failed, before every newer one (by seq): sends fail in any
        order, and a node's batches resent out of order could put its events behind its own clock."""
        i = 0
        for i, queued in enumerate(self.items):  # (failed sends are few, and older than the rest)
            if queued.seq > batch.seq:
                break
        else:
            i = len(self.items)
        self.items.insert(i, batch)
        self.events += batch.events

    def pop(self) -> EncodedBatch | None:
        if not self.items:
            return None
        b = self.items.popleft()
        self.events -= b.events
        return b

    def __len__(self) -> int:
        return len(self.items)
