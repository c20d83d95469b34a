"""The enrich stage's intake and the in-process runner's clock: an in-order list joins the
buffer at once, anything else event by event, with the same state either way; the runner's
event-time clock (the enrich stage's newest_ts) is the largest ts fed, however it came."""
from __future__ import annotations

import random
from dataclasses import replace

from svctrace.schemas.models import SyscallBatch
from svctrace.streams.core import Graph, Runner, run
from tests.scenario import MS, S, T0, Cluster, Scenario, renumber


def _events(mode: str = "userspace"):
    cluster = Cluster()
    sc = Scenario(cluster, mode)
    for i in range(12):
        sc.request(T0 + i * 500 * MS, "healthy")
    return cluster, renumber(sc.events())


def _buffered(graph: Graph, node: str, calls) -> dict:
    st = graph.enrich.new_state()
    for value in calls:
        graph.enrich.process(st, node, value)
    return st


def test_an_in_order_list_is_buffered_as_event_by_event():
    cluster, events = _events()
    node_events = [e for e in events if e.node == "node-a"]
    graph = Graph(cluster.index())
    at_once = _buffered(graph, "node-a", [node_events])
    one_by_one = _buffered(graph, "node-a", [[e] for e in node_events])
    from_a_generator = _buffered(graph, "node-a", [iter(node_events)])
    assert at_once["buf"] == node_events
    assert one_by_one == at_once and from_a_generator == at_once
    assert at_once["unsorted"] is False


def test_a_list_out_of_order_or_with_a_repeat_is_noted_as_such():
    cluster, events = _events()
    node_events = [e for e in events if e.node == "node-a"]
    graph = Graph(cluster.index())
    swapped = node_events[:3] + [node_events[4], node_events[3]] + node_events[5:]
    repeated = node_events[:5] + [node_events[4]] + node_events[5:]
    for arrival in (swapped, repeated):
        st = _buffered(graph, "node-a", [arrival])
        assert st["buf"] == arrival and st["unsorted"] is True


def test_the_runner_clock_is_the_largest_ts_fed_in_any_order_and_form():
    cluster, events = _events()
    rng = random.Random(7)
    shuffled = events[:]
    rng.shuffle(shuffled)
    head, tail = shuffled[: len(shuffled) // 2], shuffled[len(shuffled) // 2:]
    batch = SyscallBatch(node=tail[0].node, source="test", seq=1,
                         events=[e for e in tail if e.node == tail[0].node])
    runner = Runner(cluster.index(), step_events=10**9)  # no step until asked
    runner.feed(head)
    runner.step()
    assert runner.clock == max(e.ts for e in head)
    runner.feed([batch])
    runner.step()
    assert runner.clock == max(e.ts for e in head + batch.events)
    runner.feed([e for e in tail if e.node != tail[0].node])
    runner.step()
    assert runner.clock == max(e.ts for e in events)
    late = [e for e in events if e.ts < runner.clock - 3 * S]  # behind every watermark now
    assert late
    runner.feed(late)
    runner.step()
    assert runner.clock == max(e.ts for e in events)  # a late event never moves it back
    assert runner.finish().stats["late"] >= len(late)


def test_runs_fed_in_order_in_one_go_or_in_small_steps_agree():
    cluster, events = _events()
    by_id = lambda result: sorted(result.chains, key=lambda c: c["chain_id"])  # noqa: E731 (emission order follows steps)
    whole = run(events, cluster.index())
    assert len(whole.chains) == 12 and whole.stats["late"] == 0
    for step in (1, 7, 64):
        assert by_id(run(events, cluster.index(), step_events=step)) == by_id(whole)


def test_each_flows_batch_is_a_run_of_one_node_with_its_highest_n():
    from svctrace.streams.core.enrich import FLOWS_TOPIC
    from svctrace.streams.core.enriched import EnrichedEvent, EventRun

    cluster, events = _events()
    graph = Graph(cluster.index())
    for node in ("node-a", "node-b"):
        node_events = [e for e in events if e.node == node]
        st = _buffered(graph, node, [node_events])
        out = graph.enrich.flush(st, node)
        runs = [value["events"] for topic, _key, value in out if topic == FLOWS_TOPIC]
        assert runs and sum(map(len, runs)) == len(node_events)
        for run in runs:
            assert run.__class__ is EventRun and run.node == node
            assert all(d.__class__ is EnrichedEvent and d.ev.node == node for d in run)
            assert [(d.ev.ts, d.ev.n) for d in run] == sorted((d.ev.ts, d.ev.n) for d in run)
            assert run.top == max(d.ev.n for d in run)
        assert st["nmax"] == max(e.n for e in node_events)


def _vip_table_kept(graph: Graph, st: dict) -> None:
    """vipc is in time order and holds exactly the VIP connects of the proxy window before wm (as the
    filter of every entry it replaced would have left it)."""
    times = list(st["vipc"].values())
    assert times == sorted(times)
    assert all(ts >= st["wm"] - graph.enrich.proxy_window_ns for ts in times)


def test_vip_connects_stay_in_time_order_and_expire_from_the_front():
    cluster, events = _events()
    node = "node-a"
    node_events = [e for e in events if e.node == node]
    graph = Graph(cluster.index())
    st = graph.enrich.new_state()
    seen = set()
    for i in range(0, len(node_events), 7):  # many small advances, as a live worker makes
        chunk = node_events[i:i + 7]
        graph.enrich.process(st, node, chunk)
        graph.enrich.advance(st, node, chunk[-1].ts - 100 * MS)
        _vip_table_kept(graph, st)
        seen.update(st["vipc"])
    assert seen  # (the userspace scenario's clients connect to a VIP)


def test_a_reused_port_moves_to_the_end_and_an_older_table_is_put_in_order():
    cluster, events = _events()
    node = "node-a"
    graph = Graph(cluster.index())
    vip_connects = []
    st = graph.enrich.new_state()
    for e in (e for e in events if e.node == node):
        graph.enrich.process(st, node, [e])
        before = dict(st["vipc"])
        graph.enrich.advance(st, node, e.ts + 1)
        if st["vipc"].keys() - before.keys():
            vip_connects.append(e)
    assert len(vip_connects) >= 3
    again = replace(vip_connects[0], ts=st["wm"] + 10 * MS, n=st["nmax"] + 1)  # its client port once more
    graph.enrich.process(st, node, [again])
    graph.enrich.advance(st, node, again.ts + 1)
    assert list(st["vipc"].values())[-1] == again.ts and list(st["vipc"].values()) == sorted(st["vipc"].values())
    # a table written before it was kept in order (a reused port kept its first place): restored in order
    older = dict(reversed(list(st["vipc"].items())))
    restored = graph.enrich.restore({**graph.enrich.durable(st), "vipc": older})
    assert restored["vipc"] == st["vipc"] and list(restored["vipc"].items()) == sorted(older.items(), key=lambda kv: kv[1])
    _vip_table_kept(graph, restored)
