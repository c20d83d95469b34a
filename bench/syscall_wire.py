"""The svctrace.syscalls record forms, offline: the agent's encode and the worker's decode, per event.

    python -m bench.syscall_wire [--rate EV_PER_S] [--seconds S] [--rounds N]

bench.worker_steady's traffic (tests.scenario.steady_traffic: the bench's mixed requests at --rate), cut
into batches as that bench publishes them (each node's events, 0.2 s of event time, at most 1000): the
agent's Batcher (agents/agent/pipeline.py) writes them in each form (json: the syscall-batch JSON, each
event encoded on arrival; msgpack: the syscall-columns form, the agents' default), the worker's
wire.decode_syscall_batch reads them back (the events checked equal, and the same objects for the
enumerated strings). CPU time (thread), the two forms alternating in each round; every round printed.
"""
from __future__ import annotations

import argparse
import gc
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from svctrace.agents.agent.pipeline import Batcher  # noqa: E402
from svctrace.streams.faust_app import wire  # noqa: E402
from tests.harness import pipeline as P  # noqa: E402
from tests.scenario import steady_traffic  # noqa: E402

FORMS = ("json", "msgpack")


def encode(batches, form: str) -> list[bytes]:
    """Each batch through an agent's Batcher of that form, as the agent fills and closes one."""
    out = []
    for b in batches:
        batcher = Batcher(b.node, b.source, max_events=1000, form=form)
        batcher.seq, batcher.pending_lost = b.seq, b.lost
        closed = batcher.add(b.events, 0.0)
        last = batcher.flush()
        out += [x.value for x in closed] + ([last.value] if last is not None else [])
    return out


def decode(records) -> list:
    return [wire.decode_syscall_batch(r) for r in records]


def timed(fn, *args):
    gc.collect()
    t = time.thread_time_ns()
    out = fn(*args)
    return (time.thread_time_ns() - t) / 1e3, out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rate", type=float, default=60_000)
    ap.add_argument("--seconds", type=float, default=5.0)
    ap.add_argument("--rounds", type=int, default=5)
    args = ap.parse_args()
    _, events, _ = steady_traffic(args.rate, args.seconds, 0)
    batches = P.batches_of(events, 1000, source="ebpf", span_ns=200_000_000)
    n = len(events)
    records = {form: encode(batches, form) for form in FORMS}
    sent = [e for b in batches for e in b.events]
    for form in FORMS:  # both forms read back as the very events
        got = [e for b in decode(records[form]) for e in b.events]
        assert got == sent, form
        assert all(a.kind is b.kind and a.proto is b.proto for a, b in zip(got, sent)), form
    print(f"{n:,} events in {len(batches)} batches ({n / len(batches):.0f} events each); bytes per event: "
          + ", ".join(f"{form} {sum(map(len, records[form])) / n:.1f}" for form in FORMS))
    enc = {form: [] for form in FORMS}
    dec = {form: [] for form in FORMS}
    for r in range(args.rounds):
        order = FORMS if r % 2 == 0 else FORMS[::-1]
        for form in order:
            us, _ = timed(encode, batches, form)
            enc[form].append(us / n)
        for form in order:
            us, _ = timed(decode, records[form])
            dec[form].append(us / n)
        print(f"round {r + 1}: encode us/event " + ", ".join(f"{f} {enc[f][-1]:.3f}" for f in FORMS)
              + "; decode us/event " + ", ".join(f"{f} {dec[f][-1]:.3f}" for f in FORMS), flush=True)
    print("median: encode " + ", ".join(f"{f} {statistics.median(enc[f]):.3f}" for f in FORMS)
          + "; decode " + ", ".join(f"{f} {statistics.median(dec[f]):.3f}" for f in FORMS) + " us/event")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
