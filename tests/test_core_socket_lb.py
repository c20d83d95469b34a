"""Socket-LB (Cilium's kube-proxy replacement): the client's connect is rewritten to a backend pod inside the
kernel, so its socket's peer is the pod and the ClusterIP shows only in the DNS answer. When nothing at that pod
takes the connect (or the datagram), the translation is not what is missing: the chosen backend is unreachable
(svc.backend_unreachable), and the alert names it and how it stood among the Service's endpoints."""
from __future__ import annotations

from svctrace.streams.core import run
from tests.scenario import S, T0, UDP_PORT, US, Cluster, Pod, Scenario

NAME = "my-nginx.default.svc.cluster.local"


def _timed_out_connect(cluster: Cluster, backend: Pod) -> list:
    """curl resolves my-nginx; socket-LB sends its connect to `backend`:80, which never answers; curl gives up
    after 2 s."""
    sc = Scenario(cluster, "socket_lb")
    curl = sc.proc("client", "curl")
    client, svc = cluster.pods["client"], cluster.services["my-nginx"]
    t = sc.lookup(T0, curl, client.ip, NAME, [svc.cluster_ip]) + 200 * US
    c = dict(proto="tcp", role="client", local_ip=client.ip, local_port=sc.port())
    sc.ev(t, curl, "connect", "connect", 4, -115, remote_ip=backend.ip, remote_port=80, addr_ip=svc.cluster_ip,
          addr_port=svc.port, **c)
    sc.ev(t + 2 * S, curl, "close", "close", 4, 0, **c)
    sc.lookup(T0 + 40 * S, sc.proc("client", "other"), client.ip, "example.com", ["93.184.216.34"])  # input goes on
    return sc.events()


def _service_chain_and_alerts(cluster: Cluster, events) -> tuple[dict, list[dict]]:
    result = run(events, cluster.index())
    [chain] = [c for c in result.chains if c["service"]]
    return chain, [a for a in result.alerts if a["alert_id"] in chain["alerts"]]


def test_a_connect_socket_lb_sent_to_a_pod_that_never_answers_is_an_unreachable_backend():
    cluster = Cluster()
    chain, alerts = _service_chain_and_alerts(cluster, _timed_out_connect(cluster, cluster.pods["my-nginx-1"]))
    assert chain["status"] == "broken" and chain["translation"]["mode"] == "socket_lb"
    assert chain["response"]["error"] == "connection timed out" and chain["backend"]["pod"] == "my-nginx-1"
    assert [a["summary"] for a in alerts] == [
        "default/my-nginx: connect from default/client to default/my-nginx-1 (10.244.1.7:80), the backend socket-LB "
        "chose, was never accepted (connection timed out)"]


def test_a_stale_socket_lb_map_says_the_pod_is_no_endpoint():
    """The pod socket-LB chose is not in the Service's endpoints (the map behind a rollout): the alert says so."""
    cluster = Cluster()
    gone = Pod("my-nginx-0", "10.244.1.9", "node-a", labels={"run": "old"}, container_id="a9e100000000",
               ports=(("http", 80),))
    cluster.pods[gone.name] = gone
    _chain, alerts = _service_chain_and_alerts(cluster, _timed_out_connect(cluster, gone))
    [summary] = [a["summary"] for a in alerts]
    assert summary.endswith("was never accepted (connection timed out); it is not one of the Service's endpoints "
                            "(a stale socket-LB map?)")
    assert [a["rule"] for a in alerts] == ["svc.backend_unreachable"]


def test_a_connect_socket_lb_sent_to_a_pod_that_answers_raises_nothing():
    """The same connect, accepted and answered: ok, and no alert (the rule is about silence only)."""
    sc = Scenario(Cluster(), "socket_lb")
    sc.request(T0)
    sc.lookup(T0 + 40 * S, sc.proc("client", "other"), sc.cluster.pods["client"].ip, "example.com", ["93.184.216.34"])
    chain, alerts = _service_chain_and_alerts(sc.cluster, sc.events())
    assert chain["status"] == "ok" and chain["translation"]["mode"] == "socket_lb" and alerts == []


def test_a_udp_datagram_socket_lb_sent_to_a_pod_nobody_received_is_an_unreachable_backend():
    cluster = Cluster()
    cluster.add_udp_service()
    sc = Scenario(cluster)
    sc.udp_flow(T0, socket_lb=True, received_by="metrics-1", reply=False, lookup=True)
    events = [e for e in sc.events() if not (e.role == "server" and e.local_port == UDP_PORT)]  # nobody received it
    result = run(events, cluster.index())
    [chain] = [c for c in result.chains if c["service"]]
    [alert] = [a for a in result.alerts if a["alert_id"] in chain["alerts"]]
    assert chain["status"] == "broken" and chain["response"]["error"] == "no reply"
    assert alert["summary"] == ("default/metrics: UDP datagram from default/client to default/metrics-1 "
                                f"(10.244.2.20:{UDP_PORT}), the backend socket-LB chose, was never received (no reply)")
    assert chain["translation"]["mode"] == "socket_lb" and chain["backend"]["pod"] == "metrics-1"
