"""A live agent's event numbers keep increasing when it restarts (as root, real kernel).

(node, n) identifies an event and chain ids derive from it; an agent numbering from 1 after
each restart would reuse identities its earlier run already published.
"""
from __future__ import annotations

import os
import socket
import time

import pytest

from svctrace.agents.agent.sources import EbpfSource
from svctrace.agents.ebpf.loader import CaptureConfig

pytestmark = pytest.mark.root


def numbers_of_own_datagrams(source: EbpfSource, payload: bytes, timeout: float = 15.0) -> list[int]:
    """Send `payload` over loopback UDP until the source has seen both ends; the events' n."""
    rx = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    tx = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    rx.bind(("127.0.0.1", 0))
    seen: list[dict] = []
    deadline = time.monotonic() + timeout
    try:
        while True:
            tx.sendto(payload, rx.getsockname())
            rx.recv(64)
            seen += [e for e in source.read(10_000) if e["pid"] == os.getpid()]
            if any(e["kind"] == "send" for e in seen) and any(e["kind"] == "recv" for e in seen):
                return [e["n"] for e in seen]
            assert time.monotonic() < deadline, f"no send and recv of our own seen; {len(seen)} events"
            source.capture.ring.wait(0.05)
    finally:
        rx.close()
        tx.close()


def test_a_restarted_agent_numbers_above_its_previous_run():
    if os.geteuid() != 0:
        pytest.fail("needs root")
    started_us = time.time_ns() // 1000
    runs = []
    for payload in (b"first run", b"second run"):
        source = EbpfSource("numbering-node", CaptureConfig(exclude_pid=0))
        try:
            runs.append(numbers_of_own_datagrams(source, payload))
        finally:
            source.close()
    first, second = runs
    assert min(first) > started_us  # numbered from the agent's start time, not from 1
    assert min(second) > max(first)
    assert second == sorted(second) and len(set(second)) == len(second)
