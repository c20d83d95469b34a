"""The watcher's pure core: list diff, watch events, tombstones, no republishing of unchanged state."""
from __future__ import annotations

import orjson
import pytest

from svctrace.streams.metadata.index import ClusterIndex
from svctrace.streams.metadata.sources import load_file
from svctrace.streams.metadata.watcher import (
    Backoff,
    Change,
    IndexSink,
    JsonLinesSink,
    KindState,
    WatchGone,
    watch_error,
)


def _pod(name, ip, rv, ns="shop", ready=True):
    return {"metadata": {"name": name, "namespace": ns, "resourceVersion": rv, "uid": f"uid-{name}"},
            "spec": {"nodeName": "n1"},
            "status": {"podIP": ip, "phase": "Running",
                       "conditions": [{"type": "Ready", "status": "True" if ready else "False"}]}}


def test_relist_diffs_against_the_known_state():
    st = KindState("Pod")
    first = st.relist([_pod("a", "10.0.0.1", "1"), _pod("b", "10.0.0.2", "2")], "2", 100)
    assert [(c.key, c.record is None) for c in first] == [("Pod/shop/a", False), ("Pod/shop/b", False)]
    assert st.resource_version == "2"
    # b vanished, a unchanged (new resourceVersion only), c appeared.
    second = st.relist([_pod("a", "10.0.0.1", "5"), _pod("c", "10.0.0.2", "6")], "6", 200)
    assert [(c.key, c.record is None) for c in second] == [("Pod/shop/c", False), ("Pod/shop/b", True)]
    assert second[1].offline()["deleted"] is True and second[1].offline()["observed_ts"] == 200


def test_watch_events_and_bookmarks():
    st = KindState("Pod")
    st.relist([], "10", 1)
    assert st.event("ADDED", _pod("a", "10.0.0.1", "11"), 2)[0].record["pod"]["ips"] == ["10.0.0.1"]
    assert st.event("MODIFIED", _pod("a", "10.0.0.1", "12"), 3) == []  # nothing enrichment sees changed
    [c] = st.event("MODIFIED", _pod("a", "10.0.0.1", "13", ready=False), 4)
    assert c.record["pod"]["ready"] is False and st.resource_version == "13"
    [d] = st.event("DELETED", _pod("a", "10.0.0.1", "14"), 5)
    assert d.record is None and d.key == "Pod/shop/a"
    assert st.event("BOOKMARK", {"kind": "Pod", "metadata": {"resourceVersion": "99"}}, 6) == []
    assert st.resource_version == "99"
    with pytest.raises(ValueError):
        st.event("SURPRISE", {}, 7)


def test_seeded_state_tombstones_what_vanished_while_nobody_watched():
    st = KindState("Pod")
    prior = KindState("Pod").relist([_pod("a", "10.0.0.1", "1"), _pod("gone", "10.0.0.9", "1")], "1", 1)
    st.seed([c.record for c in prior] + [{"kind": "Service", "name": "x", "namespace": "shop"}])
    changes = st.relist([_pod("a", "10.0.0.1", "7")], "7", 50)
    assert [(c.key, c.record) for c in changes] == [("Pod/shop/gone", None)]


def test_bad_object_is_skipped_and_counted():
    st = KindState("Service")
    bad = {"metadata": {"name": "s", "namespace": "d"}, "spec": {"ports": [{"port": "x"}]}}
    good = {"metadata": {"name": "t", "namespace": "d"}, "spec": {"clusterIP": "10.96.0.5", "ports": [{"port": 80}]}}
    changes = st.relist([bad, good], "3", 1)
    assert [c.key for c in changes] == ["Service/d/t"] and st.bad_objects == 1


def test_watch_error_maps_410_to_gone():
    assert isinstance(watch_error({"kind": "Status", "code": 410, "reason": "Expired",
                                   "message": "too old resource version: 1 (2345)"}), WatchGone)
    assert not isinstance(watch_error({"code": 500, "message": "boom"}), WatchGone)


def test_backoff_grows_and_is_capped():
    b = Backoff(initial=1, maximum=8)
    delays = [b.next() for _ in range(8)]
    assert all(0.5 <= d <= 8 for d in delays) and max(delays[4:]) > 2
    b.reset()
    assert b.next() <= 1


def test_jsonlines_sink_round_trips_through_load_file(tmp_path):
    st = KindState("Pod")
    out = tmp_path / "objects.jsonl"
    sink = JsonLinesSink(out)
    idx = ClusterIndex()
    isink = IndexSink(idx)
    for changes in (st.relist([_pod("a", "10.0.0.1", "1")], "1", 10),
                    st.event("DELETED", _pod("a", "10.0.0.1", "2"), 20),
                    st.event("ADDED", _pod("b", "10.0.0.1", "3"), 30)):
        sink.publish(changes)
        isink.publish(changes)
    sink.close()
    lines = [orjson.loads(x) for x in out.read_bytes().splitlines()]
    assert [(r["name"], r["deleted"]) for r in lines] == [("a", False), ("a", True), ("b", False)]
    replayed = ClusterIndex.from_records(load_file(out))
    for ts, name in ((15, "a"), (25, None), (35, "b")):
        for index in (idx, replayed):
            pod = index.pod_by_ip("10.0.0.1", ts)
            assert (pod.name if pod else None) == name


def test_change_offline_form_of_cluster_scoped_tombstone():
    c = Change("Node//n1", None, "Node", 5)
    assert c.offline()["namespace"] is None and c.offline()["name"] == "n1"
