"""`svctrace worker` with wall-clock logs of where a chain's and an alert's latency goes
(bench.pipeline --latency-stages).

    python -m bench.worker_latency REPORT.json worker --bootstrap ...

Runs the svctrace CLI with a few functions of the worker wrapped to log, with the wall clock:
each event-time mark the enrich stage announces to the stitch stage (queued, sent, taken by the
stitch stage from its record or at once, as this worker's own partitions do, or by the alerts stage:
matched by source and value), each chain and alert a stage routes (with the
chain's end time), how long route() waited to queue its batches with the producer, the timer's
checkpoint passes and the cycle collector's passes.
REPORT_SIGNAL writes REPORT.json; `breakdown(report, arrivals)` turns it and the bench's arrival
times into the rows bench.pipeline prints. Each log entry is appended to a list: nothing per event.
With bench.pipeline --latency-dump FILE it also logs what each chain waited for (_install_waits), and

    python -m bench.worker_latency --explain FILE...

prints every chain's latency taken apart (explain()) and the latest chains' waits.
"""
from __future__ import annotations

import collections
import gc
import json
import signal
import sys
import time
from pathlib import Path

REPORT_SIGNAL = signal.SIGRTMIN + 3  # worker_stages uses +1 and +2
LOG: list[tuple] = []  # (kind, wall ns, a, b, c)


def install() -> None:
    from svctrace.kafka import batches
    from svctrace.streams.faust_app import app as worker_app

    W = worker_app.Worker
    now = time.time_ns
    announce, send, route, checkpoint = W._announce, W._send_announcements, W.route, W.checkpoint
    marks_here = W._marks_here
    decode_progress = worker_app.decode_progress

    def logged_announce(self, downstream, source, mark):
        if isinstance(mark, int):
            LOG.append(("queued", now(), downstream, source, mark))
        return announce(self, downstream, source, mark)

    async def logged_send(self, downstream=None, force=False):
        due = {topic: dict(marks) for topic, marks in self.hb_due.items()}
        result = await send(self, downstream, force)
        t = now()
        for topic, marks in due.items():
            if self.hb_due.get(topic) != marks:  # went out
                LOG.extend(("sent", t, topic, source, mark) for source, mark in marks.items() if isinstance(mark, int))
        return result

    def logged_decode_progress(headers):
        source, marks = decode_progress(headers)
        t = now()
        LOG.extend(("received", t, "", int(s), mark) for s, mark in (marks or {}).items() if isinstance(mark, int))
        return source, marks

    async def logged_marks_here(self, p, marks, revocations):
        t = now()
        LOG.extend(("here", t, "", int(s), mark) for s, mark in marks.items() if isinstance(mark, int))
        return await marks_here(self, p, marks, revocations)

    async def logged_route(self, stage_name, p, outs):
        t = now()
        for topic, key, value in outs:
            if topic == worker_app.CHAINS_TOPIC:
                LOG.append(("chain", t, key, value.get("end_ts") or 0, 0))
            elif topic == worker_app.ALERTS_TOPIC:
                LOG.append(("alert", t, key, 0, 0))
        return await route(self, stage_name, p, outs)

    async def logged_checkpoint(self):
        t = now()
        result = await checkpoint(self)
        LOG.append(("checkpoint", t, "", 0, now() - t))
        return result

    W._announce, W._send_announcements, W.route, W.checkpoint = (logged_announce, logged_send, logged_route,
                                                                  logged_checkpoint)
    W._marks_here = logged_marks_here
    worker_app.decode_progress = logged_decode_progress
    started: dict[str, int] = {}

    def on_gc(phase, info):
        if phase == "start":
            started["t"] = now()
        elif "t" in started:
            LOG.append(("gc", started["t"], str(info.get("generation")), 0, now() - started.pop("t")))
    gc.callbacks.append(on_gc)
    PartitionBatches = batches.PartitionBatches
    send_batches = PartitionBatches.send

    async def logged_send_batches(self):
        t = now()
        result = await send_batches(self)
        LOG.append(("batches", t, "", 0, now() - t))
        return result
    PartitionBatches.send = logged_send_batches
    _install_waits(W, worker_app, now)


ADVANCING: dict = {}  # stitch partition -> the mark its advance under way goes to (route tags its chains)


def _install_waits(W, worker_app, now) -> None:
    """What a chain waited for (--latency-dump): every stitch watermark advance (when it began, its
    partition and mark, how long it held the loop), each chain tagged with the advance that emitted it,
    the ticks (when each began and how long it took), each live source's idle advance (the fetch time
    it was bounded by, each node's newest event and how long it had been silent), every syscalls
    record the enrich stage took (its node, newest event and when the agent sent it), each checkpoint's
    durable marks (how long they held the flows announcements), and how late the loop ran (a task asking
    to wake every 10 ms: each wake more than 20 ms late is logged)."""
    import asyncio

    StageShell = worker_app.StageShell
    advance_keys, tick, advance_idle, enrich_one = (StageShell.advance_keys, W._tick, W._advance_idle,
                                                    W._enrich_one)
    route = W.route

    async def logged_advance_keys(self, p, marks, default):
        if self.name != "stitch":
            return await advance_keys(self, p, marks, default)
        t = now()
        ADVANCING[p] = default  # (the partition's lock is held: one advance of p at a time)
        try:
            return await advance_keys(self, p, marks, default)
        finally:
            del ADVANCING[p]
            LOG.append(("adv", t, str(p), default, now() - t))

    async def logged_route(self, stage_name, p, outs):
        if stage_name == "stitch":
            mark = ADVANCING.get(p, 0)
            t = now()
            for topic, key, value in outs:
                if topic == worker_app.CHAINS_TOPIC:
                    LOG.append(("chainadv", t, key, mark, p))
        return await route(self, stage_name, p, outs)

    async def logged_tick(self):
        t = now()
        try:
            return await tick(self)
        finally:
            LOG.append(("tick", t, "", 0, now() - t))

    async def logged_advance_idle(self, q, now_s, answering_since, polled_ns):
        clocks = self.enrich.part_meta(q).get("nodes") or {}
        for node, (clock, _) in clocks.items():
            heard = self.heard.get(q, {}).get(node)
            LOG.append(("idle", now(), node, polled_ns,
                        [clock, q, int((now_s - heard.at) * 1e9) if heard is not None else -1]))
        return await advance_idle(self, q, now_s, answering_since, polled_ns)

    async def logged_enrich_one(self, event):
        t = now()
        msg = event.message
        await enrich_one(self, event)
        node = msg.key.decode() if msg.key else ""
        own = (self.enrich.part_meta(msg.partition).get("nodes") or {}).get(node)
        LOG.append(("rec", t, node, msg.partition, [own[0] if own else 0, now() - t, msg.offset,
                                                    int((msg.timestamp or 0) * 1e9)]))

    durable_marks = W._durable_marks

    async def logged_durable_marks(self, announced):
        t = now()
        try:
            return await durable_marks(self, announced)
        finally:
            LOG.append(("durable", t, "", 0, now() - t))

    W._durable_marks = logged_durable_marks
    StageShell.advance_keys = logged_advance_keys
    W.route, W._tick, W._advance_idle, W._enrich_one = logged_route, logged_tick, logged_advance_idle, logged_enrich_one

    async def loop_lag():
        while True:
            t = time.monotonic()
            await asyncio.sleep(0.01)
            late = time.monotonic() - t - 0.01
            if late > 0.02:
                LOG.append(("lag", now() - int(late * 1e9), "", 0, int(late * 1e9)))

    started_lag: list = []
    cluster_ready = W._cluster_ready

    async def logged_cluster_ready(self):
        result = await cluster_ready(self)
        if not started_lag:
            started_lag.append(asyncio.get_running_loop().create_task(loop_lag()))
        return result
    W._cluster_ready = logged_cluster_ready


def _pct(values, q):
    values = sorted(values)
    return values[min(len(values) - 1, int(round(q / 100 * (len(values) - 1))))] if values else float("nan")


def breakdown(report: list, arrivals: dict, flows_topic: str) -> list[tuple[str, list[float]]]:
    """Rows (label, values in s) from a report and the bench's arrivals {(kind, id): (arrival ns, last ns)};
    flows_topic: the stitch stage's input as the worker names it in its announcements (no prefix)."""
    S = 1e9
    emitted_chain, emitted_alert = {}, {}
    for kind, t, key, end, _ in report:
        if kind == "chain":
            emitted_chain.setdefault(key, (t, end))
        elif kind == "alert":
            emitted_alert.setdefault(key, t)
    chain_ts = [t for t, _ in emitted_chain.values()]
    span = (min(chain_ts), max(chain_ts)) if chain_ts else (0, 0)
    within = lambda t: span[0] <= t <= span[1]  # noqa: E731 - while chains come out
    queued: dict = {}
    sent: dict = {}
    received: dict = {}
    here: dict = {}
    for kind, t, topic, source, mark in report:
        if kind == "queued" and topic == flows_topic:
            queued.setdefault((source, mark), t)
        elif kind == "sent" and topic == flows_topic:
            sent.setdefault((source, mark), t)
        elif kind == "received":
            received.setdefault((source, mark), t)
        elif kind == "here":
            here.setdefault((source, mark), t)
    rows = [
        ("chain: last syscall -> stitch emits it",
         [(emitted_chain[cid][0] - emitted_chain[cid][1]) / S for (k, cid) in arrivals if k == "chain" and cid in emitted_chain]),
        ("chain: emitted -> on its topic",
         [(arrivals[(k, cid)][0] - emitted_chain[cid][0]) / S for (k, cid) in arrivals if k == "chain" and cid in emitted_chain]),
        ("alert: last syscall -> alerts stage emits it",
         [(emitted_alert[aid] - arrivals[(k, aid)][1]) / S for (k, aid) in arrivals if k == "alert" and aid in emitted_alert]),
        ("alert: emitted -> on its topic",
         [(arrivals[(k, aid)][0] - emitted_alert[aid]) / S for (k, aid) in arrivals if k == "alert" and aid in emitted_alert]),
        ("mark: its age when announced",
         [(t - mark) / S for (source, mark), t in queued.items() if within(t)]),
        ("mark: queued -> sent", [(sent[k] - t) / S for k, t in queued.items() if k in sent and within(t)]),
        ("mark: queued -> taken by the stitch stage",
         [(min(received.get(k, here.get(k)), here.get(k, received.get(k))) - t) / S
          for k, t in queued.items() if (k in received or k in here) and k in sent and within(t)]),
        ("mark:   of them taken here (no Kafka hop)",
         [(here[k] - t) / S for k, t in queued.items() if k in here and k in sent and within(t)]),
        ("mark:   of them read: sent -> read",
         [(received[k] - t) / S for k, t in sent.items() if k in received and k not in here and within(t)]),
        ("checkpoint pass (wall, awaits included)", [c / S for kind, t, _, _, c in report if kind == "checkpoint" and within(t)]),
        ("route: queueing its batches (producer)", [c / S for kind, t, _, _, c in report if kind == "batches" and within(t)]),
        ("gc pass (any generation)", [c / S for kind, t, _, _, c in report if kind == "gc" and within(t)]),
    ]
    return rows


def print_breakdown(rows) -> None:
    print("  where the worker's latency goes (wall clock, while chains came out):")
    for label, values in rows:
        if values:
            print(f"    {label:<44} p50 {_pct(values, 50):6.3f} s  p99 {_pct(values, 99):6.3f} s  "
                  f"max {max(values):6.3f} s  n {len(values)}")


def main(argv: list[str]) -> int:
    if argv and argv[0] == "--explain":
        import orjson
        for f in argv[1:]:
            print(f)
            explain(orjson.loads(Path(f).read_bytes()))
        return 0
    report = Path(argv[0])
    install()

    def on_report(signum, frame):
        tmp = report.with_suffix(".tmp")
        tmp.write_text(json.dumps(LOG))
        tmp.replace(report)

    signal.signal(REPORT_SIGNAL, on_report)
    from svctrace.cli import main as svctrace_main

    return svctrace_main(argv[1:])


def explain(dump: dict, late_s: float | None = None, show: int = 12) -> None:
    """Every chain's wait from a --latency-dump: settle + (the emitting advance's mark - the chain's
    end - settle: how far that advance overshot) + (when it was emitted - that mark: the mark's age) +
    (on its topic - emitted). Prints the components' spread and the latest chains with what their
    stitch partition and its sources were doing then."""
    S_ = 1e9
    settle, lateness = dump["settings"]["settle"], dump["settings"]["lateness"]
    report = dump["report"]
    arrivals = {(k, i): (a, last) for k, i, a, last in dump["worker"]}
    emitted = {}
    for e in report:
        if e[0] == "chainadv":
            emitted.setdefault(e[2], (e[1], e[3], e[4]))
    advs = collections.defaultdict(list)  # partition -> [(t, wm, dur)]
    for e in report:
        if e[0] == "adv":
            advs[int(e[2])].append((e[1], e[3], e[4]))
    queued = collections.defaultdict(list)  # source -> [(t, mark)] announced to the stitch stage
    for e in report:
        if e[0] == "queued" and e[2] == "svctrace.flows":
            queued[e[3]].append((e[1], e[4]))
    ticks = sorted((e[1], e[4]) for e in report if e[0] == "tick")
    recs = sorted((e[1], e[2], e[3], e[4]) for e in report if e[0] == "rec")
    stalls = sorted((e[1], e[4], e[0]) for e in report if e[0] in ("lag", "gc", "checkpoint"))
    rows = []
    for (kind, cid), (arr, end) in arrivals.items():
        if kind != "chain" or cid not in emitted:
            continue
        t, wm, p = emitted[cid]
        rows.append((arr - end, cid, end, t, wm, p, arr))
    rows.sort()
    if not rows:
        print("no chains")
        return
    t0 = min(r[2] for r in rows)

    def spread(label, xs):
        xs = sorted(xs)
        print(f"  {label:<46} p50 {_pct(xs, 50):6.3f}  p90 {_pct(xs, 90):6.3f}  p99 {_pct(xs, 99):6.3f}  "
              f"max {xs[-1]:6.3f} s")
    print(f"{len(rows)} chains; latency = settle {settle / S_:g} s + overshoot + mark age + to the topic")
    spread("latency (on its topic - chain end)", [r[0] / S_ for r in rows])
    spread("overshoot (advance's mark - end - settle)", [(r[4] - r[2] - settle) / S_ for r in rows])
    spread("mark age (emitted - advance's mark)", [(r[3] - r[4]) / S_ for r in rows])
    spread("  of it beyond the lateness", [(r[3] - r[4] - lateness) / S_ for r in rows])
    spread("emitted -> on its topic", [(r[6] - r[3]) / S_ for r in rows])
    # "tail": the chains whose deadline (end + settle) no record's own mark (its newest event - lateness)
    # reached: only the ticks' idle marks moved past it, after the last records
    newest = max((c[0] for _, _, _, c in recs), default=0)
    tail_from = newest - lateness - settle
    parts = (("steady", [r for r in rows if r[2] < tail_from]), ("tail", [r for r in rows if r[2] >= tail_from]))
    for label, part in parts:
        if part:
            spread(f"{label} ({len(part)}): latency", [r[0] / S_ for r in part])
            spread(f"{label}: mark age beyond the lateness", [(r[3] - r[4] - lateness) / S_ for r in part])
    for node in sorted({n for _, n, _, _ in recs}):
        own = [(tt, c) for tt, n, q, c in recs if n == node]
        ages = [(tt - c[0]) / S_ for tt, c in own]
        print(f"  {node}: {len(own)} records; newest event's age when taken p50 {_pct(ages, 50):.3f} "
              f"max {max(ages):.3f} s, the last record's {ages[-1]:.3f} s")
    late = [r for r in rows if late_s is not None and r[0] >= late_s * S_] or rows[-show:]
    print(f"  the latest {len(late)} (times from the first chain's end, s):")
    for lat, cid, end, t, wm, p, arr in late:
        before = [a for a in advs[p] if a[0] < t and a[1] < wm]
        prev = before[-1] if before else None
        need = end + settle
        # the first moment any announced mark of a source reached the chain's deadline
        reach = {q: next((tq for tq, m in qs if m >= need), None) for q, qs in queued.items()}
        print(f"   {cid} latency {lat / S_:.3f}: end {(end - t0) / S_:7.3f} deadline {(need - t0) / S_:7.3f}  "
              f"emitted {(t - t0) / S_:7.3f} by p{p} advance to {(wm - t0) / S_:7.3f} "
              f"(prev advance {((prev[0] - t0) / S_) if prev else float('nan'):7.3f} to "
              f"{((prev[1] - t0) / S_) if prev else float('nan'):7.3f}), on topic {(arr - t0) / S_:7.3f}")
        print("      sources' marks first past the deadline at: " + ", ".join(
            f"q{q} {((tq - t0) / S_):7.3f}" if tq else f"q{q} never" for q, tq in sorted(reach.items())))
        near = [f"{(tt - t0) / S_:.3f}+{d / S_:.3f}" for tt, d in ticks if need - 0.05 * S_ <= tt - lateness <= t]
        print(f"      ticks (start+took) from deadline+lateness-0.05 to the emission: {' '.join(near)}")
        rs = [f"{n}@{(tt - t0) / S_:.3f}(newest {(c[0] - t0) / S_:.3f})" for tt, n, q, c in recs
              if need - 0.1 * S_ <= tt - lateness <= t]
        print(f"      syscalls records taken: {' '.join(rs)}")
        st = [f"{k}@{(tt - t0) / S_:.3f}+{d / S_:.3f}" for tt, d, k in stalls if t - 0.5 * S_ <= tt <= t]
        if st:
            print(f"      stalls in the 0.5 s before: {' '.join(st)}")


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
