"""The worker's GcFreezer: the live state is frozen out of the collector's passes every few seconds, and a
full collection over everything, unfrozen, finds the cyclic garbage frozen meanwhile."""
from __future__ import annotations

import gc
import weakref

from svctrace.streams.faust_app.app import GcFreezer


class _Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


class _Node:
    def __init__(self) -> None:
        self.other = None


def test_the_state_is_frozen_every_few_seconds_and_fully_collected_now_and_then():
    clock = _Clock()
    was_enabled, threshold = gc.isenabled(), gc.get_threshold()
    gc.disable()  # (no automatic pass in between: the counts below are the freezer's alone)
    try:
        gc.set_threshold(500_000, threshold[1], threshold[2])  # the worker's (fewer_gc_passes)
        gc.collect()  # (what earlier tests left young is not this state: it would fill the young generation)
        freezer = GcFreezer(every_s=3.0, full_s=60.0, clock=clock)
        state = [[i, str(i)] for i in range(1000)]  # what a stage keeps: tracked, acyclic
        frozen = gc.get_freeze_count()
        clock.now += 2.9
        freezer.tick()
        assert gc.get_freeze_count() == frozen  # not yet
        clock.now += 0.1
        freezer.tick()
        assert gc.get_freeze_count() >= frozen + len(state)
        assert gc.get_count()[0] == 0  # what was young is out of the next gen-0 pass's way
        # cyclic garbage made of frozen objects: no pass finds it ...
        a, b = _Node(), _Node()
        a.other, b.other = b, a
        alive = weakref.ref(a)
        clock.now += 3.0
        freezer.tick()
        del a, b
        gc.collect()
        assert alive() is not None and freezer.collected == 0
        # ... until the full collection over everything, unfrozen
        clock.now += 60.0
        freezer.tick()
        assert alive() is None and freezer.collected >= 2
        assert gc.get_freeze_count() > 0  # (frozen again after it)
        del state
    finally:
        gc.set_threshold(*threshold)
        gc.unfreeze()
        if was_enabled:
            gc.enable()


def test_full_collections_that_find_little_come_ever_less_often_and_one_that_finds_more_resets_them():
    clock = _Clock()
    was_enabled = gc.isenabled()
    gc.disable()
    try:
        gc.collect()  # (garbage of earlier tests is not this freezer's)
        freezer = GcFreezer(every_s=3.0, full_s=60.0, max_full_s=240.0, clock=clock)
        fulls = []
        for _ in range(600):  # 600 s of ticks every second, no cyclic garbage made
            clock.now += 1.0
            before = freezer.full_at
            freezer.tick()
            if freezer.full_at != before:
                fulls.append(round(freezer.full_at - 1000.0))
        assert fulls == [60, 180, 420]  # waits 60, 120, 240 (the most): the next one at 660
        # a source of cycles: more than GARBAGE_PER_S per second of the wait
        garbage = []
        for _ in range(GcFreezer.GARBAGE_PER_S * 240):
            a, b = _Node(), _Node()
            a.other, b.other = b, a
            garbage.append(weakref.ref(a))
            del a, b
        clock.now = 1000.0 + 660
        freezer.tick()
        assert all(ref() is None for ref in garbage) and freezer.collected >= 2 * len(garbage)
        assert freezer.full_wait == 60.0  # back to the first wait
    finally:
        gc.unfreeze()
        if was_enabled:
            gc.enable()


def test_a_young_generation_half_way_to_a_gen0_pass_is_frozen_before_its_time():
    clock = _Clock()
    was_enabled, threshold = gc.isenabled(), gc.get_threshold()
    gc.disable()
    try:
        gc.set_threshold(10_000, threshold[1], threshold[2])
        freezer = GcFreezer(every_s=3.0, full_s=600.0, clock=clock)
        assert freezer.young_limit == 5_000
        gc.freeze()
        few = [[i] for i in range(4_000)]  # below half the threshold: waits for every_s
        clock.now += 0.1
        freezer.tick()
        assert gc.get_count()[0] >= 3_900  # (not frozen yet)
        more = [[i] for i in range(2_000)]  # past half of it: frozen at this tick, not 2.9 s later
        clock.now += 0.1
        frozen = gc.get_freeze_count()
        freezer.tick()
        assert gc.get_count()[0] < 100 and gc.get_freeze_count() >= frozen + len(few) + len(more)
        assert freezer.frozen_at == clock.now
    finally:
        gc.set_threshold(*threshold)
        gc.unfreeze()
        if was_enabled:
            gc.enable()
