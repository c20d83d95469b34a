"""Human output of `svctrace analyze`: request chains as timelines, alerts with their
evidence, connections seen, and a summary.

Every line is a `Line` of (text, style) pieces, never console markup (a process
named "[bold]" prints as itself). On a terminal the pieces are written with the colour
codes rich's styles give them (TerminalConsole: the bytes rich's Console writes for
the line as a `Text`); piped, they are joined and written as plain text, unwrapped.
Neither pays rich's layout pass per line on thousands of lines.
Times are UTC so output is the same on every machine.
"""
from __future__ import annotations

import datetime as _dt
from collections import Counter

from rich.control import strip_control_codes

from svctrace.analyze.connections import ConnectionRow

STATUS_STYLE = {"ok": "bold green", "broken": "bold red", "incomplete": "bold yellow"}
SEVERITY_STYLE = {"critical": "bold white on red", "warning": "bold black on yellow", "info": "bold white on blue"}
SEVERITY_ORDER = {"critical": 0, "warning": 1, "info": 2}
LABEL = "bold cyan"
DIM = "dim"
STAGE_WIDTH = 10


def fails(severity: str | None, fail_on: str) -> bool:
    """Whether an alert of `severity` makes the exit status 1 under --fail-on (analyze's, watch's)."""
    if fail_on == "never":
        return False
    return SEVERITY_ORDER.get(severity, 9) <= SEVERITY_ORDER[fail_on]


def failing(alerts, fail_on: str) -> list[dict]:
    """The alerts that make the exit status 1 under --fail-on."""
    return [a for a in alerts if fails(a.get("severity"), fail_on)]


class Line:
    """One output line as (text, style) pieces, built like rich's `Text` (a base style for
    the whole line, then appended pieces) but without its per-piece work: `plain` joins the
    pieces, `__rich__` makes the `Text` a terminal console prints."""

    __slots__ = ("style", "texts", "styles")

    def __init__(self, text: str = "", style: str = "") -> None:
        self.style = style
        self.texts = [text]
        self.styles = [""]

    def append(self, text: str, style: str = "") -> Line:
        self.texts.append(text)
        self.styles.append(style)
        return self

    @property
    def plain(self) -> str:
        """What rich's `Text.plain` would be: control codes (BEL, BS, VT, FF, CR) stripped.
        str.translate is slow on non-ASCII text (every line has an arrow): only when needed."""
        text = "".join(self.texts)
        return text if text.isprintable() else strip_control_codes(text)

    def __rich__(self):
        from rich.text import Text

        text = Text(self.texts[0], style=self.style)
        for piece, style in zip(self.texts[1:], self.styles[1:]):
            text.append(piece, style=style)
        return text


# --- formatting helpers ------------------------------------------------------------------
def clock(ts: int | None) -> str:
    """HH:MM:SS.uuuuuu (UTC) of a ns timestamp."""
    return _time_of_day(ts, 6)


def clock_ns(ts: int | None) -> str:
    """HH:MM:SS.nnnnnnnnn (UTC) of a ns timestamp, as sysdig prints it."""
    return _time_of_day(ts, 9)


def _time_of_day(ts: int | None, digits: int) -> str:
    if ts is None:
        return "?"
    secs, ns = divmod(ts, 1_000_000_000)
    t = _dt.datetime.fromtimestamp(secs, _dt.timezone.utc)
    return f"{t:%H:%M:%S}.{ns // 10 ** (9 - digits):0{digits}d}"


def date_of(ts: int | None) -> str:
    if ts is None:
        return "?"
    return f"{_dt.datetime.fromtimestamp(ts // 1_000_000_000, _dt.timezone.utc):%Y-%m-%d}"


def duration(ns: int | None) -> str:
    if ns is None:
        return "?"
    if ns < 1_000:
        return f"{ns} ns"
    if ns < 1_000_000:
        return f"{ns / 1_000:.1f} µs"
    if ns < 1_000_000_000:
        return f"{ns / 1_000_000:.2f} ms"
    if ns < 60_000_000_000:
        return f"{ns / 1_000_000_000:.2f} s"
    minutes, secs = divmod(ns // 1_000_000_000, 60)
    hours, minutes = divmod(minutes, 60)
    return f"{hours} h {minutes} min" if hours else f"{minutes} min {secs} s"


def offset_ms(ts: int | None, start: int) -> str:
    if ts is None:
        return ""
    return f"+{(ts - start) / 1_000_000:.3f} ms"


def nbytes(n: int | None) -> str:
    if n is None:
        return "?"
    for unit in ("B", "KiB", "MiB", "GiB"):
        if n < 1024 or unit == "GiB":
            return f"{n} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n} B"


def addr(ip: str | None, port: int | None) -> str:
    if not ip:
        return "?" if port is None else f"?:{port}"
    host = f"[{ip}]" if ":" in ip else ip
    return host if port is None else f"{host}:{port}"


def process(ep: dict | None) -> str:
    """`comm (pid)`, the way sysdig prints a process."""
    if not ep:
        return "?"
    comm, pid = ep.get("comm"), ep.get("pid")
    if comm and pid is not None:
        return f"{comm} ({pid})"
    return comm or (f"pid {pid}" if pid is not None else "")


def workload(ep: dict | None) -> str:
    """`in ns/pod on node` when known."""
    if not ep:
        return ""
    parts = []
    if ep.get("pod"):
        parts.append(f"in {ep.get('namespace') or '?'}/{ep['pod']}")
    elif ep.get("container_id"):
        parts.append(f"in container {ep['container_id'][:12]}")
    if ep.get("node"):
        parts.append(f"on {ep['node']}")
    return " ".join(parts)


def _join(*parts: str) -> str:
    return "  ".join(p for p in parts if p)


def is_cluster_name(qname: str | None) -> bool:
    """A name only the cluster DNS can answer (the default cluster domain)."""
    name = (qname or "").rstrip(".").lower()
    return name.endswith((".cluster.local", ".svc")) or ".svc." in name


# --- chains ----------------------------------------------------------------------------
def _hop(chain: dict, name: str) -> dict | None:
    for hop in chain.get("hops") or ():
        if hop.get("name") == name:
            return hop
    return None


def _ev(chain: dict, *prefixes: str) -> dict | None:
    """The first evidence ref whose description starts with one of `prefixes` (the stitcher's words)."""
    for ref in chain.get("evidence") or ():
        what = ref.get("what") or ""
        if ref.get("ts") is not None and what.startswith(prefixes):
            return ref
    return None


def _ts(chain: dict, prefixes: tuple[str, ...], hop: str | None = None, end: bool = False) -> int | None:
    ref = _ev(chain, *prefixes)
    if ref is not None:
        return ref["ts"]
    h = _hop(chain, hop) if hop else None
    if h is not None:
        return h["end_ts"] if end else h["start_ts"]
    return None


def _errno_in(ref: dict | None) -> str | None:
    """`proxy dial ECONNREFUSED` -> ECONNREFUSED. EINPROGRESS is no error: a non-blocking
    connect's result comes later (its getsockopt(SO_ERROR), a second `proxy dial` ref)."""
    if not ref:
        return None
    last = (ref.get("what") or "").split()[-1:]
    return last[0] if last and last[0].startswith("E") and last[0].isupper() and last[0] != "EINPROGRESS" else None


def _dial_error(chain: dict) -> str | None:
    """The proxy dial's error, from the dial itself or from its later result."""
    for ref in chain.get("evidence") or ():
        if (ref.get("what") or "").startswith("proxy dial"):
            errno = _errno_in(ref)
            if errno:
                return errno
    return None


def chain_title(chain: dict) -> Line:
    status = chain.get("status", "?")
    svc = chain.get("service") or {}
    title = Line()
    title.append("● ", style=STATUS_STYLE.get(status, ""))
    if svc:
        port = svc.get("port")
        proto = "/UDP" if svc.get("protocol") == "UDP" else ""  # (TCP, the usual, unsaid)
        title.append(f"{svc.get('namespace')}/{svc.get('name')}" + (f":{port}{proto}" if port else ""), style="bold")
    else:
        conn = chain.get("connect") or {}
        qname = (chain.get("dns") or {}).get("qname")
        target = addr(conn.get("ip"), conn.get("port")) if conn.get("ip") else "?"
        title.append(_join(qname or "", f"→ {target}" if qname else target) + " (no Service)", style="bold")
    title.append("  ")
    title.append(status.upper(), style=STATUS_STYLE.get(status, ""))
    if status == "incomplete" and chain.get("incomplete_reason"):
        title.append(f" ({chain['incomplete_reason']})", style="yellow")
    if chain["end_ts"] > chain["start_ts"]:  # a one-event chain has no duration worth printing
        title.append(f"  {duration(chain['end_ts'] - chain['start_ts'])}", style=DIM)
    title.append(f"  {clock(chain['start_ts'])}  {chain['chain_id']}", style=DIM)
    return title


TRANSLATION_LABEL = {  # mode -> (timeline stage, description)
    "userspace_proxy": ("proxy", "userspace proxy"),
    "dnat": ("dnat", "DNAT (iptables/IPVS/nftables)"),
    "socket_lb": ("socket-lb", "eBPF socket-LB rewrote the connect"),
    "nodeport_snat": ("snat", "NodePort SNAT"),
    "none": ("xlat", "no translation seen"),
}


def chain_lines(chain: dict, alert_rules: dict | None = None, server_process=None) -> list[Line]:
    """The timeline: client, DNS query and answer, connect, translation, backend, request, response."""
    start = chain["start_ts"]
    rows: list[tuple[int | None, str, str, str]] = []  # (ts, stage, text, style)
    client = chain.get("client") or {}
    rows.append((None, "client", _join(process(client), addr(client.get("ip"), client.get("port")),
                                       workload(client)), ""))

    dns = chain.get("dns")
    if dns:
        resolver = addr(dns.get("resolver_ip"), dns.get("resolver_port"))
        cluster_name = is_cluster_name(dns.get("qname")) or bool(chain.get("service"))
        if dns.get("resolver_is_cluster_dns"):
            kind = "cluster DNS"
        else:
            kind = "NOT the cluster DNS" if cluster_name else "not the cluster DNS"
        queries = dns.get("queries") or 1
        extra = f"{queries} queries" if queries > 1 else ""
        if dns.get("retries"):
            extra = _join(extra, f"{dns['retries']} retries")
        q_ts = _ts(chain, ("dns query",), "dns") or start
        rows.append((q_ts, "dns query", _join(f"{dns.get('qtype', '?')} {dns.get('qname')}", f"→ {resolver} ({kind})", extra),
                     "red" if cluster_name and not dns.get("resolver_is_cluster_dns") else ""))
        rcode = dns.get("rcode")
        if rcode is None and not dns.get("answers"):
            rows.append((None, "dns answer", "no answer seen", "red"))
        else:
            answers = ", ".join(dns.get("answers") or ()) or "(no records)"
            cnames = " via " + ", ".join(dns["cnames"]) if dns.get("cnames") else ""
            ttl = f"ttl {dns['ttl']}" if dns.get("ttl") is not None else ""
            took = f"in {duration(dns['latency_ns'])}" if dns.get("latency_ns") is not None else ""
            server = dns.get("server")
            by = _join(f"answered by {process(server)}", workload(server)) if server else ""
            # the answer the lookup ended with: the dns hop ends at it (earlier answers may be
            # the search list's NXDOMAINs); without a hop, the last answer seen
            hop = _hop(chain, "dns")
            answered = [r for r in chain.get("evidence") or () if (r.get("what") or "").startswith("dns answer")]
            a_ts = hop["end_ts"] if hop else answered[-1].get("ts") if answered else None
            rows.append((a_ts, "dns answer", _join(f"{rcode or '?'} {answers}{cnames}", ttl, took, by),
                         "" if rcode in (None, "NOERROR") else "red"))

    conn = chain.get("connect")
    svc = chain.get("service")
    udp = (svc or {}).get("protocol") == "UDP"  # a UDP flow: its first datagram is the connect, a reply the response
    if conn or svc:
        conn = conn or {}
        target = addr(conn.get("ip") or (svc or {}).get("cluster_ip"), conn.get("port") or (svc or {}).get("port"))
        what = f"→ {target}"
        if svc:
            tp = svc.get("target_port")
            ports = f"port {svc.get('port')} → targetPort {tp}" if tp is not None else ""
            what = _join(what, f"Service {svc.get('namespace')}/{svc.get('name')}", f"({ports})" if ports else "")
        style = ""
        if conn.get("errno"):
            what = _join(what, conn["errno"])
            style = "" if conn["errno"] in ("EINPROGRESS", "EAGAIN") else "red"
        elif conn.get("res") is not None:
            what = _join(what, f"res={conn['res']}")
        rows.append((conn.get("ts"), "datagram" if udp else "connect", what, style))

    tr = chain.get("translation")
    if tr:
        mode = tr.get("mode", "?")
        stage, label = TRANSLATION_LABEL.get(mode, ("xlat", mode))
        proxy = tr.get("proxy")
        text = _join(label, process(proxy) if proxy else "", workload(proxy) if proxy else "",
                     f"accepted on {addr(proxy.get('ip'), proxy.get('port'))}" if proxy and proxy.get("ip") else "",
                     f"(confidence {tr.get('confidence')})" if tr.get("confidence") != "high" else "")
        headless = mode == "none" and chain.get("service") and not chain["service"].get("cluster_ip")
        if headless:  # by design: the name resolved to the pods themselves
            stage, text = "direct", "headless Service: the client connects to the pod itself"
        rows.append((_ts(chain, ("accept",), "proxy"), stage, text, "red" if mode == "none" and not headless else ""))

    backend = chain.get("backend")
    dial = _ev(chain, "proxy dial")
    if backend:
        refused = _dial_error(chain)
        who = process(backend)
        if not who and server_process and not refused:  # a proxied backend's events are in another flow
            who = server_process(backend.get("ip"), backend.get("port"), backend.get("node")) or ""
        text = _join(addr(backend.get("ip"), backend.get("port")), who, workload(backend))
        if refused:
            text = _join(text, f"dial {refused}")
        # socket-LB names the pod it sent the connect to, whether or not anything there took it
        unanswered = (not who and (tr or {}).get("mode") == "socket_lb"
                      and (chain.get("response") or {}).get("error") in ("connection timed out", "no reply"))
        if unanswered:
            text = _join(text, "socket-LB's choice: never answered")
        rows.append((dial["ts"] if dial else _ts(chain, ("backend received" if udp else "backend request",)), "backend",
                     text, "red" if refused or unanswered else ""))
    elif tr and chain.get("status") == "broken":
        rows.append((None, "backend", "none reached", "red"))
    elif tr and tr.get("mode") not in (None, "none") and chain.get("status") == "ok":
        # answered, but no pod's accept showed the client's address: masqueraded (a hairpin, a
        # NodePort from a pod), or that node was not captured
        rows.append((None, "backend", "not linked (no accept with the client's address: masqueraded, or not captured)",
                     DIM))

    resp = chain.get("response")
    if resp:
        req = _join(" ".join(x for x in (resp.get("method"), resp.get("target")) if x),
                    f"Host: {resp['host']}" if resp.get("host") else "",
                    f"({nbytes(resp['bytes_sent'])})" if resp.get("bytes_sent") else "")
        if resp.get("method"):
            rows.append((_ts(chain, ("client request",), "response"), "request", req, ""))
        status = resp.get("status")
        proto = (resp.get("protocol") or "").upper()
        outcome = _join(f"{proto or 'status'} {status}" if status is not None else "",
                        f"({nbytes(resp['bytes_received'])})" if resp.get("bytes_received") else "",
                        resp.get("error") or "")
        bad = bool(resp.get("error")) or (status is not None and status >= 500)
        r_ts = _ts(chain, ("client response", "client reply", "client got EOF", "client recv error"), "response",
                   end=True)
        if r_ts is None and resp.get("error") not in ("connection timed out", "no reply"):
            r_ts = chain["end_ts"]
        # A timeout is inferred from silence: no event shows it, so its line has no time of its own.
        if udp and not outcome:
            outcome = "delivered, no reply"  # (a backend received it: fire and forget, as statsd)
        rows.append((r_ts, "reply" if udp else "response", outcome or "?", "red" if bad else "green"))

    # Chronological; a stage with no time of its own stays right after the one before it, but a
    # missing backend (none reached, not linked) is known only when the request ended: that line
    # goes just before the response.
    keyed, last = [], start - 1
    response_ts = next((r[0] for r in rows if r[1] in ("response", "reply") and r[0] is not None), None)
    for i, row in enumerate(rows):
        last = row[0] if row[0] is not None else last
        if row[1] == "backend" and not backend and response_ts is not None:
            keyed.append(((response_ts, -1), row))
            continue
        keyed.append(((last, i), row))
    lines = []
    for _, (ts, stage, text, style) in sorted(keyed, key=lambda kv: kv[0]):
        line = Line("  ")
        line.append(f"{offset_ms(ts, start):>12}  ", style=DIM)
        line.append(f"{stage:<{STAGE_WIDTH}}  ", style=LABEL)
        line.append(text, style=style)
        lines.append(line)
    hops = [h for h in chain.get("hops") or () if h.get("latency_ns") is not None]
    if hops:
        line = Line("  " + " " * 14)
        line.append(f"{'latency':<{STAGE_WIDTH}}  ", style=LABEL)
        line.append("  ".join(f"{h['name']} {duration(h['latency_ns'])}" for h in hops), style=DIM)
        lines.append(line)
    if chain.get("alerts"):
        line = Line("  " + " " * 14)
        line.append(f"{'alerts':<{STAGE_WIDTH}}  ", style=LABEL)
        rules = alert_rules or {}
        line.append(", ".join(rules.get(a, a) for a in chain["alerts"]), style="red")
        lines.append(line)
    return lines


# --- alerts ----------------------------------------------------------------------------
MAX_CHAIN_IDS = 5  # an alert's chains listed by id (an alert counted over many: the rest are in --json)


def alert_lines(alert: dict, evidence_text=None, printed: set | None = None,
                max_evidence: int | None = None) -> list[Line]:
    """One alert: severity, rule, summary; then labels, when, chains and its evidence, one
    syscall per line like `sysdig -r` prints it.

    `evidence_text(ref) -> str | None` renders the event a ref points at; `printed` collects
    the refs already shown, so a second alert on the same chain says "as above";
    `max_evidence` shows only the first ref and the last ones (where a chain's failure is),
    saying how many were left out.
    """
    sev = alert.get("severity", "info")
    head = Line("  ")
    head.append(f" {sev.upper()} ", style=SEVERITY_STYLE.get(sev, ""))
    head.append(f" {alert['rule']}", style="bold")
    if alert.get("count", 1) > 1:
        head.append(f"  ×{alert['count']}", style="bold")
    head.append(f"  {alert['summary']}")
    lines = [head]

    def field(name: str, text: str, style: str = "") -> Line:
        line = Line("      ")
        line.append(f"{name:<9} ", style=LABEL)
        line.append(text, style=style)
        lines.append(line)
        return line

    labels = " ".join(f"{k}={v}" for k, v in sorted((alert.get("labels") or {}).items()) if v is not None)
    if labels:
        field("labels", labels)
    seen = f"{date_of(alert.get('first_seen'))} {clock(alert.get('first_seen'))}"
    if alert.get("last_seen") != alert.get("first_seen"):
        seen += f" … {clock(alert.get('last_seen'))}"
    field("seen", seen + " UTC")
    ids = alert.get("chain_ids")
    if ids:
        shown = ", ".join(ids[:MAX_CHAIN_IDS])
        field("chains", shown if len(ids) <= MAX_CHAIN_IDS else f"{shown} … and {len(ids) - MAX_CHAIN_IDS} more", DIM)
    refs = list(alert.get("evidence") or ())
    keys = {(r.get("node"), r.get("n")) for r in refs}
    if printed is not None and refs and keys <= printed:
        field("evidence", f"{len(refs)} events, as above", DIM)
        return lines
    if printed is not None:
        printed |= keys
    left_out = 0
    if max_evidence and len(refs) > max_evidence:
        left_out = len(refs) - max_evidence
        refs = refs[:1] + [None] + refs[1 + left_out:]
    for i, ref in enumerate(refs):
        if ref is None:
            field("", f"… {left_out} more events", DIM)
            continue
        line = field("evidence" if i == 0 else "", f"{ref.get('node')} #{ref.get('n')}", DIM)
        text = evidence_text(ref) if evidence_text else None
        line.append(f"  {text}" if text else f"  {clock_ns(ref.get('ts'))}")
        if ref.get("what"):
            line.append(f"  ({ref['what']})", style="cyan")
    return lines


MAX_INFO_LINES = 10  # info alerts listed per rule in the text report


def info_alert_lines(alerts: list[dict]) -> list[Line]:
    """Info alerts (costs, not failures: e.g. ndots search expansions) folded to one line
    each under their rule, so they do not bury the failures; --json has them whole."""
    lines: list[Line] = []
    by_rule: dict[str, list[dict]] = {}
    for a in alerts:
        by_rule.setdefault(a["rule"], []).append(a)
    for rule, group in by_rule.items():
        head = Line("  ")
        head.append(" INFO ", style=SEVERITY_STYLE.get("info", ""))
        head.append(f" {rule}", style="bold")
        head.append(f"  {len(group)} alert{'s' if len(group) != 1 else ''}, one line each"
                    " (--json has their labels and evidence)", style=DIM)
        lines.append(head)
        for a in group[:MAX_INFO_LINES]:
            line = Line("      ")
            if a.get("count", 1) > 1:
                line.append(f"×{a['count']} ", style="bold")
            line.append(a["summary"])
            lines.append(line)
        if len(group) > MAX_INFO_LINES:
            lines.append(Line(f"      … and {len(group) - MAX_INFO_LINES} more", style=DIM))
    return lines


# --- connections -------------------------------------------------------------------------
def connection_lines(rows: list[ConnectionRow], describe=None, limit: int = 40) -> list[Line]:
    """`process  proto  client -> server  bytes  HTTP statuses  errors`, aligned; `describe(ip) -> str`
    names pods/services."""
    lines = []
    shown = rows[:limit]
    procs = [f"{r.key.comm} ({r.key.pid})" for r in shown]
    width = max((len(p) for p in procs), default=0)
    for row, proc in zip(shown, procs):
        t = row.totals
        client = str(row.key.client)
        server = str(row.key.server)
        if describe:
            c, s = describe(row.key.client.ip, t.first_ts), describe(row.key.server.ip, t.first_ts)
            client += f" ({c})" if c else ""
            server += f" ({s})" if s else ""
        line = Line("  ")
        line.append(f"{proc:<{width}}  ", style="bold")
        line.append(f"{row.key.proto:<3}  ", style=LABEL)
        line.append(f"{client} → {server}")
        line.append(f"  {'client' if t.role == 'client' else 'server'}", style=DIM)
        if row.connections > 1:
            line.append(f"  ×{row.connections} connections", style="bold")
        line.append(f"  out {nbytes(t.bytes_out)}  in {nbytes(t.bytes_in)}  {t.events} event{'s' if t.events != 1 else ''}", style=DIM)
        if t.statuses:
            line.append("  HTTP")
            for status, n in sorted(t.statuses.items()):
                line.append(f" {status}" + (f"×{n}" if n > 1 else ""), style="red" if status >= 500 else "")
        if t.errors:
            line.append("  " + " ".join(f"{k}×{v}" for k, v in sorted(t.errors.items())), style="red")
        lines.append(line)
    if len(rows) > limit:
        lines.append(Line(f"  … and {len(rows) - limit} more (use --connections-limit to show more)", style=DIM))
    return lines


def server_error_lines(table, limit: int = 20) -> list[Line]:
    """One line per HTTP 5xx response, at the end that recorded it: who sent it (or got it), to
    whom, for which request. A proxy's 5xx whose own upstream responses were all below 500 is
    its own answer (a timeout, a refused or dead backend), and the line says so."""
    got = table.statuses_got()
    lines = []
    for err in table.server_errors[:limit]:
        line = Line("  ")
        line.append(f"{clock_ns(err.ts)}  ", style=DIM)
        line.append(f"{err.comm} ({err.pid})  ", style="bold")
        if err.sent:
            line.append(f"sent {err.status}", style="red")
            line.append(f" to {err.client}")
        else:
            line.append(f"got {err.status}", style="red")
            line.append(f" from {err.server}")
        if err.request:
            line.append(f"  for {err.request}")
        upstream = got.get((err.node, err.pid))
        if err.sent and upstream and max(upstream) < 500:
            line.append("  (its own answer: every response it got from upstream was below 500)", style="yellow")
        lines.append(line)
    more = table.server_errors_total - min(limit, len(table.server_errors))
    if more > 0:
        lines.append(Line(f"  … and {more} more", style=DIM))
    return lines


# --- summary ---------------------------------------------------------------------------
def counts(items, key) -> str:
    c = Counter(key(i) for i in items)
    return ", ".join(f"{n} {k}" for k, n in sorted(c.items(), key=lambda kv: (-kv[1], kv[0])))


def section(console, title: str, note: str = "") -> None:
    t = Line()
    t.append(title, style="bold underline")
    if note:
        t.append(f"  {note}", style=DIM)
    console.print()
    console.print(t)


class PlainConsole:
    """The part of rich's Console the report uses, writing plain text: piped output of
    thousands of lines is written directly instead of through rich's renderer."""

    def __init__(self, file) -> None:
        self.file = file

    def print(self, line: Line | str = "") -> None:
        self.file.write((line if isinstance(line, str) else line.plain) + "\n")


class TerminalConsole:
    """Colour on a terminal, the bytes rich's Console writes for a Line, without its layout
    pass per line (~190 us a line: 5 s for the 26k lines of 2400 chains). The codes are
    still rich's: each (line style, piece style) pair is looked up, combined and rendered by
    the console's own styles, once. Like rich, a styled piece is a run of its own and the
    unstyled pieces between two styled ones are one run. What rich lays out itself (a tab,
    a newline in the data) and NO_COLOR consoles go through rich."""

    def __init__(self, console) -> None:
        from rich.color import ColorSystem

        self.console, self.file = console, console.file
        self.color_system = {"standard": ColorSystem.STANDARD, "256": ColorSystem.EIGHT_BIT,
                             "truecolor": ColorSystem.TRUECOLOR}.get(console.color_system)
        self.direct = not console.no_color and (console.color_system is None or self.color_system is not None)
        self.styles: dict[tuple[str, str], object] = {}  # (line style, piece style) -> rich Style or None

    def _style(self, base: str, piece: str):
        key = (base, piece)
        style = self.styles.get(key, False)
        if style is False:
            from rich.style import Style

            get = self.console.get_style
            style = Style.combine([get(base, default=Style.null()), get(piece, default=Style.null())])
            style = self.styles[key] = style or None  # a null style writes no codes
        return style

    def _run(self, text: str, base: str, piece: str) -> str:
        style = self._style(base, piece)
        if style is None or self.color_system is None:
            return text
        return style.render(text, color_system=self.color_system)

    def print(self, line: Line | str | None = None) -> None:
        if line is None:
            self.file.write("\n")
            return
        whole = line if isinstance(line, str) else "".join(line.texts)
        if isinstance(line, str) or not self.direct or "\t" in whole or "\n" in whole:
            self.console.print(line)
            return
        strip = not whole.isprintable()
        base, out, run = line.style, [], []
        for text, piece in zip(line.texts, line.styles):
            if not text:
                continue  # rich appends nothing for an empty piece
            if strip:
                text = strip_control_codes(text)
            if piece:
                if run:
                    out.append(self._run("".join(run), base, ""))
                    run = []
                out.append(self._run(text, base, piece))
            else:
                run.append(text)
        if run:
            out.append(self._run("".join(run), base, ""))
        out.append("\n")
        self.file.write("".join(out))


def make_console(file, color: bool | None):
    """Colour on a terminal (or when forced), plain text otherwise; never wrap lines."""
    from rich.console import Console

    if color is True:
        return TerminalConsole(Console(file=file, highlight=False, soft_wrap=True, emoji=False, force_terminal=True))
    if color is None and Console(file=file).is_terminal:
        return TerminalConsole(Console(file=file, highlight=False, soft_wrap=True, emoji=False))
    return PlainConsole(file)
