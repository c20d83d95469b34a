"""examples/lab: a capture recorded on a real kernel (examples/lab/record.py, lab/net/services.py),
analyzed as a user would: `svctrace analyze capture.scap --cluster cluster.json --json`.

Every case of the lab must read back from the file as it did live (tests/test_lab_services.py):
the recording went through the scap writer, the file through the reader. No root needed.
"""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import orjson
import pytest

from lab.net.services import KEEPALIVE, KEEPALIVE_PATHS
from tests.test_lab_services import EXPECTED, assert_case, assert_keepalive, pick

LAB = Path(__file__).resolve().parent.parent / "examples" / "lab"
RECORDED = orjson.loads((LAB / "cases.json").read_bytes())  # the cases curled, and curl's exit status


@pytest.fixture(scope="module")
def analyzed():
    out = subprocess.run([sys.executable, "-m", "svctrace", "analyze", str(LAB / "capture.scap"),
                          "--cluster", str(LAB / "cluster.json"), "--json"], capture_output=True, timeout=120)
    assert out.returncode == 1, out.stderr.decode()  # alerts: exit status 1
    records = [orjson.loads(line) for line in out.stdout.splitlines() if line.strip()]
    chains = [r for r in records if r.get("schema") == "svctrace.chain"]
    alerts = [r for r in records if r.get("schema") == "svctrace.alert"]
    return chains, alerts


@pytest.mark.parametrize("case", RECORDED)
def test_recorded_case_reads_as_it_ran(analyzed, case):
    chains, alerts = analyzed
    if case in KEEPALIVE:
        assert RECORDED[case] == 0
        assert_keepalive(case, chains)
        return
    assert RECORDED[case] == EXPECTED[case][0]  # curl saw what it sees live
    chain, alerted = pick(case, chains, alerts)
    assert_case(case, chain, alerted)


def test_every_chain_is_a_case(analyzed):
    """Nothing else in the file makes a chain: the search list's NXDOMAIN lookups belong to them."""
    chains, _alerts = analyzed
    assert len(chains) == len(RECORDED) + sum(len(KEEPALIVE_PATHS) - 1 for case in RECORDED if case in KEEPALIVE)


def test_headless_request_reads_as_direct_not_as_a_missing_translation():
    out = subprocess.run([sys.executable, "-m", "svctrace", "analyze", str(LAB / "capture.scap"), "--cluster",
                          str(LAB / "cluster.json"), "--service", "my-nginx-headless", "--no-color"],
                         capture_output=True, text=True, timeout=120)
    assert "headless Service: the client connects to the pod itself" in out.stdout
    assert "no translation seen" not in out.stdout


@pytest.mark.parametrize("case", KEEPALIVE)
def test_keepalive_requests_are_printed_in_the_order_sent(analyzed, case):
    """One connection, one start: its chains follow the order of the requests on it."""
    chains, _alerts = analyzed
    targets = [c["response"]["target"] for c in chains if (c["service"] or {}).get("name") == case]
    assert tuple(targets) == KEEPALIVE_PATHS


def test_a_refused_dnat_names_the_services_only_ready_endpoint(analyzed):
    """Nothing accepted the refused connect, but the Service had one ready endpoint: that pod refused."""
    _chains, alerts = analyzed
    [alert] = [a for a in alerts if a["rule"] == "svc.target_port_refused"
               and a["labels"]["service"] == "my-nginx-wrong-port"]
    assert "backend default/my-nginx-1 (its only ready endpoint) refused port 8081" in alert["summary"]


def test_no_stage_dead_letters_a_record_of_the_real_capture():
    """A record a stage cannot process goes to the dead letters and its chain is lost without a word
    in the chains; on a real capture that must never happen."""
    from svctrace.analyze.pipeline import analyze

    assert analyze(str(LAB / "capture.scap"), cluster=str(LAB / "cluster.json")).deadletters == []


def test_an_answered_request_whose_backend_is_not_linked_says_so():
    """The hairpin case: kube-proxy masquerades the pod's request to its own Service, so no accept
    shows the client's address. The chain is ok, and its text says the backend hop is missing."""
    out = subprocess.run([sys.executable, "-m", "svctrace", "analyze", str(LAB / "capture.scap"), "--cluster",
                          str(LAB / "cluster.json"), "--service", "default/my-nginx", "--no-color"],
                         capture_output=True, text=True, timeout=120).stdout
    blocks = out.split("\n● ")
    [hairpin] = [b for b in blocks if "in default/my-nginx-1 on" in b.splitlines()[1]]
    assert "  OK  " in hairpin.splitlines()[0]
    words = [line.split() for line in hairpin.splitlines()[1:] if line.strip()]
    stages = [w[2] if w[0].startswith("+") else w[0] for w in words]  # ("+0.280 ms response ...")
    assert "backend" in stages and stages.index("backend") == stages.index("response") - 1
    assert "not linked (no accept with the client's address: masqueraded, or not captured)" in hairpin


# What proves each alert is in its evidence: the failing event, not ndots' search expansions (the
# first refs of a chain). (rule, Service) -> the event an SRE must see.
PROOF = {
    ("svc.backend_5xx", "my-nginx-503"): "client response",
    ("svc.target_port_refused", "my-nginx-userspace-wrong-port"): "proxy dial ECONNREFUSED",
    ("svc.target_port_refused", "my-nginx-wrong-port"): "client connect ECONNREFUSED",
    ("svc.no_endpoints", "my-nginx-no-endpoints"): "client connect ECONNREFUSED",
    ("svc.misrouted", "my-nginx-stale"): "backend response",
    ("svc.translation_missing", "my-nginx-flushed"): "client connect",
    ("svc.backend_unreachable", "my-nginx-socklb-dropped"): "client connect",  # to the pod; nothing answered
    ("svc.target_port_refused", "my-udp-wrong-port"): "client recv error ECONNREFUSED",  # the pod's ICMP error
    ("svc.no_endpoints", "my-udp-no-endpoints"): "client recv error ECONNREFUSED",  # the REJECT's
    ("svc.translation_missing", "my-udp-flushed"): "client datagram",  # sent; nobody received it
}


@pytest.mark.parametrize("rule,service", sorted(PROOF))
def test_an_alerts_evidence_holds_the_event_that_proves_it(analyzed, rule, service):
    chains, alerts = analyzed
    [alert] = [a for a in alerts if a["rule"] == rule and a["labels"]["service"] == service]
    whats = [r["what"] for r in alert["evidence"]]
    assert PROOF[rule, service] in whats, whats
    [chain] = [c for c in chains if c["chain_id"] in alert["chain_ids"]]
    assert whats[-1] == chain["evidence"][-1]["what"]  # both end where the request ended
    assert whats[0].startswith("dns query")  # and begin where it began


def test_a_dns_alert_cites_its_lookup_and_counts_search_expansions_by_name(analyzed):
    """curl and the Go client ask A and AAAA of every name the search list makes (the UDP client, A only): the
    alert counts names, not answers (an NXDOMAIN answer per name and type asked)."""
    _chains, alerts = analyzed
    amplified = [a for a in alerts if a["rule"] == "dns.search_amplification"]
    assert amplified
    for a in amplified:
        whats = [r["what"] for r in a["evidence"]]
        assert all(w.startswith("dns ") for w in whats)
        asked = {w.split()[2] for w in whats if w.startswith("dns query")}
        qtypes = {w.split()[3] for w in whats if w.startswith("dns query")}
        qname = a["summary"].split()[0] + "."
        expansions = len(asked - {qname})
        assert expansions >= 3 and whats.count("dns answer NXDOMAIN") >= len(qtypes) * expansions
        assert f": {expansions} search-list names answered NXDOMAIN first (ndots)" in a["summary"], a["summary"]


def test_an_answer_that_is_a_nodes_address_is_named_so(analyzed):
    """The host's resolver answering a cluster name with the node's own address: saying whose address
    it is points at the resolver."""
    _chains, alerts = analyzed
    wrong = [a for a in alerts if a["rule"] == "dns.answer_not_service"]
    assert wrong and all("(node lab-node's address)" in a["summary"] for a in wrong), [a["summary"] for a in wrong]


def test_a_name_that_does_not_exist_reads_as_asked_and_timed(analyzed):
    """curl asks A, then AAAA, of each name: the chain shows the type asked first, and how long the
    resolver took to say NXDOMAIN (it said null: no positive answer)."""
    chains, _alerts = analyzed
    nx = [c for c in chains if (c.get("dns") or {}).get("rcode") == "NXDOMAIN"]
    assert nx
    for c in nx:
        last_nx = max(r["ts"] for r in c["evidence"] if r["what"] == "dns answer NXDOMAIN")
        first_query = min(r["ts"] for r in c["evidence"] if r["what"].startswith("dns query"))
        assert c["dns"]["qtype"] == "A"
        assert c["dns"]["latency_ns"] == last_nx - first_query > 0
