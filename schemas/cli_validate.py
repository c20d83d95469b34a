"""`svctrace validate SCHEMA FILE...`: check documents (JSON or JSON lines) against a topic schema.

`auto` takes each document's schema from its own `schema` field (`svctrace.chain` -> chain), for
streams that mix record kinds, such as `svctrace analyze --json` (chains, then alerts).
A file that is one msgpack record (a svctrace.syscalls record of the syscall-columns form, a
svctrace.flows record) is checked as the document it decodes to; a syscall-columns record also as its
reader reads it (column lengths, string indexes, field types), and `syscall-batch` takes it as that
topic's other form."""
from __future__ import annotations

import sys
from pathlib import Path

import msgspec
import orjson

from svctrace.schemas.models import _MSGPACK_MAP as MSGPACK_MAP, DecodeError
from svctrace.schemas.syscall_columns import decode_columns
from svctrace.schemas.validation import SCHEMA_NAMES, errors


def configure(parser) -> None:
    parser.add_argument("schema", choices=("auto", *SCHEMA_NAMES),
                        help="a topic schema, or auto: each document's own `schema` field names it")
    parser.add_argument("files", nargs="+", type=Path, help="JSON documents, or JSON lines ('-' reads stdin)")


def _documents(path: Path):
    raw = sys.stdin.buffer.read() if str(path) == "-" else path.read_bytes()
    if raw and raw[0] in MSGPACK_MAP:  # one msgpack record
        try:
            yield "", msgspec.msgpack.decode(raw), raw
        except msgspec.MsgspecError as e:
            yield "", e, raw
        return
    try:
        yield "", orjson.loads(raw), None
    except orjson.JSONDecodeError:
        for lineno, line in enumerate(raw.splitlines(), 1):
            if line.strip():
                yield f":{lineno}", orjson.loads(line), None


def _schema_of(doc) -> str | None:
    """auto: `svctrace.<name>` in the document's `schema` field, if it names a topic schema."""
    name = doc.get("schema") if isinstance(doc, dict) else None
    if isinstance(name, str) and name.startswith("svctrace.") and name[len("svctrace."):] in SCHEMA_NAMES:
        return name[len("svctrace."):]
    return None


def run(args) -> int:
    bad = 0
    for path in args.files:
        for where, doc, record in _documents(path):
            if isinstance(doc, Exception):
                bad += 1
                print(f"{path}{where}: not msgpack: {doc}", file=sys.stderr)
                continue
            schema = args.schema if args.schema != "auto" else _schema_of(doc)
            if schema == "syscall-batch" and _schema_of(doc) == "syscall-columns":
                schema = "syscall-columns"  # the topic's other form
            if schema is None:
                bad += 1
                print(f"{path}{where}: no `schema` field naming a topic schema (svctrace.chain, ...):"
                      " give the schema instead of auto", file=sys.stderr)
                continue
            found = errors(schema, doc)
            for err in found:
                bad += 1
                print(f"{path}{where}: {err}", file=sys.stderr)
            if not found and schema == "syscall-columns" and record is not None:
                try:  # what the schema cannot say: every column as long as count, indexes into strings ...
                    decode_columns(record, {})
                except DecodeError as e:
                    bad += 1
                    print(f"{path}{where}: {e}", file=sys.stderr)
    return 1 if bad else 0
