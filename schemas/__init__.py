"""The public contract: JSON Schemas for every topic, the topic catalogue, and
Python models that encode/decode records with orjson.

Everything a downstream tool relies on lives in this folder; code elsewhere
imports names from here rather than repeating topic names or field lists.
"""
from svctrace.schemas.catalogue import Topic, load_catalogue, topic
from svctrace.schemas.models import (
    AgentStats,
    DeadLetter,
    SyscallBatch,
    SyscallEvent,
    decode_batch,
    encode_batch,
)
from svctrace.schemas.validate import SchemaError, validate

__all__ = [
    "AgentStats",
    "DeadLetter",
    "SchemaError",
    "SyscallBatch",
    "SyscallEvent",
    "Topic",
    "decode_batch",
    "encode_batch",
    "load_catalogue",
    "topic",
    "validate",
]
