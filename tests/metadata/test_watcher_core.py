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


def test_failed_publish_is_republished_by_the_next_relist():
    st = KindState("Pod")
    first = st.relist([_pod("a", "10.0.0.1", "1"), _pod("b", "10.0.0.2", "1")], "1", 10)
    st.unpublished(c.key for c in first)  # the sink was down
    assert st.resource_version is None
    # b was deleted meanwhile: a is sent again, b gets a tombstone (it may have reached consumers).
    again = st.relist([_pod("a", "10.0.0.1", "2")], "2", 20)
    assert [(c.key, c.record is None) for c in again] == [("Pod/shop/a", False), ("Pod/shop/b", True)]


class _FakeResponse:
    def __init__(self, lines=(), data=b""):
        self.lines, self.data = list(lines), data

    def stream(self, amt=None, decode_content=False):
        yield from self.lines

    def shutdown(self):
        pass

    def release_conn(self):
        pass


def test_kind_watcher_loop_survives_a_failing_sink_and_republishes():
    """The I/O loop with the API and the sink replaced at their boundaries."""
    import threading

    from svctrace.streams.metadata.watcher import RESOURCES, KindWatcher, Metrics

    stop = threading.Event()
    published, publishes = [], []

    def publish(changes):
        publishes.append(changes)
        if len(publishes) == 2:  # the first watch event: the broker is down
            raise ConnectionError("broker down")
        published.extend(changes)

    calls = []

    def fake_list(**kwargs):
        calls.append(kwargs)
        watches = [c for c in calls if c.get("watch")]
        if kwargs.get("watch"):
            if len(watches) >= 2:
                stop.set()
            return _FakeResponse([orjson.dumps({"type": "ADDED", "object": _pod("c", "10.0.0.3", "5")}) + b"\n"])
        items = [_pod("a", "10.0.0.1", "4")] + ([_pod("c", "10.0.0.3", "5")] if watches else [])
        page = {"kind": "PodList", "metadata": {"resourceVersion": "5" if watches else "4"}, "items": items}
        return _FakeResponse(data=orjson.dumps(page))

    kw = KindWatcher(None, RESOURCES["Pod"], publish, Metrics(), backoff=Backoff(0.001, 0.002))
    kw._list = fake_list
    kw.run(stop)
    assert [c.key for c in published] == ["Pod/shop/a", "Pod/shop/c"]
    lists = [c for c in calls if not c.get("watch")]
    assert [c.get("resource_version") for c in lists] == ["0", None]  # cache list, then a consistent relist
    assert kw.metrics.registry.get_sample_value("svctrace_metadata_relists_total",
                                                {"kind": "Pod", "reason": "resync"}) == 1
    assert kw.metrics.registry.get_sample_value("svctrace_metadata_errors_total", {"kind": "Pod"}) == 1
