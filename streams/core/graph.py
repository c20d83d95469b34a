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
from dataclasses import dataclass

import orjson

from svctrace.schemas.models import SyscallEvent, dumps

from .alerts import ALERTS_TOPIC, Alerter
from .enrich import ENRICHED_TOPIC, FLOWS_TOPIC, Enricher
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
    emit_enriched: bool = False

    @property
    def alerts_lateness_ns(self) -> int:
        return self.stitch_lateness_ns + self.enrich_lateness_ns + max(self.idle_ns, self.lookup_timeout_ns) + self.settle_ns


class Graph:
    """The three operators, built for one ClusterIndex, and the topic each consumes."""

    def __init__(self, index, settings: Settings | None = None):
        s = self.settings = settings or Settings()
        self.enrich = Enricher(index, partitions=s.partitions, lateness_ns=s.enrich_lateness_ns,
                               emit_enriched=s.emit_enriched)
        self.stitch = Stitcher(index, lateness_ns=s.stitch_lateness_ns, settle_ns=s.settle_ns, idle_ns=s.idle_ns,
                               lookup_timeout_ns=s.lookup_timeout_ns)
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
    if isinstance(obj, SyscallEvent):
        return {"__ev__": obj.to_dict()}
    if isinstance(obj, (bytes, bytearray, memoryview)):
        return base64.b64encode(bytes(obj)).decode("ascii")
    raise TypeError(f"cannot serialize {type(obj).__name__}")


def dumps_state(state: dict) -> bytes:
    """Any operator's state -> bytes (orjson). Payload bytes become base64 text, which
    the stitch stage accepts as such."""
    return orjson.dumps(state, default=_default, option=orjson.OPT_PASSTHROUGH_DATACLASS)


def loads_state(raw: bytes) -> dict:
    state = orjson.loads(raw)
    buf = state.get("buf")
    if buf and isinstance(buf[0], dict) and "__ev__" in buf[0]:
        state["buf"] = [SyscallEvent.from_dict(e["__ev__"]) for e in buf]
    return state


def encode_value(value: dict) -> bytes:
    """A graph output value -> Kafka record bytes (bytes payloads as base64)."""
    return dumps(value)
