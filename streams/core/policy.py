"""Whether Kubernetes NetworkPolicies let a client's connection reach a pod, from the cluster state alone
(networking.k8s.io/v1's rules): what svc.backend_unreachable and svc.translation_missing add when a policy
is the likely reason nothing answered.

A pod is isolated for ingress when a policy of its namespace selects it with the Ingress type; then only
traffic one of those policies' ingress rules allows reaches it (the union). Egress is the same on the
client's side. A rule allows a peer (pods by podSelector in the namespaces its namespaceSelector picks, its
own namespace without one; or an ipBlock's addresses) on its ports (a number, a range, a container port's
name, or every port); a rule with no peers allows every source, with no ports every port.

`blocked()` answers only when the state says so: a client or backend that is no known pod (a node's process,
another cluster) gets None, as does an ipBlock that covers the peer (whether a CNI applies ipBlocks to pod
addresses varies). Whether the CNI enforces policies at all, the syscalls cannot tell: the alerts say "a
NetworkPolicy ... allows no", not that it dropped the packets. Pure: no I/O, reads the index it is given.
"""
from __future__ import annotations

import ipaddress

NAME_LABEL = "kubernetes.io/metadata.name"  # set on every namespace by the API server (1.21+)


def selects(selector: dict | None, labels: dict) -> bool:
    """A label selector's verdict on a set of labels (matchLabels and matchExpressions all hold; an empty
    selector selects everything)."""
    if selector is None:
        return True
    for k, v in (selector.get("match_labels") or {}).items():
        if labels.get(k) != v:
            return False
    for x in selector.get("match_expressions") or ():
        op, key, values = x["operator"], x["key"], x.get("values") or ()
        if op == "In":
            if labels.get(key) not in values:
                return False
        elif op == "NotIn":
            if key in labels and labels[key] in values:
                return False
        elif op == "Exists":
            if key not in labels:
                return False
        elif op == "DoesNotExist":
            if key in labels:
                return False
        else:
            return False  # an operator the API would refuse: selects nothing
    return True


def _in_block(block: dict, ip: str) -> bool:
    try:
        addr = ipaddress.ip_address(ip)
        if addr not in ipaddress.ip_network(block["cidr"], strict=False):
            return False
        return not any(addr in ipaddress.ip_network(c, strict=False) for c in block.get("except") or ())
    except (ValueError, TypeError):
        return False


def _namespace_labels(index, name: str, ts: int) -> dict:
    ns = index.namespace(name, ts)
    labels = dict(ns.labels) if ns is not None else {}
    labels.setdefault(NAME_LABEL, name)
    return labels


def _peer_allows(peer: dict, policy_ns: str, other, other_ip: str, index, ts: int) -> bool | None:
    """Whether one peer of a rule matches the other end (a pod); None: an ipBlock covering it (undecided)."""
    block = peer.get("ip_block")
    if block is not None:
        return None if _in_block(block, other_ip) else False
    ns_sel = peer.get("namespace_selector")
    if ns_sel is None:
        if other.namespace != policy_ns:
            return False
    elif not selects(ns_sel, _namespace_labels(index, other.namespace, ts)):
        return False
    return selects(peer.get("pod_selector"), other.labels)


def _port_allows(spec: dict, port: int, proto: str, dest) -> bool:
    if (spec.get("protocol") or "TCP").upper() != proto:
        return False
    want = spec.get("port")
    if want is None:
        return True
    if isinstance(want, str):  # a container port's name, on the destination pod
        return any(cp.name == want and cp.port == port and (cp.protocol or "TCP").upper() == proto
                   for cp in dest.ports)
    end = spec.get("end_port")
    return want == port if end is None else want <= port <= end


def _allowed_by(policies: list, direction: str, other, other_ip: str, port: int, proto: str, dest, index,
                ts: int) -> bool | None:
    """Whether some rule of `policies` (all isolating the pod in `direction`) allows the other end."""
    undecided = False
    for policy in policies:
        for rule in policy.ingress if direction == "Ingress" else policy.egress:
            if rule.get("ports") and not any(_port_allows(p, port, proto, dest) for p in rule["ports"]):
                continue
            peers = rule.get("peers") or ()
            if not peers:
                return True
            for peer in peers:
                verdict = _peer_allows(peer, policy.namespace, other, other_ip, index, ts)
                if verdict:
                    return True
                if verdict is None:
                    undecided = True
    return None if undecided else False


def _isolating(index, pod, direction: str, ts: int) -> list:
    return [p for p in index.network_policies(pod.namespace, ts)
            if direction in p.policy_types and selects(p.pod_selector, pod.labels)]


def blocked(index, ts: int, client, client_ip: str, backend, backend_ip: str, port: int, proto: str = "TCP"):
    """(direction, the pod isolated, [its policies' names]) when the NetworkPolicies of the state at ts allow
    no traffic from the client pod to the backend pod's `port`: "ingress" (the backend's policies) or "egress"
    (the client's); None when they allow it, isolate neither, or the state cannot tell."""
    if client is None or backend is None:
        return None
    proto = proto.upper()
    policies = _isolating(index, backend, "Ingress", ts)
    if policies and _allowed_by(policies, "Ingress", client, client_ip, port, proto, backend, index, ts) is False:
        return "ingress", backend, sorted(f"{p.namespace}/{p.name}" for p in policies)
    policies = _isolating(index, client, "Egress", ts)
    if policies and _allowed_by(policies, "Egress", backend, backend_ip, port, proto, backend, index, ts) is False:
        return "egress", client, sorted(f"{p.namespace}/{p.name}" for p in policies)
    return None


def blocked_words(found, client_desc: str, backend_desc: str, port: int, proto: str) -> str:
    """An alert's words for blocked()'s answer ("" for None)."""
    if found is None:
        return ""
    direction, _pod, names = found
    which = f"NetworkPolicy {names[0]}" if len(names) == 1 else f"NetworkPolicies {', '.join(names)}"
    verb = "selects" if len(names) == 1 else "select"
    if direction == "ingress":
        return f"{which} {verb} {backend_desc} and allow{'s' if len(names) == 1 else ''} no ingress from " \
               f"{client_desc} on {proto.upper()} {port}"
    return f"{which} {verb} {client_desc} and allow{'s' if len(names) == 1 else ''} no egress to " \
           f"{backend_desc} on {proto.upper()} {port}"
