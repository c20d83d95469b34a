"""The stitch state checkpointed in slices (Stitcher.begin_parts / next_parts): the cut takes the header
and which entries changed, and the entries follow a few at a time while the state goes on taking events
(a worker serializes them between records, so that a checkpoint never holds its loop for long). What the
slices give must be exactly the entries as they were at the cut, whatever happened to them since (an
entry about to change is serialized first: copy-on-write); restoring that checkpoint and re-reading the
input since the cut must give the records an uninterrupted run gives."""
from __future__ import annotations

import random

import orjson
import pytest

from svctrace.streams.core import Runner, Settings, dumps_state
from svctrace.streams.core.enrich import FLOWS_TOPIC
from svctrace.streams.core.stitch import Stitcher
from tests.scenario import MS, T0, Cluster, Scenario, renumber
from tests.test_core_checkpoint_parts import WORKER, _cases


def _entries_now(st: dict, conns, lookup_groups=(), groups=()) -> dict:
    """The bytes of these entries as the state holds them now (None: gone), as durable_parts + dumps_state give;
    `lookup_groups`: the lookup keys' groups a cut took ([(subkey, its keys or None)], format 8), `groups`: the DNS
    server records' groups ([(subkey, group or None)], format 7)."""
    out = {sub: None if g is None else dumps_state(g) for sub, g in groups}
    for sub, keys in lookup_groups:
        out[sub] = None if keys is None else dumps_state({k: [st["lks"][k], st["lk"][k]] for k in keys})
    for k in conns:
        c = st["conns"].get(k)
        out["c" + k] = None if c is None else dumps_state(c)
    return out


class _Store:
    """A changelog's compacted content for the stitch stage: bytes per key and entry."""

    def __init__(self):
        self.headers: dict[str, bytes] = {}
        self.entries: dict[str, dict[str, bytes]] = {}

    def write(self, key: str, header: bytes, entries: dict, full: bool = False) -> None:
        """As tests/test_core_checkpoint_parts' store: full, the stored entries not given are tombstoned."""
        self.headers[key] = header
        mine = self.entries.setdefault(key, {})
        if full:
            mine.clear()
        for sub, raw in entries.items():
            if raw is None:
                mine.pop(sub, None)
            else:
                mine[sub] = raw

    def drop(self, key: str) -> None:
        self.headers.pop(key, None)
        self.entries.pop(key, None)

    def restore(self, op: Stitcher, key: str) -> dict:
        header = orjson.loads(self.headers[key])
        entries = {sub: orjson.loads(raw) for sub, raw in self.entries.get(key, {}).items()}
        assert header["parts"] == len(entries), "every entry the header counts is in the store"
        return op.restore_parts(header, entries)


class _Sliced(Runner):
    """A runner whose stitch states are checkpointed in slices: a cut every `every` steps (per key, once its
    last checkpoint is written), then between steps up to a random number of entries per key. When a key's
    checkpoint is complete, its entries are held against their bytes at the cut; the store takes it, and
    sometimes the key "restarts": its state restored from the store (its input buffer as it was at the cut)
    and its input since the cut applied again, which must give the outputs it gave (then the run goes on
    with the restored state)."""

    def __init__(self, index, settings, step_events, every, rng):
        super().__init__(index, settings, step_events)
        self.every, self.rng, self.steps, self.store = every, rng, 0, _Store()
        self.inflight: dict[str, dict] = {}  # key -> its checkpoint under way
        self.restores = self.checked = 0

    # the stitch keys' input and outputs since their cut, logged
    def _deliver(self, topic, key, value):
        c = self.inflight.get(key) if topic == FLOWS_TOPIC else None
        if c is not None and self.states[topic].get(key) is c["state"]:
            c["log"].append(("process", value))
            # (process emits only dead letters)
            out = self.graph.stitch.process(c["state"], key, value)
            c["outs"] += out
            for o in out:
                self._route(*o)
            return
        super()._deliver(topic, key, value)

    def advance(self, watermark_ns):
        for topic, op in self.graph.consumers.items():
            table = self.states[topic]
            for key in list(table):
                st = table[key]
                outs = op.advance(st, key, watermark_ns)
                c = self.inflight.get(key) if topic == FLOWS_TOPIC else None
                if c is not None and c["state"] is st:
                    c["log"].append(("advance", watermark_ns))
                    c["outs"] += outs
                for out in outs:
                    self._route(*out)
                if op.is_idle(st):
                    self.late += table.pop(key).get("late", 0)

    def step(self):
        super().step()
        self.steps += 1
        op = self.graph.stitch
        table = self.states[FLOWS_TOPIC]
        for key, c in list(self.inflight.items()):
            st = c["state"]
            got = op.next_parts(st, self.rng.randint(1, 40))
            if got is not None:
                c["entries"].update(got)
            if op.parts_pending(st):
                continue
            # complete: exactly the entries as they were at the cut
            del self.inflight[key]
            assert c["entries"] == c["reference"], key
            self.checked += 1
            self.store.write(key, c["header"], c["entries"], c["full"])
            if table.get(key) is st and self.rng.random() < 0.5:
                table[key] = self._restart(op, key, c)
        for key in [k for k in self.store.headers if k not in table and k not in self.inflight]:
            self.store.drop(key)  # (gone idle: a later state of the key starts anew)
        if self.steps % self.every:
            return
        for key, st in table.items():
            if key in self.inflight or self.rng.random() < 0.2:
                continue
            full = not op.tracking(st)
            header = op.begin_parts(st)
            reference = _entries_now(st, st["_pc"], st["_plg"], st["_pg"])
            self.inflight[key] = {"state": st, "header": dumps_state(header), "reference": reference, "full": full,
                                  "entries": {}, "runs": [list(r) for r in st["runs"]], "log": [], "outs": []}

    def _restart(self, op: Stitcher, key: str, c: dict) -> dict:
        restored = self.store.restore(op, key)
        restored["runs"] = [list(r) for r in c["runs"]]  # (re-read: the input records its events came in are not acknowledged)
        outs = []
        for kind, value in c["log"]:
            outs += op.process(restored, key, value) if kind == "process" else op.advance(restored, key, value)
        assert [orjson.dumps(o) for o in outs] == [orjson.dumps(o) for o in c["outs"]], key
        self.restores += 1
        return restored

    def finish(self):
        op = self.graph.stitch
        for c in self.inflight.values():  # (complete them: the test's checks)
            while op.parts_pending(c["state"]):
                c["entries"].update(op.next_parts(c["state"], 1000) or {})
            assert c["entries"] == c["reference"]
        self.inflight.clear()
        return super().finish()


@pytest.mark.parametrize("settings", [WORKER, Settings()], ids=["worker", "core"])
@pytest.mark.parametrize("step_events,every,seed", [(64, 1, 1), (97, 2, 7), (300, 1, 3)])
@pytest.mark.parametrize("case", ["bench-steady", "faults", "slow-steady", "long-lived"])
def test_slices_give_the_cut_and_restoring_them_gives_the_uninterrupted_records(case, step_events, every, seed,
                                                                                 settings):
    cluster, events = dict(_cases())[case]
    uninterrupted = Runner(cluster.index(), settings, step_events)
    uninterrupted.feed(events)
    baseline = uninterrupted.finish()
    assert baseline.chains
    runner = _Sliced(cluster.index(), settings, step_events, every, random.Random(seed))
    runner.feed(events)
    resumed = runner.finish()
    assert runner.checked >= 4 and runner.restores >= 2
    assert [orjson.dumps(c) for c in resumed.chains] == [orjson.dumps(c) for c in baseline.chains]
    assert resumed.alerts == baseline.alerts
    assert resumed.deadletters == baseline.deadletters


def _two_requests():
    cluster = Cluster()
    sc = Scenario(cluster, "dnat")
    sc.request(T0, "healthy")
    sc.request(T0 + 300 * MS, "healthy")
    return cluster, renumber(sorted(sc.events(), key=lambda e: e.ts))


def test_an_entry_changed_after_the_cut_is_given_as_it_was():
    cluster, events = _two_requests()
    runner = Runner(cluster.index(), WORKER, step_events=10**6)
    op = runner.graph.stitch
    runner.feed(events)
    runner.step()  # (its watermark: the last event - lateness)
    runner.advance(T0 + 1 * MS)  # the first request under way (its lookup answered, its connection open)
    (key, st), = runner.states[FLOWS_TOPIC].items()
    op.durable_parts(st)  # (tracking from here)
    runner.advance(T0 + 1300 * 1000)  # (its request and answer: the connection changed)
    header = op.begin_parts(st)
    assert header["parts"] == len(st["conns"]) + len(st["_lgc"]) + len(st["dsg"])
    assert "_pc" not in header and "_pv" not in header and "_pv" not in op.durable(st)  # never durable
    at_cut = _entries_now(st, st["_pc"], st["_plg"], st["_pg"])
    assert any(k[0] == "c" and v is not None for k, v in at_cut.items()), "a connection changed since the last checkpoint"
    with pytest.raises(RuntimeError):
        op.begin_parts(st)  # (one at a time)
    runner.finish()  # every entry changes or goes: each pending one is kept first
    assert st["_pv"] and not (st["_pc"] or st["_pl"] or st["_ps"])
    assert _entries_now(st, [k[1:] for k in at_cut if k[0] == "c"], ()) != {k: v for k, v in at_cut.items()
                                                                                if k[0] == "c"}
    given = op.next_parts(st, 1)  # (what was kept is given whatever the limit)
    assert given == at_cut
    assert not op.parts_pending(st) and op.next_parts(st, 1) is None
