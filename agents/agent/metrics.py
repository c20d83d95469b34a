"""Prometheus /metrics of the agent (prometheus-client, its own registry)."""
from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge

from svctrace import metrics_http


class AgentMetrics:
    def __init__(self, node: str, source: str) -> None:
        self.registry = CollectorRegistry()
        self.node = node
        labels = {"node": node, "source": source}
        r = self.registry

        def counter(name: str, doc: str):
            return Counter(name, doc, list(labels), registry=r).labels(**labels)

        self.captured = counter("svctrace_agent_events_captured", "Events read from the kernel or file")
        self.published_ = counter("svctrace_agent_events_published", "Events acknowledged by the sink")
        self.dropped = counter("svctrace_agent_events_dropped", "Events dropped by the agent (buffer overflow)")
        self.lost = counter("svctrace_agent_events_lost", "Events lost before the agent saw them (ring drops)")
        self.redacted = counter("svctrace_agent_events_redacted", "Events whose payload had credentials masked")
        self.batches = counter("svctrace_agent_batches_published", "Batches acknowledged by the sink")
        self.buffer = Gauge("svctrace_agent_buffer_events", "Events waiting in the bounded buffer",
                            list(labels), registry=r).labels(**labels)
        self.kernel_drops = Gauge("svctrace_agent_kernel_drops", "Ring-buffer drops counted per CPU by the BPF program",
                                  ["node", "cpu"], registry=r)
        self._last: dict[str, int] = {}
        self.server = None

    def serve(self, addr: str) -> tuple[str, int]:
        """Start the HTTP endpoint at host:port (port 0 = any free port); returns the bound address."""
        self.server, host, port = metrics_http.serve(self.registry, addr)
        return host, port

    def buffered(self, events: int) -> None:
        self.buffer.set(events)

    def published(self, events: int) -> None:
        pass  # counted from the cumulative counters in update()

    def update(self, counters, buffered: int, per_cpu_drops: list[int] | None = None) -> None:
        for name in ("captured", "published", "dropped", "lost", "redacted", "batches"):
            value = getattr(counters, name)
            metric = self.published_ if name == "published" else getattr(self, name)
            metric.inc(max(0, value - self._last.get(name, 0)))
            self._last[name] = value
        self.buffer.set(buffered)
        for cpu, n in enumerate(per_cpu_drops or ()):
            self.kernel_drops.labels(node=self.node, cpu=str(cpu)).set(n)

    def close(self) -> None:
        if self.server is not None:
            self.server.shutdown()
            self.server.server_close()
            self.server = None
