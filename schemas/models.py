"""Python models of the topic values, with orjson encode/decode.

`SyscallEvent` is the normalized event every capture source produces (the scap
reader, the eBPF agent) and every processor consumes. It is flat and immutable:
cheap to build at hundreds of thousands per second and serialized by orjson's
native dataclass support. Payload bytes travel as base64 on the wire.
"""
from __future__ import annotations

import base64
import time
from binascii import a2b_base64
from dataclasses import MISSING, asdict, dataclass, field, fields, replace
from operator import attrgetter
from typing import Any

import orjson

SCHEMA_VERSION = 1

EVENT_KINDS = ("connect", "accept", "send", "recv", "close", "socket", "bind", "listen", "shutdown", "lost")


@dataclass(frozen=True, slots=True)
class SyscallEvent:
    ts: int  # ns since the epoch
    node: str
    n: int  # sequence number within its source; (node, n) identifies the event
    pid: int
    tid: int
    comm: str
    kind: str  # one of EVENT_KINDS
    syscall: str
    fd: int
    res: int
    errno: str | None = None
    proto: str | None = None  # tcp | udp | unix | raw
    family: str | None = None  # ipv4 | ipv6 | unix
    role: str | None = None  # client | server
    local_ip: str | None = None
    local_port: int | None = None
    remote_ip: str | None = None
    remote_port: int | None = None
    addr_ip: str | None = None  # the address the process asked for (connect/sendto)
    addr_port: int | None = None
    size: int | None = None  # bytes the syscall moved
    data: bytes | None = None  # captured payload prefix, redacted
    redacted: bool = False
    exe: str | None = None
    container_id: str | None = None
    cgroup_id: int | None = None
    netns: int | None = None
    # a loss marker (kind "lost") only: the start of the window in which its `res` events were lost
    # (the agent's previous drain, or its start), ending at ts (when it noticed); None: a point at ts
    lost_since_ns: int | None = None

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        if self.data is not None:
            d["data"] = base64.b64encode(self.data).decode("ascii")
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "SyscallEvent":
        data = d.get("data")
        if data is not None:
            d = dict(d, data=base64.b64decode(data))
        return cls(**d)

    @staticmethod
    def from_wire(d: dict[str, Any]) -> "SyscallEvent":
        """Like from_dict (same event; TypeError for an unknown or missing field), several times
        faster: the values go straight into the slots, without the keyword __init__ of a
        frozen dataclass. The decoders of every hot path use it."""
        e = _new_event(SyscallEvent)
        setters = _EVENT_SETTERS
        if len(d) != _EVENT_NFIELDS:  # a writer may leave optional fields out
            missing = _EVENT_REQUIRED - d.keys()
            if missing:
                raise TypeError(f"missing field {sorted(missing)[0]}")
            for name, default in _EVENT_DEFAULTS:
                setters[name](e, default)
        for name, value in d.items():
            setter = setters.get(name)
            if setter is None:
                raise TypeError(f"unknown field {name}")
            setter(e, value)
        data = d.get("data")
        if data is not None:
            setters["data"](e, a2b_base64(data))
        return e

    def with_(self, **changes) -> "SyscallEvent":
        return replace(self, **changes)


_new_event = object.__new__
_EVENT_SETTERS = {f.name: getattr(SyscallEvent, f.name).__set__ for f in fields(SyscallEvent)}
_EVENT_NFIELDS = len(_EVENT_SETTERS)
_EVENT_DEFAULTS = tuple((f.name, f.default) for f in fields(SyscallEvent) if f.default is not MISSING)
_EVENT_REQUIRED = frozenset(f.name for f in fields(SyscallEvent) if f.default is MISSING)


def _compile_event_maker():
    """make_event(ts, node, n, ..., netns=None): a SyscallEvent from values in field order, about
    3x cheaper than the frozen dataclass's keyword __init__ (kwargs parsing plus object.__setattr__
    per field). Generated from the fields, as dataclasses generates __init__, storing straight into
    the slots: for decoders that build an event per syscall (the scap reader)."""
    params = ", ".join(f.name if f.default is MISSING else f"{f.name}=_d_{f.name}" for f in fields(SyscallEvent))
    body = "".join(f"    _s_{f.name}(e, {f.name})\n" for f in fields(SyscallEvent))
    scope: dict[str, Any] = {"_new": _new_event, "_cls": SyscallEvent}
    for f in fields(SyscallEvent):
        scope[f"_s_{f.name}"] = _EVENT_SETTERS[f.name]
        if f.default is not MISSING:
            scope[f"_d_{f.name}"] = f.default
    exec(f"def make_event({params}):\n    e = _new(_cls)\n{body}    return e\n", scope)  # noqa: S102
    return scope["make_event"]


def _compile_twin_event_maker(checked_against, shared: dict | None = None, names=()):
    """make_event again, about 3x cheaper still: the frozen dataclass refuses attribute stores, so
    the maker above calls each slot's descriptor (one C call per field). Here an event is born as
    an instance of a plain twin class with the same slots (plain stores, specialized by the
    interpreter) and becomes a SyscallEvent by __class__ assignment (allowed: same slot layout).
    Checked once against `checked_against`; None where the interpreter refuses the class change.
    With `shared`, the values of the fields `names` go through shared.setdefault (see
    event_maker_sharing)."""
    twin = type("_MutableSyscallEvent", (), {"__slots__": SyscallEvent.__slots__})
    fs = fields(SyscallEvent)
    params = ", ".join(f.name if f.default is MISSING else f"{f.name}=_d_{f.name}" for f in fs)
    body = "".join(f"    e.{f.name} = _shared({f.name}, {f.name})\n" if f.name in names else f"    e.{f.name} = {f.name}\n"
                   for f in fs)
    scope: dict[str, Any] = {"_new": object.__new__, "_twin": twin, "_cls": SyscallEvent,
                             "_shared": None if shared is None else shared.setdefault}
    scope.update((f"_d_{f.name}", f.default) for f in fs if f.default is not MISSING)
    exec(f"def make_event({params}):\n    e = _new(_twin)\n{body}    e.__class__ = _cls\n    return e\n",
         scope)  # noqa: S102 - generated from the dataclass fields only
    make = scope["make_event"]
    sample = (1, "node", 2, 3, 4, "comm", "send", "sendto", 5, 6, None, "tcp", "ipv4", "client",
              "10.0.0.1", 7, "10.0.0.2", 8, None, None, 9, b"x", False, "/bin/x", "c0ffee")
    try:
        made = make(*sample)
    except TypeError:
        return None
    return make if made.__class__ is SyscallEvent and made == checked_against(*sample) else None


make_event = _compile_event_maker()
make_event = _compile_twin_event_maker(make_event) or make_event
_OPTIONAL = frozenset(f.name for f in fields(SyscallEvent) if f.default is None)


def _compile_attr_event_maker(shared: dict, names) -> Any:
    """make(w): the SyscallEvent of the values w holds in attributes named as its fields (a decoder's
    Struct). Generated like the twin maker, reading each attribute straight into the twin's slot: no
    tuple of the values and no call with 28 arguments in between (make_event(*astuple(w)) builds
    both). The values of the fields `names` go through shared.setdefault, an optional one only when
    it is not None. None where the twin class is refused."""
    twin = type("_MutableSyscallEvent", (), {"__slots__": SyscallEvent.__slots__})
    body = []
    for f in fields(SyscallEvent):
        if f.name not in names:
            body.append(f"    e.{f.name} = w.{f.name}\n")
        elif f.name in _OPTIONAL:
            body.append(f"    v = w.{f.name}\n    e.{f.name} = v if v is None else _shared(v, v)\n")
        else:
            body.append(f"    v = w.{f.name}\n    e.{f.name} = _shared(v, v)\n")
    scope: dict[str, Any] = {"_new": object.__new__, "_twin": twin, "_cls": SyscallEvent,
                             "_shared": shared.setdefault}
    exec(f"def make_event_from(w):\n    e = _new(_twin)\n{''.join(body)}    e.__class__ = _cls\n    return e\n",
         scope)  # noqa: S102 - generated from the dataclass fields only
    make = scope["make_event_from"]
    sample = make_event(1, "node", 2, 3, 4, "comm", "send", "sendto", 5, 6, None, "tcp", "ipv4", "client",
                        "10.0.0.1", 7, "10.0.0.2", 8, None, None, 9, b"x", False, "/bin/x", "c0ffee")
    try:
        made = make(sample)
    except TypeError:
        return None
    return make if made.__class__ is SyscallEvent and made == sample else None


def event_maker_sharing(shared: dict, names) -> Any:
    """make_event whose values of the fields `names` (strings: node, IPs, comm ...) go through
    shared.setdefault: equal values become one object. A decoder makes a new string per value, while
    the events an in-process capture makes share theirs; the core's dict lookups and comparisons on
    them (flows keyed by IP, state by node) then find the very key object and skip comparing bytes:
    about 10% of the core's CPU on the bench traffic. The caller bounds `shared` (clear() it)."""
    names = frozenset(names)
    unknown = names - {f.name for f in fields(SyscallEvent)}
    if unknown:
        raise ValueError(f"not SyscallEvent fields: {sorted(unknown)}")
    make = _compile_twin_event_maker(make_event, shared, names)
    if make is not None:
        return make
    positions = frozenset(i for i, f in enumerate(fields(SyscallEvent)) if f.name in names)
    share = shared.setdefault

    def make_event_sharing(*values):  # where the twin class is refused: the slower maker, same events
        return make_event(*[share(v, v) if i in positions else v for i, v in enumerate(values)])
    return make_event_sharing


def event_maker_reading(shared: dict, names) -> Any:
    """make(w): a SyscallEvent of the values of w's attributes named as its fields (a decoder's
    Struct with SyscallEvent's fields), the values of the fields `names` shared as
    event_maker_sharing shares them (an optional field's None is not looked up). Equal to
    event_maker_sharing(shared, names)(*values in field order) and about a tenth cheaper than that
    with the tuple of values it needs."""
    names = frozenset(names)
    unknown = names - {f.name for f in fields(SyscallEvent)}
    if unknown:
        raise ValueError(f"not SyscallEvent fields: {sorted(unknown)}")
    make = _compile_attr_event_maker(shared, names)
    if make is not None:
        return make
    getters = [attrgetter(f.name) for f in fields(SyscallEvent)]  # where the twin class is refused
    sharing = event_maker_sharing(shared, names)

    def make_event_from(w):
        return sharing(*[get(w) for get in getters])
    return make_event_from


@dataclass(frozen=True, slots=True)
class SyscallBatch:
    node: str
    source: str  # ebpf | scap
    seq: int
    events: list[SyscallEvent]
    lost: int = 0

    def to_dict(self) -> dict[str, Any]:
        return {
            "schema": "svctrace.syscall-batch",
            "version": SCHEMA_VERSION,
            "node": self.node,
            "source": self.source,
            "seq": self.seq,
            "lost": self.lost,
            "events": [e.to_dict() for e in self.events],
        }


def _default(obj):
    if isinstance(obj, (bytes, bytearray, memoryview)):
        return base64.b64encode(obj).decode("ascii")
    wire = getattr(obj, "__wire__", None)  # an object that knows its topic form (the core's enriched events)
    if wire is not None:
        return wire()
    raise TypeError(f"cannot serialize {type(obj).__name__}")


def dumps(obj: Any) -> bytes:
    """orjson with the project's conventions (dataclasses native, bytes as base64,
    objects with a `__wire__()` method as the value it returns)."""
    return orjson.dumps(obj, default=_default)


def encode_batch(batch: SyscallBatch) -> bytes:
    head = {
        "schema": "svctrace.syscall-batch",
        "version": SCHEMA_VERSION,
        "node": batch.node,
        "source": batch.source,
        "seq": batch.seq,
        "lost": batch.lost,
        "events": batch.events,  # orjson serializes the dataclasses natively
    }
    return dumps(head)


class DecodeError(ValueError):
    """A record that is not a valid value for its topic; the reason names what is wrong."""


def decode_batch(raw: bytes) -> SyscallBatch:
    try:
        doc = orjson.loads(raw)
    except orjson.JSONDecodeError as e:
        raise DecodeError(f"not JSON: {e}") from None
    if not isinstance(doc, dict) or doc.get("schema") != "svctrace.syscall-batch":
        raise DecodeError("not a svctrace.syscall-batch record (field $.schema)")
    if doc.get("version") != SCHEMA_VERSION:
        raise DecodeError(f"unsupported version {doc.get('version')!r} (field $.version)")
    try:
        items = doc["events"]
        if not isinstance(items, list):
            raise DecodeError("field $.events is not a list")
        events = []
        for e in items:
            if e.__class__ is not dict:
                raise DecodeError("bad event in $.events: an event is not an object")
            events.append(SyscallEvent.from_wire(e))
        return SyscallBatch(node=doc["node"], source=doc["source"], seq=doc["seq"], events=events, lost=doc.get("lost", 0))
    except KeyError as e:
        raise DecodeError(f"missing field $.{e.args[0]}") from None
    except (TypeError, ValueError) as e:
        raise DecodeError(f"bad event in $.events: {e}") from None


@dataclass(frozen=True, slots=True)
class AgentStats:
    node: str
    source: str
    ts: int
    captured: int = 0
    published: int = 0
    dropped: int = 0
    lost: int = 0
    redacted: int = 0
    batches: int = 0

    def to_dict(self) -> dict[str, Any]:
        return {"schema": "svctrace.agent-stats", "version": SCHEMA_VERSION, **asdict(self)}


@dataclass(frozen=True, slots=True)
class DeadLetter:
    stage: str
    reason: str
    topic: str
    value: bytes | None
    key: bytes | None = None
    partition: int | None = None
    offset: int | None = None
    error: str | None = None
    ts: int = field(default_factory=time.time_ns)

    def to_dict(self) -> dict[str, Any]:
        b64 = lambda b: None if b is None else base64.b64encode(b).decode("ascii")  # noqa: E731
        return {
            "schema": "svctrace.dead-letter",
            "version": SCHEMA_VERSION,
            "stage": self.stage,
            "reason": self.reason,
            "error": self.error,
            "topic": self.topic,
            "partition": self.partition,
            "offset": self.offset,
            "key_b64": b64(self.key),
            "value_b64": b64(self.value),
            "ts": self.ts,
        }


# -- Values produced by the stitching core (streams/core): enriched batches, chains, alerts.
# The core builds them as plain dicts in their schema's form (the graph's outputs); these
# helpers turn Kafka record bytes back into such dicts, naming what is wrong otherwise.

ENRICHED_BATCH_SCHEMA = "svctrace.enriched-batch"
CHAIN_SCHEMA = "svctrace.chain"
ALERT_SCHEMA = "svctrace.alert"


def _decode_tagged(raw: bytes, schema: str) -> dict[str, Any]:
    try:
        doc = orjson.loads(raw)
    except orjson.JSONDecodeError as e:
        raise DecodeError(f"not JSON: {e}") from None
    if not isinstance(doc, dict) or doc.get("schema") != schema:
        raise DecodeError(f"not a {schema} record (field $.schema)")
    if doc.get("version") != SCHEMA_VERSION:
        raise DecodeError(f"unsupported version {doc.get('version')!r} (field $.version)")
    return doc


def decode_enriched_batch(raw: bytes) -> dict[str, Any]:
    """A svctrace.flows / svctrace.events.enriched record -> dict, payloads back to bytes."""
    doc = _decode_tagged(raw, ENRICHED_BATCH_SCHEMA)
    events = doc.get("events")
    if not isinstance(events, list):
        raise DecodeError("missing field $.events")
    for i, e in enumerate(events):
        if not isinstance(e, dict) or "ts" not in e or "node" not in e or "n" not in e:
            raise DecodeError(f"bad event in $.events[{i}]: ts, node and n are required")
        data = e.get("data")
        if isinstance(data, str):
            try:
                e["data"] = base64.b64decode(data, validate=True)
            except ValueError:
                raise DecodeError(f"bad base64 in $.events[{i}].data") from None
    return doc


def decode_chain(raw: bytes) -> dict[str, Any]:
    return _decode_tagged(raw, CHAIN_SCHEMA)


def decode_alert(raw: bytes) -> dict[str, Any]:
    return _decode_tagged(raw, ALERT_SCHEMA)
