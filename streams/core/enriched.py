"""The enriched event: what the enrich stage hands the stitch stage, one object per event.

In-process the stitch stage reads the SyscallEvent and the enrichment (flow,
metadata refs, proxy_of) straight from this object: no per-event dict is built
between the stages. Only at the wire boundary (svctrace.flows and
svctrace.events.enriched on Kafka) does an event take its schema form
(schemas/enriched-batch.schema.json): the SyscallEvent's fields, flat, plus
flow, local_ref, remote_ref, addr_ref and proxy_of.

    to_wire(rec)  -> dict     (payload `data` stays bytes; `dumps` writes it as base64)
    from_wire(d)  -> EnrichedEvent   (payload as bytes or base64 text)

`schemas.models.dumps` serializes an EnrichedEvent as its wire dict (it calls
`__wire__`), so a shell that encodes graph outputs with it needs no change.
"""
from __future__ import annotations

import base64
from operator import attrgetter
from types import FunctionType

from svctrace.schemas.models import SyscallEvent

_FIELDS = SyscallEvent.__slots__
_FIELD_SET = frozenset(_FIELDS)
_VALUES = attrgetter(*_FIELDS)
_EXTRA = ("flow", "local_ref", "remote_ref", "addr_ref", "proxy_of")


class EnrichedEvent:
    """A SyscallEvent (`ev`) and what enrichment added. Treated as immutable."""

    __slots__ = ("ev",) + _EXTRA

    def __init__(self, ev: SyscallEvent, flow, local_ref, remote_ref, addr_ref, proxy_of):
        self.ev = ev
        self.flow = flow
        self.local_ref = local_ref
        self.remote_ref = remote_ref
        self.addr_ref = addr_ref
        self.proxy_of = proxy_of

    def __wire__(self) -> dict:
        return to_wire(self)

    # Read access in the wire form's terms (tests, tools): rec["kind"], rec.get("flow").
    def __getitem__(self, name: str):
        if name in _FIELD_SET:
            return getattr(self.ev, name)
        if name in _EXTRA:
            return getattr(self, name)
        raise KeyError(name)

    def get(self, name: str, default=None):
        try:
            return self[name]
        except KeyError:
            return default

    def __eq__(self, other) -> bool:
        if not isinstance(other, EnrichedEvent):
            return NotImplemented
        return self.ev == other.ev and all(getattr(self, k) == getattr(other, k) for k in _EXTRA)

    __hash__ = None  # type: ignore[assignment]

    def __repr__(self) -> str:
        return f"EnrichedEvent({self.ev!r}, flow={self.flow!r}, proxy_of={self.proxy_of!r})"


class EventRun(list):
    """The events of one flows batch as the enrich stage makes it: all of node `node` (the stage's
    key: the node every event of a syscalls record carries), in (ts, n) order, without repeats,
    all EnrichedEvents; `top` is their highest n. So a consumer can take the run whole (nothing
    in it is older than events[0]) without a step per event. Everything else sees a list (same
    JSON, same wire form; a slice of it is a plain list)."""

    __slots__ = ("node", "top")


def to_wire(rec: EnrichedEvent) -> dict:
    """The schema form of one enriched event (svctrace.enriched-batch `events[]` item)."""
    d = dict(zip(_FIELDS, _VALUES(rec.ev)))
    d["flow"] = rec.flow
    d["local_ref"] = rec.local_ref
    d["remote_ref"] = rec.remote_ref
    d["addr_ref"] = rec.addr_ref
    d["proxy_of"] = rec.proxy_of
    return d


def from_wire(d: dict) -> EnrichedEvent:
    """An `events[]` item as read from Kafka (or any dict of that form) -> EnrichedEvent."""
    fields = {k: v for k, v in d.items() if k in _FIELD_SET}
    data = fields.get("data")
    if data is not None and not isinstance(data, str):
        fields["data"] = base64.b64encode(data)  # bytes already (in-process dicts): from_wire decodes text
    return EnrichedEvent(SyscallEvent.from_wire(fields), d.get("flow"), d.get("local_ref"), d.get("remote_ref"),
                         d.get("addr_ref"), d.get("proxy_of"))


def batch_to_wire(batch: dict) -> dict:
    """An enriched batch (graph output) with its events in schema form."""
    events = batch.get("events") or ()
    if any(isinstance(e, EnrichedEvent) for e in events):
        batch = dict(batch, events=[to_wire(e) if isinstance(e, EnrichedEvent) else e for e in events])
    return batch


# Compiled, a variable typed SyscallEvent (enriched.pxd) reads its fields as struct members at fixed
# offsets, laid out as CPython lays out a msgspec Struct's slots (in the order of their names). What
# holds that true is checked here, once, as the module is imported: each field read so is the
# attribute of its name (an event whose every field is a distinct object). As Python, the same reads.

def _event_fields(e: SyscallEvent) -> tuple:
    """Every field of e, in field order, read as the stitch stage reads them."""
    return (e.ts, e.node, e.n, e.pid, e.tid, e.comm, e.kind, e.syscall, e.fd, e.res, e.errno, e.proto,
            e.family, e.role, e.local_ip, e.local_port, e.remote_ip, e.remote_port, e.addr_ip, e.addr_port,
            e.size, e.data, e.redacted, e.exe, e.container_id, e.cgroup_id, e.netns, e.lost_since_ns)


def _check_layout() -> None:
    if _event_fields.__class__ is FunctionType:
        return  # as Python: attribute reads, whatever the layout
    values = [object() for _ in _FIELDS]
    got = _event_fields(SyscallEvent(*values))
    if len(got) != len(values) or any(a is not b for a, b in zip(got, values)):
        wrong = [f for f, a, b in zip(_FIELDS, got, values) if a is not b]
        raise ImportError(f"svctrace.streams.core.enriched: SyscallEvent's fields are not where the compiled core "
                          f"reads them ({', '.join(wrong) or 'a field added'}): its struct in enriched.pxd (and "
                          "_event_fields) must list every field, then make setup; meanwhile SVCTRACE_PURE_PYTHON=1")


_check_layout()
