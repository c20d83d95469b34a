"""The real kube-apiserver: objects the metadata watcher cares about, created and watched."""
from __future__ import annotations

import ipaddress
import time

import kubernetes
import pytest
from kubernetes import client as k8s
from kubernetes import watch

from tests.harness.apiserver import KUBERNETES_VERSION, kubelab

pytestmark = pytest.mark.apiserver

WATCH_DEADLINE_S = 20.0


def next_event(list_fn, *args, resource_version: str, name: str, types: set[str]) -> dict:
    """First watch event (from resource_version on) of object `name` whose type is in `types`."""
    deadline = time.monotonic() + WATCH_DEADLINE_S
    seen = []
    while time.monotonic() < deadline:
        w = watch.Watch()
        for event in w.stream(list_fn, *args, resource_version=resource_version,
                              field_selector=f"metadata.name={name}", timeout_seconds=5):
            seen.append(event["type"])
            if event["type"] in types:
                w.stop()
                return event
    raise AssertionError(f"no {types} event for {name} within {WATCH_DEADLINE_S}s; saw {seen}")


def test_server_identity_and_bootstrap_objects(apiserver):
    with apiserver.api_client() as c:
        info = k8s.VersionApi(c).get_code()
        assert info.git_version == KUBERNETES_VERSION
        # the apiserver's own bootstrap controller: default namespaces and the `kubernetes` Service
        names = {n.metadata.name for n in k8s.CoreV1Api(c).list_namespace().items}
        assert {"default", "kube-system", "kube-public"} <= names
        svc = k8s.CoreV1Api(c).read_namespaced_service("kubernetes", "default")
        assert ipaddress.ip_address(svc.spec.cluster_ip) in ipaddress.ip_network(kubelab.SERVICE_CIDR)


def test_kubeconfig_file_gives_a_working_client(apiserver):
    with kubernetes.config.new_client_from_config(config_file=apiserver.kubeconfig) as c:
        user = k8s.AuthenticationV1Api(c).create_self_subject_review(k8s.V1SelfSubjectReview())
        assert user.status.user_info.username == kubelab.ADMIN_USER
        assert kubelab.ADMIN_GROUP in user.status.user_info.groups


def test_namespace_pod_service_endpointslice_are_created_and_watched(apiserver):
    with apiserver.api_client() as c:
        core, discovery = k8s.CoreV1Api(c), k8s.DiscoveryV1Api(c)
        start_rv = core.list_namespace(limit=1).metadata.resource_version

        ns = apiserver.new_namespace("smoke")
        pod = core.create_namespaced_pod(ns, {
            "metadata": {"name": "web-0", "labels": {"app": "web"}},
            "spec": {"containers": [{"name": "web", "image": "registry.k8s.io/pause:3.10",
                                     "ports": [{"name": "http", "containerPort": 8080}]}]},
        })
        svc = core.create_namespaced_service(ns, {
            "metadata": {"name": "web"},
            "spec": {"selector": {"app": "web"},
                     "ports": [{"name": "http", "port": 80, "targetPort": "http", "protocol": "TCP"}]},
        })
        slice_ = discovery.create_namespaced_endpoint_slice(ns, {
            "metadata": {"name": "web-abc12", "labels": {"kubernetes.io/service-name": "web"}},
            "addressType": "IPv4",
            "endpoints": [{"addresses": ["10.244.1.7"], "conditions": {"ready": True},
                           "targetRef": {"kind": "Pod", "namespace": ns, "name": "web-0",
                                         "uid": pod.metadata.uid}}],
            "ports": [{"name": "http", "port": 8080, "protocol": "TCP"}],
        })

        # the server did its part: ClusterIP allocated from our range; no scheduler, so Pending
        assert ipaddress.ip_address(svc.spec.cluster_ip) in ipaddress.ip_network(kubelab.SERVICE_CIDR)
        assert pod.status.phase == "Pending"

        added_ns = next_event(core.list_namespace, resource_version=start_rv, name=ns, types={"ADDED"})
        assert added_ns["object"].metadata.name == ns
        added_pod = next_event(core.list_namespaced_pod, ns, resource_version=start_rv, name="web-0",
                               types={"ADDED"})
        assert added_pod["object"].metadata.labels == {"app": "web"}
        added_svc = next_event(core.list_namespaced_service, ns, resource_version=start_rv, name="web",
                               types={"ADDED"})
        assert added_svc["object"].spec.cluster_ip == svc.spec.cluster_ip
        added_slice = next_event(discovery.list_namespaced_endpoint_slice, ns, resource_version=start_rv,
                                 name="web-abc12", types={"ADDED"})
        assert added_slice["object"].endpoints[0].addresses == ["10.244.1.7"]
        assert added_slice["object"].endpoints[0].target_ref.uid == pod.metadata.uid

        # changes and deletions stream too
        core.patch_namespaced_service("web", ns, {"metadata": {"labels": {"tier": "front"}}})
        modified = next_event(core.list_namespaced_service, ns, resource_version=svc.metadata.resource_version,
                              name="web", types={"MODIFIED"})
        assert modified["object"].metadata.labels == {"tier": "front"}
        discovery.delete_namespaced_endpoint_slice("web-abc12", ns)
        deleted = next_event(discovery.list_namespaced_endpoint_slice, ns,
                             resource_version=slice_.metadata.resource_version, name="web-abc12",
                             types={"DELETED"})
        assert deleted["object"].metadata.uid == slice_.metadata.uid

