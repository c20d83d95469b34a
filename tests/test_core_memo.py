"""memo.MemoIndex: the index's answers as of the end of each event's second, kept per second."""
from __future__ import annotations

from svctrace.streams.core.memo import MemoIndex
from tests.scenario import S, T0, Cluster


class _Counting:
    """A ClusterIndex that counts the questions it is asked (the memo's misses)."""

    def __init__(self, index) -> None:
        self.index, self.asked = index, 0

    def __getattr__(self, name):
        method = getattr(self.index, name)

        def asked(*args):
            self.asked += 1
            return method(*args)
        return asked


def _questions(memo, ts):
    return [memo.pod_by_ip("10.244.1.5", ts), memo.pod_by_container(Cluster().pods["client"].container_id, ts),
            memo.service_by_ip("10.96.0.100", 8080, "TCP", ts), memo.endpoints("default", "my-nginx", ts),
            memo.ready_endpoints("default", "my-nginx", ts), memo.services_for_endpoint("10.244.2.8", 80, ts),
            memo.node_by_ip("192.168.1.10", ts), memo.is_cluster_dns("10.96.0.10", ts)]


def test_answers_are_the_index_s_at_the_end_of_the_second_and_asked_once_per_second():
    cluster = Cluster()
    index = cluster.index()
    counting = _Counting(index)
    memo = MemoIndex(counting)
    times = [T0, T0 + 1, T0 + S - 1, T0 + S, T0 + 5 * S + 7, T0 + 3, T0 + S + 9]  # back and forth between seconds
    for ts in times:
        end = ts - ts % S + S - 1
        ready = [e for e in index.endpoints("default", "my-nginx", end) if e.ready or (e.serving and not e.terminating)]
        assert _questions(memo, ts) == [
            index.pod_by_ip("10.244.1.5", end), index.pod_by_container(cluster.pods["client"].container_id),
            index.service_by_ip("10.96.0.100", 8080, "TCP", end), index.endpoints("default", "my-nginx", end),
            (ready, frozenset(e.ip for e in ready)), index.services_for_endpoint("10.244.2.8", 80, end),
            index.node_by_ip("192.168.1.10", end), index.is_cluster_dns("10.96.0.10", end)]
    # three distinct seconds, each question asked of the index once (ready_endpoints reads endpoints)
    assert counting.asked == 3 * 7
    memo.invalidate()
    assert len(memo) == 0
    _questions(memo, T0)
    assert counting.asked == 4 * 7 and len(memo) == 8


def test_the_memo_stays_bounded():
    memo = MemoIndex(Cluster().index(), max_entries=20)
    for i in range(200):
        memo.pod_by_ip(f"10.9.{i // 250}.{i % 250}", T0 + (i % 7) * S)
        assert len(memo) < 20
    for s in range(3000):  # many seconds, one answer each
        memo.is_cluster_dns("10.96.0.10", T0 + s * S)
    assert len(memo) < 20 and len(memo._seconds) <= 20
