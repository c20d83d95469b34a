"""Orchestration of `svctrace analyze`: run the pipeline, filter, print."""
from __future__ import annotations

import argparse
from functools import cache
from typing import TextIO

import orjson

from svctrace.analyze import render
from svctrace.analyze.errors import AnalyzeError
from svctrace.analyze.pipeline import Analysis, analyze
from svctrace.analyze.render import Line


def chain_service(chain: dict) -> tuple[str | None, str | None]:
    """(namespace, name) of the Service a chain was for: its service stage, or else the
    cluster name it looked up (`name.namespace.svc.<domain>`) when no Service was reached."""
    svc = chain.get("service")
    if svc:
        return svc.get("namespace"), svc.get("name")
    labels = ((chain.get("dns") or {}).get("qname") or "").rstrip(".").split(".")
    if len(labels) >= 3 and labels[2] == "svc":
        return labels[1], labels[0]
    return None, None


# --- filters -----------------------------------------------------------------------------
CHAIN_STATUSES = tuple(render.STATUS_STYLE)  # ok, broken, incomplete


def parse_statuses(values: list[str] | None) -> frozenset[str] | None:
    """--status broken --status incomplete, or --status broken,incomplete."""
    if not values:
        return None
    found = {v.strip().lower() for value in values for v in value.split(",") if v.strip()}
    unknown = sorted(found - set(CHAIN_STATUSES))
    if unknown or not found:
        raise AnalyzeError(f"--status {', '.join(unknown) or '(empty)'}: not a chain status"
                           f" (one of {', '.join(CHAIN_STATUSES)})")
    return frozenset(found)


def add_filter_options(parser: argparse.ArgumentParser, connections: bool = False) -> None:
    """--namespace, --service, --status: what `Filter` takes (analyze's, and watch's)."""
    touching = "chains, alerts and connections" if connections else "chains and alerts"
    parser.add_argument("--namespace", "-n", metavar="NS",
                        help=f"only {touching} touching namespace NS (its client, DNS server, Service or backend)")
    parser.add_argument("--service", "-s", metavar="SVC", help="only chains and alerts of Service SVC (NAME or NS/NAME)")
    parser.add_argument("--status", metavar="STATUS", action="append",
                        help="only chains with this status: ok, broken or incomplete (comma-separated or repeated; "
                             "alerts are not filtered)")


class Filter:
    """--namespace / --service / --status as predicates over chains, alerts and connections."""

    def __init__(self, namespace: str | None, service: str | None, statuses: frozenset[str] | None = None) -> None:
        self.statuses = statuses
        if service and "/" in service:
            ns, _, service = service.partition("/")
            if namespace and namespace != ns:
                raise AnalyzeError(f"--service {ns}/{service} contradicts --namespace {namespace}")
            namespace = ns
        if service is not None and not service:
            raise AnalyzeError("--service needs a name (NAME or NAMESPACE/NAME)")
        self.namespace, self.service = namespace, service

    @property
    def active(self) -> bool:
        return bool(self.namespace or self.service or self.statuses)

    def chain(self, c: dict) -> bool:
        if self.statuses is not None and c.get("status") not in self.statuses:
            return False
        ns, name = chain_service(c)
        if self.service:
            return name == self.service and (not self.namespace or ns == self.namespace)
        if self.namespace:  # any pod the request went through: client, DNS server, Service, backend
            server = ((c.get("dns") or {}).get("server") or {}).get("namespace")
            return self.namespace in {ns, server, (c.get("client") or {}).get("namespace"),
                                      (c.get("backend") or {}).get("namespace")}
        return True

    def alert(self, a: dict) -> bool:
        labels = a.get("labels") or {}
        if self.service and labels.get("service") != self.service:
            return False
        return not self.namespace or labels.get("namespace") == self.namespace

    def connection(self, row, namespaces_of) -> bool:
        """Connections only know namespaces (through the cluster state); a --service filter hides them,
        --status does not apply to them."""
        if self.service:
            return False
        if not self.namespace:
            return True
        return self.namespace in namespaces_of(row)


# --- alerts: how many evidence lines, which severities fail the run ------------------------
FAIL_ON = ("info", "warning", "critical", "never")


def add_alert_options(parser: argparse.ArgumentParser) -> None:
    """--evidence and --fail-on: how alerts are printed and which make the exit status 1
    (analyze's and watch's)."""
    parser.add_argument("--evidence", type=int, default=6, metavar="N",
                        help="events shown per alert: the first and the last N-1, where a request failed "
                             "(default 6; 0: all; --json always has all)")
    parser.add_argument("--fail-on", choices=FAIL_ON, default="warning", metavar="SEVERITY",
                        help="exit status 1 when an alert of this severity or worse is printed: info, warning "
                             "(default), critical, or never. Info alerts (e.g. ndots search expansions) are "
                             "costs, not failures")


def check_alert_options(args: argparse.Namespace) -> None:
    if args.evidence < 0:
        raise AnalyzeError("--evidence must be 0 or more")


# --- ordering --------------------------------------------------------------------------
def chain_order(c: dict):
    """In time order; the requests of one keep-alive connection (one start) in the order sent."""
    sent = next((r["ts"] for r in c.get("evidence") or () if (r.get("what") or "").startswith("client request")), 0)
    return (c["start_ts"], sent, c["chain_id"])


def alert_order(a: dict):
    return (render.SEVERITY_ORDER.get(a.get("severity"), 9), a.get("first_seen", 0), a["alert_id"])


# --- output ----------------------------------------------------------------------------
@cache
def record_check(name: str):
    """A compiled (jsonschema-rs) validator of topic schema `name`, the other topic schemas
    registered for its cross-schema refs, nothing fetched. jsonschema's takes ~2.3 ms per
    chain record here (5.5 CPU s for 2,400 chains), this one ~15 us; jsonschema still names
    the field when a record fails."""
    import jsonschema_rs
    from svctrace.schemas.validation import SCHEMA_NAMES, schema_document

    registry = jsonschema_rs.Registry([(doc["$id"], doc) for doc in map(schema_document, SCHEMA_NAMES)])
    return jsonschema_rs.Draft202012Validator(schema_document(name), registry=registry, offline=True)


def record_problem(name: str, doc: dict) -> str | None:
    """None when `doc` is a valid `name` record, else its first violation, naming the field."""
    check = record_check(name)
    if check.is_valid(doc):
        return None
    from svctrace.schemas.validation import errors

    problems = errors(name, doc)
    if problems:
        return str(min(problems, key=lambda e: (len(e.path), e.path)))
    return f"{name}: {next(iter(check.iter_errors(doc)), 'invalid')}"  # the two validators disagree


def emit_json(out: TextIO, chains: list[dict], alerts: list[dict]) -> None:
    """Chain then alert records, one per line, each checked against its schema first."""
    for name, docs in (("chain", chains), ("alert", alerts)):
        for doc in docs:
            problem = record_problem(name, doc)
            if problem is not None:
                raise AnalyzeError(f"internal: the pipeline produced an invalid {name} record: {problem}")
            out.write(orjson.dumps(doc, option=orjson.OPT_SORT_KEYS).decode() + "\n")


def unknown_filter_target(result: Analysis, flt: Filter) -> str:
    """'; the cluster state has no Service x': why a --service/--namespace filter matched nothing,
    when the reason is a name the state does not know (a typo, another cluster)."""
    if result.index is None or not (flt.service or flt.namespace):
        return ""
    services = {(svc.namespace, svc.name) for key, svc in result.index.objects() if key.startswith("Service/")}
    if not services:
        return ""
    if flt.service and not any(name == flt.service and (not flt.namespace or ns == flt.namespace)
                               for ns, name in services):
        where = f"{flt.namespace}/" if flt.namespace else ""
        return f"; the cluster state has no Service {where}{flt.service}"
    if flt.namespace and not any(ns == flt.namespace for ns, _ in services):
        return f"; the cluster state has no Service in namespace {flt.namespace}"
    return ""


def print_report(console, result: Analysis, chains: list[dict], alerts: list[dict], args, flt: Filter) -> None:
    if not (args.alerts_only or args.summary):
        if chains:
            render.section(console, f"REQUEST CHAINS ({len(chains)})", "times are UTC; +ms from the chain's first event")
            rules = {a["alert_id"]: a["rule"] for a in result.alerts}
            shown = chains[:args.limit]  # None: all
            for chain in shown:
                console.print()
                console.print(render.chain_title(chain))
                for line in render.chain_lines(chain, rules, result.server_process):
                    console.print(line)
            if len(shown) < len(chains):
                console.print()
                console.print(Line(f"  … and {len(chains) - len(shown)} more chains (use --limit to show more)",
                                   style=render.DIM))
        elif result.chains and flt.active:
            render.section(console, "REQUEST CHAINS", "none match the filter" + unknown_filter_target(result, flt))

        if args.connections or not result.chains:
            rows = [r for r in result.connections.grouped_rows() if flt.connection(r, result.namespaces_of)]
            if rows:
                render.section(console, f"CONNECTIONS SEEN ({len(rows)})", "process  proto  client → server  (this process's end)")
                for line in render.connection_lines(rows, result.describe, limit=args.connections_limit):
                    console.print(line)
                if result.connections.server_errors and not flt.active:
                    render.section(console, f"HTTP 5xx RESPONSES ({result.connections.server_errors_total})",
                                   "who sent each, and the request it answered")
                    for line in render.server_error_lines(result.connections):
                        console.print(line)
            elif flt.active and len(result.connections):
                render.section(console, "CONNECTIONS SEEN", "none match the filter")
            else:
                render.section(console, "CONNECTIONS SEEN")
                net = result.connections.net_events
                text = (f"  {net} TCP/UDP socket events, but no connection with a known peer" if net
                        else "  no network activity in this capture (no TCP/UDP socket events)")
                console.print(Line(text, style=render.DIM))

    if alerts and not args.summary:
        render.section(console, f"ALERTS ({len(alerts)})")
        printed: set = set()
        full = [a for a in alerts if a.get("severity") != "info"]
        info = [a for a in alerts if a.get("severity") == "info"]
        for alert in full:
            console.print()
            for line in render.alert_lines(alert, result.evidence_text, printed, max_evidence=args.evidence):
                console.print(line)
        if info:
            console.print()
            for line in render.info_alert_lines(info):
                console.print(line)

    render.section(console, "SUMMARY")
    for name, text in result.summary_rows(chains, alerts, flt, fail_on=args.fail_on):
        line = Line("  ")
        line.append(f"{name:<9} ", style=render.LABEL)
        line.append(text)
        console.print(line)


def execute(args: argparse.Namespace, out: TextIO, err: TextIO) -> int:
    flt = Filter(args.namespace, args.service, parse_statuses(args.status))
    if args.connections_limit < 0:
        raise AnalyzeError("--connections-limit must be 0 or more")
    if args.limit is not None and args.limit < 0:
        raise AnalyzeError("--limit must be 0 or more")
    if args.summary and args.json:
        raise AnalyzeError("--summary is a text report; --json prints the records only")
    check_alert_options(args)
    options = dict(cluster=args.cluster, skip_corrupt=args.skip_corrupt, progress_file=err,
                   want_evidence=not (args.json or args.summary), want_chains=not (args.summary or args.alerts_only))
    if args.capture == "-":
        return _execute_stdin(args, options, flt, out, err)
    return output(args, analyze(args.capture, **options), flt, out, err)


STDIN_NAME = "<stdin>"


def _execute_stdin(args: argparse.Namespace, options: dict, flt: Filter, out: TextIO, err: TextIO) -> int:
    """`ssh node cat x.scap | svctrace analyze -`: the stream is kept in a temporary file (the
    evidence of early alerts is read again at the end), named <stdin> in what is printed."""
    import shutil
    import sys
    import tempfile

    with tempfile.TemporaryDirectory(prefix="svctrace-stdin-") as tmp:
        spooled = f"{tmp}/capture"
        with open(spooled, "wb") as f:
            shutil.copyfileobj(sys.stdin.buffer, f, 1 << 20)
        try:
            result = analyze(spooled, **options)
        except AnalyzeError as e:
            raise AnalyzeError(str(e).replace(spooled, STDIN_NAME)) from None
        result.path = STDIN_NAME
        result.warnings = [w.replace(spooled, STDIN_NAME) for w in result.warnings]
        return output(args, result, flt, out, err)


def output(args: argparse.Namespace, result: Analysis, flt: Filter, out: TextIO, err: TextIO | None = None) -> int:
    """Print an analysis as asked (text or JSON Lines); the exit status."""
    chains = sorted((c for c in result.chains if flt.chain(c)), key=chain_order)
    alerts = sorted((a for a in result.alerts if flt.alert(a)), key=alert_order)
    if args.json:
        emit_json(out, [] if args.alerts_only else chains[:args.limit], alerts)
        for warning in result.warnings if err is not None else ():  # (the records stay pure JSON Lines)
            print(f"svctrace analyze: warning: {warning}", file=err)
    else:
        console = render.make_console(out, args.color)
        console.print(result.header())
        for warning in result.warnings:
            console.print(Line(f"  warning: {warning}", style="yellow"))
        print_report(console, result, chains, alerts, args, flt)
    return 1 if render.failing(alerts, args.fail_on) else 0
