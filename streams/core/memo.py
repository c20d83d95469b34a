"""A memo of ClusterIndex answers at one-second granularity of event time.

Every question is asked of the index as of the END of the event's second, so an
answer is a pure function of (question, second): identical whichever runner,
bucket or arrival order asked first. Metadata changes are seconds apart; joins
at 1 s resolution lose nothing a human would see, and the memo spares the
index most of its work (chains ask the same few questions over and over).
Bounded: cleared when it grows past `max_entries`. When records are applied to
the index while the graph runs (the Faust app), `Graph.metadata_changed()`
forgets what was answered; otherwise an answer is reused only within its second.
"""
from __future__ import annotations

S = 10**9


class MemoIndex:
    def __init__(self, index, max_entries: int = 65536):
        self.index = index
        self.max_entries = max_entries
        self._memo: dict[tuple, object] = {}

    def invalidate(self) -> None:
        """Forget every answer (call after applying records to the index)."""
        self._memo.clear()

    def _put(self, key: tuple, value):
        memo = self._memo
        if len(memo) >= self.max_entries:
            memo.clear()
        memo[key] = value
        return value

    @staticmethod
    def at(ts: int) -> int:
        """The instant a question about time ts is asked for: the end of its second."""
        return ts - ts % S + S - 1

    # Each question: a hit costs one tuple and one dict lookup (these run per event and per chain).

    def pod_by_ip(self, ip, ts):
        t = ts - ts % S + S - 1
        key = ("pod", ip, t)
        try:
            return self._memo[key]
        except KeyError:
            return self._put(key, self.index.pod_by_ip(ip, t))

    def pod_by_container(self, container_id, ts):
        # keyed by the second too: an answer given before the pod's record arrived is not kept
        key = ("cid", container_id, ts // S)
        try:
            return self._memo[key]
        except KeyError:
            return self._put(key, self.index.pod_by_container(container_id))

    def service_by_ip(self, ip, port=None, protocol="TCP", ts=None):
        t = ts - ts % S + S - 1
        key = ("svc", ip, port, protocol, t)
        try:
            return self._memo[key]
        except KeyError:
            return self._put(key, self.index.service_by_ip(ip, port, protocol, t))

    def endpoints(self, namespace, service, ts):
        t = ts - ts % S + S - 1
        key = ("eps", namespace, service, t)
        try:
            return self._memo[key]
        except KeyError:
            return self._put(key, self.index.endpoints(namespace, service, t))

    def ready_endpoints(self, namespace, service, ts) -> tuple[list, frozenset]:
        """endpoints() that take traffic (ready, or serving and not terminating), and their
        IPs; callers only read them (every chain of a Service in that second shares them)."""
        t = ts - ts % S + S - 1
        key = ("ready", namespace, service, t)
        try:
            return self._memo[key]
        except KeyError:
            ready = [e for e in self.endpoints(namespace, service, ts) if e.ready or (e.serving and not e.terminating)]
            return self._put(key, (ready, frozenset(e.ip for e in ready)))

    def services_for_endpoint(self, ip, port=None, ts=None):
        t = ts - ts % S + S - 1
        key = ("sfe", ip, port, t)
        try:
            return self._memo[key]
        except KeyError:
            return self._put(key, self.index.services_for_endpoint(ip, port, t))

    def node_by_ip(self, ip, ts):
        t = ts - ts % S + S - 1
        key = ("node", ip, t)
        try:
            return self._memo[key]
        except KeyError:
            return self._put(key, self.index.node_by_ip(ip, t))

    def is_cluster_dns(self, ip, ts):
        t = ts - ts % S + S - 1
        key = ("dns", ip, t)
        try:
            return self._memo[key]
        except KeyError:
            return self._put(key, self.index.is_cluster_dns(ip, t))

    def objects(self, ts):
        return self.index.objects(self.at(ts))
