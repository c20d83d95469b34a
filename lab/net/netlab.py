"""A one-node Kubernetes network in network namespaces, for tests on the real kernel (root).

    with NetLab() as lab:
        lab.pod("client", "10.244.0.2")
        lab.pod("backend", "10.244.0.3")
        lab.service("10.96.0.100", 8080, "tcp", [("10.244.0.3", 80)])
        lab.run("client", ["curl", ...])

The node is a namespace with a bridge (the pod network's gateway) and kube-proxy's iptables
shape: nat PREROUTING/OUTPUT -> KUBE-SERVICES -> KUBE-SVC-* -> KUBE-SEP-* DNAT (a pod reaching
itself through its Service masqueraded in POSTROUTING); `nft_service` adds a Service the way
kube-proxy's nftables mode does (its own table, a verdict map, numgen, dnat). Each pod is a
namespace with a veth on that bridge and its default route through the node. Nothing has a
route out of the lab: the node namespace has no uplink, and every ClusterIP without rules
is blackholed there (a SYN to it vanishes, as after kube-proxy's rules were flushed).
Pods resolve through `ip netns exec`'s per-namespace resolv.conf (/etc/netns/<ns>/).
"""
from __future__ import annotations

import os
import shutil
import subprocess
import time
from pathlib import Path

SERVICE_CIDR = "10.96.0.0/12"
GATEWAY6, PREFIX6, SERVICE_CIDR6 = "fd00:10:244::1", 64, "fd00:10:96::/112"  # the dual-stack half
MASQ_MARK = "0x4000"  # kube-proxy's "masquerade this" mark


def sh(*argv: str) -> None:
    r = subprocess.run(argv, capture_output=True, text=True)
    if r.returncode != 0:
        raise RuntimeError(f"lab: {' '.join(argv)} failed ({r.returncode}): {r.stderr.strip()}")


class NetLab:
    def __init__(self, gateway: str = "10.244.0.1", prefix: int = 24) -> None:
        self.tag = f"svtlab{os.getpid()}"
        self.node = f"{self.tag}-node"
        self.gateway, self.prefix = gateway, prefix
        self.pods: dict[str, str] = {}  # pod name -> its namespace
        self.made: list[str] = []  # namespaces created, in order
        self.services = 0
        self.nft_services = 0
        self.node_ports = 0

    # -- building ---------------------------------------------------------------------------------

    def __enter__(self) -> "NetLab":
        if os.geteuid() != 0:
            raise RuntimeError("the network lab needs root")
        try:
            self._add_ns(self.node)
            # the node routes ClusterIP traffic back out of the interface it came in on: an ICMP
            # redirect each time would spend the per-host ICMP rate limit that a Service without
            # endpoints needs for its "port unreachable" (kube-proxy's REJECT)
            for scope in ("all", "default"):
                self.node_sh("sysctl", "-qw", f"net.ipv4.conf.{scope}.send_redirects=0")
            self.node_sh("ip", "link", "set", "lo", "up")
            self.node_sh("ip", "link", "add", "br0", "type", "bridge")
            self.node_sh("ip", "addr", "add", f"{self.gateway}/{self.prefix}", "dev", "br0")
            self.node_sh("ip", "link", "set", "br0", "up")
            self.node_sh("ip", "route", "add", "blackhole", SERVICE_CIDR)
            self.node_sh("sysctl", "-qw", "net.ipv4.ip_forward=1")
            # replies between pods on one bridge are bridged, not routed: without this conntrack
            # never sees them and cannot undo the DNAT
            self.node_sh("sysctl", "-qw", "net.bridge.bridge-nf-call-iptables=1")
            # IPv6 alike (dual stack): the same chains in ip6tables
            self.node_sh("ip", "addr", "add", f"{GATEWAY6}/{PREFIX6}", "dev", "br0", "nodad")
            self.node_sh("ip", "-6", "route", "add", "blackhole", SERVICE_CIDR6)
            self.node_sh("sysctl", "-qw", "net.ipv6.conf.all.forwarding=1")
            self.node_sh("sysctl", "-qw", "net.bridge.bridge-nf-call-ip6tables=1")
            for tables in ("iptables", "ip6tables"):
                self.node_sh(tables, "-t", "nat", "-N", "KUBE-SERVICES")
                for hook in ("PREROUTING", "OUTPUT"):
                    self.node_sh(tables, "-t", "nat", "-A", hook, "-j", "KUBE-SERVICES")
                self.node_sh(tables, "-t", "nat", "-A", "POSTROUTING", "-m", "mark", "--mark",
                             f"{MASQ_MARK}/{MASQ_MARK}", "-j", "MASQUERADE")
        except BaseException:
            self.close()
            raise
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def _add_ns(self, name: str) -> None:
        sh("ip", "netns", "add", name)
        self.made.append(name)

    def node_sh(self, *argv: str) -> None:
        sh("ip", "netns", "exec", self.node, *argv)

    def pod(self, name: str, ip: str, resolver: str | None = None,
            search: tuple[str, ...] = ("default.svc.cluster.local", "svc.cluster.local", "cluster.local"),
            ip6: str | None = None, hairpin: bool = True) -> str:
        """A pod namespace with `ip` (and `ip6`: dual stack) on the bridge; `resolver`: its
        resolv.conf's nameserver (kubelet's shape: the cluster DNS Service, the namespace's search
        list, ndots:5); `hairpin`: kubelet's hairpin mode on its bridge port (off: the pod cannot
        reach itself through its Service)."""
        ns = f"{self.tag}-{name}"
        self._add_ns(ns)
        host_end = f"v{self.tag[-6:]}{len(self.pods)}"  # <= 15 characters
        self.node_sh("ip", "link", "add", host_end, "type", "veth", "peer", "name", "eth0", "netns", ns)
        self.node_sh("ip", "link", "set", host_end, "master", "br0", "up")
        # kubelet's hairpin-veth: a frame DNATed back to the pod it came from leaves by the port it entered
        self.node_sh("ip", "link", "set", host_end, "type", "bridge_slave", "hairpin", "on" if hairpin else "off")
        for argv in (("ip", "link", "set", "lo", "up"), ("ip", "addr", "add", f"{ip}/{self.prefix}", "dev", "eth0"),
                     ("ip", "link", "set", "eth0", "up"), ("ip", "route", "add", "default", "via", self.gateway)):
            sh("ip", "netns", "exec", ns, *argv)
        if ip6:
            sh("ip", "netns", "exec", ns, "ip", "addr", "add", f"{ip6}/{PREFIX6}", "dev", "eth0", "nodad")
            sh("ip", "netns", "exec", ns, "ip", "-6", "route", "add", "default", "via", GATEWAY6)
        if resolver:
            conf = Path("/etc/netns") / ns
            conf.mkdir(parents=True, exist_ok=True)
            (conf / "resolv.conf").write_text(f"nameserver {resolver}\nsearch {' '.join(search)}\noptions ndots:5\n")
        self.pods[name] = ns
        return ns

    def service(self, vip: str, port: int, proto: str, backends: list[tuple[str, int]],
                node_port: int | None = None) -> None:
        """kube-proxy's iptables rules for one Service port: VIP:port -> one of `backends`; with
        `node_port`, also any of the node's own addresses at that port (KUBE-NODEPORTS, masqueraded:
        the backend sees the node's address)."""
        self.services += 1
        svc = f"KUBE-SVC-{self.services}"
        v6 = ":" in vip
        tables, host = ("ip6tables", "/128") if v6 else ("iptables", "/32")
        self.node_sh(tables, "-t", "nat", "-N", svc)
        self.node_sh(tables, "-t", "nat", "-A", "KUBE-SERVICES", "-d", f"{vip}{host}", "-p", proto,
                     "--dport", str(port), "-j", svc)
        for i, (ip, target) in enumerate(backends):
            sep = f"KUBE-SEP-{self.services}-{i}"
            self.node_sh(tables, "-t", "nat", "-N", sep)
            rest = len(backends) - i
            pick = ["-m", "statistic", "--mode", "random", "--probability", f"{1 / rest:.5f}"] if rest > 1 else []
            self.node_sh(tables, "-t", "nat", "-A", svc, *pick, "-j", sep)
            # a pod reaching itself through its Service: masqueraded, or its reply would not
            # come back through the node (kube-proxy's KUBE-MARK-MASQ, then MASQUERADE on the way out)
            self.node_sh(tables, "-t", "nat", "-A", sep, "-s", f"{ip}{host}", "-j", "MARK", "--set-xmark",
                         f"{MASQ_MARK}/{MASQ_MARK}")
            self.node_sh(tables, "-t", "nat", "-A", sep, "-p", proto, "-j", "DNAT",
                         "--to-destination", f"[{ip}]:{target}" if v6 else f"{ip}:{target}")
        if node_port is not None:
            if not self.node_ports:  # kube-proxy's last KUBE-SERVICES rule: the node's own addresses
                self.node_sh(tables, "-t", "nat", "-N", "KUBE-NODEPORTS")
                self.node_sh(tables, "-t", "nat", "-A", "KUBE-SERVICES", "-m", "addrtype", "--dst-type", "LOCAL",
                             "-j", "KUBE-NODEPORTS")
            self.node_ports += 1
            for then in (["MARK", "--set-xmark", f"{MASQ_MARK}/{MASQ_MARK}"], [svc]):
                self.node_sh(tables, "-t", "nat", "-A", "KUBE-NODEPORTS", "-p", proto, "--dport", str(node_port),
                             "-j", *then)

    def nft_service(self, name: str, vip: str, port: int, proto: str, backends: list[tuple[str, int]]) -> None:
        """kube-proxy's nftables mode for one IPv4 Service port: its own `kube-proxy` table, a
        verdict map from VIP . protocol . port to the Service's chain, which picks an endpoint
        chain with numgen; the endpoint chain DNATs (and marks a pod reaching itself for
        masquerade). The iptables-shaped Services keep working beside it."""
        if not self.nft_services:
            self.node_nft(f"""
                table ip kube-proxy {{
                    map service-ips {{ type ipv4_addr . inet_proto . inet_service : verdict; }}
                    chain nat-prerouting {{ type nat hook prerouting priority dstnat; jump services; }}
                    chain nat-output {{ type nat hook output priority -100; jump services; }}
                    chain nat-postrouting {{ type nat hook postrouting priority srcnat; jump masquerading; }}
                    chain masquerading {{ meta mark & {MASQ_MARK} == 0 return; masquerade; }}
                    chain mark-for-masquerade {{ meta mark set meta mark | {MASQ_MARK}; }}
                    chain services {{ ip daddr . meta l4proto . th dport vmap @service-ips; }}
                }}""")
        self.nft_services += 1
        svc = f"service-{self.nft_services}-{name}/{proto}"
        endpoints = [f"endpoint-{self.nft_services}-{i}-{ip}/{target}" for i, (ip, target) in enumerate(backends)]
        rules = [f'add chain ip kube-proxy {c}' for c in (svc, *endpoints)]
        for chain, (ip, target) in zip(endpoints, backends):
            rules.append(f'add rule ip kube-proxy {chain} ip saddr {ip} jump mark-for-masquerade')
            rules.append(f'add rule ip kube-proxy {chain} meta l4proto {proto} dnat to {ip}:{target}')
        picks = ", ".join(f'{i} : goto {chain}' for i, chain in enumerate(endpoints))
        rules.append(f'add rule ip kube-proxy {svc} numgen random mod {len(endpoints)} vmap {{ {picks} }}')
        rules.append(f'add element ip kube-proxy service-ips {{ {vip} . {proto} . {port} : goto {svc} }}')
        self.node_nft("\n".join(rules))

    def node_nft(self, script: str) -> None:
        r = subprocess.run(["ip", "netns", "exec", self.node, "nft", "-f", "-"], input=script,
                           capture_output=True, text=True)
        if r.returncode != 0:
            raise RuntimeError(f"lab: nft -f failed ({r.returncode}): {r.stderr.strip()}\n{script}")

    def reject(self, vip: str, port: int, proto: str) -> None:
        """kube-proxy's rule for a Service without endpoints: the ClusterIP's packets are
        forwarded (a route onward) and the filter table rejects them (ICMP port unreachable:
        the client's connect is refused)."""
        self.node_sh("ip", "route", "add", f"{vip}/32", "dev", "br0")
        self.node_sh("iptables", "-A", "FORWARD", "-d", f"{vip}/32", "-p", proto, "--dport", str(port),
                     "-j", "REJECT", "--reject-with", "icmp-port-unreachable")

    def drop_first(self, source: str, port: int, proto: str) -> None:
        """Drop the first packet `source` sends to `port` through the node (once: later ones
        pass), as a conntrack race loses one of two parallel DNS queries."""
        self.node_sh("iptables", "-I", "FORWARD", "-s", f"{source}/32", "-p", proto, "--dport", str(port),
                     "-m", "statistic", "--mode", "nth", "--every", "1000000", "--packet", "0", "-j", "DROP")

    def node_address(self, ip: str) -> None:
        """An address of the node itself (on its lo): a host service pods can reach."""
        self.node_sh("ip", "addr", "add", f"{ip}/32", "dev", "lo")

    # -- running ----------------------------------------------------------------------------------

    def argv(self, pod: str, argv: list[str]) -> list[str]:
        """`pod`: a pod's name, or None for the node itself."""
        return ["ip", "netns", "exec", self.node if pod is None else self.pods[pod], *argv]

    def start(self, pod: str | None, argv: list[str], **kw) -> subprocess.Popen:
        return subprocess.Popen(self.argv(pod, argv), **kw)

    def run(self, pod: str, argv: list[str], timeout: float = 30.0) -> subprocess.CompletedProcess:
        return subprocess.run(self.argv(pod, argv), capture_output=True, timeout=timeout)

    def wait_listening(self, pod: str | None, ip: str, port: int, proc: subprocess.Popen, timeout: float = 15.0) -> None:
        """Until a TCP socket listens on ip:port in the pod (read from the kernel: no traffic)."""
        deadline = time.monotonic() + timeout
        while True:
            if proc.poll() is not None:
                err = proc.stderr.read() if proc.stderr else ""
                raise RuntimeError(f"lab: {proc.args} exited ({proc.returncode}) before listening: {err}")
            r = subprocess.run(self.argv(pod, ["ss", "-Hltn", f"src {ip}:{port}"]), capture_output=True, text=True)
            if r.stdout.strip():
                return
            if time.monotonic() > deadline:
                raise RuntimeError(f"lab: nothing listens on {ip}:{port} in {pod} after {timeout} s")
            time.sleep(0.05)  # poll interval of a readiness check, bounded by the deadline

    def netns_ids(self) -> set[int]:
        """The lab's network namespace ids (node and pods), as the capture reports them
        (SyscallEvent.netns)."""
        return {os.stat(f"/run/netns/{ns}").st_ino for ns in self.made}

    def close(self) -> None:
        for ns in reversed(self.made):
            subprocess.run(["ip", "netns", "delete", ns], capture_output=True)  # its veths go with it
            conf = Path("/etc/netns") / ns
            if conf.is_dir():
                shutil.rmtree(conf)
        self.made.clear()
