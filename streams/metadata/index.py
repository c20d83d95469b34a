"""ClusterIndex: a time-aware, bounded, pure index of Kubernetes objects.

Fed with k8s-object records (schemas/k8s-object.schema.json) from the
compacted topic, an offline snapshot or a capture, it answers enrichment
questions *as of an event time*: which pod owned this IP, which Service a
ClusterIP:port belongs to, which endpoints back a Service, which IPs are
cluster DNS.

Time model. Every object key (kind, namespace, name) has a version history:
a list of (start_ts, state) sorted by start_ts, where state is None for a
deletion. A version is valid from its start until the next version's start.
Records may arrive in any order; each is inserted at its observed_ts. The
first known version of an object that was not a deletion also answers for
times before anything was observed about the IP asked for (a snapshot taken
after the traffic still explains it); once any history of that IP is known,
only exact intervals answer, so a delete followed by a reuse leaves a gap.

Memory is bounded: versions that ended more than `retention_ns` before the
newest observed_ts are pruned, and objects deleted longer ago than that are
forgotten entirely.
"""
from __future__ import annotations

import bisect
from dataclasses import dataclass, field
from typing import Any, Iterable, Iterator

NODE_LOCAL_DNS_IP = "169.254.20.10"
DNS_NAMESPACE = "kube-system"
DNS_NAMES = frozenset({"kube-dns", "coredns"})
DNS_LABEL = ("k8s-app", "kube-dns")
TERMINAL_POD_PHASES = frozenset({"Succeeded", "Failed"})
DEFAULT_RETENTION_NS = 3600 * 10**9  # one hour: the syscalls topic keeps no more than that


# ---------------------------------------------------------------------------
# Info classes handed to enrichment. Frozen; mapping fields are excluded from
# hashing so the objects stay usable as dict keys and set members.


@dataclass(frozen=True, slots=True)
class ContainerPortInfo:
    name: str | None
    port: int
    protocol: str = "TCP"


@dataclass(frozen=True, slots=True)
class PodInfo:
    namespace: str
    name: str
    node: str | None
    ips: tuple[str, ...]
    labels: dict[str, str] = field(hash=False)
    container_ids: tuple[str, ...] = ()
    host_network: bool = False
    ready: bool = False
    phase: str | None = None
    uid: str | None = None
    ports: tuple[ContainerPortInfo, ...] = ()
    dns_policy: str | None = None  # spec.dnsPolicy; None: a record from before it was projected


@dataclass(frozen=True, slots=True)
class ServicePortInfo:
    name: str | None
    port: int
    protocol: str = "TCP"
    target_port: int | str | None = None
    node_port: int | None = None


@dataclass(frozen=True, slots=True)
class ServiceInfo:
    namespace: str
    name: str
    type: str
    cluster_ips: tuple[str, ...]
    ports: tuple[ServicePortInfo, ...]
    selector: dict[str, str] | None = field(hash=False)
    session_affinity: str | None = None
    external_traffic_policy: str | None = None
    labels: dict[str, str] = field(default_factory=dict, hash=False)
    uid: str | None = None


@dataclass(frozen=True, slots=True)
class EndpointInfo:
    ip: str
    port: int | None
    ready: bool
    serving: bool
    terminating: bool
    node: str | None
    pod: str | None
    pod_namespace: str | None
    port_name: str | None = None
    protocol: str | None = None


@dataclass(frozen=True, slots=True)
class EndpointSetInfo:
    """One EndpointSlice or core/v1 Endpoints object, flattened to endpoints."""
    kind: str  # EndpointSlice | Endpoints
    namespace: str
    name: str
    service: str | None
    endpoints: tuple[EndpointInfo, ...]


@dataclass(frozen=True, slots=True)
class NodeInfo:
    name: str
    addresses: tuple[str, ...]
    pod_cidrs: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True)
class NamespaceInfo:
    name: str
    labels: dict[str, str] = field(default_factory=dict, hash=False)  # {}: a record from before they were projected


@dataclass(frozen=True, slots=True)
class NetworkPolicyInfo:
    """A NetworkPolicy as its record projects it (selectors, peers and ports as the record's dicts):
    streams/core/policy.py reads it."""
    namespace: str
    name: str
    pod_selector: dict = field(hash=False)
    policy_types: tuple[str, ...] = ("Ingress",)
    ingress: tuple = field(default=(), hash=False)
    egress: tuple = field(default=(), hash=False)


# ---------------------------------------------------------------------------
# Record -> info conversion (one function per kind: the single table below).


def _pod_info(rec: dict) -> PodInfo:
    p = rec.get("pod") or {}
    return PodInfo(
        namespace=rec.get("namespace") or "",
        name=rec["name"],
        node=p.get("node"),
        ips=tuple(p.get("ips") or ()),
        labels=dict(p.get("labels") or {}),
        container_ids=tuple(normalize_container_id(c) for c in p.get("container_ids") or () if c),
        host_network=bool(p.get("host_network", False)),
        ready=bool(p.get("ready", False)),
        phase=p.get("phase"),
        uid=rec.get("uid"),
        ports=tuple(
            ContainerPortInfo(q.get("name"), int(q["port"]), q.get("protocol") or "TCP")
            for q in p.get("ports") or ()
            if q.get("port") is not None
        ),
        dns_policy=p.get("dns_policy"),
    )


def _service_info(rec: dict) -> ServiceInfo:
    s = rec.get("service") or {}
    return ServiceInfo(
        namespace=rec.get("namespace") or "",
        name=rec["name"],
        type=s.get("type") or "ClusterIP",
        cluster_ips=tuple(ip for ip in s.get("cluster_ips") or () if ip and ip != "None"),
        ports=tuple(
            ServicePortInfo(
                name=q.get("name"),
                port=int(q["port"]),
                protocol=q.get("protocol") or "TCP",
                target_port=q.get("target_port"),
                node_port=q.get("node_port"),
            )
            for q in s.get("ports") or ()
            if q.get("port") is not None
        ),
        selector=dict(s["selector"]) if s.get("selector") is not None else None,
        session_affinity=s.get("session_affinity"),
        external_traffic_policy=s.get("external_traffic_policy"),
        labels=dict(s.get("labels") or {}),
        uid=rec.get("uid"),
    )


def _endpoint_set_info(rec: dict) -> EndpointSetInfo:
    e = rec.get("endpoints") or {}
    obj_ports = e.get("ports")
    out = []
    for ep in e.get("endpoints") or ():
        ready = ep.get("ready")
        ready = True if ready is None else bool(ready)  # EndpointSlice: nil ready means ready
        serving = ep.get("serving")
        serving = ready if serving is None else bool(serving)
        terminating = bool(ep.get("terminating") or False)
        # Endpoints (core/v1) subsets carry their own port list per address.
        ports = ep.get("ports", obj_ports) or [{"name": None, "port": None, "protocol": None}]
        for addr in ep.get("addresses") or ():
            for q in ports:
                out.append(
                    EndpointInfo(
                        ip=addr,
                        port=q.get("port"),
                        ready=ready,
                        serving=serving,
                        terminating=terminating,
                        node=ep.get("node"),
                        pod=ep.get("pod"),
                        pod_namespace=ep.get("pod_namespace"),
                        port_name=q.get("name"),
                        protocol=q.get("protocol"),
                    )
                )
    service = e.get("service")
    if rec["kind"] == "Endpoints" and not service:
        service = rec["name"]  # an Endpoints object is named after its Service
    return EndpointSetInfo(rec["kind"], rec.get("namespace") or "", rec["name"], service, tuple(out))


def _node_info(rec: dict) -> NodeInfo:
    n = rec.get("node") or {}
    return NodeInfo(rec["name"], tuple(n.get("addresses") or ()), tuple(n.get("pod_cidrs") or ()))


def _namespace_info(rec: dict) -> NamespaceInfo:
    return NamespaceInfo(rec["name"], dict(rec.get("namespace_labels") or {}))


def _network_policy_info(rec: dict) -> NetworkPolicyInfo:
    np = rec.get("network_policy") or {}
    return NetworkPolicyInfo(rec.get("namespace") or "", rec["name"],
                             np.get("pod_selector") or {"match_labels": {}, "match_expressions": []},
                             tuple(np.get("policy_types") or ("Ingress",)),
                             tuple(np.get("ingress") or ()), tuple(np.get("egress") or ()))


INFO_BUILDERS = {
    "Pod": _pod_info,
    "Service": _service_info,
    "EndpointSlice": _endpoint_set_info,
    "Endpoints": _endpoint_set_info,
    "Node": _node_info,
    "Namespace": _namespace_info,
    "NetworkPolicy": _network_policy_info,
}


def normalize_container_id(cid: str) -> str:
    """'containerd://0123abcd...' or '0123ABCD...' -> '0123abcd...'."""
    cid = cid.strip().lower()
    if "://" in cid:
        cid = cid.split("://", 1)[1]
    return cid


def record_key(record: dict) -> str:
    """The topic key of a record: kind/namespace/name (empty namespace when cluster-scoped)."""
    return f"{record['kind']}/{record.get('namespace') or ''}/{record['name']}"


def parse_key(key: str | bytes) -> tuple[str, str, str]:
    if isinstance(key, bytes):
        key = key.decode("utf-8")
    kind, sep1, rest = key.partition("/")
    namespace, sep2, name = rest.partition("/")
    if not (sep1 and sep2 and kind in INFO_BUILDERS and name):
        raise ValueError(f"bad k8s object key {key!r}: expected kind/namespace/name")
    return kind, namespace, name


# ---------------------------------------------------------------------------


_Key = tuple  # (kind, namespace, name)


class _History:
    """Versions of one object: parallel sorted lists of start times and states."""
    __slots__ = ("starts", "states")

    def __init__(self) -> None:
        self.starts: list[int] = []
        self.states: list[Any] = []

    def put(self, ts: int, state: Any) -> bool:
        """Insert a version at ts (replacing one at the same ts). False when nothing changed."""
        i = bisect.bisect_right(self.starts, ts)
        if i and self.starts[i - 1] == ts:
            if self.states[i - 1] == state:
                return False
            self.states[i - 1] = state
            return True
        if i and self.states[i - 1] == state:
            return False  # same state re-observed (resync, relist): the interval simply continues
        self.starts.insert(i, ts)
        self.states.insert(i, state)
        # A later identical version is now redundant.
        if i + 1 < len(self.states) and self.states[i + 1] == state:
            del self.starts[i + 1], self.states[i + 1]
        return True

    def at(self, ts: int | None) -> tuple[Any, bool]:
        """(state valid at ts, exact). exact=False marks the before-first-observation fallback."""
        if not self.starts:
            return None, False
        if ts is None:
            return self.states[-1], True
        i = bisect.bisect_right(self.starts, ts)
        if i:
            return self.states[i - 1], True
        return self.states[0], False  # None when the first known version is a deletion

    def last_alive(self) -> Any:
        for state in reversed(self.states):
            if state is not None:
                return state
        return None

    def start_of(self, ts: int | None) -> int:
        if ts is None:
            return self.starts[-1]
        i = bisect.bisect_right(self.starts, ts)
        return self.starts[i - 1] if i else self.starts[0]

    def prune(self, horizon: int) -> None:
        """Drop versions that ended before horizon (keep the one valid at horizon)."""
        i = bisect.bisect_right(self.starts, horizon)
        if i > 1:
            del self.starts[: i - 1], self.states[: i - 1]

    def states_iter(self) -> Iterator[Any]:
        return (s for s in self.states if s is not None)


class ClusterIndex:
    """Time-aware index of pods, services, endpoints and nodes. Pure: no I/O."""

    def __init__(self, retention_ns: int = DEFAULT_RETENTION_NS):
        self.retention_ns = retention_ns
        self._objects: dict[_Key, _History] = {}
        # Secondary indexes: value -> keys that had it in any retained version.
        self._by_pod_ip: dict[str, set[_Key]] = {}
        self._by_container: dict[str, _Key] = {}  # 12-char prefix -> pod key
        self._by_cluster_ip: dict[str, set[_Key]] = {}
        self._by_endpoint_ip: dict[str, set[_Key]] = {}
        self._slices_of: dict[tuple[str, str], set[_Key]] = {}  # (ns, service) -> slice/Endpoints keys
        self._by_node_ip: dict[str, set[_Key]] = {}
        self._policies_of: dict[str, set[_Key]] = {}  # namespace -> its NetworkPolicies' keys
        self._watermark: int | None = None
        self._next_prune: int | None = None

    # -- construction -------------------------------------------------------

    @classmethod
    def from_records(cls, records: Iterable[dict], retention_ns: int = DEFAULT_RETENTION_NS) -> "ClusterIndex":
        index = cls(retention_ns=retention_ns)
        for rec in sorted(records, key=lambda r: r["observed_ts"]):
            index.apply(rec)
        return index

    def apply(self, record: dict) -> None:
        """Upsert the record's object, or delete it when record['deleted'], at observed_ts."""
        try:
            kind, ts, name = record["kind"], int(record["observed_ts"]), record["name"]
        except (KeyError, TypeError, ValueError) as e:
            raise ValueError(f"k8s-object record without a valid {e}: {record!r:.200}") from None
        builder = INFO_BUILDERS.get(kind)
        if builder is None:
            raise ValueError(f"k8s-object record of unknown kind {kind!r} ({name})")
        key = (kind, record.get("namespace") or "", name)
        state = None if record.get("deleted") else builder(record)
        self._put(key, ts, state)

    def delete(self, kind: str, namespace: str | None, name: str, ts: int) -> None:
        """A tombstone (null value on the compacted topic) for kind/namespace/name at ts."""
        if kind not in INFO_BUILDERS:
            raise ValueError(f"unknown kind {kind!r} ({namespace}/{name})")
        self._put((kind, namespace or "", name), ts, None)

    def apply_keyed(self, key: str | bytes, record: dict | None, ts: int) -> None:
        """Apply a topic record: a value, or a tombstone (None) for `key` observed at ts."""
        if record is None:
            self.delete(*parse_key(key), ts)
        else:
            self.apply(record)

    def _put(self, key: _Key, ts: int, state: Any) -> None:
        hist = self._objects.get(key)
        if hist is None:
            # Tombstones of unseen objects are kept too: records may arrive out of order.
            hist = self._objects[key] = _History()
        if hist.put(ts, state) and state is not None:
            self._add_secondary(key, state)
        if self._watermark is None or ts > self._watermark:
            self._watermark = ts
        # Prune when time has moved on by a quarter of the retention (amortized O(1) per apply).
        if self._next_prune is None:
            self._next_prune = ts + self.retention_ns // 4
        elif self._watermark >= self._next_prune:
            self.prune()

    def _add_secondary(self, key: _Key, state: Any) -> None:
        kind = key[0]
        if kind == "Pod":
            if not state.host_network:  # host-network pods share the node IP: not an identity
                for ip in state.ips:
                    self._by_pod_ip.setdefault(ip, set()).add(key)
            for cid in state.container_ids:
                if len(cid) >= 12:
                    self._by_container[cid[:12]] = key
        elif kind == "Service":
            for ip in state.cluster_ips:
                self._by_cluster_ip.setdefault(ip, set()).add(key)
        elif kind in ("EndpointSlice", "Endpoints"):
            for ep in state.endpoints:
                self._by_endpoint_ip.setdefault(ep.ip, set()).add(key)
            if state.service:
                self._slices_of.setdefault((key[1], state.service), set()).add(key)
        elif kind == "Node":
            for ip in state.addresses:
                self._by_node_ip.setdefault(ip, set()).add(key)
        elif kind == "NetworkPolicy":
            self._policies_of.setdefault(key[1], set()).add(key)

    # -- bounded memory -----------------------------------------------------

    def prune(self, now_ts: int | None = None) -> None:
        """Forget history older than now_ts - retention (default now: the newest observed_ts)."""
        now = self._watermark if now_ts is None else now_ts
        if now is None:
            return
        horizon = now - self.retention_ns
        self._next_prune = now + self.retention_ns // 4
        gone = []
        for key, hist in self._objects.items():
            hist.prune(horizon)
            if hist.states[-1] is None and hist.starts[-1] < horizon:
                gone.append(key)
        for key in gone:
            del self._objects[key]
        self._rebuild_secondary()

    def _rebuild_secondary(self) -> None:
        for d in (self._by_pod_ip, self._by_container, self._by_cluster_ip, self._by_endpoint_ip,
                  self._slices_of, self._by_node_ip, self._policies_of):
            d.clear()
        for key, hist in self._objects.items():
            for state in hist.states_iter():
                self._add_secondary(key, state)

    # -- queries ------------------------------------------------------------

    def _state(self, key: _Key, ts: int | None) -> Any:
        hist = self._objects.get(key)
        return None if hist is None else hist.at(ts)[0]

    def _pick(self, keys: Iterable[_Key] | None, ts: int | None, matches, prefer=None) -> Any:
        """The state, among `keys`' states at ts, that `matches`; best by (prefer, recency).

        The before-first-observation fallback only answers when ts precedes everything
        known about these keys (so a deletion followed by a reuse leaves a real gap).
        """
        if not keys:
            return None
        if len(keys) == 1:  # the common case, kept cheap: enrichment asks once per event
            for key in keys:
                hist = self._objects.get(key)
                state = hist.at(ts)[0] if hist is not None else None
                return state if state is not None and matches(state) else None
        hists = [h for h in map(self._objects.get, keys) if h is not None]
        allow_fallback = ts is not None and all(ts < h.starts[0] for h in hists)
        best, best_rank = None, None
        for hist in hists:
            state, exact = hist.at(ts)
            if state is None or not (exact or allow_fallback) or not matches(state):
                continue
            start = hist.start_of(ts)
            rank = (prefer(state) if prefer else 0, start if exact else -start)
            if best_rank is None or rank > best_rank:
                best, best_rank = state, rank
        return best

    def pod_by_ip(self, ip: str, ts: int | None = None) -> PodInfo | None:
        # Prefer a pod still holding its IP: terminal pods keep status.podIP after the IP
        # went back to the pool.
        return self._pick(self._by_pod_ip.get(ip), ts, lambda p: ip in p.ips,
                          lambda p: p.phase not in TERMINAL_POD_PHASES)

    def pod_by_container(self, container_id: str) -> PodInfo | None:
        """The pod running a container (12-char prefix or full id), deleted pods included."""
        cid = normalize_container_id(container_id)
        key = self._by_container.get(cid[:12])
        hist = self._objects.get(key) if key else None
        if hist is None:
            return None
        for state in reversed(hist.states):
            if state is not None and any(c.startswith(cid) or cid.startswith(c) for c in state.container_ids):
                return state
        return None

    def service(self, namespace: str, name: str, ts: int | None = None) -> ServiceInfo | None:
        return self._state(("Service", namespace or "", name), ts)

    def service_by_ip(self, ip: str, port: int | None = None, protocol: str = "TCP", ts: int | None = None
                      ) -> tuple[ServiceInfo, ServicePortInfo | None] | None:
        """Service owning ClusterIP `ip` at ts, with the port matching port/protocol.

        With a port that the Service does not expose the result is (service, None):
        the VIP is known, the port is not (a classic misconfiguration signal).
        """
        svc = self._pick(self._by_cluster_ip.get(ip), ts, lambda sv: ip in sv.cluster_ips)
        if svc is None:
            return None
        if port is None:
            return svc, None
        proto = (protocol or "TCP").upper()
        for sp in svc.ports:
            if sp.port == port and sp.protocol.upper() == proto:
                return svc, sp
        return svc, None

    def _endpoint_sets(self, namespace: str, service: str, ts: int | None) -> list[EndpointSetInfo]:
        slices, legacy = [], []
        for key in self._slices_of.get((namespace or "", service), ()):
            state = self._state(key, ts)
            if state is None or state.service != service:
                continue
            (slices if state.kind == "EndpointSlice" else legacy).append(state)
        # core/v1 Endpoints only where no EndpointSlice exists (clusters that predate slices).
        chosen = slices if slices else legacy
        return sorted(chosen, key=lambda s: s.name)

    def endpoints(self, namespace: str, service: str, ts: int | None = None) -> list[EndpointInfo]:
        out: list[EndpointInfo] = []
        seen = set()
        for es in self._endpoint_sets(namespace, service, ts):
            for ep in es.endpoints:
                k = (ep.ip, ep.port, ep.protocol)
                if k not in seen:  # an address can appear in two slices during a rollover
                    seen.add(k)
                    out.append(ep)
        return out

    def services(self, ts: int | None = None) -> list[ServiceInfo]:
        """Every Service alive at ts (a scan: asked only to explain a cluster name that does not exist)."""
        return [hist.at(ts)[0] for key, hist in self._objects.items()
                if key[0] == "Service" and hist.at(ts)[0] is not None]

    def selected_pods(self, namespace: str, selector: dict[str, str], ts: int | None = None) -> list[PodInfo]:
        """The pods of `namespace` a Service's selector matches at ts (a scan of the namespace's pods: asked
        only to explain a Service without ready endpoints)."""
        out = []
        for key, hist in self._objects.items():
            if key[0] == "Pod" and key[1] == namespace:
                pod = hist.at(ts)[0]
                if pod is not None and all(pod.labels.get(k) == v for k, v in selector.items()):
                    out.append(pod)
        return sorted(out, key=lambda p: p.name)

    def endpoint_standing(self, namespace: str, service: str, ip: str, ts: int) -> tuple[str, int | None]:
        """Where `ip` stood among a Service's endpoints at ts, for traffic that reached it: ("ready", None),
        ("terminating", None) or ("not ready", None) while they list it; ("left", t) when an earlier version
        listed it and none does since t (when the first version without it began); ("never", None) in the
        history held (the retention)."""
        for ep in self.endpoints(namespace, service, ts):
            if ep.ip == ip:
                if ep.ready or (ep.serving and not ep.terminating):
                    return "ready", None
                return ("terminating" if ep.terminating else "not ready"), None
        left = None
        for key in self._slices_of.get((namespace or "", service), ()):
            hist = self._objects.get(key)
            listed, gone = False, None
            for start, state in zip(hist.starts, hist.states) if hist is not None else ():
                if start > ts:
                    break
                if state is not None and state.service == service and any(ep.ip == ip for ep in state.endpoints):
                    listed, gone = True, None
                elif listed and gone is None:
                    gone = start
            if gone is not None and (left is None or gone > left):
                left = gone
        return ("left", left) if left is not None else ("never", None)

    def services_for_endpoint(self, ip: str, port: int | None = None, ts: int | None = None) -> list[ServiceInfo]:
        found: dict[tuple[str, str], ServiceInfo] = {}
        for key in self._by_endpoint_ip.get(ip, ()):
            es = self._state(key, ts)
            if es is None or not es.service:
                continue
            if not any(ep.ip == ip and (port is None or ep.port is None or ep.port == port) for ep in es.endpoints):
                continue
            if es.kind == "Endpoints" and any(
                s.kind == "EndpointSlice" for s in self._endpoint_sets(es.namespace, es.service, ts)
            ):
                continue  # slices exist for this service: they are authoritative
            svc = self.service(es.namespace, es.service, ts)
            if svc is not None:
                found[(svc.namespace, svc.name)] = svc
        return [found[k] for k in sorted(found)]

    def endpoint_pod(self, endpoint: EndpointInfo, ts: int | None = None) -> PodInfo | None:
        """The pod behind an endpoint: its targetRef when given, else its IP."""
        if endpoint.pod:
            pod = self._state(("Pod", endpoint.pod_namespace or "", endpoint.pod), ts)
            if pod is not None:
                return pod
        return self.pod_by_ip(endpoint.ip, ts)

    def node_by_ip(self, ip: str, ts: int | None = None) -> str | None:
        node = self._pick(self._by_node_ip.get(ip), ts, lambda n: ip in n.addresses)
        return node.name if node else None

    def namespace(self, name: str, ts: int | None = None) -> NamespaceInfo | None:
        return self._state(("Namespace", "", name), ts)

    def network_policies(self, namespace: str, ts: int | None = None) -> list[NetworkPolicyInfo]:
        """The NetworkPolicies of a namespace alive at ts, in name order."""
        out = []
        for key in sorted(self._policies_of.get(namespace, ())):
            state = self._state(key, ts)
            if state is not None:
                out.append(state)
        return out

    def node(self, name: str, ts: int | None = None) -> NodeInfo | None:
        return self._state(("Node", "", name), ts)

    @staticmethod
    def _is_dns_service(svc: ServiceInfo) -> bool:
        return svc.namespace == DNS_NAMESPACE and (
            svc.name in DNS_NAMES or svc.labels.get(DNS_LABEL[0]) == DNS_LABEL[1]
        )

    def dns_services(self, ts: int | None = None) -> list[ServiceInfo]:
        out = []
        for (kind, ns, _name), hist in self._objects.items():
            if kind == "Service" and ns == DNS_NAMESPACE:
                svc = hist.at(ts)[0]
                if svc is not None and self._is_dns_service(svc):
                    out.append(svc)
        return out

    def is_cluster_dns(self, ip: str, ts: int | None = None) -> bool:
        """kube-dns/CoreDNS ClusterIP, one of its endpoints' pod IPs, or node-local DNS."""
        if ip == NODE_LOCAL_DNS_IP:
            return True
        hit = self.service_by_ip(ip, ts=ts)
        if hit is not None and self._is_dns_service(hit[0]):
            return True
        if any(self._is_dns_service(s) for s in self.services_for_endpoint(ip, ts=ts)):
            return True
        pod = self.pod_by_ip(ip, ts)
        return bool(pod and pod.namespace == DNS_NAMESPACE and pod.labels.get(DNS_LABEL[0]) == DNS_LABEL[1])

    def resolve_target_port(self, svc: ServiceInfo, port: ServicePortInfo, pod: PodInfo) -> int | None:
        """The container port a Service port sends to on `pod` (named targetPorts looked up in the pod)."""
        tp = port.target_port
        if tp is None or tp == "":
            return port.port  # targetPort defaults to port
        if isinstance(tp, int):
            return tp
        if isinstance(tp, str) and tp.isdigit():
            return int(tp)
        proto = (port.protocol or "TCP").upper()
        for cp in pod.ports:
            if cp.name == tp and cp.protocol.upper() == proto:
                return cp.port
        return None

    # -- introspection ------------------------------------------------------

    def objects(self, ts: int | None = None) -> Iterator[tuple[str, Any]]:
        """(key, info) of every object alive at ts."""
        for key, hist in self._objects.items():
            state = hist.at(ts)[0]
            if state is not None:
                yield "/".join(key), state

    def history_size(self) -> int:
        """Total retained versions (for memory-bound tests and metrics)."""
        return sum(len(h.starts) for h in self._objects.values())

    def __len__(self) -> int:
        return sum(1 for h in self._objects.values() if h.states[-1] is not None)
