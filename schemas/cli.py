"""`svctrace topics`: print the topic catalogue."""
from __future__ import annotations

import orjson

from svctrace.schemas.catalogue import load_catalogue


def configure(parser) -> None:
    parser.add_argument("--json", action="store_true", help="one JSON object per topic")


def run(args) -> int:
    topics = load_catalogue().values()
    if args.json:
        for t in topics:
            print(orjson.dumps({f: getattr(t, f) for f in t.__slots__}).decode())
        return 0
    print(f"{'topic':26} {'parts':>5} {'cleanup':8} {'value schema':15} key")
    for t in topics:
        print(f"{t.name:26} {t.partitions:>5} {t.cleanup_policy:8} {t.value_schema:15} {t.key}")
    return 0
