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
