"""Shared test setup.

Real components (Kafka, kube-apiserver, sysdig, the kernel) are started or
installed by fixtures in tests/harness/; when one cannot start, the test fails
loudly — it is never silently skipped.
"""
from __future__ import annotations

import os
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
IN_CI = os.environ.get("CI", "").lower() == "true"


def captures_dir() -> Path:
    """Public .scap captures: SVCTRACE_CAPTURES, default ../shared/captures beside the clone."""
    return Path(os.environ.get("SVCTRACE_CAPTURES", REPO.parent / "shared" / "captures")).resolve()


@pytest.fixture(scope="session")
def captures() -> Path:
    """The folder of public captures. Absent: skipped with the reason, except under CI=true."""
    d = captures_dir()
    if not d.is_dir():
        reason = f"public captures not found at {d} (set SVCTRACE_CAPTURES)"
        if IN_CI:
            pytest.fail(reason + "; CI=true requires them")
        pytest.skip(reason)
    return d


def capture_files() -> list[Path]:
    d = captures_dir()
    return sorted(d.glob("*.scap")) if d.is_dir() else []


@pytest.fixture(scope="session")
def apiserver(tmp_path_factory, pytestconfig):
    """The real kube-apiserver + etcd (tests/harness/apiserver.py); built on first use, fails loudly."""
    from tests.harness.apiserver import ControlPlaneError, running_apiserver

    reporter = pytestconfig.pluginmanager.get_plugin("terminalreporter")
    notify = (lambda msg: reporter.write_line(f"[apiserver] {msg}")) if reporter else (lambda msg: None)
    try:
        with running_apiserver(tmp_path_factory.mktemp("apiserver"), notify) as server:
            yield server
    except ControlPlaneError as exc:
        pytest.fail(f"kube-apiserver could not start: {exc}", pytrace=False)


@pytest.fixture(scope="session")
def kafka():
    """A real Apache Kafka broker with the catalogue's topics (tests/harness/kafka.py).

    SVCTRACE_KAFKA=host:port uses an existing broker; one that cannot start fails the tests."""
    from tests.harness.kafka import BrokerError, kafka_session

    try:
        with kafka_session() as k:
            yield k
    except BrokerError as exc:
        pytest.fail(f"Kafka could not start: {exc}", pytrace=False)
