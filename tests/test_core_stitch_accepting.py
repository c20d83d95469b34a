"""A connection only its acceptors saw (no client, no proxy dial with its key: conn.cl is None) makes no chain;
it leaves the stitch state settle after every acceptor has closed, not idle (30 s) after its last event
(stitch._conn_deadline). Under a userspace proxy every request leaves one: the backend sees the proxy's node IP
and dial port as its peer, a key no client has."""
from __future__ import annotations

import orjson

from svctrace.streams.core import Graph, Settings, run
from svctrace.streams.core.enrich import FLOWS_TOPIC
from svctrace.streams.core.stitch import CHAINS_TOPIC, Stitcher
from tests.scenario import MS, S, T0, US, Cluster, Proc, Scenario

SETTINGS = Settings()
SETTLE, IDLE = SETTINGS.settle_ns, SETTINGS.idle_ns


def _flows(graph: Graph, events) -> dict[str, list]:
    """The enrich stage's flows batches of `events`, per stitch key."""
    by_key: dict[str, list] = {}
    for node in sorted({e.node for e in events}):
        st = graph.enrich.new_state()
        graph.enrich.process(st, node, sorted((e for e in events if e.node == node), key=lambda e: e.n))
        for topic, key, batch in graph.enrich.flush(st, node):
            if topic == FLOWS_TOPIC and batch["events"]:
                by_key.setdefault(key, []).append(batch)
    return by_key


def _bucket(graph: Graph, batches) -> dict:
    st = graph.stitch.new_state()
    for b in batches:
        graph.stitch.process(st, "k", b)
    return st


def _backend_leg(events):
    """The userspace proxy's dial as the backend saw it: nginx's events whose peer is a node IP."""
    return [e for e in events if e.comm == "nginx" and e.remote_ip.startswith("10.0.0.")]


def test_a_userspace_backend_leg_leaves_settle_after_the_backends_close():
    cluster = Cluster()
    sc = Scenario(cluster, "userspace")
    sc.request(T0, "healthy", backend="my-nginx-2")
    events = sc.events()
    graph = Graph(cluster.index(), SETTINGS)
    leg = _backend_leg(events)
    assert [e.kind for e in leg] == ["accept", "recv", "send", "close"]
    close = leg[-1]
    key = f"{close.remote_ip}:{close.remote_port}"
    [(bkey, batches)] = [(k, b) for k, b in _flows(graph, events).items()
                         if any(d.ev.comm == "nginx" and d.ev.remote_ip == close.remote_ip for x in b for d in x["events"])]
    st = _bucket(graph, batches)
    assert graph.stitch.advance(st, bkey, close.ts + SETTLE - 1) == []
    conn = st["conns"][key]
    assert conn.cl is None and not conn.px and conn.qd == close.ts + SETTLE
    assert graph.stitch.advance(st, bkey, close.ts + SETTLE) == []  # its deadline came: gone, nothing emitted
    assert key not in st["conns"] and graph.stitch.is_idle(st)
    # and the request's chain is the same whichever way the run goes
    [chain] = run(events, cluster.index(), SETTINGS).chains
    assert chain["translation"]["mode"] == "userspace_proxy" and chain["status"] == "ok"


def _skewed_dnat(skew_ns: int):
    """A DNAT'd request to my-nginx-2 (node-b) whose client node (node-a) stamps its events skew_ns late: a
    clock ahead of node-b's by that much."""
    cluster = Cluster()
    sc = Scenario(cluster, "dnat")
    sc.request(T0, "healthy", backend="my-nginx-2")
    events = [e.with_(ts=e.ts + skew_ns) if e.node == "node-a" else e for e in sc.events()]
    return cluster, sorted(events, key=lambda e: e.ts)


def test_a_client_whose_clock_is_ahead_by_up_to_settle_still_finds_its_backend():
    cluster, events = _skewed_dnat(0)
    [plain] = run(events, cluster.index(), SETTINGS).chains
    assert plain["translation"]["mode"] == "dnat" and plain["backend"]["pod"]
    backend_close = [e for e in events if e.comm == "nginx"][-1].ts
    for skew in (5 * MS, SETTLE - 1 * MS):
        cluster, events = _skewed_dnat(skew)
        connect = next(e for e in events if e.kind == "connect" and e.proto == "tcp")
        assert connect.ts > backend_close  # the backend's whole connection comes first in event time
        [chain] = run(events, cluster.index(), SETTINGS).chains
        assert chain["translation"] == plain["translation"] and chain["backend"] == plain["backend"]
    # A clock further ahead than settle (+ the connection's duration) is beyond what the core tolerates: the
    # backend's side has left by the client's connect (before, it waited 30 s for one), as a backend's events
    # later than settle after the client's close are left out of its chain.
    cluster, events = _skewed_dnat(SETTLE + 5 * MS)
    [chain] = run(events, cluster.index(), SETTINGS).chains
    assert chain["backend"] != plain["backend"] and chain["translation"]["confidence"] == "low"


def _snat_backend_events(sc: Scenario, be, closes_at: list[int], accepts_at: list[int], port: int):
    """nginx's side of connections from node-b's IP and `port` (a NodePort's SNAT), on one fd."""
    nginx = Proc(be.node, 8008, "nginx", be.container_id)
    b = dict(proto="tcp", role="server", local_ip=be.ip, local_port=80, remote_ip="10.0.0.12", remote_port=port)
    for t in accepts_at:
        sc.ev(t, nginx, "accept", "accept4", 30, 30, **b)
    for t in closes_at:
        sc.ev(t, nginx, "close", "close", 30, 0, **b)


def test_an_accept_after_the_close_opens_it_again():
    """The acceptor's fd and peer come back (a new connection from the same SNAT port): the connection waits for
    it, and leaves settle after its own close."""
    cluster = Cluster()
    sc = Scenario(cluster, "dnat")
    be = cluster.pods["my-nginx-2"]
    t1, t2, t3 = T0 + 1 * MS, T0 + 1 * S, T0 + 5 * S  # closed, accepted again within settle, closed again
    _snat_backend_events(sc, be, [t1, t3], [T0, t2], 31000)
    events = sc.events()
    graph = Graph(cluster.index(), SETTINGS)
    [(key, batches)] = _flows(graph, events).items()
    st = _bucket(graph, batches)
    stitch = graph.stitch
    stitch.advance(st, key, t2 + 1)
    [conn] = st["conns"].values()
    assert conn.sv[0][-1] is None  # open again
    stitch.advance(st, key, t1 + SETTLE + 1)
    assert st["conns"], "left at its first close + settle"
    stitch.advance(st, key, t3 + SETTLE - 1)
    assert st["conns"]
    stitch.advance(st, key, t3 + SETTLE)
    assert not st["conns"] and st["next"] is None


def test_one_advance_or_many_the_same_passes():
    """Its timer fires at its own deadline: a client's connect at that very time (the tie: the timer first) finds
    it gone, and one 1 ns before finds it, whether the watermark moves in one jump or an event at a time."""
    cluster = Cluster()
    sc = Scenario(cluster, "dnat")
    pod, be, svc = cluster.pods["client"], cluster.pods["my-nginx-2"], cluster.services["my-nginx"]
    port = 41000
    nginx = Proc(be.node, 8008, "nginx", be.container_id)
    b = dict(proto="tcp", role="server", local_ip=be.ip, local_port=80, remote_ip=pod.ip, remote_port=port)
    sc.ev(T0, nginx, "accept", "accept4", 30, 30, **b)
    sc.ev(T0 + 100 * US, nginx, "close", "close", 30, 0, **b)
    base = sc.events()
    outs = {}
    for dt in (-1, 0):
        sc2 = Scenario(cluster, "dnat")
        curl = sc2.proc("client", "curl")
        c = dict(proto="tcp", role="client", local_ip=pod.ip, local_port=port)
        at = T0 + 100 * US + SETTLE + dt
        sc2.ev(at, curl, "connect", "connect", 4, 0, remote_ip=svc.cluster_ip, remote_port=svc.port,
               addr_ip=svc.cluster_ip, addr_port=svc.port, **c)
        sc2.ev(at + 1 * MS, curl, "close", "close", 4, 0, **c)
        events = sorted(base + [e.with_(n=100 + e.n) for e in sc2.events()], key=lambda e: e.ts)
        graph = Graph(cluster.index(), SETTINGS)
        [(key, batches)] = _flows(graph, events).items()
        got = []
        for steps in ([at + 10 * S], sorted({e.ts + 1 for e in events}) + [at + 10 * S]):
            st = _bucket(graph, batches)
            out = []
            for wm in steps:
                out += graph.stitch.advance(st, key, wm)
            out += graph.stitch.flush(st, key)
            got.append(orjson.dumps([v for t, _k, v in out if t == CHAINS_TOPIC]))
        assert got[0] == got[1]
        [chain] = orjson.loads(got[0])
        outs[dt] = chain
    assert outs[-1]["backend"]["pod"] and outs[-1]["hops"]  # found the backend's accept
    assert not outs[0]["backend"] or not outs[0]["backend"].get("pod")  # gone at its deadline: the timer first


def test_an_acceptor_written_before_its_close_was_kept_waits_its_idle_timeout():
    """A checkpoint entry whose acceptor records have no close field (written before it existed) restores them
    open: the connection waits idle after its last event, as it would have where it was written."""
    cluster = Cluster()
    sc = Scenario(cluster, "userspace")
    sc.request(T0, "healthy", backend="my-nginx-2")
    events = sc.events()
    graph = Graph(cluster.index(), SETTINGS)
    close = _backend_leg(events)[-1]
    key = f"{close.remote_ip}:{close.remote_port}"
    [(bkey, batches)] = [(k, b) for k, b in _flows(graph, events).items()
                         if any(d.ev.comm == "nginx" and d.ev.remote_ip == close.remote_ip for x in b for d in x["events"])]
    stitch: Stitcher = graph.stitch
    for strip in (False, True):
        st = _bucket(graph, batches)
        stitch.advance(st, bkey, close.ts + 1)
        stitch.durable_parts(st)
        header, entries = stitch.durable_parts({**st, "_cc": None})  # every entry (as a first checkpoint)
        entries = orjson.loads(orjson.dumps(entries))
        header = orjson.loads(orjson.dumps(header))
        if strip:
            for a in entries["c" + key]["sv"]:
                del a[-1]
        restored = stitch.restore_parts(header, entries)
        assert restored["conns"][key].sv[0][-1] == (None if strip else close.ts)
        assert stitch.advance(restored, bkey, close.ts + SETTLE + 1) == []
        assert (key in restored["conns"]) is strip
        assert stitch.advance(restored, bkey, close.ts + IDLE + 1) == []
        assert not restored["conns"]
