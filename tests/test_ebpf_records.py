"""Ring records -> SyscallEvent normalization, without a kernel (synthetic records)."""
from __future__ import annotations

import re
import socket
import struct

import pytest

from svctrace.agents.ebpf import build
from svctrace.agents.ebpf.records import (AF_INET, AF_INET6, F_BOUND, F_HAS_ADDR, F_HAS_TUPLE, RECORD,
                                          RINGBUF_BUSY, RINGBUF_DISCARD, SYSCALLS, Normalizer, parse)

SC = {name: i for i, (name, _kind) in enumerate(SYSCALLS)}
V4 = lambda ip: socket.inet_aton(ip) + bytes(12)  # noqa: E731
V6 = lambda ip: socket.inet_pton(socket.AF_INET6, ip)  # noqa: E731


def record(sc, ret=0, fd=3, pid=100, tid=101, data=b"", family=AF_INET, proto=6, laddr=V4("10.0.0.1"), lport=40000,
           raddr=V4("10.96.0.10"), rport=80, flags=F_HAS_TUPLE, addr=None, afam=AF_INET, aport=0, size=None,
           netns=4026531840, cg2=1, cg1=35, comm=b"curl", ts=1_000):
    if addr is not None:
        flags |= F_HAS_ADDR
    head = RECORD.pack(ts, cg2, cg1, ret, pid, tid, fd, len(data) if size is None else size, len(data), SC[sc],
                       afam, aport, 0, addr or bytes(16), family, 1, proto, lport, rport, flags, netns,
                       laddr, raddr, comm)
    return head + data


def test_table_matches_the_c_enum():
    src = build.source_path().read_text()
    enum = re.search(r"enum sc \{(.*?)\};", src, re.S).group(1)
    names = [n.strip()[3:].lower() for n in enum.split(",") if n.strip()]
    assert names == [name for name, _ in SYSCALLS]


def test_connect_is_client_and_keeps_both_requested_and_actual_peer():
    norm = Normalizer("node-a", boot_to_epoch_ns=10**18)
    # socket-LB: connect() asked for the VIP, the kernel socket points at the pod
    ev = norm.decode(record("connect", ret=-115, raddr=V4("10.244.1.7"), rport=8080,
                            addr=V4("10.96.0.10"), aport=80))
    assert (ev.kind, ev.syscall, ev.role, ev.errno) == ("connect", "connect", "client", "EINPROGRESS")
    assert (ev.remote_ip, ev.remote_port) == ("10.244.1.7", 8080)
    assert (ev.addr_ip, ev.addr_port) == ("10.96.0.10", 80)
    assert ev.ts == 10**18 + 1_000 and ev.node == "node-a" and ev.n == 1
    assert ev.cgroup_id == 35  # v2 root (1) on a hybrid host: the memory cgroup's v1 id
    # later writes on that fd inherit the role learnt from connect
    w = norm.decode(record("write", ret=5, data=b"hello", flags=F_HAS_TUPLE | F_BOUND))
    assert (w.kind, w.role, w.size, w.data) == ("send", "client", 5, b"hello")


def test_accept_reports_new_fd_and_server_role():
    norm = Normalizer("n", 0)
    ev = norm.decode(record("accept4", ret=7, fd=3, laddr=V4("10.244.1.7"), lport=8080, raddr=V4("10.244.2.9"),
                            rport=51000, addr=V4("10.244.2.9"), aport=51000, flags=F_HAS_TUPLE | F_BOUND))
    assert (ev.kind, ev.fd, ev.res, ev.role) == ("accept", 7, 7, "server")
    r = norm.decode(record("recvfrom", ret=3, fd=7, data=b"GET"))
    assert r.role == "server"
    c = norm.decode(record("close", fd=7))
    assert c.role == "server" and (100, 7) not in norm.roles  # closed: forgotten


def test_unconnected_udp_takes_the_peer_from_the_sockaddr():
    norm = Normalizer("n", 0)
    ev = norm.decode(record("sendto", ret=30, proto=17, laddr=bytes(16), lport=5353, raddr=bytes(16), rport=0,
                            addr=V4("10.96.0.10"), aport=53, data=b"q" * 30))
    assert (ev.proto, ev.local_ip, ev.remote_ip, ev.remote_port, ev.addr_ip) == ("udp", "0.0.0.0", "10.96.0.10", 53,
                                                                                   "10.96.0.10")
    assert ev.role == "client"  # port not bound explicitly


def test_ipv4_mapped_ipv6_is_written_as_ipv4_and_errno_named():
    norm = Normalizer("n", 0)
    ev = norm.decode(record("connect", ret=-111, family=AF_INET6, laddr=V6("::ffff:127.0.0.1"),
                            raddr=V6("::ffff:10.0.0.2"), addr=V6("2001:db8::1"), afam=AF_INET6, aport=443))
    assert (ev.family, ev.local_ip, ev.remote_ip, ev.addr_ip, ev.errno) == ("ipv6", "127.0.0.1", "10.0.0.2",
                                                                             "2001:db8::1", "ECONNREFUSED")


def test_parse_and_loss_marker():
    raw = parse(record("writev", ret=4, data=b"HTTP", comm=b"nginx\0\0\0"))
    assert (raw.comm, raw.data, SYSCALLS[raw.sc][0]) == ("nginx", b"HTTP", "writev")
    norm = Normalizer("n", 0)
    lost = norm.lost(12, ts=5)
    assert (lost.kind, lost.res, lost.ts) == ("lost", 12, 5)


def test_a_record_with_an_unknown_syscall_number_is_an_error_not_garbage():
    bad = bytearray(record("write", ret=1, data=b"x"))
    bad[52:54] = (200).to_bytes(2, "little")  # sc field
    bad = bytes(bad)
    norm = Normalizer("n", 0)
    with pytest.raises(ValueError, match="unknown syscall"):
        norm.decode(bad)
    out: list = []
    good = record("write", ret=1, data=b"y")
    assert norm.decode_many(bad + good, (0, len(bad)), out) == 1  # skipped and counted, the next one decoded
    assert norm.bad == 2 and out[0]["data"] == b"y"


def test_json_fast_path_equals_the_decoded_dicts():
    """encode_ring (templates per socket, the agent's path) writes what decode_many + redaction + orjson write."""
    import orjson

    from svctrace.agents.agent.pipeline import Counters, payload_encoder, redact_events

    secret = b"GET /?token=abc HTTP/1.1\r\nCookie: s=1\r\n\r\n"
    recs = [record("connect", ret=-115, addr=V4("10.96.0.10"), aport=80),
            record("write", ret=5, data=b"hello", flags=F_HAS_TUPLE | F_BOUND),
            record("write", ret=len(secret), data=secret),
            record("write", ret=len(secret), data=secret, tid=102),  # same template, other thread
            record("read", ret=-11),
            record("read", ret=0),
            record("sendto", ret=30, fd=5, proto=17, laddr=bytes(16), lport=5353, raddr=bytes(16), rport=0,
                   addr=V4("10.96.0.10"), aport=53, data=b"q" * 30),
            record("recvfrom", ret=3, fd=5, proto=17, laddr=bytes(16), lport=5353, raddr=bytes(16), rport=0,
                   addr=V4("10.96.0.10"), aport=53, data=b"a%d"),
            record("sendto", ret=2, fd=6, proto=17, data=b"zz", comm=b'c"%s\\'),
            record("accept4", ret=7, fd=3, flags=F_HAS_TUPLE | F_BOUND, addr=V4("10.0.0.9"), aport=51000),
            record("recvmsg", ret=4, fd=7, data=b"ping"),
            record("close", fd=7),
            record("recvmsg", ret=4, fd=7, data=b"pong", cg2=4000, cg1=0),
            record("writev", ret=300, fd=8, proto=17, data=bytes(range(256)) + b"x" * 44)]
    buf = b"".join(recs)
    offsets = [sum(map(len, recs[:i])) for i in range(len(recs))]
    slow, fast = Normalizer("n", 10**18), Normalizer("n", 10**18)
    for a in (slow, fast):
        a._remember((100, 8), "client")
    dicts: list = []
    slow.decode_many(buf, offsets, dicts)
    c_slow, c_fast = Counters(), Counters()
    expected = [orjson.loads(orjson.dumps(d)) for d in redact_events(dicts, 256, c_slow)]
    # the same records as the kernel's ring holds them: 8-byte header, 8-byte aligned, one discarded
    discarded = record("write", ret=1, data=b"!")
    ring = b"".join(struct.pack("<II", len(r) | (RINGBUF_DISCARD if r is discarded else 0), 0) + r
                    + bytes(-len(r) % 8) for r in [recs[0], discarded] + recs[1:])
    ring += struct.pack("<II", RINGBUF_BUSY | 200, 0) + bytes(200)  # still being written: not read
    out: list = []
    pay = payload_encoder(256, c_fast)
    size = 1 << 16
    base = 64
    mem = bytes(base) + ring + bytes(size - len(ring))
    pos, done = fast.encode_ring(mem, size * 3, size * 3 + len(ring), base, size - 1, 1000, out, pay, pay.snaplen,
                                 pay.suspicious)  # positions past a wrap of the ring
    assert done == len(recs) + 1 and pos == size * 3 + len(ring) - 208 and len(out) == len(recs)
    got = [orjson.loads(js) for js in out]
    assert got == expected
    assert [list(g) for g in got] == [list(e) for e in expected]  # same field order too
    assert c_fast.redacted == c_slow.redacted == 2 and fast.n == slow.n == len(recs) and fast.roles == slow.roles
    assert got[2]["redacted"] and b"abc" not in orjson.dumps(got[2])
    every: list = []  # without the inline pre-check: every payload through payload(); and a limit
    again = Normalizer("n", 10**18)
    assert again.encode_ring(mem, 0, len(ring), base, size - 1, 7, every, payload_encoder(256, Counters()))[1] == 7
    assert [orjson.loads(js) for js in every] == expected[:6]  # the discarded record was consumed, not encoded
    assert len(fast.templates) < len(recs)  # sends/receives of one socket share a template
