"""The worker's enriched and flows records stay within what the broker takes, whatever the payloads.

Events are cut into records of at most 1000 events; with `--snaplen 4096` on TLS traffic (incompressible
payloads) 1000 events are ~4 MB even compressed, past the topics' max.message.bytes (1 MiB). Records are
cut by bytes too: the unit test checks the cut, the broker test that a worker publishes every such event
and goes on."""
from __future__ import annotations

import random
import time
from dataclasses import replace

import orjson
import pytest
import zstandard

from svctrace.kafka.admin import topic_name
from svctrace.schemas.catalogue import load_catalogue
from svctrace.streams.core.enrich import ENRICHED_TOPIC
from svctrace.streams.faust_app.app import RECORD_BYTES, RECORD_EVENTS, _records
from svctrace.streams.faust_app.wire import LocalHandoff, encode_enriched_batch, encode_flows_batch, read_flows_record
from tests import scenario
from tests.harness import pipeline as P
from tests.test_kafka_pipeline import assert_same, complete, expected_results, start_workers, stop_all

BROKER_MAX_BATCH = 1024 * 1024  # the topics' max.message.bytes: what a compressed record batch may have


def _tls_like(events, seed: int = 8):
    """The events, each payload replaced by 4 KiB of random bytes (as --snaplen 4096 captures TLS)."""
    rng = random.Random(seed)
    return [replace(e, data=rng.randbytes(4096)) if e.data else e for e in events]


def _enriched(events, cluster):
    from svctrace.streams.core import Graph, Settings

    graph = Graph(cluster.index(), Settings(emit_enriched=True))
    state = graph.enrich.new_state()
    by_node: dict[str, list] = {}
    for e in events:
        by_node.setdefault(e.node, []).append(e)
    from svctrace.schemas.models import SyscallBatch

    for node, evs in by_node.items():
        graph.enrich.process(state, node, SyscallBatch(node=node, source="scap", seq=0, events=evs))
    return [value for _topic, _key, value in graph.enrich.flush(state, "node")]


@pytest.mark.parametrize("encode", [encode_flows_batch, encode_enriched_batch], ids=["flows", "enriched"])
def test_records_are_cut_by_bytes_too_and_hold_every_event_in_order(encode):
    cluster, events = scenario.build("wrong_port", "userspace", requests=400)
    batches = _enriched(_tls_like(events), cluster)
    big = max(batches, key=lambda b: len(b["events"]))
    assert len(big["events"]) > RECORD_EVENTS  # more than one record by events alone
    lost = [{"node": "node-a", "ts": 5, "count": 2}]
    batch = {**big, "lost": lost}
    assert len(zstandard.ZstdCompressor(level=3).compress(encode({**batch, "events": big["events"][:RECORD_EVENTS]}))) \
        > BROKER_MAX_BATCH  # cut by events only, the broker would refuse the first record
    records = list(_records(batch, encode))
    assert len(records) > len(big["events"]) // RECORD_EVENTS + 1
    for i, (chunk, data) in enumerate(records):
        assert data == encode(chunk)
        assert len(data) <= RECORD_BYTES and len(chunk["events"]) <= RECORD_EVENTS
        assert len(zstandard.ZstdCompressor(level=3).compress(data)) < BROKER_MAX_BATCH
        assert chunk.get("lost") == (lost if i == 0 else None)  # loss markers once, in the first
    assert [e for chunk, _ in records for e in chunk["events"]] == list(big["events"])
    if encode is encode_flows_batch:  # and they read back as the events they hold
        handoff = LocalHandoff()
        read = [read_flows_record(data, [], handoff) for _, data in records]
        assert [e for r in read for e in r["events"]] == list(big["events"])


def test_records_of_small_payloads_are_cut_by_events_alone():
    cluster, events = scenario.build("wrong_port", "userspace", requests=400)
    big = max(_enriched(events, cluster), key=lambda b: len(b["events"]))
    n = len(big["events"])
    records = list(_records(big, encode_flows_batch))
    assert [len(c["events"]) for c, _ in records] == [min(RECORD_EVENTS, n - i) for i in range(0, n, RECORD_EVENTS)]
    small = {**big, "events": big["events"][:10]}
    [(chunk, data)] = _records(small, encode_flows_batch)
    assert chunk is small and data == encode_flows_batch(small)  # a batch that fits is sent as it is


@pytest.mark.kafka
def test_a_worker_publishes_events_with_incompressible_payloads_and_goes_on(kafka, tmp_path):
    """TLS-like 4 KiB payloads on every send and receive, replayed as a backlog through two workers: every
    event comes out on svctrace.events.enriched, the chains and alerts are the in-process runner's, and
    both workers are alive."""
    prefix = kafka.unique_prefix("big")
    P.ensure_worker_topics(kafka.bootstrap, prefix)
    cluster, events = scenario.build("wrong_port", "userspace", requests=400)
    records = cluster.records()
    events = _tls_like(events)
    chains, alerts = expected_results(events, records)
    kafka.run(P.publish_cluster(kafka.bootstrap, prefix, records))
    workers = start_workers(kafka, prefix, tmp_path, 2)
    try:
        kafka.run(P.publish_batches(kafka.bootstrap, prefix, P.batches_of(events, 100)))
        res = kafka.run(P.read_results(kafka.bootstrap, prefix, complete(chains, alerts), 90.0, settle=1.0))
        assert_same(res, chains, alerts, workers)
        want = sorted((e.node, e.n) for e in events)
        assert _enriched_on_topic(kafka.bootstrap, topic_name(ENRICHED_TOPIC, prefix), len(want)) == want
        for w in workers:
            w.check_alive()
    finally:
        stop_all(workers)
        P.kill_all_workers()


def _enriched_on_topic(bootstrap: str, topic: str, count: int, timeout: float = 60.0) -> list:
    """(node, n) of the events on the enriched topic, each once (delivery is at least once: a worker's
    successor re-sends what followed its last checkpoint), once there are `count` of them (or the timeout)."""
    from aiokafka import TopicPartition

    from svctrace.kafka.clients import consumer

    async def go():
        c = consumer(bootstrap, group_id=None)
        await c.start()
        seen: set = set()
        try:
            tps = [TopicPartition(topic, p) for p in range(load_catalogue()[ENRICHED_TOPIC].partitions)]
            c.assign(tps)
            await c.seek_to_beginning(*tps)
            deadline = time.monotonic() + timeout
            while len(seen) < count and time.monotonic() < deadline:
                for rs in (await c.getmany(timeout_ms=500)).values():
                    for r in rs:
                        seen.update((e["node"], e["n"]) for e in orjson.loads(r.value)["events"])
        finally:
            await c.stop()
        return sorted(seen)

    import asyncio

    return asyncio.run(go())
