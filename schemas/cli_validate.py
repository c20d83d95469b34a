"""`svctrace validate SCHEMA FILE...`: check documents (JSON or JSON lines) against a topic schema."""
from __future__ import annotations

import sys
from pathlib import Path

import orjson

from svctrace.schemas.validation import SCHEMA_NAMES, errors


def configure(parser) -> None:
    parser.add_argument("schema", choices=SCHEMA_NAMES)
    parser.add_argument("files", nargs="+", type=Path, help="JSON documents, or JSON lines ('-' reads stdin)")


def _documents(path: Path):
    raw = sys.stdin.buffer.read() if str(path) == "-" else path.read_bytes()
    try:
        yield "", orjson.loads(raw)
    except orjson.JSONDecodeError:
        for lineno, line in enumerate(raw.splitlines(), 1):
            if line.strip():
                yield f":{lineno}", orjson.loads(line)


def run(args) -> int:
    bad = 0
    for path in args.files:
        for where, doc in _documents(path):
            for err in errors(args.schema, doc):
                bad += 1
                print(f"{path}{where}: {err}", file=sys.stderr)
    return 1 if bad else 0
