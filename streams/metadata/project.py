"""Projection of raw Kubernetes API objects into k8s-object records.

Input: one object as the API serves it (camelCase, as `kubectl get -o json`
prints it, or `ApiClient().sanitize_for_serialization(obj)`). Output: the small
record of schemas/k8s-object.schema.json that the compacted topic carries and
the ClusterIndex consumes. Only what enrichment needs is kept.

One table, PROJECTIONS, maps each kind to its body builder. Malformed input
raises MetadataInputError naming the object (and, from a source, the file).
"""
from __future__ import annotations

from typing import Any, Callable

SCHEMA = "svctrace.k8s-object"
VERSION = 1


class MetadataInputError(ValueError):
    """Bad Kubernetes input: names the source (file) when known, the object, and the reason."""

    def __init__(self, reason: str, obj: str | None = None, source: str | None = None):
        self.reason, self.obj, self.source = reason, obj, source
        where = ": ".join(p for p in (source, obj) if p)
        super().__init__(f"{where}: {reason}" if where else reason)

    def at(self, source: str) -> "MetadataInputError":
        """The same error, now naming the file (or stream) it came from."""
        return MetadataInputError(self.reason, self.obj, source if not self.source else self.source)


def _describe(obj: Any, kind: str | None = None) -> str:
    if not isinstance(obj, dict):
        return f"<{type(obj).__name__}>"
    md = obj.get("metadata") if isinstance(obj.get("metadata"), dict) else {}
    kind = obj.get("kind") or kind or "?"
    ns, name = md.get("namespace"), md.get("name") or "?"
    return f"{kind} {ns}/{name}" if ns else f"{kind} {name}"


def _map(value: Any, what: str) -> dict[str, str]:
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise TypeError(f"{what} is not a mapping")
    return {str(k): str(v) for k, v in value.items()}


def _list(value: Any, what: str) -> list:
    if value is None:
        return []
    if not isinstance(value, list):
        raise TypeError(f"{what} is not a list")
    return value


def _int(value: Any, what: str) -> int | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, str)):
        raise TypeError(f"{what} is not an integer")
    try:
        return int(value)
    except ValueError:
        raise TypeError(f"{what} is not an integer: {value!r}") from None


def strip_runtime(container_id: str) -> str:
    """'containerd://abc' -> 'abc' (the form capture tools print)."""
    return container_id.split("://", 1)[1] if "://" in container_id else container_id


# -- per-kind bodies ----------------------------------------------------------


def _pod(obj: dict) -> dict:
    spec, status = obj.get("spec") or {}, obj.get("status") or {}
    ips = [p.get("ip") for p in _list(status.get("podIPs"), "status.podIPs") if isinstance(p, dict) and p.get("ip")]
    if not ips and status.get("podIP"):
        ips = [status["podIP"]]
    ready = any(
        c.get("type") == "Ready" and c.get("status") == "True"
        for c in _list(status.get("conditions"), "status.conditions")
    )
    cids = []
    for field in ("initContainerStatuses", "containerStatuses", "ephemeralContainerStatuses"):
        for cs in _list(status.get(field), f"status.{field}"):
            if isinstance(cs, dict) and cs.get("containerID"):
                cids.append(strip_runtime(cs["containerID"]))
    ports = []
    for c in _list(spec.get("containers"), "spec.containers"):
        for p in _list(c.get("ports"), "spec.containers[].ports"):
            port = _int(p.get("containerPort"), "spec.containers[].ports[].containerPort")
            if port is None:
                raise TypeError("spec.containers[].ports[] without containerPort")
            ports.append({"name": p.get("name"), "port": port, "protocol": p.get("protocol") or "TCP"})
    return {
        "pod": {
            "ips": ips,
            "node": spec.get("nodeName") or None,
            "host_network": bool(spec.get("hostNetwork", False)),
            "dns_policy": spec.get("dnsPolicy") or "ClusterFirst",
            "phase": status.get("phase"),
            "ready": ready,
            "labels": _map((obj.get("metadata") or {}).get("labels"), "metadata.labels"),
            "container_ids": cids,
            "ports": ports,
        }
    }


def _target_port(value: Any) -> int | str | None:
    if value is None or isinstance(value, int) and not isinstance(value, bool):
        return value
    if isinstance(value, str):
        return int(value) if value.isdigit() else value
    raise TypeError(f"spec.ports[].targetPort is neither a number nor a name: {value!r}")


def _service(obj: dict) -> dict:
    spec = obj.get("spec") or {}
    ips = [ip for ip in _list(spec.get("clusterIPs"), "spec.clusterIPs") if ip]
    if not ips and spec.get("clusterIP"):
        ips = [spec["clusterIP"]]
    ips = [ip for ip in ips if ip != "None"]  # headless
    ports = []
    for p in _list(spec.get("ports"), "spec.ports"):
        port = _int(p.get("port"), "spec.ports[].port")
        if port is None:
            raise TypeError("spec.ports[] without port")
        ports.append({
            "name": p.get("name"),
            "port": port,
            "protocol": p.get("protocol") or "TCP",
            "target_port": _target_port(p.get("targetPort")),
            "node_port": _int(p.get("nodePort"), "spec.ports[].nodePort"),
        })
    selector = spec.get("selector")
    return {
        "service": {
            "type": spec.get("type") or "ClusterIP",
            "cluster_ips": ips,
            "selector": _map(selector, "spec.selector") if selector is not None else None,
            "session_affinity": spec.get("sessionAffinity"),
            "external_traffic_policy": spec.get("externalTrafficPolicy"),
            "labels": _map((obj.get("metadata") or {}).get("labels"), "metadata.labels"),
            "ports": ports,
        }
    }


def _ports(items: Any, what: str) -> list[dict]:
    return [
        {"name": p.get("name"), "port": _int(p.get("port"), f"{what}[].port"), "protocol": p.get("protocol")}
        for p in _list(items, what)
    ]


def _pod_ref(ref: Any) -> tuple[str | None, str | None]:
    if isinstance(ref, dict) and ref.get("kind", "Pod") == "Pod" and ref.get("name"):
        return ref["name"], ref.get("namespace")
    return None, None


def _endpoint_slice(obj: dict) -> dict:
    labels = (obj.get("metadata") or {}).get("labels") or {}
    endpoints = []
    for ep in _list(obj.get("endpoints"), "endpoints"):
        cond = ep.get("conditions") or {}
        pod, pod_ns = _pod_ref(ep.get("targetRef"))
        node = ep.get("nodeName") or (ep.get("topology") or {}).get("kubernetes.io/hostname")  # v1beta1
        endpoints.append({
            "addresses": [a for a in _list(ep.get("addresses"), "endpoints[].addresses") if a],
            "ready": cond.get("ready"),
            "serving": cond.get("serving"),
            "terminating": cond.get("terminating"),
            "node": node,
            "pod": pod,
            "pod_namespace": pod_ns,
        })
    return {
        "endpoints": {
            "service": labels.get("kubernetes.io/service-name"),
            "address_type": obj.get("addressType"),
            "ports": _ports(obj.get("ports"), "ports"),
            "endpoints": endpoints,
        }
    }


def _endpoints_v1(obj: dict) -> dict:
    """core/v1 Endpoints: subsets of (addresses, notReadyAddresses, ports)."""
    endpoints = []
    for subset in _list(obj.get("subsets"), "subsets"):
        ports = _ports(subset.get("ports"), "subsets[].ports")
        for field, ready in (("addresses", True), ("notReadyAddresses", False)):
            for a in _list(subset.get(field), f"subsets[].{field}"):
                if not a.get("ip"):
                    raise TypeError(f"subsets[].{field}[] without ip")
                pod, pod_ns = _pod_ref(a.get("targetRef"))
                endpoints.append({
                    "addresses": [a["ip"]],
                    "ready": ready,
                    "serving": ready,
                    "terminating": False,
                    "node": a.get("nodeName"),
                    "pod": pod,
                    "pod_namespace": pod_ns,
                    "ports": ports,
                })
    return {
        "endpoints": {
            "service": (obj.get("metadata") or {}).get("name"),
            "address_type": None,
            "ports": [],
            "endpoints": endpoints,
        }
    }


def _node(obj: dict) -> dict:
    spec, status = obj.get("spec") or {}, obj.get("status") or {}
    addresses = []
    for a in _list(status.get("addresses"), "status.addresses"):
        addr = a.get("address") if isinstance(a, dict) else a
        if addr and addr not in addresses:
            addresses.append(addr)
    cidrs = [c for c in _list(spec.get("podCIDRs"), "spec.podCIDRs") if c]
    if not cidrs and spec.get("podCIDR"):
        cidrs = [spec["podCIDR"]]
    return {"node": {"addresses": addresses, "pod_cidrs": cidrs}}


def _namespace(obj: dict) -> dict:
    # its labels: a NetworkPolicy's namespaceSelector reads them
    return {"namespace_labels": _map((obj.get("metadata") or {}).get("labels"), "metadata.labels")}


def _selector(value: Any, what: str) -> dict | None:
    """A label selector (matchLabels, matchExpressions); None where the field is absent (not: "everything")."""
    if value is None:
        return None
    if not isinstance(value, dict):
        raise TypeError(f"{what} is not a mapping")
    exprs = []
    for x in _list(value.get("matchExpressions"), f"{what}.matchExpressions"):
        if not isinstance(x, dict) or not x.get("key") or not x.get("operator"):
            raise TypeError(f"{what}.matchExpressions[] without key or operator")
        exprs.append({"key": str(x["key"]), "operator": str(x["operator"]),
                      "values": [str(v) for v in _list(x.get("values"), f"{what}.matchExpressions[].values")]})
    return {"match_labels": _map(value.get("matchLabels"), f"{what}.matchLabels"), "match_expressions": exprs}


def _mappings(items: Any, what: str) -> list[dict]:
    """A list field whose items must be mappings."""
    out = _list(items, what)
    if not all(isinstance(x, dict) for x in out):
        raise TypeError(f"{what}[] is not a mapping")
    return out


def _policy_peers(items: Any, what: str) -> list[dict]:
    out = []
    for peer in _mappings(items, what):
        block = peer.get("ipBlock")
        if block is not None and (not isinstance(block, dict) or not block.get("cidr")):
            raise TypeError(f"{what}[].ipBlock without cidr")
        out.append({"pod_selector": _selector(peer.get("podSelector"), f"{what}[].podSelector"),
                    "namespace_selector": _selector(peer.get("namespaceSelector"), f"{what}[].namespaceSelector"),
                    "ip_block": None if block is None else {
                        "cidr": str(block["cidr"]),
                        "except": [str(c) for c in _list(block.get("except"), f"{what}[].ipBlock.except")]}})
    return out


def _policy_ports(items: Any, what: str) -> list[dict]:
    out = []
    for p in _mappings(items, what):
        port = p.get("port")
        if port is not None and not (isinstance(port, str) or isinstance(port, int) and not isinstance(port, bool)):
            raise TypeError(f"{what}[].port is neither a number nor a name: {port!r}")
        out.append({"protocol": p.get("protocol") or "TCP",
                    "port": int(port) if isinstance(port, str) and port.isdigit() else port,
                    "end_port": _int(p.get("endPort"), f"{what}[].endPort")})
    return out


def _network_policy(obj: dict) -> dict:
    spec = obj.get("spec") or {}
    selector = _selector(spec.get("podSelector"), "spec.podSelector")
    types = [str(t) for t in _list(spec.get("policyTypes"), "spec.policyTypes")]
    if not types:  # the API's default: Ingress always, Egress where the policy has an egress section
        types = ["Ingress", "Egress"] if spec.get("egress") is not None else ["Ingress"]
    rules = {}
    for direction, peers in (("ingress", "from"), ("egress", "to")):
        rules[direction] = [
            {"peers": _policy_peers(r.get(peers), f"spec.{direction}[].{peers}"),
             "ports": _policy_ports(r.get("ports"), f"spec.{direction}[].ports")}
            for r in _list(spec.get(direction), f"spec.{direction}")]
    return {"network_policy": {"pod_selector": selector or {"match_labels": {}, "match_expressions": []},
                               "policy_types": types, **rules}}


PROJECTIONS: dict[str, Callable[[dict], dict]] = {
    "Pod": _pod,
    "Service": _service,
    "EndpointSlice": _endpoint_slice,
    "Endpoints": _endpoints_v1,
    "Node": _node,
    "Namespace": _namespace,
    "NetworkPolicy": _network_policy,
}
NAMESPACED = {"Pod": True, "Service": True, "EndpointSlice": True, "Endpoints": True, "Node": False, "Namespace": False,
              "NetworkPolicy": True}


def project(obj: dict, observed_ts: int, kind: str | None = None, deleted: bool = False) -> dict:
    """Raw API object -> k8s-object record. `kind` is needed for List items that omit it."""
    if not isinstance(obj, dict):
        raise MetadataInputError(f"expected a Kubernetes object (mapping), got {type(obj).__name__}")
    kind = obj.get("kind") or kind
    what = _describe(obj, kind)
    if not kind:
        raise MetadataInputError("object without kind", what)
    body_of = PROJECTIONS.get(kind)
    if body_of is None:
        raise MetadataInputError(f"unsupported kind {kind!r} (supported: {', '.join(PROJECTIONS)})", what)
    md = obj.get("metadata")
    if not isinstance(md, dict) or not md.get("name"):
        raise MetadataInputError("missing metadata.name", what)
    namespace = md.get("namespace") if NAMESPACED[kind] else None
    if NAMESPACED[kind] and not namespace:
        raise MetadataInputError("missing metadata.namespace", what)
    try:
        body = {} if deleted else body_of(obj)
    except (TypeError, AttributeError, ValueError) as e:
        # AttributeError: a list item that is not a mapping (x.get on a str).
        raise MetadataInputError(f"malformed object: {e}", what) from None
    record = {
        "schema": SCHEMA,
        "version": VERSION,
        "kind": kind,
        "namespace": namespace,
        "name": md["name"],
        "uid": md.get("uid"),
        "resource_version": md.get("resourceVersion"),
        "observed_ts": int(observed_ts),
        "deleted": bool(deleted),
    }
    record.update(body)
    return record


def tombstone(kind: str, namespace: str | None, name: str, observed_ts: int, uid: str | None = None,
              resource_version: str | None = None) -> dict:
    """The offline form of a deletion (on Kafka a deletion is a null value)."""
    if kind not in PROJECTIONS:
        raise MetadataInputError(f"unsupported kind {kind!r}", f"{kind} {namespace}/{name}")
    return {
        "schema": SCHEMA, "version": VERSION, "kind": kind, "namespace": namespace or None, "name": name,
        "uid": uid, "resource_version": resource_version, "observed_ts": int(observed_ts), "deleted": True,
    }


def record_key(record: dict) -> str:
    """Topic key kind/namespace/name (empty namespace for cluster-scoped objects)."""
    return f"{record['kind']}/{record.get('namespace') or ''}/{record['name']}"
