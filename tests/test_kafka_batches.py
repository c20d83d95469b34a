"""svctrace.kafka.batches: Kafka's murmur2 as aiokafka computes it, and records sent as one batch per
partition landing where, and in the order, aiokafka's own send() puts them (real broker)."""
from __future__ import annotations

import asyncio
import random
import time

import pytest
from aiokafka.partitioner import murmur2 as aiokafka_murmur2

from svctrace.kafka.admin import topic_name
from svctrace.kafka.batches import PartitionBatches, murmur2, murmur2_partition
from svctrace.schemas.catalogue import CHAINS, load_catalogue


def test_murmur2_is_kafkas():
    rng = random.Random(8)
    for length in range(0, 300):
        for _ in range(10):
            key = bytes(rng.getrandbits(8) for _ in range(length))
            assert murmur2(key) == aiokafka_murmur2(key), key
    # Known values of the Java client (org.apache.kafka.common.utils.UtilsTest.testMurmur2)
    assert murmur2(b"21") == 0xFFFFFFFF & -973932308
    assert murmur2(b"foobar") == 0xFFFFFFFF & -790332482
    assert murmur2(b"a-little-bit-long-string") == 0xFFFFFFFF & -985981536
    assert murmur2(b"lkjh234lh9fiuh90y23oiuhsafujhadof229phr9h19h89h8") == 0xFFFFFFFF & -58897971


@pytest.mark.kafka
def test_batched_records_land_where_and_in_the_order_send_puts_them(kafka):
    prefix = kafka.catalogue_topics("pb")
    topic = topic_name(CHAINS, prefix)
    keys = [f"ch-{i:04d}".encode() for i in range(300)]
    n = load_catalogue()[CHAINS].partitions

    async def scenario():
        p = kafka.producer(max_batch_size=4096)  # several full batches per partition
        await p.start()
        try:
            for key in keys[:100]:  # the reference: aiokafka's default partitioner
                await p.send(topic, b"send:" + key, key=key)
            batches = PartitionBatches(p)
            for key in keys:
                await batches.add_keyed(topic, key, b"batch:" + key + b"." * 200)
            await batches.send()
            await p.flush()
        finally:
            await p.stop()
        c = kafka.consumer(topic, group_id=None)
        await c.start()
        got, deadline = [], time.monotonic() + 30
        try:
            while len(got) < 400 and time.monotonic() < deadline:
                for records in (await c.getmany(timeout_ms=500)).values():
                    got.extend(records)
        finally:
            await c.stop()
        return got

    got = asyncio.run(scenario())
    assert len(got) == 400
    partitions = len({r.partition for r in got})
    by_send = {r.key: r.partition for r in got if r.value.startswith(b"send:")}
    batched = [r for r in got if r.value.startswith(b"batch:")]
    for r in batched:
        assert r.partition == murmur2_partition(r.key, n)
        if r.key in by_send:
            assert r.partition == by_send[r.key], r.key
    assert partitions > 1
    for p in {r.partition for r in batched}:  # in the order added, per partition
        order = [r.key for r in sorted(batched, key=lambda r: r.offset) if r.partition == p]
        assert order == [k for k in keys if murmur2_partition(k, n) == p]
