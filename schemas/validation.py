"""Validate documents against the topic schemas, with errors that name the field."""
from __future__ import annotations

from functools import cache
from pathlib import Path
from typing import Any

import orjson
from jsonschema import Draft202012Validator
from referencing import Registry, Resource

HERE = Path(__file__).resolve().parent
SCHEMA_NAMES = ("syscall-batch", "enriched-batch", "k8s-object", "chain", "alert", "dead-letter", "agent-stats",
                "alert-occurrence", "flows-batch", "syscall-columns")


class SchemaError(ValueError):
    """A document does not match its schema. `path` is the offending field."""

    def __init__(self, schema: str, path: str, message: str):
        self.schema, self.path = schema, path
        super().__init__(f"{schema}: field {path}: {message}")


def schema_document(name: str) -> dict:
    return orjson.loads((HERE / f"{name}.schema.json").read_bytes())


@cache
def _registry() -> Registry:
    resources = []
    for name in SCHEMA_NAMES:
        doc = schema_document(name)
        resources.append((doc["$id"], Resource.from_contents(doc)))
    return Registry().with_resources(resources)


@cache
def _validator(name: str) -> Draft202012Validator:
    doc = schema_document(name)
    Draft202012Validator.check_schema(doc)
    return Draft202012Validator(doc, registry=_registry())


def _field_path(error) -> str:
    parts = ["$"]
    for p in error.absolute_path:
        parts.append(f"[{p}]" if isinstance(p, int) else f".{p}")
    return "".join(parts)


def errors(name: str, document: Any) -> list[SchemaError]:
    """All schema violations of `document`, each naming its field."""
    found = []
    for e in _validator(name).iter_errors(document):
        # For a missing property the path is the parent; name the property itself.
        path = _field_path(e)
        if e.validator in ("required", "additionalProperties", "unevaluatedProperties"):
            # The error sits on the parent object; name the property itself.
            named = e.message.split("'")[1] if "'" in e.message else ""
            path = f"{path}.{named}" if named else path
        found.append(SchemaError(name, path, e.message))
    return found


def validate(name: str, document: Any) -> None:
    """Raise SchemaError for the first violation (deterministically: shortest path first)."""
    errs = errors(name, document)
    if errs:
        raise min(errs, key=lambda e: (len(e.path), e.path))
