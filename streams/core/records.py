"""The objects a chain record is made of in the stitch stage, as msgspec Structs rather than dicts.

A Struct is one object (a dict is two: its keys' table apart), not tracked by the cycle collector (gc=False),
made by its C __init__ from values in field order, and msgspec writes its keys pre-encoded. Each writes the very
bytes of the dict it replaces (its fields are the dict's keys, in the schema's order): msgspec as a Struct
(wire.encode_chain, a worker's), `to_builtins` as that dict (the in-process runner's records are dicts), and orjson
a `Ref` as the dataclass it also is (`_dataclass_fields`, as SyscallEvent: checkpoints hold refs).

* `Ref`: an event ref, which event (node, n), when (ts) and what it showed. The stitch stage keeps one per event
  it keeps as evidence (~10 per chain), in its state: a checkpoint writes it as before, and gives it back as a
  dict (the stitch stage takes either: stitch._dedup_refs). What leaves the core as objects (an in-process
  chain record, an alert occurrence) has dicts (`as_dict`, `to_builtins`), as before.
* `Hop`, `Response`, `Endpoint`, `Connect`, `DnsOut`, `ChainRecord`: a chain record's hops, its response, its
  endpoints (client, proxy, backend, DNS server), its connect, its "dns", the record itself. The stitch stage
  shares a connection's (and memoizes server-side endpoints) across records: all but Response are frozen.

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


class Hop(msgspec.Struct, frozen=True, gc=False, omit_defaults=True):
    """A chain record's hop (records share a connection's: frozen). `floor`, written only when true: the wait
    went on past its end (the idle timeout ended the chain with the client still waiting)."""
    name: str
    start_ts: int
    end_ts: int
    latency_ns: int
    floor: bool = False


class Response(msgspec.Struct, gc=False):
    """A chain record's response (its error set once the outcome is known)."""
    protocol: str | None
    method: str | None
    target: str | None
    host: str | None
    status: int | None
    bytes_sent: int
    bytes_received: int
    error: str | None


class Endpoint(msgspec.Struct, frozen=True, gc=False):
    """A chain record's endpoint (client, proxy, backend, DNS server): records share them (frozen)."""
    ip: str | None
    port: int | None
    pod: str | None
    namespace: str | None
    node: str | None
    container_id: str | None
    pid: int | None
    comm: str | None


class Connect(msgspec.Struct, frozen=True, gc=False):
    """A chain record's connect: the address asked for, the result, when."""
    ip: str | None
    port: int | None
    res: int | None
    errno: str | None
    ts: int | None


class DnsOut(msgspec.Struct, frozen=True, gc=False):
    """A chain record's "dns": the lookup its connection claimed (or the chain's own)."""
    qname: str
    qtype: str | None
    resolver_ip: str
    resolver_port: int | None
    resolver_is_cluster_dns: bool
    server: Endpoint | None
    rcode: str | None
    answers: list
    cnames: list
    ttl: int | None
    latency_ns: int | None
    retries: int
    queries: int


class ChainRecord(msgspec.Struct, gc=False):
    """A chain record (svctrace.chain) with its fields in the schema's order; its parts are dicts and the
    Structs above. Not tracked by the cycle collector: nothing it holds refers back to it."""
    schema: str
    version: int
    chain_id: str
    status: str
    incomplete_reason: str | None
    start_ts: int
    end_ts: int
    client: Endpoint
    dns: DnsOut | None
    service: dict | None
    connect: Connect | None
    translation: dict | None
    backend: Endpoint | None
    response: Response | None
    hops: list
    alerts: list
    evidence: list


to_builtins = msgspec.to_builtins  # a record of Structs -> the dicts and lists they write
