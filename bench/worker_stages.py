"""`svctrace worker` with CPU clocks on its stages (bench.pipeline --stages).

    python -m bench.worker_stages REPORT.json worker --bootstrap ...

Runs the svctrace CLI with named functions of the worker, the core, Faust and aiokafka wrapped in
per-thread CPU clocks (time.thread_time_ns). A stage's figure is its SELF time: what its callees
that have a clock of their own spent is theirs. Coroutines are clocked per resumption (a step from
one suspension to the next), so time spent in other tasks while one waits is never its own (cProfile
counts every resumption as a call). START_SIGNAL starts a measured span (clocks and thread CPU from
zero), REPORT_SIGNAL writes REPORT.json: per stage [self CPU ns, calls], and
per thread its CPU ns over the span (what no clock covers: Faust, asyncio, aiokafka elsewhere),
and the bytes its sockets wrote and read (the broker's traffic, the metrics endpoint's).
The clocks cost a syscall each (~0.3 us): wrapped functions are per record or coarser, none per event.
"""
from __future__ import annotations

import asyncio
import functools
import gc
import importlib
import inspect
import json
import os
import signal
import sys
import threading
from collections.abc import Callable
from pathlib import Path
import time
from time import thread_time_ns

START_SIGNAL = signal.SIGRTMIN + 1  # Faust's worker takes SIGUSR1/SIGUSR2 for itself
REPORT_SIGNAL = signal.SIGRTMIN + 2
COMPRESSION_ENV = "SVCTRACE_BENCH_COMPRESSION"  # zstd, lz4, snappy, gzip or none
PROFILE_ENV = "SVCTRACE_BENCH_PROFILE"  # a file: the main thread under cProfile over the measured span only
STATS: dict[str, list[int]] = {}
_local = threading.local()


def _stack() -> list[int]:
    stack = getattr(_local, "stack", None)
    if stack is None:
        stack = _local.stack = []
        thread = threading.current_thread()
        _local.suffix = "" if thread is threading.main_thread() else f" [{thread.name}]"
    return stack


def _account(label: str, total: int, children: int, stack: list[int], calls: int = 1) -> None:
    label += _local.suffix  # a stage clocked in another thread than the main one is its own row
    s = STATS.get(label)
    if s is None:
        s = STATS[label] = [0, 0]
    s[0] += total - children
    s[1] += calls
    if stack:
        stack[-1] += total


def clocked(label: str, fn):
    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        stack = _stack()
        stack.append(0)
        t0 = thread_time_ns()
        try:
            return fn(*args, **kwargs)
        finally:
            total = thread_time_ns() - t0
            _account(label, total, stack.pop(), stack)
    return wrapper


class _TimedAwait:
    """Drives a coroutine, clocking each of its steps as the label's."""

    __slots__ = ("label", "coro")

    def __init__(self, label: str, coro):
        self.label, self.coro = label, coro

    def __await__(self):
        coro, label = self.coro, self.label
        value, error, first = None, None, True
        while True:
            stack = _stack()
            stack.append(0)
            t0 = thread_time_ns()
            try:
                yielded = coro.throw(error) if error is not None else coro.send(value)
            except StopIteration as stop:
                _account(label, thread_time_ns() - t0, stack.pop(), stack, calls=int(first))
                return stop.value
            except BaseException:
                _account(label, thread_time_ns() - t0, stack.pop(), stack, calls=int(first))
                raise
            _account(label, thread_time_ns() - t0, stack.pop(), stack, calls=int(first))
            first = False
            try:
                value, error = (yield yielded), None
            except BaseException as e:  # noqa: BLE001 - thrown into the coroutine, as await would
                value, error = None, e


def clocked_async(label: str, fn):
    @functools.wraps(fn)
    async def wrapper(*args, **kwargs):  # a coroutine (create_task takes nothing else)
        return await _TimedAwait(label, fn(*args, **kwargs))
    return wrapper


# (module, attribute path, label, async?): one table, read top to bottom.
CLOCKS = [
    # the worker's shell (self time: bookkeeping around the calls clocked below)
    ("svctrace.streams.faust_app.app", "Worker._enrich_one", "shell: enrich record", True),
    ("svctrace.streams.faust_app.app", "Worker._stitch_one", "shell: stitch record", True),
    ("svctrace.streams.faust_app.app", "Worker._alerts_one", "shell: alerts record", True),
    ("svctrace.streams.faust_app.app", "Worker._guard", "shell: guard", True),
    ("svctrace.streams.faust_app.app", "Worker._advance_enrich", "shell: advance enrich", True),
    ("svctrace.streams.faust_app.app", "Worker._progress", "shell: progress in", True),
    ("svctrace.streams.faust_app.app", "Worker._send_announcements", "shell: progress out", True),
    ("svctrace.streams.faust_app.app", "Worker._tick", "shell: tick", True),
    ("svctrace.streams.faust_app.app", "Worker._idle_sources", "shell: idle sources", True),
    ("svctrace.streams.faust_app.app", "Worker._caught_up", "shell: caught up?", False),
    ("svctrace.streams.faust_app.app", "Worker._fetch_answer", "shell: last fetch answer", False),
    ("svctrace.streams.faust_app.app", "Worker._advance_idle", "shell: advance idle", True),
    ("svctrace.streams.faust_app.app", "Worker.route", "shell: route outputs", True),
    ("svctrace.streams.faust_app.app", "Worker.checkpoint", "checkpoint: shell", True),
    ("svctrace.streams.faust_app.app", "StageShell.advance_keys", "shell: advance keys", True),
    ("svctrace.streams.faust_app.app", "StageShell.flush_keys", "shell: flush keys", True),
    ("svctrace.streams.faust_app.app", "StageShell.snapshot", "checkpoint: snapshot", False),
    ("svctrace.streams.faust_app.app", "Worker._copies", "checkpoint: copies", False),
    ("svctrace.streams.faust_app.app", "Worker._write_copies", "checkpoint: write copies", True),
    ("svctrace.streams.faust_app.app", "Worker._durable_marks", "checkpoint: durable marks", True),
    ("faust.events", "Event.ack", "faust: ack", False),
    ("svctrace.streams.faust_app.app", "StageShell.write", "checkpoint: write", True),
    ("svctrace.streams.faust_app.app", "dumps_checkpoint", "checkpoint: dumps_state", False),
    ("svctrace.streams.faust_app.app", "decode_syscall_batch", "codec: decode syscall batch", False),
    ("svctrace.streams.faust_app.app", "encode_flows_batch", "codec: encode flows", False),
    ("svctrace.streams.faust_app.app", "encode_enriched_batch", "codec: encode enriched", False),
    ("svctrace.streams.faust_app.app", "read_flows_record", "codec: read flows record", False),
    ("svctrace.streams.faust_app.app", "encode_record", "codec: JSON chains/alerts/occ", False),
    ("svctrace.streams.faust_app.app", "dumps", "codec: JSON chains/alerts/occ", False),  # (dead letters; older workers)
    ("svctrace.streams.faust_app.app", "decode_progress", "shell: progress decode", False),
    # the core
    ("svctrace.streams.core.enrich", "Enricher.process", "core: enrich process", False),
    ("svctrace.streams.core.enrich", "Enricher.advance", "core: enrich advance", False),
    ("svctrace.streams.core.enrich", "Enricher.flush", "core: enrich flush", False),
    ("svctrace.streams.core.stitch", "Stitcher.process", "core: stitch process", False),
    ("svctrace.streams.core.stitch", "Stitcher.advance", "core: stitch advance", False),
    ("svctrace.streams.core.stitch", "Stitcher.flush", "core: stitch flush", False),
    ("svctrace.streams.core.alerts", "Alerter.process", "core: alerts", False),
    ("svctrace.streams.core.alerts", "Alerter.advance", "core: alerts", False),
    # Faust
    ("faust.transport.drivers.aiokafka", "Producer.send", "faust: producer send", True),
    ("faust.transport.drivers.aiokafka", "Consumer._to_message", "faust: record -> message", False),
    # aiokafka
    ("aiokafka.producer.producer", "AIOKafkaProducer.send", "aiokafka: producer send", True),
    ("aiokafka.producer.producer", "AIOKafkaProducer._partition", "aiokafka: partitioner", False),
    ("aiokafka.producer.producer", "AIOKafkaProducer._serialize", "aiokafka: serialize", False),
    ("aiokafka.producer.message_accumulator", "MessageAccumulator.add_message", "aiokafka: add message", True),
    ("aiokafka.producer.message_accumulator", "MessageBatch.append", "aiokafka: append record", False),
    ("aiokafka.producer.message_accumulator", "MessageBatch.done", "aiokafka: batch done", False),
    ("aiokafka.producer.message_accumulator", "BatchBuilder.close", "aiokafka: close batch", False),
    ("aiokafka.producer.message_accumulator", "MessageAccumulator.drain_by_nodes", "aiokafka: drain", False),
    ("aiokafka.producer.sender", "Sender._send_produce_req", "aiokafka: produce request", True),
    ("aiokafka.record._crecords.default_records", "zstd_encode", "codec: compress", False),
    ("aiokafka.record._crecords.default_records", "snappy_encode", "codec: compress", False),
    ("aiokafka.record._crecords.default_records", "lz4_encode", "codec: compress", False),
    ("aiokafka.record._crecords.default_records", "gzip_encode", "codec: compress", False),
    ("aiokafka.record._crecords.default_records", "zstd_decode", "codec: decompress", False),
    ("aiokafka.record._crecords.default_records", "snappy_decode", "codec: decompress", False),
    ("aiokafka.record._crecords.default_records", "lz4_decode", "codec: decompress", False),
    ("aiokafka.record._crecords.default_records", "gzip_decode", "codec: decompress", False),
    ("aiokafka.consumer.fetcher", "FetchResult.getall", "aiokafka: unpack fetched records", False),
    ("asyncio.selector_events", "_SelectorSocketTransport.write", "socket: write", False),
    ("asyncio.selector_events", "_SelectorSocketTransport._read_ready__data_received", "socket: read", False),
    ("aiokafka.consumer.fetcher", "Fetcher._proc_fetch_request", "aiokafka: fetch response", True),
]


BYTES = {"written": 0, "read": 0}
COLLECTED = [0]
STALL_NS = 20_000_000  # a loop callback at least this long (wall) is listed in the report's "stalls"
STALLS: dict = {"max_wall": 0, "max_cpu": 0, "callbacks": 0, "list": []}


def _callback_label(handle) -> str:
    cb = handle._callback
    owner = getattr(cb, "__self__", None)
    if isinstance(owner, asyncio.Task):  # a task's step: its coroutine (and where it is awaiting)
        coro = owner.get_coro()
        frame = getattr(coro, "cr_frame", None)
        while frame is not None and getattr(coro, "cr_await", None) is not None:
            coro = coro.cr_await
            if getattr(coro, "cr_frame", None) is None:
                break
            frame = coro.cr_frame
        return getattr(owner.get_coro(), "__qualname__", repr(owner)) + (
            f" @ {frame.f_code.co_qualname}:{frame.f_lineno}" if frame is not None else "")
    return getattr(cb, "__qualname__", repr(cb))


def _clock_loop() -> Callable[[], None]:
    """Every event-loop callback's wall and CPU time: the longest ones are the loop's stalls (every
    record, mark and timer waits behind them). Those of at least STALL_NS are listed with when they
    started (time.time) and what ran."""
    handle_run = asyncio.events.Handle._run
    wall, cpu, now = time.perf_counter_ns, thread_time_ns, time.time

    def _run(self):
        w0, c0 = wall(), cpu()
        try:
            return handle_run(self)
        finally:
            w, c = wall() - w0, cpu() - c0
            s = STALLS
            s["callbacks"] += 1
            if w > s["max_wall"]:
                s["max_wall"] = w
            if c > s["max_cpu"]:
                s["max_cpu"] = c
            if w >= STALL_NS:
                s["list"].append([now() - w / 1e9, w, c, _callback_label(self)])

    asyncio.events.Handle._run = _run
    return lambda: setattr(asyncio.events.Handle, "_run", handle_run)


def _count_bytes(direction: str, fn):
    @functools.wraps(fn)
    def wrapper(self, data, *args):
        BYTES[direction] += len(data)
        return fn(self, data, *args)
    return wrapper


def _clock_gc(phase: str, info: dict) -> None:
    """The cycle collector's passes as their own stage (not the self time of the stage they interrupt)."""
    if phase == "start":
        _local.gc_t0 = thread_time_ns()
        return
    t0 = getattr(_local, "gc_t0", None)
    if t0 is not None:
        _local.gc_t0 = None
        _account(f"gc: generation {info.get('generation')}", thread_time_ns() - t0, 0, _stack())
        COLLECTED[0] += info.get("collected", 0)  # cyclic garbage found: what only the collector frees


def install(labels: str = "") -> Callable[[], None]:
    """Clock every function of CLOCKS whose label starts with `labels` (all by default); returns
    what undoes it. The cycle collector's passes are clocked too, and the whole worker counts the bytes
    its sockets move."""
    undo: list[tuple[object, str, object]] = []
    if not labels:
        import asyncio.selector_events
        import asyncio.streams

        transport = asyncio.selector_events._SelectorSocketTransport
        transport.write = _count_bytes("written", transport.write)
        asyncio.streams.StreamReader.feed_data = _count_bytes("read", asyncio.streams.StreamReader.feed_data)
    gc.callbacks.append(_clock_gc)
    for module_name, path, label, is_async in CLOCKS:
        if not label.startswith(labels):
            continue
        module = importlib.import_module(module_name)
        *owners, name = path.split(".")
        owner = module
        try:
            for part in owners:
                owner = getattr(owner, part)
            fn = getattr(owner, name)
        except AttributeError:  # another version of the worker (an A/B run): say so, clock the rest
            print(f"bench.worker_stages: no {module_name}.{path}, not clocked", file=sys.stderr)
            continue
        original = inspect.getattr_static(owner, name)
        wrapped = (clocked_async if is_async else clocked)(label, fn)
        if isinstance(original, staticmethod):
            wrapped = staticmethod(wrapped)
        setattr(owner, name, wrapped)
        undo.append((owner, name, original))

    def uninstall() -> None:
        gc.callbacks.remove(_clock_gc)
        for owner, name, original in reversed(undo):
            setattr(owner, name, original)
    return uninstall


def _thread_cpu_ns() -> dict[str, int]:
    names = {t.native_id: t.name for t in threading.enumerate()}
    ticks = os.sysconf("SC_CLK_TCK")
    out: dict[str, int] = {}
    for task in Path("/proc/self/task").iterdir():
        try:
            fields = (task / "stat").read_text().rsplit(")", 1)[1].split()
        except OSError:  # the thread ended
            continue
        tid = int(task.name)
        name = "main" if tid == os.getpid() else names.get(tid, f"thread-{tid}")
        out[name] = out.get(name, 0) + (int(fields[11]) + int(fields[12])) * 1_000_000_000 // ticks
    return out


def main(argv: list[str]) -> int:
    report = Path(argv[0])
    install()
    _clock_loop()
    codec = os.environ.get(COMPRESSION_ENV)
    if codec:  # the worker producer's codec, to compare (the svctrace.flows topic's consumers take any)
        from svctrace.streams.faust_app import app

        app.COMPRESSION = None if codec == "none" else codec
    start: dict[str, int] = {}
    profile_path = os.environ.get(PROFILE_ENV)
    profiler = None
    if profile_path:
        import cProfile

        profiler = cProfile.Profile(thread_time_ns, 1e-9)  # CPU time (the wall clock counts the waits too)

    def on_start(signum, frame):
        STATS.clear()
        BYTES.update(written=0, read=0)
        COLLECTED[0] = 0
        STALLS.update(max_wall=0, max_cpu=0, callbacks=0, list=[])
        start.clear()
        start.update(_thread_cpu_ns())
        if profiler is not None:
            profiler.enable()

    def on_report(signum, frame):
        if profiler is not None:
            profiler.disable()
            profiler.dump_stats(profile_path)
        threads = {name: ns - start.get(name, 0) for name, ns in _thread_cpu_ns().items()}
        # what a pass of each generation would walk now (a full pass walks generation 2 and everything
        # younger; frozen objects are walked by none)
        heap = {"tracked": [len(gc.get_objects(g)) for g in range(3)], "frozen": gc.get_freeze_count(),
                "threshold": gc.get_threshold(), "collected": COLLECTED[0]}
        tmp = report.with_suffix(".tmp")
        tmp.write_text(json.dumps({"stages": STATS, "threads": threads, "bytes": BYTES, "heap": heap,
                                   "stalls": STALLS}))
        tmp.replace(report)

    signal.signal(START_SIGNAL, on_start)
    signal.signal(REPORT_SIGNAL, on_report)
    from svctrace.cli import main as svctrace_main

    return svctrace_main(argv[1:])


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
