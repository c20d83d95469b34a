"""Helpers to drive `svctrace worker` processes on the real broker.

Publishing cluster state and syscall batches, starting/killing workers, and
reading back chains and alerts (the last record per id: at-least-once delivery
may repeat a record, ids are deterministic).
"""
from __future__ import annotations

import asyncio
import ctypes
import functools
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path

import orjson

from svctrace.kafka.admin import ensure_topics, topic_name
from svctrace.kafka.clients import consumer, producer
from svctrace.schemas.catalogue import ALERTS, CHAINS, COMPLETE_HEADER, DEADLETTER, K8S_OBJECTS, SYSCALLS
from svctrace.agents.agent.pipeline import COMPLETE_MARGIN_NS, encode_syscall_batch  # the agents' own encoder
from svctrace.schemas.models import SyscallBatch, SyscallEvent

REPO = Path(__file__).resolve().parents[2]
PR_SET_PDEATHSIG = 1  # linux/prctl.h


def die_with_parent() -> None:
    """preexec_fn: the kernel SIGKILLs the child when the test process dies, however it dies
    (a failed or killed test must not leave `svctrace worker` processes behind)."""
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0) != 0:
        raise OSError(ctypes.get_errno(), "prctl(PR_SET_PDEATHSIG)")


# Popen options for every child a test starts: its own process group (killed as a whole)
# and death with the test process.
CHILD = {"preexec_fn": die_with_parent, "start_new_session": True}
_running: set["WorkerProcess"] = set()
READY_LINE = "]: Worker ready"  # Faust's Recovery logs it (-v) once the worker processes its partitions


def kill_all_workers() -> None:
    """Fixture finalizer: kill every worker a test started and did not stop."""
    for w in list(_running):
        w.kill()


def record_key(record: dict) -> str:
    return f"{record['kind']}/{record.get('namespace') or ''}/{record['name']}"


async def publish_cluster(bootstrap: str, prefix: str, records: Iterable[dict]) -> int:
    p = producer(bootstrap)
    await p.start()
    n = 0
    try:
        for r in records:
            await p.send(topic_name(K8S_OBJECTS, prefix), orjson.dumps(r), key=record_key(r).encode())
            n += 1
        await p.flush()
    finally:
        await p.stop()
    return n


def batches_of(events: Iterable[SyscallEvent], batch_events: int = 500, source: str = "scap",
               span_ns: int = 200_000_000) -> list[SyscallBatch]:
    """Group events per node into batches in arrival order, as agents publish them: at most
    `batch_events` events and `span_ns` of event time per batch (an agent's linger), so the
    nodes sharing a partition stay close in event time."""
    out, open_, seq = [], {}, {}
    for e in events:
        buf = open_.setdefault(e.node, [])
        if buf and e.ts - buf[0].ts > span_ns:
            seq[e.node] = seq.get(e.node, -1) + 1
            out.append(SyscallBatch(node=e.node, source=source, seq=seq[e.node], events=buf))
            buf = open_[e.node] = []
        buf.append(e)
        if len(buf) >= batch_events:
            seq[e.node] = seq.get(e.node, -1) + 1
            out.append(SyscallBatch(node=e.node, source=source, seq=seq[e.node], events=buf))
            open_[e.node] = []
    for node, buf in open_.items():
        if buf:
            seq[node] = seq.get(node, -1) + 1
            out.append(SyscallBatch(node=node, source=source, seq=seq[node], events=buf))
    return out


async def publish_batches(bootstrap: str, prefix: str, batches: Iterable[SyscallBatch | tuple[bytes, bytes]]) -> int:
    """Publish batches keyed by node (or raw (key, value) records, e.g. poison) with one producer."""
    p = producer(bootstrap)
    await p.start()
    n = 0
    try:
        for b in batches:
            if isinstance(b, tuple):
                await p.send(topic_name(SYSCALLS, prefix), b[1], key=b[0])
                continue
            await p.send(topic_name(SYSCALLS, prefix), encode_syscall_batch(b), key=b.node.encode())
            n += len(b.events)
        await p.flush()
    finally:
        await p.stop()
    return n


def live_schedule(events: Iterable[SyscallEvent], delays: dict[str, float],
                  linger_s: float = 0.2) -> list[tuple[int, SyscallBatch]]:
    """(wall-clock time in ns, batch) as live agents publish `events` (event times = wall clock):
    each node's events in batches of `linger_s` of event time, sent `linger_s` after their first
    event plus the node's extra delay (a backlogged agent, a slower link), in sending order."""
    span = int(linger_s * 1e9)
    schedule = [(b.events[0].ts + span + int(delays.get(b.node, 0.0) * 1e9), b)
                for b in batches_of(events, batch_events=10_000, source="ebpf", span_ns=span)]
    return sorted(schedule, key=lambda item: item[0])


def claim_headers(batches: list[SyscallBatch], closed_ns: Callable[[SyscallBatch], int],
                  whole: bool = False) -> list[list]:
    """The COMPLETE_HEADER a live agent sends with each of these batches (one node's in order): the time it
    closed the batch (`closed_ns`: its source read up to then), no later than the node's next batch's first
    event, less the agents' margin. A node's last batch here: no later than its own last event, unless the
    batches are `whole` (every event up to each batch's close is in them)."""
    nxt: dict[str, int] = {}
    out: list = [None] * len(batches)
    for i in range(len(batches) - 1, -1, -1):
        b = batches[i]
        closed = closed_ns(b)
        claim = min(closed, nxt.get(b.node, closed if whole else b.events[-1].ts + 1)) - COMPLETE_MARGIN_NS
        out[i] = [(COMPLETE_HEADER, b"%d" % claim)]
        nxt[b.node] = b.events[0].ts
    return out


async def publish_live(bootstrap: str, prefix: str, schedule: list[tuple[int, SyscallBatch]],
                       partition: int | None = None, form: str | None = None, linger_s: float | None = 0.2) -> int:
    """Publish a live_schedule at its times (to one partition: agents whose nodes share it), in the
    agents' default record form or `form` (agents.agent.pipeline.encode_syscall_batch's), each record
    with the completeness its agent claims, a batch closed `linger_s` after its first event (None: as
    older agents, no claims)."""
    encode = functools.partial(encode_syscall_batch, form=form) if form else encode_syscall_batch
    span = None if linger_s is None else int(linger_s * 1e9)
    headers = ([None] * len(schedule) if span is None else
               claim_headers([b for _, b in schedule], lambda b: b.events[0].ts + span))
    p = producer(bootstrap)
    await p.start()
    n = 0
    try:
        for (at_ns, b), claim in zip(schedule, headers):
            ahead = (at_ns - time.time_ns()) / 1e9
            if ahead > 0:
                await asyncio.sleep(ahead)  # an agent's pace, not synchronisation
            await p.send(topic_name(SYSCALLS, prefix), encode(b), key=b.node.encode(), partition=partition,
                         headers=claim)
            n += len(b.events)
        await p.flush()
    finally:
        await p.stop()
    return n


async def publish_raw(bootstrap: str, topic: str, value: bytes, key: bytes | None = None) -> None:
    p = producer(bootstrap)
    await p.start()
    try:
        await p.send_and_wait(topic, value, key=key)
    finally:
        await p.stop()


def ensure_worker_topics(bootstrap: str, prefix: str) -> None:
    asyncio.run(ensure_topics(bootstrap, prefix=prefix))  # the whole catalogue


@dataclass
class Results:
    chains: dict[str, dict] = field(default_factory=dict)
    alerts: dict[str, dict] = field(default_factory=dict)
    deadletters: list[dict] = field(default_factory=list)
    chain_records: int = 0  # including repeats

    def chain_ids(self) -> set[str]:
        return set(self.chains)


async def read_results(bootstrap: str, prefix: str, done: Callable[[Results], bool], timeout: float,
                       settle: float = 0.0) -> Results:
    """Read chains, alerts and dead letters until done(results) (then `settle` s more) or timeout."""
    topics = [topic_name(t, prefix) for t in (CHAINS, ALERTS, DEADLETTER)]
    c = consumer(bootstrap, *topics, group_id=None)
    await c.start()
    res = Results()
    deadline = time.monotonic() + timeout
    settle_until = None
    try:
        while time.monotonic() < deadline:
            batch = await c.getmany(timeout_ms=200)
            for tp, records in batch.items():
                for r in records:
                    doc = orjson.loads(r.value)
                    if tp.topic == topics[0]:
                        res.chains[doc["chain_id"]] = doc
                        res.chain_records += 1
                    elif tp.topic == topics[1]:
                        res.alerts[doc["alert_id"]] = doc
                    else:
                        res.deadletters.append(doc)
            if settle_until is None and done(res):
                settle_until = time.monotonic() + settle
            if settle_until is not None and time.monotonic() >= settle_until:
                break
    finally:
        await c.stop()
    return res


class WorkerProcess:
    """One `svctrace worker` subprocess with its own log file."""

    def __init__(self, bootstrap: str, prefix: str, app_id: str, workdir: Path, name: str = "w",
                 idle_flush: float = 5.0, session_timeout: float = 6.0, extra: list[str] | None = None,
                 launcher: list[str] | None = None):
        """launcher: python arguments that run the svctrace CLI (a fault-injecting wrapper)."""
        self.log_path = workdir / f"{name}.log"
        self.cmd = [sys.executable, *(launcher or ["-m", "svctrace"]), "worker", "--bootstrap", bootstrap,
                    "--app-id", app_id, "--topic-prefix", prefix, "--data-dir", str(workdir / f"{name}-data"),
                    "--metrics-addr", "127.0.0.1:0", "--idle-flush", str(idle_flush),
                    "--checkpoint-interval", "0.5", "--session-timeout", str(session_timeout), "-v", *(extra or [])]
        self.proc: subprocess.Popen | None = None

    def start(self) -> "WorkerProcess":
        log = open(self.log_path, "ab")
        self.proc = subprocess.Popen(self.cmd, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                     cwd=REPO, env={**os.environ, "PYTHONUNBUFFERED": "1"}, **CHILD)
        log.close()
        _running.add(self)
        return self

    def metrics_url(self, timeout: float = 30.0) -> str:
        line = self._wait_for_line("metrics on ", timeout, "worker printed no metrics address")
        return line.split("metrics on ", 1)[1].strip()

    def wait_ready(self, timeout: float = 60.0) -> None:
        """Until Faust has its partitions assigned, tables recovered and streams seeked (its
        "Worker ready"; the metrics address is printed before Faust even starts)."""
        self._wait_for_line(READY_LINE, timeout, "worker never became ready")

    def _wait_for_line(self, text: str, timeout: float, what: str) -> str:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            for line in self.log_path.read_text(errors="replace").splitlines():
                if text in line:
                    return line
            self.check_alive()
            time.sleep(0.1)  # poll interval
        raise TimeoutError(f"{what} within {timeout:.0f}s\n{self.log_tail()}")

    def wait_exit(self, timeout: float) -> int:
        """Until the worker exits by itself; its exit status."""
        try:
            return self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            raise TimeoutError(f"worker still running after {timeout:.0f}s\n{self.log_tail()}") from None

    def check_alive(self) -> None:
        if self.proc is not None and self.proc.poll() is not None:
            raise RuntimeError(f"worker exited with {self.proc.returncode}\n{self.log_tail()}")

    def kill(self) -> None:
        """SIGKILL the worker's whole process group."""
        _running.discard(self)
        if self.proc is not None and self.proc.poll() is None:
            try:
                os.killpg(self.proc.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            self.proc.wait(10)

    def stop(self, timeout: float = 30.0) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                pass
        self.kill()  # what is left of its process group

    def log_tail(self, lines: int = 60) -> str:
        if not self.log_path.is_file():
            return "(no log)"
        # "Heartbeat failed for group ...": the coordinator moving (a broker restart). "Heartbeat failed:
        # <error>" stays visible: an error aiokafka does not expect ends its heartbeat task for good.
        noise = ("Heartbeat failed for group", "NotLeaderForPartition", "Unable connect to", "|", "+")
        text = [ln for ln in self.log_path.read_text(errors="replace").splitlines() if not ln.startswith(noise)
                and not any(n in ln for n in noise[:3])]
        return "\n".join(text[-lines:])


def metric_value(url: str, name: str, **labels: str) -> float:
    """One sample of a worker's /metrics (0 when absent)."""
    import urllib.request

    from prometheus_client.parser import text_string_to_metric_families

    text = urllib.request.urlopen(url, timeout=5).read().decode()
    total = 0.0
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == name and all(sample.labels.get(k) == v for k, v in labels.items()):
                total += sample.value
    return total


def wait_until(condition: Callable[[], bool], timeout: float, what: str, workers=()) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return
        for w in workers:
            w.check_alive()
        time.sleep(0.2)  # poll interval
    logs = "\n".join(w.log_tail(20) for w in workers)
    raise TimeoutError(f"{what} not reached within {timeout:.0f}s\n{logs}")
