"""Non-blocking clients: the connect's outcome arrives later, from getsockopt(SO_ERROR).

curl, Go, Java NIO, libuv, asyncio and nginx's upstreams call connect() non-blocking: it returns
EINPROGRESS, and a refusal (wrong targetPort, no endpoints) or an unreachable network shows only
in the getsockopt(SO_ERROR) that follows (the eBPF agent and the scap reader report it as a
connect result: kind "connect", syscall "getsockopt", res -errno or 0). Every seed scenario, with
every connect rewritten that way, must give the chains and alerts the blocking version gives.
"""
from __future__ import annotations

import pytest

from svctrace.streams.core import run
from tests.scenario import FAULTS, MODES, S, US, build, renumber

RESULT_AFTER_NS = 5 * US  # a connect's result comes before the socket's next syscall in every scenario


def non_blocking(events):
    """Each connect on TCP as a non-blocking client makes it: EINPROGRESS, then its result once
    poll() says the socket is ready — an error, or 0 for a connection that got established (one
    that sends); a client giving up on a connect still in progress asks nothing."""
    sends = {(e.node, e.pid, e.fd) for e in events if e.kind == "send" and e.proto == "tcp" and e.res > 0}
    out = []
    for e in events:
        result = None
        if e.kind == "connect" and e.proto == "tcp" and e.errno != "EINPROGRESS":
            out.append(e.with_(res=-115, errno="EINPROGRESS"))
            result = e
        elif e.kind == "connect" and e.proto == "tcp":
            out.append(e)
            if (e.node, e.pid, e.fd) in sends:
                result = e.with_(res=0, errno=None)
        else:
            out.append(e)
        if result is not None:
            out.append(result.with_(ts=e.ts + RESULT_AFTER_NS, syscall="getsockopt", addr_ip=None, addr_port=None))
    return renumber(sorted(out, key=lambda e: e.ts))


def outcome(result) -> list[tuple]:
    """What a chain says, without what names its events (ids, evidence: the numbering changed)."""
    rules = {a["alert_id"]: a["rule"] for a in result.alerts}
    said = []
    for ch in result.chains:
        said.append((ch["status"], ch["translation"] and ch["translation"]["mode"],
                     (ch["backend"] or {}).get("pod"), (ch["response"] or {}).get("status"),
                     (ch["response"] or {}).get("error"), ch["incomplete_reason"],
                     (ch["service"] or {}).get("name"), sorted(rules[i] for i in ch["alerts"])))
    return sorted(said, key=repr)


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("fault", FAULTS)
def test_non_blocking_clients_give_the_same_chains_and_alerts(fault, mode):
    cluster, events = build(fault, mode, requests=2)
    nb = non_blocking(events)
    # rules flushed: every connect stays in progress until the client gives up, nothing to ask
    assert any(e.syscall == "getsockopt" for e in nb) == (fault != "rules_flushed")
    assert outcome(run(nb, cluster.index())) == outcome(run(events, cluster.index()))


def test_without_its_result_a_refused_connect_looks_like_a_timeout():
    """Why the result matters: drop the getsockopt events and the refusal is lost (the client
    closes a connection that never got established: 'connection timed out')."""
    cluster, events = build("wrong_port", "dnat")
    blind = [e for e in non_blocking(events) if e.syscall != "getsockopt"]
    [chain] = run(blind, cluster.index()).chains
    assert chain["response"]["error"] == "connection timed out"
    [chain] = run(non_blocking(events), cluster.index()).chains
    assert chain["response"]["error"] == "connection refused"


@pytest.mark.parametrize("gave_up_s", [10, 127])
def test_a_connect_nothing_answered_has_a_connect_hop_until_the_client_gave_up(gave_up_s):
    """The rules flushed: a connect stays in progress until the client closes it (curl --connect-timeout 10), or
    past the connection's idle timeout (30 s; 127 s: the kernel's SYN retries) that ends the chain first. A close
    seen makes the chain's connect hop: how long the client waited. The idle timeout makes none: the wait went on,
    for how long the chain cannot say. The failure's own alert says why, so the wait raises no svc.hop_latency."""
    cluster, events = build("rules_flushed", "dnat", requests=2)
    connected = {(e.node, e.pid, e.fd): e.ts for e in events if e.kind == "connect" and e.proto == "tcp"}
    events = renumber(sorted((e.with_(ts=connected[e.node, e.pid, e.fd] + gave_up_s * S)
                              if e.kind == "close" and e.proto == "tcp" else e for e in events), key=lambda e: e.ts))
    result = run(events, cluster.index())
    rules = {a["alert_id"]: a["rule"] for a in result.alerts}
    assert len(result.chains) == 2
    for chain in result.chains:
        assert chain["response"]["error"] == "connection timed out"
        hops = [h for h in chain["hops"] if h["name"] == "connect"]
        if gave_up_s < 30:
            [hop] = hops
            assert hop["start_ts"] == chain["connect"]["ts"]
            assert hop["latency_ns"] == hop["end_ts"] - hop["start_ts"] == gave_up_s * S
        else:
            assert hops == []
        assert [rules[i] for i in chain["alerts"]] == ["svc.translation_missing"]
