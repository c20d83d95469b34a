"""The stitch state checkpointed in parts (Stitcher.durable_parts / restore_parts): a header and
only the entries that changed since the last checkpoint. Restoring from what those parts add up
to, at any point of a run, must give the records an uninterrupted run gives, in the same order: a
change not marked would be an entry left stale in the changelog, and shows here."""
from __future__ import annotations

import random

import orjson
import pytest

from svctrace.streams.core import Runner, Settings, dumps_state, loads_state
from svctrace.streams.core.enrich import FLOWS_TOPIC
from svctrace.streams.core.stitch import Stitcher
from tests.scenario import FAULTS, MODES, MS, S, T0, Cluster, Scenario, renumber, steady_traffic

WORKER = Settings(enrich_lateness_ns=400 * MS, stitch_lateness_ns=400 * MS, settle_ns=250 * MS)


class _Store:
    """A changelog's compacted content for the stitch stage, as the worker keeps it: bytes per key."""

    def __init__(self):
        self.headers: dict[str, bytes] = {}
        self.entries: dict[str, dict[str, bytes]] = {}
        self.written = 0  # entries written (not counting headers)

    def write(self, key: str, header: dict, changed: dict, full: bool = False) -> None:
        """A key's checkpoint: its header, and its entries that changed, or (full: its first since it was
        untracked) every entry, the stored ones it does not give tombstoned (as StageShell.finish does)."""
        self.headers[key] = dumps_state(header)
        mine = self.entries.setdefault(key, {})
        if full:
            mine.clear()
        for sub, value in changed.items():
            if value is None:
                mine.pop(sub, None)
            else:
                mine[sub] = dumps_state(value)
                self.written += 1

    def drop(self, key: str) -> None:
        """A key gone idle: its header and every entry tombstoned (StageShell.drop, then its checkpoint)."""
        self.headers.pop(key, None)
        self.entries.pop(key, None)

    def restore(self, op: Stitcher, key: str) -> dict:
        header = orjson.loads(self.headers[key])
        entries = {sub: orjson.loads(raw) for sub, raw in self.entries.get(key, {}).items()}
        assert header["parts"] == len(entries), "every entry the header counts is in the store"
        return op.restore_parts(header, entries)


class _Checkpointing(Runner):
    """A runner whose stitch states are checkpointed in parts and replaced by their restored copy
    every `every` steps (the input buffer carried over, as a worker re-reads it)."""

    def __init__(self, index, settings, step_events, every, rng=None):
        super().__init__(index, settings, step_events)
        self.every, self.steps, self.store, self.rng = every, 0, _Store(), rng
        self.restores = 0

    def step(self) -> None:
        super().step()
        self.steps += 1
        if self.steps % self.every:
            return
        op = self.graph.stitch
        table = self.states[FLOWS_TOPIC]
        for key in [k for k in self.store.headers if k not in table]:
            self.store.drop(key)  # (gone idle: a later state of the key starts anew)
        for key, st in list(table.items()):
            if self.rng is not None and self.rng.random() < 0.3:
                continue  # a key not checkpointed now: its marks accumulate until the next
            full = not op.tracking(st)
            header, changed = op.durable_parts(st)
            self.store.write(key, header, changed, full)
            if self.rng is None or self.rng.random() < 0.5:
                restored = self.store.restore(op, key)
                restored["runs"] = st["runs"]
                table[key] = restored
                self.restores += 1


def _mixed_traffic():
    """DNS lookups (claimed, unclaimed, NXDOMAIN via the search list), every fault and mode,
    keep-alive, host processes, UDP flows to a Service: close together so that conns, lookups and timers
    overlap."""
    cluster = Cluster()
    cluster.add_udp_service(stray_pod=True)
    events = []
    for m, mode in enumerate(MODES):
        sc = Scenario(cluster, mode)
        for i in range(80):
            fault = FAULTS[i % len(FAULTS)]
            if fault in ("wrong_port", "no_endpoints", "rules_flushed") and mode != "dnat":
                fault = "healthy"
            sc.request(T0 + m * 7 * MS + i * 137 * MS, fault)
        events += sc.events()
    sc = Scenario(cluster, "dnat")
    client = cluster.pods["client"]
    for i in range(120):  # lookups no connection claims, for 36 s: they expire into chains of their own
        dig = sc.proc("client", "dig")
        sc.lookup(T0 + 3 * MS + i * 300 * MS, dig, client.ip, f"name-{i % 7}.default.svc.cluster.local",
                  ["10.96.0.100"] if i % 3 == 0 else [], rcode=3 if i % 3 == 1 else 0, answer=i % 3 != 2,
                  qtype="AAAA" if i % 6 == 4 else "A")
    for i in range(20):
        sc.keepalive(T0 + i * 270 * MS, statuses=(200, 200, 503))
    for i in range(40):  # answered, delivered only, refused, unanswered, misrouted, open past the end
        sc.udp_flow(T0 + 11 * MS + i * 230 * MS, connected=i % 2 == 1, received_by=(None, "metrics-1", "stray")[i % 3],
                    reply=i % 4 != 0, error="ECONNREFUSED" if i % 5 == 2 else None, close=i != 39)
    events += sc.events()
    return cluster, renumber(sorted(events, key=lambda e: e.ts))


def _steady(rate: float, seconds: float):
    """bench.worker_steady's live traffic (the bench's mix at a steady rate)."""
    cluster, events, _requests = steady_traffic(rate, seconds, T0)
    return cluster, events


def _long_lived():
    """Clients that live long (one process resolving and connecting again and again, as a service's client does,
    and one resolving many names): a key's claimed lookups expire and leave when the key is read again, and a
    ninth lookup in a key trims the oldest, so the lookups' queues hold entries of lookups gone."""
    cluster = Cluster()
    sc = Scenario(cluster, "dnat")
    client = cluster.pods["client"]
    for a in range(6):
        app = sc.proc("client", "app")
        for i in range(60):
            sc.request(T0 + a * 170 * MS + i * 1300 * MS, "healthy" if (i + a) % 9 else "wrong_port", client=app)
    dig = sc.proc("client", "dig")
    for i in range(60):
        sc.lookup(T0 + 2 * S + i * 450 * MS, dig, client.ip, f"name-{i % 11}.default.svc.cluster.local",
                  ["10.96.0.100"] if i % 4 else [], rcode=0 if i % 4 else 3)
    return cluster, renumber(sorted(sc.events(), key=lambda e: e.ts))


def _cases():
    yield "bench-steady", _steady(1500, 8)
    yield "faults", _mixed_traffic()
    yield "slow-steady", _steady(80, 75)  # past every timeout: DNS server records and loss markers expire
    yield "long-lived", _long_lived()


@pytest.mark.parametrize("settings", [WORKER, Settings()], ids=["worker", "core"])
@pytest.mark.parametrize("step_events,every,seed", [(64, 1, None), (97, 2, 7), (300, 1, 3)])
@pytest.mark.parametrize("case", ["bench-steady", "faults", "slow-steady", "long-lived"])
def test_restoring_from_parts_anywhere_gives_the_uninterrupted_records(case, step_events, every, seed, settings):
    cluster, events = dict(_cases())[case]
    uninterrupted = Runner(cluster.index(), settings, step_events)  # (records of several keys interleave by step)
    uninterrupted.feed(events)
    baseline = uninterrupted.finish()
    assert baseline.chains
    runner = _Checkpointing(cluster.index(), settings, step_events, every,
                            random.Random(seed) if seed is not None else None)
    runner.feed(events)
    resumed = runner.finish()
    assert runner.restores >= 4
    assert [orjson.dumps(c) for c in resumed.chains] == [orjson.dumps(c) for c in baseline.chains]
    assert resumed.alerts == baseline.alerts
    assert resumed.deadletters == baseline.deadletters


def test_parts_write_what_changed_not_the_whole_state():
    cluster, events = _steady(2000, 10)
    runner = _Checkpointing(cluster.index(), WORKER, 256, 1)
    runner.feed(events)
    op = runner.graph.stitch
    # entries in the state now, against entries written over the whole run
    held = sum(len(st["conns"]) + len(st["lk"]) + len(st["dsrv"]) for st in runner.states[FLOWS_TOPIC].values())
    assert held
    written_per_step = runner.store.written / runner.steps
    assert written_per_step < held / 2, (written_per_step, held)
    # right after a checkpoint nothing has changed; one more step changes only some entries
    for st in runner.states[FLOWS_TOPIC].values():
        _header, changed = op.durable_parts(st)
        assert changed == {}


def test_first_parts_are_the_whole_state_and_match_durable():
    cluster, events = _steady(1000, 4)
    runner = Runner(cluster.index(), WORKER, step_events=128)
    runner.feed(events[: len(events) // 2])
    runner.step()
    op = runner.graph.stitch
    for key, st in runner.states[FLOWS_TOPIC].items():
        header, changed = op.durable_parts(st)
        whole = loads_state(dumps_state(op.durable(st)))
        # DNS server records in groups of up to 1000 (format 7), lookup keys in groups of up to 100 (format 8),
        # the connections an entry each
        groups = [v for k, v in changed.items() if k[0] == "S"]
        assert sum(map(len, groups)) == len(st["dsrv"]) and len(groups) == -(-len(st["dsrv"]) // 1000)
        lgroups = [v for k, v in changed.items() if k[0] == "L"]
        assert [k for g in lgroups for k in g] == list(st["lk"]) and len(lgroups) == -(-len(st["lk"]) // 100)
        assert len(changed) == header["parts"] == len(st["conns"]) + len(lgroups) + len(groups)
        assert "_cc" not in op.durable(st)  # marks are never durable
        restored = op.restore_parts(orjson.loads(dumps_state(header)),
                                    {k: orjson.loads(dumps_state(v)) for k, v in changed.items()})
        again = loads_state(dumps_state(op.durable(restored)))
        # the timer queue is rebuilt: each conn's live entry, without the stale ones the run left
        live = sorted([c["qd"], k] for k, c in whole["conns"].items())
        assert all(entry in whole["tq"] for entry in live)
        assert sorted(again.pop("tq")) == live
        whole.pop("tq")
        # the lookups' queues: their very entries, in heap order; an entry of a lookup gone without its key (none
        # reads it: stitch._queue_of)
        held = {lk[1] for lookups in whole["lk"].values() for lk in lookups}
        for name in ("lq", "lc"):
            assert [e[:2] for e in again[name]] == [e[:2] for e in whole[name]]
            assert [e[2] for e in again[name]] == [e[2] if e[1] in held else None for e in whole[name]]
            again.pop(name), whole.pop(name)
        assert again == whole
        assert list(again["conns"]) == list(whole["conns"]) and list(again["lk"]) == list(whole["lk"])
        assert list(again["dsrv"]) == list(whole["dsrv"])  # (the orders the state keeps)
        op.untrack(st)  # every entry again: the groups written anew, the old ones tombstoned
        again_changed = op.durable_parts(st)[1]
        assert sum(v is not None for v in again_changed.values()) == header["parts"]
        assert {k for k, v in again_changed.items() if v is None} == {k for k in changed if k[0] in "SL"}


def test_lookup_keys_go_in_groups_each_tombstoned_once_no_key_needs_it():
    """Lookup keys are written in groups (format 8): a key written again goes in a later group, a key gone is
    listed in the header while a group still holds a version of it, and a group is tombstoned once none of its
    keys' newest versions is in it: the store holds no group for nothing, and a restore gives the live keys."""
    cluster, events = _steady(80, 75)  # (past the lookups' timeout many times)
    runner = _Checkpointing(cluster.index(), WORKER, 64, 1, random.Random(5))
    op = runner.graph.stitch
    seen_gone = 0
    written: dict = {}  # key -> the groups it wrote
    step = runner.step

    def checked_step():
        nonlocal seen_gone
        step()
        for key, st in runner.states[FLOWS_TOPIC].items():
            stored = runner.store.entries.get(key, {})
            groups = {sub: orjson.loads(raw) for sub, raw in stored.items() if sub[0] == "L"}
            if key not in runner.store.headers or "_lgc" not in st:
                continue
            header = orjson.loads(runner.store.headers[key])
            gone = set(header["lgx"])
            seen_gone += bool(gone)
            written[key] = header["lgn"]
            newest = {}
            for sub in sorted(groups, key=lambda s: int(s[1:])):
                for k in groups[sub]:
                    newest[k] = sub
            assert gone <= set(newest)  # (a key gone is listed only while a group holds it)
            live = {k for k in newest if k not in gone}
            # every stored group holds the newest version of a key not gone (else it is tombstoned)
            assert {newest[k] for k in live} == set(groups), (key, sorted(groups))

    runner.step = checked_step
    runner.feed(events)
    # keys gone while a group held them; many groups written, most of them tombstoned since
    assert seen_gone and sum(written.values()) > 30
    stored = sum(sum(sub[0] == "L" for sub in runner.store.entries.get(key, ())) for key in written)
    assert stored < sum(written.values()) / 3
