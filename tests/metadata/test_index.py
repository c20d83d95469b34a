"""ClusterIndex: time-aware lookups, DNS detection, named ports, bounded memory."""
from __future__ import annotations

import random

import pytest

from svctrace.schemas.validation import validate
from svctrace.streams.metadata.index import ClusterIndex, record_key
from tests.metadata.records import S, endpoint, node, pod, rec, service, slice_


def test_builder_records_match_the_schema():
    for r in (
        pod("a", "10.0.0.5", 1, cids=["containerd://" + "ab" * 32], ports=[("http", 8080, "TCP")]),
        service("web", "10.96.0.10", 1, labels={"k8s-app": "kube-dns"}),
        slice_("web-x1", "web", 1, [endpoint("10.0.0.5", pod="a", terminating=False)]),
        node("n1", ["192.168.1.10"], 1, cidrs=["10.0.0.0/24"]),
        rec("Namespace", None, "default", 1),
    ):
        validate("k8s-object", r)


def _reuse_history():
    return [
        pod("old", "10.0.0.5", 10 * S, uid="u-old"),
        pod("old", "10.0.0.5", 20 * S, deleted=True, uid="u-old"),
        pod("new", "10.0.0.5", 25 * S, uid="u-new"),
    ]


@pytest.mark.parametrize("seed", [0, 1, 2, 3])
def test_reused_pod_ip_maps_by_event_time_whatever_the_arrival_order(seed):
    records = _reuse_history()
    random.Random(seed).shuffle(records)
    idx = ClusterIndex.from_records(records)
    assert idx.pod_by_ip("10.0.0.5", 15 * S).name == "old"
    assert idx.pod_by_ip("10.0.0.5", 22 * S) is None  # between delete and reuse: nobody
    assert idx.pod_by_ip("10.0.0.5", 30 * S).name == "new"
    assert idx.pod_by_ip("10.0.0.5").name == "new"
    # Before anything was observed the first known owner answers (a snapshot taken after traffic).
    assert idx.pod_by_ip("10.0.0.5", 1 * S).name == "old"


def test_applying_one_by_one_out_of_order_equals_sorted():
    idx = ClusterIndex()
    for r in reversed(_reuse_history()):
        idx.apply(r)
    assert [idx.pod_by_ip("10.0.0.5", t * S) and idx.pod_by_ip("10.0.0.5", t * S).name
            for t in (15, 22, 30)] == ["old", None, "new"]


def test_terminal_pod_still_holding_an_ip_loses_to_the_running_one():
    idx = ClusterIndex.from_records([
        pod("job", "10.0.0.7", 10 * S, phase="Succeeded", ready=False),
        pod("web", "10.0.0.7", 12 * S),
    ])
    assert idx.pod_by_ip("10.0.0.7", 13 * S).name == "web"
    # An exact interval wins over the before-first-observation fallback.
    assert idx.pod_by_ip("10.0.0.7", 11 * S).name == "job"


def test_host_network_pods_do_not_claim_the_node_ip():
    idx = ClusterIndex.from_records([
        pod("kube-proxy-x", "192.168.1.10", S, host_network=True, ns="kube-system"),
        node("n1", ["192.168.1.10", "n1.example"], S),
    ])
    assert idx.pod_by_ip("192.168.1.10") is None
    assert idx.node_by_ip("192.168.1.10") == "n1"
    assert idx.node_by_ip("192.168.1.11") is None


def test_pod_by_container_prefix_full_and_after_delete():
    cid = "0123456789abcdef" * 4
    idx = ClusterIndex.from_records([
        pod("a", "10.0.0.5", S, cids=["containerd://" + cid]),
        pod("a", "10.0.0.5", 2 * S, deleted=True),
    ])
    assert idx.pod_by_container(cid[:12]).name == "a"
    assert idx.pod_by_container(cid).name == "a"
    assert idx.pod_by_container("docker://" + cid.upper()).name == "a"
    assert idx.pod_by_container("ffffffffffff") is None
    assert idx.pod_by_container(cid[:12] + "ffff") is None  # same prefix, different id


def test_service_by_cluster_ip_port_and_protocol():
    idx = ClusterIndex.from_records([
        service("dns", "10.96.0.10", S, ns="kube-system",
                ports=[("dns", 53, "UDP", 53), ("dns-tcp", 53, "TCP", 53), ("metrics", 9153, "TCP", 9153)]),
        service("headless", "None", S),
    ])
    svc, port = idx.service_by_ip("10.96.0.10", 53, "UDP")
    assert (svc.name, port.name) == ("dns", "dns")
    assert idx.service_by_ip("10.96.0.10", 53, "tcp")[1].name == "dns-tcp"
    assert idx.service_by_ip("10.96.0.10", 8080) == (svc, None)  # VIP known, port not exposed
    assert idx.service_by_ip("10.96.0.10")[1] is None
    assert idx.service_by_ip("10.96.0.11") is None
    assert idx.service("kube-system", "dns").ports[0].target_port == 53
    assert idx.service("default", "headless").cluster_ips == ()


def test_service_recreated_with_a_new_cluster_ip_is_time_aware():
    idx = ClusterIndex.from_records([
        service("web", "10.96.1.1", 10 * S),
        service("web", "10.96.1.1", 20 * S, deleted=True),
        service("web", "10.96.2.2", 30 * S),
    ])
    assert idx.service_by_ip("10.96.1.1", 80, ts=15 * S)[0].name == "web"
    assert idx.service_by_ip("10.96.1.1", 80, ts=35 * S) is None
    assert idx.service_by_ip("10.96.2.2", 80, ts=35 * S)[1].target_port == 8080
    assert idx.service("default", "web", 25 * S) is None
    assert idx.service("default", "web").cluster_ips == ("10.96.2.2",)


def test_service_attributes_are_kept():
    idx = ClusterIndex.from_records([
        service("lb", "10.96.3.3", S, type_="LoadBalancer", affinity="ClientIP", etp="Local",
                selector={"app": "lb", "tier": "web"}),
    ])
    svc = idx.service("default", "lb")
    assert (svc.type, svc.session_affinity, svc.external_traffic_policy) == ("LoadBalancer", "ClientIP", "Local")
    assert svc.selector == {"app": "lb", "tier": "web"}
    assert hash(svc) == hash(idx.service("default", "lb"))  # usable as a dict key


def test_endpointslice_conditions_and_membership():
    idx = ClusterIndex.from_records([
        service("web", "10.96.1.1", S),
        pod("web-a", "10.0.0.5", S, labels={"app": "web"}),
        pod("web-b", "10.0.1.6", S, node="n2"),
        slice_("web-abc", "web", S, [
            endpoint("10.0.0.5", pod="web-a"),
            endpoint("10.0.1.6", pod="web-b", node="n2", ready=False, serving=True, terminating=True),
            {"addresses": ["10.0.2.7"], "ready": None, "serving": None, "terminating": None,
             "node": None, "pod": None, "pod_namespace": None},
        ]),
    ])
    eps = {e.ip: e for e in idx.endpoints("default", "web")}
    assert (eps["10.0.0.5"].ready, eps["10.0.0.5"].serving, eps["10.0.0.5"].terminating) == (True, True, False)
    assert (eps["10.0.1.6"].ready, eps["10.0.1.6"].serving, eps["10.0.1.6"].terminating) == (False, True, True)
    assert eps["10.0.2.7"].ready and eps["10.0.2.7"].serving  # nil conditions mean ready
    assert (eps["10.0.0.5"].port, eps["10.0.0.5"].port_name) == (8080, "http")
    assert idx.endpoint_pod(eps["10.0.1.6"]).node == "n2"
    assert [s.name for s in idx.services_for_endpoint("10.0.0.5", 8080)] == ["web"]
    assert idx.services_for_endpoint("10.0.0.5", 9999) == []
    assert idx.services_for_endpoint("10.9.9.9") == []


def test_endpoints_membership_changes_over_time():
    idx = ClusterIndex.from_records([
        slice_("web-abc", "web", 10 * S, [endpoint("10.0.0.5", pod="web-a")]),
        slice_("web-abc", "web", 20 * S, [endpoint("10.0.0.6", pod="web-b")]),
        service("web", "10.96.1.1", 10 * S),
    ])
    assert [e.ip for e in idx.endpoints("default", "web", 15 * S)] == ["10.0.0.5"]
    assert [e.ip for e in idx.endpoints("default", "web", 25 * S)] == ["10.0.0.6"]
    assert idx.services_for_endpoint("10.0.0.5", ts=25 * S) == []


def _legacy_endpoints(ts, subsets):
    return rec("Endpoints", "default", "web", ts, endpoints={
        "service": "web", "address_type": "IPv4", "ports": [],
        "endpoints": [
            {"addresses": [ip], "ready": ready, "serving": ready, "terminating": False, "node": "n1",
             "pod": None, "pod_namespace": None, "ports": [{"name": "http", "port": p, "protocol": "TCP"}]}
            for ip, p, ready in subsets
        ],
    })


def test_core_v1_endpoints_used_where_slices_are_absent():
    idx = ClusterIndex.from_records([
        service("web", "10.96.1.1", S),
        _legacy_endpoints(S, [("10.0.0.5", 8080, True), ("10.0.0.6", 9090, False)]),
    ])
    eps = sorted((e.ip, e.port, e.ready) for e in idx.endpoints("default", "web"))
    assert eps == [("10.0.0.5", 8080, True), ("10.0.0.6", 9090, False)]
    assert [s.name for s in idx.services_for_endpoint("10.0.0.6", 9090)] == ["web"]
    # Once a slice exists it is authoritative, the legacy object is ignored.
    idx.apply(slice_("web-abc", "web", 2 * S, [endpoint("10.0.0.7")]))
    assert [e.ip for e in idx.endpoints("default", "web")] == ["10.0.0.7"]
    assert idx.services_for_endpoint("10.0.0.5") == []


def test_cluster_dns_ips():
    idx = ClusterIndex.from_records([
        service("kube-dns", "10.96.0.10", S, ns="kube-system", ports=[("dns", 53, "UDP", 53)],
                labels={"k8s-app": "kube-dns"}, selector={"k8s-app": "kube-dns"}),
        service("my-dns", "10.96.0.20", S, ns="kube-system", labels={"k8s-app": "kube-dns"}),
        service("kube-dns", "10.96.0.30", S, ns="default"),  # not in kube-system
        pod("coredns-1", "10.0.0.2", S, ns="kube-system", labels={"k8s-app": "kube-dns"}),
        slice_("kube-dns-x", "kube-dns", S, [endpoint("10.0.0.2", pod="coredns-1", ns="kube-system"),
                                             endpoint("10.0.0.3", ns="kube-system")],
               ns="kube-system", ports=[("dns", 53, "UDP")]),
        pod("web", "10.0.0.9", S),
    ])
    assert idx.is_cluster_dns("10.96.0.10")
    assert idx.is_cluster_dns("10.96.0.20")
    assert idx.is_cluster_dns("10.0.0.2")
    assert idx.is_cluster_dns("10.0.0.3")  # endpoint without targetRef
    assert idx.is_cluster_dns("169.254.20.10")
    assert not idx.is_cluster_dns("10.96.0.30")
    assert not idx.is_cluster_dns("10.0.0.9")
    assert not idx.is_cluster_dns("8.8.8.8")
    assert sorted(s.name for s in idx.dns_services()) == ["kube-dns", "my-dns"]


def test_resolve_target_port_numeric_named_and_default():
    idx = ClusterIndex.from_records([
        service("web", "10.96.1.1", S, ports=[("a", 80, "TCP", "http-alt"), ("b", 81, "TCP", 9000),
                                              ("c", 82, "TCP", None), ("d", 83, "UDP", "http-alt"),
                                              ("e", 84, "TCP", "missing")]),
        pod("web-a", "10.0.0.5", S, ports=[("http-alt", 8081, "TCP")]),
    ])
    svc, p = idx.service("default", "web"), idx.pod_by_ip("10.0.0.5")
    resolved = [idx.resolve_target_port(svc, sp, p) for sp in svc.ports]
    assert resolved == [8081, 9000, 82, None, None]


def test_tombstone_by_key_and_len():
    idx = ClusterIndex.from_records([pod("a", "10.0.0.5", S), service("web", "10.96.1.1", S)])
    assert len(idx) == 2
    idx.apply_keyed("Pod/default/a", None, 2 * S)
    assert len(idx) == 1
    assert idx.pod_by_ip("10.0.0.5") is None
    assert idx.pod_by_ip("10.0.0.5", int(1.5 * S)).name == "a"
    assert record_key(node("n1", [], 1)) == "Node//n1"
    with pytest.raises(ValueError, match="bad k8s object key"):
        idx.apply_keyed("Pod/a", None, 3 * S)


def test_bad_records_raise_clear_errors():
    idx = ClusterIndex()
    with pytest.raises(ValueError, match="unknown kind 'Deployment'"):
        idx.apply(rec("Deployment", "default", "d", 1))
    with pytest.raises(ValueError, match="observed_ts"):
        idx.apply({"kind": "Pod", "name": "x"})
    assert len(idx) == 0


def test_history_is_bounded_by_the_retention_horizon():
    idx = ClusterIndex(retention_ns=60 * S)
    for i in range(5000):
        t = i * S
        idx.apply(pod("churn", f"10.1.{i // 250}.{i % 250}", t))  # a new IP every second
        idx.apply(pod(f"short-{i}", "10.2.0.1", t))
        idx.apply(pod(f"short-{i}", "10.2.0.1", t + 1, deleted=True))
    idx.prune()
    # ~60 s of history for the churning pod, recent short-lived pods only.
    assert idx.history_size() < 400
    assert len(idx._by_pod_ip) < 100
    assert idx.pod_by_ip("10.1.19.249").name == "churn"
    assert idx.pod_by_ip("10.1.19.240", 4990 * S).name == "churn"
    assert idx.pod_by_ip("10.2.0.1", 4999 * S).name == "short-4999"


def test_reobserving_the_same_state_adds_no_version():
    idx = ClusterIndex()
    for t in range(100):
        idx.apply(pod("a", "10.0.0.5", t * S))
    assert idx.history_size() == 1
    assert idx.pod_by_ip("10.0.0.5", 50 * S).name == "a"
