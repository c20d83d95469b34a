"""The commands the chart runs are ones the svctrace CLI accepts: every container's args,
in every values case, parse with the real subcommand parsers."""
from __future__ import annotations

import contextlib
import importlib
import io
import re

import pytest

from svctrace.cli import COMMANDS, build_parser
from tests.harness.helm import VALUE_CASES, helm  # noqa: F401


def parse(args: list[str]):
    """argparse's verdict on `svctrace ARGS` (as svctrace.cli.main builds its parser)."""
    parser = build_parser()
    command = args[0]
    assert command in COMMANDS, f"the chart runs `svctrace {command}`, which the CLI does not have"
    sub = next(a for a in parser._subparsers._group_actions).choices[command]  # noqa: SLF001
    importlib.import_module(COMMANDS[command][0]).configure(sub)
    err = io.StringIO()
    try:
        with contextlib.redirect_stderr(err):
            return parser.parse_args(args)
    except SystemExit:
        pytest.fail(f"svctrace rejects the chart's args {args}:\n{err.getvalue()}")


def workloads(docs: list[dict]):
    for d in docs:
        if d["kind"] in ("DaemonSet", "Deployment", "Job", "Pod"):
            spec = d["spec"] if d["kind"] == "Pod" else d["spec"]["template"]["spec"]
            for c in spec["containers"]:
                # the kubelet expands $(VAR); any value of the right shape will do here
                yield d, [re.sub(r"\$\((\w+)\)", "value-of-" + r"\1", a) for a in c["args"]]


@pytest.mark.parametrize("case", sorted(VALUE_CASES))
def test_chart_args_parse(helm, case):
    seen = set()
    for doc, args in workloads(helm.render(VALUE_CASES[case])):
        parse(args)
        seen.add(args[0])
    assert seen <= {"agent", "worker", "metadata", "topics"}


def test_args_mean_what_the_chart_says(helm):
    docs = helm.render(VALUE_CASES["everything"])
    by_component = {d["metadata"]["labels"]["app.kubernetes.io/component"]: args for d, args in workloads(docs)}
    agent = parse(by_component["agent"])
    assert (agent.source, agent.node, agent.snaplen, agent.redact) == ("ebpf", "value-of-NODE_NAME", 512, True)
    assert agent.bootstrap == "value-of-SVCTRACE_BOOTSTRAP" and agent.metrics_addr == "0.0.0.0:9090"
    assert agent.ring_mb == 32  # extraArgs reach the agent
    worker = parse(by_component["worker"])
    assert (worker.bootstrap, worker.data_dir, worker.metrics_addr) == (
        "value-of-SVCTRACE_BOOTSTRAP", "/var/lib/svctrace", "0.0.0.0:9090")
    assert worker.create_topics is False, "topics are the hook's to create, with the configured replication"
    metadata = parse(by_component["metadata"])
    assert metadata.kafka == "value-of-SVCTRACE_BOOTSTRAP" and metadata.metrics_port == 9090
    assert metadata.lease_name is None, "leader election off in this case"
    metadata = parse(next(args for d, args in workloads(helm.render({}))
                          if d["metadata"]["labels"]["app.kubernetes.io/component"] == "metadata"))
    assert (metadata.lease_name, metadata.lease_namespace, metadata.identity) == (
        "svctrace-metadata", "value-of-POD_NAMESPACE", "value-of-POD_NAME")
    topics = parse(by_component["topics"])
    assert topics.create and topics.replication_factor == 1
    assert parse(by_component["test"]).check
