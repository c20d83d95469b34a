"""`svctrace watch`: this node's Service requests, live — `svctrace analyze` on the running kernel.

Captures network syscalls with the agent's eBPF program (root), redacts payloads as the agent
does, and runs the same operator graph in-process (`streams.core.runner.Runner`): no broker, no
worker. Each chain is printed once it is settled, each alert when it first fires. Event time
comes from the syscalls; each drain of the kernel's ring moves the watermark to its start (every
older event was read: the claim a live agent sends a worker, svctrace-complete), so a request is shown
--settle (0.25 s, as a worker) after it ended, with no lateness to wait out. Kernel ring drops
become loss markers: the chains they may have touched are "incomplete", never "broken".

The cluster's state comes from a file (--cluster, as analyze takes it) or from the API server
(--kube: the metadata watcher's list+watch, in-process).

--namespace, --service, --status and --alerts-only choose what is printed, as analyze's do.
Ctrl-C (or --duration) ends the capture; open chains are then printed as incomplete.
Exit status: 1 when an alert of --fail-on's severity or worse was printed (default: warning),
else 0; 2 error.
"""
from __future__ import annotations

import argparse
import sys
import time
from dataclasses import replace

from svctrace.agents.agent.live import LiveCapture, add_options

PROG = "svctrace watch"


def configure(parser: argparse.ArgumentParser) -> None:
    from svctrace.analyze.command import add_alert_options, add_filter_options

    state = parser.add_mutually_exclusive_group()
    state.add_argument("--cluster", metavar="STATE",
                       help="cluster state: `kubectl get pods,services,endpointslices,nodes,namespaces,networkpolicies -A -o json` output "
                            "(a List, JSON or YAML)")
    state.add_argument("--kube", action="store_true",
                       help="cluster state from the API server, kept current by a watch (kubeconfig, or the "
                            "in-cluster service account); without --cluster or --kube, requests are shown by address")
    parser.add_argument("--kubeconfig", help="with --kube: kubeconfig file (default: in-cluster, else ~/.kube/config)")
    parser.add_argument("--context", help="with --kube: kubeconfig context")
    parser.add_argument("--json", action="store_true", help="print chain and alert records (JSON Lines, schema-valid)")
    add_filter_options(parser)
    parser.add_argument("--alerts-only", action="store_true", help="print the alerts only, not every chain")
    parser.add_argument("--settle", type=float, default=0.25,
                        help="seconds a request waits after its client's close (or response) for the other side's "
                             "events before it is shown (the worker's default)")
    add_alert_options(parser)
    add_options(parser)
    color = parser.add_mutually_exclusive_group()
    color.add_argument("--color", dest="color", action="store_const", const=True, default=None, help="force colours")
    color.add_argument("--no-color", dest="color", action="store_const", const=False, help="plain text even on a terminal")


class LiveState:
    """The cluster from the API server: the metadata watcher's list+watch threads publish into a
    queue; the capture loop applies what arrived between drains (the index is not shared
    between threads)."""

    SYNC_TIMEOUT_S = 60.0

    def __init__(self, args, index) -> None:
        import queue
        import threading

        from svctrace.streams.metadata.cli import api_client
        from svctrace.streams.metadata.watcher import Watcher

        self.index, self.changes = index, queue.SimpleQueue()
        self.api = api_client(args.kubeconfig, args.context)
        self.watcher = Watcher(self.api, self)
        self.thread = threading.Thread(target=self.watcher.run, name="kube-watch", daemon=True)
        self.thread.start()
        deadline = time.monotonic() + self.SYNC_TIMEOUT_S
        while not self.watcher.synced():
            if time.monotonic() > deadline or not self.thread.is_alive():
                self.close()
                raise RuntimeError(f"the API server's objects were not listed within {self.SYNC_TIMEOUT_S:.0f} s "
                                   "(see the log above)")
            time.sleep(0.1)  # poll interval of the initial list, bounded by the deadline
        self.apply()

    # the Sink protocol (called from the watcher's threads)
    def publish(self, changes) -> None:
        self.changes.put(changes)

    def flush(self) -> None:
        pass

    def apply(self) -> None:
        while not self.changes.empty():
            for c in self.changes.get():
                self.index.apply(c.offline())

    def close(self) -> None:
        self.watcher.stop()
        self.thread.join(10)
        self.api.close()


class Printer:
    """Chains and alerts as the runner produces them, each once."""

    def __init__(self, out, as_json: bool, color: bool | None, max_evidence: int = 0, only=None,
                 alerts_only: bool = False) -> None:
        from svctrace.analyze import render
        from svctrace.analyze.command import Filter

        self.out, self.as_json, self.render = out, as_json, render
        self.max_evidence = max_evidence  # 0: every evidence ref
        self.only = only or Filter(None, None)  # analyze's --namespace/--service/--status
        self.alerts_only = alerts_only
        self.console = None if as_json else render.make_console(out, color)
        self.rules: dict[str, str] = {}  # alert id -> rule, for the chains' alert names
        self.alerts = 0
        self.statuses: dict[str, int] = {}  # printed chains by status, for the closing line
        self.severities: dict[str, int] = {}  # printed alerts by severity

    MAX_ALERT_IDS = 50_000  # remembered to name chains' alerts and print each alert once

    def take(self, runner) -> None:
        new_alerts = [a for aid, a in runner.alerts.items() if aid not in self.rules]
        runner.alerts.clear()  # (a later update of an alert comes back under the same id)
        for a in new_alerts:
            self.rules[a["alert_id"]] = a["rule"]
        if len(self.rules) > self.MAX_ALERT_IDS:  # the oldest first: a long watch stays bounded
            for aid in list(self.rules)[:len(self.rules) - self.MAX_ALERT_IDS]:
                del self.rules[aid]
        for chain in runner.chains:
            self._chain(chain)
        runner.chains.clear()  # printed: a long watch keeps no chain
        for a in new_alerts:
            self._alert(a)
        for d in runner.deadletters:
            print(f"{PROG}: dead letter: {d.get('reason')}: {d.get('error')}", file=sys.stderr)
        runner.deadletters.clear()

    def _chain(self, chain: dict) -> None:
        if self.alerts_only or not self.only.chain(chain):
            return
        self.statuses[chain["status"]] = self.statuses.get(chain["status"], 0) + 1
        if self.as_json:
            self._json("chain", chain)
            return
        self.console.print()
        self.console.print(self.render.chain_title(chain))
        for line in self.render.chain_lines(chain, self.rules):
            self.console.print(line)

    def _alert(self, alert: dict) -> None:
        if not self.only.alert(alert):
            return
        self.alerts += 1
        sev = alert.get("severity", "info")
        self.severities[sev] = self.severities.get(sev, 0) + 1
        if self.as_json:
            self._json("alert", alert)
            return
        self.console.print()
        if sev == "info":  # a cost, not a failure (e.g. ndots search expansions): one line
            self.console.print(self.render.alert_lines(alert)[0])
            return
        for line in self.render.alert_lines(alert, max_evidence=self.max_evidence):
            self.console.print(line)

    def totals(self) -> str:
        """`3 chains (2 ok, 1 broken), 1 alert (1 critical)`: what was printed."""
        def counted(n: int, noun: str, parts: dict) -> str:
            kinds = ", ".join(f"{v} {k}" for k, v in sorted(parts.items(), key=lambda kv: -kv[1]))
            return f"{n} {noun}{'s' if n != 1 else ''}" + (f" ({kinds})" if kinds else "")
        return f"{counted(sum(self.statuses.values()), 'chain', self.statuses)}, " \
               f"{counted(self.alerts, 'alert', self.severities)}"

    def _json(self, name: str, doc: dict) -> None:
        import orjson

        from svctrace.analyze.command import record_problem

        problem = record_problem(name, doc)
        if problem is not None:
            raise RuntimeError(f"internal: the pipeline produced an invalid {name} record: {problem}")
        self.out.write(orjson.dumps(doc, option=orjson.OPT_SORT_KEYS).decode() + "\n")
        self.out.flush()


def run(args: argparse.Namespace) -> int:
    from svctrace.analyze.command import Filter, check_alert_options, parse_statuses
    from svctrace.analyze.errors import AnalyzeError
    from svctrace.analyze.pipeline import load_cluster_file
    from svctrace.memory import huge_page_arenas
    from svctrace.streams.core import Settings
    from svctrace.streams.core.runner import Runner, fewer_gc_passes
    from svctrace.streams.metadata.index import ClusterIndex

    huge_page_arenas()  # the in-process runner's state, as a worker's
    try:
        only = Filter(args.namespace, args.service, parse_statuses(args.status))
        check_alert_options(args)
        records = load_cluster_file(args.cluster) if args.cluster else []
    except AnalyzeError as e:
        print(f"{PROG}: error: {e}", file=sys.stderr)
        return 2
    live = LiveCapture.open(args, PROG, containers=True)
    if live is None:
        return 2
    index = ClusterIndex.from_records(records)
    state = None
    if args.kube or args.kubeconfig:
        try:
            state = LiveState(args, index)
        except Exception as e:  # unreachable, unauthorized, no kubeconfig: one line
            live.close()
            print(f"{PROG}: error: cluster state: {str(e).splitlines()[0] if str(e) else type(e).__name__}",
                  file=sys.stderr)
            return 2
    runner = Runner(index, replace(Settings(), settle_ns=int(args.settle * 1e9)))
    printer = Printer(sys.stdout, args.json, args.color, args.evidence, only, args.alerts_only)
    print(f"{PROG}: watching {live.node}'s network syscalls (Ctrl-C to stop)", file=sys.stderr, flush=True)
    try:
        with fewer_gc_passes():
            while True:
                last = live.stopping()  # a stop seen before a drain makes that drain the last one
                events = live.read()
                if state is not None:
                    state.apply()  # the cluster as of now, before the events of now
                if events:
                    runner.feed(events)
                runner.step()
                # every event older than the drain's start is in (an agent's claim): no lateness to wait out,
                # and while nothing happens, event time goes on with the wall clock
                runner.advance(live.complete_ns)
                printer.take(runner)
                if last:
                    break
                live.wait(0.1)
            runner.finish()
            printer.take(runner)
    except BrokenPipeError:
        return 0
    finally:
        live.close()
        if state is not None:
            state.close()
    lost = f"; {live.drops} events lost in the kernel" if live.drops else ""
    print(f"{PROG}: stopped: {printer.totals()} printed{lost}", file=sys.stderr)
    return 1 if any(printer.render.fails(sev, args.fail_on) for sev in printer.severities) else 0
