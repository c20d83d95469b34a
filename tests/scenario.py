"""Scenario builder: consistent syscall event sequences for Service requests.

A `Cluster` describes nodes, pods and Services and produces its k8s-object
records (schemas/k8s-object.schema.json) for `ClusterIndex.from_records`.
A `Scenario` emits what every process involved would do, on every node, for a
request in a given translation mode — userspace proxy, DNAT (iptables/IPVS/nft)
or eBPF socket-LB — healthy or with one of the seed article's Part-2 faults.
Each request has its own timeline (start time + small steps); `events()` merges
all of them by time and numbers events per node (n), like a capture would.
"""
from __future__ import annotations

import itertools
from dataclasses import dataclass, field

import dns.message
import dns.rrset

from svctrace.schemas.models import SyscallEvent

S = 10**9
MS = 10**6
US = 10**3
T0 = 1_700_000_000 * S

MODES = ("userspace", "dnat", "socket_lb")
FAULTS = ("healthy", "wrong_port", "no_endpoints", "rules_flushed", "host_resolver")

REQUEST = (b"GET / HTTP/1.1\r\nUser-Agent: curl/7.35.0\r\nHost: my-nginx.default.svc.cluster.local:8080\r\n"
           b"Accept: */*\r\n\r\n")
RESPONSE_200 = b"HTTP/1.1 200 OK\r\nServer: nginx/1.9.7\r\nContent-Type: text/html\r\nContent-Length: 612\r\n\r\n<html>"
RESPONSE_503 = b"HTTP/1.1 503 Service Unavailable\r\nServer: nginx\r\nContent-Length: 0\r\n\r\n"
# a UDP Service other than DNS (Cluster.add_udp_service, Scenario.udp_flow): statsd-like, a counter out, "ok" back
UDP_VIP, UDP_PORT, UDP_NAME = "10.96.0.120", 8125, "metrics.default.svc.cluster.local"
UDP_PAYLOAD, UDP_REPLY = b"requests:1|c", b"ok"


def _rec(kind, namespace, name, ts, **body):
    r = {"schema": "svctrace.k8s-object", "version": 1, "kind": kind, "namespace": namespace, "name": name,
         "uid": f"uid-{kind}-{namespace}-{name}", "resource_version": "1", "observed_ts": ts, "deleted": False}
    r.update(body)
    return r


@dataclass
class Pod:
    name: str
    ip: str
    node: str
    namespace: str = "default"
    labels: dict = field(default_factory=dict)
    container_id: str = ""
    ports: tuple = ()  # (name, port) or (name, port, protocol): TCP unless said


@dataclass
class Service:
    name: str
    cluster_ip: str
    port: int
    target_port: int
    selector: dict
    namespace: str = "default"
    protocol: str = "TCP"
    extra_ports: tuple = ()  # (name, port, protocol, target_port)
    node_port: int | None = None
    external_traffic_policy: str | None = None  # Cluster | Local (a NodePort's)


@dataclass(frozen=True)
class Proc:
    node: str
    pid: int
    comm: str
    container_id: str | None = None


class Cluster:
    """The seed's cluster, on two nodes: a client pod, two nginx pods behind my-nginx:8080->80,
    CoreDNS behind kube-dns 10.96.0.10, kube-proxy on each node."""

    def __init__(self, fault: str = "healthy"):
        self.nodes = {"node-a": "10.0.0.11", "node-b": "10.0.0.12"}
        self.pods = {
            "client": Pod("client", "10.244.1.5", "node-a", labels={"run": "client"}, container_id="c11e47000001"),
            "my-nginx-1": Pod("my-nginx-1", "10.244.1.7", "node-a", labels={"run": "my-nginx"},
                              container_id="a9e100000001", ports=(("http", 80),)),
            "my-nginx-2": Pod("my-nginx-2", "10.244.2.8", "node-b", labels={"run": "my-nginx"},
                              container_id="a9e100000002", ports=(("http", 80),)),
            "coredns": Pod("coredns", "10.244.2.3", "node-b", namespace="kube-system",
                           labels={"k8s-app": "kube-dns"}, container_id="d45000000001", ports=(("dns", 53),)),
            "other": Pod("other", "10.244.2.9", "node-b", namespace="prod", labels={"run": "other"},
                         container_id="07e400000001", ports=(("http", 80),)),
        }
        wrong_port = fault == "wrong_port"
        wrong_labels = fault == "no_endpoints"
        self.services = {
            "my-nginx": Service("my-nginx", "10.96.0.100", 8080, 8080 if wrong_port else 80,
                                {"run": "my-nginxx" if wrong_labels else "my-nginx"}),
            "kube-dns": Service("kube-dns", "10.96.0.10", 53, 53, {"k8s-app": "kube-dns"}, namespace="kube-system",
                                protocol="UDP", extra_ports=(("dns-tcp", 53, "TCP", 53),)),
        }
        self.dns_ip = "10.96.0.10"
        self.host_resolver = "172.16.189.2"
        self.foreign_ip = "172.30.0.1"

    def add_udp_service(self, target_port: int = UDP_PORT, selector: str = "metrics", stray_pod: bool = False) -> None:
        """A statsd-like UDP Service, metrics (UDP_VIP:UDP_PORT -> target_port), its pod metrics-1 on node-b; and,
        stray_pod, a pod it does not select ("stray")."""
        self.pods["metrics-1"] = Pod("metrics-1", "10.244.2.20", "node-b", labels={"run": "metrics"},
                                     container_id="3e7100000001", ports=(("http", 80), ("statsd", UDP_PORT, "UDP")))
        if stray_pod:
            self.pods["stray"] = Pod("stray", "10.244.2.21", "node-b", labels={"run": "stray"},
                                     container_id="57a400000001", ports=(("statsd", UDP_PORT, "UDP"),))
        self.services["metrics"] = Service("metrics", UDP_VIP, UDP_PORT, target_port, {"run": selector},
                                           protocol="UDP")

    def backends(self, svc: str) -> list[Pod]:
        s = self.services[svc]
        return [p for p in self.pods.values()
                if p.namespace == s.namespace and all(p.labels.get(k) == v for k, v in s.selector.items())]

    def records(self, ts: int = T0 - 3600 * S) -> list[dict]:
        out = []
        for name, ip in self.nodes.items():
            out.append(_rec("Node", None, name, ts, node={"addresses": [ip], "pod_cidrs": []}))
        for p in self.pods.values():
            out.append(_rec("Pod", p.namespace, p.name, ts, pod={
                "ips": [p.ip], "node": p.node, "host_network": False, "phase": "Running", "ready": True,
                "labels": dict(p.labels), "container_ids": [f"containerd://{p.container_id}"],
                "ports": [{"name": n, "port": port, "protocol": proto[0] if proto else "TCP"}
                          for n, port, *proto in p.ports]}))
        for s in self.services.values():
            ports = [{"name": "http" if s.protocol == "TCP" else "dns", "port": s.port, "protocol": s.protocol,
                      "target_port": s.target_port, "node_port": s.node_port}]
            ports += [{"name": n, "port": p, "protocol": pr, "target_port": tp, "node_port": None}
                      for n, p, pr, tp in s.extra_ports]
            out.append(_rec("Service", s.namespace, s.name, ts, service={
                "type": "NodePort" if s.node_port else "ClusterIP", "cluster_ips": [s.cluster_ip], "selector": dict(s.selector),
                "session_affinity": "None", "external_traffic_policy": s.external_traffic_policy, "ports": ports}))
            eps = [{"addresses": [p.ip], "ready": True, "serving": True, "terminating": False, "node": p.node,
                    "pod": p.name, "pod_namespace": p.namespace} for p in self.backends(s.name)]
            out.append(_rec("EndpointSlice", s.namespace, f"{s.name}-abcde", ts, endpoints={
                "service": s.name, "address_type": "IPv4",
                "ports": [{"name": q["name"], "port": q["target_port"], "protocol": q["protocol"]} for q in ports],
                "endpoints": eps}))
        return out

    def index(self):
        from svctrace.streams.metadata.index import ClusterIndex
        return ClusterIndex.from_records(self.records())


def dns_query(qname: str, qtype: str = "A", qid: int = 0x0942) -> bytes:
    q = dns.message.make_query(qname, qtype)
    q.id = qid
    return q.to_wire()


def dns_answer(qname: str, qtype: str, qid: int, answers=(), rcode: int = 0, cname: str | None = None) -> bytes:
    q = dns.message.make_query(qname, qtype)
    q.id = qid
    r = dns.message.make_response(q)
    r.set_rcode(rcode)
    qname = qname if qname.endswith(".") else qname + "."
    cname = cname if (cname is None or cname.endswith(".")) else cname + "."
    owner = qname
    if cname:
        r.answer.append(dns.rrset.from_text(qname, 30, "IN", "CNAME", cname))
        owner = cname
    if answers:
        r.answer.append(dns.rrset.from_text(owner, 30, "IN", qtype, *answers))
    return r.to_wire()


class Scenario:
    def __init__(self, cluster: Cluster, mode: str = "dnat"):
        assert mode in MODES
        self.cluster, self.mode = cluster, mode
        self.drafts: list[tuple[int, int, str, dict]] = []
        self._order = itertools.count()
        self._ports = itertools.count(40000)
        self._pids = itertools.count(5000)
        self._qid = itertools.count(0x0942)
        self._fds = itertools.count(10)  # long-lived servers (proxy, nginx) hold many sockets at once
        self.proxy_ports: dict | None = None  # node -> its userspace proxy's dial ports (None: self.port())
        # the seed's userspace proxy is kube-proxy running inside hyperkube
        self.kube_proxy = {node: Proc(node, 900 + i, "hyperkube") for i, node in enumerate(cluster.nodes)}

    # -- primitives ----------------------------------------------------------------

    def proc(self, pod: str | None, comm: str, node: str | None = None) -> Proc:
        if pod is None:
            return Proc(node or "node-a", next(self._pids), comm, None)
        p = self.cluster.pods[pod]
        return Proc(p.node, next(self._pids), comm, p.container_id)

    def port(self) -> int:
        return next(self._ports)

    def ev(self, ts: int, proc: Proc, kind: str, syscall: str, fd: int, res: int, **kw) -> None:
        if res < 0 and "errno" not in kw:
            kw["errno"] = {-111: "ECONNREFUSED", -115: "EINPROGRESS", -110: "ETIMEDOUT"}[res]
        data = kw.get("data")
        if data is not None and kind in ("send", "recv") and "size" not in kw:
            kw["size"] = res
        fields = dict(pid=proc.pid, tid=proc.pid, comm=proc.comm, kind=kind, syscall=syscall, fd=fd, res=res,
                      container_id=proc.container_id, family="ipv4", **kw)
        self.drafts.append((ts, next(self._order), proc.node, fields))

    def events(self) -> list[SyscallEvent]:
        """All drafts in time order, numbered per node."""
        counters: dict[str, int] = {}
        out = []
        for ts, _o, node, f in sorted(self.drafts, key=lambda d: (d[0], d[1])):
            n = counters.get(node, 0) + 1
            counters[node] = n
            out.append(SyscallEvent(ts=ts, node=node, n=n, **f))
        return out

    # -- building blocks -------------------------------------------------------------

    def lookup(self, t: int, client: Proc, client_ip: str, qname: str, answers, resolver: str | None = None,
               server: bool = True, rcode: int = 0, answer: bool = True, qtype: str = "A", server_port: int = 53) -> int:
        """A UDP DNS lookup on a connected socket; returns the time it ended. `server_port`: the port the DNS pod
        listens on (kube-dns's targetPort: 5353 on OpenShift)."""
        resolver = resolver or self.cluster.dns_ip
        fd, port, qid = 3, self.port(), next(self._qid)
        q, a = dns_query(qname, qtype, qid), dns_answer(qname, qtype, qid, answers, rcode)
        c = dict(proto="udp", role="client", local_ip=client_ip, local_port=port, remote_ip=resolver, remote_port=53)
        self.ev(t, client, "connect", "connect", fd, 0, addr_ip=resolver, addr_port=53, **c)
        self.ev(t + 20 * US, client, "send", "sendto", fd, len(q), data=q, addr_ip=resolver, addr_port=53, **c)
        if server and resolver == self.cluster.dns_ip:
            dns_pod = self.cluster.pods["coredns"]
            srv = Proc(dns_pod.node, 700, "coredns", dns_pod.container_id)
            s = dict(proto="udp", role="server", local_ip=dns_pod.ip, local_port=server_port)
            self.ev(t + 150 * US, srv, "recv", "recvmsg", 6, len(q), data=q, remote_ip=client_ip, remote_port=port,
                    addr_ip=client_ip, addr_port=port, **s)
            if answer:
                self.ev(t + 300 * US, srv, "send", "sendmsg", 6, len(a), data=a, remote_ip=client_ip,
                        remote_port=port, addr_ip=client_ip, addr_port=port, **s)
        end = t + 500 * US
        if answer:
            self.ev(end, client, "recv", "recvfrom", fd, len(a), data=a, addr_ip=resolver, addr_port=53, **c)
        self.ev(end + 20 * US, client, "close", "close", fd, 0, **c)
        return end + 20 * US

    def udp_flow(self, t: int, *, connected: bool = False, received_by: str | None = "metrics-1", reply: bool = True,
                 error: str | None = None, close: bool = True, lookup: bool = True, socket_lb: bool = False) -> int:
        """The client pod resolves UDP_NAME (Cluster.add_udp_service) and sends one datagram to its ClusterIP
        (sendto; connected: connect, then send); `received_by` the pod that receives it (None: none), which
        answers if `reply`; `error`: what the client's socket reports next (an ICMP error: ECONNREFUSED); the client
        closes 1 ms after a reply, else 2 s after sending. `socket_lb`: the connect is rewritten to received_by's
        address and the targetPort (Cilium's socket-LB), so the socket's peer is the pod. Returns the client's
        port."""
        cl = self.cluster
        client = self.proc("client", "app")
        client_ip = cl.pods["client"].ip
        if lookup:
            t = self.lookup(t, client, client_ip, UDP_NAME, [UDP_VIP]) + 100 * US
        fd, port = 9, self.port()
        c = dict(proto="udp", role="client", local_ip=client_ip, local_port=port, remote_ip=UDP_VIP,
                 remote_port=UDP_PORT)
        if socket_lb:
            connected = True
            c.update(remote_ip=cl.pods[received_by].ip, remote_port=cl.services["metrics"].target_port)
        to = {} if connected else dict(addr_ip=UDP_VIP, addr_port=UDP_PORT)
        if connected:
            self.ev(t, client, "connect", "connect", fd, 0, addr_ip=UDP_VIP, addr_port=UDP_PORT, **c)
        self.ev(t + 10 * US, client, "send", "send" if connected else "sendto", fd, len(UDP_PAYLOAD), data=UDP_PAYLOAD,
                **to, **c)
        answered = reply and received_by is not None
        if received_by is not None:
            pod = cl.pods[received_by]
            srv = Proc(pod.node, 800, "statsd", pod.container_id)
            s = dict(proto="udp", role="server", local_ip=pod.ip, local_port=UDP_PORT, remote_ip=client_ip,
                     remote_port=port, addr_ip=client_ip, addr_port=port)
            self.ev(t + 200 * US, srv, "recv", "recvfrom", 4, len(UDP_PAYLOAD), data=UDP_PAYLOAD, **s)
            if reply:
                self.ev(t + 300 * US, srv, "send", "sendto", 4, len(UDP_REPLY), data=UDP_REPLY, **s)
        if answered:
            self.ev(t + 500 * US, client, "recv", "recvfrom", fd, len(UDP_REPLY), data=UDP_REPLY, **to, **c)
        if error is not None:
            self.ev(t + 400 * US, client, "recv", "recv", fd, -111, errno=error, **c)
        if close:
            self.ev(t + (MS if answered else 2 * S), client, "close", "close", fd, 0, **c)
        return port

    # -- a whole request -------------------------------------------------------------

    def request(self, t: int, fault: str = "healthy", client_pod: str = "client", backend: str | None = None,
                status: int = 200, qname: str = "my-nginx.default.svc.cluster.local", client: Proc | None = None) -> None:
        """curl http://my-nginx.default.svc.cluster.local:8080/ from client_pod at time t."""
        cl = self.cluster
        svc = cl.services["my-nginx"]
        if fault == "host_resolver":
            host = client or self.proc(None, "curl", node="node-a")
            host_ip = cl.nodes[host.node]
            t = self.lookup(t, host, host_ip, qname, [cl.foreign_ip], resolver=cl.host_resolver, server=False)
            port = self.port()
            c = dict(proto="tcp", role="client", local_ip=host_ip, local_port=port)
            self.ev(t + 100 * US, host, "connect", "connect", 3, -111, addr_ip=cl.foreign_ip, addr_port=svc.port,
                    remote_ip=cl.foreign_ip, remote_port=svc.port, **c)
            self.ev(t + 200 * US, host, "close", "close", 3, 0, **c)
            return
        pod = cl.pods[client_pod]
        curl = client or self.proc(client_pod, "curl")
        t = self.lookup(t, curl, pod.ip, qname, [svc.cluster_ip])
        eps = cl.backends("my-nginx")
        be = cl.pods[backend] if backend else (eps[0] if eps else None)
        cport = self.port()
        c = dict(proto="tcp", role="client", local_ip=pod.ip, local_port=cport)
        vip = dict(addr_ip=svc.cluster_ip, addr_port=svc.port)
        t += 200 * US
        mode = self.mode

        if fault == "rules_flushed":
            self.ev(t, curl, "connect", "connect", 4, -115, remote_ip=svc.cluster_ip, remote_port=svc.port, **vip, **c)
            self.ev(t + 127 * S, curl, "close", "close", 4, 0, **c)
            return

        if mode == "userspace":
            node_ip = cl.nodes[pod.node]
            kp = self.kube_proxy[pod.node]
            proxy_port = 39551
            pport = next(self.proxy_ports[pod.node]) if self.proxy_ports else self.port()
            fin, fout, fbe = next(self._fds), next(self._fds), next(self._fds)
            self.ev(t, curl, "connect", "connect", 4, -115, remote_ip=svc.cluster_ip, remote_port=svc.port, **vip, **c)
            pin = dict(proto="tcp", role="server", local_ip=node_ip, local_port=proxy_port, remote_ip=pod.ip,
                       remote_port=cport)
            self.ev(t + 60 * US, kp, "accept", "accept4", fin, fin, **pin)
            if fault == "no_endpoints":
                self.ev(t + 200 * US, curl, "send", "sendto", 4, len(REQUEST), data=REQUEST, **c)
                self.ev(t + 260 * US, kp, "close", "close", fin, 0, **pin)
                self.ev(t + 400 * US, curl, "recv", "recvfrom", 4, 0, **c)
                self.ev(t + 450 * US, curl, "close", "close", 4, 0, **c)
                return
            target = svc.target_port
            pout = dict(proto="tcp", role="client", local_ip=node_ip, local_port=pport)
            refused = fault == "wrong_port"
            self.ev(t + 100 * US, kp, "connect", "connect", fout, -111 if refused else -115, addr_ip=be.ip,
                    addr_port=target, remote_ip=be.ip, remote_port=target, **pout)
            self.ev(t + 200 * US, curl, "send", "sendto", 4, len(REQUEST), data=REQUEST, **c)
            if refused:
                self.ev(t + 220 * US, kp, "close", "close", fout, 0, **pout)
                self.ev(t + 260 * US, kp, "close", "close", fin, 0, **pin)
                self.ev(t + 400 * US, curl, "recv", "recvfrom", 4, 0, **c)
                self.ev(t + 450 * US, curl, "close", "close", 4, 0, **c)
                return
            self.ev(t + 250 * US, kp, "recv", "read", fin, len(REQUEST), data=REQUEST, **pin)
            self.ev(t + 270 * US, kp, "send", "write", fout, len(REQUEST), data=REQUEST, **pout)
            resp = RESPONSE_200 if status == 200 else RESPONSE_503
            nginx = Proc(be.node, 8000 + int(be.ip.rsplit(".", 1)[1]), "nginx", be.container_id)
            bsrv = dict(proto="tcp", role="server", local_ip=be.ip, local_port=target, remote_ip=node_ip,
                        remote_port=pport)
            self.ev(t + 300 * US, nginx, "accept", "accept4", fbe, fbe, **bsrv)
            self.ev(t + 400 * US, nginx, "recv", "recvfrom", fbe, len(REQUEST), data=REQUEST, **bsrv)
            self.ev(t + 600 * US, nginx, "send", "writev", fbe, len(resp), data=resp, **bsrv)
            self.ev(t + 700 * US, kp, "recv", "read", fout, len(resp), data=resp, **pout)
            self.ev(t + 720 * US, kp, "send", "write", fin, len(resp), data=resp, **pin)
            self.ev(t + 800 * US, curl, "recv", "recvfrom", 4, len(resp), data=resp, **c)
            self.ev(t + 900 * US, curl, "close", "close", 4, 0, **c)
            self.ev(t + 950 * US, kp, "close", "close", fin, 0, **pin)
            self.ev(t + 960 * US, kp, "close", "close", fout, 0, **pout)
            self.ev(t + 1000 * US, nginx, "close", "close", fbe, 0, **bsrv)
            return

        # DNAT and socket-LB: the backend accepts the client's own ip:port.
        if fault == "no_endpoints":
            remote = svc.cluster_ip
            self.ev(t, curl, "connect", "connect", 4, -111, remote_ip=remote, remote_port=svc.port, **vip, **c)
            self.ev(t + 50 * US, curl, "close", "close", 4, 0, **c)
            return
        target = svc.target_port
        if mode == "socket_lb":
            remote, rport = be.ip, target  # rewritten inside connect()
        else:
            remote, rport = svc.cluster_ip, svc.port  # the socket keeps the VIP
        if fault == "wrong_port":
            self.ev(t, curl, "connect", "connect", 4, -111, remote_ip=remote, remote_port=rport, **vip, **c)
            self.ev(t + 50 * US, curl, "close", "close", 4, 0, **c)
            return
        resp = RESPONSE_200 if status == 200 else RESPONSE_503
        nginx = Proc(be.node, 8000 + int(be.ip.rsplit(".", 1)[1]), "nginx", be.container_id)
        fbe = next(self._fds)
        bsrv = dict(proto="tcp", role="server", local_ip=be.ip, local_port=target, remote_ip=pod.ip, remote_port=cport)
        self.ev(t, curl, "connect", "connect", 4, -115, remote_ip=remote, remote_port=rport, **vip, **c)
        self.ev(t + 150 * US, nginx, "accept", "accept4", fbe, fbe, **bsrv)
        self.ev(t + 200 * US, curl, "send", "sendto", 4, len(REQUEST), data=REQUEST, **c)
        self.ev(t + 300 * US, nginx, "recv", "recvfrom", fbe, len(REQUEST), data=REQUEST, **bsrv)
        self.ev(t + 500 * US, nginx, "send", "writev", fbe, len(resp), data=resp, **bsrv)
        self.ev(t + 650 * US, curl, "recv", "recvfrom", 4, len(resp), data=resp, **c)
        self.ev(t + 700 * US, curl, "close", "close", 4, 0, **c)
        self.ev(t + 800 * US, nginx, "close", "close", fbe, 0, **bsrv)


    def keepalive(self, t: int, statuses=(200, 503), client_pod: str = "client", backend: str = "my-nginx-2",
                  response_delay_ns: int = 200 * US) -> None:
        """Several requests on one DNAT'd keep-alive connection (no DNS: the name was cached)."""
        cl = self.cluster
        svc, pod, be = cl.services["my-nginx"], cl.pods[client_pod], cl.pods[backend]
        curl = self.proc(client_pod, "python")
        nginx = Proc(be.node, 8000 + int(be.ip.rsplit(".", 1)[1]), "nginx", be.container_id)
        fbe = next(self._fds)
        cport = self.port()
        c = dict(proto="tcp", role="client", local_ip=pod.ip, local_port=cport)
        bsrv = dict(proto="tcp", role="server", local_ip=be.ip, local_port=svc.target_port, remote_ip=pod.ip,
                    remote_port=cport)
        self.ev(t, curl, "connect", "connect", 4, 0, addr_ip=svc.cluster_ip, addr_port=svc.port,
                remote_ip=svc.cluster_ip, remote_port=svc.port, **c)
        self.ev(t + 100 * US, nginx, "accept", "accept4", fbe, fbe, **bsrv)
        for i, status in enumerate(statuses):
            ti = t + (i + 1) * MS
            resp = RESPONSE_200 if status == 200 else RESPONSE_503
            self.ev(ti, curl, "send", "sendto", 4, len(REQUEST), data=REQUEST, **c)
            self.ev(ti + 100 * US, nginx, "recv", "recvfrom", fbe, len(REQUEST), data=REQUEST, **bsrv)
            self.ev(ti + 100 * US + response_delay_ns, nginx, "send", "writev", fbe, len(resp), data=resp, **bsrv)
            self.ev(ti + 200 * US + response_delay_ns, curl, "recv", "recvfrom", 4, len(resp), data=resp, **c)
        tend = t + (len(statuses) + 1) * MS + response_delay_ns
        self.ev(tend, curl, "close", "close", 4, 0, **c)
        self.ev(tend + 100 * US, nginx, "close", "close", fbe, 0, **bsrv)

    def host_request(self, t: int, via: str = "vip", node_port: int = 30080) -> None:
        """A host process on node-a (no pod) calls my-nginx: via its ClusterIP (DNAT then SNAT to the
        node's IP, source port kept) or via node-b's NodePort (SNAT to node-b's IP, new port)."""
        cl = self.cluster
        svc, be = cl.services["my-nginx"], cl.pods["my-nginx-2"]
        host = self.proc(None, "wget", node="node-a")
        hip, cport = cl.nodes["node-a"], self.port()
        if via == "vip":
            target, tport, seen_ip, seen_port = svc.cluster_ip, svc.port, hip, cport
        else:
            target, tport, seen_ip, seen_port = cl.nodes["node-b"], node_port, cl.nodes["node-b"], self.port()
        c = dict(proto="tcp", role="client", local_ip=hip, local_port=cport)
        nginx = Proc(be.node, 8008, "nginx", be.container_id)
        fbe = next(self._fds)
        b = dict(proto="tcp", role="server", local_ip=be.ip, local_port=svc.target_port, remote_ip=seen_ip,
                 remote_port=seen_port)
        self.ev(t, host, "connect", "connect", 3, 0, addr_ip=target, addr_port=tport, remote_ip=target,
                remote_port=tport, **c)
        self.ev(t + 100 * US, nginx, "accept", "accept4", fbe, fbe, **b)
        self.ev(t + 200 * US, host, "send", "write", 3, len(REQUEST), data=REQUEST, **c)
        self.ev(t + 300 * US, nginx, "recv", "read", fbe, len(REQUEST), data=REQUEST, **b)
        self.ev(t + 400 * US, nginx, "send", "writev", fbe, len(RESPONSE_200), data=RESPONSE_200, **b)
        self.ev(t + 500 * US, host, "recv", "read", 3, len(RESPONSE_200), data=RESPONSE_200, **c)
        self.ev(t + 600 * US, host, "close", "close", 3, 0, **c)
        self.ev(t + 700 * US, nginx, "close", "close", fbe, 0, **b)

    def loss(self, t: int, node: str, count: int = 10, since: int | None = None) -> None:
        """A loss marker: `count` events were dropped at t on node (`since`: in the window since..t,
        as a live agent says it: from its previous drain to the one that noticed)."""
        self.drafts.append((t, next(self._order), node, dict(pid=0, tid=0, comm="", kind="lost", syscall="drop",
                                                             fd=-1, res=count, lost_since_ns=since)))


def renumber(events) -> list[SyscallEvent]:
    """Events (in the order given) numbered again per node from 1, as one capture numbers them:
    (node, n) is an event's identity and chain ids derive from it, so scenarios put one after
    another, or events added to one, need numbering across all of them."""
    counters: dict[str, int] = {}
    out = []
    for e in events:
        n = counters[e.node] = counters.get(e.node, 0) + 1
        out.append(e.with_(n=n))
    return out


STEADY_CLIENTS = 16  # client pods per part of steady_traffic
EPHEMERAL_PORTS = range(32768, 61000)  # Linux's default ip_local_port_range: a client pod's own ports
PROXY_PORTS = range(1024, 65536)  # a userspace proxy's dials on a node (a widened ip_local_port_range)


def steady_cluster() -> Cluster:
    """steady_traffic's cluster: the seed's, with STEADY_CLIENTS client pods per part of the traffic (spread over
    both nodes), as a fleet sending that many requests has; bench.worker_steady publishes its records."""
    cluster = Cluster()
    for k in range(len(MODES) + 1):
        for j in range(STEADY_CLIENTS):
            i = k * STEADY_CLIENTS + j
            node, subnet = (("node-a", 1), ("node-b", 2))[i % 2]
            name = f"client-{k}-{j}"
            cluster.pods[name] = Pod(name, f"10.244.{subnet}.{100 + i // 2}", node, labels={"run": "client"},
                                     container_id=f"c11e47{i + 2:06x}")
    return cluster


def steady_traffic(rate: float, seconds: float, start_ns: int) -> tuple[Cluster, list[SyscallEvent], int]:
    """bench.core_runner.traffic's mix ("mixed") at `rate` events/s for `seconds` from `start_ns`, its parts
    side by side in time (there they follow each other): a live stream (bench.worker_steady publishes it;
    tests/test_core_checkpoint_parts checkpoints and restores it). As a fleet's: each part's requests come from
    STEADY_CLIENTS client pods of its own in turn (steady_cluster), each pod with its own ephemeral ports and each
    node's userspace proxy with its own dial ports, so that no connection identity comes back within ~140 s at
    100k events/s (a proxy's dial ports: ~80 s), past any state the stitch stage keeps of one (a connection
    with no close seen waits its 30 s idle timeout). Parts get pids and DNS ids of their own. Returns the cluster,
    the events in time order numbered per node, and the number of requests."""
    cluster = steady_cluster()
    # the mix's events per request: curl-like 50/3 (DNS lookup + request, over the three modes), keep-alive 4.4
    requests = int(rate * seconds / ((50 / 3 + 4.4) / 2))
    curl = requests // 2
    per_mode, conns = curl // len(MODES), (requests - curl) // 10
    events = []
    parts = [Scenario(cluster, mode) for mode in MODES] + [Scenario(cluster, "dnat")]
    proxy_ports = {node: itertools.cycle(PROXY_PORTS) for node in cluster.nodes}
    clients = [[f"client-{k}-{j}" for j in range(STEADY_CLIENTS)] for k in range(len(parts))]
    ports = {name: itertools.cycle(EPHEMERAL_PORTS) for names in clients for name in names}
    for k, sc in enumerate(parts):
        sc._pids = itertools.count(5000 + k * 1_000_000)
        sc._qid = itertools.cycle(range(1 + k * 16_000, (k + 1) * 16_000))
        sc.proxy_ports = proxy_ports
    for m in range(len(MODES)):
        gap = seconds * S / max(1, per_mode)
        sc, names = parts[m], clients[m]
        for i in range(per_mode):
            pod = names[i % STEADY_CLIENTS]
            sc._ports = ports[pod]
            backend = "my-nginx-1" if (i // STEADY_CLIENTS) % 2 else "my-nginx-2"
            sc.request(start_ns + int(i * gap), "healthy", client_pod=pod, backend=backend)
    gap = seconds * S / max(1, conns)
    sc, names = parts[-1], clients[-1]
    for i in range(conns):
        pod = names[i % STEADY_CLIENTS]
        sc._ports = ports[pod]
        sc.keepalive(start_ns + int(i * gap), statuses=(200,) * 9 + (503,), client_pod=pod)
    for sc in parts:
        events += sc.events()
    return cluster, renumber(sorted(events, key=lambda e: e.ts)), per_mode * len(MODES) + conns * 10


def build(fault: str = "healthy", mode: str = "dnat", requests: int = 1, gap_ns: int = 5 * MS,
          start: int = T0) -> tuple[Cluster, list[SyscallEvent]]:
    cluster = Cluster(fault)
    sc = Scenario(cluster, mode)
    for i in range(requests):
        sc.request(start + i * gap_ns, fault)
    return cluster, sc.events()
