"""The smallest socket-level load balancer, for tests on the real kernel (root): a cgroup/connect4
program rewriting VIP:port to one backend inside connect() (a TCP or a UDP socket's), for the processes
of one cgroup (what Cilium's kube-proxy replacement does per Service).

    with SocketLB(tmp, cgroup, vip="10.96.0.106", vip_port=8080, backend=("10.244.0.3", 80)):
        ...  # processes in `cgroup` connecting to the VIP reach the backend
"""
from __future__ import annotations

import ctypes
import os
import subprocess
import time
from pathlib import Path

from svctrace.agents.ebpf import build
from svctrace.agents.ebpf.libbpf import Libbpf, ObjectOpenOpts

SOCKLB_C = r"""
#include "vmlinux.h"
#include <bpf/bpf_helpers.h>
#include <bpf/bpf_endian.h>
char LICENSE[] SEC("license") = "GPL";
const volatile __u32 vip = 0;          /* network order */
const volatile __u16 vip_port = 0;     /* host order */
const volatile __u32 backend_ip = 0;   /* network order */
const volatile __u16 backend_port = 0; /* host order */
SEC("cgroup/connect4")
int socklb(struct bpf_sock_addr *ctx)
{
	if (ctx->user_ip4 == vip && ctx->user_port == bpf_htons(vip_port)) {
		ctx->user_ip4 = backend_ip;
		ctx->user_port = bpf_htons(backend_port);
	}
	return 1;
}
"""


def _ip4(ip: str) -> int:
    """An IPv4 address as the u32 whose little-endian bytes are its network-order bytes."""
    return int.from_bytes(bytes(map(int, ip.split("."))), "little")


class SocketLB:
    def __init__(self, tmp: Path, cgroup: Path, vip: str, vip_port: int, backend: tuple[str, int],
                 name: str = "socklb") -> None:
        """`name`: its files' in tmp (one per program attached at once)."""
        self.tmp, self.cgroup, self.name = tmp, cgroup, name
        self.config = {"vip": _ip4(vip), "vip_port": vip_port, "backend_ip": _ip4(backend[0]),
                       "backend_port": backend[1]}
        self.lib = self.obj = self.link = None

    def __enter__(self) -> "SocketLB":
        src = self.tmp / f"{self.name}.bpf.c"
        src.write_text(SOCKLB_C)
        obj = self.tmp / f"{self.name}.bpf.o"
        header = build.vmlinux_header()
        subprocess.run(["clang", "-O2", "-g", "-target", "bpf", "-I", str(header.parent), "-c", str(src),
                        "-o", str(obj)], check=True)
        lib = self.lib = Libbpf()
        o = self.obj = lib.bpf_object__open_file(str(obj).encode(),
                                                 ctypes.byref(ObjectOpenOpts(sz=ctypes.sizeof(ObjectOpenOpts))))
        if not o:
            raise RuntimeError("cannot open the socket-LB object")
        m = None
        while True:
            m = lib.bpf_object__next_map(o, m)
            if not m or lib.bpf_map__name(m).endswith(b".rodata"):
                break
        layout = lib.datasec_vars(lib.bpf_object__btf(o), ".rodata")
        base = lib.bpf_map__initial_value(m, ctypes.byref(ctypes.c_size_t()))
        for name, value in self.config.items():
            off, size = layout[name]
            ctypes.memmove(base + off, value.to_bytes(size, "little"), size)
        if lib.bpf_object__load(o) != 0:
            raise RuntimeError(f"cannot load the socket-LB program: {lib.recent_log()}")
        prog = lib.bpf_object__next_program(o, None)
        fd = os.open(self.cgroup, os.O_RDONLY | os.O_DIRECTORY)
        try:
            self.link = lib.bpf_program__attach_cgroup(prog, fd)
        finally:
            os.close(fd)
        if not self.link:
            raise RuntimeError(f"cannot attach the socket-LB program: {lib.recent_log()}")
        return self

    def __exit__(self, *exc) -> None:
        if self.link:
            self.lib.bpf_link__destroy(self.link)
            self.link = None
        if self.obj:
            self.lib.bpf_object__close(self.obj)
            self.obj = None


def remove_cgroup(cgroup: Path, timeout: float = 10.0) -> None:
    """rmdir a test cgroup once its exited processes have left it."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            cgroup.rmdir()
            return
        except OSError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.05)  # an exited process leaves its cgroup asynchronously
