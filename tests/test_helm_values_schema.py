"""values.schema.json, enforced by the real helm: wrong types, unknown keys and unsafe security
settings are refused before anything is rendered; the explicit opt-ins are accepted."""
from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.harness.helm import CHART, VALUE_CASES, helm  # noqa: F401

SECRETS = {"kafka": {"tls": {"existingSecret": "t"}, "sasl": {"existingSecret": "s"}}}

# (case id, values, a fragment of helm's error: the offending path or message)
REJECTED = [
    # wrong types
    ("privileged-as-string", {"agent": {"privileged": "true"}}, "/agent/privileged"),
    ("replicas-as-string", {"worker": {"replicas": "2"}}, "/worker/replicas"),
    ("negative-replicas", {"worker": {"replicas": -1}}, "/worker/replicas"),
    ("bootstrap-as-string", {"kafka": {"bootstrapServers": "kafka:9092"}}, "/kafka/bootstrapServers"),
    ("bootstrap-empty", {"kafka": {"bootstrapServers": []}}, "/kafka/bootstrapServers"),
    ("bootstrap-without-port", {"kafka": {"bootstrapServers": ["kafka"]}}, "/kafka/bootstrapServers/0"),
    ("interval-as-number", {"serviceMonitor": {"interval": 30}}, "/serviceMonitor/interval"),
    ("bad-digest", {"image": {"digest": "sha256:1234"}}, "/image/digest"),
    ("tag-with-space", {"image": {"tag": "latest build"}}, "/image/tag"),
    ("bad-log-level", {"logLevel": "verbose"}, "/logLevel"),
    ("zero-replication", {"kafka": {"topics": {"replicationFactor": 0}}}, "/kafka/topics/replicationFactor"),
    ("unbounded-snaplen", {"agent": {"snaplen": 1048576}}, "/agent/snaplen"),
    ("bad-toleration", {"agent": {"tolerations": [{"operator": "Any"}]}}, "/agent/tolerations/0/operator"),
    ("bad-lease-name", {"metadata": {"leaderElection": {"leaseName": "Bad_Name"}}}, "/metadata/leaderElection/leaseName"),
    ("bad-extra-arg", {"worker": {"extraArgs": ["rm -rf /"]}}, "/worker/extraArgs/0"),
    ("privileged-port", {"worker": {"metricsPort": 80}}, "/worker/metricsPort"),
    # unknown keys, at every level
    ("unknown-top-level", {"rbac": {"create": True}}, "additional properties 'rbac'"),
    ("unknown-agent-key", {"agent": {"hostNetwork": True}}, "additional properties 'hostNetwork'"),
    ("unknown-nested-key", {"kafka": {"tls": {"insecureSkipVerify": True}}}, "additional properties 'insecureSkipVerify'"),
    ("unknown-resource", {"worker": {"resources": {"limits": {"gpu": 1}}}}, "additional properties 'gpu'"),
    # bad security settings
    ("agent-securitycontext-privileged", {"agent": {"securityContext": {"privileged": True}}},
     "additional properties 'securityContext'"),
    ("agent-sys-admin", {"agent": {"capabilities": ["BPF", "PERFMON", "SYS_ADMIN"]}}, "/agent/capabilities/2"),
    ("agent-net-admin", {"agent": {"capabilities": ["BPF", "PERFMON", "NET_ADMIN"]}}, "/agent/capabilities/2"),
    ("agent-without-bpf", {"agent": {"capabilities": ["PERFMON", "SYS_RESOURCE"]}}, "/agent/capabilities"),
    ("agent-host-root", {"agent": {"hostPaths": {"tracefs": "/"}}}, "/agent/hostPaths/tracefs"),
    ("agent-host-var-run", {"agent": {"hostPaths": {"cgroup": "/var/run"}}}, "/agent/hostPaths/cgroup"),
    ("agent-hostpid-off", {"agent": {"hostPID": False}}, "additional properties 'hostPID'"),
    ("worker-runasnonroot-false", {"worker": {"podSecurityContext": {"runAsNonRoot": False}}},
     "/worker/podSecurityContext/runAsNonRoot"),
    ("metadata-runasnonroot-false", {"metadata": {"podSecurityContext": {"runAsNonRoot": False}}},
     "/metadata/podSecurityContext/runAsNonRoot"),
    ("metadata-container-runasnonroot-false", {"metadata": {"securityContext": {"runAsNonRoot": False}}},
     "/metadata/securityContext/runAsNonRoot"),
    ("worker-root-uid", {"worker": {"podSecurityContext": {"runAsUser": 0}}}, "/worker/podSecurityContext/runAsUser"),
    ("worker-privilege-escalation", {"worker": {"securityContext": {"allowPrivilegeEscalation": True}}},
     "/worker/securityContext/allowPrivilegeEscalation"),
    ("worker-privileged", {"worker": {"securityContext": {"privileged": True}}}, "/worker/securityContext/privileged"),
    ("worker-capabilities", {"worker": {"securityContext": {"capabilities": {"add": ["NET_ADMIN"]}}}},
     "additional properties 'capabilities'"),
    ("tls-without-secret", {"kafka": {"tls": {"enabled": True}}}, "/kafka/tls/existingSecret"),
    ("sasl-without-secret", {"kafka": {"sasl": {"enabled": True}}}, "/kafka/sasl/existingSecret"),
    ("sasl-plain-in-clear", {"kafka": {"sasl": {"enabled": True, "existingSecret": "s", "mechanism": "PLAIN"}}},
     "/kafka/tls/enabled"),
    ("sasl-unknown-mechanism", {"kafka": {"sasl": {"mechanism": "GSSAPI"}}}, "/kafka/sasl/mechanism"),
    ("client-cert-without-key", {"kafka": {"tls": {"enabled": True, "existingSecret": "t", "certKey": "tls.crt"}}},
     "/kafka/tls/keyKey"),
    ("two-metadata-without-election", {"metadata": {"replicas": 2, "leaderElection": {"enabled": False}}},
     "/metadata/replicas"),
]


@pytest.mark.parametrize("values,fragment", [pytest.param(v, f, id=i) for i, v, f in REJECTED])
def test_schema_rejects(helm, values, fragment):
    proc = helm.template(values, check=False)
    assert proc.returncode != 0, f"accepted: {values}"
    assert "values don't meet the specifications of the schema" in proc.stderr, proc.stderr
    assert fragment in proc.stderr, proc.stderr


@pytest.mark.parametrize("values,fragment", [pytest.param(v, f, id=i) for i, v, f in REJECTED[:3] + REJECTED[-4:]])
def test_lint_strict_rejects_too(helm, values, fragment):
    proc = helm.lint(values, check=False)
    assert proc.returncode != 0 and fragment in proc.stdout + proc.stderr


@pytest.mark.parametrize("case", sorted(VALUE_CASES))
def test_schema_accepts_the_opt_ins(helm, case):
    assert helm.render(VALUE_CASES[case])


def test_schema_is_closed_everywhere():
    """Every object in the schema either lists its keys with additionalProperties false or is
    an explicit string map / pass-through (labels, annotations, nodeSelector, affinity, global)."""
    schema = json.loads((Path(CHART) / "values.schema.json").read_text())
    open_objects = []

    def walk(node, path):
        if isinstance(node, dict):
            if node.get("type") == "object" and "properties" in node and node.get("additionalProperties") is not False:
                open_objects.append(path)
            for key, child in node.items():
                walk(child, f"{path}/{key}")
        elif isinstance(node, list):
            for i, child in enumerate(node):
                walk(child, f"{path}/{i}")

    walk(schema, "")
    assert not open_objects, open_objects
    assert schema["additionalProperties"] is False
