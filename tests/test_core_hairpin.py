"""svc.hairpin: a pod that is one of its Service's endpoints reaches for the ClusterIP and nothing
accepts. That is what the seed's flushed-rules fault looks like from any other client
(svc.translation_missing); from an endpoint of the Service itself, the bridge's hairpin mode is
the first suspect (the network lab's `my-selfie` case shows it on a real kernel)."""
from __future__ import annotations

import dataclasses

from svctrace.streams.core import run
from tests.scenario import T0, Cluster, Scenario


def rules_of_unanswered_connect(client_is_endpoint: bool) -> set[str]:
    cluster = Cluster("rules_flushed")
    if client_is_endpoint:
        client = cluster.pods["client"]
        cluster.pods["client"] = dataclasses.replace(client, labels={"run": "my-nginx"})
    sc = Scenario(cluster, "dnat")
    sc.request(T0, "rules_flushed")
    result = run(sc.events(), cluster.index())
    [chain] = result.chains
    assert chain["status"] == "broken"
    return {a["rule"] for a in result.alerts}


def test_an_endpoint_reaching_its_own_service_points_at_hairpin_mode():
    rules = rules_of_unanswered_connect(client_is_endpoint=True)
    assert "svc.hairpin" in rules and "svc.translation_missing" not in rules


def test_any_other_client_reads_as_a_missing_translation():
    rules = rules_of_unanswered_connect(client_is_endpoint=False)
    assert "svc.translation_missing" in rules and "svc.hairpin" not in rules


def test_the_summary_asks_about_hairpin_mode():
    cluster = Cluster("rules_flushed")
    cluster.pods["client"] = dataclasses.replace(cluster.pods["client"], labels={"run": "my-nginx"})
    sc = Scenario(cluster, "dnat")
    sc.request(T0, "rules_flushed")
    [alert] = [a for a in run(sc.events(), cluster.index()).alerts if a["rule"] == "svc.hairpin"]
    assert alert["summary"].startswith("default/my-nginx: default/client, one of its endpoints, connected to it at "
                                       "10.96.0.100 and nothing answered")
    assert alert["summary"].endswith("is hairpin mode on for the pod's bridge port?")
