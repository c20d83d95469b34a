"""The `svctrace` command line.

Each subcommand lives next to the code it drives and exposes two functions:
`configure(parser)` adds its arguments, `run(args) -> int` does the work.
They are imported only when chosen, so `svctrace --help` stays fast and a
broken optional dependency of one command cannot break the others.
"""
from __future__ import annotations

import argparse
import importlib
import sys

from svctrace import __version__

# name -> (module, one-line help). The one place to add a subcommand.
COMMANDS: dict[str, tuple[str, str]] = {
    "topics": ("svctrace.schemas.cli", "print the topic catalogue (name, key, schema, partitions, cleanup)"),
    "validate": ("svctrace.schemas.cli_validate", "validate JSON documents against a topic schema"),
    "metadata": ("svctrace.streams.metadata.cli", "watch Kubernetes objects, publish projections to the compacted topic"),
    "analyze": ("svctrace.analyze", "analyze a capture: request chains, alerts, connections (exit 1 on warning or critical alerts)"),
    "agent": ("svctrace.agents.agent.command", "node agent: capture syscalls (eBPF or a .scap replay), redact, publish batches to Kafka"),
    "read": ("svctrace.agents.scap.cli", "print the network events of a .scap capture, one per line (like sysdig -r)"),
    "capture": ("svctrace.agents.agent.capture", "record a live eBPF capture to a .scap file (-w FILE.scap), readable by sysdig"),
    "watch": ("svctrace.watch", "this node's Service requests live (eBPF, in-process, no broker): chains and alerts as they happen"),
    "worker": ("svctrace.streams.faust_app.command", "stream processors on Kafka (Faust): enrich -> stitch -> chains and alerts"),
}


class _HelpFormatter(argparse.HelpFormatter):
    """Shows each option's default where its help does not already say it (switches and unset
    options have none worth showing)."""

    def _get_help_string(self, action: argparse.Action) -> str | None:
        text = action.help
        default = action.default
        if (text and "default" not in text.lower() and action.option_strings
                and default is not None and default is not argparse.SUPPRESS
                and not isinstance(default, (bool, list, dict))):  # (is: 1.0 == True)
            text += " (default: %(default)s)" if default != "" else " (default: '')"
        return text


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="svctrace",
        description="See why a Kubernetes Service request goes wrong, from syscalls alone.",
    )
    parser.add_argument("--version", action="version", version=f"svctrace {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name, (module, help_text) in COMMANDS.items():
        p = sub.add_parser(name, help=help_text, description=help_text, formatter_class=_HelpFormatter)
        p.set_defaults(_module=module)
        # Arguments are added lazily in main() for the chosen command only.
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    parser = build_parser()
    # Find the chosen command first, then let its module add its arguments.
    chosen = next((a for a in argv if not a.startswith("-")), None)
    if chosen in COMMANDS:
        module = importlib.import_module(COMMANDS[chosen][0])
        sub_action = next(a for a in parser._subparsers._group_actions)  # noqa: SLF001
        module.configure(sub_action.choices[chosen])
    args = parser.parse_args(argv)
    if not getattr(args, "_module", None):
        parser.print_help()
        return 2
    module = importlib.import_module(args._module)
    try:
        return int(module.run(args) or 0)
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:  # `svctrace read F | head`
        return 0
