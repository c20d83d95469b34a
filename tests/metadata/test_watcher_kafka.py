"""The watcher publishes to the compacted topic on a real broker; a delete is a tombstone;
a new leader seeds itself from the topic and tombstones what vanished meanwhile."""
from __future__ import annotations

import orjson
import pytest
from svctrace.kafka import topic_name
from svctrace.kafka.admin import describe_topic_configs
from svctrace.streams.metadata.index import ClusterIndex
from svctrace.streams.metadata.watcher import TOPIC, KafkaSink, Watcher
from tests.metadata.test_watcher_apiserver import delete_pod, make_pod, wait_for

pytestmark = [pytest.mark.kafka, pytest.mark.apiserver]


async def _records(bootstrap, topic, key_part):
    """(key, value, timestamp ns) in partition order for keys containing key_part."""
    from aiokafka import TopicPartition

    from svctrace.kafka import consumer

    c = consumer(bootstrap)
    await c.start()
    try:
        tps = [TopicPartition(topic, p) for p in sorted(c.partitions_for_topic(topic) or ())]
        if not tps:
            await c._client.force_metadata_update()  # noqa: SLF001
            tps = [TopicPartition(topic, p) for p in sorted(c.partitions_for_topic(topic) or ())]
        c.assign(tps)
        await c.seek_to_beginning(*tps)
        end = await c.end_offsets(tps)
        out = []
        pending = {tp for tp in tps if end[tp]}
        while pending:
            for tp, msgs in (await c.getmany(*pending, timeout_ms=500)).items():
                out += [(m.key.decode(), m.value, m.timestamp * 1_000_000) for m in msgs if key_part in m.key.decode()]
            for tp in list(pending):
                if await c.position(tp) >= end[tp]:
                    pending.discard(tp)
        return out
    finally:
        await c.stop()


def test_watcher_publishes_to_compacted_topic_with_tombstones(apiserver, kafka):
    import kubernetes.client as k8s

    prefix = kafka.catalogue_topics("meta")
    topic = topic_name(TOPIC, prefix)
    configs = kafka.run(describe_topic_configs(kafka.bootstrap, [topic]))
    assert configs[topic]["cleanup.policy"] == "compact"
    ns = apiserver.new_namespace("kafka")
    client = apiserver.api_client()
    core = k8s.CoreV1Api(client)
    key = f"Pod/{ns}/p"
    records = lambda: kafka.run(_records(kafka.bootstrap, topic, f"/{ns}/"))  # noqa: E731

    sink = KafkaSink(kafka.bootstrap, topic)
    watcher = Watcher(client, sink, watch_timeout_s=60)
    thread = watcher.start()
    try:
        wait_for("initial sync", watcher.synced)
        make_pod(core, ns, "p", ip="10.244.6.60")
        make_pod(core, ns, "q", ip="10.244.6.61")
        wait_for("pod record on the topic",
                 lambda: any(k == key and v and orjson.loads(v)["pod"]["ips"] == ["10.244.6.60"]
                             for k, v, _ in records()))
        delete_pod(core, ns, "p")
        wait_for("tombstone on the topic", lambda: [v for k, v, _ in records() if k == key][-1:] == [None])
    finally:
        watcher.stop()
        thread.join(15)
        sink.close()

    # While no watcher runs, q is deleted and r created. A new watcher seeds itself from the
    # topic, relists, and publishes a tombstone for q: consumers never keep a stale q.
    delete_pod(core, ns, "q")
    make_pod(core, ns, "r", ip="10.244.6.61")
    sink2 = KafkaSink(kafka.bootstrap, topic)
    watcher2 = Watcher(client, sink2, watch_timeout_s=60)
    thread2 = watcher2.start()
    try:
        wait_for("second watcher synced", watcher2.synced)
        wait_for("tombstone for q", lambda: [v for k, v, _ in records() if k == f"Pod/{ns}/q"][-1:] == [None])
        # The topic, replayed as a consumer would (null value = delete at the record's
        # timestamp), gives the live state.
        index = ClusterIndex()
        for k, v, ts in records():
            index.apply_keyed(k, None if v is None else orjson.loads(v), ts=ts)
        assert index.pod_by_ip("10.244.6.61").name == "r"
        assert index.pod_by_ip("10.244.6.60") is None
        # p's tombstone was already on the topic: the relist did not publish it again.
        assert [v for k, v, _ in records() if k == key].count(None) == 1
    finally:
        watcher2.stop()
        thread2.join(15)
        sink2.close()
        client.close()
