"""The metadata watcher against the real kube-apiserver (tests/harness/apiserver.py).

The control plane has no kubelet or controllers: the tests play them, writing
pod status (IP, Ready) and EndpointSlices through the API.
"""
from __future__ import annotations

import json
import threading
import time
from typing import Callable

import kubernetes.client as k8s
import pytest

from svctrace.streams.metadata.index import ClusterIndex
from svctrace.streams.metadata.sources import load_file
from svctrace.streams.metadata.watcher import (
    FanoutSink,
    IndexSink,
    JsonLinesSink,
    LeaseElector,
    Watcher,
)

pytestmark = pytest.mark.apiserver

DEADLINE_S = 30.0


def wait_for(what: str, cond: Callable[[], object], timeout: float = DEADLINE_S):
    """Poll `cond` until truthy; fail naming `what` at the deadline."""
    end = time.monotonic() + timeout
    while True:
        value = cond()
        if value:
            return value
        if time.monotonic() > end:
            pytest.fail(f"timed out after {timeout:.0f}s waiting for {what}")
        time.sleep(0.05)  # poll interval


class RecordingSink:
    """Keeps every change in order (thread-safe enough: the watcher serializes publish)."""

    def __init__(self):
        self.changes = []

    def publish(self, changes):
        self.changes.extend(changes)

    def flush(self):
        pass

    def close(self):
        pass

    def for_key(self, key):
        return [c for c in self.changes if c.key == key]


class Harness:
    def __init__(self, apiserver, tmp_path, name="w", **kwargs):
        self.client = apiserver.api_client()
        self.index = ClusterIndex()
        self.recorder = RecordingSink()
        self.output = tmp_path / f"{name}.jsonl"
        self.sink = FanoutSink(IndexSink(self.index), self.recorder, JsonLinesSink(self.output))
        self.watcher = Watcher(self.client, self.sink, watch_timeout_s=60, **kwargs)
        self.thread = None

    def __enter__(self):
        self.thread = self.watcher.start()
        return self

    def __exit__(self, *exc):
        self.watcher.stop()
        self.thread.join(15)
        self.sink.close()
        self.client.close()
        assert not self.thread.is_alive(), "watcher did not stop"


@pytest.fixture
def api(apiserver):
    client = apiserver.api_client()
    yield k8s.CoreV1Api(client), k8s.DiscoveryV1Api(client)
    client.close()


def make_pod(core, ns, name, ip=None, labels=None, ports=(), ready=True):
    body = {"apiVersion": "v1", "kind": "Pod",
            "metadata": {"name": name, "namespace": ns, "labels": labels or {"app": "web"}},
            "spec": {"nodeName": "node-a",
                     "containers": [{"name": "c", "image": "nginx",
                                     "ports": [{"name": n, "containerPort": p} for n, p in ports]}]}}
    core.create_namespaced_pod(ns, body)
    if ip:
        set_pod_status(core, ns, name, ip, ready)


def set_pod_status(core, ns, name, ip, ready=True):
    core.patch_namespaced_pod_status(name, ns, {"status": {
        "phase": "Running", "podIP": ip, "podIPs": [{"ip": ip}],
        "conditions": [{"type": "Ready", "status": "True" if ready else "False"}]}})


def delete_pod(core, ns, name):
    core.delete_namespaced_pod(name, ns, grace_period_seconds=0)  # no kubelet to confirm a graceful delete


def make_service(core, ns, name, cluster_ip=None, target_port="http"):
    spec = {"selector": {"app": name}, "ports": [{"name": "http", "port": 80, "targetPort": target_port}]}
    svc = core.create_namespaced_service(ns, {"apiVersion": "v1", "kind": "Service",
                                              "metadata": {"name": name, "namespace": ns}, "spec": spec})
    return svc.spec.cluster_ip


def make_slice(disc, ns, service, name, endpoints):
    body = {"apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice", "addressType": "IPv4",
            "metadata": {"name": name, "namespace": ns, "labels": {"kubernetes.io/service-name": service}},
            "ports": [{"name": "http", "port": 8080, "protocol": "TCP"}],
            "endpoints": [{"addresses": [ip], "conditions": {"ready": ready},
                           "targetRef": {"kind": "Pod", "name": pod, "namespace": ns}}
                          for ip, pod, ready in endpoints]}
    return disc.create_namespaced_endpoint_slice(ns, body)


def _pod_name_at(index, ip, ts=None):
    pod = index.pod_by_ip(ip, ts)
    return pod.name if pod else None


def test_create_update_delete_converge_in_sink_and_index(apiserver, api, tmp_path):
    core, disc = api
    ns = apiserver.new_namespace("meta")
    with Harness(apiserver, tmp_path) as h:
        wait_for("initial sync", h.watcher.synced)
        assert h.watcher.kinds == ["Namespace", "Node", "Service", "EndpointSlice", "Pod", "NetworkPolicy"]
        make_pod(core, ns, "web-1", ip="10.244.1.10", ports=[("http", 8080)])
        vip = make_service(core, ns, "web")
        make_slice(disc, ns, "web", "web-abc", [("10.244.1.10", "web-1", True)])
        idx = h.index
        wait_for("pod IP in the index", lambda: _pod_name_at(idx, "10.244.1.10") == "web-1")
        wait_for("service VIP in the index", lambda: idx.service_by_ip(vip, 80))
        wait_for("endpoints in the index", lambda: idx.endpoints(ns, "web"))
        svc, port = idx.service_by_ip(vip, 80, "TCP")
        pod = idx.pod_by_ip("10.244.1.10")
        assert (svc.namespace, svc.name) == (ns, "web")
        assert idx.resolve_target_port(svc, port, pod) == 8080
        [ep] = idx.endpoints(ns, "web")
        assert (ep.ip, ep.port, ep.ready, idx.endpoint_pod(ep).name) == ("10.244.1.10", 8080, True, "web-1")
        assert ns in {o.name for key, o in idx.objects() if key.startswith("Namespace/")}
        assert idx.namespace(ns).labels.get("kubernetes.io/metadata.name") == ns  # (the API server sets it)

        # A NetworkPolicy: its selectors and rules, with the API's default policyTypes.
        net = k8s.NetworkingV1Api(h.client)
        net.create_namespaced_network_policy(ns, {
            "apiVersion": "networking.k8s.io/v1", "kind": "NetworkPolicy", "metadata": {"name": "web-80", "namespace": ns},
            "spec": {"podSelector": {"matchLabels": {"app": "web"}},
                     "ingress": [{"ports": [{"port": 80}], "from": [{"namespaceSelector": {}}]}]}})
        wait_for("network policy in the index", lambda: idx.network_policies(ns))
        [policy] = idx.network_policies(ns)
        assert policy.policy_types == ("Ingress",) and policy.pod_selector["match_labels"] == {"app": "web"}
        assert policy.ingress[0]["ports"] == [{"protocol": "TCP", "port": 80, "end_port": None}]
        net.delete_namespaced_network_policy("web-80", ns)
        wait_for("network policy gone", lambda: not idx.network_policies(ns))

        # Update: the pod turns unready, its endpoint too.
        set_pod_status(core, ns, "web-1", "10.244.1.10", ready=False)
        disc.patch_namespaced_endpoint_slice("web-abc", ns, {"endpoints": [
            {"addresses": ["10.244.1.10"], "conditions": {"ready": False, "terminating": True},
             "targetRef": {"kind": "Pod", "name": "web-1", "namespace": ns}}]})
        wait_for("pod unready", lambda: idx.pod_by_ip("10.244.1.10").ready is False)
        wait_for("endpoint terminating", lambda: idx.endpoints(ns, "web")[0].terminating)

        # Connections drop: every watch resumes from its resourceVersion, nothing is relisted
        # and nothing that changed in between is missed.
        h.watcher.interrupt_watches()
        core.patch_namespaced_pod("web-1", ns, {"metadata": {"labels": {"app": "web", "rev": "2"}}})
        wait_for("change made while reconnecting", lambda: idx.pod_by_ip("10.244.1.10").labels.get("rev") == "2")

        # Delete: tombstones in the sink, gone from the index.
        core.delete_namespaced_service("web", ns)
        disc.delete_namespaced_endpoint_slice("web-abc", ns)
        delete_pod(core, ns, "web-1")
        wait_for("service gone", lambda: idx.service_by_ip(vip, 80) is None)
        wait_for("pod gone", lambda: idx.pod_by_ip("10.244.1.10") is None)
        wait_for("endpoints gone", lambda: idx.endpoints(ns, "web") == [])
        for key in (f"Service/{ns}/web", f"Pod/{ns}/web-1", f"EndpointSlice/{ns}/web-abc"):
            assert h.recorder.for_key(key)[-1].record is None, key
        # Pending-pod creation, status patches: only projections that changed were published.
        pod_changes = h.recorder.for_key(f"Pod/{ns}/web-1")
        assert len(pod_changes) <= 5

    # The JSON lines output replays to the same index.
    replay = ClusterIndex.from_records(load_file(h.output))
    assert replay.pod_by_ip("10.244.1.10") is None
    assert {k for k, _ in replay.objects() if f"/{ns}/" in k} == {k for k, _ in h.index.objects() if f"/{ns}/" in k}
    metrics = h.watcher.metrics.registry
    assert metrics.get_sample_value("svctrace_metadata_published_total", {"kind": "Pod", "op": "delete"}) >= 1
    for kind in h.watcher.kinds:  # one list each; the interrupted watches resumed without relisting
        assert metrics.get_sample_value("svctrace_metadata_relists_total", {"kind": kind, "reason": "initial"}) == 1
        assert metrics.get_sample_value("svctrace_metadata_relists_total", {"kind": kind, "reason": "resync"}) is None
        assert metrics.get_sample_value("svctrace_metadata_relists_total", {"kind": kind, "reason": "gone"}) is None


def test_reused_pod_ip_maps_by_event_time_live(apiserver, api, tmp_path):
    core, _ = api
    ns = apiserver.new_namespace("reuse")
    ip = "10.244.2.20"
    with Harness(apiserver, tmp_path) as h:
        wait_for("initial sync", h.watcher.synced)
        make_pod(core, ns, "old", ip=ip)
        wait_for("old pod", lambda: _pod_name_at(h.index, ip) == "old")
        t_old = time.time_ns()
        delete_pod(core, ns, "old")
        wait_for("old pod deleted", lambda: _pod_name_at(h.index, ip) is None)
        t_gap = time.time_ns()
        make_pod(core, ns, "new", ip=ip)
        wait_for("new pod", lambda: _pod_name_at(h.index, ip) == "new")
        t_new = time.time_ns()
        assert (_pod_name_at(h.index, ip, t_old), _pod_name_at(h.index, ip, t_gap),
                _pod_name_at(h.index, ip, t_new)) == ("old", None, "new")


class _GoneResponse:
    """A watch response carrying what kube-apiserver sends when the resourceVersion is too old."""

    LINE = json.dumps({"type": "ERROR", "object": {
        "kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
        "message": "too old resource version: 1 (4242)", "reason": "Expired", "code": 410}}).encode() + b"\n"

    def stream(self, amt=None, decode_content=False):
        yield self.LINE

    def shutdown(self):
        pass

    def release_conn(self):
        pass


class GatedWatch:
    """Client-boundary injection for one kind: hold the next watch request until released,
    then answer it with 410 Gone, as the server does for a resourceVersion it has
    forgotten (an ERROR watch event, or the HTTP status). The kube-apiserver under test
    serves even compacted resourceVersions from its watch cache, so it is injected here."""

    def __init__(self, kind_watcher, mode):
        self.kw = kind_watcher
        self.original = kind_watcher._list
        self.gate = threading.Event()
        self.waiting = threading.Event()
        self.mode = mode
        self.armed = True
        kind_watcher._list = self

    def __call__(self, *args, **kwargs):
        if kwargs.get("watch") and self.armed:
            self.armed = False
            self.waiting.set()
            self.gate.wait(DEADLINE_S)
            if self.mode == "http_410":
                raise k8s.ApiException(status=410, reason="Gone")
            return _GoneResponse()
        return self.original(*args, **kwargs)


@pytest.mark.parametrize("mode", ["error_event", "http_410"])
def test_cut_watch_and_410_relist_leaves_no_stale_ip(apiserver, api, tmp_path, mode):
    core, _ = api
    ns = apiserver.new_namespace("gone")
    ip = "10.244.3.30"
    with Harness(apiserver, tmp_path) as h:
        wait_for("initial sync", h.watcher.synced)
        make_pod(core, ns, "before", ip=ip)
        make_pod(core, ns, "bystander", ip="10.244.3.31")
        wait_for("pod before", lambda: _pod_name_at(h.index, ip) == "before")
        t_before = time.time_ns()
        pods = h.watcher.kind_watchers["Pod"]
        gated = GatedWatch(pods, mode)
        pods.interrupt()  # the connection drops...
        wait_for("watcher reconnecting", gated.waiting.is_set)
        # ...and while it is down the pod is replaced by another with the same IP.
        delete_pod(core, ns, "before")
        delete_pod(core, ns, "bystander")
        make_pod(core, ns, "after", ip=ip)
        assert _pod_name_at(h.index, ip) == "before"  # nothing seen yet
        gated.gate.set()  # reconnect: 410 Gone -> relist and diff
        wait_for("pod after", lambda: _pod_name_at(h.index, ip) == "after")
        wait_for("bystander gone", lambda: h.index.pod_by_ip("10.244.3.31") is None)
        registry = h.watcher.metrics.registry
        assert registry.get_sample_value("svctrace_metadata_relists_total", {"kind": "Pod", "reason": "gone"}) == 1
        assert h.recorder.for_key(f"Pod/{ns}/before")[-1].record is None  # tombstone from the diff
        assert h.recorder.for_key(f"Pod/{ns}/bystander")[-1].record is None
        assert _pod_name_at(h.index, ip, t_before) == "before"  # earlier events keep their pod
        # The watch resumed: later changes arrive without another relist.
        set_pod_status(core, ns, "after", ip, ready=False)
        wait_for("update after relist", lambda: h.index.pod_by_ip(ip).ready is False)
        assert registry.get_sample_value("svctrace_metadata_relists_total", {"kind": "Pod", "reason": "gone"}) == 1


def test_legacy_endpoints_where_slices_are_absent(apiserver, api, tmp_path):
    core, _ = api
    ns = apiserver.new_namespace("legacy")
    with Harness(apiserver, tmp_path, endpoints="legacy") as h:
        assert "Endpoints" in h.watcher.kinds and "EndpointSlice" not in h.watcher.kinds
        wait_for("initial sync", h.watcher.synced)
        make_service(core, ns, "old", target_port=9000)
        core.create_namespaced_endpoints(ns, {
            "apiVersion": "v1", "kind": "Endpoints", "metadata": {"name": "old", "namespace": ns},
            "subsets": [{"addresses": [{"ip": "10.244.4.40"}], "notReadyAddresses": [{"ip": "10.244.4.41"}],
                         "ports": [{"name": "http", "port": 9000, "protocol": "TCP"}]}]})
        eps = wait_for("legacy endpoints", lambda: h.index.endpoints(ns, "old"))
        assert sorted((e.ip, e.port, e.ready) for e in eps) == [("10.244.4.40", 9000, True),
                                                                ("10.244.4.41", 9000, False)]
        assert [s.name for s in h.index.services_for_endpoint("10.244.4.40", 9000)] == ["old"]


def test_leader_election_one_active_then_failover(apiserver, api, tmp_path):
    core, _ = api
    ns = apiserver.new_namespace("lease")
    lease = "svctrace-metadata-test"

    def elector(identity):
        return LeaseElector(apiserver.api_client(), ns, lease, identity,
                            lease_duration_s=2.0, renew_deadline_s=1.5, retry_period_s=0.2)

    with Harness(apiserver, tmp_path, "a", elector=elector("replica-a")) as a, \
            Harness(apiserver, tmp_path, "b", elector=elector("replica-b")) as b:
        leader = wait_for("a leader", lambda: next((x for x in (a, b) if x.watcher.leading), None))
        standby = b if leader is a else a
        wait_for("leader synced", leader.watcher.synced)
        # Several renew periods later the standby is still standing by.
        holder = lambda: k8s.CoordinationV1Api(leader.client).read_namespaced_lease(lease, ns).spec  # noqa: E731
        first = holder()
        wait_for("lease renewed twice", lambda: holder().renew_time > first.renew_time and
                 holder().renew_time.timestamp() - first.renew_time.timestamp() >= 0.35)
        assert not standby.watcher.leading and standby.recorder.changes == []
        assert holder().holder_identity == leader.watcher.elector.identity
        make_pod(core, ns, "p1", ip="10.244.5.50")
        wait_for("leader publishes", lambda: _pod_name_at(leader.index, "10.244.5.50") == "p1")
        assert standby.recorder.changes == []

        # The leader stops (and releases the Lease): the standby takes over and publishes.
        leader.watcher.stop()
        leader.thread.join(15)
        wait_for("standby takes over", lambda: standby.watcher.leading)
        wait_for("standby synced", standby.watcher.synced)
        wait_for("new leader publishes", lambda: _pod_name_at(standby.index, "10.244.5.50") == "p1")
        assert holder().holder_identity == standby.watcher.elector.identity
        assert holder().lease_transitions >= 1


def test_leader_that_cannot_renew_steps_down_before_the_standby_takes_over(apiserver, tmp_path):
    ns = apiserver.new_namespace("lease2")
    lease = "svctrace-metadata-expiry"

    def elector(identity):
        return LeaseElector(apiserver.api_client(), ns, lease, identity,
                            lease_duration_s=2.0, renew_deadline_s=1.2, retry_period_s=0.2)

    with Harness(apiserver, tmp_path, "a", elector=elector("replica-a")) as a:
        wait_for("a leads", lambda: a.watcher.leading)
        with Harness(apiserver, tmp_path, "b", elector=elector("replica-b")) as b:
            # a loses the API (a partition): its renewals fail, it holds on until the renew
            # deadline, then steps down; b waits for the Lease to expire, then takes over.
            def unreachable():
                raise k8s.ApiException(status=0, reason="connection refused")
            a.watcher.elector.try_acquire_or_renew = unreachable
            both = []

            def b_leads():
                both.append(a.watcher.leading and b.watcher.leading)
                return b.watcher.leading
            wait_for("b takes over", b_leads)
            assert not a.watcher.leading
            assert not any(both), "two active replicas at once"
            wait_for("b synced", b.watcher.synced)
