"""Every object the chart renders validates strictly against the Kubernetes 1.29..1.37 schemas
bundled in kubernetes-validate. A missing schema is a failure, not a warning (the CLI only warns)."""
from __future__ import annotations

import json

import kubernetes_validate
import pytest
from kubernetes_validate.utils import SchemaNotFoundError, all_versions, major_minor

from tests.harness.helm import VALUE_CASES, helm  # noqa: F401

KUBERNETES_VERSIONS = [f"1.{minor}" for minor in range(29, 38)]
# Kinds from CRDs that no Kubernetes schema covers: checked structurally in test_helm_chart.py
# (selector and port against the metrics Services). Anything else without a schema fails.
CRD_KINDS = {("monitoring.coreos.com/v1", "ServiceMonitor")}


@pytest.fixture(scope="module")
def objects(helm) -> list[tuple[str, dict]]:
    """(case, object) for every case, each distinct object once."""
    seen, out = set(), []
    for case, values in VALUE_CASES.items():
        for doc in helm.render(values):
            key = json.dumps(doc, sort_keys=True)
            if key not in seen:
                seen.add(key)
                out.append((case, doc))
    return out


def test_every_version_is_bundled():
    """kubernetes-validate 1.37.0 ships 1.25..1.37; validating against a version it lacks would
    silently fall back to an older schema, so each one tested must be there exactly."""
    bundled = {major_minor(v) for v in all_versions()}
    missing = [v for v in KUBERNETES_VERSIONS if v not in bundled]
    assert not missing, f"kubernetes-validate {kubernetes_validate.__version__} lacks schemas for {missing}"


@pytest.mark.parametrize("version", KUBERNETES_VERSIONS)
def test_rendered_objects_validate_strictly(objects, version):
    failures, kinds = [], set()
    for case, doc in objects:
        where = f"[{case}] {doc['kind']}/{doc['metadata']['name']}"
        if (doc["apiVersion"], doc["kind"]) in CRD_KINDS:
            with pytest.raises(SchemaNotFoundError):  # still true: else drop it from CRD_KINDS
                kubernetes_validate.validate(doc, f"{version}.0", strict=True)
            continue
        try:
            validated = kubernetes_validate.validate(doc, f"{version}.0", strict=True)
        except SchemaNotFoundError as exc:
            failures.append(f"{where}: no schema ({exc.message})")
            continue
        except kubernetes_validate.ValidationError as exc:
            failures.append(f"{where}: {'.'.join(map(str, exc.path))}: {exc.message}")
            continue
        assert validated == version, f"{where} validated against {validated}, not {version}"
        kinds.add(doc["kind"])
    assert not failures, "\n".join(failures)
    assert kinds >= {"DaemonSet", "Deployment", "Job", "Pod", "ConfigMap", "ServiceAccount", "ClusterRole",
                     "ClusterRoleBinding", "Role", "RoleBinding", "PodDisruptionBudget", "PriorityClass", "Service"}


def test_strict_validation_catches_an_unknown_field(objects):
    """The check has teeth: a misspelled field fails strict validation."""
    ds = next(doc for _, doc in objects if doc["kind"] == "DaemonSet")
    broken = json.loads(json.dumps(ds))
    broken["spec"]["template"]["spec"]["hostPid"] = True
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(broken, "1.29.0", strict=True)
