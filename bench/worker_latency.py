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
"""
from __future__ import annotations

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
    report = Path(argv[0])
    install()

    def on_report(signum, frame):
        tmp = report.with_suffix(".tmp")
        tmp.write_text(json.dumps(LOG))
        tmp.replace(report)

    signal.signal(REPORT_SIGNAL, on_report)
    from svctrace.cli import main as svctrace_main

    return svctrace_main(argv[1:])


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
