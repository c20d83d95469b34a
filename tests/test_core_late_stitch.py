"""Late events at the stitch stage are losses (rule 5): an event that reaches a bucket after
its watermark is dropped, counted late AND noted as a loss marker, so the chain it belonged
to is "incomplete", never alerted as broken. A redelivered event (applied before) is no loss."""
from __future__ import annotations

from svctrace.streams.core import Graph, Settings, dumps_state, loads_state
from svctrace.streams.core.enrich import FLOWS_TOPIC
from svctrace.streams.core.enriched import EnrichedEvent
from svctrace.streams.core.stitch import CHAINS_TOPIC, MAX_LOST_MARKERS, OCCURRENCES_TOPIC
from tests.scenario import MS, S, T0, US, Cluster, Proc, Scenario


def _vip_probes():
    """Two `nc -z my-nginx 8080` probes from the client pod (node-a), 3 s apart, DNAT'd to
    my-nginx-2 (node-b): connect (EINPROGRESS), the backend's accept, both close. Without
    the accept, a probe is the flushed-rules signature (svc.translation_missing).
    Returns the graph, the flows batches of the probes' bucket and that bucket's key."""
    cluster = Cluster()
    sc = Scenario(cluster, "dnat")
    pod, svc, be = cluster.pods["client"], cluster.services["my-nginx"], cluster.pods["my-nginx-2"]
    nginx = Proc(be.node, 8008, "nginx", be.container_id)
    for t in (T0, T0 + 3 * S):
        nc, port = sc.proc("client", "nc"), sc.port()
        c = dict(proto="tcp", role="client", local_ip=pod.ip, local_port=port)
        b = dict(proto="tcp", role="server", local_ip=be.ip, local_port=svc.target_port, remote_ip=pod.ip,
                 remote_port=port)
        sc.ev(t, nc, "connect", "connect", 4, -115, remote_ip=svc.cluster_ip, remote_port=svc.port,
              addr_ip=svc.cluster_ip, addr_port=svc.port, **c)
        sc.ev(t + 150 * US, nginx, "accept", "accept4", 20, 20, **b)
        sc.ev(t + 300 * US, nc, "close", "close", 4, 0, **c)
        sc.ev(t + 400 * US, nginx, "close", "close", 20, 0, **b)
    graph = Graph(cluster.index(), Settings())
    events = sc.events()
    by_key: dict[str, list] = {}
    for node in ("node-a", "node-b"):
        st = graph.enrich.new_state()
        graph.enrich.process(st, node, [e for e in events if e.node == node])
        for topic, key, batch in graph.enrich.flush(st, node):
            if topic == FLOWS_TOPIC and batch["events"]:
                by_key.setdefault(key, []).append(batch)
    assert len(by_key) == 1  # one client: one flow bucket
    [(key, batches)] = by_key.items()
    return graph, batches, key


def _backend_of_first_probe(batches):
    late = [d for b in batches for d in b["events"] if d.ev.node == "node-b" and d.ev.ts < T0 + S]
    assert [d.ev.kind for d in late] == ["accept", "close"]
    return late


def _drive(graph, key, first, then, wm=T0 + 500 * MS):
    """`first` events, the watermark to wm (past the first probe's events, not its close +
    settle: its chain is still open), then `then`, then the end of input."""
    stitch = graph.stitch
    st = stitch.new_state()
    stitch.process(st, key, {"schema": "svctrace.enriched-batch", "version": 1, "events": first})
    out = stitch.advance(st, key, wm)
    assert [t for t, _k, _v in out] == []
    stitch.process(st, key, {"schema": "svctrace.enriched-batch", "version": 1, "events": then})
    late, lost = st["late"], [list(m) for m in st["lost"]]
    out += stitch.flush(st, key)
    chains = sorted((v for t, _k, v in out if t == CHAINS_TOPIC), key=lambda c: c["start_ts"])
    occurrences = [v for t, _k, v in out if t == OCCURRENCES_TOPIC]
    return chains, occurrences, late, lost


def test_a_late_event_makes_its_chain_incomplete_not_broken():
    graph, batches, key = _vip_probes()
    late = _backend_of_first_probe(batches)
    node_a = [d for b in batches for d in b["events"] if d.ev.node == "node-a"]
    node_b = [d for b in batches for d in b["events"] if d.ev.node == "node-b"]  # a lagging node: all later
    chains, occurrences, nlate, lost = _drive(graph, key, node_a, node_b)
    assert nlate == 2 and len(node_b) == 4
    assert lost == [["node-b", late[0].ev.ts, 2]]  # one marker per node and slot, at its oldest event
    first, second = chains
    assert first["status"] == "incomplete" and first["incomplete_reason"] == "2 events lost on node node-b"
    assert first["alerts"] == [] and occurrences == []  # no svc.translation_missing
    assert second["status"] == "ok"  # 3 s later: no loss overlaps it


def test_the_same_events_missing_altogether_give_a_broken_chain():
    """What the marker prevents: without the accept, the probe reads as flushed rules."""
    graph, batches, key = _vip_probes()
    late = _backend_of_first_probe(batches)
    on_time = [d for b in batches for d in b["events"] if not any(d is x for x in late)]
    chains, occurrences, nlate, lost = _drive(graph, key, on_time, [])
    assert nlate == 0 and lost == []
    assert [c["status"] for c in chains] == ["broken", "ok"]
    assert [o["rule"] for o in occurrences] == ["svc.translation_missing"]


def test_redelivered_events_behind_the_watermark_are_no_loss():
    """A worker re-reading input after a restart delivers applied events again: late, no loss."""
    graph, batches, key = _vip_probes()
    everything = [d for b in batches for d in b["events"]]
    chains, occurrences, nlate, lost = _drive(graph, key, everything, _backend_of_first_probe(batches))
    assert nlate == 2 and lost == []
    assert [c["status"] for c in chains] == ["ok", "ok"] and occurrences == []


def test_late_markers_stay_bounded_and_expire():
    graph, batches, key = _vip_probes()
    stitch = graph.stitch
    st = stitch.new_state()
    stitch.process(st, key, {"events": [d for b in batches for d in b["events"]]})
    stitch.advance(st, key, T0 + 10 * S)
    base = batches[0]["events"][0]
    # late events one second apart (one slot each), each newer (by n) than the one before
    many = [EnrichedEvent(base.ev.with_(n=1000 + i, ts=T0 + 9 * S - i * S), base.flow, base.local_ref,
                          base.remote_ref, base.addr_ref, base.proxy_of) for i in range(2000)]
    stitch.process(st, key, {"events": many})
    assert st["late"] == 2000
    assert len(st["lost"]) == MAX_LOST_MARKERS and sum(m[2] for m in st["lost"]) == 2000
    st = stitch.restore(loads_state(dumps_state(st)))  # JSON-able, through a checkpoint
    assert st["nmax"][base.ev.node] == 2999  # the newest late event: a redelivery of it is no loss
    assert not stitch.is_idle(st) and st["next"] is not None
    stitch.advance(st, key, T0 + 120 * S)  # past every marker + the lookup timeout + idle time
    assert st["lost"] == [] and stitch.is_idle(st)


def test_a_state_written_before_redeliveries_were_told_apart_counts_late_events_only():
    graph, batches, key = _vip_probes()
    stitch = graph.stitch
    st = stitch.new_state()
    stitch.process(st, key, {"events": [d for b in batches for d in b["events"]]})
    stitch.advance(st, key, T0 + 500 * MS)
    old = {k: v for k, v in st.items() if k != "nmax"}  # a checkpoint of an earlier version
    st = stitch.restore(loads_state(dumps_state(old)))
    stitch.process(st, key, {"events": _backend_of_first_probe(batches)})
    assert st["late"] == 2 and st["lost"] == []  # not known to be new: counted, as before
    chains = [v for t, _k, v in stitch.flush(st, key) if t == CHAINS_TOPIC]
    assert [c["status"] for c in chains] == ["ok", "ok"]


def test_a_loss_on_a_node_the_chain_never_needed_leaves_it_ok():
    """Losses count for a chain's own nodes and, when its backend's accept was not seen, for
    the nodes of the Service's endpoints: a request served on node-a stays "ok" through a loss
    on node-b (where the Service's other endpoint runs); served on node-b, it is incomplete."""
    from svctrace.streams.core import run

    statuses = {}
    for backend in ("my-nginx-1", "my-nginx-2"):
        cluster = Cluster()
        sc = Scenario(cluster, "dnat")
        sc.request(T0, "healthy", backend=backend)
        sc.loss(T0 + 600 * US, "node-b", 3)
        [chain] = run(sc.events(), cluster.index()).chains
        statuses[backend] = (chain["backend"]["node"], chain["status"])
    assert statuses == {"my-nginx-1": ("node-a", "ok"), "my-nginx-2": ("node-b", "incomplete")}
