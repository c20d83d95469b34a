"""lab/apiserver/kubelab.py: the build recipe and a clean start/stop of its own control plane."""
from __future__ import annotations

import signal
import socket
import subprocess
import sys

import pytest

from tests.harness.apiserver import KUBELAB_PATH, kubelab


def test_staging_replace_lines_come_from_the_kubernetes_go_mod():
    gomod = ("module k8s.io/kubernetes\n\ngo 1.26.0\n\nrequire (\n\tgithub.com/x/y v1.2.3\n"
             "\tk8s.io/api v0.0.0\n\tk8s.io/client-go v0.0.0 // indirect\n\tk8s.io/utils v0.0.0-20250101\n)\n"
             "replace k8s.io/api => ./staging/src/k8s.io/api\n")
    assert kubelab.staging_replaces(gomod, "v1.37.2") == [("k8s.io/api", "v0.37.2"),
                                                         ("k8s.io/client-go", "v0.37.2")]
    text = kubelab.main_module("v1.37.2", "1.26.0", [("k8s.io/api", "v0.37.2")])
    assert "require k8s.io/kubernetes v1.37.2" in text
    assert "\tk8s.io/api => k8s.io/api v0.37.2" in text


def test_go_mod_without_staging_modules_is_a_clear_error():
    with pytest.raises(kubelab.ControlPlaneError, match="staging modules"):
        kubelab.staging_replaces("module x\n\nrequire k8s.io/api v0.30.0\n", "v1.37.2")


def _port_open(url: str) -> bool:
    host, port = url.rsplit("/", 1)[-1].rsplit(":", 1)
    with socket.socket() as s:
        s.settimeout(1)
        return s.connect_ex((host, int(port))) == 0


@pytest.mark.apiserver
def test_control_plane_starts_and_stops_cleanly(tmp_path, apiserver):
    # `apiserver` first: the shared session server has built (or found) the binary
    plane = kubelab.ControlPlane(tmp_path).start()
    try:
        status, body = plane.get("/readyz")
        assert (status, body.strip()) == (200, b"ok")
        assert _port_open(plane.url) and _port_open(plane.etcd_url)
    finally:
        codes = plane.stop()
    # etcd finishes its graceful shutdown by re-raising SIGTERM on itself; neither needed SIGKILL
    assert codes == {"kube-apiserver": 0, "etcd": -signal.SIGTERM}
    assert not _port_open(plane.url) and not _port_open(plane.etcd_url)


def test_lab_script_runs_by_hand():
    out = subprocess.run([sys.executable, str(KUBELAB_PATH), "--help"], capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    assert all(cmd in out.stdout for cmd in ("build", "up", "times"))


@pytest.mark.apiserver
def test_a_control_plane_that_cannot_start_says_why(tmp_path, monkeypatch):
    # a binary that dies at once stands in for any start failure; the real etcd is started and stopped
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    broken = kubelab.binary_path()
    broken.parent.mkdir(parents=True)
    broken.write_text("#!/bin/sh\necho 'Error: unknown flag: --bogus' >&2\nexit 3\n")
    broken.chmod(0o755)
    plane = kubelab.ControlPlane(tmp_path / "run")
    with pytest.raises(kubelab.ControlPlaneError, match=r"kube-apiserver exited with code 3[\s\S]*unknown flag"):
        plane.start()
    assert plane._procs == [], "etcd must be stopped when kube-apiserver fails"


def test_no_go_toolchain_is_a_clear_error(tmp_path, monkeypatch):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    monkeypatch.setenv("PATH", str(tmp_path))
    with pytest.raises(kubelab.ControlPlaneError, match="`go` is not on PATH"):
        kubelab.build()
