"""The worker's record codecs, built for the per-event hot path.

* `decode_syscall_batch(raw)`: a svctrace.syscall-batch record -> SyscallBatch; it is
  schemas.models.decode_batch, whose SyscallEvent.from_wire stores each event dict's values
  straight into the frozen SyscallEvent's slots (about 3x cheaper per event than the
  keyword constructor).
* `decode_enriched_events(events)`: the same for the stitch stage's input (svctrace.flows).
* `read_flows_record(value, headers, handoff)`: a svctrace.flows record -> the enriched batch
  the stitch stage processes, or None for a progress-only record.
* `LocalHandoff`: flows batches a worker sends to partitions it consumes itself, kept as objects
  and matched by a record header when they come back, so they are not decoded at all.
"""
from __future__ import annotations

import os
from binascii import Error as Base64Error

import orjson

from svctrace.schemas.models import DecodeError, SyscallEvent, decode_batch
from svctrace.streams.core.enriched import EnrichedEvent

_ENRICHMENT = ("flow", "local_ref", "remote_ref", "addr_ref", "proxy_of")  # EnrichedEvent's order

# One decoder for syscall batches, shared with every other reader (slot setters, no keyword
# __init__ per event: SyscallEvent.from_wire).
decode_syscall_batch = decode_batch


def decode_enriched_events(events: list) -> list:
    """The `events` of an enriched batch read from svctrace.flows -> EnrichedEvents for the stitch
    stage, built like decode_syscall_batch's events. Raises DecodeError on a malformed event (the
    caller then hands the dicts to the stage, which dead-letters just the bad ones)."""
    out = []
    add = out.append
    try:
        for d in events:
            if d.__class__ is not dict:
                raise DecodeError("an event is not an object")
            extra = [d.pop(name, None) for name in _ENRICHMENT]
            add(EnrichedEvent(SyscallEvent.from_wire(d), *extra))
    except (KeyError, TypeError, ValueError, Base64Error) as e:
        raise DecodeError(f"bad event in $.events: {e}") from None
    return out


def read_flows_record(value: bytes | None, headers, handoff: "LocalHandoff") -> dict | None:
    """A svctrace.flows record -> its enriched batch (EnrichedEvents; the event dicts when one of
    them is malformed, so the stage dead-letters just that one), or None when the record only
    carries progress. A batch of loss markers without events is data: the enrich stage sends a
    node's losses to every bucket, most of them without events of that release, and each
    bucket's chains overlapping the loss must turn "incomplete" as in the in-process runner."""
    batch = handoff.take(headers)  # our own record: the enrich stage's objects
    if batch is None:
        if not value:
            return None
        batch = orjson.loads(value)
        if batch.__class__ is not dict:
            raise ValueError("enriched batch is not an object")
        events = batch.get("events")
        if events:
            if events.__class__ is not list:
                raise ValueError("enriched batch without an events list (field $.events)")
            try:
                batch["events"] = decode_enriched_events(events)
            except DecodeError:
                batch = orjson.loads(value)
    if batch.get("events") or batch.get("lost"):
        batch.setdefault("events", [])
        return batch
    return None


# -- records this worker sends to itself ---------------------------------------------

HANDOFF_HEADER = "svctrace-handoff"


class LocalHandoff:
    """Enriched batches this worker sent to svctrace.flows partitions it also consumes, kept as
    the objects the enrich stage made: when such a record comes back (a header names it) the
    stitch stage takes the objects instead of decoding the record's JSON again. Anything else
    (another worker's record, a record re-read after a restart or sent before a rebalance)
    is decoded as usual, so the outputs cannot differ: the in-process runner hands the stitch
    stage the very same objects. Bounded: the oldest batches go first past `max_events`."""

    def __init__(self, max_events: int = 100_000):
        self.token = os.urandom(6).hex().encode()  # this process: tags never match another's
        self.max_events = max_events
        self.batches: dict[bytes, dict] = {}
        self.events = 0
        self.seq = 0

    def keep(self, batch: dict) -> bytes:
        """Remember `batch`; returns the tag to send in its record's HANDOFF_HEADER."""
        self.seq += 1
        tag = b"%s:%d" % (self.token, self.seq)
        self.batches[tag] = batch
        self.events += len(batch["events"])
        while self.events > self.max_events and self.batches:
            self.events -= len(self.batches.pop(next(iter(self.batches)))["events"])
        return tag

    def take(self, headers) -> dict | None:
        """The batch a record with these headers carries, if this process kept it (once)."""
        for k, v in (headers.items() if hasattr(headers, "items") else headers or ()):
            if k == HANDOFF_HEADER:
                batch = self.batches.pop(bytes(v), None)
                if batch is not None:
                    self.events -= len(batch["events"])
                return batch
        return None
