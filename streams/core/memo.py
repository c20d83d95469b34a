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
_MAX_SECONDS = 1024  # seconds whose answers are kept (besides max_entries answers in all)


class _Second:
    """The answers of one second, a table per question (keyed by its arguments but the time)."""

    __slots__ = ("t", "pod", "cid", "svc", "eps", "ready", "sfe", "node", "dns")

    def __init__(self, t: int) -> None:
        self.t = t  # the instant its questions are asked for: the end of the second
        self.pod, self.cid, self.svc, self.eps, self.ready, self.sfe, self.node, self.dns = {}, {}, {}, {}, {}, {}, {}, {}


class MemoIndex:
    # A hit costs two comparisons (is ts in the last second asked about?) and one dict lookup
    # (no division, no tuple with the time: timestamps are multi-digit ints, slow to divide,
    # hash and compare). These run per connection and per chain.

    def __init__(self, index, max_entries: int = 65536):
        self.index = index
        self.max_entries = max_entries
        self._seconds: dict[int, _Second] = {}
        self._entries = 0
        self._lo = self._hi = 0  # the bounds [lo, hi) of the last second asked about: self._cur
        self._cur: _Second | None = None

    def __len__(self) -> int:
        """How many answers it holds."""
        return self._entries

    def invalidate(self) -> None:
        """Forget every answer (call after applying records to the index)."""
        self._seconds.clear()
        self._entries = 0
        self._lo = self._hi = 0
        self._cur = None

    def _second(self, ts: int) -> _Second:
        """The answers of ts's second (made the current one)."""
        s = ts // S
        sec = self._seconds.get(s)
        if sec is None:
            if len(self._seconds) >= _MAX_SECONDS:
                self.invalidate()
            sec = self._seconds[s] = _Second(s * S + S - 1)
        self._lo = lo = s * S
        self._hi = lo + S
        self._cur = sec
        return sec

    def _added(self) -> None:
        self._entries += 1
        if self._entries >= self.max_entries:
            self.invalidate()  # bounded: answers are pure, so forgetting them changes none

    @staticmethod
    def at(ts: int) -> int:
        """The instant a question about time ts is asked for: the end of its second."""
        return ts - ts % S + S - 1

    def pod_by_ip(self, ip, ts):
        sec = self._cur if self._lo <= ts < self._hi else self._second(ts)
        try:
            return sec.pod[ip]
        except KeyError:
            v = sec.pod[ip] = self.index.pod_by_ip(ip, sec.t)
            self._added()
            return v

    def pod_by_container(self, container_id, ts):
        # by the second too: an answer given before the pod's record arrived is not kept
        sec = self._cur if self._lo <= ts < self._hi else self._second(ts)
        try:
            return sec.cid[container_id]
        except KeyError:
            v = sec.cid[container_id] = self.index.pod_by_container(container_id)
            self._added()
            return v

    def service_by_ip(self, ip, port=None, protocol="TCP", ts=None):
        sec = self._cur if self._lo <= ts < self._hi else self._second(ts)
        key = (ip, port, protocol)
        try:
            return sec.svc[key]
        except KeyError:
            v = sec.svc[key] = self.index.service_by_ip(ip, port, protocol, sec.t)
            self._added()
            return v

    def endpoints(self, namespace, service, ts):
        sec = self._cur if self._lo <= ts < self._hi else self._second(ts)
        key = (namespace, service)
        try:
            return sec.eps[key]
        except KeyError:
            v = sec.eps[key] = self.index.endpoints(namespace, service, sec.t)
            self._added()
            return v

    def ready_endpoints(self, namespace, service, ts) -> tuple[list, frozenset]:
        """endpoints() that take traffic (ready, or serving and not terminating), and their
        IPs; callers only read them (every chain of a Service in that second shares them)."""
        sec = self._cur if self._lo <= ts < self._hi else self._second(ts)
        key = (namespace, service)
        try:
            return sec.ready[key]
        except KeyError:
            ready = [e for e in self.endpoints(namespace, service, ts) if e.ready or (e.serving and not e.terminating)]
            v = (ready, frozenset(e.ip for e in ready))
            sec = self._cur if self._lo <= ts < self._hi else self._second(ts)  # (endpoints() may have cleared it all)
            sec.ready[key] = v
            self._added()
            return v

    def services(self, ts):
        """(not memoized: the stitch stage keeps what it makes of them, _nxdomain_hint)"""
        return self.index.services(ts)

    def selected_pods(self, namespace, selector, ts):
        """(not memoized: the stitch stage keeps what it makes of them, _no_endpoints_why)"""
        return self.index.selected_pods(namespace, selector, ts)

    def dns_services(self, ts):
        """(not memoized: the stitch stage keeps what it makes of them, _dns_server_at)"""
        return self.index.dns_services(ts)

    def endpoint_standing(self, namespace, service, ip, ts):
        """(not memoized: asked only for an alert on a misrouted request)"""
        return self.index.endpoint_standing(namespace, service, ip, ts)

    def services_for_endpoint(self, ip, port=None, ts=None):
        sec = self._cur if self._lo <= ts < self._hi else self._second(ts)
        key = (ip, port)
        try:
            return sec.sfe[key]
        except KeyError:
            v = sec.sfe[key] = self.index.services_for_endpoint(ip, port, sec.t)
            self._added()
            return v

    def node_by_ip(self, ip, ts):
        sec = self._cur if self._lo <= ts < self._hi else self._second(ts)
        try:
            return sec.node[ip]
        except KeyError:
            v = sec.node[ip] = self.index.node_by_ip(ip, sec.t)
            self._added()
            return v

    def is_cluster_dns(self, ip, ts):
        sec = self._cur if self._lo <= ts < self._hi else self._second(ts)
        try:
            return sec.dns[ip]
        except KeyError:
            v = sec.dns[ip] = self.index.is_cluster_dns(ip, sec.t)
            self._added()
            return v

    def service(self, namespace, name, ts):
        """The Service as of the end of ts's second; not kept (asked only of a failed NodePort connect)."""
        return self.index.service(namespace, name, self.at(ts))

    def objects(self, ts):
        return self.index.objects(self.at(ts))

    def network_policies(self, namespace, ts):
        """(not memoized: asked only to explain a connection that went nowhere, policy.py)"""
        return self.index.network_policies(namespace, ts)

    def namespace(self, name, ts):
        """(not memoized: as network_policies)"""
        return self.index.namespace(name, ts)
