"""The public contract: JSON Schemas for every topic, the topic catalogue, and
Python models that encode/decode records with orjson.

Everything a downstream tool relies on lives in this folder; code elsewhere
imports names from here rather than repeating topic names or field lists.

Names are imported lazily: validation pulls in jsonschema and the catalogue
pulls in yaml, which a hot path such as `svctrace read` never needs.
"""
from importlib import import_module

_EXPORTS = {
    "Topic": "catalogue",
    "load_catalogue": "catalogue",
    "topic": "catalogue",
    "AgentStats": "models",
    "DeadLetter": "models",
    "SyscallBatch": "models",
    "SyscallEvent": "models",
    "decode_batch": "models",
    "encode_batch": "models",
    "SchemaError": "validation",
    "validate": "validation",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str):
    if name in _EXPORTS:
        value = getattr(import_module(f"svctrace.schemas.{_EXPORTS[name]}"), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'svctrace.schemas' has no attribute {name!r}")
