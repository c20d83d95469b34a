"""The alert catalogue: ONE table, the single source of truth for every rule.

Columns: id, severity, breaks (does it make the chain "broken"?), suppression
window, summary template (str.format_map over the occurrence's vars; unknown
names print as "?"), and an optional escalated severity used when the subject
is a cluster-local name/service. Detection lives in stitch.py; the alerts stage
reads only this table.
"""
from __future__ import annotations

from dataclasses import dataclass

S = 10**9
MS = 10**6


@dataclass(frozen=True, slots=True)
class Rule:
    id: str
    severity: str  # info | warning | critical
    breaks: bool
    suppress_ns: int
    summary: str
    cluster_severity: str | None = None  # severity when the subject is in the cluster domain
    description: str = ""


CATALOGUE: tuple[Rule, ...] = (
    Rule("dns.nxdomain", "warning", True, 300 * S,
         "{qname} does not exist: NXDOMAIN from {resolver} to {client}{hint}", "critical",
         "The lookup's final answer was NXDOMAIN (for a *.svc.cluster.local name: the Service is missing)."),
    Rule("dns.no_answer", "warning", True, 300 * S,
         "no DNS answer for {qname} from {resolver} to {client} after {queries} queries; {heard}", None,
         "Every query of the lookup went unanswered."),
    Rule("dns.retry_5s", "warning", False, 300 * S,
         "{qname} {qtype} from {client} was retried {gap_ms} ms after an unanswered query; {cause}", None,
         "A query without answer, then the identical query ~5 s later: the resolver timeout after a lost UDP packet "
         "or answer."),
    Rule("dns.search_amplification", "info", False, 600 * S,
         "{qname} from {client} needed {queries} queries: {expansions} search-list names answered NXDOMAIN first"
         " (ndots)", None,
         "Names with fewer dots than ndots are tried with every search suffix first."),
    Rule("dns.wrong_resolver", "critical", True, 300 * S,
         "{client} resolved {qname} with {resolver}{resolver_is}, which is not the cluster DNS{hint}", None,
         "A pod (or a cluster name) resolved by a non-cluster nameserver."),
    Rule("dns.answer_not_service", "critical", True, 300 * S,
         "{qname} answered {answer}, which is no Service or pod IP (stale or foreign)", None,
         "A cluster name resolved to an address the cluster does not own."),
    Rule("svc.no_endpoints", "critical", True, 120 * S,
         "{namespace}/{service} has no ready endpoints ({why}): {client} got {outcome}", None,
         "Selector matches no ready pod; the proxy closes, iptables rejects, socket-LB fails."),
    Rule("svc.target_port_refused", "critical", True, 120 * S,
         "{namespace}/{service}: backend {backend} refused port {backend_port} (targetPort){declared}; {client} got {outcome}", None,
         "The Service's targetPort is not listening in the backend pod."),
    Rule("svc.misrouted", "critical", True, 120 * S,
         "{namespace}/{service}: request from {client} reached {backend}, {standing}", None,
         "Backend not ready in the EndpointSlice, removed from it, never in it, or in another namespace."),
    Rule("svc.translation_missing", "critical", True, 120 * S,
         "{namespace}/{service}: {attempt} from {client} to {vip} was never translated or {taken} ({outcome}){hint}", None,
         "No proxy accept, no DNAT/socket-LB backend: kube-proxy rules missing or flushed."),
    Rule("svc.backend_unreachable", "critical", True, 120 * S,
         "{namespace}/{service}: {attempt} from {client} to {target}, the backend socket-LB chose, was never {taken} "
         "({outcome}){standing}{policy}", None,
         "Socket-LB rewrote the connect to a backend pod and nothing there answered: the pod is unreachable from the "
         "client (a NetworkPolicy, the pod network, its node) or gone (a stale socket-LB map)."),
    Rule("svc.hairpin", "critical", True, 120 * S,
         "{namespace}/{service}: {client}, one of its endpoints, connected to it at {vip} and nothing answered "
         "({outcome}): is hairpin mode on for the pod's bridge port?", None,
         "A pod reached for its own Service and nothing accepted: the DNAT back to itself leaves by the bridge port "
         "it came in on, which only hairpin mode allows."),
    Rule("svc.no_local_endpoints", "critical", True, 120 * S,
         "{namespace}/{service}: {client} connected to NodePort {vip} on node {node}, which runs none of its "
         "endpoints, and nothing answered ({outcome}): externalTrafficPolicy Local drops it there", None,
         "A NodePort of a Service with externalTrafficPolicy: Local, on a node without a ready endpoint of it: kube-proxy "
         "drops the traffic there instead of forwarding it to another node."),
    Rule("svc.backend_5xx", "warning", True, 120 * S,
         "{namespace}/{service}: backend {backend} answered {status} to {method} {target}", None,
         "HTTP 5xx from the backend."),
    Rule("svc.hop_latency", "warning", False, 300 * S,
         "{namespace}/{service}: hop {hop} took {latency_ms} ms (objective {objective_ms} ms) for {client}{because}", None,
         "A hop of the chain exceeded its latency objective."),
)

RULES: dict[str, Rule] = {r.id: r for r in CATALOGUE}

# Per-hop latency objectives (the svc.hop_latency rule), by hop name.
LATENCY_OBJECTIVES_NS: dict[str, int] = {
    "dns": 1 * S,
    "connect": 1 * S,
    "proxy": 1 * S,  # a userspace proxy's accept to its dial
    "response": 2 * S,
}

# DNS heuristics used by the detectors.
RETRY_GAP_NS = (4 * S, 7 * S)  # glibc's default resolver timeout is 5 s
# When a connect completes after lost SYNs: Linux retransmits a SYN 1 s after the first, then doubles the wait
# (1, 3, 7, 15, 31 s after it); what completes within the slack after one of these had that many SYNs lost.
SYN_RETRANSMIT_NS = (1 * S, 3 * S, 7 * S, 15 * S, 31 * S)
SYN_RETRANSMIT_SLACK_NS = 250 * MS
DNS_TWIN_NS = 10 * MS  # glibc sends a name's A and AAAA queries at once (one sendmmsg, or two sends back to back)
SEARCH_AMPLIFICATION_MIN_EXPANSIONS = 3  # names tried before the one asked for (A and AAAA of one: one)


class _Missing(dict):
    def __missing__(self, key):
        return "?"


def summary(rule: Rule, vars_: dict) -> str:
    return rule.summary.format_map(_Missing({k: v for k, v in vars_.items() if v is not None}))


def severity(rule: Rule, in_cluster: bool) -> str:
    return rule.cluster_severity if (in_cluster and rule.cluster_severity) else rule.severity
