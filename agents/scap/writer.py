"""Writing .scap captures that our reader and Debian's sysdig 0.29.3 both read.

    with ScapWriter("out.scap", hostname="node-1", gzip=False) as w:
        w.write_event(syscall_event)                 # a SyscallEvent
        w.write_raw(ts, tid, code, {"res": 0, ...})  # any event type, params by name

Layout (scap-format.md §3): SHB 1.2, MI, IL_V2, UL_V2, PL_V9, one FDL_V2 per
process, then EV_V2 blocks. Each SyscallEvent becomes one exit event with its
full parameter list (connect exit with res, tuple, fd, addr; send/recv exits
with res, data, fd, size, tuple; accept exits with fd, tuple, queue stats;
close, socket, bind, listen, shutdown; DROP_E for kind="lost"). Each exit is
preceded by its enter event (same ts, the enter's params taken from the exit)
because sysdig 0.29.3 (libsinsp of 2022) takes the fd of an exit from the
enter event; our reader merges the pair into one SyscallEvent, so
`enter_events=False` writes exit-only files like current drivers. Event codes
are the newest exit versions that sysdig 0.29.3 (libs 2022-03, 338 types)
knows, so accept4 is written as PPME_SOCKET_ACCEPT4_5_X (249), not 389.

The process and fd lists must precede the events but are only known once all
events are seen, so events are spooled (in memory up to 8 MiB, then in a
temporary file) and the file is assembled on `close()`; memory stays bounded
by the number of threads and sockets.

Round trip SyscallEvent -> file -> reader gives equal events except for what
the format cannot carry: `n` is renumbered (the position in the written file),
`pid`/`comm`/`exe`/`container_id` are per thread (the last values written for
a tid win; the container id is stored in a docker cgroup path and reads back
as its 12-character form, like sysdig's container.id), `cgroup_id`, `netns` and `redacted` are not stored, a "lost"
marker reads back with res=1 (scap drop events carry no count), `addr_*` of
TCP send/recv and of connect without an address are not stored separately,
the `role` of a socket first seen mid-connection (written to the fd list)
is re-derived like libsinsp does (a server socket's local port is written as a
listening socket too; unix sockets from the fd list have no role), and an IPv4/IPv6 socket whose fd
number was closed and then re-created by a syscall that is not a SyscallEvent
(dup, socketpair, inherited) is unknown to the reader after the close (unix
sockets are re-created with a socketpair event, which the reader does not
yield).
"""
from __future__ import annotations

import gzip as _gzip
import shutil
import socket
import struct
import tempfile
from typing import BinaryIO

from svctrace.schemas.models import SyscallEvent

from . import blocks as B
from .reader import CLONE_FILES, CLONE_THREAD
from .event_table import EVENTS, FIXED, STRING_TYPES, SYSDIG_0_29_TABLE_SIZE
from .normalize import PPM_SOCKOPT_IDX_ERRNO, PPM_SOCKOPT_LEVEL_SOL_SOCKET, PPM_SOCKOPT_SO_ERROR

SCAP_MINOR = 2
_ZERO_IP6 = bytes(16)


def _pad(n: int) -> int:
    return (4 - n % 4) % 4


def _block(btype: int, body: bytes) -> bytes:
    total = 12 + len(body) + _pad(len(body))
    return struct.pack("<II", btype, total) + body + bytes(_pad(len(body))) + struct.pack("<I", total)


def _str(s: str | bytes) -> bytes:
    b = s.encode() if isinstance(s, str) else s
    return struct.pack("<H", len(b)) + b


def _ip_bytes(ip: str | None, family: str) -> bytes:
    if family == "ipv4":
        return socket.inet_pton(socket.AF_INET, ip or "0.0.0.0")
    if not ip:
        return _ZERO_IP6
    if ":" not in ip:  # IPv4-mapped, written as plain IPv4 by the reader
        return b"\0" * 10 + b"\xff\xff" + socket.inet_pton(socket.AF_INET, ip)
    return socket.inet_pton(socket.AF_INET6, ip)


def encode_tuple(t) -> bytes:
    """("ipv4"|"ipv6", sip, sport, dip, dport) or ("unix", src, dst, path) -> PT_SOCKTUPLE."""
    if t is None:
        return b""
    fam = t[0]
    if fam == "unix":
        return bytes([1]) + struct.pack("<QQ", t[1] or 0, t[2] or 0) + (t[3] or "").encode() + b"\0"
    code = 2 if fam == "ipv4" else 10
    return (bytes([code]) + _ip_bytes(t[1], fam) + struct.pack("<H", t[2] or 0)
            + _ip_bytes(t[3], fam) + struct.pack("<H", t[4] or 0))


def encode_sockaddr(a) -> bytes:
    if a is None:
        return b""
    if a[0] == "unix":
        return bytes([1]) + a[1].encode() + b"\0"
    fam = a[0]
    return bytes([2 if fam == "ipv4" else 10]) + _ip_bytes(a[1], fam) + struct.pack("<H", a[2] or 0)


def encode_param(ptype: str, value) -> bytes:
    if value is None:
        return b""
    if ptype in FIXED:
        width, signed = FIXED[ptype]
        if not signed and value < 0:
            value &= (1 << (8 * width)) - 1
        return int(value).to_bytes(width, "little", signed=signed)
    if ptype in STRING_TYPES:
        return (value.encode() if isinstance(value, str) else bytes(value)) + b"\0"
    if ptype == "SOCKTUPLE":
        return encode_tuple(value)
    if ptype == "SOCKADDR":
        return encode_sockaddr(value)
    return bytes(value)


def _exit_code(syscall: str) -> int:
    """Newest exit event of a syscall that sysdig 0.29.3 knows."""
    cands = [e.code for e in EVENTS if e.syscall == syscall and not e.is_enter and e.code < SYSDIG_0_29_TABLE_SIZE]
    if not cands:
        raise ValueError(f"no scap event for syscall {syscall!r}")
    return max(cands)


WRITE_CODES = {s: _exit_code(s) for s in (
    "connect", "accept", "accept4", "socket", "bind", "listen", "shutdown", "close",
    "send", "sendto", "sendmsg", "sendmmsg", "write", "writev", "pwrite", "pwritev",
    "recv", "recvfrom", "recvmsg", "recvmmsg", "read", "readv", "pread", "preadv", "getsockopt")}
SOCKETPAIR_X = _exit_code("socketpair")
DROP_E = next(e.code for e in EVENTS if e.enum == "PPME_DROP_E")
FAMILY_CODE = {"unix": 1, "ipv4": 2, "ipv6": 10}
SOCK_TYPE = {"tcp": 1, "udp": 2, "raw": 3, "unix": 1}
IPPROTO = {"tcp": 6, "udp": 17}
L4_CODE = {"tcp": 2, "udp": 3, "raw": 5}


class ScapWriter:
    def __init__(self, path_or_file, hostname: str = "svctrace", gzip: bool = False, *, num_cpus: int = 1,
                 enter_events: bool = True):
        self._target = path_or_file
        self.hostname = hostname
        self.gzip = gzip
        self.num_cpus = num_cpus
        self.enter_events = enter_events
        self._spool = tempfile.SpooledTemporaryFile(max_size=8 << 20)
        self._threads: dict[int, tuple[int, str, str | None, str | None]] = {}  # tid -> pid, comm, exe, cid
        self._fds: dict[tuple[int, int], tuple | None] = {}  # (pid, fd) -> FDL entry or None (created here)
        self._closed = False
        self._closed_fds: set[tuple[int, int]] = set()
        self._listening: dict[int, set[int]] = {}  # pid -> local ports of server sockets in the fd list
        self.events_written = 0

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()
        return False

    # -- events ---------------------------------------------------------------
    def write_raw(self, ts: int, tid: int, event_type: int, params: dict | list | tuple = (), cpu: int = 0) -> None:
        """One EV_V2 event; params by name (missing ones written empty) or as a list in table order."""
        info = EVENTS[event_type]
        if isinstance(params, dict):
            unknown = set(params) - set(info.param_names)
            if unknown:
                raise ValueError(f"{info.enum} has no parameter(s) {sorted(unknown)}")
            values = [encode_param(t, params.get(n)) for n, t in info.params]
        else:
            values = [encode_param(t, v) for (_, t), v in zip(info.params, params)]
        width = "I" if info.large_payload else "H"
        lens = struct.pack(f"<{len(values)}{width}", *map(len, values))
        evt_len = 26 + len(lens) + sum(map(len, values))
        body = struct.pack("<HQQIHI", cpu, ts, tid & 0xFFFFFFFFFFFFFFFF, evt_len, event_type, len(values))
        body += lens + b"".join(values)
        btype = 0x216 if len(body) + 12 <= B.READER_BUF_SIZE else 0x221
        self._spool.write(_block(btype, body))
        self.events_written += 1

    def write_event(self, ev: SyscallEvent) -> None:
        self._threads[ev.tid] = (ev.pid, ev.comm, ev.exe, ev.container_id)
        if ev.kind == "lost":
            self.write_raw(ev.ts, ev.tid, DROP_E, {"ratio": max(ev.res, 1)})
            return
        key = (ev.pid, ev.fd)
        if ev.kind in ("socket", "accept"):
            self._fds[key] = None  # the socket is created by an event in this file
            self._closed_fds.discard(key)
        elif key not in self._fds:
            self._fds[key] = self._fdl_entry(ev)  # it existed before: list it in the fd list
        elif key in self._closed_fds and ev.family == "unix":
            # reused by a syscall we do not emit (socketpair, dup...): recreate it silently
            self.write_raw(ev.ts, ev.tid, SOCKETPAIR_X, {"res": 0, "fd1": ev.fd})
            self._closed_fds.discard(key)
        elif key in self._closed_fds and ev.family in ("ipv4", "ipv6"):
            # a new socket on a closed socket's fd, made by a socket() the source did not record (the
            # eBPF agent traces no socket()): without it a reader would not know the new one's
            # protocol (connect and I/O tuples carry none), nor that it is a new socket
            self.write_raw(ev.ts, ev.tid, WRITE_CODES["socket"], self._params(WRITE_CODES["socket"], ev.with_(
                kind="socket", syscall="socket", res=ev.fd)))
            self._closed_fds.discard(key)
        if ev.kind == "close" and ev.res >= 0:
            self._closed_fds.add(key)
        code = WRITE_CODES.get(ev.syscall) or WRITE_CODES[ev.kind if ev.kind != "send" else "write"]
        params = self._params(code, ev)
        if self.enter_events:
            enter = EVENTS[code - 1]
            self.write_raw(ev.ts, ev.tid, code - 1, {n: params.get(n) for n in enter.param_names})
        self.write_raw(ev.ts, ev.tid, code, params)

    def _tuple(self, ev: SyscallEvent, inbound: bool):
        if ev.family == "unix":
            return ("unix", 0, 0, "")
        if ev.family not in ("ipv4", "ipv6") or (ev.local_ip is None and ev.remote_ip is None):
            return None
        local = (ev.local_ip, ev.local_port or 0)
        remote = (ev.remote_ip, ev.remote_port or 0)
        if ev.kind in ("send", "recv") and ev.proto != "tcp":
            if ev.addr_ip is None:  # connected datagram socket: no per-message address
                return None
            remote = (ev.addr_ip, ev.addr_port or 0)
        a, b = (remote, local) if inbound else (local, remote)
        return (ev.family, a[0], a[1], b[0], b[1])

    def _params(self, code: int, ev: SyscallEvent) -> dict:
        names = set(EVENTS[code].param_names)
        kind = ev.kind
        p: dict = {}
        if kind == "accept":
            p["fd"] = ev.res
            p["tuple"] = self._tuple(ev, inbound=True)
            p.update(queuepct=0, queuelen=0, queuemax=0)
        elif kind == "socket":
            fam = FAMILY_CODE.get(ev.family or "", 0)
            p.update(fd=ev.res, domain=fam, type=SOCK_TYPE.get(ev.proto or "", 0),
                     proto=0 if fam == 1 else IPPROTO.get(ev.proto or "", 0), flags=0)
        elif ev.syscall == "getsockopt":  # a connect result: getsockopt(SOL_SOCKET, SO_ERROR) as sysdig records it
            p.update(res=0, fd=ev.fd, level=PPM_SOCKOPT_LEVEL_SOL_SOCKET, optname=PPM_SOCKOPT_SO_ERROR, optlen=4,
                     val=bytes([PPM_SOCKOPT_IDX_ERRNO]) + min(ev.res, 0).to_bytes(8, "little", signed=True))
        else:
            p["res"] = ev.res
            p["fd"] = ev.fd
            if kind == "connect":
                p["tuple"] = self._tuple(ev, inbound=False)
                if ev.addr_ip is not None:
                    p["addr"] = (ev.family if ev.family in ("ipv4", "ipv6") else "ipv4", ev.addr_ip, ev.addr_port)
            elif kind in ("send", "recv"):
                p["data"] = ev.data or b""
                p["size"] = max(ev.size if ev.size is not None else max(ev.res, 0), 0)
                p["tuple"] = self._tuple(ev, inbound=kind == "recv")
                if "pos" in names:
                    p["pos"] = 0
                if "msgcontrol" in names:
                    p["msgcontrol"] = b""
            elif kind == "bind":
                if ev.family in ("ipv4", "ipv6"):
                    p["addr"] = (ev.family, ev.local_ip, ev.local_port)
            elif kind == "listen":
                p["backlog"] = 128
            elif kind == "shutdown":
                p["how"] = 2
        return {k: v for k, v in p.items() if k in names}

    def _fdl_entry(self, ev: SyscallEvent):
        """The socket as an fd-list entry (local end first, as libscap writes it)."""
        l4 = L4_CODE.get(ev.proto or "", 0)
        if ev.family == "unix":
            return (B.FD_UNIX_SOCK, struct.pack("<QQ", 0, 0) + _str(""))
        if ev.family not in ("ipv4", "ipv6"):
            return None
        fam = ev.family
        if ev.role == "server" and (ev.remote_ip is None or ev.proto != "tcp"):
            # listening / bound: datagram peers travel with each message
            kind = B.FD_IPV4_SERVSOCK if fam == "ipv4" else B.FD_IPV6_SERVSOCK
            return (kind, _ip_bytes(ev.local_ip, fam) + struct.pack("<HB", ev.local_port or 0, l4))
        kind = B.FD_IPV4_SOCK if fam == "ipv4" else B.FD_IPV6_SOCK
        if ev.role == "server":  # tell readers its local port is a listening one
            self._listening.setdefault(ev.pid, set()).add(ev.local_port or 0)
        return (kind, _ip_bytes(ev.local_ip, fam) + _ip_bytes(ev.remote_ip, fam)
                + struct.pack("<HHB", ev.local_port or 0, ev.remote_port or 0, l4))

    # -- assembling the file ------------------------------------------------------
    def _header(self) -> bytes:
        out = [_block(B.SHB, struct.pack("<IHHq", B.SHB_MAGIC, 1, SCAP_MINOR, -1))]
        host = self.hostname.encode()[:127]
        out.append(_block(0x201, struct.pack("<IQQ", self.num_cpus, 0, 4194304) + host + bytes(128 - len(host))
                          + struct.pack("<QQQQ", 0, 0, 0, 0)))
        lo = struct.pack("<HH", 1, 2) + socket.inet_aton("127.0.0.1") + socket.inet_aton("255.0.0.0") \
            + bytes(4) + struct.pack("<Q", 0) + b"lo"
        out.append(_block(0x219, struct.pack("<I", len(lo)) + lo))
        out.append(_block(0x220, b""))
        entries = []
        for tid, (pid, comm, exe, cid) in sorted(self._threads.items()):
            cgroups = f"cpuset=/docker/{cid.ljust(64, '0')}".encode() if cid else b""
            e = (struct.pack("<qqqqq", tid, pid, 0, 0, 0) + _str(comm or "") + _str(exe or "")
                 + _str(exe or "") + _str("") + _str("/")
                 + struct.pack("<QIII", 1024, 0 if tid == pid else CLONE_THREAD | CLONE_FILES, 0, 0)
                 + struct.pack("<IIIQQ", 0, 0, 0, 0, 0) + _str("") + struct.pack("<qq", tid, pid)
                 + _str(cgroups) + _str("/"))
            entries.append(struct.pack("<I", len(e) + 4) + e)
        out.append(_block(0x215, b"".join(entries)))
        by_pid: dict[int, list[bytes]] = {}
        for (pid, fd), entry in sorted(self._fds.items()):
            if entry is None:
                continue
            ftype, payload = entry
            e = struct.pack("<qQB", fd, 0, ftype) + payload
            by_pid.setdefault(pid, []).append(struct.pack("<I", len(e) + 4) + e)
        for pid, ports in self._listening.items():
            for i, port in enumerate(sorted(ports)):
                e = struct.pack("<qQB", -2 - i, 0, B.FD_IPV4_SERVSOCK) + bytes(4) + struct.pack("<HB", port, 2)
                by_pid.setdefault(pid, []).append(struct.pack("<I", len(e) + 4) + e)
        for pid, es in by_pid.items():
            out.append(_block(0x218, struct.pack("<Q", pid) + b"".join(es)))
        return b"".join(out)

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        # pids whose fds we list need a process-list entry of their main thread
        pids = {pid for pid, _fd in self._fds} | {v[0] for v in self._threads.values()}
        for pid in pids:
            if pid not in self._threads:
                any_tid = next((t for t, v in self._threads.items() if v[0] == pid), None)
                if any_tid is not None:
                    self._threads[pid] = (pid,) + self._threads[any_tid][1:]
        head = self._header()
        target = self._target
        own = not hasattr(target, "write")
        raw: BinaryIO = open(target, "wb") if own else target
        try:
            out = _gzip.GzipFile(fileobj=raw, mode="wb", compresslevel=6) if self.gzip else raw
            out.write(head)
            self._spool.seek(0)
            shutil.copyfileobj(self._spool, out, 1 << 20)
            if self.gzip:
                out.close()
        finally:
            self._spool.close()
            if own:
                raw.close()
            else:
                raw.flush()
