"""`svctrace worker` on the real broker: the same chains and alerts as the in-process
runner, through failures (a killed worker, a restarted broker, a poison record, a
restarted worker restoring its tables).

Chains and alerts are compared as whole documents, keyed by their deterministic ids
(at-least-once delivery may repeat a record; the last one per id is the result).
"""
from __future__ import annotations

import asyncio
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import msgspec
import orjson
import pytest

from svctrace.kafka.admin import topic_name
from svctrace.schemas import validate
from svctrace.schemas.catalogue import AGENT_STATS, SYSCALLS
from svctrace.streams.core import run
from svctrace.streams.metadata.index import ClusterIndex
from tests import scenario
from tests.harness import pipeline as P
from tests.harness.kafka import start_private_broker

pytestmark = pytest.mark.kafka

REPO = Path(__file__).resolve().parent.parent
SEED = REPO / "examples" / "seed"
LAB = REPO / "examples" / "lab"  # recorded live on a real kernel (lab/net/)
RESULT_TIMEOUT = 90.0


def expected_results(events, records):
    result = run(events, ClusterIndex.from_records(records))
    return {c["chain_id"]: c for c in result.chains}, {a["alert_id"]: a for a in result.alerts}


def complete(chains: dict, alerts: dict):
    """done() for read_results: every expected chain and every alert at its final count."""
    def done(res: P.Results) -> bool:
        return set(chains) <= set(res.chains) and all(
            a["alert_id"] in res.alerts and res.alerts[a["alert_id"]]["count"] == a["count"] for a in alerts.values())
    return done


def assert_same(res: P.Results, chains: dict, alerts: dict, workers=(), opened: dict | None = None) -> None:
    """The worker's chains and alerts are these (opened: alerts whose window is still open on the
    worker, each its first record: the same alert, counting one of the window's chains)."""
    logs = "\n".join(w.log_tail(30) for w in workers)
    missing, extra = set(chains) - set(res.chains), set(res.chains) - set(chains)
    assert not missing and not extra, (
        f"chain ids differ: {len(missing)} missing {sorted(chains[c]['status'] for c in missing)[:5]}, "
        f"{len(extra)} extra {sorted(res.chains[c]['status'] for c in extra)[:5]} of {len(chains)}\n{logs}")
    for cid, chain in chains.items():
        assert res.chains[cid] == chain, cid
    assert set(res.alerts) == set(alerts) | set(opened or {}), f"alert ids differ\n{logs}"
    for aid, alert in (opened or {}).items():
        first = res.alerts[aid]
        assert first["count"] == 1 and set(first["chain_ids"]) <= set(alert["chain_ids"]), aid
        assert {k: first[k] for k in ("rule", "labels", "suppress_ns")} == {
            k: alert[k] for k in ("rule", "labels", "suppress_ns")}, aid
    for aid, alert in alerts.items():
        diff = {k: (res.alerts[aid].get(k), v) for k, v in alert.items() if res.alerts[aid].get(k) != v}
        assert not diff, f"{aid}: (worker, in-process) {diff}"
    for doc in res.chains.values():
        validate("chain", doc)
    for doc in res.alerts.values():
        validate("alert", doc)


def start_workers(kafka, prefix: str, tmp_path: Path, n: int, **kw) -> list[P.WorkerProcess]:
    app_id = "app-" + prefix.strip(".")
    return [P.WorkerProcess(kafka.bootstrap, prefix, app_id, tmp_path, name=f"w{i}", **kw).start() for i in range(n)]


def stop_all(workers) -> None:
    for w in workers:
        w.stop()


@pytest.fixture(autouse=True)
def no_orphan_workers():
    """Whatever a test leaves running (it failed before its own cleanup) dies with it."""
    yield
    P.kill_all_workers()


@pytest.fixture
def prefix(kafka):
    p = kafka.unique_prefix("pl")
    P.ensure_worker_topics(kafka.bootstrap, p)
    return p


def scenario_workload(fault: str, mode: str, requests: int, gap_ms: int = 20):
    cluster, events = scenario.build(fault, mode, requests=requests, gap_ns=gap_ms * scenario.MS)
    return cluster.records(), events


@pytest.mark.parametrize("example", [SEED, LAB], ids=["seed", "lab"])
def test_capture_replayed_by_the_agent_through_two_workers_matches_analyze(kafka, prefix, tmp_path, example):
    """`svctrace agent --source scap` -> broker -> two workers == `svctrace analyze` on the capture:
    the seed article's path, and the network lab's real traffic."""
    from svctrace.analyze.pipeline import analyze, load_cluster_file

    capture, cluster = example / "capture.scap", example / "cluster.json"
    analysis = analyze(str(capture), str(cluster), want_evidence=False)
    chains = {c["chain_id"]: c for c in analysis.chains}
    alerts = {a["alert_id"]: a for a in analysis.alerts}
    assert chains and alerts  # the example has broken paths: something to compare
    kafka.run(P.publish_cluster(kafka.bootstrap, prefix, load_cluster_file(str(cluster))))
    workers = start_workers(kafka, prefix, tmp_path, 2)
    try:
        [node] = analysis.nodes
        agent = subprocess.run(
            [sys.executable, "-m", "svctrace", "agent", "--source", "scap", "--file", str(capture), "--speed", "0",
             "--node", node, "--bootstrap", kafka.bootstrap, "--topic", topic_name(SYSCALLS, prefix),
             "--stats-topic", topic_name(AGENT_STATS, prefix), "--metrics-addr", "", "--batch-events", "25"],
            capture_output=True, text=True, timeout=120, cwd=REPO, **P.CHILD)
        assert agent.returncode == 0, agent.stderr
        res = kafka.run(P.read_results(kafka.bootstrap, prefix, complete(chains, alerts), RESULT_TIMEOUT, settle=1.0))
        assert_same(res, chains, alerts, workers)
        for w in workers:
            w.check_alive()
    finally:
        stop_all(workers)


def test_multi_node_chains_meet_in_one_partition_and_match_the_in_process_runner(kafka, prefix, tmp_path):
    """Client on node-a, backend on node-b: the repartition by flow bucket joins both sides."""
    records, events = scenario_workload("wrong_port", "userspace", requests=150)
    assert {e.node for e in events} == {"node-a", "node-b"}
    chains, alerts = expected_results(events, records)
    kafka.run(P.publish_cluster(kafka.bootstrap, prefix, records))
    workers = start_workers(kafka, prefix, tmp_path, 2)
    try:
        kafka.run(P.publish_batches(kafka.bootstrap, prefix, P.batches_of(events, 200)))
        res = kafka.run(P.read_results(kafka.bootstrap, prefix, complete(chains, alerts), RESULT_TIMEOUT, settle=1.0))
        assert_same(res, chains, alerts, workers)
        metrics = urllib.request.urlopen(workers[0].metrics_url(), timeout=5).read().decode()
        assert "svctrace_worker_events_total" in metrics
    finally:
        stop_all(workers)


@pytest.mark.parametrize("claims", [True, False], ids=["claiming", "claiming-nothing"])
def test_nodes_sharing_a_partition_each_keep_their_own_clock_on_a_live_worker(kafka, prefix, tmp_path, claims):
    """Live agents of node-a and node-b publish to one syscalls partition, node-b's 2.5 s behind
    node-a's (more than the worker's lateness: a backlogged agent, a slower link). Each node is
    released by its own clock, or the completeness its records claim (svctrace-complete; agents
    before it claim nothing), and the partition announces the slower one downstream: no event is
    late, and the chains and alerts are analyze's on the same events. (Lateness 1 s, not the
    default 0.4: it must cover how late one agent's batch can come, here a paced test publisher
    sharing 2 cores with a broker and a worker.)"""
    from dataclasses import replace

    from svctrace.schemas.catalogue import load_catalogue
    from svctrace.schemas.models import SyscallEvent

    lag_s, lateness_s, partition = 2.5, 1.0, 0
    records, events = scenario_workload("wrong_port", "userspace", requests=100, gap_ms=50)
    kafka.run(P.publish_cluster(kafka.bootstrap, prefix, records))
    [worker] = start_workers(kafka, prefix, tmp_path, 1, extra=["--lateness", str(lateness_s)])
    try:
        worker.wait_ready()
        url = worker.metrics_url()
        # Every partition at its end of input first: from then on the stitch stage moves with what this
        # partition announces, as on a worker that has run for a while.
        sources = load_catalogue()[SYSCALLS].partitions
        P.wait_until(lambda: P.metric_value(url, "svctrace_worker_sources_done") == sources, RESULT_TIMEOUT,
                     "every syscalls partition idle and flushed", [worker])
        # Event times become wall-clock times, so the worker takes the agents for live ones. node-b's
        # agent has published before the traffic (a background syscall), as agents running before a
        # worker joins have: a node's first events are late if its partition has already passed them.
        start = time.time_ns() + 300_000_000
        shift = start + int((lag_s + lateness_s) * 1e9) - min(e.ts for e in events)
        background = SyscallEvent(ts=start, node="node-b", n=0, pid=1, tid=1, comm="systemd-journal", kind="close",
                                  syscall="close", fd=42, res=0)
        events = [background, *(replace(e, ts=e.ts + shift, n=e.n + (e.node == "node-b")) for e in events)]
        chains, alerts = expected_results(events, records)
        assert {c["status"] for c in chains.values()} and alerts
        schedule = P.live_schedule(events, {"node-b": lag_s})
        assert schedule[0][1].node == "node-b"
        kafka.run(P.publish_live(kafka.bootstrap, prefix, schedule, partition=partition,
                                 linger_s=0.2 if claims else None))
        # A live worker's alert is its window's first record until the window closes (its suppression
        # time + the alerts stage's lateness: minutes): the alerts are compared as opened.
        res = kafka.run(P.read_results(kafka.bootstrap, prefix, lambda r: set(chains) <= set(r.chains)
                                       and set(alerts) <= set(r.alerts), RESULT_TIMEOUT, settle=1.0))
        late = {stage: P.metric_value(url, "svctrace_worker_late_events_total", stage=stage)
                for stage in ("enrich", "stitch")}
        assert late == {"enrich": 0, "stitch": 0}, f"late events {late}\n{worker.log_tail(30)}"
        assert_same(res, chains, {}, [worker], opened=alerts)
    finally:
        worker.stop()


@pytest.mark.parametrize("form", ["msgpack", "json"])
def test_a_backlog_published_after_every_partition_is_done_passes_no_partition_of_it(kafka, prefix, tmp_path, form):
    """Every syscalls partition has gone idle and been announced DONE; then a backlog (old events) is
    published at once to two of them, node-a's and node-b's, node-b's in fewer records. The worker reads
    the two in turn (Faust goes round the partitions) and releases node-b's partition when it has read it
    all, its mark then newer than almost all of node-a's events, which it has read only in part and
    released not at all. node-a's partition, DONE downstream until it announces a mark of its own, must
    hold the stitch stage back meanwhile (announced HELD): no event late at either stage, and the chains
    and alerts are the in-process runner's. (At 1e013e2 the stitch stage took 3,350 of node-a's events
    as late in each run: chains missing.) The backlog goes out in one produce request (a long linger):
    both partitions' records are on the broker when the worker first fetches either; a partition whose
    records come after another's marks passed them is "a partition that returns after being finished",
    whose events are late by design (docs/architecture.md)."""
    from svctrace.agents.agent.pipeline import encode_syscall_batch
    from svctrace.kafka.clients import producer
    from svctrace.schemas.catalogue import load_catalogue

    records, events = scenario_workload("wrong_port", "userspace", requests=300)
    chains, alerts = expected_results(events, records)
    batches = P.batches_of(events, 100)  # node-a: 36 records, node-b: 29
    assert {b.node for b in batches} == {"node-a", "node-b"}
    kafka.run(P.publish_cluster(kafka.bootstrap, prefix, records))
    [worker] = start_workers(kafka, prefix, tmp_path, 1, idle_flush=2.0)
    try:
        url = worker.metrics_url()
        sources = load_catalogue()[SYSCALLS].partitions
        P.wait_until(lambda: P.metric_value(url, "svctrace_worker_sources_done") == sources, RESULT_TIMEOUT,
                     "every syscalls partition idle and flushed (DONE)", [worker])

        async def publish_at_once() -> int:
            # Each partition's records in one producer batch, lingering until all are in; then every batch is
            # closed at once (aiokafka's own step before a transaction commits) and the sender wakes: one
            # produce request, both partitions' records. (Batches that close one by one, full or at their own
            # linger's end, go in requests of their own, and a fetch may find one partition's records alone.)
            p = producer(kafka.bootstrap, linger_ms=60_000, max_batch_size=16 * 1024 * 1024)
            await p.start()
            try:
                sends = [await p.send(topic_name(SYSCALLS, prefix), encode_syscall_batch(b, form=form),
                                      key=b.node.encode()) for b in batches]
                await p._message_accumulator.flush_for_commit()
                partitions = {(await s).partition for s in sends}
            finally:
                await p.stop()
            assert len(partitions) == 2  # (node-a's and node-b's partitions differ)
            return sum(len(b.events) for b in batches)

        sent = kafka.run(publish_at_once())
        _backlog_taken_with_none_late(kafka, prefix, worker, sent, chains, alerts)
    finally:
        worker.stop()


def _backlog_taken_with_none_late(kafka, prefix, worker, sent: int, chains, alerts) -> None:
    """The worker takes the `sent` events of the backlog into its stitch stage, counts none of them late, and
    puts out the in-process runner's chains and alerts."""
    url = worker.metrics_url()
    P.wait_until(lambda: P.metric_value(url, "svctrace_worker_events_total", stage="stitch") >= sent,
                 RESULT_TIMEOUT, "the backlog into the stitch stage", [worker])
    late = {stage: P.metric_value(url, "svctrace_worker_late_events_total", stage=stage)
            for stage in ("enrich", "stitch")}
    assert late == {"enrich": 0, "stitch": 0}, f"late events {late}\n{worker.log_tail(30)}"
    res = kafka.run(P.read_results(kafka.bootstrap, prefix, complete(chains, alerts), RESULT_TIMEOUT, settle=1.0))
    assert_same(res, chains, alerts, [worker])


def test_a_backlog_published_while_the_worker_was_down_after_every_partition_was_done_passes_none_of_it(
        kafka, prefix, tmp_path):
    """The same backlog, published while no worker runs: the worker that starts restores every syscalls
    partition DONE (its enrich state, and the stitch partitions' progress) and finds the two partitions'
    records on the broker at its first fetch. It has announced nothing since it took them: the partition it
    has not released yet goes HELD with the other's marks, as one it announced DONE would."""
    from svctrace.schemas.catalogue import load_catalogue

    records, events = scenario_workload("wrong_port", "userspace", requests=300)
    chains, alerts = expected_results(events, records)
    batches = P.batches_of(events, 100)
    kafka.run(P.publish_cluster(kafka.bootstrap, prefix, records))
    [first] = start_workers(kafka, prefix, tmp_path, 1, idle_flush=2.0)
    try:
        url = first.metrics_url()
        sources = load_catalogue()[SYSCALLS].partitions
        P.wait_until(lambda: P.metric_value(url, "svctrace_worker_sources_done") == sources, RESULT_TIMEOUT,
                     "every syscalls partition idle and flushed (DONE)", [first])
        done_at = P.metric_value(url, "svctrace_worker_checkpoints_total")
        P.wait_until(lambda: P.metric_value(url, "svctrace_worker_checkpoints_total") > done_at + 1, RESULT_TIMEOUT,
                     "the DONE state checkpointed", [first])
        first.stop()
        assert first.proc.returncode == 0, first.log_tail()
    finally:
        first.kill()
    sent = kafka.run(P.publish_batches(kafka.bootstrap, prefix, batches))
    second = P.WorkerProcess(kafka.bootstrap, prefix, "app-" + prefix.strip("."), tmp_path, name="again",
                             idle_flush=2.0).start()
    try:
        _backlog_taken_with_none_late(kafka, prefix, second, sent, chains, alerts)
    finally:
        second.stop()


def test_killing_one_of_two_workers_mid_stream_loses_and_duplicates_no_chain(kafka, prefix, tmp_path):
    records, events = scenario_workload("healthy", "userspace", requests=300)
    chains, alerts = expected_results(events, records)
    kafka.run(P.publish_cluster(kafka.bootstrap, prefix, records))
    workers = start_workers(kafka, prefix, tmp_path, 2, idle_flush=8.0)
    batches = P.batches_of(events, 100)
    half = len(batches) // 2
    try:
        sent = kafka.run(P.publish_batches(kafka.bootstrap, prefix, batches[:half]))
        # Kill once the first half is processed, choosing a victim that holds stitch state of
        # its own and has checkpointed it (which worker owns which partitions is Faust's choice).
        urls = [w.metrics_url() for w in workers]

        def victim() -> int | None:
            if sum(P.metric_value(u, "svctrace_worker_events_total", stage="enrich") for u in urls) < sent:
                return None
            for i, u in enumerate(urls):
                if (P.metric_value(u, "svctrace_worker_events_total", stage="stitch") > 0
                        and P.metric_value(u, "svctrace_worker_checkpoints_total") > 0):
                    return i
            return None

        P.wait_until(lambda: victim() is not None, RESULT_TIMEOUT,
                     "first half processed and a worker with checkpointed stitch state", workers)
        dead = victim()
        workers[dead].kill()
        kafka.run(P.publish_batches(kafka.bootstrap, prefix, batches[half:]))
        res = kafka.run(P.read_results(kafka.bootstrap, prefix, complete(chains, alerts), RESULT_TIMEOUT, settle=1.0))
        assert_same(res, chains, alerts, workers)
        workers[1 - dead].check_alive()
    finally:
        stop_all(workers)


def test_restarting_a_worker_restores_its_tables_from_the_changelog(kafka, prefix, tmp_path):
    """Connections open across the restart are finished correctly: their state came back."""
    records, events = scenario_workload("healthy", "userspace", requests=200)
    chains, alerts = expected_results(events, records)
    kafka.run(P.publish_cluster(kafka.bootstrap, prefix, records))
    batches = P.batches_of(events, 100)
    half = len(batches) // 2
    [first] = start_workers(kafka, prefix, tmp_path, 1, idle_flush=30.0)
    try:
        sent = kafka.run(P.publish_batches(kafka.bootstrap, prefix, batches[:half]))
        url = first.metrics_url()
        P.wait_until(lambda: P.metric_value(url, "svctrace_worker_events_total", stage="enrich") >= sent
                     and P.metric_value(url, "svctrace_worker_checkpoints_total") > 1,
                     RESULT_TIMEOUT, "first half processed and checkpointed", [first])
        first.stop()
        assert first.proc.returncode == 0, first.log_tail()
    finally:
        first.kill()
    second = P.WorkerProcess(kafka.bootstrap, prefix, "app-" + prefix.strip("."), tmp_path, name="again",
                             idle_flush=1.0).start()
    try:
        kafka.run(P.publish_batches(kafka.bootstrap, prefix, batches[half:]))
        res = kafka.run(P.read_results(kafka.bootstrap, prefix, complete(chains, alerts), RESULT_TIMEOUT, settle=1.0))
        assert_same(res, chains, alerts, [second])
        log = second.log_path.read_text()
        assert "stitch-state-changelog" in log and "Restore complete" in log
        # It resumed from the committed offsets: what it did not read again came from the changelogs.
        reread = P.metric_value(second.metrics_url(), "svctrace_worker_events_total", stage="enrich")
        assert reread < len(events), f"the restarted worker read all {len(events)} events again"
    finally:
        second.stop()


@pytest.mark.parametrize("fault, logged", [("heartbeat", "Heartbeat failed: KafkaError"),
                                           ("fetch", "Unexpected error in fetcher routine")])
def test_a_consumer_error_aiokafka_leaves_to_its_user_stops_the_worker_and_its_successor_loses_nothing(
        kafka, prefix, tmp_path, fault, logged):
    """An error aiokafka leaves to its consumer's user (UNKNOWN_SERVER_ERROR answering a heartbeat; an
    error handling a fetch response) ends the member's heartbeats or fetches for good: the worker must
    exit non-zero at once, saying why, not go on as a silently dead group member (it did: Faust never
    looks). A restarted worker resumes from the checkpoint, nothing lost."""
    records, events = scenario_workload("healthy", "userspace", requests=200)
    chains, alerts = expected_results(events, records)
    kafka.run(P.publish_cluster(kafka.bootstrap, prefix, records))
    batches = P.batches_of(events, 100)
    half = len(batches) // 2
    app_id = "app-" + prefix.strip(".")
    trigger = tmp_path / "fault"
    first = P.WorkerProcess(kafka.bootstrap, prefix, app_id, tmp_path, name="faulty", idle_flush=30.0,
                            launcher=["-m", "tests.harness.consumer_faults", fault, str(trigger)]).start()
    try:
        sent = kafka.run(P.publish_batches(kafka.bootstrap, prefix, batches[:half]))
        url = first.metrics_url()
        P.wait_until(lambda: P.metric_value(url, "svctrace_worker_events_total", stage="enrich") >= sent
                     and P.metric_value(url, "svctrace_worker_checkpoints_total") > 1,
                     RESULT_TIMEOUT, "first half processed and checkpointed", [first])
        trigger.touch()
        status = first.wait_exit(30.0)  # a heartbeat every 1.2 s (session timeout 6 s), a fetch every 50 ms
        log = first.log_path.read_text(errors="replace")
        assert status != 0, first.log_tail()
        assert logged in log and "Kafka consumer failed: KafkaError" in log, first.log_tail()
    finally:
        first.kill()
    second = P.WorkerProcess(kafka.bootstrap, prefix, app_id, tmp_path, name="again", idle_flush=1.0).start()
    try:
        kafka.run(P.publish_batches(kafka.bootstrap, prefix, batches[half:]))
        res = kafka.run(P.read_results(kafka.bootstrap, prefix, complete(chains, alerts), RESULT_TIMEOUT, settle=1.0))
        assert_same(res, chains, alerts, [second])
    finally:
        second.stop()


def test_poison_records_go_to_the_dead_letter_topic_and_processing_goes_on(kafka, prefix, tmp_path):
    records, events = scenario_workload("no_endpoints", "dnat", requests=30)
    chains, alerts = expected_results(events, records)
    kafka.run(P.publish_cluster(kafka.bootstrap, prefix, records))
    topic = topic_name(SYSCALLS, prefix)
    poison = [
        (b"node-a", b"\xff\x00 not json"),
        (b"node-a", orjson.dumps({"schema": "svctrace.syscall-batch", "version": 1, "node": "node-a",
                                  "source": "scap", "seq": 99, "events": [{"ts": 1}]})),
        (b"node-b", orjson.dumps({"schema": "something-else"})),
        (b"node-b", msgspec.msgpack.encode({"schema": "svctrace.syscall-columns", "version": 1, "node": "node-b",
                                            "source": "ebpf", "seq": 7, "lost": 0, "count": 2, "fields": ["ts"],
                                            "strings": [], "columns": [[1]]})),  # the agents' form, spoilt
    ]
    [worker] = start_workers(kafka, prefix, tmp_path, 1)
    try:
        batches = P.batches_of(events, 50)
        kafka.run(P.publish_batches(kafka.bootstrap, prefix, [batches[0], *poison, *batches[1:]]))
        done = complete(chains, alerts)
        res = kafka.run(P.read_results(kafka.bootstrap, prefix, lambda r: done(r) and len(r.deadletters) >= 4,
                                       RESULT_TIMEOUT, settle=1.0))
        assert_same(res, chains, alerts, [worker])
        assert len(res.deadletters) == 4
        for dl in res.deadletters:
            validate("dead-letter", dl)
            assert dl["stage"] == "enrich" and dl["topic"] == topic and dl["reason"]
        reasons = sorted(dl["reason"] for dl in res.deadletters)
        assert any("not JSON" in r for r in reasons)
        assert any("$.schema" in r for r in reasons)
        assert any("$.events" in r for r in reasons)
        assert any("syscall-columns" in r and "required field node" in r for r in reasons)
        worker.check_alive()
    finally:
        worker.stop()


def test_broker_restart_mid_stream_loses_nothing(tmp_path):
    """Two node agents replay their captures; the broker restarts mid-stream. The agents buffer
    while it is down and their idempotent producers write every event exactly once; the worker
    rides through and still finishes every chain as the in-process runner does."""
    # A replay has no processing-time progress: a source silent for --idle-flush is taken as
    # finished, unless the broker is unreachable. The long idle flush keeps this test about the
    # restart itself (11 s measured under load); the next one makes the outage the longer.
    _replay_through_broker_outage(tmp_path, idle_flush=30.0, outage_s=None)


def test_broker_outage_longer_than_the_idle_flush_loses_nothing(tmp_path):
    """The broker stays down longer than the worker's --idle-flush: the replayed sources' silence
    counts only while the broker answers, so neither partition is taken as finished and one node's
    resumed events do not pass the other's still to come."""
    # The idle flush outlasts the agents' start (the partitions stay unfinished until they publish);
    # the replay outlasts the outage (an agent drains its buffer for --drain-timeout once it is done).
    _replay_through_broker_outage(tmp_path, idle_flush=8.0, outage_s=12.0, replay_s=25.0)


def _replay_through_broker_outage(tmp_path, idle_flush: float, outage_s: float | None, replay_s: float = 8.0) -> None:
    """Agents of node-a and node-b replay their captures (in replay_s) through a broker that goes
    down mid-stream (restarted at once, or crashed and kept down outage_s); every event is on the
    topic exactly once and the worker's chains and alerts are the in-process runner's."""
    from svctrace.agents.scap import open_capture
    from svctrace.agents.scap.writer import ScapWriter

    records, events = scenario_workload("healthy", "dnat", requests=150, gap_ms=40)
    replayed = []
    for node in ("node-a", "node-b"):
        capture = tmp_path / f"{node}.scap"
        with ScapWriter(capture, hostname=node) as w:
            for e in events:
                if e.node == node:
                    w.write_event(e)
        replayed.append((node, capture, list(open_capture(str(capture)))))  # as the agent reads them
    events = [e for _, _, evs in replayed for e in evs]
    span_s = (max(e.ts for e in events) - min(e.ts for e in events)) / 1e9
    broker = start_private_broker()
    try:
        kafka = _Private(broker)
        prefix = kafka.unique_prefix("br")
        P.ensure_worker_topics(broker.bootstrap, prefix)
        kafka.run(P.publish_cluster(broker.bootstrap, prefix, records))
        [worker] = start_workers(kafka, prefix, tmp_path, 1, idle_flush=idle_flush)
        worker.wait_ready()
        agents = [subprocess.Popen(
            [sys.executable, "-m", "svctrace", "agent", "--source", "scap", "--file", str(capture),
             "--speed", str(span_s / replay_s), "--node", node, "--bootstrap", broker.bootstrap,
             "--topic", topic_name(SYSCALLS, prefix), "--stats-topic", topic_name(AGENT_STATS, prefix),
             "--metrics-addr", "", "--batch-events", "50", "--linger", "0.05",
             # the broker's restart (a JVM start) may outlast the default drain on a loaded machine
             "--drain-timeout", "120"],
            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, cwd=REPO, **P.CHILD)
            for node, capture, _ in replayed]
        try:
            _wait_for_records(broker.bootstrap, topic_name(SYSCALLS, prefix), 3, timeout=30)
            if outage_s is None:
                broker.restart()
            else:
                broker.kill()
                down_until = time.monotonic() + outage_s
                while time.monotonic() < down_until:  # the outage's length, watching the worker live through it
                    worker.check_alive()
                    time.sleep(0.2)
                broker.start()
            for agent in agents:
                out, _ = agent.communicate(timeout=120)
                assert agent.returncode == 0, out
            counts = _count_events(broker.bootstrap, topic_name(SYSCALLS, prefix))
            for node, _, evs in replayed:
                assert counts[node] == sorted(e.n for e in evs), f"{node}: lost or duplicated events"
            chains, alerts = expected_results(sorted(events, key=lambda e: e.ts), records)
            res = kafka.run(P.read_results(broker.bootstrap, prefix, complete(chains, alerts), 120, settle=1.0))
            assert_same(res, chains, alerts, [worker])
        finally:
            for agent in agents:
                agent.kill()
            worker.stop()
    finally:
        broker.close()


class _Private:
    """The bits of the `kafka` fixture a test with its own broker needs."""

    def __init__(self, broker):
        self.broker = broker
        self.bootstrap = broker.bootstrap
        self._n = 0

    def run(self, coro):
        return asyncio.run(coro)

    def unique_prefix(self, label: str) -> str:
        self._n += 1
        return f"{label}{self._n}."


def _wait_for_records(bootstrap: str, topic: str, count: int, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if sum(_count_events(bootstrap, topic, timeout=2.0, batches=True).values()) >= count:
            return
    raise TimeoutError(f"fewer than {count} records on {topic} after {timeout}s")


def _count_events(bootstrap: str, topic: str, timeout: float = 15.0, batches: bool = False) -> dict:
    """node -> sorted event numbers on the topic (or node -> record count with batches=True)."""
    from aiokafka import TopicPartition

    from svctrace.kafka.clients import consumer
    from svctrace.schemas.catalogue import load_catalogue
    from svctrace.schemas.models import decode_batch

    async def go():
        c = consumer(bootstrap, group_id=None)
        await c.start()
        out: dict = {}
        try:
            tps = [TopicPartition(topic, p) for p in range(load_catalogue()[SYSCALLS].partitions)]
            c.assign(tps)
            await c.seek_to_beginning(*tps)
            end = await c.end_offsets(tps)
            deadline = time.monotonic() + timeout
            while time.monotonic() < deadline:
                positions = {tp: await c.position(tp) for tp in tps}
                if all(positions[tp] >= off for tp, off in end.items()):
                    break
                got = await c.getmany(timeout_ms=300)
                for records in got.values():
                    for r in records:
                        b = decode_batch(r.value)
                        if batches:
                            out[b.node] = out.get(b.node, 0) + 1
                        else:
                            out.setdefault(b.node, []).extend(e.n for e in b.events)
        finally:
            await c.stop()
        return out if batches else {k: sorted(v) for k, v in out.items()}

    return asyncio.run(go())
