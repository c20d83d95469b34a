"""DNS: decoding with dnspython, lookup grouping and the dns.* alerts."""
from __future__ import annotations

import struct
from pathlib import Path

import pytest

from svctrace.schemas.validation import validate
from svctrace.streams.core import Settings, run
from svctrace.streams.core.dns import parse_dns, service_of_name
from svctrace.streams.metadata.index import ClusterIndex
from tests.scenario import MS, S, T0, US, Cluster, Proc, Scenario, _rec, dns_answer, dns_query

POD_IP = "10.244.1.5"


def test_parse_query_answer_cname_chain_and_ttl():
    q = parse_dns(dns_query("my-nginx.default.svc.cluster.local", "AAAA", 0x1234))
    assert (q.id, q.is_response, q.qname, q.qtype) == (0x1234, False, "my-nginx.default.svc.cluster.local.", "AAAA")
    wire = dns_answer("www.example.com", "A", 7, ["93.184.216.34", "93.184.216.35"], cname="edge.example.net")
    a = parse_dns(wire)
    assert a.is_response and a.rcode == "NOERROR" and sorted(a.answers) == ["93.184.216.34", "93.184.216.35"]
    assert a.cnames == ("edge.example.net.",) and a.ttl == 30 and not a.truncated
    nx = parse_dns(dns_answer("nope.default.svc.cluster.local", "A", 9, rcode=3))
    assert nx.rcode == "NXDOMAIN" and nx.answers == ()


def test_parse_tcp_length_prefixed_and_truncated_prefix():
    wire = dns_answer("my-nginx.default.svc.cluster.local", "A", 42, ["10.96.0.100"])
    tcp = struct.pack("!H", len(wire)) + wire
    assert parse_dns(tcp, tcp=True).answers == ("10.96.0.100",)
    cut = parse_dns(wire[: len(wire) - 6])  # snaplen cut inside the answer
    assert cut.truncated and cut.id == 42 and cut.qname.startswith("my-nginx") and cut.answers == ()
    assert parse_dns(b"\x00\x01garbage") is None and parse_dns(b"") is None


def test_service_of_name():
    assert service_of_name("my-nginx.default.svc.cluster.local.") == ("default", "my-nginx")
    assert service_of_name("my-nginx.default.cluster.local.") == ("default", "my-nginx")  # the seed's SkyDNS form
    assert service_of_name("example.com.") == (None, None)


def _run(sc: Scenario):
    result = run(sc.events(), sc.cluster.index())
    for c in result.chains:
        validate("chain", c)
    for a in result.alerts:
        validate("alert", a)
    return result


def test_nxdomain_for_a_missing_service_is_critical():
    sc = Scenario(Cluster())
    sc.lookup(T0, sc.proc("client", "curl"), POD_IP, "nope.default.svc.cluster.local", [], rcode=3)
    r = _run(sc)
    assert [c["status"] for c in r.chains] == ["broken"] and r.chains[0]["dns"]["rcode"] == "NXDOMAIN"
    assert [(a["rule"], a["severity"]) for a in r.alerts] == [("dns.nxdomain", "critical")]
    assert r.alerts[0]["labels"] == {"namespace": "default", "service": "nope", "pod": "client", "node": "node-a"}


@pytest.mark.parametrize("asked, hint", [
    ("my-nginxx.default", "; no Service my-nginxx in default (close: my-nginx)"),
    ("my-nginx.prod", "; no Service my-nginx in prod, but default/my-nginx"),
    ("payments.default", "; no Service payments in default"),
    ("db.default", "; default/db is a headless Service without a ready endpoint: its name has no records"),
    ("kube-dns.kube-system", "; kube-system/kube-dns exists: the DNS server is behind, or not this cluster's"),
])
def test_nxdomain_says_what_the_index_knows_of_the_name(asked, hint):
    """The classic NXDOMAINs of a cluster name: a typo, a Service asked in the wrong namespace, one that does not
    exist; and two where it does: a headless Service without a ready pod has no records, and a DNS server behind
    (or another cluster's) does not know a Service the API server has."""
    cluster = Cluster()
    headless = _rec("Service", "default", "db", T0 - 3600 * S, service={
        "type": "ClusterIP", "cluster_ips": [], "selector": {"app": "db"},
        "ports": [{"name": "pg", "port": 5432, "protocol": "TCP", "target_port": 5432, "node_port": None}]})
    sc = Scenario(cluster)
    sc.lookup(T0, sc.proc("client", "curl"), POD_IP, f"{asked}.svc.cluster.local", [], rcode=3)
    r = run(sc.events(), ClusterIndex.from_records([*cluster.records(), headless]))
    [alert] = [a for a in r.alerts if a["rule"] == "dns.nxdomain"]
    assert alert["summary"] == (f"{asked}.svc.cluster.local does not exist: NXDOMAIN from 10.96.0.10 to "
                                f"default/client{hint}")


CLUSTER_NAME, EXTERNAL_NAME = "my-nginx.default.svc.cluster.local", "example.com"
CLIENT_SAYS = {  # (dnsPolicy, on the host network) -> what a wrong_resolver alert adds for it
    ("ClusterFirst", False): "; the pod's dnsPolicy is ClusterFirst: its resolv.conf was rewritten, or the process "
                             "reads its own",
    ("Default", False): "; the pod's dnsPolicy is Default",
    ("ClusterFirst", True): "; a host-network pod with dnsPolicy ClusterFirst: only ClusterFirstWithHostNet gives it "
                            "the cluster DNS",
    (None, False): "; the pod's dnsPolicy is Default (or None, with other nameservers), or its resolv.conf was "
                   "rewritten",  # a record from before the policy was projected
    ("process", None): "",  # a process of the node, in no pod
}


@pytest.mark.parametrize("policy, host_network", list(CLIENT_SAYS))
@pytest.mark.parametrize("qname", [CLUSTER_NAME, EXTERNAL_NAME])
def test_wrong_resolver_by_the_clients_dns_policy(policy, host_network, qname):
    """Another nameserver answering a cluster name is always wrong. For another name it is wrong only for a pod
    meant to ask the cluster DNS, by its dnsPolicy: ClusterFirst, or ClusterFirstWithHostNet on the host network
    (a host-network pod's ClusterFirst falls back to the node's resolver); Default and None choose another
    nameserver on purpose. The alert names a resolver at a node's address, and where the pod's resolver comes
    from."""
    cluster = Cluster()
    records = cluster.records()
    node_ip = cluster.nodes["node-b"]
    if policy == "process":
        client, client_ip = Proc("node-a", 901, "agent"), cluster.nodes["node-a"]
    else:
        pod = next(r for r in records if r["kind"] == "Pod" and r["name"] == "client")["pod"]
        pod.update(host_network=host_network)
        if policy is not None:
            pod["dns_policy"] = policy
        if host_network:
            pod["ips"] = [cluster.nodes["node-a"]]
        client, client_ip = Proc("node-a", 901, "curl", "c11e47000001"), pod["ips"][0]
    sc = Scenario(cluster)
    sc.lookup(T0, client, client_ip, qname, ["10.96.0.100"], resolver=node_ip, server=False)
    r = run(sc.events(), ClusterIndex.from_records(records))
    said = [a["summary"] for a in r.alerts if a["rule"] == "dns.wrong_resolver"]
    meant = (policy, host_network) in (("ClusterFirst", False), (None, False))
    if qname == EXTERNAL_NAME and not meant:
        assert said == []
    else:
        who = "agent@node-a" if policy == "process" else "default/client"
        assert said == [f"{who} resolved {qname} with {node_ip} (node node-b's address), which is not the cluster DNS"
                        + CLIENT_SAYS[policy, host_network]]


def test_no_answer():
    """glibc: a query, the same again after 5 s, then it gives up; the capture goes on."""
    sc = Scenario(Cluster())
    curl = sc.proc("client", "curl")
    for t in (T0, T0 + 5 * S):
        sc.lookup(t, curl, POD_IP, "my-nginx.default.svc.cluster.local", ["10.96.0.100"], answer=False)
    sc.lookup(T0 + 20 * S, sc.proc("client", "other"), POD_IP, "example.com", ["93.184.216.34"])
    r = _run(sc)
    assert len(r.chains) == 2
    failed = r.chains[0]
    assert failed["status"] == "broken" and failed["dns"]["rcode"] is None and failed["dns"]["queries"] == 2
    assert sorted(a["rule"] for a in r.alerts) == ["dns.no_answer", "dns.retry_5s"]
    assert r.chains[1]["status"] == "ok"


def test_no_answer_says_whether_a_dns_server_received_the_query():
    """Lost on the way to any DNS server (a NetworkPolicy, conntrack, a dead pod behind the VIP), or received by one
    (its answer lost on the way back, or never sent): the server's own recv tells them apart."""
    summaries = {}
    for server in (True, False):
        sc = Scenario(Cluster())
        curl = sc.proc("client", "curl")
        for t in (T0, T0 + 5 * S):
            sc.lookup(t, curl, POD_IP, "my-nginx.default.svc.cluster.local", ["10.96.0.100"], answer=False,
                      server=server)
        sc.lookup(T0 + 20 * S, sc.proc("client", "other"), POD_IP, "example.com", ["93.184.216.34"])
        r = _run(sc)
        [summaries[server]] = [a["summary"] for a in r.alerts if a["rule"] == "dns.no_answer"]
        evidence = {e["what"] for a in r.alerts for e in a["evidence"]}
        assert ("dns server got query" in evidence) == server
    assert summaries[True] == ("no DNS answer for my-nginx.default.svc.cluster.local from 10.96.0.10 to default/client "
                               "after 2 queries; kube-system/coredns (coredns 700 on node-b) received the last one")
    assert summaries[False].endswith("after 2 queries; no DNS server seen receiving them")
    # one query: "it"
    sc = Scenario(Cluster())
    sc.lookup(T0, sc.proc("client", "curl"), POD_IP, "my-nginx.default.svc.cluster.local", ["10.96.0.100"],
              answer=False)
    sc.lookup(T0 + 20 * S, sc.proc("client", "other"), POD_IP, "example.com", ["93.184.216.34"])
    [one] = [a["summary"] for a in _run(sc).alerts if a["rule"] == "dns.no_answer"]
    assert one.endswith("; kube-system/coredns (coredns 700 on node-b) received it")


def test_a_dns_server_on_another_port_is_seen_receiving():
    """kube-dns's port 53 sent to a DNS pod listening on 5353 (OpenShift's dns-default): the pod's side of a query
    has port 5353 and the client's address, not 53. The cluster DNS's endpoints tell it is a DNS server: the chain
    names it, and an unanswered query reads as received, not as lost on the way."""
    cluster = Cluster()
    cluster.services["kube-dns"].target_port = 5353
    cluster.services["kube-dns"].extra_ports = (("dns-tcp", 53, "TCP", 5353),)
    said = {}
    for answered in (True, False):
        sc = Scenario(cluster)
        sc.lookup(T0, sc.proc("client", "curl"), POD_IP, "my-nginx.default.svc.cluster.local", ["10.96.0.100"],
                  answer=answered, server_port=5353)
        sc.lookup(T0 + 20 * S, sc.proc("client", "other"), POD_IP, "example.com", ["93.184.216.34"],
                  server_port=5353)  # (the capture goes on past the first one's timeout)
        r = run(sc.events(), cluster.index(), Settings())
        chain = r.chains[0]
        assert chain["dns"]["server"]["pod"] == "coredns" and chain["dns"]["server"]["port"] == 5353
        said[answered] = [a["summary"] for a in r.alerts if a["rule"] == "dns.no_answer"]
    assert said[True] == []
    assert [s.split("; ")[-1] for s in said[False]] == ["kube-system/coredns (coredns 700 on node-b) received it"]


def test_a_dns_server_on_another_port_is_seen_receiving_over_tcp():
    """The same server asked over TCP (glibc's fallback after a truncated answer): the pod accepts on 5353 and
    reads the length-prefixed query. It is a DNS server's receipt, not a connection only a server saw."""
    from svctrace.schemas.models import SyscallEvent

    cluster = Cluster()
    cluster.services["kube-dns"].target_port = 5353
    cluster.services["kube-dns"].extra_ports = (("dns-tcp", 53, "TCP", 5353),)
    dns_pod = cluster.pods["coredns"]
    name, dns_ip = "my-nginx.default.svc.cluster.local", cluster.dns_ip
    said, servers = {}, {}
    for answered in (True, False):
        q = dns_query(name, "A", 0x66)
        a = dns_answer(name, "A", 0x66, ["10.96.0.100"])
        q, a = struct.pack("!H", len(q)) + q, struct.pack("!H", len(a)) + a
        cl = dict(node="node-a", pid=9, tid=9, comm="dig", proto="tcp", role="client", local_ip=POD_IP,
                  local_port=45000, remote_ip=dns_ip, remote_port=53, fd=5, container_id="c11e47000001")
        sv = dict(node=dns_pod.node, pid=700, tid=700, comm="coredns", proto="tcp", role="server", local_ip=dns_pod.ip,
                  local_port=5353, remote_ip=POD_IP, remote_port=45000, fd=8, container_id=dns_pod.container_id)
        events = [
            SyscallEvent(ts=T0, n=1, kind="connect", syscall="connect", res=0, addr_ip=dns_ip, addr_port=53, **cl),
            SyscallEvent(ts=T0 + 100 * US, n=1, kind="accept", syscall="accept4", res=8, **sv),
            SyscallEvent(ts=T0 + 150 * US, n=2, kind="send", syscall="writev", res=len(q), data=q, **cl),
            SyscallEvent(ts=T0 + 200 * US, n=2, kind="recv", syscall="read", res=len(q), data=q, **sv),
        ]
        if answered:
            events += [
                SyscallEvent(ts=T0 + 300 * US, n=3, kind="send", syscall="write", res=len(a), data=a, **sv),
                SyscallEvent(ts=T0 + 400 * US, n=3, kind="recv", syscall="read", res=len(a), data=a, **cl),
            ]
        events += [SyscallEvent(ts=T0 + 500 * US, n=4, kind="close", syscall="close", res=0, **cl),
                   SyscallEvent(ts=T0 + 600 * US, n=4, kind="close", syscall="close", res=0, **sv)]
        sc = Scenario(cluster)
        sc.lookup(T0 + 20 * S, sc.proc("client", "other"), POD_IP, "example.com", ["93.184.216.34"],
                  server_port=5353)  # (the capture goes on past the first one's timeout)
        r = run(sorted(events + sc.events(), key=lambda e: e.ts), cluster.index(), Settings())
        [chain] = [c for c in r.chains if c["dns"]["qname"] == name]
        servers[answered] = chain["dns"]["server"]
        said[answered] = [a["summary"] for a in r.alerts if a["rule"] == "dns.no_answer"]
    assert said[True] == [] and servers[True]["pod"] == "coredns" and servers[True]["port"] == 5353
    assert [s.split("; ")[-1] for s in said[False]] == ["kube-system/coredns (coredns 700 on node-b) received it"]


def test_no_answer_names_a_resolver_service_without_a_ready_endpoint():
    """CoreDNS down or not ready: the kube-dns VIP's queries go nowhere. With its one pod not ready in the
    EndpointSlice, the alert says so; with it ready, nothing is added."""
    summaries = {}
    for ready in (True, False):
        cluster = Cluster()
        records = cluster.records()
        if not ready:
            [dns_slice] = [r for r in records if r["kind"] == "EndpointSlice" and r["name"].startswith("kube-dns")]
            for ep in dns_slice["endpoints"]["endpoints"]:
                ep.update(ready=False, serving=False)
        sc = Scenario(cluster)
        curl = sc.proc("client", "curl")
        for t in (T0, T0 + 5 * S):
            sc.lookup(t, curl, POD_IP, "my-nginx.default.svc.cluster.local", ["10.96.0.100"], answer=False,
                      server=False)
        sc.lookup(T0 + 20 * S, sc.proc("client", "other"), POD_IP, "example.com", ["93.184.216.34"])
        r = run(sc.events(), ClusterIndex.from_records(records))
        [summaries[ready]] = [a["summary"] for a in r.alerts if a["rule"] == "dns.no_answer"]
    assert summaries[True].endswith("after 2 queries; no DNS server seen receiving them")
    assert summaries[False].endswith("after 2 queries; no DNS server seen receiving them; kube-system/kube-dns had no "
                                     "ready endpoint")


@pytest.mark.parametrize("kind", ["ExternalName", "headless, endpoints by hand", "ClusterIP"])
def test_services_that_answer_foreign_addresses_by_design(kind):
    """A Service of type ExternalName is a CNAME to a name outside the cluster; a headless Service without a selector
    answers the endpoints written for it by hand (a database outside the cluster). Their addresses are no
    Service's or pod's by design, not a stale or foreign answer. The same answer for a ClusterIP Service's name
    is one."""
    cluster = Cluster()
    ts, foreign = T0 - 3600 * S, "192.0.2.40"
    port = {"name": "pg", "port": 5432, "protocol": "TCP", "target_port": 5432, "node_port": None}
    records = [*cluster.records(), _rec("Service", "default", "db", ts, service={
        "type": "ClusterIP" if kind != "ExternalName" else kind, "selector": None, "ports": [port],
        "cluster_ips": ["10.96.0.120"] if kind == "ClusterIP" else []})]
    if kind.startswith("headless"):
        records.append(_rec("EndpointSlice", "default", "db-1", ts, endpoints={
            "service": "db", "address_type": "IPv4", "ports": [port],
            "endpoints": [{"addresses": [foreign], "ready": True, "serving": True, "terminating": False}]}))
    sc = Scenario(cluster)
    sc.lookup(T0, sc.proc("client", "psql"), POD_IP, "db.default.svc.cluster.local", [foreign])
    r = run(sc.events(), ClusterIndex.from_records(records))
    [chain] = r.chains
    alerted = [a["rule"] for a in r.alerts]
    if kind == "ClusterIP":
        assert chain["status"] == "broken" and alerted == ["dns.answer_not_service"]
    else:
        assert chain["status"] == "ok" and alerted == []


def test_end_of_input_right_after_a_query_is_incomplete_not_broken():
    sc = Scenario(Cluster())
    sc.lookup(T0, sc.proc("client", "curl"), POD_IP, "my-nginx.default.svc.cluster.local", ["10.96.0.100"], answer=False)
    r = _run(sc)
    assert [c["status"] for c in r.chains] == ["incomplete"] and r.alerts == []


def test_retry_after_5s_is_the_conntrack_race_signature():
    sc = Scenario(Cluster())
    curl = sc.proc("client", "curl")
    sc.lookup(T0, curl, POD_IP, "my-nginx.default.svc.cluster.local", ["10.96.0.100"], answer=False)
    sc.lookup(T0 + 5 * S, curl, POD_IP, "my-nginx.default.svc.cluster.local", ["10.96.0.100"])
    r = _run(sc)
    assert len(r.chains) == 1
    dns = r.chains[0]["dns"]
    assert dns["retries"] == 1 and dns["queries"] == 2 and dns["latency_ns"] > 5 * S
    assert [a["rule"] for a in r.alerts] == ["dns.retry_5s"]
    assert r.chains[0]["status"] == "ok"  # the lookup succeeded in the end: a signature, not a break


def _retried_a(sc: Scenario, received: bool, twin: bool) -> None:
    """glibc on one socket: A (and AAAA with it, when twin), the A unanswered, the A again 5 s later (the same
    id), answered. received: the DNS server got the first A (and its answer went missing)."""
    cl = sc.cluster
    curl, dns_pod = sc.proc("client", "curl"), cl.pods["coredns"]
    srv = Proc(dns_pod.node, 700, "coredns", dns_pod.container_id)
    name, port = "my-nginx.default.svc.cluster.local", sc.port()
    c = dict(proto="udp", role="client", local_ip=POD_IP, local_port=port, remote_ip=cl.dns_ip, remote_port=53)
    s = dict(proto="udp", role="server", local_ip=dns_pod.ip, local_port=53, remote_ip=POD_IP, remote_port=port,
             addr_ip=POD_IP, addr_port=port)
    to_dns = dict(addr_ip=cl.dns_ip, addr_port=53)

    def ask(t, qtype, qid, heard, answers):
        q = dns_query(name, qtype, qid)
        sc.ev(t, curl, "send", "sendto", 3, len(q), data=q, **to_dns, **c)
        if heard:
            sc.ev(t + 150 * US, srv, "recv", "recvmsg", 6, len(q), data=q, **s)
        if answers is not None:
            a = dns_answer(name, qtype, qid, answers)
            sc.ev(t + 300 * US, srv, "send", "sendmsg", 6, len(a), data=a, **s)
            sc.ev(t + 500 * US, curl, "recv", "recvfrom", 3, len(a), data=a, **to_dns, **c)

    sc.ev(T0, curl, "connect", "connect", 3, 0, **to_dns, **c)
    ask(T0 + 20 * US, "A", 0x100, received, None)
    if twin:
        ask(T0 + 40 * US, "AAAA", 0x101, True, [])
    ask(T0 + 5 * S + 20 * US, "A", 0x100, True, ["10.96.0.100"])
    sc.ev(T0 + 5 * S + MS, curl, "close", "close", 3, 0, **c)


def test_retry_after_5s_says_what_the_agents_saw_of_the_lost_query():
    """A server that received the lost query (its answer lost) is not the conntrack race; a query nobody received
    that left its socket together with its AAAA twin is that race's pattern; alone, it was lost on the way."""
    summaries = {}
    for received, twin in ((False, True), (True, True), (False, False)):
        sc = Scenario(Cluster())
        _retried_a(sc, received, twin)
        r = _run(sc)
        assert [c["status"] for c in r.chains] == ["ok"] and r.chains[0]["dns"]["answers"] == ["10.96.0.100"]
        [summaries[received, twin]] = [a["summary"] for a in r.alerts if a["rule"] == "dns.retry_5s"]
    head = "my-nginx.default.svc.cluster.local A from default/client was retried 5000 ms after an unanswered query; "
    assert summaries == {
        (False, True): head + "no DNS server seen receiving it, and it left its socket together with the AAAA "
                              "query: the conntrack insertion race",
        (True, True): head + "kube-system/coredns (coredns 700 on node-b) received it, so its answer was lost on "
                             "the way back or never sent",
        (False, False): head + "no DNS server seen receiving it: lost on the way",
    }


@pytest.mark.parametrize("received", [True, False])
def test_a_retrys_cause_survives_a_checkpoint(received):
    """The stitch state written at any cut (as a worker's checkpoint writes it) and restored gives the same chains
    and alert occurrences, their causes included, as the uninterrupted run."""
    from tests.test_core_stitch_state import _stitch_calls  # (the stitch stage's calls in a run)
    from svctrace.streams.core import dumps_state, loads_state
    from svctrace.streams.core.stitch import Stitcher

    def outputs(op, calls, states):
        out = []
        for what, key, arg in calls:
            st = states.setdefault(key, op.new_state())
            out += op.process(st, key, arg) if what == "p" else op.advance(st, key, arg)
            if what == "a" and op.is_idle(st):
                del states[key]
        return out, states

    def flushed(op, states):
        return [o for key in sorted(states) for o in op.flush(states[key], key)]

    cluster = Cluster()
    sc = Scenario(cluster, "dnat")
    _retried_a(sc, received, twin=True)
    sc.request(T0 + 6 * S, "healthy")
    calls = _stitch_calls(cluster, sc.events())
    op = Stitcher(cluster.index())
    whole, states = outputs(op, calls, {})
    whole += flushed(op, states)
    assert any(o[2].get("rule") == "dns.retry_5s" for o in whole if isinstance(o[2], dict))
    for cut in range(1, len(calls)):
        op = Stitcher(cluster.index())
        before, states = outputs(op, calls[:cut], {})
        succ = Stitcher(cluster.index())
        resumed = {key: succ.restore(loads_state(dumps_state(op.durable(st)) if not st["runs"] else dumps_state(st)))
                   for key, st in states.items()}
        after, states = outputs(succ, calls[cut:], resumed)
        assert before + after + flushed(succ, states) == whole, cut


def test_search_path_amplification():
    sc = Scenario(Cluster())
    curl = sc.proc("client", "curl")
    t = T0
    for suffix in ("default.svc.cluster.local", "svc.cluster.local", "cluster.local"):
        t = sc.lookup(t, curl, POD_IP, f"example.com.{suffix}", [], rcode=3) + 100_000
    sc.lookup(t, curl, POD_IP, "example.com", ["93.184.216.34"])
    r = _run(sc)
    assert len(r.chains) == 1
    dns = r.chains[0]["dns"]
    assert dns["qname"] == "example.com" and dns["queries"] == 4 and dns["answers"] == ["93.184.216.34"]
    assert [a["rule"] for a in r.alerts] == ["dns.search_amplification"]
    assert r.alerts[0]["severity"] == "info" and r.chains[0]["status"] == "ok"


def test_pod_using_a_non_cluster_resolver():
    sc = Scenario(Cluster())
    sc.lookup(T0, sc.proc("client", "curl"), POD_IP, "example.com", ["93.184.216.34"], resolver="8.8.8.8", server=False)
    r = _run(sc)
    assert [a["rule"] for a in r.alerts] == ["dns.wrong_resolver"]


def test_lookups_of_different_processes_stay_apart():
    sc = Scenario(Cluster())
    for i in range(3):
        sc.lookup(T0 + i * MS // 10, sc.proc("client", "curl"), POD_IP, "my-nginx.default.svc.cluster.local",
                  ["10.96.0.100"])
    r = _run(sc)
    assert len(r.chains) == 3 and all(c["status"] == "ok" and c["dns"]["queries"] == 1 for c in r.chains)
    assert r.alerts == []


def test_answers_pair_by_client_endpoint_server_and_id():
    """An answer with the right id from another server is not the answer (spoofing, stray packets)."""
    from svctrace.schemas.models import SyscallEvent

    cluster = Cluster()
    q = dns_query("my-nginx.default.svc.cluster.local", "A", 0x77)
    a = dns_answer("my-nginx.default.svc.cluster.local", "A", 0x77, ["10.96.0.100"])
    base = dict(node="node-a", pid=5, tid=5, comm="curl", proto="udp", role="client", local_ip=POD_IP,
                local_port=40000, fd=3, container_id="c11e47000001")
    events = [
        SyscallEvent(ts=T0, n=1, kind="send", syscall="sendto", res=len(q), data=q, addr_ip="10.96.0.10", addr_port=53, **base),
        SyscallEvent(ts=T0 + MS, n=2, kind="recv", syscall="recvfrom", res=len(a), data=a, addr_ip="6.6.6.6", addr_port=53, **base),
    ]
    r = run(events + [SyscallEvent(ts=T0 + 30 * S, n=3, kind="close", syscall="close", res=0, **base)], cluster.index())
    assert r.chains[0]["dns"]["rcode"] is None and [a["rule"] for a in r.alerts] == ["dns.no_answer"]
    events[1] = events[1].with_(addr_ip="10.96.0.10")
    r = run(events, cluster.index())
    assert r.chains[0]["dns"]["answers"] == ["10.96.0.100"] and r.alerts == []


def test_lookup_over_tcp_length_prefixed_is_paired_and_claimed():
    from svctrace.schemas.models import SyscallEvent

    cluster = Cluster()
    q = dns_query("my-nginx.default.svc.cluster.local", "A", 0x55)
    a = dns_answer("my-nginx.default.svc.cluster.local", "A", 0x55, ["10.96.0.100"])
    q, a = struct.pack("!H", len(q)) + q, struct.pack("!H", len(a)) + a
    base = dict(node="node-a", pid=9, tid=9, comm="dig", proto="tcp", role="client", local_ip=POD_IP,
                container_id="c11e47000001")
    dns_sock = dict(local_port=45000, remote_ip="10.96.0.10", remote_port=53, fd=5, **base)
    http_sock = dict(local_port=45001, remote_ip="10.96.0.100", remote_port=8080, fd=6, **base)
    events = [
        SyscallEvent(ts=T0, n=1, kind="connect", syscall="connect", res=0, addr_ip="10.96.0.10", addr_port=53, **dns_sock),
        SyscallEvent(ts=T0 + 10_000, n=2, kind="send", syscall="writev", res=len(q), data=q, **dns_sock),
        SyscallEvent(ts=T0 + 400_000, n=3, kind="recv", syscall="read", res=len(a), data=a, **dns_sock),
        SyscallEvent(ts=T0 + 410_000, n=4, kind="close", syscall="close", res=0, **dns_sock),
        SyscallEvent(ts=T0 + 500_000, n=5, kind="connect", syscall="connect", res=-111, errno="ECONNREFUSED",
                     addr_ip="10.96.0.100", addr_port=8080, **http_sock),
    ]
    r = run(events, cluster.index())
    [chain] = r.chains
    assert chain["dns"]["answers"] == ["10.96.0.100"] and chain["dns"]["latency_ns"] == 390_000
    assert chain["service"]["name"] == "my-nginx" and chain["response"]["error"] == "connection refused"
    assert [a["rule"] for a in r.alerts] == ["svc.target_port_refused"]


def test_glibc_retransmission_with_the_same_id_is_the_5s_retry():
    """What the network lab captured from curl when the node dropped its first DNS packet:
    glibc sends A and AAAA at once (sendmmsg) on one socket, gets only the AAAA answer, and 5 s
    later asks again one at a time (single-request) with the SAME ids. The answer after the
    retransmission answers the retransmission: the first A query stays unanswered."""
    sc = Scenario(Cluster())
    curl = sc.proc("client", "curl")
    name, vip, dns_ip = "my-nginx.default.svc.cluster.local", "10.96.0.100", sc.cluster.dns_ip
    c = dict(proto="udp", role="client", local_ip=POD_IP, local_port=sc.port(), remote_ip=dns_ip, remote_port=53)
    qa, qaaaa = dns_query(name, "A", 0x3000), dns_query(name, "AAAA", 0x3001)
    aa, aaaaa = dns_answer(name, "A", 0x3000, [vip]), dns_answer(name, "AAAA", 0x3001, [])
    sc.ev(T0, curl, "connect", "connect", 3, 0, addr_ip=dns_ip, addr_port=53, **c)
    sc.ev(T0 + 10_000, curl, "send", "sendmmsg", 3, len(qa), data=qa, **c)  # lost on the way
    sc.ev(T0 + 10_000, curl, "send", "sendmmsg", 3, len(qaaaa), data=qaaaa, **c)
    sc.ev(T0 + 1 * MS, curl, "recv", "recvfrom", 3, len(aaaaa), data=aaaaa, addr_ip=dns_ip, addr_port=53, **c)
    t = T0 + 5 * S + 5 * MS
    sc.ev(t, curl, "send", "sendto", 3, len(qa), data=qa, **c)
    sc.ev(t + 4 * MS, curl, "recv", "recvfrom", 3, len(aa), data=aa, addr_ip=dns_ip, addr_port=53, **c)
    sc.ev(t + 5 * MS, curl, "send", "sendto", 3, len(qaaaa), data=qaaaa, **c)
    sc.ev(t + 6 * MS, curl, "recv", "recvfrom", 3, len(aaaaa), data=aaaaa, addr_ip=dns_ip, addr_port=53, **c)
    sc.ev(t + 7 * MS, curl, "close", "close", 3, 0, **c)
    sc.lookup(T0 + 20 * S, sc.proc("client", "other"), POD_IP, "example.com", ["93.184.216.34"])  # input goes on
    r = _run(sc)
    chain = r.chains[0]
    dns = chain["dns"]
    assert dns["queries"] == 4 and dns["retries"] == 2 and dns["answers"] == [vip]
    assert dns["latency_ns"] > 5 * S and chain["status"] == "ok"
    assert "dns.retry_5s" in {a["rule"] for a in r.alerts}


def test_glibc_falls_back_to_tcp_after_a_truncated_answer():
    """What the network lab captured from curl for a name whose UDP answer was truncated (TC):
    glibc sends both queries in one writev, each length-prefixed, then reads each answer's
    2-byte length and its message in two reads."""
    sc = Scenario(Cluster())
    curl = sc.proc("client", "curl")
    name, vip, dns_ip = "my-nginx.default.svc.cluster.local", "10.96.0.100", sc.cluster.dns_ip
    qa, qaaaa = dns_query(name, "A", 0x4000), dns_query(name, "AAAA", 0x4001)
    tc = bytearray(dns_answer(name, "A", 0x4000, []))
    tc[2] |= 0x02  # TC: the answer did not fit
    aa, aaaaa = dns_answer(name, "A", 0x4000, [vip]), dns_answer(name, "AAAA", 0x4001, [])
    u = dict(proto="udp", role="client", local_ip=POD_IP, local_port=sc.port(), remote_ip=dns_ip, remote_port=53)
    sc.ev(T0, curl, "connect", "connect", 3, 0, addr_ip=dns_ip, addr_port=53, **u)
    sc.ev(T0 + 10_000, curl, "send", "sendmmsg", 3, len(qa), data=qa, **u)
    sc.ev(T0 + 10_000, curl, "send", "sendmmsg", 3, len(qaaaa), data=qaaaa, **u)
    sc.ev(T0 + 1 * MS, curl, "recv", "recvfrom", 3, len(tc), data=bytes(tc), addr_ip=dns_ip, addr_port=53, **u)
    sc.ev(T0 + 1 * MS + 10_000, curl, "close", "close", 3, 0, **u)
    t = T0 + 2 * MS
    c = dict(proto="tcp", role="client", local_ip=POD_IP, local_port=sc.port(), remote_ip=dns_ip, remote_port=53)
    both = struct.pack("!H", len(qa)) + qa + struct.pack("!H", len(qaaaa)) + qaaaa
    sc.ev(t, curl, "connect", "connect", 3, 0, addr_ip=dns_ip, addr_port=53, **c)
    sc.ev(t + 100_000, curl, "send", "writev", 3, len(both), data=both, **c)
    for i, answer in enumerate((aa, aaaaa)):
        sc.ev(t + (2 + 2 * i) * 100_000, curl, "recv", "read", 3, 2, data=struct.pack("!H", len(answer)), **c)
        sc.ev(t + (3 + 2 * i) * 100_000, curl, "recv", "read", 3, len(answer), data=answer, **c)
    sc.ev(t + 1 * MS, curl, "close", "close", 3, 0, **c)
    sc.lookup(T0 + 20 * S, sc.proc("client", "other"), POD_IP, "example.com", ["93.184.216.34"])  # input goes on
    r = _run(sc)
    dns = r.chains[0]["dns"]
    assert (dns["rcode"], dns["answers"], dns["queries"]) == ("NOERROR", [vip], 4)
    assert 0 < dns["latency_ns"] < 5 * MS and r.chains[0]["status"] == "ok"


def test_a_loss_while_a_lookup_waits_makes_it_incomplete_not_broken():
    """The network lab, its ring too small while the agent was stalled: a lookup's last query was
    seen, its answer lost in the kernel, and the loss marker came when the agent caught up, seconds
    later. The lookup waited for that answer until its timeout: a loss on its node in that time
    may have taken it, so the lookup is incomplete (it read as NXDOMAIN: broken)."""
    sc = Scenario(Cluster())
    curl = sc.proc("client", "curl")
    t = T0
    for suffix in ("default.svc.cluster.local", "svc.cluster.local", "cluster.local"):
        t = sc.lookup(t, curl, POD_IP, f"my-nginx.default.svc.cluster.local.{suffix}", [], rcode=3) + 100_000
    sc.lookup(t, curl, POD_IP, "my-nginx.default.svc.cluster.local", ["10.96.0.100"], answer=False, server=False)
    sc.loss(t + 3 * S, "node-a", 40)  # the agent caught up 3 s later
    sc.lookup(T0 + 30 * S, sc.proc("client", "other"), POD_IP, "example.com", ["93.184.216.34"])  # input goes on
    r = _run(sc)
    chain = r.chains[0]
    assert chain["dns"]["queries"] == 4 and chain["status"] == "incomplete"
    assert r.alerts == []


def test_a_claimed_lookup_is_gone_at_its_expiry_though_no_timer_fires_for_it():
    """A lookup a connection claimed leaves without output: at a later timer pass, or when its key
    is read (it has no pass of its own). Either way it is gone from its expiry (its answer + 12 s) on,
    as if a pass had dropped it then: a connect at that instant claims nothing, one 1 ns earlier does."""
    cluster = Cluster()
    svc = cluster.services["my-nginx"]
    pod = cluster.pods["client"]
    for offset, claims in ((0, False), (-1, True)):
        sc = Scenario(cluster, "dnat")
        curl = sc.proc("client", "curl")
        sc.request(T0, client=curl)
        expiry = T0 + 500 * US + Settings().lookup_timeout_ns  # the lookup's last event is its answer
        t = expiry + offset
        c = dict(proto="tcp", role="client", local_ip=pod.ip, local_port=sc.port())
        sc.ev(t, curl, "connect", "connect", 9, -115, addr_ip=svc.cluster_ip, addr_port=svc.port,
              remote_ip=svc.cluster_ip, remote_port=svc.port, **c)
        sc.ev(t + 100 * US, curl, "close", "close", 9, 0, **c)
        r = run(sc.events(), cluster.index())
        [late] = [ch for ch in r.chains if ch["connect"] and ch["connect"]["ts"] == t]
        assert (late["dns"] is not None) == claims, (offset, late["dns"])
        assert len([ch for ch in r.chains if ch["dns"] is not None]) == 1 + claims


def test_one_query_summary_equals_the_general_pass(monkeypatch):
    """The short path for a lookup of one query is a speed-up only: on every
    scenario (each mode and fault), the DNS outcomes and both example captures, it must give
    the list the general pass gives for the same lookup. (Real resolvers mostly send several
    queries per lookup, A and AAAA over the search list: the lab capture's have 8 or 10.)"""
    from svctrace.analyze.pipeline import analyze
    from svctrace.streams.core.stitch import DX_RCODE, Stitcher
    from tests.scenario import FAULTS, MODES

    short = Stitcher._one_query_summary
    seen = {"checked": 0, "answered": 0, "unanswered": 0}

    def checked(self, st, lk, q):
        got = short(st, lk, q)
        assert got == self._lookup_summary(st, lk), lk
        seen["checked"] += 1
        seen["answered" if got[DX_RCODE] is not None else "unanswered"] += 1
        return got

    monkeypatch.setattr(Stitcher, "_one_query_summary", checked)
    for mode in MODES:
        for fault in FAULTS:
            cluster = Cluster(fault)
            sc = Scenario(cluster, mode)
            sc.request(T0, fault)
            run(sc.events(), cluster.index())
    sc = Scenario(Cluster())  # unanswered, NXDOMAIN, an answer from no server process seen
    curl = sc.proc("client", "curl")
    sc.lookup(T0, curl, POD_IP, "my-nginx.default.svc.cluster.local", ["10.96.0.100"], answer=False)
    sc.lookup(T0 + 20 * S, curl, POD_IP, "nope.default.svc.cluster.local", [], rcode=3)
    sc.lookup(T0 + 40 * S, curl, POD_IP, "example.com", ["93.184.216.34"], server=False)
    run(sc.events(), sc.cluster.index())
    examples = Path(__file__).resolve().parent.parent / "examples"
    for case in ("seed", "lab"):
        analyze(str(examples / case / "capture.scap"), str(examples / case / "cluster.json"))
    assert seen["answered"] >= 15 and seen["unanswered"] >= 1, seen
