"""`svctrace analyze` rendering, filters and the connection table, on schema-valid documents."""
from __future__ import annotations

import io
import re
from pathlib import Path

import orjson
import pytest

from svctrace.analyze import render
from svctrace.analyze.command import Filter
from svctrace.analyze.connections import ConnectionTable, flow_of
from svctrace.analyze.errors import AnalyzeError
from svctrace.schemas.models import SyscallEvent
from svctrace.schemas.validation import validate
from svctrace.streams.core import run
from tests.scenario import FAULTS, MODES, build

EXAMPLES = Path(__file__).resolve().parent.parent / "schemas" / "examples" / "valid"


def example(name: str) -> dict:
    doc = orjson.loads((EXAMPLES / f"{name}.json").read_bytes())
    validate(name, doc)
    return doc


def plain(lines) -> str:
    buf = io.StringIO()
    console = render.make_console(buf, None)
    for line in lines:
        console.print(line)
    return buf.getvalue()


def test_chain_timeline_names_every_stage_in_order():
    chain = example("chain")
    text = plain([render.chain_title(chain), *render.chain_lines(chain)])
    stages = ["client", "dns query", "dns answer", "connect", "proxy", "backend", "request", "response"]
    positions = [text.index(f"  {s}") for s in stages]
    assert positions == sorted(positions), text
    assert "A my-nginx.default.cluster.local  → 10.0.0.10:53 (cluster DNS)" in text
    assert "NOERROR 10.0.0.159  ttl 30  in 702.0 µs" in text
    assert "→ 10.0.0.159:8080  Service default/my-nginx  (port 8080 → targetPort 80)  EINPROGRESS" in text
    assert "userspace proxy  hyperkube (39579)  on node-a" in text
    assert "172.17.0.6:80  nginx (40473)  in default/my-nginx-3800858182-h9v8d" in text
    assert "request     GET /  Host: my-nginx.default.cluster.local:8080  (99 B)" in text
    assert "response    HTTP/1.1 200  (850 B)" in text
    assert "+4.354 ms" in text  # connect, relative to the chain's first event
    assert "\x1b[" not in text  # piped: plain text


def test_non_cluster_resolver_and_refused_connect_are_called_out():
    chain = example("chain")
    chain.update(status="broken", translation=None, backend=None, response=None, service=None)
    chain["dns"].update(resolver_ip="172.16.189.2", resolver_is_cluster_dns=False, answers=["172.30.0.1"])
    chain["connect"].update(ip="172.30.0.1", res=-111, errno="ECONNREFUSED")
    validate("chain", chain)
    text = plain([render.chain_title(chain), *render.chain_lines(chain)])
    assert "172.30.0.1:8080 (no Service)  BROKEN" in text
    assert "→ 172.16.189.2:53 (NOT the cluster DNS)" in text
    assert "→ 172.30.0.1:8080  ECONNREFUSED" in text


def test_timeline_is_chronological_with_evidence_times():
    chain = example("chain")
    base = chain["start_ts"]
    chain["evidence"] = [
        {"node": "node-a", "n": 1, "ts": base + 5_000_000, "what": "client request"},
        {"node": "node-a", "n": 2, "ts": base + 6_000_000, "what": "proxy dial ECONNREFUSED"},
        {"node": "node-a", "n": 3, "ts": base + 4_500_000, "what": "accept"},
    ]
    chain["response"].update(status=None, error="empty reply", bytes_received=0)
    text = plain(render.chain_lines(chain))
    order = [text.index(s) for s in ("connect", "proxy", "request", "backend", "response")]
    assert order == sorted(order), text
    assert "+6.000 ms  backend     172.17.0.6:80" in text and "dial ECONNREFUSED" in text
    assert "response    empty reply" in text


def test_alert_lines_show_rule_summary_labels_and_evidence():
    alert = example("alert")
    found = {}

    def evidence_text(ref):
        found[(ref["node"], ref["n"])] = True
        return "15:40:58.357730454 hyperkube (39579) accept4 ..."

    text = plain(render.alert_lines(alert, evidence_text))
    assert " CRITICAL  svc.no_endpoints  Service default/my-nginx has no endpoints" in text
    assert "labels    namespace=default node=node-a pod=client-wd32o service=my-nginx" in text
    assert "evidence  node-a #43795  15:40:58.357730454 hyperkube (39579) accept4 ...  (proxy accept then close)" in text
    assert found == {("node-a", 43795): True}


def test_second_alert_on_the_same_evidence_says_as_above():
    alert = example("alert")
    printed: set = set()
    first = plain(render.alert_lines(alert, None, printed))
    second = plain(render.alert_lines(dict(alert, rule="dns.wrong_resolver"), None, printed))
    assert "node-a #43795" in first
    assert "node-a #43795" not in second and "evidence  1 events, as above" in second


def test_colour_only_when_asked_or_on_a_terminal():
    chain = example("chain")
    buf = io.StringIO()
    render.make_console(buf, True).print(render.chain_title(chain))
    assert "\x1b[" in buf.getvalue()
    buf = io.StringIO()
    render.make_console(buf, False).print(render.chain_title(chain))
    assert "\x1b[" not in buf.getvalue()


class FakeTerminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_terminal_gets_colour_and_the_same_words():
    chain = example("chain")
    tty = FakeTerminal()
    console = render.make_console(tty, None)
    for line in render.chain_lines(chain):
        console.print(line)
    assert "\x1b[" in tty.getvalue()
    stripped = re.sub(r"\x1b\[[0-9;]*m", "", tty.getvalue())
    assert stripped == plain(render.chain_lines(chain))


@pytest.mark.parametrize("color_system", ["standard", "256", "truecolor", None])
def test_terminal_lines_are_the_bytes_rich_writes(color_system):
    from rich.console import Console

    chain = example("chain")
    lines = [render.chain_title(chain), *render.chain_lines(chain), None,
             *render.alert_lines(example("alert"), lambda ref: "15:40:58.357730454 hyperkube (39579) accept4")]
    lines += [render.Line("p", "dim").append("a").append("b").append("\x07", "red").append("c").append("d", "bold"),
              render.Line("ctl\rx\x08y", "yellow").append("[bold]m[/bold]", "cyan"), render.Line("", "dim"),
              render.Line("  ").append("", "bold").append("q"), render.Line("tab\there", "red"),
              render.Line("new\nline").append("z", "bold"), render.Line("宽 trailing   ", "bold white on red")]
    assert isinstance(render.make_console(FakeTerminal(), True), render.TerminalConsole)
    written = []
    for ours in (False, True):
        console = Console(file=io.StringIO(), highlight=False, soft_wrap=True, emoji=False, force_terminal=True,
                          color_system=color_system)
        console = render.TerminalConsole(console) if ours else console
        for line in lines:
            console.print() if line is None else console.print(line)
        written.append(console.file.getvalue())
    assert written[0] == written[1]
    assert color_system is None or "\x1b[" in written[1]


def test_markup_in_data_is_printed_literally():
    chain = example("chain")
    chain["client"]["comm"] = "[bold]x[/bold]"
    tty = FakeTerminal()
    console = render.make_console(tty, True)
    for line in render.chain_lines(chain):
        console.print(line)
    assert "[bold]x[/bold] (51151)" in tty.getvalue()


def test_piped_line_is_what_rich_would_print_with_control_codes_in_data():
    chain = example("chain")
    chain["client"]["comm"] = "cu\rrl\x07\x08"  # rich drops BEL, BS, VT, FF, CR; piped output must too
    lines = [render.chain_title(chain), *render.chain_lines(chain)]
    text = plain(lines)
    assert "curl (51151)" in text
    assert text == "".join(line.__rich__().plain + "\n" for line in lines)


def test_long_lines_are_not_wrapped_when_piped():
    chain = example("chain")
    chain["dns"]["qname"] = "a" * 200 + ".default.svc.cluster.local"
    text = plain(render.chain_lines(chain))
    assert any(len(line) > 200 for line in text.splitlines())


@pytest.mark.parametrize("ns,svc,chain_kept,alert_kept", [
    (None, None, True, True),
    ("default", None, True, True),
    ("kube-system", None, False, False),
    (None, "my-nginx", True, True),
    (None, "default/my-nginx", True, True),
    (None, "other/my-nginx", False, False),
    (None, "my-nginx-legacy", False, False),
])
def test_filters(ns, svc, chain_kept, alert_kept):
    f = Filter(ns, svc)
    assert f.chain(example("chain")) is chain_kept
    assert f.alert(example("alert")) is alert_kept


def test_contradicting_filters_are_an_error():
    with pytest.raises(AnalyzeError, match="contradicts"):
        Filter("kube-system", "default/my-nginx")


def ev(**kw) -> SyscallEvent:
    base = dict(ts=1, node="n", n=1, pid=10, tid=10, comm="p", kind="send", syscall="sendto", fd=3, res=5,
                proto="tcp", family="ipv4")
    base.update(kw)
    return SyscallEvent(**base)


def test_both_ends_of_a_connection_name_the_same_flow():
    client = ev(role="client", local_ip="10.1.0.5", local_port=50950, remote_ip="10.1.0.9", remote_port=80)
    server = ev(role="server", kind="recv", syscall="read", local_ip="10.1.0.9", local_port=80,
                remote_ip="10.1.0.5", remote_port=50950)
    assert flow_of(client)[1:] == flow_of(server)[1:]
    assert str(flow_of(client)[1]) == "10.1.0.5:50950" and str(flow_of(client)[2]) == "10.1.0.9:80"


def test_udp_server_is_the_service_port_whoever_bound():
    # haproxy sending syslog from a bound ephemeral port: still the client of :514
    e = ev(proto="udp", role="server", local_ip="0.0.0.0", local_port=55441, remote_ip="127.0.0.1", remote_port=514)
    role, client, server = flow_of(e)
    assert (role, server.port, client.port) == ("client", 514, 55441)


def test_connection_table_totals_and_order():
    t = ConnectionTable()
    kw = dict(role="client", local_ip="10.1.0.5", local_port=50950, remote_ip="10.1.0.9", remote_port=80)
    t.add(ev(ts=5, kind="connect", syscall="connect", res=-115, errno="EINPROGRESS", **kw))
    t.add(ev(ts=6, res=99, **kw))
    t.add(ev(ts=7, kind="recv", syscall="recvfrom", res=850, **kw))
    t.add(ev(ts=8, kind="recv", syscall="recvfrom", res=-11, errno="EAGAIN", **kw))
    t.add(ev(ts=2, pid=11, kind="connect", syscall="connect", res=-111, errno="ECONNREFUSED",
             role="client", local_ip="10.1.0.5", local_port=50951, remote_ip="10.1.0.9", remote_port=81))
    t.add(ev(ts=3, proto="unix", family="unix"))
    rows = t.rows()
    assert [r.key.pid for r in rows] == [11, 10]
    assert (rows[1].totals.bytes_out, rows[1].totals.bytes_in, rows[1].totals.errors) == (99, 850, {})
    assert rows[0].totals.errors == {"ECONNREFUSED": 1}
    assert (t.net_events, t.unix_events) == (5, 1)
    text = plain(render.connection_lines(rows))
    assert "p (10)  tcp  10.1.0.5:50950 → 10.1.0.9:80  client  out 99 B  in 850 B  4 events" in text
    assert "ECONNREFUSED×1" in text


STAGE_OF_MODE = {"userspace_proxy": "proxy", "dnat": "dnat", "socket_lb": "socket-lb", "none": "xlat"}


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("fault", FAULTS)
def test_every_seed_fault_in_every_translation_mode_reads_as_a_timeline(fault, mode):
    """The core's scenarios (tests/scenario.py) rendered: status, the translation stage, the outcome."""
    cluster, events = build(fault, mode)
    result = run(events, cluster.index())
    rules = {a["alert_id"]: a["rule"] for a in result.alerts}
    for chain in result.chains:
        text = plain([render.chain_title(chain), *render.chain_lines(chain, rules)])
        assert f"  {chain['status'].upper()}  " in text
        if chain.get("translation"):
            stage = STAGE_OF_MODE[chain["translation"]["mode"]]
            assert f"  {stage:<10}  " in text, text
        if chain["status"] == "broken":
            assert chain["response"]["error"] in text
            assert "alerts      " + ", ".join(rules[a] for a in chain["alerts"]) in text
        else:
            assert "response    HTTP 200" in text


@pytest.mark.parametrize("ns,text", [(999, "999 ns"), (702_000, "702.0 µs"), (6_874_000, "6.87 ms"),
                                     (4_000_000_000, "4.00 s"), (1499 * 10**9, "24 min 59 s"), (7300 * 10**9, "2 h 1 min")])
def test_durations(ns, text):
    assert render.duration(ns) == text


def test_summary_counts_dead_letters():
    from svctrace.analyze.pipeline import Analysis

    a = Analysis(path="x.scap")
    a.deadletters = [{"stage": "stitch", "reason": "stitch failed on this record: KeyError", "error": "'ts'"}] * 2
    rows = dict(a.summary_rows([], [], Filter(None, None)))
    assert rows["skipped"] == ("2 record(s) the pipeline could not process"
                               " (dead letters; 2× stitch failed on this record: KeyError: 'ts')")


def test_an_alert_over_many_chains_names_five_and_counts_the_rest():
    from svctrace.analyze.render import MAX_CHAIN_IDS, alert_lines
    ids = [f"ch-{i:020x}" for i in range(12)]
    alert = {"severity": "critical", "rule": "dns.nxdomain", "summary": "x does not exist", "labels": {},
             "first_seen": 1, "last_seen": 2, "count": 12, "chain_ids": ids, "evidence": []}
    text = "\n".join(line.plain for line in alert_lines(alert))
    [chains] = [t for t in text.splitlines() if t.strip().startswith("chains")]
    assert ids[MAX_CHAIN_IDS - 1] in chains and ids[MAX_CHAIN_IDS] not in chains
    assert chains.endswith(f"… and {len(ids) - MAX_CHAIN_IDS} more")


def test_a_bounded_evidence_list_keeps_the_first_and_the_last_events():
    """`svctrace watch` shows the first event and where the request ended, and counts the rest."""
    refs = [{"node": "node-a", "n": n, "ts": 1_000 + n, "what": f"step {n}"} for n in range(1, 21)]
    alert = {"severity": "critical", "rule": "svc.target_port_refused", "summary": "refused", "labels": {},
             "first_seen": 1, "last_seen": 1, "count": 1, "chain_ids": [], "evidence": refs}
    shown = [t for t in plain(render.alert_lines(alert, max_evidence=6)).splitlines() if "#" in t or "more" in t]
    assert [re.search(r"#(\d+)", t).group(1) for t in shown if "#" in t] == ["1", "16", "17", "18", "19", "20"]
    assert shown[1].strip() == "… 14 more events"
    every = plain(render.alert_lines(alert)).count("node-a #")
    assert every == 20 and plain(render.alert_lines(alert, max_evidence=20)).count("node-a #") == 20


def test_connection_rows_count_the_http_statuses_each_end_saw():
    """A response counts on the end that sent it (server) and the end that read it (client); a
    request, or a response seen the wrong way round, counts nowhere."""
    c = dict(local_ip="10.1.0.5", local_port=50950, remote_ip="10.1.0.9", remote_port=80)
    s = dict(local_ip="10.1.0.9", local_port=80, remote_ip="10.1.0.5", remote_port=50950, pid=20, tid=20, comm="srv")
    t = ConnectionTable()
    for status in (200, 200, 502):
        head = f"HTTP/1.1 {status} X\r\nContent-Length: 0\r\n\r\n".encode()
        t.add(ev(role="client", data=b"GET / HTTP/1.1\r\nHost: a\r\n\r\n", **c))
        t.add(ev(role="server", kind="send", data=head, res=len(head), **s))
        t.add(ev(role="client", kind="recv", syscall="read", data=head, res=len(head), **c))
    [client, server] = sorted(t.rows(), key=lambda r: r.totals.role)
    assert client.totals.statuses == server.totals.statuses == {200: 2, 502: 1}
    text = plain(render.connection_lines(t.grouped_rows()))
    assert text.count("HTTP 200×2 502") == 2


def test_the_proxy_that_turned_a_200_into_a_502(captures):
    """sysdig-inspect's 502Error capture: haproxy answers one request 502 while every response its
    python backend sent, and haproxy read, was 200 (the backend's header lines were malformed)."""
    from svctrace.analyze.pipeline import analyze

    rows = {(r.key.comm, r.totals.role, r.key.server.port): r.totals.statuses
            for r in analyze(captures / "inspect__502Error.scap").connections.grouped_rows()}
    assert rows[("haproxy", "server", 80)] == {200: 36, 502: 1}
    assert rows[("haproxy", "client", 80)] == rows[("python", "server", 80)] == {200: 37}


def test_each_5xx_is_listed_with_who_sent_it_and_the_request_it_answered(captures):
    """The 502 on one line: haproxy sent it, for GET /foo, although every response it got from its
    backend was 200 (its own answer); sysdig -r shows the request at 00:44:37.019928189."""
    from svctrace.analyze.pipeline import analyze

    table = analyze(captures / "inspect__502Error.scap").connections
    [err] = table.server_errors
    assert (err.comm, err.sent, err.status, err.request) == ("haproxy", True, 502, "GET /foo")
    [line] = plain(render.server_error_lines(table)).splitlines()
    assert line.startswith("  00:44:37.02") and "haproxy (13969)  sent 502 to 192.168.0.1:44604  for GET /foo" in line
    assert "its own answer" in line


def test_a_5xx_the_client_got_names_the_server_and_the_request():
    c = dict(local_ip="10.1.0.5", local_port=50950, remote_ip="10.1.0.9", remote_port=80)
    t = ConnectionTable()
    head = b"HTTP/1.1 503 Service Unavailable\r\n\r\n"
    t.add(ev(role="client", kind="send", data=b"POST /orders HTTP/1.1\r\nHost: a\r\n\r\n", res=40, **c))
    t.add(ev(role="client", kind="recv", syscall="read", data=head, res=len(head), **c))
    [err] = t.server_errors
    assert (err.sent, err.status, err.request, str(err.server)) == (False, 503, "POST /orders", "10.1.0.9:80")
    assert "got 503 from 10.1.0.9:80  for POST /orders" in plain(render.server_error_lines(t))


def test_the_dns_answer_line_is_at_the_answer_the_lookup_ended_with():
    """With ndots:5 the first answers are the search list's NXDOMAINs: the line goes where the dns
    hop ends (the positive answer), beside the lookup's latency."""
    chain = example("chain")
    start = chain["start_ts"]
    chain["evidence"] = [{"node": "node-a", "n": 1, "ts": start, "what": "dns query x.default.svc.cluster.local. A"},
                         {"node": "node-a", "n": 2, "ts": start + 4_585_000, "what": "dns answer NXDOMAIN"},
                         {"node": "node-a", "n": 3, "ts": start + 17_214_000, "what": "dns answer NOERROR 10.0.0.1"}]
    chain["hops"] = [{"name": "dns", "start_ts": start, "end_ts": start + 17_214_000, "latency_ns": 17_214_000}]
    [answer] = [t for t in plain(render.chain_lines(chain)).splitlines() if "dns answer" in t]
    assert answer.split()[0] == "+17.214"
    del chain["hops"][0]  # no hop (no positive answer): the last answer seen
    [answer] = [t for t in plain(render.chain_lines(chain)).splitlines() if "dns answer" in t]
    assert answer.split()[0] == "+17.214"


def test_a_udp_flow_reads_as_datagram_backend_and_reply():
    """A UDP Service's chain: its first datagram where a TCP chain has its connect, the pod that received it, the
    reply (or, fire and forget, none: delivered)."""
    from tests.scenario import T0, Cluster, Scenario

    cluster = Cluster()
    cluster.add_udp_service()
    texts = []
    for reply in (True, False):
        sc = Scenario(cluster)
        sc.udp_flow(T0, reply=reply)
        [chain] = [c for c in run(sc.events(), cluster.index()).chains if c["service"]]
        texts.append(plain([render.chain_title(chain), *render.chain_lines(chain)]))
    answered, delivered = texts
    assert "default/metrics:8125/UDP  OK" in answered
    stages = ["dns query", "dns answer", "datagram", "dnat", "backend", "reply"]
    positions = [answered.index(f"  {s}  ") for s in stages]
    assert positions == sorted(positions), answered
    assert "datagram    → 10.96.0.120:8125  Service default/metrics  (port 8125 → targetPort 8125)" in answered
    assert "backend     10.244.2.20:8125  statsd (800)  in default/metrics-1 on node-b" in answered
    assert re.search(r"\+\d+\.\d+ ms  reply       \(2 B\)", answered), answered
    assert "  connect  " not in answered and "  response  " not in answered
    assert "reply       delivered, no reply" in delivered


def test_a_backend_socket_lb_chose_that_never_answered_says_so():
    """Socket-LB names the pod it sent the connect to: when nothing there took it, the backend line says that
    pod never answered (not that it was reached)."""
    from tests.scenario import Cluster
    from tests.test_core_socket_lb import _timed_out_connect

    cluster = Cluster()
    [chain] = [c for c in run(_timed_out_connect(cluster, cluster.pods["my-nginx-1"]), cluster.index()).chains
               if c["service"]]
    text = plain(render.chain_lines(chain))
    assert "backend     10.244.1.7:80  in default/my-nginx-1 on node-a  socket-LB's choice: never answered" in text
