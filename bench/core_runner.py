"""Benchmark of the sans-IO core through the in-process runner.

    python -m bench.core_runner [--requests N] [--open-chains N]

1. Throughput (events/s) of the whole graph (enrich -> stitch -> alerts) on
   scenario traffic: DNS lookup + request per connection in the three
   translation modes, plus keep-alive connections; in capture order and in
   shuffled arrival (within the lateness) with 10% duplicates, side by side;
   beside them, on the same events: one dict per event, a trivial loop, and the
   scap reader alone (the events written to a .scap and read back).
2. Memory per open chain: N connections connected, request sent, not yet
   answered or closed, applied into the stitch state; traced Python memory of
   the runner's state / N (and the state's serialized size).
Targets (issue 6): >= 100k events/s; <= 200 MB at 10k open chains.
"""
from __future__ import annotations

import argparse
import gc
import hashlib
from operator import attrgetter
import os
import random
import sys
import tempfile
import time
import tracemalloc
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from svctrace.memory import huge_page_arenas  # noqa: E402
from svctrace.agents.scap import ScapWriter, open_capture  # noqa: E402
from svctrace.schemas.models import SyscallEvent, dumps  # noqa: E402
from svctrace.streams.core import Runner, Settings, dumps_state, run  # noqa: E402
from tests.scenario import MODES, MS, REQUEST, S, T0, US, Cluster, Scenario, renumber  # noqa: E402

TARGET_EPS = 100_000
TARGET_MB_10K = 200


def traffic(requests: int, kind: str = "mixed") -> tuple[Cluster, list[SyscallEvent]]:
    """curl-like: a DNS lookup and one request per connection, in the three modes (every
    event carries a payload or changes a connection: the worst case); keep-alive: 10
    requests per DNAT'd connection; mixed: both, half of the requests each."""
    cluster = Cluster()
    events: list[SyscallEvent] = []
    curl = requests if kind == "curl" else 0 if kind == "keepalive" else requests // 2
    per_mode = curl // len(MODES)
    for m, mode in enumerate(MODES):
        sc = Scenario(cluster, mode)
        for i in range(per_mode):
            sc.request(T0 + m * 3600 * S + i * 2 * MS, "healthy", backend="my-nginx-1" if i % 2 else "my-nginx-2")
        events += sc.events()
    sc = Scenario(cluster, "dnat")
    for i in range((requests - curl) // 10):
        sc.keepalive(T0 + 4 * 3600 * S + i * 20 * MS, statuses=(200,) * 9 + (503,))
    events += sc.events()
    # Each Scenario numbers its events from 1 per node; the scenarios follow each other in
    # time, so number every node's events once more across all of them, as a capture would.
    return cluster, renumber(events)


def reference(events) -> float:
    """Calibration: the cheapest pass a pipeline could make, one dict built per event."""
    fields = SyscallEvent.__slots__
    get = attrgetter(*fields)
    c = time.process_time()
    for _ in range(3):
        [dict(zip(fields, get(e))) for e in events]
    return 3 * len(events) / (time.process_time() - c)


def trivial_pass(events) -> float:
    """Floor: a Python loop that only reads each event's time (best of 3)."""
    best = float("inf")
    for _ in range(3):
        c = time.process_time()
        clock = 0
        for e in events:
            if e.ts > clock:
                clock = e.ts
        best = min(best, time.process_time() - c)
    return len(events) / max(best, 1e-9)


def reader_alone(events) -> tuple[float, int]:
    """The same events written to a .scap and read back by the project's reader (best of 3):
    what `svctrace analyze` pays before the core sees an event."""
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "bench.scap"
        with ScapWriter(path, hostname="bench") as w:
            for e in events:
                w.write_event(e)
        best, count = float("inf"), 0
        for _ in range(3):
            gc.collect()
            c = time.process_time()
            count = sum(1 for _ in open_capture(path))
            best = min(best, time.process_time() - c)
    return count / max(best, 1e-9), count


def shuffled(events, lateness, dup_rate=0.1, seed=1):
    rng = random.Random(seed)
    keyed = [(e.ts + rng.randrange(lateness), i, e) for i, e in enumerate(events)]
    keyed += [(e.ts + rng.randrange(lateness), len(events) + i, e) for i, e in enumerate(events) if rng.random() < dup_rate]
    keyed.sort(key=lambda k: (k[0], k[1]))
    return [e for *_k, e in keyed]


def digest(result) -> str:
    """A fingerprint of the chains and alerts: optimizations must leave it unchanged."""
    return hashlib.sha1(dumps({"chains": result.chains, "alerts": result.alerts})).hexdigest()[:16]


def throughput(index, events) -> tuple[float, float, float, int, str]:
    """events per CPU second (process time: the machine may be shared), wall seconds,
    chains and the output digest."""
    gc.collect()
    c, t = time.process_time(), time.perf_counter()
    result = run(events, index)
    cpu, wall = time.process_time() - c, time.perf_counter() - t
    return len(events) / cpu, cpu, wall, len(result.chains), digest(result)


def open_chain_events(n: int) -> list[SyscallEvent]:
    """n DNAT connections from many client pods: connect, backend accept, request sent and received."""
    out, counters = [], {"node-a": 0, "node-b": 0}
    vip, be = "10.96.0.100", "10.244.2.8"
    for i in range(n):
        t = T0 + i * 500 * US
        cip, cport = f"10.245.{i // 250 % 250}.{i % 250 + 1}", 40000 + i % 20000
        c = dict(proto="tcp", role="client", local_ip=cip, local_port=cport, family="ipv4")
        b = dict(proto="tcp", role="server", local_ip=be, local_port=80, remote_ip=cip, remote_port=cport, family="ipv4")
        for dt, node, pid, comm, kind, sc, fd, res, kw in (
            (0, "node-a", 5000 + i, "curl", "connect", "connect", 4, -115, dict(addr_ip=vip, addr_port=8080, remote_ip=vip, remote_port=8080, **c)),
            (100, "node-b", 8008, "nginx", "accept", "accept4", 100 + i, 100 + i, b),
            (200, "node-a", 5000 + i, "curl", "send", "sendto", 4, len(REQUEST), dict(data=REQUEST, size=len(REQUEST), **c)),
            (300, "node-b", 8008, "nginx", "recv", "recvfrom", 100 + i, len(REQUEST), dict(data=REQUEST, size=len(REQUEST), **b)),
        ):
            counters[node] += 1
            out.append(SyscallEvent(ts=t + dt * US, node=node, n=counters[node], pid=pid, tid=pid, comm=comm, kind=kind,
                                    syscall=sc, fd=fd, res=res, **kw))
    out.sort(key=lambda e: e.ts)
    return out


def memory_per_open_chain(index, n: int) -> tuple[float, float, int, int]:
    events = open_chain_events(n)
    settings = Settings(idle_ns=3600 * S)  # nothing may time out while we measure
    gc.collect()
    tracemalloc.start()
    base = tracemalloc.get_traced_memory()[0]
    runner = Runner(index, settings)
    runner.feed(events)
    runner.step()
    runner.advance(events[-1].ts + 3 * S)  # everything applied: only open chains remain
    gc.collect()
    used = tracemalloc.get_traced_memory()[0] - base
    tracemalloc.stop()
    open_conns = sum(len(st["conns"]) for st in runner.states["svctrace.flows"].values())
    serialized = sum(len(dumps_state(st)) for st in runner.states["svctrace.flows"].values())
    return used / 2**20, used / max(open_conns, 1), open_conns, serialized


def main(argv=None) -> int:
    print(f"huge page arenas: {huge_page_arenas()}", flush=True)  # (as the worker; SVCTRACE_HUGE_PAGES=0: off)
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--requests", type=int, default=8000)
    ap.add_argument("--open-chains", type=int, default=10_000)
    args = ap.parse_args(argv)
    c = time.process_time()
    sum(range(10**7))
    speed = time.process_time() - c
    print(f"load average {' '.join(f'{x:.1f}' for x in os.getloadavg())} on {os.cpu_count()} CPUs;"
          f" interpreter speed: sum(range(10**7)) takes {speed:.3f} s CPU here;"
          " rates are events per CPU second of this process (best of 3)")
    late = Settings().enrich_lateness_ns
    rates: dict[str, float] = {}
    for kind in ("mixed", "curl", "keepalive"):
        cluster, events = traffic(args.requests, kind)
        index = cluster.index()
        shuf = shuffled(events, late)
        ref = reference(events)
        floor = trivial_pass(events)
        read_eps, read_n = reader_alone(events)
        runs_a = [throughput(index, events) for _ in range(3)]
        runs_b = [throughput(index, shuf) for _ in range(3)]
        eps_a, cpu_a, wall_a, chains_a, digest_a = max(runs_a)
        eps_b, cpu_b, wall_b, chains_b, digest_b = max(runs_b)
        rates[kind] = eps_a
        print(f"{kind} traffic: {len(events)} events, {args.requests} requests, {chains_a} chains")
        print(f"  capture order          : {eps_a:>10,.0f} events/s  ({cpu_a:.2f} s CPU, {wall_a:.2f} s wall)")
        print(f"  shuffled + 10% dups    : {eps_b:>10,.0f} events/s  ({cpu_b:.2f} s CPU, {len(shuf)} deliveries,"
              f" {chains_b} chains)")
        print(f"  reference (1 dict/ev)  : {ref:>10,.0f} events/s  -> the graph costs {ref / eps_a:.1f}x that")
        print(f"  trivial pass (read ts) : {floor:>10,.0f} events/s  -> the graph costs {floor / eps_a:.0f}x that")
        print(f"  scap reader alone      : {read_eps:>10,.0f} events/s  ({read_n} events read back)"
              f" -> reader + graph: {1 / (1 / read_eps + 1 / eps_a):,.0f} events/s, the graph's share"
              f" {read_eps / (read_eps + eps_a):.0%}")
        print(f"  ratio shuffled/ordered : {eps_b / eps_a:.2f}")
        print(f"  output digest          : {digest_a} (shuffled + dups: {'same' if digest_b == digest_a else digest_b})")
    worst = min(rates, key=rates.__getitem__)
    print(f"target >= {TARGET_EPS:,} events/s on every traffic: {'MET' if rates[worst] >= TARGET_EPS else 'NOT MET'}"
          f" (worst: {worst} {rates[worst]:,.0f}; " + ", ".join(f"{k} {v:,.0f}" for k, v in rates.items()) + ")")
    cluster = Cluster()
    index = cluster.index()
    mb, per, conns, ser = memory_per_open_chain(index, args.open_chains)
    print(f"open chains: {conns} open in the stitch state")
    print(f"  traced memory          : {mb:.1f} MB total, {per / 1024:.2f} KiB per open chain")
    print(f"  serialized state       : {ser / 2**20:.1f} MB ({ser / max(conns, 1):.0f} B per open chain)")
    scaled = per * 10_000 / 2**20
    print(f"  at 10k open chains     : {scaled:.1f} MB; target <= {TARGET_MB_10K} MB: {'MET' if scaled <= TARGET_MB_10K else 'NOT MET'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
