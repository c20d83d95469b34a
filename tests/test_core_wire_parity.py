"""The in-process runner hands Python objects from stage to stage; the Faust app moves
the same values through Kafka as JSON. Both must give the same chains and alerts: this
guards the in-process fast paths (no serialization between stages) against drifting
from what the operators compute on the wire form."""
from __future__ import annotations

import orjson

from svctrace.agents.scap import open_capture
from svctrace.streams.core import Runner, Settings
from svctrace.streams.core.graph import encode_value
from svctrace.streams.metadata.index import ClusterIndex
from tests.scenario import FAULTS, MODES, MS, S, T0, Cluster, Scenario


class WireRunner(Runner):
    """Every value between stages takes the Kafka form (orjson bytes, payloads as base64)."""

    def _route(self, topic, key, value):
        if topic in self.graph.consumers:  # flows batches and alert occurrences
            value = orjson.loads(encode_value(value))
        super()._route(topic, key, value)


def both(events, index, settings=None):
    results = []
    for cls in (Runner, WireRunner):
        runner = cls(index, settings, step_events=64)
        runner.feed(events)
        results.append(runner.finish())
    return results


def test_scenarios_in_every_mode_give_the_same_records_in_process_and_on_the_wire():
    for fault in FAULTS:
        cluster = Cluster(fault)
        events = []
        for m, mode in enumerate(MODES):
            sc = Scenario(cluster, mode)
            for i in range(3):
                sc.request(T0 + m * 60 * S + i * 700 * MS, fault)
            if fault == "healthy":
                sc.keepalive(T0 + 30 * S + m * 60 * S, statuses=(200, 503, 200))
            events += sc.events()
        local, wire = both(events, cluster.index(), Settings(emit_enriched=True))
        assert local.chains and local.chains == wire.chains, fault
        assert local.alerts == wire.alerts, fault
        assert len(local.enriched) == len(wire.enriched), fault
        assert local.deadletters == wire.deadletters == [], fault


def test_a_public_capture_gives_the_same_records_in_process_and_on_the_wire(captures):
    events = list(open_capture(captures / "libs__curl_google.scap"))
    local, wire = both(events, ClusterIndex.from_records([]))
    assert local.chains and local.chains == wire.chains
    assert local.alerts == wire.alerts
