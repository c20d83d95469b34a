"""The chart's topic hook Job and `helm test` pod, run for real: the exact commands helm renders,
executed by the svctrace CLI against the real broker."""
from __future__ import annotations

import asyncio
import re
import time

import pytest
import yaml

from svctrace.cli import main as svctrace_main
from svctrace.schemas.catalogue import load_catalogue
from tests.harness.helm import helm  # noqa: F401

pytestmark = pytest.mark.kafka


def rendered_command(docs: list[dict], kind: str, component: str, env: dict[str, str],
                     mounts: dict[str, str]) -> list[str]:
    """The container's args with $(VAR) expanded like the kubelet does and mount paths mapped to files."""
    obj = next(d for d in docs if d["kind"] == kind and d["metadata"]["labels"]["app.kubernetes.io/component"] == component)
    spec = obj["spec"] if kind == "Pod" else obj["spec"]["template"]["spec"]
    args = spec["containers"][0]["args"]
    out = []
    for arg in args:
        arg = re.sub(r"\$\((\w+)\)", lambda m: env[m.group(1)], arg)
        for container_path, local in mounts.items():
            arg = arg.replace(container_path, local)
        out.append(arg)
    return out


@pytest.fixture
def chart_commands(helm, kafka, tmp_path):
    docs = helm.render({"kafka": {"bootstrapServers": [kafka.bootstrap], "topics": {"replicationFactor": 1}}})
    catalogue = next(d for d in docs if d["kind"] == "ConfigMap" and d["metadata"]["name"].endswith("-topics"))
    (tmp_path / "topics.yaml").write_text(catalogue["data"]["topics.yaml"])
    config = next(d for d in docs if d["kind"] == "ConfigMap" and d["metadata"]["name"].endswith("-config"))
    env = dict(config["data"])
    assert env["SVCTRACE_BOOTSTRAP"] == kafka.bootstrap
    mounts = {"/etc/svctrace/topics": str(tmp_path)}
    return (rendered_command(docs, "Job", "topics", env, mounts),
            rendered_command(docs, "Pod", "test", env, mounts))


def test_hook_job_creates_the_catalogue_and_helm_test_passes(kafka, chart_commands, capsys):
    create, check = chart_commands
    prefix = kafka.unique_prefix("helm")  # isolates this test's topics on the shared broker
    assert svctrace_main([*check, f"--topic-prefix={prefix}"]) == 1, "helm test must fail before the topics exist"
    err = capsys.readouterr().err
    assert all(f"topic {prefix}{name} is missing" in err for name in load_catalogue())

    assert svctrace_main([*create, f"--topic-prefix={prefix}"]) == 0
    out = capsys.readouterr().out
    assert out.count("created ") == len(load_catalogue())
    assert svctrace_main([*create, f"--topic-prefix={prefix}"]) == 0, "the hook runs again on every upgrade"
    assert capsys.readouterr().out.count("exists ") == len(load_catalogue())

    assert svctrace_main([*check, f"--topic-prefix={prefix}"]) == 0
    assert f"{len(load_catalogue())} topics present" in capsys.readouterr().out


def test_helm_test_fails_on_a_wrong_partition_count(kafka, chart_commands, capsys):
    from aiokafka.admin import AIOKafkaAdminClient, NewTopic

    from svctrace.kafka.admin import partition_counts

    _, check = chart_commands
    prefix = kafka.unique_prefix("helmbad")
    wrong = f"{prefix}svctrace.syscalls"

    async def make_wrong_topic():
        admin = AIOKafkaAdminClient(bootstrap_servers=kafka.bootstrap)
        await admin.start()
        try:
            await admin.create_topics([NewTopic(wrong, 1, 1)])
        finally:
            await admin.close()
        deadline = time.monotonic() + 30
        while (await partition_counts(kafka.bootstrap, [wrong])).get(wrong) != 1:  # metadata propagates
            assert time.monotonic() < deadline, f"{wrong} never appeared"
            await asyncio.sleep(0.1)

    kafka.run(make_wrong_topic())
    assert svctrace_main([*check, f"--topic-prefix={prefix}"]) == 1
    assert f"topic {wrong} has 1 partitions, the catalogue needs 12" in capsys.readouterr().err


def test_helm_test_fails_loudly_without_a_broker(helm, tmp_path, capsys):
    docs = helm.render({"kafka": {"bootstrapServers": ["127.0.0.1:9"]}})
    config = next(d for d in docs if d["kind"] == "ConfigMap" and d["metadata"]["name"].endswith("-config"))
    (tmp_path / "topics.yaml").write_text(yaml.safe_dump({"version": 1, "topics": []}))
    check = rendered_command(docs, "Pod", "test", dict(config["data"]), {"/etc/svctrace/topics": str(tmp_path)})
    assert svctrace_main([*check, "--timeout=1"]) == 1
    assert "127.0.0.1:9" in capsys.readouterr().err
