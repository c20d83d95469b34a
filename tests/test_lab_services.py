"""The seed article's request and its faults on a real kernel network, captured live with eBPF and
stitched by the core (as root).

tests/harness/netlab.py builds one node in network namespaces: pods on a bridge, kube-proxy's
iptables shape, no route out. A DNS pod serves the cluster domain behind the kube-dns ClusterIP
(pods resolve with kubelet's search list and ndots:5), nginx serves my-nginx. The client pod
curls one Service per case: iptables DNAT (healthy, and a targetPort nothing listens on); the
userspace proxy of the seed's time (a node process accepting the ClusterIP's connections and
dialing the backend: healthy, and its dial refused); Cilium-style socket-level load balancing
(a cgroup/connect4 program sends the client's connect to the pod itself, tests/harness/socklb.py);
rules flushed (the SYN vanishes); a
Service without endpoints (kube-proxy's REJECT); and another pod whose resolver is the node's,
answering an address that is no Service. From the syscalls alone the core must name each hop
and raise each fault's alerts.
"""
from __future__ import annotations

import os
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import pytest

from svctrace.agents.ebpf.loader import boot_to_epoch_ns
from svctrace.agents.ebpf.records import Normalizer
from svctrace.streams.core import run
from tests.harness.netlab import NetLab
from tests.harness.socklb import SocketLB
from tests.scenario import Cluster, Pod, Service
from tests.test_ebpf_live import Live

pytestmark = pytest.mark.root

REPO = Path(__file__).resolve().parent.parent
NODE, NODE_IP = "lab-node", "10.244.0.1"
CLIENT_IP, NGINX_IP, DNS_IP, OTHER_CLIENT_IP = "10.244.0.2", "10.244.0.3", "10.244.0.4", "10.244.0.5"
DNS_VIP = "10.96.0.10"
HOST_RESOLVER = "192.168.77.53"  # a resolver on the node, outside the cluster (the seed's fault 4)
NGINX = {"run": "my-nginx"}
DOMAIN = "default.svc.cluster.local"


@dataclass(frozen=True)
class Case:
    """One Service the client curls, and how the lab's kube-proxy treats its ClusterIP."""
    vip: str
    path: str  # "dnat" to its target port | "userspace" via the node's proxy | "flushed" | "reject" | "socklb"
    target_port: int = 80
    selector: tuple = tuple(NGINX.items())


CASES = {
    "my-nginx": Case("10.96.0.100", "dnat"),
    "my-nginx-wrong-port": Case("10.96.0.101", "dnat", target_port=8081),  # nothing listens on 8081
    "my-nginx-flushed": Case("10.96.0.102", "flushed"),
    "my-nginx-no-endpoints": Case("10.96.0.103", "reject", selector=(("run", "my-nginxx"),)),
    "my-nginx-userspace": Case("10.96.0.104", "userspace"),
    "my-nginx-userspace-wrong-port": Case("10.96.0.105", "userspace", target_port=8081),
    "my-nginx-socklb": Case("10.96.0.106", "socklb"),  # the client's cgroup connects to the pod directly
}
HOST_RESOLVED = "my-nginx-via-host-resolver"  # the other client pod asks the node's resolver for my-nginx


def lab_cluster() -> Cluster:
    """What the metadata watcher would publish for the lab."""
    c = Cluster()
    c.nodes = {NODE: NODE_IP}
    c.pods = {
        "client": Pod("client", CLIENT_IP, NODE, labels={"run": "client"}),
        "other-client": Pod("other-client", OTHER_CLIENT_IP, NODE, labels={"run": "client"}),
        "my-nginx-1": Pod("my-nginx-1", NGINX_IP, NODE, labels=NGINX, ports=(("http", 80),)),
        "coredns": Pod("coredns", DNS_IP, NODE, namespace="kube-system", labels={"k8s-app": "kube-dns"},
                       ports=(("dns", 53),)),
    }
    c.services = {name: Service(name, case.vip, 8080, case.target_port, dict(case.selector))
                  for name, case in CASES.items()}
    c.services["kube-dns"] = Service("kube-dns", DNS_VIP, 53, 53, {"k8s-app": "kube-dns"}, namespace="kube-system",
                                     protocol="UDP")
    c.dns_ip = DNS_VIP
    return c


def nginx_conf(www: Path) -> Path:
    """nginx in the foreground, one process, everything under `www`'s parent (no system paths)."""
    run_dir = www.parent / "nginx"
    run_dir.mkdir(exist_ok=True)
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
    scgi_temp_path {run_dir}/scgi;
    server {{
        listen {NGINX_IP}:80;
        root {www};
    }}
}}
""")
    return conf


def read_until(proc: subprocess.Popen, marker: str) -> None:
    """A started server's readiness line on its stdout (it prints it once bound)."""
    for line in proc.stdout:
        if marker in line:
            return
    raise AssertionError(f"{proc.args} exited ({proc.wait()}) before printing {marker!r}")


def build(lab: NetLab, www: Path, servers: list) -> None:
    """Pods, kube-proxy's rules for every case, and the servers (DNS, nginx, proxies, host resolver)."""
    lab.pod("client", CLIENT_IP, resolver=DNS_VIP)
    lab.pod("other-client", OTHER_CLIENT_IP, resolver=HOST_RESOLVER)
    lab.pod("my-nginx-1", NGINX_IP)
    lab.pod("coredns", DNS_IP)
    lab.node_address(HOST_RESOLVER)
    lab.service(DNS_VIP, 53, "udp", [(DNS_IP, 53)])
    names = [f"{name}.{DOMAIN}={case.vip}" for name, case in CASES.items()]
    servers.append(lab.start("coredns", [sys.executable, "-m", "tests.harness.lab_dns", DNS_IP, *names],
                             cwd=REPO, stdout=subprocess.PIPE, text=True))
    read_until(servers[-1], "ready")
    # the node's resolver answers my-nginx with an address that is no Service: the node's own
    servers.append(lab.start(None, [sys.executable, "-m", "tests.harness.lab_dns", HOST_RESOLVER,
                                    f"my-nginx.{DOMAIN}={NODE_IP}"], cwd=REPO, stdout=subprocess.PIPE, text=True))
    read_until(servers[-1], "ready")
    servers.append(lab.start("my-nginx-1", ["nginx", "-c", str(nginx_conf(www))],
                             stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True))
    lab.wait_listening("my-nginx-1", NGINX_IP, 80, servers[-1])
    for i, case in enumerate(CASES.values()):
        if case.path == "dnat":
            lab.service(case.vip, 8080, "tcp", [(NGINX_IP, case.target_port)])
        elif case.path == "reject":
            lab.reject(case.vip, 8080, "tcp")
        elif case.path == "userspace":
            proxy_port = 40080 + i
            servers.append(lab.start(None, [sys.executable, "-m", "tests.harness.lab_proxy", NODE_IP, str(proxy_port),
                                            NGINX_IP, str(case.target_port)], cwd=REPO, stdout=subprocess.PIPE,
                                     text=True))
            read_until(servers[-1], "ready")
            lab.service(case.vip, 8080, "tcp", [(NODE_IP, proxy_port)])
        # flushed: no rules at all, the ClusterIP is blackholed; socklb: the client's cgroup never
        # sends to the ClusterIP (lab_capture attaches the program)


def remove_cgroup(cgroup: Path, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while True:
        try:
            cgroup.rmdir()
            return
        except OSError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.05)  # an exited process leaves its cgroup asynchronously


@pytest.fixture(scope="module")
def lab_capture(tmp_path_factory):
    """Build the lab, capture while the clients curl every case; returns (events, curl results by case)."""
    if os.geteuid() != 0:
        pytest.fail("the network lab needs root (this test is marked `root`)")
    www = tmp_path_factory.mktemp("www")
    (www / "index.html").write_bytes(b"hello from the lab\n")
    cgroup = Path(f"/sys/fs/cgroup/unified/svct-lab-{os.getpid()}")  # the socket-LB client's
    assert cgroup.parent.is_dir(), "the socket-LB case needs a cgroup v2 hierarchy"
    cgroup.mkdir()
    live = Live()
    live.norm = Normalizer(NODE, boot_to_epoch_ns(), containers=live.norm.containers)
    servers: list[subprocess.Popen] = []
    socklb = next(case for case in CASES.values() if case.path == "socklb")
    try:
        with NetLab(gateway=NODE_IP) as lab, \
                SocketLB(tmp_path_factory.mktemp("socklb"), cgroup, socklb.vip, 8080, (NGINX_IP, 80)):
            build(lab, www, servers)
            curls = {}
            todo = [("client", name) for name in CASES] + [("other-client", HOST_RESOLVED)]
            for pod, case in todo:
                name = "my-nginx" if case == HOST_RESOLVED else case
                argv = lab.argv(pod, ["curl", "-s", "--connect-timeout", "2",
                                      f"http://{name}.{DOMAIN}:8080/index.html"])
                if CASES.get(case) is socklb:  # join the cgroup first: `ip netns exec` remounts /sys
                    argv = ["sh", "-c", f'echo $$ > {cgroup}/cgroup.procs && exec "$@"', "sh", *argv]
                proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
                out, _err = proc.communicate(timeout=30)
                curls[case] = (proc.pid, proc.returncode, out)
            lab_ns = lab.netns_ids()
            # every curl's last syscall on its connection is its close: then the capture has it all
            live.until(lambda seen: all(any(e.pid == pid and e.kind == "close" and e.proto == "tcp" for e in seen)
                                        for pid, _rc, _out in curls.values()), what="each curl's close")
            for s in servers:
                s.kill()
                s.wait(10)
            servers.clear()
    finally:
        for s in servers:
            s.kill()
            s.wait(10)
        live.cap.close()
        remove_cgroup(cgroup)
    return [e for e in live.seen if e.netns in lab_ns], curls


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
    HOST_RESOLVED: (7, "broken", None, None, None, "connection refused",
                    {"dns.wrong_resolver", "dns.answer_not_service", AMPLIFIED}),
}


def chain_of(case: str, events) -> tuple[dict, set[str]]:
    """The one chain of a case's curl, and the rules of its alerts."""
    result = run(events, lab_cluster().index())
    rules = {a["alert_id"]: a["rule"] for a in result.alerts}
    service = None if case == HOST_RESOLVED else case
    client = "other-client" if case == HOST_RESOLVED else "client"
    [chain] = [ch for ch in result.chains
               if (ch["service"] or {}).get("name") == service and ch["client"]["pod"] == client]
    return chain, {rules[i] for i in chain["alerts"]}


@pytest.mark.parametrize("case", EXPECTED)
def test_each_case_gives_its_chain_and_alerts(lab_capture, case):
    events, curls = lab_capture
    rc, status, mode, backend, http, error, rules = EXPECTED[case]
    assert curls[case][1] == rc, curls[case]
    chain, alerted = chain_of(case, events)
    assert chain["client"]["pid"] == curls[case][0]
    assert chain["status"] == status
    if mode is not None:
        assert chain["translation"]["mode"] == mode
    assert (chain["backend"] or {}).get("pod") == backend
    assert (chain["response"] or {}).get("status") == http and (chain["response"] or {}).get("error") == error
    assert alerted == rules
    assert chain["dns"]["queries"] == 8  # A and AAAA for 3 search expansions, then the name itself


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
