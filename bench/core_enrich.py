"""The enrich stage alone on bench.worker_steady's traffic, advanced as a live worker advances it, offline (issue 8).

    python -m bench.core_enrich [--rate EV_PER_S] [--seconds S] [--warmup S] [--rounds N] [--toggle]

bench.core_live's drive for the enrich stage: each tick (0.1 s of event time) the agents' batches that arrived
are processed and every node is advanced to the newest event - lateness, as the worker's releases do. After
--warmup seconds prints the enrich process and advance CPU per event published in the span, and a digest of
the flows batches emitted (events' flows, refs and proxy tags, in order: an optimization leaves it unchanged).
--toggle runs each measured advance under operator.call, so that `valgrind --tool=callgrind
--collect-atstart=no --toggle-collect=_operator_call` counts the advances alone.
"""
from __future__ import annotations

import gc
import hashlib
import operator
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.core_live import TICK_NS, AgentBatches, traffic_options  # noqa: E402
from svctrace.memory import huge_page_arenas  # noqa: E402
from svctrace.streams.core.enrich import FLOWS_TOPIC  # noqa: E402
from svctrace.streams.core.graph import Graph  # noqa: E402
from svctrace.streams.faust_app import command as worker_command  # noqa: E402
from svctrace.streams.metadata.index import ClusterIndex  # noqa: E402
from tests.scenario import S, T0, steady_traffic  # noqa: E402


def _digest(digest, outs) -> None:
    for topic, key, batch in outs:
        if topic != FLOWS_TOPIC:
            continue
        digest.update(key.encode())
        for d in batch["events"]:
            digest.update(repr((d.ev.n, d.ev.node, d.flow, d.local_ref, d.remote_ref, d.addr_ref, d.proxy_of)).encode())
        digest.update(repr(batch.get("lost")).encode())


def drive(records, events, warmup_ns: int, toggle: bool = False) -> tuple[int, int, int, str]:
    settings = worker_command.event_time_settings(0.4, 0.25, enriched=False)
    enrich = Graph(ClusterIndex.from_records(records), settings).enrich
    lateness = settings.enrich_lateness_ns
    states: dict = {}
    digest = hashlib.sha1()
    clock, call = time.thread_time_ns, operator.call
    advance_ns = process_ns = measured = 0
    agents = AgentBatches(events)
    warm_end = events[0].ts + warmup_ns
    t = events[0].ts + TICK_NS
    while not agents.done:
        arrived = agents.until(t)
        in_span = t > warm_end
        c = clock()
        for node, batch in arrived:
            st = states.get(node)
            if st is None:
                st = states[node] = enrich.new_state()
            enrich.process(st, node, batch)
        if in_span:
            process_ns += clock() - c
            measured += sum(len(batch) for _node, batch in arrived)
        watermark = enrich.newest_ts - lateness
        for node, st in states.items():
            c = clock()
            outs = call(enrich.advance, st, node, watermark) if in_span and toggle else enrich.advance(st, node, watermark)
            if in_span:
                advance_ns += clock() - c
            _digest(digest, outs)
        t += TICK_NS
    return advance_ns, process_ns, measured, digest.hexdigest()[:16]


def main() -> int:
    print(f"huge page arenas: {huge_page_arenas()}", flush=True)  # (as the worker; SVCTRACE_HUGE_PAGES=0: off)
    args = traffic_options(__doc__, rate=60_000, seconds=16.0, warmup=10.0).parse_args()
    cluster, events, requests = steady_traffic(args.rate, args.seconds, T0)
    records = cluster.records()
    gc.collect()
    gc.freeze()
    adv, proc = [], []
    for _ in range(args.rounds):
        a, p, m, digest = drive(records, events, int(args.warmup * S), args.toggle)
        adv.append(a / m / 1e3)
        proc.append(p / m / 1e3)
        print(f"  round: us/event advance {adv[-1]:.3f}, process {proc[-1]:.3f}; {m:,} events; flows {digest}", flush=True)
    print(f"core_enrich {args.rate:,.0f} events/s: median us/event advance {statistics.median(adv):.3f}, "
          f"process {statistics.median(proc):.3f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
