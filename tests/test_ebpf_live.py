"""The eBPF capture on the real kernel, as root: real programs produce the expected events.

Traffic stays on loopback (and in a network namespace this module creates, with
no route out). The capture sees the whole machine, so every assertion selects
events by the pid of the process the test started.
"""
from __future__ import annotations

import hashlib
import os
import shutil
import socket
import struct
import subprocess
import sys
import threading
import time
from pathlib import Path

import dns.message
import dns.rrset
import pytest

from lab.net.socklb import remove_cgroup
from svctrace.agents.ebpf.containers import ContainerIds
from svctrace.agents.ebpf.loader import CaptureConfig, CaptureError, EbpfCapture, boot_to_epoch_ns
from svctrace.agents.ebpf.records import Normalizer

pytestmark = pytest.mark.root

REPO = Path(__file__).resolve().parent.parent
SVCTRACE = [sys.executable, "-m", "svctrace"]


class Live:
    """A running capture and a poll-with-deadline collector over its events."""

    def __init__(self) -> None:
        # exclude_pid=0: the test process itself (DNS responder) must be visible
        self.cap = EbpfCapture(CaptureConfig(exclude_pid=0))
        self.norm = Normalizer("test-node", boot_to_epoch_ns(), containers=ContainerIds())
        self.seen: list = []

    def until(self, want, timeout: float = 15.0, what: str = "events"):
        """Drain until want(events) is truthy; returns its value. Fails with a summary at the deadline."""
        deadline = time.monotonic() + timeout
        while True:
            out: list = []
            self.cap.ring.drain(self.norm.decode, out)
            self.seen.extend(out)
            got = want(self.seen)
            if got:
                return got
            if time.monotonic() > deadline:
                raise AssertionError(f"timed out waiting for {what}; {len(self.seen)} events seen")
            self.cap.ring.wait(0.05)

    def of(self, pid: int, kind: str | None = None) -> list:
        return [e for e in self.seen if e.pid == pid and (kind is None or e.kind == kind)]


@pytest.fixture(scope="module")
def live():
    if os.geteuid() != 0:
        pytest.fail("eBPF tests need root (they are marked `root`)")
    lv = Live()
    yield lv
    lv.cap.close()


def free_port(kind=socket.SOCK_STREAM) -> int:
    with socket.socket(socket.AF_INET, kind) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_listening(port: int, proc: subprocess.Popen, timeout: float = 15.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise AssertionError(f"server exited with {proc.returncode}")
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
            return
        except OSError:
            time.sleep(0.02)  # retry interval of a readiness poll, bounded by the deadline
    raise AssertionError(f"nothing listening on 127.0.0.1:{port}")


def first(events, **fields):
    return next((e for e in events if all(getattr(e, k) == v for k, v in fields.items())), None)


# -- HTTP: curl -> python http.server ------------------------------------------------------------

def test_curl_against_local_http_server(live, tmp_path):
    (tmp_path / "hello.txt").write_bytes(b"hello svctrace\n")
    port = free_port()
    server = subprocess.Popen([sys.executable, "-m", "http.server", str(port), "--bind", "127.0.0.1",
                               "--directory", str(tmp_path)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        wait_listening(port, server)
        curl = subprocess.Popen(["curl", "-s", "-H", "X-Svctrace-Test: yes", "-H", "Authorization: Bearer t0ken",
                                 f"http://127.0.0.1:{port}/hello.txt"], stdout=subprocess.PIPE)
        body, _ = curl.communicate(timeout=15)
        assert body == b"hello svctrace\n"

        def done(seen):
            conn = first([e for e in seen if e.pid == curl.pid], kind="connect")
            return (conn is not None and any(e.pid == curl.pid and e.kind == "close" for e in seen)
                    and any(e.pid == server.pid and e.kind == "close" and e.remote_port == conn.local_port
                            for e in seen))
        live.until(done, what="curl and http.server events")
    finally:
        server.terminate()
        server.wait(10)

    c = live.of(curl.pid)
    conn = first(c, kind="connect")
    assert conn and conn.role == "client" and conn.proto == "tcp" and conn.family == "ipv4"
    assert (conn.remote_ip, conn.remote_port, conn.addr_ip, conn.addr_port) == ("127.0.0.1", port, "127.0.0.1", port)
    assert conn.res in (0, -115) and conn.local_ip == "127.0.0.1" and conn.local_port > 0
    req = first(c, kind="send")
    assert req.syscall in ("sendto", "send", "write", "sendmsg")
    assert req.data.startswith(b"GET /hello.txt HTTP/1.1\r\n") and b"X-Svctrace-Test: yes" in req.data
    assert req.size == req.res == len(req.data) and req.fd == conn.fd
    assert (req.local_port, req.remote_port) == (conn.local_port, port)
    resp = first(c, kind="recv")
    assert resp.data.startswith(b"HTTP/1.0 200") and resp.remote_port == port

    s = live.of(server.pid)
    acc = first(s, kind="accept", remote_port=conn.local_port)  # (the readiness probe was accepted before)
    assert acc and acc.role == "server" and acc.syscall in ("accept", "accept4") and acc.fd == acc.res > 0
    assert (acc.local_ip, acc.local_port, acc.remote_ip) == ("127.0.0.1", port, "127.0.0.1")
    assert (acc.addr_ip, acc.addr_port) == ("127.0.0.1", conn.local_port)
    got = first(s, kind="recv", fd=acc.fd, remote_port=conn.local_port)
    assert got.data == req.data and got.role == "server" and got.remote_port == conn.local_port
    sent = [e for e in s if e.kind == "send" and e.fd == acc.fd and e.remote_port == conn.local_port]
    assert sent[0].data.startswith(b"HTTP/1.0 200") and any(b"hello svctrace" in e.data for e in sent)
    assert first(s, kind="close", fd=acc.fd, remote_port=conn.local_port).role == "server"
    assert all(e.netns == conn.netns and e.cgroup_id for e in c + s)


# -- DNS: dig (sendmmsg) and an unconnected Python UDP socket against a loopback responder ----------

class Responder:
    """A tiny DNS server on loopback (dnspython): answers every A query with 10.96.0.10."""

    def __init__(self) -> None:
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.sock.bind(("127.0.0.1", 0))
        self.port = self.sock.getsockname()[1]
        self.thread = threading.Thread(target=self.serve, daemon=True)
        self.thread.start()

    def serve(self) -> None:
        while True:
            try:
                wire, peer = self.sock.recvfrom(4096)
            except OSError:
                return
            q = dns.message.from_wire(wire)
            r = dns.message.make_response(q)
            r.answer.append(dns.rrset.from_text(q.question[0].name, 30, "IN", "A", "10.96.0.10"))
            self.sock.sendto(r.to_wire(), peer)

    def close(self) -> None:
        self.sock.close()


@pytest.fixture
def responder():
    r = Responder()
    yield r
    r.close()


def test_dig_query_via_sendmmsg(live, responder):
    name = "web.default.svc.cluster.local."
    dig = subprocess.Popen(["dig", "@127.0.0.1", "-p", str(responder.port), name, "A", "+tries=1", "+time=3",
                            "+short"], stdout=subprocess.PIPE)
    out, _ = dig.communicate(timeout=20)
    assert out.strip() == b"10.96.0.10"
    me = os.getpid()
    live.until(lambda seen: any(e.pid == dig.pid and e.kind == "recv" and e.data for e in seen)
               and any(e.pid == me and e.kind == "send" and e.remote_port and e.data for e in seen),
               what="dig query and answer")
    d = live.of(dig.pid)
    q = next(e for e in d if e.kind == "send" and e.proto == "udp" and e.data)
    assert q.syscall == "sendmmsg"  # how dig sends
    assert (q.remote_ip, q.remote_port) == ("127.0.0.1", responder.port)
    query = dns.message.from_wire(q.data)
    assert str(query.question[0].name) == name and q.size == len(q.data)
    a = next(e for e in d if e.kind == "recv" and e.proto == "udp" and e.data)
    answer = dns.message.from_wire(a.data)
    assert answer.id == query.id and "10.96.0.10" in answer.to_text()
    # the responder (this process) saw the same query from dig's port
    srv = next(e for e in live.of(me, "recv") if e.data == q.data)
    assert (srv.syscall, srv.addr_ip, srv.addr_port, srv.local_port) == ("recvfrom", "127.0.0.1", q.local_port,
                                                                        responder.port)
    assert srv.role == "server"


def test_unconnected_python_udp_socket(live, responder):
    code = ("import socket,sys,dns.message\n"
            "s=socket.socket(socket.AF_INET,socket.SOCK_DGRAM)\n"
            "q=dns.message.make_query('api.default.svc.cluster.local','A')\n"
            f"s.sendto(q.to_wire(),('127.0.0.1',{responder.port}))\n"
            "print(s.recvfrom(4096)[1][1])\n")
    p = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE)
    out, _ = p.communicate(timeout=20)
    assert int(out) == responder.port
    live.until(lambda seen: any(e.pid == p.pid and e.kind == "recv" and e.data for e in seen), what="python UDP")
    ev = live.of(p.pid)
    snd = first(ev, kind="send", syscall="sendto")
    assert (snd.proto, snd.local_ip, snd.remote_ip, snd.remote_port) == ("udp", "0.0.0.0", "127.0.0.1", responder.port)
    assert (snd.addr_ip, snd.addr_port) == ("127.0.0.1", responder.port) and snd.local_port > 0
    assert str(dns.message.from_wire(snd.data).question[0].name) == "api.default.svc.cluster.local."
    rcv = first(ev, kind="recv", syscall="recvfrom")
    assert (rcv.addr_ip, rcv.addr_port, rcv.remote_port) == ("127.0.0.1", responder.port, responder.port)
    assert dns.message.from_wire(rcv.data).id == dns.message.from_wire(snd.data).id


# -- nginx (writev) ------------------------------------------------------------------------------

NGINX_CONF = """
daemon off; master_process off; worker_processes 1;
pid {d}/nginx.pid; error_log {d}/error.log;
events {{ worker_connections 64; }}
http {{
  access_log off; sendfile off;
  client_body_temp_path {d}/body; proxy_temp_path {d}/proxy; fastcgi_temp_path {d}/fcgi;
  server {{ listen 127.0.0.1:{port}; root {d}/www; }}
}}
"""


def test_nginx_answers_with_writev(live, tmp_path):
    nginx = shutil.which("nginx") or "/usr/sbin/nginx"
    assert os.path.exists(nginx), "nginx missing: .ci/install-system-deps installs nginx-light"
    (tmp_path / "www").mkdir()
    (tmp_path / "www" / "index.html").write_bytes(b"<p>served by nginx</p>\n")
    port = free_port()
    (tmp_path / "nginx.conf").write_text(NGINX_CONF.format(d=tmp_path, port=port))
    server = subprocess.Popen([nginx, "-p", str(tmp_path), "-e", str(tmp_path / "error.log"), "-c",
                               str(tmp_path / "nginx.conf")], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        wait_listening(port, server)
        curl = subprocess.Popen(["curl", "-s", f"http://127.0.0.1:{port}/index.html"], stdout=subprocess.PIPE)
        body, _ = curl.communicate(timeout=15)
        assert body == b"<p>served by nginx</p>\n"
        live.until(lambda seen: any(e.pid == server.pid and e.syscall == "writev" for e in seen)
                   and any(e.pid == curl.pid and e.kind == "recv" for e in seen), what="nginx writev")
        assert server.poll() is None, server.stderr.read()
    finally:
        server.terminate()
        server.wait(10)
    conn = first(live.of(curl.pid), kind="connect")
    w = first(live.of(server.pid), syscall="writev", remote_port=conn.local_port)
    assert w.kind == "send" and w.role == "server" and w.proto == "tcp"
    assert w.data.startswith(b"HTTP/1.1 200 OK\r\n") and b"served by nginx" in w.data and w.size == w.res
    assert (w.local_port, w.remote_port) == (port, conn.local_port)
    r = first(live.of(server.pid), kind="recv", remote_port=conn.local_port)
    assert r.data.startswith(b"GET /index.html HTTP/1.1") and r.remote_port == conn.local_port


# -- a connection reset by its peer ----------------------------------------------------------------

def test_events_after_a_reset_keep_the_local_port(live):
    """A TCP socket reset by its peer leaves the port table (its port reads 0 in the kernel's
    socket) before the syscalls that meet the reset return: they must still name the client's
    port, or no chain can join them (a userspace proxy that closes at once does this to curl)."""
    tag = f"reset{os.getpid()}".encode()
    with socket.socket() as server:
        server.bind(("127.0.0.1", 0))
        server.listen()
        client = socket.create_connection(server.getsockname())
        port, fd = client.getsockname()[1], client.fileno()
        peer, _ = server.accept()
        peer.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        peer.close()  # linger 0: an RST, and the client's socket is closed by the kernel
        with pytest.raises(ConnectionResetError):
            client.recv(16)  # returns once the reset has arrived
        with pytest.raises(OSError):
            client.send(tag)  # the connection is gone: EPIPE
        client.close()
    pid = os.getpid()

    def after_the_reset(seen):
        connect = next((e for e in seen if e.pid == pid and e.kind == "connect" and e.local_port == port), None)
        later = [e for e in seen if connect and e.pid == pid and e.fd == fd and e.ts > connect.ts]
        return later if any(e.kind == "close" for e in later) else None

    events = live.until(after_the_reset, what="the client's syscalls after the reset")
    assert [e.kind for e in events] == ["recv", "send", "close"]
    assert [e.errno for e in events] == ["ECONNRESET", "EPIPE", None]
    assert [e.local_port for e in events] == [port] * 3


# -- network namespace and cgroups ----------------------------------------------------------------

SEND = "import socket; socket.socket(socket.AF_INET, socket.SOCK_DGRAM).sendto(b'{tag}', ('127.0.0.1', 9))"


def test_new_netns_and_cgroups_get_distinct_ids(live):
    tag = f"svct{os.getpid()}"
    ns = f"{tag}-ns"
    # named like container runtimes name a container's cgroup, so the container id resolves too
    cid_a, cid_b = (hashlib.sha256(f"{tag}{x}".encode()).hexdigest() for x in "AB")
    v2 = Path(f"/sys/fs/cgroup/unified/cri-containerd-{cid_a}.scope")
    v1 = Path(f"/sys/fs/cgroup/memory/docker/{cid_b}")
    ours = [d for d in (v1.parent,) if not d.exists()]  # remove only what this test created
    subprocess.run(["ip", "netns", "add", ns], check=True)
    try:
        subprocess.run(["ip", "-n", ns, "link", "set", "lo", "up"], check=True)  # lo only: no route out
        made = []
        for d in (v2, v1):
            if d.parent.parent.is_dir():
                d.mkdir(parents=True)
                made.append(d)
        assert made, "no cgroup hierarchy to create a test cgroup in"
        live.norm.containers.refresh()
        procs = []
        # A: new netns + new cgroup (v2 when mounted, else v1)
        procs.append(subprocess.Popen(["sh", "-c", f'echo $$ > {made[0]}/cgroup.procs && exec ip netns exec {ns} '
                                       f'{sys.executable} -c "{SEND.format(tag=tag + "A")}"']))
        # B: host netns, a v1 memory cgroup only (a hybrid host's containers look like this)
        if v1 in made:
            procs.append(subprocess.Popen(["sh", "-c", f'echo $$ > {v1}/cgroup.procs && exec {sys.executable} -c '
                                           f'"{SEND.format(tag=tag + "B")}"']))
        for p in procs:
            assert p.wait(20) == 0
        live.until(lambda seen: all(any(e.data == f"{tag}{x}".encode() for e in seen) for x in "AB"[:len(procs)]),
                   what="sends from the namespace and the cgroups")
        host_netns = os.stat("/proc/self/ns/net").st_ino
        a = next(e for e in live.seen if e.data == f"{tag}A".encode())
        assert a.netns == os.stat(f"/run/netns/{ns}").st_ino != host_netns
        assert a.cgroup_id == made[0].stat().st_ino
        assert a.container_id == (cid_a if made[0] == v2 else cid_b)
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as own:
            own.sendto(f"{tag}self".encode(), ("127.0.0.1", 9))
        mine = live.until(lambda seen: [e for e in seen if e.data == f"{tag}self".encode()], what="own event")
        assert a.cgroup_id != mine[0].cgroup_id
        if v1 in made and len(procs) > 1:
            b = next(e for e in live.seen if e.data == f"{tag}B".encode())
            assert b.netns == host_netns
            assert b.cgroup_id == v1.stat().st_ino != a.cgroup_id and b.container_id == cid_b
    finally:
        subprocess.run(["ip", "netns", "delete", ns], check=False)
        for d in [v2, v1, *ours]:
            if d.is_dir():
                remove_cgroup(d)


# -- clear errors, no tracebacks ------------------------------------------------------------------

def test_missing_btf_is_a_clear_error(tmp_path):
    with pytest.raises(CaptureError, match="kernel BTF not found"):
        EbpfCapture(CaptureConfig(btf_path=str(tmp_path / "no-btf")))
    p = subprocess.run(SVCTRACE + ["agent", "--btf", str(tmp_path / "no-btf"), "--output", str(tmp_path / "o"),
                                   "--metrics-addr", ""], capture_output=True, text=True, timeout=60)
    assert p.returncode == 2
    assert "kernel BTF not found" in p.stderr and "Traceback" not in p.stderr


def test_without_privileges_is_a_clear_error(tmp_path):
    from svctrace.agents.ebpf import build

    obj = build.build()
    # uid 0 but no capabilities at all: bpf() answers EPERM like for an unprivileged pod
    p = subprocess.run(["setpriv", "--inh-caps=-all", "--ambient-caps=-all", "--bounding-set=-all", "--"]
                       + SVCTRACE + ["agent", "--bpf-object", str(obj), "--output", str(tmp_path / "o"),
                                     "--metrics-addr", ""], capture_output=True, text=True, timeout=60)
    assert p.returncode == 2, p.stderr
    assert "Operation not permitted" in p.stderr and "needs root" in p.stderr
    assert "Traceback" not in p.stderr
