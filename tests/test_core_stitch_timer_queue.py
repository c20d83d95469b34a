"""The conns' timer queue: a heap and three sorted FIFOs beside it (stitch._tq_push, stitch._tq_least) give the
very entries a heap alone gives, in the same order, ties by key and equal entries included."""
import random
from collections import deque
from heapq import heappop, heappush

import orjson

from svctrace.streams.core import dumps_state, loads_state
from svctrace.streams.core.stitch import Stitcher, _tq_least, _tq_push


def _pop(tq, qn, qs, qp):
    q = _tq_least(tq, qn, qs, qp)
    if q is None:
        return None
    return heappop(tq) if q is tq else q.popleft()


def test_pops_come_in_the_heaps_order():
    rng = random.Random(8)
    to_heap = to_fifo = 0
    for _round in range(300):
        tq, fifos = [], (deque(), deque(), deque())
        ref: list = []
        clock = 0
        popped = 0
        keys = [f"10.0.{i}.1:{40000 + i}" for i in range(rng.choice((2, 5, 40)))]
        for _step in range(rng.randrange(50, 400)):
            if rng.random() < 0.6:
                # mostly pushed in order (an event's or a pass's time + a constant per FIFO), some behind, many ties
                clock += rng.choice((0, 0, 1, 1, 2, 5))
                fifo = rng.randrange(3)
                dl = clock + (30, 3, 0)[fifo] - (rng.randrange(6) if rng.random() < 0.15 else 0)
                entry = (dl, rng.choice(keys))
                held = len(tq)
                _tq_push(tq, fifos[fifo], entry)
                to_heap += len(tq) - held
                to_fifo += 1 - (len(tq) - held)
                heappush(ref, entry)
            else:
                head = _tq_least(tq, *fifos)
                assert (head[0] if head is not None else None) == (ref[0] if ref else None)
                got = _pop(tq, *fifos)
                assert got == (heappop(ref) if ref else None)
                popped += got is not None
            for fifo in fifos:  # each FIFO stays sorted
                assert list(fifo) == sorted(fifo)
        while ref:
            assert _pop(tq, *fifos) == heappop(ref)
        assert _pop(tq, *fifos) is None and not tq and not any(fifos)
        assert popped
    assert to_heap > 1000 and to_fifo > 5 * to_heap  # both ways taken, many times


def test_a_state_with_its_fifos_goes_through_json_and_durable():
    """A state's FIFOs are written (as lists) in a whole state's JSON and read back as deques; durable() gives
    every entry in one heap "tq" (what restore and a format-4 checkpoint take)."""
    op = Stitcher(None)
    st = op.new_state()
    st["tq"] = [(5, "b")]
    st["tqn"].extend([(1, "a"), (7, "c")])
    st["tqs"].append((3, "d"))
    back = loads_state(dumps_state(st))
    assert back["tqn"] == [[1, "a"], [7, "c"]] and back["tqp"] == []
    restored = op.restore(back)
    assert restored["tqn"].__class__ is deque and list(restored["tqn"]) == [(1, "a"), (7, "c")]
    assert list(restored["tqs"]) == [(3, "d")] and restored["tq"] == [(5, "b")]
    durable = op.durable(st)
    assert not {"tqn", "tqs", "tqp"} & set(durable)
    heap = list(durable["tq"])
    assert [heappop(heap) for _ in range(4)] == [(1, "a"), (3, "d"), (5, "b"), (7, "c")]
    assert st["tq"] == [(5, "b")]  # (the state's own queue is left as it was)
    again = op.restore(orjson.loads(dumps_state(durable)))
    assert sorted(again["tq"]) == [(1, "a"), (3, "d"), (5, "b"), (7, "c")] and not again["tqn"]
