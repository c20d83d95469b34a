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
  partition; a stage advances to the smallest one. A partition caught up to its
  high-water mark and idle for `idle_flush_s` flushes (end of input, as the
  in-process runner's finish()).
* State in changelog-backed tables with checkpoints: operator state lives in a
  dict per key and is written to the table's changelog every `checkpoint_s`.
  Input records are acknowledged (their offsets committed) only once a durable
  checkpoint covers them: a killed worker's successor restores the checkpoint
  and re-reads what came after it; the operators drop what they already applied
  (duplicates, or events behind their watermark), and chains/alerts carry
  deterministic ids, so downstream dedup by id is exact.
* Bad records never stop the worker: they go to svctrace.deadletter with the reason.
"""
from __future__ import annotations

import asyncio
import logging
import time
import zlib
from dataclasses import dataclass, field, replace
from typing import Any

import faust
import orjson
from faust.transport.drivers import aiokafka as faust_aiokafka

from svctrace.kafka.admin import RETRIABLE_CREATE_ERRORS, topic_name
from svctrace.kafka.clients import connection_settings
from svctrace.kafka.clients import COMPRESSION
from svctrace.kafka.deadletter import dead_letter, encode as encode_dead_letter
from svctrace.schemas import catalogue as cat
from svctrace.schemas.models import DecodeError, decode_batch, dumps
from svctrace.streams.core import Graph, Settings, dumps_state, loads_state
from svctrace.streams.core.alerts import ALERTS_TOPIC
from svctrace.streams.core.enrich import ENRICHED_TOPIC, FLOWS_TOPIC
from svctrace.streams.core.keys import bucket_partition
from svctrace.streams.core.stitch import CHAINS_TOPIC, OCCURRENCES_TOPIC
from svctrace.streams.faust_app.cluster_feed import ClusterFeed
from svctrace.streams.faust_app.metrics import WorkerMetrics
from svctrace.streams.faust_app.progress import (
    DONE, SOURCE_HEADER, WATERMARK_HEADER, SourceProgress, decode_headers, encode_mark,
)
from svctrace.streams.metadata.index import ClusterIndex

log = logging.getLogger("svctrace.worker")

TOPIC_CREATE_TIMEOUT_S = 60.0
TOPIC_CREATE_RETRY_S = 0.5
# A stitch bucket's state (open connections of its flows) can exceed Kafka's 1 MiB default.
MAX_STATE_BYTES = 32 * 1024 * 1024
EMPTY_ENRICHED = orjson.dumps({"schema": "svctrace.enriched-batch", "version": 1, "events": []})


@dataclass(frozen=True)
class WorkerConfig:
    bootstrap: str
    app_id: str = "svctrace-worker"
    topic_prefix: str = ""
    data_dir: str = "svctrace-worker-data"
    settings: Settings = field(default_factory=lambda: Settings(emit_enriched=True))
    idle_flush_s: float = 10.0  # a caught-up partition idle this long flushes (end of input)
    checkpoint_s: float = 1.0  # operator state -> changelog, then input offsets acknowledged
    heartbeat_s: float = 0.2  # progress announcements at most this often per source
    session_timeout_s: float = 10.0  # a dead worker's partitions move after this
    standby_replicas: int = 1


def stable_partition(key: str, partitions: int) -> int:
    return zlib.crc32(key.encode("utf-8")) % partitions


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


def track_every_topic(client) -> None:
    """Make an aiokafka client keep metadata for every topic it produces to.

    aiokafka adds a topic to its tracked list only when the topic was missing from its
    metadata at the first send. Once anything is tracked, refreshes fetch only the tracked
    topics, and a topic first seen through a full refresh (our changelogs, dead letters)
    drops out: its queued batches wait for a leader forever and producer.flush() never
    returns (a worker's checkpoints, hence its progress announcements, stopped for good)."""
    wait_on_metadata = client._wait_on_metadata

    async def tracked_wait_on_metadata(topic):
        if topic not in client._topics:
            client.add_topic(topic)
        return await wait_on_metadata(topic)

    client._wait_on_metadata = tracked_wait_on_metadata


class IdempotentTransport(faust_aiokafka.Transport):
    Producer = IdempotentProducer

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


class SvctraceApp(faust.App):
    def _new_transport(self):
        return IdempotentTransport(self.conf.broker_consumer, self)


# -- one keyed stage on Faust ------------------------------------------------------------

@dataclass
class Pending:
    event: Any
    key: str | None
    max_ts: int | None  # None: nothing buffered by the operator (ack at the next checkpoint)


class StageShell:
    """Drives one core operator for the partitions this worker owns.

    Live state: key -> operator state (dict). Each partition also has a progress
    entry under key "#<partition>" with what the stage needs to resume: the keys
    it owns, its clock and its upstream progress."""

    def __init__(self, worker: "Worker", name: str, op, table, partitions: int, sources: int):
        self.worker, self.name, self.op, self.table = worker, name, op, table
        self.partitions, self.sources = partitions, sources
        self.live: dict[str, dict] = {}
        self.dirty: dict[int, set[str]] = {}
        self.deleted: dict[int, set[str]] = {}
        self.pending: dict[int, list[Pending]] = {}
        self.meta: dict[int, dict] = {}

    # state ------------------------------------------------------------------------------
    def forget(self, p: int) -> None:
        meta = self.meta.pop(p, None)
        for key in (meta or {}).get("keys", ()):
            self.live.pop(key, None)
        for table in (self.dirty, self.deleted, self.pending):
            table.pop(p, None)

    def _stored(self, key: str) -> bytes | None:
        return self.table.data.get(key.encode())

    def state(self, key: str) -> dict:
        st = self.live.get(key)
        if st is None:
            raw = self._stored(key)
            st = loads_state(raw) if raw else self.op.new_state()
            self.live[key] = st
        return st

    def part_meta(self, p: int) -> dict:
        m = self.meta.get(p)
        if m is None:
            raw = self._stored(f"#{p}")
            m = orjson.loads(raw) if raw else self.new_meta()
            self.meta[p] = m
        return m

    def new_meta(self) -> dict:
        return {"keys": [], "progress": SourceProgress(self.sources).state}

    def touch(self, p: int, key: str) -> None:
        self.dirty.setdefault(p, set()).add(key)
        self.deleted.get(p, set()).discard(key)
        keys = self.part_meta(p)["keys"]
        if key not in keys:
            keys.append(key)

    def drop(self, p: int, key: str) -> None:
        self.live.pop(key, None)
        self.dirty.get(p, set()).discard(key)
        self.deleted.setdefault(p, set()).add(key)
        keys = self.part_meta(p)["keys"]
        if key in keys:
            keys.remove(key)

    # driving the operator ---------------------------------------------------------------
    async def advance_partition(self, p: int, watermark: int) -> None:
        for key in list(self.part_meta(p)["keys"]):
            st = self.state(key)
            outs = self.op.advance(st, key, watermark)
            self.touch(p, key)
            await self.worker.route(self.name, p, outs)
            if self.op.is_idle(st):
                self.drop(p, key)

    async def flush_partition(self, p: int) -> None:
        for key in list(self.part_meta(p)["keys"]):
            outs = self.op.flush(self.state(key), key)
            await self.worker.route(self.name, p, outs)
            self.drop(p, key)

    # checkpoints --------------------------------------------------------------------------
    def snapshot(self) -> tuple[list[tuple[int, bytes, bytes | None]], list[Any]]:
        """Serialize dirty state; return (changelog writes, events now safe to acknowledge)."""
        writes: list[tuple[int, bytes, bytes | None]] = []
        ackable: list[Any] = []
        for p in set(self.dirty) | set(self.deleted) | set(self.pending):
            for key in self.dirty.get(p, ()):
                writes.append((p, key.encode(), dumps_state(self.live[key])))
            for key in self.deleted.get(p, ()):
                writes.append((p, key.encode(), None))
            writes.append((p, f"#{p}".encode(), orjson.dumps(self.part_meta(p))))
            keep = []
            for item in self.pending.get(p, ()):
                st = self.live.get(item.key) if item.key is not None else None
                if item.max_ts is None or st is None or item.max_ts < st.get("wm", 0):
                    ackable.append(item.event)
                else:
                    keep.append(item)
            self.pending[p] = keep
        self.dirty.clear()
        self.deleted.clear()
        return writes, ackable

    async def write(self, writes) -> None:
        """Local store + changelog (sent now, in order; the caller flushes the producer)."""
        store = self.table.data
        key_partition = getattr(store, "_key_partition", None)
        changelog = self.table.changelog_topic
        for p, key, value in writes:
            if value is None:
                store.pop(key, None)
            else:
                store[key] = value
                if key_partition is not None:
                    key_partition[key] = p
            await changelog.send(key=key, value=value, partition=p, key_serializer="raw", value_serializer="raw")


class Worker:
    """Builds the Faust app for a WorkerConfig; `app` is the faust.App to run."""

    def __init__(self, config: WorkerConfig, metrics: WorkerMetrics | None = None):
        self.config = c = config
        self.metrics = metrics or WorkerMetrics()
        self.index = ClusterIndex()
        self.graph = Graph(self.index, c.settings)
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
        self.hb_due: dict[tuple[str, int], tuple[int | str, float]] = {}
        self.hb_sent: dict[tuple[str, int], int | str] = {}
        self.last_input: dict[int, float] = {}
        self.last_offset: dict[int, int] = {}
        self.last_checkpoint = time.monotonic()
        self._checkpointing = asyncio.Lock()

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
        app.timer(min(c.heartbeat_s, c.checkpoint_s), name="svctrace.tick")(self._tick)
        app.on_partitions_revoked.connect(self._on_revoked)
        return app

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
                self.last_offset.pop(tp.partition, None)
                self.last_input.pop(tp.partition, None)
        self.hb_sent.clear()  # announce again: a new owner downstream may not have heard us

    async def _run_cluster_feed(self) -> None:
        try:
            await self.cluster_feed.run()
        except asyncio.CancelledError:
            raise
        except Exception as e:  # noqa: BLE001 - without cluster state no stage may run: stop loudly
            log.exception("cluster feed of %s failed", self.cluster_feed.topic)
            await self.app.crash(e)

    # -- the three agents (each waits for the ClusterIndex to catch up first) ----------------
    async def _enrich_agent(self, stream):
        await self.cluster_feed.ready.wait()
        async for event in stream.noack().events():
            await self._guard("enrich", event, self._enrich_one)

    async def _stitch_agent(self, stream):
        await self.cluster_feed.ready.wait()
        async for event in stream.noack().events():
            await self._guard("stitch", event, self._stitch_one)

    async def _alerts_agent(self, stream):
        await self.cluster_feed.ready.wait()
        async for event in stream.noack().events():
            await self._guard("alerts", event, self._alerts_one)

    async def _guard(self, stage_name: str, event, handler) -> None:
        """One record: processed, or dead-lettered with the reason. Never raises."""
        msg = event.message
        stage = getattr(self, stage_name)
        try:
            await handler(event)
        except (DecodeError, ValueError, KeyError, TypeError) as e:
            await self._dead_letter(stage_name, msg, f"{type(e).__name__}: {e}", e)
            stage.pending.setdefault(msg.partition, []).append(Pending(event, None, None))
        except Exception as e:  # noqa: BLE001 - the worker must outlive any one record
            log.exception("%s: record %s[%s]@%s failed", stage_name, msg.topic, msg.partition, msg.offset)
            await self._dead_letter(stage_name, msg, f"{stage_name} failed: {type(e).__name__}: {e}", e)
            stage.pending.setdefault(msg.partition, []).append(Pending(event, None, None))

    async def _enrich_one(self, event) -> None:
        msg = event.message
        q = msg.partition
        self.last_input[q] = time.monotonic()
        self.last_offset[q] = msg.offset
        batch = decode_batch(msg.value)
        self.metrics.records.labels("enrich").inc()
        self.metrics.events.labels("enrich").inc(len(batch.events))
        stage = self.enrich
        meta = stage.part_meta(q)
        meta["done"] = False
        node = batch.node
        stage.op.process(stage.state(node), node, batch)
        stage.touch(q, node)
        max_ts = max((e.ts for e in batch.events), default=None)
        stage.pending.setdefault(q, []).append(Pending(event, node, max_ts))
        if max_ts is not None and (meta.get("clock") is None or max_ts > meta["clock"]):
            meta["clock"] = max_ts
        if meta.get("clock") is not None:
            wm = meta["clock"] - self.lateness
            await stage.advance_partition(q, wm)
            self.metrics.watermark.labels("enrich").set(wm / 1e9)
            self._announce(FLOWS_TOPIC, q, wm)

    async def _stitch_one(self, event) -> None:
        msg = event.message
        p = msg.partition
        stage = self.stitch
        source, mark = decode_headers(msg.headers)
        batch = orjson.loads(msg.value) if msg.value else None
        if batch is not None and batch.get("events"):
            if not isinstance(batch["events"], list):
                raise ValueError("enriched batch without an events list (field $.events)")
            key = msg.key.decode() if msg.key else f"b{p:04d}"
            self.metrics.records.labels("stitch").inc()
            self.metrics.events.labels("stitch").inc(len(batch["events"]))
            stage.op.process(stage.state(key), key, batch)
            stage.touch(p, key)
            stage.pending.setdefault(p, []).append(
                Pending(event, key, max(d["ts"] for d in batch["events"])))
            SourceProgress(self.source_partitions, stage.part_meta(p)["progress"]).data_arrived()
        else:
            stage.pending.setdefault(p, []).append(Pending(event, None, None))
        if source is not None and mark is not None:
            await self._progress(stage, p, source, mark)

    async def _alerts_one(self, event) -> None:
        msg = event.message
        r = msg.partition
        stage = self.alerts
        source, mark = decode_headers(msg.headers)
        if msg.value:
            occ = orjson.loads(msg.value)
            key = msg.key.decode()
            self.metrics.records.labels("alerts").inc()
            outs = stage.op.process(stage.state(key), key, occ)
            stage.touch(r, key)
            SourceProgress(self.partitions, stage.part_meta(r)["progress"]).data_arrived()
            await self.route("alerts", r, outs)
        stage.pending.setdefault(r, []).append(Pending(event, None, None))
        if source is not None and mark is not None:
            await self._progress(stage, r, source, mark)

    async def _progress(self, stage: StageShell, p: int, source: int, mark) -> None:
        """An upstream partition's announcement: advance or flush this partition, then pass it on."""
        meta = stage.part_meta(p)
        prog = SourceProgress(stage.sources, meta["progress"])
        before = prog.watermark()
        prog.note(source, mark)
        stage.dirty.setdefault(p, set())
        wm = prog.watermark()
        if wm is not None and (before is None or wm > before):
            await stage.advance_partition(p, wm)
            self.metrics.watermark.labels(stage.name).set(wm / 1e9)
            if stage is self.stitch:
                self._announce(OCCURRENCES_TOPIC, p, wm)
        elif prog.should_flush():
            await stage.flush_partition(p)
            prog.mark_flushed()
            if stage is self.stitch:
                self._announce(OCCURRENCES_TOPIC, p, DONE, now=True)

    # -- outputs ------------------------------------------------------------------------------
    async def route(self, stage_name: str, p: int, outs) -> None:
        for topic, key, value in outs:
            if topic == FLOWS_TOPIC:
                await self.t_flows.send(key=key.encode(), value=dumps(value), partition=bucket_partition(key),
                                        headers=[(SOURCE_HEADER, str(p).encode())])
            elif topic == OCCURRENCES_TOPIC:
                await self.t_occ.send(key=key.encode(), value=dumps(value),
                                      partition=stable_partition(key, self.partitions),
                                      headers=[(SOURCE_HEADER, str(p).encode())])
            elif topic in self.t_out:
                await self.t_out[topic].send(key=key.encode(), value=dumps(value))
            else:
                raise ValueError(f"{stage_name}: output on unknown topic {topic!r}")
            self.metrics.outputs.labels(topic).inc()

    def _announce(self, downstream: str, source: int, mark, now: bool = False) -> None:
        """Queue a progress announcement of `source` to every partition of `downstream`."""
        key = (downstream, source)
        if self.hb_sent.get(key) == mark:
            return
        due = self.hb_due.get(key)
        self.hb_due[key] = (mark, 0.0 if now else (due[1] if due else time.monotonic() + self.config.heartbeat_s))

    async def _send_announcements(self, force: bool = False) -> None:
        now = time.monotonic()
        for key, (mark, due) in list(self.hb_due.items()):
            if not force and due > now:
                continue
            downstream, source = key
            topic = self.t_flows if downstream == FLOWS_TOPIC else self.t_occ
            value = EMPTY_ENRICHED if downstream == FLOWS_TOPIC else b""
            headers = [(SOURCE_HEADER, str(source).encode()), (WATERMARK_HEADER, encode_mark(mark))]
            for partition in range(self.partitions):
                await topic.send(key=None, value=value, partition=partition, headers=headers)
            self.hb_sent[key] = mark
            del self.hb_due[key]

    async def _dead_letter(self, stage: str, msg, reason: str, error: BaseException) -> None:
        self.metrics.deadletters.labels(stage).inc()
        dl = dead_letter(stage, reason, topic=msg.topic, value=msg.value, key=msg.key, partition=msg.partition,
                         offset=msg.offset, error=error)
        await self.t_out[cat.DEADLETTER].send(key=msg.key, value=encode_dead_letter(dl))

    def _bad_k8s_record(self, msg, error: BaseException) -> None:
        self.metrics.deadletters.labels("metadata").inc()
        dl = dead_letter("metadata", f"{type(error).__name__}: {error}", topic=msg.topic, value=msg.value,
                         key=msg.key, partition=msg.partition, offset=msg.offset, error=error)
        self.t_out[cat.DEADLETTER].send_soon(key=msg.key, value=encode_dead_letter(dl))

    # -- the timer: idle partitions, announcements, checkpoints ---------------------------------
    async def _tick(self) -> None:
        if not self.cluster_feed.ready.is_set():
            return  # no stage has started yet
        try:
            await self._flush_idle_sources()
            await self._send_announcements()
            if time.monotonic() - self.last_checkpoint >= self.config.checkpoint_s:
                await self.checkpoint()
            self.metrics.index_objects.set(len(self.index))
        except Exception:  # noqa: BLE001 - a failed tick is retried at the next one
            log.exception("worker tick failed")

    async def _flush_idle_sources(self) -> None:
        """A syscalls partition caught up and idle for idle_flush_s is at its end of input."""
        consumer = self.app.consumer
        now = time.monotonic()
        for tp in consumer.assignment():
            if tp.topic != self.t_syscalls.get_topic_name():
                continue
            q = tp.partition
            meta = self.enrich.part_meta(q)
            if meta.get("done"):
                if self.hb_sent.get((FLOWS_TOPIC, q)) != DONE:
                    self._announce(FLOWS_TOPIC, q, DONE, now=True)
                continue
            if now - self.last_input.get(q, self._started) < self.config.idle_flush_s:
                continue
            if not self._caught_up(consumer, tp):
                continue
            await self.enrich.flush_partition(q)
            meta["done"] = True
            self.enrich.dirty.setdefault(q, set())
            self._announce(FLOWS_TOPIC, q, DONE, now=True)

    def _caught_up(self, consumer, tp) -> bool:
        """Everything written to tp so far has been processed (no blocking call to the broker)."""
        try:
            highwater = consumer.highwater(tp)
        except Exception:  # noqa: BLE001 - not fetched yet
            return False
        if highwater is None:
            return False
        if highwater <= 0:
            return True
        last = self.last_offset.get(tp.partition)
        if last is None:
            last = getattr(consumer, "_read_offset", {}).get(tp)
            if last is None:
                return False
        return last + 1 >= highwater

    async def checkpoint(self) -> None:
        """Write dirty state to the changelogs, wait until the broker has it, then acknowledge
        the input records it covers (Faust commits acknowledged offsets)."""
        async with self._checkpointing:
            self.last_checkpoint = time.monotonic()
            snapshots = [(stage, *stage.snapshot()) for stage in self.stages]
            if not any(writes or acks for _, writes, acks in snapshots):
                return
            for stage, writes, _ in snapshots:
                await stage.write(writes)
            await self.app.producer.flush()
            for _, _, acks in snapshots:
                for event in acks:
                    event.ack()
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
