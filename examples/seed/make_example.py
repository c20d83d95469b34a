"""Build the bundled example: the seed article's scenario as a .scap capture plus cluster state.

The scenario is "A Sysdig + Kubernetes adventure" (2015) replayed on one node, kube-proxy in
userspace mode (netfilter REDIRECT to the `hyperkube` proxy process):

1. healthy, twice: curl in pod default/client-wd32o resolves my-nginx.default.svc.cluster.local
   through the cluster DNS (skydns behind the kube-dns ClusterIP), connects to the ClusterIP
   10.0.0.159:8080, the proxy accepts, dials an nginx pod on targetPort 80 and copies the bytes;
   nginx answers 200. The two requests land on the two nginx pods.
2. Part 2, fault 1 (wrong targetPort): Service my-nginx-legacy was created without
   --target-port, so targetPort defaulted to 8080; the proxy's dial to pod:8080 is refused and
   curl gets an empty reply ("curl: (52) Empty reply from server").
3. Part 2, fault 2 (no endpoints): Service my-nginx-typo selects run=my-nginxx, which no pod
   carries; the proxy accepts and closes at once, again an empty reply.
4. Part 2, fault 3 (firewall misconfiguration): a script flushed the nat table, so the
   REDIRECT rule for the ClusterIP is gone; curl's connect to 10.0.0.159:8080 goes out
   untranslated, nothing accepts it, and curl gives up after the kernel's SYN retries
   ("curl: (7) ... Connection timed out" after minutes).
5. Part 2, fault 4 (wrong resolver): curl on the node itself asks the provider's resolver,
   which answers the cluster name with an address that is no Service; the connect is refused.

The capture also carries the cluster state, as K8S events the way sysdig embedded it, so
`svctrace analyze capture.scap` works without `--cluster` too.

Run from the repository root: `python examples/seed/make_example.py` rewrites
`examples/seed/capture.scap` and `examples/seed/cluster.json`. Output is byte-for-byte
deterministic (fixed timestamps, ids and DNS ids); a test regenerates it and compares.
"""
from __future__ import annotations

import argparse
import hashlib
import json
from dataclasses import dataclass
from pathlib import Path

import dns.flags
import dns.message
import dns.rrset

from svctrace.agents.scap import ScapWriter
from svctrace.schemas.models import SyscallEvent

HERE = Path(__file__).resolve().parent
NODE = "node-a"
NODE_IP = "172.16.189.128"  # the VM's address on the provider network
BRIDGE_IP = "172.17.0.1"  # docker0: where REDIRECT delivers, the proxy's outbound source
PROVIDER_DNS = "172.16.189.2"
PROXY_PORT = 39551  # the port kube-proxy (userspace) listens on for my-nginx*
# 2015-11-05 23:40:58.352366394 UTC: the first event of the article's trace.
T0 = 1446766858_352366394
MS = 1_000_000
US = 1_000


def container_id(name: str) -> str:
    """A stable, docker-like 64-hex container id."""
    return hashlib.sha256(f"svctrace-seed/{name}".encode()).hexdigest()


@dataclass(frozen=True)
class Proc:
    pid: int
    comm: str
    exe: str
    ip: str
    container: str | None = None  # container name -> id; None for host processes

    @property
    def container_id(self) -> str | None:
        return container_id(self.container)[:12] if self.container else None


# --- cluster: one node, the article's pods and services ------------------------------------
PODS = [
    # namespace, name, ip, labels, container, image, container port
    ("default", "client-wd32o", "172.17.0.8", {"run": "client"}, "client", "tutum/curl", None),
    ("default", "my-nginx-3800858182-h9v8d", "172.17.0.6", {"run": "my-nginx"}, "my-nginx", "nginx", 80),
    ("default", "my-nginx-3800858182-jlz4r", "172.17.0.7", {"run": "my-nginx"}, "my-nginx", "nginx", 80),
    ("kube-system", "kube-dns-v9-8s2ta", "172.17.0.3", {"k8s-app": "kube-dns"}, "skydns", "skydns", 53),
]
SERVICES = [
    # namespace, name, cluster ip, selector, [(port name, port, protocol, targetPort)]
    ("default", "kubernetes", "10.0.0.1", None, [("https", 443, "TCP", 6443)]),
    ("default", "my-nginx", "10.0.0.159", {"run": "my-nginx"}, [(None, 8080, "TCP", 80)]),
    ("default", "my-nginx-legacy", "10.0.0.160", {"run": "my-nginx"}, [(None, 8080, "TCP", 8080)]),
    ("default", "my-nginx-typo", "10.0.0.161", {"run": "my-nginxx"}, [(None, 8080, "TCP", 80)]),
    ("kube-system", "kube-dns", "10.0.0.10", {"k8s-app": "kube-dns"}, [("dns", 53, "UDP", 53), ("dns-tcp", 53, "TCP", 53)]),
]
CREATED = "2015-11-05T23:31:40Z"


def uid(kind: str, namespace: str, name: str) -> str:
    h = hashlib.sha256(f"{kind}/{namespace}/{name}".encode()).hexdigest()
    return f"{h[:8]}-{h[8:12]}-{h[12:16]}-{h[16:20]}-{h[20:32]}"


def _meta(kind: str, namespace: str | None, name: str, rv: int, labels: dict | None = None) -> dict:
    meta = {"creationTimestamp": CREATED, "name": name}
    if namespace is not None:
        meta["namespace"] = namespace
    if labels:
        meta["labels"] = dict(labels)
    meta["resourceVersion"] = str(rv)
    meta["uid"] = uid(kind, namespace or "", name)
    return meta


def _selects(selector: dict | None, labels: dict) -> bool:
    return bool(selector) and all(labels.get(k) == v for k, v in selector.items())


def cluster_list() -> dict:
    """The cluster as `kubectl get pods,services,endpointslices,nodes -A -o json` prints it."""
    items: list[dict] = []
    rv = 100
    for ns, name, ip, labels, cname, image, port in PODS:
        rv += 1
        container = {"image": image, "imagePullPolicy": "Always", "name": cname}
        if port:
            container["ports"] = [{"containerPort": port, "protocol": "UDP" if port == 53 else "TCP"}]
        items.append({
            "apiVersion": "v1",
            "kind": "Pod",
            "metadata": _meta("Pod", ns, name, rv, labels),
            "spec": {"containers": [container], "dnsPolicy": "ClusterFirst", "nodeName": NODE},
            "status": {
                "conditions": [{"status": "True", "type": "Ready"}],
                "containerStatuses": [{
                    "containerID": f"docker://{container_id(name)}",
                    "image": image, "name": cname, "ready": True, "restartCount": 0,
                }],
                "hostIP": NODE_IP,
                "phase": "Running",
                "podIP": ip,
                "podIPs": [{"ip": ip}],
            },
        })
    for ns, name, cip, selector, ports in SERVICES:
        rv += 1
        spec_ports = []
        for pname, port, proto, target in ports:
            p = {"port": port, "protocol": proto, "targetPort": target}
            if pname:
                p = {"name": pname, **p}
            spec_ports.append(p)
        spec = {"clusterIP": cip, "clusterIPs": [cip], "ports": spec_ports, "sessionAffinity": "None", "type": "ClusterIP"}
        if selector:
            spec["selector"] = dict(selector)
        items.append({"apiVersion": "v1", "kind": "Service", "metadata": _meta("Service", ns, name, rv), "spec": spec})
    for ns, name, cip, selector, ports in SERVICES:
        if selector is None:
            backends = [("", NODE_IP, None)]
        else:
            backends = [(pns, pip, pname) for pns, pname, pip, labels, *_ in PODS if pns == ns and _selects(selector, labels)]
        rv += 1
        slice_name = f"{name}-{uid('EndpointSlice', ns, name)[:5]}"
        labels = {"endpointslice.kubernetes.io/managed-by": "endpointslice-controller.k8s.io", "kubernetes.io/service-name": name}
        endpoints = []
        for pns, pip, pname in backends:
            ep = {"addresses": [pip], "conditions": {"ready": True, "serving": True, "terminating": False}, "nodeName": NODE}
            if pname:
                ep["targetRef"] = {"kind": "Pod", "name": pname, "namespace": pns, "uid": uid("Pod", pns, pname)}
            endpoints.append(ep)
        items.append({
            "addressType": "IPv4",
            "apiVersion": "discovery.k8s.io/v1",
            "endpoints": endpoints,
            "kind": "EndpointSlice",
            "metadata": _meta("EndpointSlice", ns, slice_name, rv, labels),
            "ports": [{"name": pname or "", "port": target, "protocol": proto} for pname, _, proto, target in ports],
        })
    rv += 1
    items.append({
        "apiVersion": "v1",
        "kind": "Node",
        "metadata": _meta("Node", None, NODE, rv, {"kubernetes.io/hostname": NODE}),
        "spec": {"podCIDR": "172.17.0.0/16", "podCIDRs": ["172.17.0.0/16"]},
        "status": {"addresses": [{"address": NODE_IP, "type": "InternalIP"}, {"address": NODE, "type": "Hostname"}]},
    })
    return {"apiVersion": "v1", "items": items, "kind": "List", "metadata": {"resourceVersion": ""}}


# --- processes ---------------------------------------------------------------------------
SKYDNS = Proc(40700, "skydns", "/skydns", "172.17.0.3", "kube-dns-v9-8s2ta")
PROXY = Proc(39579, "hyperkube", "/hyperkube", BRIDGE_IP)
NGINX = {
    "172.17.0.6": Proc(40473, "nginx", "/usr/sbin/nginx", "172.17.0.6", "my-nginx-3800858182-h9v8d"),
    "172.17.0.7": Proc(40512, "nginx", "/usr/sbin/nginx", "172.17.0.7", "my-nginx-3800858182-jlz4r"),
}
CLIENT_IP = "172.17.0.8"


def curl_in_pod(pid: int) -> Proc:
    return Proc(pid, "curl", "/usr/bin/curl", CLIENT_IP, "client-wd32o")


HOST_CURL = Proc(52210, "curl", "/usr/bin/curl", NODE_IP)

NGINX_BODY = (
    b"<!DOCTYPE html>\n<html>\n<head>\n<title>Welcome to nginx!</title>\n<style>\n    body {\n"
    b"        width: 35em;\n        margin: 0 auto;\n        font-family: Tahoma, Verdana, Arial, sans-serif;\n"
    b"    }\n</style>\n</head>\n<body>\n<h1>Welcome to nginx!</h1>\n<p>If you see this page, the nginx web server is "
    b"successfully installed and\nworking. Further configuration is required.</p>\n\n<p>For online documentation "
    b"and support please refer to\n<a href=\"http://nginx.org/\">nginx.org</a>.<br/>\nCommercial support is "
    b"available at\n<a href=\"http://nginx.com/\">nginx.com</a>.</p>\n\n<p><em>Thank you for using nginx.</em></p>\n"
    b"</body>\n</html>\n"
)


def http_request(host: str) -> bytes:
    return f"GET / HTTP/1.1\r\nUser-Agent: curl/7.35.0\r\nHost: {host}\r\nAccept: */*\r\n\r\n".encode()


def http_response() -> bytes:
    head = (
        "HTTP/1.1 200 OK\r\nServer: nginx/1.9.6\r\nDate: Thu, 05 Nov 2015 23:40:58 GMT\r\n"
        "Content-Type: text/html\r\nContent-Length: %d\r\nLast-Modified: Tue, 27 Oct 2015 15:07:04 GMT\r\n"
        "Connection: keep-alive\r\nETag: \"562f9368-264\"\r\nAccept-Ranges: bytes\r\n\r\n" % len(NGINX_BODY)
    )
    return head.encode() + NGINX_BODY


def dns_pair(qname: str, answer_ip: str, qid: int) -> tuple[bytes, bytes]:
    query = dns.message.make_query(qname, "A", use_edns=False, id=qid)
    response = dns.message.make_response(query)
    response.flags |= dns.flags.AA
    response.answer.append(dns.rrset.from_text(qname, 30, "IN", "A", answer_ip))
    return query.to_wire(), response.to_wire()


# --- the scenario as a list of steps ------------------------------------------------------
class Scenario:
    """Collects events; `at` is nanoseconds after T0."""

    def __init__(self) -> None:
        self.events: list[SyscallEvent] = []

    def add(self, at: int, proc: Proc, kind: str, syscall: str, fd: int, res: int, *, tid: int | None = None, **fields) -> None:
        errno = fields.pop("errno", None)
        data = fields.pop("data", None)
        if data is not None:
            fields["data"] = data
            fields.setdefault("size", len(data))
        self.events.append(SyscallEvent(
            ts=T0 + at, node=NODE, n=0, pid=proc.pid, tid=tid or proc.pid, comm=proc.comm, kind=kind,
            syscall=syscall, fd=fd, res=res, errno=errno, exe=proc.exe, container_id=proc.container_id,
            **fields,
        ))

    def lookup(self, at: int, client: Proc, resolver: str, qname: str, answer: str, qid: int, sport: int,
               server: Proc | None, tid: int | None = None) -> int:
        """UDP lookup: connect + sendto, the server's recvmsg/sendmsg when it is ours, recvfrom. Returns the end."""
        query, reply = dns_pair(qname, answer, qid)
        udp = dict(proto="udp", family="ipv4", role="client", local_ip=client.ip, local_port=sport)
        peer = dict(remote_ip=resolver, remote_port=53)
        self.add(at, client, "socket", "socket", 3, 3, tid=tid, proto="udp", family="ipv4")
        self.add(at + 9 * US, client, "connect", "connect", 3, 0, tid=tid, addr_ip=resolver, addr_port=53, **udp, **peer)
        self.add(at + 40 * US, client, "send", "sendto", 3, len(query), tid=tid, data=query, **udp, **peer)
        if server is not None:
            srv = dict(proto="udp", family="ipv4", role="server", local_ip="0.0.0.0", local_port=53,
                       remote_ip=client.ip, remote_port=sport, addr_ip=client.ip, addr_port=sport)
            self.add(at + 202 * US, server, "recv", "recvmsg", 6, len(query), data=query, **srv)
            self.add(at + 655 * US, server, "send", "sendmsg", 6, len(reply), data=reply, **srv)
        self.add(at + 702 * US, client, "recv", "recvfrom", 3, len(reply), tid=tid, data=reply,
                 addr_ip=resolver, addr_port=53, **udp, **peer)
        self.add(at + 720 * US, client, "close", "close", 3, 0, tid=tid, **udp, **peer)
        return at + 720 * US

    def request_via_proxy(self, at: int, client: Proc, vip: str, host: str, sport: int, proxy_fd: int,
                          backend_ip: str | None, backend_port: int | None, proxy_sport: int, refused: bool = False) -> None:
        """curl -> VIP:8080, REDIRECTed to the userspace proxy, which dials the backend (or has none)."""
        req, resp = http_request(host), http_response()
        cli = dict(proto="tcp", family="ipv4", role="client", local_ip=client.ip, local_port=sport, remote_ip=vip, remote_port=8080)
        acc = dict(proto="tcp", family="ipv4", role="server", local_ip=BRIDGE_IP, local_port=PROXY_PORT,
                   remote_ip=client.ip, remote_port=sport)
        self.add(at, client, "socket", "socket", 3, 3, proto="tcp", family="ipv4")
        self.add(at + 3 * US, client, "connect", "connect", 3, -115, errno="EINPROGRESS", addr_ip=vip, addr_port=8080, **cli)
        self.add(at + 95 * US, PROXY, "accept", "accept4", proxy_fd, proxy_fd, **acc)
        self.add(at + 854 * US, client, "send", "sendto", 3, len(req), data=req, **cli)
        if backend_ip is None:  # no endpoints: the proxy has nowhere to send the connection
            self.add(at + 1010 * US, PROXY, "close", "close", proxy_fd, 0, **acc)
            self.add(at + 1102 * US, client, "recv", "recvfrom", 3, 0, size=0, **cli)
            self.add(at + 1130 * US, client, "close", "close", 3, 0, **cli)
            return
        self.add(at + 1010 * US, PROXY, "recv", "read", proxy_fd, len(req), data=req, **acc)
        out_fd = proxy_fd + 1
        out = dict(proto="tcp", family="ipv4", role="client", local_ip=BRIDGE_IP, local_port=proxy_sport,
                   remote_ip=backend_ip, remote_port=backend_port)
        self.add(at + 1013 * US, PROXY, "socket", "socket", out_fd, out_fd, proto="tcp", family="ipv4")
        if refused:
            self.add(at + 1019 * US, PROXY, "connect", "connect", out_fd, -111, errno="ECONNREFUSED",
                     addr_ip=backend_ip, addr_port=backend_port, **out)
            self.add(at + 1061 * US, PROXY, "close", "close", out_fd, 0, **out)
            self.add(at + 1075 * US, PROXY, "close", "close", proxy_fd, 0, **acc)
            self.add(at + 1133 * US, client, "recv", "recvfrom", 3, 0, size=0, **cli)
            self.add(at + 1160 * US, client, "close", "close", 3, 0, **cli)
            return
        nginx = NGINX[backend_ip]
        srv = dict(proto="tcp", family="ipv4", role="server", local_ip=backend_ip, local_port=backend_port,
                   remote_ip=BRIDGE_IP, remote_port=proxy_sport)
        self.add(at + 1019 * US, PROXY, "connect", "connect", out_fd, 0, addr_ip=backend_ip, addr_port=backend_port, **out)
        self.add(at + 1029 * US, PROXY, "send", "write", out_fd, len(req), data=req, **out)
        self.add(at + 1540 * US, nginx, "accept", "accept4", 3, 3, **srv)
        self.add(at + 2013 * US, nginx, "recv", "recvfrom", 3, len(req), data=req, **srv)
        self.add(at + 2270 * US, nginx, "send", "writev", 3, len(resp), data=resp, **srv)
        self.add(at + 2388 * US, PROXY, "recv", "read", out_fd, len(resp), data=resp, **out)
        self.add(at + 2401 * US, PROXY, "send", "write", proxy_fd, len(resp), data=resp, **acc)
        self.add(at + 2560 * US, client, "recv", "recvfrom", 3, len(resp), data=resp, **cli)
        self.add(at + 2702 * US, client, "close", "close", 3, 0, **cli)
        self.add(at + 2760 * US, PROXY, "close", "close", proxy_fd, 0, **acc)
        self.add(at + 2771 * US, PROXY, "close", "close", out_fd, 0, **out)
        self.add(at + 2841 * US, nginx, "close", "close", 3, 0, **srv)


def scenario_events() -> list[SyscallEvent]:
    s = Scenario()
    kube_dns = "10.0.0.10"
    # (start, curl pid, service, ClusterIP, DNS id, DNS port, client port, backend, backend port, refused)
    requests = [
        (0, 51151, "my-nginx", "10.0.0.159", 0x0942, 40366, 50950, "172.17.0.6", 80, False),
        (1000 * MS, 51190, "my-nginx", "10.0.0.159", 0x1f3a, 40371, 50962, "172.17.0.7", 80, False),
        (2000 * MS, 51230, "my-nginx-legacy", "10.0.0.160", 0x5c21, 40388, 50974, "172.17.0.7", 8080, True),
        (3000 * MS, 51270, "my-nginx-typo", "10.0.0.161", 0x6d02, 40397, 50986, None, None, False),
    ]
    for i, (start, pid, svc, vip, qid, dport, sport, backend, bport, refused) in enumerate(requests):
        curl = curl_in_pod(pid)
        qname = f"{svc}.default.svc.cluster.local."
        # curl resolves on a helper thread (the article shows pid 51152 for the lookup).
        end = s.lookup(start, curl, kube_dns, qname, vip, qid, dport, SKYDNS, tid=pid + 1)
        s.request_via_proxy(end + 3634 * US, curl, vip, f"{qname[:-1]}:8080", sport, 10 + 2 * i,
                            backend, bport, 41230 + i, refused=refused)
    # Part 2, fault 3: the nat table was flushed. curl goes to the ClusterIP directly (the lookup
    # would need the kube-dns ClusterIP, which is just as untranslated): the SYN leaves
    # untranslated, nobody accepts, and after the kernel's SYN retries (~127 s) curl closes.
    curl = curl_in_pod(51310)
    cli = dict(proto="tcp", family="ipv4", role="client", local_ip=CLIENT_IP, local_port=50998,
               remote_ip="10.0.0.159", remote_port=8080)
    s.add(4000 * MS, curl, "socket", "socket", 3, 3, proto="tcp", family="ipv4")
    s.add(4000 * MS + 4 * US, curl, "connect", "connect", 3, -115, errno="EINPROGRESS", addr_ip="10.0.0.159",
          addr_port=8080, **cli)
    s.add(4000 * MS + 127 * 1000 * MS, curl, "close", "close", 3, 0, **cli)
    # Part 2, fault 4: on the node itself, resolv.conf points at the provider's resolver.
    start = 5000 * MS
    qname = "my-nginx.default.svc.cluster.local."
    end = s.lookup(start, HOST_CURL, PROVIDER_DNS, qname, "172.30.0.1", 0x7a44, 48811, None, tid=HOST_CURL.pid + 1)
    cli = dict(proto="tcp", family="ipv4", role="client", local_ip=NODE_IP, local_port=51002, remote_ip="172.30.0.1", remote_port=8080)
    s.add(end + 3100 * US, HOST_CURL, "socket", "socket", 3, 3, proto="tcp", family="ipv4")
    s.add(end + 3104 * US, HOST_CURL, "connect", "connect", 3, -111, errno="ECONNREFUSED", addr_ip="172.30.0.1", addr_port=8080, **cli)
    s.add(end + 3150 * US, HOST_CURL, "close", "close", 3, 0, **cli)

    events = sorted(s.events, key=lambda e: e.ts)
    return [e.with_(n=i + 1) for i, e in enumerate(events)]


K8S_E = 260  # PPME_K8S_E: cluster state as JSON, as sysdig wrote it when run with Kubernetes support
META_TID = -1  # meta events carry no thread


def write(out_dir: Path) -> tuple[Path, Path]:
    """capture.scap (the cluster state embedded up front, then the syscalls) and cluster.json."""
    out_dir.mkdir(parents=True, exist_ok=True)
    capture, cluster = out_dir / "capture.scap", out_dir / "cluster.json"
    state = cluster_list()
    with ScapWriter(capture, hostname=NODE) as writer:
        for i, obj in enumerate(state["items"]):  # one watch event per object, observed 1 s before the trace
            doc = json.dumps({"type": "ADDED", "object": obj}, separators=(",", ":"), sort_keys=True)
            writer.write_raw(T0 - 1_000_000_000 + i, META_TID, K8S_E, {"json": doc})
        for event in scenario_events():
            writer.write_event(event)
    cluster.write_text(json.dumps(state, indent=4) + "\n")
    return capture, cluster


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=HERE, help="output folder (default: next to this script)")
    args = parser.parse_args(argv)
    for path in write(args.out):
        print(path)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
