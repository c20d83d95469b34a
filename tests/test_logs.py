"""One log level for every long-running command: -v, else $SVCTRACE_LOG_LEVEL (the chart's
`logLevel`), else the command's default."""
from __future__ import annotations

import json
import logging
from pathlib import Path

import pytest

from svctrace.logs import LEVEL_ENV, LEVELS, log_level

CHART = Path(__file__).resolve().parent.parent / "helm" / "svctrace"


def test_the_environment_sets_the_level_and_verbose_overrides_it(monkeypatch):
    monkeypatch.delenv(LEVEL_ENV, raising=False)
    assert log_level(False, default="warning") == logging.WARNING
    monkeypatch.setenv(LEVEL_ENV, "DEBUG ")
    assert log_level(False, default="warning") == logging.DEBUG
    assert log_level(True, default="warning", verbose_level="info") == logging.INFO


def test_a_bad_level_stops_the_command_with_its_name(monkeypatch):
    monkeypatch.setenv(LEVEL_ENV, "verbose")
    with pytest.raises(SystemExit, match="SVCTRACE_LOG_LEVEL='verbose'"):
        log_level(False, default="info")


def test_every_level_the_chart_allows_is_one_the_commands_read():
    schema = json.loads((CHART / "values.schema.json").read_text())
    allowed = schema["properties"]["logLevel"]["enum"]
    assert allowed and set(allowed) <= set(LEVELS)
    assert LEVEL_ENV in (CHART / "templates" / "_helpers.tpl").read_text()
