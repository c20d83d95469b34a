"""Prometheus /metrics of the worker (prometheus-client, its own registry, loopback by default)."""
from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

from svctrace import metrics_http


def _arena_bytes(field: str) -> int:
    from svctrace.streams.core import arenas

    stats = arenas.stats()
    return 0 if stats is None else stats[field] << 20  # (1 MiB arenas)


class WorkerMetrics:
    def __init__(self) -> None:
        self.registry = r = CollectorRegistry()
        self.records = Counter("svctrace_worker_records", "Input records processed", ["stage"], registry=r)
        self.events = Counter("svctrace_worker_events", "Input events processed", ["stage"], registry=r)
        self.progress_records = Counter("svctrace_worker_progress_records",
                                        "Progress-only input records (watermark announcements without data)",
                                        ["stage"], registry=r)
        self.outputs = Counter("svctrace_worker_outputs", "Records published, by topic", ["topic"], registry=r)
        self.deadletters = Counter("svctrace_worker_deadletters", "Records sent to the dead-letter topic",
                                   ["stage"], registry=r)
        self.checkpoints = Counter("svctrace_worker_checkpoints", "State checkpoints written to the changelogs",
                                   registry=r)
        self.checkpoint_bytes = Counter("svctrace_worker_checkpoint_bytes",
                                        "Operator state bytes written to the changelogs (durable state of changed keys)",
                                        ["stage"], registry=r)
        self.checkpoint_blocking = Histogram(
            "svctrace_worker_checkpoint_blocking_seconds",
            "How long a checkpoint held the worker's event loop at once (its cut of every stage's state, each slice "
            "of the stitch entries it serializes between records, the store taking them): records wait meanwhile",
            buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0), registry=r)
        self.watermark = Gauge("svctrace_worker_watermark_seconds", "Event-time watermark of each stage",
                               ["stage"], registry=r)
        self.sources_done = Gauge("svctrace_worker_sources_done",
                                  "Syscalls partitions of this worker at their end of input (caught up, idle, flushed)",
                                  registry=r)
        self.index_objects = Gauge("svctrace_worker_cluster_objects", "Kubernetes objects in the ClusterIndex",
                                   registry=r)
        self.late = Counter("svctrace_worker_late_events", "Events dropped as behind their key's watermark "
                            "(late; after a restart or rebalance also re-read ones already applied)",
                            ["stage"], registry=r)
        self.dups = Counter("svctrace_worker_duplicate_events", "Events dropped as repeats of one already applied",
                            ["stage"], registry=r)
        for stage in ("enrich", "stitch"):  # exported at 0 from the start
            self.late.labels(stage), self.dups.labels(stage)
        # The memory huge_page_arenas() keeps (svctrace.memory): freed arenas are not returned, so RSS stays at
        # its peak; this says how much of it is free for the next objects. 0 while it is off.
        self.huge_page_arenas = Gauge("svctrace_worker_huge_page_arena_bytes",
                                      "pymalloc's arenas on transparent huge pages: in use, and freed but kept "
                                      "for reuse (0 when off: SVCTRACE_HUGE_PAGES=0, no THP, core not compiled)",
                                      ["state"], registry=r)
        for state, field in (("in_use", "arenas"), ("kept_free", "free")):
            self.huge_page_arenas.labels(state).set_function(lambda field=field: _arena_bytes(field))
        self.server = None
        self._children: dict = {}

    def child(self, metric, label: str):
        """metric.labels(label), kept: prometheus-client's labels() checks its arguments and takes a lock at
        every call (~0.7 us), and the worker counts by stage or topic per record and per output call."""
        key = (id(metric), label)  # (the metrics live as long as this object)
        child = self._children.get(key)
        if child is None:
            child = self._children[key] = metric.labels(label)
        return child

    def serve(self, addr: str) -> tuple[str, int]:
        """Start the HTTP endpoint at host:port (port 0 = any free port); returns the bound address."""
        self.server, host, port = metrics_http.serve(self.registry, addr)
        return host, port
