"""bench.pipeline's latency workload cuts the agents' batches on a fixed grid: the last batch a fixed time
after the last event, whatever the set-up took and however late each sleep wakes (a free-running pacer
made that time, which the last requests' alerts wait on top of the rest, differ from run to run and from
build to build: docs/performance.md, session 15). Driven on a virtual clock."""
from __future__ import annotations

import asyncio
import random
from types import SimpleNamespace

import pytest

from bench import pipeline

S = 10**9


class VirtualClock:
    """time.time_ns and asyncio.sleep for pipeline._paced: each sleep wakes up to 3 ms late, and each
    emit takes 0-2 ms (the bench's own work between two batches)."""

    def __init__(self, t0: int, seed: int):
        self.now = t0
        self.rng = random.Random(seed)

    def time_ns(self) -> int:
        return self.now

    async def sleep(self, seconds: float) -> None:
        self.now += int(seconds * S) + self.rng.randrange(3_000_000)


def _events(start: int, n: int, gap: int) -> list:
    return [SimpleNamespace(ts=start + i * gap + (i % 3) * 100_000) for i in range(n)]


def _pace(events, clock: VirtualClock, linger_s: float, tail_s: float | None, monkeypatch) -> tuple[list, list]:
    monkeypatch.setattr(pipeline, "time", SimpleNamespace(time_ns=clock.time_ns))
    monkeypatch.setattr(pipeline, "asyncio", SimpleNamespace(sleep=clock.sleep))
    batches: list[list] = []
    sent: list = []
    claims: list = []

    async def emit(chunk, now):
        batches.append(list(chunk))
        claims.append(now)  # what the bench's agents claim: every event up to now is in
        clock.now += clock.rng.randrange(2_000_000)

    asyncio.run(pipeline._paced(events, emit, linger_s, sent, tail_s))
    for i, claim in enumerate(claims):  # a claim holds: no later batch has an event at or before it
        assert all(e.ts > claim for b in batches[i + 1:] for e in b)
    assert claims == [cut for cut, _ in sent]
    return batches, sent


@pytest.mark.parametrize("setup_ms", [0, 37, 180, 1234])
def test_batches_on_a_fixed_grid_ending_tail_after_the_last_event(setup_ms, monkeypatch):
    start = 1_800_000_000 * S
    events = _events(start, 200, S // 20)
    clock = VirtualClock(start - 2 * S + setup_ms * 10**6, seed=setup_ms)
    batches, sent = _pace(events, clock, 0.2, 0.1, monkeypatch)
    assert [e for b in batches for e in b] == events  # every event once, in order
    step = S // 5
    grid_end = events[-1].ts + S // 10
    cuts = [cut for cut, _ in sent]
    assert cuts[-1] == grid_end  # the last batch cut exactly tail_s after the last event
    assert all((grid_end - cut) % step == 0 for cut in cuts)  # every cut on the grid
    for (cut, newest), batch in zip(sent, batches):
        assert newest == batch[-1].ts and batch[-1].ts <= cut
        assert all(e.ts > cut - step for e in batch)  # nothing held back past its cut
    assert len(batches) == len(set(cuts))


def test_free_running_pacer_lets_the_last_batch_drift(monkeypatch):
    """Without tail_s (--free-pacing) the last batch's age is whatever the set-up and the sleeps made it."""
    start = 1_800_000_000 * S
    events = _events(start, 200, S // 20)
    ages = set()
    for setup_ms in (0, 37, 180):
        clock = VirtualClock(start - 2 * S + setup_ms * 10**6, seed=setup_ms)
        _batches, sent = _pace(events, clock, 0.2, None, monkeypatch)
        ages.add(sent[-1][0] - sent[-1][1])
    assert len(ages) == 3 and max(ages) - min(ages) > 10**7
