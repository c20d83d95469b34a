"""The in-process runner: drives the operator graph over any event source.

    result = run(events_or_batches, index)          # -> RunResult(chains, alerts, stats)

Events (SyscallEvent) or batches (SyscallBatch) are fed in arrival order; the
event-time clock is the largest ts seen, the watermark trails it by the
configured lateness; every `step_events` events the stages are advanced. At the
end everything is flushed (open chains close as "incomplete"). The Faust app
drives the very same operators (graph.Graph) with Kafka in between.
"""
from __future__ import annotations

import gc
from contextlib import contextmanager
from dataclasses import dataclass, field
from itertools import islice
from typing import Iterable, Iterator

from svctrace.schemas.models import SyscallBatch, SyscallEvent

from .alerts import ALERTS_TOPIC
from .deadletter import DEADLETTER_TOPIC
from .enriched import batch_to_wire
from .graph import SYSCALLS_TOPIC, Graph, Settings
from .stitch import CHAINS_TOPIC


@dataclass
class RunResult:
    chains: list[dict] = field(default_factory=list)  # in emission order
    alerts: list[dict] = field(default_factory=list)  # the final record of each alert id, sorted by first_seen
    enriched: list[dict] = field(default_factory=list)
    deadletters: list[dict] = field(default_factory=list)  # records a stage could not process, with the reason
    stats: dict = field(default_factory=dict)


class Runner:
    def __init__(self, index, settings: Settings | None = None, step_events: int = 4096):
        self.graph = Graph(index, settings)
        s = self.graph.settings
        self.lateness_ns = max(s.enrich_lateness_ns, s.stitch_lateness_ns)
        self.step_events = step_events
        self.states: dict[str, dict[str, dict]] = {t: {} for t in self.graph.consumers}
        self.clock: int | None = None
        self.pending: dict[str, list[SyscallEvent]] = {}
        self.npending = 0
        self.chains: list[dict] = []
        self.alerts: dict[str, dict] = {}
        self.enriched: list[dict] = []
        self.deadletters: list[dict] = []
        self.events_in = 0
        self.late = 0  # events the stages dropped as late, of states already dropped (see result())

    # -- feeding -------------------------------------------------------------------

    def feed(self, items: Iterable[SyscallEvent | SyscallBatch]) -> None:
        with fewer_gc_passes():  # (a caller driving the Runner itself, like analyze, gets it too)
            self._feed(items)

    def _feed(self, items: Iterable[SyscallEvent | SyscallBatch]) -> None:
        # Items are taken by islice() up to the next step: a chunk of events only (the common
        # case) reaches the step count exactly at its end, so per event only its node's pending
        # list; a chunk holding a batch goes through the item-by-item loop. The event-time
        # clock is the enrich stage's (Enricher.newest_ts), taken in step(); events_in too.
        it = iter(items)
        while True:
            chunk = list(islice(it, max(1, self.step_events - self.npending)))
            if not chunk:
                return
            if SyscallBatch in map(type, chunk):
                self._feed_items(chunk)
                continue
            pending = self.pending  # step() empties it in place
            for item in chunk:
                try:
                    pending[item.node].append(item)  # (list.append has its own fast bytecode)
                except KeyError:  # the node's first event since the last step
                    pending[item.node] = [item]
            self.npending += len(chunk)
            if self.npending >= self.step_events:
                self.step()  # empties `pending` in place

    def _feed_items(self, items: Iterable[SyscallEvent | SyscallBatch]) -> None:
        # Per item: its node's pending list and the count.
        step_events = self.step_events
        npending = self.npending
        pending = self.pending  # step() empties it in place
        for item in items:
            if item.__class__ is not SyscallBatch:  # an event (the common case, kept lean)
                try:
                    pending[item.node].append(item)
                except KeyError:  # the node's first event since the last step
                    pending[item.node] = [item]
                npending += 1
            else:
                self._deliver(SYSCALLS_TOPIC, item.node, item)
                n = len(item.events)
                self.events_in += n
                npending += n
            if npending >= step_events:
                self.npending = npending
                self.step()  # empties `pending` in place
                npending = 0
        self.npending = npending

    def step(self) -> None:
        for node, events in self.pending.items():
            self.events_in += len(events)
            self._deliver(SYSCALLS_TOPIC, node, events)  # the enrich stage copies the events into its buffer
        self.pending.clear()
        self.npending = 0
        # the event-time clock: the largest ts fed (the enrich stage has seen every event)
        newest = self.graph.enrich.newest_ts
        if newest >= 0 and (self.clock is None or newest > self.clock):
            self.clock = newest
        if self.clock is not None:
            self.advance(self.clock - self.lateness_ns)

    def advance(self, watermark_ns: int) -> None:
        """Move every stage's event-time watermark, in graph order, and drop idle state."""
        for topic, op in self.graph.consumers.items():
            table = self.states[topic]
            for key in list(table):
                for out in op.advance(table[key], key, watermark_ns):
                    self._route(*out)
                if op.is_idle(table[key]):
                    self.late += table.pop(key).get("late", 0)

    def finish(self) -> RunResult:
        with fewer_gc_passes():
            return self._finish()

    def _finish(self) -> RunResult:
        self.step()
        for topic, op in self.graph.consumers.items():
            table = self.states[topic]
            for key in list(table):
                for out in op.flush(table[key], key):
                    self._route(*out)
                self.late += table.pop(key).get("late", 0)
        return self.result()

    def result(self) -> RunResult:
        late = self.late + sum(st.get("late", 0) for table in self.states.values() for st in table.values())
        events_in = self.events_in + sum(map(len, self.pending.values()))  # (pending: not yet counted by step())
        stats = {"events_in": events_in, "chains": len(self.chains), "alerts": len(self.alerts),
                 "deadletters": len(self.deadletters), "late": late}
        return RunResult(chains=list(self.chains),
                         alerts=sorted(self.alerts.values(), key=lambda a: (a["first_seen"], a["alert_id"])),
                         enriched=list(self.enriched), deadletters=list(self.deadletters), stats=stats)

    # -- plumbing ------------------------------------------------------------------

    def _deliver(self, topic: str, key: str, value) -> None:
        op = self.graph.consumers[topic]
        table = self.states[topic]
        state = table.get(key)
        if state is None:
            state = table[key] = op.new_state()
        for out in op.process(state, key, value):
            self._route(*out)

    def _route(self, topic: str, key: str, value) -> None:
        if topic in self.graph.consumers:
            self._deliver(topic, key, value)
        elif topic == CHAINS_TOPIC:
            self.chains.append(value)
        elif topic == ALERTS_TOPIC:
            self.alerts[value["alert_id"]] = value
        elif topic == DEADLETTER_TOPIC:
            self.deadletters.append(value)
        else:
            self.enriched.append(batch_to_wire(value))  # the topic's schema form

    def open_state_sizes(self) -> dict[str, int]:
        return {t: len(v) for t, v in self.states.items()}


@contextmanager
def fewer_gc_passes(gen0: int = 500_000) -> Iterator[None]:
    """The graph allocates many small, short-lived dicts; CPython's default gen-0
    threshold (700) then runs the cycle collector constantly for nothing (~15% of
    the time). Raised while a Runner feeds or finishes (whoever drives it: run(),
    analyze, tests) and for a whole run(), then restored. 500k, as the worker's
    (faust_app.app.fewer_gc_passes). A gen-0 pass comes once gen0 more tracked objects
    were allocated than freed, and walks those survivors: a pass finds next to nothing
    (bench.core_runner's traffic, 8000 requests: 0 objects in 1-3 passes of 8-21 ms each),
    so a higher threshold moves passes later (a run of that size now ends before its first)
    and a long run walks about as many objects in fewer, longer passes (24,000 curl
    requests: 1 pass of 88 ms instead of 2 taking 119 ms). At most 500k allocations' worth
    of cyclic garbage waits meanwhile."""
    old = gc.get_threshold()
    gc.set_threshold(max(old[0], gen0), old[1], old[2])
    try:
        yield
    finally:
        gc.set_threshold(*old)


def run(source: Iterable[SyscallEvent | SyscallBatch], index, settings: Settings | None = None,
        step_events: int = 4096) -> RunResult:
    with fewer_gc_passes():
        runner = Runner(index, settings, step_events)
        runner.feed(source)
        return runner.finish()
