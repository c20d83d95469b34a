"""The seed article's request and its faults on a real kernel network, captured live with eBPF and
stitched by the core (as root).

lab/net/services.py builds one node in network namespaces (no route out) with one Service per
kube-proxy mode and fault — iptables DNAT (healthy; a targetPort nothing listens on), the
userspace proxy of the seed's time (healthy; its dial refused), Cilium-style socket-level load
balancing, rules flushed, a Service without endpoints (kube-proxy's REJECT) — and a pod whose
resolver is the node's, answering an address that is no Service; stale rules sending a Service to a
pod its EndpointSlice no longer lists; nginx answering 503; a name that does not exist; a pod whose
first DNS packet the node drops (glibc asks again after 5 s); the nginx pod requesting its own
Service (hairpin, masqueraded); three requests on one keep-alive connection through DNAT and through
the userspace proxy; a name whose UDP answer is truncated (the resolver asks again over TCP); a Go client (Go's own
resolver and net/http, no glibc); an IPv6 Service requested by dual-stack pods; a named targetPort; a headless Service. curl asks each
one. And UDP Services, asked with one datagram on a connected socket: answered through DNAT, a targetPort nothing
listens on, no endpoints, no rules. From the syscalls alone the core must name each hop and raise each fault's alerts.
"""
from __future__ import annotations

import os

import pytest

from lab.net.services import DNS_RETRY, DNS_VIP, DOMAIN, GO_CLIENT, HAIRPIN, IP6, HOST_RESOLVED, HOST_RESOLVER, KEEPALIVE, \
    KEEPALIVE_PATHS, NGINX_IP, NO_SUCH_NAME, NODE, NODE_IP, NODE_PORTS, UDP_CASES, UDP_PORT, cluster_list, record
from svctrace.streams.core import run
from svctrace.streams.metadata.index import ClusterIndex
from svctrace.streams.metadata.sources import records_from_documents

pytestmark = pytest.mark.root


@pytest.fixture(scope="module")
def lab_capture(tmp_path_factory):
    """The lab's events and curl results (lab/net/services.py: build, curl every case, capture)."""
    if os.geteuid() != 0:
        pytest.fail("the network lab needs root (this test is marked `root`)")
    return record(tmp_path_factory.mktemp("lab"))


def lab_index() -> ClusterIndex:
    """What the metadata watcher would publish for the lab (its `kubectl get -o json`)."""
    return ClusterIndex.from_records(records_from_documents([cluster_list()], observed_ts=0))


AMPLIFIED = "dns.search_amplification"  # ndots:5 and a name of 4 dots: every pod's lookup tries the search list
# case -> curl's exit status, and what the chain must say: status, translation mode (None: not
# checked), backend pod, HTTP status, error, alert rules
EXPECTED = {
    "my-nginx": (0, "ok", "dnat", "my-nginx-1", 200, None, {AMPLIFIED}),
    # curl 7: could not connect (refused; nothing accepts, so no translation is seen)
    "my-nginx-wrong-port": (7, "broken", None, None, None, "connection refused",
                            {"svc.target_port_refused", AMPLIFIED}),
    # curl 28: connect timed out (the SYN to a ClusterIP without rules vanishes)
    "my-nginx-flushed": (28, "broken", "none", None, None, "connection timed out",
                         {"svc.translation_missing", AMPLIFIED}),
    "my-nginx-no-endpoints": (7, "broken", "none", None, None, "connection refused", {"svc.no_endpoints", AMPLIFIED}),
    "my-nginx-userspace": (0, "ok", "userspace_proxy", "my-nginx-1", 200, None, {AMPLIFIED}),
    # curl 52: empty reply (the proxy accepted, its dial was refused, it closed)
    "my-nginx-userspace-wrong-port": (52, "broken", "userspace_proxy", "my-nginx-1", None, "empty reply",
                                      {"svc.target_port_refused", AMPLIFIED}),
    "my-nginx-socklb": (0, "ok", "socket_lb", "my-nginx-1", 200, None, {AMPLIFIED}),
    # curl 28: socket-LB sent the connect to the pod, whose netns drops the port (a NetworkPolicy, enforced)
    "my-nginx-socklb-dropped": (28, "broken", "socket_lb", "my-nginx-1", None, "connection timed out",
                                {"svc.backend_unreachable", AMPLIFIED}),
    HOST_RESOLVED: (7, "broken", None, None, None, "connection refused",
                    {"dns.wrong_resolver", "dns.answer_not_service", AMPLIFIED}),
    # kube-proxy still DNATs to my-nginx-1; the EndpointSlice lists my-nginx-2 only
    "my-nginx-stale": (0, "broken", "dnat", "my-nginx-1", 200, None, {"svc.misrouted", AMPLIFIED}),
    "my-nginx-503": (0, "broken", "dnat", "my-nginx-1", 503, None, {"svc.backend_5xx", AMPLIFIED}),
    # curl 6: could not resolve (NXDOMAIN for every expansion): a lookup with no connection
    NO_SUCH_NAME: (6, "broken", None, None, None, None, {"dns.nxdomain"}),
    # the node dropped the first query: glibc waited 5 s and asked again; the DNS hop's latency shows it
    DNS_RETRY: (0, "ok", "dnat", "my-nginx-1", 200, None, {"dns.retry_5s", "svc.hop_latency", AMPLIFIED}),
    # masqueraded: the backend sees the node's address, not the client's (its accept is not linked,
    # see test_hairpin_is_translated_with_low_confidence)
    HAIRPIN: (0, "ok", "dnat", ..., 200, None, set()),
    # the UDP answer was truncated: the resolver asked A and AAAA again over TCP (not a retry)
    "my-nginx-tcp-dns": (0, "ok", "dnat", "my-nginx-1", 200, None, {AMPLIFIED}),
    # Go's resolver: A and AAAA on two sockets at once (not a retry), non-blocking reads (EAGAIN first)
    GO_CLIENT: (0, "ok", "dnat", "my-nginx-1", 200, None, {AMPLIFIED}),
    # dual stack: the lookup over IPv4 (an AAAA answer), the request over IPv6 through ip6tables
    "my-nginx-v6": (0, "ok", "dnat", "my-nginx-1", 200, None, {AMPLIFIED}),
    "my-nginx-named-port": (0, "ok", "dnat", "my-nginx-1", 200, None, {AMPLIFIED}),
    # straight to the pod the name resolved to: nothing translates, by design
    "my-nginx-headless": (0, "ok", "none", "my-nginx-1", 200, None, {AMPLIFIED}),
    # kube-proxy's nftables mode: to the syscalls, a DNAT like iptables' (the backend accepts the client's ip:port)
    "my-nginx-nft": (0, "ok", "dnat", "my-nginx-1", 200, None, {AMPLIFIED}),
    # a process on the node at the node's address: KUBE-NODEPORTS DNATs and masquerades (the node's
    # address again, the port kept): linked by that endpoint, with low confidence
    "my-nginx-nodeport": (0, "ok", "nodeport_snat", "my-nginx-1", 200, None, set()),
    # a pod requesting its own Service from a bridge port without hairpin mode: curl 28, nothing accepted
    "my-selfie": (28, "broken", "none", None, None, "connection timed out", {"svc.hairpin"}),
    # UDP (the client's exit status: 0 answered, 1 refused): the nginx pod's statsd-like server answered
    "my-udp": (0, "ok", "dnat", "my-nginx-1", None, None, {AMPLIFIED}),
    # the pod's ICMP port unreachable, told to the connected socket's recv (ECONNREFUSED)
    "my-udp-wrong-port": (1, "broken", "dnat", None, None, "connection refused", {"svc.target_port_refused", AMPLIFIED}),
    "my-udp-no-endpoints": (1, "broken", "none", None, None, "connection refused", {"svc.no_endpoints", AMPLIFIED}),
    # exit status 2: no reply within 1 s (no rules: the datagram to the ClusterIP vanishes, no ICMP error)
    "my-udp-flushed": (2, "broken", "none", None, None, "no reply", {"svc.translation_missing", AMPLIFIED}),
    # the connected socket's peer is the pod: the ClusterIP is only in the DNS answer, which names the Service
    "my-udp-socklb": (0, "ok", "socket_lb", "my-nginx-1", None, None, {AMPLIFIED}),
}
# case -> the curl's pod, the Service its chain names, the DNS queries it made
CLIENTS = {HOST_RESOLVED: ("other-client", None, 8), NO_SUCH_NAME: ("client", None, 8),
           DNS_RETRY: ("retry-client", "my-nginx", 10), HAIRPIN: ("my-nginx-1", "my-nginx", None),
           "my-nginx-tcp-dns": ("client", "my-nginx-tcp-dns", 10), GO_CLIENT: ("go-client", "my-nginx", 8),
           "my-nginx-nodeport": (None, "my-nginx-nodeport", None), "my-selfie": ("selfie", "my-selfie", None),
           # the UDP client resolves an IPv4 address only (getaddrinfo AF_INET): A queries, no AAAA
           **{name: ("client", name, 4) for name in UDP_CASES}}
ASKED = {HOST_RESOLVED: "my-nginx"}  # the name a case's client asks for, where it is not the case's


def pick(case: str, chains: list, alerts: list) -> tuple[dict, set[str]]:
    """The one chain of a case's curl, and the rules of its alerts. A chain naming no Service is
    told by the name its lookup asked for."""
    rules = {a["alert_id"]: a["rule"] for a in alerts}
    client, service, _queries = CLIENTS.get(case, ("client", case, 8))
    qname = None if service else f"{ASKED.get(case, case)}.{DOMAIN}"
    [chain] = [ch for ch in chains if (ch["service"] or {}).get("name") == service and ch["client"]["pod"] == client
               and (qname is None or (ch["dns"] or {}).get("qname") == qname)]
    return chain, {rules[i] for i in chain["alerts"]}


def chain_of(case: str, events) -> tuple[dict, set[str]]:
    result = run(events, lab_index())
    return pick(case, result.chains, result.alerts)


def assert_case(case: str, chain: dict, alerted: set[str]) -> None:
    _rc, status, mode, backend, http, error, rules = EXPECTED[case]
    assert chain["status"] == status
    if mode is not None:
        assert chain["translation"]["mode"] == mode
    if backend is not ...:
        assert (chain["backend"] or {}).get("pod") == backend
    assert (chain["response"] or {}).get("status") == http and (chain["response"] or {}).get("error") == error
    assert alerted == rules
    # A and AAAA for 3 search expansions, then the name itself (and the retry's two again)
    assert (chain["dns"] or {}).get("queries") == CLIENTS.get(case, (None, None, 8))[2]


@pytest.mark.parametrize("case", EXPECTED)
def test_each_case_gives_its_chain_and_alerts(lab_capture, case):
    events, curls = lab_capture
    assert curls[case][1] == EXPECTED[case][0], curls[case]
    chain, alerted = chain_of(case, events)
    assert chain["client"]["pid"] == curls[case][0]
    assert_case(case, chain, alerted)


def test_dnat_chain_names_every_hop(lab_capture):
    events, _curls = lab_capture
    chain, _ = chain_of("my-nginx", events)
    dns = chain["dns"]
    assert dns["qname"] == f"my-nginx.{DOMAIN}" and dns["rcode"] == "NOERROR" and dns["answers"] == ["10.96.0.100"]
    assert dns["resolver_ip"] == DNS_VIP and dns["resolver_is_cluster_dns"] and dns["server"]["pod"] == "coredns"
    assert (chain["connect"]["ip"], chain["connect"]["port"]) == ("10.96.0.100", 8080)
    assert chain["service"]["name"] == "my-nginx" and chain["service"]["target_port"] == 80
    assert (chain["backend"]["ip"], chain["backend"]["port"]) == (NGINX_IP, 80)
    assert chain["response"]["target"] == "/index.html" and chain["response"]["method"] == "GET"


def test_a_udp_service_chain_names_every_hop(lab_capture):
    """One datagram to a UDP Service through kube-proxy's DNAT, answered: the lookup, the datagram to the ClusterIP,
    the pod that received it (the client's address and port as its peer) and the reply."""
    events, _curls = lab_capture
    chain, _ = chain_of("my-udp", events)
    vip = UDP_CASES["my-udp"].vip
    assert chain["dns"]["answers"] == [vip] and chain["dns"]["server"]["pod"] == "coredns"
    assert chain["service"]["protocol"] == "UDP" and chain["service"]["target_port"] == UDP_PORT
    assert (chain["connect"]["ip"], chain["connect"]["port"], chain["connect"]["errno"]) == (vip, UDP_PORT, None)
    assert (chain["backend"]["ip"], chain["backend"]["port"]) == (NGINX_IP, UDP_PORT)
    assert chain["translation"] == {"mode": "dnat", "confidence": "high", "proxy": None}
    assert chain["response"]["bytes_sent"] == 12 and chain["response"]["bytes_received"] == 2
    [hop] = [h for h in chain["hops"] if h["name"] == "connect"]
    # the datagram sent to the pod's receipt: on one host the receiver, woken inside the sender's sendto, may
    # return first (the hop is 0 then), and so may the client's read of the reply before the pod's sendto returns
    assert 0 <= hop["latency_ns"] < 1_000_000_000
    whats = [r["what"] for r in chain["evidence"]]
    assert sorted(whats[-5:]) == sorted(["client datagram", "backend received", "backend reply", "client reply",
                                         "client close"]) and whats[-1] == "client close"


def test_a_udp_refusal_says_what_the_pod_declares(lab_capture):
    """my-udp-wrong-port's targetPort is 8126; the pod declares UDP 8125: its kernel's ICMP port unreachable reaches
    the client's connected socket as ECONNREFUSED, the first datagram's result."""
    events, _curls = lab_capture
    result = run(events, lab_index())
    chain, _ = pick("my-udp-wrong-port", result.chains, result.alerts)
    assert chain["connect"]["errno"] == "ECONNREFUSED"
    [alert] = [a for a in result.alerts if a["alert_id"] in chain["alerts"] and a["rule"] == "svc.target_port_refused"]
    assert f"refused port {UDP_PORT + 1} (targetPort): its containers declare {UDP_PORT} (statsd)" in alert["summary"]


def test_an_unreachable_backend_names_the_network_policy(lab_capture):
    """my-nginx-socklb-dropped: socket-LB sends the connect to the nginx pod's port 8084, which its netns drops, as a
    CNI enforcing the lab's NetworkPolicy (nginx's ports, not 8084) does: the alert names the pod and the policy."""
    events, _curls = lab_capture
    result = run(events, lab_index())
    chain, _ = pick("my-nginx-socklb-dropped", result.chains, result.alerts)
    [alert] = [a for a in result.alerts if a["alert_id"] in chain["alerts"] and a["rule"] == "svc.backend_unreachable"]
    assert alert["summary"] == (
        f"default/my-nginx-socklb-dropped: connect from default/client to default/my-nginx-1 ({NGINX_IP}:8084), the "
        "backend socket-LB chose, was never accepted (connection timed out); NetworkPolicy default/my-nginx-ports "
        "selects default/my-nginx-1 and allows no ingress from default/client on TCP 8084")


def test_userspace_proxy_is_the_node_process_that_copies_the_bytes(lab_capture):
    events, _curls = lab_capture
    chain, _ = chain_of("my-nginx-userspace", events)
    proxy = chain["translation"]["proxy"]
    assert (proxy["node"], proxy["ip"], proxy["pod"]) == (NODE, NODE_IP, None)  # a host process, not a pod
    assert chain["translation"]["confidence"] == "high"


def test_host_resolver_answer_is_no_service(lab_capture):
    events, _curls = lab_capture
    chain, _ = chain_of(HOST_RESOLVED, events)
    dns = chain["dns"]
    assert dns["resolver_ip"] == HOST_RESOLVER and dns["resolver_is_cluster_dns"] is False
    assert dns["answers"] == [NODE_IP] and chain["service"] is None


def test_dns_retry_is_the_same_question_after_glibcs_timeout(lab_capture):
    events, _curls = lab_capture
    result = run(events, lab_index())
    chain, _ = pick(DNS_RETRY, result.chains, result.alerts)
    dns = chain["dns"]
    assert dns["retries"] == 2 and dns["answers"] == ["10.96.0.100"]  # the lost A, then the AAAA asked again
    assert 5_000_000_000 <= dns["latency_ns"] < 6_000_000_000
    [hop] = [h for h in chain["hops"] if h["name"] == "dns"]
    assert hop["latency_ns"] == dns["latency_ns"]
    # the node dropped glibc's first packet, the A it sent with the AAAA: the DNS server never saw it
    [retry] = [a for a in result.alerts if a["alert_id"] in chain["alerts"] and a["rule"] == "dns.retry_5s"]
    assert retry["summary"].endswith("; no DNS server seen receiving it, and it left its socket together with the "
                                     "AAAA query: the conntrack insertion race")
    [slow] = [a for a in result.alerts if a["alert_id"] in chain["alerts"] and a["rule"] == "svc.hop_latency"]
    assert " hop dns took " in slow["summary"] and slow["summary"].endswith(" ms after an unanswered query "
                                                                             "(dns.retry_5s)")


def test_a_connect_to_a_vip_without_rules_waits_until_curl_gives_up(lab_capture):
    """The SYN to my-nginx-flushed's ClusterIP vanishes; curl closes the socket at its --connect-timeout (2 s,
    counted from the start of the transfer, its DNS lookup included): the chain's connect hop is that wait."""
    events, _curls = lab_capture
    chain, _ = chain_of("my-nginx-flushed", events)
    [hop] = [h for h in chain["hops"] if h["name"] == "connect"]
    assert hop["start_ts"] == chain["connect"]["ts"] and 1_500_000_000 <= hop["latency_ns"] <= 2_500_000_000


def test_service_alerts_say_why_from_the_cluster_state(lab_capture):
    """my-nginx-no-endpoints' selector has a typo; my-nginx-wrong-port's targetPort is not what nginx declares."""
    events, _curls = lab_capture
    result = run(events, lab_index())
    said = {}
    for case in ("my-nginx-no-endpoints", "my-nginx-wrong-port"):
        chain, _ = pick(case, result.chains, result.alerts)
        [said[case]] = [a["summary"] for a in result.alerts if a["alert_id"] in chain["alerts"]
                        and a["rule"].startswith("svc.")]
    assert "has no ready endpoints (its selector run=my-nginxx matches no pod in default)" \
        in said["my-nginx-no-endpoints"]
    assert "refused port 8081 (targetPort): its containers declare 80" in said["my-nginx-wrong-port"]


def test_a_stale_rule_reaches_a_pod_the_slice_never_listed(lab_capture):
    """The lab's rule for my-nginx-stale still sends it to the first nginx pod, which its EndpointSlice (the
    v2 selector's) never listed: not a readiness or rollout story, the alert says."""
    events, _curls = lab_capture
    result = run(events, lab_index())
    chain, _ = pick("my-nginx-stale", result.chains, result.alerts)
    [alert] = [a for a in result.alerts if a["alert_id"] in chain["alerts"] and a["rule"] == "svc.misrouted"]
    assert alert["summary"].endswith(f"reached default/my-nginx-1 ({NGINX_IP}:80), not one of the Service's "
                                     "endpoints")


def test_hairpin_is_translated_with_low_confidence(lab_capture):
    """A pod requesting its own Service: kube-proxy masquerades it, so the backend's accept shows the
    node's address and the client's port. The client's chain says the VIP was translated somewhere
    it did not see, with low confidence, and is not called broken."""
    events, _curls = lab_capture
    chain, _ = chain_of(HAIRPIN, events)
    assert chain["translation"] == {"mode": "dnat", "confidence": "low", "proxy": None}
    accepts = [e for e in events if e.kind == "accept" and e.local_ip == NGINX_IP and e.remote_ip == NODE_IP
               and e.remote_port == chain["client"]["port"]]
    assert len(accepts) == 1  # the backend did accept it, from the node's address


def test_nodeport_from_the_node_is_linked_with_low_confidence(lab_capture):
    """A process on the node requests the node's own address at the NodePort: kube-proxy DNATs it to
    the pod and masquerades it, so the backend accepts the node's address with the client's port
    and the two sides meet by that endpoint; SNAT makes the link less certain, and the chain says so."""
    events, curls = lab_capture
    chain, _ = chain_of("my-nginx-nodeport", events)
    assert chain["client"]["pod"] is None and chain["client"]["ip"] == NODE_IP
    assert chain["connect"]["ip"] == NODE_IP and chain["connect"]["port"] == NODE_PORTS["my-nginx-nodeport"]
    assert chain["translation"] == {"mode": "nodeport_snat", "confidence": "low", "proxy": None}
    accepts = [e for e in events if e.kind == "accept" and e.local_ip == NGINX_IP and e.remote_ip == NODE_IP
               and e.remote_port == chain["client"]["port"]]
    assert len(accepts) == 1 and chain["backend"]["pod"] == "my-nginx-1"


def test_no_stage_dead_letters_a_live_record(lab_capture):
    events, _curls = lab_capture
    assert run(events, lab_index()).deadletters == []


@pytest.mark.parametrize("case", KEEPALIVE)
def test_keepalive_connection_gives_a_chain_per_request(lab_capture, case):
    events, curls = lab_capture
    assert curls[case][1] == 0
    assert_keepalive(case, run(events, lab_index()).chains)


def assert_keepalive(case: str, chains: list) -> None:
    """One chain per request of the one connection, in order, each with its own status."""
    def asked_at(ch: dict) -> int:  # a connection's chains share their start: the request's own time
        return next(h["start_ts"] for h in ch["hops"] if h["name"] == "response")

    mine = sorted((ch for ch in chains if (ch["service"] or {}).get("name") == case), key=asked_at)
    assert [(ch["response"]["target"], ch["response"]["status"]) for ch in mine] == \
        list(zip(KEEPALIVE_PATHS, (200, 404, 200)))
    assert len({ch["client"]["port"] for ch in mine}) == 1 and len({ch["chain_id"] for ch in mine}) == 3
    mode = "userspace_proxy" if "userspace" in case else "dnat"
    assert all(ch["status"] == "ok" and ch["translation"]["mode"] == mode and ch["backend"]["pod"] == "my-nginx-1"
               for ch in mine)


def test_truncated_answer_is_asked_again_over_tcp(lab_capture):
    events, _curls = lab_capture
    chain, _ = chain_of("my-nginx-tcp-dns", events)
    dns = chain["dns"]
    assert (dns["rcode"], dns["answers"], dns["retries"]) == ("NOERROR", ["10.96.0.111"], 0)
    assert dns["server"]["pod"] == "coredns"
    tcp = [e for e in events if e.pid == chain["client"]["pid"] and e.proto == "tcp" and e.remote_port == 53]
    assert {e.kind for e in tcp} >= {"connect", "send", "recv"}  # the answer came over TCP


def test_ipv6_service_from_a_dual_stack_pod(lab_capture):
    """Both ends' IPv6 addresses come from the sockets (the eBPF tuple), and the lookup made over
    IPv4 belongs to the request made over IPv6: one flow per pod."""
    events, _curls = lab_capture
    chain, _ = chain_of("my-nginx-v6", events)
    assert (chain["client"]["ip"], chain["backend"]["ip"]) == (IP6["client"], IP6["my-nginx-1"])
    assert (chain["connect"]["ip"], chain["service"]["cluster_ip"]) == ("fd00:10:96::100", "fd00:10:96::100")
    dns = chain["dns"]
    assert (dns["qtype"], dns["answers"], dns["resolver_ip"]) == ("AAAA", ["fd00:10:96::100"], DNS_VIP)


def test_kernel_losses_never_make_a_working_request_broken(tmp_path):
    """The ring (16 KiB) drained for the first request, then not while the others run, as when an
    agent is starved of CPU: the kernel drops what does not fit (the newest), and the capture's
    loss marker comes when it catches up. curl's exit status says what really happened: a chain
    may be broken only if its request really failed; one the drops may have touched is incomplete.
    (How much of the later requests survives depends on the host's other traffic; the core's tests
    pin the incomplete cases down, e.g. test_core_dns's loss while a lookup waits.)"""
    if os.geteuid() != 0:
        pytest.fail("the network lab needs root (this test is marked `root`)")
    cases = ["my-nginx", "my-nginx-wrong-port", "my-nginx-keepalive", "my-nginx-flushed", "my-nginx-userspace",
             "my-nginx-no-endpoints", "my-nginx-userspace-keepalive", "my-nginx-socklb"]
    events, curls = record(tmp_path, timeout=5, cases=cases, ring_bytes=16384, stall_after="my-nginx")
    assert [e.kind for e in events].count("lost") == 1
    result = run(events, lab_index())
    assert result.chains
    for ch in result.chains:
        # a lookup alone: its name's first label (the later queries may be the lost ones, so the
        # name it reads as may be a search expansion)
        case = (ch["service"] or {}).get("name") or ch["dns"]["qname"].split(".")[0]
        rc = curls[case][1]
        if ch["status"] == "broken":
            assert rc != 0, f"{case}: curl succeeded, its chain says broken: {ch['response']}"
        if case == "my-nginx":  # drained while it ran
            assert ch["status"] in ("ok", "incomplete") and rc == 0
