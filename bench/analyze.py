"""Benchmark of `svctrace analyze`: what the command adds on top of the reader and the core.

    python -m bench.analyze [--repeats N]

Builds a capture of the seed example's scenario repeated N times (client ports shifted so
every repeat is a new set of connections: each repeat gives the chains of one scenario run),
then measures side by side, in CPU seconds (the machine may be shared):

1. the scap reader alone (iterate the SyscallEvents);
2. reader + in-process runner (the core's chains and alerts);
3. `analyze()`: 2 plus the connection table, embedded-state polling and the evidence window;
4. the whole command (3 plus rendering every chain and alert as text), and with --json
   (every record checked against its schema) and --summary (counts only);
and, on their own, the text output of 3's result (what 4 adds to 3), plain and in colour
(what a terminal gets).
Each stage runs `--rounds` times, interleaved; its smallest CPU time is printed (a teammate's
build steals cycles from a run, never gives them).
"""
from __future__ import annotations

import argparse
import gc
import importlib.util
import io
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from svctrace.agents.scap import ScapWriter, open_capture  # noqa: E402
from svctrace.analyze import configure, pipeline  # noqa: E402
from svctrace.analyze.command import Filter, execute, output  # noqa: E402
from svctrace.streams.core import run  # noqa: E402
from svctrace.streams.metadata.index import ClusterIndex  # noqa: E402
from svctrace.streams.metadata.sources import load_file  # noqa: E402

SEED = ROOT / "examples" / "seed"
PERIOD_NS = 5_000_000_000  # one repeat of the scenario every 5 s of event time
PORT_STEP = 64
PID_STEP = 10_000


def seed_generator():
    spec = importlib.util.spec_from_file_location("make_example", SEED / "make_example.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


def shifted(port: int | None, r: int) -> int | None:
    """Ephemeral ports move with the repeat, service ports stay. The scenario spans ~131 s of
    event time (fault 3's connect retries), so ~27 repeats run at once: each repeat moves by more
    than the scenario's range of client ports (~52), or their connections would collide."""
    return port if port is None or port < 32768 else 32768 + (port - 32768 + r * PORT_STEP) % 28000


def build(path: Path, repeats: int) -> int:
    events = seed_generator().scenario_events()
    # A repeat spans ~131 s of event time, so repeats overlap: written in event-time order, as a
    # capture is (repeat after repeat, event time would jump back and the core drop them as late),
    # each repeat by its own processes (pids, tids), or their fds would collide.
    every = sorted((e.with_(ts=e.ts + r * PERIOD_NS, local_port=shifted(e.local_port, r),
                            remote_port=shifted(e.remote_port, r), addr_port=shifted(e.addr_port, r),
                            pid=e.pid + r * PID_STEP, tid=e.tid + r * PID_STEP)
                    for r in range(repeats) for e in events), key=lambda e: e.ts)
    with ScapWriter(path, hostname="node-a") as w:
        for e in every:
            w.write_event(e)
    return len(every)


def cpu(fn) -> tuple[float, object]:
    gc.collect()
    start = time.process_time()
    out = fn()
    return time.process_time() - start, out


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=400)
    parser.add_argument("--rounds", type=int, default=3, help="runs of each stage; the fastest counts (default 3)")
    args = parser.parse_args()
    cluster = str(SEED / "cluster.json")
    index = ClusterIndex.from_records(load_file(cluster))
    # the command's own parser, so the options are the command's defaults (no hand-made copy to drift)
    parser_of_analyze = argparse.ArgumentParser()
    configure(parser_of_analyze)
    ns = parser_of_analyze.parse_args(["-", "--cluster", cluster])
    ns.color = ns.debug = False
    with tempfile.TemporaryDirectory() as tmp:
        capture = Path(tmp) / "seed-x.scap"
        n = build(capture, args.repeats)
        size = capture.stat().st_size
        print(f"capture: {args.repeats} repeats of the seed scenario, {n} socket events, {size / 2**20:.1f} MiB")
        ns.capture = str(capture)
        sink = io.StringIO()

        def command(**options):
            args = argparse.Namespace(**dict(vars(ns), **options))

            def whole():
                out = sink if not options else io.StringIO()
                out.seek(0)
                out.truncate()
                return execute(args, out, io.StringIO())
            return whole

        stages = {
            "reader only": lambda: sum(1 for _ in open_capture(capture)),
            "reader + core runner": lambda: run(open_capture(capture), index),
            "analyze() pipeline": lambda: pipeline.analyze(str(capture), cluster=cluster),
            "whole command, text out": command(),
            "whole command, --json": command(json=True),
            "whole command, --summary": command(summary=True),
        }
        best: dict[str, float] = {}
        outs: dict[str, object] = {}
        text_only = colour_only = float("inf")
        colour = argparse.Namespace(**dict(vars(ns), color=True))
        for _ in range(max(args.rounds, 1)):
            for name, fn in stages.items():
                t, outs[name] = cpu(fn)
                best[name] = min(t, best.get(name, t))
            # a fresh result each time: rendering fills the result's lookup caches
            result = outs["analyze() pipeline"]
            text_only = min(text_only, cpu(lambda: output(ns, result, Filter(None, None), io.StringIO()))[0])
            result = pipeline.analyze(str(capture), cluster=cluster)
            colour_only = min(colour_only, cpu(lambda: output(colour, result, Filter(None, None), io.StringIO()))[0])

    count, res, code = outs["reader only"], outs["reader + core runner"], outs["whole command, text out"]
    per_repeat = len(run(seed_generator().scenario_events(), index).chains)
    assert count == n and len(res.chains) == len(result.chains) == per_repeat * args.repeats, \
        f"unexpected chain count: {len(res.chains)}, {len(result.chains)} for {per_repeat} x {args.repeats}"
    lines = len(sink.getvalue().splitlines())
    print(f"chains {len(result.chains)}, alerts {len(result.alerts)} (deduplicated), exit status {code}, "
          f"{lines} lines of output; fastest of {max(args.rounds, 1)} rounds")
    t_core = best["reader + core runner"]
    print(f"{'stage':<26}{'CPU s':>8}{'events/s':>12}{'vs core':>9}")
    for name, t in best.items():
        print(f"{name:<26}{t:>8.2f}{n / t:>12,.0f}{t / t_core:>9.2f}")
    for name, t in (("text output alone", text_only), ("same, colour (terminal)", colour_only)):
        print(f"{name:<26}{t:>8.2f}{'':>12}{t / t_core:>9.2f}   {t / lines * 1e6:.1f} us per line")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
