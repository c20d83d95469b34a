"""The agent without a kernel: batching, the bounded buffer, scap replay to a file sink."""
from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import orjson
import pytest

from svctrace.agents.agent.agent import Agent, AgentOptions
from svctrace.agents.agent.pipeline import Batcher, BoundedBuffer, Counters, redact_events
from svctrace.agents.agent.sources import ScapSource
from svctrace.agents.scap import open_capture
from svctrace.agents.scap.writer import ScapWriter
from svctrace.schemas.models import SyscallEvent, decode_batch, dumps
from svctrace.schemas.syscall_columns import to_document
from svctrace.schemas.validation import validate
from svctrace.streams.faust_app import wire

REPO = Path(__file__).resolve().parent.parent
SEED = REPO / "examples" / "seed" / "capture.scap"


def ev(n: int, data: bytes | None = b"x" * 10, ts: int = 0) -> SyscallEvent:
    return SyscallEvent(ts=ts or 1_700_000_000_000_000_000 + n, node="n1", n=n, pid=10, tid=10, comm="curl",
                        kind="send", syscall="write", fd=3, res=len(data or b""), proto="tcp", family="ipv4",
                        role="client", local_ip="10.0.0.1", local_port=4000, remote_ip="10.96.0.1", remote_port=80,
                        size=len(data or b""), data=data)


def _document(value: bytes) -> dict:
    """A syscalls record as its schema's document, validated (either form)."""
    if value[:1] == b"{":
        doc = orjson.loads(value)
        validate("syscall-batch", doc)
    else:
        doc = to_document(value)
        validate("syscall-columns", doc)
    return doc


@pytest.mark.parametrize("form", ["msgpack", "json"])
def test_batcher_closes_on_count_bytes_and_linger(form):
    b = Batcher("n1", "ebpf", max_events=3, max_bytes=10_000, linger_s=0.5, form=form)
    out = b.add([ev(i) for i in range(7)], now=0.0)
    assert [x.events for x in out] == [3, 3] and [x.seq for x in out] == [0, 1]
    assert not b.due(0.4) and b.due(0.5)
    last = b.flush()
    assert last.events == 1 and b.flush() is None
    doc = _document(out[0].value)
    assert doc["node"] == "n1" and doc["schema"] == ("svctrace.syscall-batch" if form == "json" else "svctrace.syscall-columns")
    batch = decode_batch(out[0].value)
    assert [e.n for e in batch.events] == [0, 1, 2] and batch.events == [ev(i) for i in range(3)]
    big = Batcher("n1", "ebpf", max_events=1000, max_bytes=4000, form=form)
    assert len(big.add([ev(i, data=b"y" * 1000) for i in range(10)], 0.0)) >= 3  # 1-1.7 kB each


def test_the_agents_default_form_is_the_columns_and_reads_back_as_the_json():
    """Both forms of the same batch decode to the same events (the worker's decoder and decode_batch), the
    columns' strings each once; a form the agent does not know is refused."""
    events = [ev(i, data=None if i % 3 else b"GET / HTTP/1.1\r\n") for i in range(10)]
    events[4] = events[4].with_(errno="ECONNREFUSED", kind="connect", proto=None, exe="/usr/bin/curl")
    msg, js = Batcher("n1", "ebpf", form="msgpack"), Batcher("n1", "ebpf", form="json")
    msg.add(events, 0.0)
    js.add(events, 0.0)
    a, b = msg.flush().value, js.flush().value
    assert Batcher("n1", "ebpf").form == "msgpack" and a[0] in range(0x80, 0x90) and b[:1] == b"{"
    assert decode_batch(a) == decode_batch(b) and decode_batch(a).events == events
    assert wire.decode_syscall_batch(a) == wire.decode_syscall_batch(b)
    doc = _document(a)
    assert doc["count"] == 10 and sorted(doc["strings"], key=str).count("10.0.0.1") == 1
    assert doc["columns"][doc["fields"].index("node")] == doc["strings"].index("n1")  # one value for every event
    assert len(a) < len(b) / 3
    with pytest.raises(ValueError, match="form"):
        Batcher("n1", "ebpf", form="avro")


def test_wire_dicts_and_events_encode_alike_and_are_redacted():
    c = Counters()
    secret = b"GET / HTTP/1.1\r\nAuthorization: Bearer abc.def\r\n\r\n"
    wire = dict(ev(1, secret).to_dict(), data=secret)  # the eBPF fast path's form: raw bytes
    out = redact_events([wire, ev(2, secret)], 256, c)
    assert c.redacted == 2
    b = Batcher("n1", "ebpf")
    b.add(out, 0.0)
    batch = decode_batch(b.flush().value)
    assert [e.data for e in batch.events] == [b"GET / HTTP/1.1\r\nAuthorization: Bearer [REDACTED]\r\n\r\n"] * 2
    assert all(e.redacted for e in batch.events)
    plain = redact_events([dict(ev(3, secret).to_dict(), data=secret)], 256, Counters(), redact_on=False)
    assert plain[0]["data"] == ev(3, secret).to_dict()["data"] and not plain[0]["redacted"]  # base64, untouched


class _NoSink:
    name = "test"


def test_full_buffer_drops_are_counted_and_announced_in_the_next_batch():
    agent = Agent(_NoSink(), _NoSink(), AgentOptions(node="n1", batch_events=5, buffer_events=10, redact=False))
    agent.ingest([ev(i) for i in range(30)])  # 6 batches of 5; room for 2
    assert (agent.counters.captured, agent.counters.dropped) == (30, 20)
    assert agent.buffer.events == 10 and len(agent.buffer) == 2
    agent.buffer.pop()
    agent.buffer.pop()
    agent._enqueue([agent.batcher.flush()])
    marker = decode_batch(agent.buffer.pop().value)
    assert marker.lost == 20
    assert [e.kind for e in marker.events] == ["lost"] * 4 and sum(e.res for e in marker.events) == 20


def test_bounded_buffer_fifo_and_front_requeue():
    from svctrace.agents.agent.pipeline import EncodedBatch

    buf = BoundedBuffer(max_events=5)
    assert buf.offer(EncodedBatch(0, 3, b"a")) and not buf.offer(EncodedBatch(1, 3, b"b"))
    first = buf.pop()
    buf.push_front(first)
    assert buf.pop().seq == 0 and buf.pop() is None and buf.events == 0


def test_failed_sends_go_back_in_seq_order_whatever_order_they_failed_in():
    from svctrace.agents.agent.pipeline import EncodedBatch

    buf = BoundedBuffer(max_events=100)
    for seq in (5, 6):
        buf.offer(EncodedBatch(seq, 1, b"x"))
    for seq in (4, 2, 3):  # three sends in flight fail, the newest first
        buf.push_front(EncodedBatch(seq, 1, b"x"))
    assert [b.seq for b in buf.items] == [2, 3, 4, 5, 6] and buf.events == 5


class _RestartedBrokerSink:
    """A broker that lost its log's tail in a restart: it refuses every batch of the producer that
    wrote before it (OutOfOrderSequenceNumber: the producer's sequence numbers are ahead of the
    broker's) after the first `written_before` ones, and takes everything from a new producer."""

    name = "kafka"

    def __init__(self, written_before: int) -> None:
        import asyncio

        self.loop = asyncio.get_running_loop()
        self.written_before = written_before
        self.producers = 1
        self.log: list[int] = []  # the batches' seq numbers, as the broker wrote them
        self.refused: list = []  # (future, error) of sends answered at the next loop turn
        self.refusals = 0

    async def send(self, key: bytes, value: bytes, complete_ns=None):
        from aiokafka.errors import OutOfOrderSequenceNumber

        seq = decode_batch(value).seq
        fut = self.loop.create_future()
        if self.producers == 1 and len(self.log) >= self.written_before:
            self.refusals += 1
            if self.refusals > 100:
                raise AssertionError("the agent kept resending through the producer the broker refuses")
            if not self.refused:  # the answers to this burst of sends come in one go, newest first
                self.loop.call_soon(self._refuse_newest_first)
            self.refused.append((fut, OutOfOrderSequenceNumber()))
        else:
            self.log.append(seq)
            fut.set_result(None)
        return fut

    def _refuse_newest_first(self) -> None:
        pending, self.refused = self.refused, []
        for fut, exc in reversed(pending):
            fut.set_exception(exc)

    async def reconnect(self, stopping=None) -> None:
        self.producers += 1


def test_a_batch_the_broker_refuses_is_resent_by_a_new_producer_in_order():
    """After a broker restart that lost the tail of its log, the idempotent producer's sequence
    numbers are ahead of the broker's and every send of it is refused: the agent starts a new
    producer and resends what was refused, in order, so nothing is lost or reordered."""
    import asyncio

    async def publish() -> _RestartedBrokerSink:
        sink = _RestartedBrokerSink(written_before=2)
        agent = Agent(_NoSink(), sink, AgentOptions(node="n1", batch_events=5, redact=False))
        agent.ingest([ev(i) for i in range(1, 41)])  # 8 batches
        agent.capture_done.set()
        await asyncio.wait_for(agent._publish(), 30)  # (a guard against a hang, not a synchronisation)
        assert agent.counters.published == 40 and agent.send_failures == 6
        return sink

    sink = asyncio.run(publish())
    assert sink.producers == 2 and sink.log == list(range(8))


def test_scap_replay_paces_at_the_recorded_speed(tmp_path):
    path = tmp_path / "paced.scap"
    with ScapWriter(str(path), hostname="rec-node") as w:
        for i, gap in enumerate((0, 400_000_000, 800_000_000)):
            w.write_event(ev(i + 1, ts=1_700_000_000_000_000_000 + gap))
    src = ScapSource(str(path), node=None, speed=1.0)
    assert src.reader.node == "rec-node"  # known before the first read: the batches' node and key
    first = src.read(100)
    assert len(first) == 1 and 0.2 < src.seconds_until_next() <= 0.4
    fast = ScapSource(str(path), node="replayed", speed=0)
    all_events = fast.read(100)
    assert len(all_events) == 3 and {e.node for e in all_events} == {"replayed"} and fast.read(100) == []
    assert fast.exhausted


def test_agent_replays_a_capture_to_json_lines(tmp_path):
    out, stats = tmp_path / "b.jsonl", tmp_path / "s.jsonl"
    expected = list(open_capture(str(SEED)))
    assert expected, "the seed capture has network events"
    p = subprocess.run([sys.executable, "-m", "svctrace", "agent", "--source", "scap", "--file", str(SEED),
                        "--speed", "0", "--output", str(out), "--stats-output", str(stats), "--metrics-addr", "",
                        "--node", "seed-node", "--batch-events", "50"], capture_output=True, text=True, timeout=120)
    assert p.returncode == 0, p.stderr
    events = []
    for line in out.read_bytes().splitlines():
        doc = orjson.loads(line)
        validate("syscall-batch", doc)
        events += decode_batch(line).events
    assert len(events) == len(expected) and {e.node for e in events} == {"seed-node"}
    assert [(e.n, e.kind, e.fd, e.res) for e in events] == [(e.n, e.kind, e.fd, e.res) for e in expected]
    final = orjson.loads(stats.read_bytes().splitlines()[-1])
    validate("agent-stats", final)
    assert final["captured"] == final["published"] == len(expected) and final["dropped"] == 0


def test_json_lines_output_refuses_the_msgpack_form(tmp_path):
    """--output writes JSON lines: msgpack records in it could not be split by line."""
    out = tmp_path / "b.jsonl"
    p = subprocess.run([sys.executable, "-m", "svctrace", "agent", "--source", "scap", "--file", str(SEED),
                        "--speed", "0", "--output", str(out), "--metrics-addr", "", "--batch-form", "msgpack"],
                       capture_output=True, text=True, timeout=120)
    assert p.returncode == 1 and "--batch-form msgpack is for Kafka" in p.stderr and not out.exists()


def test_a_replay_without_node_keys_its_batches_by_the_captures_node(tmp_path):
    """Not by the replaying host's name: the batch's node is its Kafka key and must be the events'."""
    out = tmp_path / "b.jsonl"
    env = {k: v for k, v in os.environ.items() if k != "NODE_NAME"}
    p = subprocess.run([sys.executable, "-m", "svctrace", "agent", "--source", "scap", "--file", str(SEED),
                        "--speed", "0", "--output", str(out), "--metrics-addr", ""],
                       capture_output=True, text=True, timeout=120, env=env)
    assert p.returncode == 0, p.stderr
    docs = [orjson.loads(line) for line in out.read_bytes().splitlines()]
    nodes = {e["node"] for d in docs for e in d["events"]}
    assert nodes == {e.node for e in open_capture(str(SEED))} and len(nodes) == 1
    assert {d["node"] for d in docs} == nodes


def test_events_already_json_batch_like_objects():
    """The eBPF fast path hands the batcher each event's JSON: the same documents, split by the same limits
    (bytes exactly, as the JSON is known)."""
    from svctrace.schemas.models import dumps

    events = [ev(i) for i in range(7)]
    as_json = [dumps(e) for e in events]
    objs, raw = Batcher("n1", "ebpf", max_events=3, form="json"), Batcher("n1", "ebpf", max_events=3, form="json")
    a, b = objs.add(events, 0.0), raw.add(as_json, 0.0)
    assert [x.value for x in a] == [x.value for x in b] and len(b) == 2
    marker = SyscallEvent(ts=1, node="n1", n=0, pid=0, tid=0, comm="", kind="lost", syscall="", fd=-1, res=4)
    raw.add_marker(marker, 0.0)
    last = orjson.loads(raw.flush().value)
    validate("syscall-batch", last)
    assert [e["n"] for e in last["events"]] == [6, 0] and last["events"][-1]["kind"] == "lost"
    small = Batcher("n1", "ebpf", max_events=1000, max_bytes=2 * len(as_json[0]) + 10, form="json")
    out = small.add(as_json, 0.0) + [small.flush()]
    assert [x.events for x in out] == [2, 2, 2, 1]  # closed before the event that would pass max_bytes
    assert [e.n for x in out for e in decode_batch(x.value).events] == list(range(7))
    columns = Batcher("n1", "ebpf", max_events=3)  # event JSON into the columns form: the same events
    out = columns.add(as_json, 0.0) + [columns.flush()]
    assert [e for x in out for e in decode_batch(x.value).events] == events


@pytest.mark.parametrize("form", ["msgpack", "json"])
def test_batches_stay_under_the_byte_bound_whatever_the_event_count(form):
    """The default 2000 events of 4 KiB payloads would be ~11 MB: the byte bound closes batches first,
    so every record fits Kafka's 1 MiB request (and a bound past 1 MiB is refused)."""
    from svctrace.agents.agent.pipeline import MAX_BATCH_BYTES

    b = Batcher("n1", "ebpf", form=form)  # the agent's defaults
    out = b.add([ev(i, data=bytes(range(256)) * 16) for i in range(2000)], 0.0) + [b.flush()]
    assert sum(x.events for x in out) == 2000 and len(out) > 10
    assert max(len(x.value) for x in out) <= b.max_bytes + 200  # the batch head and brackets
    assert [e.n for x in out for e in decode_batch(x.value).events] == list(range(2000))
    with pytest.raises(ValueError, match="1 MiB"):
        Batcher("n1", "ebpf", max_bytes=MAX_BATCH_BYTES + 1)
    b.note_lost(5)  # a batch of nothing but a loss count is still a valid document
    only_lost = b.flush().value
    _document(only_lost)
    assert (decode_batch(only_lost).lost, decode_batch(only_lost).events) == (5, [])
    assert (wire.decode_syscall_batch(only_lost).lost, wire.decode_syscall_batch(only_lost).events) == (5, [])


class _FakeNormalizer:
    """The eBPF normalizer's loss-marker builder (agents/ebpf/records.Normalizer.lost)."""

    def lost(self, count: int, ts: int) -> SyscallEvent:
        return SyscallEvent(ts=ts, node="n1", n=0, pid=0, tid=0, comm="", kind="lost", syscall="", fd=-1, res=count)


def test_kernel_drop_markers_carry_the_window_since_the_previous_drain():
    """The drop counter tells how many since it was last read, not when: each marker covers the window
    from the previous read (the first: the capture's start) to now, and a read without new drops moves
    the window on (its drops were all counted)."""
    from svctrace.agents.agent.sources import LossWindows

    clock = iter(range(1000, 2000, 10))  # each reading of the clock 10 ns later
    totals = iter([0, 3, 3, 7])
    losses = LossWindows(_FakeNormalizer(), lambda: next(totals), started_ns=500, clock=lambda: next(clock))
    assert losses.check() == (0, [])  # read at 1000: nothing dropped since 500
    new, [first] = losses.check()  # read at 1010 (marker made at 1020): 3 dropped since 1000
    assert (new, first.kind, first.res, first.lost_since_ns, first.ts) == (3, "lost", 3, 1000, 1020)
    assert losses.check() == (0, [])  # read at 1030
    new, [second] = losses.check()  # read at 1040: 4 more since 1030
    assert (new, second.res, second.lost_since_ns, second.ts) == (4, 4, 1030, 1050)
    validate("syscall-batch", {"schema": "svctrace.syscall-batch", "version": 1, "node": "n1", "source": "ebpf",
                               "seq": 0, "lost": 7, "events": [orjson.loads(dumps(second))]})


class _LiveQueue:
    """A live source whose events wait in a queue (the kernel ring) until read, `read_chunk` at most."""

    name = "ebpf"
    live = True
    exhausted = False

    def __init__(self) -> None:
        self.started_ns = time.time_ns()
        self.ring: list[SyscallEvent] = []
        self.n = 0

    def syscalls(self, count: int) -> None:
        for _ in range(count):
            self.n += 1
            self.ring.append(ev(self.n, ts=time.time_ns()))

    def read(self, max_events: int) -> list:
        out, self.ring = self.ring[:max_events], self.ring[max_events:]
        return out

    def lost(self, final: bool = False):
        return 0, []


class _ScriptedLive(_LiveQueue):
    """A live source whose syscalls happen in bursts, one before each read, until the script ends; its
    events' clock `behind_ns` behind the wall clock (as an eBPF source's after the wall clock stepped ahead)."""

    def __init__(self, bursts: list[int], live: bool = True, behind_ns: int = 0) -> None:
        super().__init__()
        self.bursts = list(bursts)
        self.live = live
        self.behind_ns = behind_ns
        self.started_ns -= behind_ns  # (on its events' clock, as every time it gives)

    def clock_ns(self) -> int:
        return time.time_ns() - self.behind_ns

    def syscalls(self, count: int) -> None:
        for _ in range(count):
            self.n += 1
            self.ring.append(ev(self.n, ts=self.clock_ns()))

    def read(self, max_events: int) -> list:
        if self.bursts:
            self.syscalls(self.bursts.pop(0))
        elif not self.ring:
            self.exhausted = True
        return super().read(max_events)


class _ClaimingSink(_NoSink):
    claims = True  # (its records have headers, as Kafka's: KafkaSink)


def _captured(src, refuse: set[int] = frozenset(), sink=_ClaimingSink(), **options) -> list:
    """Run the agent's capture loop over src: [(complete_ns, events)] of the batches buffered, in order, and
    ("dropped", events) where the buffer refused the offers numbered in `refuse`."""
    import asyncio

    agent = Agent(src, sink, AgentOptions(node="n1", redact=False, linger_s=0, poll_s=0, **options))
    out: list = []
    offer = agent.buffer.offer

    def offer_(b):
        ok = len(out) not in refuse and offer(b)
        out.append((b.complete_ns if ok else "dropped", decode_batch(b.value).events))
        if ok:
            agent.buffer.pop()
        return ok

    agent.buffer.offer = offer_
    asyncio.run(asyncio.wait_for(agent._capture(), 30))  # (a guard against a hang, not a synchronisation)
    return out


@pytest.mark.parametrize("behind_s", [0, 10])
def test_a_live_agents_batches_claim_up_to_when_their_nodes_stream_is_complete(behind_s):
    """Each batch of a live source says up to when the node's stream is complete (sent as COMPLETE_HEADER): no
    later batch has an event older than that. The claim is the start of the last read that emptied the source
    (less COMPLETE_MARGIN_NS): once the source has been emptied, it passes every event before, so a worker can
    release them without waiting out its lateness. A quiet source gets an empty batch for its claim, at most
    one per linger, where the sink's records carry it. The claims are on the clock of the events (the source's
    `clock_ns`), whatever the wall clock did. A replay's batches claim nothing, and it sends none empty."""
    from svctrace.agents.agent.pipeline import COMPLETE_MARGIN_NS

    batches = _captured(_ScriptedLive([3, 12, 0, 7, 30, 2, 0, 9], behind_ns=behind_s * 10**9), batch_events=5,
                        read_chunk=8)
    assert len(batches) >= 10 and all(claim is not None for claim, _ in batches)
    assert any(not events for _, events in batches)  # a quiet read: an empty batch, for the claim alone
    claims = [claim for claim, _ in batches]
    assert claims == sorted(claims)
    for i, claim in enumerate(claims):
        assert all(e.ts >= claim for _, events in batches[i + 1:] for e in events)
    # the last batch went out after a read that emptied the source: its claim passes every event before it
    assert all(claims[-1] > e.ts - COMPLETE_MARGIN_NS for _, events in batches[:-1] for e in events)
    replay = _captured(_ScriptedLive([3, 12, 0, 7], live=False), batch_events=5, read_chunk=8)
    assert replay and all(claim is None and events for claim, events in replay)
    # a sink without headers (JSON lines) gets no empty batches
    to_file = _captured(_ScriptedLive([3, 12, 0, 7, 0]), batch_events=5, read_chunk=8, sink=_NoSink())
    assert to_file and all(events for _, events in to_file)


def test_a_quiet_agent_adds_no_empty_batch_while_batches_wait_to_be_sent():
    """While the broker is away the buffer holds the batches; empty ones would pile up behind them, each
    saying less than the first one after them will."""
    import asyncio

    src = _ScriptedLive([3, 0, 0, 0, 0, 0, 2, 0, 0])
    agent = Agent(src, _ClaimingSink(), AgentOptions(node="n1", redact=False, linger_s=0, poll_s=0, batch_events=5))
    asyncio.run(asyncio.wait_for(agent._capture(), 30))  # (a guard against a hang, not a synchronisation)
    waiting = [decode_batch(b.value).events for b in agent.buffer.items]
    assert [len(events) for events in waiting] == [3, 2]
    assert _captured(_ScriptedLive([3, 0, 0, 0, 0, 0, 2, 0, 0]), batch_events=5)[1][1] == []  # (sent: they come)


def test_after_a_dropped_batch_no_claim_goes_out_before_its_loss_marker():
    """A batch the full buffer drops is announced by a loss marker in the batch open then: the batches between
    claim nothing (a worker would take the lost events' time as complete before hearing of the loss); the
    marker's batch and those after it claim again."""
    batches = _captured(_ScriptedLive([12, 12, 12, 12]), refuse={1}, batch_events=4, read_chunk=12)
    assert batches[1][0] == "dropped"
    with_marker = next(i for i, (_, events) in enumerate(batches) if any(e.kind == "lost" for e in events))
    assert with_marker > 2  # (batches closed in the same read as the dropped one come between)
    assert batches[0][0] is not None and all(claim is None for claim, _ in batches[2:with_marker])
    assert all(claim is not None for claim, _ in batches[with_marker:])


def test_full_buffer_markers_carry_the_window_of_the_dropped_events():
    """A batch dropped from the full buffer is announced with a marker whose window holds the time of
    every event it dropped, though the source hands events over in chunks, some from a backlog (an event
    is no older than the start of the latest read that emptied the source before it was read)."""
    src = _LiveQueue()
    agent = Agent(src, _NoSink(), AgentOptions(node="n1", batch_events=5, buffer_events=5, redact=False,
                                                read_chunk=4))
    rejected: list = []
    markers: list = []
    offer, add_marker = agent.buffer.offer, agent.batcher.add_marker

    def offer_(b):
        ok = offer(b)
        if not ok:
            rejected.append(decode_batch(b.value))
        return ok

    agent.buffer.offer = offer_
    agent.batcher.add_marker = lambda m, now: (markers.append(m), add_marker(m, now))
    for burst in (5, 5, 5, 7, 3):
        src.syscalls(burst)
        while agent._read_once(src) == agent.opt.read_chunk:
            pass
    assert len(rejected) >= 3 and len(markers) == len(rejected)
    floors = []
    for batch, m in zip(rejected, markers):
        assert m.kind == "lost" and m.res == len(batch.events)
        assert m.lost_since_ns <= min(e.ts for e in batch.events) and max(e.ts for e in batch.events) <= m.ts
        floors.append(m.lost_since_ns)
    assert floors[-1] > src.started_ns  # the window moved on with the reads (not all since the start)
