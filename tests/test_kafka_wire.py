"""The worker's codecs (streams/faust_app/wire.py): the fast syscall-batch decoder agrees with
schemas.models.decode_batch and rejects what it rejects with its reason (and wrong types with one naming
the field); the enriched-batch encoder writes the very bytes of schemas.models.dumps; flows records
(the flows-batch form, and the enriched-batch JSON of older workers) decode to the enrich stage's
objects; the local handoff."""
import asyncio

import orjson
import pytest

from svctrace.schemas.models import DecodeError, SyscallBatch, decode_batch, encode_batch
from svctrace.streams.core import Graph, Settings
from svctrace.streams.core.enrich import FLOWS_TOPIC as FLOWS
from svctrace.streams.faust_app.wire import decode_syscall_batch
from tests import scenario


def _batches():
    cluster, events = scenario.build("wrong_port", "userspace", requests=20)
    by_node: dict[str, list] = {}
    for e in events:
        by_node.setdefault(e.node, []).append(e)
    return cluster, [SyscallBatch(node=n, source="scap", seq=0, events=evs, lost=3) for n, evs in by_node.items()]


def test_decoder_gives_the_same_events_as_the_schema_decoder():
    _, batches = _batches()
    for b in batches:
        raw = encode_batch(b)
        assert decode_syscall_batch(raw) == decode_batch(raw) == b
        assert any(e.data for e in decode_syscall_batch(raw).events)  # payloads come back as bytes
    doc = orjson.loads(encode_batch(batches[0]))
    for e in doc["events"]:  # a writer that leaves optional fields out
        for name in ("exe", "netns", "cgroup_id", "data", "redacted"):
            e.pop(name, None)
    raw = orjson.dumps(doc)
    assert decode_syscall_batch(raw) == decode_batch(raw)


@pytest.mark.parametrize("raw, reason", [
    (b"{not json", "not JSON"),
    (b'{"schema": "other"}', "$.schema"),
    (b'{"schema": "svctrace.syscall-batch", "version": 9}', "$.version"),
    (b'{"schema": "svctrace.syscall-batch", "version": 1, "node": "n", "source": "s", "seq": 0}', "$.events"),
    (b'{"schema": "svctrace.syscall-batch", "version": 1, "node": "n", "source": "s", "seq": 0, '
     b'"events": [{"ts": 1}]}', "$.events"),
    (b'{"schema": "svctrace.syscall-batch", "version": 1, "node": "n", "source": "s", "seq": 0, '
     b'"events": [7]}', "$.events"),
])
def test_decoder_rejects_bad_records_naming_the_field(raw, reason):
    with pytest.raises(DecodeError, match=reason.replace("$", r"\$")):
        decode_syscall_batch(raw)


def test_decoder_refuses_wrong_types_naming_the_field_and_ignores_unknown_event_fields():
    _, batches = _batches()
    doc = orjson.loads(encode_batch(batches[0]))
    doc["events"][3]["ts"] = "yesterday"
    with pytest.raises(DecodeError, match=r"\$\.events\[3\]\.ts"):
        decode_syscall_batch(orjson.dumps(doc))
    doc = orjson.loads(encode_batch(batches[0]))
    doc["events"][0]["data"] = "QUJD!!!!"  # the schema decoder (binascii) skips the "!"s
    with pytest.raises(DecodeError, match=r"\$\.events\[0\]\.data"):
        decode_syscall_batch(orjson.dumps(doc))
    doc = orjson.loads(encode_batch(batches[0]))
    doc["events"][0]["from_a_newer_agent"] = 1  # an optional field added later: the event still counts
    assert decode_syscall_batch(orjson.dumps(doc)) == batches[0]


def test_decoded_events_share_equal_strings_and_read_values_no_enumeration_knows():
    from svctrace.streams.faust_app import wire

    _, batches = _batches()
    raw = encode_batch(batches[0])
    first, again = decode_syscall_batch(raw).events, decode_syscall_batch(raw).events
    assert first == again == batches[0].events
    for a, b in zip(first, again):  # one object per value, across records
        for name in ("node", "comm", "syscall", "local_ip", "remote_ip", "container_id"):
            assert getattr(a, name) is getattr(b, name), name
        assert a.kind is {"connect": "connect", "accept": "accept", "send": "send", "recv": "recv",
                          "close": "close"}[a.kind]  # the interned literal the core compares with
    doc = orjson.loads(raw)
    doc["events"][0]["kind"] = "splice"  # a kind (or proto, family, role) a newer agent may send
    doc["events"][1]["proto"] = "sctp"
    raw = orjson.dumps(doc)
    events = decode_syscall_batch(raw).events
    assert events == decode_batch(raw).events and (events[0].kind, events[1].proto) == ("splice", "sctp")
    assert events[2].local_ip is first[2].local_ip  # shared on that path too


def test_shared_strings_are_bounded(monkeypatch):
    from svctrace.streams.faust_app import wire

    _, batches = _batches()
    raw = encode_batch(batches[0])
    monkeypatch.setattr(wire, "_SHARED_MAX", 3)
    decode_syscall_batch(raw)
    assert len(wire._shared) > 3
    assert decode_syscall_batch(raw).events == batches[0].events  # emptied first, then filled again
    assert len(wire._shared) <= len(set(v for e in batches[0].events for v in
                                        (e.node, e.comm, e.syscall, e.errno, e.local_ip, e.remote_ip, e.addr_ip,
                                         e.exe, e.container_id))) + 1 + len(wire.LITERALS)  # (+ the enumerations')


# -- the syscall-columns form (msgpack), the agents' default ----------------------------------

def _columns(b) -> bytes:
    from svctrace.agents.agent.pipeline import encode_syscall_batch

    return encode_syscall_batch(b)  # the agents' own encoder, their default form


def test_columns_records_decode_to_the_events_of_the_json_form_their_strings_shared():
    from svctrace.schemas.syscall_columns import LITERALS

    _, batches = _batches()
    for b in batches:
        raw = _columns(b)
        assert raw[0] in range(0x80, 0x90)
        assert decode_syscall_batch(raw) == decode_syscall_batch(encode_batch(b)) == decode_batch(raw) == b
        assert any(e.data for e in decode_syscall_batch(raw).events)
    events = decode_syscall_batch(_columns(batches[0])).events
    again = decode_syscall_batch(encode_batch(batches[0])).events
    for a, b in zip(events, again):  # one object per value, whichever form a record came in
        for name in ("node", "comm", "syscall", "local_ip", "remote_ip", "container_id", "kind", "proto"):
            assert getattr(a, name) is getattr(b, name), name
        assert a.kind is LITERALS[a.kind]
    odd = [e.with_(kind="splice") if i == 0 else e.with_(proto="sctp") if i == 1 else e
           for i, e in enumerate(batches[0].events)]  # values a newer agent may send
    got = decode_syscall_batch(_columns(SyscallBatch("n", "scap", 1, odd))).events
    assert got == odd and (got[0].kind, got[1].proto) == ("splice", "sctp")
    empty = SyscallBatch("n", "ebpf", 4, [], lost=9)
    assert decode_syscall_batch(_columns(empty)) == empty


def test_columns_of_another_agent_version_are_read_by_field_name():
    import msgspec

    _, batches = _batches()
    doc = msgspec.msgpack.decode(_columns(batches[0]))
    names, cols = doc["fields"], doc["columns"]
    i = names.index("exe")
    del names[i], cols[i]  # an older agent's: no exe (an optional field: its default)
    names.append("from_a_newer_agent")  # a newer agent's field: ignored
    cols.append([1] * doc["count"])
    names.insert(0, names.pop(names.index("ts")))  # any order
    got = decode_syscall_batch(msgspec.msgpack.encode(doc)).events
    assert got == [e.with_(exe=None) for e in batches[0].events]
    i = names.index("pid")
    del names[i], cols[i]  # a required field missing
    with pytest.raises(DecodeError, match="required field pid"):
        decode_syscall_batch(msgspec.msgpack.encode(doc))


def _spoilt(batch, spoil) -> bytes:
    import msgspec

    doc = msgspec.msgpack.decode(_columns(batch))
    spoil(doc, lambda name: doc["fields"].index(name))
    return msgspec.msgpack.encode(doc)


def _set(doc, at, name, value):
    doc["columns"][at(name)] = value


@pytest.mark.parametrize("spoil, reason", [
    (lambda d, at: d.update(schema="svctrace.other"), r"\$.schema"),
    (lambda d, at: d.update(version=2), r"\$.version"),
    (lambda d, at: d.pop("count"), "count"),
    (lambda d, at: (d.update(count=10**9), [_set(d, at, name, d["columns"][at(name)][0]) for name in d["fields"]
                                            if isinstance(d["columns"][at(name)], list)]), r"events in \d+ bytes"),
    (lambda d, at: _set(d, at, "ts", d["columns"][at("ts")][:-1]), "column ts has"),
    (lambda d, at: _set(d, at, "ts", ["yesterday"] * d["count"]), r"\$.columns\[0\]\[0\]` \(field ts\)"),
    (lambda d, at: _set(d, at, "comm", [len(d["strings"]) + 5] * d["count"]), "string index"),
    (lambda d, at: _set(d, at, "comm", [0, len(d["strings"]) + 5] * (d["count"] // 2)), "past the .* strings .*comm"),
    (lambda d, at: _set(d, at, "comm", [-1] * d["count"]), r"\(field comm\)"),
    (lambda d, at: (d["strings"].append(None), _set(d, at, "syscall", len(d["strings"]) - 1)), "syscall"),
    (lambda d, at: _set(d, at, "data", "not bytes"), r"\(field data\)"),
])
def test_columns_records_are_refused_with_a_reason_naming_what_is_wrong(spoil, reason):
    _, batches = _batches()
    raw = _spoilt(batches[0], spoil)
    with pytest.raises(DecodeError, match=reason):
        decode_syscall_batch(raw)
    with pytest.raises(DecodeError, match=reason):
        decode_batch(raw)


def test_columns_records_validate_with_the_cli_and_bad_ones_are_named(tmp_path, capsys):
    from types import SimpleNamespace

    from svctrace.schemas import cli_validate

    _, batches = _batches()
    good, bad = tmp_path / "good.msgpack", tmp_path / "bad.msgpack"
    good.write_bytes(_columns(batches[0]))
    bad.write_bytes(_spoilt(batches[0], lambda d, at: _set(d, at, "n", [1, 2])))
    for schema in ("syscall-batch", "syscall-columns", "auto"):
        assert cli_validate.run(SimpleNamespace(schema=schema, files=[good])) == 0
    assert cli_validate.run(SimpleNamespace(schema="auto", files=[bad])) == 1
    assert "column n has 2 values" in capsys.readouterr().err


def test_event_maker_sharing_makes_make_events_events():
    from dataclasses import astuple

    from svctrace.schemas.models import event_maker_sharing, make_event

    _, batches = _batches()
    shared: dict = {}
    make = event_maker_sharing(shared, ["local_ip", "comm"])
    made = [make(*astuple(e)) for e in batches[0].events]
    assert made == [make_event(*astuple(e)) for e in batches[0].events] == batches[0].events
    assert {e.local_ip for e in made} <= shared.keys() and {e.comm for e in made} <= shared.keys()
    assert not {e.syscall for e in made} & shared.keys() - {e.comm for e in made} - {e.local_ip for e in made}
    with pytest.raises(ValueError, match="not SyscallEvent fields"):
        event_maker_sharing(shared, ["ip"])


def test_event_maker_reading_makes_the_events_of_the_values_it_reads():
    from dataclasses import astuple, fields

    import msgspec

    from svctrace.schemas.models import SyscallEvent, event_maker_reading, make_event
    from svctrace.streams.faust_app import wire

    _, batches = _batches()
    events = [e for b in batches for e in b.events]
    structs = [wire._SyscallEventWire(*astuple(e)) for e in events]  # what the decoder reads them from
    shared: dict = {}
    make = event_maker_reading(shared, ["node", "local_ip", "errno", "comm"])
    made = [make(s) for s in structs]
    assert made == [make_event(*astuple(e)) for e in events] == events
    assert all(m.__class__ is SyscallEvent for m in made)
    again = [make(msgspec.json.decode(msgspec.json.encode(s), type=wire._SyscallEventWire)) for s in structs]
    for a, b in zip(made, again):  # new strings of equal values: the first ones again
        assert a.node is b.node and a.local_ip is b.local_ip and a.comm is b.comm
        assert a.remote_ip is not b.remote_ip or a.remote_ip is None  # not a shared field
    assert {e.local_ip for e in events} - {None} <= shared.keys()
    assert None not in shared  # an optional field's None is not looked up
    with pytest.raises(ValueError, match="not SyscallEvent fields"):
        event_maker_reading(shared, ["ip"])
    assert wire._SyscallEventWire.__struct_fields__ == tuple(f.name for f in fields(SyscallEvent))


def test_event_sharer_shares_the_strings_of_decoded_events_in_place():
    import msgspec

    from svctrace.schemas.models import SyscallEvent, event_sharer

    _, batches = _batches()
    events = [e for b in batches for e in b.events]
    decode = msgspec.json.Decoder(list[SyscallEvent]).decode
    raw = msgspec.json.encode(events)
    shared: dict = {}
    share = event_sharer(shared, ["node", "local_ip", "errno"])
    first = decode(raw)
    assert share(first) is first and first == events
    again = share(decode(raw))
    assert again == events
    for a, b in zip(first, again):  # new strings of equal values: the first ones again
        assert a.node is b.node and a.local_ip is b.local_ip
        assert a.comm is not b.comm  # not a shared field
    assert {e.local_ip for e in events} - {None} <= shared.keys() and None not in shared
    with pytest.raises(ValueError, match="not SyscallEvent fields"):
        event_sharer(shared, ["ip"])


def test_record_encoder_writes_the_bytes_of_the_schema_encoder():
    from svctrace.schemas.models import dumps
    from svctrace.streams.core.alerts import ALERTS_TOPIC
    from svctrace.streams.core.stitch import CHAINS_TOPIC, OCCURRENCES_TOPIC
    from svctrace.streams.faust_app.wire import encode_record

    seen = {CHAINS_TOPIC: 0, OCCURRENCES_TOPIC: 0, ALERTS_TOPIC: 0}
    for fault in scenario.FAULTS:
        for mode in scenario.MODES:
            cluster, events = scenario.build(fault, mode, requests=3)
            graph = Graph(cluster.index(), Settings())
            enrich, stitch, alerts = graph.enrich.new_state(), {}, {}
            outs = graph.enrich.process(enrich, "n", events) + graph.enrich.flush(enrich, "n")
            while outs:
                topic, key, value = outs.pop(0)
                if topic in seen:
                    assert encode_record(value) == dumps(value), (fault, mode, topic)
                    seen[topic] += 1
                op, states = {FLOWS: (graph.stitch, stitch), OCCURRENCES_TOPIC: (graph.alerts, alerts)}.get(topic, (None, None))
                if op is not None:
                    st = states.setdefault(key, op.new_state())
                    outs += op.process(st, key, value) + op.flush(st, key)
    assert all(n >= 10 for n in seen.values()), seen
    odd = {"s": "ctl \x00\x1f \" \\ / \u2028 \ud7ff é 😀", "n": [0, -1, 2**63 - 1, -2**63], "b": b"\x00\xff",
           "t": True, "z": None, "d": {"": []}}
    assert encode_record(odd) == dumps(odd)


def test_stitch_stage_writes_each_chain_as_the_record_encoder_would():
    """A worker's stitch stage gives its chains as their record bytes (Stitcher.encode_chain), written as each
    is made: the same outputs, in the same order, as the dicts' encode_record, and the same bytes."""
    from svctrace.schemas.models import dumps
    from svctrace.streams.core.stitch import CHAINS_TOPIC
    from svctrace.streams.faust_app.wire import encode_chain

    def stitch_outs(fault, mode, encode):
        cluster, events = scenario.build(fault, mode, requests=3)
        graph = Graph(cluster.index(), Settings())
        graph.stitch.encode_chain = encode
        enrich, stitch = graph.enrich.new_state(), {}
        found = []
        for topic, key, value in graph.enrich.process(enrich, "n", events) + graph.enrich.flush(enrich, "n"):
            if topic == FLOWS:
                st = stitch.setdefault(key, graph.stitch.new_state())
                found += graph.stitch.process(st, key, value)
                found += graph.stitch.advance(st, key, events[-1].ts - 10 * scenario.S)  # some chains before the flush
        for key, st in stitch.items():
            found += graph.stitch.flush(st, key)
        return found

    chains = 0
    for fault in scenario.FAULTS:
        for mode in scenario.MODES:
            as_dicts, as_bytes = stitch_outs(fault, mode, None), stitch_outs(fault, mode, encode_chain)
            assert [(t, k) for t, k, _ in as_bytes] == [(t, k) for t, k, _ in as_dicts], (fault, mode)
            for (topic, _, d), (_, _, b) in zip(as_dicts, as_bytes):
                if topic == CHAINS_TOPIC:
                    assert d.__class__ is dict and b.__class__ is bytes and b == dumps(d), (fault, mode)
                    chains += 1
                else:
                    assert b == d, (fault, mode, topic)  # occurrences stay dicts (the alerts stage applies them)
    assert chains >= 40, chains


def _enriched_batches(requests: int = 20):
    """The enrich stage's svctrace.flows and svctrace.events.enriched batches (EnrichedEvents)."""
    cluster, batches = _batches()
    graph = Graph(cluster.index(), Settings(emit_enriched=True))
    state = graph.enrich.new_state()
    for b in batches:
        graph.enrich.process(state, b.node, b)
    return [value for topic, _key, value in graph.enrich.flush(state, "node")]


def test_enriched_batch_encoder_writes_the_bytes_of_the_schema_encoder():
    from dataclasses import replace

    from svctrace.schemas.models import dumps
    from svctrace.streams.core.enriched import EnrichedEvent
    from svctrace.streams.faust_app.wire import encode_enriched_batch

    batches = _enriched_batches()
    assert any(e.ev.data for b in batches for e in b["events"])  # payloads (base64) included
    for batch in batches:
        assert encode_enriched_batch(batch) == dumps(batch)
    # Strings that need escaping, and text that looks like the join point, inside values.
    e = next(e for b in batches for e in b["events"] if e.ev.data and e.local_ref)
    odd = EnrichedEvent(replace(e.ev, comm='x},{"flow":"y\\"\n\u00e9\u2028\x01', data=b'},{"flow":'),
                        '},{"flow":', {**e.local_ref, "name": '"},{"flow":'}, None, None, {"ip": "1.2.3.4", "port": 5})
    batch = {"schema": "svctrace.enriched-batch", "version": 1, "events": [odd, e, odd],
             "lost": [{"node": "n", "ts": 1, "count": 2}]}
    assert encode_enriched_batch(batch) == dumps(batch)
    assert orjson.loads(encode_enriched_batch(batch))["events"][0]["comm"] == odd.ev.comm
    # One event; the head's keys on either side of the events, with a control character in a value.
    for other in ({"schema": "svctrace.enriched-batch", "version": 1, "events": [odd]},
                  {"lost": [{"node": "\x01", "ts": 1, "count": 2}], "events": [e, odd], "schema": "s\x01"}):
        assert encode_enriched_batch(other) == dumps(other)
    for other in ({"schema": "svctrace.enriched-batch", "version": 1, "events": []},
                  {"schema": "svctrace.enriched-batch", "version": 1, "events": [e, {"ts": 1}]}):
        assert encode_enriched_batch(other) == dumps(other)  # nothing to splice: the plain encoder


def test_enriched_batch_encoder_writes_each_events_own_enrichment_when_they_share_refs():
    """The encoder writes an enrichment once per distinct (flow, refs, proxy_of) in a record and
    reuses it for events carrying the very same objects: events that differ in any one of them
    (an equal flow string that is another object, a ref equal in content but another dict, the
    same refs with another flow or proxy_of) still get their own values."""
    from svctrace.schemas.models import dumps
    from svctrace.streams.core.enriched import EnrichedEvent
    from svctrace.streams.faust_app.wire import encode_enriched_batch

    evs = [e.ev for b in _enriched_batches() for e in b["events"]][:12]
    pod = {"kind": "pod", "namespace": "default", "name": "client", "node": "node-a"}
    svc = {"kind": "service", "namespace": "default", "name": "my-nginx", "port_name": "http", "target_port": 80}
    flow = "10.0.0.7"
    variants = [(flow, pod, svc, None, None), (flow, pod, svc, None, None),  # the previous event's objects
                ("".join(["10.0.0.", "7"]), pod, svc, None, None),  # an equal flow, another object
                ("10.0.0.8", pod, svc, None, None),  # another flow, same refs
                (flow, dict(pod), svc, None, None),  # an equal ref, another object
                (flow, {**pod, "name": "other"}, svc, None, None),
                (flow, pod, None, svc, None), (flow, pod, svc, None, {"ip": "10.0.0.9", "port": 80}),
                (flow, pod, svc, None, None),  # back to the first: the record's first encoding again
                (None, None, None, None, None), (None, None, None, None, None), (flow, pod, svc, None, None)]
    events = [EnrichedEvent(ev, *v) for ev, v in zip(evs, variants)]
    batch = {"schema": "svctrace.enriched-batch", "version": 1, "events": events}
    raw = encode_enriched_batch(batch)
    assert raw == dumps(batch)
    assert [(d["flow"], d["local_ref"], d["remote_ref"], d["addr_ref"], d["proxy_of"])
            for d in orjson.loads(raw)["events"]] == [tuple(v) for v in variants]


def test_flows_batch_records_read_back_as_the_enrich_stage_made_them():
    """svctrace.flows records of the flows-batch form (msgpack): every bucket's batch of a release
    reads back equal (events, refs, losses); each ref object is written once per record; the form
    is what its schema says; a batch holding something else than EnrichedEvents goes as JSON."""
    import msgspec

    from svctrace.schemas.models import dumps
    from svctrace.schemas.validation import validate
    from svctrace.streams.core.enriched import EnrichedEvent
    from svctrace.streams.faust_app.wire import LocalHandoff, encode_flows_batch, read_flows_record

    handoff = LocalHandoff()
    batches = _enriched_batches()
    assert any(b["events"] for b in batches) and any(e.ev.data for b in batches for e in b["events"])
    lost = [{"node": "node-a", "ts": 5, "count": 2}]
    for batch in [*batches, {**batches[1], "lost": lost}, {**batches[1], "events": [], "lost": lost}]:
        raw = encode_flows_batch(batch)
        doc = msgspec.msgpack.decode(raw)
        assert doc["schema"] == "svctrace.flows-batch"
        refs = {id(r): r for e in batch["events"] for r in (e.local_ref, e.remote_ref, e.addr_ref)}
        assert len(doc["refs"]) == len(refs)  # each ref once
        validate("flows-batch", {**doc, "events": [[None if isinstance(v, bytes) else v for v in row]
                                                  for row in doc["events"]]})  # (JSON has no bytes)
        decoded = read_flows_record(raw, [], handoff)
        if batch["events"] or batch.get("lost"):
            assert decoded == batch and all(e.__class__ is EnrichedEvent for e in decoded["events"])
            assert decoded.get("lost") == batch.get("lost")
        else:
            assert decoded is None  # nothing but the head: progress
    e = batches[1]["events"][0]
    mixed = {**batches[1], "events": [e, {"ts": 1}]}
    assert encode_flows_batch(mixed) == dumps(mixed)  # not only EnrichedEvents: the enriched-batch JSON


def test_flows_batch_rows_of_another_worker_version_are_read_by_field_name():
    """A newer worker's rows carry a field this one does not know (ignored), an older one's lack
    one (its default); a malformed record is refused naming what is wrong."""
    import msgspec

    from svctrace.streams.faust_app.wire import LocalHandoff, encode_flows_batch, read_flows_record

    handoff = LocalHandoff()
    batch = next(b for b in _enriched_batches() if b["events"])
    doc = msgspec.msgpack.decode(encode_flows_batch(batch))
    newer = {**doc, "fields": ["added_later", *doc["fields"]], "events": [["x", *row] for row in doc["events"]]}
    assert read_flows_record(msgspec.msgpack.encode(newer), [], handoff) == batch
    i = doc["fields"].index("netns")  # always None here: an older writer without it reads the same
    older = {**doc, "fields": doc["fields"][:i] + doc["fields"][i + 1:],
             "events": [row[:i] + row[i + 1:] for row in doc["events"]]}
    assert read_flows_record(msgspec.msgpack.encode(older), [], handoff) == batch
    for bad, reason in (({**doc, "enrichment": doc["enrichment"][1:]}, "enrichment rows"),
                        ({**doc, "refs": []}, "ref index"),
                        ({**doc, "enrichment": [[r[0], -1, *r[2:]] for r in doc["enrichment"]]}, r"\$\.enrichment"),
                        ({**doc, "events": [[str(row[0]), *row[1:]] for row in doc["events"]]}, r"\$\[0\]"),
                        ({**doc, "version": 2}, r"\$\.version")):
        with pytest.raises(DecodeError, match=reason):
            read_flows_record(msgspec.msgpack.encode(bad), [], handoff)


def test_flows_batch_rows_share_strings_and_read_values_no_enumeration_knows():
    """Rows decode with the enumerated fields as the interned literals and the other strings shared
    across records; a kind (or proto ...) outside the schema's enumeration still reads back."""
    import msgspec

    from svctrace.streams.faust_app.wire import LocalHandoff, encode_flows_batch, read_flows_record

    handoff = LocalHandoff()
    batch = next(b for b in _enriched_batches() if b["events"])
    raw = encode_flows_batch(batch)
    first, again = read_flows_record(raw, [], handoff)["events"], read_flows_record(raw, [], handoff)["events"]
    assert first == again == batch["events"]
    for a, b in zip(first, again):
        assert a.ev.local_ip is b.ev.local_ip and a.ev.node is b.ev.node and a.ev.comm is b.ev.comm
        assert a.ev.kind is {"connect": "connect", "accept": "accept", "send": "send", "recv": "recv",
                             "close": "close"}[a.ev.kind]
    doc = msgspec.msgpack.decode(raw)
    kind, proto = doc["fields"].index("kind"), doc["fields"].index("proto")
    doc["events"][0][kind] = "splice"
    doc["events"][1][proto] = "sctp"
    events = read_flows_record(msgspec.msgpack.encode(doc), [], handoff)["events"]
    assert (events[0].ev.kind, events[1].ev.proto) == ("splice", "sctp")
    assert [e.ev.with_(kind=b.ev.kind, proto=b.ev.proto) for e, b in zip(events, batch["events"])] == \
        [b.ev for b in batch["events"]]
    assert events[2].ev.local_ip is first[2].ev.local_ip  # shared on that path too


def test_flows_records_decode_to_the_enrich_stage_objects():
    from svctrace.streams.faust_app.wire import LocalHandoff, encode_enriched_batch, read_flows_record

    handoff = LocalHandoff()
    batches = [b for b in _enriched_batches() if b["events"]]
    assert batches
    for batch in batches:
        decoded = read_flows_record(encode_enriched_batch(batch), [], handoff)
        assert decoded == batch  # EnrichedEvents equal to the enrich stage's, same head and losses
    # A malformed event: the stage gets the dicts (and dead-letters just that one).
    doc = orjson.loads(encode_enriched_batch(batches[0]))
    del doc["events"][1]["node"]
    decoded = read_flows_record(orjson.dumps(doc), [], handoff)
    assert "node" not in decoded["events"][1] and decoded["events"][0].__class__ is dict


def test_enriched_events_decode_like_the_core_and_bad_ones_are_refused():
    from svctrace.schemas.models import dumps
    from svctrace.streams.core.enriched import from_wire
    from svctrace.streams.faust_app.wire import decode_enriched_events

    cluster, batches = _batches()
    graph = Graph(cluster.index(), Settings())
    state = graph.enrich.new_state()
    outs = []
    for b in batches:
        graph.enrich.process(state, b.node, b)
    outs = graph.enrich.flush(state, "node")
    wire = [orjson.loads(dumps(value)) for topic, _key, value in outs if topic == "svctrace.flows"]
    assert wire and any(batch["events"] for batch in wire)
    for batch in wire:
        expected = [from_wire(dict(d)) for d in batch["events"]]
        assert decode_enriched_events(batch["events"]) == expected
    with pytest.raises(DecodeError, match=r"\$\.events"):
        decode_enriched_events([{"ts": 1, "flow": "10.0.0.1"}])


def test_local_handoff_gives_each_kept_batch_back_once_and_stays_bounded():
    from svctrace.streams.faust_app.wire import HANDOFF_HEADER, LocalHandoff

    handoff = LocalHandoff(max_events=5)
    a, b = {"events": [1, 2, 3]}, {"events": [4, 5]}
    tag_a, tag_b = handoff.keep(a), handoff.keep(b)
    assert tag_a != tag_b
    assert handoff.take([("svctrace-src", b"3"), (HANDOFF_HEADER, tag_b)]) is b
    assert handoff.take([(HANDOFF_HEADER, tag_b)]) is None  # once: a re-delivered record is decoded
    assert handoff.take({HANDOFF_HEADER: tag_a}) is a  # headers as a mapping too
    assert handoff.take([("svctrace-src", b"3")]) is None and handoff.take(None) is None
    assert handoff.take([(HANDOFF_HEADER, LocalHandoff().keep({"events": []}))]) is None  # another process's tag
    first = handoff.keep({"events": [1, 2, 3]})
    handoff.keep({"events": [4, 5, 6]})  # past max_events: the oldest batch goes
    assert handoff.take([(HANDOFF_HEADER, first)]) is None
    assert handoff.events == 3


def test_local_handoff_numbers_every_record_in_send_order_and_knows_only_its_own():
    from svctrace.streams.faust_app.wire import HANDOFF_HEADER, LocalHandoff

    handoff, other = LocalHandoff(), LocalHandoff()
    kept = handoff.keep({"events": [1]})
    progress = handoff.number()  # a record whose objects are not kept: numbered all the same
    assert handoff.number_of([("svctrace-src", b"3"), (HANDOFF_HEADER, kept)]) == 1
    assert handoff.number_of({HANDOFF_HEADER: progress}) == 2 == handoff.seq
    assert handoff.take([(HANDOFF_HEADER, progress)]) is None  # nothing kept under it
    assert handoff.number_of([(HANDOFF_HEADER, other.number())]) is None  # another process's
    assert handoff.number_of([("svctrace-src", b"3")]) is None and handoff.number_of(None) is None


def test_occurrences_applied_here_are_recognised_once_and_the_tags_stay_bounded():
    from svctrace.streams.faust_app.wire import APPLIED_HEADER, AppliedHere

    applied = AppliedHere(max_tags=2)
    a, b = applied.keep(), applied.keep()
    assert a != b
    assert applied.take([("svctrace-src", b"3"), (APPLIED_HEADER, b)]) is True
    assert applied.take([(APPLIED_HEADER, b)]) is False  # once: a re-delivered record is applied as usual
    assert applied.take({APPLIED_HEADER: a}) is True  # headers as a mapping too
    assert applied.take([(APPLIED_HEADER, AppliedHere().keep())]) is False  # another process's tag
    assert applied.take([("svctrace-src", b"3")]) is False and applied.take(None) is False
    c = applied.keep()
    applied.forget(c)  # not applied after all (its partition moved): the record is applied when read
    assert applied.take([(APPLIED_HEADER, c)]) is False
    first = applied.keep()
    applied.keep(), applied.keep()  # past max_tags: the oldest goes (its record is applied again: dedup)
    assert applied.take([(APPLIED_HEADER, first)]) is False and len(applied.tags) == 2
    d = applied.keep()
    applied.clear()  # an alerts partition revoked: the state it was applied to is gone
    assert applied.take([(APPLIED_HEADER, d)]) is False and not applied.tags


def test_a_flows_record_of_loss_markers_alone_is_data_not_progress():
    """The enrich stage sends a node's losses to every bucket, most of them without events of that
    release: the stitch stage must apply them (its chains overlapping the loss turn incomplete)."""
    from svctrace.schemas.models import dumps
    from svctrace.streams.core.enriched import EnrichedEvent
    from svctrace.streams.faust_app.wire import HANDOFF_HEADER, LocalHandoff, read_flows_record

    handoff = LocalHandoff()
    lost = [{"node": "node-a", "ts": 1_000, "count": 5}]
    losses_only = {"schema": "svctrace.enriched-batch", "version": 1, "events": [], "lost": lost}
    assert read_flows_record(orjson.dumps(losses_only), [], handoff) == losses_only
    assert read_flows_record(orjson.dumps({"schema": "svctrace.enriched-batch", "version": 1, "lost": lost}),
                             [], handoff)["events"] == []
    tag = handoff.keep(losses_only)  # this worker's own record comes back as the same object
    assert read_flows_record(orjson.dumps(losses_only), [(HANDOFF_HEADER, tag)], handoff) is losses_only
    for progress_only in (None, b"", orjson.dumps({"schema": "svctrace.enriched-batch", "version": 1, "events": []})):
        assert read_flows_record(progress_only, [], handoff) is None
    with pytest.raises(ValueError, match="not an object"):
        read_flows_record(b"[1]", [], handoff)

    cluster, events = scenario.build("healthy", "dnat", requests=1)
    enrich = Graph(cluster.index(), Settings(partitions=1)).enrich
    state = enrich.new_state()
    enrich.process(state, "node-a", SyscallBatch(node="node-a", source="scap", seq=0, events=events))
    [batch] = [value for topic, _, value in enrich.flush(state, "node-a") if topic == "svctrace.flows"]
    decoded = read_flows_record(dumps(batch), [], handoff)  # as the worker's route() sends it
    assert all(e.__class__ is EnrichedEvent for e in decoded["events"]) and len(decoded["events"]) == len(events)


def test_an_occurrence_applied_here_is_applied_from_its_record_once_its_alerts_partition_was_revoked():
    """A rebalance that hands an alerts partition back to the same worker restores its last checkpoint:
    occurrences the stitch stage applied to the live state since then come back only as their records,
    which must then be applied, not taken for ones already applied (the alert kept its first count)."""
    from faust.types import TP

    from svctrace.streams.faust_app.app import Worker, WorkerConfig
    from svctrace.streams.faust_app.wire import APPLIED_HEADER

    worker = Worker(WorkerConfig(bootstrap="127.0.0.1:9"))  # builds the app; connects to nothing
    occurrences = worker.t_occ.get_topic_name()
    worker.alerts_reading.update({1, 2})
    applied, kept = worker.applied.keep(), worker.applied.keep()
    assert worker.applied.take([(APPLIED_HEADER, kept)]) is True  # read back before the rebalance
    asyncio.run(worker._on_revoked(None, {TP(occurrences, 1)}))
    assert worker.alerts_reading == {2}
    assert worker.applied.take([(APPLIED_HEADER, applied)]) is False


def test_fetched_zstd_batches_are_read_from_the_decompressed_buffer_itself():
    from aiokafka.record import default_records as chosen
    from aiokafka.record._crecords import default_records

    from svctrace.kafka.clients import read_fetched_zstd_in_place, zstd_decode_reusing
    from svctrace.streams.faust_app import app  # noqa: F401 - the worker does it at import

    read_fetched_zstd_in_place()  # (done once at the worker's import; again is a no-op)
    assert chosen.DefaultRecordBatch is default_records.DefaultRecordBatch  # the C reader the consumer uses
    assert default_records.zstd_decode is zstd_decode_reusing  # kept context, no bytes() copy of its output
    _, batches = _batches()
    values = [encode_batch(b) for b in batches] + [b"", b"x" * 300_000]
    builder = default_records.DefaultRecordBatchBuilder(2, default_records.DefaultRecordBatch.CODEC_ZSTD, 0, -1, -1, -1,
                                                        4 << 20)
    for i, value in enumerate(values):
        assert builder.append(i, 1_700_000_000_000 + i, f"k{i}".encode(), value, [("h", b"v")]) is not None
    raw = bytes(builder.build())
    assert len(raw) < sum(map(len, values)) // 10  # compressed, so decompressed on reading
    read = list(default_records.DefaultRecordBatch(raw))
    assert [(r.offset, r.key, r.value, r.headers) for r in read] == [
        (i, f"k{i}".encode(), v, [("h", b"v")]) for i, v in enumerate(values)]
    assert all(type(r.value) is bytes for r in read)
    assert decode_syscall_batch(read[0].value) == batches[0]


def test_zstd_decode_reusing_reads_every_frame_aiokafka_reads():
    """The kept-context decoder gives cramjam's bytes for what svctrace's producers write (one frame with its
    size), a streaming writer's frame without a size (the Java client's), several frames in one batch, and
    refuses what is not zstd as cramjam does."""
    import threading

    import cramjam
    import pytest
    import zstandard

    from svctrace.kafka.clients import zstd_decode_reusing, zstd_encode_reusing

    _, batches = _batches()
    plain = encode_batch(batches[0])
    sized = zstd_encode_reusing(plain)
    assert zstandard.frame_content_size(sized) == len(plain)
    stream = zstandard.ZstdCompressor(level=3).compressobj()
    unsized = stream.compress(plain) + stream.flush()
    assert zstandard.frame_content_size(unsized) == -1
    two = zstd_encode_reusing(b"first") + zstd_encode_reusing(b"second")
    for frame in (sized, unsized, two, zstd_encode_reusing(b"")):
        assert bytes(zstd_decode_reusing(frame)) == bytes(cramjam.zstd.decompress(frame))
    assert bytes(zstd_decode_reusing(two)) == b"firstsecond"
    for bad in (b"", b"not zstd at all", sized[:-7]):
        with pytest.raises(cramjam.DecompressionError):
            zstd_decode_reusing(bad)
    got = []  # another thread (Faust's consumer thread) has a context of its own
    thread = threading.Thread(target=lambda: got.append(zstd_decode_reusing(sized)))
    thread.start()
    thread.join()
    assert got == [plain]


def test_a_handled_record_lets_go_of_its_bytes_and_a_refused_one_is_dead_lettered_with_them():
    """A worker keeps each input record until a checkpoint acknowledges it (by offset): once handled, its
    value (a syscalls record is ~0.5 MB) is not held that long. One its stage refuses keeps its bytes for the
    dead letter."""
    from types import SimpleNamespace

    from svctrace.streams.faust_app.app import Worker, WorkerConfig

    worker = Worker(WorkerConfig(bootstrap="127.0.0.1:9"))  # builds the app; connects to nothing
    letters = []

    async def dead_letter(stage, msg, reason, error):
        letters.append((stage, msg.value, reason))

    worker._dead_letter = dead_letter

    def record(value):
        msg = SimpleNamespace(topic="t", partition=0, offset=7, key=b"node-a", value=value)
        return SimpleNamespace(message=msg, value=value)

    async def handled(event):
        assert event.message.value == b"data"  # (the handler reads it as it came)

    async def refused(event):
        raise ValueError("not a batch")

    ok, bad = record(b"data"), record(b"junk")
    asyncio.run(worker._guard("enrich", ok, handled))
    asyncio.run(worker._guard("enrich", bad, refused))
    assert ok.message.value is None and ok.value is None
    assert letters == [("enrich", b"junk", "ValueError: not a batch")] and bad.message.value == b"junk"
    assert [p.event for p in worker.enrich.pending[0]] == [bad]  # (a handled one is pending by its handler's word)


_FAULTS_AGAIN = """
import resource, sys
from svctrace.kafka.clients import keep_freed_memory
if sys.argv[1] == "kept":
    assert keep_freed_memory()
def faults():
    return resource.getrusage(resource.RUSAGE_SELF).ru_minflt
for _ in range(3):  # blocks of a fetched record's size, many at once, all freed, then as many again
    held = [bytes(range(256)) * 2048 for _ in range(100)]
    del held
before = faults()
held = [bytes(range(256)) * 2048 for _ in range(100)]
print(faults() - before)
"""


def test_keep_freed_memory_makes_freed_record_buffers_serve_the_next_without_page_faults():
    """The worker's malloc settings (glibc): 100 record-sized blocks (0.5 MB) freed together are taken again
    from memory still mapped, instead of ~128 zeroed pages faulted in per block."""
    import subprocess
    import sys

    faults = {how: int(subprocess.run([sys.executable, "-c", _FAULTS_AGAIN, how], check=True, capture_output=True,
                                      text=True).stdout) for how in ("default", "kept")}
    assert faults["default"] > 100 * 100  # (glibc gives free memory over ~1 MB at a heap's top back)
    assert faults["kept"] < 1000, faults
