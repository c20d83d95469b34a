"""Bad input never stops a stage: the one record goes to the dead-letter topic, with the reason.

Time is the event's (no wall clock in the core)."""
from __future__ import annotations

from svctrace.schemas.models import DeadLetter, dumps

DEADLETTER_TOPIC = "svctrace.deadletter"


def dead_letter(stage: str, topic: str, key: str, value, exc: Exception, ts: int) -> tuple[str, str, dict]:
    try:
        raw = dumps(value)
    except TypeError:
        raw = repr(value).encode("utf-8", "replace")
    record = DeadLetter(stage=stage, reason=f"{stage} failed on this record: {type(exc).__name__}", topic=topic,
                        value=raw, key=key.encode("utf-8"), error=str(exc)[:500], ts=ts)
    return DEADLETTER_TOPIC, key, record.to_dict()
