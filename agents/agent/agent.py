"""The agent's asyncio shell: source -> redact -> batch -> bounded buffer -> sink.

Three tasks share one loop:
- capture: polls the source, redacts, batches; a full buffer drops the batch
  (counted as `dropped`, and announced in the next batch's `lost` with a
  kind="lost" marker so downstream chains become "incomplete", never "broken");
- publish: sends buffered batches; a failed send puts the batch back at the
  front and reconnects with backoff; `published` counts broker acknowledgements;
- stats: publishes AgentStats every `stats_interval` seconds.
`stop()` (SIGTERM/SIGINT) ends capture, flushes the batcher and the buffer
(bounded by `drain_timeout`), publishes final stats and closes the sink.
"""
from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import dataclass

from svctrace.agents.agent.pipeline import (COMPLETE_MARGIN_NS, DEFAULT_FORM, Batcher, BoundedBuffer, Counters,
                                            EncodedBatch, payload_encoder, redact_events)
from svctrace.agents.agent.sinks import SinkUnavailable
from svctrace.schemas.models import SyscallEvent

log = logging.getLogger("svctrace.agent")


@dataclass
class AgentOptions:
    node: str
    redact: bool = True
    snaplen: int = 256
    batch_events: int = 2000
    batch_bytes: int = 600_000
    linger_s: float = 0.2
    buffer_events: int = 500_000
    max_inflight: int = 64
    poll_s: float = 0.02  # ring polls when idle: 16 MiB of ring hold ~0.4 s at 200k events/s; each poll costs ~0.1 ms
    read_chunk: int = 8192
    stats_interval: float = 10.0
    drain_timeout: float = 30.0
    native: bool = True  # the eBPF source's per-event loop in C (fastpath.c) when it builds
    native_lib: str | None = None  # a prebuilt fastpath library (images without a compiler)
    form: str = DEFAULT_FORM  # the records' form (pipeline.FORMS), whatever the source


class Agent:
    def __init__(self, source, sink, options: AgentOptions, metrics=None) -> None:
        self.source = source
        self.sink = sink
        self.opt = options
        self.metrics = metrics
        self.counters = Counters()
        self.batcher = Batcher(options.node, source.name, options.batch_events, options.batch_bytes, options.linger_s,
                               form=options.form)
        self.buffer = BoundedBuffer(options.buffer_events)
        self.stopping = asyncio.Event()
        self.capture_done = asyncio.Event()
        self.has_data = asyncio.Event()
        self.inflight: set[asyncio.Future] = set()
        self.send_failures = 0
        # A batch the broker refused (not a timeout the producer retries itself) may leave the
        # idempotent producer's sequence numbers out of step with the broker's, e.g. after a broker
        # restart that lost its log's tail: every later send would fail with OutOfOrderSequenceNumber.
        # So the publisher starts a new producer (a new producer id) before it resends; a batch the
        # broker had written after all arrives twice, and the enrich stage drops the repeats.
        self.producer_suspect = False
        self.renewals_unacked = 0  # new producers since the last acknowledged batch: backs off repeats
        encode_with = getattr(source, "encode_with", None)
        if encode_with is not None:  # the source writes each event's JSON, redacted by our rules
            encode_with(payload_encoder(options.snaplen, self.counters, options.redact), options.native,
                        options.native_lib)
            # the native loop of the columns form holds the open batch itself
            self.batcher = getattr(source, "batcher_for", lambda b: b)(self.batcher)
        self.native = getattr(source, "native", None) is not None  # the source fills batches itself
        # The window of a dropped batch's events, for its loss marker (live sources only: a replay's
        # events are not of the wall clock). A read that empties the source had every event older
        # than its start: `caught_up_ns`, the start of the latest such read, is no later than any
        # event read after it; `read_floor_ns`, its value when the current read began, bounds this
        # read's events; `offer_floor_ns`, the read floor when the previous batch was buffered (or
        # dropped), bounds the events of every batch after it.
        self.live = bool(getattr(source, "live", False))
        started = getattr(source, "started_ns", None)  # (the source started capturing before the agent)
        self.caught_up_ns = self.read_floor_ns = self.offer_floor_ns = time.time_ns() if started is None else started
        # now, on the clock of the source's event times (the eBPF source's: the kernel's monotonic clock plus the
        # offset taken at its start, which a step of the wall clock since does not move)
        self.clock_ns = getattr(source, "clock_ns", time.time_ns)
        self.marker_seq = 0  # batches before this seq claim no completeness (_enqueue)
        self.claimed_at = time.monotonic()  # when a batch last claimed completeness (live sources)
        self.quiet_claims = self.live and getattr(sink, "claims", False)  # empty batches for them (_capture)

    def stop(self) -> None:
        if not self.stopping.is_set():
            log.info("stopping: flushing buffered events")
            self.stopping.set()
            self.has_data.set()

    # -- capture ---------------------------------------------------------------
    def _enqueue(self, batches: list[EncodedBatch], complete_ns: int | None = None) -> None:
        """Buffer closed batches (in order). A live source's batch says how complete its node's stream is
        (COMPLETE_HEADER): every event older than `complete_ns` (by default the read floor: what was read
        before the current read began) was read, so it is in this batch or an earlier one, all of them
        closed in read order. Not after a dropped batch until the batch with its loss marker: the
        worker must get the marker before a mark that passes the lost events."""
        for b in batches:
            since, self.offer_floor_ns = self.offer_floor_ns, self.read_floor_ns
            if self.live and b.seq >= self.marker_seq:
                b.complete_ns = (self.read_floor_ns if complete_ns is None else complete_ns) - COMPLETE_MARGIN_NS
                self.claimed_at = time.monotonic()
            if self.buffer.offer(b):
                self.has_data.set()
            else:
                self.counters.dropped += b.events
                self.batcher.note_lost(b.events)
                self.batcher.add_marker(self._overflow_marker(b.events, since), time.monotonic())
                self.marker_seq = self.batcher.seq  # the open batch, which now holds the marker
        if self.metrics:
            self.metrics.buffered(self.buffer.events)

    def _overflow_marker(self, count: int, since_ns: int) -> SyscallEvent:
        """A dropped batch's marker: its events are no older than since_ns (live sources)."""
        return SyscallEvent(ts=time.time_ns(), node=self.opt.node, n=0, pid=0, tid=0, comm="", kind="lost",
                            syscall="", fd=-1, res=count, lost_since_ns=since_ns if self.live else None)

    def ingest(self, events: list[SyscallEvent]) -> None:
        """One chunk from the source (also the unit-test entry point)."""
        self.counters.captured += len(events)
        if events and type(events[0]) is not bytes:  # JSON from the source is redacted already
            events = redact_events(events, self.opt.snaplen, self.counters, self.opt.redact)
        self._enqueue(self.batcher.add(events, time.monotonic()))

    def _with_losses(self, lost_markers: tuple[int, list], events: list) -> list:
        """Count the source's losses into the open batch; `events` with the loss markers appended."""
        lost, markers = lost_markers
        if not lost:
            return events
        self.batcher.note_lost(lost)
        self.counters.lost += lost
        return events + markers if events else markers

    def _read_once(self, src) -> int:
        """One chunk from the source into the batcher; returns how many records it read."""
        started = self.clock_ns()
        self.read_floor_ns = self.caught_up_ns
        read = self._read_chunk(src)
        if read < self.opt.read_chunk:
            self.caught_up_ns = started  # the source is empty: every event older than `started` was read
        return read

    def _read_chunk(self, src) -> int:
        if self.native:
            read, captured, batches = src.read_batches(self.batcher, self.opt.read_chunk, time.monotonic())
            self.counters.captured += captured
            self._enqueue(batches)
            events = []
        else:
            events = src.read(self.opt.read_chunk)
            read = len(events)
        events = self._with_losses(src.lost(), events)
        if events:
            self.ingest(events)
        return read

    async def _capture(self) -> None:
        src = self.source
        try:
            while not self.stopping.is_set():
                read = self._read_once(src)
                now = time.monotonic()
                if self.batcher.due(now):
                    # every event read so far is in it: complete up to the last read that emptied the source
                    self._enqueue([self.batcher.flush()], self.caught_up_ns)
                elif (self.quiet_claims and read < self.opt.read_chunk and not self.batcher.pending_events
                      and not self.batcher.pending_lost and not self.buffer
                      and now - self.claimed_at >= self.opt.linger_s):
                    # A quiet node: an empty batch, for its claim (every stitch partition waits for the
                    # slowest node, and without one the worker can only guess, by its lateness). Not while
                    # batches wait to be sent (a broker away): the first empty batch after them says it all.
                    self._enqueue([self.batcher.empty()], self.caught_up_ns)
                if src.exhausted:
                    break
                if read < self.opt.read_chunk:
                    wait = getattr(src, "seconds_until_next", lambda: 0.0)()
                    await asyncio.sleep(min(max(wait, self.opt.poll_s), 0.1))
                else:
                    await asyncio.sleep(0)  # let the publisher run between chunks
            if self.stopping.is_set() and getattr(src, "live", False):
                # what the kernel recorded before the stop (bounded: new records keep coming)
                for _ in range(64):
                    if self._read_once(src) < self.opt.read_chunk:
                        break
        finally:
            markers = self._with_losses(src.lost(final=True), [])
            if markers:
                self.ingest(markers)
            last = self.batcher.flush()
            if last is not None:
                self._enqueue([last])
            self.capture_done.set()
            self.has_data.set()

    # -- publish ---------------------------------------------------------------
    def _acked(self, batch: EncodedBatch, fut: asyncio.Future) -> None:
        self.inflight.discard(fut)
        if fut.cancelled() or fut.exception() is not None:
            self.send_failures += 1
            log.warning("batch %d not acknowledged (%s); will resend with a new producer", batch.seq,
                        "cancelled" if fut.cancelled() else fut.exception())
            self.buffer.push_front(batch)
            self.producer_suspect = True
            self.has_data.set()
            return
        self.renewals_unacked = 0
        self.counters.published += batch.events
        self.counters.batches += 1
        if self.metrics:
            self.metrics.published(batch.events)

    async def _publish(self) -> None:
        key = self.opt.node.encode()
        while True:
            if self.producer_suspect:
                if not await self._new_producer():
                    return
                continue
            batch = self.buffer.pop()
            if batch is None:
                if self.capture_done.is_set() and not self.inflight:
                    return
                self.has_data.clear()
                if self.inflight:
                    await asyncio.wait(list(self.inflight) + [asyncio.ensure_future(self.has_data.wait())],
                                       return_when=asyncio.FIRST_COMPLETED)
                else:
                    await self.has_data.wait()
                continue
            while len(self.inflight) >= self.opt.max_inflight:
                await asyncio.wait(list(self.inflight), return_when=asyncio.FIRST_COMPLETED)
            try:
                fut = await self.sink.send(key, batch.value, batch.complete_ns)
            except (SinkUnavailable, Exception) as e:  # noqa: BLE001 - any send error: keep the batch, reconnect
                self.buffer.push_front(batch)
                self.send_failures += 1
                log.warning("send failed (%s); reconnecting", e)
                if not await self._new_producer():
                    return
                continue
            fut = asyncio.ensure_future(fut)
            self.inflight.add(fut)
            fut.add_done_callback(lambda f, b=batch: self._acked(b, f))

    async def _new_producer(self) -> bool:
        """Reconnect the sink once every send in flight has settled (their failures are back in the
        buffer, in order); False when it stays unreachable while the agent is draining to stop."""
        if self.inflight:
            await asyncio.wait(list(self.inflight))
        if self.renewals_unacked:  # the last new producer got no batch through either: back off
            await asyncio.sleep(min(0.1 * 2 ** (self.renewals_unacked - 1), 10.0))
        self.renewals_unacked += 1
        self.producer_suspect = False
        try:
            await self.sink.reconnect(self.stopping if self.capture_done.is_set() else None)
        except SinkUnavailable:
            return False
        return True

    # -- stats -----------------------------------------------------------------
    def update_metrics(self) -> None:
        if self.metrics:
            per_cpu = getattr(self.source, "drops_per_cpu", lambda: None)()
            self.metrics.update(self.counters, self.buffer.events, per_cpu)

    async def publish_stats(self) -> None:
        stats = self.counters.stats(self.opt.node, self.source.name)
        self.update_metrics()
        try:
            await self.sink.send_stats(stats)
        except Exception as e:  # noqa: BLE001 - stats are best effort; the next round retries
            log.warning("stats not published: %s", e)

    async def _stats(self) -> None:
        next_stats = time.monotonic() + self.opt.stats_interval
        while not self.capture_done.is_set():
            try:
                await asyncio.wait_for(self.capture_done.wait(), min(1.0, self.opt.stats_interval))
            except asyncio.TimeoutError:
                maintain = getattr(self.source, "maintain", None)
                if maintain is not None:
                    await asyncio.to_thread(maintain)
                self.update_metrics()
                if time.monotonic() >= next_stats:
                    next_stats += self.opt.stats_interval
                    await self.publish_stats()

    # -- run -------------------------------------------------------------------
    async def run(self) -> Counters:
        await self.sink.start()
        tasks = [asyncio.create_task(self._capture(), name="capture"),
                 asyncio.create_task(self._stats(), name="stats")]
        publisher = asyncio.create_task(self._publish(), name="publish")
        try:
            await tasks[0]
            try:
                await asyncio.wait_for(asyncio.shield(publisher), self.opt.drain_timeout)
            except asyncio.TimeoutError:
                log.error("drain timeout: %d buffered events not published", self.buffer.events)
                publisher.cancel()
            await self.sink.flush()
            await self.publish_stats()
            await self.sink.flush()
        finally:
            for t in tasks + [publisher]:
                t.cancel()
            await asyncio.gather(*tasks, publisher, return_exceptions=True)
            await self.sink.stop()
            self.source.close()
        return self.counters
