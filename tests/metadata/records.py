"""Builders of k8s-object records for index tests (the schema's shape, minimal fields)."""
from __future__ import annotations

S = 10**9  # one second in ns


def rec(kind, namespace, name, ts, deleted=False, uid=None, **body):
    r = {
        "schema": "svctrace.k8s-object",
        "version": 1,
        "kind": kind,
        "namespace": namespace,
        "name": name,
        "uid": uid or f"uid-{kind}-{namespace}-{name}",
        "resource_version": str(ts),
        "observed_ts": ts,
        "deleted": deleted,
    }
    r.update(body)
    return r


def pod(name, ip, ts, ns="default", node="n1", labels=None, cids=(), ports=(), phase="Running",
        ready=True, host_network=False, deleted=False, uid=None):
    return rec("Pod", ns, name, ts, deleted=deleted, uid=uid, pod={
        "ips": [ip] if isinstance(ip, str) else list(ip),
        "node": node,
        "host_network": host_network,
        "phase": phase,
        "ready": ready,
        "labels": labels or {},
        "container_ids": list(cids),
        "ports": [{"name": n, "port": p, "protocol": pr} for n, p, pr in ports],
    })


def service(name, cluster_ip, ts, ns="default", ports=(("http", 80, "TCP", 8080),), selector=None,
            type_="ClusterIP", labels=None, affinity="None", etp=None, deleted=False):
    return rec("Service", ns, name, ts, deleted=deleted, service={
        "type": type_,
        "cluster_ips": [cluster_ip] if isinstance(cluster_ip, str) else list(cluster_ip),
        "selector": selector if selector is not None else {"app": name},
        "session_affinity": affinity,
        "external_traffic_policy": etp,
        "labels": labels or {},
        "ports": [{"name": n, "port": p, "protocol": pr, "target_port": tp, "node_port": None}
                  for n, p, pr, tp in ports],
    })


def endpoint(ip, pod=None, ns="default", node="n1", ready=True, serving=None, terminating=None):
    return {"addresses": [ip], "ready": ready, "serving": serving, "terminating": terminating,
            "node": node, "pod": pod, "pod_namespace": ns if pod else None}


def slice_(name, service_name, ts, endpoints, ns="default", ports=(("http", 8080, "TCP"),), deleted=False):
    return rec("EndpointSlice", ns, name, ts, deleted=deleted, endpoints={
        "service": service_name,
        "address_type": "IPv4",
        "ports": [{"name": n, "port": p, "protocol": pr} for n, p, pr in ports],
        "endpoints": list(endpoints),
    })


def node(name, ips, ts, cidrs=(), deleted=False):
    return rec("Node", None, name, ts, deleted=deleted, node={"addresses": list(ips), "pod_cidrs": list(cidrs)})
