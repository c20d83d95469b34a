"""`svctrace analyze FILE.scap`: offline analysis of a capture.

Runs the same operator graph as the stream workers, in-process, over one capture
(`svctrace.streams.core.runner`), then prints every request chain as a timeline
in the spirit of the sysdig article it grew from, the alerts with their evidence,
the connections seen, and a summary. `--json` prints the chain and alert records
only, one per line, each valid against its schema. On a big capture, `--status broken`
and `--limit N` cut the chains printed to the ones worth reading (the summary still
counts them all); `--alerts-only` prints the alerts and the summary, `--summary` the
summary alone. A capture whose end is missing (an interrupted recording) is analyzed up to
the cut, with a warning naming the offset; damage in the middle is an error unless
`--skip-corrupt`.

Exit status: 1 when an alert of --fail-on's severity or worse was printed (default: warning;
info alerts are costs, not failures), else 0; 2 error (one line on stderr, no traceback).
"""
from __future__ import annotations

import argparse
import sys

from svctrace.analyze.errors import AnalyzeError

PROG = "svctrace analyze"


def configure(parser: argparse.ArgumentParser) -> None:
    from svctrace.analyze.command import add_alert_options, add_filter_options

    parser.add_argument("capture", metavar="FILE.scap", help="a sysdig/Falco capture (.scap, plain or gzip); - reads it from stdin")
    parser.add_argument("--cluster", metavar="STATE",
                        help="cluster state: `kubectl get pods,services,endpointslices,nodes,namespaces,networkpolicies -A -o json` output "
                             "(a List, JSON or YAML), taken from the capture's cluster near its time (a warning says when it does "
                             "not look like it); default: the state embedded in the capture, if any")
    parser.add_argument("--json", action="store_true", help="print chain and alert records only (JSON Lines, schema-valid)")
    add_filter_options(parser, connections=True)
    parser.add_argument("--limit", type=int, metavar="N",
                        help="print at most N chains, the first in time order (default all); the summary counts all")
    parser.add_argument("--alerts-only", action="store_true", help="print the alerts (and the summary) only")
    add_alert_options(parser)
    parser.add_argument("--summary", action="store_true",
                        help="print the summary only (counts of chains by status, alerts by severity; exit status as usual)")
    parser.add_argument("--skip-corrupt", action="store_true", help="skip damaged blocks in the middle of the capture instead of stopping at the first one "
                             "(a capture cut short is always read up to the cut)")
    parser.add_argument("--connections", action="store_true",
                        help="always list the connections seen (by default only when no Service chain was found)")
    parser.add_argument("--connections-limit", type=int, default=40, metavar="N", help="connections to list (default 40)")
    parser.add_argument("--debug", action="store_true", help="show the traceback of an internal error")
    color = parser.add_mutually_exclusive_group()
    color.add_argument("--color", dest="color", action="store_const", const=True, default=None, help="force colours")
    color.add_argument("--no-color", dest="color", action="store_const", const=False, help="plain text even on a terminal")


def run(args: argparse.Namespace) -> int:
    from svctrace.analyze.command import execute
    from svctrace.memory import huge_page_arenas

    huge_page_arenas()  # a large capture's state: many small objects, read long after they were made

    try:
        return execute(args, sys.stdout, sys.stderr)
    except AnalyzeError as e:
        print(f"{PROG}: error: {e}", file=sys.stderr)
        return 2
    except (KeyboardInterrupt, BrokenPipeError):
        raise  # the CLI's own handling
    except Exception as e:  # a bug, not bad input: still one line, with the way to the traceback
        if args.debug:
            raise
        where = f"{type(e).__name__}: {e}".splitlines()[0]
        print(f"{PROG}: internal error: {where} (rerun with --debug for the traceback)", file=sys.stderr)
        return 2
