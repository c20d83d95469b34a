"""The worker's record codecs, built for the per-event hot path.

* `decode_syscall_batch(raw)`: a svctrace.syscalls record -> SyscallBatch. The agents' default form,
  syscall-columns (msgpack columns, schemas/syscall_columns.py: each distinct string of a record once, so
  its events share them without event_sharer), is read by syscall_columns.decode_columns into this
  module's shared strings: 0.58-0.78 us per event against 1.01-1.27 for the JSON, 7.6k instructions
  against 17.7k (session 16, docs/performance.md). The syscall-batch JSON (older agents, --batch-form
  json, the eBPF source's batches): msgspec parses
  the JSON straight into SyscallEvents (a msgspec Struct; payload base64 -> bytes included), without
  a dict, a tuple or a second object per event: 1.08-1.19 us per event on bench.worker_steady's
  records against 1.51-1.61 when msgspec filled a Struct of the same fields and the event was copied
  from it (session 14). A record it refuses is refused with decode_batch's reason when decode_batch
  refuses it too, else with msgspec's (which names the field: `$.events[3].ts`).
  Unlike decode_batch it ignores event fields it does not know (a newer agent's optional field).
  Equal strings of the events it makes are one object (node, IPs, comm ...; the enumerated kind,
  proto, family and role are the interned literals of SyscallEvent's annotations): the core runs
  faster on such events, as on the ones an in-process capture makes (models.event_maker_sharing),
  and a worker holds one string per value instead of one per event. models.event_sharer replaces the
  values in place on the events msgspec just made (about 0.05 us per field and event). Flows records
  read from Kafka share theirs the same way. Which fields: all nine string fields. Node and the three
  IPs together carry most of the gain, neither alone any, and the rest still pays for its lookups
  (an earlier session, the in-process run of bench traffic, 84k events decoded each way, 5 alternating rounds,
  median: all nine 447 ms, all but syscall/errno/exe 454, node+IPs+comm 459, node+IPs 464, the IPs
  481, none 488, node 490). Callgrind does not see it (instructions equal or fewer without sharing):
  the gain is in memory, one string object per value instead of one per event. An optional field's
  None is not looked up.
* `encode_record(value)`: a chain, alert or alert occurrence -> the bytes of schemas.models.dumps(value),
  written by msgspec (~30% less CPU than orjson on chain records; see the function). `encode_chain` is the
  same encoder, which the worker's stitch stage calls as it makes each chain (Stitcher.encode_chain).
* `encode_enriched_batch(batch)`: an enriched batch of EnrichedEvents (svctrace.events.enriched)
  -> the same bytes as schemas.models.dumps(batch), without building each event's schema dict
  (to_wire): each event and its enrichment appended to one buffer (see the function).
* `encode_flows_batch(batch)`: the same batch as a svctrace.flows record of the flows-batch form
  (msgpack rows, each metadata ref written once per record): a third of the JSON's CPU.
* `decode_enriched_events(events)`: event dicts of an enriched batch -> EnrichedEvents.
* `read_flows_record(value, headers, handoff)`: a svctrace.flows record (flows-batch, or the
  enriched-batch JSON older workers wrote) -> the enriched batch the stitch stage processes, or
  None for a progress-only record.
* `LocalHandoff`: flows batches a worker sends to partitions it consumes itself, kept as objects
  and matched by a record header when they come back, so they are not decoded at all. The header
  numbers every record a worker sends to svctrace.flows (data or progress, any partition), so it
  knows when it has read back all it sent to one of its own partitions.
* `AppliedHere`: tags of the occurrences the stitch stage applied to this worker's own alerts
  partitions as it sent them, so their records are not applied again when they come back.
"""
from __future__ import annotations

import os
from binascii import Error as Base64Error
from dataclasses import MISSING, fields
from itertools import starmap
from operator import attrgetter
from typing import Annotated, Literal, Optional, get_type_hints

import msgspec
import orjson

from svctrace.schemas.models import (
    DecodeError, SyscallBatch, SyscallEvent, decode_batch, dumps, event_maker_reading, event_sharer,
)
from svctrace.schemas.syscall_columns import LITERALS, MSGPACK_MAP as _MSGPACK_MAP, decode_columns
from svctrace.streams.core.enriched import EnrichedEvent

_ENRICHMENT = ("flow", "local_ref", "remote_ref", "addr_ref", "proxy_of")  # EnrichedEvent's order


# -- svctrace.syscalls --------------------------------------------------------------------

# SyscallEvent is a msgspec Struct: msgspec decodes a record's events straight into it, the enumerated
# fields (kind, proto, family, role) as the interned strings of their Literal annotations.
_syscall_batch = msgspec.json.Decoder(msgspec.defstruct(
    "_SyscallBatchWire", [("schema", Literal["svctrace.syscall-batch"]), ("version", Literal[1]),
                          ("node", str), ("source", str), ("seq", int), ("events", list[SyscallEvent]),
                          ("lost", int, 0)], gc=False))

# SyscallEvent's fields with plain strings for the enumerated ones: a value outside the schema's (a newer
# agent's) is read through this Struct (decode_syscall_batch's fallback; the flows-batch rows).
_ENUMERATED = ("kind", "proto", "family", "role")
_hints = {**get_type_hints(SyscallEvent),
          "kind": str, "proto": Optional[str], "family": Optional[str], "role": Optional[str]}


def _event_struct(name: str, **options):
    return msgspec.defstruct(
        name, [(f.name, _hints[f.name], f.default) if f.default is not MISSING else (f.name, _hints[f.name])
               for f in fields(SyscallEvent)], gc=False, **options)


_SyscallEventWire = _event_struct("_SyscallEventWire")
_syscall_batch_plain = msgspec.json.Decoder(msgspec.defstruct(
    "_SyscallBatchPlain", [("schema", Literal["svctrace.syscall-batch"]), ("version", Literal[1]),
                           ("node", str), ("source", str), ("seq", int), ("events", list[_SyscallEventWire]),
                           ("lost", int, 0)], gc=False))

# Equal strings of decoded events as one object (models.event_maker_sharing: the core's lookups by IP,
# node, comm ... then find the very key object; see the module's docstring). Bounded: emptied when it
# passes _SHARED_MAX (checked per record).
_STRING_FIELDS = tuple(f.name for f in fields(SyscallEvent) if _hints[f.name] in (str, Optional[str]))
_SHARED_FIELDS = tuple(name for name in _STRING_FIELDS if name not in _ENUMERATED)
_SHARED_MAX = 100_000
_shared: dict = dict(LITERALS)  # (seeded with the enumerations' interned strings: a syscall "connect" is kind's)
_share = event_sharer(_shared, _SHARED_FIELDS)  # in place, on the events msgspec just made
# A Struct's attributes into a new SyscallEvent, every string shared (the fallback; flows-batch rows).
_make_shared_all = event_maker_reading(_shared, _STRING_FIELDS)


def decode_syscall_batch(raw: bytes) -> SyscallBatch:
    """A svctrace.syscalls record (the syscall-columns form, or the syscall-batch JSON) -> SyscallBatch;
    DecodeError naming the field if it is not one."""
    if len(_shared) > _SHARED_MAX:
        _shared.clear()
        _shared.update(LITERALS)
    if raw and raw[0] in _MSGPACK_MAP:  # the agents' syscall-columns form (msgpack; JSON starts with a character)
        h, events = decode_columns(raw, _shared)
        return SyscallBatch(node=_shared.setdefault(h.node, h.node), source=h.source, seq=h.seq, events=events,
                            lost=h.lost)
    try:
        b = _syscall_batch.decode(raw)
        events = _share(b.events)
    except msgspec.MsgspecError:
        try:
            b = _syscall_batch_plain.decode(raw)
        except msgspec.MsgspecError as e:
            decode_batch(raw)  # raises with the schema decoder's reason where it has one
            raise DecodeError(str(e)) from None
        events = list(map(_make_shared_all, b.events))
    node = _shared.setdefault(b.node, b.node)
    return SyscallBatch(node=node, source=b.source, seq=b.seq, events=events, lost=b.lost)


# -- svctrace.chains, svctrace.alerts, svctrace.alerts.occurrences ----------------------------

def _wire_form(obj):
    wire = getattr(obj, "__wire__", None)  # as schemas.models.dumps: an object that knows its topic form
    if wire is not None:
        return wire()
    raise TypeError(f"cannot serialize {type(obj).__name__}")


_records = msgspec.json.Encoder(enc_hook=_wire_form)


def encode_record(value, _encode=_records.encode) -> bytes:
    """A chain, alert or occurrence -> its record bytes, equal to schemas.models.dumps(value), for ~30%
    less CPU than orjson's on chain records. The two write the same bytes for every string, integer,
    bool, null, list, dict, dataclass and bytes (base64); they differ only in the exponent of large or
    small floats (orjson 1e+16, msgspec 1e16), and these topics' records hold no number that is not an
    integer (their schemas have none). Dead letters, whose values can hold anything, keep dumps.

    Live, a chain's record costs 2-3x what the same encoding costs warm, and not for the encoder's
    sake: the chain's objects are cold. A chain (~170 values, 2.2 KB of JSON) is mostly objects made
    over its life (an event's strings and evidence when it was applied, up to seconds before), spread
    over the worker's heap; the encoder is the first to read them all again. Measured by encoding each
    chain twice in a row: in bench.worker_steady at 40k ev/s, 13.6 us the first time and 5.0 us the
    second (139k records; the worker running behind on a busy machine); in the in-process runner,
    right as each chain is emitted, 9.3 and 4.4 us. Fewer objects per chain (the core) would cut it,
    not another encoder. So the worker's stitch stage writes each chain's bytes with encode_chain as it
    makes the chain (Stitcher.encode_chain), while its objects are still in cache; route() takes them as
    they are."""
    return _encode(value)


encode_chain = _records.encode  # encode_record without its own call: the stitch stage's, once per chain

# -- svctrace.flows / svctrace.events.enriched ------------------------------------------------

_encoder = msgspec.json.Encoder()
_EVENTS_HERE = msgspec.Raw(b"\x01")  # where the events go in the batch's head: a byte JSON text never holds raw


def encode_enriched_batch(batch: dict, _encode=_encoder.encode, _encode_into=_encoder.encode_into) -> bytes:
    """An enriched batch -> its record bytes, equal to schemas.models.dumps(batch).

    An event's schema form is its SyscallEvent's fields, flat, then flow, local_ref, remote_ref,
    addr_ref and proxy_of. Instead of a 32-key dict per event (to_wire), msgspec appends each event
    to one buffer (the SyscallEvent dataclass natively, payload bytes as base64), its closing brace
    becomes a comma, and its enrichment follows as bytes: '...,"netns":null}' ->
    '...,"netns":null,"flow":...},'. (Joining the two objects afterwards with a bytes.replace over the
    whole record cost as much as the events' encoding.)

    The enrichment's bytes are encoded once per distinct (flow, local_ref, remote_ref, addr_ref,
    proxy_of) in the record: the refs are the few objects of the enrich stage's ref cache, a
    connection's events carry the very same ones, and half of the events have the previous event's
    (an identity check). Keyed by the objects' id()s, valid while the batch holds them (this call)."""
    events = batch.get("events")
    if not events or not all(e.__class__ is EnrichedEvent for e in events):
        return dumps(batch)
    head, tail = _encode({**batch, "events": _EVENTS_HERE}).split(b"\x01")
    buf = bytearray(head)
    buf.append(0x5B)  # [
    enrichments: dict[tuple, bytes] = {}
    flow = local = remote = addr = proxy = enrichment = _EVENTS_HERE  # (no event's values)
    for e in events:
        _encode_into(e.ev, buf, -1)
        buf[-1] = 0x2C  # the event's closing brace -> ,
        if (e.local_ref is not local or e.remote_ref is not remote or e.addr_ref is not addr
                or e.flow is not flow or e.proxy_of is not proxy):
            flow, local, remote, addr, proxy = e.flow, e.local_ref, e.remote_ref, e.addr_ref, e.proxy_of
            key = (flow, id(local), id(remote), id(addr), id(proxy))
            enrichment = enrichments.get(key)
            if enrichment is None:  # '"flow":...,"proxy_of":...},' (without the object's opening brace)
                enrichment = enrichments[key] = _encode(
                    {"flow": flow, "local_ref": local, "remote_ref": remote, "addr_ref": addr,
                     "proxy_of": proxy})[1:] + b","
        buf += enrichment
    buf[-1] = 0x5D  # ] over the last event's comma
    buf += tail
    return bytes(buf)


class _Enrichment(msgspec.Struct):
    flow: str | None = None
    local_ref: dict | None = None
    remote_ref: dict | None = None
    addr_ref: dict | None = None
    proxy_of: dict | None = None


class _FlowsEvents(msgspec.Struct):  # reads each event's SyscallEvent fields (ignores the enrichment)
    events: list[SyscallEvent] = []


class _FlowsRest(msgspec.Struct):  # reads the rest: the batch's head, each event's enrichment
    schema: str | msgspec.UnsetType = msgspec.UNSET
    version: int | msgspec.UnsetType = msgspec.UNSET
    events: list[_Enrichment] = []
    lost: list[dict] | msgspec.UnsetType = msgspec.UNSET


_flows_events = msgspec.json.Decoder(_FlowsEvents)
_flows_rest = msgspec.json.Decoder(_FlowsRest)


def _decode_flows_json(value: bytes) -> dict | None:
    """A flows record of the enriched-batch form (JSON: a worker before the flows-batch form, or a
    batch with an event that is not an EnrichedEvent) with EnrichedEvents, in two msgspec passes
    over its bytes (no dict per event), or None if it is not that (the caller then reads it the slow way)."""
    try:
        evs = _flows_events.decode(value).events
        rest = _flows_rest.decode(value)
    except msgspec.MsgspecError:
        return None
    batch = {k: v for k in ("schema", "version") if (v := getattr(rest, k)) is not msgspec.UNSET}
    batch["events"] = [EnrichedEvent(ev, x.flow, x.local_ref, x.remote_ref, x.addr_ref, x.proxy_of)
                       for ev, x in zip(evs, rest.events)]
    if rest.lost is not msgspec.UNSET:
        batch["lost"] = rest.lost
    return batch


# -- svctrace.flows: the flows-batch form (msgpack) -------------------------------------------
#
# The stitch stage needs every field of an enriched event (its outputs quote them), but not the
# enriched-batch's JSON: a flows record is internal, written and read by workers only. A
# flows-batch (schemas/flows-batch.schema.json) is msgpack, each event a row of its SyscallEvent's
# values in the order `fields` names (payloads as msgpack bin, no base64) and a row of its
# enrichment whose metadata refs are indexes into the record's `refs` table (a release's events
# share a few ref objects: each is written once). Writing one costs a third of the JSON's CPU, reading
# one half, and it is a quarter of the bytes before compression.

FLOWS_SCHEMA = "svctrace.flows-batch"
ENRICHED_SCHEMA = "svctrace.enriched-batch"
_EVENT_FIELDS = tuple(f.name for f in fields(SyscallEvent))


def _compile_rows():
    """rows(enriched_events) -> [(ev.ts, ev.node, ...), ...]: each event's values in field order, as a
    comprehension generated from the dataclass fields. The interpreter's specialized slot loads
    cost half of attrgetter(*fields)'s generic getattr per field (0.58 vs 1.11 us per event)."""
    values = ", ".join(f"ev.{name}" for name in _EVENT_FIELDS)
    scope = {"_ev": attrgetter("ev")}
    exec(f"def rows(events):\n    return [({values},) for ev in map(_ev, events)]\n", scope)  # noqa: S102
    return scope["rows"]


_rows = _compile_rows()
_msgpack = msgspec.msgpack.Encoder()
# SyscallEvent's fields as an array-like Struct: a row decodes into it, checked field by field.
_EventRow = _event_struct("_EventRow", array_like=True)


_RefIndex = Annotated[int, msgspec.Meta(ge=0)]


class _FlowsBatchWire(msgspec.Struct, gc=False):
    schema: Literal["svctrace.flows-batch"]
    version: Literal[1]
    fields: list[str]
    refs: list[dict | None]
    events: msgspec.Raw  # rows: read once `fields` says how
    enrichment: list[tuple[str | None, _RefIndex, _RefIndex, _RefIndex, dict | None]]
    lost: list[dict] | msgspec.UnsetType = msgspec.UNSET


_flows_batch = msgspec.msgpack.Decoder(_FlowsBatchWire)
_event_rows = msgspec.msgpack.Decoder(list[_EventRow])
# A row as a tuple of SyscallEvent's field types, checked field by field as _EventRow checks them but with
# the enumerated fields as their Literals (interned); each tuple becomes a SyscallEvent through its C
# __init__ (starmap), its other strings then shared in place: ~0.15 us/event less than _EventRow and
# _make_shared_all (1.04-1.10 against 1.20-1.27 offline). A value outside the enumerations: _EventRow.
_event_tuples = msgspec.msgpack.Decoder(
    list[tuple[tuple(get_type_hints(SyscallEvent)[name] for name in _EVENT_FIELDS)]])
_any_rows = msgspec.msgpack.Decoder(list[list])


def encode_flows_batch(batch: dict) -> bytes:
    """An enriched batch of EnrichedEvents -> a svctrace.flows record of the flows-batch form; a
    batch holding anything else (or values msgpack cannot carry) in the enriched-batch form
    (JSON), which readers take as well."""
    events = batch.get("events") or []
    if not all(e.__class__ is EnrichedEvent for e in events):
        return dumps(batch)
    refs: dict[int, dict | None] = {}  # id -> ref, in order of first use (events keep them alive)
    for e in events:
        refs[id(e.local_ref)] = e.local_ref
        refs[id(e.remote_ref)] = e.remote_ref
        refs[id(e.addr_ref)] = e.addr_ref
    index = {ref_id: i for i, ref_id in enumerate(refs)}
    doc = {"schema": FLOWS_SCHEMA, "version": 1, "fields": _EVENT_FIELDS, "refs": list(refs.values()),
           "events": _rows(events),
           "enrichment": [(e.flow, index[id(e.local_ref)], index[id(e.remote_ref)], index[id(e.addr_ref)],
                           e.proxy_of) for e in events]}
    if "lost" in batch:
        doc["lost"] = batch["lost"]
    try:
        return _msgpack.encode(doc)
    except (TypeError, OverflowError, UnicodeEncodeError):
        return dumps(batch)


def _decode_flows_msgpack(value: bytes) -> dict:
    """A flows-batch record -> the enriched batch the enrich stage made (EnrichedEvents). Rows of
    another worker version's fields (a field added or gone) are read by name: a field this
    version does not know is ignored, a missing one takes its default."""
    if len(_shared) > _SHARED_MAX:
        _shared.clear()
        _shared.update(LITERALS)
    try:
        b = _flows_batch.decode(value)
        if b.fields == list(_EVENT_FIELDS):
            try:
                events = _share(list(starmap(SyscallEvent, _event_tuples.decode(b.events))))
            except msgspec.MsgspecError:
                events = list(map(_make_shared_all, _event_rows.decode(b.events)))
        else:
            known = set(_EVENT_FIELDS)
            names = b.fields
            events = [SyscallEvent(**{k: v for k, v in zip(names, row) if k in known})
                      for row in _any_rows.decode(b.events)]
    except (msgspec.MsgspecError, TypeError) as e:
        raise DecodeError(f"svctrace.flows record: {e}") from None
    if len(events) != len(b.enrichment):
        raise DecodeError(f"svctrace.flows record: {len(events)} events but {len(b.enrichment)} enrichment rows "
                          "(field $.enrichment)")
    refs = b.refs
    try:
        out = [EnrichedEvent(ev, flow, refs[local], refs[remote], refs[addr], proxy_of)
               for ev, (flow, local, remote, addr, proxy_of) in zip(events, b.enrichment)]
    except IndexError:
        raise DecodeError(f"svctrace.flows record: a ref index past the {len(refs)} refs (field $.enrichment)") from None
    batch = {"schema": ENRICHED_SCHEMA, "version": 1, "events": out}  # as the enrich stage made it
    if b.lost is not msgspec.UNSET:
        batch["lost"] = b.lost
    return batch


def decode_enriched_events(events: list) -> list:
    """The `events` of an enriched batch read from svctrace.flows -> EnrichedEvents for the stitch
    stage. Raises DecodeError on a malformed event (the caller then hands the dicts to the stage,
    which dead-letters just the bad ones)."""
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
        if value[0] in _MSGPACK_MAP:  # the flows-batch form (JSON starts with a character)
            batch = _decode_flows_msgpack(value)
        else:
            batch = _decode_flows_json(value)
    if batch is None:
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

    def number(self) -> bytes:
        """The next tag (this process's records to svctrace.flows are numbered in the order they
        are sent), for a record whose objects are not kept: one for a partition another worker
        reads, or a progress record. The worker knows from the numbers when its stitch stage has
        read back everything it sent to a partition (Worker._direct_partitions)."""
        self.seq += 1
        return b"%s:%d" % (self.token, self.seq)

    def keep(self, batch: dict) -> bytes:
        """Remember `batch`; returns the tag to send in its record's HANDOFF_HEADER."""
        tag = self.number()
        self.batches[tag] = batch
        self.events += len(batch["events"])
        while self.events > self.max_events and self.batches:
            self.events -= len(self.batches.pop(next(iter(self.batches)))["events"])
        return tag

    @staticmethod
    def tag_of(headers) -> bytes | None:
        """A record's tag (HANDOFF_HEADER), whoever sent it."""
        for k, v in (headers.items() if hasattr(headers, "items") else headers or ()):
            if k == HANDOFF_HEADER:
                return bytes(v)
        return None

    def number_of(self, headers) -> int | None:
        """The number of a record this process sent (None: another process's, or untagged)."""
        tag = self.tag_of(headers)
        if tag is None:
            return None
        token, _, seq = tag.partition(b":")
        return int(seq) if token == self.token else None

    def take(self, headers) -> dict | None:
        """The batch a record with these headers carries, if this process kept it (once)."""
        for k, v in (headers.items() if hasattr(headers, "items") else headers or ()):
            if k == HANDOFF_HEADER:
                batch = self.batches.pop(bytes(v), None)
                if batch is not None:
                    self.events -= len(batch["events"])
                return batch
        return None


APPLIED_HEADER = "svctrace-applied"


class AppliedHere:
    """Occurrences the stitch stage applied at once to an alerts partition this worker reads (one
    Kafka hop less between a chain and its alert), while their records still go to the occurrence
    topic: the record carries a tag (APPLIED_HEADER), and when it comes back to this process the
    alerts stage only acknowledges it. Anything else (a record re-read after a restart or a
    rebalance, a tag of another process or forgotten) is applied from the record as before, which
    the alerts stage's dedup by chain id makes exact. Bounded: the oldest tags go first."""

    def __init__(self, max_tags: int = 100_000):
        self.token = os.urandom(6).hex().encode()  # this process: tags never match another's
        self.max_tags = max_tags
        self.tags: dict[bytes, None] = {}
        self.seq = 0

    def keep(self) -> bytes:
        self.seq += 1
        tag = b"%s:%d" % (self.token, self.seq)
        self.tags[tag] = None
        if len(self.tags) > self.max_tags:
            del self.tags[next(iter(self.tags))]
        return tag

    def forget(self, tag: bytes) -> None:
        self.tags.pop(tag, None)

    def clear(self) -> None:
        """Forget every tag: an alerts partition was revoked, and the state those occurrences were
        applied to with it (a partition assigned again restores its last checkpoint)."""
        self.tags.clear()

    def take(self, headers) -> bool:
        """Whether a record with these headers was applied here (true once per tag)."""
        for k, v in (headers.items() if hasattr(headers, "items") else headers or ()):
            if k == APPLIED_HEADER:
                return self.tags.pop(bytes(v), 0) is None
        return False
