"""The stitch stage's pending events, kept as the runs they came in (stitch._take_ready): an advance takes
the events before its watermark from every run, in event order (ts, node, n), and leaves the others in their
runs, in the order they came."""
from __future__ import annotations

from svctrace.schemas.models import make_event
from svctrace.streams.core.enriched import EnrichedEvent, EventRun, to_wire
from svctrace.streams.core.stitch import Stitcher, _take_ready, pending_events
from tests.scenario import Cluster, T0


def _ev(ts: int, node: str, n: int) -> EnrichedEvent:
    e = make_event(T0 + ts, node, n, 100, 100, "curl", "send", "sendto", 3, 10)
    return EnrichedEvent(e, None, None, None, None, None)


def _run(node: str, *stamps: tuple[int, int]) -> EventRun:
    run = EventRun(_ev(ts, node, n) for ts, n in stamps)
    run.node, run.top = node, max(n for _ts, n in stamps)
    return run


def _ids(events) -> list[tuple[int, str, int]]:
    return [(d.ev.ts - T0, d.ev.node, d.ev.n) for d in events]


def test_an_advance_takes_what_its_watermark_passed_from_every_run_in_event_order():
    op = Stitcher(Cluster().index())
    st = op.new_state()
    b = _run("node-b", (10, 1), (20, 2), (30, 3), (40, 4))
    a = _run("node-a", (5, 1), (20, 2), (35, 3))
    op.process(st, "b0000", {"events": b})
    op.process(st, "b0000", {"events": a})
    # a batch read from a record (not a run: schema dicts, out of order, one event again): sorted as it comes in
    wire = [to_wire(_ev(25, "node-c", 2)), to_wire(_ev(20, "node-c", 1)), to_wire(_ev(20, "node-b", 2))]
    op.process(st, "b0000", {"events": wire})
    assert _ids(pending_events(st)) == [(10, "node-b", 1), (20, "node-b", 2), (30, "node-b", 3), (40, "node-b", 4),
                                        (5, "node-a", 1), (20, "node-a", 2), (35, "node-a", 3),
                                        (20, "node-c", 1), (20, "node-b", 2), (25, "node-c", 2)]

    ready = _take_ready(st, T0 + 30)
    # ties at one time in (node, n) order, the repeat beside its original (the advance counts it once)
    assert _ids(ready) == [(5, "node-a", 1), (10, "node-b", 1), (20, "node-a", 2), (20, "node-b", 2),
                           (20, "node-b", 2), (20, "node-c", 1), (25, "node-c", 2)]
    assert _ids(pending_events(st)) == [(30, "node-b", 3), (40, "node-b", 4), (35, "node-a", 3)]
    assert len(st["runs"]) == 2  # the record's run is used up and gone
    assert _ids(b) == [(10, "node-b", 1), (20, "node-b", 2), (30, "node-b", 3), (40, "node-b", 4)]  # read, never
    # changed: a worker keeps the batches it handed over for its copies

    assert _ids(_take_ready(st, T0 + 36)) == [(30, "node-b", 3), (35, "node-a", 3)]
    assert _ids(_take_ready(st, T0 + 36)) == []
    assert op.deadline(st) == T0 + 40 + 1  # the oldest pending event, read from its run's head
    op.advance(st, "b0000", T0 + 41)
    assert st["runs"] == [] and op.deadline(st) is None


def test_a_state_written_with_a_flat_buffer_takes_it_as_one_run():
    op = Stitcher(Cluster().index())
    st = op.new_state()
    del st["runs"]
    st["buf"] = [_ev(20, "node-a", 2), _ev(10, "node-b", 1)]  # as earlier versions kept it (and wrote it whole)
    op.process(st, "b0000", {"events": _run("node-a", (15, 1))})
    assert "buf" not in st
    assert _ids(_take_ready(st, T0 + 100)) == [(10, "node-b", 1), (15, "node-a", 1), (20, "node-a", 2)]
