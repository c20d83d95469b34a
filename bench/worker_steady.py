"""Benchmark of ONE `svctrace worker` in a steady state: a live stream at a fixed rate that it keeps up with.

    python -m bench.worker_steady [--rate EV_PER_S] [--warmup S] [--span S] [--checkpoint-interval S]
                                  [--enriched] [--all-stages] [--no-claims]

Starts its own Apache Kafka broker (lab/kafka; SVCTRACE_KAFKA=host:port uses an existing one), like
bench.pipeline. The bench traffic's mix (bench.core_runner.traffic, "mixed": curl-like requests in the three
translation modes and keep-alive connections, half of the requests each) runs all its parts at once, stamped
with the wall clock, at --rate events per second, and is published as live agents do: each node's events
in batches of 0.2 s of event time, sent 0.2 s after their first event, written by the agent's own encoder in
its default form (agents.agent.pipeline.encode_syscall_batch: the syscall-columns msgpack form), each with the
completeness its agent claims (svctrace-complete; --no-claims: none, as agents before it). The worker (its stages clocked by
bench.worker_stages, its default checkpoint interval unless told) first takes --warmup seconds of it, long
enough for its state to hold what a live worker keeps (DNS lookups and answers up to the lookup timeout,
12 s, connections while open); then over the next --span seconds of publishing are measured: the worker's
CPU (utime+stime from /proc) per event published in the span and events per CPU-second, the checkpoints'
own clocked rows (dumps_state: the durable state of every changed key, written whole; copies; all
`checkpoint:` rows together) and the changelog bytes they wrote, the worker's RSS at the end (and its peak),
chain latency (arrival on svctrace.chains minus the chain's last syscall) of the chains that ended in the
span; after the span it waits for every chain (or, once the worker has taken every event, until neither a chain
nor an event into stitch has come for 10 s; at most 300 s) and lists the chains still outstanding then, against
the in-process run's, with whether the worker was still behind (late) or done (lost); beside them the in-process runner on the same events (one run() over all of them: no checkpoints, no
Kafka; no live pacing, so no latency figure of its own: the event-time floor is printed instead).
The defaults run in about a minute; the checkpoints in the span are few (6-7 at the default 3 s), and one
under way at either end of it falls on one side: a longer --span gives steadier checkpoint figures.
--all-stages prints every clocked stage (as bench.pipeline --stages does), not only the checkpoint's.

Why beside bench.pipeline: its throughput run is a backlog caught up in a few seconds, so its state is
young and 1-2 checkpoints fall in its span. A live worker rewrites each changed stitch key's durable state
whole at every checkpoint, and that state is what the key keeps for its flows' later events: its cost per
event is about (seconds retained x bytes per event retained) / checkpoint interval, whatever the rate, and
only a run like this one shows it.
Targets (issue 8): >= 100k events/s per worker: at --rate 100000, a worker that keeps up (what it has not
taken at the span's end is at most KEPT_UP_LAG_S of traffic) at >= 100k events per CPU-second.
"""
from __future__ import annotations

import argparse
import asyncio
import os
import platform
import sys
import tempfile
import time
from bisect import bisect_right
from dataclasses import replace
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import orjson  # noqa: E402

from bench import worker_stages  # noqa: E402
from bench.pipeline import TARGET_EPS, _collect, cpu_seconds, load, pct, print_stages, row, worker_defaults  # noqa: E402
from svctrace.memory import huge_page_arenas  # noqa: E402
from svctrace.agents.agent.pipeline import COMPLETE_MARGIN_NS, DEFAULT_FORM  # noqa: E402
from svctrace.schemas.models import SyscallEvent  # noqa: E402
from svctrace.streams.core import run  # noqa: E402
from svctrace.streams.faust_app import command as worker_command  # noqa: E402
from svctrace.streams.metadata.index import ClusterIndex  # noqa: E402
from tests.harness import pipeline as P  # noqa: E402
from tests.scenario import MS, S, steady_cluster, steady_traffic  # noqa: E402

LINGER_NS = 200 * MS  # an agent's batch interval

BATCH_EVENTS = 1000  # and its largest batch (bench.pipeline's)
# Kept up: at the span's end, what the worker has not taken yet is at most this much of the stream's traffic
# (an agent's batch waits 0.2 s, then a fetch; more is a backlog it works through).
KEPT_UP_LAG_S = 1.0
TAIL_QUIET, TAIL_MAX = 10.0, 300.0  # the tail: quiet this long once enrich took every event ends it; at most


def main() -> int:
    print(f"huge page arenas: {huge_page_arenas()}", flush=True)  # (as the worker; SVCTRACE_HUGE_PAGES=0: off)
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    defaults = worker_defaults()
    ap.add_argument("--rate", type=float, default=10_000, help="events per second, all nodes together")
    ap.add_argument("--warmup", type=float, default=15.0, help="seconds of live traffic before the measured span")
    ap.add_argument("--span", type=float, default=20.0, help="seconds of live traffic measured")
    ap.add_argument("--checkpoint-interval", type=float, default=defaults.checkpoint_interval,
                    help="the worker's checkpoint interval (s; default: the worker's default)")
    ap.add_argument("--enriched", action="store_true",
                    help="the worker also publishes svctrace.events.enriched (its default; measured without it "
                         "by default, as the in-process runner and bench.pipeline do)")
    ap.add_argument("--batch-form", choices=("msgpack", "json"), default=None,
                    help="the agents' record form (default: theirs, the syscall-columns form): to compare the two")
    ap.add_argument("--all-stages", action="store_true", help="print every clocked stage, not only the checkpoint's")
    ap.add_argument("--no-claims", action="store_true",
                    help="the agents claim no completeness (svctrace-complete), as before they did")
    args = ap.parse_args()
    settings = worker_command.event_time_settings(defaults.lateness, defaults.settle)
    from tests.harness.kafka import start_private_broker

    external = os.environ.get("SVCTRACE_KAFKA")
    broker = None if external else start_private_broker()
    bootstrap = external or broker.bootstrap
    try:
        with tempfile.TemporaryDirectory(prefix="svctrace-bench-") as tmp:
            steady(bootstrap, args, settings, Path(tmp))
    finally:
        if broker is not None:
            broker.close()
    return 0


def steady(bootstrap: str, args, settings, workdir: Path) -> None:
    seconds = args.warmup + args.span
    cluster = steady_cluster()  # the traffic's (steady_traffic adds no object to it)
    prefix = f"bs{os.getpid()}."
    P.ensure_worker_topics(bootstrap, prefix)
    objects = asyncio.run(P.publish_cluster(bootstrap, prefix, cluster.records()))
    report_path = workdir / "steady.json"
    worker = P.WorkerProcess(bootstrap, prefix, "bench-" + prefix.strip("."), workdir, name="bench-steady",
                             idle_flush=3.0, launcher=["-m", "bench.worker_stages", str(report_path)],
                             extra=[*([] if args.enriched else ["--no-enriched"]),
                                    "--checkpoint-interval", str(args.checkpoint_interval),
                                    "--lateness", str(settings.enrich_lateness_ns / S),
                                    "--settle", str(settings.settle_ns / S)])
    worker.start()
    arrivals: dict = {}
    try:
        # generated while the worker starts (several seconds), stamped with the wall clock once it is ready
        cluster, events, requests = steady_traffic(args.rate, seconds, 0)
        url = worker.metrics_url(timeout=120)
        metric = lambda name, **kw: P.metric_value(url, name, **kw)  # noqa: E731
        P.wait_until(lambda: metric("svctrace_worker_cluster_objects") >= objects, 120,
                     "Kubernetes objects in the worker's index", [worker])
        P.wait_until(lambda: metric("svctrace_worker_sources_done") >= settings.partitions, 120,
                     "every syscalls partition at its (empty) end", [worker])
        shift = time.time_ns() + 2 * S
        set_ts = SyscallEvent.ts.__set__  # in place (~0.1 s; with_ takes seconds): these events are ours alone
        for e in events:
            set_ts(e, e.ts + shift)
        schedule = sorted(((b.events[0].ts + LINGER_NS, b) for b in
                           P.batches_of(events, BATCH_EVENTS, source="ebpf", span_ns=LINGER_NS)), key=lambda x: x[0])
        cut = shift + int(args.warmup * S) + LINGER_NS
        warm, measured = [x for x in schedule if x[0] < cut], [x for x in schedule if x[0] >= cut]
        span_end = measured[-1][0] if measured else cut
        stages = ("enrich", "stitch", "alerts")
        state_bytes = lambda: {s: metric("svctrace_worker_checkpoint_bytes_total", stage=s) for s in stages}  # noqa: E731
        blocking = lambda: _buckets(url, "svctrace_worker_checkpoint_blocking_seconds_bucket")  # noqa: E731

        last_ts = events[-1].ts
        tail: dict = {}

        linger_s = None if args.no_claims else LINGER_NS / S  # (the batches' close, for their claims)

        async def drive():
            stop = asyncio.Event()
            collector = asyncio.create_task(_collect(bootstrap, prefix, arrivals, stop))
            await P.publish_live(bootstrap, prefix, warm, form=args.batch_form, linger_s=linger_s)
            os.kill(worker.proc.pid, worker_stages.START_SIGNAL)
            cpu0, t0, machine0, own0 = cpu_seconds(worker.proc.pid), time.perf_counter(), _machine(), time.process_time()
            ck0, bytes0, blocked0 = metric("svctrace_worker_checkpoints_total"), state_bytes(), blocking()
            stitched0 = metric("svctrace_worker_events_total", stage="stitch")
            n = await P.publish_live(bootstrap, prefix, measured, form=args.batch_form, linger_s=linger_s)
            cpu, wall = cpu_seconds(worker.proc.pid) - cpu0, time.perf_counter() - t0
            busy, ticks = (a - b for a, b in zip(_machine(), machine0))
            tail["machine_busy"], tail["bench_cpu"] = busy / ticks * os.cpu_count(), time.process_time() - own0
            # how far behind the stream the worker is as the span ends: events published, not yet taken
            tail["lag_events"] = len(events) - metric("svctrace_worker_events_total", stage="enrich")
            tail["stitched"] = metric("svctrace_worker_events_total", stage="stitch") - stitched0
            ck, written = metric("svctrace_worker_checkpoints_total") - ck0, state_bytes()  # a few ms
            blocked = {le: n - blocked0.get(le, 0) for le, n in blocking().items()}
            os.kill(worker.proc.pid, worker_stages.REPORT_SIGNAL)
            status = {line.split(":")[0]: int(line.split()[1]) for line in
                      Path(f"/proc/{worker.proc.pid}/status").read_text().splitlines()
                      if line.startswith(("VmRSS", "VmHWM"))}
            # the tail (the worker's clock follows the wall clock once input stops): every chain out, or the
            # worker done (every event taken by enrich) and quiet: neither a new chain nor a new event taken by
            # stitch for TAIL_QUIET s (its idle flush comes after 3 s); at most TAIL_MAX s
            t_end, t_last, seen = time.monotonic() + TAIL_MAX, time.monotonic(), None
            past = False
            while time.monotonic() < t_end:
                worker.check_alive()
                now, got = time.monotonic(), sum(k[0] == "chain" for k in arrivals)
                if got >= requests:
                    break
                progress = (got, metric("svctrace_worker_events_total", stage="stitch"))
                if progress != seen:
                    seen, t_last = progress, now
                past = past or metric("svctrace_worker_events_total", stage="enrich") >= len(events)
                if past and now - t_last >= TAIL_QUIET:
                    tail["quiet"] = True
                    break
                await asyncio.sleep(0.2)
            tail["seconds"] = time.monotonic() - (t_end - TAIL_MAX)
            tail["past_end"] = past or metric("svctrace_worker_events_total", stage="enrich") >= len(events)
            for name in ("late_events", "deadletters", "duplicate_events"):
                for st in ("enrich", "stitch", "alerts"):
                    tail[f"{name}:{st}"] = metric(f"svctrace_worker_{name}_total", stage=st)
            tail["stitch_watermark_ns"] = metric("svctrace_worker_watermark_seconds", stage="stitch") * S
            stop.set()
            await collector
            return n, cpu, wall, ck, {s: written[s] - bytes0[s] for s in stages}, status, blocked

        n, cpu, wall, checkpoints, written, status, blocked = asyncio.run(drive())
        P.wait_until(report_path.exists, 30, "the worker's stage report", [worker])
        report = orjson.loads(report_path.read_bytes())
    finally:
        worker.stop()

    index = ClusterIndex.from_records(cluster.records())
    c = time.process_time()
    result = run(events, index, replace(settings, emit_enriched=args.enriched))
    inproc_cpu = time.process_time() - c

    form = args.batch_form or f"{DEFAULT_FORM}, the agents' default form"
    print(f"steady: {args.rate:,.0f} events/s live ({requests:,} requests of bench.core_runner's mixed traffic over "
          f"{seconds:g} s), each node's events in batches of {LINGER_NS / S:g} s ({form}), 1 worker checkpointing every "
          f"{args.checkpoint_interval:g} s{' publishing' if args.enriched else ' not publishing'} "
          f"svctrace.events.enriched; {args.warmup:g} s warm-up, then {args.span:g} s measured; {load()}")
    print(f"  (Python {platform.python_version()} from {sys._base_executable}: the interpreter's build matters, "
          f"docs/performance.md \"The interpreter\")")
    print(f"  (measured: {n:,} events published in the span; worker CPU {cpu:.2f} s over {wall:.2f} s wall, "
          f"{cpu / wall:.0%} of a core; in-process CPU {inproc_cpu:.2f} s for all {len(events):,} events)")
    print(f"  (the machine meanwhile: {tail['machine_busy']:.2f} of its {os.cpu_count()} cores busy, the worker "
          f"{cpu / wall:.2f}, this bench's publisher and collector {tail['bench_cpu'] / wall:.2f}"
          f"{': every core busy, the worker competed for one' if tail['machine_busy'] > os.cpu_count() - 0.2 else ''})")
    print(f"  checkpoints in the span: {checkpoints:.0f}; changelog writes (durable state of changed keys): "
          + ", ".join(f"{s} {b / 1e6:.1f} MB" for s, b in written.items())
          + f" ({sum(written.values()) / n:,.0f} B per event)")
    rows = report["stages"]
    ckpt = {label: ns for label, (ns, _calls) in rows.items() if label.startswith("checkpoint:")}
    print(f"  checkpoint rows (self CPU per event over the span; {cpu / n * 1e6:.1f} us/event in all):")
    for label in ("checkpoint: dumps_state", "checkpoint: copies"):
        print(f"    {label:<40} {ckpt.get(label, 0) / n / 1e3:7.2f} us  {rows.get(label, [0, 0])[1]:>6,} calls")
    print(f"    {'all checkpoint: rows (' + str(len(ckpt)) + ')':<40} {sum(ckpt.values()) / n / 1e3:7.2f} us  "
          f"({sum(ckpt.values()) / 1e9 / cpu:.0%} of the worker's CPU)")
    if checkpoints:  # a checkpoint under way at either end of the span falls on one side: +-1
        print(f"    per checkpoint: {sum(ckpt.values()) / checkpoints / 1e6:,.0f} ms CPU, "
              f"{sum(written.values()) / checkpoints / 1e6:,.1f} MB written")
    if blocked:  # (a worker without the metric: none)
        steps, below = [], 0.0
        for le, count in blocked.items():
            steps.append(f"{count - below:,.0f} <= {le} s" if le != "+Inf" else f"{count - below:,.0f} longer")
            below = count
        print(f"    steps holding the loop (svctrace_worker_checkpoint_blocking_seconds): {', '.join(steps)}")
    if args.all_stages:
        print_stages(report, n, cpu)
    row("events per CPU-second", n / cpu, len(events) / inproc_cpu, "ev/cpu-s")
    # (events published per CPU-second: a worker behind did not process them all in the span)
    print(f"  {'  (events into stitch, per CPU-s)':<34} {tail['stitched'] / cpu:>10,.0f} ev/cpu-s  "
          f"({tail['stitched']:,.0f} events reached the stitch stage in the span: the work done, kept up or not)")
    w_us, i_us = cpu / n * 1e6, inproc_cpu / len(events) * 1e6
    row("CPU per event", w_us, i_us, "us", "{:.1f}")
    print(f"  {'Kafka shell adds per event':<34} {w_us - i_us:.1f} us (decode, encode, repartition, "
          f"progress, checkpoints, Faust)")
    print(f"  {'worker memory at the end':<34} RSS {status.get('VmRSS', 0) / 1024:,.0f} MiB, "
          f"peak {status.get('VmHWM', 0) / 1024:,.0f} MiB")
    span_start = cut - LINGER_NS
    lat = [(now - end) / S for (kind, _), (now, end) in arrivals.items() if kind == "chain" and span_start <= end < span_end]
    row("chain latency p50 (span)", pct(lat, 50), float("nan"), "s", "{:.3f}")
    row("chain latency p99 (span)", pct(lat, 99), float("nan"), "s", "{:.3f}")
    print_stalls(report.get("stalls"), [(end / S, now / S) for (kind, _), (now, end) in arrivals.items()
                                        if kind == "chain" and span_start <= end < span_end])
    if args.no_claims:
        print(f"  event-time floor (lateness + settle): {(settings.enrich_lateness_ns + settings.settle_ns) / S:g} s")
    else:
        low = (settings.settle_ns + COMPLETE_MARGIN_NS) / S
        print(f"  event-time floor (the agents claiming completeness: settle + the claims' margin, + up to a batch "
              f"interval): {low:g}-{low + LINGER_NS / S:g} s")
    got = {cid for kind, cid in arrivals if kind == "chain"}
    expected = {ch["chain_id"]: ch for ch in result.chains}
    missing, extra = [expected[c] for c in expected.keys() - got], got - expected.keys()
    same = not missing and not extra
    print(f"  chains: worker {len(got):,}, in-process {len(result.chains):,}{'' if same else '  (DIFFER)'}")
    print(f"  tail: {tail['seconds']:.1f} s after the span's end, "
          + ("every chain arrived" if len(got & expected.keys()) == len(expected) else "NOT every chain arrived")
          + "; the worker " + ("had" if tail["past_end"] else "had NOT") + " taken every event (enrich)"
          + f"; stitch watermark - last event = {(tail['stitch_watermark_ns'] - last_ts) / S:+.1f} s; "
          + ", ".join(f"{k} {v:,.0f}" for k, v in tail.items() if ":" in k and v))
    if missing or extra:
        print(f"  chains OUTSTANDING at the end: {len(missing):,} of {len(expected):,} "
              f"({'late: the worker had not taken every event' if not tail['past_end'] else f'the worker had taken every event and was quiet for {TAIL_QUIET:g} s: LOST or held' if tail.get('quiet') else f'the worker had taken every event but was still busy after {TAIL_MAX:g} s: late, or lost'})"
              + (f"; {len(extra):,} not in-process" if extra else ""))
        by: dict = {}
        for ch in missing:
            k = (ch["status"], ch["incomplete_reason"], (ch.get("translation") or {}).get("mode"))
            by[k] = by.get(k, 0) + 1
        for k, c in sorted(by.items(), key=lambda x: -x[1]):
            print(f"    {c:>6,}  status={k[0]} reason={k[1]} translation={k[2]}")
        for ch in sorted(missing, key=lambda ch: ch["end_ts"])[:20]:
            print(f"    {ch['chain_id']}  {ch['status']:<10} end {(ch['end_ts'] - last_ts) / S:+.2f} s from the last event"
                  f", stitch watermark {(tail['stitch_watermark_ns'] - ch['end_ts']) / S:+.2f} s past it"
                  f", client {(ch.get('client') or {}).get('port')}")
        for cid in sorted(extra)[:20]:
            print(f"    extra {cid}")
    lag_s = tail["lag_events"] / args.rate
    kept_up = lag_s <= KEPT_UP_LAG_S
    # a worker behind did not process every event published in the span: count what reached stitch instead
    eps = (n if kept_up else tail["stitched"]) / cpu
    print(f"  {'behind the stream at the end':<34} {tail['lag_events']:,.0f} events published not yet taken "
          f"(enrich), {lag_s:.2f} s of traffic: {'kept up' if kept_up else 'FELL BEHIND'} "
          f"(up to {KEPT_UP_LAG_S:g} s counts as keeping up; a worker behind takes bigger batches, cheaper per event)")
    print(f"  target >= {TARGET_EPS:,} events/s per worker, live: "
          f"{'met' if eps >= TARGET_EPS and kept_up else 'NOT met'} ({eps / TARGET_EPS:.2f} of it per CPU-second"
          f"{'' if kept_up else ', but the worker fell behind this stream'}; the in-process core alone: "
          f"{len(events) / inproc_cpu / TARGET_EPS:.2f})")


def _machine() -> tuple[int, int]:
    """(busy, all) clock ticks of every CPU since boot (/proc/stat)."""
    ticks = [int(x) for x in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    idle = ticks[3] + ticks[4]  # idle, iowait
    return sum(ticks) - idle, sum(ticks)


def _buckets(url: str, name: str) -> dict[str, float]:
    """A histogram's cumulative buckets on a worker's /metrics, {le: count} (one request; none when absent)."""
    import urllib.request

    from prometheus_client.parser import text_string_to_metric_families

    text = urllib.request.urlopen(url, timeout=5).read().decode()
    return {sample.labels["le"]: sample.value for family in text_string_to_metric_families(text)
            for sample in family.samples if sample.name == name}


def print_stalls(stalls: dict | None, chains: list[tuple[float, float]], big_s: float = 0.05) -> None:
    """The worker's event loop over the span (bench.worker_stages): its longest callbacks (wall: every record
    waits behind them; CPU: their own work), the stalls of at least 20 ms by what ran, and the chains
    (last syscall, arrival) whose wait overlapped a stall of at least `big_s`, against the others."""
    if not stalls:
        return
    listed = stalls["list"]
    print(f"  {'loop: longest callback':<34} {stalls['max_wall'] / 1e6:.0f} ms wall, {stalls['max_cpu'] / 1e6:.0f} ms CPU"
          f" (of {stalls['callbacks']:,} callbacks; {len(listed)} of >= 20 ms, {sum(w for _t, w, _c, _l in listed) / 1e9:.2f} s"
          f" in all)")
    by: dict = {}
    for _t, w, c, label in listed:
        b = by.setdefault(label, [0, 0, 0, 0])
        b[0] += 1
        b[1] = max(b[1], w)
        b[2] += w
        b[3] += c
    for label, (n, top, w, c) in sorted(by.items(), key=lambda x: -x[1][2])[:8]:
        print(f"    {n:>4} x, longest {top / 1e6:5.0f} ms, {w / n / 1e6:5.0f} ms wall / {c / n / 1e6:5.0f} ms CPU each: {label}")
    big = sorted((t, t + w / 1e9) for t, w, _c, _l in listed if w >= big_s * 1e9)
    if not chains or not big:
        return
    starts = [b[0] for b in big]
    hit, clear = [], []
    for end, arrived in chains:
        i = bisect_right(starts, arrived)  # the stalls that started before the chain arrived: did one end after its last syscall?
        (hit if any(b[1] > end for b in big[bisect_right(starts, end - 1.0):i]) else clear).append(arrived - end)
    print(f"  chains waiting through a stall >= {big_s * 1e3:.0f} ms: {len(hit):,} of {len(chains):,}, latency p50/p99 "
          f"{pct(hit, 50):.3f}/{pct(hit, 99):.3f} s; the others p50/p99 {pct(clear, 50):.3f}/{pct(clear, 99):.3f} s")


if __name__ == "__main__":
    sys.exit(main())
