"""`svctrace validate SCHEMA FILE...`: check documents (JSON or JSON lines) against a topic schema.

`auto` takes each document's schema from its own `schema` field (`svctrace.chain` -> chain), for
streams that mix record kinds, such as `svctrace analyze --json` (chains, then alerts)."""
from __future__ import annotations

import sys
from pathlib import Path

import orjson

from svctrace.schemas.validation import SCHEMA_NAMES, errors


def configure(parser) -> None:
    parser.add_argument("schema", choices=("auto", *SCHEMA_NAMES),
                        help="a topic schema, or auto: each document's own `schema` field names it")
    parser.add_argument("files", nargs="+", type=Path, help="JSON documents, or JSON lines ('-' reads stdin)")


def _documents(path: Path):
    raw = sys.stdin.buffer.read() if str(path) == "-" else path.read_bytes()
    try:
        yield "", orjson.loads(raw)
    except orjson.JSONDecodeError:
        for lineno, line in enumerate(raw.splitlines(), 1):
            if line.strip():
                yield f":{lineno}", orjson.loads(line)


def _schema_of(doc) -> str | None:
    """auto: `svctrace.<name>` in the document's `schema` field, if it names a topic schema."""
    name = doc.get("schema") if isinstance(doc, dict) else None
    if isinstance(name, str) and name.startswith("svctrace.") and name[len("svctrace."):] in SCHEMA_NAMES:
        return name[len("svctrace."):]
    return None


def run(args) -> int:
    bad = 0
    for path in args.files:
        for where, doc in _documents(path):
            schema = args.schema if args.schema != "auto" else _schema_of(doc)
            if schema is None:
                bad += 1
                print(f"{path}{where}: no `schema` field naming a topic schema (svctrace.chain, ...):"
                      " give the schema instead of auto", file=sys.stderr)
                continue
            for err in errors(schema, doc):
                bad += 1
                print(f"{path}{where}: {err}", file=sys.stderr)
    return 1 if bad else 0
