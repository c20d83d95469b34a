"""Producer and consumer factories with the project's settings.

Producers: acks=all + idempotence, so a broker restart or a retried request
neither loses nor duplicates a batch; lz4 compression (cheap on CPU, and our
JSON batches of many events compress well). Consumers start at the earliest
offset of a new group and commit explicitly.
"""
from __future__ import annotations

import os
from collections.abc import Mapping
from typing import Any

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer

COMPRESSION = "lz4"
# Records carry many events; keep each request well under the broker's default
# message.max.bytes (1 MiB) after compression.
MAX_REQUEST_SIZE = 1_048_576


def connection_settings(env: Mapping[str, str] | None = None) -> dict[str, Any]:
    """TLS and SASL settings from the environment (the Helm chart sets these from
    its ConfigMap and Secrets); empty for a plaintext broker."""
    env = os.environ if env is None else env
    settings: dict[str, Any] = {}
    protocol = env.get("SVCTRACE_KAFKA_SECURITY_PROTOCOL", "PLAINTEXT").upper()
    if protocol != "PLAINTEXT":
        settings["security_protocol"] = protocol
    if protocol in ("SSL", "SASL_SSL"):
        from aiokafka.helpers import create_ssl_context

        settings["ssl_context"] = create_ssl_context(
            cafile=env.get("SVCTRACE_KAFKA_SSL_CAFILE") or None,
            certfile=env.get("SVCTRACE_KAFKA_SSL_CERTFILE") or None,
            keyfile=env.get("SVCTRACE_KAFKA_SSL_KEYFILE") or None,
        )
    if protocol.startswith("SASL_"):
        settings["sasl_mechanism"] = env.get("SVCTRACE_KAFKA_SASL_MECHANISM", "PLAIN")
        settings["sasl_plain_username"] = env.get("SVCTRACE_KAFKA_SASL_USERNAME")
        settings["sasl_plain_password"] = env.get("SVCTRACE_KAFKA_SASL_PASSWORD")
    return settings


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
    return AIOKafkaProducer(bootstrap_servers=bootstrap, **(connection_settings() | producer_settings(**overrides)))


def consumer(bootstrap: str, *topics: str, group_id: str | None = None, **overrides: Any) -> AIOKafkaConsumer:
    """An (unstarted) consumer of `topics` reading committed data only."""
    settings: dict[str, Any] = {
        **connection_settings(),
        "group_id": group_id,
        "auto_offset_reset": "earliest",
        "enable_auto_commit": False,
        "isolation_level": "read_committed",
        "max_partition_fetch_bytes": 4 * 1024 * 1024,
    }
    settings.update(overrides)
    return AIOKafkaConsumer(*topics, bootstrap_servers=bootstrap, **settings)
