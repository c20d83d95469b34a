"""The stitch stage as a live worker drives it, offline: its CPU per event (issue 8).

    python -m bench.core_live [--rate EV_PER_S] [--seconds S] [--warmup S] [--rounds N] [--toggle] [--stitch-behind S]

bench.worker_steady's traffic (tests/scenario.steady_traffic: the bench's mixed traffic, its parts side by
side in time) through the operator graph as a live worker drives it, without Kafka or a clock: each node's
events arrive in agent batches (0.2 s of event time); every tick (0.1 s of event time) the enrich stage
advances every node to (newest event time - lateness), its flows batches go to the stitch stage's process(),
and every stitch key advances to that watermark (small batches per key, not one big one); every 3 s of event
time each stitch key gives its durable_parts, as a worker's checkpoint asks (so its change marks are kept, as
live). The stitch stage writes each chain's bytes as it makes the chain, as a worker's does (its
`encode_chain` is wire.encode_chain). The worker's event-time settings (lateness 0.4 s, settle 0.25 s). After --warmup seconds (the state as
old as a live worker's: DNS lookups up to their 12 s timeout, connections while open), prints the stitch
stage's advance and process CPU per event published in the span (thread time; each round a fresh graph; the
median of --rounds) and a digest of the chains and occurrences it emitted, in order (a chain's record bytes,
an occurrence's orjson bytes: the same digest as when chains were dicts written by orjson): an optimization
leaves it unchanged (it differs with the arguments). The collector is frozen and off during a round (a worker
freezes it every checkpoint).

Beside bench.worker_steady (the figure that counts, but noisy on a shared machine: three stages, Kafka and
the shell in one process), this isolates the core's largest cost. --toggle sends the measured advance
calls through operator.call, so that callgrind counts their instructions alone, steady however busy the
machine is:

    PYTHONHASHSEED=0 valgrind --tool=callgrind --collect-atstart=no --toggle-collect=_operator_call \\
        python -m bench.core_live --toggle --rate 20000 --seconds 14 --warmup 12.5 --rounds 1

That needs an interpreter whose symbols are there: a distribution's stripped python3 (Debian's, the
Makefile's choice) has no `_operator_call` to toggle on, and callgrind counts nothing. There, toggle on
the compiled advance itself, which counts every advance call, the warm-up's too (compare base and head
with the same arguments):

    PYTHONHASHSEED=0 valgrind --tool=callgrind --collect-atstart=no \\
        --toggle-collect='__pyx_pw_*_Stitching_*advance' python -m bench.core_live --rate 20000 --seconds 14 \\
        --warmup 12.5 --rounds 1
"""
from __future__ import annotations

import argparse
import gc
import hashlib
import operator
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import orjson  # noqa: E402

from svctrace.memory import huge_page_arenas  # noqa: E402
from svctrace.streams.core.enrich import FLOWS_TOPIC  # noqa: E402
from svctrace.streams.core.graph import Graph  # noqa: E402
from svctrace.streams.faust_app import command as worker_command  # noqa: E402
from svctrace.streams.faust_app.wire import encode_chain  # noqa: E402
from svctrace.streams.metadata.index import ClusterIndex  # noqa: E402
from tests.scenario import MS, S, T0, steady_traffic  # noqa: E402

TICK_NS = 100 * MS  # the worker's tick
LINGER_NS = 200 * MS  # an agent's batch interval
CHECKPOINT_NS = 3 * S  # the worker's default checkpoint interval


class AgentBatches:
    """The agents' batches as they reach a worker: each node's events cut once a batch spans LINGER_NS of
    event time (the last ones when the events run out)."""

    def __init__(self, events) -> None:
        self.events, self.i = events, 0
        self.pending: dict = {}  # node -> [its batch's first event time, its events]

    @property
    def done(self) -> bool:
        return self.i >= len(self.events) and not self.pending

    @property
    def more(self) -> bool:
        """Whether events are still to come (not all taken into batches)."""
        return self.i < len(self.events)

    def until(self, t: int) -> list:
        """The batches that reach the worker by event time t: [(node, events)]."""
        events, pending, arrived = self.events, self.pending, []
        i, n = self.i, len(events)
        while i < n and events[i].ts < t:
            e = events[i]
            batch = pending.get(e.node)
            if batch is None:
                batch = pending[e.node] = [e.ts, []]
            elif e.ts - batch[0] >= LINGER_NS:
                arrived.append((e.node, batch[1]))
                batch = pending[e.node] = [e.ts, []]
            batch[1].append(e)
            i += 1
        self.i = i
        if i >= n:
            arrived += [(node, batch[1]) for node, batch in pending.items()]
            self.pending = {}
        return arrived


def enrich_tick(enrich, states: dict, arrived: list, lateness: int) -> tuple[list, int]:
    """The enrich stage's part of a tick: the batches that arrived processed, every node advanced to the
    watermark (the newest event - lateness). Returns the flows batches [(key, value)] and that watermark."""
    for node, batch in arrived:
        st = states.get(node)
        if st is None:
            st = states[node] = enrich.new_state()
        enrich.process(st, node, batch)
    watermark = enrich.newest_ts - lateness
    flows = []
    for node, st in states.items():
        flows += [(key, value) for topic, key, value in enrich.advance(st, node, watermark) if topic == FLOWS_TOPIC]
    return flows, watermark


def drive(records, events, warmup_ns: int, toggle: bool = False, behind_ns: int = 0) -> tuple[int, int, int, str, tuple]:
    """One run on a fresh graph: (advance ns, process ns, events published after the warm-up, digest, the
    connection entries held at the end and how many of them no client has). behind_ns: the stitch stage's
    watermark that far behind the enrich stage's (a stitch partition held back by a slower upstream
    partition, as in a backlog: it buffers that much more)."""
    settings = worker_command.event_time_settings(0.4, 0.25, enriched=False)
    g = Graph(ClusterIndex.from_records(records), settings)
    enrich, stitch = g.enrich, g.stitch
    stitch.encode_chain = encode_chain  # as a worker's (app.Worker): chains come out as their record bytes
    lateness = settings.enrich_lateness_ns
    enrich_states: dict = {}
    stitch_states: dict = {}
    digest = hashlib.sha1()
    clock, call = time.thread_time_ns, operator.call
    advance_ns = process_ns = measured = 0
    agents = AgentBatches(events)
    warm_end = events[0].ts + warmup_ns
    t = events[0].ts + TICK_NS
    next_checkpoint = events[0].ts + CHECKPOINT_NS
    while not agents.done:
        arrived = agents.until(t)
        in_span = t > warm_end
        if in_span:
            measured += sum(len(batch) for _node, batch in arrived)
        flows, watermark = enrich_tick(enrich, enrich_states, arrived, lateness)
        for key, value in flows:
            st = stitch_states.get(key)
            if st is None:
                st = stitch_states[key] = stitch.new_state()
            c = clock()
            stitch.process(st, key, value)
            if in_span:
                process_ns += clock() - c
        for key, st in stitch_states.items():
            c = clock()
            wm = watermark - behind_ns
            outs = call(stitch.advance, st, key, wm) if in_span and toggle else stitch.advance(st, key, wm)
            if in_span:
                advance_ns += clock() - c
            for _topic, k, v in outs:
                digest.update(k.encode())
                digest.update(v if v.__class__ is bytes else orjson.dumps(v))
        if t >= next_checkpoint:
            next_checkpoint += CHECKPOINT_NS
            for st in stitch_states.values():
                stitch.durable_parts(st)
        t += TICK_NS
    conns = [c for st in stitch_states.values() for c in st["conns"].values()]
    held = (len(conns), sum(c.cl is None for c in conns))
    return advance_ns, process_ns, measured, digest.hexdigest()[:16], held


def traffic_options(doc: str, rate: float = 40_000, seconds: float = 24.0, warmup: float = 14.0,
                    rounds: int = 3, toggle: bool = True) -> argparse.ArgumentParser:
    """The offline core benches' options (this one, core_enrich, core_checkpoint): the live traffic's rate and
    span, the rounds, and --toggle for callgrind."""
    ap = argparse.ArgumentParser(description=doc.splitlines()[0])
    ap.add_argument("--rate", type=float, default=rate, help="events per second, all nodes together")
    ap.add_argument("--seconds", type=float, default=seconds, help="seconds of traffic (warm-up included)")
    ap.add_argument("--warmup", type=float, default=warmup, help="seconds of traffic before the measured span")
    ap.add_argument("--rounds", type=int, default=rounds, help="runs, each on a fresh graph (the median is printed)")
    if toggle:
        ap.add_argument("--toggle", action="store_true", help="measured advance calls through operator.call (callgrind)")
    return ap


def main() -> int:
    print(f"huge page arenas: {huge_page_arenas()}", flush=True)  # (as the worker; SVCTRACE_HUGE_PAGES=0: off)
    ap = traffic_options(__doc__)
    ap.add_argument("--stitch-behind", type=float, default=0.0,
                    help="seconds the stitch watermark stays behind the enrich one (a backlog's bigger buffers)")
    args = ap.parse_args()
    cluster, events, requests = steady_traffic(args.rate, args.seconds, T0)
    records = cluster.records()
    print(f"core_live: {args.rate:,.0f} events/s of the mixed traffic ({requests:,} requests, {len(events):,} events "
          f"over {args.seconds:g} s), ticks of {TICK_NS / S:g} s, the last {args.seconds - args.warmup:g} s measured"
          + (f", the stitch watermark {args.stitch_behind:g} s behind the enrich one" if args.stitch_behind else ""))
    advance, process = [], []
    gc.collect()
    gc.freeze()
    gc.disable()
    try:
        for _ in range(args.rounds):
            adv, proc, measured, digest, (held, no_client) = drive(records, events, int(args.warmup * S), args.toggle,
                                                               int(args.stitch_behind * S))
            advance.append(adv / measured / 1e3)
            process.append(proc / measured / 1e3)
            print(f"  round: stitch advance {advance[-1]:.3f} us/event, process {process[-1]:.3f} us/event "
                  f"({measured:,} events measured), outputs digest {digest}; connection entries held at the end "
                  f"{held:,} ({no_client:,} with no client)", flush=True)
            gc.collect()
    finally:
        gc.enable()
        gc.unfreeze()
    print(f"stitch advance {statistics.median(advance):.3f} us/event, process {statistics.median(process):.3f} "
          f"(median of {args.rounds}); outputs digest {digest}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
