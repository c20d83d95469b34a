"""Dead letters: a record no stage could process, kept with the reason and its
original bytes so nothing is lost and the cause is visible."""
from __future__ import annotations

from aiokafka import AIOKafkaProducer

from svctrace.schemas.catalogue import DEADLETTER
from svctrace.schemas.models import DeadLetter, dumps


def dead_letter(
    stage: str,
    reason: str,
    *,
    topic: str,
    value: bytes | None,
    key: bytes | None = None,
    partition: int | None = None,
    offset: int | None = None,
    error: BaseException | str | None = None,
) -> DeadLetter:
    if isinstance(error, BaseException):
        error = type(error).__name__
    return DeadLetter(
        stage=stage, reason=reason or "unknown", topic=topic, value=value, key=key,
        partition=partition, offset=offset, error=error,
    )


def encode(dl: DeadLetter) -> bytes:
    return dumps(dl.to_dict())


async def send_dead_letter(producer: AIOKafkaProducer, dl: DeadLetter, *, topic: str = DEADLETTER) -> None:
    """Publish to the dead-letter topic, keyed by the original record's key."""
    await producer.send_and_wait(topic, encode(dl), key=dl.key)
