"""DNAT vs socket-LB, on the real kernel: a Cilium-style cgroup/connect4 program rewrites the
destination inside connect(); the capture must show the requested VIP (addr_*) AND the backend
the socket really talks to (remote_*). Without the rewrite (DNAT-like paths) both agree."""
from __future__ import annotations

import ctypes
import os
import subprocess
import sys
from pathlib import Path

import pytest

from svctrace.agents.ebpf import build
from svctrace.agents.ebpf.libbpf import Libbpf, ObjectOpenOpts
from tests.test_ebpf_live import Live, free_port, wait_listening

pytestmark = pytest.mark.root

VIP, VIP_PORT = "10.96.77.7", 80

# The smallest socket-level load balancer: VIP:80 -> 127.0.0.1:BACKEND_PORT, for processes
# in the cgroup it is attached to (what Cilium's kube-proxy replacement does per Service).
SOCKLB_C = r"""
#include "vmlinux.h"
#include <bpf/bpf_helpers.h>
#include <bpf/bpf_endian.h>
char LICENSE[] SEC("license") = "GPL";
const volatile __u32 vip = 0;          /* network order */
const volatile __u16 vip_port = 0;     /* host order */
const volatile __u16 backend_port = 0; /* host order */
SEC("cgroup/connect4")
int socklb(struct bpf_sock_addr *ctx)
{
	if (ctx->user_ip4 == vip && ctx->user_port == bpf_htons(vip_port)) {
		ctx->user_ip4 = bpf_htonl(0x7f000001);
		ctx->user_port = bpf_htons(backend_port);
	}
	return 1;
}
"""


def load_socklb(tmp: Path, backend_port: int, cgroup: Path):
    src = tmp / "socklb.bpf.c"
    src.write_text(SOCKLB_C)
    obj = tmp / "socklb.bpf.o"
    header = build.vmlinux_header()
    subprocess.run(["clang", "-O2", "-g", "-target", "bpf", "-I", str(header.parent), "-c", str(src), "-o", str(obj)],
                   check=True)
    lib = Libbpf()
    o = lib.bpf_object__open_file(str(obj).encode(), ctypes.byref(ObjectOpenOpts(sz=ctypes.sizeof(ObjectOpenOpts))))
    assert o, "cannot open socklb object"
    m = None
    while True:
        m = lib.bpf_object__next_map(o, m)
        if not m or lib.bpf_map__name(m).endswith(b".rodata"):
            break
    layout = lib.datasec_vars(lib.bpf_object__btf(o), ".rodata")
    base = lib.bpf_map__initial_value(m, ctypes.byref(ctypes.c_size_t()))
    for name, value in (("vip", int.from_bytes(bytes(map(int, VIP.split("."))), "little")),
                        ("vip_port", VIP_PORT), ("backend_port", backend_port)):
        off, size = layout[name]
        ctypes.memmove(base + off, value.to_bytes(size, "little"), size)
    assert lib.bpf_object__load(o) == 0, lib.recent_log()
    prog = lib.bpf_object__next_program(o, None)
    fd = os.open(cgroup, os.O_RDONLY | os.O_DIRECTORY)
    link = lib.bpf_program__attach_cgroup(prog, fd)
    assert link, lib.recent_log()
    return lib, o, link, fd


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
    lib = o = link = None
    try:
        wait_listening(port, server)
        lib, o, link, cg_fd = load_socklb(tmp_path, port, cgroup)
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
        os.close(cg_fd)
    finally:
        if link:
            lib.bpf_link__destroy(link)
        if o:
            lib.bpf_object__close(o)
        live.cap.close()
        server.terminate()
        server.wait(10)
        cgroup.rmdir()
