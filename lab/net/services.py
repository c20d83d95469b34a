"""The lab's cluster: one Service per kube-proxy mode and per fault of the seed article, requested
by curl in a pod and captured live with eBPF (root).

    events, curls = record(workdir)   # SyscallEvents of the lab's namespaces, curl results by case
    with running(workdir) as lab:     # or: the lab serving, for another capture
        curls = lab.ask(["my-nginx"])

One node (netlab.NetLab), no route out. A DNS pod serves the cluster domain behind the kube-dns
ClusterIP (dns_server.py); pods resolve with kubelet's search list and ndots:5. nginx serves
my-nginx. The cases:

* iptables DNAT to the nginx pod (kube-proxy's iptables mode): healthy, and a targetPort nothing
  listens on; and the same through kube-proxy's nftables mode (its own table and verdict map);
* the userspace proxy of the seed's time (userspace_proxy.py, a node process): healthy, and its
  dial refused;
* socket-level load balancing (socklb.py: the client's connect goes to the pod itself), and the same
  to a port the pod's netns drops (a NetworkPolicy as a CNI enforces it);
* rules flushed (the SYN to the ClusterIP vanishes), and a Service without endpoints (kube-proxy's
  REJECT);
* another pod whose resolver is the node's, answering my-nginx with an address that is no Service;
* stale rules: kube-proxy still sends the Service to a pod its EndpointSlice no longer lists;
* nginx answering 503 behind a Service;
* a name that does not exist (NXDOMAIN for every search expansion);
* a pod whose first DNS query is dropped on the node (the conntrack race's signature: glibc asks
  again after its 5 s timeout);
* the nginx pod requesting its own Service (hairpin: kube-proxy masquerades it, the backend sees
  the node's address);
* three requests on one keep-alive connection, through DNAT and through the userspace proxy;
* a name whose UDP answer is truncated: the resolver asks again over TCP;
* a Go client (goclient/: net/http and Go's own resolver, no glibc) requesting my-nginx;
* an IPv6 Service (the client and nginx are dual-stack; ip6tables DNAT; the name has an AAAA);
* a Service whose targetPort is a container port's name, and a headless Service (the name
  resolves to the pod itself);
* a NodePort Service, requested by a process on the node at the node's address (kube-proxy's
  KUBE-NODEPORTS: DNAT, then masquerade);
* a web pod whose bridge port has no hairpin mode requesting its own Service: the DNAT'd frame
  would have to leave by the port it came in on, and the bridge drops it;
* UDP Services (udp_service.py: a statsd-like server in the nginx pod answering each datagram, a client
  on a connected socket): answered through DNAT, a targetPort nothing listens on (the pod's ICMP port
  unreachable), a Service without endpoints (kube-proxy's REJECT), one without rules, and one through
  socket-LB (the connected socket's connect rewritten to the pod).

`cluster_list()` is the matching state as `kubectl get ... -o json` prints it.
"""
from __future__ import annotations

import os
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterator

from .goclient import build as build_goclient
from .netlab import NetLab
from .socklb import SocketLB, remove_cgroup

REPO = Path(__file__).resolve().parent.parent.parent
NODE, NODE_IP = "lab-node", "10.244.0.1"
CLIENT_IP, NGINX_IP, DNS_IP, OTHER_CLIENT_IP = "10.244.0.2", "10.244.0.3", "10.244.0.4", "10.244.0.5"
NEW_NGINX_IP, RETRY_CLIENT_IP = "10.244.0.6", "10.244.0.7"  # the pod a stale rule misses; a client whose DNS drops
GO_CLIENT_IP = "10.244.0.8"
SELFIE_IP = "10.244.0.9"  # a web pod without hairpin mode, that requests its own Service
IP6 = {"client": "fd00:10:244::2", "my-nginx-1": "fd00:10:244::3"}  # dual-stack pods: their IPv6 address
DNS_VIP = "10.96.0.10"
HOST_RESOLVER = "192.168.77.53"  # a resolver on the node, outside the cluster (the seed's fault 4)
NGINX = {"run": "my-nginx"}
DOMAIN = "default.svc.cluster.local"
CGROUP_ROOT = Path("/sys/fs/cgroup/unified")  # cgroup v2 (on this hybrid host), for socket-LB


@dataclass(frozen=True)
class Case:
    """One Service the client curls, and how the lab's kube-proxy treats its ClusterIP."""
    vip: str
    path: str  # "dnat" to its target port (iptables) | "nft" (kube-proxy's nftables mode) | "userspace" via the
    #            node's proxy | "socklb" | "flushed" | "reject" | "headless"
    target_port: int | str = 80  # a name: the backend container's port of that name
    selector: tuple = tuple(NGINX.items())
    rule_to: str = NGINX_IP  # where the lab's rules send it (a stale rule: not the EndpointSlice's pod)


CASES = {
    "my-nginx": Case("10.96.0.100", "dnat"),
    "my-nginx-wrong-port": Case("10.96.0.101", "dnat", target_port=8081),  # nothing listens on 8081
    "my-nginx-flushed": Case("10.96.0.102", "flushed"),
    "my-nginx-no-endpoints": Case("10.96.0.103", "reject", selector=(("run", "my-nginxx"),)),
    "my-nginx-userspace": Case("10.96.0.104", "userspace"),
    "my-nginx-userspace-wrong-port": Case("10.96.0.105", "userspace", target_port=8081),
    "my-nginx-socklb": Case("10.96.0.106", "socklb"),
    # socket-LB to the nginx pod's port 8084, which the pod's netns drops (as a CNI enforcing a NetworkPolicy)
    "my-nginx-socklb-dropped": Case("10.96.0.121", "socklb", target_port=8084),
    # the Service now selects my-nginx-2; kube-proxy has not caught up and still DNATs to my-nginx-1
    "my-nginx-stale": Case("10.96.0.107", "dnat", selector=(("run", "my-nginx-v2"),)),
    "my-nginx-503": Case("10.96.0.108", "dnat", target_port=8082),  # nginx's server that answers 503
    "my-nginx-keepalive": Case("10.96.0.109", "dnat"),
    "my-nginx-userspace-keepalive": Case("10.96.0.110", "userspace"),
    "my-nginx-tcp-dns": Case("10.96.0.111", "dnat"),  # its UDP answer is truncated: the resolver asks over TCP
    "my-nginx-v6": Case("fd00:10:96::100", "dnat", rule_to=IP6["my-nginx-1"]),  # an IPv6 Service (ip6tables)
    "my-nginx-named-port": Case("10.96.0.112", "dnat", target_port="http"),  # nginx's container port "http"
    # headless (clusterIP None): DNS answers the pod's own address, nothing translates; port 80
    "my-nginx-headless": Case("None", "headless"),
    "my-nginx-nft": Case("10.96.0.113", "nft"),  # kube-proxy's nftables mode: a verdict map, then dnat
    # a NodePort Service, requested by a process on the node at the node's address (NODE_PORTS)
    "my-nginx-nodeport": Case("10.96.0.114", "dnat"),
    # the selfie pod's own Service, requested from that pod, whose bridge port has no hairpin mode
    "my-selfie": Case("10.96.0.115", "dnat", selector=(("run", "selfie"),), rule_to=SELFIE_IP),
}
# UDP Services (udp_service.py): the client sends one datagram to NAME:UDP_PORT; the server runs in the nginx pod
UDP_PORT = 8125
UDP_CASES = {
    "my-udp": Case("10.96.0.116", "dnat", target_port=UDP_PORT),
    "my-udp-wrong-port": Case("10.96.0.117", "dnat", target_port=UDP_PORT + 1),  # nothing listens on 8126
    "my-udp-no-endpoints": Case("10.96.0.118", "reject", target_port=UDP_PORT, selector=(("run", "my-udpx"),)),
    "my-udp-flushed": Case("10.96.0.119", "flushed", target_port=UDP_PORT),  # no rules: the datagram goes nowhere
    # the client's connect rewritten to the pod inside the kernel (the socket-LB client's cgroup, as my-nginx-socklb)
    "my-udp-socklb": Case("10.96.0.120", "socklb", target_port=UDP_PORT),
}
NAMED_PORTS = {"http": 80}  # the nginx container's named ports
SERVICE_PORT = {"my-nginx-headless": 80}  # the port a Service is asked on, where not 8080
NODE_PORTS = {"my-nginx-nodeport": 30080}  # type NodePort: its port on every node's addresses
KEEPALIVE_PATHS = ("/index.html", "/missing.html", "/index.html")  # one curl, one connection: 200, 404, 200
KEEPALIVE = ("my-nginx-keepalive", "my-nginx-userspace-keepalive")
HOST_RESOLVED = "my-nginx-via-host-resolver"  # the other client pod asks the node's resolver for my-nginx
NO_SUCH_NAME = "my-nginxx"  # the client asks for a Service that does not exist
DNS_RETRY = "my-nginx-after-dns-retry"  # the retry client's first DNS query is dropped
HAIRPIN = "my-nginx-hairpin"  # the nginx pod requests my-nginx's ClusterIP (no DNS)
GO_CLIENT = "my-nginx-from-go"  # the Go client requests my-nginx
PODS = (  # namespace, name, ip, labels, container, port
    ("default", "client", CLIENT_IP, {"run": "client"}, "curl", None),
    ("default", "other-client", OTHER_CLIENT_IP, {"run": "client"}, "curl", None),
    ("default", "my-nginx-1", NGINX_IP, NGINX, "nginx", 80),
    ("default", "my-nginx-2", NEW_NGINX_IP, {"run": "my-nginx-v2"}, "nginx", 80),  # in the state only
    ("default", "retry-client", RETRY_CLIENT_IP, {"run": "client"}, "curl", None),
    ("default", "go-client", GO_CLIENT_IP, {"run": "go-client"}, "app", None),
    ("default", "selfie", SELFIE_IP, {"run": "selfie"}, "web", 80),
    ("kube-system", "coredns", DNS_IP, {"k8s-app": "kube-dns"}, "coredns", 53),
)


def cluster_list() -> dict:
    """The lab's cluster as `kubectl get nodes,pods,services,endpointslices,networkpolicies -A -o json` prints it."""
    items: list[dict] = [{"apiVersion": "v1", "kind": "Node", "metadata": {"name": NODE, "uid": f"uid-node-{NODE}"},
                          "status": {"addresses": [{"type": "InternalIP", "address": NODE_IP}]}}]
    for ns, name, ip, labels, cname, port in PODS:
        named = [{"name": n, "containerPort": p} for n, p in NAMED_PORTS.items() if p == port and cname == "nginx"]
        container = {"name": cname, "ports": named or ([{"containerPort": port}] if port else [])}
        if name == "my-nginx-1":  # the UDP Services' server runs in this pod too
            container["ports"].append({"name": "statsd", "containerPort": UDP_PORT, "protocol": "UDP"})
        ips = [{"ip": ip}] + ([{"ip": IP6[name]}] if name in IP6 else [])
        items.append({"apiVersion": "v1", "kind": "Pod",
                      "metadata": {"namespace": ns, "name": name, "uid": f"uid-pod-{name}", "labels": labels},
                      "spec": {"nodeName": NODE, "containers": [container]},
                      "status": {"phase": "Running", "podIP": ip, "podIPs": ips, "hostIP": NODE_IP,
                                 "conditions": [{"type": "Ready", "status": "True"}]}})
    services = {name: ("default", case.vip, SERVICE_PORT.get(name, 8080), "TCP", case.target_port,
                       dict(case.selector)) for name, case in CASES.items()}
    services["kube-dns"] = ("kube-system", DNS_VIP, 53, "UDP", 53, {"k8s-app": "kube-dns"})
    services.update({name: ("default", case.vip, UDP_PORT, "UDP", case.target_port, dict(case.selector))
                     for name, case in UDP_CASES.items()})
    for name, (ns, vip, port, proto, target, selector) in services.items():
        v6 = ":" in vip
        service_port = {"name": "p", "port": port, "protocol": proto, "targetPort": target}
        if name in NODE_PORTS:
            service_port["nodePort"] = NODE_PORTS[name]
        items.append({"apiVersion": "v1", "kind": "Service",
                      "metadata": {"namespace": ns, "name": name, "uid": f"uid-svc-{name}"},
                      "spec": {"type": "NodePort" if name in NODE_PORTS else "ClusterIP", "clusterIP": vip,
                               "clusterIPs": [vip], "selector": selector, "ipFamilies": ["IPv6" if v6 else "IPv4"],
                               "ports": [service_port]}})
        backends = [(pns, pname, IP6.get(pname) if v6 else ip) for pns, pname, ip, labels, _, _ in PODS
                    if pns == ns and all(labels.get(k) == v for k, v in selector.items())]
        items.append({"apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice",
                      "addressType": "IPv6" if v6 else "IPv4",
                      "metadata": {"namespace": ns, "name": f"{name}-lab", "uid": f"uid-eps-{name}",
                                   "labels": {"kubernetes.io/service-name": name}},
                      "ports": [{"name": "p", "port": NAMED_PORTS.get(target, target), "protocol": proto}],
                      "endpoints": [{"addresses": [ip], "nodeName": NODE,
                                     "conditions": {"ready": True, "serving": True, "terminating": False},
                                     "targetRef": {"kind": "Pod", "namespace": pns, "name": pname}}
                                    for pns, pname, ip in backends if ip]})
    # nginx's ports, as a NetworkPolicy lists them (the port my-nginx-socklb-dropped's netns drops is not one)
    items.append({"apiVersion": "networking.k8s.io/v1", "kind": "NetworkPolicy",
                  "metadata": {"namespace": "default", "name": "my-nginx-ports", "uid": "uid-np-my-nginx-ports"},
                  "spec": {"podSelector": {"matchLabels": NGINX}, "policyTypes": ["Ingress"],
                           "ingress": [{"ports": [{"protocol": "TCP", "port": p} for p in (80, 8081, 8082)] +
                                                 [{"protocol": "UDP", "port": p} for p in (UDP_PORT, UDP_PORT + 1)]}]}})
    return {"apiVersion": "v1", "kind": "List", "items": items}


def nginx_conf(www: Path, servers: str | None = None, name: str = "nginx") -> Path:
    """nginx in the foreground, one process, everything under `www`'s parent (no system paths);
    `servers`: its server blocks (default: my-nginx's)."""
    run_dir = www.parent / name
    run_dir.mkdir(exist_ok=True)
    if servers is None:
        servers = f"""
    server {{
        listen {NGINX_IP}:80;
        listen [{IP6["my-nginx-1"]}]:80;
        root {www};
    }}
    server {{
        listen {NGINX_IP}:8082;
        return 503;
    }}"""
    conf = run_dir / "nginx.conf"
    conf.write_text(f"""daemon off;
master_process off;
pid {run_dir}/nginx.pid;
error_log stderr warn;
events {{ worker_connections 64; }}
http {{
    access_log off;
    client_body_temp_path {run_dir}/body;
    proxy_temp_path {run_dir}/proxy;
    fastcgi_temp_path {run_dir}/fastcgi;
    uwsgi_temp_path {run_dir}/uwsgi;
    scgi_temp_path {run_dir}/scgi;{servers}
}}
""")
    return conf


def read_until(proc: subprocess.Popen, marker: str) -> None:
    """A started server's readiness line on its stdout (it prints it once bound)."""
    for line in proc.stdout:
        if marker in line:
            return
    raise RuntimeError(f"lab: {proc.args} exited ({proc.wait()}) before printing {marker!r}")


def build(lab: NetLab, www: Path, servers: list) -> None:
    """Pods, kube-proxy's rules for every case, and the servers (DNS, nginx, proxies, host resolver)."""
    lab.pod("client", CLIENT_IP, resolver=DNS_VIP, ip6=IP6["client"])
    lab.pod("other-client", OTHER_CLIENT_IP, resolver=HOST_RESOLVER)
    lab.pod("retry-client", RETRY_CLIENT_IP, resolver=DNS_VIP)
    lab.pod("go-client", GO_CLIENT_IP, resolver=DNS_VIP)
    lab.pod("my-nginx-1", NGINX_IP, ip6=IP6["my-nginx-1"])
    lab.pod("selfie", SELFIE_IP, hairpin=False)
    lab.pod("coredns", DNS_IP)
    lab.drop_first(RETRY_CLIENT_IP, 53, "udp")
    dropped = CASES["my-nginx-socklb-dropped"].target_port  # (nothing listens there: a drop, not a refusal)
    done = lab.run("my-nginx-1", ["iptables", "-A", "INPUT", "-p", "tcp", "--dport", str(dropped), "-j", "DROP"])
    if done.returncode:
        raise RuntimeError(f"lab: cannot drop port {dropped} in my-nginx-1: {done.stderr.decode(errors='replace')}")
    lab.node_address(HOST_RESOLVER)
    lab.service(DNS_VIP, 53, "udp", [(DNS_IP, 53)])
    lab.service(DNS_VIP, 53, "tcp", [(DNS_IP, 53)])
    dns = [sys.executable, "-m", "lab.net.dns_server"]
    names = [f"{'+' if name == 'my-nginx-tcp-dns' else ''}{name}.{DOMAIN}="
             f"{NGINX_IP if case.path == 'headless' else case.vip}" for name, case in CASES.items()]
    names += [f"{name}.{DOMAIN}={case.vip}" for name, case in UDP_CASES.items()]
    servers.append(lab.start("coredns", [*dns, DNS_IP, *names], cwd=REPO, stdout=subprocess.PIPE, text=True))
    read_until(servers[-1], "ready")
    # the node's resolver answers my-nginx with an address that is no Service: the node's own
    servers.append(lab.start(None, [*dns, HOST_RESOLVER, f"my-nginx.{DOMAIN}={NODE_IP}"], cwd=REPO,
                             stdout=subprocess.PIPE, text=True))
    read_until(servers[-1], "ready")
    servers.append(lab.start("my-nginx-1", ["nginx", "-c", str(nginx_conf(www))],
                             stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True))
    lab.wait_listening("my-nginx-1", NGINX_IP, 80, servers[-1])
    lab.wait_listening("my-nginx-1", NGINX_IP, 8082, servers[-1])
    selfie = nginx_conf(www, f"\n    server {{ listen {SELFIE_IP}:80; root {www}; }}", name="nginx-selfie")
    servers.append(lab.start("selfie", ["nginx", "-c", str(selfie)], stdout=subprocess.DEVNULL,
                             stderr=subprocess.PIPE, text=True))
    lab.wait_listening("selfie", SELFIE_IP, 80, servers[-1])
    servers.append(lab.start("my-nginx-1", [sys.executable, "-m", "lab.net.udp_service", "serve", NGINX_IP,
                                            str(UDP_PORT)], cwd=REPO, stdout=subprocess.PIPE, text=True))
    read_until(servers[-1], "ready")
    for case in UDP_CASES.values():
        if case.path == "dnat":
            lab.service(case.vip, UDP_PORT, "udp", [(case.rule_to, case.target_port)])
        elif case.path == "reject":
            lab.reject(case.vip, UDP_PORT, "udp")
        # flushed: no rules, as for my-nginx-flushed; socklb: none either (the cgroup's program rewrites connect)
    for i, (name, case) in enumerate(CASES.items()):
        if case.path == "dnat":
            lab.service(case.vip, 8080, "tcp", [(case.rule_to, NAMED_PORTS.get(case.target_port, case.target_port))],
                        node_port=NODE_PORTS.get(name))
        elif case.path == "nft":
            lab.nft_service(f"default/{name}", case.vip, 8080, "tcp", [(case.rule_to, case.target_port)])
        elif case.path == "reject":
            lab.reject(case.vip, 8080, "tcp")
        elif case.path == "userspace":
            proxy_port = 40080 + i
            servers.append(lab.start(None, [sys.executable, "-m", "lab.net.userspace_proxy", NODE_IP, str(proxy_port),
                                            NGINX_IP, str(case.target_port)], cwd=REPO, stdout=subprocess.PIPE,
                                     text=True))
            read_until(servers[-1], "ready")
            lab.service(case.vip, 8080, "tcp", [(NODE_IP, proxy_port)])
        # flushed: no rules at all, the ClusterIP is blackholed; socklb: the client's cgroup never
        # sends to the ClusterIP (record() attaches the program)


def curl(lab: NetLab, pod: str | None, name: str, cgroup: Path | None = None, connect_timeout: int = 2,
         paths: tuple[str, ...] = ("/index.html",), client: list[str] | None = None,
         port: int = 8080) -> tuple[int, int, bytes]:
    """curl http://NAME.default.svc.cluster.local:8080/PATH in `pod` (None: on the node itself) and
    `cgroup`; NAME may be an IP; several paths go on one keep-alive connection: (pid, exit status,
    body). The connect timeout includes name resolution. `client`: another program taking the URLs instead of curl."""
    host = name if name[0].isdigit() else f"{name}.{DOMAIN}"
    urls = [f"http://{host}:{port}{path}" for path in paths]
    argv = lab.argv(pod, [*client, *urls] if client else
                    ["curl", "-s", "--connect-timeout", str(connect_timeout), *urls])
    if cgroup is not None:  # join the cgroup first: `ip netns exec` remounts /sys
        argv = ["sh", "-c", f'echo $$ > {cgroup}/cgroup.procs && exec "$@"', "sh", *argv]
    proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    out, _err = proc.communicate(timeout=30)
    return proc.pid, proc.returncode, out


def requests(goclient: Path) -> dict[str, tuple[str, str, dict]]:
    """case -> (the pod that asks, the name it asks for, curl()'s options): every request of the lab,
    in the order made."""
    out = {name: ("client", name, {"paths": KEEPALIVE_PATHS if name in KEEPALIVE else ("/index.html",),
                                   "socklb": case.path == "socklb", "port": SERVICE_PORT.get(name, 8080)})
           for name, case in CASES.items()}
    out[HOST_RESOLVED] = ("other-client", "my-nginx", {})
    out[NO_SUCH_NAME] = ("client", NO_SUCH_NAME, {})
    out[DNS_RETRY] = ("retry-client", "my-nginx", {"connect_timeout": 15})  # glibc waits 5 s
    out[HAIRPIN] = ("my-nginx-1", CASES["my-nginx"].vip, {})
    out["my-selfie"] = ("selfie", CASES["my-selfie"].vip, {})  # the pod requests its own Service
    for name, node_port in NODE_PORTS.items():  # a process on the node itself (pod None), at the node's address
        out[name] = (None, NODE_IP, {"port": node_port})
    out[GO_CLIENT] = ("go-client", "my-nginx", {"client": [str(goclient)]})
    for name, case in UDP_CASES.items():
        out[name] = ("client", name, {"udp": True, "socklb": case.path == "socklb"})
    return out


def udp_ask(lab: NetLab, pod: str, name: str, cgroup: Path | None = None,
            timeout: float = 1.0) -> tuple[int, int, bytes]:
    """udp_service.py's client in `pod` and `cgroup`: one datagram to NAME.default.svc.cluster.local:UDP_PORT, on a
    connected socket; (pid, exit status: 0 answered, 1 refused, 2 no reply; what it printed)."""
    argv = lab.argv(pod, [sys.executable, "-m", "lab.net.udp_service", "ask", f"{name}.{DOMAIN}", str(UDP_PORT),
                          str(timeout)])
    if cgroup is not None:  # join the cgroup first, as curl() does
        argv = ["sh", "-c", f'echo $$ > {cgroup}/cgroup.procs && exec "$@"', "sh", *argv]
    proc = subprocess.Popen(argv, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    out, _err = proc.communicate(timeout=30)
    return proc.pid, proc.returncode, out


class Running:
    """The lab built and serving: `ask(cases)` makes the cases' requests, in order."""

    def __init__(self, lab: NetLab, cgroup: Path, todo: dict) -> None:
        self.lab, self.cgroup, self.todo = lab, cgroup, todo

    def ask(self, cases: list[str] | None = None, done: Callable[[str], None] | None = None) -> dict:
        """{case: (client pid, exit status, body)}; `done(case)` after each."""
        out = {}
        for case in cases or self.todo:
            pod, name, opts = self.todo[case]
            if opts.get("udp"):
                out[case] = udp_ask(self.lab, pod, name, self.cgroup if opts.get("socklb") else None)
            else:
                out[case] = curl(self.lab, pod, name, self.cgroup if opts.get("socklb") else None,
                                 **{k: v for k, v in opts.items() if k != "socklb"})
            if done is not None:
                done(case)
        return out

    def netns_ids(self) -> set[int]:
        return self.lab.netns_ids()


@contextmanager
def running(workdir: Path) -> Iterator[Running]:
    """Build the lab (namespaces, rules, servers, the socket-LB client's cgroup); tear it all down
    on exit."""
    goclient = build_goclient()
    www = workdir / "www"
    www.mkdir(parents=True, exist_ok=True)
    (www / "index.html").write_bytes(b"hello from the lab\n")
    cgroup = CGROUP_ROOT / f"svct-lab-{os.getpid()}"  # the socket-LB client's
    if not CGROUP_ROOT.is_dir():
        raise RuntimeError(f"lab: the socket-LB case needs a cgroup v2 hierarchy at {CGROUP_ROOT}")
    cgroup.mkdir()
    servers: list[subprocess.Popen] = []
    socklb, dropped = CASES["my-nginx-socklb"], CASES["my-nginx-socklb-dropped"]
    udp_socklb = UDP_CASES["my-udp-socklb"]
    try:
        with NetLab(gateway=NODE_IP) as lab, SocketLB(workdir, cgroup, socklb.vip, 8080, (NGINX_IP, 80)), \
                SocketLB(workdir, cgroup, dropped.vip, 8080, (NGINX_IP, dropped.target_port), name="dropped"), \
                SocketLB(workdir, cgroup, udp_socklb.vip, UDP_PORT, (NGINX_IP, UDP_PORT), name="udp-socklb"):
            build(lab, www, servers)
            yield Running(lab, cgroup, requests(goclient))
            for s in servers:
                s.kill()
                s.wait(10)
            servers.clear()
    finally:
        for s in servers:
            s.kill()
            s.wait(10)
        remove_cgroup(cgroup)


def record(workdir: Path, timeout: float = 30.0, cases: list[str] | None = None,
           ring_bytes: int = 16 << 20, stall_after: str | None = None) -> tuple[list, dict]:
    """Build the lab, capture while the clients request every case (or `cases`): (the SyscallEvents
    of the lab's namespaces and a loss marker if the kernel dropped any, as the agent adds one,
    {case: (client pid, exit status, body)}). The ring is drained while the clients run (the capture
    sees the whole host); with `stall_after`, no longer once that case's request is done, until
    they all are (an agent starved of CPU: with a small ring, the kernel drops what does not fit)."""
    from svctrace.agents.ebpf.containers import ContainerIds
    from svctrace.agents.ebpf.loader import CaptureConfig, EbpfCapture, boot_to_epoch_ns
    from svctrace.agents.ebpf.records import Normalizer

    seen: list = []
    build_goclient()  # before the capture starts: the build's syscalls are not the lab's
    # capturing before the servers start: a server already blocked in recvfrom/accept when a
    # capture starts shows no first request (the syscall's entry was never seen)
    started = time.time_ns()  # a loss marker's window starts here: the ring is drained only at the end
    cap = EbpfCapture(CaptureConfig(ring_bytes=ring_bytes))
    try:
        norm = Normalizer(NODE, boot_to_epoch_ns(), containers=ContainerIds())
        with running(workdir) as lab, ThreadPoolExecutor(1) as pool:
            stalled = threading.Event()
            asking = pool.submit(lab.ask, cases, lambda case: case == stall_after and stalled.set())
            cap.ring.drain(norm.decode, seen)
            while not (asking.done() or stalled.is_set()):
                cap.ring.wait(0.05)
                cap.ring.drain(norm.decode, seen)
            curls = asking.result()
            # each client's last syscall on its connection is its close (the one that resolved
            # nothing had no connection: its resolver socket's): then the capture has it all
            last = {pid: "udp" if name == NO_SUCH_NAME or name in UDP_CASES else "tcp"
                    for name, (pid, _rc, _out) in curls.items()}
            deadline = time.monotonic() + timeout
            while not all(any(e.pid == pid and e.kind == "close" and e.proto == proto for e in seen)
                          for pid, proto in last.items()):
                if time.monotonic() > deadline:
                    if cap.drops()[0]:
                        break  # lost in the kernel: the loss marker below says so
                    raise RuntimeError(f"lab: the capture never showed every client's close ({len(seen)} events)")
                cap.ring.wait(0.05)
                cap.ring.drain(norm.decode, seen)
            drops = cap.drops()[0]
            lab_ns = lab.netns_ids()
    finally:
        cap.close()
    events = [e for e in seen if e.netns in lab_ns]
    if drops:
        # what `svctrace agent` publishes after a drain: how many, and the window they were lost in
        events.append(norm.lost(drops, time.time_ns()).with_(lost_since_ns=started))
    return events, curls
