"""The worker's ClusterIndex, fed from the compacted svctrace.k8s.objects topic.

Every worker reads the whole topic itself: a plain consumer without a group,
every partition assigned, from the beginning. It first catches up to the end
offsets it found at start (`ready` is set then; the stages wait for it, so no
event is enriched against a half-loaded index), then keeps following and applies
each change as it comes. Malformed records are handed to `on_bad_record` (the
worker dead-letters them); they never stop the feed.

Why not Faust's GlobalTable: with several workers, its recovery of this topic
sometimes never finished, and that worker's partitions produced nothing.
A group-less consumer has no rebalance to wait for.
"""
from __future__ import annotations

import asyncio
import enum
import logging
import time
from collections.abc import Callable

import orjson
from aiokafka import TopicPartition

from svctrace.kafka.admin import partition_counts
from svctrace.kafka.clients import consumer as new_consumer
from svctrace.streams.metadata.index import ClusterIndex

log = logging.getLogger("svctrace.worker.cluster")

POLL_MS = 500
TOPIC_WAIT_S = 1.0  # between looks for a topic that does not exist yet


class FeedState(enum.Enum):
    NEW = "new"
    CATCHING_UP = "catching up"  # reading up to the end offsets taken at start
    FOLLOWING = "following"  # caught up: applying changes as they come
    STOPPED = "stopped"


def record_ts_ns(record) -> int:
    """A record's broker timestamp (ms) in ns: the time of a tombstone."""
    return max(record.timestamp or 0, 0) * 1_000_000


class ClusterFeed:
    def __init__(self, bootstrap: str, topic: str, index: ClusterIndex, *,
                 on_change: Callable[[], None] = lambda: None,
                 on_bad_record: Callable[[object, BaseException], None] | None = None):
        self.bootstrap, self.topic, self.index = bootstrap, topic, index
        self.on_change, self.on_bad_record = on_change, on_bad_record
        self.state = FeedState.NEW
        self.ready = asyncio.Event()
        self.applied = 0
        self.bad = 0

    async def run(self) -> None:
        """Catch up, set `ready`, then follow until cancelled."""
        consumer = self.new_consumer()
        await consumer.start()
        try:
            tps = await self._partitions()
            consumer.assign(tps)
            await consumer.seek_to_beginning(*tps)
            ends = await consumer.end_offsets(tps)
            self.state = FeedState.CATCHING_UP
            started = time.monotonic()
            behind = {tp: end for tp, end in ends.items() if end > 0}
            while behind:
                self._apply_batch(await consumer.getmany(*behind, timeout_ms=POLL_MS))
                for tp, end in list(behind.items()):
                    if await consumer.position(tp) >= end:
                        del behind[tp]
            self.on_change()
            self.state = FeedState.FOLLOWING
            self.ready.set()
            log.info("cluster feed: caught up with %s (%d records, %d objects) in %.2fs", self.topic,
                     self.applied, len(self.index), time.monotonic() - started)
            while True:
                if self._apply_batch(await consumer.getmany(timeout_ms=POLL_MS)):
                    self.on_change()
        finally:
            self.state = FeedState.STOPPED
            await consumer.stop()

    def new_consumer(self):
        """A consumer without a group, with the project's settings (TLS/SASL from the environment)."""
        return new_consumer(self.bootstrap, group_id=None)

    async def _partitions(self) -> list[TopicPartition]:
        """Every partition of the topic (waiting for it to exist: the worker may start first)."""
        while True:
            count = (await partition_counts(self.bootstrap, [self.topic])).get(self.topic, 0)
            if count:
                return [TopicPartition(self.topic, p) for p in range(count)]
            log.warning("cluster feed: topic %s does not exist yet", self.topic)
            await asyncio.sleep(TOPIC_WAIT_S)  # poll interval

    def _apply_batch(self, batch) -> int:
        """Apply every record of a getmany() result; return how many changed the index."""
        changed = 0
        for records in batch.values():
            for record in records:
                try:
                    value = None if record.value is None else orjson.loads(record.value)
                    self.index.apply_keyed(record.key, value, record_ts_ns(record))
                except Exception as e:  # noqa: BLE001 - one bad object must not stop the feed
                    self.bad += 1
                    if self.on_bad_record is not None:
                        self.on_bad_record(record, e)
                    continue
                self.applied += 1
                changed += 1
        return changed
