"""Benchmark of `svctrace worker` (Faust on a real Kafka broker) beside the in-process runner.

    python -m bench.pipeline [--requests N] [--latency-requests N] [--rate R]

Starts its own Apache Kafka broker (lab/kafka; SVCTRACE_KAFKA=host:port uses an existing one).
1. Throughput: the same scenario traffic (bench.core_runner.traffic) through the in-process
   runner and through ONE worker process: a backlog of agent-sized batches (1000 events per
   record) is consumed from svctrace.syscalls until every event has passed enrich AND stitch
   (the worker's own counters); events/s per worker vs events/s of the in-process runner.
2. Latency: faulty traffic stamped with the wall clock, published in real time at --rate
   requests/s; for every chain and alert record, arrival on its topic minus the time of its
   last syscall; p50/p99 for the worker vs the in-process runner fed the same stream at the
   same pace in this process. Both close chains by event time (lateness + settle windows of
   streams/core Settings), which bounds the latency from below in both runners.
Targets (issue 8): >= 100k events/s per worker; p99 syscall -> alert <= 1 s.
"""
from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import orjson  # noqa: E402

from bench.core_runner import traffic  # noqa: E402
from svctrace.kafka.admin import topic_name  # noqa: E402
from svctrace.kafka.clients import consumer  # noqa: E402
from svctrace.schemas.catalogue import ALERTS, CHAINS  # noqa: E402
from svctrace.streams.core import Runner, run  # noqa: E402
from svctrace.streams.metadata.index import ClusterIndex  # noqa: E402
from tests import scenario  # noqa: E402
from tests.harness import pipeline as P  # noqa: E402

TARGET_EPS = 100_000
TARGET_P99_S = 1.0
BATCH_EVENTS = 1000  # ~540 B of JSON per event: 2000 would pass the 1 MiB request limit


def pct(values, q):
    if not values:
        return float("nan")
    values = sorted(values)
    return values[min(len(values) - 1, int(round(q / 100 * (len(values) - 1))))]


def row(label, worker, inproc, unit, fmt="{:,.0f}"):
    w = fmt.format(worker) if worker == worker else "n/a"
    i = fmt.format(inproc) if inproc == inproc else "n/a"
    ratio = f"{worker / inproc:.2f}x" if inproc and worker == worker and inproc == inproc else ""
    print(f"  {label:<34} worker {w:>12} {unit:<9} in-process {i:>12} {unit:<9} {ratio}")


def throughput(bootstrap: str, requests: int, workdir: Path) -> None:
    cluster, events = traffic(requests)
    # traffic() concatenates scenarios that each number events from 1: give every event of a
    # node its own number, as a capture would ((node, n) is an event's identity).
    counters: dict[str, int] = {}
    renumbered = []
    for e in events:
        counters[e.node] = counters.get(e.node, 0) + 1
        renumbered.append(e.with_(n=counters[e.node]))
    events = renumbered
    index = ClusterIndex.from_records(cluster.records())
    c = time.perf_counter()
    result = run(events, index)
    inproc_wall = time.perf_counter() - c
    inproc_eps = len(events) / inproc_wall

    prefix = f"bt{os.getpid()}."
    P.ensure_worker_topics(bootstrap, prefix)
    asyncio.run(P.publish_cluster(bootstrap, prefix, cluster.records()))
    sent = asyncio.run(P.publish_batches(bootstrap, prefix, P.batches_of(events, BATCH_EVENTS)))
    worker = P.WorkerProcess(bootstrap, prefix, "bench-" + prefix.strip("."), workdir, name="bench-tp",
                             idle_flush=3.0, extra=["--no-enriched"]).start()
    try:
        url = worker.metrics_url(timeout=120)
        enrich = lambda: P.metric_value(url, "svctrace_worker_events_total", stage="enrich")  # noqa: E731
        stitch = lambda: P.metric_value(url, "svctrace_worker_events_total", stage="stitch")  # noqa: E731
        P.wait_until(lambda: enrich() > 0, 120, "first batch processed", [worker])
        t0 = time.perf_counter()
        P.wait_until(lambda: enrich() >= sent, 600, "backlog through enrich", [worker])
        t_enrich = time.perf_counter() - t0
        P.wait_until(lambda: stitch() >= sent, 600, "backlog through stitch", [worker])
        t_all = time.perf_counter() - t0
        res = asyncio.run(P.read_results(bootstrap, prefix, lambda r: len(r.chains) >= len(result.chains), 120))
    finally:
        worker.stop()
    print(f"throughput: {sent:,} events ({len(result.chains):,} chains), records of {BATCH_EVENTS} events, 1 worker")
    row("events/s enrich+stitch (wall)", sent / t_all, inproc_eps, "ev/s")
    row("events/s enrich stage alone", sent / t_enrich, inproc_eps, "ev/s")
    print(f"  chains: worker {len(res.chains):,}, in-process {len(result.chains):,}"
          f"{'' if set(res.chains) == {c['chain_id'] for c in result.chains} else '  (DIFFER)'}")
    print(f"  target >= {TARGET_EPS:,} events/s per worker: {'met' if sent / t_all >= TARGET_EPS else 'NOT met'}")


async def _collect(bootstrap: str, prefix: str, arrivals: dict, stop: asyncio.Event) -> None:
    c = consumer(bootstrap, topic_name(CHAINS, prefix), topic_name(ALERTS, prefix), group_id=None)
    await c.start()
    try:
        while not stop.is_set():
            for tp, records in (await c.getmany(timeout_ms=50)).items():
                now = time.time_ns()
                for r in records:
                    doc = orjson.loads(r.value)
                    if tp.topic.endswith(CHAINS):
                        arrivals.setdefault(("chain", doc["chain_id"]), (now, doc["end_ts"]))
                    else:
                        last = max(e["ts"] for e in doc["evidence"]) if doc["evidence"] else doc["last_seen"]
                        arrivals.setdefault(("alert", doc["alert_id"]), (now, last))
    finally:
        await c.stop()


def _live_events(requests: int, rate: float):
    gap_ns = int(1e9 / rate)
    start = time.time_ns() + 2_000_000_000
    cluster, events = scenario.build("wrong_port", "userspace", requests=requests, gap_ns=gap_ns, start=start)
    return cluster, events


async def _paced(events, emit) -> None:
    """Hand events to `emit` when the wall clock reaches their ts (50 ms batches, like an agent's linger)."""
    i = 0
    while i < len(events):
        now = time.time_ns()
        j = i
        while j < len(events) and events[j].ts <= now:
            j += 1
        if j > i:
            await emit(events[i:j])
            i = j
        await asyncio.sleep(0.05)


def latency(bootstrap: str, requests: int, rate: float, workdir: Path) -> None:
    prefix = f"bl{os.getpid()}."
    P.ensure_worker_topics(bootstrap, prefix)
    worker = P.WorkerProcess(bootstrap, prefix, "bench-" + prefix.strip("."), workdir, name="bench-lat",
                             idle_flush=3.0, extra=["--no-enriched"]).start()
    try:
        url = worker.metrics_url(timeout=120)
        cluster, events = _live_events(requests, rate)
        n = asyncio.run(P.publish_cluster(bootstrap, prefix, cluster.records()))
        P.wait_until(lambda: P.metric_value(url, "svctrace_worker_cluster_objects") >= n, 60,
                     "Kubernetes objects in the worker's index", [worker])
        cluster, events = _live_events(requests, rate)  # fresh wall-clock times after the wait
        worker_arrivals: dict = {}

        async def drive_worker():
            from svctrace.kafka.clients import producer
            from svctrace.schemas.models import encode_batch

            stop = asyncio.Event()
            collector = asyncio.create_task(_collect(bootstrap, prefix, worker_arrivals, stop))
            p = producer(bootstrap, linger_ms=0)
            await p.start()
            seq = {}

            async def emit(chunk):
                for b in P.batches_of(chunk, BATCH_EVENTS):
                    seq[b.node] = seq.get(b.node, -1) + 1
                    b = b.__class__(node=b.node, source=b.source, seq=seq[b.node], events=b.events)
                    await p.send(topic_name("svctrace.syscalls", prefix), encode_batch(b), key=b.node.encode())

            await _paced(events, emit)
            await p.stop()
            deadline = time.monotonic() + 60
            while time.monotonic() < deadline and sum(k[0] == "chain" for k in worker_arrivals) < requests:
                await asyncio.sleep(0.1)
            stop.set()
            await collector

        asyncio.run(drive_worker())
    finally:
        worker.stop()

    # The in-process runner, fed the same kind of stream at the same pace.
    cluster, events = _live_events(requests, rate)
    runner = Runner(ClusterIndex.from_records(cluster.records()))
    inproc: dict = {}

    async def drive_inproc():
        async def emit(chunk):
            runner.feed(chunk)
            runner.step()
            now = time.time_ns()
            for ch in runner.chains:
                inproc.setdefault(("chain", ch["chain_id"]), (now, ch["end_ts"]))
            for a in runner.alerts.values():
                last = max(e["ts"] for e in a["evidence"]) if a["evidence"] else a["last_seen"]
                inproc.setdefault(("alert", a["alert_id"]), (now, last))
        await _paced(events, emit)
        # keep the event-time clock moving like a live node would (idle ticks)
        end = time.monotonic() + 8
        while time.monotonic() < end:
            runner.clock = time.time_ns()
            runner.advance(runner.clock - runner.lateness_ns)
            await emit([])

    asyncio.run(drive_inproc())

    def lat(arr, kind):
        return [(now - last) / 1e9 for (k, _), (now, last) in arr.items() if k == kind]

    print(f"latency: {requests} faulty requests at {rate:g}/s, wall-clock event times, 1 worker")
    for kind in ("chain", "alert"):
        w, i = lat(worker_arrivals, kind), lat(inproc, kind)
        print(f"  {kind}s received: worker {len(w)}, in-process {len(i)}")
        row(f"{kind} latency p50", pct(w, 50), pct(i, 50), "s", "{:.3f}")
        row(f"{kind} latency p99", pct(w, 99), pct(i, 99), "s", "{:.3f}")
    w_alert = lat(worker_arrivals, "alert")
    print(f"  target p99 syscall -> alert <= {TARGET_P99_S:g} s: "
          f"{'met' if w_alert and pct(w_alert, 99) <= TARGET_P99_S else 'NOT met'}")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--requests", type=int, default=6000, help="throughput workload size (scenario requests)")
    ap.add_argument("--latency-requests", type=int, default=100)
    ap.add_argument("--rate", type=float, default=20.0, help="latency workload: requests per second")
    args = ap.parse_args()
    from tests.harness.kafka import start_private_broker

    external = os.environ.get("SVCTRACE_KAFKA")
    broker = None if external else start_private_broker()
    bootstrap = external or broker.bootstrap
    try:
        with tempfile.TemporaryDirectory(prefix="svctrace-bench-") as tmp:
            throughput(bootstrap, args.requests, Path(tmp))
            latency(bootstrap, args.latency_requests, args.rate, Path(tmp))
    finally:
        if broker is not None:
            broker.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
