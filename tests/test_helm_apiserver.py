"""The chart against the real kube-apiserver: every rendered object passes a server-side dry-run
apply, and the chart's RBAC, really applied, gives the metadata watcher exactly what it needs."""
from __future__ import annotations

import itertools
import os
import time

import pytest

from tests.harness.apiserver import Access, ApplyError, access_report, access_review
from tests.harness.helm import VALUE_CASES, helm  # noqa: F401

pytestmark = pytest.mark.apiserver

# CRD kinds the test control plane has no definition for (it runs no Prometheus Operator).
CRD_KINDS = {("monitoring.coreos.com/v1", "ServiceMonitor")}
RBAC_KINDS = ("ServiceAccount", "ClusterRole", "ClusterRoleBinding", "Role", "RoleBinding")
_release_counter = itertools.count(1)


def release_name(label: str) -> str:
    """Cluster-scoped names (ClusterRole, PriorityClass) carry the release: one per test."""
    return f"{label}-{os.getpid()}-{next(_release_counter)}"


@pytest.mark.parametrize("case", sorted(VALUE_CASES))
def test_rendered_manifests_pass_server_side_dry_run(helm, apiserver, case):
    namespace = apiserver.new_namespace("helm")
    docs = helm.render(VALUE_CASES[case], namespace=namespace, release=release_name("dry"))
    crds = [d for d in docs if (d["apiVersion"], d["kind"]) in CRD_KINDS]
    others = [d for d in docs if (d["apiVersion"], d["kind"]) not in CRD_KINDS]
    answered = apiserver.dry_run_apply(others, namespace=namespace)
    assert sorted((a["kind"], a["metadata"]["name"]) for a in answered) == sorted(
        (d["kind"], d["metadata"]["name"]) for d in others)
    # Defaulting ran: the server filled in what the chart leaves out, and kept what it set.
    sent = {(d["kind"], d["metadata"]["name"]): d for d in others}
    for obj in answered:
        if obj["kind"] in ("DaemonSet", "Deployment"):
            pod = obj["spec"]["template"]["spec"]
            rendered = sent[(obj["kind"], obj["metadata"]["name"])]["spec"]["template"]["spec"]
            assert pod["containers"][0]["securityContext"] == rendered["containers"][0]["securityContext"]
            assert pod.get("hostPID", False) is (obj["kind"] == "DaemonSet")
            assert pod["dnsPolicy"] == "ClusterFirst"  # a server default: the object was admitted
    for doc in crds:  # excluded explicitly, and only because the server lacks the CRD
        with pytest.raises(ApplyError, match="unknown apiVersion/kind"):
            apiserver.dry_run_apply([doc], namespace=namespace)
    assert bool(crds) == (case == "everything")


def test_dry_run_rejects_what_the_server_would(apiserver):
    """The dry run has teeth: an invalid object is refused by the server."""
    namespace = apiserver.new_namespace("helmbad")
    bad = {"apiVersion": "v1", "kind": "Service", "metadata": {"name": "bad"},
           "spec": {"clusterIP": "None", "ports": [{"name": "metrics", "port": 70000}]}}
    with pytest.raises(ApplyError):
        apiserver.dry_run_apply([bad], namespace=namespace)


def pod_from(workload: dict, name: str) -> dict:
    """The Pod a controller would create from a workload's template (Pod Security admission
    enforces on Pods only; on Deployments and DaemonSets it merely warns)."""
    if workload["kind"] == "Pod":
        return workload
    template = workload["spec"]["template"]
    # PriorityClasses named in the values exist only on real clusters (Priority admission
    # would refuse the Pod before Pod Security looks at it).
    spec = {k: v for k, v in template["spec"].items() if k != "priorityClassName"}
    return {"apiVersion": "v1", "kind": "Pod",
            "metadata": {"name": name, "labels": template["metadata"]["labels"]}, "spec": spec}


def labelled_namespace(apiserver, prefix: str, labels: dict[str, str]) -> str:
    import kubernetes.client as k8s

    namespace = apiserver.new_namespace(prefix)
    with apiserver.api_client() as admin:
        k8s.CoreV1Api(admin).patch_namespace(namespace, {"metadata": {"labels": labels}})
    return namespace


def test_pods_meet_the_pod_security_standards(helm, apiserver):
    """worker, metadata, the topic Job and the helm test pod pass the *restricted* standard; the
    agent needs the *privileged* level (hostPID, hostPath, capabilities) and is refused elsewhere."""
    restricted = labelled_namespace(apiserver, "helmpsa", {"pod-security.kubernetes.io/enforce": "restricted"})
    baseline = labelled_namespace(apiserver, "helmbase", {"pod-security.kubernetes.io/enforce": "baseline"})
    privileged = labelled_namespace(apiserver, "helmpriv", {"pod-security.kubernetes.io/enforce": "privileged"})
    for case in ("defaults", "everything"):
        docs = helm.render(VALUE_CASES[case], namespace=restricted, release=release_name("psa"))
        workloads = {d["metadata"]["labels"]["app.kubernetes.io/component"]: d
                     for d in docs if d["kind"] in ("DaemonSet", "Deployment", "Job", "Pod")}
        assert set(workloads) == {"agent", "worker", "metadata", "topics", "test"}
        for component in ("worker", "metadata", "topics", "test"):
            apiserver.dry_run_apply([pod_from(workloads[component], f"{component}-pod")], namespace=restricted)
        agent = pod_from(workloads["agent"], "agent-pod")
        for namespace in (restricted, baseline):
            with pytest.raises(ApplyError, match="hostPID"):
                apiserver.dry_run_apply([agent], namespace=namespace)
        apiserver.dry_run_apply([agent], namespace=privileged)


def poll(condition, what: str, timeout: float = 15.0):
    """RBAC changes reach the authorizer through a watch: wait for them with a deadline."""
    deadline = time.monotonic() + timeout
    while not (result := condition()):
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.1)  # poll interval, not synchronisation
    return result


def test_chart_rbac_grants_exactly_what_the_watcher_needs(helm, apiserver):
    namespace = apiserver.new_namespace("helmrbac")
    elsewhere = apiserver.new_namespace("helmother")
    release = release_name("rbac")
    docs = helm.render({}, namespace=namespace, release=release)
    apiserver.apply([d for d in docs if d["kind"] in RBAC_KINDS], namespace=namespace)
    accounts = {d["metadata"]["labels"]["app.kubernetes.io/component"]: d["metadata"]["name"]
                for d in docs if d["kind"] == "ServiceAccount"}
    lease = next(d for d in docs if d["kind"] == "Role")["rules"][1]["resourceNames"][0]

    watcher = apiserver.service_account_client(namespace, accounts["metadata"])
    reads = [Access(verb, resource, group) for group, resource in
             [("", "pods"), ("", "services"), ("", "nodes"), ("", "namespaces"), ("discovery.k8s.io", "endpointslices"),
              ("networking.k8s.io", "networkpolicies")]
             for verb in ("list", "watch")]
    poll(lambda: access_review(watcher, reads[0]), "the ClusterRoleBinding to take effect")
    report = access_report(watcher, reads)
    assert all(report[a] == (True, 200) for a in reads), report
    assert access_review(watcher, Access("list", "endpoints")) and access_review(watcher, Access("watch", "endpoints"))

    denied = [Access(verb, "secrets") for verb in ("list", "watch")] + [
        Access("get", "secrets", namespace=namespace, name="any"),
        Access("list", "configmaps"), Access("list", "configmaps", namespace=namespace)]
    report = access_report(watcher, denied)
    assert all(report[a] == (False, 403) for a in denied), report
    for access in (Access("create", "pods", namespace=namespace), Access("delete", "nodes", name="n"),
                   Access("update", "services", namespace=namespace, name="s"),
                   Access("list", "leases", "coordination.k8s.io", namespace=namespace),
                   Access("get", "leases", "coordination.k8s.io", namespace=namespace, name="someone-elses"),
                   Access("create", "leases", "coordination.k8s.io", namespace=elsewhere),
                   Access("update", "leases", "coordination.k8s.io", namespace=elsewhere, name=lease)):
        assert not access_review(watcher, access), f"{access} must be denied"

    # The Lease: the watcher's own elector acquires, renews and releases it with these rights.
    from svctrace.streams.metadata.watcher import LeaseElector

    poll(lambda: access_review(watcher, Access("create", "leases", "coordination.k8s.io", namespace=namespace)),
         "the leader-election RoleBinding to take effect")
    elector = LeaseElector(watcher, namespace, lease, "replica-a", lease_duration_s=15)
    standby = LeaseElector(watcher, namespace, lease, "replica-b", lease_duration_s=15)
    assert elector.try_acquire_or_renew() is True  # creates the Lease
    assert standby.try_acquire_or_renew() is False  # one active replica
    assert elector.try_acquire_or_renew() is True  # renews (get + update)
    elector.release()
    assert standby.try_acquire_or_renew() is True  # takes over at once after a clean release

    # The agent and the workers get no API access at all.
    for component in ("agent", "worker"):
        other = apiserver.service_account_client(namespace, accounts[component])
        assert not access_review(other, Access("list", "pods")), component
        assert not access_review(other, Access("list", "secrets")), component
