"""The objects a chain record is made of in the stitch stage, as msgspec Structs rather than dicts.

A Struct is one object (a dict is two: its keys' table apart), not tracked by the cycle collector (gc=False),
made by its C __init__ from values in field order, and msgspec writes its keys pre-encoded. Each writes the very
bytes of the dict it replaces (its fields are the dict's keys, in the schema's order): msgspec as a Struct
(wire.encode_chain, a worker's), and orjson a `Ref` as the dataclass it also is (`_dataclass_fields`, as
SyscallEvent: checkpoints hold refs).

* `Ref`: an event ref, which event (node, n), when (ts) and what it showed. The stitch stage keeps one per event
  it keeps as evidence (~10 per chain), in its state: a checkpoint writes it as before, and gives it back as a
  dict (the stitch stage takes either: stitch._dedup_refs). What leaves the core as objects (an in-process
  chain record, an alert occurrence) has dicts (`as_dict`), as before.

Not a compiled module: its classes are msgspec's, made by its metaclass.
"""
from __future__ import annotations

import msgspec

from svctrace.schemas.models import _dataclass_fields


class Ref(msgspec.Struct, frozen=True, gc=False):
    node: str
    n: int
    ts: int
    what: str

    def __getitem__(self, name: str):  # read access in the dict's terms (tests, tools): ref["ts"]
        return getattr(self, name)


_dataclass_fields(Ref)


def as_dict(r) -> dict:
    """A ref (a Ref, or a dict as a checkpoint gives it back) -> the dict of the chain record's schema."""
    if r.__class__ is Ref:
        return {"node": r.node, "n": r.n, "ts": r.ts, "what": r.what}
    return r


def as_ref(r) -> Ref:
    """A ref (a dict as a checkpoint gives it back, or a Ref) -> a Ref."""
    if r.__class__ is Ref:
        return r
    return Ref(r["node"], r["n"], r["ts"], r["what"])
