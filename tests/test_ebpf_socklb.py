"""DNAT vs socket-LB, on the real kernel: a Cilium-style cgroup/connect4 program rewrites the
destination inside connect(); the capture must show the requested VIP (addr_*) AND the backend
the socket really talks to (remote_*). Without the rewrite (DNAT-like paths) both agree."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from lab.net.socklb import SocketLB
from tests.test_ebpf_live import Live, free_port, wait_listening

pytestmark = pytest.mark.root

VIP, VIP_PORT = "10.96.77.7", 80


def test_socket_lb_rewrite_is_told_from_the_requested_address(tmp_path):
    if os.geteuid() != 0:
        pytest.fail("needs root")
    cgroup = Path(f"/sys/fs/cgroup/unified/svct-socklb-{os.getpid()}")
    assert cgroup.parent.is_dir(), "needs a cgroup v2 hierarchy"
    (tmp_path / "www").mkdir()
    (tmp_path / "www" / "svc").write_bytes(b"backend reached\n")
    port = free_port()
    server = subprocess.Popen([sys.executable, "-m", "http.server", str(port), "--bind", "127.0.0.1", "--directory",
                               str(tmp_path / "www")], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    cgroup.mkdir()
    live = Live()
    try:
        wait_listening(port, server)
        with SocketLB(tmp_path, cgroup, VIP, VIP_PORT, ("127.0.0.1", port)):
            # curl inside the cgroup asks for the VIP; the kernel socket goes to the backend
            lb = subprocess.Popen(["sh", "-c", f"echo $$ > {cgroup}/cgroup.procs && exec curl -s --max-time 10 "
                                   f"http://{VIP}:{VIP_PORT}/svc"], stdout=subprocess.PIPE)
            assert lb.communicate(timeout=30)[0] == b"backend reached\n"
            # outside the cgroup nothing rewrites: a plain connect's peer is what it asked for
            plain = subprocess.Popen(["curl", "-s", f"http://127.0.0.1:{port}/svc"], stdout=subprocess.PIPE)
            assert plain.communicate(timeout=30)[0] == b"backend reached\n"
        live.until(lambda seen: all(any(e.pid == p.pid and e.kind == "close" for e in seen) for p in (lb, plain)),
                   what="both curls")
        c = next(e for e in live.of(lb.pid) if e.kind == "connect")
        assert (c.addr_ip, c.addr_port) == (VIP, VIP_PORT)  # what the process asked for
        assert (c.remote_ip, c.remote_port) == ("127.0.0.1", port)  # where the socket really goes
        send = next(e for e in live.of(lb.pid) if e.kind == "send")
        assert send.data.startswith(b"GET /svc HTTP/1.1") and (send.remote_ip, send.remote_port) == ("127.0.0.1", port)
        assert f"Host: {VIP}".encode() in send.data
        d = next(e for e in live.of(plain.pid) if e.kind == "connect")
        assert (d.addr_ip, d.addr_port) == (d.remote_ip, d.remote_port) == ("127.0.0.1", port)
    finally:
        live.cap.close()
        server.terminate()
        server.wait(10)
        cgroup.rmdir()
