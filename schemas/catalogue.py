"""The topic catalogue (topics.yaml), read by code, tests and the Helm chart."""
from __future__ import annotations

from dataclasses import dataclass
from functools import cache
from pathlib import Path

import yaml

HERE = Path(__file__).resolve().parent
CATALOGUE_FILE = HERE / "topics.yaml"


@dataclass(frozen=True, slots=True)
class Topic:
    name: str
    key: str
    value_schema: str
    partitions: int
    cleanup_policy: str
    retention_ms: int
    description: str
    min_compaction_lag_ms: int | None = None  # a compacted topic's versions kept at least this long


    @property
    def compacted(self) -> bool:
        return "compact" in self.cleanup_policy

    def kafka_config(self) -> dict[str, str]:
        """Topic-level configs as Kafka expects them in CreateTopics."""
        configs = {"cleanup.policy": self.cleanup_policy, "retention.ms": str(self.retention_ms)}
        if self.min_compaction_lag_ms is not None:
            configs["min.compaction.lag.ms"] = str(self.min_compaction_lag_ms)
        return configs


@cache
def load_catalogue(path: Path = CATALOGUE_FILE) -> dict[str, Topic]:
    doc = yaml.safe_load(Path(path).read_text())
    topics = {}
    for entry in doc["topics"]:
        t = Topic(**entry)
        if not (HERE / f"{t.value_schema}.schema.json").is_file():
            raise ValueError(f"{path}: topic {t.name} names unknown schema {t.value_schema!r}")
        topics[t.name] = t
    return topics


def topic(name: str) -> Topic:
    """Look a topic up by name; a typo fails loudly instead of creating a new topic."""
    try:
        return load_catalogue()[name]
    except KeyError:
        raise KeyError(f"{name!r} is not in the topic catalogue {CATALOGUE_FILE.name}") from None


# Names used in code; tests check each one is in the catalogue.
SYSCALLS = "svctrace.syscalls"
K8S_OBJECTS = "svctrace.k8s.objects"
FLOWS = "svctrace.flows"
ENRICHED = "svctrace.events.enriched"
CHAINS = "svctrace.chains"
ALERTS = "svctrace.alerts"
ALERT_OCCURRENCES = "svctrace.alerts.occurrences"
DEADLETTER = "svctrace.deadletter"
AGENT_STATS = "svctrace.agent.stats"

# A live agent's svctrace.syscalls records carry this header: a time (ns, decimal ASCII) before which every
# event of the record's node is in this record or an earlier one. A worker may take the node's events up to
# it without waiting out its lateness. Replays and older agents send none.
COMPLETE_HEADER = "svctrace-complete"
