"""The seed article's request on a real kernel network: kube-proxy-style iptables DNAT in network
namespaces, captured live with eBPF, stitched by the core (as root).

A client pod resolves my-nginx through the cluster DNS Service (itself DNATed to a DNS pod, with
the search list and ndots:5 a kubelet writes) and curls the ClusterIP; iptables DNAT sends it to
the nginx pod. Two faults of the article's Part 2 run beside the healthy request: a Service whose
targetPort nothing listens on, and a Service whose rules were flushed (the SYN to the ClusterIP
vanishes). From the syscalls alone the core must tell the DNAT hop, the backend pod, and each
fault's alert. The lab has no route out (tests/harness/netlab.py).
"""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from svctrace.agents.ebpf.loader import boot_to_epoch_ns
from svctrace.agents.ebpf.records import Normalizer
from svctrace.streams.core import run
from tests.harness.netlab import NetLab
from tests.scenario import Cluster, Pod, Service
from tests.test_ebpf_live import Live

pytestmark = pytest.mark.root

REPO = Path(__file__).resolve().parent.parent
NODE = "lab-node"
DNS_VIP, NGINX_VIP, WRONG_PORT_VIP, FLUSHED_VIP = "10.96.0.10", "10.96.0.100", "10.96.0.101", "10.96.0.102"
CLIENT_IP, NGINX_IP, DNS_IP = "10.244.0.2", "10.244.0.3", "10.244.0.4"
NAMES = {"my-nginx": NGINX_VIP, "my-nginx-wrong-port": WRONG_PORT_VIP, "my-nginx-flushed": FLUSHED_VIP}


def lab_cluster() -> Cluster:
    """What the metadata watcher would publish for the lab."""
    c = Cluster()
    c.nodes = {NODE: "10.244.0.1"}
    nginx = {"run": "my-nginx"}
    c.pods = {
        "client": Pod("client", CLIENT_IP, NODE, labels={"run": "client"}),
        "my-nginx-1": Pod("my-nginx-1", NGINX_IP, NODE, labels=nginx, ports=(("http", 80),)),
        "coredns": Pod("coredns", DNS_IP, NODE, namespace="kube-system", labels={"k8s-app": "kube-dns"},
                       ports=(("dns", 53),)),
    }
    c.services = {
        "my-nginx": Service("my-nginx", NGINX_VIP, 8080, 80, nginx),
        "my-nginx-wrong-port": Service("my-nginx-wrong-port", WRONG_PORT_VIP, 8080, 8081, nginx),
        "my-nginx-flushed": Service("my-nginx-flushed", FLUSHED_VIP, 8080, 80, nginx),
        "kube-dns": Service("kube-dns", DNS_VIP, 53, 53, {"k8s-app": "kube-dns"}, namespace="kube-system",
                            protocol="UDP"),
    }
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


@pytest.fixture(scope="module")
def lab_capture(tmp_path_factory):
    """Build the lab, capture while the client curls the three Services, return (events, curl results)."""
    if os.geteuid() != 0:
        pytest.fail("the network lab needs root (this test is marked `root`)")
    www = tmp_path_factory.mktemp("www")
    (www / "index.html").write_bytes(b"hello from the lab\n")
    live = Live()
    live.norm = Normalizer(NODE, boot_to_epoch_ns(), containers=live.norm.containers)
    servers: list[subprocess.Popen] = []
    try:
        with NetLab() as lab:
            lab.pod("client", CLIENT_IP, resolver=DNS_VIP)
            lab.pod("my-nginx-1", NGINX_IP)
            lab.pod("coredns", DNS_IP)
            lab.service(DNS_VIP, 53, "udp", [(DNS_IP, 53)])
            lab.service(NGINX_VIP, 8080, "tcp", [(NGINX_IP, 80)])
            lab.service(WRONG_PORT_VIP, 8080, "tcp", [(NGINX_IP, 8081)])  # nothing listens on 8081
            # my-nginx-flushed: no rules at all
            names = [f"{n}.default.svc.cluster.local={ip}" for n, ip in NAMES.items()]
            servers.append(lab.start("coredns", [sys.executable, "-m", "tests.harness.lab_dns", DNS_IP, *names],
                                     cwd=REPO, stdout=subprocess.PIPE, text=True))
            read_until(servers[-1], "ready")
            servers.append(lab.start("my-nginx-1", ["nginx", "-c", str(nginx_conf(www))],
                                     stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True))
            lab.wait_listening("my-nginx-1", NGINX_IP, 80, servers[-1])
            curls = {}
            for name in NAMES:
                proc = lab.start("client", ["curl", "-s", "--connect-timeout", "2",
                                            f"http://{name}.default.svc.cluster.local:8080/index.html"],
                                 stdout=subprocess.PIPE, stderr=subprocess.PIPE)
                out, err = proc.communicate(timeout=30)
                curls[name] = (proc.pid, proc.returncode, out)
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
    return [e for e in live.seen if e.netns in lab_ns], curls


def chains_by_service(events) -> tuple[dict, list]:
    result = run(events, lab_cluster().index())
    by_service: dict[str, list] = {}
    for ch in result.chains:
        name = (ch.get("service") or {}).get("name")
        by_service.setdefault(name, []).append(ch)
    return by_service, result.alerts


def rules_of(chain: dict, alerts: list) -> set[str]:
    by_id = {a["alert_id"]: a["rule"] for a in alerts}
    return {by_id[i] for i in chain["alerts"]}


def test_curls_behave_as_the_faults_say(lab_capture):
    _events, curls = lab_capture
    assert curls["my-nginx"][1:] == (0, b"hello from the lab\n")
    assert curls["my-nginx-wrong-port"][1] == 7  # curl: failed to connect (refused)
    assert curls["my-nginx-flushed"][1] == 28  # curl: connect timed out


def test_healthy_request_is_one_dnat_chain_to_the_nginx_pod(lab_capture):
    events, curls = lab_capture
    by_service, alerts = chains_by_service(events)
    [chain] = by_service["my-nginx"]
    assert chain["status"] == "ok"
    # ndots:5 and a name of 4 dots: glibc tries the search list first (A and AAAA each), as in
    # every pod; that is the only thing to say about this request
    assert rules_of(chain, alerts) == {"dns.search_amplification"}
    assert chain["dns"]["queries"] == 8
    assert chain["client"]["pod"] == "client" and chain["client"]["pid"] == curls["my-nginx"][0]
    dns = chain["dns"]
    assert dns["qname"] == "my-nginx.default.svc.cluster.local" and dns["rcode"] == "NOERROR"
    assert dns["answers"] == [NGINX_VIP] and dns["resolver_ip"] == DNS_VIP and dns["resolver_is_cluster_dns"]
    assert dns["server"]["pod"] == "coredns"
    assert chain["connect"]["ip"] == NGINX_VIP and chain["connect"]["port"] == 8080
    assert chain["translation"]["mode"] == "dnat"
    assert chain["backend"]["pod"] == "my-nginx-1" and chain["backend"]["ip"] == NGINX_IP
    assert chain["backend"]["port"] == 80
    assert chain["response"]["status"] == 200 and chain["response"]["target"] == "/index.html"


def test_wrong_target_port_is_refused_at_the_backend(lab_capture):
    events, _curls = lab_capture
    by_service, alerts = chains_by_service(events)
    [chain] = by_service["my-nginx-wrong-port"]
    assert chain["status"] == "broken"
    assert rules_of(chain, alerts) == {"svc.target_port_refused", "dns.search_amplification"}


def test_flushed_rules_leave_the_clusterip_connect_untranslated(lab_capture):
    events, _curls = lab_capture
    by_service, alerts = chains_by_service(events)
    [chain] = by_service["my-nginx-flushed"]
    assert chain["status"] == "broken"
    assert rules_of(chain, alerts) == {"svc.translation_missing", "dns.search_amplification"}
    assert chain["backend"] is None
