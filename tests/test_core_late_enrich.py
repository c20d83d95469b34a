"""Late events at the enrich stage are losses (rule 5): a chain missing them is "incomplete",
never alerted as broken; a redelivered event (released before) is no loss."""
from __future__ import annotations

from svctrace.streams.core import Graph, Runner, dumps_state, loads_state
from svctrace.streams.core.enrich import FLOWS_TOPIC
from tests.scenario import MS, S, T0, US, Cluster, Proc, Scenario


def _probe(sc: Scenario, t: int, client_pod: str) -> None:
    """`nc -z my-nginx 8080` from client_pod, DNAT'd to my-nginx-2 (node-b): connect, the
    backend's accept, both close. Without the accept it is the flushed-rules signature."""
    cl = sc.cluster
    pod, svc, be = cl.pods[client_pod], cl.services["my-nginx"], cl.pods["my-nginx-2"]
    nc, nginx, port = sc.proc(client_pod, "nc"), Proc(be.node, 8008, "nginx", be.container_id), sc.port()
    c = dict(proto="tcp", role="client", local_ip=pod.ip, local_port=port)
    b = dict(proto="tcp", role="server", local_ip=be.ip, local_port=svc.target_port, remote_ip=pod.ip, remote_port=port)
    vip = dict(remote_ip=svc.cluster_ip, remote_port=svc.port, addr_ip=svc.cluster_ip, addr_port=svc.port)
    sc.ev(t, nc, "connect", "connect", 4, -115, **vip, **c)
    sc.ev(t + 150 * US, nginx, "accept", "accept4", 20, 20, **b)
    sc.ev(t + 300 * US, nc, "close", "close", 4, 0, **c)
    sc.ev(t + 400 * US, nginx, "close", "close", 20, 0, **b)


def _two_probes():
    """A probe from a pod on node-b (the backend's node) at T0, and one from node-a 2.5 s later
    (it moves the runner's clock). Returns the events and node-b's events after the first
    probe's connect: what a lagging node-b delivers after its watermark has passed them."""
    cluster = Cluster()
    sc = Scenario(cluster, "dnat")
    _probe(sc, T0, "other")
    _probe(sc, T0 + 2500 * MS, "client")
    events = sc.events()
    lagging = [e for e in events if e.node == "node-b" and e.ts < T0 + S][1:]
    assert [e.kind for e in lagging] == ["accept", "close", "close"]
    return cluster, events, lagging


def _run_with_late_events(events, late, index, everything_first: bool = False):
    """The other events (or all of them), one step: the watermark passes the late events but
    not yet the first probe's settle; then the late events; then a minute of event time (the
    probe's connection idles out: a live stream has no end of input), then the end."""
    runner = Runner(index)
    runner.feed(events if everything_first else [e for e in events if e not in late])
    runner.step()
    wm = runner.states["svctrace.syscalls"]["node-b"]["wm"]
    assert max(e.ts for e in late) < wm < T0 + 2 * S
    assert runner.chains == []  # the first probe's chain is still open
    runner.feed(late)
    runner.step()
    assert runner.states["svctrace.syscalls"]["node-b"]["late"] == len(late)
    runner.advance(T0 + 60 * S)
    return runner.finish()


def test_a_nodes_events_after_its_watermark_make_the_chain_incomplete_not_broken():
    cluster, events, lagging = _two_probes()
    result = _run_with_late_events(events, lagging, cluster.index())
    first, second = sorted(result.chains, key=lambda c: c["start_ts"])
    assert first["status"] == "incomplete", first
    assert "3 events lost on node node-b" in first["incomplete_reason"]
    assert first["alerts"] == [] and result.alerts == []  # no svc.translation_missing
    assert second["status"] == "ok"  # 2.5 s later: no loss overlaps it


def test_the_same_events_on_time_give_ok_chains():
    cluster, events, _lagging = _two_probes()
    runner = Runner(cluster.index())
    runner.feed(events)
    result = runner.finish()
    assert [c["status"] for c in result.chains] == ["ok", "ok"] and result.alerts == []


def test_without_the_late_events_at_all_the_chain_is_broken():
    """What the markers prevent: the probe alone reads as a VIP connect nobody accepted."""
    cluster, events, lagging = _two_probes()
    runner = Runner(cluster.index())
    runner.feed([e for e in events if e not in lagging])
    runner.step()
    runner.advance(T0 + 60 * S)
    result = runner.finish()
    assert [c["status"] for c in result.chains] == ["broken", "ok"]
    assert [a["rule"] for a in result.alerts] == ["svc.translation_missing"]


def test_redelivered_events_behind_the_watermark_are_no_loss():
    """A worker re-reading input after a restart delivers released events again."""
    cluster, events, lagging = _two_probes()
    result = _run_with_late_events(events, lagging, cluster.index(), everything_first=True)
    assert [c["status"] for c in result.chains] == ["ok", "ok"] and result.alerts == []


def _node_b_released_up_to_its_lag():
    cluster, events, lagging = _two_probes()
    g = Graph(cluster.index())
    st = g.enrich.new_state()
    g.enrich.process(st, "node-b", [e for e in events if e.node == "node-b" and e not in lagging])
    g.enrich.advance(st, "node-b", T0 + 500 * MS)
    return g, st, lagging


def test_late_losses_reach_every_bucket_once_and_are_coalesced():
    g, st, lagging = _node_b_released_up_to_its_lag()
    g.enrich.process(st, "node-b", lagging)
    assert st["llost"] == [["node-b", lagging[0].ts, 3]]  # one settle slot: one marker, at its oldest event
    assert not g.enrich.is_idle(st) and g.enrich.deadline(st) == st["wm"] + 1
    out = g.enrich.advance(st, "node-b", st["wm"])  # sent even when the watermark stays
    assert sorted(k for t, k, _v in out if t == FLOWS_TOPIC) == [f"b{p:04d}" for p in range(g.settings.partitions)]
    assert all(v["lost"] == [{"node": "node-b", "ts": lagging[0].ts, "count": 3}] for _t, _k, v in out)
    assert st["llost"] == [] and g.enrich.advance(st, "node-b", st["wm"]) == []
    g.enrich.process(st, "node-b", lagging)  # the same events again: a redelivery, no second loss
    assert st["late"] == 6 and st["llost"] == []


def test_late_losses_stay_bounded_and_survive_a_checkpoint():
    g, st, lagging = _node_b_released_up_to_its_lag()
    slot = g.settings.settle_ns
    last = lagging[-1]
    # far more late slots than markers are kept: each event a slot older, and newer by n
    many = [last.with_(n=last.n + 1 + i, ts=T0 + 400 * MS - i * slot) for i in range(500)]
    g.enrich.process(st, "node-b", many)
    assert len(st["llost"]) == 64 and sum(m[2] for m in st["llost"]) == 500
    st = loads_state(dumps_state(st))  # JSON-able
    [(_topic, _key, batch), *_] = g.enrich.advance(st, "node-b", st["wm"] + US)
    assert sum(x["count"] for x in batch["lost"]) == 500 and batch["events"] == []


def test_a_late_capture_loss_marker_still_counts():
    g, st, lagging = _node_b_released_up_to_its_lag()
    g.enrich.process(st, "node-b", [lagging[0].with_(n=-7, kind="lost", syscall="drop", res=9)])
    assert st["llost"] == [["node-b", lagging[0].ts, 9]]


def test_a_checkpoint_without_the_new_keys_loads_and_counts_late_events_as_before():
    g, st, lagging = _node_b_released_up_to_its_lag()
    old = loads_state(dumps_state({k: v for k, v in st.items() if k not in ("nmax", "llost")}))
    g.enrich.process(old, "node-b", lagging)
    assert old["late"] == len(lagging) and not old.get("llost")  # may be redeliveries: no loss
    assert g.enrich.advance(old, "node-b", old["wm"]) == []
    newest = max(e.n for e in old["buf"])
    assert g.enrich.advance(old, "node-b", T0 + 3 * S)  # a release: known from now on
    assert old["nmax"] == newest
