"""What the normalizer needs to know about event types, derived from the table.

`CATEGORY[code]` says how the reader treats an event (None = irrelevant for
network state: counted in `n`, never decoded). `KIND[syscall]` maps concrete
syscalls to `SyscallEvent.kind`. Everything is keyed by the concrete syscall
name from the event table, so every version of an event (CONNECT_X with 2 or
4 params, ACCEPT_X/ACCEPT_5_X/ACCEPT4_6_X...) is handled by the same code.
"""
from __future__ import annotations

import errno as _errno

from .event_table import EVENTS

SEND_SYSCALLS = frozenset(("send", "sendto", "sendmsg", "sendmmsg", "write", "writev", "pwrite", "pwritev"))
RECV_SYSCALLS = frozenset(("recv", "recvfrom", "recvmsg", "recvmmsg", "read", "readv", "pread", "preadv"))
KIND: dict[str, str] = {
    **dict.fromkeys(SEND_SYSCALLS, "send"),
    **dict.fromkeys(RECV_SYSCALLS, "recv"),
    **{k: k for k in ("connect", "accept", "accept4", "close", "socket", "bind", "listen", "shutdown")},
}
KIND["accept4"] = "accept"
# getsockopt(SOL_SOCKET, SO_ERROR): how a non-blocking connect ended; the reader keeps only that
# option and reports it as a connect result (res -errno, 0 once connected), as the eBPF agent does
KIND["getsockopt"] = "connect"
PPM_SOCKOPT_LEVEL_SOL_SOCKET = 1
PPM_SOCKOPT_SO_ERROR = 4
PPM_SOCKOPT_IDX_ERRNO = 1  # the DYN val's type index: an int64, -errno
CLONE_SYSCALLS = frozenset(("clone", "fork", "vfork", "clone3"))
EXEC_SYSCALLS = frozenset(("execve", "execveat"))
DUP_SYSCALLS = frozenset(("dup", "dup2", "dup3"))

# PPM socket domains / types (ppm_events_public.h)
FAMILY = {1: "unix", 2: "ipv4", 10: "ipv6"}
SOCK_TYPE_PROTO = {1: "tcp", 2: "udp", 3: "raw", 5: "tcp"}  # STREAM, DGRAM, RAW, SEQPACKET
IPPROTO = {6: "tcp", 17: "udp", 1: "raw", 58: "raw", 255: "raw"}

ERRNO_NAMES = dict(_errno.errorcode)


def errno_name(res: int | None) -> str | None:
    if res is None or res >= 0:
        return None
    return ERRNO_NAMES.get(-res, f"E{-res}")


def _category(e) -> str | None:
    s = e.syscall
    if e.enum in ("PPME_DROP_E",):
        return "drop"
    if e.enum in ("PPME_CONTAINER_E", "PPME_CONTAINER_JSON_E", "PPME_CONTAINER_JSON_2_E"):
        return "container"
    if e.enum == "PPME_K8S_E":
        return "k8s"
    if e.enum == "PPME_PROCEXIT_E" or e.enum.startswith("PPME_PROCEXIT_") and e.is_enter:
        return "procexit"
    if e.is_enter:
        return None
    if s in KIND:
        return "net"
    if s in CLONE_SYSCALLS:
        return "clone"
    if s in EXEC_SYSCALLS:
        return "exec"
    if s in DUP_SYSCALLS:
        return "dup"
    if s == "socketpair":
        return "socketpair"
    if "CREATES_FD" in e.flags:
        return "newfd"
    return None


CATEGORY: tuple[str | None, ...] = tuple(_category(e) for e in EVENTS)
# Enter events worth remembering: their exit is handled and may lack what they carry.
MERGE_ENTER: tuple[bool, ...] = tuple(
    e.is_enter and bool(e.params) and e.code + 1 < len(EVENTS)
    and CATEGORY[e.code + 1] in ("net", "dup", "socketpair")
    for e in EVENTS
)
# Events on an existing fd that matter only when the fd is a socket: the reader reads
# just the fd (of the event, or of the stored enter event) before decoding anything.
_ON_EXISTING_FD = SEND_SYSCALLS | RECV_SYSCALLS | {"close", "shutdown", "listen", "bind", "getsockopt"}
FD_CHECK: tuple[bool, ...] = tuple(
    e.syscall in _ON_EXISTING_FD and (not e.is_enter or MERGE_ENTER[e.code]) for e in EVENTS
)
FD_INDEX: tuple[int, ...] = tuple(
    next((i for i, (n, t) in enumerate(e.params) if n == "fd" and t == "FD"), -1) for e in EVENTS
)
# fds created by events of category "newfd": indexes of their fd-valued params
NEWFD_INDEXES: tuple[tuple[int, ...], ...] = tuple(
    tuple(i for i, (n, t) in enumerate(e.params) if t in ("FD", "ERRNO") and n in ("fd", "res", "fd1", "fd2"))
    for e in EVENTS
)
