"""The stitch stage's checkpoints as a live worker makes them, offline: their CPU per event (issue 8).

    python -m bench.core_checkpoint [--rate EV_PER_S] [--seconds S] [--warmup S] [--rounds N] [--restore]

bench.core_live's drive (bench.worker_steady's traffic through the operator graph as a live worker advances
it, no Kafka, no clock) with the worker's own stitch StageShell around the stitch states: every 3 s of event
time its checkpoint, as Worker.checkpoint makes it: the cut (StageShell.snapshot), the entries serialized in
slices (StageShell.finish, a slice per syscalls record of 1000 events, the stage advancing in between: the copy-on-write
saves land in the advance, as live), the changelog batches (StageShell.write: real aiokafka record batches,
zstd at the worker's default level, as its producer compresses them) and confirm. After --warmup seconds prints per event
published in the span: the stitch advance (with the saves it makes), the cut, the slices, the write, the
compression, all checkpoint rows together; per checkpoint the CPU and the bytes written; digests of the
chains and occurrences emitted and of the changelog as compacted (a change of the records' bytes shows
there; an optimization that keeps them leaves both unchanged). --restore then restores every stitch key
from the compacted changelog into a successor shell and compares it with the live state (exit status 1 if
one differs).

Beside bench.worker_steady (the figure that counts, noisy on a shared machine), this isolates the
checkpoint's own cost, steadier, and countable under callgrind.
"""
from __future__ import annotations

import gc
import hashlib
import statistics
import sys
import time
from collections import Counter
from pathlib import Path
from types import SimpleNamespace

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import orjson  # noqa: E402
from aiokafka.record.default_records import DefaultRecordBatch  # noqa: E402
from mode.utils.collections import FastUserDict  # noqa: E402

from bench.core_live import CHECKPOINT_NS, TICK_NS, AgentBatches, enrich_tick, traffic_options  # noqa: E402
from svctrace.memory import huge_page_arenas  # noqa: E402
from svctrace.kafka.clients import keep_freed_memory, reuse_zstd_contexts, set_zstd_level  # noqa: E402
from svctrace.streams.core.graph import Graph, dumps_state, loads_state  # noqa: E402
from svctrace.streams.core.keys import bucket_partition  # noqa: E402
from svctrace.streams.faust_app import command as worker_command  # noqa: E402
from svctrace.streams.faust_app.app import StageShell  # noqa: E402
from svctrace.streams.metadata.index import ClusterIndex  # noqa: E402
from tests.scenario import S, T0, steady_traffic  # noqa: E402

CODEC_ZSTD = 0x04  # (aiokafka's codec number: the worker's producer compresses with zstd)
PART_SEP = b"\x1f"  # (a changelog key's: <stitch key> PART_SEP <c|l|L|s|S><entry key>)
RECORD_EVENTS = 1000  # events per syscalls record (an agent's batch)
ROWS = ("advance", "cut", "slices", "write", "compress")


class _Store(FastUserDict):
    """The worker's table store as Faust's memory store is (faust.stores.memory.Store, without its service):
    its records in a dict behind FastUserDict's methods, and a key -> partition map."""

    def __init__(self):
        self.data: dict = {}
        self._key_partition: dict = {}


class _Producer:
    """StageShell.write's producer: each batch built (compressed) at once, as the worker's sender builds it;
    kept to read back as the changelog."""

    def __init__(self, clock, times: dict):
        self._message_accumulator = SimpleNamespace(_compression_type=CODEC_ZSTD)
        self.built: list[bytes] = []
        self.clock, self.times, self.measuring = clock, times, False

    async def send_batch(self, batch, topic, *, partition):
        c = self.clock()
        built = bytes(batch._build())
        if self.measuring:
            self.times["compress"] += self.clock() - c
        self.built.append(built)
        return _DONE


class _Done:
    """A send's future, done (confirmed below as StageShell.confirm confirms it)."""

    def add_done_callback(self, fn):
        pass


_DONE = _Done()


def _step(coro) -> bool:
    """One step of a coroutine that only yields to the loop (asyncio.sleep(0)): True once it returned."""
    try:
        coro.send(None)
    except StopIteration:
        return True
    return False


def drive(records, events, warmup_ns: int, restore: bool = False, interval_ns: int = CHECKPOINT_NS) -> dict:
    settings = worker_command.event_time_settings(0.4, 0.25, enriched=False)
    g = Graph(ClusterIndex.from_records(records), settings)
    enrich, stitch = g.enrich, g.stitch
    lateness = settings.enrich_lateness_ns
    clock = time.thread_time_ns
    times = dict.fromkeys(ROWS, 0)
    producer = _Producer(clock, times)
    worker = SimpleNamespace(metrics=None, app=SimpleNamespace(producer=SimpleNamespace(_ensure_producer=lambda: producer)))
    store = _Store()
    table = SimpleNamespace(data=store, changelog_topic=SimpleNamespace(get_topic_name=lambda: "stitch-changelog"))
    shell = StageShell(worker, "stitch", stitch, table, 12, 1)
    enrich_states: dict = {}
    stitch_states = shell.live
    digest = hashlib.sha1()
    measured = 0
    checkpoints: list[tuple[int, int]] = []  # (CPU ns, bytes) of each checkpoint ending in the span
    present: set = set()  # the entries' changelog keys the store holds
    entries: Counter = Counter()  # records written in the span by kind ("c", "l", "L", "s", "S", "header", "tombstone"),
    # and "<kind> again": an entry written over one the store held (changed, or its identity reused)
    entry_bytes: Counter = Counter()
    agents = AgentBatches(events)
    warm_end = events[0].ts + warmup_ns
    t = events[0].ts + TICK_NS
    next_checkpoint = events[0].ts + interval_ns
    finishing = None  # (finish coroutine, writes, acks, CPU so far)
    while not agents.done or finishing:
        arrived = agents.until(t)
        in_span = t > warm_end
        producer.measuring = in_span
        if in_span:
            measured += sum(len(batch) for _node, batch in arrived)
        flows, watermark = enrich_tick(enrich, enrich_states, arrived, lateness)
        for key, value in flows:
            st = stitch_states.get(key)
            if st is None:
                st = shell.state(key)
            stitch.process(st, key, value)
        for key in list(stitch_states):
            st = stitch_states[key]
            c = clock()
            outs = stitch.advance(st, key, watermark)
            if in_span:
                times["advance"] += clock() - c
            shell.touch(bucket_partition(key), key)
            for _topic, k, v in outs:
                digest.update(k.encode())
                digest.update(orjson.dumps(v))
            if stitch.is_idle(st):
                shell.drop(bucket_partition(key), key)
        if finishing is not None:  # a slice per syscalls record of the tick (live: one between records)
            coro, writes, acks, cpu = finishing
            c = clock()
            for _ in range(max(1, sum(len(b) for _n, b in arrived) // RECORD_EVENTS)):
                if done := _step(coro):
                    break
            spent = clock() - c
            cpu += spent
            if in_span:
                times["slices"] += spent
            if done:
                c = clock()
                w = shell.write(writes)
                while not _step(w):
                    pass
                (_futures, keys), shell._sent = shell._sent, ([], [])  # StageShell.confirm, all delivered
                for k in keys:
                    shell._unsent.pop(k, None)
                spent = clock() - c
                if in_span:
                    times["write"] += spent - 0  # (compression counted apart, inside it)
                    checkpoints.append((cpu + spent, sum(len(v) for _p, _k, v in writes if v)))
                for _p, k, v in writes:  # what the records are: entries by kind, rewrites, tombstones
                    i = k.find(PART_SEP)
                    if i < 0:
                        kind = "header"
                    elif v is None:
                        present.discard(k)
                        kind = "tombstone"
                    else:
                        kind = chr(k[i + 1])
                        if k in present and in_span:
                            entries[kind + " again"] += 1
                        present.add(k)
                    if in_span:
                        entries[kind] += 1
                        entry_bytes[kind] += len(v) if v else 0
                finishing = None
            else:
                finishing = (coro, writes, acks, cpu)
        if t >= next_checkpoint and finishing is None and agents.more:
            next_checkpoint += interval_ns
            c = clock()
            writes, acks = shell.snapshot()
            spent = clock() - c
            if in_span:
                times["cut"] += spent
            finishing = (shell.finish(writes, acks), writes, acks, spent)
        t += TICK_NS
    times["write"] -= times["compress"]
    if restore:  # a last checkpoint, of the state as it is now
        writes, acks = shell.snapshot()
        coro = shell.finish(writes, acks)
        while not _step(coro):
            pass
        w = shell.write(writes)
        while not _step(w):
            pass
    changelog: dict = {}
    for built in producer.built:
        for record in DefaultRecordBatch(built):
            if record.value is None:
                changelog.pop(bytes(record.key), None)
            else:
                changelog[bytes(record.key)] = bytes(record.value)
    cdigest = hashlib.sha1()
    for k in sorted(changelog):
        cdigest.update(k)
        cdigest.update(changelog[k])
    differ = None
    if restore:
        stored = _Store()
        stored.data.update(changelog)
        successor = StageShell(worker, "stitch", stitch, SimpleNamespace(data=stored, changelog_topic=table.changelog_topic),
                               12, 1)
        differ = [key for key, st in stitch_states.items() if _comparable(stitch, successor.state(key)) != _comparable(stitch, st)]
    return dict(times=times, measured=measured, checkpoints=checkpoints, digest=digest.hexdigest()[:16],
                changelog=cdigest.hexdigest()[:16], changelog_bytes=sum(len(k) + len(v) for k, v in changelog.items()),
                differ=differ, store_keys=(len(store.data), len(store._key_partition)), entries=entries,
                entry_bytes=entry_bytes)


def _comparable(op, st) -> dict:
    """A state's durable form as JSON gives it back, its timer queue as its live entries (tests do the same)."""
    d = loads_state(dumps_state(op.durable(st)))
    d["tq"] = sorted([c["qd"], k] for k, c in d["conns"].items())
    held = {lk[1] for lookups in d["lk"].values() for lk in lookups}  # (a queue's entry of a lookup gone: its key
    for name in ("lq", "lc"):  # is not restored, nor read: see stitch._queue_of)
        d[name] = [[e, ls, k if ls in held else None] for e, ls, k in d[name]]
    # (marks; what the changelog holds of DNS server records and lookup keys: their groups)
    for k in ("_cc", "_cl", "_cs", "dsg", "dsn", "dso", "lgn", "lgx"):
        d.pop(k, None)
    return d


def main() -> int:
    print(f"huge page arenas: {huge_page_arenas()}", flush=True)  # (as the worker; SVCTRACE_HUGE_PAGES=0: off)
    ap = traffic_options(__doc__, rounds=1, toggle=False)
    ap.add_argument("--interval", type=float, default=CHECKPOINT_NS / S, help="seconds of event time between checkpoints")
    ap.add_argument("--restore", action="store_true", help="restore every key from the changelog and compare")
    args = ap.parse_args()
    reuse_zstd_contexts()  # (as the worker does at import)
    set_zstd_level(worker_command.WORKER_ZSTD_LEVEL)  # (and its command, at its default --zstd-level)
    keep_freed_memory()  # (and its malloc settings: the store's buffer of a checkpoint's entries, ~17 MB at 100k,
    # comes from freed memory, not from a new mapping faulted in page by page)
    cluster, events, requests = steady_traffic(args.rate, args.seconds, T0)
    records = cluster.records()
    print(f"core_checkpoint: {args.rate:,.0f} events/s of the mixed traffic ({requests:,} requests, {len(events):,} "
          f"events over {args.seconds:g} s), checkpoints every {args.interval:g} s, the last "
          f"{args.seconds - args.warmup:g} s measured", flush=True)
    rows: dict = {r: [] for r in (*ROWS, "checkpoint")}
    status = 0
    gc.collect()
    gc.freeze()
    gc.disable()
    try:
        for _ in range(args.rounds):
            r = drive(records, events, int(args.warmup * S), args.restore, int(args.interval * S))
            m = r["measured"]
            per = {k: v / m / 1e3 for k, v in r["times"].items()}
            per["checkpoint"] = sum(v for k, v in per.items() if k != "advance")
            for k, v in per.items():
                rows[k].append(v)
            ck = r["checkpoints"]
            print("  round: us/event " + ", ".join(f"{k} {v:.3f}" for k, v in per.items()) +
                  f"; {len(ck)} checkpoints, " + ", ".join(f"{c / 1e6:.0f} ms/{b / 1e6:.1f} MB" for c, b in ck) +
                  f"; store {r['store_keys'][0]:,} records, {r['store_keys'][1]:,} keys mapped; outputs {r['digest']}, changelog {r['changelog']} ({r['changelog_bytes'] / 1e6:.1f} MB)" +
                  ("" if r["differ"] is None else f"; restored keys differing: {r['differ'] or 'none'}"), flush=True)
            n = max(1, len(ck))
            print("    per checkpoint: " + ", ".join(
                f"{name} {r['entries'][kind] / n:,.0f} ({r['entry_bytes'][kind] / n / 1e6:.2f} MB"
                + (f", {r['entries'][kind + ' again'] / n:,.0f} over one stored)" if kind in "clLsS" else ")")
                for kind, name in (("c", "connections"), ("l", "lookup keys"), ("L", "lookup key groups"),
                                   ("s", "DNS server records"), ("S", "DNS server record groups"), ("header", "headers"),
                                   ("tombstone", "tombstones"))), flush=True)
            if r["differ"]:
                status = 1
            gc.collect()
    finally:
        gc.enable()
        gc.unfreeze()
    print("median us/event: " + ", ".join(f"{k} {statistics.median(v):.3f}" for k, v in rows.items()))
    return status


if __name__ == "__main__":
    sys.exit(main())
