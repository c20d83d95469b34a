"""Ring-buffer records of svctrace.bpf.c -> normalized `SyscallEvent`s.

Pure: bytes in, events out (no kernel, no I/O), so it is unit-tested without
root. One table, SYSCALLS, maps the BPF program's syscall numbers to the
concrete syscall name and the event kind; the C enum lists the same names in
the same order (a test compares them).
"""
from __future__ import annotations

import errno as _errno
import ipaddress
import struct
from binascii import b2a_base64
from dataclasses import MISSING, dataclass, fields

import orjson

from svctrace.schemas.models import SyscallEvent

# index = `enum sc` value in svctrace.bpf.c: (syscall name, event kind)
SYSCALLS: tuple[tuple[str, str], ...] = (
    ("connect", "connect"),
    ("accept", "accept"),
    ("accept4", "accept"),
    ("sendto", "send"),
    ("recvfrom", "recv"),
    ("sendmsg", "send"),
    ("recvmsg", "recv"),
    ("sendmmsg", "send"),
    ("recvmmsg", "recv"),
    ("read", "recv"),
    ("write", "send"),
    ("readv", "recv"),
    ("writev", "send"),
    ("close", "close"),
    ("getsockopt", "connect"),  # SO_ERROR only: the outcome of a non-blocking connect (res -errno, or 0)
)
IO_KINDS = frozenset({"send", "recv"})
NSYSCALLS = len(SYSCALLS)
# sends/receives: the bulk of the events, encoded straight to JSON from a per-socket template
IO_SYSCALLS = frozenset(i for i, (_name, kind) in enumerate(SYSCALLS) if kind in IO_KINDS)

MAX_SNAP = 4096  # the C program's compile-time bound on the snaplen

# struct event header (everything before data[]), little-endian, natural alignment.
RECORD = struct.Struct(
    "<QQQq"  # ts, cgroup_id, cgroup_v1, ret
    "IIiII"  # pid, tid, fd, size, data_len
    "HHHBx"  # sc, addr_family, addr_port, msg_index, pad
    "16s"  # addr
    "HHHHHBxI16s16s"  # tuple: family, sk_type, protocol, lport, rport, flags, pad, netns, laddr, raddr
    "16s"  # comm
)
assert RECORD.size == 140, RECORD.size
# The same layout in pieces, for the decoder's caches.
HEAD = struct.Struct("<QQQqIIiIIH")  # ts .. sc
ADDR_AT, ADDR_END = 54, 76  # addr_family, addr_port, msg_index, pad, addr
SOCKADDR = struct.Struct("<HHBx16s")
TUPLE_AT, TUPLE_END = 76, 124
TUPLE = struct.Struct("<HHHHHBxI16s16s")
COMM_AT, COMM_END = 124, 140
# The kernel's ring-buffer record header (length with busy/discard bits, page offset),
# and that header together with the record head: one unpack per record while walking the ring.
RINGBUF_BUSY = 1 << 31
RINGBUF_DISCARD = 1 << 30
RINGBUF_LEN = RINGBUF_DISCARD - 1
RINGBUF_HDR = 8
RING_HEAD = struct.Struct("<II" + HEAD.format[1:])
assert HEAD.size == ADDR_AT and SOCKADDR.size == TUPLE_AT - ADDR_AT and TUPLE.size == TUPLE_END - TUPLE_AT

F_BOUND, F_HAS_ADDR, F_HAS_TUPLE = 1, 2, 4
AF_UNIX, AF_INET, AF_INET6 = 1, 2, 10
FAMILIES = {AF_INET: "ipv4", AF_INET6: "ipv6", AF_UNIX: "unix"}
PROTOS = {6: "tcp", 17: "udp", 132: "raw", 1: "raw", 58: "raw", 255: "raw"}
ERRNO_NAMES = dict(_errno.errorcode)


@dataclass(frozen=True, slots=True)
class RawRecord:
    """One record as the kernel wrote it (kept for tests and debugging)."""

    ts_mono: int
    cgroup_id: int
    cgroup_v1: int
    ret: int
    pid: int
    tid: int
    fd: int
    size: int
    sc: int
    addr_family: int
    addr_port: int
    msg_index: int
    addr: bytes
    family: int
    sk_type: int
    protocol: int
    lport: int
    rport: int
    flags: int
    netns: int
    laddr: bytes
    raddr: bytes
    comm: str
    data: bytes


def payload_json(data: bytes, redacted: bool = False) -> bytes:
    """The "data" value and the "redacted" member of an event's JSON, as `encode_ring` splices them in."""
    return b'"' + b2a_base64(data, newline=False) + (b'","redacted":true' if redacted else b'","redacted":false')


NO_PAYLOAD = b'null,"redacted":false'
# The per-event values of an encoded send/recv; template fields carry these marker values and
# are swapped for %-placeholders in the template's JSON (key included, so values cannot collide).
_VARYING = (("ts", 7_000_000_000_000_000_001), ("n", 7_000_000_000_000_000_002), ("tid", 7_000_000_000_000_000_003),
            ("res", 7_000_000_000_000_000_004), ("size", 7_000_000_000_000_000_005))
KEY_AT = 52  # sc, sockaddr, tuple, comm: the record bytes an encoding template depends on (with pid, fd, cgroups)


def parse(buf, offset: int = 0) -> RawRecord:
    (ts, cg2, cg1, ret, pid, tid, fd, size, dlen, sc, afam, aport, idx, addr,
     fam, skt, proto, lport, rport, flags, netns, laddr, raddr, comm) = RECORD.unpack_from(buf, offset)
    start = offset + RECORD.size
    return RawRecord(ts, cg2, cg1, ret, pid, tid, fd, size, sc, afam, aport, idx, addr, fam, skt, proto,
                     lport, rport, flags, netns, laddr, raddr,
                     comm.split(b"\0", 1)[0].decode("utf-8", "replace"), bytes(buf[start:start + dlen]))


_ZERO16 = bytes(16)


class _Addresses:
    """Raw 16-byte kernel addresses -> text, cached (a node talks to few peers)."""

    __slots__ = ("cache",)

    def __init__(self) -> None:
        self.cache: dict[tuple[int, bytes], str] = {}

    def text(self, family: int, raw: bytes) -> str:
        key = (family, raw)
        s = self.cache.get(key)
        if s is None:
            if family == AF_INET:
                s = str(ipaddress.IPv4Address(raw[:4]))
            else:
                a = ipaddress.IPv6Address(raw)
                s = str(a.ipv4_mapped) if a.ipv4_mapped else str(a)
            if len(self.cache) > 65536:
                self.cache.clear()
            self.cache[key] = s
        return s


def restart_safe_first_n(now_ns: int) -> int:
    """Where a live agent starts numbering its events: its start time in microseconds since the
    epoch. (node, n) identifies an event and chain ids derive from it, so the numbers must not
    start again at 1 when the agent restarts (every rollout of the DaemonSet restarts it):
    starting from the clock keeps them increasing across restarts while the agent averages
    under a million events a second."""
    return now_ns // 1000


class Normalizer:
    """Stateful decoder: ring records -> SyscallEvent, like the scap reader makes.

    State (bounded): the role of each (pid, fd) learnt from connect/accept (or,
    for UDP, from the first datagram: the end that sends first is the client),
    so later reads and writes on that socket say which end they are; TCP sockets
    opened before the capture fall back to the kernel's hint (an explicitly bound
    port means a server: listeners and their accepted children carry it).
    """

    MAX_ROLES = 262144

    def __init__(self, node: str, boot_to_epoch_ns: int, first_n: int = 0, containers=None) -> None:
        self.node = node
        self.containers = containers  # optional ContainerIds: cgroup id -> container id
        self.offset = boot_to_epoch_ns
        self.n = first_n
        self.roles: dict[tuple[int, int], str] = {}
        self.addrs = _Addresses()
        self.comms: dict[bytes, str] = {}
        self.bad = 0
        self.tuples: dict[bytes, tuple] = {}
        # every SyscallEvent field, in order, at its default: the start of each event's dict
        self.base = {f.name: (f.default if f.default is not MISSING else None) for f in fields(SyscallEvent)}
        self.base["node"] = node
        self.sockaddrs: dict[bytes, tuple] = {}
        self.templates: dict[tuple, tuple] = {}
        self._templates_for = None  # the container maps the templates' container ids came from

    def encode_ring(self, buf, cons: int, prod: int, base: int, mask: int, limit: int, out: list, payload,
                    snaplen: int = MAX_SNAP, suspicious=None) -> tuple[int, int]:
        """Walk a BPF ring buffer's records from position `cons` to `prod` (at most `limit`; the
        record at position p sits at `base + (p & mask)` of `buf` behind its 8-byte ring header)
        and append each event's JSON object (bytes) to `out`: the agent's fast path, equal to
        `orjson.dumps` of `decode_many`'s dicts. Returns (position reached, records consumed);
        the caller releases them to the kernel. The ring header and the record head are read
        with one unpack, so walking the ring costs no loop of its own.

        `payload(data) -> bytes` turns a payload into its JSON (`payload_json`: bound, redact,
        base64). With `suspicious(lowercased data)` (a redaction pre-check) given, payloads it
        clears are bounded to `snaplen` and encoded inline; only the others go to `payload`.
        Sends and receives (nearly every event) are one %-format of a template built per socket,
        process, cgroup and role: the JSON of a decoded event whose per-event fields (ts, n,
        tid, res, size, payload) are placeholders. Other syscalls and failed calls go through
        `decode_many`.
        """
        containers = self.containers
        seen = self._templates_for
        if containers is not None and (seen is None or seen[0] is not containers.v2 or seen[1] is not containers.v1):
            # container ids were re-resolved (new maps; compared by identity, not content): templates
            # may name them now
            self.templates.clear()
            self._templates_for = (containers.v2, containers.v1)
        head = RING_HEAD.unpack_from
        templates, roles, io = self.templates, self.roles, IO_SYSCALLS
        toff = self.offset
        append = out.append
        data_at = RECORD.size
        b64 = b2a_base64
        n = self.n
        done = 0
        while cons < prod and done < limit:
            offset = base + (cons & mask)
            hdr, _pgoff, ts, cg2, cg1, ret, pid, tid, fd, size, dlen, sc = head(buf, offset)
            if hdr & RINGBUF_BUSY:
                break  # not committed yet: the rest comes with the next drain
            cons += ((hdr & RINGBUF_LEN) + RINGBUF_HDR + 7) & ~7
            done += 1
            if hdr & RINGBUF_DISCARD:
                continue
            offset += RINGBUF_HDR
            if ret < 0 or sc not in io:
                self.n = n
                self._encode_slow(buf, offset, out, payload)
                n = self.n
                continue
            sock = (pid, fd)
            role = roles.get(sock)
            key = (buf[offset + KEY_AT:offset + data_at], pid, fd, cg2, cg1, role)
            t = templates.get(key)
            if t is None:
                t = self._template(buf, offset, key)
            template, learn = t
            if learn is not None:
                self._remember(sock, learn)
            n += 1
            if dlen:
                start = offset + data_at
                data = buf[start:start + (dlen if dlen <= snaplen else snaplen)]
                if suspicious is None or suspicious(data.lower()):
                    append(template % (ts + toff, n, tid, ret, size, payload(data)))
                else:
                    append(template % (ts + toff, n, tid, ret, size, b'"%b","redacted":false' % b64(data, newline=False)))
            else:
                append(template % (ts + toff, n, tid, ret, size, NO_PAYLOAD))
        self.n = n
        return cons, done

    def _encode_slow(self, buf, offset: int, out: list, payload) -> None:
        evs: list[dict] = []
        if not self.decode_many(buf, (offset,), evs):
            return
        d = evs[0]
        data = d["data"]
        d["data"] = None
        js = orjson.dumps(d)
        if data is not None:
            js = js.replace(b'"data":null,"redacted":false', b'"data":' + payload(bytes(data)), 1)
        out.append(js)

    def _template(self, buf, offset: int, key: tuple) -> tuple:
        """Decode the record once (role learning included) into the JSON template of its socket."""
        role_before = key[-1]
        evs: list[dict] = []
        n = self.n
        self.decode_many(buf, (offset,), evs)
        self.n = n
        d = evs[0]
        for name, marker in _VARYING:
            d[name] = marker
        d["data"] = None
        js = orjson.dumps(d).replace(b"%", b"%%")
        for name, marker in _VARYING:
            js = js.replace(b'"%s":%d' % (name.encode(), marker), b'"%s":%%d' % name.encode(), 1)
        js = js.replace(b'"data":null,"redacted":false', b'"data":%b', 1)
        # a UDP socket first seen here learnt its role in decode_many: later events with the
        # same (forgotten) role must learn it again
        learn = d["role"] if role_before is None and self.roles.get((key[1], key[2])) is not None else None
        if len(self.templates) > 65536:
            self.templates.clear()
        t = self.templates[key] = (js, learn)
        return t

    def decode_wire(self, buf, offset: int = 0) -> dict:
        """One ring record as the dict form of a SyscallEvent."""
        out: list[dict] = []
        if not self.decode_many(buf, (offset,), out):
            raise ValueError("not a svctrace.bpf.c record (unknown syscall number)")
        return out[0]

    def decode_many(self, buf, offsets, out: list) -> int:
        """Ring records at `offsets` of `buf` -> dict forms of SyscallEvents appended to `out`
        (the agent's fast path: no object per event, one call per ring drain).

        The socket tuple repeats across a connection's events, so each distinct raw
        tuple is decoded once into a template dict holding every field in
        SyscallEvent order; an event is a copy of it (far cheaper than building a
        27-key dict) with the per-event fields set. A record that cannot be decoded
        is counted in `self.bad` and skipped; returns the number decoded.
        """
        head = HEAD.unpack_from
        tuples, sockaddrs, roles, comms = self.tuples, self.sockaddrs, self.roles, self.comms
        remember = self._remember
        containers = self.containers
        toff = self.offset
        n = self.n
        append = out.append
        start_len = len(out)
        for offset in offsets:
            ts, cg2, cg1, ret, pid, tid, fd, size, dlen, sc = head(buf, offset)
            if sc >= NSYSCALLS:
                self.bad += 1  # not a record of this program version: counted, never fatal
                continue
            syscall, kind = SYSCALLS[sc]
            raw_tuple = buf[offset + TUPLE_AT:offset + TUPLE_END]
            t = tuples.get(raw_tuple)
            if t is None:
                t = self._tuple(raw_tuple)
            template, flags, proto = t
            d = template.copy()
            if flags & F_HAS_ADDR:
                raw_addr = buf[offset + ADDR_AT:offset + ADDR_END]
                a = sockaddrs.get(raw_addr)
                if a is None:
                    a = self._sockaddr(raw_addr)
                d["addr_ip"], d["addr_port"] = a
                if template["remote_ip"] is None and kind != "connect":
                    # unconnected UDP: the peer is only in the sockaddr argument
                    d["remote_ip"], d["remote_port"] = a

            if kind == "accept" and ret >= 0:
                fd = ret  # the new connection's fd, the one later events use
            if kind == "connect":
                role = "client"
                remember((pid, fd), role)
            elif kind == "accept":
                role = "server"
                if ret >= 0:
                    remember((pid, fd), role)
            else:
                key = (pid, fd)
                role = roles.get(key)
                if role is None and flags & F_HAS_TUPLE:
                    if proto == 17:
                        # UDP has no connection: the end that spoke first is the client
                        role = "server" if kind == "recv" else "client"
                        if kind != "close":
                            remember(key, role)
                    else:
                        role = "server" if flags & F_BOUND else "client"
                if kind == "close":
                    roles.pop(key, None)

            if dlen:
                start = offset + RECORD.size
                d["data"] = buf[start:start + dlen]
            comm = buf[offset + COMM_AT:offset + COMM_END]
            name = comms.get(comm)
            if name is None:
                name = self._comm(comm)
            n += 1
            d["ts"] = ts + toff
            d["n"] = n
            d["pid"] = pid
            d["tid"] = tid
            d["comm"] = name
            d["kind"] = kind
            d["syscall"] = syscall
            d["fd"] = fd
            d["res"] = ret
            d["role"] = role
            if ret < 0:
                d["errno"] = ERRNO_NAMES.get(-ret, f"E{-ret}")
            elif kind in IO_KINDS:
                d["size"] = size
            # v2 id, or on a v1/v2 hybrid host (v2 root = id 1) the memory-controller v1 id
            if cg2 > 1:
                d["cgroup_id"] = cg2
                if containers is not None:
                    d["container_id"] = containers.lookup(cg2, False)
            else:
                d["cgroup_id"] = cg1 or cg2 or None
                if containers is not None and cg1:
                    d["container_id"] = containers.lookup(cg1, True)
            append(d)
        self.n = n
        return len(out) - start_len

    def _comm(self, comm) -> str:
        comm = bytes(comm)
        if len(self.comms) > 65536:
            self.comms.clear()
        name = self.comms[comm] = comm.split(b"\0", 1)[0].decode("utf-8", "replace")
        return name

    def decode(self, buf, offset: int = 0) -> SyscallEvent:
        """One ring record as a SyscallEvent."""
        return SyscallEvent(**self.decode_wire(buf, offset))

    def _tuple(self, raw: bytes) -> tuple:
        fam, _skt, proto, lport, rport, flags, netns, laddr, raddr = TUPLE.unpack(raw)
        template = dict(self.base)
        if flags & F_HAS_TUPLE:
            template["family"] = FAMILIES.get(fam)
            template["proto"] = "unix" if fam == AF_UNIX else PROTOS.get(proto, "raw")
            if fam != AF_UNIX:
                template["local_ip"], template["local_port"] = self.addrs.text(fam, laddr), lport
                if rport or raddr != _ZERO16:
                    template["remote_ip"], template["remote_port"] = self.addrs.text(fam, raddr), rport
        template["netns"] = netns or None
        t = (template, flags, proto)
        if len(self.tuples) > 65536:
            self.tuples.clear()
        self.tuples[bytes(raw)] = t
        return t

    def _sockaddr(self, raw: bytes) -> tuple:
        afam, aport, _idx, addr = SOCKADDR.unpack(raw)
        a = (self.addrs.text(afam, addr), aport)
        if len(self.sockaddrs) > 65536:
            self.sockaddrs.clear()
        self.sockaddrs[bytes(raw)] = a
        return a

    def _remember(self, key: tuple[int, int], role: str) -> None:
        if len(self.roles) >= self.MAX_ROLES:
            self.roles.clear()  # bounded; forgotten sockets fall back to the kernel hint
        self.roles[key] = role

    def lost(self, count: int, ts: int) -> SyscallEvent:
        """A loss marker: `count` events were dropped in the kernel before ts."""
        self.n += 1
        return SyscallEvent(ts=ts, node=self.node, n=self.n, pid=0, tid=0, comm="", kind="lost",
                            syscall="", fd=-1, res=count)
