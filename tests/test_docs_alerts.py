"""docs/alerts.md, the runbook, stays true to the alert catalogue (streams/core/rules.py): one
section per rule, its severity and whether it breaks the chain as the table says, the latency
objectives as configured, and every lab case it names exists."""
from __future__ import annotations

import re
from pathlib import Path

from lab.net import services
from svctrace.streams.core import rules

DOC = (Path(__file__).resolve().parent.parent / "docs" / "alerts.md").read_text()
SECTIONS = dict(re.findall(r"^## `([a-z0-9_.]+)`\n\n(.*?)(?=^## |\Z)", DOC, re.S | re.M))


def test_one_section_per_rule():
    assert list(SECTIONS) == [r.id for r in rules.CATALOGUE]


def test_each_section_states_the_tables_severity_and_whether_it_breaks_the_chain():
    for rule in rules.CATALOGUE:
        first = SECTIONS[rule.id].split("\n\n")[0]
        assert first.startswith(rule.severity), (rule.id, first)
        if rule.cluster_severity:
            assert f"{rule.cluster_severity} for a name in the cluster domain" in first, rule.id
        assert ("Does not make the chain broken" in first) == (not rule.breaks), rule.id
        assert ("Makes the chain broken" in first) == rule.breaks, rule.id


def test_latency_objectives_are_the_configured_ones():
    stated = dict(re.findall(r"`(\w+)` (\d+) s", SECTIONS["svc.hop_latency"]))
    assert {hop: int(s) * rules.S for hop, s in stated.items()} == rules.LATENCY_OBJECTIVES_NS


def test_every_lab_case_named_exists():
    named = set()
    for text in SECTIONS.values():
        for line in re.findall(r"\*\*Reproduced by:\*\*(.*?)(?=\n\n|\n- |\Z)", text, re.S):
            for part in re.findall(r"lab (.*)", re.sub(r"\(.*?\)", "", line.replace("\n", " "))):
                named |= set(re.findall(r"`([a-z0-9-]+)`", part))
    cases = set(services.CASES) | set(services.UDP_CASES) | {services.HOST_RESOLVED, services.NO_SUCH_NAME,
                                                              services.DNS_RETRY, services.HAIRPIN, services.GO_CLIENT}
    assert named and named <= cases, named - cases
