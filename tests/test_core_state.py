"""Bounded state: every piece of state expires by event time; operators are sans-IO."""
from __future__ import annotations

import ast
from pathlib import Path

from svctrace.schemas.models import SyscallBatch
from svctrace.streams.core import Graph, Runner, dumps_state, loads_state, run
from svctrace.streams.core.keys import flow_bucket
from tests.scenario import FAULTS, MODES, MS, S, T0, Cluster, Scenario

CORE = Path(__file__).resolve().parent.parent / "streams" / "core"


def test_all_state_expires_by_event_time_without_flush():
    for mode in MODES:
        cluster = Cluster()
        sc = Scenario(cluster, mode)
        for i in range(20):
            sc.request(T0 + i * 10 * MS, "healthy")
        sc.keepalive(T0 + 500 * MS)
        # a connection that never closes, and a lookup nobody claims
        sc.lookup(T0 + 600 * MS, sc.proc("client", "dig"), "10.244.1.5", "example.com", ["93.184.216.34"])
        runner = Runner(cluster.index(), step_events=16)
        runner.feed(sc.events())
        runner.step()
        assert any(runner.states.values())
        # only the watermark moves: one hour of event time later nothing is left
        runner.advance(T0 + 3600 * S)
        assert runner.open_state_sizes() == {t: 0 for t in runner.states}, mode
        assert len(runner.chains) == 23  # 20 requests, 2 on the keep-alive connection, 1 lookup


def test_lookups_a_dns_server_view_and_loss_markers_alone_expire_by_event_time():
    """A bucket holding only DNS lookups (a pod that resolves names and connects nowhere), only
    what a DNS server saw (its client's events not captured), or only a loss marker has no
    connection timer: their own timers, not a flush, end them (found: they waited for the flush)."""
    cluster = Cluster()
    sc = Scenario(cluster, "dnat")
    dig = sc.proc("client", "dig")
    for i in range(3):
        sc.lookup(T0 + i * 20 * S, dig, "10.244.1.5", "nothere.default.svc.cluster.local.", [], rcode=3)
    lookups = sc.events()
    server_only = [e for e in lookups if e.comm == "coredns"]
    sc = Scenario(cluster, "dnat")
    sc.loss(T0, "node-a")
    for events, chains in ((lookups, 3), (server_only, 0), (sc.events(), 0)):
        runner = Runner(cluster.index(), step_events=4)
        runner.feed(events)
        runner.step()
        assert any(runner.states.values())
        runner.advance(T0 + 3600 * S)  # only the watermark moves
        assert runner.open_state_sizes() == {t: 0 for t in runner.states}
        assert len(runner.chains) == chains
        assert all(c["status"] == "broken" and c["dns"]["rcode"] == "NXDOMAIN" for c in runner.chains)


def test_open_chains_are_closed_by_the_idle_timeout():
    cluster = Cluster()
    sc = Scenario(cluster, "dnat")
    sc.request(T0, "rules_flushed")  # connect pending; its close comes 127 s later
    events = [e for e in sc.events() if e.kind != "close" or e.proto != "tcp"]
    runner = Runner(cluster.index(), step_events=1)
    runner.feed(events)
    runner.advance(T0 + 10 * S)
    assert runner.chains == []  # not yet: the connect may still complete
    runner.advance(T0 + 60 * S)
    assert [c["status"] for c in runner.chains] == ["broken"]
    assert runner.chains[0]["response"]["error"] == "connection timed out"


def test_late_events_are_counted_and_dropped():
    cluster = Cluster()
    sc = Scenario(cluster, "dnat")
    sc.request(T0, "healthy")
    events = sc.events()
    g = Graph(cluster.index())
    state = g.enrich.new_state()
    g.enrich.process(state, "node-a", [e for e in events if e.node == "node-a"][1:])
    g.enrich.advance(state, "node-a", T0 + 60 * S)
    g.enrich.process(state, "node-a", [e for e in events if e.node == "node-a"][:1])
    assert state["late"] == 1 and state["buf"] == []


def test_batches_with_loss_counts_mark_chains_incomplete():
    cluster = Cluster("wrong_port")
    sc = Scenario(cluster, "socket_lb")
    sc.request(T0, "wrong_port")
    events = sc.events()
    batches = [SyscallBatch(node=node, source="ebpf", seq=i, events=[e for e in events if e.node == node],
                            lost=3 if node == "node-a" else 0)
               for i, node in enumerate(sorted({e.node for e in events}))]
    result = run(batches, cluster.index())
    assert [c["status"] for c in result.chains] == ["incomplete"] and result.alerts == []


def test_state_bytes_round_trip():
    cluster = Cluster()
    sc = Scenario(cluster, "userspace")
    sc.request(T0, "healthy")
    g = Graph(cluster.index())
    st = g.enrich.new_state()
    g.enrich.process(st, "node-a", [e for e in sc.events() if e.node == "node-a"])
    raw = dumps_state(st)
    assert isinstance(raw, bytes)
    back = loads_state(raw)
    assert back["buf"] == st["buf"]  # SyscallEvents, payload bytes included


def test_flow_bucket_is_stable():
    # fixed values: the same on every machine and in every runner (not Python's salted hash)
    assert flow_bucket("10.244.1.5", 12) == flow_bucket("10.244.1.5", 12)
    assert [flow_bucket(ip, 12) for ip in ("10.244.1.5", "10.0.0.11", "node:node-a")] == ["b0001", "b0008", "b0008"]


def test_core_is_sans_io():
    """No Kafka, Faust, sockets, threads or wall clock inside the core."""
    banned_modules = {"faust", "aiokafka", "kafka", "socket", "asyncio", "threading", "time", "datetime", "requests"}
    for path in CORE.glob("*.py"):
        tree = ast.parse(path.read_text())
        for node in ast.walk(tree):
            names = []
            if isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                names = [node.module]
            for name in names:
                assert name.split(".")[0] not in banned_modules, f"{path.name} imports {name}"


def test_every_fault_and_mode_runs_through_the_graph_outputs():
    for fault in FAULTS:
        for mode in MODES:
            cluster = Cluster(fault)
            sc = Scenario(cluster, mode)
            sc.request(T0, fault)
            g = Graph(cluster.index())
            outs = []
            for node in ("node-a", "node-b"):
                st = g.enrich.new_state()
                g.enrich.process(st, node, [e for e in sc.events() if e.node == node])
                outs += g.enrich.flush(st, node)
            assert all(t == "svctrace.flows" and k.startswith("b") for t, k, _v in outs)


def test_enriched_batches_validate_against_the_schema():
    import orjson

    from svctrace.schemas.validation import validate
    from svctrace.streams.core.graph import Settings, encode_value

    for mode in MODES:
        cluster = Cluster()
        sc = Scenario(cluster, mode)
        sc.request(T0, "healthy")
        sc.loss(T0 + 5 * MS, "node-b", 2)
        g = Graph(cluster.index(), Settings(emit_enriched=True))
        outs = []
        for node in ("node-a", "node-b"):
            st = g.enrich.new_state()
            g.enrich.process(st, node, [e for e in sc.events() if e.node == node])
            outs += g.enrich.flush(st, node)
        topics = {t for t, _k, _v in outs}
        assert topics == {"svctrace.flows", "svctrace.events.enriched"}
        for _t, _k, value in outs:
            validate("enriched-batch", orjson.loads(encode_value(value)))
        events = [e for t, _k, v in outs if t == "svctrace.events.enriched" for e in v["events"]]
        kinds = {(e["kind"], (e["addr_ref"] or {}).get("kind")) for e in events}
        assert ("connect", "service") in kinds
        if mode == "userspace":  # the proxy's outbound connection carries the client's endpoint
            tagged = [e for e in events if e["proxy_of"]]
            assert tagged and all(e["comm"] == "hyperkube" and e["flow"] == "10.244.1.5" for e in tagged)


def test_proxy_detected_by_bytes_when_it_dials_after_reading():
    """A proxy whose accepted peer is no known VIP client, that reads, then dials and writes the same bytes."""
    from svctrace.schemas.models import SyscallEvent
    from tests.scenario import REQUEST

    cluster = Cluster()
    g = Graph(cluster.index())
    st = g.enrich.new_state()
    node_ip, client = "10.0.0.11", ("10.244.1.5", 41000)
    common = dict(node="node-a", pid=77, tid=77, comm="socat", proto="tcp", family="ipv4")
    pin = dict(role="server", local_ip=node_ip, local_port=9000, remote_ip=client[0], remote_port=client[1])
    pout = dict(role="client", local_ip=node_ip, local_port=50000, remote_ip="10.244.2.8", remote_port=80,
                addr_ip="10.244.2.8", addr_port=80)
    evs = [
        SyscallEvent(ts=T0, n=1, kind="accept", syscall="accept4", fd=5, res=5, **common, **pin),
        SyscallEvent(ts=T0 + 10, n=2, kind="recv", syscall="read", fd=5, res=len(REQUEST), data=REQUEST, **common, **pin),
        SyscallEvent(ts=T0 + 20, n=3, kind="connect", syscall="connect", fd=6, res=0, **common, **pout),
        SyscallEvent(ts=T0 + 30, n=4, kind="send", syscall="write", fd=6, res=len(REQUEST), data=REQUEST, **common, **pout),
        SyscallEvent(ts=T0 + 40, n=5, kind="close", syscall="close", fd=6, res=0, **common, **pout),
    ]
    g.enrich.process(st, "node-a", evs)
    enriched = [e for _t, _k, v in g.enrich.flush(st, "node-a") for e in v["events"]]
    by_n = {e["n"]: e for e in enriched}
    assert by_n[3]["proxy_of"] is None  # nothing tells yet that this dial forwards anything
    assert by_n[4]["proxy_of"] == {"ip": client[0], "port": client[1]} and by_n[4]["flow"] == client[0]
    assert by_n[5]["proxy_of"] == {"ip": client[0], "port": client[1]}
    assert st["pout"] == {}  # forgotten at close


def test_models_decode_core_records():
    import pytest

    from svctrace.schemas.models import DecodeError, decode_alert, decode_chain, decode_enriched_batch, dumps
    from svctrace.streams.core.graph import encode_value

    cluster = Cluster("wrong_port")
    sc = Scenario(cluster, "userspace")
    sc.request(T0, "wrong_port")
    g = Graph(cluster.index())
    st = g.enrich.new_state()
    g.enrich.process(st, "node-a", [e for e in sc.events() if e.node == "node-a"])
    batch = g.enrich.flush(st, "node-a")[0][2]
    back = decode_enriched_batch(encode_value(batch))
    assert [e["data"] for e in back["events"]] == [e["data"] for e in batch["events"]]
    result = run(sc.events(), cluster.index())
    assert decode_chain(dumps(result.chains[0])) == result.chains[0]
    assert decode_alert(dumps(result.alerts[0])) == result.alerts[0]
    with pytest.raises(DecodeError, match=r"\$\.schema"):
        decode_chain(dumps(result.alerts[0]))
    with pytest.raises(DecodeError, match="not JSON"):
        decode_enriched_batch(b"{")


def test_a_bad_event_goes_to_the_dead_letters_and_the_rest_still_stitches():
    from svctrace.schemas.validation import validate

    cluster = Cluster()
    sc = Scenario(cluster, "dnat")
    sc.request(T0, "healthy")
    sc.request(T0 + 100 * MS, "healthy")
    events = sc.events()
    bad = events[3].with_(res=None, kind="send", proto="tcp", role="client", n=10_000, ts=events[3].ts + 1)
    result = run(sorted(events + [bad], key=lambda e: e.ts), cluster.index())
    assert [c["status"] for c in result.chains] == ["ok", "ok"]
    [dl] = result.deadletters
    validate("dead-letter", dl)
    assert dl["stage"] == "stitch" and dl["topic"] == "svctrace.flows" and "TypeError" in dl["reason"]
    assert dl["ts"] == bad.ts and dl["value_b64"]
    # and a bad occurrence at the alerts stage
    g = Graph(cluster.index())
    [(topic, _k, value)] = g.alerts.process(g.alerts.new_state(), "x|y", {"rule": "no.such_rule", "ts": 5})
    assert topic == "svctrace.deadletter" and value["stage"] == "alerts"


def test_metadata_applied_while_running_is_used_after_metadata_changed():
    from svctrace.streams.core import Settings
    from svctrace.streams.metadata.index import ClusterIndex

    cluster = Cluster()
    sc = Scenario(cluster, "dnat")
    sc.request(T0, "healthy")
    events = sc.events()
    index = ClusterIndex()  # empty: the watcher has not delivered anything yet
    runner = Runner(index, Settings(enrich_lateness_ns=1, stitch_lateness_ns=1), step_events=1)
    runner.feed(events[:3])  # the DNS query is enriched against the empty index
    assert len(runner.graph.enrich.index)
    for record in cluster.records():
        index.apply(record)
    runner.graph.metadata_changed()
    runner.feed(events[3:])
    [chain] = runner.finish().chains
    assert chain["dns"]["resolver_is_cluster_dns"] is True and chain["service"]["name"] == "my-nginx"
    assert chain["status"] == "ok" and chain["client"]["pod"] == "client"


def test_scenario_cluster_records_are_valid_k8s_objects():
    from svctrace.schemas.validation import validate

    for fault in FAULTS:
        records = Cluster(fault).records()
        assert {r["kind"] for r in records} == {"Node", "Pod", "Service", "EndpointSlice"}
        for record in records:
            validate("k8s-object", record)


def test_connections_to_one_service_share_one_svc_record_and_write_it_whole():
    """A conn's svc is replaced, never mutated, so connections to one Service, port and way
    of knowing share one dict (Stitcher._svc_of); a checkpoint still writes it per conn."""
    from svctrace.streams.core import Settings

    cluster = Cluster()
    sc = Scenario(cluster, "dnat")
    for i in range(3):
        sc.request(T0 + i * 100 * MS, "healthy")
    events = sc.events()
    runner = Runner(cluster.index(), Settings(enrich_lateness_ns=1, stitch_lateness_ns=1))
    runner.feed(events)
    runner.step()
    runner.advance(events[-1].ts + 1)  # every event applied, no chain settled yet
    conns = [c for st in runner.states["svctrace.flows"].values() for c in st["conns"].values()]
    assert len(conns) == 3 and conns[0].svc["name"] == "my-nginx" and conns[0].svc["via"] == "vip"
    assert all(c.svc is conns[0].svc for c in conns)
    for st in runner.states["svctrace.flows"].values():
        back = loads_state(dumps_state(st))
        assert [c["svc"] for c in back["conns"].values()] == [c.svc for c in st["conns"].values()]
    chains = runner.finish().chains
    assert len(chains) == 3 and all(c["service"]["name"] == "my-nginx" and c["status"] == "ok" for c in chains)


def test_a_run_raises_the_gen0_threshold_while_it_runs_and_restores_it():
    """run() and a Runner's feed/finish hold the cycle collector's gen-0 threshold at 500k or more
    (runner.fewer_gc_passes; a pass finds next to nothing), and give the caller's back after."""
    import gc

    cluster = Cluster()
    sc = Scenario(cluster, "dnat")
    sc.request(T0, "healthy")
    seen: list[int] = []
    runner = Runner(cluster.index())
    stage = runner.graph.consumers["svctrace.flows"]
    advance = stage.advance

    def recorded_advance(state, key, watermark_ns, final=False):
        seen.append(gc.get_threshold()[0])
        return advance(state, key, watermark_ns, final)

    stage.advance = recorded_advance
    before = gc.get_threshold()
    gc.set_threshold(700, before[1], before[2])
    try:
        runner.feed(sc.events())
        [chain] = runner.finish().chains
        assert gc.get_threshold()[0] == 700
    finally:
        gc.set_threshold(*before)
    assert seen and min(seen) >= 500_000 and chain["status"] == "ok"
