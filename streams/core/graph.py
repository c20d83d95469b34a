"""The operator graph: three keyed stages wired by topic.

    svctrace.syscalls (key node)          -> enrich  -> svctrace.flows (key bucket)
                                                      (+ svctrace.events.enriched, key node)
    svctrace.flows (key bucket)            -> stitch  -> svctrace.chains (key chain id)
                                                      + svctrace.alerts.occurrences (key rule|labels)
    svctrace.alerts.occurrences (key rule|labels) -> alerts -> svctrace.alerts (key alert id)

Every operator has the same small API (see the package docstring); this module
only says which operator consumes which topic, so a runner is a loop over it.
"""
from __future__ import annotations

import base64
from collections import deque
from dataclasses import dataclass

import orjson

from svctrace.schemas.models import SyscallEvent, dumps

from .alerts import ALERTS_TOPIC, Alerter
from .enrich import ENRICHED_TOPIC, FLOWS_TOPIC, Enricher
from .enriched import EnrichedEvent, batch_to_wire, from_wire, to_wire
from .stitch import CHAINS_TOPIC, OCCURRENCES_TOPIC, Stitcher

S = 10**9
SYSCALLS_TOPIC = "svctrace.syscalls"


@dataclass(frozen=True)
class Settings:
    partitions: int = 12  # of svctrace.flows
    enrich_lateness_ns: int = 2 * S  # events of one node may arrive this much out of order
    stitch_lateness_ns: int = 2 * S  # ... and events of different nodes, at the stitch stage
    settle_ns: int = 2 * S
    idle_ns: int = 30 * S
    lookup_timeout_ns: int = 12 * S
    udp_window_ns: int = 10 * S  # a UDP flow that goes on makes a chain per this much of its datagrams
    emit_enriched: bool = False

    @property
    def alerts_lateness_ns(self) -> int:
        return (self.stitch_lateness_ns + self.enrich_lateness_ns
                + max(self.idle_ns, self.lookup_timeout_ns, self.udp_window_ns) + self.settle_ns)


class Graph:
    """The three operators, built for one ClusterIndex, and the topic each consumes."""

    def __init__(self, index, settings: Settings | None = None):
        s = self.settings = settings or Settings()
        # late drops are coalesced per settle time: the stitch stage then finds a marker within
        # settle of every chain a late event belonged to
        self.enrich = Enricher(index, partitions=s.partitions, lateness_ns=s.enrich_lateness_ns,
                               emit_enriched=s.emit_enriched, late_slot_ns=s.settle_ns)
        self.stitch = Stitcher(index, lateness_ns=s.stitch_lateness_ns, settle_ns=s.settle_ns, idle_ns=s.idle_ns,
                               lookup_timeout_ns=s.lookup_timeout_ns, udp_window_ns=s.udp_window_ns)
        self.alerts = Alerter(lateness_ns=s.alerts_lateness_ns)
        # input topic -> operator; outputs on other topics are final (chains, alerts, enriched events)
        self.consumers = {SYSCALLS_TOPIC: self.enrich, FLOWS_TOPIC: self.stitch, OCCURRENCES_TOPIC: self.alerts}
        self.outputs = (CHAINS_TOPIC, ALERTS_TOPIC, ENRICHED_TOPIC)

    def metadata_changed(self) -> None:
        """Call after applying k8s records to the index while running: the operators'
        memos of index answers are dropped (otherwise reused only within their second)."""
        self.enrich.metadata_changed()
        self.stitch.metadata_changed()



# -- state <-> bytes (for changelog-backed tables) ---------------------------------

def _default(obj):
    if isinstance(obj, EnrichedEvent):
        return to_wire(obj)  # a stitch buffer's event, in its schema form
    if isinstance(obj, (bytes, bytearray, memoryview)):
        return base64.b64encode(bytes(obj)).decode("ascii")
    if obj.__class__ is deque:
        return list(obj)  # the stitch state's sorted timer FIFOs (restore makes them deques again)
    raise TypeError(f"cannot serialize {type(obj).__name__}")


def dumps_state(state: dict) -> bytes:
    """Any operator's state -> bytes (orjson). SyscallEvents (the enrich buffer) are written
    by orjson natively, EnrichedEvents (the stitch buffer) in their schema form; payload
    bytes become base64 text."""
    return orjson.dumps(state, default=_default)


def _event_from_dict(d: dict) -> SyscallEvent:
    data = d.get("data")
    if data is not None and not isinstance(data, str):
        d = dict(d, data=base64.b64encode(data))  # bytes already: from_wire decodes base64 text
    return SyscallEvent.from_wire(d)


def loads_state(raw: bytes) -> dict:
    """bytes -> operator state; also reads states written by earlier versions (enrich
    buffer entries as {"__ev__": event}, stitch buffer entries as plain dicts: a flat "buf", which the
    stitch stage takes as one run)."""
    state = orjson.loads(raw)
    runs = state.get("runs")
    if runs:  # a stitch state written whole: its pending events' runs, the events in their schema form
        state["runs"] = [[[from_wire(e) for e in events], i] for events, i in runs]
    buf = state.get("buf")
    if buf and isinstance(buf[0], dict):
        if "__ev__" in buf[0]:
            state["buf"] = [_event_from_dict(e["__ev__"]) for e in buf]
        elif "flow" in buf[0]:
            state["buf"] = [from_wire(e) for e in buf]
        else:
            state["buf"] = [_event_from_dict(e) for e in buf]
    return state


def encode_value(value: dict) -> bytes:
    """A graph output value -> Kafka record bytes (enriched events in their schema form,
    bytes payloads as base64). Same bytes as `schemas.models.dumps(value)`."""
    return dumps(value)


def decode_value(topic: str, raw: bytes) -> dict | None:
    """Kafka record bytes of a consumed topic -> the value its operator's process() takes.
    (process() also takes the plain orjson.loads() dict: enriched events are converted on entry.)"""
    if not raw:
        return None
    return orjson.loads(raw)


def enriched_to_wire(batch: dict) -> dict:
    """An enriched batch output (svctrace.flows / svctrace.events.enriched) with its events
    as schema dicts: what a consumer of the topic reads back."""
    return batch_to_wire(batch)
