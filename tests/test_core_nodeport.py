"""A request to a NodePort that nothing answered is broken, as one to a ClusterIP is: the node's
port is a Service's front door too. (Before, it read "ok" with a timed-out response: the
translation was assumed from the port alone.)"""
from __future__ import annotations

import dataclasses

from svctrace.streams.core import run
from tests.scenario import S, T0, Cluster, Scenario


def nodeport_request(connect_errno: str | None, fault: str = "healthy", policy: str | None = None,
                     backends_on: str | None = None, moved=None) -> tuple[dict, list[dict]]:
    """A host process on node-a requests node-b's NodePort; with `connect_errno`, only its connect and
    close happen (nothing accepts; the close 2 s later, as curl gives up). `policy`: the Service's
    externalTrafficPolicy; `backends_on`: the node both my-nginx pods run on (default: one on each);
    `moved(cluster, event)`: each of the client's events, changed."""
    cluster = Cluster(fault)
    cluster.services["my-nginx"] = dataclasses.replace(cluster.services["my-nginx"], node_port=30080,
                                                       external_traffic_policy=policy)
    if backends_on is not None:
        for name in ("my-nginx-1", "my-nginx-2"):
            cluster.pods[name] = dataclasses.replace(cluster.pods[name], node=backends_on)
    sc = Scenario(cluster, "dnat")
    sc.host_request(T0, via="nodeport")
    events = sc.events()
    if connect_errno is not None:
        res = {"EINPROGRESS": -115, "ECONNREFUSED": -111}[connect_errno]
        client = [e for e in events if e.comm == "wget" and e.kind in ("connect", "close")]
        events = [e.with_(res=res, errno=connect_errno) if e.kind == "connect" else e.with_(ts=e.ts + 2 * S)
                  for e in client]
    if moved is not None:
        events = [moved(cluster, e) if e.comm == "wget" else e for e in events]
    result = run(events, cluster.index())
    [chain] = result.chains
    return chain, result.alerts


def test_an_answered_nodeport_is_ok_and_snat_linked():
    chain, alerts = nodeport_request(None)
    assert chain["status"] == "ok" and chain["translation"]["mode"] == "nodeport_snat" and not alerts


def test_a_nodeport_nothing_answered_is_a_missing_translation():
    chain, alerts = nodeport_request("EINPROGRESS")
    assert chain["status"] == "broken" and chain["translation"]["mode"] == "none"
    assert chain["response"]["error"] == "connection timed out"
    [alert] = alerts
    assert alert["rule"] == "svc.translation_missing"
    assert "to 10.0.0.12:30080 was never translated or accepted (connection timed out)" in alert["summary"]


def test_a_nodeport_without_endpoints():
    chain, alerts = nodeport_request("EINPROGRESS", fault="no_endpoints")
    assert chain["status"] == "broken" and [a["rule"] for a in alerts] == ["svc.no_endpoints"]


def test_a_refused_nodeport():
    chain, alerts = nodeport_request("ECONNREFUSED")
    assert chain["status"] == "broken" and chain["response"]["error"] == "connection refused"
    assert [a["rule"] for a in alerts] == ["svc.target_port_refused"]


def test_a_local_policy_nodeport_on_a_node_without_endpoints_is_named_so():
    # externalTrafficPolicy Local: node-b runs none of my-nginx's pods, so kube-proxy drops its NodePort's traffic
    chain, alerts = nodeport_request("EINPROGRESS", policy="Local", backends_on="node-a")
    assert chain["status"] == "broken" and chain["response"]["error"] == "connection timed out"
    [alert] = alerts
    assert alert["rule"] == "svc.no_local_endpoints"
    assert alert["severity"] == "critical"
    assert ("connected to NodePort 10.0.0.12:30080 on node node-b, which runs none of its endpoints, and nothing "
            "answered (connection timed out): externalTrafficPolicy Local drops it there") in alert["summary"]


def test_a_local_policy_nodeport_with_a_local_endpoint_is_still_a_missing_translation():
    # node-b runs my-nginx-2: the policy does not explain the silence
    chain, alerts = nodeport_request("EINPROGRESS", policy="Local")
    assert [a["rule"] for a in alerts] == ["svc.translation_missing"]


def test_a_cluster_policy_nodeport_on_a_node_without_endpoints_is_a_missing_translation():
    # Cluster (the default) forwards to another node's endpoint: nothing answering is a missing translation
    for policy in ("Cluster", None):
        chain, alerts = nodeport_request("EINPROGRESS", policy=policy, backends_on="node-a")
        assert [a["rule"] for a in alerts] == ["svc.translation_missing"], policy


def test_a_local_policy_does_not_explain_the_nodes_own_or_a_pods_connect():
    # kube-proxy sends a node's own traffic to its NodePort, and the pods', to any endpoint: the policy drops neither
    def on_node_b(cluster, e):
        return e.with_(node="node-b", local_ip=cluster.nodes["node-b"])

    def from_a_pod(cluster, e):
        pod = cluster.pods["client"]
        return e.with_(local_ip=pod.ip, container_id=pod.container_id)

    for moved in (on_node_b, from_a_pod):
        chain, alerts = nodeport_request("EINPROGRESS", policy="Local", backends_on="node-a", moved=moved)
        assert chain["status"] == "broken", moved.__name__
        assert [a["rule"] for a in alerts] == ["svc.translation_missing"], moved.__name__


def test_a_local_policy_nodeport_answered_is_ok():
    chain, alerts = nodeport_request(None, policy="Local")
    assert chain["status"] == "ok" and not alerts


def test_a_local_policy_service_without_any_endpoint_has_no_endpoints():
    chain, alerts = nodeport_request("EINPROGRESS", fault="no_endpoints", policy="Local")
    assert [a["rule"] for a in alerts] == ["svc.no_endpoints"]


def test_one_node_port_for_tcp_and_udp_names_each_protocols_service_port():
    """A Service may expose the same NodePort for TCP and UDP (DNS does): a flow to it gets the port of its own
    protocol."""
    from svctrace.streams.core.stitch import Stitcher
    from svctrace.streams.metadata.index import ClusterIndex
    from tests.scenario import Service

    cluster = Cluster()
    cluster.services["dns-np"] = Service("dns-np", "10.96.0.53", 53, 53, {"k8s-app": "kube-dns"},
                                         namespace="kube-system", protocol="UDP", node_port=30053)
    records = cluster.records()
    svc = next(r for r in records if r["kind"] == "Service" and r["name"] == "dns-np")
    svc["service"]["ports"].append({"name": "dns-tcp", "port": 53, "protocol": "TCP", "target_port": 53,
                                    "node_port": 30053})
    stitcher = Stitcher(ClusterIndex.from_records(records))
    for proto in ("UDP", "TCP"):
        info, sp = stitcher._nodeport_service(30053, T0, proto)
        assert (info.name, sp.protocol, sp.node_port) == ("dns-np", proto, 30053)
    assert stitcher._nodeport_service(30053, T0, "SCTP") is None
