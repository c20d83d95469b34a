"""Cross-partition event-time progress (pure): the watermark a downstream partition may use."""
from svctrace.streams.faust_app.progress import (
    DONE, SourceProgress, decode_headers, decode_progress, encode_mark, encode_marks,
)


def test_no_watermark_until_every_source_has_spoken():
    p = SourceProgress(3)
    p.note(0, 100)
    p.note(1, 50)
    assert p.watermark() is None  # source 2 may still send old events
    p.note(2, 70)
    assert p.watermark() == 50


def test_watermark_is_monotonic_per_source_and_done_sources_do_not_hold_back():
    p = SourceProgress(2)
    p.note(0, 100)
    p.note(0, 90)  # a repeated, older announcement (redelivery) does not move it back
    p.note(1, DONE)
    assert p.watermark() == 100
    assert not p.all_done()
    p.note(0, DONE)
    assert p.all_done() and p.should_flush() and p.watermark() is None
    p.mark_flushed()
    assert not p.should_flush()
    p.note(0, 150)  # new data after a flush: active again
    p.data_arrived()
    assert p.watermark() == 150 and not p.should_flush()


def test_state_round_trips_and_headers_decode():
    p = SourceProgress(2)
    p.note(0, 5)
    q = SourceProgress(2, p.state)
    assert q.state == {"src": {"0": 5, "1": None}, "flushed": False, "hi": 5}
    assert decode_headers([("svctrace-src", b"3"), ("svctrace-wm", encode_mark(DONE))]) == (3, DONE)
    assert decode_headers({"svctrace-src": b"1", "svctrace-wm": b"42"}) == (1, 42)
    assert decode_headers(None) == (None, None)


def test_one_record_announces_every_source_of_a_worker_and_the_high_mark_outlives_done():
    headers = [("svctrace-marks", encode_marks({0: 120, 3: DONE}))]
    assert decode_progress(headers) == (None, {0: 120, 3: DONE})
    assert decode_progress([("svctrace-src", b"2"), ("svctrace-wm", b"7")]) == (2, {2: 7})
    assert decode_progress([("svctrace-src", b"2")]) == (2, {})  # a data record: no announcement
    p = SourceProgress(2)
    for source, mark in {0: 120, 1: 90}.items():
        p.note(source, mark)
    p.note(1, DONE)
    p.note(0, DONE)
    assert p.should_flush() and p.watermark() is None
    assert p.high() == 120  # a stage advances to it before flushing (timers in event-time order)


def test_a_checkpoint_writes_durable_state_once_and_acknowledges_only_applied_records():
    """StageShell.snapshot: the operator's durable state (no input buffer: its records stay
    unacknowledged, a successor re-reads them), nothing rewritten that the changelog already has,
    no tombstone for a key it never had; a successor's state is op.restore of what was written."""
    from types import SimpleNamespace

    from svctrace.schemas.models import SyscallBatch
    from svctrace.streams.core import Graph, Settings, dumps_state, loads_state
    from svctrace.streams.faust_app.app import Pending, StageShell
    from tests import scenario

    cluster, events = scenario.build("healthy", "dnat", requests=3)
    node = events[0].node
    mine = [e for e in events if e.node == node]
    op = Graph(cluster.index(), Settings(partitions=1)).enrich
    table = SimpleNamespace(data={})
    shell = StageShell(None, "enrich", op, table, 1, 0)

    def checkpoint(shell):
        writes, acks = shell.snapshot()  # (the store takes the records)
        for _p, key, _value in writes:  # and the broker took them (StageShell.write, confirm)
            shell._unsent.pop(key, None)
        return {key: value for _p, key, value in writes}, acks

    st = shell.state(node)
    op.process(st, node, SyscallBatch(node=node, source="scap", seq=0, events=mine))
    shell.touch(0, node)
    shell.pending.setdefault(0, []).append(Pending("record-1", node, max(e.ts for e in mine)))
    writes, acks = checkpoint(shell)
    assert acks == []  # its events are only buffered
    assert "buf" not in loads_state(writes[node.encode()]) and st["buf"]
    assert b"#0" in writes

    shell.touch(0, node)  # touched, unchanged: nothing to write
    assert checkpoint(shell) == ({}, [])

    op.advance(st, node, max(e.ts for e in mine) + 1)
    shell.touch(0, node)
    writes, acks = checkpoint(shell)
    assert acks == ["record-1"] and node.encode() in writes

    successor = StageShell(None, "enrich", op, table, 1, 0)
    restored = successor.state(node)
    assert restored["wm"] == st["wm"] and restored["buf"] == []
    assert {k: v for k, v in restored.items() if k != "buf"} == loads_state(dumps_state(op.durable(st)))

    shell.touch(0, "never-written")
    shell.drop(0, "never-written")
    shell.drop(0, node)
    writes, _ = checkpoint(shell)
    assert writes.get(node.encode(), b"") is None and b"never-written" not in writes



def test_a_flushed_stitch_partition_says_done_again_after_a_source_was_heard_again_with_an_old_mark():
    """A log a successor reads may hold a source's old mark after its DONE (marks of two owners, or
    durable marks behind the ones a worker took at once). The stitch partition, flushed already, then
    announces that mark downstream; when the source is DONE again it must say DONE again too, or the
    alerts stage waits for it and never emits its final records."""
    import asyncio
    from types import SimpleNamespace

    from svctrace.streams.core.stitch import OCCURRENCES_TOPIC
    from svctrace.streams.faust_app.app import Worker, WorkerConfig

    worker = Worker(WorkerConfig(bootstrap="127.0.0.1:9"))  # builds the app; connects to nothing
    worker.stitch.table = SimpleNamespace(data={}, changelog_topic=SimpleNamespace(get_topic_name=lambda: "cl"))

    async def sent(downstream=None, force=False):  # the announcements as the broker would take them
        for source, mark in worker.hb_due.pop(OCCURRENCES_TOPIC, {}).items():
            worker.hb_sent[(OCCURRENCES_TOPIC, source)] = mark

    worker._send_announcements = sent
    sources = worker.source_partitions

    async def story():
        await worker._progress(worker.stitch, 0, {q: DONE for q in range(sources)})  # flushed, DONE
        assert worker.hb_sent[(OCCURRENCES_TOPIC, 0)] == DONE
        await worker._progress(worker.stitch, 0, {3: 1_000})  # an old mark of source 3
        await sent()
        assert worker.hb_sent[(OCCURRENCES_TOPIC, 0)] == 1_000
        await worker._progress(worker.stitch, 0, {3: DONE})
        await sent()
        assert worker.hb_sent[(OCCURRENCES_TOPIC, 0)] == DONE

    asyncio.run(story())


def test_own_stitch_partitions_take_marks_between_two_sends_of_them():
    """A mark the enrich stage queues within heartbeat_s of the last send of marks to svctrace.flows
    (a syscalls record's release) is taken at once by this worker's own stitch partitions (the ones
    it hands to directly), or held for the one with a record of ours in flight, without a record;
    it stays queued for the next send (the heartbeat), which announces it to every partition."""
    import asyncio
    import time

    from svctrace.streams.core.enrich import FLOWS_TOPIC
    from svctrace.streams.faust_app.app import Worker, WorkerConfig

    worker = Worker(WorkerConfig(bootstrap="127.0.0.1:9"))  # builds the app; connects to nothing
    taken = []

    async def marks_here(p, marks, revocations):
        taken.append((p, dict(marks)))

    worker._marks_here = marks_here
    worker.flows_read = {0: 5, 1: 3}  # our own partitions: 0 has read back all we sent, 1 has not
    worker.flows_sent = {0: 5, 1: 4}
    worker.hb_last[FLOWS_TOPIC] = time.monotonic()  # marks went out a moment ago

    async def story():
        worker._announce(FLOWS_TOPIC, 3, 1_000)
        await worker._send_announcements(FLOWS_TOPIC)
        assert taken == [(0, {3: 1_000})]
        assert worker.held_marks == {1: {3: 1_000}}
        assert worker.hb_due[FLOWS_TOPIC] == {3: 1_000}  # still to be announced by the next send
        await worker._send_announcements(FLOWS_TOPIC)  # nothing new: not taken again
        assert taken == [(0, {3: 1_000})]
        worker._announce(FLOWS_TOPIC, 3, 2_000)
        worker._announce(FLOWS_TOPIC, 7, 1_500)
        await worker._send_announcements(FLOWS_TOPIC)
        assert taken[1:] == [(0, {3: 2_000, 7: 1_500})]
        assert worker.held_marks == {1: {3: 2_000, 7: 1_500}}
        assert worker.hb_due[FLOWS_TOPIC] == {3: 2_000, 7: 1_500}

    asyncio.run(story())


def test_durable_marks_go_to_the_log_of_a_partition_handed_to_once_each():
    """A partition this worker hands to directly gets, in its log, only marks a checkpoint made durable
    (for a successor). They change at checkpoints only, while marks are announced every tick: each is
    written to a partition's log once (by the checkpoint or the first send of marks after it), not again
    at every tick; after a revocation (a new owner may read that log) once more."""
    import asyncio
    from types import SimpleNamespace

    from svctrace.streams.core.enrich import FLOWS_TOPIC
    from svctrace.streams.faust_app.app import Worker, WorkerConfig
    from svctrace.streams.faust_app.progress import decode_progress

    worker = Worker(WorkerConfig(bootstrap="127.0.0.1:9"))  # builds the app; connects to nothing
    logs: dict[int, list] = {}

    async def send(topic, key, value, partition, timestamp, headers):
        logs.setdefault(partition, []).append(decode_progress(headers)[1])
        delivered = asyncio.get_running_loop().create_future()  # (watched, as every record the worker sends)
        delivered.set_result(None)
        return delivered

    async def marks_here(p, marks, revocations):
        pass

    worker.app.producer = SimpleNamespace(send=send)
    worker._marks_here = marks_here
    worker.flows_read = {0: 5, 1: 5}  # our own partitions, 0 and 1; the others are other workers'
    worker.flows_sent = {0: 5, 1: 5}

    async def tick(marks):
        for source, mark in marks.items():
            worker._announce(FLOWS_TOPIC, source, mark)
        await worker._send_announcements(FLOWS_TOPIC, force=True)

    async def story():
        await tick({3: 1_000})
        assert logs.pop(0, None) is None and logs.pop(1, None) is None  # nothing durable yet
        assert all(got == [{3: 1_000}] for got in logs.values()) and len(logs) == worker.partitions - 2
        logs.clear()
        await worker._durable_marks({3: 1_000})  # a checkpoint
        assert logs == {0: [{3: 1_000}], 1: [{3: 1_000}]}
        logs.clear()
        for mark in (2_000, 3_000, 4_000):  # ticks until the next checkpoint
            await tick({3: mark})
            assert logs.pop(0, None) is None and logs.pop(1, None) is None  # the durable mark is there already
            assert all(got == [{3: mark}] for got in logs.values())
            logs.clear()
        worker.durable_marks = {3: 3_000, 7: 500}  # as a checkpoint notes them (its own records aside)
        await tick({3: 5_000})
        assert logs.pop(0) == [{3: 3_000}] and logs.pop(1) == [{3: 3_000}]  # newer than the log's: written
        logs.clear()
        await tick({3: 6_000, 7: 600})
        assert logs.pop(0) == [{3: 3_000, 7: 500}] and logs.pop(1) == [{3: 3_000, 7: 500}]  # 7's is new
        logs.clear()
        await tick({3: 7_000})
        assert 0 not in logs and 1 not in logs
        await worker._on_revoked(None, [])  # (a rebalance: every log may have a new reader)
        logs.clear()
        await tick({3: 8_000})
        assert logs.pop(0) == [{3: 3_000}] and logs.pop(1) == [{3: 3_000}]

    asyncio.run(story())
