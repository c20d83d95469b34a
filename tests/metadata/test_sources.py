"""Projection and offline sources: kubectl JSON/YAML snapshots, sysdig K8S state, bad input."""
from __future__ import annotations

import copy
from pathlib import Path

import orjson
import pytest

from svctrace.schemas.validation import validate
from svctrace.streams.metadata.index import ClusterIndex
from svctrace.streams.metadata.project import MetadataInputError, project, record_key, tombstone
from svctrace.streams.metadata.sources import (
    load_file,
    records_from_containers,
    records_from_documents,
    records_from_k8s_state,
)

DATA = Path(__file__).parent / "data"
TS = 1_714_644_000_000_000_000
SNAPSHOTS = ["snapshot.json", "snapshot.yaml", "snapshot-multidoc.yaml"]


def _snapshot_items():
    return orjson.loads((DATA / "snapshot.json").read_bytes())["items"]


@pytest.mark.parametrize("name", SNAPSHOTS)
def test_kubectl_snapshot_builds_a_working_index(name):
    records = load_file(DATA / name, observed_ts=TS)
    for r in records:
        validate("k8s-object", r)
    assert sorted(record_key(r) for r in records) == [
        "EndpointSlice/kube-system/kube-dns-zq9fw", "EndpointSlice/shop/web-h8k2m", "Node//node-a",
        "Pod/kube-system/coredns-5dd5756b68-x7k2p", "Pod/shop/web-7d4b9c-abcde",
        "Service/kube-system/kube-dns", "Service/shop/web",
    ]
    idx = ClusterIndex.from_records(records)
    pod = idx.pod_by_ip("10.244.0.15", TS)
    assert (pod.namespace, pod.name, pod.node, pod.ready) == ("shop", "web-7d4b9c-abcde", "node-a", True)
    assert idx.pod_by_container("3f2a1b4c5d6e").name == pod.name
    svc, port = idx.service_by_ip("10.96.120.7", 80, "TCP", TS)
    assert (svc.type, svc.session_affinity, svc.external_traffic_policy) == ("NodePort", "ClientIP", "Local")
    assert (port.target_port, port.node_port) == ("http-alt", 30080)
    assert idx.resolve_target_port(svc, port, pod) == 8080  # named targetPort via the pod's containerPort
    [ep] = idx.endpoints("shop", "web", TS)
    assert (ep.ip, ep.port, ep.ready, ep.pod) == ("10.244.0.15", 8080, True, "web-7d4b9c-abcde")
    assert idx.endpoint_pod(ep) == pod
    assert idx.node_by_ip("192.168.49.2") == "node-a"
    assert idx.node("node-a").pod_cidrs == ("10.244.0.0/24",)
    assert idx.is_cluster_dns("10.96.0.10") and idx.is_cluster_dns("10.244.0.2")
    assert not idx.is_cluster_dns("10.96.120.7")


def test_snapshot_observed_ts_defaults_to_file_mtime():
    records = load_file(DATA / "snapshot.json")
    assert {r["observed_ts"] for r in records} == {(DATA / "snapshot.json").stat().st_mtime_ns}


def test_items_of_a_typed_list_take_the_list_kind():
    # What the API (not kubectl) serves: items without kind.
    pods = [dict(i) for i in _snapshot_items() if i["kind"] == "Pod"]
    for p in pods:
        del p["kind"], p["apiVersion"]
    records = records_from_documents([{"kind": "PodList", "apiVersion": "v1", "items": pods}], TS)
    assert [r["kind"] for r in records] == ["Pod", "Pod"]


def _endpoints_v1():
    return {
        "apiVersion": "v1", "kind": "Endpoints",
        "metadata": {"name": "web", "namespace": "shop", "resourceVersion": "77"},
        "subsets": [
            {"addresses": [{"ip": "10.244.0.15", "nodeName": "node-a",
                            "targetRef": {"kind": "Pod", "name": "web-7d4b9c-abcde", "namespace": "shop"}}],
             "notReadyAddresses": [{"ip": "10.244.0.16", "nodeName": "node-a"}],
             "ports": [{"name": "http", "port": 8080, "protocol": "TCP"}]},
            {"addresses": [{"ip": "10.244.0.17"}], "ports": [{"name": "http", "port": 9090, "protocol": "TCP"}]},
        ],
    }


def test_core_v1_endpoints_projection_and_index_fallback():
    items = [i for i in _snapshot_items() if i["kind"] != "EndpointSlice"] + [_endpoints_v1()]
    records = records_from_documents([{"kind": "List", "items": items}], TS)
    for r in records:
        validate("k8s-object", r)
    idx = ClusterIndex.from_records(records)
    eps = sorted((e.ip, e.port, e.ready, e.pod) for e in idx.endpoints("shop", "web"))
    assert eps == [("10.244.0.15", 8080, True, "web-7d4b9c-abcde"), ("10.244.0.16", 8080, False, None),
                   ("10.244.0.17", 9090, True, None)]
    assert [s.name for s in idx.services_for_endpoint("10.244.0.17", 9090)] == ["web"]


def test_projection_details():
    pod = copy.deepcopy(_snapshot_items()[0])
    pod["spec"]["hostNetwork"] = True
    pod["status"]["conditions"][1]["status"] = "False"
    pod["status"]["initContainerStatuses"] = [{"containerID": "docker://aaaabbbbcccc0000", "name": "init"}]
    r = project(pod, TS)
    assert r["pod"]["host_network"] is True and r["pod"]["ready"] is False
    assert r["pod"]["container_ids"][0] == "aaaabbbbcccc0000"
    assert r["pod"]["ports"] == [{"name": "http-alt", "port": 8080, "protocol": "TCP"}]
    assert r["pod"]["dns_policy"] == "ClusterFirst"  # (unset: the API server's default)
    pod["spec"]["dnsPolicy"] = "ClusterFirstWithHostNet"
    assert project(pod, TS)["pod"]["dns_policy"] == "ClusterFirstWithHostNet"
    validate("k8s-object", project(pod, TS))
    idx = ClusterIndex.from_records([project(pod, TS)])  # (a host-network pod: known by its containers, not IP)
    assert idx.pod_by_container("aaaabbbbcccc0000").dns_policy == "ClusterFirstWithHostNet"
    headless = {"kind": "Service", "metadata": {"name": "h", "namespace": "d"},
                "spec": {"clusterIP": "None", "ports": [{"port": 80, "targetPort": "8080"}]}}
    r = project(headless, TS)
    assert r["service"]["cluster_ips"] == [] and r["service"]["ports"][0]["target_port"] == 8080
    assert r["service"]["selector"] is None
    d = project(pod, TS, deleted=True)
    assert d["deleted"] and "pod" not in d
    validate("k8s-object", d)
    assert tombstone("Node", None, "n", TS)["namespace"] is None


SYSDIG_POD_STATE = {
    "type": "ADDED", "apiVersion": "v1", "kind": "Pod",
    "items": [{
        "namespace": "default", "name": "nginx-3449338310-q9saj", "uid": "0d5485a2-9f2b-11e7-a1ba-507b9d85a8c2",
        "timestamp": "2017-09-22T10:00:00Z", "nodeName": "127.0.0.1", "hostIP": "127.0.0.1",
        "podIP": "172.17.0.4", "phase": "Running",
        "containers": [{"name": "nginx", "image": "nginx", "ports": [{"containerPort": 80, "protocol": "TCP"}]}],
        "containerStatuses": [{"name": "nginx", "containerID": "docker://28ee2ec4aaaa0123456789abcdef"}],
        "initContainerStatuses": None, "labels": {"run": "nginx"},
    }, None],
}
SYSDIG_SERVICE_STATE = {
    "type": "ADDED", "apiVersion": "v1", "kind": "Service",
    "items": [{"namespace": "kube-system", "name": "kube-dns", "uid": "u1", "clusterIP": "10.0.0.10",
               "ports": [{"name": "dns", "port": 53, "protocol": "UDP", "targetPort": 53}],
               "labels": {"k8s-app": "kube-dns"}, "selector": {"k8s-app": "kube-dns"}}],
}
SYSDIG_NODE_STATE_OLD = {  # oldest writers: the plural of the kind instead of "items"
    "type": "ADDED", "apiVersion": "v1", "kind": "Node",
    "nodes": [{"name": "127.0.0.1", "uid": "u2", "labels": {}, "addresses": ["127.0.0.1"]}],
}
RAW_WATCH_EVENT = {"type": "DELETED", "object": {
    "kind": "Pod", "apiVersion": "v1",
    "metadata": {"name": "nginx-3449338310-q9saj", "namespace": "default", "resourceVersion": "999"}}}


def test_sysdig_k8s_state_forms():
    records = []
    for ts, doc in [(TS, SYSDIG_POD_STATE), (TS, orjson.dumps(SYSDIG_SERVICE_STATE)), (TS, SYSDIG_NODE_STATE_OLD),
                    (TS, {"type": "ADDED", "kind": "ReplicationController", "items": [{"name": "rc"}]}),
                    (TS + 10, RAW_WATCH_EVENT)]:
        records += records_from_k8s_state(ts, doc)
    for r in records:
        validate("k8s-object", r)
    assert [(r["kind"], r["deleted"]) for r in records] == [
        ("Pod", False), ("Service", False), ("Node", False), ("Pod", True)]
    idx = ClusterIndex.from_records(records)
    assert idx.pod_by_ip("172.17.0.4", TS + 5).labels == {"run": "nginx"}
    assert idx.pod_by_ip("172.17.0.4", TS + 11) is None
    assert idx.pod_by_container("28ee2ec4aaaa").name == "nginx-3449338310-q9saj"
    assert idx.is_cluster_dns("10.0.0.10")
    assert idx.node_by_ip("127.0.0.1") == "127.0.0.1"


def test_pods_derived_from_capture_container_json():
    containers = [
        {"container": {"id": "2be6a7b3942d", "name": "k8s_POD.d8dbe16c_nginx-3449338310-q9saj_default_"
                       "0d5485a2-9f2b-11e7-a1ba-507b9d85a8c2_fc5483ff", "ip": "172.17.0.4"}},
        {"container": {"id": "70bf2f2a0c42", "name": "k8s_nginx.28ee2ec4_nginx-3449338310-q9saj_default_"
                       "0d5485a2-9f2b-11e7-a1ba-507b9d85a8c2_69b16510"}},
        (TS + 1, orjson.dumps({"container": {"id": "aaaaaaaaaaaa", "name": "cri",
                                             "labels": {"io.kubernetes.pod.name": "p",
                                                        "io.kubernetes.pod.namespace": "ns"}}})),
        {"container": {"id": "bbbbbbbbbbbb", "name": "example2_web_1"}},  # plain docker: no pod
    ]
    records = records_from_containers(containers, TS, node="n1")
    for r in records:
        validate("k8s-object", r)
    assert [(r["namespace"], r["name"], r["observed_ts"]) for r in records] == [
        ("default", "nginx-3449338310-q9saj", TS), ("ns", "p", TS + 1)]
    idx = ClusterIndex.from_records(records)
    assert idx.pod_by_container("70bf2f2a0c42").name == "nginx-3449338310-q9saj"
    assert idx.pod_by_ip("172.17.0.4").node == "n1"


# -- bad input -----------------------------------------------------------------

BAD_OBJECTS = [
    ({"kind": "Widget", "metadata": {"name": "w", "namespace": "d"}}, "unsupported kind 'Widget'"),
    ({"kind": "Pod", "metadata": {"namespace": "d"}}, "missing metadata.name"),
    ({"kind": "Pod", "metadata": {"name": "p"}}, "Pod p: missing metadata.namespace"),
    ({"metadata": {"name": "p"}}, "object without kind"),
    ({"kind": "Service", "metadata": {"name": "s", "namespace": "d"}, "spec": {"ports": [{"port": "eighty"}]}},
     "Service d/s: malformed object: spec.ports[].port is not an integer"),
    ({"kind": "Pod", "metadata": {"name": "p", "namespace": "d", "labels": ["a"]}}, "metadata.labels is not a mapping"),
    ({"kind": "EndpointSlice", "metadata": {"name": "e", "namespace": "d"}, "endpoints": ["10.0.0.1"]},
     "EndpointSlice d/e: malformed object"),
    ({"kind": "Endpoints", "metadata": {"name": "e", "namespace": "d"}, "subsets": [{"addresses": [{}]}]},
     "without ip"),
    ("just a string", "expected a Kubernetes object"),
]


@pytest.mark.parametrize("obj,message", BAD_OBJECTS)
def test_bad_objects_raise_one_clear_error(obj, message):
    with pytest.raises(MetadataInputError, match=message.replace("[", r"\[").replace("]", r"\]")):
        project(obj, TS)


@pytest.mark.parametrize("content,message", [
    (b"", "empty file"),
    (b"{not json: [", "neither JSON nor YAML"),
    (b'{"kind": "List", "items": [{"kind": "Pod", "metadata": {"name": "a", "namespace": "d"}},'
     b' {"kind": "Gadget", "metadata": {"name": "g"}}]}', r"items\[1\] Gadget g: unsupported kind"),
    (b'{"kind": "List", "items": {"a": 1}}', "items is not a list"),
    (b"- 1\n- 2\n", "expected a Kubernetes object or List, got int"),
    (b'{"type": "ADDED", "object": {"kind": "Pod", "metadata": {"name": "a", "namespace": "d"}}}\n{"type": "ADDED"',
     "line 2: invalid JSON"),
    (b'{"type": "SNAPSHOT", "object": {}}', "watch event of unknown type"),
])
def test_bad_files_name_the_file_and_the_object(tmp_path, content, message):
    f = tmp_path / "state.json"
    f.write_bytes(content)
    with pytest.raises(MetadataInputError, match=message) as info:
        load_file(f, observed_ts=TS)
    assert str(f) in str(info.value)


def test_missing_file_is_a_clear_error(tmp_path):
    with pytest.raises(MetadataInputError, match="cannot read"):
        load_file(tmp_path / "absent.json")


def test_ignored_kinds_are_skipped_not_errors():
    deploy = {"kind": "Deployment", "metadata": {"name": "web", "namespace": "shop"}}
    records = records_from_documents([{"kind": "List", "items": [deploy] + _snapshot_items()}], TS)
    assert "Deployment" not in {r["kind"] for r in records}


def test_bad_k8s_state_events():
    with pytest.raises(MetadataInputError, match="not JSON"):
        records_from_k8s_state(TS, b"{")
    with pytest.raises(MetadataInputError, match="unsupported kind 'Gizmo'"):
        records_from_k8s_state(TS, {"type": "ADDED", "kind": "Gizmo", "items": []})
    with pytest.raises(MetadataInputError, match=r"Pod items\[0\]"):
        records_from_k8s_state(TS, {"type": "ADDED", "kind": "Pod", "items": ["x"]})


def test_pods_from_a_real_capture_of_a_kubernetes_1_4_node(captures):
    """inspect__502Error.scap: dockershim-named containers of a hyperkube 1.4 node (no K8S_E events)."""
    from svctrace.streams.metadata.sources import load_capture

    records = load_capture(captures / "inspect__502Error.scap")
    for r in records:
        validate("k8s-object", r)
    pods = {(r["namespace"], r["name"]) for r in records}
    assert ("default", "nginx-3449338310-q9saj") in pods
    assert ("kube-system", "kube-dns-v19-lbuxg") in pods
    assert all(ns in ("default", "kube-system") for ns, _ in pods)
    idx = ClusterIndex.from_records(records)
    assert idx.pod_by_container("70bf2f2a0c42").name == "k8s-master-127.0.0.1"  # the scheduler container
    # docker-compose containers of the same capture are not pods.
    assert idx.pod_by_container("59fd49aa4072") is None and idx.pod_by_container("c78a447010cd") is None
    dns = next(r for r in records if r["name"] == "kube-dns-v19-lbuxg")
    assert len(dns["pod"]["container_ids"]) == 4  # POD (sandbox), kubedns, dnsmasq, healthz


def test_unreadable_capture_names_the_file(tmp_path):
    from svctrace.streams.metadata.sources import load_capture

    bad = tmp_path / "broken.scap"
    bad.write_bytes(b"\x00" * 64)
    with pytest.raises(MetadataInputError, match="broken.scap"):
        load_capture(bad)


def test_k8s_state_events_through_the_scap_writer_and_reader(tmp_path):
    """K8S_E and container JSON events written into a capture, read back by the real reader."""
    from svctrace.agents.scap.event_table import BY_ENUM
    from svctrace.agents.scap.writer import ScapWriter
    from svctrace.streams.metadata.sources import load_capture

    k8s_e, container_e = BY_ENUM["PPME_K8S_E"].code, BY_ENUM["PPME_CONTAINER_JSON_E"].code
    path = tmp_path / "k8s.scap"
    with ScapWriter(path, hostname="node-a") as w:
        for i, state in enumerate([SYSDIG_POD_STATE, SYSDIG_SERVICE_STATE, SYSDIG_NODE_STATE_OLD]):
            w.write_raw(TS + i, -1, k8s_e, {"json": orjson.dumps(state).decode()})
        w.write_raw(TS + 5, -1, container_e, {"json": orjson.dumps({"container": {
            "id": "aaaaaaaaaaaa", "name": "k8s_app_other-pod_default_u-9_0", "ip": "172.17.0.9"}}).decode()})
        w.write_raw(TS + 10, -1, k8s_e, {"json": orjson.dumps(RAW_WATCH_EVENT).decode()})
    records = load_capture(path)
    for r in records:
        validate("k8s-object", r)
    assert [(r["kind"], r["name"], r["deleted"]) for r in records] == [
        ("Pod", "nginx-3449338310-q9saj", False), ("Service", "kube-dns", False), ("Node", "127.0.0.1", False),
        ("Pod", "nginx-3449338310-q9saj", True), ("Pod", "other-pod", False)]
    idx = ClusterIndex.from_records(records)
    assert idx.pod_by_ip("172.17.0.4", TS + 3).name == "nginx-3449338310-q9saj"
    assert idx.pod_by_ip("172.17.0.4", TS + 11) is None
    assert idx.pod_by_ip("172.17.0.9").node == "node-a"
    assert idx.is_cluster_dns("10.0.0.10")


POLICY = {
    "apiVersion": "networking.k8s.io/v1", "kind": "NetworkPolicy",
    "metadata": {"name": "web-from-frontend", "namespace": "shop", "uid": "u-np", "resourceVersion": "7"},
    "spec": {
        "podSelector": {"matchLabels": {"app": "web"}},
        "ingress": [{"from": [{"podSelector": {"matchExpressions": [{"key": "tier", "operator": "In",
                                                                     "values": ["frontend"]}]}},
                              {"namespaceSelector": {"matchLabels": {"team": "ops"}}, "podSelector": {}},
                              {"ipBlock": {"cidr": "10.0.0.0/8", "except": ["10.9.0.0/16"]}}],
                     "ports": [{"protocol": "TCP", "port": "http"}, {"port": 8000, "endPort": 8010}]}],
    },
}


def test_a_network_policy_and_namespace_labels_are_projected_and_indexed():
    """What a NetworkPolicy's selectors and rules say, with the API's defaults filled in (policyTypes: Ingress, and
    Egress only where the policy has an egress section), and a Namespace's labels (its namespaceSelector's)."""
    r = project(POLICY, TS)
    validate("k8s-object", r)
    np = r["network_policy"]
    assert np["pod_selector"] == {"match_labels": {"app": "web"}, "match_expressions": []}
    assert np["policy_types"] == ["Ingress"] and np["egress"] == []
    [rule] = np["ingress"]
    assert rule["peers"][0] == {"pod_selector": {"match_labels": {}, "match_expressions": [
        {"key": "tier", "operator": "In", "values": ["frontend"]}]}, "namespace_selector": None, "ip_block": None}
    assert rule["peers"][1]["namespace_selector"] == {"match_labels": {"team": "ops"}, "match_expressions": []}
    assert rule["peers"][2]["ip_block"] == {"cidr": "10.0.0.0/8", "except": ["10.9.0.0/16"]}
    assert rule["ports"] == [{"protocol": "TCP", "port": "http", "end_port": None},
                             {"protocol": "TCP", "port": 8000, "end_port": 8010}]
    deny_out = copy.deepcopy(POLICY)
    deny_out["spec"] = {"podSelector": {}, "egress": []}  # every pod of the namespace, no egress allowed
    assert project(deny_out, TS)["network_policy"]["policy_types"] == ["Ingress", "Egress"]
    ns = {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "shop", "labels": {"team": "shop"}}}
    validate("k8s-object", project(ns, TS))
    idx = ClusterIndex.from_records([r, project(ns, TS)])
    [info] = idx.network_policies("shop", TS)
    assert (info.name, info.policy_types, len(info.ingress)) == ("web-from-frontend", ("Ingress",), 1)
    assert idx.network_policies("default", TS) == [] and idx.namespace("shop", TS).labels == {"team": "shop"}
    idx.apply(tombstone("NetworkPolicy", "shop", "web-from-frontend", TS + 1))
    assert idx.network_policies("shop", TS + 1) == [] and len(idx.network_policies("shop", TS)) == 1


def test_a_malformed_network_policy_is_one_clear_error():
    bad = copy.deepcopy(POLICY)
    bad["spec"]["ingress"][0]["from"][2]["ipBlock"] = {"except": []}
    with pytest.raises(MetadataInputError, match="NetworkPolicy shop/web-from-frontend: .*ipBlock without cidr"):
        project(bad, TS)
