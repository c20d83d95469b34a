"""ScapWriter: files it writes read back identically by our reader and by sysdig 0.29.3."""
from __future__ import annotations

import dataclasses
import gzip
import io

import pytest

from svctrace.agents.scap import CaptureError, ScapWriter, open_capture
from svctrace.agents.scap.event_table import BY_ENUM
from svctrace.schemas.models import SyscallEvent
from tests.conftest import capture_files
from tests.test_scap_oracle import NET_FD_TYPES, NET_EVENT_TYPES, _view, compare, sysdig  # noqa: F401

NOT_CARRIED = {"n"}  # renumbered: the position in the written file (see writer.py)
NETWORK_CAPTURES = [p for p in capture_files() if any(True for _ in open_capture(p))]


def _rewrite(src, dst, **kw):
    reader = open_capture(src)
    events = list(reader)
    with ScapWriter(dst, hostname=reader.node, **kw) as w:
        for e in events:
            w.write_event(e)
    return events


def _strip(e: SyscallEvent):
    return {f.name: getattr(e, f.name) for f in dataclasses.fields(e) if f.name not in NOT_CARRIED}


def synthetic_events(node="node-a"):
    base = dict(node=node, n=0, pid=4242, tid=4242, comm="curl", exe="/usr/bin/curl",
                container_id="0123456789ab")
    ts = 1_700_000_000_000_000_000
    sock = dict(proto="tcp", family="ipv4", role="client", local_ip="10.0.0.5", local_port=40000,
                remote_ip="10.96.0.10", remote_port=80)
    return [
        SyscallEvent(ts=ts, kind="socket", syscall="socket", fd=3, res=3, proto="tcp", family="ipv4", **base),
        SyscallEvent(ts=ts + 10, kind="connect", syscall="connect", fd=3, res=-115, errno="EINPROGRESS",
                     addr_ip="10.96.0.10", addr_port=80, **sock, **base),
        SyscallEvent(ts=ts + 20, kind="send", syscall="sendto", fd=3, res=18, size=18,
                     data=b"GET / HTTP/1.1\r\n\r\n", **sock, **base),
        SyscallEvent(ts=ts + 30, kind="recv", syscall="read", fd=3, res=12, size=12, data=b"HTTP/1.1 200", **sock,
                     **base),
        SyscallEvent(ts=ts + 40, kind="close", syscall="close", fd=3, res=0, **sock, **base),
        # a server socket that existed before the capture: goes to the fd list
        SyscallEvent(ts=ts + 50, node=node, n=0, pid=77, tid=78, comm="nginx", exe="/usr/sbin/nginx",
                     container_id=None, kind="recv", syscall="recvfrom", fd=9, res=5, size=5, data=b"hello",
                     proto="tcp", family="ipv6", role="server", local_ip="fd00::1", local_port=8080,
                     remote_ip="fd00::2", remote_port=51000),
        SyscallEvent(ts=ts + 60, node=node, n=0, pid=77, tid=78, comm="nginx", exe="/usr/sbin/nginx",
                     container_id=None, kind="accept", syscall="accept4", fd=10, res=10, proto="tcp",
                     family="ipv4", role="server", local_ip="10.0.0.7", local_port=8080, remote_ip="10.0.0.9",
                     remote_port=51001),
        SyscallEvent(ts=ts + 70, kind="lost", syscall="drop", fd=-1, res=1, **base),
    ]


@pytest.mark.parametrize("compress", [False, True], ids=["plain", "gzip"])
def test_synthetic_events_round_trip(tmp_path, compress):
    events = synthetic_events()
    path = tmp_path / "synthetic.scap"
    with ScapWriter(path, hostname="node-a", gzip=compress) as w:
        for e in events:
            w.write_event(e)
    assert (path.read_bytes()[:2] == b"\x1f\x8b") == compress
    reader = open_capture(path)
    back = list(reader)
    assert [_strip(e) for e in back] == [_strip(e) for e in events]
    assert reader.node == "node-a"
    assert [e.n for e in back] == sorted(e.n for e in back)


def test_exit_only_files_round_trip(tmp_path):
    events = synthetic_events()
    path = tmp_path / "exit-only.scap"
    with ScapWriter(path, hostname="node-a", enter_events=False) as w:
        for e in events:
            w.write_event(e)
    back = list(open_capture(path))
    assert [_strip(e) for e in back] == [_strip(e) for e in events]
    assert [e.n for e in back] == list(range(1, len(events) + 1))


def test_writer_to_file_object_and_raw_events(tmp_path):
    buf = io.BytesIO()
    w = ScapWriter(buf, hostname="h")
    code = BY_ENUM["PPME_SOCKET_CONNECT_X"].code
    w.write_raw(5, 1, code, {"res": 0, "tuple": ("ipv4", "1.2.3.4", 1, "5.6.7.8", 2), "fd": 3,
                             "addr": ("ipv4", "5.6.7.8", 2)})
    w.close()
    path = tmp_path / "raw.scap"
    path.write_bytes(buf.getvalue())
    raw = list(open_capture(path).raw_events())
    assert len(raw) == 1 and raw[0].params == {"res": 0, "tuple": ("ipv4", "1.2.3.4", 1, "5.6.7.8", 2),
                                                "fd": 3, "addr": ("ipv4", "5.6.7.8", 2)}
    with pytest.raises(ValueError):
        ScapWriter(io.BytesIO()).write_raw(1, 1, code, {"nonsense": 1})


@pytest.mark.parametrize("path", NETWORK_CAPTURES, ids=lambda p: p.stem)
def test_rewritten_capture_reads_back_equal(captures, tmp_path, path):
    out = tmp_path / path.name
    events = _rewrite(path, out)
    back = list(open_capture(out))
    assert len(back) == len(events)
    diffs = [(a.n, k) for a, b in zip(events, back) for k, v in _strip(a).items() if _strip(b)[k] != v]
    # documented limit: unix sockets inherited by fork and listed in the fd list have no role
    allowed = [(n, k) for n, k in diffs if k == "role" and next(e for e in events if e.n == n).family == "unix"]
    assert diffs == allowed


@pytest.mark.sysdig
@pytest.mark.parametrize("path", NETWORK_CAPTURES, ids=lambda p: p.stem)
def test_sysdig_prints_the_same_events_from_our_files(captures, sysdig, tmp_path, path):  # noqa: F811
    out = tmp_path / path.name
    _rewrite(path, out)
    v = _view(out)
    problems, _ = compare(v)
    assert not problems, problems[:10]
    ours = [e for e in v.events if e.family in NET_FD_TYPES]
    theirs = [d for d in v.sd if d["evt.dir"] == "<" and d["fd.type"] in NET_FD_TYPES
              and d["evt.type"] in NET_EVENT_TYPES]
    assert len(ours) == len(theirs) > 0


@pytest.mark.sysdig
def test_sysdig_reads_synthetic_gzip_file(sysdig, tmp_path):  # noqa: F811
    path = tmp_path / "synthetic.scap.gz"
    with ScapWriter(path, hostname="node-a", gzip=True) as w:
        for e in synthetic_events():
            w.write_event(e)
    v = _view(path)
    problems, _ = compare(v)
    assert not problems, problems
    names = [d["proc.name"] for d in v.sd if d["evt.dir"] == "<" and d["fd.type"] in NET_FD_TYPES]
    assert "curl" in names and "nginx" in names
    payloads = {d["evt.buffer"] for d in v.sd if d["evt.buffer"]}
    assert len(payloads) == 3


def test_truncated_written_file_is_a_capture_error(tmp_path):
    path = tmp_path / "t.scap"
    with ScapWriter(path) as w:
        for e in synthetic_events():
            w.write_event(e)
    data = path.read_bytes()
    (tmp_path / "cut.scap").write_bytes(data[:-7])
    with pytest.raises(CaptureError):
        list(open_capture(tmp_path / "cut.scap"))
    (tmp_path / "cut.scap.gz").write_bytes(gzip.compress(data)[:-20])
    with pytest.raises(CaptureError):
        list(open_capture(tmp_path / "cut.scap.gz"))


def test_sockets_reusing_a_closed_fd_keep_their_protocol(tmp_path):
    """The eBPF agent records no socket(): a process that closes a socket and opens another on
    the same fd (curl: a UDP socket per DNS lookup, then its TCP connection) must read back
    with each socket's protocol. The writer records the socket() that must have happened."""
    base = dict(node="node-a", pid=500, tid=500, comm="curl", fd=5)
    ts = 1_700_000_000_000_000_000
    udp = dict(proto="udp", family="ipv4", role="client", local_ip="10.244.0.2", local_port=53000,
               remote_ip="10.96.0.10", remote_port=53)
    tcp = dict(proto="tcp", family="ipv4", role="client", local_ip="10.244.0.2", local_port=41000,
               remote_ip="10.96.0.100", remote_port=8080)
    events = [
        SyscallEvent(ts=ts, n=1, kind="connect", syscall="connect", res=0, **udp, **base),
        SyscallEvent(ts=ts + 10, n=2, kind="close", syscall="close", res=0, **udp, **base),
        SyscallEvent(ts=ts + 20, n=3, kind="connect", syscall="connect", res=-115, errno="EINPROGRESS",
                     addr_ip="10.96.0.100", addr_port=8080, **tcp, **base),
        SyscallEvent(ts=ts + 30, n=4, kind="close", syscall="close", res=0, **tcp, **base),
        SyscallEvent(ts=ts + 40, n=5, kind="connect", syscall="connect", res=0, **{**udp, "local_port": 53001},
                     **base),
    ]
    path = tmp_path / "reuse.scap"
    with ScapWriter(path, hostname="node-a") as w:
        for e in events:
            w.write_event(e)
    back = list(open_capture(path))
    assert [(e.kind, e.proto) for e in back] == [
        ("connect", "udp"), ("close", "udp"),
        ("socket", "tcp"), ("connect", "tcp"), ("close", "tcp"),
        ("socket", "udp"), ("connect", "udp")]
    assert [_strip(e) for e in back if e.kind != "socket"] == [_strip(e) for e in events]
