"""`svctrace metadata` as a process against the real kube-apiserver."""
from __future__ import annotations

import signal
import socket
import subprocess
import sys
import urllib.request

import kubernetes.client as k8s
import orjson
import pytest

from tests.metadata.test_watcher_apiserver import make_pod, wait_for

pytestmark = pytest.mark.apiserver


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _lines(path):
    return [orjson.loads(x) for x in path.read_bytes().splitlines()] if path.exists() else []


def test_once_writes_a_snapshot(apiserver, tmp_path):
    ns = apiserver.new_namespace("cli")
    with apiserver.api_client() as client:
        make_pod(k8s.CoreV1Api(client), ns, "p", ip="10.244.7.70")
    out = tmp_path / "snap.jsonl"
    proc = subprocess.run([sys.executable, "-m", "svctrace", "metadata", "--kubeconfig", apiserver.kubeconfig,
                           "--once", "--output", str(out)], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    records = _lines(out)
    [pod] = [r for r in records if r["kind"] == "Pod" and r["namespace"] == ns]
    assert pod["pod"]["ips"] == ["10.244.7.70"]
    assert any(r["kind"] == "Namespace" and r["name"] == ns for r in records)


def test_long_running_with_lease_metrics_and_clean_shutdown(apiserver, tmp_path):
    ns = apiserver.new_namespace("clilease")
    out, port = tmp_path / "objects.jsonl", _free_port()
    proc = subprocess.Popen([sys.executable, "-m", "svctrace", "metadata", "--kubeconfig", apiserver.kubeconfig,
                             "--output", str(out), "--metrics-addr", f"127.0.0.1:{port}",
                             "--lease-name", "svctrace-cli", "--lease-namespace", ns, "--lease-identity", "cli-1",
                             "--lease-duration", "3", "--renew-deadline", "2", "--retry-period", "0.3"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    client = apiserver.api_client()
    try:
        def metrics():
            try:
                return urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=2).read().decode()
            except OSError:
                return ""
        wait_for("leader metric", lambda: "svctrace_metadata_leader 1.0" in metrics())
        make_pod(k8s.CoreV1Api(client), ns, "q", ip="10.244.7.71")
        wait_for("pod in the output", lambda: any(r["name"] == "q" and r.get("pod", {}).get("ips")
                                                  for r in _lines(out)))
        assert 'svctrace_metadata_published_total{kind="Pod",op="upsert"}' in metrics()
        lease = k8s.CoordinationV1Api(client).read_namespaced_lease("svctrace-cli", ns)
        assert lease.spec.holder_identity == "cli-1"
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            _, stderr = proc.communicate(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
            _, stderr = proc.communicate()
    assert proc.returncode == 0, stderr
    # Released on shutdown: a standby can take over at once.
    assert k8s.CoordinationV1Api(client).read_namespaced_lease("svctrace-cli", ns).spec.holder_identity is None
    client.close()
