"""Cross-partition event-time progress (pure): the watermark a downstream partition may use."""
from svctrace.streams.faust_app.progress import (
    DONE, HELD, SourceProgress, decode_headers, decode_progress, encode_mark, encode_marks, must_hold,
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


def test_a_held_source_holds_every_other_back_as_one_not_heard_until_its_own_mark():
    """A source that was DONE and has records again is announced HELD: the stage waits for it as for a
    source never heard (another source's mark passes nothing of it), and its own next mark (older than
    the others', as a backlog's is) is where the stage goes. HELD is an int on the wire: an older worker
    reads the mark 0, the same wait."""
    p = SourceProgress(3)
    for source in range(3):
        p.note(source, DONE)
    assert p.all_done()
    p.note(0, HELD)  # its records came; not released yet
    p.note(1, 5_000)  # the other partition's backlog, read and released first
    assert p.watermark() is None and not p.all_done() and not p.should_flush()
    assert p.high() == 5_000  # (HELD is no one's high mark)
    p.note(0, 3_000)
    assert p.watermark() == 3_000
    p.note(0, HELD)  # a late HELD (a predecessor's) cannot move an announced mark back
    assert p.watermark() == 3_000
    assert decode_progress([("svctrace-marks", encode_marks({0: HELD, 1: DONE}))]) == (None, {0: 0, 1: DONE})


def test_a_partition_is_held_while_downstream_may_take_it_for_done_and_it_has_records_again():
    """must_hold(last word announced, log end in the last fetch answer, last offset processed, processed
    since DONE and not announced)."""
    # announced DONE (or nothing since the worker owns it): held once its log has records not processed ...
    assert must_hold(DONE, 10, 6, False) and must_hold(None, 10, None, False) and must_hold(DONE, 10, None, False)
    # ... or while its new records, processed, wait for their release
    assert must_hold(DONE, 10, 9, True) and must_hold(None, None, None, True)
    # nothing new on the broker, or no answer yet
    assert not must_hold(DONE, 10, 9, False) and not must_hold(DONE, 0, None, False)
    assert not must_hold(DONE, None, None, False) and not must_hold(None, 0, None, False)
    # a partition announced with a mark (HELD included) holds the others back by it already
    assert not must_hold(1_000, 10, 2, True) and not must_hold(HELD, 10, 2, True)


def _worker_owning(*partitions: int):
    """A Worker whose app connects to nothing, its consumer a stand-in that owns these syscalls partitions:
    (worker, the syscalls topic, {partition: TP}, the broker's answers as its consumer thread notes them)."""
    from types import SimpleNamespace

    from faust.types import TP

    from svctrace.streams.faust_app.app import Worker, WorkerConfig

    worker = Worker(WorkerConfig(bootstrap="127.0.0.1:9"))
    topic = worker.t_syscalls.get_topic_name()
    tps = {q: TP(topic, q) for q in partitions}
    answers: dict = {}
    worker.app._consumer = SimpleNamespace(_thread=SimpleNamespace(fetch_answers=answers), _committed_offset={},
                                           assignment=lambda: set(tps.values()))  # (app.consumer reads it)
    return worker, topic, tps, answers


def test_a_done_partition_whose_last_answer_predates_another_ones_records_is_held():
    """A DONE partition is held while the broker's last answer about it was asked before another partition had
    records again (a backlog published to both at once: one answer shows one partition's records, the next the
    other's), and the pure decision says so."""
    assert must_hold(DONE, 0, None, False, unanswered=True) and must_hold(None, None, None, False, unanswered=True)
    assert not must_hold(7_000, 0, None, False, unanswered=True)  # (a mark holds the others back already)
    assert not must_hold(DONE, 0, None, False, unanswered=False)


def test_a_done_partition_is_held_until_an_answer_asked_after_another_ones_reactivation():
    """The worker: syscalls partitions 3 and 10 are DONE. 10 has records again and they are read and released
    while 3's last answer is older than that (the broker's answer that showed 10's records held none of 3's yet):
    10's mark goes with 3 HELD, and the tick keeps it so. An answer asked since, with nothing new, lets the tick
    say DONE again; one with records keeps it held until 3's own release. And it waits for that answer at most
    REACTIVATION_WAIT_S."""
    import asyncio
    import time
    from types import SimpleNamespace

    from svctrace.streams.core.enrich import FLOWS_TOPIC
    from svctrace.streams.faust_app import app as worker_app
    from svctrace.streams.faust_app.app import FetchAnswer

    worker, topic, tps, answers = _worker_owning(3, 10)
    taken: list = []

    async def send(topic_, key, value, partition, timestamp, headers):
        delivered = asyncio.get_running_loop().create_future()
        delivered.set_result(None)
        return delivered

    async def marks_here(p, marks, revocations):
        taken.append(dict(marks))

    worker.app.producer = SimpleNamespace(send=send)
    worker._marks_here = marks_here
    worker.flows_read = {0: 5}
    worker.flows_sent = {0: 5}
    worker.cluster_feed.ready.set()

    async def reactivate_10(asked_before: int) -> None:
        """10 DONE, then its records read and released (as _enrich_one notes it); 3's last answer asked before."""
        for q in tps:
            worker.enrich.part_meta(q)["done"] = True
            worker._announce(FLOWS_TOPIC, q, DONE)
        await worker._send_announcements(FLOWS_TOPIC, force=True)
        taken.clear()
        worker.reactivated_ns = now = time.time_ns()
        worker.enrich.part_meta(10)["done"] = False
        answers[(topic, 10)] = FetchAnswer(now - asked_before, 2)
        answers[(topic, 3)] = FetchAnswer(now - asked_before, 0)
        worker.last_offset[10] = 1
        worker._announce(FLOWS_TOPIC, 10, 7_000)
        await worker._send_announcements(FLOWS_TOPIC, force=True)

    async def story():
        await worker._on_assigned(None, set(tps.values()))
        await reactivate_10(asked_before=1_000_000)
        assert taken.pop() == {10: 7_000, 3: HELD}
        await worker._tick()  # no newer answer about 3: still held
        assert worker.hb_sent[(FLOWS_TOPIC, 3)] == HELD and not any(m.get(3) == DONE for m in taken)
        answers[(topic, 3)] = FetchAnswer(worker.reactivated_ns + 1, 0)  # asked since: nothing there
        await worker._tick()
        assert taken.pop() == {3: DONE}
        # again, and this time the newer answer shows 3's records: held until its own release
        await reactivate_10(asked_before=1_000_000)
        assert taken.pop() == {10: 7_000, 3: HELD}
        answers[(topic, 3)] = FetchAnswer(worker.reactivated_ns + 1, 4)
        await worker._tick()
        assert worker.hb_sent[(FLOWS_TOPIC, 3)] == HELD and not any(m.get(3) == DONE for m in taken)
        worker.enrich.part_meta(3)["done"] = False
        worker.last_offset[3] = 3
        worker._announce(FLOWS_TOPIC, 3, 6_000)
        await worker._send_announcements(FLOWS_TOPIC, force=True)
        assert taken.pop() == {3: 6_000}
        # an answer that never comes (a paused partition) holds the others back REACTIVATION_WAIT_S at most
        await reactivate_10(asked_before=int(2 * worker_app.REACTIVATION_WAIT_S * 1e9))
        assert taken.pop() == {10: 7_000, 3: HELD}
        worker.reactivated_ns -= int(2 * worker_app.REACTIVATION_WAIT_S * 1e9)  # (as if that long ago)
        await worker._tick()
        assert taken.pop() == {3: DONE}

    asyncio.run(story())


def test_a_done_partition_with_records_again_goes_held_with_the_marks_that_would_pass_them():
    """The worker: syscalls partitions 3 and 10 are DONE; the broker's answer shows records of both, and
    partition 10's are read and released first. The mark it announces goes with 3 HELD, to this worker's
    own stitch partitions at once and in the record to the others; nothing is held while 3's log has
    nothing new; 3's own release lifts it; and a DONE partition whose new records turned out to hold no
    events (all processed, still done) is announced DONE again by the tick, not held."""
    import asyncio
    from types import SimpleNamespace

    from faust.types import TP

    from svctrace.streams.core.enrich import FLOWS_TOPIC
    from svctrace.streams.faust_app.app import FetchAnswer

    worker, topic, tps, answers = _worker_owning(3, 10)
    records: dict[int, list] = {}
    taken: list = []

    async def send(topic_, key, value, partition, timestamp, headers):
        records.setdefault(partition, []).append(decode_progress(headers)[1])
        delivered = asyncio.get_running_loop().create_future()
        delivered.set_result(None)
        return delivered

    async def marks_here(p, marks, revocations):
        taken.append((p, dict(marks)))

    worker.app.producer = SimpleNamespace(send=send)
    worker._marks_here = marks_here
    worker.flows_read = {0: 5}  # our own stitch partition 0 (read back all we sent it)
    worker.flows_sent = {0: 5}
    worker.cluster_feed.ready.set()

    async def story():
        await worker._on_assigned(None, set(tps.values()) | {TP("other-topic", 3)})
        assert worker.sources_here == tps
        for q in tps:
            worker.enrich.part_meta(q)["done"] = True
            worker._announce(FLOWS_TOPIC, q, DONE)
            answers[(topic, q)] = FetchAnswer(1, 0)
        await worker._send_announcements(FLOWS_TOPIC, force=True)
        assert records.pop(1) == [{3: DONE, 10: DONE}] and taken.pop() == (0, {3: DONE, 10: DONE})
        records.clear()
        # the backlog: 4 records on 3, 2 on 10; 10's read and released first
        answers[(topic, 3)], answers[(topic, 10)] = FetchAnswer(2, 4), FetchAnswer(2, 2)
        worker.enrich.part_meta(3)["done"] = worker.enrich.part_meta(10)["done"] = False
        worker.last_offset.update({3: 0, 10: 1})
        worker._announce(FLOWS_TOPIC, 10, 7_000)
        await worker._send_announcements(FLOWS_TOPIC, force=True)
        assert taken.pop() == (0, {10: 7_000, 3: HELD})
        assert set(records) == set(range(1, worker.partitions))  # (0 is ours: its log gets durable marks only)
        assert all(got == [{10: 7_000, 3: HELD}] for got in records.values())
        records.clear()
        await worker._send_announcements(FLOWS_TOPIC, force=True)  # held already: nothing to announce
        assert not records and not taken
        worker.last_offset[3] = 3
        worker._announce(FLOWS_TOPIC, 3, 6_000)  # its release
        await worker._send_announcements(FLOWS_TOPIC, force=True)
        assert taken.pop() == (0, {3: 6_000}) and records.pop(1) == [{3: 6_000}]
        records.clear()
        # 10 is DONE again; a record comes that holds no event (its meta stays done): held while unread ...
        worker.enrich.part_meta(10)["done"] = True
        worker._announce(FLOWS_TOPIC, 10, DONE)
        await worker._send_announcements(FLOWS_TOPIC, force=True)
        records.clear(), taken.clear()
        answers[(topic, 10)] = FetchAnswer(3, 3)
        answers.pop((topic, 3))  # (3: no answer, the tick leaves it be)
        await worker._tick()
        assert taken.pop() == (0, {10: HELD})
        # ... and DONE again at the next tick once it is processed
        worker.last_offset[10] = 2
        await worker._tick()
        assert taken.pop() == (0, {10: DONE})
        # a partition of ours revoked before its HELD went out: it is not announced after (its new owner may
        # have announced it DONE by then)
        answers[(topic, 10)] = FetchAnswer(4, 4)
        await worker._send_announcements(FLOWS_TOPIC)  # (queued, within heartbeat_s of the last send)
        assert worker.hb_due[FLOWS_TOPIC] == {10: HELD}
        await worker._on_revoked(None, [TP(topic, 10)])
        assert FLOWS_TOPIC not in worker.hb_due or 10 not in worker.hb_due[FLOWS_TOPIC]
        assert 10 not in worker.sources_here

    asyncio.run(story())


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


def test_a_node_whose_agent_claims_completeness_is_released_to_the_claim_not_its_clock_minus_the_lateness():
    """A live agent's syscalls record says up to when its node's stream is complete (cat.COMPLETE_HEADER). The
    worker advances that node to the claim when it is later than its newest event minus the lateness, so its
    events need not wait out the lateness; a node whose records claim nothing (an older agent, a replay) keeps
    clock - lateness, and a claim that is not a number is ignored. A quiet node's empty records move it on."""
    import asyncio
    from dataclasses import replace
    from types import SimpleNamespace

    from svctrace.agents.agent.pipeline import encode_syscall_batch
    from svctrace.schemas.catalogue import COMPLETE_HEADER
    from svctrace.streams.core.enrich import FLOWS_TOPIC
    from svctrace.schemas.models import SyscallBatch, SyscallEvent

    worker, topic, tps, _answers = _worker_owning(3)
    worker.config = replace(worker.config, release_events=0)  # (each record released at once, as when caught up)
    worker.cluster_feed.ready.set()
    sent: list = []

    async def send(topic_, key, value, partition, timestamp, headers):
        sent.append(partition)
        delivered = asyncio.get_running_loop().create_future()
        delivered.set_result(None)
        return delivered

    async def marks_here(p, marks, revocations):
        return None

    released: list = []

    async def route(stage_name, p, outs):  # the enrich stage's flows batches: the events it released
        released.extend(d.ev.node for topic_, _key, batch in outs if topic_ == FLOWS_TOPIC for d in batch["events"])

    worker.app.producer = SimpleNamespace(send=send)
    worker._marks_here = marks_here
    worker.route = route
    t0 = 1_700_000_000_000_000_000
    offsets = iter(range(100))

    def record(node: str, ts: int | None, headers: list) -> SimpleNamespace:
        events = [] if ts is None else [SyscallEvent(ts=ts, node=node, n=ts - t0 + 1, pid=7, tid=7, comm="curl",
                                                     kind="close", syscall="close", fd=3, res=0)]
        value = encode_syscall_batch(SyscallBatch(node=node, source="ebpf", seq=0, events=events))
        return SimpleNamespace(message=SimpleNamespace(partition=3, offset=next(offsets), value=value,
                                                       headers=headers, tp=tps[3], topic=topic))

    def mark(node: str) -> int:
        return worker.enrich.part_meta(3)["nodes"][node][1]

    lateness = worker.lateness

    async def story():
        await worker._on_assigned(None, set(tps.values()))
        await worker._enrich_one(record("claims", t0, [(COMPLETE_HEADER, b"%d" % (t0 + 150_000_000))]))
        await worker._enrich_one(record("older-agent", t0, []))
        await worker._enrich_one(record("garbled", t0, [(COMPLETE_HEADER, b"soon")]))
        assert mark("claims") == t0 + 150_000_000 and released == ["claims"]  # its event out at once
        assert mark("older-agent") == mark("garbled") == t0 - lateness  # theirs wait
        # a claim behind the clock - lateness does not hold the node back; a mark never goes back
        await worker._enrich_one(record("claims", t0 + 2 * lateness, [(COMPLETE_HEADER, b"%d" % t0)]))
        assert mark("claims") == t0 + lateness
        # a quiet node's agent sends empty records for its claims: the node goes on, its event out
        await worker._enrich_one(record("claims", None, [(COMPLETE_HEADER, b"%d" % (t0 + 3 * lateness))]))
        assert mark("claims") == t0 + 3 * lateness and released == ["claims", "claims"]
        # one from a node that has sent no event holds nothing back, so it is not one of the partition's nodes
        worker.enrich.part_meta(3)["done"] = True  # (as if idle: an empty record has nothing to release)
        await worker._enrich_one(record("new", None, [(COMPLETE_HEADER, b"%d" % (t0 + 3 * lateness))]))
        meta = worker.enrich.part_meta(3)
        assert "new" not in meta["nodes"] and "new" not in meta["keys"] and meta["done"]

    asyncio.run(story())
