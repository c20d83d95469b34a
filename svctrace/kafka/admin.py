"""Create the catalogue's topics (partitions, cleanup policy, retention) and
wait for a broker to answer.

A topic that exists with fewer partitions than the catalogue says is an error:
keyed stages depend on the partition count (Faust agents crash with
PartitionsMismatch when a source topic was auto-created with another count).
"""
from __future__ import annotations

import asyncio
import time
from collections.abc import Iterable, Mapping

from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from aiokafka.admin.config_resource import ConfigResource, ConfigResourceType
from aiokafka.errors import KafkaError

from svctrace.kafka.clients import connection_settings
from svctrace.schemas.catalogue import Topic, load_catalogue

TOPIC_ALREADY_EXISTS = 36
# CreateTopics errors worth retrying while a fresh broker settles
# (no unfenced broker yet -> INVALID_REPLICATION_FACTOR 38, NOT_CONTROLLER 41, timeouts 7).
RETRIABLE_CREATE_ERRORS = {7, 38, 41}


class TopicError(RuntimeError):
    """A topic could not be created or exists with an incompatible layout."""


def topic_name(name: str, prefix: str = "") -> str:
    """The concrete topic name: an optional prefix isolates one deployment (or one test) from another."""
    return f"{prefix}{name}"


def _catalogue_topics(catalogue: Mapping[str, Topic] | Iterable[Topic] | None) -> list[Topic]:
    if catalogue is None:
        catalogue = load_catalogue()
    return list(catalogue.values()) if isinstance(catalogue, Mapping) else list(catalogue)


async def wait_ready(bootstrap: str, timeout: float = 60.0) -> dict:
    """Poll until the broker serves metadata with at least one broker; return describe_cluster()."""
    deadline = time.monotonic() + timeout
    last: Exception | None = None
    while time.monotonic() < deadline:
        admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap, **connection_settings(), request_timeout_ms=5000)
        try:
            await admin.start()
            cluster = await admin.describe_cluster()
            if cluster.get("brokers"):
                return cluster
        except (KafkaError, OSError) as e:
            last = e
        finally:
            await admin.close()
        await asyncio.sleep(0.2)  # poll interval, not synchronisation
    raise TimeoutError(f"Kafka at {bootstrap} did not answer within {timeout:.0f}s (last error: {last!r})")


async def ensure_topics(
    bootstrap: str,
    catalogue: Mapping[str, Topic] | Iterable[Topic] | None = None,
    *,
    prefix: str = "",
    replication_factor: int = 1,
    timeout: float = 60.0,
) -> list[str]:
    """Create every catalogue topic that does not exist yet; return the names created.

    Existing topics are checked: fewer partitions than catalogued raises TopicError.
    """
    topics = _catalogue_topics(catalogue)
    deadline = time.monotonic() + timeout
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap, **connection_settings(), request_timeout_ms=10000)
    await admin.start()
    created: list[str] = []
    try:
        pending = {topic_name(t.name, prefix): t for t in topics}
        while pending:
            response = await admin.create_topics(
                [
                    NewTopic(name, t.partitions, replication_factor, topic_configs=t.kafka_config())
                    for name, t in pending.items()
                ]
            )
            retry = {}
            for name, code, message in _topic_errors(response):
                if code == 0:
                    created.append(name)
                elif code == TOPIC_ALREADY_EXISTS:
                    pass
                elif code in RETRIABLE_CREATE_ERRORS and time.monotonic() < deadline:
                    retry[name] = pending[name]
                else:
                    raise TopicError(f"cannot create topic {name}: error {code} {message}")
            pending = retry
            if pending:
                await asyncio.sleep(0.2)  # poll interval while the broker settles
        await _check_partitions(admin, {topic_name(t.name, prefix): t for t in topics}, deadline)
    finally:
        await admin.close()
    return created


def _topic_errors(response) -> list[tuple[str, int, str]]:
    out = []
    for entry in response.topic_errors:
        name, code = entry[0], entry[1]
        message = entry[2] if len(entry) > 2 else ""
        out.append((name, code, message or ""))
    return out


async def _check_partitions(admin: AIOKafkaAdminClient, wanted: dict[str, Topic], deadline: float) -> None:
    """Wait until every topic is known with a leader for each partition, then compare counts.

    Metadata reaches the broker's cache shortly after CreateTopics returns."""
    UNKNOWN_TOPIC, LEADER_NOT_AVAILABLE = 3, 5
    while True:
        described = await admin.describe_topics(list(wanted))
        settling = [
            d["topic"] for d in described
            if d.get("error_code") in (UNKNOWN_TOPIC, LEADER_NOT_AVAILABLE)
            or any(p.get("leader", -1) < 0 for p in d.get("partitions") or [])
        ]
        if not settling:
            break
        if time.monotonic() > deadline:
            raise TopicError(f"topics not ready in time: {', '.join(sorted(settling))}")
        await asyncio.sleep(0.1)  # poll interval while metadata propagates
    for d in described:
        name = d["topic"]
        have = len(d.get("partitions") or [])
        if d.get("error_code"):
            raise TopicError(f"topic {name}: describe failed with error {d['error_code']}")
        if have < wanted[name].partitions:
            raise TopicError(
                f"topic {name} has {have} partitions, the catalogue needs {wanted[name].partitions}; "
                "recreate it (partition counts cannot shrink and keyed stages rely on them)"
            )


async def describe_topic_configs(bootstrap: str, names: Iterable[str]) -> dict[str, dict[str, str]]:
    """Topic name -> {config: value} as the broker reports them (for checks and `svctrace topics`)."""
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap, **connection_settings(), request_timeout_ms=10000)
    await admin.start()
    try:
        responses = await admin.describe_configs(
            [ConfigResource(ConfigResourceType.TOPIC, name) for name in names]
        )
    finally:
        await admin.close()
    out: dict[str, dict[str, str]] = {}
    for response in responses:
        for resource in response.resources:
            code, message, _type, name, entries = resource[:5]
            if code:
                raise TopicError(f"describe configs of {name}: error {code} {message}")
            out[name] = {e[0]: e[1] for e in entries}
    return out


async def partition_counts(bootstrap: str, names: Iterable[str]) -> dict[str, int]:
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap, **connection_settings(), request_timeout_ms=10000)
    await admin.start()
    try:
        return {d["topic"]: len(d.get("partitions") or []) for d in await admin.describe_topics(list(names))}
    finally:
        await admin.close()
