"""How a Service alert names a backend that nothing showed: a DNAT'd connect refused by the pod
leaves no accept, so the pod is known only when the Service has one ready endpoint."""
from __future__ import annotations

from svctrace.streams.core import run
from tests.scenario import build


def refused_summary(mode: str) -> str:
    cluster, events = build("wrong_port", mode)
    [alert] = [a for a in run(events, cluster.index()).alerts if a["rule"] == "svc.target_port_refused"]
    return alert["summary"]


def test_among_several_ready_endpoints_the_refusing_one_is_unknown():
    assert "backend (one of 2 ready endpoints, unseen) refused port 8080" in refused_summary("dnat")


def test_a_backend_seen_is_named_with_its_address():
    for mode in ("userspace", "socket_lb"):
        assert "backend default/my-nginx-1 (10.244.1.7:8080) refused port 8080" in refused_summary(mode)
