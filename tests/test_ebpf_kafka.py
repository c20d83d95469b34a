"""`svctrace agent` end to end as root: live eBPF capture -> real Kafka broker -> schema-valid records."""
from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
import urllib.request

import orjson
import pytest

from svctrace.schemas.catalogue import COMPLETE_HEADER
from svctrace.schemas.models import decode_batch
from svctrace.schemas.syscall_columns import record_document
from svctrace.schemas.validation import validate
from tests.test_ebpf_live import free_port, wait_listening

pytestmark = [pytest.mark.root, pytest.mark.kafka]


def read_line_matching(stream, pattern: str, timeout: float = 60.0) -> re.Match:
    """Lines of the agent's stderr until one matches (the agent reports readiness there)."""
    deadline = time.monotonic() + timeout
    lines = []
    while time.monotonic() < deadline:
        line = stream.readline()
        if not line:
            break
        lines.append(line)
        m = re.search(pattern, line)
        if m:
            return m
    raise AssertionError(f"agent never printed {pattern!r}; stderr: {''.join(lines)[-2000:]}")


async def consume_all(kafka, topic: str, want, timeout: float = 60.0, claims: list | None = None) -> list[bytes]:
    """The topic's record values until `want` says so; `claims` gets each one's svctrace-complete header (or None)."""
    c = kafka.consumer(topic, group_id=None)
    await c.start()
    values: list[bytes] = []
    try:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            batch = await c.getmany(timeout_ms=500)
            for records in batch.values():
                values += [r.value for r in records]
                if claims is not None:
                    claims += [next((int(v) for k, v in r.headers if k == COMPLETE_HEADER), None) for r in records]
            if want(values):
                return values
        raise AssertionError(f"{topic}: condition not met; {len(values)} records")
    finally:
        await c.stop()


@pytest.mark.parametrize("form", ["json", "msgpack"])
@pytest.mark.parametrize("encoder", ["native", "Python"])
def test_agent_publishes_live_events_to_kafka(kafka, tmp_path, encoder, form):
    """Both per-event loops: the native one (fastpath.c, the default) and the Python fallback, each writing
    either record form (`--batch-form`)."""
    if os.geteuid() != 0:
        pytest.fail("needs root")
    prefix = kafka.catalogue_topics("ebpf")
    (tmp_path / "index.html").write_bytes(b"kafka-bound payload\n")
    port = free_port()
    started_us = time.time_ns() // 1000
    server = subprocess.Popen([sys.executable, "-m", "http.server", str(port), "--bind", "127.0.0.1",
                               "--directory", str(tmp_path)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    agent = subprocess.Popen([sys.executable, "-m", "svctrace", "agent", "--bootstrap", kafka.bootstrap,
                              "--topic", prefix + "svctrace.syscalls", "--stats-topic", prefix + "svctrace.agent.stats",
                              "--metrics-addr", "127.0.0.1:0", "--stats-interval", "1", "--linger", "0.1",
                              "--batch-form", form]
                             + (["--no-native"] if encoder == "Python" else []),
                             env=dict(os.environ, NODE_NAME="kafka-test-node"), stderr=subprocess.PIPE, text=True)
    try:
        wait_listening(port, server)
        m = read_line_matching(agent.stderr, r"metrics on (http://\S+)")
        assert read_line_matching(agent.stderr, r"\((\w+) encoder\), capturing").group(1) == encoder
        curl = subprocess.run(["curl", "-s", "-H", "Cookie: session=s3cr3t", f"http://127.0.0.1:{port}/index.html"],
                              capture_output=True, timeout=30)
        assert curl.stdout == b"kafka-bound payload\n"

        def has_curl(values):
            return any(e.comm == "curl" and e.kind == "recv" and e.data and b"kafka-bound" in e.data
                       for v in values for e in decode_batch(v).events)
        claims: list = []
        values = kafka.run(consume_all(kafka, prefix + "svctrace.syscalls", has_curl, claims=claims))
        deadline = time.monotonic() + 30
        pattern = r'svctrace_agent_events_published_total\{node="kafka-test-node",source="ebpf"\} [1-9]'
        while not re.search(pattern, urllib.request.urlopen(m.group(1), timeout=10).read().decode()):
            assert time.monotonic() < deadline, "metrics never showed published events"
            time.sleep(0.2)  # poll interval; the agent refreshes its metrics every second
    finally:
        agent.send_signal(signal.SIGTERM)
        rc = agent.wait(60)
        tail = agent.stderr.read()
        server.terminate()
        server.wait(10)
    assert rc == 0, tail
    assert "Traceback" not in tail

    events = []
    for v in values:
        name, doc = record_document(v)
        assert name == ("syscall-batch" if form == "json" else "syscall-columns")
        validate(name, doc)
        b = decode_batch(v)
        assert b.node == "kafka-test-node" and b.source == "ebpf"
        events += b.events
    req = next(e for e in events if e.comm == "curl" and e.kind == "send" and e.remote_port == port)
    assert req.data.startswith(b"GET /index.html HTTP/1.1") and b"s3cr3t" not in req.data and req.redacted
    assert b"Cookie: [REDACTED]" in req.data
    assert all(e.pid != agent.pid for e in events)  # the agent filters itself out
    # every record of the live agent claims its node's stream complete up to a time, and no later record has an
    # older event (the one partition's records, in order)
    batches = [decode_batch(v).events for v in values]
    assert len(claims) == len(batches) and None not in claims
    for i, claim in enumerate(claims):
        assert all(e.ts >= claim for later in batches[i + 1:] for e in later), f"record {i} claimed {claim}"
    assert min(e.n for e in events) > started_us  # numbered from the agent's start: unique across restarts

    # the final stats (published on SIGTERM) say nothing was dropped
    stats = kafka.run(consume_all(kafka, prefix + "svctrace.agent.stats",
                                  lambda vs: any(orjson.loads(v)["published"] > 0 for v in vs)))
    for s in stats:
        validate("agent-stats", orjson.loads(s))
    last = orjson.loads(stats[-1])
    assert last["node"] == "kafka-test-node" and last["dropped"] == 0 and last["captured"] >= len(events) > 0


def test_a_live_agent_and_a_worker_give_the_lab_requests_chains_and_alerts_while_they_run(kafka, tmp_path):
    """The deployment's live path on the real kernel and broker: `svctrace agent` (eBPF) on the lab's node and
    one `svctrace worker`. The lab's requests come out as their chains and alerts while both run, the worker
    releasing the node to the agent's completeness claims (svctrace-complete) and its empty records when quiet,
    and no event is late."""
    from lab.net.services import NODE, cluster_list, running
    from svctrace.streams.metadata.sources import records_from_documents
    from tests.harness import pipeline as P

    if os.geteuid() != 0:
        pytest.fail("needs root")
    prefix = kafka.unique_prefix("live")
    P.ensure_worker_topics(kafka.bootstrap, prefix)
    records = records_from_documents([cluster_list()], observed_ts=0)
    kafka.run(P.publish_cluster(kafka.bootstrap, prefix, records))
    worker = P.WorkerProcess(kafka.bootstrap, prefix, "app-" + prefix.strip("."), tmp_path, name="w").start()
    agent = None
    try:
        worker.wait_ready()
        url = worker.metrics_url()
        P.wait_until(lambda: P.metric_value(url, "svctrace_worker_cluster_objects") >= len(records), 60,
                     "the lab's objects in the worker's index", [worker])
        with running(tmp_path) as lab:
            agent = subprocess.Popen([sys.executable, "-m", "svctrace", "agent", "--bootstrap", kafka.bootstrap,
                                      "--topic", prefix + "svctrace.syscalls",
                                      "--stats-topic", prefix + "svctrace.agent.stats", "--metrics-addr", ""],
                                     env=dict(os.environ, NODE_NAME=NODE), stderr=subprocess.PIPE, text=True)
            read_line_matching(agent.stderr, r"capturing")
            lab.ask(["my-nginx", "my-nginx-wrong-port"])

            def done(r) -> bool:
                names = {(c["service"] or {}).get("name") for c in r.chains.values()}
                rules = {a["rule"] for a in r.alerts.values()}
                return {"my-nginx", "my-nginx-wrong-port"} <= names and "svc.target_port_refused" in rules

            res = kafka.run(P.read_results(kafka.bootstrap, prefix, done, 90))
            assert done(res), f"chains of {sorted({(c['service'] or {}).get('name') for c in res.chains.values()} - {None})}" \
                              f"\n{worker.log_tail(30)}"
            late = {stage: P.metric_value(url, "svctrace_worker_late_events_total", stage=stage)
                    for stage in ("enrich", "stitch")}
            assert late == {"enrich": 0, "stitch": 0}, f"late events {late}\n{worker.log_tail(30)}"
    finally:
        if agent is not None:
            agent.send_signal(signal.SIGTERM)
            agent.wait(60)
        worker.stop()
    chains = {c["service"]["name"]: c for c in res.chains.values() if c["service"]}
    ok, refused = chains["my-nginx"], chains["my-nginx-wrong-port"]
    assert (ok["status"], ok["translation"]["mode"], ok["backend"]["pod"], ok["response"]["status"]) == \
        ("ok", "dnat", "my-nginx-1", 200)
    assert refused["status"] == "broken" and refused["response"]["error"] == "connection refused"
