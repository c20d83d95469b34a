"""app.note_fetch_answers: what the broker's last fetch answer said of a partition, as one pair (when it
was asked, the highwater it gave), the time a live worker's idle watermark may follow (Worker._advance_idle).

A fetch response reflects the broker's log at some moment after the request was made, and is handled
later (in flight; a consumer thread starved of the GIL). A record appended in between is neither counted
nor fetched: the time the answer must carry is the request's, never the handling's (aiokafka's
last_poll_timestamp), or the watermark passes records already on the broker."""
from __future__ import annotations

import asyncio
import time

import pytest
from aiokafka.structs import TopicPartition

from svctrace.kafka.admin import topic_name
from svctrace.schemas.catalogue import SYSCALLS
from svctrace.streams.faust_app.app import FetchAnswer, note_fetch_answers

TP = TopicPartition("syscalls", 3)


class _Request:
    def __init__(self, api_key: int = 1):
        self.API_KEY = api_key


class _Response:
    def __init__(self, error_code: int, highwater: int):
        self.topics = [(TP.topic, [(TP.partition, error_code, highwater, 0, 0, [], -1, b"")])]


class _Broker:
    """A Kafka client as aiokafka's Fetcher uses it (send): the broker reads its log end when it
    answers; the answer reaches the fetcher later (in flight; a consumer thread waiting for the GIL)."""

    cluster = "the client's cluster metadata"

    def __init__(self, log: list):
        self.log = log
        self.answered = asyncio.Event()
        self.deliver = asyncio.Event()
        self.error_code = 0

    async def send(self, node_id, request):
        response = _Response(self.error_code, len(self.log))  # the broker builds its answer
        self.answered.set()
        await self.deliver.wait()
        return response


class _Fetcher:
    def __init__(self, client):
        self._client = client


def test_an_answer_pairs_the_highwater_with_the_time_it_was_asked_not_handled():
    log: list[int] = []  # append times (ns) of the partition's records
    broker = _Broker(log)
    fetcher = _Fetcher(broker)
    answers: dict = {}
    note_fetch_answers(fetcher, answers)
    assert fetcher._client.cluster is broker.cluster  # everything else is the client's

    async def one_fetch(append_meanwhile: int, error_code: int = 0, api_key: int = 1):
        broker.answered.clear()
        broker.deliver.clear()
        broker.error_code = error_code
        fetch = asyncio.create_task(fetcher._client.send(0, _Request(api_key)))
        await broker.answered.wait()
        for _ in range(append_meanwhile):  # appended after the broker answered, before the answer arrives
            log.append(time.time_ns())
        handled_ns = time.time_ns()
        broker.deliver.set()
        await fetch
        return handled_ns

    async def scenario():
        log.append(time.time_ns())
        handled_ns = await one_fetch(append_meanwhile=2)
        first = answers[(TP.topic, TP.partition)]
        assert first.highwater == 1  # the two records appended meanwhile are not counted ...
        assert all(first.asked_ns <= appended for appended in log[first.highwater:])  # ... and came after it was asked
        assert handled_ns > log[-1]  # while the time the answer was handled is after them
        await one_fetch(append_meanwhile=1, error_code=6)  # NotLeaderForPartition: no word on the log
        await one_fetch(append_meanwhile=0, api_key=2)  # not a fetch (ListOffsets)
        assert answers[(TP.topic, TP.partition)] is first
        await one_fetch(append_meanwhile=0)
        second = answers[(TP.topic, TP.partition)]
        assert second.highwater == len(log) == 4 and second.asked_ns >= log[-1] >= first.asked_ns
        assert isinstance(second, FetchAnswer)

    asyncio.run(scenario())


@pytest.mark.kafka
def test_the_pinned_aiokafka_fetcher_reports_each_answer(kafka):
    """On the real consumer (aiokafka's Fetcher, whose internals note_fetch_answers wraps) the answer's
    highwater is the consumer's own and its time precedes aiokafka's handling stamp."""
    prefix = kafka.catalogue_topics("fa")
    topic = topic_name(SYSCALLS, prefix)
    tp = TopicPartition(topic, 0)

    async def scenario():
        p = kafka.producer()
        await p.start()
        try:
            for i in range(5):
                await p.send_and_wait(topic, b"r%d" % i, partition=0)
        finally:
            await p.stop()
        c = kafka.consumer(topic, group_id=None)
        await c.start()
        answers: dict = {}
        note_fetch_answers(c._fetcher, answers)
        got, deadline = 0, time.monotonic() + 30
        try:
            while (got < 5 or (topic, 0) not in answers) and time.monotonic() < deadline:
                got += sum(len(r) for tp_, r in (await c.getmany(timeout_ms=500)).items() if tp_ == tp)
            answer = answers.get((topic, 0))
            return got, answer, c.highwater(tp), c.last_poll_timestamp(tp)
        finally:
            await c.stop()

    got, answer, highwater, stamp_ms = asyncio.run(scenario())
    assert got == 5
    assert answer is not None and answer.highwater == highwater == 5
    assert answer.asked_ns <= stamp_ms * 1_000_000 + 1_000_000 <= time.time_ns() + 1_000_000
