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


def test_a_repeated_warning_is_let_through_once_per_interval_with_its_count():
    from svctrace.logs import RepeatFilter

    now = [0.0]
    f = RepeatFilter(interval_s=10, clock=lambda: now[0])

    def record(msg, level=logging.ERROR, name="aiokafka"):
        return logging.LogRecord(name, level, __file__, 1, msg, ("127.0.0.1:1",), None)

    let = []
    for i in range(50):  # aiokafka's ~200 ms retry loop, for 10 s
        now[0] = i * 0.2
        r = record("Unable connect to %r")
        if f.filter(r):
            let.append(r.getMessage())
    now[0] = 10.0
    r = record("Unable connect to %r")
    assert f.filter(r) and r.getMessage() == "Unable connect to '127.0.0.1:1' (and 49 more like it in the last 10 s)"
    assert let == ["Unable connect to '127.0.0.1:1'"]
    assert f.filter(record("another message")) and f.filter(record("Unable connect to %r", name="other"))
    assert all(f.filter(record("debug %r", level=logging.DEBUG)) for _ in range(3))  # only warnings and worse


def test_a_worker_without_a_broker_says_so_in_one_line_and_exits_1(tmp_path):
    import subprocess
    import sys

    p = subprocess.run([sys.executable, "-m", "svctrace", "worker", "--bootstrap", "127.0.0.1:1", "--kafka-wait", "2",
                        "--metrics-addr", "", "--data-dir", str(tmp_path)], capture_output=True, text=True, timeout=120)
    assert p.returncode == 1
    lines = p.stderr.splitlines()
    from svctrace.memory import thp_mode

    mode = thp_mode()  # (this machine kind's: madvise; the worker started itself again with glibc's tunable)
    assert lines[0] == (f"svctrace worker: core compiled; huge pages: arenas on (transparent huge pages: {mode}), "
                        "malloc on (glibc.malloc.hugetlb=1); connecting to Kafka at 127.0.0.1:1 (up to 2 s)")
    assert lines[-1].startswith("svctrace worker: Kafka at 127.0.0.1:1 did not answer within 2s")
    assert len(lines) <= 4, p.stderr  # aiokafka's connection errors: once, not every ~200 ms
