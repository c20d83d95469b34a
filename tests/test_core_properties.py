"""Property tests: arrival order within the allowed lateness, at-least-once duplicates,
interleaved concurrent requests and serialized state never change chains or alerts."""
from __future__ import annotations

import random

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from svctrace.streams.core import Runner, Settings, dumps_state, loads_state, run
from tests.scenario import FAULTS, MODES, MS, T0, US, Cluster, Scenario

LATENESS = Settings().enrich_lateness_ns


def _scenario(mode, requests):
    """requests: [(fault, start offset µs, backend)]; one cluster fault (it shapes the metadata)."""
    cluster = Cluster(requests[0][0])
    sc = Scenario(cluster, mode)
    for fault, offset_us, backend in requests:
        sc.request(T0 + offset_us * US, fault, backend=backend if fault == "healthy" else None)
    return cluster, sc.events()


def _canonical(result):
    return (sorted(result.chains, key=lambda c: c["chain_id"]), sorted(result.alerts, key=lambda a: a["alert_id"]))


def _arrival(events, rng, dup_rate):
    """Each event (and each duplicate) arrives at ts + U[0, lateness): at most `lateness` late."""
    keyed = [(e.ts + rng.randrange(LATENESS), i, e) for i, e in enumerate(events)]
    for i, e in enumerate(events):
        if rng.random() < dup_rate:
            keyed.append((e.ts + rng.randrange(LATENESS), len(events) + i, e))
    keyed.sort(key=lambda k: (k[0], k[1]))
    return [e for _k, _i, e in keyed]


request = st.tuples(st.sampled_from(FAULTS), st.integers(0, 3000), st.sampled_from(["my-nginx-1", "my-nginx-2"]))


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(mode=st.sampled_from(MODES), fault=st.sampled_from(FAULTS), offsets=st.lists(st.integers(0, 3000), min_size=1, max_size=4),
       backends=st.lists(st.sampled_from(["my-nginx-1", "my-nginx-2"]), min_size=4, max_size=4),
       seed=st.integers(0, 2**32 - 1), dup_rate=st.sampled_from([0.0, 0.2, 1.0]), step=st.integers(1, 64))
def test_shuffled_duplicated_interleaved_give_the_same_chains_and_alerts(mode, fault, offsets, backends, seed, dup_rate, step):
    reqs = [(fault, off, backends[i]) for i, off in enumerate(offsets)]
    cluster, events = _scenario(mode, reqs)
    index = cluster.index()
    baseline = run(events, index)
    # interleaved concurrent requests from one pod: one chain per request, each as if alone
    assert len(baseline.chains) == len(reqs)
    assert len({c["chain_id"] for c in baseline.chains}) == len(reqs)
    statuses = {c["status"] for c in baseline.chains}
    assert statuses == ({"ok"} if fault == "healthy" else {"broken"})
    if fault == "healthy":
        assert sorted(c["backend"]["pod"] for c in baseline.chains) == sorted(b for _f, _o, b in reqs)
    shuffled = _arrival(events, random.Random(seed), dup_rate)
    again = run(shuffled, cluster.index(), step_events=step)
    assert _canonical(again) == _canonical(baseline)


class RoundTripRunner(Runner):
    """Serializes every key's state to bytes and back between calls, as a changelog-backed table would."""

    def _deliver(self, topic, key, value):
        table = self.states[topic]
        if key in table:
            table[key] = loads_state(dumps_state(table[key]))
        super()._deliver(topic, key, value)

    def advance(self, watermark_ns):
        for table in self.states.values():
            for key in list(table):
                table[key] = loads_state(dumps_state(table[key]))
        super().advance(watermark_ns)


@settings(max_examples=25, deadline=None)
@given(mode=st.sampled_from(MODES), fault=st.sampled_from(FAULTS), count=st.integers(1, 3), step=st.integers(1, 16))
def test_state_survives_serialization(mode, fault, count, step):
    faults = [fault] * count
    cluster = Cluster(fault)
    sc = Scenario(cluster, mode)
    for i, f in enumerate(faults):
        sc.request(T0 + i * 300 * MS, f)
    if fault in ("healthy", "host_resolver", "rules_flushed"):
        sc.keepalive(T0 + 2000 * MS, statuses=(200, 503))
    events = sc.events()
    baseline = run(events, cluster.index())
    r = RoundTripRunner(cluster.index(), step_events=step)
    r.feed(events)
    assert _canonical(r.finish()) == _canonical(baseline)


@settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(mode=st.sampled_from(MODES), loss_at=st.one_of(st.none(), st.integers(0, 4000)),
       loss_node=st.sampled_from(["node-a", "node-b"]), seed=st.integers(0, 2**32 - 1), step=st.integers(1, 32))
def test_keepalive_and_loss_markers_under_shuffling(mode, loss_at, loss_node, seed, step):
    cluster = Cluster()
    sc = Scenario(cluster, mode)
    sc.request(T0, "healthy")
    sc.keepalive(T0 + 500 * US, statuses=(200, 503, 200))
    sc.request(T0 + 1500 * US, "healthy", backend="my-nginx-2")
    if loss_at is not None:
        sc.loss(T0 + loss_at * US, loss_node, 3)
    events = sc.events()
    baseline = run(events, cluster.index())
    assert len(baseline.chains) == 5
    if loss_at is None:
        assert sorted(c["status"] for c in baseline.chains) == ["broken", "ok", "ok", "ok", "ok"]
    else:
        assert "incomplete" in {c["status"] for c in baseline.chains}
        assert all(c["alerts"] == [] for c in baseline.chains if c["status"] == "incomplete")
    again = run(_arrival(events, random.Random(seed), 0.3), cluster.index(), step_events=step)
    assert _canonical(again) == _canonical(baseline)
