"""--authorization-mode=RBAC on the real server: the watcher's ServiceAccount gets exactly what it needs.

The Helm chart tests reuse WATCHER_ALLOWED / WATCHER_DENIED / access_report with the
chart's rendered ClusterRole instead of rbac_manifests().
"""
from __future__ import annotations

import time

import pytest
from kubernetes import client as k8s

from tests.harness.apiserver import (
    WATCHER_ALLOWED,
    WATCHER_DENIED,
    Access,
    ApplyError,
    access_report,
    access_review,
    rbac_manifests,
)

pytestmark = pytest.mark.apiserver

RBAC_PROPAGATION_DEADLINE_S = 15.0


def wait_allowed(client: k8s.ApiClient, access: Access) -> None:
    """RBAC reads bindings through an informer: poll until the new binding is in effect."""
    deadline = time.monotonic() + RBAC_PROPAGATION_DEADLINE_S
    while not access_review(client, access):
        assert time.monotonic() < deadline, f"{access} still denied {RBAC_PROPAGATION_DEADLINE_S}s after binding"
        time.sleep(0.05)


@pytest.fixture
def secret_namespace(apiserver) -> str:
    ns = apiserver.new_namespace("rbac")
    with apiserver.api_client() as admin:
        k8s.CoreV1Api(admin).create_namespaced_secret(
            ns, {"metadata": {"name": "db-password"}, "stringData": {"password": "hunter2"}})
    return ns


def test_watcher_service_account_can_watch_metadata_but_not_read_secrets(apiserver, secret_namespace):
    ns, sa = secret_namespace, "svctrace-watcher"
    denied = WATCHER_DENIED + (Access("get", "secrets", namespace=ns, name="db-password"),)
    with apiserver.service_account_client(ns, sa) as as_sa:
        before = access_report(as_sa, WATCHER_ALLOWED)
        assert before == {a: (False, 403) for a in WATCHER_ALLOWED}, "denied before any binding exists"

        applied = apiserver.apply(rbac_manifests(ns, sa, role=f"svctrace-watcher-{ns}"))
        assert [o["kind"] for o in applied] == ["ServiceAccount", "ClusterRole", "ClusterRoleBinding"]
        wait_allowed(as_sa, WATCHER_ALLOWED[0])

        after = access_report(as_sa, WATCHER_ALLOWED + denied)
    expected = {a: (True, 200) for a in WATCHER_ALLOWED} | {a: (False, 403) for a in denied}
    assert after == expected
    assert {a.resource for a in WATCHER_ALLOWED} == {"pods", "services", "endpointslices", "nodes"}
    assert {a.verb for a in WATCHER_ALLOWED} == {"list", "watch"}


def test_real_service_account_token_gets_the_same_rights(apiserver, secret_namespace):
    ns, sa = secret_namespace, "svctrace-watcher-token"
    apiserver.apply(rbac_manifests(ns, sa, role=f"svctrace-watcher-token-{ns}"))
    with apiserver.service_account_token_client(ns, sa) as as_sa:
        me = k8s.AuthenticationV1Api(as_sa).create_self_subject_review(k8s.V1SelfSubjectReview())
        assert me.status.user_info.username == f"system:serviceaccount:{ns}:{sa}"
        wait_allowed(as_sa, Access("list", "pods"))
        report = access_report(as_sa, (Access("watch", "endpointslices", "discovery.k8s.io"),
                                       Access("get", "secrets", namespace=ns, name="db-password")))
    assert list(report.values()) == [(True, 200), (False, 403)]


def test_dry_run_apply_validates_without_storing(apiserver):
    ns = apiserver.new_namespace("dry")
    role = f"dry-{ns}"
    service = {"apiVersion": "v1", "kind": "Service", "metadata": {"name": "svctrace"},
               "spec": {"selector": {"app": "svctrace"}, "ports": [{"port": 9090}]}}
    out = apiserver.dry_run_apply(rbac_manifests(ns, "dry-sa", role) + [service], namespace=ns)
    assert [o["kind"] for o in out] == ["ServiceAccount", "ClusterRole", "ClusterRoleBinding", "Service"]
    assert out[3]["metadata"]["namespace"] == ns and out[3]["spec"]["ports"][0]["targetPort"] == 9090
    with apiserver.api_client() as admin:
        rbac = k8s.RbacAuthorizationV1Api(admin)
        for read in (lambda: rbac.read_cluster_role(role),
                     lambda: k8s.CoreV1Api(admin).read_namespaced_service("svctrace", ns)):
            with pytest.raises(k8s.ApiException) as missing:
                read()
            assert missing.value.status == 404, "dry-run must not store anything"

    bad = dict(service, metadata={"name": "bad-port"}, spec={"ports": [{"port": 70000}]})
    with pytest.raises(ApplyError, match=r"Service/bad-port: 422 .*70000"):
        apiserver.dry_run_apply([bad], namespace=ns)
    with pytest.raises(ApplyError, match=r"Frobnicator/x: unknown apiVersion/kind"):
        apiserver.dry_run_apply([{"apiVersion": "example.com/v1", "kind": "Frobnicator",
                                  "metadata": {"name": "x"}}])
