"""The alerts state checkpointed in parts (Alerter.durable_parts / restore_parts, checkpoint format 6): a
header (the suppression windows without their chains) and only the chain entries added or gone since the
last checkpoint. Restoring from what those parts add up to, at any point of a run, must give every alert
record an uninterrupted run gives, in the same order: a change not marked would be an entry missing or
stale in the changelog, and shows here."""
from __future__ import annotations

import random

import orjson
import pytest

from svctrace.streams.core import Runner, Settings, dumps_state, loads_state
from svctrace.streams.core.alerts import ALERTS_TOPIC, Alerter
from svctrace.streams.core.stitch import OCCURRENCES_TOPIC
from tests.test_core_checkpoint_parts import WORKER, _mixed_traffic, _steady


class _Store:
    """An alerts changelog's compacted content as the worker keeps it (StageShell): per key its header and
    its entries' bytes; a key gone idle leaves nothing (its tombstones), a state given whole replaces all."""

    def __init__(self):
        self.headers: dict[str, bytes] = {}
        self.entries: dict[str, dict[str, bytes]] = {}
        self.writes: dict[tuple[str, str], int] = {}  # (key, entry) -> times written

    def write(self, key: str, header: dict, changed: dict, whole: bool) -> None:
        self.headers[key] = dumps_state(header)
        mine = self.entries.setdefault(key, {})
        if whole:
            mine.clear()
        for sub, value in changed.items():
            if value is None:
                mine.pop(sub, None)
            else:
                mine[sub] = dumps_state(value)
                self.writes[(key, sub)] = self.writes.get((key, sub), 0) + 1

    def drop(self, key: str) -> None:
        self.headers.pop(key, None)
        self.entries.pop(key, None)

    def restore(self, op: Alerter, key: str) -> dict:
        header = orjson.loads(self.headers[key])
        entries = {sub: orjson.loads(raw) for sub, raw in self.entries.get(key, {}).items()}
        assert header["parts"] == len(entries), "every entry the header counts is in the store"
        return op.restore_parts(header, entries)


class _Checkpointing(Runner):
    """A runner whose alerts states are checkpointed in parts and replaced by their restored copy every
    `every` steps (some keys skipped at random: their marks accumulate). `records`: every alert record
    emitted, in order."""

    def __init__(self, index, settings, step_events, every=None, rng=None):
        super().__init__(index, settings, step_events)
        self.every, self.steps, self.store, self.rng = every, 0, _Store(), rng
        self.restores = 0
        self.records: list[bytes] = []

    def _route(self, topic, key, value) -> None:
        if topic == ALERTS_TOPIC:
            self.records.append(orjson.dumps(value))
        super()._route(topic, key, value)

    def step(self) -> None:
        super().step()
        self.steps += 1
        if self.every is None or self.steps % self.every:
            return
        op = self.graph.alerts
        table = self.states[OCCURRENCES_TOPIC]
        for key in [k for k in self.store.headers if k not in table]:  # idle since: tombstoned
            self.store.drop(key)
        for key, st in list(table.items()):
            if self.rng is not None and self.rng.random() < 0.3:
                continue
            whole = not op.tracking(st)
            header, changed = op.durable_parts(st)
            self.store.write(key, header, changed, whole)
            if self.rng is None or self.rng.random() < 0.5:
                table[key] = self.store.restore(op, key)
                self.restores += 1


def _cases():
    yield "bench-steady", _steady(1500, 8)
    yield "faults", _mixed_traffic()


@pytest.mark.parametrize("settings", [WORKER, Settings()], ids=["worker", "core"])
@pytest.mark.parametrize("step_events,every,seed", [(64, 1, None), (97, 2, 7), (300, 1, 3)])
@pytest.mark.parametrize("case", ["bench-steady", "faults"])
def test_restoring_alerts_from_parts_anywhere_gives_the_uninterrupted_records(case, step_events, every, seed,
                                                                              settings):
    cluster, events = dict(_cases())[case]
    uninterrupted = _Checkpointing(cluster.index(), settings, step_events)
    uninterrupted.feed(events)
    baseline = uninterrupted.finish()
    assert baseline.alerts and len(uninterrupted.records) > len(baseline.alerts)  # (re-emitted, final, at the close)
    runner = _Checkpointing(cluster.index(), settings, step_events, every,
                            random.Random(seed) if seed is not None else None)
    runner.feed(events)
    resumed = runner.finish()
    assert runner.restores >= 4
    assert runner.records == uninterrupted.records
    assert resumed.alerts == baseline.alerts
    assert [orjson.dumps(c) for c in resumed.chains] == [orjson.dumps(c) for c in baseline.chains]


def test_alerts_parts_write_each_chain_once_and_nothing_unchanged():
    cluster, events = _mixed_traffic()
    runner = _Checkpointing(cluster.index(), WORKER, 64, 1)
    runner.feed(events[: len(events) * 2 // 3])  # (windows still open)
    op = runner.graph.alerts
    assert runner.store.writes and max(runner.store.writes.values()) == 1  # each chain entry written once
    held = sum(len(w["chains"]) for st in runner.states[OCCURRENCES_TOPIC].values() for w in st["w"].values())
    assert held
    for key, st in runner.states[OCCURRENCES_TOPIC].items():  # right after a checkpoint nothing changed
        header, changed = op.durable_parts(st)
        assert changed == {} and "chains" not in str(header["w"]) and header["parts"] == len(runner.store.entries[key])


def test_first_alerts_parts_are_the_whole_state_and_match_durable():
    cluster, events = _mixed_traffic()
    runner = Runner(cluster.index(), WORKER, step_events=128)
    runner.feed(events[: len(events) * 2 // 3])
    runner.step()
    op = runner.graph.alerts
    states = runner.states[OCCURRENCES_TOPIC]
    assert any(w["chains"] for st in states.values() for w in st["w"].values())
    for key, st in states.items():
        whole = loads_state(dumps_state(op.durable(st)))
        header, changed = op.durable_parts(st)
        assert len(changed) == header["parts"] == sum(len(w["chains"]) for w in st["w"].values())
        assert "_ca" not in op.durable(st) and "_ca" not in header  # marks are never durable
        restored = op.restore_parts(orjson.loads(dumps_state(header)),
                                    {k: orjson.loads(dumps_state(v)) for k, v in changed.items()})
        again = loads_state(dumps_state(op.durable(restored)))
        assert again == whole and list(again["w"]) == list(whole["w"])
        # an older worker's whole record restores as it is, and its first parts are every entry
        old = op.restore(loads_state(dumps_state(op.durable(st))))
        assert not op.tracking(old) and len(op.durable_parts(old)[1]) == header["parts"]
        op.untrack(st)
        assert len(op.durable_parts(st)[1]) == header["parts"]


def test_windows_that_close_while_their_key_lives_on_leave_no_entry_behind():
    """Occurrences of two alert keys over eight suppression windows (the runs above end within one): a
    closed window's chain entries are tombstoned while its key lives on, and restoring anywhere gives the
    uninterrupted records (duplicates of a chain included)."""
    S = 10**9
    rng = random.Random(5)
    occurrences = []
    for i in range(900):
        ts = i * S + rng.randrange(S)
        cid = f"ch-{rng.randrange(600):04d}"  # (the same chain again, now and then: deduplicated)
        occurrences.append({"rule": "svc.no_endpoints", "ts": ts, "chain_id": cid,
                            "labels": {"namespace": "default", "service": f"svc-{i % 2}"},
                            "evidence": [{"node": "n1", "n": i}, {"node": "n2", "n": i}],
                            "vars": {"namespace": "default", "service": f"svc-{i % 2}", "client": "10.0.0.7",
                                     "outcome": "refused"}, "in_cluster": True})

    def run(checkpointing: bool):
        op, store, states, records = Alerter(lateness_ns=30 * S), _Store(), {}, []
        for i, occ in enumerate(occurrences):
            key = f"svc.no_endpoints|{occ['labels']['service']}"
            st = states.setdefault(key, op.new_state())
            records += op.process(st, key, occ)
            for k in list(states):
                records += op.advance(states[k], k, occ["ts"] - 2 * S)
                if op.is_idle(states[k]):
                    del states[k]
                    store.drop(k)
            if checkpointing and i % 3 == 0:
                for k, st in list(states.items()):
                    whole = not op.tracking(st)
                    header, changed = op.durable_parts(st)
                    store.write(k, header, changed, whole)
                    if rng.random() < 0.5:
                        states[k] = store.restore(op, k)
        for k, st in states.items():
            records += op.flush(st, k)
        return [orjson.dumps(r) for r in records], store

    uninterrupted, _ = run(False)
    resumed, store = run(True)
    assert len(uninterrupted) >= 16 and resumed == uninterrupted
    for key, entries in store.entries.items():  # only the open windows' chains are left
        windows = orjson.loads(store.headers[key])["w"]
        assert len(windows) <= 2 and {sub.split(":")[0] for sub in entries} <= set(windows)
