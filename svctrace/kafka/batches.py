"""Many small records sent as one producer batch per partition.

aiokafka's send() costs ~75 us of Python per record here (Faust's wrapper, the partitioner's
pure-Python murmur2, the accumulator, a future per record resolved when the broker answers): more
than a chain record's JSON. `PartitionBatches` appends each record to a BatchBuilder of its
partition (AIOKafkaProducer.create_batch) and hands every batch to send_batch() at once: the same
records, in the same order per partition, with the same partition Kafka's default partitioner picks
(`murmur2_partition`), compressed and idempotent like any other batch of the producer.
"""
from __future__ import annotations

from struct import Struct

_M = 0x5BD1E995
_MASK = 0xFFFFFFFF
_SEED = 0x9747B28C
_WORDS = [Struct(f"<{n}I") for n in range(64)]


def murmur2(data: bytes, m: int = _M, mask: int = _MASK) -> int:
    """Kafka's murmur2 (the Java client's Utils.murmur2, aiokafka.partitioner.murmur2): the same
    value, the key's 4-byte words read in one call, fewer masks (~2-3x faster than aiokafka's)."""
    length = len(data)
    n = length >> 2
    h = _SEED ^ length
    for k in (_WORDS[n] if n < 64 else Struct(f"<{n}I")).unpack_from(data):
        k = (k * m) & mask
        h = ((h * m) & mask) ^ (((k ^ (k >> 24)) * m) & mask)
    extra = length & 3
    if extra:
        tail = length & ~3
        if extra >= 3:
            h ^= data[tail + 2] << 16
        if extra >= 2:
            h ^= data[tail + 1] << 8
        h = ((h ^ data[tail]) * m) & mask
    h ^= h >> 13
    h = (h * m) & mask
    return h ^ (h >> 15)


def murmur2_partition(key: bytes, partitions: int) -> int:
    """The partition Kafka's default partitioner gives a keyed record (Java and aiokafka alike)."""
    return (murmur2(key) & 0x7FFFFFFF) % partitions


class PartitionBatches:
    """Records collected per (topic, partition), then sent as producer batches by send().

    `producer` is a started AIOKafkaProducer. Use one instance per group of records and call
    send() at its end: a record is queued only then (ordering against records sent otherwise
    to the same partition is the order of the calls)."""

    def __init__(self, producer):
        self.producer = producer
        self.open: dict[tuple[str, int], object] = {}
        self.full: list[tuple[str, int, object]] = []
        self._partitions: dict[str, int] = {}

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

    def add(self, topic: str, partition: int, key: bytes | None, value: bytes | None, headers=None) -> None:
        batch = self.open.get((topic, partition))
        if batch is None:
            batch = self.open[(topic, partition)] = self.producer.create_batch()
        if batch.append(timestamp=None, key=key, value=value, headers=headers or []) is None:
            self.full.append((topic, partition, batch))  # full: closed by append, sent as it is
            batch = self.open[(topic, partition)] = self.producer.create_batch()
            if batch.append(timestamp=None, key=key, value=value, headers=headers or []) is None:
                raise ValueError(f"a record of {len(value or b'')} bytes does not fit a batch of {topic}")

    async def send(self) -> None:
        """Queue every batch with the producer (delivery as for send(): producer.flush() waits for it)."""
        batches, self.full = self.full, []
        batches += [(topic, partition, batch) for (topic, partition), batch in self.open.items()]
        self.open.clear()
        for topic, partition, batch in batches:
            batch.close()
            await self.producer.send_batch(batch, topic, partition=partition)
