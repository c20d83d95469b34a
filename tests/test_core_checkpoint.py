"""What a shell (the Faust worker) may rely on to checkpoint and resume the operators:
op.durable(state) / op.restore(...), state["wm"], dumps_state/loads_state across versions,
and alert windows that survive a flush."""
from __future__ import annotations

import orjson

from svctrace.streams.core import Graph, Runner, dumps_state, loads_state, run
from svctrace.streams.core.alerts import ALERTS_TOPIC, Alerter
from svctrace.streams.core.enriched import EnrichedEvent, to_wire
from svctrace.streams.core.graph import SYSCALLS_TOPIC
from svctrace.streams.core.enrich import FLOWS_TOPIC
from svctrace.streams.core.stitch import CHAINS_TOPIC, pending_events
from tests.scenario import MODES, MS, S, T0, Cluster, Scenario, renumber


def _traffic():
    cluster = Cluster("wrong_port")
    events = []
    for m, mode in enumerate(MODES):
        sc = Scenario(cluster, mode)
        for i in range(4):
            sc.request(T0 + m * 20 * S + i * 300 * MS, "wrong_port" if i % 2 else "healthy")
        events += sc.events()
    return cluster, renumber(sorted(events, key=lambda e: e.ts))  # one numbering per node, as a capture


def test_resuming_from_durable_state_and_re_read_input_gives_the_same_records():
    cluster, events = _traffic()
    baseline = run(events, cluster.index())
    assert baseline.chains and baseline.alerts

    half = len(events) // 2
    first = Runner(cluster.index(), step_events=32)
    first.feed(events[:half])
    first.step()
    # on Kafka each stage has its own watermark: let enrich run ahead of stitch
    for node, st in first.states[SYSCALLS_TOPIC].items():
        for out in first.graph.enrich.advance(st, node, first.clock + 1):
            first._route(*out)
    enrich_wm = {node: st["wm"] for node, st in first.states[SYSCALLS_TOPIC].items()}
    assert enrich_wm and all(wm > 0 for wm in enrich_wm.values())
    # what a shell re-reads after a restore: input records not yet acknowledged, i.e. those
    # holding an event at or after the stage's wm (events before it come again: dropped as late)
    stitch_reread = {key: [to_wire(r) for r in pending_events(st)] for key, st in first.states[FLOWS_TOPIC].items()}
    assert any(stitch_reread.values()), "the checkpoint should cut through buffered stitch input"

    second = Runner(cluster.index(), step_events=32)
    for topic, op in second.graph.consumers.items():
        for key, st in first.states[topic].items():
            durable = op.durable(st)
            assert "buf" not in durable and "runs" not in durable
            second.states[topic][key] = op.restore(loads_state(dumps_state(durable)))
    second.clock = first.clock
    second.chains = list(first.chains)
    second.alerts = dict(first.alerts)
    for key, wire_events in stitch_reread.items():
        second._deliver(FLOWS_TOPIC, key, {"schema": "svctrace.enriched-batch", "version": 1, "events": wire_events})
    reread = [e for e in events[:half] if e.ts >= enrich_wm.get(e.node, 0) - 1 * S]
    second.feed(reread + events[half:])
    resumed = second.finish()
    by_id = lambda records: sorted(records, key=lambda r: r["chain_id"])  # noqa: E731 (emission order follows steps)
    assert by_id(resumed.chains) == by_id(baseline.chains)
    assert resumed.alerts == baseline.alerts
    assert sum(st.get("late", 0) for st in second.states[SYSCALLS_TOPIC].values()) == 0  # states deleted at finish


def test_wm_means_every_older_event_was_applied():
    cluster, events = _traffic()
    runner = Runner(cluster.index(), step_events=16)
    runner.feed(events[: len(events) // 3])
    runner.step()
    for topic in (SYSCALLS_TOPIC, FLOWS_TOPIC):
        for st in runner.states[topic].values():
            buffered = [r.ev.ts if isinstance(r, EnrichedEvent) else r.ts for r in
                        (pending_events(st) if topic == FLOWS_TOPIC else st["buf"])]
            assert all(ts >= st["wm"] for ts in buffered)


def test_states_written_by_the_previous_version_still_load():
    cluster, events = _traffic()
    node_a = [e for e in events if e.node == "node-a"][:5]
    old_enrich = {"wm": 0, "buf": [{"__ev__": e.to_dict()} for e in node_a], "vipc": {}, "pin": {}, "pout": {},
                  "reads": {}, "late": 0, "dups": 0, "unsorted": False}
    back = loads_state(orjson.dumps(old_enrich))
    assert back["buf"] == node_a
    # a stitch state of the previous version: plain event dicts in buf, no timer queue
    runner = Runner(cluster.index(), step_events=8)
    runner.feed(events[:60])
    runner.step()
    for key, st in runner.states[FLOWS_TOPIC].items():
        old = orjson.loads(dumps_state({k: v for k, v in st.items() if k not in ("tq", "seq", "runs")}))  # JSON form
        for conn in old["conns"].values():
            conn.pop("seq", None)
        old["buf"] = [to_wire(r) for r in pending_events(st)]  # (a flat list then)
        restored = loads_state(dumps_state(old))
        assert restored["buf"] == pending_events(st)
        runner.states[FLOWS_TOPIC][key] = restored
    runner.feed(events[60:])
    by_id = lambda records: sorted(records, key=lambda r: r["chain_id"])  # noqa: E731
    assert by_id(runner.finish().chains) == by_id(run(events, cluster.index()).chains)


def _occ(ts, chain):
    return {"rule": "svc.target_port_refused", "labels": {"namespace": "default", "service": "my-nginx", "pod": "client",
                                                         "node": "node-a"},
            "ts": ts, "chain_id": chain, "evidence": [{"node": "node-a", "n": 1, "ts": ts, "what": "x"}],
            "vars": {"client": "default/client", "namespace": "default", "service": "my-nginx", "outcome": "x",
                     "vip": "10.96.0.100", "backend": "b", "backend_port": 80}, "in_cluster": True}


def test_an_alert_window_flushed_then_reopened_counts_on_under_the_same_id():
    alerter = Alerter(lateness_ns=10 * S)
    st = alerter.new_state()
    [(topic, aid, opened)] = alerter.process(st, "k", _occ(T0 + 1 * S, "ch-1"))
    assert topic == ALERTS_TOPIC and opened["count"] == 1
    assert alerter.flush(st, "k") == []  # nothing changed since it was emitted
    assert not alerter.is_idle(st)  # the window is kept until end + lateness
    assert alerter.process(st, "k", _occ(T0 + 2 * S, "ch-2")) == []
    assert alerter.process(st, "k", _occ(T0 + 1 * S, "ch-1")) == []  # a duplicate occurrence
    [(_t, aid2, again)] = alerter.flush(st, "k")
    assert aid2 == aid and again["alert_id"] == aid
    assert (again["count"], again["first_seen"], again["last_seen"]) == (2, T0 + 1 * S, T0 + 2 * S)
    assert alerter.flush(st, "k") == []
    # the window expires by event time like any other
    end = opened["first_seen"] - opened["first_seen"] % opened["suppress_ns"] + opened["suppress_ns"]
    assert alerter.advance(st, "k", end + 10 * S) == []
    assert alerter.is_idle(st)
    assert alerter.durable(st) == st == {"w": {}}


def test_state_with_enriched_events_round_trips_through_bytes():
    cluster, events = _traffic()
    graph = Graph(cluster.index())
    stitch_states: dict[str, dict] = {}
    for node in ("node-a", "node-b"):
        st = graph.enrich.new_state()
        graph.enrich.process(st, node, [e for e in events[:40] if e.node == node])
        for topic, key, value in graph.enrich.flush(st, node):
            if topic == FLOWS_TOPIC:
                graph.stitch.process(stitch_states.setdefault(key, graph.stitch.new_state()), key, value)
    assert any(st["runs"] for st in stitch_states.values())
    assert any(r.ev.data for st in stitch_states.values() for r in pending_events(st))
    for st in stitch_states.values():
        back = loads_state(dumps_state(st))
        assert back["runs"] == st["runs"]  # EnrichedEvents, payload bytes included
        assert orjson.loads(dumps_state(back)) == orjson.loads(dumps_state(st))


def test_event_codecs_fast_path_equals_from_dict_and_rejects_what_it_rejects():
    import pytest

    from svctrace.schemas.models import DecodeError, SyscallEvent, decode_batch

    _cluster, events = _traffic()
    for e in events[:200]:
        d = orjson.loads(orjson.dumps(e.to_dict()))
        assert SyscallEvent.from_wire(d) == SyscallEvent.from_dict(d) == e
        slim = {k: v for k, v in d.items() if v is not None or k in ("ts", "node", "n")}
        assert SyscallEvent.from_wire(slim) == SyscallEvent.from_dict(slim)
    with pytest.raises(TypeError, match="unknown field bogus"):
        SyscallEvent.from_wire(dict(events[0].to_dict(), bogus=1))
    with pytest.raises(TypeError, match="missing field"):
        SyscallEvent.from_wire({"ts": 1})
    raw = b'{"schema": "svctrace.syscall-batch", "version": 1, "node": "n", "source": "s", "seq": 0, "events": [7]}'
    with pytest.raises(DecodeError, match=r"\$\.events: an event is not an object"):
        decode_batch(raw)


def test_a_stitch_state_from_json_given_straight_to_advance_goes_on_as_the_original():
    """A stitch state read from JSON (its timer queues' entries come back as lists, the live state's are
    tuples) that restore() did not see: advance takes it as it is and gives the original's chains from
    there on; cut where a bucket holds a lookup and no connection yet (no Conn to upgrade), and later."""
    cluster, events = _traffic()
    graph = Graph(cluster.index())
    stitch = graph.stitch
    flows = []
    for node in sorted({e.node for e in events}):
        st = graph.enrich.new_state()
        graph.enrich.process(st, node, [e for e in events if e.node == node])
        flows += [(key, value) for topic, key, value in graph.enrich.flush(st, node) if topic == FLOWS_TOPIC]
    first_connect = min(e.ts for e in events if e.kind == "connect" and e.proto == "tcp")
    for cut in (first_connect - 1, T0 + 30 * S):
        states: dict[str, dict] = {}
        for key, value in flows:
            stitch.process(states.setdefault(key, stitch.new_state()), key, value)
        before = [out for key, st in states.items() for out in stitch.advance(st, key, cut)]
        copies = {key: loads_state(dumps_state(st)) for key, st in states.items()}
        if cut < first_connect:
            assert before == []
            assert any(st["lq"] and not st["conns"] for st in states.values())  # lookups alone
        assert any(isinstance(x, list) for st in copies.values() for x in st["lq"] + st["lc"] + st["tq"])
        chains = 0
        for key in states:
            original, again = stitch.flush(states[key], key), stitch.flush(copies[key], key)
            assert [orjson.dumps(out) for out in again] == [orjson.dumps(out) for out in original]
            assert all(x.__class__ is tuple for x in copies[key]["lq"] + copies[key]["lc"] + copies[key]["tq"])
            chains += sum(topic == CHAINS_TOPIC for topic, _key, _value in original)
        assert chains
