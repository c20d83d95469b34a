"""Where batches go: Kafka (aiokafka, the project's producer settings) or a JSON-lines file."""
from __future__ import annotations

import asyncio
import logging
import random

from svctrace.schemas.catalogue import COMPLETE_HEADER
from svctrace.schemas.models import AgentStats, dumps

log = logging.getLogger("svctrace.agent")

SYSCALLS_TOPIC = "svctrace.syscalls"
STATS_TOPIC = "svctrace.agent.stats"


class SinkUnavailable(Exception):
    """The sink cannot take records right now; the agent keeps buffering and retries."""


class FileSink:
    """Appends one JSON document per line: batches to `path`, stats to `stats_path` (optional)."""

    claims = False  # a line has no headers: no completeness claims, so no empty batches for them

    def __init__(self, path: str, stats_path: str | None = None) -> None:
        self.f = open(path, "ab", buffering=1024 * 1024)
        self.stats_f = open(stats_path, "ab") if stats_path else None

    async def start(self) -> None:
        return None

    async def send(self, key: bytes, value: bytes, complete_ns: int | None = None) -> asyncio.Future:
        self.f.write(value)
        self.f.write(b"\n")
        fut = asyncio.get_running_loop().create_future()
        fut.set_result(None)
        return fut

    async def send_stats(self, stats: AgentStats) -> None:
        if self.stats_f:
            self.stats_f.write(dumps(stats.to_dict()) + b"\n")
            self.stats_f.flush()

    async def reconnect(self, stopping=None) -> None:
        return None

    async def flush(self) -> None:
        self.f.flush()

    async def stop(self) -> None:
        self.f.close()
        if self.stats_f:
            self.stats_f.close()


class KafkaSink:
    """Idempotent, zstd-compressed, acks=all producer (svctrace.kafka.clients) that reconnects
    with exponential backoff (plus jitter) whenever the broker is unreachable."""

    claims = True  # a live source's records carry COMPLETE_HEADER

    def __init__(self, bootstrap: str, topic: str = SYSCALLS_TOPIC, stats_topic: str = STATS_TOPIC,
                 backoff_initial: float = 0.5, backoff_max: float = 30.0, **producer_overrides) -> None:
        self.bootstrap = bootstrap
        self.topic = topic
        self.stats_topic = stats_topic
        self.backoff_initial = backoff_initial
        self.backoff_max = backoff_max
        self.overrides = producer_overrides  # the project's settings (zstd) unless overridden
        self.producer = None
        self.connects = 0
        self.failed_attempts = 0

    async def start(self, stopping: asyncio.Event | None = None) -> None:
        """Connect, retrying with backoff until connected (or `stopping` is set)."""
        from svctrace.kafka import clients

        delay = self.backoff_initial
        while True:
            producer = clients.producer(self.bootstrap, **self.overrides)
            try:
                await producer.start()
            except Exception as e:  # noqa: BLE001 - any failure to connect means: back off, retry
                await _quietly_stop(producer)
                self.failed_attempts += 1
                log.warning("kafka %s unreachable (%s); retrying in %.1fs", self.bootstrap, e, delay)
                if stopping is not None and stopping.is_set():
                    raise SinkUnavailable(str(e)) from None
                await asyncio.sleep(delay * (0.8 + 0.4 * random.random()))
                delay = min(delay * 2, self.backoff_max)
                continue
            self.producer = producer
            self.connects += 1
            log.info("kafka producer connected to %s", self.bootstrap)
            return

    async def send(self, key: bytes, value: bytes, complete_ns: int | None = None) -> asyncio.Future:
        """Enqueue a record (with its COMPLETE_HEADER when `complete_ns` is given); the returned future
        resolves when the broker acknowledged it."""
        if self.producer is None:
            raise SinkUnavailable("not connected")
        headers = None if complete_ns is None else [(COMPLETE_HEADER, b"%d" % complete_ns)]
        return await self.producer.send(self.topic, value, key=key, headers=headers)

    async def send_stats(self, stats: AgentStats) -> None:
        if self.producer is not None:
            await self.producer.send(self.stats_topic, dumps(stats.to_dict()), key=stats.node.encode())

    async def reconnect(self, stopping: asyncio.Event | None = None) -> None:
        old, self.producer = self.producer, None
        if old is not None:
            await _quietly_stop(old)
        await self.start(stopping)

    async def flush(self) -> None:
        if self.producer is not None:
            await self.producer.flush()

    async def stop(self) -> None:
        if self.producer is not None:
            await _quietly_stop(self.producer)
            self.producer = None


async def _quietly_stop(producer) -> None:
    try:
        await producer.stop()
    except Exception as e:  # noqa: BLE001 - closing a broken connection may fail; nothing to do
        log.debug("producer stop: %s", e)
