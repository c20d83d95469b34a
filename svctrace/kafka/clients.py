"""Producer and consumer factories with the project's settings.

Producers: acks=all + idempotence, so a broker restart or a retried request
neither loses nor duplicates a batch; lz4 compression (cheap on CPU, and our
JSON batches of many events compress well). Consumers start at the earliest
offset of a new group and commit explicitly.
"""
from __future__ import annotations

from typing import Any

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer

COMPRESSION = "lz4"
# Records carry many events; keep each request well under the broker's default
# message.max.bytes (1 MiB) after compression.
MAX_REQUEST_SIZE = 1_048_576


def producer_settings(**overrides: Any) -> dict[str, Any]:
    settings: dict[str, Any] = {
        "acks": "all",
        "enable_idempotence": True,
        "compression_type": COMPRESSION,
        "linger_ms": 5,
        "max_batch_size": 512 * 1024,
        "max_request_size": MAX_REQUEST_SIZE,
        "request_timeout_ms": 30000,
    }
    settings.update(overrides)
    return settings


def producer(bootstrap: str, **overrides: Any) -> AIOKafkaProducer:
    """An (unstarted) idempotent producer; `await p.start()` before use."""
    return AIOKafkaProducer(bootstrap_servers=bootstrap, **producer_settings(**overrides))


def consumer(bootstrap: str, *topics: str, group_id: str | None = None, **overrides: Any) -> AIOKafkaConsumer:
    """An (unstarted) consumer of `topics` reading committed data only."""
    settings: dict[str, Any] = {
        "group_id": group_id,
        "auto_offset_reset": "earliest",
        "enable_auto_commit": False,
        "isolation_level": "read_committed",
        "max_partition_fetch_bytes": 4 * 1024 * 1024,
    }
    settings.update(overrides)
    return AIOKafkaConsumer(*topics, bootstrap_servers=bootstrap, **settings)
