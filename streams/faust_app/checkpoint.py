"""The worker's checkpoint records, with a format version.

A stage's changelog holds these records, all JSON: a key's operator state (op.durable(state),
dumps_state; the stitch stage's: a header, and its entries as records of their own, below) and a
partition's progress entry ("#<partition>": its keys, clocks and upstream progress). Each key or
partition record written here starts with its format version:

    {"checkpoint_format":5, ...the state's own fields...}

so a worker can tell a record it cannot read from one it can, instead of misreading it. Records
without the field are format 1: every record written before versions were (their content is
today's, or older forms the operators' restore() still upgrades). A worker that meets a format
it does not know stops (Worker._stop_on_unreadable_checkpoint): the changelog was written by a
newer worker, and only rolling forward or resetting the changelogs can go on from there.

Format 5: the stitch stage's key (a flow bucket) is written in parts (Stitcher.durable_parts): its
record under the key is a header, {"checkpoint_format":5,"parts":<entries>, ...scalars...}, and each
entry (a connection, a lookup key, a DNS server's record) is a record of its own, keyed
`<bucket key>` PART_SEP `<entry key>` (PART_SEP, \x1f, occurs in no stitch key: buckets are "b0007",
partition entries "#7"; an entry key is "c<conn key>", "l<lookup key>" or "s<DNS server key>"; formats 7-8 group the last
two, below), its value the entry's JSON (dumps_part; the stitch stage's the same bytes from msgspec's encoder,
stitch._entry_bytes; no version field: an entry is read only through its bucket's header, whose format it
shares). A checkpoint writes the header and only the
entries that changed, a tombstone for each that went away, and tombstones for all of them when the
bucket goes idle; a bucket's records of one checkpoint go in one producer batch of their changelog
partition (the bucket's; StageShell.write), which Kafka appends whole, so a successor never restores
half of one checkpoint (unless a partition's records of one checkpoint exceed MAX_STATE_BYTES: then
several batches, logged). A format-4 bucket record (the whole durable state) is still read: restored whole, its
next checkpoint writes the header under the same key and every entry. The enrich stage writes whole
records as in format 4 (a node's state is small).

Format 6: the alerts stage's key (rule + labels) is written in parts too (Alerter.durable_parts): its
header holds its suppression windows without their deduplicated chains, and each chain ([ts, evidence
refs], set once) is an entry keyed `<key>` PART_SEP `<window start>:<chain id>`, written once and
tombstoned when its window closes (an alert key is "rule|labels": no PART_SEP either). A window's chains
(up to 10,000) were rewritten whole at every checkpoint that touched its key. An alerts record of an
older format (the whole state) is read and restored whole; its next checkpoint writes it in parts. Stitch
records are format 5's.

Format 7: the stitch stage's DNS server records (never changed in place, leaving in time order) are written
in groups: the records new since the last checkpoint, up to 1000 a group, as one entry keyed
`<bucket key>` PART_SEP `S<group id>` (a JSON object {DNS server key: record}), written once and tombstoned
once every record in it has left the state (the header's "dsg" lists the groups and the time of each one's
newest record, "dso" the time of the oldest record held at the cut: a successor takes each key's newest
record of the groups, none older than that). A format-5 bucket (its records one entry each) is still read:
its next checkpoint writes every entry and tombstones the old ones.

Format 8: the stitch stage's lookup keys are written in groups too: the keys changed since the last checkpoint,
up to 100 a group in their creation order, as one entry keyed `<bucket key>` PART_SEP `L<group id>` (a JSON object
{lookup key: [its number, its lookups]}), written once and tombstoned once no key's newest version is in it (a key
changed again goes in a later group; a successor takes each key's version of the newest group). A key gone while a
group still holds a version of it is listed in the header's "lgx" (and left out by a successor); "lgn" is the last
group id given. A bucket of formats 5-7 (a lookup key an entry "l<lookup key>" each) is still read: its next
checkpoint writes every entry and tombstones the old ones.

Bump CHECKPOINT_FORMAT when what a record holds changes so that this worker could not read
it (a new state layout, a renamed field), and teach the reader the older formats it must go
on reading (an operator's restore() upgrading them). A change an older reader takes as it is
(a new optional field) needs no bump. Workers before format 2 check nothing: they read a
format-2 record as format 1 (same content, one unknown field), and anything newer wrongly.
"""
from __future__ import annotations

import re

import orjson

from svctrace.streams.core import dumps_state, loads_state

FORMAT_FIELD = "checkpoint_format"
UNVERSIONED = 1  # records without FORMAT_FIELD
# What this worker writes. 3: the stitch state's `lost` may hold [node, ts, count, since_ns] (loss
# markers with their window) and the enrich state has `wlost`: a format-2 reader would misread them.
# Formats 1 and 2 hold the same layouts minus those and load as they are. 4: the stitch state's DNS
# lookups, queries, answers, servers' records and a connection's client, connect and lookup summary
# (conn "cl", "cn", "dns") are lists, no "dq" queue, claimed lookups queued apart ("lc"); Stitcher.restore
# upgrades formats 1-3. 5: the stitch state in parts (above); format-4 records load as they are. 6: the alerts
# state in parts (above): a format-5 reader would take a header for a state without chains. 7: the stitch
# state's DNS server records in groups (above): a format-6 reader would restore a bucket without them. 8: the
# stitch state's lookup keys in groups (above): a format-7 reader would restore a bucket without its lookups.
CHECKPOINT_FORMAT = 8
READABLE = frozenset({UNVERSIONED, 2, 3, 4, 5, 6, 7, CHECKPOINT_FORMAT})
PART_SEP = "\x1f"  # <key> PART_SEP <entry key>: the changelog key of one entry of a key's state
PARTS_FIELD = "parts"  # a header's field: how many entries its key's state has

# The version, written first: read without parsing the record (which a newer format may not allow).
_LEADING_FORMAT = re.compile(rb'\{"checkpoint_format":([^,}]*)[,}]')


class CheckpointFormatError(Exception):
    """A changelog record in a format this worker does not read."""

    def __init__(self, found, where: str = "a checkpoint record"):
        self.found, self.where = found, where
        super().__init__(f"{where} has checkpoint format {found!r}; this worker reads formats "
                         f"{', '.join(map(str, sorted(READABLE)))} ({UNVERSIONED}: records without a format)")

    def at(self, where: str) -> "CheckpointFormatError":
        """The same error, saying where the record is."""
        return CheckpointFormatError(self.found, where)


def format_of(raw: bytes):
    """The format a record says it has (UNVERSIONED when it says none); what is no JSON value as text."""
    m = _LEADING_FORMAT.match(raw)
    if m is None:
        return UNVERSIONED
    try:
        return orjson.loads(m.group(1))
    except orjson.JSONDecodeError:
        return m.group(1).decode("utf-8", "replace")


def _readable(found) -> bool:
    return found.__class__ is int and found in READABLE


def _versioned(value: dict) -> dict:
    return {FORMAT_FIELD: CHECKPOINT_FORMAT, **value}


def dumps_checkpoint(state: dict) -> bytes:
    """A key's durable operator state -> its changelog record (dumps_state, versioned)."""
    return dumps_state(_versioned(state))


def dumps_part(entry) -> bytes:
    """One entry of a key's state (durable_parts) -> its changelog record (dumps_state, no version)."""
    return dumps_state(entry)


def loads_part(raw: bytes):
    """An entry's changelog record -> the entry (JSON, for op.restore_parts)."""
    return orjson.loads(raw)


def is_parts_header(value: dict) -> bool:
    """Whether a loaded key record is a header whose entries are records of their own."""
    return PARTS_FIELD in value


def dumps_meta(meta: dict) -> bytes:
    """A partition's progress entry -> its changelog record (versioned)."""
    return orjson.dumps(_versioned(meta))


def _loads(raw: bytes, loads) -> dict:
    found = format_of(raw)
    if not _readable(found):
        raise CheckpointFormatError(found)
    value = loads(raw)
    found = value.pop(FORMAT_FIELD, found)  # also where a writer put it elsewhere than first
    if not _readable(found):
        raise CheckpointFormatError(found)
    return value


def loads_checkpoint(raw: bytes) -> dict:
    """A key's changelog record -> its durable state (for op.restore); CheckpointFormatError if
    its format is not one this worker reads."""
    return _loads(raw, loads_state)


def loads_meta(raw: bytes) -> dict:
    """A partition's changelog record -> its progress entry; CheckpointFormatError as above."""
    return _loads(raw, orjson.loads)
