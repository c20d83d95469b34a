"""Loss markers with their window (rule 5): a live agent learns of kernel drops only when it drains,
so its marker says the events were lost between its previous drain and now (lost_since_ns .. ts).
An agent stalled longer than a chain waits (a lookup's timeout, the idle timeout) sends its marker
long after the chain stopped waiting: the window still overlaps it, so the chain is incomplete,
never broken, and raises no alert. A marker without a window keeps its meaning: a point in time."""
from __future__ import annotations

from svctrace.schemas.validation import validate
from svctrace.streams.core import Graph, run
from tests.scenario import MS, S, T0, US, Cluster, Scenario

POD_IP = "10.244.1.5"
NAME = "my-nginx.default.svc.cluster.local"


def _runs(sc: Scenario):
    """The chains and alerts, the same whether the watermark moves a step per event or in one jump."""
    events, index = sc.events(), sc.cluster.index()
    results = [run(events, index, step_events=step) for step in (1, 4096)]
    for r in results:
        for c in r.chains:
            validate("chain", c)
    stepped, jumped = results
    assert [(c["chain_id"], c["status"], c["incomplete_reason"]) for c in stepped.chains] == \
           [(c["chain_id"], c["status"], c["incomplete_reason"]) for c in jumped.chains]
    assert [a["alert_id"] for a in stepped.alerts] == [a["alert_id"] for a in jumped.alerts]
    return stepped


def _unanswered_lookup(windowed: bool) -> Scenario:
    """A lookup whose answer the kernel dropped while the agent was stalled for 20 s (> the 12 s
    lookup timeout); its marker comes with the drain that ends the stall, and its window starts at
    the drain before the query (windowed) or it has none (a point at ts)."""
    sc = Scenario(Cluster())
    sc.lookup(T0, sc.proc("client", "curl"), POD_IP, NAME, ["10.96.0.100"], answer=False, server=False)
    sc.loss(T0 + 20 * S, "node-a", 40, since=T0 - 5 * MS if windowed else None)
    sc.lookup(T0 + 40 * S, sc.proc("client", "other"), POD_IP, "example.com", ["93.184.216.34"])  # input goes on
    return sc


def test_a_lookup_whose_answer_was_lost_in_a_long_stall_is_incomplete():
    sc = _unanswered_lookup(windowed=True)
    r = _runs(sc)
    chain = r.chains[0]
    assert chain["dns"]["qname"] == NAME and chain["dns"]["answers"] == []
    assert chain["status"] == "incomplete" and chain["incomplete_reason"] == "40 events lost on node node-a"
    assert not [a for a in r.alerts if a["rule"].startswith("dns.")]


def test_a_point_marker_after_the_lookup_stopped_waiting_does_not_concern_it():
    """The old meaning (a .scap file's drops, an older agent): lost at ts, 8 s after the lookup's
    timeout ran out. Its missing answer reads as no answer."""
    sc = _unanswered_lookup(windowed=False)
    r = _runs(sc)
    assert r.chains[0]["status"] == "broken"
    assert [a["rule"] for a in r.alerts] == ["dns.no_answer"]


def test_a_window_that_ended_before_the_lookup_does_not_concern_it():
    sc = Scenario(Cluster())
    sc.loss(T0 - 5 * S, "node-a", 40, since=T0 - 10 * S)
    sc.lookup(T0, sc.proc("client", "curl"), POD_IP, NAME, ["10.96.0.100"], answer=False, server=False)
    sc.lookup(T0 + 40 * S, sc.proc("client", "other"), POD_IP, "example.com", ["93.184.216.34"])
    r = _runs(sc)
    assert r.chains[0]["status"] == "broken" and [a["rule"] for a in r.alerts] == ["dns.no_answer"]


def _silent_connect(windowed: bool) -> Scenario:
    """A client's non-blocking connect to the Service's VIP; the agent then stalls for 45 s (> the 30 s
    idle timeout) and the kernel drops everything that followed: the backend's accept, the request,
    the response, the close. Its marker comes with the drain that ends the stall; its window starts
    at the drain just after the connect (windowed) or it has none."""
    sc = Scenario(Cluster())
    cl = sc.cluster
    svc = cl.services["my-nginx"]
    pod = cl.pods["client"]
    curl = sc.proc("client", "curl")
    t = sc.lookup(T0, curl, pod.ip, NAME, [svc.cluster_ip]) + 200 * US
    c = dict(proto="tcp", role="client", local_ip=pod.ip, local_port=sc.port())
    sc.ev(t, curl, "connect", "connect", 4, -115, remote_ip=svc.cluster_ip, remote_port=svc.port,
          addr_ip=svc.cluster_ip, addr_port=svc.port, **c)
    sc.loss(t + 45 * S, pod.node, 500, since=t + 50 * US if windowed else None)
    sc.lookup(T0 + 80 * S, sc.proc("client", "other"), pod.ip, "example.com", ["93.184.216.34"])  # input goes on
    return sc


def test_a_connection_whose_answer_was_lost_in_a_stall_past_the_idle_timeout_is_incomplete():
    sc = _silent_connect(windowed=True)
    r = _runs(sc)
    chain = next(c for c in r.chains if c["service"])
    assert chain["connect"]["errno"] == "EINPROGRESS"
    assert chain["status"] == "incomplete" and chain["incomplete_reason"] == "500 events lost on node node-a"
    assert not [a for a in r.alerts if a["rule"].startswith("svc.")]


def test_a_point_marker_after_the_idle_timeout_does_not_concern_the_connection():
    sc = _silent_connect(windowed=False)
    r = _runs(sc)
    chain = next(c for c in r.chains if c["service"])
    assert chain["status"] == "broken" and chain["response"]["error"] == "connection timed out"
    assert [a["rule"] for a in r.alerts] == ["svc.translation_missing"]


def test_the_enrich_stage_sends_a_window_once_the_watermark_passes_its_start():
    """Not at its ts (when the agent noticed): the chains it concerns are emitted long before that."""
    g = Graph(Cluster().index())
    op = g.enrich
    st = op.new_state()
    sc = Scenario(Cluster())
    sc.loss(T0 + 20 * S, "node-a", 7, since=T0)
    [marker] = sc.events()
    assert op.process(st, "node-a", [marker]) == [] and not st["buf"]
    assert op.deadline(st) == T0 + 1
    assert op.advance(st, "node-a", T0) == []  # the window has not started before the watermark
    out = op.advance(st, "node-a", T0 + 1)
    losses = [b["lost"] for _topic, _key, b in out]
    assert losses and all(x == [{"node": "node-a", "ts": T0 + 20 * S, "count": 7, "since_ns": T0}] for x in losses)
    assert op.is_idle(st) and op.advance(st, "node-a", T0 + 2) == []


def test_a_window_survives_a_checkpoint_and_older_point_markers_load_as_they_were():
    from svctrace.streams.core import dumps_state, loads_state

    op = Graph(Cluster().index()).stitch
    st = op.new_state()
    op.process(st, "b0001", {"events": [], "lost": [{"node": "node-a", "ts": T0 + 20 * S, "count": 7, "since_ns": T0},
                                                    {"node": "node-b", "ts": T0, "count": 2}]})
    back = op.restore(loads_state(dumps_state(op.durable(st))))
    assert back["lost"] == [["node-a", T0 + 20 * S, 7, T0], ["node-b", T0, 2]]
    assert op._lost_on(back, {"node-a"}, T0 + 5 * S, T0 + 6 * S) == "7 events lost on node node-a"
    assert op._lost_on(back, {"node-b"}, T0 + 5 * S, T0 + 6 * S) is None  # a point 5 s before: not within settle
    assert op._lost_on(back, {"node-b"}, T0 + S, T0 + 6 * S) == "2 events lost on node node-b"
