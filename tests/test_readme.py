"""The README's topic table is what downstream consumers read first: it must list every
catalogue topic with its partition count and value schema."""
from __future__ import annotations

import re
from pathlib import Path

from svctrace.schemas.catalogue import load_catalogue

README = Path(__file__).resolve().parent.parent / "README.md"


def readme_topics() -> dict[str, tuple[int, str]]:
    rows = {}
    for line in README.read_text().splitlines():
        m = re.match(r"\| `(svctrace\.[a-z0-9.]+)` \|.*\| (\d+) \|[^|]*\| `([a-z0-9-]+)` \|$", line)
        if m:
            rows[m.group(1)] = (int(m.group(2)), m.group(3))
    return rows


def test_readme_topic_table_matches_the_catalogue():
    want = {t.name: (t.partitions, t.value_schema) for t in load_catalogue().values()}
    assert readme_topics() == want
