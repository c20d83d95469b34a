"""The syscall-columns form of a svctrace.syscalls record: a syscall batch as msgpack columns.

The agents' default form (schemas/syscall-columns.schema.json describes the decoded
document). One msgpack map: the batch's head (node, source, seq, lost) once, `count` events, the
names of the event fields in `fields` order, a `strings` table and one column per field:

* a column is either an array of `count` values (one per event, in order) or a single value, the
  value of every event (node, redacted, container_id ... are mostly constant in a batch);
* the values of a string field (node, comm, kind, syscall, errno, proto, family, role, the IPs, exe,
  container_id) are indexes into `strings` (whose entries are strings, or null for a null value):
  each distinct string of a record is written once, and a reader makes one object of it for all
  its events (the core runs faster on events whose equal strings are one object, see wire.py);
* the payload (`data`) is msgpack bin, not base64.

Readers tell the forms apart by the first byte: a msgpack map (0x80-0x8f, 0xde, 0xdf) is this form,
JSON text starts otherwise (`{`): JSON records of the syscall-batch form are still read.

Written by `encode_columns` (the agent, and whoever publishes as the agent does), read by
`decode_columns` (the worker's wire.decode_syscall_batch, and models.decode_batch).
"""
from __future__ import annotations

import sys
from dataclasses import MISSING, fields
from itertools import chain, count as _count, repeat, starmap
from operator import itemgetter as _itemgetter
from typing import Annotated, Any, Literal, Optional, Union, get_args, get_type_hints

import msgspec

from svctrace.schemas.models import _MSGPACK_MAP, DecodeError, EventKind, Family, Proto, Role, SyscallEvent

SCHEMA = "svctrace.syscall-columns"
VERSION = 1
FIELDS = tuple(SyscallEvent.__struct_fields__)
MSGPACK_MAP = _MSGPACK_MAP  # a msgpack map's first byte (no JSON text's)

_hints = get_type_hints(SyscallEvent)
_DEFAULTS = {f.name: f.default for f in fields(SyscallEvent) if f.default is not MISSING}
_ENUMERATED = {"kind": EventKind, "proto": Proto, "family": Family, "role": Role}
_STRING_TYPES = (str, Optional[str], *_ENUMERATED.values(), *(Optional[t] for t in _ENUMERATED.values()))
STRING_FIELDS = tuple(name for name in FIELDS if _hints[name] in _STRING_TYPES)
_STRING_AT = tuple(FIELDS.index(name) for name in STRING_FIELDS)
# the other columns that may be one value for all events: not ts, the first (always per event, see decode_columns)
_OTHER_AT = tuple(i for i in range(1, len(FIELDS)) if i not in _STRING_AT)
_REQUIRED_STRINGS = frozenset(name for name in STRING_FIELDS if name not in _DEFAULTS)
# the enumerations' strings as the interned objects of SyscallEvent's annotations (as msgspec hands them back
# decoding the JSON form): the core compares kinds and protocols with these very objects
LITERALS = {sys.intern(v): sys.intern(v) for t in _ENUMERATED.values() for v in get_args(t)}

_Index = Annotated[int, msgspec.Meta(ge=0)]


def _column_type(name: str):
    """A field's column: an array of its values (string fields: indexes into `strings`), or one value."""
    value = _Index if name in STRING_FIELDS else _hints[name]
    return Union[list[value], value]


_COLUMN_TYPES = {name: _column_type(name) for name in FIELDS}


class _Head(msgspec.Struct, gc=False):
    schema: Literal["svctrace.syscall-columns"]
    version: Literal[1]
    node: str
    source: str
    seq: int
    count: _Index
    fields: list[str]
    strings: list[Optional[str]]
    columns: msgspec.Raw  # read once `fields` says how
    lost: int = 0


_head = msgspec.msgpack.Decoder(_Head)
_columns = msgspec.msgpack.Decoder(tuple[tuple(_COLUMN_TYPES[name] for name in FIELDS)])
# A record of this version's fields in one pass (the Raw columns of _Head cost a pass of their own to skip):
# tried first; anything it refuses (another version's fields, a bad record) is read again by _Head.
_COLUMNS_HERE = tuple[tuple(_COLUMN_TYPES[name] for name in FIELDS)]
_whole = msgspec.msgpack.Decoder(msgspec.defstruct("_Whole", [
    ("schema", Literal["svctrace.syscall-columns"]), ("version", Literal[1]), ("node", str), ("source", str),
    ("seq", int), ("count", _Index), ("fields", list[str]), ("strings", list[Optional[str]]),
    ("columns", _COLUMNS_HERE), ("lost", int, 0)], gc=False))
_raw_columns = msgspec.msgpack.Decoder(list[msgspec.Raw])
_column_of = {name: msgspec.msgpack.Decoder(t) for name, t in _COLUMN_TYPES.items()}
_encoder = msgspec.msgpack.Encoder()
_astuple = msgspec.structs.astuple


def encode_columns(node: str, source: str, seq: int, lost: int, events: list) -> bytes:
    """SyscallEvents -> a svctrace.syscalls record of the syscall-columns form. Every step is a C loop
    over the events (astuple, zip, dict.fromkeys, map): ~0.5 us per event against ~6 us for the JSON
    of each event (orjson on the Struct)."""
    n = len(events)
    doc = {"schema": SCHEMA, "version": VERSION, "node": node, "source": source, "seq": seq, "lost": lost,
           "count": n, "fields": FIELDS}
    if not n:
        doc["strings"], doc["columns"] = [], [[]] * len(FIELDS)
        return _encoder.encode(doc)
    columns = list(zip(*map(_astuple, events)))
    strings = dict.fromkeys(chain.from_iterable(columns[i] for i in _STRING_AT))
    index = dict(zip(strings, _count()))
    for i in _STRING_AT:
        col = columns[i]
        first = col[0]
        columns[i] = index[first] if col.count(first) == n else _itemgetter(*col)(index)  # (n > 1 here)
    for i in _OTHER_AT:
        col = columns[i]
        first = col[0]
        if col.count(first) == n:
            columns[i] = first
    doc["strings"] = list(strings)
    doc["columns"] = columns
    return _encoder.encode(doc)


def _field_of(error: msgspec.MsgspecError, names) -> str:
    """msgspec's message, its `$.columns[i]...` path naming the field."""
    text = str(error)
    if "$[" in text:
        at = text.index("$[") + 2
        end = text.index("]", at)
        try:
            i = int(text[at:end])
            text = f"{text[:at - 2]}$.columns[{i}]{text[end + 1:]} (field {names[i]})"
        except (ValueError, IndexError):
            pass
    return text


def decode_columns(raw: bytes, shared: dict) -> tuple[_Head, list]:
    """A record of the syscall-columns form -> (its head, its SyscallEvents); DecodeError naming what is wrong.
    Each distinct string of the record is one object, taken from `shared` (shared.setdefault: equal strings
    of other records too; the caller bounds it), the enumerated ones the interned literals."""
    cols = None
    try:
        h = _whole.decode(raw)
        if h.fields == _FIELD_LIST:
            cols = h.columns
    except msgspec.MsgspecError:
        pass
    if cols is None:  # another version's fields, or a record to refuse: the head alone first
        try:
            h = _head.decode(raw)
        except msgspec.MsgspecError as e:
            raise DecodeError(f"svctrace.syscall-columns record: {e}") from None
    names, n = h.fields, h.count
    if n > len(raw):  # each event takes a byte at least (ts: never one value for all): no record of 1e9 events
        raise DecodeError(f"svctrace.syscall-columns record: {n} events in {len(raw)} bytes (field $.count)")
    literal, keep = LITERALS.get, shared.setdefault
    table = [s if s is None else (literal(s) or keep(s, s)) for s in h.strings]
    try:
        if cols is not None:
            pass
        elif names == _FIELD_LIST:
            cols = _columns.decode(h.columns)
        else:  # another version's fields: by name, a field this one does not know ignored
            raws = _raw_columns.decode(h.columns)
            if len(raws) != len(names):
                raise DecodeError(f"svctrace.syscall-columns record: {len(names)} fields but {len(raws)} columns "
                                  "(field $.columns)")
            by_name = {}
            for name, r in zip(names, raws):
                if name in _column_of:
                    try:
                        by_name[name] = _column_of[name].decode(r)
                    except msgspec.MsgspecError as e:
                        raise DecodeError(f"svctrace.syscall-columns record: {e} (field $.columns, {name})") from None
            missing = [name for name in FIELDS if name not in by_name and name not in _DEFAULTS]
            if missing:
                raise DecodeError(f"svctrace.syscall-columns record: no column of the required field {missing[0]} "
                                  "(field $.fields)")
            cols = []
            for name, is_str in zip(FIELDS, _IS_STRING):
                col = by_name.get(name, _MISSING)
                if col is _MISSING:  # a field the writer did not know: its default
                    col = _DEFAULTS[name]
                    if is_str:
                        table.append(col)
                        col = len(table) - 1
                cols.append(col)
            names = FIELDS
    except msgspec.MsgspecError as e:
        raise DecodeError(f"svctrace.syscall-columns record: {_field_of(e, names)}") from None
    nulls = [i for i, s in enumerate(table) if s is None]
    its = []
    for name, col, is_str in zip(FIELDS, cols, _IS_STRING):
        if col.__class__ is list:
            if len(col) != n:
                raise DecodeError(f"svctrace.syscall-columns record: column {name} has {len(col)} values for "
                                  f"{n} events (field $.columns)")
            if is_str:
                if nulls and name in _REQUIRED_STRINGS and any(k in col for k in nulls):
                    raise DecodeError(f"svctrace.syscall-columns record: a null {name} (field $.columns, {name})")
                try:  # (one C call: fewer instructions than map(table.__getitem__, col))
                    its.append(_itemgetter(*col)(table) if n > 1 else [table[i] for i in col])
                except IndexError:
                    raise DecodeError(f"svctrace.syscall-columns record: a string index past the {len(table)} strings "
                                      f"(field $.columns, {name})") from None
            else:
                its.append(col)
        else:
            if is_str:
                if col >= len(table) or (table[col] is None and name in _REQUIRED_STRINGS):
                    raise DecodeError(f"svctrace.syscall-columns record: bad string index {col} for {name} "
                                      "(field $.columns)")
                col = table[col]
            its.append(repeat(col, n))
    return h, list(starmap(SyscallEvent, zip(*its)))


_IS_STRING = tuple(name in STRING_FIELDS for name in FIELDS)
_FIELD_LIST = list(FIELDS)
_MISSING = object()


def to_document(raw: bytes) -> dict[str, Any]:
    """A record of this form as the document its schema describes (for validation and inspection)."""
    return msgspec.msgpack.decode(raw)


def record_document(raw: bytes) -> tuple[str, dict[str, Any]]:
    """A svctrace.syscalls record of either form -> (its schema's name, its document): ("syscall-columns",
    the decoded msgpack) or ("syscall-batch", the JSON)."""
    if raw and raw[0] in MSGPACK_MAP:
        return "syscall-columns", to_document(raw)
    import orjson

    return "syscall-batch", orjson.loads(raw)
