"""Worker.route's CPU per call on small outputs (a live worker's stitch advances), offline (issue 8).

    python -m bench.route_calls [--chains 1,8,64] [--calls N] [--rounds N] [--drain-every N]

A caught-up worker advances each of its stitch partitions at every syscalls record it releases (the marks its
own partitions take at once: Worker._marks_to_own), ~12 x 60 advances a second at 60k events/s with ~8 chains
each: what route() costs per call, beside what it costs per chain, makes the "shell: route outputs" row. Here
Worker.route takes --calls outputs of N chains (2 KB values, ids as the stitch stage makes them) through
aiokafka's own producer accumulator (not started: its metadata stubbed, 6 partitions as svctrace.chains), its
sender played by a drain every --drain-every calls (each partition's waiting batches taken out whole, as a
produce request takes them): between two drains, records join the batch waiting for their partition. Prints the
CPU per call of each round, for each chain count.
"""
from __future__ import annotations

import argparse
import asyncio
import gc
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from aiokafka import AIOKafkaProducer  # noqa: E402

from svctrace.kafka.clients import producer_settings, reuse_zstd_contexts  # noqa: E402
from svctrace.streams.faust_app.app import Worker, WorkerConfig  # noqa: E402

CHAINS = "svctrace.chains"
PARTITIONS = 6  # schemas/topics.yaml's svctrace.chains


async def run(args) -> None:
    worker = Worker(WorkerConfig(bootstrap="127.0.0.1:9"))
    producer = AIOKafkaProducer(bootstrap_servers="127.0.0.1:9", **producer_settings())

    async def known(_topic):
        return None

    producer.client._wait_on_metadata = known
    producer._metadata.partitions_for_topic = lambda _t: set(range(PARTITIONS))
    producer._metadata.available_partitions_for_topic = lambda _t: set(range(PARTITIONS))
    acc = producer._message_accumulator

    class FaustProducer:
        send = None

        def _ensure_producer(self):
            return producer

    worker.app._producer = FaustProducer()

    def drain():
        for batches in acc._batches.values():
            for batch in batches:
                batch._builder.close()
                if not batch.future.done():
                    batch.future.set_result(None)
        acc._batches.clear()

    clock = time.thread_time_ns
    gc.collect()
    gc.disable()
    try:
        for n in [int(x) for x in args.chains.split(",")]:
            outs = [[(CHAINS, "ch-%020x" % (i * 1000 + j), b"x" * 2000) for j in range(n)] for i in range(args.calls)]
            rounds = []
            for _ in range(args.rounds):
                spent = 0
                for i, out in enumerate(outs):
                    c = clock()
                    await worker.route("stitch", 0, out)
                    spent += clock() - c
                    if i % args.drain_every == args.drain_every - 1:
                        drain()
                        await asyncio.sleep(0)
                drain()
                rounds.append(spent / len(outs) / 1e3)
            print(f"  {n} chains per call: us per call " + " / ".join(f"{x:.1f}" for x in rounds), flush=True)
    finally:
        gc.enable()


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--chains", default="1,8,64", help="chains per call, comma-separated")
    ap.add_argument("--calls", type=int, default=1000, help="calls per round")
    ap.add_argument("--rounds", type=int, default=3, help="rounds per chain count")
    ap.add_argument("--drain-every", type=int, default=4, help="calls between two drains (the producer's requests)")
    args = ap.parse_args()
    reuse_zstd_contexts()
    print(f"route_calls: {args.calls:,} calls per round, a drain every {args.drain_every}", flush=True)
    asyncio.run(run(args))
    return 0


if __name__ == "__main__":
    sys.exit(main())
