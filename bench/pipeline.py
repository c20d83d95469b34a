"""Benchmark of `svctrace worker` (Faust on a real Kafka broker) beside the in-process runner.

    python -m bench.pipeline [--requests N] [--latency-requests N] [--rate R] [--linger S] [--no-claims]
                             [--lateness S] [--settle S] [--profile FILE] [--enriched]
                             [--stages [--compression CODEC]] [--zstd-level N]

Starts its own Apache Kafka broker (lab/kafka; SVCTRACE_KAFKA=host:port uses an existing one).
1. Throughput: the same scenario traffic (bench.core_runner.traffic) through the in-process
   runner and through ONE worker process: once the worker is idle (cluster loaded, every syscalls
   partition at its end), a backlog of agent-sized batches (1000 events per record) is published to
   svctrace.syscalls at once and consumed until the worker has emitted every chain the
   in-process run made (its own counter): every event applied by the stitch stage, not only
   received (a chain comes out once its events are applied and it settled; the stitch work a
   stage does after receiving an event would otherwise fall outside the span, and a handoff
   that receives earlier would look cheaper). Printed: events per CPU-second of the worker process (its
   utime+stime from /proc over that span; the broker and this process are not counted) beside
   the in-process runner's events per CPU-second, the cost per event of each and their
   difference (what the Kafka shell adds per event), and wall-clock rates (noise on a busy
   machine: the broker and the worker share the cores).
2. Latency: faulty traffic stamped with the wall clock, handed to the broker the way an agent
   does (a batch per node every --linger seconds, claiming the node's stream complete up to its cut,
   svctrace-complete, and an empty one for the claim from a node with nothing new; --no-claims: as
   agents before the claims) and to the in-process runner at the same pace (advanced to the claims); for every chain and alert record, arrival on its topic minus the time of its last
   syscall. Each request comes from its own client pod, so every request raises its own alert
   (the alert key is rule + labels). Both runners use the same event-time settings (--lateness,
   --settle; default: the worker's own defaults); they bound the latency from below in both.
   The batches are cut on a fixed grid, the last --tail-age after the last event (default half the
   linger): the last requests' alerts wait about that much more (latency()), the same in every run.
   --latency-dump logs what every chain waited for (`python -m bench.worker_latency --explain FILE`).
--stages runs the throughput worker with CPU clocks on its stages (bench.worker_stages) and prints
each stage's own CPU per event (core, codecs, shell, Faust, aiokafka, the cycle collector's passes,
per thread what no clock covers) and the bytes its sockets moved, beside each core and gc row the
same clock in an in-process run of the same traffic; --compression then swaps the worker producer's codec.
With --stages the latency worker also logs, with the wall clock (bench.worker_latency), the marks it
announces and the stitch stage reads, the chains and alerts it emits, its checkpoints and gc passes:
printed is where a chain's latency goes (last syscall -> emitted -> on its topic; a mark's age when
announced, its trip to the stitch stage).
The worker runs with its default checkpoint interval (the test harness checkpoints more often).
The enriched batches the stitch stage took are counted beside the progress records it read (watermark
announcements without data); a worker's own partitions take their batches directly, without a record
(--stages: `codec: encode flows` counts the records it wrote, its checkpoints' durable copies).
A worker caught up with a live stream (its state as old as a live worker's, its checkpoints'
steady cost) is bench.worker_steady's measure.
Targets (issue 8): >= 100k events/s per worker; p99 syscall -> alert <= 1 s.
"""
from __future__ import annotations

import argparse
import asyncio
import os
import sys
import tempfile
import time
from dataclasses import replace
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import orjson  # noqa: E402

from bench import worker_latency, worker_stages  # noqa: E402
from bench.core_runner import traffic  # noqa: E402
from svctrace.memory import huge_page_arenas  # noqa: E402
from svctrace.agents.agent.pipeline import COMPLETE_MARGIN_NS, DEFAULT_FORM  # noqa: E402
from svctrace.kafka.admin import topic_name  # noqa: E402
from svctrace.kafka.clients import consumer  # noqa: E402
from svctrace.schemas.catalogue import ALERTS, CHAINS, COMPLETE_HEADER  # noqa: E402
from svctrace.schemas.models import SyscallBatch  # noqa: E402
from svctrace.streams.core import Runner, Settings, run  # noqa: E402
from svctrace.streams.core.runner import fewer_gc_passes  # noqa: E402
from svctrace.streams.faust_app import command as worker_command  # noqa: E402
from svctrace.streams.metadata.index import ClusterIndex  # noqa: E402
from tests import scenario  # noqa: E402
from tests.harness import pipeline as P  # noqa: E402

TARGET_EPS = 100_000
TARGET_P99_S = 1.0
BATCH_EVENTS = 1000  # ~540 B of JSON per event: 2000 would pass the 1 MiB request limit
S = 10**9


def pct(values, q):
    if not values:
        return float("nan")
    values = sorted(values)
    return values[min(len(values) - 1, int(round(q / 100 * (len(values) - 1))))]


def row(label, worker, inproc, unit, fmt="{:,.0f}", ratio=True):
    w = fmt.format(worker) if worker == worker else "n/a"
    i = fmt.format(inproc) if inproc == inproc else "n/a"
    r = f"{worker / inproc:.2f}x" if ratio and inproc and worker == worker and inproc == inproc else ""
    print(f"  {label:<34} worker {w:>10} {unit:<9} in-process {i:>10} {unit:<9} {r}")


def cpu_seconds(pid: int) -> float:
    """utime + stime of a process (all its threads), from /proc."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def load() -> str:
    return "load average " + " ".join(f"{x:.2f}" for x in os.getloadavg())


def worker_defaults() -> argparse.Namespace:
    """`svctrace worker`'s own defaults (what a deployment runs unless told otherwise)."""
    p = argparse.ArgumentParser()
    worker_command.configure(p)
    return p.parse_args([])


def start_worker(bootstrap, prefix, workdir, name, extra, profile=None, enriched=False,
                 stages=None, latency_report=None) -> P.WorkerProcess:
    # The harness checkpoints every 0.5 s (tests); the bench measures the worker's default.
    checkpoint = ["--checkpoint-interval", str(worker_defaults().checkpoint_interval)]
    launcher = (["-m", "bench.worker_stages", stages] if stages else
                ["-m", "bench.worker_latency", latency_report] if latency_report else None)
    worker = P.WorkerProcess(bootstrap, prefix, "bench-" + prefix.strip("."), workdir, name=name,
                             idle_flush=3.0, extra=[*([] if enriched else ["--no-enriched"]), *checkpoint, *extra],
                             launcher=launcher)
    if profile:
        i = worker.cmd.index("-m")
        worker.cmd[i:i] = ["-m", "cProfile", "-o", profile]
    return worker.start()


def core_stages(events, index, settings: Settings) -> dict:
    """The in-process run again, its core stages clocked as the worker's are: {label: [ns, calls]}."""
    uninstall = worker_stages.install("core:")  # and the cycle collector's passes
    worker_stages.STATS.clear()
    try:
        run(events, index, settings)
        return dict(worker_stages.STATS)
    finally:
        uninstall()
        worker_stages.STATS.clear()


def print_stages(report: dict, events: int, cpu: float, inproc: dict | None = None, inproc_events: int = 0) -> None:
    """bench.worker_stages' report: each clocked stage's self CPU per event, and per thread what no
    clock covers (Faust, asyncio, aiokafka outside the clocked calls); beside a core stage, the same
    clock in an in-process run of the same traffic."""
    stages, threads = report["stages"], report["threads"]
    print(f"  stages (self CPU per event over the measured span; {cpu / events * 1e6:.1f} us/event in all"
          f"{'; core stages also in-process, clocked the same way' if inproc else ''}):")
    per_thread: dict[str, int] = {}
    for label, (ns, calls) in sorted(stages.items(), key=lambda item: -item[1][0]):
        thread = label.rsplit(" [", 1)[1][:-1] if label.endswith("]") else "main"
        per_thread[thread] = per_thread.get(thread, 0) + ns
        beside = ""
        if inproc and label in inproc:  # the core and gc rows
            i_ns, i_calls = inproc[label]
            beside = f"   in-process {i_ns / inproc_events / 1e3:7.2f} us  {i_calls:>9,} calls"
        print(f"    {label:<52} {ns / events / 1e3:7.2f} us  {calls:>9,} calls{beside}")
    for thread, ns in sorted(threads.items(), key=lambda item: -item[1]):
        if ns:
            print(f"    thread {thread:<30} {ns / events / 1e3:7.2f} us in all, "
                  f"{(ns - per_thread.get(thread, 0)) / events / 1e3:7.2f} us not clocked")
    heap = report.get("heap")
    if heap:
        print(f"    cycle collector at the end: {heap['frozen']:,} objects frozen, tracked per generation "
              f"{', '.join(f'{n:,}' for n in heap['tracked'])} (thresholds {tuple(heap['threshold'])}); its passes "
              f"in the span found {heap.get('collected', 0):,} objects of cyclic garbage")
    moved = report["bytes"]
    print(f"    sockets: {moved['written'] / events:,.0f} B/event written, {moved['read'] / events:,.0f} B/event read "
          f"(the broker's traffic)")


def throughput(bootstrap: str, requests: int, workdir: Path, settings: Settings, settings_args: list[str],
               profile=None, enriched=False, stages=None) -> None:
    cluster, events = traffic(requests)  # numbered per node across its scenarios, as a capture
    index = ClusterIndex.from_records(cluster.records())
    c, w = time.process_time(), time.perf_counter()
    # lowers the GC's pressure itself, as the worker does
    result = run(events, index, replace(settings, emit_enriched=enriched))
    inproc_cpu, inproc_wall = time.process_time() - c, time.perf_counter() - w
    inproc_stages = core_stages(events, index, replace(settings, emit_enriched=enriched)) if stages else None

    prefix = f"bt{os.getpid()}."
    P.ensure_worker_topics(bootstrap, prefix)
    objects = asyncio.run(P.publish_cluster(bootstrap, prefix, cluster.records()))
    batches = P.batches_of(events, BATCH_EVENTS)
    print(f"throughput: {sum(len(b.events) for b in batches):,} events ({len(result.chains):,} chains) in "
          f"{len(batches):,} records of <= {BATCH_EVENTS} events ({DEFAULT_FORM}, the agents' default form), 1 worker"
          f"{' publishing svctrace.events.enriched' if enriched else ' not publishing svctrace.events.enriched (--no-enriched; the worker publishes it by default: --enriched measures that)'}"
          f", {load()}")
    report_path = workdir / "stages.json" if stages else None
    worker = start_worker(bootstrap, prefix, workdir, "bench-tp", settings_args, profile, enriched,
                          str(report_path) if stages else None)
    try:
        url = worker.metrics_url(timeout=120)
        metric = lambda name, **kw: P.metric_value(url, name, **kw)  # noqa: E731
        events_in = lambda stage: metric("svctrace_worker_events_total", stage=stage)  # noqa: E731
        # The span holds all the work of every event: it starts with the worker idle (its cluster loaded,
        # every syscalls partition heard to its end), then the backlog is published at once (an agent
        # catching up). (Before session 10 it started once a first record had been processed, by when a
        # varying share of the backlog, up to half at 4,000 requests, had gone through enrich unclocked.)
        P.wait_until(lambda: metric("svctrace_worker_cluster_objects") >= objects, 120,
                     "Kubernetes objects in the worker's index", [worker])
        P.wait_until(lambda: metric("svctrace_worker_sources_done") >= settings.partitions, 120,
                     "every syscalls partition at its (empty) end", [worker])
        if stages:
            os.kill(worker.proc.pid, worker_stages.START_SIGNAL)
        cpu0, t0 = cpu_seconds(worker.proc.pid), time.perf_counter()
        sent = asyncio.run(P.publish_batches(bootstrap, prefix, batches))
        P.wait_until(lambda: events_in("enrich") >= sent, 600, "backlog through enrich", [worker])
        t_enrich = time.perf_counter() - t0
        P.wait_until(lambda: events_in("stitch") >= sent, 600, "backlog into stitch", [worker])
        cpu_received = cpu_seconds(worker.proc.pid) - cpu0  # the span's end before session 9 (received)
        chains_out = lambda: metric("svctrace_worker_outputs_total", topic=CHAINS)  # noqa: E731
        P.wait_until(lambda: chains_out() >= len(result.chains), 600, "every chain emitted", [worker])
        cpu, wall = cpu_seconds(worker.proc.pid) - cpu0, time.perf_counter() - t0
        if stages:
            os.kill(worker.proc.pid, worker_stages.REPORT_SIGNAL)
            P.wait_until(report_path.exists, 30, "the worker's stage report", [worker])
            stage_report = orjson.loads(report_path.read_bytes())
        flows_records = metric("svctrace_worker_records_total", stage="stitch")
        progress_records = metric("svctrace_worker_progress_records_total", stage="stitch")
        state_bytes = {stage: metric("svctrace_worker_checkpoint_bytes_total", stage=stage)
                       for stage in ("enrich", "stitch", "alerts")}
        res = asyncio.run(P.read_results(bootstrap, prefix, lambda r: len(r.chains) >= len(result.chains), 120))
    finally:
        worker.stop()
    measured = sent
    print(f"  (worker CPU {cpu:.2f} s over {wall:.2f} s wall, {cpu_received:.2f} s of it when the stitch stage had "
          f"received every event ({measured / cpu_received:,.0f} ev/CPU-s counted to there); in-process CPU {inproc_cpu:.2f} s; "
          f"the stitch stage took {flows_records:,.0f} enriched batches (records of svctrace.flows, or handed directly to its "
          f"own partitions: no record) and read {progress_records:,.0f} progress records; {load()})")
    print(f"  changelog writes (durable state of changed keys): "
          + ", ".join(f"{stage} {n / 1e6:.1f} MB" for stage, n in state_bytes.items())
          + f" ({sum(state_bytes.values()) / sent:,.0f} B per event)")
    if stages:
        print_stages(stage_report, measured, cpu, inproc_stages, len(events))
    row("events per CPU-second", measured / cpu, len(events) / inproc_cpu, "ev/cpu-s")
    w_us, i_us = cpu / measured * 1e6, inproc_cpu / len(events) * 1e6
    row("CPU per event", w_us, i_us, "us", "{:.1f}")
    print(f"  {'Kafka shell adds per event':<34} {w_us - i_us:.1f} us (decode, encode, repartition, "
          f"progress, checkpoints, Faust)")
    row("events/s enrich+stitch (wall)", measured / wall, len(events) / inproc_wall, "ev/s")
    row("events/s enrich stage alone", measured / t_enrich, len(events) / inproc_wall, "ev/s")
    same = set(res.chains) == {c["chain_id"] for c in result.chains}
    print(f"  chains: worker {len(res.chains):,}, in-process {len(result.chains):,}{'' if same else '  (DIFFER)'}")
    eps = measured / cpu
    print(f"  on a backlog (an upper bound: big batches, young state), per CPU-second: {eps / TARGET_EPS:.2f} of the "
          f"target {TARGET_EPS:,} events/s per worker (the in-process core alone: {len(events) / inproc_cpu / TARGET_EPS:.2f}); "
          f"the live figure that counts: bench.worker_steady --rate {TARGET_EPS}")


async def _collect(bootstrap: str, prefix: str, arrivals: dict, stop: asyncio.Event) -> None:
    c = consumer(bootstrap, topic_name(CHAINS, prefix), topic_name(ALERTS, prefix), group_id=None)
    await c.start()
    try:
        while not stop.is_set():
            for tp, records in (await c.getmany(timeout_ms=20)).items():
                now = time.time_ns()
                for r in records:
                    doc = orjson.loads(r.value)
                    if tp.topic.endswith(CHAINS):
                        arrivals.setdefault(("chain", doc["chain_id"]), (now, doc["end_ts"]))
                    else:
                        arrivals.setdefault(("alert", doc["alert_id"]), (now, _alert_last(doc)))
    finally:
        await c.stop()


def _alert_last(doc: dict) -> int:
    return max(e["ts"] for e in doc["evidence"]) if doc["evidence"] else doc["last_seen"]


def _live_events(requests: int, rate: float, lead_s: float = 2.0):
    """Requests with wrong-port faults, each from its own client pod (its own alert), at `rate`/s,
    stamped with the wall clock from `lead_s` on."""
    gap_ns = int(S / rate)
    start = time.time_ns() + int(lead_s * S)
    cluster = scenario.Cluster("wrong_port")
    for i in range(requests):
        cluster.pods[f"client-{i}"] = scenario.Pod(f"client-{i}", f"10.244.{1 + i // 250}.{1 + i % 250}", "node-a",
                                                   labels={"run": "client"}, container_id=f"c11e{i:08d}")
    sc = scenario.Scenario(cluster, "userspace")
    for i in range(requests):
        sc.request(start + i * gap_ns, "wrong_port", client_pod=f"client-{i}")
    return cluster, sorted(sc.events(), key=lambda e: e.ts)


async def _paced(events, emit, linger_s: float, sent: list | None = None, tail_s: float | None = None) -> None:
    """Hand events to `emit` in batches, as an agent does: every `linger_s`, what happened since
    (`sent` gets (wall ns, the newest event's time) of each batch). With `tail_s`, on a fixed grid: the
    last batch cut `tail_s` after the last event, the others every linger_s before it, whatever the
    set-up took and however long each batch took to send (else every linger_s from the call on, a
    phase that varied from run to run and from build to build: see latency())."""
    i = 0
    step = int(linger_s * S)
    anchor = events[-1].ts + int(tail_s * S) if tail_s is not None and events else None
    while i < len(events):
        now = time.time_ns()
        if anchor is not None:
            now = anchor + (now - anchor) // step * step  # the grid point just passed
        j = i
        while j < len(events) and events[j].ts <= now:
            j += 1
        if j > i:
            await emit(events[i:j], now)
            if sent is not None:
                sent.append((now, events[j - 1].ts))
            i = j
        if anchor is None:
            await asyncio.sleep(linger_s)
        else:
            await asyncio.sleep(max(0.0, (now + step - time.time_ns()) / S))


def latency(bootstrap: str, requests: int, rate: float, linger_s: float, settings: Settings,
            settings_args: list[str], workdir: Path, profile=None, stages: bool = False, dump=None,
            tail_s: float | None = None, claims_on: bool = True) -> None:
    """The last requests' alerts wait longer: a source's mark follows its newest event's time plus the time
    since its last record was taken (Worker._advance_idle), so once the agents go quiet the marks trail the
    wall clock by the last batch's age, the time from the last event to the batch's cut (0..linger), and
    the chains whose settle ends after that last event - lateness (the requests of the last lateness +
    settle of traffic) come out that much later. That age was the phase of a free-running pacer: it varied
    from run to run (0.04-0.17 s) and, through the bench process's own pacing (each batch ~1 ms later
    than the last with the dataclass SyscallEvent, less with the Struct), from build to build; it is
    `tail_s` now (default: half the linger), the same for every run and build."""
    prefix = f"bl{os.getpid()}."
    P.ensure_worker_topics(bootstrap, prefix)
    partitions = settings.partitions
    logged = stages or dump is not None
    report_path = workdir / "latency.json" if logged else None
    worker = start_worker(bootstrap, prefix, workdir, "bench-lat", settings_args, profile,
                          latency_report=str(report_path) if logged else None)
    try:
        url = worker.metrics_url(timeout=120)
        built = time.monotonic()
        cluster, events = _live_events(requests, rate)
        # (the first requests must not be past when their batches go out: building 1000 took 4.7-8.2 s on a busy host)
        lead_s = 2.0 + 2 * (time.monotonic() - built)
        n = asyncio.run(P.publish_cluster(bootstrap, prefix, cluster.records()))
        P.wait_until(lambda: P.metric_value(url, "svctrace_worker_cluster_objects") >= n, 60,
                     "Kubernetes objects in the worker's index", [worker])
        # A running deployment has long heard from every partition: start once all of them have
        # announced their (empty) end of input, so no stitch partition waits for one not yet heard.
        deadline = time.monotonic() + 30  # a worker without this gauge just gets the time to say it
        while time.monotonic() < deadline and P.metric_value(url, "svctrace_worker_sources_done") < partitions:
            worker.check_alive()
            time.sleep(0.2)
        cluster, events = _live_events(requests, rate, lead_s)  # fresh wall-clock times after the wait
        last_ts = events[-1].ts
        worker_arrivals: dict = {}
        paced: list = []
        cpu0 = cpu_seconds(worker.proc.pid)

        async def drive_worker():
            from svctrace.kafka.clients import producer
            from svctrace.agents.agent.pipeline import encode_syscall_batch  # the agents' default form

            stop = asyncio.Event()
            collector = asyncio.create_task(_collect(bootstrap, prefix, worker_arrivals, stop))
            p = producer(bootstrap, linger_ms=0)
            await p.start()
            seq = {}

            async def send(b, claim):
                seq[b.node] = seq.get(b.node, -1) + 1
                b = b.__class__(node=b.node, source=b.source, seq=seq[b.node], events=b.events)
                await p.send(topic_name("svctrace.syscalls", prefix), encode_syscall_batch(b), key=b.node.encode(),
                             headers=claim if claims_on else None)

            async def quiet(nodes, now):  # live agents with nothing to send: an empty record for the claim
                if claims_on:
                    for node in nodes:
                        await send(SyscallBatch(node=node, source="ebpf", seq=0, events=[]),
                                   [(COMPLETE_HEADER, b"%d" % (now - COMPLETE_MARGIN_NS))])

            async def emit(chunk, now):
                batches = P.batches_of(chunk, BATCH_EVENTS)
                claims = P.claim_headers(batches, lambda b: now, whole=True)  # (chunk: every event up to now)
                for b, claim in zip(batches, claims):
                    await send(b, claim)
                await quiet(seq.keys() - {b.node for b in batches}, now)

            await _paced(events, emit, linger_s, paced, tail_s)
            deadline = time.monotonic() + 60
            while time.monotonic() < deadline and (sum(k[0] == "chain" for k in worker_arrivals) < requests
                                                   or sum(k[0] == "alert" for k in worker_arrivals) < requests):
                await quiet(list(seq), time.time_ns())  # (every event is out)
                await asyncio.sleep(linger_s)
            await p.stop()
            stop.set()
            await collector

        t0 = time.monotonic()
        asyncio.run(drive_worker())
        worker_cpu, worker_wall = cpu_seconds(worker.proc.pid) - cpu0, time.monotonic() - t0
        if logged:
            os.kill(worker.proc.pid, worker_latency.REPORT_SIGNAL)
            P.wait_until(report_path.exists, 30, "the worker's latency report", [worker])
            latency_report = orjson.loads(report_path.read_bytes())
    finally:
        worker.stop()

    # The in-process runner, fed the same kind of stream at the same pace, with the same settings;
    # when nothing arrives its clock follows the wall clock (as the worker's does for a live source).
    cluster, events = _live_events(requests, rate, lead_s)
    runner = Runner(ClusterIndex.from_records(cluster.records()), settings)
    inproc: dict = {}

    def collect():
        now = time.time_ns()
        for ch in runner.chains:
            inproc.setdefault(("chain", ch["chain_id"]), (now, ch["end_ts"]))
        for a in runner.alerts.values():
            inproc.setdefault(("alert", a["alert_id"]), (now, _alert_last(a)))

    async def drive_inproc():
        async def emit(chunk, now):
            runner.feed(chunk)
            runner.step()
            if claims_on:  # (the agents' claim: every event up to `now` is in)
                runner.advance(now - COMPLETE_MARGIN_NS)
            collect()

        paced_all = asyncio.Event()

        async def idle_clock():
            while len([k for k in inproc if k[0] == "chain"]) < requests:
                await asyncio.sleep(0.1)
                if runner.clock is None:
                    continue
                if not claims_on:
                    runner.advance(time.time_ns() - runner.lateness_ns)
                elif paced_all.is_set():  # (the agents' empty records: every event is in; before, emit claims)
                    runner.advance(time.time_ns() - COMPLETE_MARGIN_NS)
                collect()

        ticker = asyncio.create_task(idle_clock())
        await _paced(events, emit, linger_s, None, tail_s)
        paced_all.set()
        try:
            await asyncio.wait_for(ticker, 60)
        except asyncio.TimeoutError:
            pass

    with fewer_gc_passes():
        asyncio.run(drive_inproc())

    def lat(arr, kind):
        return [(now - last) / 1e9 for (k, _), (now, last) in arr.items() if k == kind]

    pacing = "free-running" if tail_s is None else f"the last cut {tail_s:g} s after the last event"
    claiming = "claiming completeness" if claims_on else "claiming nothing (as agents before completeness claims)"
    print(f"latency: {requests} faulty requests at {rate:g}/s (one alert each), agent batches every {linger_s:g} s "
          f"({pacing}; {claiming}), "
          f"lateness {settings.enrich_lateness_ns / S:g} s, settle {settings.settle_ns / S:g} s, 1 worker, {load()}")
    print(f"  (worker CPU {worker_cpu:.2f} s over {worker_wall:.1f} s of live traffic and its tail)")
    for kind in ("chain", "alert"):
        w, i = lat(worker_arrivals, kind), lat(inproc, kind)
        print(f"  {kind}s received: worker {len(w)}, in-process {len(i)}")
        row(f"{kind} latency p50", pct(w, 50), pct(i, 50), "s", "{:.3f}")
        row(f"{kind} latency p99", pct(w, 99), pct(i, 99), "s", "{:.3f}")
        row(f"{kind} latency max", max(w, default=float("nan")), max(i, default=float("nan")), "s", "{:.3f}")
    # The alerts of the requests in the last lateness + settle of traffic: their chains' deadlines only
    # the idle marks pass, which trail the wall clock by the last batch's age (see the docstring).
    tail_from = last_ts - settings.enrich_lateness_ns - settings.settle_ns
    w_tail = [(now - last) / S for (k, _), (now, last) in worker_arrivals.items() if k == "alert" and last >= tail_from]
    w_rest = [(now - last) / S for (k, _), (now, last) in worker_arrivals.items() if k == "alert" and last < tail_from]
    if w_tail and w_rest:
        age = f"{(paced[-1][0] - paced[-1][1]) / S:.3f} s" if paced else "?"
        print(f"  worker alerts of the last {(last_ts - tail_from) / S:g} s of requests ({len(w_tail)}; the last batch "
              f"cut {age} after the last event): p50 {pct(w_tail, 50):.3f} s, max {max(w_tail):.3f} s; "
              f"the others: p50 {pct(w_rest, 50):.3f} s, p99 {pct(w_rest, 99):.3f} s, max {max(w_rest):.3f} s")
    w_alert = lat(worker_arrivals, "alert")
    if dump is not None:
        Path(dump).write_bytes(orjson.dumps({
            "settings": {"lateness": settings.enrich_lateness_ns, "settle": settings.settle_ns, "rate": rate,
                         "linger": linger_s, "requests": requests},
            "report": latency_report, "worker": [[*k, *v] for k, v in worker_arrivals.items()],
            "inproc": [[*k, *v] for k, v in inproc.items()], "paced": paced}))
    floor = (settings.enrich_lateness_ns + settings.settle_ns) / S
    if claims_on:  # a chain's end + settle passed once every node's claim is: its next batch's, at the latest
        low = (settings.settle_ns + COMPLETE_MARGIN_NS) / S
        print(f"  event-time floor (settle + the claims' margin, + up to a batch interval): {low:g}-{low + linger_s:g} s "
              f"(agents claiming nothing: lateness + settle, {floor:g} s)")
    else:
        print(f"  event-time floor (lateness + settle): {floor:g} s")
    if stages:
        worker_latency.print_breakdown(worker_latency.breakdown(latency_report, worker_arrivals, "svctrace.flows"))
    print(f"  target p99 syscall -> alert <= {TARGET_P99_S:g} s: "
          f"{'met' if w_alert and pct(w_alert, 99) <= TARGET_P99_S else 'NOT met'}")


def main() -> int:
    print(f"huge page arenas: {huge_page_arenas()}", flush=True)  # (as the worker; SVCTRACE_HUGE_PAGES=0: off)
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--requests", type=int, default=6000, help="throughput workload size (scenario requests)")
    ap.add_argument("--latency-requests", type=int, default=100)
    ap.add_argument("--rate", type=float, default=20.0, help="latency workload: requests per second")
    ap.add_argument("--linger", type=float, default=0.2, help="latency workload: agent batch interval (s)")
    ap.add_argument("--tail-age", type=float,
                    help="latency workload: the agents' last batch is cut this long (0..linger s) after the last "
                         "event, the others every linger before it: the last requests' alerts wait about that much "
                         "more (default: half the linger)")
    ap.add_argument("--free-pacing", action="store_true",
                    help="latency workload: batches every linger from whenever the set-up ended (before session 15: a "
                         "tail age that varied from run to run and build to build)")
    defaults = worker_defaults()
    ap.add_argument("--lateness", type=float, default=defaults.lateness,
                    help="event-time lateness (s), both runners: agent batch interval + transport + clock skew "
                         "(default: the worker's default)")
    ap.add_argument("--settle", type=float, default=defaults.settle,
                    help="chain settle time (s), both runners (default: the worker's default)")
    ap.add_argument("--profile", help="run the throughput worker under cProfile, writing this file")
    ap.add_argument("--profile-latency", help="run the latency worker under cProfile, writing this file")
    ap.add_argument("--enriched", action="store_true",
                    help="throughput: the worker also publishes svctrace.events.enriched (its default; the bench "
                         "measures without it by default, as the in-process runner does)")
    ap.add_argument("--stages", action="store_true",
                    help="throughput: clock the worker's stages (bench.worker_stages) and print their CPU per event "
                         "(the clocks add a little CPU of their own)")
    ap.add_argument("--compression", choices=("zstd", "lz4", "snappy", "gzip", "none"),
                    help="with --stages: the worker producer's codec instead of its own (to compare CPU and bytes)")
    ap.add_argument("--zstd-level", type=int,
                    help="throughput: the worker's --zstd-level (default: the worker's own)")
    ap.add_argument("--latency-dump", metavar="FILE",
                    help="log the latency worker's waits (bench.worker_latency) and write them with every chain's "
                         "and alert's arrival to FILE (JSON; `python -m bench.worker_latency --explain FILE`)")
    ap.add_argument("--no-claims", action="store_true",
                    help="latency workload: agents claim no completeness (svctrace-complete), as before they did: "
                         "every runner waits out the lateness")
    ap.add_argument("--skip-throughput", action="store_true")
    ap.add_argument("--skip-latency", action="store_true")
    args = ap.parse_args()
    if args.compression:
        if not args.stages:
            ap.error("--compression needs --stages")
        os.environ[worker_stages.COMPRESSION_ENV] = args.compression
    settings = worker_command.event_time_settings(args.lateness, args.settle)
    settings_args = ["--lateness", str(args.lateness), "--settle", str(args.settle)]
    from tests.harness.kafka import start_private_broker

    external = os.environ.get("SVCTRACE_KAFKA")
    broker = None if external else start_private_broker()
    bootstrap = external or broker.bootstrap
    try:
        with tempfile.TemporaryDirectory(prefix="svctrace-bench-") as tmp:
            if not args.skip_throughput:
                level = [] if args.zstd_level is None else ["--zstd-level", str(args.zstd_level)]
                throughput(bootstrap, args.requests, Path(tmp), settings, settings_args + level, args.profile,
                           args.enriched, args.stages)
            if not args.skip_latency:
                latency(bootstrap, args.latency_requests, args.rate, args.linger, settings, settings_args, Path(tmp),
                        args.profile_latency, args.stages, args.latency_dump,
                        None if args.free_pacing else args.linger / 2 if args.tail_age is None else args.tail_age,
                        not args.no_claims)
    finally:
        if broker is not None:
            broker.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
