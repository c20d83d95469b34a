"""The worker's checkpoint records carry a format version (streams/faust_app/checkpoint.py): records
without one (written before versions were) keep loading, a format the worker does not read is refused
naming the record, and a worker meeting one on the real broker stops with exit status 1, saying what
it found, what it reads and what to do."""
from __future__ import annotations

import asyncio
import os
from types import SimpleNamespace

import orjson
import pytest

from svctrace.kafka.clients import consumer, producer
from svctrace.schemas.models import SyscallBatch
from svctrace.streams.core import Graph, Settings, dumps_state, loads_state
from svctrace.streams.faust_app.app import StageShell
from svctrace.streams.faust_app.checkpoint import (
    CHECKPOINT_FORMAT, FORMAT_FIELD, UNVERSIONED, CheckpointFormatError, dumps_checkpoint, dumps_meta, format_of,
    loads_checkpoint, loads_meta,
)
from tests import scenario
from tests.harness import pipeline as P


def _enrich_state():
    cluster, events = scenario.build("healthy", "dnat", requests=3)
    node = events[0].node
    op = Graph(cluster.index(), Settings(partitions=1)).enrich
    st = op.new_state()
    op.process(st, node, SyscallBatch(node=node, source="scap", seq=0, events=[e for e in events if e.node == node]))
    op.advance(st, node, events[len(events) // 2].ts)
    return op, node, st


def _newer(raw: bytes, version) -> bytes:
    """A record as a worker writing format `version` would (the version first, then the fields)."""
    return b'{"checkpoint_format":' + orjson.dumps(version) + b"," + raw.split(b",", 1)[1]


def test_records_are_written_with_their_format_first_and_read_back_without_it():
    op, _, st = _enrich_state()
    raw = dumps_checkpoint(op.durable(st))
    assert raw.startswith(b'{"checkpoint_format":%d,' % CHECKPOINT_FORMAT) and format_of(raw) == CHECKPOINT_FORMAT
    assert loads_checkpoint(raw) == loads_state(dumps_state(op.durable(st)))
    meta = {"keys": ["node-a"], "progress": {}, "nodes": {"node-a": [5, None]}}
    assert format_of(dumps_meta(meta)) == CHECKPOINT_FORMAT and loads_meta(dumps_meta(meta)) == meta
    assert loads_meta(dumps_meta({})) == {}


def test_records_without_a_format_are_todays_and_keep_loading():
    op, _, st = _enrich_state()
    old = dumps_state(op.durable(st))  # what workers before format versions wrote
    assert format_of(old) == UNVERSIONED
    assert loads_checkpoint(old) == loads_state(old)
    meta = {"keys": ["b0001"], "progress": {"marks": [None, 3]}}
    assert loads_meta(orjson.dumps(meta)) == meta


@pytest.mark.parametrize("version", [CHECKPOINT_FORMAT + 1, 99, "3-beta", -1, 0, 2.5, True, None])
def test_a_format_the_worker_does_not_read_is_refused_saying_what_it_found_and_reads(version):
    op, _, st = _enrich_state()
    for raw, loads in ((dumps_checkpoint(op.durable(st)), loads_checkpoint), (dumps_meta({"keys": []}), loads_meta)):
        with pytest.raises(CheckpointFormatError) as e:
            loads(_newer(raw, version))
        assert e.value.found == version
        assert f"format {version!r}" in str(e.value) and "reads formats 1, 2, 3, 4, 5, 6, 7, 8 " in str(e.value)


def test_a_format_field_elsewhere_than_first_is_checked_too():
    raw = orjson.dumps({"keys": [], FORMAT_FIELD: CHECKPOINT_FORMAT + 1})
    with pytest.raises(CheckpointFormatError):
        loads_meta(raw)
    assert loads_meta(orjson.dumps({"keys": [], FORMAT_FIELD: CHECKPOINT_FORMAT})) == {"keys": []}


def test_the_stage_shell_names_the_record_it_cannot_read_and_restores_the_ones_it_can():
    op, node, st = _enrich_state()
    changelog = SimpleNamespace(get_topic_name=lambda: "app-enrich-state-changelog")
    table = SimpleNamespace(data={}, changelog_topic=changelog)
    table.data[node.encode()] = dumps_state(op.durable(st))  # unversioned
    table.data[b"#0"] = orjson.dumps({"keys": [node], "progress": {}})
    shell = StageShell(None, "enrich", op, table, 1, 0)
    assert shell.state(node)["wm"] == st["wm"] and list(shell.part_meta(0)["keys"]) == [node]

    table.data[node.encode()] = _newer(dumps_checkpoint(op.durable(st)), CHECKPOINT_FORMAT + 1)
    table.data[b"#0"] = _newer(dumps_meta({"keys": [node]}), CHECKPOINT_FORMAT + 1)
    successor = StageShell(None, "enrich", op, table, 1, 0)
    for load, key in ((lambda: successor.state(node), node), (lambda: successor.part_meta(0), "#0")):
        with pytest.raises(CheckpointFormatError) as e:
            load()
        assert (f"key {key!r} in changelog app-enrich-state-changelog has checkpoint format {CHECKPOINT_FORMAT + 1}"
                in str(e.value))
    assert successor.live == {} and successor.meta == {}


# -- on the real broker ----------------------------------------------------------------------

async def _read_topic(bootstrap: str, topic: str, timeout: float = 30.0) -> list:
    """Every record of `topic` up to its end when its partitions were assigned (no group: all of them)."""
    c = consumer(bootstrap, topic, group_id=None)
    await c.start()
    try:
        out: list = []
        ends = None
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while ends is None or any([await c.position(tp) < end for tp, end in ends.items()]):
            if loop.time() > deadline:
                raise TimeoutError(f"{topic}: not read to its end within {timeout:.0f}s")
            for records in (await c.getmany(timeout_ms=200)).values():
                out += records
            if ends is None and c.assignment():
                ends = await c.end_offsets(list(c.assignment()))
        return out
    finally:
        await c.stop()


async def _send(bootstrap: str, topic: str, partition: int, key: bytes, value: bytes) -> None:
    p = producer(bootstrap)
    await p.start()
    try:
        await p.send_and_wait(topic, value, key=key, partition=partition)
    finally:
        await p.stop()


@pytest.mark.kafka
def test_a_worker_meeting_a_newer_checkpoint_format_stops_with_status_1_saying_what_to_do(kafka, tmp_path):
    """A worker writes its checkpoints (this format on the changelog); a newer worker rewrites a partition's
    entry in the next format; a worker of this version restarted on that changelog must stop, not misread it."""
    prefix = kafka.unique_prefix("ck")
    P.ensure_worker_topics(kafka.bootstrap, prefix)
    app_id = "app-" + prefix.strip(".")
    cluster, events = scenario.build("healthy", "dnat", requests=40)
    kafka.run(P.publish_cluster(kafka.bootstrap, prefix, cluster.records()))
    first = P.WorkerProcess(kafka.bootstrap, prefix, app_id, tmp_path, name="first", idle_flush=30.0).start()
    try:
        sent = kafka.run(P.publish_batches(kafka.bootstrap, prefix, P.batches_of(events, 100)))
        url = first.metrics_url()
        P.wait_until(lambda: P.metric_value(url, "svctrace_worker_events_total", stage="enrich") >= sent
                     and P.metric_value(url, "svctrace_worker_checkpoints_total") > 1,
                     90.0, "events processed and checkpointed", [first])
        first.stop()
        assert first.proc.returncode == 0, first.log_tail()
    finally:
        first.kill()

    changelog = f"{app_id}-enrich-state-changelog"
    written = [r for r in kafka.run(_read_topic(kafka.bootstrap, changelog)) if r.value is not None]
    assert written and {format_of(r.value) for r in written} == {CHECKPOINT_FORMAT}
    entry = [r for r in written if r.key.startswith(b"#")][-1]  # a syscalls partition's progress entry
    kafka.run(_send(kafka.bootstrap, changelog, entry.partition, entry.key, _newer(entry.value, CHECKPOINT_FORMAT + 1)))

    again = P.WorkerProcess(kafka.bootstrap, prefix, app_id, tmp_path, name="again", idle_flush=30.0).start()
    try:
        status = again.wait_exit(90.0)
        log = again.log_path.read_text(errors="replace")
        assert status == 1, again.log_tail()
        [line] = [ln for ln in log.splitlines() if "Unreadable checkpoint" in ln]
        assert f"key {entry.key.decode()!r} in changelog {changelog} has checkpoint format {CHECKPOINT_FORMAT + 1}" in line
        assert "this worker reads formats 1, 2, 3, 4, 5, 6, 7, 8 " in line and "Roll forward" in line
        assert all(f"{app_id}-{stage}-state-changelog" in line for stage in ("enrich", "stitch", "alerts")), line
    finally:
        again.kill()


# -- the stitch state in parts (format 5) ------------------------------------------------------

def _stitch_shell(store: dict, op) -> StageShell:
    changelog = SimpleNamespace(get_topic_name=lambda: "app-stitch-state-changelog")
    return StageShell(None, "stitch", op, SimpleNamespace(data=store, changelog_topic=changelog), 12, 1)


def _snapshot(shell: StageShell) -> tuple[list, list]:
    """StageShell.snapshot, and finish(): the entries of the keys it cut (the stitch stage's are serialized in
    slices, between records), as Worker.checkpoint takes them."""
    writes, acks = shell.snapshot()
    asyncio.run(shell.finish(writes, acks))
    return writes, acks


def _apply(shell: StageShell, writes: list, log: list | None = None) -> None:
    """What StageShell.write does to the store (and the changelog, compacted: the store's copy)."""
    for _p, key, value in writes:
        if value is None:
            shell.table.data.pop(key, None)
        else:
            shell.table.data[key] = value
        if log is not None:
            log.append((key, value))
    shell._unsent.clear()  # (confirmed)


def _comparable(op, st) -> dict:
    """A state's durable form as JSON gives it back, its timer queue as its live entries."""
    d = loads_state(dumps_state(op.durable(st)))
    d["tq"] = sorted([c["qd"], k] for k, c in d["conns"].items())
    held = {lk[1] for lookups in d["lk"].values() for lk in lookups}  # (a queue's entry of a lookup gone: its key
    for name in ("lq", "lc"):  # is not restored, nor read: see stitch._queue_of)
        d[name] = [[e, ls, k if ls in held else None] for e, ls, k in d[name]]
    for k in ("dsg", "dsn", "dso", "lgn", "lgx"):  # (what the changelog holds of DNS server records and lookup keys:
        d.pop(k, None)  # their groups)
    return d


def _live_run(steps_between: int = 3):
    """bench.worker_steady's traffic through the in-process runner (the worker's settings), a stitch
    shell checkpointing its states every few steps into a store."""
    from tests.scenario import steady_traffic
    from svctrace.streams.core import Runner
    from svctrace.streams.core.enrich import FLOWS_TOPIC
    from svctrace.streams.core.keys import bucket_partition
    from tests.test_core_checkpoint_parts import WORKER

    cluster, events, _ = steady_traffic(1500, 6, scenario.T0)
    runner = Runner(cluster.index(), WORKER, step_events=200)
    op = runner.graph.stitch
    store: dict = {}
    shell = _stitch_shell(store, op)
    shell.live = runner.states[FLOWS_TOPIC]  # the runner's states are the shell's live ones
    log: list = []
    step, steps = runner.step, [0]

    def checkpointing_step():
        step()
        steps[0] += 1
        for key in list(shell.live):
            shell.touch(bucket_partition(key), key)
        if steps[0] % steps_between == 0:
            writes, _acks = _snapshot(shell)
            _apply(shell, writes, log)

    runner.step = checkpointing_step
    return runner, op, shell, store, log, events


def test_a_successor_restores_the_stitch_state_from_headers_and_entries():
    runner, op, shell, store, log, events = _live_run()
    runner.feed(events[: len(events) * 2 // 3])
    writes, _ = _snapshot(shell)
    _apply(shell, writes, log)
    keys = [k for k in shell.live]
    assert keys
    for key in keys:
        header = loads_checkpoint(store[key.encode()])
        assert header["parts"] == sum(1 for k in store if k.startswith(key.encode() + b"\x1f")) > 0
        assert "conns" not in header and "tq" not in header and "buf" not in header
    successor = _stitch_shell(dict(store), op)
    for key in keys:
        assert _comparable(op, successor.state(key)) == _comparable(op, shell.live[key])
    # most entries are written once or twice over the run, not at every checkpoint
    entries = [k for k, _ in log if b"\x1f" in k]
    assert len(entries) < 3 * len(set(entries))
    # a checkpoint right after one writes nothing but what changed: nothing
    assert _snapshot(shell)[0] == [] or all(k.startswith(b"#") for _p, k, _v in _snapshot(shell)[0])


def test_the_store_holds_each_kind_of_entry_of_a_checkpoint_in_a_buffer_of_its_own():
    # a buffer is held while one of its slices is: connections (mostly gone by the next checkpoint) must not hold
    # the lookup or DNS server groups' memory, nor these theirs
    runner, op, shell, store, log, events = _live_run(steps_between=10**9)  # (no checkpoint but this one)
    runner.feed(events[: len(events) // 2])
    writes, _ = _snapshot(shell)
    buffers: dict = {}
    for _p, key, value in writes:
        if value is not None and b"\x1f" in key:
            held = store[key]
            assert held.__class__ is memoryview and bytes(held) == value
            buffers.setdefault(key[key.index(b"\x1f") + 1:][:1], set()).add(id(held.obj))
    assert set(buffers) == {b"c", b"L", b"S"}
    assert all(len(ids) == 1 for ids in buffers.values())
    assert len(set.union(*buffers.values())) == 3


def test_the_memory_store_maps_to_partitions_exactly_the_keys_it_holds():
    """Faust's memory store (its records in a dict behind Python methods, and a key -> partition map): a
    checkpoint's records go to its dict, and a tombstoned entry leaves the map as it leaves the records
    (kept, the map grew by every entry key ever written). A successor restores from it as from a dict."""
    from mode.utils.collections import FastUserDict

    class MemoryStore(FastUserDict):  # faust.stores.memory.Store, without its service
        def __init__(self):
            self.data, self._key_partition = {}, {}

    runner, op, shell, _store, _log, events = _live_run(steps_between=10**9)
    store = shell.table.data = MemoryStore()
    tombstones = 0
    for i in range(1, 7):
        runner.feed(events[(i - 1) * len(events) // 6:i * len(events) // 6])
        for key in shell.live:
            shell.touch(int(key[1:]), key)
        writes, _acks = _snapshot(shell)
        shell._unsent.clear()  # (confirmed)
        tombstones += sum(1 for _p, k, v in writes if v is None and b"\x1f" in k)
        assert set(store._key_partition) == set(store.data)
        assert all(store._key_partition[k] == int(k[1:5]) for k in store.data if k[:1] == b"b")
    assert tombstones
    successor = _stitch_shell(store, op)
    for key, st in shell.live.items():
        assert _comparable(op, successor.state(key)) == _comparable(op, st)


def test_a_checkpoint_in_slices_writes_the_state_at_its_cut_while_the_stage_goes_on(monkeypatch):
    """StageShell.finish serializes the cut keys' entries a slice at a time while records go on being applied
    (here: the runner's steps between slices, one entry per slice): what it writes is the state at the cut,
    and the next checkpoint writes what changed since."""
    from svctrace.streams.faust_app import app as worker_app

    monkeypatch.setattr(worker_app, "SLICE_S", 0.0)
    monkeypatch.setattr(worker_app, "SLICE_ENTRIES", 1)
    monkeypatch.setattr(worker_app, "TAKE_RECORDS", 7)
    runner, op, shell, store, log, events = _live_run(steps_between=10**9)
    first, second = len(events) // 3, len(events) * 2 // 3
    runner.feed(events[:first])
    fed = [first]
    for key in shell.live:
        shell.touch(int(key[1:]), key)

    async def checkpoint_while_applying(until: int) -> tuple[dict, int]:
        writes, acks = shell.snapshot()
        at_cut = {key: _comparable(op, st) for key, st in shell.live.items()}
        task = asyncio.create_task(shell.finish(writes, acks))
        slices = kept = 0
        while not task.done():
            chunk = events[fed[0]:min(fed[0] + 200, until)]  # (a step of the runner: every state advances)
            runner.feed(chunk)
            fed[0] += len(chunk)
            slices += 1
            # (kept before they changed: entries, and lookup keys their groups take)
            kept += sum(len(st.get("_pv") or ()) + len(st.get("_plv") or ()) for st in shell.live.values())
            await asyncio.sleep(0)
        await task
        _apply(shell, writes)
        assert kept
        # a slice per call for an entry (a connection, a lookup key's group, ...): many runner steps in between
        entries = sum(1 for _p, k, v in writes if v is not None and worker_app._PART_SEP in k)
        assert entries > 10 and slices > 10
        return at_cut, slices

    at_cut, slices = asyncio.run(checkpoint_while_applying(second))
    assert any(at_cut[key] != _comparable(op, st) for key, st in shell.live.items()), "the states went on"
    successor = _stitch_shell(dict(store), op)
    for key, state in at_cut.items():
        assert _comparable(op, successor.state(key)) == state
    runner.feed(events[fed[0]:second])
    fed[0] = second
    for key in shell.live:
        shell.touch(int(key[1:]), key)
    at_cut, _slices = asyncio.run(checkpoint_while_applying(len(events)))
    successor = _stitch_shell(dict(store), op)
    for key, state in at_cut.items():
        assert _comparable(op, successor.state(key)) == state


def test_a_checkpoint_in_slices_cut_short_leaves_every_entry_to_the_next_one(monkeypatch):
    """A checkpoint whose finish() is cancelled between slices (the worker stopping) leaves nothing pending in
    the states, and the next checkpoint writes them whole: its store then holds the live states."""
    from svctrace.streams.faust_app import app as worker_app

    monkeypatch.setattr(worker_app, "SLICE_S", 0.0)
    monkeypatch.setattr(worker_app, "SLICE_ENTRIES", 1)
    runner, op, shell, store, log, events = _live_run(steps_between=10**9)
    runner.feed(events[: len(events) // 2])
    for key in shell.live:
        shell.touch(int(key[1:]), key)
    writes, _ = _snapshot(shell)
    _apply(shell, writes)
    runner.feed(events[len(events) // 2: len(events) * 3 // 4])
    for key in shell.live:
        shell.touch(int(key[1:]), key)

    async def cut_short():
        writes, acks = shell.snapshot()
        task = asyncio.create_task(shell.finish(writes, acks))
        for _ in range(5):
            await asyncio.sleep(0)
        assert any(op.parts_pending(st) for st in shell.live.values())
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task

    asyncio.run(cut_short())
    assert not any(op.parts_pending(st) for st in shell.live.values())
    writes, _ = _snapshot(shell)
    _apply(shell, writes)
    successor = _stitch_shell(dict(store), op)
    for key, st in shell.live.items():
        assert _comparable(op, successor.state(key)) == _comparable(op, st)


def test_an_idle_bucket_leaves_no_record_behind_and_a_revived_one_starts_anew():
    runner, op, shell, store, log, events = _live_run()
    runner.feed(events)
    key = next(iter(shell.live))
    p = int(key[1:])
    writes, _ = _snapshot(shell)
    _apply(shell, writes)
    assert any(k.startswith(key.encode() + b"\x1f") for k in store)
    shell.drop(p, key)
    revived = shell.state(key)  # before the checkpoint: not the stored (older) state
    assert not revived["conns"] and not revived["lk"]
    shell.drop(p, key)
    writes, _ = _snapshot(shell)
    _apply(shell, writes)
    assert not [k for k in store if k == key.encode() or k.startswith(key.encode() + b"\x1f")]


def _restored_and_rewritten(store: dict, op, key: str, st: dict) -> list:
    """A successor restores key from an older format's store (its state equal to st), then checkpoints it:
    the writes it made, applied to store, whose header is now this format's."""
    successor = _stitch_shell(store, op)
    assert _comparable(op, successor.state(key)) == _comparable(op, st)
    successor.touch(int(key[1:]), key)
    writes, _ = _snapshot(successor)
    _apply(successor, writes)
    assert format_of(store[key.encode()]) == CHECKPOINT_FORMAT
    return writes


def test_a_format_4_bucket_record_is_restored_whole_and_rewritten_in_parts_under_the_same_key():
    runner, op, shell, store, log, events = _live_run(steps_between=10**9)  # (no checkpoint while it runs)
    runner.feed(events[: len(events) // 2])
    key = next(iter(shell.live))
    st = shell.live[key]
    old = _newer(dumps_state(op.durable(st)), 4)  # what a format-4 worker wrote: the whole durable state
    assert format_of(old) == 4
    store = {key.encode(): old}
    writes = _restored_and_rewritten(store, op, key, st)
    groups = [k for k in store if k.startswith(key.encode() + b"\x1fS")]
    assert len(groups) == -(-len(st["dsrv"]) // 1000)
    lgroups = [k for k in store if k.startswith(key.encode() + b"\x1fL")]
    assert len(lgroups) == -(-len(st["lk"]) // 100)
    assert loads_checkpoint(store[key.encode()])["parts"] == len(st["conns"]) + len(lgroups) + len(groups)
    assert not [v for _p, _k, v in writes if v is None]  # nothing to tombstone
    again = _stitch_shell(dict(store), op).state(key)
    assert _comparable(op, again) == _comparable(op, st)


def test_a_format_5_bucket_is_restored_and_its_next_checkpoint_groups_its_dns_server_records():
    """Format 5 wrote each DNS server record as an entry of its own ("s<key>"); format 7 writes them in groups
    ("S<id>"). A format-5 bucket is restored as it was; its next checkpoint writes every entry, the records in
    groups, and tombstones the format-5 records."""
    runner, op, shell, store, log, events = _live_run(steps_between=10**9)  # (no checkpoint while it runs)
    runner.feed(events[: len(events) // 2])
    key = next(iter(shell.live))
    st = shell.live[key]
    assert st["dsrv"] and st["conns"] and st["lk"]
    # what a format-5 worker wrote: its header, and an entry per connection, lookup key and DNS server record
    durable = op.durable(st)
    header = {k: v for k, v in durable.items() if k not in ("conns", "lk", "lks", "dsrv", "tq", "dsg", "dsn", "dso")}
    header["parts"] = len(st["conns"]) + len(st["lk"]) + len(st["dsrv"])
    prefix = key.encode() + b"\x1f"
    store = {key.encode(): _newer(dumps_checkpoint(header), 5)}
    store.update({prefix + b"c" + k.encode(): dumps_state(c) for k, c in st["conns"].items()})
    store.update({prefix + b"l" + k.encode(): dumps_state([st["lks"][k], v]) for k, v in st["lk"].items()})
    old_servers = {prefix + b"s" + k.encode(): dumps_state(v) for k, v in st["dsrv"].items()}
    store.update(old_servers)
    writes = _restored_and_rewritten(store, op, key, st)
    old_lookups = {k for k in store if k.startswith(prefix + b"l")}
    # the format-5 records, tombstoned (the lookup keys' too: format 8 groups them)
    assert {k for _p, k, v in writes if v is None} == set(old_servers) | {prefix + b"l" + k.encode() for k in st["lk"]}
    assert not [k for k in store if k.startswith(prefix + b"s")] and not old_lookups
    groups = [k for k in store if k.startswith(prefix + b"S")]
    assert groups and sum(len(orjson.loads(store[k])) for k in groups) == len(st["dsrv"])
    again = _stitch_shell(dict(store), op).state(key)
    assert _comparable(op, again) == _comparable(op, st)


def test_a_format_7_bucket_is_restored_and_its_next_checkpoint_groups_its_lookup_keys():
    """Format 7 wrote each lookup key as an entry of its own ("l<lookup key>"); format 8 writes them in groups
    ("L<id>"). A format-7 bucket is restored as it was; its next checkpoint writes every entry, the lookup keys in
    groups, and tombstones the format-7 records; later checkpoints write only what changed, and a successor
    restores every one of them as the live state is."""
    runner, op, shell, store, log, events = _live_run(steps_between=10**9)  # (no checkpoint while it runs)
    half = len(events) // 2
    runner.feed(events[:half])
    key = next(iter(shell.live))
    st = shell.live[key]
    assert st["dsrv"] and st["conns"] and st["lk"]
    # what a format-7 worker wrote: its header, an entry per connection and lookup key, DNS server records' groups
    header, changed = op.durable_parts(st)
    for k in ("lgn", "lgx"):
        header.pop(k)
    header["parts"] = len(st["conns"]) + len(st["lk"]) + len(st["dsg"])
    prefix = key.encode() + b"\x1f"
    store = {key.encode(): _newer(dumps_checkpoint(header), 7)}
    store.update({prefix + k.encode(): dumps_state(v) for k, v in changed.items() if k[0] in "cS"})
    old_lookups = {prefix + b"l" + k.encode(): dumps_state([st["lks"][k], v]) for k, v in st["lk"].items()}
    store.update(old_lookups)
    op.untrack(st)  # (the live state's own marks are not those of the store built here)
    writes = _restored_and_rewritten(store, op, key, st)
    assert set(old_lookups) <= {k for _p, k, v in writes if v is None}  # the format-7 records, tombstoned
    assert not [k for k in store if k.startswith(prefix + b"l")]
    lgroups = [k for k in store if k.startswith(prefix + b"L")]
    assert lgroups and sum(len(orjson.loads(store[k])) for k in lgroups) == len(st["lk"])
    successor = _stitch_shell(store, op)
    again = successor.state(key)
    assert _comparable(op, again) == _comparable(op, st)
    # the successor goes on: what changes is written in later groups, and a restore anywhere is the live state
    shell.live[key] = again  # (the runner's state of the key: shell.live is runner.states[FLOWS_TOPIC])
    for i in range(4):
        runner.feed(events[half + i * half // 4: half + (i + 1) * half // 4])
        successor.touch(int(key[1:]), key)
        writes, _ = _snapshot(successor)
        _apply(successor, writes)
        assert _comparable(op, _stitch_shell(dict(store), op).state(key)) == _comparable(op, again)
    assert {k for k in store if k.startswith(prefix + b"L")} - set(lgroups)  # groups written since


class _Producer:
    """A producer for StageShell.write: a batch lands in `changelog` (compacted: each key's last record), or,
    while `failing`, is lost (its future fails as a send that ran out of retries does)."""

    def __init__(self):
        self.changelog: dict[bytes, bytes] = {}
        self.failing = False
        self._message_accumulator = SimpleNamespace(_compression_type=0)

    async def send_batch(self, batch, topic, *, partition):
        from aiokafka.errors import KafkaTimeoutError
        from aiokafka.record.default_records import DefaultRecordBatch
        future = asyncio.get_running_loop().create_future()
        if self.failing:
            future.set_exception(KafkaTimeoutError("lost"))
        else:
            for record in DefaultRecordBatch(bytes(batch._build())):
                if record.value is None:
                    self.changelog.pop(record.key, None)
                else:
                    self.changelog[record.key] = record.value
            future.set_result(None)
        return future


async def _checkpoint(shell: StageShell, producer: _Producer) -> list:
    """What Worker.checkpoint does with one stage: snapshot, write, (flush), confirm."""
    shell.worker = SimpleNamespace(app=SimpleNamespace(producer=SimpleNamespace(_ensure_producer=lambda: producer)))
    writes, acks = shell.snapshot()
    await shell.finish(writes, acks)
    await shell.write(writes)
    await shell.confirm()
    return writes


def test_a_checkpoint_whose_sends_failed_leaves_nothing_unsaid():
    """A failed send (entries, headers, an entry's tombstone, an idle bucket's tombstones) is sent again by
    the next checkpoint as the store has it, until one is confirmed: the changelog then holds what the
    store holds."""
    runner, op, shell, store, log, events = _live_run(steps_between=10**9)
    shell.table.data = store = {}
    producer = _Producer()
    third = len(events) // 3
    runner.feed(events[:third])
    for key in shell.live:
        shell.touch(int(key[1:]), key)
    asyncio.run(_checkpoint(shell, producer))
    assert producer.changelog == {k: bytes(v) for k, v in store.items()} and store

    runner.feed(events[third: 2 * third])  # lookups end: their entries' tombstones
    keys = list(shell.live)
    for key in keys:
        shell.touch(int(key[1:]), key)
    producer.failing = True
    with pytest.raises(Exception, match="lost"):
        asyncio.run(_checkpoint(shell, producer))
    failed = shell._unsent.copy()
    tombstones = [k for k in failed if k not in store]
    assert tombstones and all(b"\x1f" in k for k in tombstones)
    assert producer.changelog != {k: bytes(v) for k, v in store.items()}

    # a bucket goes idle (tombstones for its header and every entry) and the sends fail again: nothing else
    # changed, everything unconfirmed is sent again
    idle = next(k for k in keys if not any(t.startswith(k.encode()) for t in tombstones))
    idle_records = {k for k in store if k == idle.encode() or k.startswith(idle.encode() + b"\x1f")}
    shell.drop(int(idle[1:]), idle)
    with pytest.raises(Exception, match="lost"):
        asyncio.run(_checkpoint(shell, producer))
    assert set(failed) | idle_records <= set(shell._unsent)
    assert not idle_records & set(store)
    failed = shell._unsent.copy()

    producer.failing = False
    runner.feed(events[2 * third:])
    for key in shell.live:
        shell.touch(int(key[1:]), key)
    again = asyncio.run(_checkpoint(shell, producer))
    assert set(failed) <= {k for _p, k, _v in again}
    assert not shell._unsent
    assert producer.changelog == {k: bytes(v) for k, v in store.items()}
    for key in shell.live:  # and a successor restores from it what the shell holds
        successor = _stitch_shell(dict(producer.changelog), op)
        assert _comparable(op, successor.state(key)) == _comparable(op, shell.live[key])
    # confirmed: the next checkpoint does not send them again
    assert asyncio.run(_checkpoint(shell, producer)) == []


def test_restoring_buckets_groups_the_store_once_and_never_uses_a_stale_group():
    runner, op, shell, store, log, events = _live_run()
    runner.feed(events[: len(events) // 2])
    writes, _ = _snapshot(shell)
    _apply(shell, writes)
    keys = list(shell.live)
    assert len(keys) >= 2

    class Counting(dict):
        scans = 0

        def items(self):
            Counting.scans += 1
            return super().items()

    successor = _stitch_shell(Counting(store), op)
    for key in keys:
        assert _comparable(op, successor.state(key)) == _comparable(op, shell.live[key])
    assert Counting.scans == 1
    # a group taken before the store changed (a standby partition reading the changelog) is not used
    late = _stitch_shell(Counting(store), op)
    late.state(keys[0])  # groups the store
    key = keys[1]
    runner.feed(events[len(events) // 2: len(events) * 3 // 4])
    shell.touch(int(key[1:]), key)
    writes, _ = _snapshot(shell)
    _apply(shell, writes)
    mine = lambda k: k == key.encode() or k.startswith(key.encode() + b"\x1f")  # noqa: E731
    for k in [k for k in late.table.data if mine(k)]:  # the standby copy follows the changelog
        if k not in store:
            del late.table.data[k]
    late.table.data.update({k: v for k, v in store.items() if mine(k)})
    group = late._grouped[key]  # what the grouping found then: no longer the store's
    assert group != {k: v for k, v in late.table.data.items() if mine(k) and k != key.encode()}
    assert _comparable(op, late.state(key)) == _comparable(op, shell.live[key])


class _OutputProducer:
    """The worker's producer as route(), _write_copies() and checkpoint() use it: Faust's send() and flush()
    and the aiokafka producer's batch API. Records are delivered at the flush, as the broker answers: a batch
    or record for a topic in `failing` then fails as a send that ran out of retries does (the flush, as
    aiokafka's, raises nothing)."""

    def __init__(self, partitions: int = 4):
        self.failing: set[str] = set()
        self.refusing: set[str] = set()  # topics whose send() raises (no room in the producer in time)
        self.pending: list[tuple[str, asyncio.Future, list]] = []
        self.delivered: dict[str, list] = {}  # topic -> (key, value) records, in order
        self._message_accumulator = SimpleNamespace(_compression_type=0, _closed=True, _exception=None)
        self._metadata = SimpleNamespace(partitions_for_topic=lambda topic: set(range(partitions)))

        async def metadata(topic):
            pass

        self.client = SimpleNamespace(_wait_on_metadata=metadata)

    def _ensure_producer(self):
        return self

    def create_batch(self):
        from aiokafka.producer.message_accumulator import BatchBuilder
        return BatchBuilder(16384, 0)

    def _queue(self, topic: str, records: list) -> asyncio.Future:
        future = asyncio.get_running_loop().create_future()
        self.pending.append((topic, future, records))
        return future

    async def send_batch(self, batch, topic, *, partition):
        from aiokafka.record.default_records import DefaultRecordBatch
        return self._queue(topic, [(r.key, r.value) for r in DefaultRecordBatch(bytes(batch._build()))])

    async def send(self, topic, key, value, partition, timestamp, headers):
        if topic in self.refusing:
            from aiokafka.errors import KafkaTimeoutError
            raise KafkaTimeoutError("no room")
        return self._queue(topic, [(key, value)])

    async def flush(self):
        from aiokafka.errors import KafkaTimeoutError
        pending, self.pending = self.pending, []
        for topic, future, records in pending:
            if topic in self.failing:
                future.set_exception(KafkaTimeoutError("lost"))
            else:
                self.delivered.setdefault(topic, []).extend(records)
                future.set_result(None)
        if pending:
            await asyncio.wait([future for _, future, _ in pending])

    def changelog(self, topic: str = "cl") -> list:
        return self.delivered.get(topic, [])


class _Ack:
    def __init__(self):
        self.acked = False

    def ack(self):
        self.acked = True


def _worker_with_state(producer: _OutputProducer):
    """A worker (connecting to nothing) whose enrich stage holds one changed key and one input record to
    acknowledge at its next checkpoint; crash() recorded, not run."""
    from svctrace.streams.faust_app.app import Worker, WorkerConfig

    worker = Worker(WorkerConfig(bootstrap="127.0.0.1:9"))
    worker.app.producer = producer
    crashed = []

    async def crash(error):
        crashed.append(error)

    worker.app.crash = crash
    for stage in worker.stages:
        stage.table = SimpleNamespace(data={}, changelog_topic=SimpleNamespace(get_topic_name=lambda: "cl"))
    ack = _Ack()
    worker.enrich.snapshot = lambda: ([(0, b"node-a", b"state")], [ack])
    return worker, ack, crashed


def test_a_failed_output_send_stops_the_worker_before_its_checkpoint_writes_or_acknowledges_anything(caplog):
    """producer.flush() raises on no failed delivery. A chain batch that failed (PartitionBatches.send), or a
    flows record (a durable copy, producer.send), must not be taken as out: the checkpoint after it writes no
    state (a successor would drop the input again as applied) and acknowledges nothing, and the worker stops
    with exit status 1 (app.crash), saying why; its successor reads on from the last committed offsets."""
    from svctrace.streams.core.stitch import CHAINS_TOPIC
    from svctrace.streams.faust_app.app import FLOWS_TOPIC

    from svctrace.streams.core.enrich import ENRICHED_SCHEMA

    def chain(key):
        return (CHAINS_TOPIC, key, {"chain_id": key})

    async def delivered():  # the state is written, the input acknowledged
        producer = _OutputProducer()
        worker, ack, crashed = _worker_with_state(producer)
        await worker.route("stitch", 0, [chain("chain-1")])
        await worker.checkpoint()
        assert [k for k, _ in producer.delivered[worker.names[CHAINS_TOPIC]]] == [b"chain-1"]
        assert producer.changelog() == [(b"node-a", b"state")]
        assert ack.acked and not crashed

    async def chain_lost():  # nothing written, nothing acknowledged, the worker stops
        producer = _OutputProducer()
        worker, ack, crashed = _worker_with_state(producer)
        producer.failing.add(worker.names[CHAINS_TOPIC])
        await worker.route("stitch", 0, [chain("chain-1"), chain("chain-2")])
        with caplog.at_level("ERROR"):
            await worker.checkpoint()
        assert producer.changelog() == [] and not ack.acked
        assert len(crashed) == 1 and "lost" in str(crashed[0])
        assert "Output send failed" in caplog.text and "exit status 1" in caplog.text
        await worker.checkpoint()  # and so does any checkpoint after it (the worker is stopping)
        assert producer.changelog() == [] and not ack.acked

    async def copy_lost():  # a flows record (a durable copy of a batch handed directly): the same
        producer = _OutputProducer()
        worker, ack, crashed = _worker_with_state(producer)
        producer.failing.add(worker.names[FLOWS_TOPIC])
        await worker._write_copies([(1, "b1", {"schema": ENRICHED_SCHEMA, "version": 1, "events": []})])
        await worker.checkpoint()
        assert producer.changelog() == [] and not ack.acked and len(crashed) == 1

    for story in (delivered, chain_lost, copy_lost):
        asyncio.run(story())


def test_a_record_the_producer_refuses_to_queue_stops_the_worker_as_a_failed_delivery():
    """The records sent one by one (flows and enriched records, the durable copies, a revoked partition's handed
    batches) count as failed when producer.send() raises instead of failing its future (aiokafka: no room in
    the producer in time): the error reaches the caller, whose log-and-continue path (a dead-lettered input
    record, a failed checkpoint retried) must not let a checkpoint write state or acknowledge input after it."""
    from svctrace.streams.core.enrich import ENRICHED_SCHEMA, ENRICHED_TOPIC
    from svctrace.streams.faust_app.app import FLOWS_TOPIC

    batch = {"schema": ENRICHED_SCHEMA, "version": 1, "events": []}

    async def story(refused, send):
        producer = _OutputProducer()
        worker, ack, crashed = _worker_with_state(producer)
        producer.refusing.add(worker.names[refused])
        with pytest.raises(Exception, match="no room"):
            await send(worker)
        await worker.checkpoint()
        assert producer.changelog() == [] and not ack.acked
        assert len(crashed) == 1 and "no room" in str(crashed[0]) and worker.sends.failed == 1

    for refused, send in (
            (FLOWS_TOPIC, lambda w: w._write_copies([(1, "b1", batch)])),
            (FLOWS_TOPIC, lambda w: w._send_handed(1, [("b1", [], [])])),
            (ENRICHED_TOPIC, lambda w: w.route("enrich", 0, [(ENRICHED_TOPIC, "node-a", batch)]))):
        asyncio.run(story(refused, send))


def test_marks_and_dead_letters_are_watched_and_a_failure_stops_the_worker_at_once(caplog):
    """Progress records and dead letters count for FailedSends as any output: a mark or dead letter not
    delivered stops the worker before its checkpoint writes or acknowledges anything. The stop is asked as
    soon as the failure is known (FailedSends.on_failure), not at the next checkpoint."""
    from types import SimpleNamespace as NS

    from svctrace.schemas.catalogue import DEADLETTER
    from svctrace.streams.faust_app.app import OCCURRENCES_TOPIC

    async def marks(worker):
        worker._announce(OCCURRENCES_TOPIC, 0, 123)
        await worker._send_announcements(OCCURRENCES_TOPIC, force=True)

    async def dead_letter(worker):
        msg = NS(topic="t", partition=0, offset=7, key=b"k", value=b"not json")
        await worker._dead_letter("stitch", msg, "ValueError: not json", ValueError("not json"))

    async def story(failing, send):
        producer = _OutputProducer()
        worker, ack, crashed = _worker_with_state(producer)
        producer.failing.add(worker.names[failing])
        await send(worker)
        assert producer.pending
        await producer.flush()
        for _ in range(3):
            await asyncio.sleep(0)  # (the stop, asked from the failed future's callback, runs)
        assert len(crashed) == 1 and "lost" in str(crashed[0])
        await worker.checkpoint()
        assert producer.changelog() == [] and not ack.acked and len(crashed) == 1

    with caplog.at_level("ERROR"):
        for failing, send in ((OCCURRENCES_TOPIC, marks), (DEADLETTER, dead_letter)):
            asyncio.run(story(failing, send))
    assert "Output send failed" in caplog.text


def test_an_output_record_too_large_to_send_is_dead_lettered_and_the_worker_goes_on():
    """A chain record larger than a record batch may be is refused by the broker however often it is sent
    (a worker stopping on it, and every successor on it again): route() sends its dead letter instead, counted
    in the stage's dead letters; the other outputs are delivered and the checkpoint writes and acknowledges."""
    import orjson

    from svctrace.kafka.batches import MAX_RECORD_BATCH_BYTES
    from svctrace.schemas.catalogue import DEADLETTER
    from svctrace.streams.core.stitch import CHAINS_TOPIC

    async def story():
        producer = _OutputProducer()
        worker, ack, crashed = _worker_with_state(producer)
        big = {"chain_id": "chain-big", "pad": os.urandom(MAX_RECORD_BATCH_BYTES).hex()}
        await worker.route("stitch", 0, [(CHAINS_TOPIC, "chain-1", {"chain_id": "chain-1"}),
                                         (CHAINS_TOPIC, "chain-big", big)])
        await worker.checkpoint()
        assert [k for k, _ in producer.delivered[worker.names[CHAINS_TOPIC]]] == [b"chain-1"]
        [(key, value)] = producer.delivered[worker.names[DEADLETTER]]
        doc = orjson.loads(value)
        assert key == b"chain-big" and doc["stage"] == "stitch" and doc["topic"] == worker.names[CHAINS_TOPIC]
        assert "is larger than a record batch" in doc["reason"]
        assert worker.metrics.deadletters.labels("stitch")._value.get() == 1
        assert producer.changelog() == [(b"node-a", b"state")] and ack.acked and not crashed

    asyncio.run(story())


# -- the alerts state in parts (format 6) ------------------------------------------------------

def test_alerts_states_are_written_in_parts_and_an_older_whole_record_is_upgraded():
    """The alerts stage's shell writes a key's windows as a header and each chain as an entry; a successor
    restores the same state. A format-5 record (the whole state, chains inside) is restored whole, and its
    next checkpoint writes it in parts under the same key, every entry, no tombstone."""
    from svctrace.streams.core import Runner
    from svctrace.streams.core.stitch import OCCURRENCES_TOPIC
    from tests.test_core_checkpoint_parts import WORKER, _mixed_traffic

    cluster, events = _mixed_traffic()
    runner = Runner(cluster.index(), WORKER, step_events=128)
    runner.feed(events[: len(events) * 2 // 3])
    op = runner.graph.alerts
    states = runner.states[OCCURRENCES_TOPIC]
    keys = [k for k, st in states.items() if any(w["chains"] for w in st["w"].values())]
    assert keys

    def shell(store):
        changelog = SimpleNamespace(get_topic_name=lambda: "app-alerts-state-changelog")
        return StageShell(None, "alerts", op, SimpleNamespace(data=store, changelog_topic=changelog), 12, 12)

    def whole(st):
        return loads_state(dumps_state(op.durable(st)))

    store: dict = {}
    writer = shell(store)
    writer.live = states
    for key in keys:
        writer.touch(0, key)
    writes, _ = writer.snapshot()
    _apply(writer, writes)
    for key in keys:
        header = loads_checkpoint(store[key.encode()])
        assert header["parts"] == sum(len(w["chains"]) for w in states[key]["w"].values()) > 0
        assert all("chains" not in w for w in header["w"].values())
        assert whole(shell(dict(store)).state(key)) == whole(states[key])
    writer.touch(0, keys[0])  # nothing changed: nothing but (maybe) the partition entry
    assert all(k.startswith(b"#") for _p, k, _v in writer.snapshot()[0])

    key = keys[0]
    old = {key.encode(): _newer(dumps_checkpoint(op.durable(states[key])), 5)}  # (what a format-5 worker wrote)
    successor = shell(old)
    assert whole(successor.state(key)) == whole(states[key])
    successor.touch(0, key)
    writes, _ = successor.snapshot()
    _apply(successor, writes)
    assert format_of(old[key.encode()]) == CHECKPOINT_FORMAT
    assert len([k for _p, k, v in writes if b"\x1f" in k and v is not None]) == loads_checkpoint(old[key.encode()])["parts"]
    assert not [v for _p, _k, v in writes if v is None]
    assert whole(shell(dict(old)).state(key)) == whole(states[key])
