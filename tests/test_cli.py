"""The `svctrace` entry point: --help and --version work, subcommands are listed."""
from __future__ import annotations

import subprocess
import sys

import orjson
import pytest

from svctrace import __version__
from svctrace.cli import COMMANDS, main


def run_cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "svctrace", *args], capture_output=True, text=True, timeout=60)


def test_version():
    out = run_cli("--version")
    assert out.returncode == 0
    assert out.stdout.strip() == f"svctrace {__version__}"


def test_help_lists_every_subcommand():
    out = run_cli("--help")
    assert out.returncode == 0
    for name in COMMANDS:
        assert name in out.stdout


def test_each_subcommand_has_help():
    for name in COMMANDS:
        out = run_cli(name, "--help")
        assert out.returncode == 0, (name, out.stderr)
        assert "usage: svctrace " + name in out.stdout


def test_no_command_prints_help_and_fails(capsys):
    assert main([]) == 2
    assert "COMMAND" in capsys.readouterr().out


def test_topics_json_lists_catalogue(capsys):
    assert main(["topics", "--json"]) == 0
    rows = [orjson.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert {"svctrace.syscalls", "svctrace.k8s.objects", "svctrace.chains"} <= {r["name"] for r in rows}


def test_validate_auto_takes_each_documents_schema_from_its_own_field(tmp_path, capsys):
    """analyze --json mixes chain and alert records: `validate auto` checks each against its own."""
    from pathlib import Path

    seed = Path(__file__).resolve().parent.parent / "examples" / "seed"
    assert main(["analyze", str(seed / "capture.scap"), "--json"]) == 1
    records = capsys.readouterr().out
    assert '"schema":"svctrace.chain"' in records and '"schema":"svctrace.alert"' in records
    mixed = tmp_path / "records.jsonl"
    mixed.write_text(records)
    assert main(["validate", "auto", str(mixed)]) == 0
    assert main(["validate", "chain", str(mixed)]) == 1  # the alerts are not chains
    capsys.readouterr()
    mixed.write_text(records + '{"schema": "svctrace.chain"}\n{"no": "schema"}\n')
    assert main(["validate", "auto", str(mixed)]) == 1
    err = capsys.readouterr().err
    n = len(records.splitlines())
    assert f"records.jsonl:{n + 1}: chain: field $.chain_id" in err
    assert f"records.jsonl:{n + 2}: no `schema` field naming a topic schema" in err


def test_help_shows_each_options_default(capsys):
    """Defaults are where an operator looks for them: in --help, without repeating a help text that
    already names its default, and not for switches."""
    with pytest.raises(SystemExit):
        main(["agent", "--help"])
    text = " ".join(capsys.readouterr().out.split())  # (argparse wraps lines)
    for shown in ("(default: 2000)", "(default: 0.2)", "(default: 16)", "(default: 1.0)", "(default: svctrace.syscalls)"):
        assert shown in text, shown
    assert "(default: False)" not in text and "(default: None)" not in text
    assert text.count("$NODE_NAME") == 1  # a help that names its default keeps its own words only


def test_agent_topic_prefix_prefixes_both_topics():
    import argparse

    from svctrace.agents.agent import command

    parser = argparse.ArgumentParser()
    command.configure(parser)
    sink = command._make_sink(parser.parse_args(["--bootstrap", "127.0.0.1:1", "--topic-prefix", "staging."]))
    assert (sink.topic, sink.stats_topic) == ("staging.svctrace.syscalls", "staging.svctrace.agent.stats")


def test_every_argument_of_every_command_says_what_it_is_for():
    import argparse
    import importlib

    from svctrace.cli import build_parser

    sub = next(a for a in build_parser()._subparsers._group_actions)  # noqa: SLF001
    silent = []
    for name, (module, _help) in COMMANDS.items():
        parser = sub.choices[name]
        importlib.import_module(module).configure(parser)
        silent += [(name, a.option_strings or a.dest) for a in parser._actions  # noqa: SLF001
                   if not isinstance(a, argparse._HelpAction) and not a.help]  # noqa: SLF001
    assert not silent
