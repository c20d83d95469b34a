"""zstd levels on the worker's own record batches, offline: CPU and bytes per level, per topic (issue 8).

    python -m bench.zstd_levels [--rate EV_PER_S] [--seconds S] [--warmup S] [--levels 1,2,3] [--rounds N]

bench.core_checkpoint's drive (bench.worker_steady's traffic through the operator graph as a live worker
advances it, the worker's own stitch StageShell checkpointing it) with the batches a worker would compress
taken as they are made, after --warmup seconds: the stitch changelog's batches (StageShell.write's, as built),
svctrace.chains' (each stitch advance's chains, one batch per partition of the topic's 6, as route() sends
them) and svctrace.events.enriched's (the enrich stage's records per node, as route() cuts them; the worker
publishes them unless --no-enriched, bench.worker_steady runs without). Each batch's records (the part of a
record batch zstd compresses) are then compressed at every level with a context kept per level (as
svctrace.kafka.clients.zstd_encode_reusing does), the levels alternating, --rounds times: per topic the CPU per
event published in the span and the bytes compressed per event, every round printed.

The traffic is far more repetitive than a cluster's: its ratios are an upper bound; the relative CPU of the
levels is what carries over.
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import zstandard  # noqa: E402
from aiokafka.record.default_records import DefaultRecordBatchBuilder  # noqa: E402

from bench import core_checkpoint  # noqa: E402
from svctrace.kafka import clients  # noqa: E402
from svctrace.kafka.batches import murmur2_partition  # noqa: E402
from svctrace.streams.core.enrich import ENRICHED_TOPIC  # noqa: E402
from svctrace.streams.faust_app import app as worker_app  # noqa: E402
from svctrace.streams.faust_app import command as worker_command  # noqa: E402
from svctrace.streams.faust_app.wire import encode_chain, encode_enriched_batch  # noqa: E402
from tests.scenario import S, T0, steady_traffic  # noqa: E402

CHAINS_PARTITIONS = 6  # schemas/topics.yaml
HEADER = 61  # a v2 record batch's header: what follows it is what zstd compresses


def _records_part(records: list[tuple[bytes, bytes]]) -> bytes:
    """The records of one batch as aiokafka lays them out (what its zstd_encode is given)."""
    builder = DefaultRecordBatchBuilder(2, 0, 0, -1, -1, -1, 1 << 30)
    for i, (key, value) in enumerate(records):
        builder.append(i, timestamp=None, key=key, value=value, headers=[])
    return bytes(builder.build())[HEADER:]


class _Op:
    """An operator, its outputs kept (in the span) as the worker's batches would be."""

    def __init__(self, op, taken):
        self._op, self._taken = op, taken

    def __getattr__(self, name):
        return getattr(self._op, name)

    def advance(self, st, key, watermark):
        outs = self._op.advance(st, key, watermark)
        self._taken(outs)
        return outs


def capture(records, events, warmup_ns: int) -> tuple[dict[str, list[bytes]], int]:
    taken: dict[str, list[bytes]] = {"changelog": [], "chains": [], "enriched": []}
    measuring = [False]

    def chains(outs):
        if not measuring[0]:
            return
        per: dict[int, list] = {}
        for topic, key, value in outs:
            if topic == "svctrace.chains":
                k = key.encode()
                per.setdefault(murmur2_partition(k, CHAINS_PARTITIONS), []).append((k, encode_chain(value)))
        taken["chains"] += [_records_part(rs) for rs in per.values()]

    def enriched(outs):
        if not measuring[0]:
            return
        for topic, key, value in outs:
            if topic == ENRICHED_TOPIC:
                for _chunk, data in worker_app._records(value, encode_enriched_batch):
                    taken["enriched"].append(_records_part([(key.encode(), data)]))

    settings_of = worker_command.event_time_settings
    graph_of = core_checkpoint.Graph

    def graph(index, settings):
        g = graph_of(index, settings)
        g.stitch, g.enrich = _Op(g.stitch, chains), _Op(g.enrich, enriched)
        return g

    c_records = clients._record_builders()[-1]
    encode = c_records.zstd_encode

    def keep(payload, *a, **kw):
        if measuring[0]:
            taken["changelog"].append(bytes(payload))
        return encode(payload, *a, **kw)

    # the span starts where drive's does: its tick passing warm_end (drive's producer.measuring says it)
    class Producer(core_checkpoint._Producer):
        @property
        def measuring(self):
            return measuring[0]

        @measuring.setter
        def measuring(self, value):
            measuring[0] = value

    core_checkpoint.worker_command.event_time_settings = lambda *a, **kw: settings_of(*a, **{**kw, "enriched": True})
    core_checkpoint.Graph = graph
    core_checkpoint._Producer = Producer
    c_records.zstd_encode = keep
    try:
        r = core_checkpoint.drive(records, events, warmup_ns)
    finally:
        core_checkpoint.worker_command.event_time_settings = settings_of
        core_checkpoint.Graph = graph_of
        core_checkpoint._Producer = Producer.__mro__[1]
        c_records.zstd_encode = encode
    return taken, r["measured"]


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rate", type=float, default=100_000, help="events per second, all nodes together")
    ap.add_argument("--seconds", type=float, default=20.0, help="seconds of traffic (warm-up included)")
    ap.add_argument("--warmup", type=float, default=14.0, help="seconds of traffic before the measured span")
    ap.add_argument("--levels", default="1,2,3", help="zstd levels, comma-separated")
    ap.add_argument("--rounds", type=int, default=5, help="rounds over every level, alternating")
    args = ap.parse_args()
    levels = [int(x) for x in args.levels.split(",")]
    clients.reuse_zstd_contexts()
    cluster, events, requests = steady_traffic(args.rate, args.seconds, T0)
    taken, measured = capture(cluster.records(), events, int(args.warmup * S))
    print(f"zstd_levels: {args.rate:,.0f} events/s of the mixed traffic, {measured:,} events in the span; batches: " +
          ", ".join(f"{t} {len(b):,} ({sum(map(len, b)) / measured:.1f} B/event raw)" for t, b in taken.items()),
          flush=True)
    compressors = {level: zstandard.ZstdCompressor(level=level) for level in levels}
    clock = time.thread_time_ns
    cpu: dict = {(t, lv): [] for t in taken for lv in levels}
    size: dict = {}
    for _ in range(args.rounds):
        for topic, batches in taken.items():
            for level in (levels if _ % 2 == 0 else levels[::-1]):
                compress = compressors[level].compress
                c = clock()
                n = 0
                for b in batches:
                    n += len(compress(b))
                cpu[topic, level].append((clock() - c) / measured / 1e3)
                size[topic, level] = n / measured
    for topic in taken:
        for level in levels:
            print(f"  {topic:9} level {level}: us/event " + " / ".join(f"{v:.3f}" for v in cpu[topic, level]) +
                  f"; {size[topic, level]:.2f} B/event compressed")
    return 0


if __name__ == "__main__":
    sys.exit(main())
