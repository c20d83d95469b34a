"""The seed article's healthy trace and its Part-2 faults, in every translation mode.

Each scenario is built by tests/scenario.py as the syscalls every process on every
node would make; the in-process runner must produce exactly one chain with the
expected path and exactly the expected alerts, all valid against the schemas.
"""
from __future__ import annotations

import copy

import pytest

from svctrace.schemas.validation import validate
from svctrace.streams.core import run
from svctrace.streams.core.rules import LATENCY_OBJECTIVES_NS
from svctrace.streams.metadata.index import ClusterIndex
from tests.scenario import FAULTS, MODES, MS, S, T0, Cluster, Scenario, build, renumber

# (fault, mode) -> expected chain fields and the exact set of alert rules.
EXPECTED = {
    ("healthy", "userspace"): dict(status="ok", mode="userspace_proxy", conf="high", backend="my-nginx-1", http=200, error=None, rules=set()),
    ("healthy", "dnat"): dict(status="ok", mode="dnat", conf="high", backend="my-nginx-1", http=200, error=None, rules=set()),
    ("healthy", "socket_lb"): dict(status="ok", mode="socket_lb", conf="high", backend="my-nginx-1", http=200, error=None, rules=set()),
    # 1: wrong targetPort — the proxy's dial is refused and curl gets an empty reply; DNAT/socket-LB get a RST
    ("wrong_port", "userspace"): dict(status="broken", mode="userspace_proxy", conf="high", backend="my-nginx-1", http=None,
                                      error="empty reply", rules={"svc.target_port_refused"}),
    ("wrong_port", "dnat"): dict(status="broken", mode="dnat", conf="low", backend=None, http=None,
                                 error="connection refused", rules={"svc.target_port_refused"}),
    ("wrong_port", "socket_lb"): dict(status="broken", mode="socket_lb", conf="high", backend="my-nginx-1", http=None,
                                      error="connection refused", rules={"svc.target_port_refused"}),
    # 2: wrong labels — no endpoints: the proxy accepts and closes; iptables/socket-LB refuse
    ("no_endpoints", "userspace"): dict(status="broken", mode="userspace_proxy", conf="high", backend=None, http=None,
                                        error="empty reply", rules={"svc.no_endpoints"}),
    ("no_endpoints", "dnat"): dict(status="broken", mode="none", conf="high", backend=None, http=None,
                                   error="connection refused", rules={"svc.no_endpoints"}),
    ("no_endpoints", "socket_lb"): dict(status="broken", mode="none", conf="high", backend=None, http=None,
                                        error="connection refused", rules={"svc.no_endpoints"}),
    # 4: host resolver — a non-cluster DNS answers a foreign IP, the connect is refused
    **{("host_resolver", m): dict(status="broken", mode=None, conf=None, backend=None, http=None,
                                  error="connection refused", rules={"dns.wrong_resolver", "dns.answer_not_service"})
       for m in MODES},
    # 3: flushed rules — the VIP connect is never accepted and times out
    **{("rules_flushed", m): dict(status="broken", mode="none", conf="high", backend=None, http=None,
                                  error="connection timed out", rules={"svc.translation_missing"}) for m in MODES},
}


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("fault", FAULTS)
def test_seed_scenario(fault, mode):
    cluster, events = build(fault, mode)
    result = run(events, cluster.index())
    exp = EXPECTED[(fault, mode)]
    assert result.deadletters == []  # (a record a stage fails on is dead-lettered and its chain lost)
    assert len(result.chains) == 1, [c["chain_id"] for c in result.chains]
    chain = result.chains[0]
    validate("chain", chain)
    for alert in result.alerts:
        validate("alert", alert)
    assert chain["status"] == exp["status"], chain
    tr = chain["translation"]
    assert (tr and tr["mode"], tr and tr["confidence"]) == (exp["mode"], exp["conf"])
    assert (chain["backend"] or {}).get("pod") == exp["backend"]
    assert (chain["response"] or {}).get("status") == exp["http"]
    assert (chain["response"] or {}).get("error") == exp["error"]
    assert {a["rule"] for a in result.alerts} == exp["rules"]
    assert sorted(chain["alerts"]) == sorted(a["alert_id"] for a in result.alerts)
    for alert in result.alerts:
        assert alert["chain_ids"] == [chain["chain_id"]] and alert["count"] == 1
        assert alert["evidence"], alert
    # the DNS lookup is part of the chain; the resolver is named
    dns = chain["dns"]
    assert dns["qname"] == "my-nginx.default.svc.cluster.local"
    if fault == "host_resolver":
        assert dns["resolver_ip"] == cluster.host_resolver and dns["resolver_is_cluster_dns"] is False
        assert dns["answers"] == [cluster.foreign_ip] and chain["service"] is None
    else:
        assert dns["resolver_is_cluster_dns"] is True and dns["answers"] == ["10.96.0.100"]
        assert dns["server"]["pod"] == "coredns" and dns["server"]["comm"] == "coredns"
        assert chain["service"] == {"namespace": "default", "name": "my-nginx", "cluster_ip": "10.96.0.100",
                                    "port": 8080, "protocol": "TCP",
                                    "target_port": 8080 if fault == "wrong_port" else 80}
        assert chain["client"]["pod"] == "client" and chain["client"]["comm"] == "curl"


def test_seed_part1_userspace_proxy_trace_details():
    """Part 1: curl -> skydns-style lookup -> connect VIP:8080 -> hyperkube reads the same bytes on the
    accepted fd and writes them to pod:80 -> nginx serves it."""
    cluster, events = build("healthy", "userspace")
    chain = run(events, cluster.index()).chains[0]
    proxy = chain["translation"]["proxy"]
    assert proxy["comm"] == "hyperkube" and proxy["ip"] == cluster.nodes["node-a"] and proxy["port"] == 39551
    assert chain["connect"]["ip"] == "10.96.0.100" and chain["connect"]["port"] == 8080
    assert chain["backend"]["ip"] == "10.244.1.7" and chain["backend"]["port"] == 80
    assert chain["response"]["method"] == "GET" and chain["response"]["host"].startswith("my-nginx.default")
    assert [h["name"] for h in chain["hops"]] == ["dns", "proxy", "response"]
    whats = [e["what"] for e in chain["evidence"]]
    assert "client connect" in whats and "accept" in whats and any(w.startswith("proxy dial") for w in whats)


def test_alert_ids_are_deterministic_and_dedup_repeats():
    """Three identical failing requests in one suppression window: one alert, count 3, three chains."""
    cluster, events = build("wrong_port", "socket_lb", requests=3, gap_ns=50 * 10**6)
    result = run(events, cluster.index())
    assert len(result.chains) == 3 and len({c["chain_id"] for c in result.chains}) == 3
    assert len(result.alerts) == 1
    alert = result.alerts[0]
    assert alert["count"] == 3 and sorted(alert["chain_ids"]) == sorted(c["chain_id"] for c in result.chains)
    assert alert["first_seen"] < alert["last_seen"]
    again = run(build("wrong_port", "socket_lb", requests=3, gap_ns=50 * 10**6)[1], Cluster("wrong_port").index())
    assert [a["alert_id"] for a in again.alerts] == [alert["alert_id"]]
    assert [c["chain_id"] for c in again.chains] == [c["chain_id"] for c in result.chains]


def test_keepalive_connection_gives_one_chain_per_request():
    cluster = Cluster()
    sc = Scenario(cluster, "dnat")
    sc.keepalive(T0, statuses=(200, 503, 200))
    result = run(sc.events(), cluster.index())
    assert [c["response"]["status"] for c in result.chains] == [200, 503, 200]
    assert len({c["chain_id"] for c in result.chains}) == 3
    assert [c["status"] for c in result.chains] == ["ok", "broken", "ok"]
    assert all(c["backend"]["pod"] == "my-nginx-2" and c["backend"]["comm"] == "nginx" for c in result.chains)
    assert [a["rule"] for a in result.alerts] == ["svc.backend_5xx"]
    assert "503" in result.alerts[0]["summary"]
    for c in result.chains:
        validate("chain", c)
        assert c["dns"] is None and c["translation"]["mode"] == "dnat"
        assert [h["name"] for h in c["hops"]] == ["connect", "response", "backend"]


def test_lost_events_make_a_chain_incomplete_never_broken():
    for mode in MODES:
        cluster = Cluster("wrong_port")
        sc = Scenario(cluster, mode)
        sc.request(T0, "wrong_port")
        sc.loss(T0 + 600 * 1000, "node-a", count=5)
        result = run(sc.events(), cluster.index())
        assert [c["status"] for c in result.chains] == ["incomplete"], mode
        assert "lost" in result.chains[0]["incomplete_reason"]
        assert result.alerts == [] and result.chains[0]["alerts"] == []


def test_misrouted_backend_in_another_namespace():
    cluster = Cluster()
    sc = Scenario(cluster, "dnat")
    sc.request(T0, "healthy", backend="other")
    result = run(sc.events(), cluster.index())
    chain = result.chains[0]
    assert chain["backend"]["pod"] == "other" and chain["backend"]["namespace"] == "prod"
    assert chain["status"] == "broken" and [a["rule"] for a in result.alerts] == ["svc.misrouted"]


def test_slow_response_breaks_the_latency_objective_without_breaking_the_chain():
    cluster = Cluster()
    sc = Scenario(cluster, "dnat")
    sc.keepalive(T0, statuses=(200,), response_delay_ns=3 * 10**9)
    result = run(sc.events(), cluster.index())
    assert [c["status"] for c in result.chains] == ["ok"]
    assert {a["rule"] for a in result.alerts} == {"svc.hop_latency"}
    assert any("hop response" in a["summary"] for a in result.alerts)


def _no_endpoints_state(case: str) -> list[dict]:
    """The seed cluster's state with my-nginx's endpoints gone one way or another."""
    records = Cluster().records()
    svc = next(r for r in records if r["kind"] == "Service" and r["name"] == "my-nginx")
    slice_ = next(r for r in records if r["kind"] == "EndpointSlice" and r["name"].startswith("my-nginx"))
    pods = {r["name"]: r["pod"] for r in records if r["kind"] == "Pod"}
    if case == "no selector":
        svc["service"]["selector"] = None
        slice_["endpoints"]["endpoints"] = []
    elif case == "typo":
        svc["service"]["selector"] = {"run": "my-nginxx"}
        slice_["endpoints"]["endpoints"] = []
    elif case == "one pod, not ready":
        del pods["my-nginx-2"]["labels"]["run"]
        pods["my-nginx-1"]["ready"] = False
        slice_["endpoints"]["endpoints"] = [dict(ep, ready=False, serving=False) for ep in slice_["endpoints"]["endpoints"]
                                            if ep["pod"] == "my-nginx-1"]
    elif case == "pods not ready":
        pods["my-nginx-1"].update(ready=False, phase="Pending")
        pods["my-nginx-2"]["ready"] = False
        for ep in slice_["endpoints"]["endpoints"]:
            ep.update(ready=False, serving=False)
    else:  # "ready, not listed": the pods are ready, the EndpointSlice lists none of them
        slice_["endpoints"]["endpoints"] = []
    return records


@pytest.mark.parametrize("case, why", [
    ("no selector", "it has no selector, and no endpoints were written for it"),
    ("typo", "its selector run=my-nginxx matches no pod in default"),
    ("one pod, not ready", "the one pod its selector run=my-nginx matches, my-nginx-1, is not ready"),
    ("pods not ready", "none of the 2 pods its selector run=my-nginx matches is ready: my-nginx-1 Pending, "
                       "my-nginx-2 not ready"),
    ("ready, not listed", "its selector run=my-nginx matches 2 pods, 2 of them ready, that its EndpointSlices do "
                          "not list as ready"),
])
def test_no_endpoints_says_why_the_service_has_none(case, why):
    """The Sysdig article's part 2 fault 2 is a selector with a typo; pods that match and are not ready (probes, a
    crash loop, a pending rollout) give the same refusal. The alert tells them apart."""
    cluster, events = build("no_endpoints", "dnat")
    result = run(events, ClusterIndex.from_records(_no_endpoints_state(case)))
    [alert] = result.alerts
    assert alert["rule"] == "svc.no_endpoints"
    assert alert["summary"] == f"default/my-nginx has no ready endpoints ({why}): default/client got connection refused"


@pytest.mark.parametrize("declared, said", [
    ([{"name": "http", "port": 80, "protocol": "TCP"}], "its containers declare 80 (http)"),
    ([{"name": "http", "port": 8080, "protocol": "TCP"}], "its containers declare 8080, and nothing listened on it"),
    ([], "its containers declare no port"),
])
@pytest.mark.parametrize("mode", MODES)
def test_target_port_refused_says_what_the_pods_declare(mode, declared, said):
    """The Service's targetPort 8080 refused: the pod's declared containerPort 80 is the likely fix; a declared
    8080 means the application did not listen on the port it declares. A refused DNAT among two endpoints does
    not show which refused: what both declare is said then."""
    cluster, events = build("wrong_port", mode)
    records = cluster.records()
    for r in records:
        if r["kind"] == "Pod" and r["name"].startswith("my-nginx"):
            r["pod"]["ports"] = declared
    [alert] = run(events, ClusterIndex.from_records(records)).alerts
    assert alert["rule"] == "svc.target_port_refused"
    if mode == "dnat":
        said = said.replace("its containers", "the containers of its 2 ready endpoints")
    assert f"refused port 8080 (targetPort): {said}; default/client got" in alert["summary"]


@pytest.mark.parametrize("change, standing", [
    ({"ready": False, "serving": False}, "not ready in the Service's endpoints"),
    ({"ready": False, "serving": True, "terminating": True}, "terminating in the Service's endpoints"),
    (None, "which left the Service's endpoints 42.0 s before"),
])
def test_misrouted_says_how_the_backend_stood_among_the_endpoints(change, standing):
    """The request reached my-nginx-1 by a rule the EndpointSlice's last change (42 s before) should have changed:
    the pod not ready, terminating, or gone from the slice. Each has another cause (a readiness probe; a rollout;
    kube-proxy or conntrack behind the change), so the alert says which."""
    cluster = Cluster()
    records = cluster.records()
    [slice_] = [r for r in records if r["kind"] == "EndpointSlice" and r["name"].startswith("my-nginx")]
    later = copy.deepcopy(slice_)
    later["observed_ts"] = T0 - 42 * S
    eps = later["endpoints"]["endpoints"]
    [nginx1] = [e for e in eps if e["pod"] == "my-nginx-1"]
    if change is None:
        eps.remove(nginx1)
    else:
        nginx1.update(change)
    sc = Scenario(cluster, "dnat")
    sc.request(T0, "healthy", backend="my-nginx-1")
    result = run(sc.events(), ClusterIndex.from_records([*records, later]))
    [chain] = result.chains
    assert chain["status"] == "broken" and chain["backend"]["pod"] == "my-nginx-1"
    [alert] = result.alerts
    assert alert["rule"] == "svc.misrouted"
    assert alert["summary"] == ("default/my-nginx: request from default/client reached default/my-nginx-1 "
                                f"(10.244.1.7:80), {standing}")


def test_a_response_wait_the_idle_timeout_ended_is_a_floor():
    """The backend never answers and curl waits 100 s: the idle timeout (30 s) ends the chain first, so the
    response hop's 30 s is how long it waited at least, and the alert says so."""
    cluster, events = build("healthy", "dnat")
    hung = [e for e in events if not (e.kind == "send" and e.comm == "nginx")
            and not (e.kind == "recv" and e.comm == "curl" and e.proto == "tcp")]
    hung = sorted((e.with_(ts=e.ts + 100 * S) if e.kind == "close" else e for e in hung), key=lambda e: e.ts)
    result = run(hung, cluster.index())
    [alert] = result.alerts
    assert alert["summary"].startswith("default/my-nginx: hop response took 30000 ms (objective 2000 ms)")
    assert alert["summary"].endswith(", at least: the idle timeout ended the chain with the client still waiting")
    [chain] = result.chains  # the record says so too: only that hop has "floor"
    assert [h.get("floor") for h in chain["hops"]] == [None, None, True]
    assert [h["name"] for h in chain["hops"]] == ["dns", "connect", "response"]


def test_a_slow_userspace_proxy_dial_breaks_the_proxy_hops_objective():
    """kube-proxy's userspace mode accepts the client and dials a backend; a dial 1.5 s after the accept (a
    proxy starved of CPU) is its hop over the objective."""
    cluster, events = build("healthy", "userspace")
    [dial] = [e for e in events if e.comm == "hyperkube" and e.kind == "connect"]
    late = renumber([e.with_(ts=e.ts + 1500 * MS) if e.ts >= dial.ts else e for e in events])
    result = run(late, cluster.index())
    [chain] = result.chains
    [hop] = [h for h in chain["hops"] if h["name"] == "proxy"]
    assert 1500 * MS < hop["latency_ns"] < 1501 * MS and chain["status"] == "ok"
    [alert] = result.alerts
    assert alert["rule"] == "svc.hop_latency" and "hop proxy took 1500 ms (objective 1000 ms)" in alert["summary"]


@pytest.mark.parametrize("delay_ms, because", [
    (1_050, ": about 1 s: a SYN retransmission (a SYN or its SYN-ACK lost), likely"),
    (3_100, ": about 3 s: 2 SYN retransmissions (SYNs or SYN-ACKs lost), likely"),
    (2_000, ""),  # no retransmission time: nothing to say of it
])
def test_a_slow_connect_at_a_syn_retransmission_time_says_so(delay_ms, because):
    """The backend accepts the client delay_ms after its connect: at 1 s (or 3 s) after it, Linux's first (or
    second) SYN retransmission completes the handshake."""
    cluster, events = build("healthy", "dnat")
    [accept] = [e for e in events if e.kind == "accept" and e.comm == "nginx"]
    [connect] = [e for e in events if e.kind == "connect" and e.proto == "tcp"]
    shift = delay_ms * MS - (accept.ts - connect.ts)
    late = renumber([e.with_(ts=e.ts + shift) if e.ts >= accept.ts else e for e in events])
    result = run(late, cluster.index())
    [alert] = result.alerts
    assert alert["summary"] == (f"default/my-nginx: hop connect took {delay_ms} ms (objective 1000 ms) for "
                                f"default/client{because}")


def test_every_latency_objective_names_a_hop_chains_have():
    """An objective keyed by a name no hop has would never fire."""
    names = set()
    for mode in MODES:
        for fault in FAULTS:
            cluster, events = build(fault, mode)
            names |= {h["name"] for c in run(events, cluster.index()).chains for h in c["hops"]}
    assert set(LATENCY_OBJECTIVES_NS) <= names


def test_capture_cut_mid_request_is_incomplete():
    cluster, events = build("healthy", "dnat")
    cut = [e for e in events if not (e.node == "node-a" and e.kind in ("recv", "close") and e.proto == "tcp")]
    result = run(cut, cluster.index())
    assert [c["status"] for c in result.chains] == ["incomplete"]
    assert result.alerts == []


def test_host_traffic_to_a_cluster_ip_is_linked_with_low_confidence():
    cluster = Cluster()
    sc = Scenario(cluster, "dnat")
    sc.host_request(T0, via="vip")
    result = run(sc.events(), cluster.index())
    [chain] = result.chains
    validate("chain", chain)
    assert chain["translation"] == {"mode": "nodeport_snat", "confidence": "low", "proxy": None}
    assert chain["backend"]["pod"] == "my-nginx-2" and chain["response"]["status"] == 200
    assert chain["client"]["pod"] is None and chain["status"] == "ok" and result.alerts == []


def test_nodeport_traffic_is_marked_low_confidence():
    cluster = Cluster()
    cluster.services["my-nginx"].node_port = 30080
    sc = Scenario(cluster, "dnat")
    sc.host_request(T0, via="nodeport")
    result = run(sc.events(), cluster.index())
    [chain] = result.chains
    validate("chain", chain)
    assert chain["service"]["name"] == "my-nginx" and chain["connect"]["port"] == 30080
    assert chain["translation"]["mode"] == "nodeport_snat" and chain["translation"]["confidence"] == "low"
    assert chain["response"]["status"] == 200 and chain["status"] == "ok" and result.alerts == []


def test_many_requests_on_one_connection_all_give_chains():
    cluster = Cluster()
    sc = Scenario(cluster, "dnat")
    sc.keepalive(T0, statuses=(200,) * 30 + (503,))
    result = run(sc.events(), cluster.index())
    assert len(result.chains) == 31 and len({c["chain_id"] for c in result.chains}) == 31
    assert [c["response"]["status"] for c in result.chains] == [200] * 30 + [503]
    assert all(any(h["name"] == "backend" for h in c["hops"]) for c in result.chains)


def test_request_without_response_until_the_client_gives_up():
    """The backend accepts and reads but never answers; curl gives up after 10 s."""
    cluster, events = build("healthy", "dnat")
    hung = [e for e in events if not (e.kind == "send" and e.comm == "nginx")
            and not (e.kind == "recv" and e.comm == "curl" and e.proto == "tcp")]
    hung = sorted((e.with_(ts=e.ts + 10 * 10**9) if e.kind == "close" else e for e in hung), key=lambda e: e.ts)
    result = run(hung, cluster.index())
    [chain] = result.chains
    assert chain["response"]["error"] == "no response" and chain["response"]["status"] is None
    assert chain["translation"]["mode"] == "dnat" and chain["backend"]["pod"] == "my-nginx-1"
    assert [a["rule"] for a in result.alerts] == ["svc.hop_latency"] and chain["status"] == "ok"
    assert any(h["name"] == "response" and h["latency_ns"] >= 10 * 10**9 for h in chain["hops"])
