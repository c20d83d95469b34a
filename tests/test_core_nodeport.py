"""A request to a NodePort that nothing answered is broken, as one to a ClusterIP is: the node's
port is a Service's front door too. (Before, it read "ok" with a timed-out response: the
translation was assumed from the port alone.)"""
from __future__ import annotations

import dataclasses

from svctrace.streams.core import run
from tests.scenario import S, T0, Cluster, Scenario


def nodeport_request(connect_errno: str | None, fault: str = "healthy") -> tuple[dict, list[dict]]:
    """A host process on node-a requests node-b's NodePort; with `connect_errno`, only its connect and
    close happen (nothing accepts; the close 2 s later, as curl gives up)."""
    cluster = Cluster(fault)
    cluster.services["my-nginx"] = dataclasses.replace(cluster.services["my-nginx"], node_port=30080)
    sc = Scenario(cluster, "dnat")
    sc.host_request(T0, via="nodeport")
    events = sc.events()
    if connect_errno is not None:
        res = {"EINPROGRESS": -115, "ECONNREFUSED": -111}[connect_errno]
        client = [e for e in events if e.comm == "wget" and e.kind in ("connect", "close")]
        events = [e.with_(res=res, errno=connect_errno) if e.kind == "connect" else e.with_(ts=e.ts + 2 * S)
                  for e in client]
    result = run(events, cluster.index())
    [chain] = result.chains
    return chain, result.alerts


def test_an_answered_nodeport_is_ok_and_snat_linked():
    chain, alerts = nodeport_request(None)
    assert chain["status"] == "ok" and chain["translation"]["mode"] == "nodeport_snat" and not alerts


def test_a_nodeport_nothing_answered_is_a_missing_translation():
    chain, alerts = nodeport_request("EINPROGRESS")
    assert chain["status"] == "broken" and chain["translation"]["mode"] == "none"
    assert chain["response"]["error"] == "connection timed out"
    [alert] = alerts
    assert alert["rule"] == "svc.translation_missing"
    assert "to 10.0.0.12:30080 was never translated or accepted (connection timed out)" in alert["summary"]


def test_a_nodeport_without_endpoints():
    chain, alerts = nodeport_request("EINPROGRESS", fault="no_endpoints")
    assert chain["status"] == "broken" and [a["rule"] for a in alerts] == ["svc.no_endpoints"]


def test_a_refused_nodeport():
    chain, alerts = nodeport_request("ECONNREFUSED")
    assert chain["status"] == "broken" and chain["response"]["error"] == "connection refused"
    assert [a["rule"] for a in alerts] == ["svc.target_port_refused"]
