"""Runner parity: outputs do not depend on how far each advance moves the watermark.

A worker catching up advances its stages in one big jump; `svctrace analyze` every few
thousand events; a live worker every fraction of a second. Timers (a connection's idle
timeout, the settle time after a close or a response, an unclaimed lookup's timeout)
fire at their own deadline, before any event at or after it is applied, so all of them
give the same chains and alerts.
"""
from __future__ import annotations

from pathlib import Path

import pytest

from svctrace.agents.scap import open_capture
from svctrace.analyze.pipeline import load_cluster_file
from svctrace.streams.core import Graph, Settings, run
from svctrace.streams.core.enrich import FLOWS_TOPIC
from svctrace.streams.core.stitch import CHAINS_TOPIC, OCCURRENCES_TOPIC
from svctrace.streams.metadata.index import ClusterIndex
from tests.scenario import FAULTS, MODES, MS, S, T0, US, Cluster, Scenario

SEED = Path(__file__).resolve().parent.parent / "examples" / "seed"
ONE_JUMP = 10**9  # step_events: the runner advances once, at the end of input


def _canonical(result):
    return (sorted(result.chains, key=lambda c: c["chain_id"]), sorted(result.alerts, key=lambda a: a["alert_id"]))


def _both_ways(events, index, settings=None):
    """(every event its own step, one jump): each RunResult."""
    small = run(events, index, settings, step_events=1)
    big = run(events, index, settings, step_events=ONE_JUMP)
    return small, big


def _idle_between_events(mode):
    """A VIP connect never accepted and closed 127 s later (seed fault 3): the 30 s idle
    timer falls between the two events; later traffic keeps the watermark moving."""
    cluster = Cluster("rules_flushed")
    sc = Scenario(cluster, mode)
    sc.request(T0, "rules_flushed")
    sc.request(T0 + 60 * S, "rules_flushed")
    return cluster, sc.events()


def _lookup_timeout_between_events(mode):
    """A lookup answered, then (13 s later, past the 12 s lookup timeout) the same process
    connects to the answer: the lookup expires unclaimed between the two."""
    cluster = Cluster()
    sc = Scenario(cluster, mode)
    pod = cluster.pods["client"]
    curl = sc.proc("client", "curl")
    svc = cluster.services["my-nginx"]
    t = sc.lookup(T0, curl, pod.ip, "my-nginx.default.svc.cluster.local", [svc.cluster_ip])
    c = dict(proto="tcp", role="client", local_ip=pod.ip, local_port=sc.port())
    vip = dict(addr_ip=svc.cluster_ip, addr_port=svc.port, remote_ip=svc.cluster_ip, remote_port=svc.port)
    sc.ev(t + 13 * S, curl, "connect", "connect", 4, -111, **vip, **c)
    sc.ev(t + 13 * S + 50 * US, curl, "close", "close", 4, 0, **c)
    sc.request(T0 + 20 * S, "healthy")  # and a whole request after it, from the same pod
    return cluster, sc.events()


@pytest.mark.parametrize("mode", MODES)
def test_idle_timeout_between_two_events_fires_before_the_later_one(mode):
    cluster, events = _idle_between_events(mode)
    small, big = _both_ways(events, cluster.index())
    assert _canonical(big) == _canonical(small)
    assert len(small.chains) == 2
    for chain in small.chains:
        # idle-closed at connect + 30 s: the client's close 127 s later is not in the chain
        assert chain["status"] == "broken" and chain["response"]["error"] == "connection timed out"
        assert chain["end_ts"] - chain["start_ts"] < 30 * S, chain
        assert not any(r["what"] == "client close" for r in chain["evidence"]), chain["evidence"]
    assert {a["rule"] for a in small.alerts} == {"svc.translation_missing"}


@pytest.mark.parametrize("mode", MODES)
def test_lookup_timeout_between_two_events_fires_before_the_later_one(mode):
    cluster, events = _lookup_timeout_between_events(mode)
    small, big = _both_ways(events, cluster.index())
    assert _canonical(big) == _canonical(small)
    # the expired lookup is a chain of its own; the late connect has no DNS part
    assert len(small.chains) == 3
    lookups_alone = [c for c in small.chains if c["dns"] and not c["connect"]]
    assert len(lookups_alone) == 1
    late_connect = [c for c in small.chains if c["connect"] and c["connect"]["res"] == -111]
    assert len(late_connect) == 1 and late_connect[0]["dns"] is None, late_connect


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("fault", FAULTS)
def test_every_scenario_gives_the_same_outputs_in_one_jump_or_event_by_event(fault, mode):
    cluster = Cluster(fault)
    sc = Scenario(cluster, mode)
    for i in range(3):
        sc.request(T0 + i * 40 * S, fault)  # 40 s apart: idle and settle timers between requests
    sc.request(T0 + 41 * S, fault)
    if fault in ("healthy", "host_resolver", "rules_flushed"):
        sc.keepalive(T0 + 2 * S, statuses=(200, 503, 200), response_delay_ns=3 * S)  # settle between responses
    small, big = _both_ways(sc.events(), cluster.index())
    assert small.chains and _canonical(big) == _canonical(small)


def test_seed_capture_gives_the_same_outputs_in_one_jump_or_event_by_event():
    index = ClusterIndex.from_records(load_cluster_file(str(SEED / "cluster.json")))
    events = list(open_capture(SEED / "capture.scap"))
    small, big = _both_ways(events, index)
    assert len(small.chains) >= 6 and _canonical(big) == _canonical(small)
    steps = run(events, index, step_events=7)
    assert _canonical(steps) == _canonical(small)


def test_stitch_operator_emits_the_same_sequence_whatever_the_watermark_steps():
    """One bucket's stitch state, advanced once to the end or to every event's ts in turn:
    the same outputs in the same order (timers fire at their own deadlines)."""
    cluster = Cluster("rules_flushed")
    sc = Scenario(cluster, "dnat")
    sc.request(T0, "rules_flushed")
    sc.keepalive(T0 + 10 * S, statuses=(200, 503), response_delay_ns=3 * S)
    sc.request(T0 + 50 * S, "rules_flushed")
    lk_proc = sc.proc("client", "dig")
    sc.lookup(T0 + 51 * S, lk_proc, cluster.pods["client"].ip, "example.com", ["93.184.216.34"])
    index = cluster.index()
    graph = Graph(index, Settings())
    batches = {}
    for node in sorted({e.node for e in sc.events()}):
        st = graph.enrich.new_state()
        graph.enrich.process(st, node, [e for e in sc.events() if e.node == node])
        for topic, key, value in graph.enrich.flush(st, node):
            if topic == FLOWS_TOPIC:
                batches.setdefault(key, []).append(value)
    assert batches

    def drive(key, marks):
        stitch = Graph(index, Settings()).stitch
        st = stitch.new_state()
        for b in batches[key]:
            stitch.process(st, key, b)
        out = []
        for wm in marks:
            out += stitch.advance(st, key, wm)
        out += stitch.flush(st, key)
        return [(t, k, v) for t, k, v in out if t in (CHAINS_TOPIC, OCCURRENCES_TOPIC)]

    for key, bs in batches.items():
        times = sorted({d.ev.ts for b in bs for d in b["events"]})
        one_jump = drive(key, [times[-1] + 1])
        every_event = drive(key, [t + 1 for t in times])
        at_every_event = drive(key, times)  # exactly at the events: the tie rule
        flush_only = drive(key, [])  # a shell's end-of-input flush with everything still buffered
        assert one_jump and every_event == one_jump and at_every_event == one_jump and flush_only == one_jump
