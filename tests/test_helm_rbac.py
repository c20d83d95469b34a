"""The chart's RBAC: read-only access to exactly what the metadata watcher reads, a Lease in its own
namespace, nothing for the agent and the workers. No Secrets, no wildcards, in any configuration."""
from __future__ import annotations

import pytest

from tests.harness.helm import VALUE_CASES, helm  # noqa: F401

# What `svctrace metadata` lists and watches (issue: pods, services, EndpointSlices, nodes,
# namespaces; core/v1 Endpoints for clusters that predate EndpointSlices; NetworkPolicies, which the
# alerts name when one blocks a request).
READ = {"get", "list", "watch"}
EXPECTED_CLUSTER_RULES = {
    ("", "pods"): READ, ("", "services"): READ, ("", "endpoints"): READ,
    ("", "nodes"): READ, ("", "namespaces"): READ,
    ("discovery.k8s.io", "endpointslices"): READ, ("networking.k8s.io", "networkpolicies"): READ,
}
RBAC_KINDS = ("ClusterRole", "Role", "ClusterRoleBinding", "RoleBinding")


@pytest.fixture(scope="module")
def rendered(helm) -> dict[str, list[dict]]:
    return {case: helm.render(values) for case, values in VALUE_CASES.items()}


def grants(role: dict) -> dict[tuple[str, str, tuple[str, ...]], set[str]]:
    """(apiGroup, resource, resourceNames) -> verbs, one entry per combination a rule expands to."""
    out: dict[tuple[str, str, tuple[str, ...]], set[str]] = {}
    for rule in role["rules"]:
        assert set(rule) <= {"apiGroups", "resources", "verbs", "resourceNames"}, rule  # no nonResourceURLs
        for group in rule["apiGroups"]:
            for resource in rule["resources"]:
                key = (group, resource, tuple(rule.get("resourceNames", ())))
                out.setdefault(key, set()).update(rule["verbs"])
    return out


@pytest.mark.parametrize("case", sorted(VALUE_CASES))
def test_no_secrets_no_wildcards_no_writes_outside_the_lease(rendered, case):
    for role in (d for d in rendered[case] if d["kind"] in ("ClusterRole", "Role")):
        assert "aggregationRule" not in role
        for (group, resource, names), verbs in grants(role).items():
            assert "*" not in (group, resource) and "*" not in verbs, role["metadata"]["name"]
            assert resource not in ("secrets", "configmaps", "pods/exec", "serviceaccounts/token"), resource
            assert not verbs & {"escalate", "bind", "impersonate", "delete", "deletecollection"}, verbs
            if verbs - READ:
                assert (role["kind"], group, resource) == ("Role", "coordination.k8s.io", "leases"), (resource, verbs)


def test_cluster_role_reads_exactly_what_is_watched(rendered):
    roles = [d for d in rendered["defaults"] if d["kind"] == "ClusterRole"]
    assert len(roles) == 1
    got = {(group, resource): verbs for (group, resource, names), verbs in grants(roles[0]).items() if not names}
    assert got == EXPECTED_CLUSTER_RULES
    assert all(not names for (_, _, names) in grants(roles[0]))


def test_lease_role_is_namespaced_and_limited_to_the_one_lease(rendered):
    role = next(d for d in rendered["defaults"] if d["kind"] == "Role")
    assert role["metadata"]["namespace"] == "svctrace"
    assert grants(role) == {
        ("coordination.k8s.io", "leases", ()): {"create"},  # create cannot be limited by name
        ("coordination.k8s.io", "leases", ("svctrace-metadata",)): {"get", "update"},
    }


@pytest.mark.parametrize("case", sorted(VALUE_CASES))
def test_bindings_grant_only_to_the_metadata_service_account(rendered, case):
    docs = rendered[case]
    roles = {(d["kind"], d["metadata"]["name"]) for d in docs if d["kind"] in ("ClusterRole", "Role")}
    accounts = {d["metadata"]["name"]: d for d in docs if d["kind"] == "ServiceAccount"}
    for binding in (d for d in docs if d["kind"] in ("ClusterRoleBinding", "RoleBinding")):
        assert (binding["roleRef"]["kind"], binding["roleRef"]["name"]) in roles, "binds a role the chart made"
        assert binding["subjects"] == [{"kind": "ServiceAccount", "name": "svctrace-metadata", "namespace": "svctrace"}]
    if case != "agent-only":
        assert accounts["svctrace-metadata"]["automountServiceAccountToken"] is True
    for name, sa in accounts.items():
        if name != "svctrace-metadata":
            assert sa["automountServiceAccountToken"] is False, name
    # only the metadata pods carry a token; everything else runs without one
    for d in docs:
        if d["kind"] in ("DaemonSet", "Deployment", "Job", "Pod"):
            spec = d["spec"] if d["kind"] == "Pod" else d["spec"]["template"]["spec"]
            is_metadata = d["metadata"]["labels"]["app.kubernetes.io/component"] == "metadata"
            assert spec["automountServiceAccountToken"] is is_metadata, d["metadata"]["name"]


def test_no_rbac_without_the_metadata_watcher(rendered):
    assert not [d for d in rendered["agent-only"] if d["kind"] in RBAC_KINDS]


def test_cluster_role_matches_what_the_watcher_lists(rendered):
    """The watcher's table of watched kinds is the source of truth: the ClusterRole grants
    get/list/watch on exactly those, and the watcher lists nothing the role lacks."""
    from svctrace.streams.metadata.watcher import RESOURCES

    group_of_api = {"CoreV1Api": "", "DiscoveryV1Api": "discovery.k8s.io", "NetworkingV1Api": "networking.k8s.io"}

    def plural(kind: str) -> str:
        kind = kind.lower()
        return kind if kind.endswith("s") else kind[:-1] + "ies" if kind.endswith("y") else kind + "s"
    watched = {(group_of_api[r.api], plural(r.kind)) for r in RESOURCES.values()}
    role = next(d for d in rendered["defaults"] if d["kind"] == "ClusterRole")
    assert {(g, r) for (g, r, _names) in grants(role)} == watched
