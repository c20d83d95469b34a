"""`svctrace agent`: the node agent (what the DaemonSet runs).

    svctrace agent --bootstrap kafka:9092                 # live eBPF capture -> svctrace.syscalls
    svctrace agent --source scap --file x.scap --speed 0 --output batches.jsonl
"""
from __future__ import annotations

import argparse
import asyncio
import logging
import os
import signal
import socket
import sys

from svctrace import metrics_http
from svctrace.logs import setup_logging

log = logging.getLogger("svctrace.agent")


def node_name(explicit: str | None = None) -> str:
    return explicit or os.environ.get("NODE_NAME") or socket.gethostname()


def configure(p: argparse.ArgumentParser) -> None:
    p.add_argument("--source", choices=("ebpf", "scap"), default="ebpf", help="live kernel capture or a .scap replay")
    p.add_argument("--file", help="capture file for --source scap")
    p.add_argument("--speed", type=float, default=1.0,
                   help="scap replay pace: 1 = as recorded, 2 = twice as fast, 0 = as fast as possible")
    p.add_argument("--node", help="node name (default: $NODE_NAME, else the hostname)")
    sink = p.add_mutually_exclusive_group()
    sink.add_argument("--bootstrap", default=os.environ.get("SVCTRACE_BOOTSTRAP"),
                      help="Kafka bootstrap servers host:port (default $SVCTRACE_BOOTSTRAP)")
    sink.add_argument("--output", help="write batches as JSON lines to this file instead of Kafka (the JSON form)")
    p.add_argument("--stats-output", help="with --output: write agent stats as JSON lines here")
    p.add_argument("--topic-prefix", default="",
                   help="prefix of the topic names, prepended as is (e.g. 'staging.'), as the worker's and "
                        "metadata's --topic-prefix")
    p.add_argument("--topic", default="svctrace.syscalls", help="topic the event batches go to")
    p.add_argument("--stats-topic", default="svctrace.agent.stats", help="topic of the agent's own counters")
    p.add_argument("--snaplen", type=int, default=256, help="payload bytes captured per event (0..4096)")
    p.add_argument("--no-redact", dest="redact", action="store_false",
                   help="publish payloads without masking credentials (default: redact)")
    p.add_argument("--batch-events", type=int, default=2000, help="events per published batch, at most")
    p.add_argument("--batch-bytes", type=int, default=600_000,
                   help="encoded bytes per published batch, at most (a batch is one Kafka record: <= 1 MiB)")
    p.add_argument("--batch-form", choices=("msgpack", "json"), default=None,
                   help="form of the records on the syscalls topic: msgpack, the syscall-columns form (default), "
                        "or json, the syscall-batch JSON (workers read both; --output writes JSON lines; both sources "
                        "and both eBPF loops write either form)")
    p.add_argument("--native-lib", default=os.environ.get("SVCTRACE_NATIVE_LIB"),
                   help="prebuilt native per-event loop (`python -m svctrace.agents.ebpf.build --native`; "
                        "default: $SVCTRACE_NATIVE_LIB, else built into the cache with the node's C compiler)")
    p.add_argument("--no-native", dest="native", action="store_false",
                   help="encode events in Python, not in the native per-event loop (default: native when a C "
                        "compiler builds it)")
    p.add_argument("--linger", type=float, default=0.2,
                   help="seconds a batch may wait to fill; a live capture's quiet node sends an empty record this "
                        "often, for the completeness its records claim (svctrace-complete: see docs/topics.md)")
    p.add_argument("--buffer-events", type=int, default=500_000, help="bound of the in-memory buffer")
    p.add_argument("--stats-interval", type=float, default=10.0, help="seconds between stats records")
    p.add_argument("--drain-timeout", type=float, default=30.0,
                   help="seconds to keep publishing buffered events once stopped (or a replay ended); "
                        "what is left then is counted lost and the exit status is 1")
    p.add_argument("--metrics-addr", default="127.0.0.1:9464", type=metrics_http.addr_arg,
                   help="host:port of the Prometheus /metrics endpoint ('' to disable; port 0 = any)")
    p.add_argument("--metrics-port", type=int,
                   help="serve /metrics on all interfaces at this port (in a pod); overrides --metrics-addr")
    p.add_argument("--ring-mb", type=int, default=16, help="eBPF ring buffer size (power of two)")
    p.add_argument("--btf", default="/sys/kernel/btf/vmlinux", help="kernel BTF for CO-RE relocations")
    p.add_argument("--bpf-object", help="prebuilt BPF object (default: build into the cache)")
    p.add_argument("--capture-unix", action="store_true", help="also capture AF_UNIX sockets")
    p.add_argument("--duration", type=float, default=0.0, help="stop after this many seconds (0 = until SIGTERM)")
    p.add_argument("-v", "--verbose", action="store_true", help="log at debug level (default: $SVCTRACE_LOG_LEVEL, or info)")


def _make_source(args, node: str):
    from svctrace.agents.agent.sources import EbpfSource, ScapSource

    if args.source == "scap":
        if not args.file:
            raise SystemExit("svctrace agent: --source scap needs --file CAPTURE.scap")
        return ScapSource(args.file, node, args.speed)
    from svctrace.agents.ebpf.loader import CaptureConfig

    cfg = CaptureConfig(snaplen=args.snaplen, ring_bytes=args.ring_mb * 1024 * 1024, capture_unix=args.capture_unix,
                        btf_path=args.btf, object_path=args.bpf_object)
    return EbpfSource(node, cfg)


def _make_sink(args):
    from svctrace.agents.agent.sinks import FileSink, KafkaSink

    if args.output:
        return FileSink(args.output, args.stats_output)
    if not args.bootstrap:
        raise SystemExit("svctrace agent: give --bootstrap HOST:PORT (or $SVCTRACE_BOOTSTRAP) or --output FILE")
    from svctrace.kafka.admin import topic_name

    return KafkaSink(args.bootstrap, topic_name(args.topic, args.topic_prefix),
                     topic_name(args.stats_topic, args.topic_prefix))


async def _main(args) -> int:
    from svctrace.agents.agent.agent import Agent, AgentOptions
    from svctrace.agents.agent.metrics import AgentMetrics

    if args.output and args.batch_form == "msgpack":
        raise SystemExit("svctrace agent: --output writes JSON lines; --batch-form msgpack is for Kafka")
    node = args.node or (None if args.source == "scap" else node_name())
    if args.source == "scap" and node is None:
        node = os.environ.get("NODE_NAME")  # else each event keeps the capture's hostname
    sink = _make_sink(args)
    source = _make_source(args, node)
    node = node or getattr(source.reader, "node", None) or node_name()
    metrics = None
    if args.metrics_port is not None:
        args.metrics_addr = f"0.0.0.0:{args.metrics_port}"
    if args.metrics_addr:
        metrics = AgentMetrics(node, source.name)
        host, port = metrics.serve(args.metrics_addr)
        print(f"svctrace agent: metrics on http://{host}:{port}/metrics", file=sys.stderr, flush=True)
    from svctrace.agents.agent.pipeline import MAX_BATCH_BYTES

    if not 0 < args.batch_bytes <= MAX_BATCH_BYTES or args.batch_events < 1:
        raise SystemExit(f"svctrace agent: --batch-bytes must be within 1..{MAX_BATCH_BYTES} and --batch-events >= 1")
    opts = AgentOptions(node=node, redact=args.redact, snaplen=args.snaplen, batch_events=args.batch_events,
                        batch_bytes=args.batch_bytes, native=args.native, native_lib=args.native_lib,
                        linger_s=args.linger,
                        buffer_events=args.buffer_events, stats_interval=args.stats_interval,
                        drain_timeout=args.drain_timeout,
                        form=args.batch_form or ("json" if args.output else "msgpack"))
    agent = Agent(source, sink, opts, metrics)
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, agent.stop)
    if args.duration > 0:
        loop.call_later(args.duration, agent.stop)
    path = "" if args.source != "ebpf" else " (native encoder)" if agent.native else " (Python encoder)"
    print(f"svctrace agent: node {node}, source {source.name}{path}, capturing", file=sys.stderr, flush=True)
    try:
        c = await agent.run()
    finally:
        if metrics:
            metrics.close()
    print(f"svctrace agent: captured {c.captured} published {c.published} dropped {c.dropped} lost {c.lost} "
          f"redacted {c.redacted} batches {c.batches}"
          + (f" (lost with room in the ring: {source.drops_with_room})" if getattr(source, "drops_with_room", 0) else "")
          + (f" (written on a retry of the ring reservation: {source.saved_by_retry})"
             if getattr(source, "saved_by_retry", 0) else "")
          + (f" (native loop; records encoded in Python: {source.handed_back})" if agent.native else ""),
          file=sys.stderr, flush=True)
    return 0 if agent.buffer.events == 0 else 1  # 1: the drain timeout left events unpublished


def run(args) -> int:
    setup_logging(args.verbose, default="info")
    from svctrace.agents.ebpf.loader import CaptureError as EbpfError

    try:
        from svctrace.agents.scap import CaptureError as ScapError
    except ImportError:
        ScapError = EbpfError
    try:
        return asyncio.run(_main(args))
    except (EbpfError, ScapError) as e:
        print(f"svctrace agent: {e}", file=sys.stderr)
        return 2
