"""svctrace.kafka.batches: Kafka's murmur2 as aiokafka computes it, and records sent as one batch per
partition landing where, and in the order, aiokafka's own send() puts them (real broker)."""
from __future__ import annotations

import asyncio
import importlib.util
import random
import time
from pathlib import Path

import pytest
from aiokafka.partitioner import murmur2 as aiokafka_murmur2

from svctrace.kafka.admin import topic_name
from svctrace.kafka.batches import PartitionBatches, murmur2, murmur2_partition, murmur2_partitions
from svctrace.schemas.catalogue import CHAINS, load_catalogue
from svctrace.streams.core import keys, native


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


def test_murmur2_partitions_are_kafkas():
    """murmur2_partitions (the compiled core's, keys.pxd: 32-bit C integers) agrees with aiokafka key by key:
    every length (tail of 0-3 bytes), all-0xff words (the largest values), chain ids, mixed lengths."""
    rng = random.Random(9)
    for length in range(1, 70):
        keys = [bytes(rng.getrandbits(8) for _ in range(length)) for _ in range(5)] + [b"\xff" * length]
        assert murmur2_partitions(keys, 1 << 31) == [aiokafka_murmur2(k) & 0x7FFFFFFF for k in keys], length
        assert [murmur2(k) for k in keys] == [aiokafka_murmur2(k) for k in keys], length
    chain_ids = [f"ch-{rng.getrandbits(80):020x}".encode() for _ in range(1000)]
    # Keys of mixed lengths, few or many of each, and an empty one.
    mixed = [bytes(rng.getrandbits(8) for _ in range(rng.choice((0, 3, 8, 23, 23, 23)))) for _ in range(300)]
    for keys in (mixed, mixed[:3], chain_ids[:3], chain_ids):
        for n in (1, 12, 7):
            assert murmur2_partitions(keys, n) == [(aiokafka_murmur2(k) & 0x7FFFFFFF) % n for k in keys]


def test_murmur2_as_python_is_kafkas_too():
    """keys.py run as Python (SVCTRACE_PURE_PYTHON, or no compiler): its masks give what the compiled 32-bit
    arithmetic gives."""
    spec = importlib.util.spec_from_file_location("keys_as_python", Path(keys.__file__).parent.parent / "keys.py"
                                                  if Path(keys.__file__).parent.name == native.BUILT else keys.__file__)
    as_python = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(as_python)
    rng = random.Random(10)
    keys_ = [bytes(rng.getrandbits(8) for _ in range(length)) for length in range(0, 70) for _ in range(3)]
    assert [as_python.murmur2(k) for k in keys_] == [aiokafka_murmur2(k) for k in keys_]
    assert as_python.murmur2_partitions(keys_, 12) == murmur2_partitions(keys_, 12)


def test_records_of_known_partition_counts_are_placed_in_the_order_added():
    """add_keyed_known (and add_keyed_known_many) defer partitioning to send(): each record lands in its key's
    partition, in the order added per partition, also when add() sends another record to the same topic in between."""
    class Builder:
        def __init__(self):
            self.records = []

        def append(self, timestamp, key, value, headers):
            if len(self.records) == 3:  # full: a new batch takes the record
                return None
            self.records.append((key, value, headers))
            return object()

        def close(self):
            pass

    class Producer:
        def __init__(self):
            self.sent = []

        def create_batch(self):
            return Builder()

        async def send_batch(self, batch, topic, partition):
            self.sent.append((topic, partition, batch.records))

    producer = Producer()
    batches = PartitionBatches(producer)
    keys = [f"ch-{i:020x}".encode() for i in range(40)]
    for i, key in enumerate(keys):
        batches.add_keyed_known("chains", 12, key, b"v%d" % i, [("h", b"%d" % i)] if i % 2 else None)
        if i == 20:
            batches.add("chains", 5, b"direct", b"direct")
        batches.add_keyed_known("alerts", 3, key, b"a%d" % i)
    batches.add("other", 0, None, b"x")
    many = [f"many-{i}".encode() for i in range(7)]  # added in one call, after the ones above, in order
    batches.add_keyed_known_many("chains", 12, many, [b"m%d" % i for i in range(7)])
    batches.add_keyed_known_many("chains", 12, [], [])
    asyncio.run(batches.send())
    got: dict[tuple[str, int], list] = {}
    for topic, partition, records in producer.sent:
        got.setdefault((topic, partition), []).extend(records)
    expect: dict[tuple[str, int], list] = {}
    for i, key in enumerate(keys):
        expect.setdefault(("chains", murmur2_partition(key, 12)), []).append(
            (key, b"v%d" % i, [("h", b"%d" % i)] if i % 2 else []))
        if i == 20:
            expect.setdefault(("chains", 5), []).append((b"direct", b"direct", []))
        expect.setdefault(("alerts", murmur2_partition(key, 3)), []).append((key, b"a%d" % i, []))
    expect[("other", 0)] = [(None, b"x", [])]
    for i, key in enumerate(many):
        expect.setdefault(("chains", murmur2_partition(key, 12)), []).append((key, b"m%d" % i, []))
    assert got == expect
    assert not batches.unplaced and not batches.open


async def _read_back(kafka, topic: str, count: int, partition: int | None = None) -> list:
    """The records of topic (of one partition, if given) until there are count of them (30 s at most)."""
    c = kafka.consumer(topic, group_id=None)
    await c.start()
    got, deadline = [], time.monotonic() + 30
    try:
        while len(got) < count and time.monotonic() < deadline:
            for records in (await c.getmany(timeout_ms=500)).values():
                got.extend(r for r in records if partition is None or r.partition == partition)
    finally:
        await c.stop()
    return got


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
            for i, key in enumerate(keys):  # from key 100 on, runs of records partitioned together at send()
                if i < 100 or i % 7 == 0:
                    await batches.add_keyed(topic, key, b"batch:" + key + b"." * 200)
                else:
                    batches.add_keyed_known(topic, await batches.partitions(topic), key, b"batch:" + key + b"." * 200)
            await batches.send()
            await p.flush()
        finally:
            await p.stop()
        return await _read_back(kafka, topic, 400)

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


@pytest.mark.kafka
def test_batches_join_or_queue_behind_a_waiting_one_without_waiting_for_its_drain(kafka):
    """send() appends a partition's records to its batch still waiting in the producer (here one
    lingering for 3 s) while that one takes them: each call's records are not a batch of their own (the
    producer drains one batch per partition per request). Records that do not fit go in a batch queued
    behind the waiting ones, without waiting until those are drained into a request (aiokafka's
    send_batch; behind a slow request, a checkpoint's, the stitch stage waited for it). The records land
    in the order sent. A partition with QUEUED_PER_PARTITION batches waiting takes send_batch's way; one
    with none waiting gets its batch queued first in line, as send_batch would queue it, without its detour."""
    from aiokafka.structs import TopicPartition

    from svctrace.kafka.batches import QUEUED_PER_PARTITION

    prefix = kafka.catalogue_topics("pq")
    topic = topic_name(CHAINS, prefix)
    tp = TopicPartition(topic, 0)
    big = b"." * 1024  # fills a batch of its own (max_batch_size): never joins one with a record

    async def scenario():
        p = kafka.producer(linger_ms=3_000, max_batch_size=1024)
        await p.start()
        try:
            await p.send(topic, b"first", key=b"k0", partition=0)  # an open batch, lingering
            waiting = p._message_accumulator._batches[tp]
            assert len(waiting) == 1
            batches = PartitionBatches(p)
            batches.add(topic, 0, b"k1", b"joined")
            batches.add(topic, 0, b"k2", b"joined too")
            await batches.send()
            assert len(waiting) == 1 and waiting[0].record_count == 3  # appended to the lingering batch
            for i in range(QUEUED_PER_PARTITION - 1):
                batches = PartitionBatches(p)
                batches.add(topic, 0, b"k%d" % (i + 3), b"batch-%d" % i + big)
                await batches.send()
                # returned with the batches before still waiting (send_batch would still be waiting for them)
                assert len(waiting) == 2 + i and waiting[0].record_count == 3
            batches = PartitionBatches(p)
            batches.add(topic, 0, b"k", b"last" + big)
            send = asyncio.ensure_future(batches.send())
            await asyncio.sleep(0)
            assert not send.done() and len(waiting) == QUEUED_PER_PARTITION  # this one waits its turn
            await send  # once the lingering batch went out
            tp1 = TopicPartition(topic, 1)
            assert not p._message_accumulator._batches.get(tp1)
            batches = PartitionBatches(p)
            batches.add(topic, 1, b"a", b"alone")
            batches.add(topic, 1, b"b", b"alone too")
            await batches.send()
            alone = p._message_accumulator._batches[tp1]
            assert len(alone) == 1 and alone[0].record_count == 2  # queued at once, first in line
            await p.flush()
        finally:
            await p.stop()
        got = await _read_back(kafka, topic, QUEUED_PER_PARTITION + 3, partition=0)
        got1 = await _read_back(kafka, topic, 2, partition=1)
        return ([r.value.rstrip(b".") for r in sorted(got, key=lambda r: r.offset)],
                [(r.key, r.value) for r in sorted(got1, key=lambda r: r.offset)])

    assert asyncio.run(scenario()) == ([b"first", b"joined", b"joined too",
                                        *(b"batch-%d" % i for i in range(QUEUED_PER_PARTITION - 1)), b"last"],
                                       [(b"a", b"alone"), (b"b", b"alone too")])


def test_zstd_level_sets_what_producer_batches_are_compressed_with():
    """set_zstd_level: a producer batch (aiokafka's C builder) is compressed at the level set and reads
    back as the same records; the default level puts the process's codec function back (with
    reuse_zstd_contexts, as in the worker: zstd_encode_reusing). The worker takes it as --zstd-level
    (default: 1, command.WORKER_ZSTD_LEVEL; aiokafka's is 3)."""
    import argparse

    import cramjam
    from aiokafka import codec
    from aiokafka.producer.message_accumulator import BatchBuilder
    from aiokafka.record import default_records
    from aiokafka.record._crecords import default_records as c_records
    from aiokafka.record.memory_records import MemoryRecords

    from svctrace.kafka.clients import ZSTD_LEVEL, reuse_zstd_contexts, set_zstd_level, zstd_encode_reusing
    from svctrace.streams.faust_app import command

    reuse_zstd_contexts()  # (the worker's import does it; a later call changes nothing)

    records = [(b"ch-%020x" % i, b'{"chain_id":"ch-%020x","verdict":"ok","hops":[%d]}' % (i, i % 7)) for i in range(500)]

    def build(level=None):
        if level is not None:
            set_zstd_level(level)
        batch = BatchBuilder(1 << 20, default_records.DefaultRecordBase.CODEC_ZSTD)
        for key, value in records:
            assert batch.append(timestamp=1_700_000_000_000, key=key, value=value) is not None
        return bytes(batch._build())

    def payload(built: bytes) -> bytes:
        return built[default_records.DefaultRecordBase.HEADER_STRUCT.size:]

    default = build()
    try:
        for level in (1, 6):
            built = build(level)
            assert built != default
            plain = cramjam.zstd.decompress(payload(built))
            assert payload(built) == bytes(cramjam.zstd.compress(bytes(plain), level=level))
            batch = MemoryRecords(built).next_batch()
            assert [(r.key, r.value) for r in batch] == records
    finally:
        set_zstd_level(ZSTD_LEVEL)
    assert c_records.zstd_encode is zstd_encode_reusing and default_records.zstd_encode is zstd_encode_reusing
    assert codec.zstd_encode is not zstd_encode_reusing
    assert build() == default
    parser = argparse.ArgumentParser()
    command.configure(parser)
    assert ZSTD_LEVEL == 3
    assert parser.parse_args([]).zstd_level == command.WORKER_ZSTD_LEVEL == 1
    assert parser.parse_args(["--zstd-level", "3"]).zstd_level == 3


def test_records_placed_by_known_partition_counts_follow_a_count_that_changes():
    """A topic's partition count given to add_keyed_known changes (the topic grew): the records before
    are partitioned by the old count, the ones after by the new one, in the order added."""
    sent = []

    class Builder:
        def __init__(self):
            self.records = []

        def append(self, timestamp, key, value, headers):
            self.records.append(key)
            return object()

        def close(self):
            pass

    class Producer:
        def create_batch(self):
            return Builder()

        async def send_batch(self, batch, topic, partition):
            sent.append((partition, batch.records))

    batches = PartitionBatches(Producer())
    keys = [f"ch-{i:020x}".encode() for i in range(20)]
    for i, key in enumerate(keys):
        batches.add_keyed_known("chains", 3 if i < 10 else 12, key, b"v")
    asyncio.run(batches.send())
    placed = {key: partition for partition, records in sent for key in records}
    assert placed == {key: murmur2_partition(key, 3 if i < 10 else 12) for i, key in enumerate(keys)}


def test_zstd_batches_are_compressed_with_a_context_kept_per_thread_and_level():
    """zstd_encode_reusing writes the frame aiokafka's codec (cramjam) writes, the same bytes up to
    batches of a few hundred KiB (larger ones: another libzstd version's choices, read back the same),
    with one compression context per thread and level, kept: a new one per call cost a small batch most
    of its compression."""
    import threading

    import cramjam

    from svctrace.kafka import clients

    records = b"".join(b'{"chain_id":"ch-%020x","status":"ok","hops":[%d]}' % (i, i % 7) for i in range(8000))
    for size in (0, 1, 300, 5_000, 200_000, 3_000_000):
        payload = (records * 8)[:size]
        for level in (None, 1, 3):
            out = clients.zstd_encode_reusing(bytearray(payload), level)
            assert bytes(cramjam.zstd.decompress(out)) == payload
            if size <= 200_000:
                assert out == bytes(cramjam.zstd.compress(payload, level=3 if level is None else level))
    kept = dict(clients._contexts.__dict__)
    assert {1, 3} <= set(kept)
    clients.zstd_encode_reusing(b"again")
    assert clients._contexts.__dict__[3] is kept[3]  # the same context, not a new one per call
    other = {}
    thread = threading.Thread(target=lambda: (clients.zstd_encode_reusing(b"x" * 100),
                                              other.update(clients._contexts.__dict__)))
    thread.start()
    thread.join()
    assert set(other) == {3} and other[3] is not kept[3]  # a thread of its own (a context is not shared)


def test_failed_sends_sees_every_batch_the_records_went_in_once_and_a_failure_of_any():
    """PartitionBatches with a FailedSends watches the batch each partition's records went in: one joined
    (still waiting, open) or one of its own queued behind a waiting one; a batch joined by several calls
    is watched once. The producer's flush raises on no failure: FailedSends.error says one failed."""
    from aiokafka import AIOKafkaProducer
    from aiokafka.errors import KafkaTimeoutError
    from aiokafka.structs import TopicPartition

    from svctrace.kafka.batches import FailedSends

    async def story():
        producer = AIOKafkaProducer(bootstrap_servers="127.0.0.1:9")  # not started: its accumulator only
        acc = producer._message_accumulator
        theirs = acc._append_batch(producer.create_batch(), TopicPartition("t", 0))  # waiting, open: joined
        closed = producer.create_batch()
        closed.close()
        acc._append_batch(closed, TopicPartition("t", 1))  # waiting, closed: ours queued behind it
        sends = FailedSends()
        for n in range(3):
            batches = PartitionBatches(producer, sends)
            batches.add("t", 0, b"k%d" % n, b"v")
            batches.add("t", 1, b"k%d" % n, b"v")
            await batches.send()
        waiting = acc._batches
        assert [b.record_count for b in waiting[TopicPartition("t", 0)]] == [3]
        assert [b.record_count for b in waiting[TopicPartition("t", 1)]] == [0, 3]
        ours = waiting[TopicPartition("t", 1)][1]
        ours.done(base_offset=0)  # delivered
        await asyncio.sleep(0)
        assert sends.error is None and sends.failed == 0
        theirs.failure(KafkaTimeoutError("lost"))
        await asyncio.sleep(0)
        assert isinstance(sends.error, KafkaTimeoutError) and sends.failed == 1  # (watched once)

    asyncio.run(story())


def test_a_batch_the_producer_refuses_to_queue_counts_as_failed():
    """send_batch() can raise instead of returning a future (aiokafka: KafkaTimeoutError when the producer
    has no room in time: the partition's waiting batches were not drained). Those records are not delivered:
    FailedSends sees it, as for a failed future, so the worker's checkpoint stops before acknowledging their
    input; the error still reaches the caller."""
    from aiokafka import AIOKafkaProducer
    from aiokafka.errors import KafkaTimeoutError
    from aiokafka.structs import TopicPartition

    from svctrace.kafka.batches import QUEUED_PER_PARTITION, FailedSends

    class Refusing(AIOKafkaProducer):
        async def send_batch(self, batch, topic, *, partition):
            raise KafkaTimeoutError("no room")

    async def story():
        producer = Refusing(bootstrap_servers="127.0.0.1:9")  # not started: nothing drains what waits in it
        for _ in range(QUEUED_PER_PARTITION):  # as many full batches waiting as send() queues behind: send_batch's way
            full = producer.create_batch()
            full.close()
            producer._message_accumulator._append_batch(full, TopicPartition("t", 0))
        sends = FailedSends()
        batches = PartitionBatches(producer, sends)
        batches.add("t", 0, b"k", b"v")
        with pytest.raises(KafkaTimeoutError):
            await batches.send()
        assert isinstance(sends.error, KafkaTimeoutError) and sends.failed == 1

    asyncio.run(story())


@pytest.mark.kafka
def test_a_record_too_large_for_a_record_batch_goes_to_the_dead_letter_topic_instead(kafka):
    """The broker refuses a record batch over its message.max.bytes (1 MiB) whenever it is sent: a chain record
    that large failed its batch, which stopped the worker (FailedSends), and its successor emitted it again and
    stopped again. PartitionBatches sends a dead letter for it instead, with the reason and the start of its
    value; the records around it are delivered, and so is a large record that fits once compressed."""
    import base64
    import os

    import orjson

    from svctrace.kafka.batches import DEAD_LETTER_PREFIX, MAX_RECORD_BATCH_BYTES, FailedSends
    from svctrace.schemas.catalogue import DEADLETTER
    from svctrace.schemas.validation import validate

    prefix = kafka.catalogue_topics("tl")
    topic, letters = topic_name(CHAINS, prefix), topic_name(DEADLETTER, prefix)
    huge = b'{"chain_id":"' + os.urandom(MAX_RECORD_BATCH_BYTES * 3 // 2).hex().encode() + b'"}'  # 3 MB, 1.5 MB zstd'd
    roomy = b'{"chain_id":"' + b"ab" * (MAX_RECORD_BATCH_BYTES * 3 // 2) + b'"}'  # as large, compresses to nothing
    keys = [f"ch-{i:04d}".encode() for i in range(20)]

    async def scenario():
        p = kafka.producer()
        await p.start()
        sends = FailedSends()
        try:
            batches = PartitionBatches(p, sends, dead_letters=(letters, "stitch"))
            for i, key in enumerate(keys):
                await batches.add_keyed(topic, key, b"small" if i not in (5, 6) else huge if i == 5 else roomy)
            await batches.send()
            await p.flush()
        finally:
            await p.stop()
        assert batches.dead_lettered == 1
        return sends, await _read_back(kafka, topic, 19), await _read_back(kafka, letters, 1)

    sends, chains, dead = asyncio.run(scenario())
    assert sends.error is None and sends.failed == 0
    assert sorted(r.key for r in chains) == sorted(k for i, k in enumerate(keys) if i != 5)
    assert [r.value for r in chains if r.key == keys[6]] == [roomy]
    [letter] = dead
    assert letter.key == keys[5]
    doc = orjson.loads(letter.value)
    assert doc["stage"] == "stitch" and doc["topic"] == topic and doc["error"] == "MessageSizeTooLargeError"
    assert doc["partition"] == murmur2_partition(keys[5], load_catalogue()[CHAINS].partitions)
    assert f"a record of {len(huge)} bytes" in doc["reason"] and f"({MAX_RECORD_BATCH_BYTES} bytes)" in doc["reason"]
    assert base64.b64decode(doc["value_b64"]) == huge[:DEAD_LETTER_PREFIX]
    validate("dead-letter", doc)


@pytest.mark.kafka
def test_nothing_queued_behind_a_failed_batch_goes_out_once_the_failure_is_known(kafka):
    """aiokafka sends a partition's batches one after the other, and one that failed for good does not stop
    the next: a progress mark queued behind data that failed reached the partition, and a downstream stage
    passed events it never got. With FailedSends' on_failure dropping what is queued (drop_queued), a record
    queued behind the failed batch is not sent (its send fails, FailedSends counts it), nor is anything sent
    after (the producer refuses it); a batch of another partition delivered before the failure stays so."""
    import os

    from svctrace.kafka.batches import MAX_RECORD_BATCH_BYTES, FailedSends, drop_queued

    prefix = kafka.catalogue_topics("fq")
    topic = topic_name(CHAINS, prefix)

    async def scenario():
        p = kafka.producer(linger_ms=0)
        await p.start()
        sends = FailedSends(on_failure=lambda error: drop_queued(p, error))
        try:
            await sends.send(p.send(topic, b"before", key=b"k0", partition=1))
            await p.flush()
            data = p.create_batch()  # (as a worker before the dead letters would send it: the broker refuses it)
            data.append(timestamp=None, key=b"k1", value=os.urandom(MAX_RECORD_BATCH_BYTES * 2), headers=[])
            data.close()
            sends.watch(await p.send_batch(data, topic, partition=0))
            mark = await sends.send(p.send(topic, b"mark", key=None, partition=0))  # queued behind it
            await p.flush()
            assert mark.done() and mark.exception() is not None
            with pytest.raises(Exception):
                await sends.send(p.send(topic, b"later", key=None, partition=0))
        finally:
            await p.stop()
        return sends, await _read_back_for(kafka, topic, 5)

    sends, got = asyncio.run(scenario())
    assert sends.error is not None and sends.failed >= 2
    assert [(r.partition, r.value) for r in got] == [(1, b"before")]


async def _read_back_for(kafka, topic: str, seconds: float) -> list:
    """Every record of topic that arrives within `seconds` (for what must not arrive)."""
    c = kafka.consumer(topic, group_id=None)
    await c.start()
    got, deadline = [], time.monotonic() + seconds
    try:
        while time.monotonic() < deadline:
            for records in (await c.getmany(timeout_ms=500)).values():
                got.extend(records)
    finally:
        await c.stop()
    return got
