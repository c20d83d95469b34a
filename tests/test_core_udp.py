"""UDP Services other than DNS: a client's datagrams to a Service, followed as one flow per client socket.

A statsd-like Service, `metrics` (UDP 8125 -> 8125), whose pod runs on the other node: the client resolves
its name, sends a datagram to the ClusterIP (unconnected, sendto; or connected, send), kube-proxy DNATs it to
the pod, which may answer. What the syscalls tell apart: delivered (a backend received it) or answered, an
ICMP error the client's socket reports (ECONNREFUSED: kube-proxy's REJECT for a Service without endpoints, or
the pod with nothing on the targetPort), and nothing at all (no backend received it, no reply came).
"""
from __future__ import annotations

import pytest

from svctrace.streams.core import Settings, run
from tests.scenario import MS, S, T0, UDP_NAME, UDP_PAYLOAD, UDP_PORT, UDP_REPLY, UDP_VIP, US, Cluster, Proc, Scenario

VIP, PORT, NAME = UDP_VIP, UDP_PORT, UDP_NAME
PAYLOAD, REPLY = UDP_PAYLOAD, UDP_REPLY


def udp_cluster(target_port: int = PORT, selector: str = "metrics", extra_pod: bool = False) -> Cluster:
    cl = Cluster()
    cl.add_udp_service(target_port, selector, extra_pod)
    return cl


def chains_and_rules(cluster: Cluster, events) -> tuple[list[dict], dict]:
    result = run(events, cluster.index())
    rules = {a["alert_id"]: a for a in result.alerts}
    return result.chains, rules


def udp_chain(chains: list[dict]) -> dict:
    [chain] = [c for c in chains if (c["service"] or {}).get("protocol") == "UDP" and c["service"]["name"] == "metrics"]
    return chain


def test_a_datagram_answered_through_dnat_is_one_ok_chain_with_its_lookup():
    sc = Scenario(udp_cluster())
    port = sc.udp_flow(T0)
    chains, rules = chains_and_rules(sc.cluster, sc.events())
    chain = udp_chain(chains)
    assert chain["status"] == "ok" and not chain["alerts"]
    assert chain["client"]["pod"] == "client" and chain["client"]["port"] == port
    assert chain["dns"]["qname"] == NAME and chain["dns"]["answers"] == [VIP]  # the lookup it claimed
    assert chain["service"]["cluster_ip"] == VIP and chain["service"]["port"] == PORT
    assert chain["translation"]["mode"] == "dnat"
    assert chain["backend"]["pod"] == "metrics-1" and chain["backend"]["port"] == PORT
    assert chain["response"] == {"protocol": None, "method": None, "target": None, "host": None, "status": None,
                                 "bytes_sent": len(PAYLOAD), "bytes_received": len(REPLY), "error": None}
    assert [h["name"] for h in chain["hops"]] == ["dns", "connect"]
    assert chain["hops"][1]["latency_ns"] == 190 * US  # the first datagram to the backend's receipt
    whats = [r["what"] for r in chain["evidence"]]
    for what in ("client datagram", "backend received", "backend reply", "client reply", "client close"):
        assert what in whats
    assert len(chains) == 1, "the lookup is the flow's, not a chain of its own"


def test_a_datagram_delivered_without_a_reply_is_ok():
    """Fire and forget (statsd, syslog): the backend received it; no reply was asked for."""
    sc = Scenario(udp_cluster())
    sc.udp_flow(T0, reply=False)
    chain = udp_chain(chains_and_rules(sc.cluster, sc.events())[0])
    assert chain["status"] == "ok" and chain["response"]["error"] is None
    assert chain["backend"]["pod"] == "metrics-1"


def test_a_port_unreachable_from_the_pod_is_a_wrong_target_port():
    """The Service's targetPort has nothing listening: the pod's kernel answers ICMP port unreachable, which a
    connected socket reports as ECONNREFUSED on its next call."""
    sc = Scenario(udp_cluster(target_port=8126))
    sc.udp_flow(T0, connected=True, received_by=None, reply=False, error="ECONNREFUSED")
    chains, rules = chains_and_rules(sc.cluster, sc.events())
    chain = udp_chain(chains)
    assert chain["status"] == "broken"
    assert chain["response"]["error"] == "connection refused"
    assert chain["connect"]["errno"] == "ECONNREFUSED" and chain["connect"]["ip"] == VIP
    [alert] = [rules[i] for i in chain["alerts"]]
    assert alert["rule"] == "svc.target_port_refused"
    assert "8126" in alert["summary"]


def test_a_port_unreachable_without_endpoints_is_no_endpoints():
    """kube-proxy REJECTs a Service without endpoints (UDP too: ICMP port unreachable)."""
    sc = Scenario(udp_cluster(selector="metricz"))
    sc.udp_flow(T0, connected=True, received_by=None, reply=False, error="ECONNREFUSED")
    chains, rules = chains_and_rules(sc.cluster, sc.events())
    chain = udp_chain(chains)
    assert chain["status"] == "broken"
    assert [rules[i]["rule"] for i in chain["alerts"]] == ["svc.no_endpoints"]
    assert "run=metricz matches no pod" in rules[chain["alerts"][0]]["summary"]


def test_a_datagram_nobody_received_and_nobody_answered_is_a_missing_translation():
    """Every node has an agent: no backend received the datagram, no reply came, and the client gave up."""
    sc = Scenario(udp_cluster())
    sc.udp_flow(T0, received_by=None, reply=False)
    chains, rules = chains_and_rules(sc.cluster, sc.events())
    chain = udp_chain(chains)
    assert chain["status"] == "broken" and chain["response"]["error"] == "no reply"
    assert [rules[i]["rule"] for i in chain["alerts"]] == ["svc.translation_missing"]


def test_nobody_receiving_on_an_unconnected_socket_names_an_undeclared_target_port():
    """An unconnected socket is not told of the pod's ICMP port unreachable: the syscalls show only silence, as for a
    missing translation; the endpoints' declared UDP ports, without the targetPort, say which is likely."""
    summaries = {}
    for target in (PORT, 8126):
        sc = Scenario(udp_cluster(target_port=target))
        sc.udp_flow(T0, received_by=None, reply=False)
        chains, rules = chains_and_rules(sc.cluster, sc.events())
        [alert] = [rules[i] for i in udp_chain(chains)["alerts"]]
        assert alert["rule"] == "svc.translation_missing"
        summaries[target] = alert["summary"]
    assert summaries[PORT].endswith("UDP datagram from default/client to 10.96.0.120 was never translated or "
                                    "received (no reply)")
    assert "; or a wrong targetPort: its endpoints declare UDP 8125 (statsd), not 8126" in summaries[8126]


def test_a_datagram_landing_on_a_pod_outside_the_endpoints_is_misrouted():
    sc = Scenario(udp_cluster(extra_pod=True))
    sc.udp_flow(T0, received_by="stray")
    chains, rules = chains_and_rules(sc.cluster, sc.events())
    chain = udp_chain(chains)
    assert chain["backend"]["pod"] == "stray"
    assert [rules[i]["rule"] for i in chain["alerts"]] == ["svc.misrouted"]


def test_a_flow_lost_on_a_node_is_incomplete_not_broken():
    sc = Scenario(udp_cluster())
    sc.udp_flow(T0, received_by=None, reply=False)
    sc.loss(T0 + 5 * MS, "node-b", count=3)
    chain = udp_chain(chains_and_rules(sc.cluster, sc.events())[0])
    assert chain["status"] == "incomplete" and chain["alerts"] == []
    assert "lost on node node-b" in chain["incomplete_reason"]


def test_a_socket_connected_only_to_sort_addresses_makes_no_chain_and_claims_no_lookup():
    """glibc's getaddrinfo connects a UDP socket to each address it got (RFC 6724 sorting) and closes it without
    sending: no flow, and the lookup stays the TCP request's that follows."""
    sc = Scenario(udp_cluster())
    client = sc.proc("client", "curl")
    client_ip = sc.cluster.pods["client"].ip
    t = sc.lookup(T0, client, client_ip, "my-nginx.default.svc.cluster.local", ["10.96.0.100"])
    port = sc.port()
    c = dict(proto="udp", role="client", local_ip=client_ip, local_port=port, remote_ip="10.96.0.100",
             remote_port=8080)
    sc.ev(t + 10 * US, client, "connect", "connect", 8, 0, addr_ip="10.96.0.100", addr_port=8080, **c)
    sc.ev(t + 20 * US, client, "close", "close", 8, 0, **c)
    sc.request(t + 100 * US, client=client)
    chains, _rules = chains_and_rules(sc.cluster, sc.events())
    assert [(c["service"] or {}).get("protocol") for c in chains if c["dns"]].count("UDP") == 0
    tcp = [c for c in chains if (c["service"] or {}).get("name") == "my-nginx"]
    assert tcp and tcp[0]["dns"] is not None, "the lookup went to the TCP request"


def test_a_flow_resumes_from_its_state_at_every_cut():
    """The flow's state is a connection's: written (dumps_state) and restored after any call of the stitch
    stage (with its input buffer, as tests/test_core_stitch_state.py does), the rest of the input gives the chains of
    the uninterrupted run."""
    from svctrace.streams.core import dumps_state, loads_state
    from svctrace.streams.core.stitch import Stitcher
    from tests.test_core_stitch_state import _prefix, _replay, _stitch_calls

    sc = Scenario(udp_cluster(target_port=8126))
    sc.udp_flow(T0)
    sc.udp_flow(T0 + 3 * S, connected=True, received_by=None, reply=False, error="ECONNREFUSED")
    events = sc.events()
    cluster = sc.cluster
    calls = _stitch_calls(cluster, events)
    whole = _replay(Stitcher(cluster.index()), calls, {})
    assert sorted(c["status"] for c in whole if (c["service"] or {}).get("protocol") == "UDP") == ["broken", "ok"]
    held = 0
    for cut in range(1, len(calls)):
        before, states = _prefix(cluster, calls, cut)
        held += sum(k.startswith("udp/") for st in states.values() for k in st["conns"])
        op = Stitcher(cluster.index())
        restored = {k: op.restore(loads_state(dumps_state(st))) for k, st in states.items()}
        assert before + _replay(op, calls[cut:], restored) == whole, cut
    assert held, "some cut fell inside a flow"


def test_a_flow_only_the_server_saw_leaves_settle_after_its_receipt():
    """A UDP server's socket serves every peer and never closes for one: a flow whose client is not traced (or a DNS
    server on another port than 53, whose clients' queries are DNS lookups) must not wait out the idle timeout in
    the state, one per peer."""
    from svctrace.streams.core import Graph, Settings
    from tests.test_core_stitch_accepting import _bucket, _flows

    settings = Settings()
    sc = Scenario(udp_cluster())
    sc.udp_flow(T0, reply=False, lookup=False)
    server_side = [e for e in sc.events() if e.comm == "statsd"]
    assert [e.kind for e in server_side] == ["recv"]
    graph = Graph(sc.cluster.index(), settings)
    [(key, batches)] = _flows(graph, server_side).items()
    st = _bucket(graph, batches)
    receipt = server_side[0]
    assert graph.stitch.advance(st, key, receipt.ts + settings.settle_ns - 1) == []
    [conn] = st["conns"].values()
    assert conn.k == f"udp/{receipt.remote_ip}:{receipt.remote_port}" and conn.cl is None
    assert graph.stitch.advance(st, key, receipt.ts + settings.settle_ns) == []  # gone, nothing emitted
    assert not st["conns"] and graph.stitch.is_idle(st)


@pytest.mark.parametrize("first_received", [True, False])
def test_an_unconnected_socket_sending_to_two_services_is_followed_to_the_first(first_received):
    """statsd to one Service, syslog to another, from one unconnected socket: the flow is the first destination's;
    the other's datagrams do not count in it, and its backend's receipt (which a pod sees from the same client
    address and port) is not called misrouted, nor does it make the flow delivered: with the first Service's
    datagram received by nobody, the flow is not "ok"."""
    from tests.scenario import Service

    cluster = udp_cluster(extra_pod=True)
    cluster.services["logs"] = Service("logs", "10.96.0.121", 514, UDP_PORT, {"run": "stray"}, protocol="UDP")
    sc = Scenario(cluster)
    client = sc.proc("client", "app")
    client_ip = cluster.pods["client"].ip
    port = sc.port()
    c = dict(proto="udp", role="client", local_ip=client_ip, local_port=port)
    for i, (vip, svc_port, pod) in enumerate([(VIP, PORT, "metrics-1"), ("10.96.0.121", 514, "stray")]):
        t = T0 + i * MS
        sc.ev(t, client, "send", "sendto", 9, len(PAYLOAD), data=PAYLOAD, addr_ip=vip, addr_port=svc_port,
              remote_ip=vip, remote_port=svc_port, **c)
        p = cluster.pods[pod]
        if pod == "metrics-1" and not first_received:
            continue
        sc.ev(t + 200 * US, Proc(p.node, 800 + i, "statsd", p.container_id), "recv", "recvfrom", 4, len(PAYLOAD),
              data=PAYLOAD, proto="udp", role="server", local_ip=p.ip, local_port=UDP_PORT, remote_ip=client_ip,
              remote_port=port, addr_ip=client_ip, addr_port=port)
    sc.ev(T0 + 2 * S, client, "close", "close", 9, 0, remote_ip=VIP, remote_port=PORT, **c)
    chains, rules = chains_and_rules(cluster, sc.events())
    chain = udp_chain(chains)
    assert chain["connect"]["ip"] == VIP and chain["response"]["bytes_sent"] == len(PAYLOAD)  # the first's only
    said = {rules[i]["rule"] for i in chain["alerts"]}
    received = [e["what"] for e in chain["evidence"] if e["what"].startswith("backend")]
    if first_received:
        assert chain["backend"]["pod"] == "metrics-1" and chain["status"] == "ok" and received == ["backend received"]
    else:  # the other Service's pod got the only receipt: not this flow's
        assert chain["backend"] is None and chain["status"] == "broken" and received == []
        assert said == {"svc.translation_missing"}
    assert "svc.misrouted" not in said


def _long_lived(sc: Scenario, times_s, error: str | None = None, reply: bool = True) -> None:
    """A client that keeps one connected socket for its life (a statsd client): a datagram at each of times_s
    (seconds after T0), each answered by metrics-1 or refused; the socket never closes."""
    cl = sc.cluster
    client = sc.proc("client", "app")
    client_ip = cl.pods["client"].ip
    port = sc.port()
    c = dict(proto="udp", role="client", local_ip=client_ip, local_port=port, remote_ip=VIP, remote_port=PORT)
    sc.ev(T0, client, "connect", "connect", 9, 0, addr_ip=VIP, addr_port=PORT, **c)
    pod = cl.pods["metrics-1"]
    srv = Proc(pod.node, 800, "statsd", pod.container_id)
    s = dict(proto="udp", role="server", local_ip=pod.ip, local_port=PORT, remote_ip=client_ip, remote_port=port,
             addr_ip=client_ip, addr_port=port)
    for at in times_s:
        t = T0 + at * S + MS
        sc.ev(t, client, "send", "send", 9, len(PAYLOAD), data=PAYLOAD, **c)
        if error is not None:
            sc.ev(t + 400 * US, client, "recv", "recv", 9, -111, errno=error, **c)
            continue
        sc.ev(t + 200 * US, srv, "recv", "recvfrom", 4, len(PAYLOAD), data=PAYLOAD, **s)
        if reply:
            sc.ev(t + 300 * US, srv, "send", "sendto", 4, len(REPLY), data=REPLY, **s)
            sc.ev(t + 500 * US, client, "recv", "recv", 9, len(REPLY), data=REPLY, **c)


def test_a_socket_that_never_closes_makes_a_chain_per_window():
    """A statsd client's socket lives as long as its process: its datagrams make a chain per udp_window_ns (10 s
    by default) of them, not one at its close, which may never come."""
    assert Settings().udp_window_ns == 10 * S
    sc = Scenario(udp_cluster())
    _long_lived(sc, range(0, 25, 2))
    chains = [c for c in run(sc.events(), sc.cluster.index()).chains if c["service"]]
    assert [c["status"] for c in chains] == ["ok"] * 3
    assert [c["response"]["bytes_sent"] // len(PAYLOAD) for c in chains] == [5, 5, 3]  # 0-8 s, 10-18 s, 20-24 s
    assert [(c["start_ts"] - T0) // S for c in chains] == [0, 10, 20]
    assert len({c["chain_id"] for c in chains}) == 3
    # a window of 5 s: a chain per 5 s of datagrams, and nothing lost between them
    chains = [c for c in run(sc.events(), sc.cluster.index(), Settings(udp_window_ns=5 * S)).chains if c["service"]]
    assert [(c["start_ts"] - T0) // S for c in chains] == [0, 6, 12, 18, 24]
    assert sum(c["response"]["bytes_sent"] for c in chains) == 13 * len(PAYLOAD)


def test_an_error_ends_the_flow_and_the_next_datagram_starts_another():
    """A long-lived socket to a Service without endpoints: each datagram refused (kube-proxy's REJECT). Each error
    ends its flow, whose chain (and alert) comes settle after it, not at a close that never comes."""
    sc = Scenario(udp_cluster(selector="metricz"))
    _long_lived(sc, (0, 1, 2), error="ECONNREFUSED")
    result = run(sc.events(), sc.cluster.index())
    chains = [c for c in result.chains if c["service"]]
    assert [(c["status"], c["response"]["error"]) for c in chains] == [("broken", "connection refused")] * 3
    rules = {a["alert_id"]: a["rule"] for a in result.alerts}
    assert all([rules[i] for i in c["alerts"]] == ["svc.no_endpoints"] for c in chains)
    # each chain ends at its error: the next datagram is the next chain's
    assert [(c["end_ts"] - T0) // MS for c in chains] == [1, 1001, 2001]


def test_a_datagram_that_fails_at_once_is_a_failed_flow():
    """No route to the ClusterIP: sendto fails at once (EHOSTUNREACH). The flow is that one failed datagram, and
    nothing translated the ClusterIP."""
    sc = Scenario(udp_cluster())
    client = sc.proc("client", "app")
    c = dict(proto="udp", role="client", local_ip=sc.cluster.pods["client"].ip, local_port=sc.port(), remote_ip=VIP,
             remote_port=PORT)
    sc.ev(T0, client, "send", "sendto", 9, -113, errno="EHOSTUNREACH", addr_ip=VIP, addr_port=PORT, **c)
    chains, rules = chains_and_rules(sc.cluster, sc.events())
    chain = udp_chain(chains)
    assert chain["status"] == "broken" and chain["response"]["error"] == "host unreachable"
    assert (chain["connect"]["ip"], chain["connect"]["errno"]) == (VIP, "EHOSTUNREACH")
    assert [rules[i]["rule"] for i in chain["alerts"]] == ["svc.translation_missing"]
    assert "client datagram EHOSTUNREACH" in [r["what"] for r in chain["evidence"]]


def test_a_flow_through_socket_lb_finds_its_service_through_its_lookup():
    """Cilium's socket-LB rewrites the connected socket's connect: its datagrams leave for the pod itself, and the
    ClusterIP is in no syscall but the DNS answer. The flow finds its Service through the lookup it claims, as a
    TCP connection through socket-LB does; with no lookup it is no Service's flow, and no alert."""
    for lookup in (True, False):
        sc = Scenario(udp_cluster())
        sc.udp_flow(T0, socket_lb=True, lookup=lookup)
        chains, rules = chains_and_rules(sc.cluster, sc.events())
        if not lookup:
            assert [c for c in chains if c["service"]] == [] and rules == {}
            continue
        chain = udp_chain(chains)
        assert chain["status"] == "ok" and chain["backend"]["pod"] == "metrics-1"
        assert chain["dns"]["answers"] == [VIP] and chain["service"]["cluster_ip"] == VIP
        assert chain["connect"]["ip"] == sc.cluster.pods["metrics-1"].ip and chain["translation"]["mode"] == "socket_lb"
        assert chain["alerts"] == []
