"""The central metadata watcher: list+watch Kubernetes objects, publish projections.

One replica in the cluster (Lease-based leader election) lists and watches
pods, services, EndpointSlices (or core/v1 Endpoints where the API has no
EndpointSlices), nodes and namespaces, and publishes the projections of
project.py keyed kind/namespace/name to the compacted topic
svctrace.k8s.objects; a deletion is a tombstone (null value). Agents never
watch the API themselves.

Layers:
* KindState — pure: the last published projection per key and the
  resourceVersion to resume from; `relist()` diffs a full list against it
  (objects gone while we were not watching become tombstones), `event()`
  applies one watch event. Unchanged projections are not republished (a
  node's heartbeat bumps its resourceVersion every few seconds).
* Sinks — where changes go: Kafka (compacted topic), JSON lines, an index.
* KindWatcher — the I/O loop for one kind: list (paginated), watch from the
  resourceVersion with bookmarks, 410 Gone -> relist and diff, backoff.
* LeaseElector — coordination.k8s.io/v1 Lease: acquire, renew, release.
* Watcher — runs one KindWatcher thread per kind while leader.
"""
from __future__ import annotations

import asyncio
import logging
import os
import random
import socket
import threading
import time
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Any, Callable, Iterable, Protocol

import orjson
from prometheus_client import CollectorRegistry, Counter, Gauge

from svctrace.streams.metadata.project import MetadataInputError, project, record_key, tombstone

log = logging.getLogger("svctrace.metadata")

TOPIC = "svctrace.k8s.objects"
# Fields that change without the object changing for enrichment.
VOLATILE = ("resource_version", "observed_ts")


def _now_ns() -> int:
    return time.time_ns()


def _stable(record: dict) -> dict:
    return {k: v for k, v in record.items() if k not in VOLATILE}


# ---------------------------------------------------------------------------
# Pure core


@dataclass(frozen=True, slots=True)
class Change:
    key: str
    record: dict | None  # None = tombstone
    kind: str
    observed_ts: int

    def offline(self) -> dict:
        """The record as written to files: a tombstone becomes {deleted: true}."""
        if self.record is not None:
            return self.record
        _, ns, name = self.key.split("/", 2)
        return tombstone(self.kind, ns or None, name, self.observed_ts)


UNPUBLISHED: dict = {"unpublished": True}


class WatchGone(Exception):
    """The server no longer has our resourceVersion (HTTP 410 Gone): relist."""


@dataclass
class KindState:
    """What has been published for one kind, and where to resume watching. Pure."""
    kind: str
    resource_version: str | None = None
    objects: dict[str, dict] = field(default_factory=dict)  # key -> stable projection
    bad_objects: int = 0

    def seed(self, records: Iterable[dict]) -> None:
        """Start from what the topic already holds (so a relist can tombstone what vanished)."""
        for r in records:
            if r.get("kind") == self.kind and not r.get("deleted"):
                self.objects[record_key(r)] = _stable(r)

    def _upsert(self, obj: dict, ts: int, out: list[Change]) -> str | None:
        try:
            rec = project(obj, ts, kind=self.kind)
        except MetadataInputError as e:
            # One bad object never stops the watcher: count and log it.
            self.bad_objects += 1
            log.warning("skipping bad %s: %s", self.kind, e)
            return None
        key = record_key(rec)
        stable = _stable(rec)
        if self.objects.get(key) != stable:
            self.objects[key] = stable
            out.append(Change(key, rec, self.kind, ts))
        return key

    def unpublished(self, keys: Iterable[str]) -> None:
        """Publishing these changes failed: force a relist whose diff sends them again."""
        for key in keys:
            self.objects[key] = UNPUBLISHED  # differs from any projection; absent from a list -> tombstone
        self.resource_version = None

    def relist(self, items: Iterable[dict], resource_version: str | None, ts: int) -> list[Change]:
        """A full list replaces the state: changed objects upserted, vanished ones tombstoned."""
        out: list[Change] = []
        seen = set()
        for obj in items:
            key = self._upsert(obj, ts, out)
            if key:
                seen.add(key)
        for key in sorted(set(self.objects) - seen):
            del self.objects[key]
            out.append(Change(key, None, self.kind, ts))
        self.resource_version = resource_version
        return out

    def event(self, event_type: str, obj: dict, ts: int) -> list[Change]:
        """One watch event (ADDED, MODIFIED, DELETED, BOOKMARK). ERROR is the caller's."""
        out: list[Change] = []
        rv = ((obj or {}).get("metadata") or {}).get("resourceVersion")
        if event_type in ("ADDED", "MODIFIED"):
            self._upsert(obj, ts, out)
        elif event_type == "DELETED":
            try:
                key = record_key(project(obj, ts, kind=self.kind, deleted=True))
            except MetadataInputError as e:
                self.bad_objects += 1
                log.warning("skipping bad %s deletion: %s", self.kind, e)
                key = None
            if key is not None:
                self.objects.pop(key, None)
                out.append(Change(key, None, self.kind, ts))
        elif event_type != "BOOKMARK":
            raise ValueError(f"unknown watch event type {event_type!r}")
        if rv:
            self.resource_version = rv
        return out


def watch_error(obj: dict) -> Exception:
    """An ERROR watch event's Status -> WatchGone (410) or a generic error."""
    code = (obj or {}).get("code")
    message = (obj or {}).get("message") or (obj or {}).get("reason") or "watch error"
    if code == 410 or (obj or {}).get("reason") in ("Expired", "Gone"):
        return WatchGone(message)
    return RuntimeError(f"watch ERROR {code}: {message}")


# ---------------------------------------------------------------------------
# Sinks


class Sink(Protocol):
    def publish(self, changes: list[Change]) -> None: ...
    def flush(self) -> None: ...
    def close(self) -> None: ...


class JsonLinesSink:
    """One record per line; tombstones as {deleted: true} records (load_file reads it back)."""

    def __init__(self, path: str | os.PathLike):
        self.path = path
        self._f = open(path, "ab")

    def publish(self, changes: list[Change]) -> None:
        for c in changes:
            self._f.write(orjson.dumps(c.offline()) + b"\n")

    def flush(self) -> None:
        self._f.flush()

    def close(self) -> None:
        self._f.close()


class IndexSink:
    """Applies changes to a ClusterIndex (in-process enrichment, tests)."""

    def __init__(self, index):
        self.index = index

    def publish(self, changes: list[Change]) -> None:
        for c in changes:
            self.index.apply(c.offline())

    def flush(self) -> None:
        pass

    def close(self) -> None:
        pass


class KafkaSink:
    """Publishes to the compacted topic: key kind/namespace/name, value the record or null.

    aiokafka is asynchronous and the kubernetes client is not: the producer
    lives on its own event loop thread; publish() hands records over, flush()
    waits until the broker acknowledged them (acks=all, idempotent).
    """

    def __init__(self, bootstrap: str, topic: str = TOPIC):
        self.bootstrap, self.topic = bootstrap, topic
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name="kafka-sink", daemon=True)
        self._thread.start()
        self._producer = self._call(_started_producer(bootstrap))  # built on its loop: aiokafka binds to it
        self._pending: list[Any] = []

    def _call(self, coro, timeout: float = 60.0):
        return asyncio.run_coroutine_threadsafe(coro, self._loop).result(timeout)

    def publish(self, changes: list[Change]) -> None:
        for c in changes:
            value = None if c.record is None else orjson.dumps(c.record)
            fut = self._call(self._producer.send(self.topic, key=c.key.encode(), value=value))
            self._pending.append(fut)

    def flush(self) -> None:
        pending, self._pending = self._pending, []
        if pending:
            self._call(_gather(pending))

    def snapshot(self, timeout: float = 30.0) -> list[dict]:
        """The topic's current content (latest value per key, tombstones dropped)."""
        return self._call(_read_compacted(self.bootstrap, self.topic), timeout)

    def close(self) -> None:
        try:
            self.flush()
            self._call(self._producer.stop())
        finally:
            self._loop.call_soon_threadsafe(self._loop.stop)
            self._thread.join(5)


async def _started_producer(bootstrap: str):
    from svctrace.kafka import producer

    p = producer(bootstrap)
    await p.start()
    return p


async def _gather(futures):
    return await asyncio.gather(*futures)


async def _read_compacted(bootstrap: str, topic: str) -> list[dict]:
    from aiokafka import TopicPartition

    from svctrace.kafka import consumer

    c = consumer(bootstrap, group_id=None, enable_auto_commit=False)
    await c.start()
    try:
        parts = c.partitions_for_topic(topic) or set()
        if not parts:
            await c._client.force_metadata_update()  # noqa: SLF001 - a fresh consumer has no metadata yet
            parts = c.partitions_for_topic(topic) or set()
        tps = [TopicPartition(topic, p) for p in sorted(parts)]
        if not tps:
            return []
        c.assign(tps)
        await c.seek_to_beginning(*tps)
        end = await c.end_offsets(tps)
        latest: dict[bytes, bytes | None] = {}
        remaining = {tp for tp in tps if end[tp] > 0}
        while remaining:
            batch = await c.getmany(*remaining, timeout_ms=1000)
            for tp, msgs in batch.items():
                for m in msgs:
                    latest[m.key] = m.value
            for tp in list(remaining):
                if await c.position(tp) >= end[tp]:
                    remaining.discard(tp)
        return [orjson.loads(v) for v in latest.values() if v is not None]
    finally:
        await c.stop()


class FanoutSink:
    def __init__(self, *sinks: Sink):
        self.sinks = sinks

    def publish(self, changes: list[Change]) -> None:
        for s in self.sinks:
            s.publish(changes)

    def flush(self) -> None:
        for s in self.sinks:
            s.flush()

    def close(self) -> None:
        for s in self.sinks:
            s.close()

    def snapshot(self) -> list[dict]:
        for s in self.sinks:
            if hasattr(s, "snapshot"):
                return s.snapshot()
        return []


# ---------------------------------------------------------------------------
# Metrics


class Metrics:
    def __init__(self, registry: CollectorRegistry | None = None):
        self.registry = registry or CollectorRegistry()
        r = self.registry
        self.events = Counter("svctrace_metadata_watch_events", "Watch events received", ["kind", "type"], registry=r)
        self.published = Counter("svctrace_metadata_published", "Records published", ["kind", "op"], registry=r)
        self.relists = Counter("svctrace_metadata_relists", "Full lists", ["kind", "reason"], registry=r)
        self.errors = Counter("svctrace_metadata_errors", "List/watch/publish errors", ["kind"], registry=r)
        self.bad_objects = Gauge("svctrace_metadata_bad_objects", "Objects that could not be projected",
                                 ["kind"], registry=r)
        self.objects = Gauge("svctrace_metadata_objects", "Objects currently known", ["kind"], registry=r)
        self.leader = Gauge("svctrace_metadata_leader", "1 while this replica holds the Lease", registry=r)
        self.last_event = Gauge("svctrace_metadata_last_event_timestamp_seconds", "Time of the last watch event",
                                ["kind"], registry=r)


# ---------------------------------------------------------------------------
# I/O: list+watch of one kind


@dataclass(frozen=True)
class Resource:
    kind: str
    api: str  # kubernetes.client class name
    list_all: str  # cluster-wide list method


RESOURCES: dict[str, Resource] = {
    "Namespace": Resource("Namespace", "CoreV1Api", "list_namespace"),
    "Node": Resource("Node", "CoreV1Api", "list_node"),
    "Service": Resource("Service", "CoreV1Api", "list_service_for_all_namespaces"),
    "Pod": Resource("Pod", "CoreV1Api", "list_pod_for_all_namespaces"),
    "EndpointSlice": Resource("EndpointSlice", "DiscoveryV1Api", "list_endpoint_slice_for_all_namespaces"),
    "Endpoints": Resource("Endpoints", "CoreV1Api", "list_endpoints_for_all_namespaces"),
    "NetworkPolicy": Resource("NetworkPolicy", "NetworkingV1Api", "list_network_policy_for_all_namespaces"),
}


def default_kinds(api_client, endpoints: str = "auto") -> list[str]:
    """What the watcher lists and watches unless told otherwise: the kinds enrichment and the alerts read
    (NetworkPolicies only explain a connection that went nowhere)."""
    return ["Namespace", "Node", "Service", endpoint_kind(api_client, endpoints), "Pod", "NetworkPolicy"]


class Backoff:
    """Exponential backoff with full jitter."""

    def __init__(self, initial: float = 0.5, maximum: float = 30.0):
        self.initial, self.maximum, self.attempt = initial, maximum, 0

    def next(self) -> float:
        delay = min(self.maximum, self.initial * (2 ** self.attempt))
        self.attempt += 1
        return random.uniform(delay / 2, delay)

    def reset(self) -> None:
        self.attempt = 0


class KindWatcher:
    """List, then watch from the list's resourceVersion; 410 -> relist and diff."""

    def __init__(self, api_client, resource: Resource, publish: Callable[[list[Change]], None],
                 metrics: Metrics, *, page_size: int = 500, watch_timeout_s: int = 300,
                 backoff: Backoff | None = None, clock: Callable[[], int] = _now_ns):
        import kubernetes.client as k8s

        self.resource = resource
        self.state = KindState(resource.kind)
        self._list = getattr(getattr(k8s, resource.api)(api_client), resource.list_all)
        self._publish = publish
        self.metrics = metrics
        self.page_size, self.watch_timeout_s = page_size, watch_timeout_s
        self.backoff = backoff or Backoff()
        self.clock = clock
        self._resp = None
        self._lock = threading.Lock()
        self.synced = threading.Event()  # set after the first complete list

    # -- test and shutdown hooks --

    def interrupt(self) -> None:
        """Cut the current watch connection (as a network failure would)."""
        with self._lock:
            resp = self._resp
        if resp is not None:
            try:
                resp.shutdown()
            except Exception:  # noqa: BLE001 - already closed is fine
                pass

    # -- the loop --

    def run(self, stop: threading.Event) -> None:
        kind = self.resource.kind
        reason = "initial"
        while not stop.is_set():
            try:
                if self.state.resource_version is None:
                    self.relist(reason)
                self.watch(stop)
                self.backoff.reset()
            except WatchGone as e:
                log.info("%s: resourceVersion gone (%s): relisting", kind, e)
                self.state.resource_version = None
                reason = "gone"
            except Exception as e:  # noqa: BLE001 - network, server, sink: retry with backoff
                if stop.is_set():
                    break
                self.metrics.errors.labels(kind).inc()
                delay = self.backoff.next()
                log.warning("%s: %s: %s; retrying in %.1fs", kind, type(e).__name__, e, delay)
                if _is_gone(e):
                    self.state.resource_version = None
                    reason = "gone"
                elif self.state.resource_version is None and self.synced.is_set():
                    reason = "resync"  # e.g. the sink failed: relist, republish what did not go out
                stop.wait(delay)

    def relist(self, reason: str = "initial") -> None:
        # Like client-go's reflector: the first list may be served by the watch cache as it
        # is (resourceVersion "0": cheap, no quorum read, the watch then catches up); after a
        # 410 the list must be consistent, or we could step back in time.
        any_rv = "0" if reason in ("initial", "once") else None
        items, rv, token = [], None, None
        while True:
            try:
                kwargs = {"resource_version": any_rv} if any_rv and not token else {}
                resp = self._list(limit=self.page_size, _continue=token, _preload_content=False,
                                  _request_timeout=(10, 60), **kwargs)
            except Exception as e:
                if token and _is_gone(e):  # continue token expired mid-list: start over
                    items, token = [], None
                    continue
                raise
            page = orjson.loads(resp.data)
            items.extend(page.get("items") or ())
            md = page.get("metadata") or {}
            rv, token = md.get("resourceVersion"), md.get("continue")
            if not token:
                break
        changes = self.state.relist(items, rv, self.clock())
        self.metrics.relists.labels(self.resource.kind, reason).inc()
        self._emit(changes)
        self.synced.set()

    def watch(self, stop: threading.Event) -> None:
        from kubernetes.watch.watch import iter_resp_lines

        resp = self._list(watch=True, resource_version=self.state.resource_version, allow_watch_bookmarks=True,
                          timeout_seconds=self.watch_timeout_s, _preload_content=False,
                          _request_timeout=(10, self.watch_timeout_s + 30))
        with self._lock:
            self._resp = resp
        try:
            if stop.is_set():  # stopped while connecting: interrupt() may have missed this response
                return
            for line in iter_resp_lines(resp):
                if stop.is_set():
                    return
                if not line:
                    continue
                ev = orjson.loads(line)
                etype, obj = ev.get("type"), ev.get("object") or {}
                self.metrics.events.labels(self.resource.kind, etype or "?").inc()
                self.metrics.last_event.labels(self.resource.kind).set_to_current_time()
                if etype == "ERROR":
                    raise watch_error(obj)
                self._emit(self.state.event(etype, obj, self.clock()))
        finally:
            with self._lock:
                self._resp = None
            resp.release_conn()

    def _emit(self, changes: list[Change]) -> None:
        kind = self.resource.kind
        self.metrics.objects.labels(kind).set(len(self.state.objects))
        self.metrics.bad_objects.labels(kind).set(self.state.bad_objects)
        if not changes:
            return
        try:
            self._publish(changes)
        except Exception:
            self.state.unpublished(c.key for c in changes)  # the relist that follows republishes them
            raise
        for c in changes:
            self.metrics.published.labels(kind, "delete" if c.record is None else "upsert").inc()


def _is_gone(e: Exception) -> bool:
    return isinstance(e, WatchGone) or getattr(e, "status", None) == 410


# ---------------------------------------------------------------------------
# Leader election on a coordination.k8s.io/v1 Lease


def _rfc3339_micro(t: datetime) -> str:
    return t.astimezone(timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


class LeaseElector:
    """Acquire/renew a Lease like client-go: expiry is judged by when *we* last saw the
    record change (local monotonic clock), so clock skew between replicas does not matter."""

    def __init__(self, api_client, namespace: str, name: str, identity: str, *,
                 lease_duration_s: float = 15.0, renew_deadline_s: float = 10.0, retry_period_s: float = 2.0):
        import kubernetes.client as k8s

        self.k8s = k8s
        self.api = k8s.CoordinationV1Api(api_client)
        self.namespace, self.name, self.identity = namespace, name, identity
        self.lease_duration_s, self.renew_deadline_s, self.retry_period_s = (
            lease_duration_s, renew_deadline_s, retry_period_s)
        self._observed: tuple | None = None  # (holder, renewTime, transitions) last seen
        self._observed_at = 0.0
        self._last_renew = 0.0

    def _spec(self, transitions: int, acquire_time: datetime | None):
        # MicroTime wants RFC 3339 with exactly six fractional digits (isoformat drops them at .0).
        now = _rfc3339_micro(datetime.now(timezone.utc))
        return self.k8s.V1LeaseSpec(
            holder_identity=self.identity, lease_duration_seconds=int(max(1, round(self.lease_duration_s))),
            acquire_time=_rfc3339_micro(acquire_time) if acquire_time else now, renew_time=now,
            lease_transitions=transitions)

    def try_acquire_or_renew(self) -> bool:
        """One attempt; True when we hold the Lease afterwards."""
        ApiException = self.k8s.ApiException
        try:
            lease = self.api.read_namespaced_lease(self.name, self.namespace)
        except ApiException as e:
            if e.status != 404:
                raise
            body = self.k8s.V1Lease(metadata=self.k8s.V1ObjectMeta(name=self.name, namespace=self.namespace),
                                    spec=self._spec(0, None))
            try:
                self.api.create_namespaced_lease(self.namespace, body)
            except ApiException as e2:
                if e2.status == 409:
                    return False  # another replica created it first
                raise
            self._mark_renewed()
            return True
        spec = lease.spec or self.k8s.V1LeaseSpec()
        seen = (spec.holder_identity, spec.renew_time, spec.lease_transitions)
        now = time.monotonic()
        if seen != self._observed:
            self._observed, self._observed_at = seen, now
        holder = spec.holder_identity
        expired = now - self._observed_at > (spec.lease_duration_seconds or self.lease_duration_s)
        if holder and holder != self.identity and not expired:
            return False
        transitions = spec.lease_transitions or 0
        if holder != self.identity:
            transitions += 1
        lease.spec = self._spec(transitions, spec.acquire_time if holder == self.identity else None)
        try:
            self.api.replace_namespaced_lease(self.name, self.namespace, lease)  # carries resourceVersion
        except ApiException as e:
            if e.status == 409:
                return False  # someone else updated it between our read and write
            raise
        self._mark_renewed()
        return True

    def _mark_renewed(self) -> None:
        self._last_renew = time.monotonic()
        self._observed = None

    def renew_overdue(self) -> bool:
        """True when we could not renew within renew_deadline: step down."""
        return time.monotonic() - self._last_renew > self.renew_deadline_s

    def release(self) -> None:
        """Give the Lease up on clean shutdown so a standby takes over at once."""
        try:
            lease = self.api.read_namespaced_lease(self.name, self.namespace)
            spec = lease.spec
            if spec and spec.holder_identity == self.identity:
                lease.spec = self.k8s.V1LeaseSpec(
                    holder_identity=None, lease_duration_seconds=1, lease_transitions=spec.lease_transitions,
                    acquire_time=_rfc3339_micro(spec.acquire_time) if spec.acquire_time else None,
                    renew_time=_rfc3339_micro(datetime.now(timezone.utc)))
                self.api.replace_namespaced_lease(self.name, self.namespace, lease)
        except Exception as e:  # noqa: BLE001 - best effort: the lease expires anyway
            log.info("lease release failed: %s", e)


# ---------------------------------------------------------------------------
# The watcher


def endpoint_kind(api_client, mode: str = "auto") -> str:
    """EndpointSlice where the API serves discovery.k8s.io/v1, core/v1 Endpoints otherwise."""
    if mode in ("slices", "EndpointSlice"):
        return "EndpointSlice"
    if mode in ("legacy", "Endpoints"):
        return "Endpoints"
    import kubernetes.client as k8s

    try:
        resources = k8s.DiscoveryV1Api(api_client).get_api_resources()
        if any(r.name == "endpointslices" for r in resources.resources or ()):
            return "EndpointSlice"
    except k8s.ApiException as e:
        if e.status != 404:
            raise
    return "Endpoints"


class Watcher:
    """Runs the kind watchers while this replica leads (or always, without election)."""

    def __init__(self, api_client, sink: Sink, *, kinds: Iterable[str] | None = None, endpoints: str = "auto",
                 elector: LeaseElector | None = None, metrics: Metrics | None = None,
                 watch_timeout_s: int = 300, page_size: int = 500, clock: Callable[[], int] = _now_ns):
        self.api_client = api_client
        self.sink = sink
        self.metrics = metrics or Metrics()
        self.elector = elector
        if kinds is None:
            kinds = default_kinds(api_client, endpoints)
        self.kinds = list(kinds)
        self.watch_timeout_s, self.page_size, self.clock = watch_timeout_s, page_size, clock
        self._publish_lock = threading.Lock()
        self._stop = threading.Event()
        self._leading = threading.Event()
        self.kind_watchers: dict[str, KindWatcher] = {}
        self._threads: list[threading.Thread] = []
        self._term: threading.Event | None = None

    # publishing is serialized: one sink, many kind threads
    def _publish(self, changes: list[Change]) -> None:
        with self._publish_lock:
            self.sink.publish(changes)
            self.sink.flush()

    @property
    def leading(self) -> bool:
        return self._leading.is_set()

    def synced(self) -> bool:
        return self.leading and all(kw.synced.is_set() for kw in self.kind_watchers.values())

    def _start_term(self) -> None:
        """Became leader: seed from the topic, start one thread per kind."""
        seed = []
        if hasattr(self.sink, "snapshot"):
            try:
                seed = self.sink.snapshot()
            except Exception as e:  # noqa: BLE001 - without a seed deletions during the gap are missed
                log.warning("could not read the topic to seed the state: %s", e)
        term = threading.Event()
        self._term = term
        self.kind_watchers = {}
        self._threads = []
        for kind in self.kinds:
            kw = KindWatcher(self.api_client, RESOURCES[kind], self._publish, self.metrics,
                             page_size=self.page_size, watch_timeout_s=self.watch_timeout_s, clock=self.clock)
            kw.state.seed(seed)
            self.kind_watchers[kind] = kw
            t = threading.Thread(target=kw.run, args=(term,), name=f"watch-{kind}", daemon=True)
            self._threads.append(t)
        self._leading.set()
        self.metrics.leader.set(1)
        for t in self._threads:
            t.start()

    def _end_term(self) -> None:
        self._leading.clear()
        self.metrics.leader.set(0)
        if self._term is not None:
            self._term.set()
        for kw in self.kind_watchers.values():
            kw.interrupt()
        for t in self._threads:
            t.join(10)
        self._threads = []

    def interrupt_watches(self) -> None:
        """Cut every watch connection (tests: a network failure)."""
        for kw in list(self.kind_watchers.values()):
            kw.interrupt()

    def run(self) -> None:
        """Block until stop(): elect, lead, step down, repeat."""
        try:
            if self.elector is None:
                self._start_term()
                self._stop.wait()
                return
            while not self._stop.is_set():
                try:
                    held = self.elector.try_acquire_or_renew()
                except Exception as e:  # noqa: BLE001 - API unreachable: keep trying, maybe step down
                    log.warning("lease: %s", e)
                    held = False
                    if self.leading and not self.elector.renew_overdue():
                        held = True  # within the renew deadline: keep leading
                if held and not self.leading:
                    log.info("became leader (%s)", self.elector.identity)
                    self._start_term()
                elif not held and self.leading:
                    log.warning("lost the lease: stepping down")
                    self._end_term()
                self._stop.wait(self.elector.retry_period_s)
        finally:
            if self.leading:
                self._end_term()
                if self.elector is not None:
                    self.elector.release()

    def start(self) -> threading.Thread:
        t = threading.Thread(target=self.run, name="metadata-watcher", daemon=True)
        t.start()
        return t

    def stop(self) -> None:
        self._stop.set()
        for kw in list(self.kind_watchers.values()):
            kw.interrupt()


def default_identity() -> str:
    return os.environ.get("POD_NAME") or f"{socket.gethostname()}-{os.getpid()}"
