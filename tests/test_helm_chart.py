"""The Helm chart rendered by the real helm v3.19: lint, the objects it makes, and what they promise."""
from __future__ import annotations

import json
import shutil

import pytest
import yaml

from svctrace.schemas.catalogue import CATALOGUE_FILE, load_catalogue
from tests.harness.helm import CHART, DIGEST, HELM_VERSION, SECRET_SASL, SECRET_TLS, VALUE_CASES, helm  # noqa: F401

STANDARD_LABELS = ("app.kubernetes.io/name", "app.kubernetes.io/instance", "app.kubernetes.io/version",
                   "app.kubernetes.io/managed-by", "app.kubernetes.io/component", "app.kubernetes.io/part-of",
                   "helm.sh/chart")
CASES = sorted(VALUE_CASES)


@pytest.fixture(scope="module")
def rendered(helm) -> dict[str, list[dict]]:
    return {case: helm.render(VALUE_CASES[case]) for case in CASES}


def only(docs: list[dict], kind: str, component: str | None = None) -> dict:
    found = [d for d in docs if d["kind"] == kind
             and (component is None or d["metadata"]["labels"]["app.kubernetes.io/component"] == component)]
    assert len(found) == 1, f"expected one {kind} {component or ''}, got {[d['metadata']['name'] for d in found]}"
    return found[0]


def pod_spec(obj: dict) -> dict:
    return obj["spec"] if obj["kind"] == "Pod" else obj["spec"]["template"]["spec"]


def container(obj: dict) -> dict:
    containers = pod_spec(obj)["containers"]
    assert len(containers) == 1
    return containers[0]


def env_of(c: dict) -> dict[str, dict]:
    return {e["name"]: e for e in c.get("env", [])}


def test_helm_is_the_pinned_v3(helm):
    assert helm.version() == f"v{HELM_VERSION}"


@pytest.mark.parametrize("case", CASES)
def test_lint_strict(helm, case):
    proc = helm.lint(VALUE_CASES[case])
    assert "1 chart(s) linted, 0 chart(s) failed" in proc.stdout
    assert "[WARNING]" not in proc.stdout and "[ERROR]" not in proc.stdout, proc.stdout


@pytest.mark.parametrize("kube_version", ["1.29.0", "1.37.0"])
def test_kube_version_constraint(helm, kube_version):
    assert helm.render({}, kube_version=kube_version)
    old = helm.template({}, kube_version="1.28.0", check=False)
    assert old.returncode != 0 and "kubeVersion" in old.stderr


@pytest.mark.parametrize("case", CASES)
def test_every_object_has_the_standard_labels(rendered, case):
    for doc in rendered[case]:
        labels = doc["metadata"]["labels"]
        missing = [k for k in STANDARD_LABELS if k not in labels]
        assert not missing, f"{doc['kind']}/{doc['metadata']['name']} lacks {missing}"
        assert labels["app.kubernetes.io/name"] == "svctrace"
        assert labels["app.kubernetes.io/instance"] == "svctrace"
        assert labels["app.kubernetes.io/managed-by"] == "Helm"
        if "spec" in doc and "template" in doc.get("spec", {}):
            pod_labels = doc["spec"]["template"]["metadata"]["labels"]
            assert all(k in pod_labels for k in STANDARD_LABELS)
            selector = doc["spec"].get("selector", {}).get("matchLabels")
            if selector:  # the selector must pick the pods, and never the (changing) version
                assert selector.items() <= pod_labels.items()
                assert "app.kubernetes.io/version" not in selector


@pytest.mark.parametrize("case", CASES)
def test_names_are_unique_per_kind(rendered, case):
    keys = [(d["kind"], d["metadata"]["name"]) for d in rendered[case]]
    assert len(keys) == len(set(keys))


def test_agent_daemonset_least_privilege(rendered):
    ds = only(rendered["defaults"], "DaemonSet", "agent")
    spec = pod_spec(ds)
    assert spec["hostPID"] is True
    assert not spec.get("hostNetwork") and not spec.get("hostIPC")
    assert spec["automountServiceAccountToken"] is False
    c = container(ds)
    sc = c["securityContext"]
    assert sc["privileged"] is False and sc["allowPrivilegeEscalation"] is False
    assert sc["capabilities"]["drop"] == ["ALL"]
    assert sc["capabilities"]["add"] == ["BPF", "PERFMON", "SYS_RESOURCE"]
    assert "SYS_ADMIN" not in sc["capabilities"]["add"]
    assert sc["seccompProfile"] == {"type": "RuntimeDefault"}
    assert sc["readOnlyRootFilesystem"] is True
    # every node, tainted ones included, and the node name from the downward API
    assert {"operator": "Exists"} in spec["tolerations"]
    assert env_of(c)["NODE_NAME"]["valueFrom"] == {"fieldRef": {"fieldPath": "spec.nodeName"}}
    assert "--node=$(NODE_NAME)" in c["args"] and c["args"][0] == "agent"
    assert c["resources"]["requests"] and c["resources"]["limits"]["memory"]
    assert "priorityClassName" not in spec


def test_agent_mounts_are_read_only_and_exactly_the_kernel_interfaces(rendered):
    for case in ("defaults", "everything"):
        ds = only(rendered[case], "DaemonSet", "agent")
        mounts = {m["mountPath"]: m for m in container(ds)["volumeMounts"]}
        host_paths = {v["name"]: v["hostPath"]["path"] for v in pod_spec(ds)["volumes"] if "hostPath" in v}
        expected = {"tracefs": "/sys/kernel/tracing", "btf": "/sys/kernel/btf", "cgroup": "/sys/fs/cgroup"}
        if case == "everything":
            expected["debugfs"] = "/sys/kernel/debug"
        assert host_paths == expected
        for name, path in expected.items():
            assert mounts[path]["name"] == name and mounts[path]["readOnly"] is True


def test_agent_privileged_only_as_explicit_opt_in(rendered):
    for case in CASES:
        if case == "agent-only" or VALUE_CASES[case].get("agent", {}).get("privileged"):
            continue
        assert container(only(rendered[case], "DaemonSet", "agent"))["securityContext"]["privileged"] is False
    ds = only(rendered["privileged-opt-in"], "DaemonSet", "agent")
    sc = container(ds)["securityContext"]
    assert sc["privileged"] is True and "capabilities" not in sc
    assert pod_spec(ds)["priorityClassName"] == "system-node-critical"
    tracefs = next(v for v in pod_spec(ds)["volumes"] if v["name"] == "tracefs")
    assert tracefs["hostPath"]["path"] == "/sys/kernel/debug/tracing"


def test_agent_priority_class_created_on_request(rendered):
    docs = rendered["everything"]
    pc = only(docs, "PriorityClass")
    assert pc["value"] == 2000000 and pc["globalDefault"] is False
    assert pod_spec(only(docs, "DaemonSet", "agent"))["priorityClassName"] == pc["metadata"]["name"]


@pytest.mark.parametrize("component", ["worker", "metadata"])
def test_worker_and_metadata_run_as_non_root_with_probes(rendered, component):
    for case in ("defaults", "everything"):
        dep = only(rendered[case], "Deployment", component)
        spec = pod_spec(dep)
        assert spec["securityContext"]["runAsNonRoot"] is True and spec["securityContext"]["runAsUser"] > 0
        assert spec["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}
        assert not spec.get("hostPID") and not spec.get("hostNetwork")
        c = container(dep)
        assert c["args"][0] == component
        sc = c["securityContext"]
        assert sc["allowPrivilegeEscalation"] is False and sc["privileged"] is False
        assert sc["capabilities"] == {"drop": ["ALL"]}
        port = next(p for p in c["ports"] if p["name"] == "metrics")
        for probe in ("livenessProbe", "readinessProbe"):
            assert c[probe]["httpGet"]["port"] == "metrics", probe
        assert c["resources"]["requests"]["cpu"]
        assert 1024 <= port["containerPort"] <= 65535


def test_worker_replicas_and_pdb(rendered):
    dep = only(rendered["defaults"], "Deployment", "worker")
    pdb = only(rendered["defaults"], "PodDisruptionBudget", "worker")
    assert dep["spec"]["replicas"] == 2 and pdb["spec"] == {
        "maxUnavailable": 1, "selector": {"matchLabels": dep["spec"]["selector"]["matchLabels"]}}
    assert pod_spec(dep)["automountServiceAccountToken"] is False
    pdb = only(rendered["everything"], "PodDisruptionBudget", "worker")
    assert pdb["spec"]["minAvailable"] == "50%" and "maxUnavailable" not in pdb["spec"]
    assert only(rendered["everything"], "Deployment", "worker")["spec"]["replicas"] == 4


def test_metadata_one_active_replica_by_lease(rendered):
    docs = rendered["defaults"]
    dep = only(docs, "Deployment", "metadata")
    c = container(dep)
    lease = "svctrace-metadata"
    assert f"--lease-name={lease}" in c["args"] and "--identity=$(POD_NAME)" in c["args"]
    assert env_of(c)["POD_NAMESPACE"]["valueFrom"] == {"fieldRef": {"fieldPath": "metadata.namespace"}}
    role = only(docs, "Role")
    assert role["metadata"]["namespace"] == "svctrace"
    named = [r for r in role["rules"] if r.get("resourceNames")]
    assert named and all(r["resourceNames"] == [lease] for r in named)
    # without leader election: one replica, never two at once
    dep = only(rendered["everything"], "Deployment", "metadata")
    assert dep["spec"]["replicas"] == 1 and dep["spec"]["strategy"] == {"type": "Recreate"}
    assert not [d for d in rendered["everything"] if d["kind"] in ("Role", "RoleBinding")]
    assert "--lease-name=svctrace-metadata-leader" in container(only(rendered["privileged-opt-in"], "Deployment",
                                                                      "metadata"))["args"]


def test_image_by_tag_or_digest(rendered):
    images = {container(d)["image"] for d in rendered["defaults"] if d["kind"] in ("DaemonSet", "Deployment", "Job", "Pod")}
    assert images == {"svctrace/svctrace:0.1.0"}
    images = {container(d)["image"] for d in rendered["everything"] if d["kind"] in ("DaemonSet", "Deployment", "Job", "Pod")}
    assert images == {f"registry.example:5000/obs/svctrace:0.1.0-rc1@{DIGEST}"}


def kafka_clients(docs: list[dict]) -> list[dict]:
    return [d for d in docs if d["kind"] in ("DaemonSet", "Deployment", "Job", "Pod")]


def test_kafka_settings_without_tls_or_sasl(rendered):
    cm = only(rendered["defaults"], "ConfigMap", "config")
    assert cm["data"]["SVCTRACE_BOOTSTRAP"] == "kafka:9092"
    assert cm["data"]["SVCTRACE_KAFKA_SECURITY_PROTOCOL"] == "PLAINTEXT"
    for d in kafka_clients(rendered["defaults"]):
        assert not [v for v in pod_spec(d)["volumes"] if "secret" in v]


def test_kafka_tls_and_sasl_come_from_existing_secrets(rendered):
    docs = rendered["everything"]
    cm = only(docs, "ConfigMap", "config")
    assert cm["data"]["SVCTRACE_BOOTSTRAP"] == "broker-0.kafka:9093,broker-1.kafka:9093,[fd00::1]:9093"
    assert cm["data"]["SVCTRACE_KAFKA_SECURITY_PROTOCOL"] == "SASL_SSL"
    assert cm["data"]["SVCTRACE_KAFKA_SASL_MECHANISM"] == "SCRAM-SHA-256"
    assert cm["data"]["SVCTRACE_KAFKA_SSL_CERTFILE"].endswith("/tls.crt")
    assert not any("password" in v.lower() for v in cm["data"].values())
    assert not [d for d in docs if d["kind"] == "Secret"], "the chart must never create or copy a Secret"
    clients = kafka_clients(docs)
    assert {d["kind"] for d in clients} == {"DaemonSet", "Deployment", "Job", "Pod"}
    for d in clients:
        env = env_of(container(d))
        for var, key in (("SVCTRACE_KAFKA_SASL_USERNAME", "username"), ("SVCTRACE_KAFKA_SASL_PASSWORD", "password")):
            assert env[var]["valueFrom"]["secretKeyRef"] == {"name": SECRET_SASL, "key": key}, d["metadata"]["name"]
        tls = next(v for v in pod_spec(d)["volumes"] if v["name"] == "kafka-tls")
        assert tls["secret"]["secretName"] == SECRET_TLS
        mount = next(m for m in container(d)["volumeMounts"] if m["name"] == "kafka-tls")
        assert mount["readOnly"] is True
        assert cm["data"]["SVCTRACE_KAFKA_SSL_CAFILE"].startswith(mount["mountPath"] + "/")


def test_chart_carries_the_topic_catalogue_unchanged():
    copy = CHART / "files" / "topics.yaml"
    assert copy.read_text() == CATALOGUE_FILE.read_text(), (
        "helm/svctrace/files/topics.yaml differs from schemas/topics.yaml: copy it over")


def test_topic_job_is_a_pre_install_hook_built_from_the_catalogue(rendered):
    docs = rendered["defaults"]
    job = only(docs, "Job", "topics")
    cm = only(docs, "ConfigMap", "topics")
    assert "pre-install" in job["metadata"]["annotations"]["helm.sh/hook"]
    assert "pre-upgrade" in job["metadata"]["annotations"]["helm.sh/hook"]
    assert int(cm["metadata"]["annotations"]["helm.sh/hook-weight"]) < int(
        job["metadata"]["annotations"]["helm.sh/hook-weight"]), "the catalogue must exist before the Job runs"
    assert yaml.safe_load(cm["data"]["topics.yaml"]) == yaml.safe_load(CATALOGUE_FILE.read_text())
    names = [t["name"] for t in yaml.safe_load(cm["data"]["topics.yaml"])["topics"]]
    assert names == list(load_catalogue())
    c = container(job)
    assert c["args"][:2] == ["topics", "--create"] and "--replication-factor=3" in c["args"]
    catalogue_arg = next(a for a in c["args"] if a.startswith("--catalogue="))
    mount = next(m for m in c["volumeMounts"] if m["name"] == "topics")
    assert catalogue_arg == f"--catalogue={mount['mountPath']}/topics.yaml"
    # the hook runs before the ConfigMap of the release exists, so its settings are inlined
    assert "envFrom" not in c and env_of(c)["SVCTRACE_BOOTSTRAP"]["value"] == "kafka:9092"
    assert not [d for d in rendered["agent-only"] if d["kind"] == "Job"]


def test_helm_test_hook_checks_broker_and_topics(rendered):
    pod = only(rendered["defaults"], "Pod", "test")
    assert pod["metadata"]["annotations"]["helm.sh/hook"] == "test"
    c = container(pod)
    assert c["args"][:2] == ["topics", "--check"]
    assert any(a.startswith("--bootstrap=") for a in c["args"])
    assert pod["spec"]["restartPolicy"] == "Never"


def test_service_monitor_optional_and_matches_the_metrics_services(rendered):
    assert not [d for d in rendered["defaults"] if d["kind"] == "ServiceMonitor"]
    docs = rendered["everything"]
    monitors = [d for d in docs if d["kind"] == "ServiceMonitor"]
    assert len(monitors) == 3
    services = [d for d in docs if d["kind"] == "Service"]
    for sm in monitors:
        assert sm["metadata"]["labels"]["release"] == "prometheus"
        selected = [s for s in services
                    if sm["spec"]["selector"]["matchLabels"].items() <= s["metadata"]["labels"].items()]
        assert len(selected) == 1
        port_names = {p["name"] for p in selected[0]["spec"]["ports"]}
        assert {e["port"] for e in sm["spec"]["endpoints"]} <= port_names


def test_services_select_their_component_pods(rendered):
    docs = rendered["defaults"]
    for svc in (d for d in docs if d["kind"] == "Service"):
        workloads = [d for d in docs if d["kind"] in ("DaemonSet", "Deployment")
                     and svc["spec"]["selector"].items() <= d["spec"]["template"]["metadata"]["labels"].items()]
        assert len(workloads) == 1, svc["metadata"]["name"]
        ports = {p["name"] for p in container(workloads[0])["ports"]}
        assert {p["targetPort"] for p in svc["spec"]["ports"]} <= ports


def test_config_change_restarts_pods(helm):
    def checksums(values):
        return {d["metadata"]["name"]: d["spec"]["template"]["metadata"]["annotations"]["checksum/config"]
                for d in helm.render(values) if d["kind"] in ("DaemonSet", "Deployment")}
    before, after = checksums({}), checksums({"logLevel": "debug"})
    assert before.keys() == after.keys() and all(before[k] != after[k] for k in before)


def test_long_release_names_stay_valid(helm):
    release = "a-very-long-release-name-for-svctrace-0123456789abcd"[:53]
    for d in helm.render({}, release=release):
        assert len(d["metadata"]["name"]) <= 63, d["metadata"]["name"]


def render_notes(helm, tmp_path, values: dict) -> str:
    """NOTES.txt as helm renders it. `helm template` leaves NOTES out and `helm install --dry-run`
    needs a cluster, so a copy of the chart renders it through `tpl` into a ConfigMap."""
    chart = tmp_path / "svctrace"
    shutil.copytree(CHART, chart)
    shutil.copy(chart / "templates" / "NOTES.txt", chart / "files" / "NOTES.txt")
    (chart / "templates" / "notes-probe.yaml").write_text(
        "apiVersion: v1\nkind: ConfigMap\nmetadata: {name: notes-probe}\n"
        'data: {notes: {{ tpl (.Files.Get "files/NOTES.txt") . | quote }}}\n')
    values_file = tmp_path / "values.json"
    values_file.write_text(json.dumps(values))
    out = helm.run("template", "svctrace", str(chart), "--namespace", "svctrace", "-f", str(values_file),
                   "--show-only", "templates/notes-probe.yaml").stdout
    return yaml.safe_load(out)["data"]["notes"]


def test_notes(helm, tmp_path):
    notes = render_notes(helm, tmp_path, {})
    assert "kafka:9092 (PLAINTEXT)" in notes and "helm test svctrace -n svctrace" in notes
    assert "capabilities: BPF, PERFMON, SYS_RESOURCE" in notes
    assert "one active via Lease svctrace-metadata" in notes
    notes = render_notes(helm, tmp_path / "privileged", VALUE_CASES["privileged-opt-in"])
    assert "PRIVILEGED: agent.privileged=true" in notes


@pytest.mark.parametrize("grace", [30, 12, 3])
def test_agent_drains_within_its_grace_period(helm, grace):
    """The agent's --drain-timeout ends before the kubelet's SIGKILL, so what it could not publish is
    counted lost and reported, not silently killed."""
    ds = only(helm.render({"agent": {"terminationGracePeriodSeconds": grace}}), "DaemonSet")
    args = container(ds)["args"]
    drain = float(next(a for a in args if a.startswith("--drain-timeout=")).split("=", 1)[1])
    assert pod_spec(ds)["terminationGracePeriodSeconds"] == grace
    assert 0 < drain < grace or (grace <= 1 and drain == 1)
