"""streams/core/policy.py: NetworkPolicy semantics (networking.k8s.io/v1) over the cluster state, as the API
documents them: isolation per direction, the union of the isolating policies' rules, peers (pod and namespace
selectors, ipBlock), ports (numbers, ranges, container port names)."""
from __future__ import annotations

import pytest

from svctrace.streams.core.policy import blocked, blocked_words, selects
from svctrace.streams.metadata.index import ClusterIndex
from svctrace.streams.metadata.project import project

TS = 1_700_000_000_000_000_000
CLIENT_IP, WEB_IP = "10.244.1.5", "10.244.2.7"


def pod(ns: str, name: str, ip: str, labels: dict, ports=()) -> dict:
    return {"kind": "Pod", "metadata": {"namespace": ns, "name": name, "labels": labels},
            "spec": {"containers": [{"name": "c", "ports": [{"name": n, "containerPort": p} for n, p in ports]}]},
            "status": {"podIP": ip, "podIPs": [{"ip": ip}], "phase": "Running"}}


def policy(ns: str, name: str, spec: dict) -> dict:
    return {"kind": "NetworkPolicy", "metadata": {"namespace": ns, "name": name}, "spec": spec}


def state(*policies, client_ns: str = "default", ns_labels: dict | None = None) -> ClusterIndex:
    objs = [pod(client_ns, "client", CLIENT_IP, {"run": "client"}),
            pod("shop", "web", WEB_IP, {"app": "web"}, ports=[("http", 80), ("admin", 9090)]),
            {"kind": "Namespace", "metadata": {"name": client_ns, "labels": ns_labels or {}}},
            {"kind": "Namespace", "metadata": {"name": "shop"}}, *policies]
    return ClusterIndex.from_records([project(o, TS) for o in objs])


def verdict(idx: ClusterIndex, port: int = 80, proto: str = "TCP"):
    found = blocked(idx, TS, idx.pod_by_ip(CLIENT_IP, TS), CLIENT_IP, idx.pod_by_ip(WEB_IP, TS), WEB_IP, port, proto)
    return None if found is None else (found[0], found[2])


ALLOW_80 = {"podSelector": {"matchLabels": {"app": "web"}}, "ingress": [{"ports": [{"port": 80}]}]}


def test_no_policy_or_one_selecting_other_pods_isolates_nothing():
    assert verdict(state()) is None
    other = policy("shop", "db-only", {"podSelector": {"matchLabels": {"app": "db"}}})
    assert verdict(state(other)) is None


def test_a_deny_all_policy_blocks_every_ingress():
    idx = state(policy("shop", "deny-all", {"podSelector": {}, "policyTypes": ["Ingress"]}))
    assert verdict(idx) == ("ingress", ["shop/deny-all"])


def test_ports_a_number_a_range_and_a_container_port_name():
    assert verdict(state(policy("shop", "web-80", ALLOW_80))) is None
    assert verdict(state(policy("shop", "web-80", ALLOW_80)), port=9090) == ("ingress", ["shop/web-80"])
    assert verdict(state(policy("shop", "web-80", ALLOW_80)), proto="UDP") == ("ingress", ["shop/web-80"])
    ranged = {"podSelector": {}, "ingress": [{"ports": [{"port": 9000, "endPort": 9100}]}]}
    assert verdict(state(policy("shop", "r", ranged)), port=9090) is None
    named = {"podSelector": {}, "ingress": [{"ports": [{"port": "admin"}]}]}
    assert verdict(state(policy("shop", "n", named)), port=9090) is None
    assert verdict(state(policy("shop", "n", named)), port=80) == ("ingress", ["shop/n"])


def test_peers_pod_selectors_in_the_policys_namespace_and_namespace_selectors():
    same_ns_only = {"podSelector": {}, "ingress": [{"from": [{"podSelector": {"matchLabels": {"run": "client"}}}]}]}
    assert verdict(state(policy("shop", "p", same_ns_only))) == ("ingress", ["shop/p"])  # the client is in default
    assert verdict(state(policy("shop", "p", same_ns_only), client_ns="shop")) is None
    by_name = {"podSelector": {}, "ingress": [{"from": [
        {"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "default"}}}]}]}
    assert verdict(state(policy("shop", "ns", by_name))) is None  # (the API server's label, assumed when absent)
    by_label = {"podSelector": {}, "ingress": [{"from": [
        {"namespaceSelector": {"matchLabels": {"team": "front"}}, "podSelector": {"matchLabels": {"run": "client"}}}]}]}
    assert verdict(state(policy("shop", "l", by_label))) == ("ingress", ["shop/l"])
    assert verdict(state(policy("shop", "l", by_label), ns_labels={"team": "front"})) is None


def test_the_union_of_the_isolating_policies_decides():
    deny = policy("shop", "deny-all", {"podSelector": {}})
    assert verdict(state(deny, policy("shop", "web-80", ALLOW_80))) is None
    assert verdict(state(deny, policy("shop", "web-80", ALLOW_80)), port=9090) == \
        ("ingress", ["shop/deny-all", "shop/web-80"])


def test_an_ip_block_covering_the_client_is_undecided_and_one_elsewhere_blocks():
    covering = {"podSelector": {}, "ingress": [{"from": [{"ipBlock": {"cidr": "10.244.0.0/16"}}]}]}
    assert verdict(state(policy("shop", "b", covering))) is None
    excepted = {"podSelector": {}, "ingress": [{"from": [{"ipBlock": {"cidr": "10.244.0.0/16",
                                                                    "except": ["10.244.1.0/24"]}}]}]}
    assert verdict(state(policy("shop", "b", excepted))) == ("ingress", ["shop/b"])


def test_the_clients_egress_policies_too():
    no_egress = policy("default", "no-egress", {"podSelector": {"matchLabels": {"run": "client"}},
                                                "policyTypes": ["Egress"]})
    assert verdict(state(no_egress)) == ("egress", ["default/no-egress"])
    to_shop = policy("default", "to-shop", {"podSelector": {}, "egress": [{"to": [
        {"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "shop"}}}], "ports": [{"port": "http"}]}]})
    assert verdict(state(to_shop)) is None and verdict(state(to_shop), port=9090) == ("egress", ["default/to-shop"])


def test_an_unknown_end_is_not_judged():
    idx = state(policy("shop", "deny-all", {"podSelector": {}}))
    assert blocked(idx, TS, None, "10.0.0.1", idx.pod_by_ip(WEB_IP, TS), WEB_IP, 80) is None


@pytest.mark.parametrize("expr,labels,selected", [
    ({"key": "tier", "operator": "In", "values": ["a", "b"]}, {"tier": "b"}, True),
    ({"key": "tier", "operator": "In", "values": ["a"]}, {}, False),
    ({"key": "tier", "operator": "NotIn", "values": ["a"]}, {}, True),
    ({"key": "tier", "operator": "NotIn", "values": ["a"]}, {"tier": "a"}, False),
    ({"key": "tier", "operator": "Exists"}, {"tier": ""}, True),
    ({"key": "tier", "operator": "DoesNotExist"}, {"tier": "x"}, False),
])
def test_match_expressions(expr, labels, selected):
    assert selects({"match_labels": {}, "match_expressions": [expr]}, labels) is selected


def test_the_words():
    idx = state(policy("shop", "deny-all", {"podSelector": {}}))
    found = blocked(idx, TS, idx.pod_by_ip(CLIENT_IP, TS), CLIENT_IP, idx.pod_by_ip(WEB_IP, TS), WEB_IP, 80)
    assert blocked_words(found, "default/client", "shop/web", 80, "tcp") == \
        "NetworkPolicy shop/deny-all selects shop/web and allows no ingress from default/client on TCP 80"
    assert blocked_words(None, "a", "b", 1, "TCP") == ""


# -- what the alerts say --------------------------------------------------------------------------------------

DENY_WEB = policy("default", "deny-web", {"podSelector": {"matchLabels": {"run": "my-nginx"}},
                                          "ingress": [{"from": [{"podSelector": {"matchLabels": {"run": "gateway"}}}]}]})


def _with(cluster, *objs) -> ClusterIndex:
    return ClusterIndex.from_records(cluster.records() + [project(o, TS) for o in objs])


def test_an_unreachable_backend_names_the_policy_that_allows_the_client_nothing():
    from svctrace.streams.core import run
    from tests.scenario import Cluster
    from tests.test_core_socket_lb import _timed_out_connect

    cluster = Cluster()
    events = _timed_out_connect(cluster, cluster.pods["my-nginx-1"])
    said = {}
    for name, extra in (("none", ()), ("deny", (DENY_WEB,))):
        result = run(events, _with(cluster, *extra))
        said[name] = [a["summary"] for a in result.alerts if a["rule"] == "svc.backend_unreachable"]
    assert said["none"] == ["default/my-nginx: connect from default/client to default/my-nginx-1 (10.244.1.7:80), the "
                            "backend socket-LB chose, was never accepted (connection timed out)"]
    assert said["deny"] == [said["none"][0] + "; NetworkPolicy default/deny-web selects default/my-nginx-1 and allows "
                                              "no ingress from default/client on TCP 80"]


def test_a_missing_translation_names_a_policy_that_allows_no_endpoint():
    """Rules flushed or a policy: the syscalls show the same silence. With a policy that allows the client none of
    the Service's ready endpoints, the alert names it; no policy, or one whose verdict depends on the CNI (an
    ipBlock covering the client's pod address), adds nothing."""
    from svctrace.streams.core import run
    from tests.scenario import S as SECOND, T0, Cluster, Scenario

    cluster = Cluster()
    sc = Scenario(cluster, "dnat")
    sc.request(T0, fault="rules_flushed")
    sc.lookup(T0 + 200 * SECOND, sc.proc("client", "other"), cluster.pods["client"].ip, "example.com",
              ["93.184.216.34"])
    covering = policy("default", "from-pods", {"podSelector": {"matchLabels": {"run": "my-nginx"}},
                                               "ingress": [{"from": [{"ipBlock": {"cidr": "10.244.0.0/16"}}]}]})
    said = {}
    for name, extra in (("none", ()), ("deny", (DENY_WEB,)), ("undecided", (covering,))):
        result = run(sc.events(), _with(cluster, *extra))
        [said[name]] = [a["summary"] for a in result.alerts if a["rule"] == "svc.translation_missing"]
    assert said["none"].endswith("was never translated or accepted (connection timed out)")
    assert said["deny"] == said["none"] + ("; NetworkPolicy default/deny-web selects its 2 endpoints and allows no "
                                           "ingress from default/client on TCP 80")
    assert said["undecided"] == said["none"]
