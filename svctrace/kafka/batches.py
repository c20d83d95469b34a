"""Many small records sent as one producer batch per partition.

aiokafka's send() costs ~75 us of Python per record here (Faust's wrapper, the partitioner's
pure-Python murmur2, the accumulator, a future per record resolved when the broker answers): more
than a chain record's JSON. `PartitionBatches` appends each record to a BatchBuilder of its
partition (AIOKafkaProducer.create_batch) and hands every batch to send_batch() at once: the same
records, in the same order per partition, with the same partition Kafka's default partitioner picks
(`murmur2_partition`), compressed and idempotent like any other batch of the producer.

Kafka's murmur2 (the partition of a keyed record) is the compiled core's (`keys.murmur2`: 32-bit C
integers, ~0.1 us per chain id; in Python ints it cost ~1.8 us, or ~0.3-0.8 us hashing many keys of one length
at once in the lanes of big ints, as this module did before); `PartitionBatches.add_keyed_known` places records
that way.
"""
from __future__ import annotations

import asyncio
import logging

from aiokafka.structs import TopicPartition

from svctrace.kafka.deadletter import dead_letter, encode as encode_dead_letter
from svctrace.streams.core.keys import murmur2, murmur2_partitions  # noqa: F401 (murmur2: this module's API too)

log = logging.getLogger("svctrace.kafka")

QUEUED_PER_PARTITION = 4  # batches queued behind a partition's waiting one before send() waits (_queue_behind)
# The most a record batch may have on the output topics (compressed, as the broker checks it): Kafka's
# message.max.bytes (1 MiB + 12), which topics.yaml does not raise. A record alone in a batch larger than
# that is refused by the broker whenever it is sent: PartitionBatches sends its dead letter instead.
MAX_RECORD_BATCH_BYTES = 1024 * 1024
# A record value up to this size fits whatever it compresses to (keys and headers are small): larger ones
# are measured compressed, alone in a batch (_too_large). A dead letter keeps this much of a value too large.
_SURELY_FITS = MAX_RECORD_BATCH_BYTES - 64 * 1024
DEAD_LETTER_PREFIX = 64 * 1024


def murmur2_partition(key: bytes, partitions: int) -> int:
    """The partition Kafka's default partitioner gives a keyed record (Java and aiokafka alike)."""
    return (murmur2(key) & 0x7FFFFFFF) % partitions


class FailedSends:
    """The first failed delivery among the producer futures it watches (a done-callback each; no
    per-record work for batches). producer.flush() waits for every queued record but raises on none:
    whoever acknowledges input after a flush checks `error` first (Worker.checkpoint). A cancelled
    future counts as failed (its records were not delivered), and so does a record or batch the producer
    refused to queue (its send raised: `failed_to_queue`, `send`). Once set, `error` stays set.

    `on_failure(error)` is called once, at the first failure, as soon as it is known: the worker drops what
    is still queued in its producer then (drop_queued), so that nothing queued after the failed records (a
    progress mark that passes them, above all) reaches the partitions they did not."""

    def __init__(self, on_failure=None):
        self.error: BaseException | None = None
        self.failed = 0  # futures that failed, and sends refused
        self.on_failure = on_failure
        self._last: dict = {}  # (topic, partition) -> the future of the last batch watched for it

    def watch(self, future) -> None:
        future.add_done_callback(self._done)

    def watch_batch(self, tp, future) -> None:
        """A partition's batch (send_batch's future): watched once however many calls join it."""
        if self._last.get(tp) is not future:
            self._last[tp] = future
            future.add_done_callback(self._done)

    async def send(self, sending):
        """Await `sending`, a producer send() of one record (a coroutine returning the record's future), and
        watch what it returns; if it raises instead (no room in the producer in time, a producer that stopped
        taking records), that record counts as failed (the error still reaches the caller)."""
        try:
            future = await sending
        except (Exception, asyncio.CancelledError) as e:
            self.failed_to_queue(e)
            raise
        future.add_done_callback(self._done)
        return future

    def failed_to_queue(self, error: BaseException) -> None:
        """A batch the producer refused to queue (its send raised): not delivered, as a failed one."""
        self._failed(error)

    def _done(self, future) -> None:
        if future.cancelled():
            error: BaseException | None = asyncio.CancelledError("send cancelled")
        else:
            error = future.exception()  # (retrieved: not logged again as "never retrieved")
        if error is not None:
            self._failed(error)

    def _failed(self, error: BaseException) -> None:
        self.failed += 1
        if self.error is None:
            self.error = error
            if self.on_failure is not None:
                self.on_failure(error)


def drop_queued(producer, error: BaseException) -> int:
    """After a failed delivery: fail every batch still queued in `producer` (an AIOKafkaProducer) without
    sending it, and refuse every send from now on (with `error`, as aiokafka does once its sender died).
    Returns how many batches were dropped.

    aiokafka sends a partition's batches one after the other (a partition with a request in flight is
    muted), and a batch that failed for good does not stop the next: a progress mark queued behind records
    that failed would be delivered, and a downstream stage would pass events it never got. A batch's
    done-callbacks (FailedSends) run before the sender drains the partition's next batch (its request task
    ends after the batch's future is set), so from that callback every batch queued behind the failed one is
    still in the queue: none of them goes out. Batches already in flight (other partitions') complete as
    the broker answers. Nothing was drained of the dropped ones, so no sequence number was spent on them."""
    acc = getattr(producer, "_message_accumulator", None)
    if acc is None or not hasattr(acc, "_batches"):
        return 0
    queued = [batch for batches in acc._batches.values() for batch in batches]
    acc._batches.clear()
    if acc._exception is None:
        acc._exception = error
    for batch in queued:
        batch.failure(exception=error)
    return len(queued)


class PartitionBatches:
    """Records collected per (topic, partition), then sent as producer batches by send().

    `producer` is a started AIOKafkaProducer. Use one instance per group of records and call
    send() at its end: a record is queued only then (ordering against records sent otherwise
    to the same partition is the order of the calls). A partition's records join the batch still
    waiting for it in the producer if that one takes more (_waiting_open): each call's records
    would otherwise be a batch of their own, and the producer drains one batch per partition per
    request (one request in flight per broker). With `sends` (FailedSends), every batch the records
    go in is watched for a failed delivery.

    A record larger than a record batch may be (MAX_RECORD_BATCH_BYTES, compressed) would be refused by the
    broker every time it is sent, failing its batch with it (and the worker, and its successor, again and
    again): it is not sent, and a dead letter saying so goes to `dead_letters` = (dead-letter topic, stage)
    instead (with the first DEAD_LETTER_PREFIX bytes of its value). `dead_lettered` counts them."""

    def __init__(self, producer, sends: FailedSends | None = None, dead_letters: tuple[str, str] | None = None):
        self.producer = producer
        self.sends = sends
        self.dead_letters = dead_letters
        self.dead_lettered = 0
        self.open: dict[tuple[str, int], list] = {}  # (topic, partition) -> its records, in the order added
        self._partitions: dict[str, int] = {}
        self.unplaced: dict[str, tuple[int, list, list, list]] = {}  # add_keyed_known's, per topic

    async def partitions(self, topic: str) -> int:
        """How many partitions topic has (from the producer's metadata)."""
        n = self._partitions.get(topic)
        if n is None:
            await self.producer.client._wait_on_metadata(topic)
            n = self._partitions[topic] = len(self.producer._metadata.partitions_for_topic(topic))
        return n

    async def add_keyed(self, topic: str, key: bytes, value: bytes, headers=None) -> None:
        """A record partitioned by its key as Kafka's default partitioner does."""
        self.add(topic, murmur2_partition(key, await self.partitions(topic)), key, value, headers)

    def add_keyed_known(self, topic: str, partitions: int, key: bytes, value: bytes, headers=None) -> None:
        """add_keyed for a topic whose partition count the caller knows (partitions()): the record is
        partitioned with the topic's others at place() (send() places them; so does an add() to the topic),
        in one murmur2_partitions call, and added in the order of the calls."""
        unplaced = self.unplaced.get(topic)
        if unplaced is None or unplaced[0] != partitions:
            if unplaced is not None:  # (the topic grew meanwhile: its records so far by the old count, as add_keyed)
                self.place()
            unplaced = self.unplaced[topic] = (partitions, [], [], [])
        unplaced[1].append(key)
        unplaced[2].append(value)
        unplaced[3].append(headers)

    def add_keyed_known_many(self, topic: str, partitions: int, keys: list, values: list) -> None:
        """add_keyed_known for many records without headers (keys[i], values[i]), in their order: one call."""
        if keys:
            self.add_keyed_known(topic, partitions, keys[0], values[0])
            _, ks, vs, hs = self.unplaced[topic]
            ks += keys[1:]
            vs += values[1:]
            hs += [None] * (len(keys) - 1)

    def place(self) -> None:
        """Add the records of add_keyed_known to their partitions' records."""
        unplaced, self.unplaced = self.unplaced, {}
        open_ = self.open
        for topic, (n, keys, values, headers) in unplaced.items():
            for partition, record in zip(murmur2_partitions(keys, n), zip(keys, values, headers)):
                records = open_.get((topic, partition))
                if records is None:
                    open_[(topic, partition)] = [record]
                else:
                    records.append(record)

    def add(self, topic: str, partition: int, key: bytes | None, value: bytes | None, headers=None) -> None:
        if self.unplaced and topic in self.unplaced:  # records added before this one go first
            self.place()
        records = self.open.get((topic, partition))
        if records is None:
            self.open[(topic, partition)] = [(key, value, headers)]
        else:
            records.append((key, value, headers))

    async def send(self) -> None:
        """Queue every record with the producer (delivery as for send(): producer.flush() waits for it).
        Each partition's records join its batch waiting in the producer while that one takes more;
        the rest go in new batches, the last of them left open for the records that follow (the
        producer's linger, as for a record of send())."""
        self.place()
        batches = []
        sends = self.sends
        too_large = []
        tps = {}  # (topic, partition) -> its TopicPartition, made once
        for (topic, partition), records in self.open.items():
            tp = tps[topic, partition] = TopicPartition(topic, partition)
            waiting = self._waiting_open(topic, partition, tp)
            joined = waiting is not None
            if joined:
                batch = waiting._builder
                if sends is not None:
                    sends.watch_batch(tp, waiting.future)
            else:
                batch = self.producer.create_batch()
            empty = not joined
            for key, value, headers in records:
                if value is not None and len(value) > _SURELY_FITS:
                    size = self._too_large(key, value, headers)
                    if size:
                        too_large.append((topic, partition, key, value, size))
                        continue
                if batch.append(timestamp=None, key=key, value=value, headers=headers or []) is None:
                    if not joined:  # full: closed by append, sent as it is
                        batches.append((topic, partition, batch))
                    joined = False
                    batch = self.producer.create_batch()
                    if batch.append(timestamp=None, key=key, value=value, headers=headers or []) is None:
                        # (aiokafka's builders take any first record: not seen)
                        too_large.append((topic, partition, key, value, len(value or b"")))
                        empty = True
                        continue
                empty = False
            if not joined and not empty:
                batches.append((topic, partition, batch))
        self.open.clear()
        for topic, partition, batch in batches:
            tp = tps[topic, partition]
            queued = self._queue_behind(topic, partition, batch, tp)
            if queued is not None:
                future = queued.future
            else:
                try:
                    future = await self.producer.send_batch(batch, topic, partition=partition)
                except Exception as e:  # (e.g. KafkaTimeoutError: no room in the producer in time)
                    if sends is not None:  # this batch and the ones after it are not delivered either
                        sends.failed_to_queue(e)
                    raise
            if sends is not None:
                sends.watch_batch(tp, future)
        if too_large:
            await self._dead_letter(too_large)

    def _too_large(self, key, value, headers) -> int:
        """The size of a batch of this record alone (compressed as the producer's batches are) if larger
        than a record batch may be, else 0."""
        alone = self.producer.create_batch()
        alone.append(timestamp=None, key=key, value=value, headers=headers or [])
        size = len(alone._build())
        return size if size > MAX_RECORD_BATCH_BYTES else 0

    async def _dead_letter(self, too_large: list) -> None:
        """Dead letters for records the broker would refuse (their own batches, after the others')."""
        if self.dead_letters is None:
            raise ValueError(f"a record of {too_large[0][4]} bytes does not fit a record batch of {too_large[0][0]}")
        topic, stage = self.dead_letters
        letters = PartitionBatches(self.producer, self.sends)
        for original, partition, key, value, size in too_large:
            reason = (f"a record of {len(value)} bytes ({size} in a batch of its own) is larger than a record "
                      f"batch of {original} may be ({MAX_RECORD_BATCH_BYTES} bytes): not sent; value_b64 holds "
                      f"its first {min(len(value), DEAD_LETTER_PREFIX)} bytes")
            log.warning("%s: %s (key %r): dead-lettered", stage, reason, key)
            dl = dead_letter(stage, reason, topic=original, value=value[:DEAD_LETTER_PREFIX], key=key,
                             partition=partition, error="MessageSizeTooLargeError")
            if key is None:
                letters.add(topic, 0, None, encode_dead_letter(dl))
            else:
                await letters.add_keyed(topic, key, encode_dead_letter(dl))
        self.dead_lettered += len(too_large)
        await letters.send()

    def _accumulator(self):
        acc = getattr(self.producer, "_message_accumulator", None)
        if acc is None or acc._closed or acc._exception is not None:
            return None
        return acc

    def _waiting_open(self, topic: str, partition: int, tp: TopicPartition | None = None):
        """The partition's last batch waiting in the producer (not yet drained into a request) if its
        builder is still open, else None. Records appended to it go out with it, in order after its
        records; none is appended to a batch once drained (its sequence numbers are set then)."""
        acc = self._accumulator()
        if acc is None:
            return None
        waiting = acc._batches.get(tp or TopicPartition(topic, partition))
        if not waiting:
            return None
        last = waiting[-1]
        return None if last._builder.closed() else last

    def _queue_behind(self, topic: str, partition: int, batch, tp: TopicPartition | None = None):
        """Queue batch behind the partition's batches still waiting in the producer, without waiting
        (up to QUEUED_PER_PARTITION of them), or first when none waits: its MessageBatch; None when too
        many wait (or the producer takes no more): send_batch() then, which waits for their drain.

        send_batch() waits until the partition's last waiting batch is drained into a produce request,
        and aiokafka has one request in flight per broker: behind a slow one (a checkpoint's changelog
        writes, acks=all on a busy broker: 0.1-0.4 s) the caller waited for it to complete, and with it
        the rest of its batches (other partitions) and whatever waited for the caller (the stitch
        stage's lock, the marks that close chains). The batch goes out in the same order and in the
        same request as it would have (one batch per partition per request); producer.flush() waits
        for it as for any other.

        With none waiting, send_batch() would queue it at once the same way (its checks of the topic's
        metadata and of the accumulator are the caller's and _accumulator's), through a coroutine, a
        metadata wait, a log call and a shielded future: ~10 us more per batch, and a live worker's small
        stitch advances (one per partition per syscalls record released) make a few new batches each."""
        acc = self._accumulator()
        if acc is None:
            return None
        tp = tp or TopicPartition(topic, partition)
        waiting = acc._batches.get(tp)
        if waiting and len(waiting) >= QUEUED_PER_PARTITION:
            return None
        return acc._append_batch(batch, tp)
