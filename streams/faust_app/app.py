"""The Faust app: the core's operator graph (streams/core) on Kafka.

    svctrace.syscalls    --enrich-->  svctrace.flows (by flow bucket)  + svctrace.events.enriched
    svctrace.flows       --stitch-->  svctrace.chains + <alert occurrences> (by alert key)
    <alert occurrences>  --alerts-->  svctrace.alerts
    svctrace.k8s.objects --ClusterFeed--> the ClusterIndex every stage joins with

This module is a shell: it decodes records, hands them to the core operators
(`process` / `advance` / `flush`) and routes their (topic, key, value) outputs.
What it adds is what only a distributed runner needs:

* Event-time progress across partitions (progress.py): each upstream partition
  announces its watermark (or DONE) in record headers to every downstream
  partition; a stage advances to the smallest one. A syscalls partition's own mark
  is the smallest of its nodes' (each node's newest event minus the lateness: nodes
  share partitions, their agents need not be in step). A node silent for
  `idle_flush_s` is finished; a partition caught up to its high-water mark, all its
  nodes finished and idle for `idle_flush_s` flushes (end of input, as the
  in-process runner's finish()).
* State in changelog-backed tables with checkpoints: operator state lives in a
  dict per key; every `checkpoint_s` what must survive of each changed key goes to
  the table's changelog (op.durable: the state without its input buffer). Input
  records are acknowledged (their offsets committed) only once every event in them
  is below their key's watermark and a checkpoint covers it: a killed worker's
  successor restores the checkpoint (op.restore) and re-reads every record not
  acknowledged, which refills the buffers; the operators drop what they already
  applied (duplicates, or events behind their watermark), and chains/alerts carry
  deterministic ids, so downstream dedup by id is exact. Each changelog record carries its
  format (checkpoint.py): a worker meeting one it does not read (written by a newer worker)
  stops with exit status 1 and says what to do, instead of misreading it.
* Bad records never stop the worker: they go to svctrace.deadletter with the reason.
* Cost per event close to the core's: syscall batches decode straight into SyscallEvents, their
  equal strings shared (the core runs ~10% slower on a new string per value), chains, alerts and
  occurrences are written by msgspec and enriched batches encode without a dict per event
  (wire.py), a fetched record reaches its stream without Faust's four tasks per record when it
  fits at once (ShortPollConsumer.wait_first), a syscalls partition is
  advanced once its fetched backlog is read (so releases, and the flows records they make,
  hold thousands of events), the stitch stage takes the
  flows records this worker sent itself as the enrich stage's objects (wire.LocalHandoff: no
  JSON decode), records go to the producer as bytes (no Faust message machinery per record),
  chains, alerts and occurrences as one producer batch per partition (no send() per record),
  flows records are msgpack rows (the flows-batch form: a third of the enriched-batch JSON's CPU
  to write, half to read, a quarter of the bytes), everything compressed with zstd in batches
  of up to 256 KiB (aiokafka's lz4 is LZ4-HC; snappy costs less CPU but moves 5x the bytes), progress goes out as one record per downstream partition
  for all sources of this worker, and the process runs the cycle collector rarely
  (fewer_gc_passes) and keeps its live state out of its passes (GcFreezer, at the tick). `python -m bench.pipeline --stages` shows where the CPU goes.
* A mark this worker announces reaches its own stitch partitions without the Kafka hop (20-25 ms,
  a few 100 ms under load), when that is what reading its record would do: every record this
  process sent to svctrace.flows is numbered (wire.LocalHandoff), and a partition takes the marks
  at once only when it has read back the last one sent to it (nothing of ours in flight that the
  marks could pass). The record still goes out (a successor, other workers' partitions). Records of
  marks go out at most every heartbeat_s; between them, a mark the enrich stage releases is taken by
  these partitions at once, without a record (_marks_to_own).
* Nor does the enrich stage's output for those partitions go through Kafka: route() hands a batch to
  the stitch stage as it is made (no encoding, compression, produce, fetch). What must survive the
  worker is written at the next checkpoint, as flows records: only what the stitch state written then
  does not hold (buffered events; all of a partition caught mid-advance), in this order: those copies
  and the stitch state, then the enrich state that released them, then the marks that pass them.
  Such a partition's log carries only marks a checkpoint made durable ("durable marks"): a successor
  reading a later one would pass events that lived only in the dead worker's memory (its enrich
  successor releases them again, and they would be late). Those records are for a successor: read back
  here they are only acknowledged (this process holds their events, and takes newer marks at once).
* An alert comes out one Kafka hop after its chain less: an occurrence for an alerts partition this
  worker reads is applied by the stitch stage as it is sent (AppliedHere); its record still goes to
  the occurrence topic (the durable copy a successor re-reads) and is only acknowledged here.
* A consumer that stopped working stops the worker (exit status 1, the error logged): an error
  aiokafka leaves to its user (a heartbeat error it does not expect, its fetch task ending),
  which Faust never looks at, would otherwise leave a silently dead group member.
"""
from __future__ import annotations

import asyncio
import gc
import logging
import time
import zlib
from bisect import bisect_left
from dataclasses import dataclass, field, replace
from operator import attrgetter
from typing import Any, NamedTuple

import faust
import orjson
from aiokafka.errors import KafkaError
from aiokafka.producer.message_accumulator import BatchBuilder
from faust.types import TP
from faust.transport.consumer import ensure_TPset
from faust.transport.drivers import aiokafka as faust_aiokafka
from mode.services import WaitResults

from svctrace.kafka.admin import RETRIABLE_CREATE_ERRORS, topic_name
from svctrace.kafka.batches import FailedSends, PartitionBatches, drop_queued
from svctrace.kafka.clients import (
    COMPRESSION, connection_settings, read_fetched_zstd_in_place, reuse_zstd_contexts, track_every_topic,
)
from svctrace.kafka.deadletter import dead_letter, encode as encode_dead_letter
from svctrace.schemas import catalogue as cat
from svctrace.schemas.models import DecodeError, dumps
from svctrace.streams.core import Graph, Settings
from svctrace.streams.core.alerts import ALERTS_TOPIC
from svctrace.streams.core.enrich import ENRICHED_SCHEMA, ENRICHED_TOPIC, FLOWS_TOPIC
from svctrace.streams.core.enriched import EnrichedEvent, EventRun
from svctrace.streams.core.keys import bucket_partition
from svctrace.streams.core.stitch import CHAINS_TOPIC, OCCURRENCES_TOPIC
from svctrace.streams.faust_app.checkpoint import (
    PART_SEP, PARTS_FIELD, CheckpointFormatError, dumps_checkpoint, dumps_meta, dumps_part, is_parts_header,
    loads_checkpoint, loads_meta, loads_part,
)
from svctrace.streams.faust_app.cluster_feed import ClusterFeed
from svctrace.streams.faust_app.metrics import WorkerMetrics
from svctrace.streams.faust_app.progress import (
    DONE, HELD, MARKS_HEADER, SOURCE_HEADER, SourceProgress, decode_progress, encode_marks, must_hold,
)
from svctrace.streams.faust_app.wire import (
    APPLIED_HEADER, HANDOFF_HEADER, AppliedHere, LocalHandoff, decode_syscall_batch, encode_chain, encode_enriched_batch,
    encode_flows_batch, encode_record, read_flows_record,
)
from svctrace.streams.metadata.index import ClusterIndex

log = logging.getLogger("svctrace.worker")
_ENRICHED_TS = attrgetter("ev.ts")
_TS = attrgetter("ts")


def _complete_ns(headers) -> int | None:
    """The completeness a live agent's syscalls record claims (cat.COMPLETE_HEADER), if it has a readable one.
    One that is not a number is ignored: the record's events are good, they wait out the lateness."""
    for key, value in (headers.items() if hasattr(headers, "items") else headers or ()):
        if key == cat.COMPLETE_HEADER:
            try:
                return int(value)
            except (TypeError, ValueError):
                return None
    return None


TOPIC_CREATE_TIMEOUT_S = 60.0
TOPIC_CREATE_RETRY_S = 0.5
# A stitch bucket's state (open connections of its flows) can exceed Kafka's 1 MiB default.
MAX_STATE_BYTES = 32 * 1024 * 1024
EMPTY_ENRICHED = orjson.dumps({"schema": "svctrace.enriched-batch", "version": 1, "events": []})
# Events per record on svctrace.flows / svctrace.events.enriched: like an agent's batch (a release
# of a backlog holds many thousands per bucket; ~700 B of JSON each, 1 MiB per record at most).
RECORD_EVENTS = 1000
# Bytes per such record before compression, at most: compressed it stays below the topics' max.message.bytes
# (1 MiB) whatever the payloads (svctrace.kafka.batches: a value this small fits).
RECORD_BYTES = 768 * 1024
# Records per producer batch, in bytes before compression (Faust's default: 16 KiB). Chain records
# (~2 KiB) go out thousands at a time: each batch costs a compression call (zstd: ~25 us fixed),
# CRC, a request entry and a future; bigger ones also compress better. Compressed, it stays far
# below a topic's max.message.bytes (1 MiB).
PRODUCER_BATCH_BYTES = 256 * 1024
# A partition whose last fetch response is older than this has no known "nothing new": the broker
# is unreachable (restarting) or the partition is paused, so its silence does not count as idle.
BROKER_SILENT_S = 2.0
# How long a checkpoint waits for the stitch stage to finish its advances in flight (see checkpoint()).
QUIET_WAIT_S = 0.2
# A checkpoint lets go of the events handed since the last one about this many at a time (freeing one takes
# 0.2-0.5 us, cold): a few ms, then the loop takes records again.
FREE_SLICE_EVENTS = 5000
# A checkpoint in slices (the stitch stage: StageShell.finish) serializes entries for about this long at a
# time, then lets the loop take records again; SLICE_ENTRIES per call between two looks at the clock.
SLICE_S = 0.005
SLICE_ENTRIES = 64
TAKE_RECORDS = 4096  # records the store takes at once (StageShell._take), and the producer's batches (write())


@dataclass(frozen=True)
class WorkerConfig:
    bootstrap: str
    app_id: str = "svctrace-worker"
    topic_prefix: str = ""
    data_dir: str = "svctrace-worker-data"
    settings: Settings = field(default_factory=lambda: Settings(emit_enriched=True))
    idle_flush_s: float = 10.0  # a caught-up partition idle this long flushes (end of input)
    checkpoint_s: float = 3.0  # operator state -> changelog, then input offsets acknowledged (command.py)
    heartbeat_s: float = 0.1  # progress to the stitch stage at most this often (chain latency)
    occurrences_heartbeat_s: float = 1.0  # ... to the alerts stage (it only closes suppression windows)
    release_events: int = 20_000  # a backlogged syscalls partition is advanced every this many events
    live_lag_s: float = 10.0  # a source whose events arrive at most this old is live (see _advance_idle)
    session_timeout_s: float = 10.0  # a dead worker's partitions move after this
    standby_replicas: int = 1


def stable_partition(key: str, partitions: int) -> int:
    return zlib.crc32(key.encode("utf-8")) % partitions


def _records(batch: dict, encode):
    """An enriched batch as records, (chunk, its bytes by `encode`): at most RECORD_EVENTS events and
    RECORD_BYTES bytes each, loss markers in the first. A chunk over RECORD_BYTES is cut again into as
    many events as its bytes say fit (encoded once more, only then): with payloads of up to 4 KiB
    (--snaplen 4096), incompressible when they are TLS, 1000 events are ~4 MB, which the broker refuses."""
    events = batch.get("events") or ()
    if len(events) <= RECORD_EVENTS:
        pending = [batch]
    else:
        pending = [_chunk(batch, events, i, i + RECORD_EVENTS) for i in range(0, len(events), RECORD_EVENTS)]
    pending.reverse()  # (a stack, first chunk on top)
    while pending:
        chunk = pending.pop()
        data = encode(chunk)
        n = len(chunk.get("events") or ())
        if len(data) <= RECORD_BYTES or n <= 1:  # (one event is at most a few payload KiB: it fits)
            yield chunk, data
            continue
        events = chunk["events"]
        step = max(1, min(n // 2, n * RECORD_BYTES // len(data)))
        pending.extend(reversed([_chunk(chunk, events, i, i + step) for i in range(0, n, step)]))


def _chunk(batch: dict, events, start: int, end: int) -> dict:
    chunk = {**batch, "events": events[start:end]}
    if start and "lost" in chunk:
        del chunk["lost"]
    return chunk


# -- Faust plumbing: TLS/SASL, an idempotent producer ---------------------------------------

def faust_credentials(settings: dict):
    """connection_settings() (TLS/SASL from the environment the Helm chart sets) as Faust's
    broker_credentials, which its consumer, producer and admin client all use."""
    protocol = settings.get("security_protocol", "PLAINTEXT")
    if protocol == "PLAINTEXT":
        return None
    if protocol == "SSL":
        return faust.SSLCredentials(settings["ssl_context"])
    return faust.SASLCredentials(username=settings.get("sasl_plain_username"),
                                 password=settings.get("sasl_plain_password"),
                                 ssl_context=settings.get("ssl_context"), mechanism=settings.get("sasl_mechanism"))


class IdempotentProducer(faust_aiokafka.Producer):
    """Faust enables idempotence only for exactly-once transactions; we want it always."""

    def _settings_extra(self):
        return {**super()._settings_extra(), "acks": "all", "enable_idempotence": True}

    def _new_producer(self, transactional_id=None):
        producer = super()._new_producer(transactional_id)
        track_every_topic(producer.client)
        return producer


# Longest a fetch waits at the broker for new records (Faust hard-codes 1.5 s). A live source's
# watermark follows the time of the last fetch (Worker._advance_idle): with nothing arriving, the
# long poll left it up to this far behind (the tail of the alert latency).
FETCH_MAX_WAIT_MS = 50
# After a DONE syscalls partition of a worker has records again, its other DONE partitions are held until the
# broker has answered a fetch of theirs asked since (a backlog published at once may show in a later answer), at
# most this long (a partition without answers, paused, holds nothing back longer).
REACTIVATION_WAIT_S = 1.0


class FetchAnswer(NamedTuple):
    """What the broker's last answer to a fetch said of a partition: its log ended at `highwater`
    at some moment after `asked_ns` (wall clock, when the request was made). A record it did not
    count was appended after asked_ns. One object, replaced whole: a reader never pairs one answer's
    highwater with another's time."""
    asked_ns: int
    highwater: int


def note_fetch_answers(fetcher, answers: dict) -> None:
    """Keep, per partition, the FetchAnswer of the broker's last answer to aiokafka's `fetcher`
    (answers[(topic, partition)], written in the consumer thread, read by the worker's).

    aiokafka stamps a partition's highwater with the time the response was handled
    (last_poll_timestamp). The broker read its log end earlier, by the response's time in flight
    and in the socket, and a consumer thread starved of the GIL (a checkpoint's serialization) can
    leave it there for tens of ms: a record appended meanwhile is in neither the highwater nor the
    records, yet older than that stamp. A watermark driven by the stamp passed such records (their
    events came out late: chains "incomplete" on a live worker). The time the request was sent has
    no such gap. The answer is the broker's word about its log whether or not aiokafka applies the
    response (it discards one for a partition it has since seeked). Fetches go to partition leaders
    (no client rack), whose highwater counts every acknowledged record.
    (aiokafka 0.14's Fetcher sends fetches through its `_client`; tests/test_kafka_fetch_answers.py.)"""
    fetcher._client = _FetchAnswersNoted(fetcher._client, answers)


class _FetchAnswersNoted:
    """A Fetcher's view of its Kafka client: as the client, but every fetch's answers are noted."""

    FETCH = 1  # the Kafka API key of Fetch requests

    def __init__(self, client, answers: dict):
        self._svctrace_client, self._svctrace_answers = client, answers

    def __getattr__(self, name):
        return getattr(self._svctrace_client, name)

    async def send(self, node_id, request, *args, **kwargs):
        asked_ns = time.time_ns()
        response = await self._svctrace_client.send(node_id, request, *args, **kwargs)
        if request.API_KEY == self.FETCH:
            answers = self._svctrace_answers
            for topic, partitions in response.topics:
                for partition, error_code, highwater, *_ in partitions:
                    if error_code == 0:
                        answers[(topic, partition)] = FetchAnswer(asked_ns, highwater)
        return response


class ConsumerFailed(Exception):
    """aiokafka's consumer stopped working on an error it leaves to its user (the cause)."""


class ShortPollConsumerThread(faust_aiokafka.AIOKafkaConsumerThread):
    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.fetch_answers: dict[tuple[str, int], FetchAnswer] = {}

    async def on_start(self) -> None:
        await super().on_start()
        note_fetch_answers(self._consumer._fetcher, self.fetch_answers)

    def _create_worker_consumer(self, transport):
        consumer = super()._create_worker_consumer(transport)
        consumer._fetch_max_wait_ms = FETCH_MAX_WAIT_MS  # read by start(), which builds the Fetcher
        return consumer

    async def _fetch_records(self, consumer, active_partitions, timeout=None, max_records=None):
        """Faust fetches from aiokafka's Fetcher directly, skipping the check_errors() that starts
        AIOKafkaConsumer.getmany(). An error the group coordinator does not handle itself (an
        unexpected heartbeat error, lost group authorization) parks its coordination routine until
        that call: no heartbeats, no rejoin, the member silently dead while its partitions wait for
        it. (A fetch waiting for records at that moment gets a copy of the error, surfaced here too.)
        Nor does anything look at aiokafka's background fetch task, which an unexpected error in
        handling a fetch response ends for good: no records ever after."""
        self._check_consumer(consumer)
        try:
            return await super()._fetch_records(consumer, active_partitions, timeout=timeout,
                                                max_records=max_records)
        except KafkaError:
            self._check_consumer(consumer)
            raise

    @staticmethod
    def _check_consumer(consumer) -> None:
        try:
            consumer._coordinator.check_errors()
        except Exception as e:  # noqa: BLE001 - whatever it raises, the group membership is gone
            raise ConsumerFailed(e) from e
        fetch_task = consumer._fetcher._fetch_task
        if fetch_task.done() and not (consumer._closed or consumer._fetcher._closed):
            error = None if fetch_task.cancelled() else fetch_task.exception()
            raise ConsumerFailed(error or RuntimeError("aiokafka's fetch task ended")) from error


class _Started:
    """A coroutine already stepped once (`yielded`: what its first step yielded), as an awaitable that
    goes on from there: the task awaiting it waits for what it yielded, then resumes it."""

    __slots__ = ("coro", "yielded")

    def __init__(self, coro, yielded):
        self.coro, self.yielded = coro, yielded

    def __await__(self):
        coro, yielded = self.coro, self.yielded
        while True:
            try:
                value = yield yielded
            except BaseException as e:  # noqa: BLE001 - thrown into the coroutine, as await would (cancel)
                try:
                    yielded = coro.throw(e)
                except StopIteration as stop:
                    return stop.value
            else:
                try:
                    yielded = coro.send(value)
                except StopIteration as stop:
                    return stop.value


class ShortPollConsumer(faust_aiokafka.Consumer):
    """The worker's Faust consumer: short fetch waits, and no fetched record silently lost.

    Faust drops fetched records it cannot deliver (their partition paused) although aiokafka's
    position has moved past them, and counts on the seek to the committed offsets that ends
    every rebalance to fetch them again. Three ways a partition lost records for good (it got
    nothing more until the next rebalance, and every chain waiting for its watermark stalled:
    the intermittent multi-worker and restart failures):

    * Faust resumes the stream partitions, seeks, then resumes flow control, which empties every
      stream's queue: records fetched after the seek were emptied away. resume_partitions()
      here only notes the partitions; resume_flow(), called right after that emptying, starts them.
    * The seek skips a partition without a committed offset (aiokafka seeks offsets > 0 only), one
      processed but not yet checkpointed: seek_to_committed() sends those to their beginning
      (auto_offset_reset=earliest).
    * Faust hands aiokafka its live set of active partitions, which a pause can empty while the
      fetch waits; aiokafka takes an empty set for every partition and returned records of paused
      ones. _getmany() passes a copy."""

    _resume_with_flow: frozenset = frozenset()

    def _new_consumer_thread(self):
        return ShortPollConsumerThread(self, loop=self.loop, beacon=self.beacon)

    def resume_partitions(self, tps) -> None:
        self._resume_with_flow = self._resume_with_flow | ensure_TPset(tps)

    def resume_flow(self) -> None:
        pending, self._resume_with_flow = self._resume_with_flow, frozenset()
        if pending:
            super().resume_partitions(pending)
        super().resume_flow()

    async def seek_to_committed(self):
        committed = await super().seek_to_committed()
        uncommitted = [tp for tp, offset in committed.items()
                       if not (offset and offset > 0) and not self._is_changelog_tp(tp)]
        if uncommitted:
            await self._thread.seek_to_beginning(*uncommitted)
        return committed

    async def _getmany(self, active_partitions, timeout):
        if active_partitions is not None:
            active_partitions = frozenset(active_partitions)
            if not active_partitions:
                return {}
        try:
            return await super()._getmany(active_partitions, timeout)
        except ConsumerFailed as e:
            await self._stop_on_consumer_failure(e.args[0])
            return {}

    async def _stop_on_consumer_failure(self, error: BaseException) -> None:
        """Stop the worker with a non-zero exit (its pod restarts): the consumer cannot recover
        (aiokafka restarts neither its heartbeat nor its fetch task after such an error), and a
        restart loses nothing (state is checkpointed, input acknowledged only once applied)."""
        if not self.app.should_stop:
            log.error("Kafka consumer failed: %r; stopping the worker (exit status 1)", error)
            await self.app.crash(error)

    async def wait_first(self, *coros, timeout=None):
        """Faust's fetch loop (_drain_messages) hands over each record with
        wait_first(callback(message), self.suspend_flow.wait()): four tasks, an asyncio.wait and three
        cancellations per record (~40 us; a syscalls record is one, each alert occurrence another). The
        hand-over almost always completes at its first step (its stream's queue has room); when flow is
        not suspended and the consumer neither stopping nor crashed, it is then the race's only winner,
        as it would be there: taken here with no task. One that has to wait goes on the general path,
        started as it is (_Started), so suspending flow, stopping or crashing still abandon it."""
        if timeout is None and len(coros) == 2 and self._is_flow_wait(coros[1]) and not (
                self.suspend_flow.is_set() or self._stopped.is_set() or self._crashed.is_set()):
            handover, flow_wait = coros
            try:
                first = handover.send(None)
            except StopIteration as done:
                flow_wait.close()  # never started: nothing to wait for, no "never awaited" warning
                return WaitResults([handover], [done.value], False)
            except BaseException:
                flow_wait.close()
                raise
            return await super().wait_first(_Started(handover, first), flow_wait)
        return await super().wait_first(*coros, timeout=timeout)

    def _is_flow_wait(self, coro) -> bool:
        """Whether coro is this consumer's suspend_flow.wait(), not started yet."""
        frame = getattr(coro, "cr_frame", None)
        return (frame is not None and frame.f_code is type(self.suspend_flow).wait.__code__
                and coro.cr_suspended is False and not coro.cr_running and frame.f_locals.get("self") is self.suspend_flow)

    async def on_partitions_revoked(self, revoked) -> None:
        self._resume_with_flow = frozenset()  # a new assignment pauses everything again
        await super().on_partitions_revoked(revoked)

    async def on_partitions_assigned(self, assigned, generation_id: int = 0) -> None:
        self._resume_with_flow = frozenset()
        await super().on_partitions_assigned(assigned, generation_id)


read_fetched_zstd_in_place()  # before bench.worker_stages wraps the codec (still clocked)
reuse_zstd_contexts()


class IdempotentTransport(faust_aiokafka.Transport):
    Producer = IdempotentProducer
    Consumer = ShortPollConsumer

    async def _create_topic(self, *args, **kwargs) -> None:
        """Faust creates its changelog topics itself and gives up at the first error, and the
        worker with it. Retriable errors (a broker restarting: NodeNotReady), a broker briefly
        fenced under load (INVALID_REPLICATION_FACTOR) and a controller move are retried, as
        svctrace.kafka.admin.ensure_topics does."""
        deadline = time.monotonic() + TOPIC_CREATE_TIMEOUT_S
        while True:
            try:
                return await super()._create_topic(*args, **kwargs)
            except Exception as e:  # noqa: BLE001 - Faust raises KafkaError subclasses and RuntimeError
                retriable = (getattr(e, "retriable", False) or getattr(e, "errno", None) in RETRIABLE_CREATE_ERRORS
                             or "Invalid controller" in str(e))
                if not retriable or time.monotonic() > deadline:
                    raise
                log.warning("creating a topic failed, retrying: %s", e)
            await asyncio.sleep(TOPIC_CREATE_RETRY_S)  # back off, not synchronisation


@dataclass(frozen=True, slots=True)
class InternalTopic(cat.Topic):
    """A worker-internal topic (a table's changelog) with its extra Kafka configs."""

    extra_configs: tuple[tuple[str, str], ...] = ()

    def kafka_config(self) -> dict[str, str]:
        return {**cat.Topic.kafka_config(self), **dict(self.extra_configs)}


class SvctraceApp(faust.App):
    def _new_transport(self):
        return IdempotentTransport(self.conf.broker_consumer, self)


# -- one keyed stage on Faust ------------------------------------------------------------

@dataclass
class Pending:
    event: Any
    key: str | None
    max_ts: int | None  # None: nothing buffered by the operator (ack at the next checkpoint)


class Heard(NamedTuple):
    """A node's last events on a syscalls partition: when they arrived (monotonic s), and whether
    they were fresh (a live agent, not a replay)."""

    at: float
    live: bool


_PART_SEP = PART_SEP.encode()


class StageShell:
    """Drives one core operator for the partitions this worker owns.

    Live state: key -> operator state (dict). Each partition also has a progress
    entry under key "#<partition>" with what the stage needs to resume: the keys
    it owns, its clock and its upstream progress.

    An operator with durable_parts (the stitch and alerts stages) is checkpointed in parts
    (checkpoint.py, formats 5 and 6): a key's record is its header, each entry of its state
    a record keyed <key> PART_SEP <entry key>, written when it changed. One with begin_parts (the
    stitch stage) in slices too: snapshot() cuts (headers, which entries), finish() serializes the
    entries between records, as they were at the cut."""

    def __init__(self, worker: "Worker", name: str, op, table, partitions: int, sources: int):
        self.worker, self.name, self.op, self.table = worker, name, op, table
        self.partitions, self.sources = partitions, sources
        self.live: dict[str, dict] = {}
        self.dirty: dict[int, set[str]] = {}
        self.deleted: dict[int, set[str]] = {}
        self.pending: dict[int, list[Pending]] = {}
        self.meta: dict[int, dict] = {}
        self.locks: dict[int, asyncio.Lock] = {}
        self.in_parts = hasattr(op, "durable_parts")
        # Checkpointed in slices (op.begin_parts, the stitch stage): snapshot() cuts, finish() serializes the
        # changed entries between records. The cut keys, (p, key, state, full, header bytes), until finish().
        self.in_slices = hasattr(op, "begin_parts")
        self._cuts: list[tuple[int, str, dict, bool, bytes]] = []
        self._left: set[int] | None = None  # partitions forgotten while a cut's entries were being serialized
        self.part_keys: dict[str, set[bytes]] = {}  # key -> its entries' changelog keys the store holds
        self._grouped: dict[str, dict[bytes, bytes]] | None = None  # the store's entries by key (_stored_parts)
        self._dropped: set[str] = set()  # keys dropped since the last checkpoint (their records still stored)
        # Changelog keys whose store value (or absence: a tombstone) the changelog may not have yet: a
        # checkpoint's records from the moment it takes them (the store holds them then) until its sends are
        # confirmed (confirm()). A checkpoint that did not finish sends them again, from the store.
        self._unsent: dict[bytes, int] = {}  # changelog key -> partition
        self._sent: tuple[list[asyncio.Future], list[bytes]] = ([], [])  # the last write()'s batches and keys

    def lock(self, p: int) -> asyncio.Lock:
        """Held while partition p advances or flushes and announces it. An advance changes the state
        at once but sends its outputs over several awaits: meanwhile no other advance of p may
        announce a mark past outputs not yet sent (they would arrive late downstream), and no
        checkpoint may write p's state (a crash would lose the outputs the state says were sent)."""
        lock = self.locks.get(p)
        if lock is None:
            lock = self.locks[p] = asyncio.Lock()
        return lock

    # state ------------------------------------------------------------------------------
    def forget(self, p: int) -> None:
        if self._left is not None:
            self._left.add(p)  # (its cut is not written: finish())
        meta = self.meta.pop(p, None)
        for key in (meta or {}).get("keys", ()):
            self.live.pop(key, None)
        for key in (*(meta or {}).get("keys", ()), *self.deleted.get(p, ())):
            self.part_keys.pop(key, None)
            self._dropped.discard(key)
        self._unsent = {k: q for k, q in self._unsent.items() if q != p}  # (p's state is its next owner's now)
        for table in (self.dirty, self.deleted, self.pending):
            table.pop(p, None)
        self._grouped = None  # (the store changes with the partitions it holds)

    @property
    def _records(self):
        """The store's records, {changelog key: value}: Faust's memory store keeps them in a dict (its `data`)
        behind Python methods (get, pop, [], in: each a Python call or two, ~0.2 us more per record, and pop()
        of a key it lacks raises and catches KeyError); a checkpoint does several per record, so the dict is
        used directly (the same operations: the memory store adds nothing to them). Another store, as it is."""
        store = self.table.data
        data = getattr(store, "data", None)
        return data if data.__class__ is dict else store

    def _stored(self, key: str) -> bytes | None:
        return self._records.get(key.encode())

    def state(self, key: str) -> dict:
        st = self.live.get(key)
        if st is None:
            # A key dropped since the last checkpoint starts anew: its records in the store are older
            # than what it went through since (they are replaced or tombstoned at the next checkpoint).
            raw = None if key in self._dropped else self._stored(key)
            if not self.in_parts:
                st = self.op.restore(self._load(loads_checkpoint, raw, key)) if raw else self.op.new_state()
            else:
                st = self._restore_parts(key, raw)
            self.live[key] = st
        return st

    def _restore_parts(self, key: str, raw: bytes | None) -> dict:
        """A key of a stage checkpointed in parts: its header and entries, or a format-4 whole record."""
        if not raw:  # a new key (no entries without a header), or one dropped (its entries known)
            self.part_keys.setdefault(key, set())
            return self.op.new_state()
        durable = self._load(loads_checkpoint, raw, key)
        stored = self._stored_parts(key, durable.get(PARTS_FIELD))
        self.part_keys[key] = set(stored)
        if not is_parts_header(durable):
            return self.op.restore(durable)  # format 4: its next checkpoint writes it in parts
        cut = len(key.encode()) + len(_PART_SEP)
        entries = {k[cut:].decode(): loads_part(v) for k, v in stored.items()}
        if len(entries) != durable[PARTS_FIELD]:
            log.warning("%s state of key %r: %d entries in the store, its header counts %d", self.name, key,
                        len(entries), durable[PARTS_FIELD])
        return self.op.restore_parts(durable, entries)

    def _stored_parts(self, key: str, count: int | None) -> dict[bytes, bytes]:
        """The store's entries of key: {changelog key: value}. The store is grouped by key once (one scan,
        not one per key) and each key's group taken when it is restored. A group is used only if it is
        still the store's: as many entries as the header counts (`count`), each the very value the store
        holds (a changelog record read since, e.g. into a standby partition, is another object); else
        the store is grouped again."""
        grouped = self._grouped
        group = None if grouped is None else grouped.get(key)
        store = self._records
        if group is not None and (count is None or len(group) == count) and all(
                store.get(k) is v for k, v in group.items()):
            return grouped.pop(key)
        grouped = self._grouped = {}
        for k, v in store.items():
            i = k.find(_PART_SEP)
            if i > 0:
                group = grouped.get(k[:i])
                if group is None:
                    group = grouped[k[:i]] = {}
                group[k] = v
        grouped = self._grouped = {k.decode(): g for k, g in grouped.items()}
        return grouped.pop(key, {})

    def part_meta(self, p: int) -> dict:
        """Partition p's progress entry. Its "keys" are a dict here (insertion-ordered, so the same
        order as the list a checkpoint writes: _meta_bytes): the alerts stage has a key per rule and
        labels, thousands per partition, and a list's membership test and removal cost a scan each."""
        m = self.meta.get(p)
        if m is None:
            raw = self._stored(f"#{p}")
            m = self._load(loads_meta, raw, f"#{p}") if raw else self.new_meta()
            m["keys"] = dict.fromkeys(m.get("keys", ()))
            self.meta[p] = m
        return m

    def _meta_bytes(self, p: int) -> bytes:
        meta = self.part_meta(p)
        return dumps_meta({**meta, "keys": list(meta["keys"])})

    def _load(self, loads, raw: bytes, key: str) -> dict:
        try:
            return loads(raw)
        except CheckpointFormatError as e:
            raise e.at(f"the record of key {key!r} in changelog {self.table.changelog_topic.get_topic_name()}") from None

    def new_meta(self) -> dict:
        return {"keys": [], "progress": SourceProgress(self.sources).state}

    def touch(self, p: int, key: str) -> None:
        self.dirty.setdefault(p, set()).add(key)
        self.deleted.get(p, set()).discard(key)
        keys = self.part_meta(p)["keys"]
        if key not in keys:
            keys[key] = None

    def drop(self, p: int, key: str) -> None:
        self.live.pop(key, None)
        self.dirty.get(p, set()).discard(key)
        self.deleted.setdefault(p, set()).add(key)
        self._dropped.add(key)
        self.part_meta(p)["keys"].pop(key, None)

    # driving the operator ---------------------------------------------------------------
    async def advance_partition(self, p: int, watermark: int) -> None:
        await self.advance_keys(p, {}, watermark)

    async def advance_keys(self, p: int, marks: dict[str, int], default: int) -> None:
        """Advance every key of partition p to its own mark (marks[key], else default): the enrich
        stage's keys are nodes, each following its own clock."""
        metrics = self.worker.metrics
        dups_counter = metrics.child(metrics.dups, self.name)
        for key in list(self.part_meta(p)["keys"]):
            watermark = marks.get(key, default)
            st = self.state(key)
            if "wm" not in st and not self.op.is_idle(st):
                # A stage without a clock in its state (alerts: one key per rule + labels, many of
                # them): nothing changes before its deadline, so nothing to rewrite at the checkpoint.
                due = self.op.deadline(st)
                if due is not None and due > watermark:
                    continue
            dups = st.get("dups")
            outs = self.op.advance(st, key, watermark)
            if st.get("dups") != dups:
                dups_counter.inc(st["dups"] - dups)
            self.touch(p, key)
            await self.worker.route(self.name, p, outs)
            if self.op.is_idle(st):
                self.drop(p, key)

    async def flush_partition(self, p: int) -> None:
        await self.flush_keys(p, list(self.part_meta(p)["keys"]))

    async def flush_keys(self, p: int, keys: list[str]) -> None:
        for key in keys:
            st = self.state(key)
            dups = st.get("dups")
            outs = self.op.flush(st, key)
            if st.get("dups") != dups:
                self.worker.metrics.dups.labels(self.name).inc(st["dups"] - dups)
            await self.worker.route(self.name, p, outs)
            if self.op.is_idle(st):
                self.drop(p, key)
            else:  # e.g. alert windows, kept until the watermark passes their end + lateness
                self.touch(p, key)

    # checkpoints --------------------------------------------------------------------------
    def snapshot(self) -> tuple[list[tuple[int, bytes, bytes | None]], list[Any]]:
        """Serialize changed state; return (changelog writes, events now safe to acknowledge).

        Only what must survive is written, op.durable(state): the operators' input buffers are
        re-readable, because a record is acknowledged only once every event in it is below its
        key's watermark (applied), so a successor re-reads every record whose events a buffer
        held, and op.restore gives it a state that takes them again. A key or partition entry
        whose bytes equal what the changelog already has is not written again (a key touched
        only by buffering), nor a tombstone for a key never written.

        The store takes the records here, and they stay unsent (_unsent) until confirm() has seen the
        broker take them: a checkpoint that did not finish (a send failed, or a stage before this one
        failed to write) leaves its records to the next one, which sends them again as the store has
        them, unless it writes the key anew: a value, an entry or a tombstone is never left unsaid."""
        writes: list[tuple[int, bytes, bytes | None]] = []
        ackable: list[Any] = []
        store = self._records
        durable = self.op.durable
        busy = {p for p, lock in self.locks.items() if lock.locked()}  # mid-advance: next checkpoint
        if self._cuts:  # (a cut of a checkpoint that failed before its finish())
            self._abandon(self._cuts)
            self._cuts = []
        self._grouped = None  # (restores come together, after an assignment: no stale values held longer)
        for p in (set(self.dirty) | set(self.deleted) | set(self.pending)) - busy:
            for key in self.dirty.get(p, ()):
                self._dropped.discard(key)  # (its records are written now)
                if self.in_slices:
                    st = self.live[key]
                    full = not self.op.tracking(st)
                    self._cuts.append((p, key, st, full, dumps_checkpoint(self.op.begin_parts(st))))
                    continue
                if self.in_parts:
                    self._snapshot_parts(p, key, writes)
                    continue
                k = key.encode()
                value = dumps_checkpoint(durable(self.live[key]))
                if store.get(k) != value:
                    writes.append((p, k, value))
            for key in self.deleted.get(p, ()):
                k = key.encode()
                if k in store:
                    writes.append((p, k, None))
                for k in sorted(self.part_keys.pop(key, ())):  # (every entry: the key is idle)
                    writes.append((p, k, None))
                self._dropped.discard(key)
            k = f"#{p}".encode()
            value = self._meta_bytes(p)
            if store.get(k) != value:
                writes.append((p, k, value))
            # Acknowledge in offset order only, up to the first record still needed: Faust commits
            # the run of acknowledged offsets that follows the committed one, and an out-of-order
            # acknowledgement can let it commit past a record we still need (seen: lost chains).
            items = self.pending.get(p, [])
            done = 0
            for item in items:
                st = self.live.get(item.key) if item.key is not None else None
                if not (item.max_ts is None or st is None or item.max_ts < st.get("wm", 0)):
                    break
                ackable.append(item.event)
                done += 1
            self.pending[p] = items[done:]
            self.dirty.pop(p, None)
            self.deleted.pop(p, None)
        if self._cuts:
            self._left = set()
            return writes, ackable  # (finish() adds the cut keys' records, and the store takes them then)
        self._again(writes)
        self._take(writes)
        return writes, ackable

    def _again(self, writes: list) -> None:
        """The records of an unfinished checkpoint that this one does not write anew: first, as the store has them."""
        store = self._records
        if self._unsent:
            again = dict(self._unsent)  # (also a busy partition's: the store's values are of an earlier cut)
            for _p, k, _v in writes:
                again.pop(k, None)
            if again:
                log.warning("%s checkpoint: %d records of an unfinished checkpoint written again", self.name,
                            len(again))
                writes[:0] = [(q, k, None if store.get(k) is None else bytes(store[k])) for k, q in again.items()]

    async def finish(self, writes: list, ackable: list) -> None:
        """A checkpoint in slices (after snapshot(), which cut the keys): the changed entries of each key cut,
        serialized about SLICE_S at a time between records (the loop goes on applying them: op.next_parts
        gives every entry as it was at the cut, one about to change is serialized before it does), added to
        `writes`, then the store takes them. A partition forgotten meanwhile (revoked) is not written, nor
        its input acknowledged: it is its next owner's."""
        cuts, self._cuts = self._cuts, []
        if not cuts:
            return
        clock, next_parts, limit = time.perf_counter, self.op.next_parts, SLICE_ENTRIES
        store = self._records
        metrics = getattr(self.worker, "metrics", None)
        blocking = metrics.checkpoint_blocking if metrics is not None else _Unmeasured
        await asyncio.sleep(0)  # (after the cut)
        t0 = clock()
        done = False
        try:
            for p, key, st, full, header in cuts:
                # its entries that changed (tombstones for those gone; all of them the first time, and
                # tombstones for the stored entries it no longer has), then its header
                stored = self.part_keys.get(key)
                if stored is None:
                    stored = self.part_keys[key] = set()
                prefix = key.encode() + _PART_SEP
                gone = stored.copy() if full else None
                while True:
                    until = t0 + SLICE_S
                    while (got := next_parts(st, limit)) is not None:
                        if p not in self._left:  # (revoked meanwhile: not written)
                            self._entry_writes(p, prefix, got, stored, gone, writes)
                        if clock() >= until:
                            break
                    if got is None:
                        break
                    blocking.observe(clock() - t0)
                    await asyncio.sleep(0)  # (records, marks and ticks in between)
                    t0 = clock()
                if p in self._left:
                    continue
                for k in sorted(gone or ()):
                    writes.append((p, k, None))
                    stored.discard(k)
                k = key.encode()
                if store.get(k) != header:
                    writes.append((p, k, header))  # (after its entries)
            self._again(writes)
            for i in range(0, len(writes), TAKE_RECORDS):  # the store takes them, a slice at a time too
                if clock() >= t0 + SLICE_S:
                    blocking.observe(clock() - t0)
                    await asyncio.sleep(0)
                    t0 = clock()
                some = writes[i:i + TAKE_RECORDS]
                self._take([w for w in some if w[0] not in self._left] if self._left else some)
            done = True
        finally:
            if not done:
                self._abandon(cuts)
            left, self._left = self._left, None
        blocking.observe(clock() - t0)
        if left:
            writes[:] = [w for w in writes if w[0] not in left]
            ackable[:] = [e for e in ackable if e.message.partition not in left]

    def _abandon(self, cuts: list) -> None:
        """Cut keys whose checkpoint did not finish (it failed or was cancelled): nothing pending left in their
        states, and their next checkpoint writes every entry (the changes the cut took are not in the store)."""
        for p, key, st, _full, _header in cuts:
            while self.op.next_parts(st, 1 << 30) is not None:
                pass
            self.op.untrack(st)
            if self.live.get(key) is st and (self._left is None or p not in self._left):
                self.dirty.setdefault(p, set()).add(key)
        # Their entries' changelog keys as the store holds them: finish() updates part_keys as it serializes
        # (a tombstone's key leaves it), the store only once it takes the records; kept as finish() left them,
        # an entry the store still holds could be missing there, and no later checkpoint would tombstone it.
        mine = {key.encode(): key for _p, key, _st, _full, _header in cuts if key in self.part_keys}
        if mine:
            found: dict[str, set] = {key: set() for key in mine.values()}
            for k in self._records:
                i = k.find(_PART_SEP)
                if i > 0:
                    key = mine.get(k[:i])
                    if key is not None:
                        found[key].add(k)
            self.part_keys.update(found)

    def _entry_writes(self, p: int, prefix: bytes, entries: dict, stored: set, gone: set | None, writes: list) -> None:
        """Records of a key's serialized entries {subkey: bytes, or None for one gone} (snapshot, finish()):
        each that changed, a tombstone for each gone; `gone` (the stored ones not seen) loses those seen."""
        store = self._records
        append = writes.append
        for sub, value in entries.items():
            k = prefix + sub.encode()
            if value is None:
                if k in stored:
                    append((p, k, None))
                    stored.discard(k)
                continue
            old = store.get(k)
            # (the store holds an entry as a memoryview: compared with bytes, byte by byte, ~1.6 us per 1.5 KB;
            # its bytes() copy and compare, 0.17)
            if old is None or len(old) != len(value) or (old if old.__class__ is bytes else bytes(old)) != value:
                append((p, k, value))
            stored.add(k)
            if gone is not None:
                gone.discard(k)

    def _take(self, writes: list[tuple[int, bytes, bytes | None]]) -> None:
        """The store takes a checkpoint's records (unsent until confirmed). It keeps a checkpoint's entries as
        slices of one buffer per kind (below): thousands of small bytes objects replaced at every checkpoint
        scatter over the allocator's pools and each pins one (bench.worker_steady at 10k events/s: ~100 MiB
        more RSS for ~10 MB of entries). A buffer lives while one of its slices does. A tombstone's key leaves the memory
        store's key -> partition map too (as when Faust applies a changelog tombstone): kept, it grew by every
        entry key ever written (lookup keys name a client pid: new ones all the time)."""
        key_partition = getattr(self.table.data, "_key_partition", None)
        store = self._records
        unsent = self._unsent
        # One buffer per kind of entry (the byte after PART_SEP: the stitch stage's "c", "L", "S"): entries of one
        # kind leave together, and a buffer's memory is held until its last slice leaves. In one buffer, a
        # checkpoint's connections (mostly gone by the next) and lookup groups (~12 s) were held as long as its
        # DNS server record groups (~42 s): bench.core_checkpoint at 100k events/s, 60 s: 14 buffers, 224 MB
        # held for 80 MB of entries.
        kinds: dict[int, list] = {}
        if self.in_parts:
            for _p, key, value in writes:
                if value is not None and (i := key.find(_PART_SEP)) > 0:
                    kind = kinds.get(key[i + 1])
                    if kind is None:
                        kinds[key[i + 1]] = [value]
                    else:
                        kind.append(value)
        blobs = {kind: [memoryview(b"".join(values)), 0] for kind, values in kinds.items()}
        for p, key, value in writes:
            unsent[key] = p
            if value is None:
                store.pop(key, None)
                if key_partition is not None:
                    key_partition.pop(key, None)
                continue
            if blobs and (i := key.find(_PART_SEP)) > 0:
                blob = blobs[key[i + 1]]
                at = blob[1]
                store[key] = blob[0][at:at + len(value)]
                blob[1] = at + len(value)
            else:
                store[key] = value
            if key_partition is not None:
                key_partition[key] = p

    def _snapshot_parts(self, p: int, key: str, writes: list) -> None:
        """A key's header and the entries that changed (tombstones for those gone). The first time
        for a state (new, or read from a format-4 record) every entry, and tombstones for the stored
        entries it no longer has."""
        store = self._records
        st = self.live[key]
        full = not self.op.tracking(st)
        header, changed = self.op.durable_parts(st)
        stored = self.part_keys.get(key)
        if stored is None:
            stored = self.part_keys[key] = set()
        prefix = key.encode() + _PART_SEP
        gone = stored.copy() if full else None
        self._entry_writes(p, prefix, {sub: None if entry is None else dumps_part(entry) for sub, entry in changed.items()},
                           stored, gone, writes)
        if full:
            for k in sorted(gone):
                writes.append((p, k, None))
                stored.discard(k)
        k = key.encode()
        value = dumps_checkpoint(header)
        if store.get(k) != value:
            writes.append((p, k, value))  # (after its entries)

    async def write(self, writes) -> None:
        """Queue a checkpoint's records (the store took them in snapshot) to the changelog, in order; the
        caller flushes the producer, then confirm()s. The records of one changelog partition go as one
        producer batch (no per-record send: a checkpoint in parts writes thousands of small records), which
        Kafka appends whole: a key's header and entries of one checkpoint are durable together (a
        partition's records over MAX_STATE_BYTES take several)."""
        changelog = self.table.changelog_topic.get_topic_name()
        producer = self.worker.app.producer._ensure_producer()
        codec = producer._message_accumulator._compression_type  # (what the producer's own batches use)
        batches: dict[int, list] = {}
        for i, (p, key, value) in enumerate(writes):
            if i and not i % TAKE_RECORDS:
                await asyncio.sleep(0)  # (a checkpoint in parts writes tens of thousands: records between)
            queue = batches.get(p)
            if queue is None:
                queue = batches[p] = [BatchBuilder(MAX_STATE_BYTES, codec)]
            if queue[-1].append(timestamp=None, key=key, value=value, headers=[]) is None:
                log.warning("%s checkpoint of partition %d over %d bytes: written in several batches", self.name,
                            p, MAX_STATE_BYTES)
                queue.append(BatchBuilder(MAX_STATE_BYTES, codec))
                if queue[-1].append(timestamp=None, key=key, value=value, headers=[]) is None:
                    raise ValueError(f"a checkpoint record of {len(value or b'')} bytes does not fit a batch")
        futures: list[asyncio.Future] = []
        self._sent = (futures, [key for _p, key, _v in writes])
        for p, queue in batches.items():
            for batch in queue:
                batch.close()
                sent = await producer.send_batch(batch, changelog, partition=p)
                sent.add_done_callback(_retrieved)
                futures.append(sent)

    async def confirm(self) -> None:
        """After the producer's flush: raises if a batch of the last write() failed (its records stay unsent:
        the next checkpoint sends them again), else they are the changelog's."""
        (futures, keys), self._sent = self._sent, ([], [])
        for outcome in await asyncio.gather(*futures, return_exceptions=True):
            if isinstance(outcome, BaseException):
                raise outcome
        for key in keys:
            self._unsent.pop(key, None)


class _Unmeasured:
    @staticmethod
    def observe(_value) -> None:
        pass


def _retrieved(future: asyncio.Future) -> None:
    """(A failed send's error is raised by confirm(), or not at all if no confirm() follows: not logged twice.)"""
    if not future.cancelled():
        future.exception()


def fewer_gc_passes(gen0: int = 500_000) -> None:
    """The stages allocate many small objects: with CPython's default gen-0 threshold (700) the cycle
    collector runs constantly, and its older generations walk the whole live state (the in-process
    runner raises the threshold to the same 500k for a run: runner.fewer_gc_passes). A worker lives long: raise
    it for the process, and freeze what start-up allocated out of the collector's way.
    A gen-0 pass walks the young objects still alive: in a steady stream about the events and state
    the stages hold (lateness and settle worth), whatever the threshold, so the collector's CPU falls
    with the number of passes. And it finds next to nothing: 245 objects of cyclic garbage in 6 passes
    (600k allocations) over the bench's 126k events. So 500k (at most that many allocations'
    worth of cyclic garbage held meanwhile). In the bench's backlog, where every event lives until its
    chain closes, a pass walks up to the threshold: one of ~90 ms or none in the span instead of 5-6 of
    12-18 ms."""
    gc.freeze()
    threshold = gc.get_threshold()
    gc.set_threshold(max(threshold[0], gen0), threshold[1], threshold[2])


class GcFreezer:
    """Keeps the live state out of the cycle collector's passes (the worker's tick calls it).

    What the stages keep (buffers, connections, DNS lookups and server records: seconds to tens of seconds
    of events) is acyclic, freed by reference counting, and a live worker's state is large (40k events/s:
    over a million tracked objects). With only fewer_gc_passes, every object that lives past the next gen-0
    pass is walked by it, then by a gen-1 pass, and a gen-0 pass of the young state took ~250-350 ms every
    ~10 s (the passes found no cyclic garbage). Every `every_s`, gc.freeze() moves everything tracked to the
    permanent generation, which no pass walks (an O(1) list splice; a frozen object freed by its count
    leaves it as any other): most objects are frozen before any pass sees them. The price is cyclic garbage
    among frozen objects, which no pass can find: now and then everything is unfrozen and one full
    collection runs, a stall of about a second per million objects (20k events/s: 455k objects, 0.6 s of
    CPU), so such garbage waits at most that long.

    Also sooner than `every_s` once the young generation holds half the gen-0 threshold: at high rates
    (100k events/s, ~2 tracked objects an event live for a second or more) it fills within 3 s, and a gen-0
    pass over those ~500k live objects took ~300 ms of CPU (0.5-0.9 us/event in bench.worker_steady at
    80-100k events/s) to find nothing.

    How often: `full_s` at first; a collection that found little (at most GARBAGE_PER_S per second since
    the last) doubles the wait, up to `max_full_s`, and one that found more brings it back to `full_s`.
    A live worker's found none after its start (bench.worker_steady at 20k events/s, a collection every
    40 s for 3 minutes: 307 objects, then 0 five times), so its stalls become rare; a source of cycles (a
    flood of dead letters: an exception keeps its frames) keeps them frequent while it lasts."""

    GARBAGE_PER_S = 10  # cyclic garbage a worker may make per second and still wait longer: ~1 KB/s

    def __init__(self, every_s: float = 3.0, full_s: float = 600.0, max_full_s: float = 4800.0,
                 clock=time.monotonic):
        self.every_s, self.full_s, self.max_full_s, self.clock = every_s, full_s, max_full_s, clock
        self.young_limit = max(gc.get_threshold()[0] // 2, 1)  # (the threshold fewer_gc_passes set)
        self.full_wait = full_s  # until the next full collection, from the last
        now = clock()
        self.frozen_at, self.full_at = now, now
        self.collected = 0  # cyclic garbage the full collections found

    def tick(self) -> None:
        now = self.clock()
        if now - self.full_at >= self.full_wait:
            waited, self.full_at = now - self.full_at, now
            self.frozen_at = now
            gc.unfreeze()
            found = gc.collect()
            gc.freeze()
            self.collected += found
            if found <= self.GARBAGE_PER_S * waited:
                self.full_wait = min(2 * self.full_wait, self.max_full_s)
            else:
                self.full_wait = self.full_s
        elif now - self.frozen_at >= self.every_s or gc.get_count()[0] >= self.young_limit:
            self.frozen_at = now
            gc.freeze()


class Worker:
    """Builds the Faust app for a WorkerConfig; `app` is the faust.App to run."""

    def __init__(self, config: WorkerConfig, metrics: WorkerMetrics | None = None):
        fewer_gc_passes()
        self.gc = GcFreezer()

        self.config = c = config
        self.metrics = metrics or WorkerMetrics()
        self.index = ClusterIndex()
        self.graph = Graph(self.index, c.settings)
        self.graph.stitch.encode_chain = encode_chain  # chains come out as their record bytes (wire.encode_record)
        self.lateness = c.settings.enrich_lateness_ns
        t = lambda name: topic_name(name, c.topic_prefix)  # noqa: E731
        self.names = {name: t(name) for name in (cat.SYSCALLS, cat.K8S_OBJECTS, FLOWS_TOPIC, ENRICHED_TOPIC,
                                                  CHAINS_TOPIC, ALERTS_TOPIC, OCCURRENCES_TOPIC, cat.DEADLETTER)}
        catalogue = cat.load_catalogue()
        self.partitions = catalogue[cat.FLOWS].partitions
        if self.partitions != c.settings.partitions:
            raise ValueError(f"svctrace.flows has {self.partitions} partitions but the core buckets into "
                             f"{c.settings.partitions}")
        self.source_partitions = catalogue[cat.SYSCALLS].partitions
        if self.source_partitions != self.partitions:
            raise ValueError("svctrace.syscalls and svctrace.flows must have the same partition count "
                             "(their stages are co-partitioned)")
        if catalogue[cat.ALERT_OCCURRENCES].partitions != self.partitions:
            # Faust assigns co-partitioned topics together: one worker's share of every stage lines up.
            raise ValueError("svctrace.alerts.occurrences and svctrace.flows must have the same partition count")
        self.app = self._build_app(catalogue)
        self.hb_due: dict[str, dict[int, int | str]] = {}  # downstream topic -> {source: mark} to announce
        self.hb_sent: dict[tuple[str, int], int | str] = {}
        self.hb_last: dict[str, float] = {}  # downstream topic -> when marks were last sent
        # source -> the mark this worker's own stitch partitions took between two sends (_marks_to_own)
        self.hb_here: dict[int, int | str] = {}
        self.last_input: dict[int, float] = {}
        # since when the broker has kept answering fetches of a syscalls partition (monotonic s)
        self.answering_since: dict[int, float] = {}
        self.last_offset: dict[int, int] = {}
        # when a syscalls partition of ours that was DONE had records again, last (time.time_ns(): FetchAnswer's clock)
        self.reactivated_ns: int | None = None
        # syscalls partitions this worker owns (since the assignment that gave them: _on_assigned) -> their TP
        self.sources_here: dict[int, TP] = {}
        self.live: dict[int, bool] = {}  # syscalls partition -> its latest events arrived fresh (live agents)
        # syscalls partition -> node -> when its last events arrived, fresh or not (each node of a
        # partition has its own clock, meta["nodes"], and its own silence)
        self.heard: dict[int, dict[str, Heard]] = {}
        self.unreleased: dict[int, int] = {}  # syscalls partition -> events processed since its last advance
        # syscalls partition -> node -> the newest completeness its agent claimed (cat.COMPLETE_HEADER: every
        # event of the node older than it is in a record processed). Not checkpointed: a claim stays true, and
        # the node's next record brings a new one.
        self.complete: dict[int, dict[str, int]] = {}
        self.last_checkpoint = time.monotonic()
        self._checkpointing = asyncio.Lock()
        # the outputs' deliveries (chains, alerts, occurrences, enriched and flows records, copies): a
        # failed one stops the worker at the next checkpoint, before it acknowledges anything
        self.sends = FailedSends(on_failure=self._on_send_failed)
        self._stopping_on_lost = False  # (the stop for a failed delivery is asked once)
        self.handoff = LocalHandoff()  # flows batches sent to our own stitch partitions, as objects
        # svctrace.flows partition -> the number (LocalHandoff) of the last record this process sent it,
        # and of the last one of them its stitch stage has read back since the partition was assigned
        self.flows_sent: dict[int, int] = {}
        self.flows_read: dict[int, int] = {}
        self.revocations = 0  # partitions revoked so far (a read or an advance begun before one is void)
        # svctrace.flows partition -> [(bucket key, events, loss items)] the enrich stage handed its own
        # stitch stage directly since the last checkpoint (no record: _stitch_here)
        self.handed: dict[int, list[tuple[str, list, list]]] = {}
        # Records this process wrote to the partitions it hands to, for a successor only: their durable
        # copies (tag -> (bucket key, newest event time)) and durable marks (tag -> None). Read back here
        # in the same assignment they are only acknowledged: this process has their events and newer
        # marks already (a durable mark taken after a newer one would move a source back: a DONE after
        # its reactivation, an old mark after its DONE).
        self.for_successor: dict[bytes, tuple[str, int | None] | None] = {}
        # svctrace.flows partition it hands to -> the marks it could not take at once (a record of ours
        # still in flight to it), taken as soon as it has read that back (_stitch_one)
        self.held_marks: dict[int, dict[int, int | str]] = {}
        # source -> the mark this worker announced by the last checkpoint, when everything it had
        # handed directly was durable (state or copy): the most a partition it hands to may read in
        # its log (a successor reading a later mark there would pass events that are not in it)
        self.durable_marks: dict[int, int | str] = {}
        # svctrace.flows partition it hands to -> source -> the durable mark this process last wrote to
        # its log: a mark already there is not written again (durable marks change at checkpoints only)
        self.durable_in_log: dict[int, dict[int, int | str]] = {}
        self._announcing_flows = asyncio.Lock()  # one pass of marks to the stitch stage at a time
        self.applied = AppliedHere()  # occurrences applied to our own alerts partitions as they were made
        # alerts partitions whose records this worker reads now (one came since their assignment:
        # their table is recovered), where the stitch stage may apply occurrences itself
        self.alerts_reading: set[int] = set()

    # -- building ----------------------------------------------------------------------------
    def _build_app(self, catalogue):
        c = self.config
        app = SvctraceApp(
            c.app_id,
            broker=f"kafka://{c.bootstrap}",
            broker_credentials=faust_credentials(connection_settings()),
            store="memory://",
            datadir=c.data_dir,
            web_enabled=False,
            web_bind="127.0.0.1",
            topic_partitions=self.partitions,
            topic_replication_factor=1,
            topic_allow_declare=True,
            table_standby_replicas=c.standby_replicas,
            producer_acks=-1,
            producer_compression_type=COMPRESSION,
            producer_linger_ms=5,
            producer_max_batch_size=PRODUCER_BATCH_BYTES,
            producer_max_request_size=MAX_STATE_BYTES,  # one key's state is one changelog record
            consumer_auto_offset_reset="earliest",
            broker_session_timeout=c.session_timeout_s,
            broker_heartbeat_interval=max(1.0, c.session_timeout_s / 5),
            broker_commit_interval=max(0.5, c.checkpoint_s),
            stream_wait_empty=False,
        )
        raw = dict(key_type=bytes, value_type=bytes, key_serializer="raw", value_serializer="raw")
        n = self.names
        self.t_syscalls = app.topic(n[cat.SYSCALLS], partitions=self.source_partitions, **raw)
        self.t_flows = app.topic(n[FLOWS_TOPIC], partitions=self.partitions, **raw)
        self.t_occ = app.topic(n[OCCURRENCES_TOPIC], partitions=self.partitions, **raw)
        self.t_out = {name: app.topic(n[name], **raw) for name in (ENRICHED_TOPIC, CHAINS_TOPIC, ALERTS_TOPIC,
                                                                  cat.DEADLETTER)}
        self.cluster_feed = ClusterFeed(c.bootstrap, n[cat.K8S_OBJECTS], self.index,
                                        on_change=self.graph.metadata_changed, on_bad_record=self._bad_k8s_record)
        app.task(self._run_cluster_feed)
        table = lambda name: app.Table(  # noqa: E731
            name, partitions=self.partitions, key_type=bytes, value_type=bytes,
            extra_topic_configs={"max.message.bytes": str(MAX_STATE_BYTES)})
        g = self.graph
        self.enrich = StageShell(self, "enrich", g.enrich, table("enrich-state"), self.partitions, 0)
        self.stitch = StageShell(self, "stitch", g.stitch, table("stitch-state"), self.partitions,
                                 self.source_partitions)
        self.alerts = StageShell(self, "alerts", g.alerts, table("alerts-state"), self.partitions, self.partitions)
        self.stages = (self.enrich, self.stitch, self.alerts)

        app.agent(self.t_syscalls, name="svctrace.enrich")(self._enrich_agent)
        app.agent(self.t_flows, name="svctrace.stitch")(self._stitch_agent)
        app.agent(self.t_occ, name="svctrace.alerts")(self._alerts_agent)
        app.timer(c.heartbeat_s, name="svctrace.tick")(self._tick)
        app.timer(c.checkpoint_s, name="svctrace.checkpoint")(self._checkpoint_tick)
        app.on_partitions_revoked.connect(self._on_revoked)
        app.on_partitions_assigned.connect(self._on_assigned)
        return app

    def internal_topics(self) -> list[InternalTopic]:
        """The tables' changelog topics, to create before Faust starts: a topic Faust creates
        itself while its consumer starts can be missing from that consumer's first metadata
        ("Ignoring missing topic" at assignment), and the stage then got no partitions of it
        for a metadata refresh or more (a worker that emitted nothing under load)."""
        return [InternalTopic(name=st.table.changelog_topic.get_topic_name(), key="operator state key",
                              value_schema="", partitions=self.partitions, cleanup_policy="compact",
                              retention_ms=-1, description=f"{st.name} stage state",
                              extra_configs=(("max.message.bytes", str(MAX_STATE_BYTES)),))
                for st in self.stages]

    async def _on_revoked(self, sender, revoked, **kwargs) -> None:
        """Forget the live state of partitions moving away; what we keep stays live (Faust may or
        may not re-deliver its uncommitted records: the operators drop what they already applied)."""
        inputs = {self.t_syscalls.get_topic_name(): self.enrich, self.t_flows.get_topic_name(): self.stitch,
                  self.t_occ.get_topic_name(): self.alerts}
        for tp in revoked or ():
            stage = inputs.get(tp.topic)
            if stage is not None:
                stage.forget(tp.partition)
            if stage is self.enrich:
                self.sources_here.pop(tp.partition, None)  # (no word for it from here: HELD neither)
                due = self.hb_due.get(FLOWS_TOPIC)
                if due and due.get(tp.partition) == HELD:
                    # not sent now, after its new owner may have announced it DONE: every stitch partition
                    # would wait for it until that owner speaks again
                    del due[tp.partition]
                for table in (self.last_offset, self.last_input, self.live, self.heard, self.unreleased):
                    table.pop(tp.partition, None)
            if stage is self.alerts:
                self.alerts_reading.discard(tp.partition)
                # Occurrences applied here are in the live state only (it is gone now): their records,
                # read again from the last acknowledged offset, must be applied from the record.
                self.applied.clear()
            if stage is self.stitch:
                self.flows_read.pop(tp.partition, None)
                self.revocations += 1
                self.held_marks.pop(tp.partition, None)
                handed = self.handed.pop(tp.partition, None)
                if handed:  # not durable yet: a record for its next owner (or us again)
                    await self._send_handed(tp.partition, handed)
        if any(tp.topic == self.t_flows.get_topic_name() for tp in revoked or ()):
            self.for_successor.clear()  # read again after this, they are taken as any record
        self.hb_sent.clear()  # announce again: a new owner downstream may not have heard us
        self.durable_in_log.clear()
        self.hb_here.clear()

    async def _on_assigned(self, sender, assigned, **kwargs) -> None:
        """The syscalls partitions this worker owns now (Faust assigns all of a worker's partitions at once,
        after revoking all): the sources _hold_unread() may hold. Not taken from the consumer's assignment,
        which during a rebalance can still name partitions revoked already: a HELD for a partition a new owner
        has announced DONE would hold every stitch partition until that owner speaks again."""
        syscalls = self.t_syscalls.get_topic_name()
        self.sources_here = {tp.partition: tp for tp in sorted(assigned or ()) if tp.topic == syscalls}

    async def _run_cluster_feed(self) -> None:
        try:
            await self.cluster_feed.run()
        except asyncio.CancelledError:
            raise
        except Exception as e:  # noqa: BLE001 - without cluster state no stage may run: stop loudly
            log.exception("cluster feed of %s failed", self.cluster_feed.topic)
            await self.app.crash(e)

    # -- the three agents (each waits for the ClusterIndex to catch up first) ----------------
    # The wait is inside the loop, not before it: a stream registers its topic with Faust's
    # conductor when iteration starts, and the conductor subscribes once, when the agents have
    # started. A topic registered later waits for the conductor's resubscribe (45 s): a worker
    # whose cluster feed caught up after that first subscribe got no partitions and emitted
    # nothing for that long (the intermittent failures of the multi-worker tests under load).
    async def _enrich_agent(self, stream):
        async for event in stream.noack().events():
            await self._cluster_ready()
            await self._guard("enrich", event, self._enrich_one)

    async def _stitch_agent(self, stream):
        async for event in stream.noack().events():
            await self._cluster_ready()
            await self._guard("stitch", event, self._stitch_one)

    async def _alerts_agent(self, stream):
        async for event in stream.noack().events():
            await self._cluster_ready()
            await self._guard("alerts", event, self._alerts_one)

    async def _cluster_ready(self) -> None:
        if not self.cluster_feed.ready.is_set():
            await self.cluster_feed.ready.wait()

    async def _guard(self, stage_name: str, event, handler) -> None:
        """One record: processed, or dead-lettered with the reason. Never raises."""
        msg = event.message
        stage = getattr(self, stage_name)
        try:
            await handler(event)
        except CheckpointFormatError as e:  # not the record's fault: no dead letter, not acknowledged
            await self._stop_on_unreadable_checkpoint(e)
        except (DecodeError, ValueError, KeyError, TypeError) as e:
            await self._dead_letter(stage_name, msg, f"{type(e).__name__}: {e}", e)
            stage.pending.setdefault(msg.partition, []).append(Pending(event, None, None))
        except Exception as e:  # noqa: BLE001 - the worker must outlive any one record
            log.exception("%s: record %s[%s]@%s failed", stage_name, msg.topic, msg.partition, msg.offset)
            await self._dead_letter(stage_name, msg, f"{stage_name} failed: {type(e).__name__}: {e}", e)
            stage.pending.setdefault(msg.partition, []).append(Pending(event, None, None))
        else:
            # Handled: its bytes are not read again (a pending record is only acknowledged, by its offset, at a
            # checkpoint). Freed now, while the consumer thread is making the next ones (a syscalls record is
            # ~0.5 MB): a worker held a checkpoint interval's input, ~150 MB at 100k events/s, and freeing it
            # all at once returned that memory to the system, to be faulted in again (keep_freed_memory).
            event.value = msg.value = None

    async def _enrich_one(self, event) -> None:
        """Buffer one syscall batch in its node's state; advance the partition once its backlog
        is read (or every `release_events`), so releases and flows records stay large."""
        msg = event.message
        q = msg.partition
        now = self.last_input[q] = time.monotonic()
        self.last_offset[q] = msg.offset
        batch = decode_syscall_batch(msg.value)
        events = batch.events
        metrics = self.metrics
        metrics.child(metrics.records, "enrich").inc()
        metrics.child(metrics.events, "enrich").inc(len(events))
        stage = self.enrich
        meta = stage.part_meta(q)
        node = batch.node
        if events or batch.lost:  # (not a quiet agent's empty record: only its claim, below)
            if meta.get("done"):
                self.reactivated_ns = time.time_ns()  # (_answered_before_reactivation: the others' answers from here)
            meta["done"] = False
            st = stage.state(node)
            late = st["late"]
            stage.op.process(st, node, batch)
            if st["late"] != late:
                self.metrics.late.labels("enrich").inc(st["late"] - late)
            stage.touch(q, node)
        max_ts = max(map(_TS, events)) if events else None
        stage.pending.setdefault(q, []).append(Pending(event, node, max_ts))
        if max_ts is not None:
            if meta.get("clock") is None or max_ts > meta["clock"]:
                meta["clock"] = max_ts
            live = self.live[q] = time.time_ns() - max_ts <= self.config.live_lag_s * 1e9
            clocks = meta.setdefault("nodes", {})  # node -> [its newest event time, its mark]
            own = clocks.get(node)
            if own is None:
                clocks[node] = [max_ts, None]
            elif max_ts > own[0]:
                own[0] = max_ts
            self.heard.setdefault(q, {})[node] = Heard(now, live)
        complete = _complete_ns(msg.headers)
        if complete is not None and node in meta.get("nodes", ()):  # (a node yet to send events holds nothing back)
            if max_ts is None:  # a quiet node's agent: an empty record for its claim, and it is not silent
                self.heard.setdefault(q, {})[node] = Heard(now, True)
            known = self.complete.setdefault(q, {})
            if complete > known.get(node, complete - 1):
                known[node] = complete
        self.unreleased[q] = self.unreleased.get(q, 0) + len(events)
        if self.unreleased[q] >= self.config.release_events or self._caught_up(self.app.consumer, msg.tp):
            await self._release(q)

    async def _release(self, q: int, send: bool = True) -> None:
        """Advance each node of syscalls partition q to its own clock minus the lateness, or to the
        completeness its agent claimed when that is later (a live agent's: its events need not wait out
        the lateness), and announce the partition's mark downstream (_advance_enrich)."""
        self.unreleased.pop(q, None)
        clocks = self.enrich.part_meta(q).get("nodes")
        if clocks:
            marks = {node: clock - self.lateness for node, (clock, _) in clocks.items()}
            for node, complete in self.complete.get(q, {}).items():
                if node in marks and complete > marks[node]:
                    marks[node] = complete
            await self._advance_enrich(q, marks, send)

    async def _advance_enrich(self, q: int, marks: dict[str, int], send: bool = True,
                              nodeless: int | None = None) -> None:
        """Advance the nodes of syscalls partition q to their marks (a mark never goes back) and queue
        the partition's mark: the smallest of its nodes' (`nodeless` when it has none left), which
        every event still to come from them passes; keys of finished nodes advance to it. Sent now
        unless the caller (the tick, which advances every partition before it sends) does.

        Nodes share a partition (more nodes than partitions) and their agents need not be in step
        (clock skew, a backlogged agent, a slower link): one clock for the partition, its newest
        event, dropped a lagging node's events as late."""
        async with self.enrich.lock(q):
            clocks = self.enrich.part_meta(q).setdefault("nodes", {})
            for node, mark in marks.items():
                own = clocks.get(node)
                if own is not None and (own[1] is None or mark > own[1]):
                    own[1] = mark
            node_marks = {node: own[0] - self.lateness if own[1] is None else own[1]
                          for node, own in clocks.items()}
            wm = min(node_marks.values()) if node_marks else nodeless
            if wm is None:
                return
            await self.enrich.advance_keys(q, node_marks, wm)
            self.metrics.child(self.metrics.watermark, "enrich").set(wm / 1e9)
            self._announce(FLOWS_TOPIC, q, wm)
        if send:
            await self._send_announcements(FLOWS_TOPIC)

    async def _stitch_one(self, event) -> None:
        msg = event.message
        p = msg.partition
        stage = self.stitch
        revocations = self.revocations
        number = self.handoff.number_of(msg.headers)
        _source, marks = decode_progress(msg.headers)
        tag = LocalHandoff.tag_of(msg.headers) if number is not None and self.for_successor else None
        if tag is not None and tag in self.for_successor:  # written for a successor: we hold it already
            copy = self.for_successor.pop(tag)
            marks, batch = {}, None
            # a copy is acknowledged once its events are applied, as the record it stands for would be
            stage.pending.setdefault(p, []).append(Pending(event, *copy) if copy else Pending(event, None, None))
        elif (batch := read_flows_record(msg.value, msg.headers, self.handoff)) is not None:
            key = msg.key.decode() if msg.key else f"b{p:04d}"
            events = batch["events"]
            # loss markers alone are applied at once (state["lost"]): nothing buffered to wait for
            try:
                max_ts = max(map(_ENRICHED_TS, events), default=None)
            except AttributeError:  # event dicts (a record with a malformed event)
                max_ts = max((e.ev.ts if e.__class__ is EnrichedEvent else e["ts"] for e in events), default=None)
            outs = self._stitch_apply(p, key, batch)
            stage.pending.setdefault(p, []).append(Pending(event, key, max_ts))
            if outs:
                await self.route("stitch", p, outs)
            SourceProgress(self.source_partitions, stage.part_meta(p)["progress"]).data_arrived()
        else:
            self.metrics.child(self.metrics.progress_records, "stitch").inc()
            stage.pending.setdefault(p, []).append(Pending(event, None, None))
        if marks:
            await self._progress(stage, p, marks)
        if number is not None and self.revocations == revocations and number > self.flows_read.get(p, -1):
            self.flows_read[p] = number  # (only once its marks are noted: none may pass them)
            if p in self.held_marks and number >= self.flows_sent.get(p, 0):
                async with self._announcing_flows:  # (in order with the marks it takes at once)
                    held = self.held_marks.pop(p, None)
                    if held:
                        await self._marks_here(p, held, self.revocations)

    async def _alerts_one(self, event) -> None:
        msg = event.message
        r = msg.partition
        stage = self.alerts
        self.alerts_reading.add(r)
        _source, marks = decode_progress(msg.headers)
        if msg.value:
            self.metrics.child(self.metrics.records, "alerts").inc()
            if not self.applied.take(msg.headers):  # (else the stitch stage applied it as it sent it)
                await self._apply_occurrence(r, msg.key.decode(), orjson.loads(msg.value))
        else:
            self.metrics.child(self.metrics.progress_records, "alerts").inc()
        stage.pending.setdefault(r, []).append(Pending(event, None, None))
        if marks:
            await self._progress(stage, r, marks)

    async def _apply_occurrence(self, r: int, key: str, occ: dict) -> None:
        await self.route("alerts", r, self._occurrence_outs(r, key, occ))

    def _occurrence_outs(self, r: int, key: str, occ: dict) -> list:
        """One occurrence applied to its key of alerts partition r; returns the outputs to route."""
        stage = self.alerts
        outs = stage.op.process(stage.state(key), key, occ)
        stage.touch(r, key)
        SourceProgress(self.partitions, stage.part_meta(r)["progress"]).data_arrived()
        return outs

    async def _progress(self, stage: StageShell, p: int, marks: dict, still=None) -> None:
        """Upstream partitions' announcements: advance or flush this partition, then pass it on
        (unless `still`, asked once the partition is locked, says it is no longer ours to advance)."""
        async with stage.lock(p):
            if still is not None and not still():
                return
            meta = stage.part_meta(p)
            prog = SourceProgress(stage.sources, meta["progress"])
            before = prog.watermark()
            for source, mark in marks.items():
                prog.note(source, mark)
            stage.dirty.setdefault(p, set())
            wm = prog.watermark()
            if wm is not None and (before is None or wm > before):
                await stage.advance_partition(p, wm)
                self.metrics.child(self.metrics.watermark, stage.name).set(wm / 1e9)
                if stage is self.stitch:
                    self._announce(OCCURRENCES_TOPIC, p, wm)
            elif prog.should_flush():
                if prog.high() is not None:
                    await stage.advance_partition(p, prog.high())  # timers up to the last watermark first
                await stage.flush_partition(p)
                prog.mark_flushed()
                if stage is self.stitch:
                    self._announce(OCCURRENCES_TOPIC, p, DONE)
                    await self._send_announcements(OCCURRENCES_TOPIC, force=True)
                return
            elif stage is self.stitch and prog.all_done():
                # Flushed, nothing new: DONE again downstream should a source have been heard again in
                # between (an old mark in a log a successor reads), or the alerts stage waits for it.
                self._announce(OCCURRENCES_TOPIC, p, DONE)
        if stage is self.stitch and wm is not None and (before is None or wm > before):
            await self._send_announcements(OCCURRENCES_TOPIC)

    # -- outputs ------------------------------------------------------------------------------
    async def route(self, stage_name: str, p: int, outs) -> None:
        """Send a stage's outputs. Records go to the producer as bytes (Faust's per-message
        machinery of Topic.send cost more than the rest of a chain record's path); the small ones
        (chains, alerts, occurrences: thousands per advance) as one producer batch per partition,
        queued before this returns (a mark announced after it follows them)."""
        send = self.app.producer.send  # (topic, key, value, partition, timestamp, headers)
        names = self.names
        batches = PartitionBatches(self.app.producer._ensure_producer(), self.sends,
                                   dead_letters=(names[cat.DEADLETTER], stage_name))
        watched = self.sends.send  # (a record the producer refuses to queue counts as failed too)
        counts: dict[str, int] = {}
        partitions: dict[str, int] = {}  # output topic -> its partition count (Kafka's default partitioner)
        here: list[tuple[int, str, dict, bytes]] = []  # occurrences for our own alerts partitions
        chain_keys: list[bytes] = []  # the chains (most records), added to their batches in one call, in order
        chain_values: list[bytes] = []
        chain_partitions = 0
        try:
            for topic, key, value in outs:
                if topic == CHAINS_TOPIC:  # (its bytes written as it was made: the stitch stage's encode_chain)
                    if not chain_partitions:
                        chain_partitions = await batches.partitions(names[CHAINS_TOPIC])
                    chain_keys.append(key.encode())
                    chain_values.append(value if value.__class__ is bytes else encode_record(value))
                    continue
                if topic == FLOWS_TOPIC:
                    partition = bucket_partition(key)
                    if partition in self.flows_read:  # our own partition, recovered and live: no record
                        await self._stitch_here(partition, key, value)
                        continue
                    local = TP(names[FLOWS_TOPIC], partition) in self.app.consumer.assignment()
                    for chunk, data in _records(value, encode_flows_batch):
                        # our own stitch stage reads it back: hand it the objects; numbered either way
                        tag = self.handoff.keep(chunk) if local else self.handoff.number()
                        self.flows_sent[partition] = self.handoff.seq
                        headers = [(SOURCE_HEADER, str(p).encode()), (HANDOFF_HEADER, tag)]
                        await watched(send(names[FLOWS_TOPIC], key.encode(), data, partition, None, headers))
                elif topic == OCCURRENCES_TOPIC:
                    r = stable_partition(key, self.partitions)
                    headers = [(SOURCE_HEADER, str(p).encode())]
                    tag = self.applied.keep() if r in self.alerts_reading else None
                    if tag is not None:  # our own alerts partition: applied below, not read back
                        headers.append((APPLIED_HEADER, tag))
                    batches.add(names[OCCURRENCES_TOPIC], r, key.encode(), encode_record(value), headers)
                    if tag is not None:
                        here.append((r, key, value, tag))
                elif topic == ENRICHED_TOPIC:
                    for _, data in _records(value, encode_enriched_batch):
                        await watched(send(names[topic], key.encode(), data, None, None, None))
                elif topic in self.t_out:  # keyed records (chains, alerts): no coroutine per record
                    name = names[topic]
                    n = partitions.get(name)
                    if n is None:
                        n = partitions[name] = await batches.partitions(name)
                    batches.add_keyed_known(name, n, key.encode(),  # partitioned together at send()
                                            dumps(value) if topic == cat.DEADLETTER else encode_record(value))
                else:
                    raise ValueError(f"{stage_name}: output on unknown topic {topic!r}")
                counts[topic] = counts.get(topic, 0) + 1
        finally:
            if chain_keys:
                batches.add_keyed_known_many(names[CHAINS_TOPIC], chain_partitions, chain_keys, chain_values)
                counts[CHAINS_TOPIC] = len(chain_keys)
            try:
                await batches.send()  # what was made before a failure goes out too
            except BaseException:
                for *_, tag in here:  # records that did go out are applied when they come back
                    self.applied.forget(tag)
                raise
            for topic, n in counts.items():
                self.metrics.child(self.metrics.outputs, topic).inc(n)
            if batches.dead_lettered:  # (records too large to send: their dead letters went instead)
                self.metrics.deadletters.labels(stage_name).inc(batches.dead_lettered)
            # Applied after their records were queued (in order with them), with no await in between, and
            # their outputs (alerts) routed together: one producer batch per partition, not one per occurrence.
            alerts_outs: list = []
            try:
                for i, (r, key, occ, tag) in enumerate(here):
                    if r not in self.alerts_reading:  # revoked meanwhile: its next owner reads the record
                        self.applied.forget(tag)
                        continue
                    try:
                        alerts_outs += self._occurrence_outs(r, key, occ)
                    except BaseException:  # the record, when it comes back, is applied (or dead-lettered) as usual
                        for *_, later in here[i:]:
                            self.applied.forget(later)
                        raise
            finally:
                if alerts_outs:
                    await self.route("alerts", -1, alerts_outs)  # (alerts and dead letters: no source partition)

    async def _stitch_here(self, p: int, key: str, batch: dict) -> None:
        """An enriched batch for a svctrace.flows partition this worker reads, handed to its stitch stage
        as objects without a record (the encoding, compression, produce, fetch and decompression of
        records the stage would only take back by handoff). The durable copy is made at the next
        checkpoint, of what the stitch state written then does not hold (checkpoint(): _copies)."""
        outs = self._stitch_apply(p, key, batch)
        self.handed.setdefault(p, []).append((key, batch["events"], batch.get("lost") or []))
        SourceProgress(self.source_partitions, self.stitch.part_meta(p)["progress"]).data_arrived()
        if outs:
            await self.route("stitch", p, outs)

    def _stitch_apply(self, p: int, key: str, batch: dict) -> list:
        """One enriched batch (from a record or handed over) applied to its stitch key: counted, its
        late events too; returns the outputs to route."""
        stage = self.stitch
        metrics = self.metrics
        metrics.child(metrics.records, "stitch").inc()
        metrics.child(metrics.events, "stitch").inc(len(batch["events"]))
        st = stage.state(key)
        late = st["late"]
        outs = stage.op.process(st, key, batch)
        if st["late"] != late:
            self.metrics.late.labels("stitch").inc(st["late"] - late)
        stage.touch(p, key)
        return outs

    def _handed_cut(self, busy: set[int]) -> list[tuple[int, list, dict | None]]:
        """At a checkpoint's cut, right after the stitch snapshot: what was handed to the stitch stage directly
        since the last checkpoint, per partition, with the watermark of each of its keys then (None for a key
        applied and idle; no watermarks for a partition whose state is not written now: `busy`). Their copies
        (_copies) are made after the cut, between records: a handed batch does not change."""
        handed, self.handed = self.handed, {}
        live = self.stitch.live
        cut = []
        for p, items in handed.items():
            wms = None
            if p not in busy:
                wms = {}
                for key, _events, _lost in items:
                    if key not in wms:
                        st = live.get(key)
                        wms[key] = None if st is None else st["wm"]
            cut.append((p, items, wms))
        return cut

    def _copies(self, p: int, items: list, wms: dict | None) -> list[tuple[int, str, dict]]:
        """What was handed to stitch partition p (_handed_cut) and is not in the state the checkpoint writes
        (its buffered events, at or past the key's watermark at the cut; everything, losses too, for a
        partition whose state is not written now: no `wms`), as enriched batches to write to svctrace.flows:
        (partition, key, batch), cut into records as they are written (_write_copies)."""
        copies = []
        by_key: dict[str, tuple[list, list]] = {}
        for key, events, lost in items:
            if wms is not None:
                wm = wms[key]
                if wm is None:
                    continue  # applied and idle: the state written holds it
                if events.__class__ is EventRun:  # in time order: its buffered tail starts at the first ts >= wm
                    events = events[bisect_left(events, wm, key=_ENRICHED_TS):]
                else:
                    events = [e for e in events if e.ev.ts >= wm]
                lost = []
            if events or lost:
                evs, losses = by_key.setdefault(key, ([], []))
                evs += events
                losses += lost
        for key, (events, lost) in by_key.items():
            batch = {"schema": ENRICHED_SCHEMA, "version": 1, "events": events}
            if lost:
                batch["lost"] = lost
            copies.append((p, key, batch))
        return copies

    async def _send_handed(self, p: int, handed: list) -> None:
        for key, events, lost in handed:
            batch = {"schema": ENRICHED_SCHEMA, "version": 1, "events": events}
            if lost:
                batch["lost"] = lost
            for _, data in _records(batch, encode_flows_batch):
                tag = self.handoff.number()
                self.flows_sent[p] = self.handoff.seq
                await self.sends.send(self.app.producer.send(self.names[FLOWS_TOPIC], key.encode(), data, p, None,
                                                             [(HANDOFF_HEADER, tag)]))

    async def _durable_marks(self, announced: dict) -> None:
        """What this worker had announced at a checkpoint's snapshot is durable once its copies are
        (flushed before this): the partitions it hands to directly may now read it in their log."""
        if announced == self.durable_marks:
            return
        self.durable_marks = announced
        if not announced:
            return
        async with self._announcing_flows:  # (in order with the other announcements to them)
            header = (MARKS_HEADER, encode_marks(announced))
            for p in sorted(set(self.flows_read) | set(self.handed)):
                self.durable_in_log.setdefault(p, {}).update(announced)
                tag = self.handoff.number()  # (not counted as sent: this process does not read its marks)
                self.for_successor[tag] = None
                await self.sends.send(self.app.producer.send(self.names[FLOWS_TOPIC], None, EMPTY_ENRICHED, p, None,
                                                             [header, (HANDOFF_HEADER, tag)]))

    async def _write_copies(self, copies) -> None:
        """The durable copies of directly handed batches (_copies), flushed before the state that
        counts on them. Read back here (same assignment) they are only acknowledged, once their
        events are applied; anywhere else (a successor, this worker after a rebalance) they are read
        as any flows record."""
        for p, key, batch in copies:
            for chunk, data in _records(batch, encode_flows_batch):
                tag = self.handoff.number()  # (not counted as sent: no mark waits for what we hold already)
                self.for_successor[tag] = (key, max(map(_ENRICHED_TS, chunk["events"]), default=None))
                await self.sends.send(self.app.producer.send(self.names[FLOWS_TOPIC], key.encode(), data, p, None,
                                                             [(HANDOFF_HEADER, tag)]))

    def _announce(self, downstream: str, source: int, mark) -> None:
        """Queue a progress announcement of `source` to every partition of `downstream`."""
        if self.hb_sent.get((downstream, source)) == mark:
            self.hb_due.get(downstream, {}).pop(source, None)
            return
        due = self.hb_due.setdefault(downstream, {})
        if isinstance(mark, int) and isinstance(due.get(source), int) and due[source] > mark:
            return  # an advance that waited for the lock behind a further one
        due[source] = mark

    async def _send_announcements(self, downstream: str | None = None, force: bool = False) -> None:
        """Send the queued marks: one record per downstream partition carrying every source's mark,
        at most every heartbeat_s per downstream topic (unless forced: DONE, flushes)."""
        for topic_name_ in ([downstream] if downstream else list(self.hb_due)):
            if topic_name_ == FLOWS_TOPIC:
                async with self._announcing_flows:
                    await self._send_marks(topic_name_, force)
            else:
                await self._send_marks(topic_name_, force)

    async def _send_marks(self, topic_name_: str, force: bool) -> None:
        """The stitch stage's own partitions take the marks at once, without the Kafka hop (20-25 ms,
        a few 100 ms under load), where that is what reading the record would do: everything this
        process sent to the partition before has been read back (_direct_partitions); until then they
        are held for it. Their log gets a record for a successor only, with the durable marks. A source of ours
        DONE downstream with records again goes with them HELD (_hold_unread)."""
        if topic_name_ == FLOWS_TOPIC:
            self._hold_unread()
        marks = self.hb_due.get(topic_name_)
        if not marks:
            return
        now = time.monotonic()
        every = self.config.heartbeat_s if topic_name_ == FLOWS_TOPIC else self.config.occurrences_heartbeat_s
        if not force and now - self.hb_last.get(topic_name_, 0.0) < every:
            if topic_name_ == FLOWS_TOPIC:
                await self._marks_to_own(marks)
            return
        topic = self.names[topic_name_]
        del self.hb_due[topic_name_]
        self.hb_last[topic_name_] = now
        if topic_name_ == FLOWS_TOPIC:
            self.hb_here.clear()
        header = (MARKS_HEADER, encode_marks(marks))
        revocations = self.revocations  # (a revocation from here on voids the direct marks)
        if topic_name_ == FLOWS_TOPIC:
            direct = self._direct_partitions()
            handing = set(self.flows_read) | set(self.handed)  # (their log gets durable marks only)
            durable = {source: self.durable_marks[source] for source in marks if source in self.durable_marks}
            durable_header = (MARKS_HEADER, encode_marks(durable)) if durable else None
            for partition in range(self.partitions):
                if partition not in handing:
                    tag = self.handoff.number()
                    self.flows_sent[partition] = self.handoff.seq
                    await self.sends.send(self.app.producer.send(topic, None, EMPTY_ENRICHED, partition, None,
                                                                 [header, (HANDOFF_HEADER, tag)]))
                elif durable_header is not None and self._durable_news(partition, durable):
                    # for a successor (this process takes the marks at once), once per durable mark
                    tag = self.handoff.number()
                    self.for_successor[tag] = None
                    await self.sends.send(self.app.producer.send(topic, None, EMPTY_ENRICHED, partition, None,
                                                                 [durable_header, (HANDOFF_HEADER, tag)]))
        else:
            direct, handing = [], set()
            for partition in range(self.partitions):
                await self.sends.send(self.app.producer.send(topic, None, b"", partition, None, [header]))
        for source, mark in marks.items():
            self.hb_sent[(topic_name_, source)] = mark
        await self._own_partitions_take(marks, revocations, direct, handing)

    def _durable_news(self, p: int, durable: dict) -> bool:
        """Whether svctrace.flows partition p's log lacks one of these durable marks (written by this
        process since p was assigned); notes them as written. Between two checkpoints every tick
        announces marks, and the durable ones it would write to a partition this worker hands to are the
        same each time: one record per partition per tick (12 per 0.1 s), each read back here only to be
        acknowledged, that told a successor nothing new."""
        in_log = self.durable_in_log.setdefault(p, {})
        if all(in_log.get(source, in_log) == mark for source, mark in durable.items()):
            return False
        in_log.update(durable)
        return True

    async def _marks_to_own(self, marks: dict) -> None:
        """Between two sends of marks to svctrace.flows (at most every heartbeat_s: a record per
        partition), this worker's own stitch partitions take the queued marks at once, as they would
        from a send made now (direct, else held for the record of ours in flight to them). Without this
        a mark a syscalls record released waited for the next tick (up to heartbeat_s) even where no
        record carries it. The marks stay queued: the next send still announces them to every partition
        (the records of other workers' partitions, and of ours for a successor)."""
        # (a HELD each time: a partition that became ours since it was last taken must not get the others'
        # marks without it; taken again it changes nothing)
        fresh = {source: mark for source, mark in marks.items() if mark == HELD or self.hb_here.get(source) != mark}
        if not fresh:
            return
        self.hb_here.update(fresh)
        await self._own_partitions_take(fresh, self.revocations, self._direct_partitions(),
                                        set(self.flows_read) | set(self.handed))

    async def _own_partitions_take(self, marks: dict, revocations: int, direct: list[int], handing: set[int]) -> None:
        """This worker's own stitch partitions (`handing`) take marks: at once where nothing of ours is in
        flight to them (`direct`), else held until the record in flight is read back."""
        for p in handing.difference(direct):
            self.held_marks[p] = {**self.held_marks.get(p, {}), **marks}
        for p in direct:
            held = self.held_marks.pop(p, None)
            await self._marks_here(p, {**held, **marks} if held else marks, revocations)

    def _direct_partitions(self) -> list[int]:
        """svctrace.flows partitions this worker reads whose stitch stage has read back the last record
        this process sent them, in the current assignment (so their state is recovered and live)."""
        sent, read = self.flows_sent, self.flows_read
        return [p for p, n in read.items() if n >= sent.get(p, 0)]

    async def _marks_here(self, p: int, marks: dict, revocations: int) -> None:
        """Marks of this worker's sources applied to its own stitch partition p as reading them would
        (unless a partition was revoked since `revocations` were counted)."""
        try:
            await self._progress(self.stitch, p, marks,
                                 still=lambda: self.revocations == revocations and p in self.flows_read)
        except CheckpointFormatError:
            raise
        except Exception:  # noqa: BLE001 - as for a record: logged, the worker goes on
            log.exception("stitch: applying marks to partition %s failed", p)

    async def _dead_letter(self, stage: str, msg, reason: str, error: BaseException) -> None:
        self.metrics.deadletters.labels(stage).inc()
        dl = dead_letter(stage, reason, topic=msg.topic, value=msg.value, key=msg.key, partition=msg.partition,
                         offset=msg.offset, error=error)
        await self.sends.send(self.app.producer.send(self.names[cat.DEADLETTER], msg.key, encode_dead_letter(dl), None,
                                                     None, None))

    def _bad_k8s_record(self, msg, error: BaseException) -> None:
        self.metrics.deadletters.labels("metadata").inc()
        dl = dead_letter("metadata", f"{type(error).__name__}: {error}", topic=msg.topic, value=msg.value,
                         key=msg.key, partition=msg.partition, offset=msg.offset, error=error)
        # (called by the cluster feed, not in a coroutine: sent by a task of its own, watched as the others)
        task = asyncio.ensure_future(self.sends.send(self.app.producer.send(
            self.names[cat.DEADLETTER], msg.key, encode_dead_letter(dl), None, None, None)))
        task.add_done_callback(_retrieved)

    # -- the timer: idle partitions, announcements, checkpoints ---------------------------------
    async def _tick(self) -> None:
        if not self.cluster_feed.ready.is_set():
            return  # no stage has started yet
        self.gc.tick()
        try:
            await self._idle_sources()
            # The tick is the heartbeat: what _idle_sources advanced goes out now, in one record per
            # stitch partition, whatever a data-driven announcement sent a moment ago.
            await self._send_announcements(FLOWS_TOPIC, force=True)
            await self._send_announcements(OCCURRENCES_TOPIC)
            self.metrics.index_objects.set(len(self.index))
        except CheckpointFormatError as e:
            await self._stop_on_unreadable_checkpoint(e)
        except Exception:  # noqa: BLE001 - a failed tick is retried at the next one
            log.exception("worker tick failed")

    async def _checkpoint_tick(self) -> None:
        """Its own timer: a checkpoint may take longer than a heartbeat."""
        if not self.cluster_feed.ready.is_set():
            return
        try:
            await self.checkpoint()
        except CheckpointFormatError as e:
            await self._stop_on_unreadable_checkpoint(e)
        except Exception:  # noqa: BLE001 - retried at the next one
            log.exception("worker checkpoint failed")

    def _on_send_failed(self, error: BaseException) -> None:
        """FailedSends' first failure, as soon as it is known (a done-callback, or a send that raised): nothing
        queued in the producer after it goes out (drop_queued: above all no progress mark that would pass the
        records that failed, letting a downstream stage pass events it never got; no changelog record either),
        and the worker stops now rather than at its next checkpoint (which writes and acknowledges nothing)."""
        try:
            producer = self.app.producer._ensure_producer()
        except Exception:  # noqa: BLE001 - not started: nothing queued in it
            producer = None
        dropped = drop_queued(producer, error) if producer is not None else 0
        if dropped:
            log.error("Output send failed (%r): %d producer batches still queued dropped, not sent", error, dropped)
        try:
            task = asyncio.get_running_loop().create_task(self._outputs_lost())
        except RuntimeError:  # (no loop running: the next checkpoint stops the worker)
            return
        task.add_done_callback(_retrieved)

    async def _outputs_lost(self) -> bool:
        """Whether an output record was not delivered (producer.flush() raises on no failure: FailedSends
        saw it), e.g. a broker unreachable for longer than the producer's delivery timeout. Then no state
        may say it is out and the input it came from must not be acknowledged, and the producer has no way
        to send it again: the worker stops with exit status 1, writing and acknowledging nothing more. Its
        successor restores the last state written and reads on from the last committed offsets, and emits
        the lost outputs again, with the same deterministic ids."""
        error = self.sends.error
        if error is None:
            return False
        if self.app.should_stop or self._stopping_on_lost:
            return True
        self._stopping_on_lost = True
        log.error("Output send failed (%d producer batches or records not delivered, the first: %r); writing "
                  "and acknowledging nothing more, stopping the worker (exit status 1)", self.sends.failed, error)
        await self.app.crash(error)
        return True

    async def _stop_on_unreadable_checkpoint(self, error: CheckpointFormatError) -> None:
        """A changelog written by a newer worker (checkpoint.py): reading on would misread its
        state, and no retry makes it readable. Stop with exit status 1, saying what to do."""
        if self.app.should_stop:
            return
        changelogs = ", ".join(st.table.changelog_topic.get_topic_name() for st in self.stages)
        log.error("Unreadable checkpoint: %s. It was written by a newer svctrace worker. Roll forward (run "
                  "that version or a newer one), or reset the state of consumer group %s: stop every worker, "
                  "delete the changelog topics %s and start again (the workers then start with empty state "
                  "at the committed input offsets; chains open at that moment may come out incomplete). "
                  "Stopping the worker (exit status 1)", error, self.config.app_id, changelogs)
        await self.app.crash(error)

    async def _idle_sources(self) -> None:
        """Syscalls partitions with nothing new: release a deferred backlog once caught up; a node
        silent for idle_flush_s is finished (flushed, no longer holding its partition back); a live
        source advances by processing time (_advance_idle); any other partition caught up and idle
        for idle_flush_s is at its end of input (flushed, announced DONE)."""
        consumer = self.app.consumer
        now = time.monotonic()
        done = False
        finished = 0
        for tp in consumer.assignment():
            if tp.topic != self.t_syscalls.get_topic_name():
                continue
            q = tp.partition
            meta = self.enrich.part_meta(q)
            if meta.get("done"):
                if self._unread(consumer, tp) or self._answered_before_reactivation(consumer, tp):
                    continue  # not done (records came), or not known yet: held downstream (_hold_unread)
                finished += 1
                if self.hb_sent.get((FLOWS_TOPIC, q)) != DONE:
                    self._announce(FLOWS_TOPIC, q, DONE)
                    done = True
                continue
            # One answer, taken before any await: its highwater says what was on the broker when it
            # was asked; a newer fetch may have brought records not processed yet (FetchAnswer).
            answer = self._fetch_answer(consumer, tp)
            if answer is None or not self._processed_to(consumer, tp, answer.highwater):
                continue
            polled_ns = answer.asked_ns
            if self.unreleased.get(q):
                await self._release(q, send=False)
            # Silence counts only while the broker answers: an outage (a broker restarting, the agents
            # buffering) is no end of input, nor time a live source's events stop coming, or one node's
            # resumed events would pass the events another node still has to send.
            if time.time_ns() - polled_ns > BROKER_SILENT_S * 1e9:
                self.answering_since.pop(q, None)
                continue
            answering_since = self.answering_since.setdefault(q, now)
            await self._finish_silent_nodes(q, now, answering_since)
            if self.live.get(q):
                await self._advance_idle(q, now, answering_since, polled_ns)
                continue
            idle = now - self.last_input.get(q, self._started)
            if meta.get("nodes") or min(idle, now - answering_since) < self.config.idle_flush_s:
                continue
            async with self.enrich.lock(q):
                await self.enrich.flush_partition(q)
                meta["done"] = True
                self.enrich.dirty.setdefault(q, set())
                self._announce(FLOWS_TOPIC, q, DONE)
            done = True
            finished += 1
        self.metrics.sources_done.set(finished)
        if done:
            await self._send_announcements(FLOWS_TOPIC, force=True)

    def _silent_s(self, q: int, node: str, now: float, answering_since: float) -> float:
        """How long node has sent nothing to partition q while the broker answered (since this worker
        started, for a node it has not heard itself: one known from a checkpoint)."""
        heard = self.heard.get(q, {}).get(node)
        return now - max(self._started if heard is None else heard.at, answering_since)

    async def _finish_silent_nodes(self, q: int, now: float, answering_since: float) -> None:
        """A node of caught-up partition q silent for idle_flush_s is finished (an agent stopped, a
        replay at its end, a node gone): its buffered events are released and its clock no longer
        holds the partition's mark back. Should it send again, it is a new node to the partition."""
        clocks = self.enrich.part_meta(q).get("nodes")
        silent = [node for node in clocks or () if self._silent_s(q, node, now, answering_since) >= self.config.idle_flush_s]
        if not silent:
            return
        stage = self.enrich
        async with stage.lock(q):
            keys = stage.part_meta(q)["keys"]
            for node in silent:
                del clocks[node]
                self.heard.get(q, {}).pop(node, None)
                self.complete.get(q, {}).pop(node, None)
                if node in keys:
                    await stage.flush_keys(q, [node])
        if clocks:
            await self._advance_enrich(q, {}, send=False)

    async def _advance_idle(self, q: int, now: float, answering_since: float, polled_ns: int) -> None:
        """A live source (agents publishing fresh events) that is caught up: event time goes on while
        nothing arrives. A fetch asked at polled_ns (worker clock) found nothing beyond what we
        processed (FetchAnswer), so any event a node still has to send was captured after it or was waiting in its
        agent's batch (linger) or in flight: it is at most `lateness` (which covers linger + transport
        + clock skew between nodes) older than polled_ns, nor than that node's last event time + the
        time it has been silent (its own: an agent behind the others stays behind by as much). Without
        this the watermark of a quiet partition stops, and with it every stitch partition (they wait
        for the slowest source) until idle_flush_s declares it finished. Time the worker spends starved
        of CPU or the broker spends unreachable does not count: only a fetch moves polled_ns, only an
        answering broker the silence. Replays (old event times) never get here."""
        meta = self.enrich.part_meta(q)
        clocks = meta.get("nodes")
        if clocks:
            marks = {}
            for node, (clock, _) in clocks.items():
                heard = self.heard.get(q, {}).get(node)
                silent_s = self._silent_s(q, node, now, answering_since)
                if heard is not None and heard.live and silent_s > 0:
                    marks[node] = min(clock + int(silent_s * 1e9), polled_ns) - self.lateness
            if marks:
                await self._advance_enrich(q, marks, send=False)
            return
        clock = meta.get("clock")  # every node finished: the partition's own newest event
        idle_s = now - max(self.last_input.get(q, self._started), answering_since)
        if clock is not None and idle_s > 0:
            await self._advance_enrich(q, {}, send=False,
                                       nodeless=min(clock + int(idle_s * 1e9), polled_ns) - self.lateness)

    def _hold_unread(self) -> None:
        """Queue HELD for each syscalls partition of ours that downstream may take for DONE (announced DONE, or
        not announced since we own it) but is not done: the broker's last answer to a fetch shows records we
        have not processed, or we processed new records and have not announced their mark (progress.must_hold).
        Called before any mark of ours goes out, to our own stitch partitions or in records, and before a
        checkpoint takes its durable marks: the HELD goes in the same announcement as the marks that would
        otherwise pass those records (a backlog published at once to several partitions after they went DONE:
        one partition's records read and released before another's were). Lifted by the partition's own next
        mark (its release) or DONE (_idle_sources: nothing new after all)."""
        sources = self.sources_here
        if not sources:
            return
        due = self.hb_due.get(FLOWS_TOPIC) or {}
        consumer = None
        for q, tp in sources.items():
            word = due[q] if q in due else self.hb_sent.get((FLOWS_TOPIC, q))
            if word is not None and word != DONE:
                continue  # (the common case, a live partition: no look at the consumer)
            if consumer is None:
                consumer = self.app.consumer
            meta = self.enrich.meta.get(q)
            reactivated = q in self.last_offset and not (meta is not None and meta.get("done"))
            highwater, processed = self._log_end(consumer, tp), self._last_processed(consumer, tp)
            if must_hold(word, highwater, processed, reactivated, self._answered_before_reactivation(consumer, tp)):
                self._announce(FLOWS_TOPIC, q, HELD)

    def _answered_before_reactivation(self, consumer, tp) -> bool:
        """Whether the broker's last answer about syscalls partition tp was asked before another partition of ours
        had records again after being DONE (within REACTIVATION_WAIT_S of that): a backlog published to both at once
        may show in tp's next answer only (one answer holds what the broker had appended when it was made), and the
        other partition's records, read and released before that answer is handled, would pass tp's."""
        since = self.reactivated_ns
        if since is None or time.time_ns() - since > REACTIVATION_WAIT_S * 1e9:
            return False
        answer = self._fetch_answer(consumer, tp)
        return answer is None or answer.asked_ns < since

    def _unread(self, consumer, tp) -> bool:
        """The broker's last answer showed records of syscalls partition tp this worker has not processed."""
        highwater = self._log_end(consumer, tp)
        return highwater is not None and not self._processed_to(consumer, tp, highwater)

    def _log_end(self, consumer, tp) -> int | None:
        """tp's highwater in the broker's last answer to a fetch (else the consumer's, if it has one)."""
        answer = self._fetch_answer(consumer, tp)
        if answer is not None:
            return answer.highwater
        try:
            return consumer.highwater(tp)
        except Exception:  # noqa: BLE001 - not fetched yet
            return None

    def _last_processed(self, consumer, tp) -> int | None:
        """The offset of the last record of tp this worker processed, else (none since its assignment) the one
        before its committed offset. Not Faust's read offset: that moves as records are handed to the stream,
        before they are processed (a backlog's records queued behind another partition's)."""
        last = self.last_offset.get(tp.partition)
        if last is not None:
            return last
        committed = getattr(consumer, "_committed_offset", {}).get(tp)
        return None if committed is None else committed - 1

    @staticmethod
    def _fetch_answer(consumer, tp) -> FetchAnswer | None:
        """The broker's last answer about tp, if the consumer has had one."""
        answers = getattr(consumer._thread, "fetch_answers", None)
        return None if answers is None else answers.get((tp.topic, tp.partition))

    def _caught_up(self, consumer, tp) -> bool:
        """Everything written to tp so far has been processed (no blocking call to the broker)."""
        try:
            highwater = consumer.highwater(tp)
        except Exception:  # noqa: BLE001 - not fetched yet
            return False
        return highwater is not None and self._processed_to(consumer, tp, highwater)

    def _processed_to(self, consumer, tp, highwater: int) -> bool:
        """Every record of tp below offset `highwater` has been processed."""
        if highwater <= 0:
            return True
        last = self._last_processed(consumer, tp)
        return last is not None and last + 1 >= highwater

    async def checkpoint(self) -> None:
        """Write changed state to the changelogs, wait until the broker has it, then acknowledge
        the input records it covers (Faust commits acknowledged offsets). Counted once the worker
        holds state, also when nothing changed since the last one (its state is durable as of now)."""
        async with self._checkpointing:
            self.last_checkpoint = time.monotonic()
            holds_state = any(stage.dirty or stage.deleted or stage.pending for stage in self.stages)
            # The stitch state is best taken between its advances (waiting a little for them): what was
            # handed to it directly and is applied then is in the state written, not copied again; a
            # partition still mid-advance is not written now, and all it was handed is copied.
            handed = bool(self.handed)
            deadline = time.monotonic() + QUIET_WAIT_S
            while handed and time.monotonic() < deadline:
                held = [lock for lock in self.stitch.locks.values() if lock.locked()]
                if not held:
                    break
                async with held[0]:
                    pass
            # from here to the handed batches, no await: one consistent cut of every stage
            cut_t0 = time.perf_counter()
            busy = {p for p, lock in self.stitch.locks.items() if lock.locked()}
            snapshots = [(stage, *stage.snapshot()) for stage in self.stages]
            handed_cut = self._handed_cut(busy) if handed else []
            self._hold_unread()  # (a durable mark must not pass a source of ours that is DONE no more either)
            announced = {q: m for (topic, q), m in self.hb_sent.items() if topic == FLOWS_TOPIC}
            announced.update(self.hb_due.get(FLOWS_TOPIC, {}))  # (queued marks cover finished releases)
            self.metrics.checkpoint_blocking.observe(time.perf_counter() - cut_t0)
            # The cut is made: the stitch entries it holds are serialized in slices, between records.
            for stage, writes, acks in snapshots:
                await stage.finish(writes, acks)
            copies = []
            for p, items, wms in handed_cut:
                t0 = time.perf_counter()
                copies += self._copies(p, items, wms)
                self.metrics.checkpoint_blocking.observe(time.perf_counter() - t0)
                await asyncio.sleep(0)
                # The events handed since the last checkpoint are let go here, a slice at a time: ~3 s of the
                # stream, cold by now, freed in one step held the loop for ~200 ms at 100k events/s (what the
                # copies hold stays).
                while items:
                    t0 = time.perf_counter()
                    freed = 0
                    while items and freed < FREE_SLICE_EVENTS:
                        freed += len(items.pop()[1])
                    self.metrics.checkpoint_blocking.observe(time.perf_counter() - t0)
                    await asyncio.sleep(0)
            if copies or any(writes or acks for _, writes, acks in snapshots):
                # Durable in this order (a crash between two steps loses nothing): the outputs of what
                # the snapshot holds (a state written says they are out: a successor drops the input
                # again as applied), the copies and the stitch state (together they hold everything
                # handed directly), then the state of the enrich stage that released it (its successor
                # would not release it again) and the alerts stage, then the marks that pass it in the
                # log (_durable_marks), then the acks.
                await self.app.producer.flush()
                if await self._outputs_lost():
                    return
                if copies:
                    await self._write_copies(copies)
                for stage, writes, _ in sorted(snapshots, key=lambda s: s[0] is not self.stitch):
                    await stage.write(writes)
                    self.metrics.checkpoint_bytes.labels(stage.name).inc(sum(len(v) for _, _, v in writes if v))
                    if stage is self.stitch and handed:
                        await self.app.producer.flush()
                        if await self._outputs_lost():  # (a copy: before the enrich state that says it was handed)
                            return
                        await stage.confirm()  # (before the enrich state that says it was handed)
                await self.app.producer.flush()
                if await self._outputs_lost():  # (one sent since the snapshot: nothing acknowledged either)
                    return
                for stage, _, _ in snapshots:
                    await stage.confirm()
                await self._durable_marks(announced)
                for _, _, acks in snapshots:
                    for event in acks:
                        event.ack()
            elif await self._outputs_lost():  # (an idle worker stops too)
                return
            else:
                await self._durable_marks(announced)
            if holds_state:
                self.metrics.checkpoints.inc()

    @property
    def _started(self) -> float:
        started = getattr(self, "_started_at", None)
        if started is None:
            started = self._started_at = time.monotonic()
        return started


def build_worker(config: WorkerConfig, metrics: WorkerMetrics | None = None) -> Worker:
    return Worker(config, metrics)


def with_settings(config: WorkerConfig, **changes) -> WorkerConfig:
    return replace(config, settings=replace(config.settings, **changes))
