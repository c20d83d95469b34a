"""The agent's Kafka side against a private real broker: connect retries with backoff while the
broker is not up yet, buffering through a broker restart, nothing lost or duplicated."""
from __future__ import annotations

import asyncio
import time

import pytest

from svctrace.agents.agent.agent import Agent, AgentOptions
from svctrace.agents.agent.sinks import KafkaSink
from svctrace.schemas.models import SyscallEvent, decode_batch
from svctrace.schemas.syscall_columns import MSGPACK_MAP, record_document
from svctrace.schemas.validation import validate
from tests.harness.kafka import lab_broker

pytestmark = pytest.mark.kafka


class ScriptedSource:
    """Events the test pushes; ends when told to."""

    name = "ebpf"

    def __init__(self) -> None:
        self.pending: list[SyscallEvent] = []
        self.exhausted = False
        self.n = 0

    def push(self, count: int) -> None:
        for _ in range(count):
            self.n += 1
            self.pending.append(SyscallEvent(ts=time.time_ns(), node="rc-node", n=self.n, pid=1, tid=1, comm="t",
                                             kind="send", syscall="write", fd=3, res=4, data=b"ping", size=4))

    def read(self, max_events: int):
        out, self.pending = self.pending[:max_events], self.pending[max_events:]
        return out

    def lost(self, final: bool = False):
        return 0, []

    def close(self) -> None:
        pass


async def until(cond, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not cond():
        assert time.monotonic() < deadline, f"timed out: {what}"
        await asyncio.sleep(0.05)  # poll interval


def test_agent_reconnects_and_loses_nothing_across_a_broker_restart():
    lab = lab_broker()
    broker = lab.Broker()  # ports chosen now, started later: the agent must wait for it
    try:
        async def scenario():
            src = ScriptedSource()
            sink = KafkaSink(broker.bootstrap, backoff_initial=0.2, backoff_max=2.0, request_timeout_ms=5000)
            agent = Agent(src, sink, AgentOptions(node="rc-node", linger_s=0.05, stats_interval=0.5))
            run = asyncio.create_task(agent.run())
            await until(lambda: sink.failed_attempts >= 3, 60, "connection attempts retried with backoff")
            assert sink.producer is None and not run.done()
            await asyncio.to_thread(broker.start)
            await asyncio.to_thread(lab.ensure_catalogue_topics, broker.bootstrap)
            src.push(500)
            await until(lambda: agent.counters.published == 500, 120, "first 500 published")
            await asyncio.to_thread(broker.stop)
            src.push(500)  # captured while the broker is down: buffered
            await until(lambda: agent.counters.captured == 1000, 10, "second 500 captured")
            await asyncio.to_thread(broker.restart)
            await until(lambda: agent.counters.published == 1000, 120, "all 1000 published after restart")
            agent.stop()
            counters = await asyncio.wait_for(run, 60)
            assert counters.dropped == 0

            from svctrace.kafka.clients import consumer

            c = consumer(broker.bootstrap, "svctrace.syscalls")
            await c.start()
            seen: list[int] = []
            try:
                deadline = time.monotonic() + 60
                while len(seen) < 1000 and time.monotonic() < deadline:
                    for records in (await c.getmany(timeout_ms=500)).values():
                        for r in records:
                            assert r.value[0] in MSGPACK_MAP  # the agent's default form
                            validate(*record_document(r.value))
                            seen += [e.n for e in decode_batch(r.value).events]
            finally:
                await c.stop()
            return seen

        seen = asyncio.run(scenario())
        assert sorted(seen) == list(range(1, 1001))  # each event exactly once
    finally:
        broker.close()
