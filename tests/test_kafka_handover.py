"""The worker consumer's hand-over of fetched records (app.ShortPollConsumer.wait_first): Faust's fetch
loop races each record's hand-over against flow suspension; one that completes at once wins without
tasks, one that has to wait still loses to a suspension, stop or crash, and nothing is left unawaited."""
import asyncio
import gc
import warnings

import pytest
from mode.utils.locks import Event

from svctrace.streams.faust_app.app import ShortPollConsumer


class _Consumer(ShortPollConsumer):
    """Just what wait_first reads (a real one needs an app and a broker)."""

    def __init__(self):
        self._stopped, self._crashed = Event(), Event()  # mode's, as a Service has
        self.suspend_flow = asyncio.Event()  # Faust's consumer has asyncio's

    @property
    def loop(self):
        return asyncio.get_running_loop()


def _run(scenario):
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # a coroutine never awaited fails the test
        result = asyncio.run(scenario())
        gc.collect()
    return result


def test_a_handover_that_completes_at_once_wins_without_a_task():
    async def scenario():
        c = _Consumer()
        tasks = len(asyncio.all_tasks())
        seen = []

        async def handover():
            seen.append(len(asyncio.all_tasks()))
            return "delivered"
        r = await c.wait_first(handover(), c.suspend_flow.wait())
        return r, seen, tasks
    r, seen, tasks = _run(scenario)
    assert r.results == ["delivered"] and not r.stopped and len(r.done) == 1
    assert seen == [tasks]  # it ran in the fetch loop's own task


def test_a_handover_that_waits_completes_or_loses_to_a_suspension():
    async def scenario():
        c = _Consumer()
        queue: asyncio.Queue = asyncio.Queue(maxsize=1)
        queue.put_nowait("full")
        delivered = []

        async def handover(x):
            await queue.put(x)
            delivered.append(x)
            return x

        async def turns():  # the loop's next steps: what is scheduled runs, cancellations land
            for _ in range(5):
                await asyncio.sleep(0)

        async def later(action):  # once wait_first waits
            await turns()
            action()
        asyncio.ensure_future(later(queue.get_nowait))  # room comes: the hand-over completes
        first = await c.wait_first(handover(1), c.suspend_flow.wait())
        asyncio.ensure_future(later(c.suspend_flow.set))  # flow suspended while it waits: abandoned
        second = await c.wait_first(handover(2), c.suspend_flow.wait())
        queue.get_nowait()  # room again: a hand-over still alive would deliver now
        await turns()
        return first, second, delivered, queue.qsize()
    first, second, delivered, size = _run(scenario)
    assert first.results == [1] and not first.stopped
    assert second.results == [True] and not second.stopped  # suspend_flow.wait() won
    assert delivered == [1] and size == 0  # the abandoned record never reached the queue


@pytest.mark.parametrize("state", ["suspended", "stopped", "crashed"])
def test_no_shortcut_while_flow_is_suspended_or_the_consumer_stops(state):
    async def scenario():
        c = _Consumer()
        {"suspended": c.suspend_flow, "stopped": c._stopped, "crashed": c._crashed}[state].set()

        async def handover():
            return "delivered"
        return await c.wait_first(handover(), c.suspend_flow.wait())
    r = _run(scenario)
    if state == "suspended":  # both finish at once, as in Faust's own race
        assert "delivered" in r.results and True in r.results
    else:
        assert r.stopped and r.done == []


def test_a_failing_handover_raises():
    async def scenario():
        c = _Consumer()

        async def handover():
            raise ValueError("bad record")
        with pytest.raises(ValueError, match="bad record"):
            await c.wait_first(handover(), c.suspend_flow.wait())
    _run(scenario)
