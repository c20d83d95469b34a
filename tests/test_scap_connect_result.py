"""getsockopt(SOL_SOCKET, SO_ERROR) in scap files: how a non-blocking connect ended.

Real clients (curl, Go, Java NIO, libuv, asyncio, nginx) call connect() non-blocking: it returns
EINPROGRESS and the refusal or timeout only shows in getsockopt(SO_ERROR). sysdig records that
option's value (a DYN param, -errno); the reader reports it as a connect result (kind "connect",
syscall "getsockopt", res -errno or 0), the writer writes it back as sysdig does, and other
options are not network events.
"""
from __future__ import annotations

import pytest

from svctrace.agents.scap import ScapWriter, open_capture
from svctrace.agents.scap.event_table import EVENTS
from svctrace.schemas.models import SyscallEvent
from tests.harness.sysdig import FIELDS
from tests.test_scap_oracle import sysdig  # noqa: F401

GETSOCKOPT_X = next(e.code for e in EVENTS if e.enum == "PPME_SOCKET_GETSOCKOPT_X")
CLIENT = dict(node="n", pid=10, tid=10, comm="curl", fd=3, proto="tcp", family="ipv4", role="client",
              local_ip="10.244.0.2", local_port=40000, remote_ip="10.96.0.101", remote_port=8080)


def write(path, so_error: int, other_option: bool = False):
    with ScapWriter(path, hostname="n") as w:
        w.write_event(SyscallEvent(ts=1_000, n=1, kind="connect", syscall="connect", res=-115, errno="EINPROGRESS",
                                   addr_ip="10.96.0.101", addr_port=8080, **CLIENT))
        if other_option:  # getsockopt(SOL_SOCKET, SO_TYPE): nothing to do with the connection's fate
            w.write_raw(1_500, 10, GETSOCKOPT_X, {"res": 0, "fd": 3, "level": 1, "optname": 3, "optlen": 4,
                                                  "val": bytes([2]) + (1).to_bytes(4, "little")})
        w.write_event(SyscallEvent(ts=2_000, n=2, kind="connect", syscall="getsockopt", res=-so_error,
                                   errno="ECONNREFUSED" if so_error else None, **CLIENT))
        w.write_event(SyscallEvent(ts=3_000, n=3, kind="close", syscall="close", res=0, **CLIENT))


@pytest.mark.parametrize("so_error,errno", [(111, "ECONNREFUSED"), (0, None)])
def test_reader_reports_the_connect_result(tmp_path, so_error, errno):
    write(tmp_path / "c.scap", so_error, other_option=True)
    events = list(open_capture(tmp_path / "c.scap"))
    assert [(e.kind, e.syscall) for e in events] == [("connect", "connect"), ("connect", "getsockopt"),
                                                     ("close", "close")]  # SO_TYPE: not an event
    result = events[1]
    assert (result.res, result.errno, result.role) == (-so_error, errno, "client")
    assert (result.local_ip, result.local_port, result.remote_ip, result.remote_port) == (
        "10.244.0.2", 40000, "10.96.0.101", 8080)


@pytest.mark.sysdig
def test_sysdig_reads_the_same_option_value(tmp_path, sysdig):  # noqa: F811
    write(tmp_path / "c.scap", 111)
    sd = [d for d in sysdig.events(tmp_path / "c.scap", FIELDS + " evt.arg.val")
          if d["evt.type"] == "getsockopt" and d["evt.dir"] == "<"]
    assert len(sd) == 1
    assert sd[0]["evt.rawres"] == 0 and sd[0]["evt.arg.val"] == "ECONNREFUSED" and sd[0]["fd.num"] == 3
    ours = next(e for e in open_capture(tmp_path / "c.scap") if e.syscall == "getsockopt")
    assert (ours.res, ours.errno, ours.n) == (-111, "ECONNREFUSED", sd[0]["evt.num"])
