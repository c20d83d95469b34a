"""Run the in-process pipeline over one capture and keep what the report needs.

The pieces are the team's: the scap reader (`svctrace.agents.scap`), the offline
metadata sources and ClusterIndex (`svctrace.streams.metadata`), and the operator
graph's in-process runner (`svctrace.streams.core.runner`). This module only
drives them, turns their errors into one-line AnalyzeErrors, and counts.
"""
from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, TextIO

from svctrace.analyze import render
from svctrace.analyze.connections import ConnectionRow, ConnectionTable
from svctrace.analyze.errors import AnalyzeError
from svctrace.analyze.render import Line

# Files at least this big get a progress bar (when stderr is a terminal).
PROGRESS_MIN_BYTES = 4 << 20
PROGRESS_EVERY = 2048  # events between progress updates
EVIDENCE_WINDOW = 1 << 16  # recent events kept to print what alerts cite
MAX_WARNINGS = 5  # damaged blocks listed one per line; the rest are counted
MIN_ADDRESSES_TO_JUDGE = 3  # server addresses a capture must show before "none is in the cluster state" means something
SCAP_MAGIC = b"\x0a\x0d\x0d\x0a"  # section header block type, little-endian
GZIP_MAGIC = b"\x1f\x8b"
NO_TS_FIRST, NO_TS_LAST = 1 << 80, -(1 << 80)  # below/above any event time (ns): no None check per event


def first_line(e: Exception) -> str:
    return (str(e).strip().splitlines() or [type(e).__name__])[0].rstrip(":")


# --- inputs ------------------------------------------------------------------------------
def check_capture_path(path: str) -> Path:
    """Fail early, in one line, on what is plainly not a capture."""
    p = Path(path)
    if not p.exists():
        raise AnalyzeError(f"{path}: no such file")
    if p.is_dir():
        raise AnalyzeError(f"{path}: is a directory, not a capture file")
    try:
        with p.open("rb") as f:
            head = f.read(4)
    except OSError as e:
        raise AnalyzeError(f"{path}: cannot read: {e.strerror or e}") from None
    if not head:
        raise AnalyzeError(f"{path}: empty file, not a .scap capture")
    if head != SCAP_MAGIC and head[:2] != GZIP_MAGIC:
        raise AnalyzeError(f"{path}: not a .scap capture (no section header block at offset 0; starts with {head.hex(' ')})")
    return p


def load_cluster_file(path: str) -> list[dict]:
    """k8s-object records from `kubectl get ... -o json` (or YAML) output."""
    from svctrace.streams.metadata import sources
    from svctrace.streams.metadata.project import MetadataInputError

    p = Path(path)
    if not p.exists():
        raise AnalyzeError(f"--cluster {path}: no such file")
    if p.is_dir():
        raise AnalyzeError(f"--cluster {path}: is a directory, expected kubectl get -o json output")
    try:
        records = list(sources.load_file(p))
    except MetadataInputError as e:  # YAML errors span lines (a caret diagram): keep the first
        raise AnalyzeError(f"--cluster: unreadable cluster state: {first_line(e)}") from None
    except OSError as e:
        raise AnalyzeError(f"--cluster {path}: cannot read: {e.strerror or e}") from None
    if not records:
        raise AnalyzeError(f"--cluster {path}: no Kubernetes objects in it (expected kubectl get ... -o json output)")
    return records


def capture_records(reader, path: str) -> list[dict]:
    """Cluster state embedded in the capture (K8S events of old sysdig captures, container metadata)."""
    from svctrace.streams.metadata import sources
    from svctrace.streams.metadata.project import MetadataInputError

    try:
        return sources.records_from_capture(reader, source=path)
    except MetadataInputError as e:
        raise AnalyzeError(f"unreadable cluster state embedded in the capture: {first_line(e)}") from None



# --- the result --------------------------------------------------------------------------
@dataclass
class Analysis:
    path: str
    chains: list[dict] = field(default_factory=list)
    alerts: list[dict] = field(default_factory=list)
    connections: ConnectionTable = field(default_factory=ConnectionTable)
    events: int = 0
    nodes: set = field(default_factory=set)
    first_ts: int | None = None
    last_ts: int | None = None
    lost: int = 0
    late: int = 0  # events the core dropped for arriving too far out of time order
    reader_stats: dict = field(default_factory=dict)
    cluster_source: str = "none"
    cluster_kinds: Counter = field(default_factory=Counter)
    index: Any = None  # ClusterIndex, when there is cluster state
    warnings: list[str] = field(default_factory=list)
    evidence: dict = field(default_factory=dict)  # (node, n) -> SyscallEvent
    deadletters: list[dict] = field(default_factory=list)  # records a stage of the core could not process
    cut: Any = None  # the CaptureError where an interrupted capture's bytes ran out (read up to there)
    _servers: dict | None = field(default=None, repr=False)  # (ip, port) -> {(node, comm, pid)} serving it
    _server_names: dict = field(default_factory=dict, repr=False)  # (ip, port, node) -> server_process's answer

    # -- lookups used by the renderer -------------------------------------------------------
    def describe(self, ip: str, ts: int | None = None) -> str:
        """What an IP is in the cluster: pod, Service, cluster DNS, node; '' when unknown."""
        if self.index is None or not ip:
            return ""
        pod = self.index.pod_by_ip(ip, ts)
        if pod is not None:
            return f"pod {pod.namespace}/{pod.name}"
        found = self.index.service_by_ip(ip, None, "TCP", ts) or self.index.service_by_ip(ip, None, "UDP", ts)
        if found:
            svc = found[0]
            return f"Service {svc.namespace}/{svc.name}"
        node = self.index.node_by_ip(ip, ts)
        if node:
            return f"node {node}"
        return ""

    def server_process(self, ip: str | None, port: int | None, node: str | None = None) -> str | None:
        """`comm (pid)` of the one process seen serving ip:port (accepting/reading there), if unique."""
        if self._servers is None:
            self._servers, self._server_names = {}, {}
            for sip, sport, snode, comm, pid in self.connections.servers():
                self._servers.setdefault((sip, sport), set()).add((snode, comm, pid))
        # Asked once per chain, for a few backends: a busy one has a process per repeat to scan.
        name = self._server_names.get((ip, port, node), False)
        if name is False:
            found = {p for p in self._servers.get((ip, port), ()) if node is None or p[0] == node}
            name = None
            if len(found) == 1:
                _, comm, pid = next(iter(found))
                name = f"{comm} ({pid})"
            self._server_names[(ip, port, node)] = name
        return name

    def namespaces_of(self, row: ConnectionRow) -> set[str]:
        """Namespaces a connection touches: its process's pod and the pods/Services at either end."""
        found = set()
        if self.index is None:
            return found
        if row.totals.container_id:
            pod = self.index.pod_by_container(row.totals.container_id)
            if pod is not None:
                found.add(pod.namespace)
        for ip in (row.key.client.ip, row.key.server.ip):
            pod = self.index.pod_by_ip(ip, row.totals.first_ts)
            if pod is not None:
                found.add(pod.namespace)
            svc = self.index.service_by_ip(ip, None, "TCP", row.totals.first_ts) or \
                self.index.service_by_ip(ip, None, "UDP", row.totals.first_ts)
            if svc:
                found.add(svc[0].namespace)
        return found

    def evidence_text(self, ref: dict) -> str | None:
        """The event an evidence ref points at, the way `sysdig -r` prints one (exit side)."""
        e = self.evidence.get((ref.get("node"), ref.get("n")))
        if e is None:
            return None
        parts = [render.clock_ns(e.ts), f"{e.comm} ({e.tid})", e.syscall, f"fd={e.fd}"]
        if e.local_ip or e.remote_ip:
            local, remote = render.addr(e.local_ip, e.local_port), render.addr(e.remote_ip or e.addr_ip, e.remote_port or e.addr_port)
            # sysdig's tuple is client->server
            parts.append(f"{remote}->{local}" if e.role == "server" else f"{local}->{remote}")
        if e.syscall == "getsockopt":  # SO_ERROR: the call returned 0, the connect's result is its value
            parts.append("res=0 SO_ERROR=" + (f"{e.res} {e.errno}" if e.errno else f"{e.res}"))
        else:
            parts.append(f"res={e.res}" + (f" {e.errno}" if e.errno else ""))
        head = (e.data or b"")[:48]
        printable = sum(32 <= b < 127 or b in (9, 10, 13) for b in head)
        if head and printable >= 0.8 * len(head):  # text protocols; binary (DNS) is in the ref's words
            parts.append("data=" + "".join(chr(b) if 32 <= b < 127 else "." for b in head))
        return " ".join(parts)

    # -- header and summary -----------------------------------------------------------------
    def header(self) -> Line:
        t = Line()
        t.append("svctrace analyze ", style="bold")
        t.append(self.path, style="bold cyan")
        if self.nodes:
            nodes = ", ".join(sorted(self.nodes))
            t.append(f"  node {nodes}" if len(self.nodes) == 1 else f"  nodes {nodes}", style=render.DIM)
        else:
            t.append("  no socket events", style=render.DIM)
        if self.first_ts is not None:
            t.append(f"  {render.date_of(self.first_ts)} {render.clock(self.first_ts)} UTC"
                     f", {render.duration(self.last_ts - self.first_ts)}", style=render.DIM)
        return t

    def summary_rows(self, chains: list[dict], alerts: list[dict], flt, fail_on: str = "warning") -> list[tuple[str, str]]:
        rows = []
        net = self.connections.net_events
        in_file = self.reader_stats.get("events", self.events)
        rows.append(("capture", f"{in_file} events in the file; {self.events} on sockets ({net} TCP/UDP, "
                     f"{self.connections.unix_events} unix) on {len(self.nodes)} node{'s' if len(self.nodes) != 1 else ''}"
                     + (f"; {self.lost} events lost while capturing" if self.lost else "")
                     + (f"; {self.late} events too far out of time order, left out (chains they touch are"
                        " incomplete)" if self.late else "")))
        if self.cut is not None:
            rows.append(("corrupt", f"the capture ends in the middle (byte offset {self.cut.offset}"
                         f"{' of the decompressed stream' if self.cut.decompressed else ''}): analyzed up to there"))
        damaged = self.reader_stats.get("error_count") or len(self.reader_stats.get("errors") or ())
        if damaged or self.reader_stats.get("skipped_bytes"):
            rows.append(("corrupt", f"{damaged} damaged block(s) skipped ({self.reader_stats.get('skipped_bytes', 0)} bytes)"
                         " with --skip-corrupt; chains near them may be incomplete"))
        if self.cluster_kinds:
            kinds = ", ".join(f"{n} {k}{'s' if n != 1 else ''}" for k, n in sorted(self.cluster_kinds.items()))
            rows.append(("cluster", f"{self.cluster_source}: {kinds}"))
        else:
            rows.append(("cluster", "no cluster state (pass --cluster with kubectl get ... -o json output)"))
        rows.append(("flows", f"{len(self.connections)} process/connection pairs"))
        if self.deadletters:
            why = Counter(f"{d.get('reason')}: {d.get('error')}" for d in self.deadletters)
            worst, n = min(why.items(), key=lambda kv: (-kv[1], kv[0]))
            rows.append(("skipped", f"{len(self.deadletters)} record(s) the pipeline could not process"
                         f" (dead letters; {n}× {worst})"))
        of = f" of {len(self.chains)}" if flt.active else ""
        if chains or self.chains:
            rows.append(("chains", f"{len(chains)}{of}: " + (render.counts(chains, lambda c: c["status"]) or "none shown")))
        else:
            rows.append(("chains", "no request chains found (DNS lookup → connect → response)"))
        status = f"exit status {1 if render.failing(alerts, fail_on) else 0}" + (
            f", --fail-on {fail_on}" if fail_on != "warning" else "")
        if alerts:
            rows.append(("alerts", f"{len(alerts)}: " + render.counts(alerts, lambda a: a["severity"]) + f"  ({status})"))
        else:
            rows.append(("alerts", f"none  ({status})"))
        return rows


# --- the run ---------------------------------------------------------------------------
class _Progress:
    """A rich progress bar over the file's bytes, on stderr, only when it helps."""

    def __init__(self, fileobj, size: int, out: TextIO | None) -> None:
        self.fileobj, self.size = fileobj, size
        self.bar = None
        if out is not None and size >= PROGRESS_MIN_BYTES and getattr(out, "isatty", lambda: False)():
            from rich.console import Console
            from rich.progress import BarColumn, DownloadColumn, Progress, TextColumn, TimeRemainingColumn

            self.bar = Progress(TextColumn("reading"), BarColumn(), DownloadColumn(), TextColumn("{task.fields[events]} events"),
                                TimeRemainingColumn(), console=Console(file=out), transient=True)
            self.task = self.bar.add_task("read", total=size, events=0)
            self.bar.start()

    def update(self, events: int) -> None:
        if self.bar is not None:
            self.bar.update(self.task, completed=min(self.fileobj.tell(), self.size), events=events)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.stop()


NOT_A_CAPTURE = ("not a scap capture", "empty file", "byte-swapped")


def _capture_error(e, skip_corrupt: bool) -> AnalyzeError:
    """CaptureError -> one line: 'not a capture' for a wrong header, else 'corrupt' with the way out."""
    if e.offset == 0 and any(m in e.reason for m in NOT_A_CAPTURE):
        return AnalyzeError(f"{e.file}: not a .scap capture ({e.reason})")
    hint = "" if skip_corrupt else "; rerun with --skip-corrupt to skip damaged blocks"
    return AnalyzeError(f"corrupt capture: {e}{hint}")


class _EmbeddedState:
    """Applies the cluster state a capture carries to the index as the reader meets it.

    Old sysdig captures interleave K8S and container events with the syscalls; the
    index is time-aware, so applying them when they appear is what the live path does.
    """

    def __init__(self, reader, index, path: str, graph=None) -> None:
        self.reader, self.index, self.path, self.graph = reader, index, path, graph
        self.seen = (0, 0)
        self.records: list[dict] = []

    def poll(self) -> None:
        now = (len(self.reader.k8s_states), len(self.reader.containers))
        if now == self.seen:
            return
        self.seen = now
        self.records = capture_records(self.reader, self.path)
        for record in self.records:
            self.index.apply(record)
        changed = getattr(self.graph, "metadata_changed", None)
        if changed is not None:  # the operators memoize index answers
            changed()


class _EvidenceWindow:
    """The events alerts cite, caught on the first pass.

    Alerts come out of the runner shortly (in events) after the events they cite, so the
    last `size` events are kept and every new alert's refs are looked up in them; refs
    that fell out of the window are fetched by a second pass at the end (rarely needed).
    """

    def __init__(self, runner, size: int | None = None) -> None:
        self.runner, self.size = runner, size or EVIDENCE_WINDOW
        # Two generations instead of evicting one by one: between `size` and 2*`size` recent events.
        self.recent: dict[tuple, Any] = {}
        self.older: dict[tuple, Any] = {}
        self.found: dict[tuple, Any] = {}
        self.alerts_seen = 0

    def add(self, e) -> None:
        self.recent[(e.node, e.n)] = e
        if len(self.recent) >= self.size:
            self.older, self.recent = self.recent, {}
        if len(self.runner.alerts) != self.alerts_seen:
            self.collect(self.runner.alerts.values())

    def collect(self, alerts: Iterable[dict]) -> None:
        self.alerts_seen = len(self.runner.alerts)
        for alert in alerts:
            for ref in alert.get("evidence") or ():
                key = (ref.get("node"), ref.get("n"))
                if key not in self.found:
                    e = self.recent.get(key) or self.older.get(key)
                    if e is not None:
                        self.found[key] = e

    def missing(self, alerts: list[dict]) -> set[tuple]:
        self.collect(alerts)
        return {(r.get("node"), r.get("n")) for a in alerts for r in a.get("evidence") or ()} - set(self.found)


def slim_chain(chain: dict) -> dict:
    """What of a chain the filters, the ordering and the summary read."""
    slim = {k: chain.get(k) for k in ("chain_id", "start_ts", "status")}
    for k in ("client", "backend"):
        if chain.get(k):
            slim[k] = {"namespace": chain[k].get("namespace")}
    service, dns = chain.get("service"), chain.get("dns")
    if service:
        slim["service"] = {"namespace": service.get("namespace"), "name": service.get("name")}
    if dns:
        slim["dns"] = {"qname": dns.get("qname"), "server": {"namespace": (dns.get("server") or {}).get("namespace")}}
    return slim


class _Slimmer:
    """Replaces the chains of a list (the runner's, as they come out) by their slim form."""

    def __init__(self, chains: list) -> None:
        self.chains, self.done = chains, 0

    def take(self) -> None:
        chains = self.chains
        if len(chains) > self.done:
            chains[self.done:] = map(slim_chain, chains[self.done:])
            self.done = len(chains)


def analyze(path: str, cluster: str | None = None, skip_corrupt: bool = False,
            progress_file: TextIO | None = None, want_evidence: bool = True, want_chains: bool = True) -> Analysis:
    """Run the capture through the in-process pipeline. want_evidence=False: alerts' events
    are not kept for printing; want_chains=False: chains are kept only as `slim_chain`s
    (what filters and the summary read), not whole (~5 KiB each), as they come out."""
    from svctrace.agents.scap import CaptureError, open_capture
    from svctrace.streams.core.runner import Runner
    from svctrace.streams.metadata.index import ClusterIndex

    p = check_capture_path(path)
    result = Analysis(path=path)
    records = load_cluster_file(cluster) if cluster else []
    result.index = index = ClusterIndex.from_records(records)
    runner = Runner(index)
    evidence = _EvidenceWindow(runner) if want_evidence else None

    with p.open("rb") as raw:
        reader = open_capture(raw, skip_corrupt=skip_corrupt)
        embedded = None if cluster else _EmbeddedState(reader, index, path, runner.graph)
        progress = _Progress(raw, p.stat().st_size, progress_file)
        table = result.connections
        slimmer = _Slimmer(runner.chains)

        def tap(events):
            """Count, tabulate, keep recent events and pick up embedded state on the way into the runner.
            Per event, so kept lean: locals, bound methods, first/last time as plain ints."""
            count, first_ts, last_ts, lost = 0, NO_TS_FIRST, NO_TS_LAST, 0
            nodes_add, table_add = result.nodes.add, table.add
            keep = evidence.add if evidence is not None else None
            poll = embedded.poll if embedded is not None else None
            slim = None if want_chains else slimmer.take
            try:
                for e in events:
                    if poll is not None:
                        poll()
                    count += 1
                    kind = e.kind
                    nodes_add(e.node)
                    ts = e.ts
                    if ts < first_ts:
                        first_ts = ts
                    if ts > last_ts:
                        last_ts = ts
                    if kind == "lost":
                        lost += max(e.res, 0)
                    table_add(e)
                    if keep is not None:
                        keep(e)
                    if count % PROGRESS_EVERY == 0:
                        progress.update(count)
                        if slim is not None:
                            slim()
                    yield e
            except CaptureError as e:
                if skip_corrupt or not e.at_the_end:
                    raise
                # an interrupted capture: what was read is analyzed, as `sysdig -r` prints it
                result.cut = e
            finally:
                result.events, result.lost = count, lost
                if count:
                    result.first_ts, result.last_ts = first_ts, last_ts

        try:
            runner.feed(tap(reader))  # a CaptureError from the reader comes out of feed: caught below
            if embedded is not None:
                embedded.poll()
            run = runner.finish()
        except CaptureError as e:
            raise _capture_error(e, skip_corrupt) from None
        except OSError as e:
            raise AnalyzeError(f"{path}: cannot read: {e.strerror or e}") from None
        finally:
            progress.close()
        result.chains, result.alerts = list(run.chains), list(run.alerts)
        if not want_chains:
            _Slimmer(result.chains).take()
        result.late = run.stats.get("late", 0)
        result.deadletters = list(getattr(run, "deadletters", None) or ())
        result.reader_stats = reader.stats.as_dict()

    if not result.reader_stats.get("blocks"):
        raise AnalyzeError(f"{path}: not a .scap capture (no valid block in it)")
    if cluster:
        result.cluster_source = cluster
    elif embedded.records:
        records = embedded.records
        result.cluster_source = "state embedded in the capture"
    result.cluster_kinds = Counter(r["kind"] for r in records if not r.get("deleted"))
    result.warnings.extend(_state_mismatch(result, records))
    if result.cut is not None:
        result.warnings.append(f"the capture ends in the middle: {result.cut}; analyzed up to there"
                               " (requests still open there are incomplete)")
    skipped = list(result.reader_stats.get("errors") or ())
    result.warnings.extend(f"skipped: {msg}" for msg in skipped[:MAX_WARNINGS])
    more = max(result.reader_stats.get("error_count") or 0, len(skipped)) - min(len(skipped), MAX_WARNINGS)
    if more > 0:
        result.warnings.append(f"… and {more} more damaged block(s)")
    if evidence is not None:
        missing = evidence.missing(result.alerts)
        if missing:
            evidence.found.update(_second_pass(p, missing, skip_corrupt))
        result.evidence = evidence.found
    return result


def _state_mismatch(result: Analysis, records: list[dict]) -> list[str]:
    """Warnings when the cluster state does not look like the capture's: a state from another
    cluster, or from long after the capture (pods rescheduled), makes every address read as
    outside the cluster, and chains broken, without any other sign."""
    if not records:
        return []
    warnings = []
    known_nodes = {r.get("name") for r in records if r.get("kind") == "Node" and not r.get("deleted")}
    unknown = sorted(n for n in result.nodes if n not in known_nodes)
    if known_nodes and unknown:
        warnings.append(f"the cluster state has no Node {', '.join(unknown[:3])} (the capture's node"
                        f"{'s' if len(unknown) > 1 else ''}): is it this cluster's, from the capture's time?")
    servers = {row.key.server.ip for row in result.connections.rows()
               if row.key.proto in ("tcp", "udp") and row.key.server.ip} - {"127.0.0.1", "::1", "0.0.0.0", "::"}
    known = sum(1 for ip in servers if result.describe(ip))
    if len(servers) >= MIN_ADDRESSES_TO_JUDGE and known == 0:
        warnings.append(f"none of the {len(servers)} server addresses in the capture is a pod, Service or node"
                        " of the cluster state: chains will read as leaving the cluster")
    return warnings


def _second_pass(p: Path, wanted: set[tuple], skip_corrupt: bool) -> dict:
    """Read the capture again for cited events the window no longer held."""
    from svctrace.agents.scap import CaptureError, open_capture

    found: dict = {}
    last = max(n for _, n in wanted)
    try:
        with p.open("rb") as raw:
            for e in open_capture(raw, skip_corrupt=skip_corrupt):
                key = (e.node, e.n)
                if key in wanted:
                    found[key] = e
                if len(found) == len(wanted) or e.n >= last:
                    break
    except CaptureError:
        pass  # the first pass already reported it (or skipped it, with --skip-corrupt)
    return found
