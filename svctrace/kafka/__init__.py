"""Kafka I/O shared by every svctrace process: topic creation from the catalogue,
producer/consumer factories with the project's settings, the dead-letter helper.

Nothing here decodes or interprets records; the sans-IO core does that.
"""
from svctrace.kafka.admin import ensure_topics, topic_name, wait_ready
from svctrace.kafka.clients import consumer, producer, producer_settings
from svctrace.kafka.deadletter import dead_letter, send_dead_letter

__all__ = [
    "consumer",
    "dead_letter",
    "ensure_topics",
    "producer",
    "producer_settings",
    "send_dead_letter",
    "topic_name",
    "wait_ready",
]
