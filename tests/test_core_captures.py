"""The in-process runner over real public captures (read by the project's scap reader)."""
from __future__ import annotations

from svctrace.agents.scap import open_capture
from svctrace.schemas.validation import validate
from svctrace.streams.core import run
from svctrace.streams.metadata.index import ClusterIndex


def test_curl_google_capture_gives_one_dns_resolved_http_chain(captures):
    events = list(open_capture(captures / "libs__curl_google.scap"))
    result = run(events, ClusterIndex.from_records([]))
    [chain] = result.chains
    validate("chain", chain)
    assert chain["status"] == "ok" and result.alerts == []
    dns = chain["dns"]
    assert dns["qname"] == "www.google.com" and dns["rcode"] == "NOERROR" and dns["answers"]
    assert dns["resolver_is_cluster_dns"] is False and dns["latency_ns"] > 0
    assert chain["connect"]["ip"] in dns["answers"] and chain["connect"]["port"] == 80
    assert chain["client"]["comm"] == "curl"
    resp = chain["response"]
    assert (resp["method"], resp["host"], resp["status"]) == ("GET", "www.google.com", 200)
    assert resp["bytes_received"] > 10_000
    assert [h["name"] for h in chain["hops"]] == ["dns", "response"]


def test_every_network_capture_runs_and_its_records_validate(captures):
    index = ClusterIndex.from_records([])
    for path in sorted(captures.glob("*.scap")):
        result = run(open_capture(path), index)
        for chain in result.chains:
            validate("chain", chain)
        for alert in result.alerts:
            validate("alert", alert)
