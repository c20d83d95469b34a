"""The real Apache Kafka broker: topics as catalogued, a syscall batch round trip
with acks=all and idempotence, and a broker that cannot start failing loudly."""
from __future__ import annotations

import asyncio
import base64
import socket
import time

import orjson
import pytest

from svctrace.kafka import admin, clients, deadletter
from svctrace.schemas import SyscallBatch, SyscallEvent, decode_batch, encode_batch, load_catalogue, validate
from svctrace.schemas.catalogue import DEADLETTER, SYSCALLS
from tests.harness.kafka import BrokerError, lab_broker

pytestmark = pytest.mark.kafka


def _batch(node: str, seq: int, count: int) -> SyscallBatch:
    events = [
        SyscallEvent(
            ts=1_700_000_000_000_000_000 + seq * 1_000_000 + i, node=node, n=seq * count + i, pid=100 + i % 7,
            tid=100 + i % 7, comm="curl", kind="send" if i % 2 else "connect",
            syscall="sendto" if i % 2 else "connect", fd=3, res=38 if i % 2 else 0, proto="tcp", family="ipv4",
            role="client", local_ip="10.244.1.5", local_port=40000 + i, remote_ip="10.96.0.17", remote_port=80,
            addr_ip="10.96.0.17", addr_port=80, size=38 if i % 2 else None,
            data=b"GET / HTTP/1.1\r\nHost: web\r\n\r\n" if i % 2 else None,
        )
        for i in range(count)
    ]
    return SyscallBatch(node=node, source="scap", seq=seq, events=events)


async def _consume(consumer, want: int, timeout: float = 30.0) -> list:
    got, deadline = [], time.monotonic() + timeout
    while len(got) < want and time.monotonic() < deadline:
        for records in (await consumer.getmany(timeout_ms=500)).values():
            got.extend(records)
    return got


def test_catalogue_topics_exist_with_catalogued_partitions_and_configs(kafka):
    catalogue = load_catalogue()
    counts = kafka.run(admin.partition_counts(kafka.bootstrap, catalogue))
    configs = kafka.run(admin.describe_topic_configs(kafka.bootstrap, catalogue))
    for name, t in catalogue.items():
        assert counts[name] == t.partitions, name
        assert configs[name]["cleanup.policy"] == t.cleanup_policy, name
        assert int(configs[name]["retention.ms"]) == t.retention_ms, name
        if t.min_compaction_lag_ms is not None:
            assert int(configs[name]["min.compaction.lag.ms"]) == t.min_compaction_lag_ms, name
    assert configs["svctrace.k8s.objects"]["cleanup.policy"] == "compact"
    assert int(configs["svctrace.k8s.objects"]["min.compaction.lag.ms"]) == 3_600_000


def test_a_starting_workers_index_has_the_history_the_object_topic_keeps(kafka):
    """A worker's ClusterIndex is read from the compacted object topic, from its start: every version the topic
    still holds (compaction leaves them an hour, min.compaction.lag.ms) is applied at its time, so a pod that left
    a Service's endpoints before the worker started is known to have left, and when (svc.misrouted's words)."""
    from svctrace.schemas.catalogue import K8S_OBJECTS
    from svctrace.streams.faust_app.cluster_feed import ClusterFeed
    from svctrace.streams.metadata.index import ClusterIndex, record_key

    prefix = kafka.catalogue_topics("hist")
    topic = admin.topic_name(K8S_OBJECTS, prefix)
    t0 = 1_700_000_000_000_000_000

    def slice_at(ts: int, ips: list[str]) -> dict:
        return {"schema": "svctrace.k8s-object", "version": 1, "kind": "EndpointSlice", "namespace": "default",
                "name": "web-abc", "uid": "u1", "resource_version": str(ts), "observed_ts": ts, "deleted": False,
                "endpoints": {"service": "web", "address_type": "IPv4", "ports": [{"name": "http", "port": 80,
                                                                                   "protocol": "TCP"}],
                              "endpoints": [{"addresses": [ip], "ready": True, "serving": True, "terminating": False,
                                             "node": "n1", "pod": f"web-{i}", "pod_namespace": "default"}
                                            for i, ip in enumerate(ips)]}}

    versions = [slice_at(t0, ["10.244.1.7", "10.244.2.8"]), slice_at(t0 + 10 * 10**9, ["10.244.2.8"])]
    for v in versions:
        validate("k8s-object", v)

    async def publish_then_read() -> ClusterIndex:
        producer = kafka.producer()
        await producer.start()
        try:
            for v in versions:
                await producer.send_and_wait(topic, orjson.dumps(v), key=record_key(v).encode())
        finally:
            await producer.stop()
        index = ClusterIndex()
        feed = ClusterFeed(kafka.bootstrap, topic, index)
        task = asyncio.create_task(feed.run())
        try:
            await asyncio.wait_for(feed.ready.wait(), 30)
        finally:
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)
        return index

    index = kafka.run(publish_then_read())
    assert index.endpoint_standing("default", "web", "10.244.1.7", t0 + 15 * 10**9) == ("left", t0 + 10 * 10**9)
    assert index.endpoint_standing("default", "web", "10.244.2.8", t0 + 15 * 10**9) == ("ready", None)


def test_syscall_batch_round_trip_with_acks_all_and_idempotence(kafka):
    prefix = kafka.catalogue_topics("rt")
    topic = admin.topic_name(SYSCALLS, prefix)
    sent = [_batch(f"node-{k}", seq, 400) for k in range(3) for seq in range(2)]
    settings = clients.producer_settings()
    assert settings["acks"] == "all" and settings["enable_idempotence"] is True

    async def go():
        producer = kafka.producer()
        await producer.start()
        try:
            for b in sent:
                await producer.send(topic, encode_batch(b), key=b.node.encode())
            await producer.flush()
            # The broker handed out a producer id: idempotence is really on, not just asked for.
            producer_id = producer._txn_manager.producer_id  # noqa: SLF001
        finally:
            await producer.stop()
        consumer = kafka.consumer(topic, group_id=prefix + "g")
        await consumer.start()
        try:
            records = await _consume(consumer, len(sent))
        finally:
            await consumer.stop()
        return producer_id, records

    producer_id, records = kafka.run(go())
    assert producer_id >= 0
    assert len(records) == len(sent)
    got = {(r.key.decode(), decode_batch(r.value).seq): decode_batch(r.value) for r in records}
    assert got == {(b.node, b.seq): b for b in sent}
    # Keyed by node: all of one node's batches in one partition, in order.
    by_node = {}
    for r in records:
        by_node.setdefault(r.key, []).append((r.partition, decode_batch(r.value).seq))
    for seqs in by_node.values():
        assert len({p for p, _ in seqs}) == 1 and [s for _, s in seqs] == sorted(s for _, s in seqs)


def test_dead_letter_keeps_reason_and_original_bytes(kafka):
    prefix = kafka.catalogue_topics("dl")
    topic = admin.topic_name(DEADLETTER, prefix)
    poison = b"\x00not json"
    dl = deadletter.dead_letter("enrich", "not JSON: unexpected byte", topic=SYSCALLS, value=poison, key=b"node-1",
                                partition=3, offset=17, error=ValueError("x"))

    async def go():
        producer = kafka.producer()
        await producer.start()
        try:
            await deadletter.send_dead_letter(producer, dl, topic=topic)
        finally:
            await producer.stop()
        consumer = kafka.consumer(topic, group_id=prefix + "g")
        await consumer.start()
        try:
            return await _consume(consumer, 1)
        finally:
            await consumer.stop()

    [record] = kafka.run(go())
    doc = orjson.loads(record.value)
    validate("dead-letter", doc)
    assert record.key == b"node-1"
    assert (doc["stage"], doc["topic"], doc["partition"], doc["offset"], doc["error"]) == (
        "enrich", SYSCALLS, 3, 17, "ValueError")
    assert base64.b64decode(doc["value_b64"]) == poison


def test_ensure_topics_refuses_a_topic_with_too_few_partitions(kafka):
    from aiokafka.admin import AIOKafkaAdminClient, NewTopic

    prefix = kafka.unique_prefix("few")
    flows = load_catalogue()["svctrace.flows"]

    async def go():
        client = AIOKafkaAdminClient(bootstrap_servers=kafka.bootstrap)
        await client.start()
        try:
            await client.create_topics([NewTopic(prefix + flows.name, 2, 1)])
        finally:
            await client.close()
        await admin.ensure_topics(kafka.bootstrap, [flows], prefix=prefix)

    with pytest.raises(admin.TopicError, match=r"has 2 partitions, the catalogue needs 12"):
        kafka.run(go())


def test_broker_on_a_port_in_use_fails_loudly():
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        broker = lab_broker().Broker(port=busy.getsockname()[1])
        with pytest.raises(BrokerError, match="already in use"):
            broker.start()
        broker.close()


def test_broker_that_kafka_itself_cannot_bind_fails_loudly():
    """Controller port bound by another socket but not listening: only Kafka notices; its exit is reported
    with the log tail."""
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        broker = lab_broker().Broker(controller_port=busy.getsockname()[1], startup_timeout=60)
        try:
            with pytest.raises(BrokerError, match=r"(?s)exited with code .*Address already in use"):
                broker.start()
        finally:
            broker.close()


def test_broker_with_a_broken_config_fails_loudly():
    broker = lab_broker().Broker(extra_config={"num.io.threads": "many"}, startup_timeout=60)
    try:
        with pytest.raises(BrokerError, match=r"(?s)num\.io\.threads"):
            broker.start()
    finally:
        broker.close()


def test_a_producer_keeps_metadata_for_every_topic_it_sent_to(kafka):
    """aiokafka tracks a topic only if it was missing at its first send; once one is tracked,
    refreshes fetch only tracked topics. Without track_every_topic the topic found in the first
    full metadata (here: syscalls) drops out when a topic created later is sent to, and its
    queued batches never find a leader."""
    from svctrace.schemas.catalogue import Topic

    prefix = kafka.catalogue_topics("md")
    first = admin.topic_name(SYSCALLS, prefix)
    later = Topic(name=prefix + "later", key="k", value_schema="x", partitions=1, cleanup_policy="delete",
                  retention_ms=3_600_000, description="created after the producer started")

    async def go():
        producer = kafka.producer()
        await producer.start()
        try:
            await producer.send_and_wait(first, b"a", key=b"k")  # known from the start's full metadata
            await admin.ensure_topics(kafka.bootstrap, [later])
            await producer.send_and_wait(later.name, b"b", key=b"k")  # missing at first send: tracked
            await producer.client.force_metadata_update()  # a refresh of the tracked topics only
            known = producer.client.cluster.topics()
            await asyncio.wait_for(producer.send_and_wait(first, b"c", key=b"k"), 30)
            return known
        finally:
            await producer.stop()

    known = kafka.run(go())
    assert {first, later.name} <= known
