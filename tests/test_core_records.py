"""The stitch stage's record objects (streams/core/records.py) write the bytes of the dicts they replace,
and refs a checkpoint gives back as dicts are taken as Refs are."""
from __future__ import annotations

import orjson

from svctrace.streams.core import stitch
from svctrace.streams.core.graph import dumps_state, loads_state
from svctrace.streams.core.records import Ref, as_dict, as_ref
from svctrace.streams.faust_app.wire import encode_chain, encode_record

REFS = [("node-a", 7, 1_700_000_000_000_000_300, "client close"),
        ("node-b", 3, 1_700_000_000_000_000_100, "backend request"),
        ("node-a", 5, 1_700_000_000_000_000_100, "client request"),
        ("node-a", 5, 1_700_000_000_000_000_100, "client request"),  # the same event twice
        ("node-é", 1, 1_700_000_000_000_000_000, 'dns query "x".default.svc.cluster.local. A')]


def as_dicts():
    return [{"node": node, "n": n, "ts": ts, "what": what} for node, n, ts, what in REFS]


def as_refs():
    return [Ref(node, n, ts, what) for node, n, ts, what in REFS]


def test_a_ref_writes_the_bytes_of_its_dict_in_a_record_and_in_a_checkpoint():
    record_d, record_r = {"evidence": as_dicts()}, {"evidence": as_refs()}
    assert encode_chain(record_r) == encode_chain(record_d) == encode_record(record_d) == orjson.dumps(record_d)
    assert dumps_state(record_r) == dumps_state(record_d)
    # a checkpoint gives them back as dicts, which read as the Refs did
    back = loads_state(dumps_state(record_r))["evidence"]
    assert back == as_dicts()
    assert [as_ref(r) for r in back] == as_refs() and [as_dict(r) for r in as_refs()] == as_dicts()
    assert [r["ts"] for r in as_refs()] == [r["ts"] for r in as_dicts()]


def test_evidence_is_deduplicated_and_ordered_alike_from_refs_dicts_or_both():
    expected = stitch._dedup_refs(as_refs())
    assert [(r.ts, r.node, r.n) for r in expected] == sorted({(ts, node, n) for node, n, ts, _w in REFS})
    assert [r.what for r in expected][:2] == ['dns query "x".default.svc.cluster.local. A', "client request"]
    assert stitch._dedup_refs(as_dicts()) == expected
    mixed = as_refs()[:2] + as_dicts()[2:]  # a restored connection's refs, then new ones
    assert stitch._dedup_refs(mixed) == expected
    no_repeat = as_refs()[:3]
    assert stitch._dedup_refs(no_repeat) == sorted(no_repeat, key=lambda r: (r.ts, r.node, r.n))


def test_a_chain_record_of_structs_writes_the_bytes_of_its_dicts_and_gives_them_as_dicts():
    from svctrace.streams.core.records import ChainRecord, Connect, DnsOut, Endpoint, Hop, Response, to_builtins

    client = {"ip": "10.1.0.5", "port": 40000, "pod": "c", "namespace": "default", "node": "node-a",
              "container_id": None, "pid": 7, "comm": "curl"}
    server = {"ip": "10.96.0.10", "port": 53, "pod": None, "namespace": None, "node": "node-b",
              "container_id": "c0ffee", "pid": 9, "comm": "coredns"}
    dns = {"qname": "web.default.svc.cluster.local", "qtype": "A", "resolver_ip": "10.96.0.10", "resolver_port": 53,
           "resolver_is_cluster_dns": True, "server": server, "rcode": "NOERROR", "answers": ["10.96.1.1"],
           "cnames": [], "ttl": 30, "latency_ns": 1500, "retries": 0, "queries": 1}
    connect = {"ip": "10.96.1.1", "port": 80, "res": -115, "errno": "EINPROGRESS", "ts": 1}
    hops = [Hop("connect", 1, 2, 1), Hop("response", 2, 5, 3)]
    response = Response("http", "GET", "/x", "svc", 200, 80, 120, None)
    response.error = "empty reply"
    record = ChainRecord("svctrace.chain", 1, "ch-1", "ok", None, 1, 5, Endpoint(**client),
                         DnsOut(**dict(dns, server=Endpoint(**server))), None, Connect(**connect),
                         {"mode": "dnat", "confidence": "high", "proxy": None}, Endpoint(**client), response, hops, [],
                         as_refs())
    as_dicts_ = {"schema": "svctrace.chain", "version": 1, "chain_id": "ch-1", "status": "ok", "incomplete_reason": None,
                 "start_ts": 1, "end_ts": 5, "client": client, "dns": dns, "service": None, "connect": connect,
                 "translation": {"mode": "dnat", "confidence": "high", "proxy": None}, "backend": client,
                 "response": {"protocol": "http", "method": "GET", "target": "/x", "host": "svc", "status": 200,
                              "bytes_sent": 80, "bytes_received": 120, "error": "empty reply"},
                 "hops": [{"name": "connect", "start_ts": 1, "end_ts": 2, "latency_ns": 1},
                          {"name": "response", "start_ts": 2, "end_ts": 5, "latency_ns": 3}],
                 "alerts": [], "evidence": as_dicts()}
    assert encode_chain(record) == orjson.dumps(as_dicts_)
    builtins = to_builtins(record)
    assert builtins == as_dicts_ and list(builtins) == list(as_dicts_)
    assert orjson.dumps(builtins) == orjson.dumps(as_dicts_)


def _dedup_by_sorting(refs: list) -> list:
    """_dedup_refs as it was written with sorted(): the order and the refs kept that its insertion sort must give."""
    refs = [as_ref(r) for r in refs]
    by_ts = sorted(refs, key=lambda r: r.ts)
    if len({r.ts for r in refs}) == len(refs):
        return by_ts
    if len({(r.node, r.n) for r in refs}) == len(refs):
        return sorted(refs, key=lambda r: (r.ts, r.node, r.n))
    first = {(r.node, r.n): r for r in reversed(refs)}
    return sorted(first.values(), key=lambda r: (r.ts, r.node, r.n))


def test_evidence_keeps_the_very_refs_and_order_sorting_gave():
    """Random ref lists (runs in and out of order, ties, one event twice, restored dicts among them): the same
    refs, the same objects, in the same order as sorted() by ts (then ts, node, n where two share a time)."""
    import random

    rng = random.Random(8)
    for _ in range(3000):
        refs = [Ref(rng.choice(("node-a", "node-b", "node-c")), rng.randrange(40), 1_700_000_000_000_000_000
                    + rng.randrange(30 if rng.random() < 0.5 else 10**9), rng.choice(("send", "recv")))
                for _ in range(rng.randrange(30))]
        given = list(refs)
        got = stitch._dedup_refs(refs)
        want = _dedup_by_sorting(refs)
        assert len(refs) == len(given) and all(a is b for a, b in zip(refs, given))  # the list given is left as it was
        assert got == want and all(a is b for a, b in zip(got, want))
        if refs:
            mixed = [as_dict(r) if rng.random() < 0.3 else r for r in refs]
            assert stitch._dedup_refs(mixed) == want

