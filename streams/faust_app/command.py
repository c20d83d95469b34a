"""`svctrace worker`: run the stream processors (any number of workers share the partitions).

    svctrace worker --bootstrap 127.0.0.1:9092
    svctrace worker --bootstrap kafka:9092 --metrics-addr 0.0.0.0:9466     # in a pod
"""
from __future__ import annotations

import argparse
import asyncio
import logging
import os
import sys
from pathlib import Path

from svctrace import metrics_http
from svctrace.logs import setup_logging

# The worker's zstd level (--zstd-level; aiokafka's and the broker's is 3, svctrace.kafka.clients.ZSTD_LEVEL): on
# its batches (stitch changelog, chains, enriched records) level 1 took 20-45% less CPU than 3 and wrote no more
# bytes on the bench traffic (docs/topics.md, Compression; bench.zstd_levels).
WORKER_ZSTD_LEVEL = 1


def _default_data_dir() -> str:
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return str(Path(base) / "svctrace" / "worker-data")


def configure(p: argparse.ArgumentParser) -> None:
    p.add_argument("--bootstrap", default=os.environ.get("SVCTRACE_BOOTSTRAP"),
                   help="Kafka bootstrap servers host:port (default $SVCTRACE_BOOTSTRAP)")
    p.add_argument("--kafka-wait", type=float, default=60.0, metavar="S",
                   help="seconds a starting worker waits for the broker before it exits with status 1")
    p.add_argument("--app-id", default="svctrace-worker",
                   help="Faust application id = consumer group; workers with the same id share the work")
    p.add_argument("--topic-prefix", default="", help="prefix of every topic name, prepended as is (e.g. 'staging.'; isolates deployments)")
    p.add_argument("--data-dir", default=_default_data_dir(), help="Faust's local data folder")
    p.add_argument("--metrics-addr", default="127.0.0.1:9466", type=metrics_http.addr_arg,
                   help="host:port of the Prometheus /metrics endpoint ('' to disable; port 0 = any)")
    p.add_argument("--idle-flush", type=float, default=10.0,
                   help="seconds a caught-up input partition stays idle before its state is flushed")
    p.add_argument("--lateness", type=float, default=0.4,
                   help="seconds events of one partition's nodes may arrive out of order: must cover the agents' "
                        "batch interval (0.2 s) + transport + clock skew between nodes; later events are dropped "
                        "(counted). Every chain and alert waits this long, except for the nodes whose live agents "
                        "claim how complete their streams are (svctrace-complete) (default %(default)s: agents on "
                        "NTP-synchronized clocks; raise it for more skew or longer batches, see docs/architecture.md)")
    p.add_argument("--settle", type=float, default=0.25,
                   help="seconds a chain waits after the client's close (or response) for the other nodes' events "
                        "(causal delays + clock skew); adds to the latency like --lateness")
    p.add_argument("--checkpoint-interval", type=float, default=3.0,
                   help="seconds between state checkpoints; input offsets commit only after one. Each writes every "
                        "changed key's durable state whole (a stitch key holds its flows' DNS lookups and "
                        "connections), a CPU cost per event inversely proportional to this (a live stream of the "
                        "bench's traffic: 9 us/event at 1 s, 2.9 at 3 s, 1.3 at 10 s). Longer: offsets commit later, "
                        "a successor after a crash re-reads (and emits again, same ids) more input, and the input and "
                        "batches handed since the last checkpoint stay in memory longer. Chain and alert latency do "
                        "not depend on it (see docs/architecture.md)")
    p.add_argument("--session-timeout", type=float, default=10.0,
                   help="seconds after which a silent worker's partitions move to the others")
    p.add_argument("--no-enriched", dest="enriched", action="store_false",
                   help="do not publish svctrace.events.enriched")
    p.add_argument("--zstd-level", type=int, default=WORKER_ZSTD_LEVEL, metavar="N",
                   help="zstd level of the worker's producer batches (chains, enriched events, changelogs ...); "
                        "3 is aiokafka's and the broker's. See docs/topics.md, Compression, for CPU and bytes per level")
    p.add_argument("--no-create-topics", dest="create_topics", action="store_false",
                   help="do not create the catalogue's topics at start (they must exist)")
    p.add_argument("-v", "--verbose", action="store_true",
                   help="log at info level (default: $SVCTRACE_LOG_LEVEL, or warning)")


def event_time_settings(lateness_s: float, settle_s: float, enriched: bool = True):
    """The core's Settings for a live worker: `svctrace analyze` keeps the core's roomier defaults
    (nothing waits on it); the worker trades them for latency (docs/architecture.md, Latency)."""
    from svctrace.streams.core import Settings

    lateness = int(lateness_s * 1e9)
    return Settings(enrich_lateness_ns=lateness, stitch_lateness_ns=lateness, settle_ns=int(settle_s * 1e9),
                    emit_enriched=enriched)


def run(args: argparse.Namespace) -> int:
    if not args.bootstrap:
        print("svctrace worker: --bootstrap (or $SVCTRACE_BOOTSTRAP) is required", file=sys.stderr)
        return 2
    from svctrace.memory import huge_page_arenas, huge_page_malloc

    malloc = huge_page_malloc()  # (first: it may start the process again, with glibc's tunable set)
    import faust

    from svctrace.kafka.admin import ensure_topics, wait_ready
    from svctrace.kafka.clients import keep_freed_memory, set_zstd_level
    from svctrace.streams.faust_app.app import Worker, WorkerConfig

    level = setup_logging(args.verbose, default="warning", verbose_level="info")
    set_zstd_level(args.zstd_level)
    keep_freed_memory()  # fetched records: a worker's largest allocations, again and again
    arenas = huge_page_arenas()  # its state: ~1 GB of small objects, read seconds after they were made
    config = WorkerConfig(
        bootstrap=args.bootstrap, app_id=args.app_id, topic_prefix=args.topic_prefix, data_dir=args.data_dir,
        settings=event_time_settings(args.lateness, args.settle, args.enriched), idle_flush_s=args.idle_flush,
        checkpoint_s=args.checkpoint_interval, session_timeout_s=args.session_timeout,
    )

    worker = Worker(config)

    async def prepare() -> None:
        await wait_ready(args.bootstrap, timeout=args.kafka_wait)
        if args.create_topics:
            await ensure_topics(args.bootstrap, prefix=args.topic_prefix)  # the whole catalogue
        await ensure_topics(args.bootstrap, worker.internal_topics())  # the worker's own changelogs

    from svctrace.streams.core import NATIVE

    print(f"svctrace worker: core {NATIVE}; huge pages: arenas {arenas}, malloc {malloc}; connecting to Kafka at "
          f"{args.bootstrap} (up to {args.kafka_wait:g} s)", file=sys.stderr, flush=True)
    try:
        asyncio.run(prepare())
    except TimeoutError as e:  # one line, exit 1: the pod restarts with a reason in its log
        print(f"svctrace worker: {e}", file=sys.stderr)
        return 1
    if args.metrics_addr:
        host, port = worker.metrics.serve(args.metrics_addr)
        print(f"svctrace worker: metrics on http://{host}:{port}/metrics", file=sys.stderr, flush=True)
    Path(args.data_dir).mkdir(parents=True, exist_ok=True)
    faust_worker = faust.Worker(worker.app, loglevel=logging.getLevelName(level), quiet=True,
                                redirect_stdouts=False)
    faust_worker.execute_from_commandline()  # runs until SIGTERM/SIGINT, then exits the process
    return 0
