"""`svctrace topics`: print the topic catalogue; with --create / --check, make or verify the
topics on a broker (what the Helm chart's hook Job and `helm test` pod run)."""
from __future__ import annotations

import asyncio
import os
import sys
from pathlib import Path

import orjson

from svctrace.schemas.catalogue import CATALOGUE_FILE, load_catalogue


def configure(parser) -> None:
    parser.add_argument("--json", action="store_true", help="one JSON object per topic")
    action = parser.add_mutually_exclusive_group()
    action.add_argument("--create", action="store_true",
                        help="create the catalogue's topics that do not exist yet on --bootstrap")
    action.add_argument("--check", action="store_true",
                        help="check that every catalogue topic exists on --bootstrap with its partitions "
                             "and cleanup policy (exit 1 if not)")
    parser.add_argument("--bootstrap", default=os.environ.get("SVCTRACE_BOOTSTRAP"), metavar="HOST:PORT",
                        help="Kafka bootstrap servers (default $SVCTRACE_BOOTSTRAP)")
    parser.add_argument("--catalogue", type=Path, default=CATALOGUE_FILE, metavar="FILE",
                        help="topic catalogue (default: the one shipped with svctrace)")
    parser.add_argument("--replication-factor", type=int, default=1, metavar="N",
                        help="replication factor of created topics (default 1)")
    parser.add_argument("--topic-prefix", default="", help="prefix of every topic name, prepended as is (e.g. 'staging.'; isolates a deployment)")
    parser.add_argument("--timeout", type=float, default=60.0, metavar="S",
                        help="how long to wait for the broker (default 60)")


def run(args) -> int:
    try:
        topics = load_catalogue(args.catalogue)
    except (OSError, ValueError, KeyError, TypeError) as exc:
        print(f"svctrace topics: cannot read the catalogue {args.catalogue}: {exc}", file=sys.stderr)
        return 2
    if args.create or args.check:
        if not args.bootstrap:
            print("svctrace topics: --create/--check need --bootstrap HOST:PORT (or $SVCTRACE_BOOTSTRAP)",
                  file=sys.stderr)
            return 2
        return asyncio.run(_on_broker(args, topics))
    if args.json:
        for t in topics.values():
            print(orjson.dumps({f: getattr(t, f) for f in t.__slots__}).decode())
        return 0
    print(f"{'topic':26} {'parts':>5} {'cleanup':8} {'value schema':15} key")
    for t in topics.values():
        print(f"{t.name:26} {t.partitions:>5} {t.cleanup_policy:8} {t.value_schema:15} {t.key}")
    return 0


async def _on_broker(args, topics) -> int:
    from aiokafka.errors import KafkaError

    from svctrace.kafka.admin import TopicError, ensure_topics, wait_ready

    try:
        await wait_ready(args.bootstrap, timeout=args.timeout)
        if args.create:
            created = set(await ensure_topics(args.bootstrap, topics, prefix=args.topic_prefix,
                                              replication_factor=args.replication_factor, timeout=args.timeout))
            for t in topics.values():
                name = f"{args.topic_prefix}{t.name}"
                print(f"{'created' if name in created else 'exists ':8} {name} ({t.partitions} partitions)")
            return 0
        problems = await _check(args.bootstrap, topics, args.topic_prefix)
    except (TopicError, TimeoutError, KafkaError, OSError) as exc:
        print(f"svctrace topics: {args.bootstrap}: {exc}", file=sys.stderr)
        return 1
    for line in problems:
        print(f"svctrace topics: {line}", file=sys.stderr)
    if not problems:
        print(f"svctrace topics: {len(topics)} topics present on {args.bootstrap}")
    return 1 if problems else 0


async def _check(bootstrap: str, topics, prefix: str) -> list[str]:
    """What is wrong with the catalogue's topics on the broker (empty: all good)."""
    from svctrace.kafka.admin import describe_topic_configs, partition_counts

    names = {f"{prefix}{t.name}": t for t in topics.values()}
    counts = await partition_counts(bootstrap, list(names))
    problems = [f"topic {n} is missing" if not counts.get(n) else
                f"topic {n} has {counts[n]} partitions, the catalogue needs {t.partitions}"
                for n, t in names.items() if counts.get(n, 0) < t.partitions]
    present = [n for n in names if counts.get(n)]
    if present:
        configs = await describe_topic_configs(bootstrap, present)
        problems += [f"topic {n} has cleanup.policy={configs[n].get('cleanup.policy')}, "
                     f"the catalogue says {names[n].cleanup_policy}"
                     for n in present if configs[n].get("cleanup.policy") != names[n].cleanup_policy]
    return problems
