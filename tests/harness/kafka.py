"""The real Apache Kafka broker for tests.

`kafka_session()` starts one KRaft broker from Apache Kafka's own jars (fetched
with mvn on first use, cached; see lab/kafka/broker.py) on a free loopback port,
creates the catalogue's topics and stops the broker at the end. With
SVCTRACE_KAFKA=host:port it uses that broker instead (and only creates topics).
A broker that cannot start raises BrokerError with its log tail: the test fails.
"""
from __future__ import annotations

import asyncio
import contextlib
import importlib.util
import itertools
import os
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
LAB_BROKER = REPO / "lab" / "kafka" / "broker.py"


def lab_broker():
    """The lab/kafka/broker.py module (lab/ is scripts, not a package)."""
    name = "svctrace_lab_kafka_broker"
    if name not in sys.modules:
        spec = importlib.util.spec_from_file_location(name, LAB_BROKER)
        module = importlib.util.module_from_spec(spec)
        sys.modules[name] = module
        spec.loader.exec_module(module)
    return sys.modules[name]


class Kafka:
    """What tests get from the `kafka` fixture."""

    def __init__(self, bootstrap: str, broker=None):
        self.bootstrap = bootstrap
        self.broker = broker  # lab Broker when this session started it, None for SVCTRACE_KAFKA
        self._counter = itertools.count(1)

    @property
    def external(self) -> bool:
        return self.broker is None

    def run(self, coro):
        """Run a coroutine to completion (tests are synchronous)."""
        return asyncio.run(coro)

    def unique_prefix(self, label: str = "t") -> str:
        """A fresh topic-name prefix, so tests sharing one broker never see each other's records."""
        return f"{label}{next(self._counter)}-{uuid.uuid4().hex[:6]}."

    def catalogue_topics(self, label: str = "t") -> str:
        """Create the whole catalogue under a fresh prefix; return the prefix."""
        from svctrace.kafka.admin import ensure_topics

        prefix = self.unique_prefix(label)
        self.run(ensure_topics(self.bootstrap, prefix=prefix))
        return prefix

    def producer(self, **overrides):
        from svctrace.kafka.clients import producer

        return producer(self.bootstrap, **overrides)

    def consumer(self, *topics: str, **overrides):
        from svctrace.kafka.clients import consumer

        return consumer(self.bootstrap, *topics, **overrides)


def start_private_broker(**kwargs):
    """A broker of one's own (for tests that stop or crash it); the caller closes it."""
    lab = lab_broker()
    broker = lab.Broker(**kwargs)
    try:
        broker.start()
        lab.ensure_catalogue_topics(broker.bootstrap)
    except BaseException:
        broker.close()
        raise
    return broker


@contextlib.contextmanager
def kafka_session() -> Iterator[Kafka]:
    lab = lab_broker()
    external = os.environ.get("SVCTRACE_KAFKA")
    if external:
        lab.ensure_catalogue_topics(external)
        yield Kafka(external)
        return
    broker = start_private_broker()
    try:
        yield Kafka(broker.bootstrap, broker)
    finally:
        broker.close()


BrokerError = lab_broker().BrokerError
