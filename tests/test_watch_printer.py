"""`svctrace watch`'s printer without the kernel: the seed example's events through the in-process
runner, printed as watch prints them — each chain and each alert once, and only those its
--namespace/--service/--status/--alerts-only choose."""
from __future__ import annotations

import io
from pathlib import Path

import orjson
import pytest

from svctrace.agents.scap import open_capture
from svctrace.analyze.command import Filter, parse_statuses
from svctrace.analyze.pipeline import load_cluster_file
from svctrace.streams.core.runner import Runner
from svctrace.streams.metadata.index import ClusterIndex
from svctrace.watch import Printer

SEED = Path(__file__).resolve().parent.parent / "examples" / "seed"


def watched(**only) -> list[dict]:
    """The seed capture fed in three parts, the printer taking what is ready after each (as watch's
    loop does), then at the end: the JSON records printed."""
    with open_capture(SEED / "capture.scap") as capture:
        events = [e for e in capture if e.proto in ("tcp", "udp")]
    runner = Runner(ClusterIndex.from_records(load_cluster_file(str(SEED / "cluster.json"))))
    out = io.StringIO()
    flt = Filter(only.get("namespace"), only.get("service"), parse_statuses(only.get("status")))
    printer = Printer(out, True, False, 6, flt, only.get("alerts_only", False))
    third = len(events) // 3
    for part in (events[:third], events[third:2 * third], events[2 * third:]):
        runner.feed(part)
        runner.step()
        printer.take(runner)
    runner.finish()
    printer.take(runner)
    return [orjson.loads(line) for line in out.getvalue().splitlines()]


def names(records: list[dict]) -> tuple[list, list]:
    chains = [(c["service"] or {}).get("name") for c in records if c["schema"] == "svctrace.chain"]
    alerts = [a["rule"] for a in records if a["schema"] == "svctrace.alert"]
    return chains, alerts


def test_every_chain_and_alert_printed_once():
    chains, alerts = names(watched())
    assert len(chains) == 6 and len(alerts) == len(set(alerts)) == 5


def test_a_service_filter_prints_its_chains_and_alerts_only():
    chains, alerts = names(watched(service="default/my-nginx-typo"))
    assert chains == ["my-nginx-typo"] and alerts == ["svc.no_endpoints"]


def test_status_and_alerts_only():
    records = watched(status=["broken"])
    assert {c["status"] for c in records if c["schema"] == "svctrace.chain"} == {"broken"}
    chains, alerts = names(watched(alerts_only=True))
    assert chains == [] and len(alerts) == 5


@pytest.mark.parametrize("service", ["", "kube-system/x"])
def test_a_bad_filter_is_refused_before_capturing(service):
    from svctrace.analyze.errors import AnalyzeError

    with pytest.raises(AnalyzeError):
        Filter("default", service)


def test_the_closing_line_counts_what_was_printed():
    with open_capture(SEED / "capture.scap") as capture:
        events = [e for e in capture if e.proto in ("tcp", "udp")]
    runner = Runner(ClusterIndex.from_records(load_cluster_file(str(SEED / "cluster.json"))))
    printer = Printer(io.StringIO(), True, False)
    runner.feed(events)
    runner.finish()
    printer.take(runner)
    assert printer.totals() == "6 chains (4 broken, 2 ok), 5 alerts (5 critical)"


def test_an_info_alert_is_one_line_and_warnings_keep_their_evidence():
    from svctrace.analyze.render import fails

    out = io.StringIO()
    printer = Printer(out, False, False, 6)
    base = {"schema": "svctrace.alert", "alert_id": "a1", "labels": {"namespace": "default"}, "count": 1,
            "first_seen": 1, "last_seen": 1, "chain_ids": ["ch-1"],
            "evidence": [{"node": "n", "n": i, "ts": i, "what": "x"} for i in range(3)]}
    printer._alert(dict(base, severity="info", rule="dns.search_amplification", summary="cost"))
    assert out.getvalue().strip().splitlines() == ["INFO  dns.search_amplification  cost"]
    printer._alert(dict(base, alert_id="a2", severity="warning", rule="svc.backend_5xx", summary="503"))
    assert "evidence" in out.getvalue()
    assert [fails(s, "warning") for s in ("info", "warning", "critical")] == [False, True, True]
    assert not fails("critical", "never")
