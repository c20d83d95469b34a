"""Stage 1, enrich (keyed by node).

Per node: events are buffered and released in event-time order once the
watermark passes them (so arrival order and duplicates do not matter), joined
with the ClusterIndex as of their own time, given their correlation key `flow`
(the connection's client IP) and, for a userspace proxy's outbound connection,
`proxy_of` (the client endpoint whose bytes it forwards). Outputs enriched
batches grouped by flow bucket for the stitch stage: dicts in the
enriched-batch schema's form whose `events` are EnrichedEvent objects
(enriched.py; `schemas.models.dumps` writes them in their schema form), in an
enriched.EventRun: a list that also says whose events they are and their highest n.

Proxy detection, from one node's syscalls only:
* a client on this node connects to a Service VIP from ip:port P;
* a host process (not a pod of the Service) accepts a connection whose peer is P;
* that process then connects out: the outbound socket is tagged proxy_of=P
  (the dial may come before any byte: the seed's refused dial does);
* or, byte evidence: a process writes on an untagged outbound socket the same
  bytes it just read on an accepted socket -> tagged with that socket's peer.
All of this state is keyed by pid/fd/endpoint and expires after `proxy_window_ns`.

Late events (ts behind the node's watermark) are dropped, and are losses: the next
advance sends loss markers ({"node", "ts", "count"}, one per node and `late_slot_ns`
of event time, at its oldest late event) to every bucket, as for capture loss, so the
stitch stage makes the chains they overlap "incomplete". A slot no wider than the
stitch stage's settle time puts a marker within settle of every late event's chain.
Only an event newer (by n) than every one released or dropped before is a loss: one
node's events come from one agent in n order, so a late event with a lower n is a
redelivery (a worker re-reading input after a restart), counted late, not lost.

A capture loss marker with its window (SyscallEvent.lost_since_ns: the events were lost
between the agent's previous drain and ts, when it noticed) is not buffered until ts: it
goes downstream ({"node", "ts", "count", "since_ns"}) once the watermark passes the
window's start. An agent that stalled longer than a chain waits sends it long after the
events it concerns; released at ts, it would come after those chains were emitted.
"""
from __future__ import annotations

import zlib
from bisect import bisect_left
from itertools import islice
from operator import attrgetter, itemgetter

from svctrace.schemas.models import SyscallBatch, SyscallEvent

from .deadletter import dead_letter
from .enriched import EnrichedEvent, EventRun
from .memo import MemoIndex
from .timeorder import drop_expired_front
from .keys import UNSPECIFIED_IPS, endpoint_key, flow_bucket

S = 10**9
SYSCALLS_TOPIC = "svctrace.syscalls"
FLOWS_TOPIC = "svctrace.flows"
ENRICHED_TOPIC = "svctrace.events.enriched"
ENRICHED_SCHEMA = "svctrace.enriched-batch"

_EVENT_ORDER = attrgetter("ts", "n")  # one node's events: event time, then capture order
_TS = attrgetter("ts")
_LATE_MARKERS = 64  # pending late-loss markers per node at most (more are folded into the last)
_RECENT_READS = 8  # byte fingerprints kept per proxy-candidate pid


_SERVICE = object()  # marker: this IP is a ClusterIP (the ref then depends on the port)
_HOST_REF_KINDS = frozenset({"node", "external"})  # a local address of these: a host process (maybe a proxy)


def _fingerprint(data: bytes | None) -> int | None:
    return zlib.crc32(data[:256]) if data else None


class _Enriching:
    """The enrich operator's code (Enricher, below, is its class). Compiled, a C class (enrich.pxd: its
    attributes and per-event loop typed); Enricher stays a Python class, so its methods can be wrapped
    (bench.worker_stages) and patched as before."""

    name = "enrich"

    def __init__(self, index, partitions: int = 12, lateness_ns: int = 2 * S,
                 proxy_window_ns: int = 2 * S, emit_enriched: bool = False, dns_port: int = 53,
                 late_slot_ns: int = S // 4):
        self.index = MemoIndex(index)
        self.partitions = partitions
        self.lateness_ns = lateness_ns
        self.proxy_window_ns = proxy_window_ns
        self.emit_enriched = emit_enriched
        self.dns_port = dns_port
        self.late_slot_ns = max(late_slot_ns, 1)
        # (ip, port, proto) -> (second, ref): metadata is joined at 1 s granularity of event
        # time, so a cached answer is exactly what the index says for that second.
        self._ref_cache: dict[tuple, tuple] = {}
        # ip -> ref of the IPs of second `_fast_sec` (unspecified: None; a ClusterIP: _SERVICE,
        # its ref depends on the port): the same objects as _ref_cache's, found with one
        # lookup per event field.
        self._fast_sec: int | None = None
        self._fast_refs: dict = {}
        # (ip, port, proto) -> ref of the ClusterIPs' ports of second `_fast_sec` (one subscript
        # for an event field holding a VIP, instead of a _ref() call)
        self._fast_ports: dict = {}
        # a dual-stack pod's other address -> its first one: one flow per pod (its lookup over
        # IPv4 and its connect over IPv6 are one request); filled by _ip_ref, empty in
        # single-stack clusters
        self._other_ips: dict[str, str] = {}
        self._bucket_cache: dict[str | None, str] = {}
        # the largest event time process() was given (any key, late ones too): what an in-process
        # runner's event-time clock is (it reads it instead of looking at every event itself)
        self.newest_ts = -1

    # -- state ---------------------------------------------------------------

    @staticmethod
    def new_state() -> dict:
        return {
            "wm": 0,        # released up to (exclusive) this event time
            "buf": [],      # pending SyscallEvents; a duplicate (same n) sorts next to its original
            "vipc": {},     # client endpoint -> ts: local clients that connected to a VIP
            "pin": {},      # pid -> [[ts, client_ep, fd]]: accepted VIP-client conns of host processes
            "pout": {},     # "pid:fd" -> [client_ep, ts]: tagged proxy outbound sockets
            "reads": {},    # pid -> [[ts, fingerprint, client_ep]]: recent reads on accepted conns
            "late": 0, "dups": 0,
            "nmax": -1,     # highest n released or dropped late (absent: not known, an older checkpoint)
            "llost": [],    # [[node, ts, count]]: late drops not yet sent downstream as loss markers
            "wlost": [],    # [[node, ts, count, since]]: windowed capture loss markers, sent once wm > since
            # buf may be out of (ts, n) order or hold a repeat (a state without this flag: treated so)
            "unsorted": False,
        }

    @staticmethod
    def is_idle(state: dict) -> bool:
        return (not state["buf"] and not state["vipc"] and not state["pin"] and not state["pout"]
                and not state["reads"] and not state.get("llost") and not state.get("wlost"))

    def deadline(self, state: dict) -> int | None:
        """Earliest watermark at which advance() has work (None: nothing pending)."""
        if state.get("llost"):
            return state["wm"] + 1
        cands = [min(w[3] for w in state["wlost"]) + 1] if state.get("wlost") else []
        if state["buf"]:
            cands.append(min(e.ts for e in state["buf"]) + 1)
        elif state["vipc"] or state["pin"] or state["reads"] or state["pout"]:
            cands.append(state["wm"] + self.proxy_window_ns)
        return min(cands) if cands else None

    def metadata_changed(self) -> None:
        self.index.invalidate()
        self._ref_cache.clear()
        self._fast_refs.clear()
        self._fast_ports.clear()
        self._other_ips.clear()

    # -- durable state (what a checkpoint keeps) ------------------------------
    # state["wm"]: every event with ts < wm has been released (enriched and emitted);
    # the buffer holds only events with ts >= wm. A shell that re-reads every input
    # record not yet acknowledged, and acknowledges a record once all its events are
    # older than wm, may checkpoint durable(state) and resume with restore(it).

    @staticmethod
    def durable(state: dict) -> dict:
        """The state minus the input buffer (re-readable from the source topic)."""
        return {k: v for k, v in state.items() if k != "buf"}

    def restore(self, durable: dict) -> dict:
        """A durable state (or a full one) -> a state process/advance take."""
        state = self.new_state()
        state.update(durable)
        if "buf" not in durable:
            state["buf"], state["unsorted"] = [], False
        vipc = state["vipc"]
        if any(a > b for a, b in zip(vipc.values(), islice(vipc.values(), 1, None))):
            # written before the table was kept in time order (a reused port kept its first place)
            state["vipc"] = dict(sorted(vipc.items(), key=itemgetter(1)))
        return state

    # -- operator API --------------------------------------------------------

    def process(self, state: dict, key: str, item) -> list[tuple[str, str, dict]]:
        """Buffer a SyscallBatch, a list of SyscallEvents or one event. Emits nothing itself."""
        if isinstance(item, SyscallBatch):
            events = item.events
            if item.lost and events:
                first = min(events, key=lambda e: e.ts)
                events = [SyscallEvent(ts=first.ts, node=item.node, n=-1 - item.seq, pid=0, tid=0, comm="",
                                       kind="lost", syscall="batch", fd=-1, res=item.lost), *events]
        elif isinstance(item, SyscallEvent):
            events = (item,)
        else:
            events = item if isinstance(item, (list, tuple)) else list(item)  # (read twice below)
        wm, buf = state["wm"], state["buf"]
        last = buf[-1] if buf else None
        last_ts = last.ts if last is not None else wm  # every buffered ts >= wm: so is last_ts
        # The common case: each event newer than the one before it (and than the buffer's last),
        # none a windowed loss marker. One check per event, then the events join the buffer at once.
        prev = last_ts
        for e in events:
            ts = e.ts
            if ts <= prev or e.lost_since_ns is not None:
                break
            prev = ts
        else:
            buf += events
            if prev > self.newest_ts:
                self.newest_ts = prev
            return []
        # Otherwise event by event. Note when one comes out of order (or repeats the one before),
        # so advance() re-sorts the buffer and drops repeats only then.
        in_order = not state.get("unsorted", True)
        newest = self.newest_ts
        append = buf.append
        late = 0
        for e in events:
            ts = e.ts
            if ts > newest:
                newest = ts
            if e.lost_since_ns is not None:  # a capture loss marker with its window: not buffered
                self._window(state, e)
                continue
            if ts <= last_ts:
                if ts < wm:
                    late += 1
                    continue
                if in_order and (ts < last_ts or (last is not None and e.n <= last.n)):
                    in_order = False
            append(e)
            last_ts = ts
            last = e
        self.newest_ts = newest
        if late:
            state["late"] += late
            self._late_losses(state, events, wm)
        state["unsorted"] = not in_order
        return []

    @staticmethod
    def _window(state: dict, e: SyscallEvent) -> None:
        """Keep a windowed loss marker until the watermark passes its start (advance)."""
        windows = state.get("wlost")
        if windows is None:
            windows = state["wlost"] = []
        since = min(e.lost_since_ns, e.ts)
        if len(windows) < _LATE_MARKERS:
            windows.append([e.node, e.ts, max(e.res, 0), since])
        else:  # folded into the last one: the list stays bounded, its window covers both
            w = windows[-1]
            w[1], w[2], w[3] = max(w[1], e.ts), w[2] + max(e.res, 0), min(w[3], since)

    @staticmethod
    def _windows_due(state: dict, now: int, final: bool = False) -> None:
        """The windowed markers whose window started before `now` join the late-loss markers sent
        at the next release (every marker at `final`)."""
        due = [w for w in state["wlost"] if final or w[3] < now]
        if due:
            state["wlost"] = [w for w in state["wlost"] if not (final or w[3] < now)]
            pending = state.get("llost")
            if pending is None:
                pending = state["llost"] = []
            pending += due

    def _late_losses(self, state: dict, events, wm: int) -> None:
        """Note the late events of `events` that are no redelivery as pending loss markers."""
        nmax = state.get("nmax")
        if nmax is None:
            return  # a state from before this was tracked: a late event may be a redelivery
        pending = state.get("llost")
        if pending is None:
            pending = state["llost"] = []
        slot = self.late_slot_ns
        for e in events:
            ts = e.ts
            if ts >= wm:
                continue
            if e.kind == "lost":  # a capture loss marker itself came late: its count is lost all the same
                count = max(e.res, 0)
            elif e.n > nmax:
                count = 1
                nmax = e.n  # a redelivery of it later is no second loss
            else:
                continue
            for marker in reversed(pending):
                if marker[0] == e.node and marker[1] // slot == ts // slot and len(marker) == 3:  # (not a window)
                    marker[2] += count
                    marker[1] = min(marker[1], ts)
                    break
            else:
                if len(pending) < _LATE_MARKERS:
                    pending.append([e.node, ts, count])
                else:
                    pending[-1][1] = min(pending[-1][1], ts)
                    pending[-1][2] += count
        state["nmax"] = nmax

    def advance(self, state: dict, key: str, watermark_ns: int) -> list[tuple[str, str, dict]]:
        if state.get("wlost"):
            self._windows_due(state, max(watermark_ns, state["wm"]))
        if watermark_ns <= state["wm"]:
            return self._release(state, key, []) if state.get("llost") else []
        state["wm"] = watermark_ns
        buf = state["buf"]
        if not buf:
            self._expire(state, watermark_ns)
            return self._release(state, key, []) if state.get("llost") else []
        unsorted = state.get("unsorted", True)
        if unsorted:
            buf.sort(key=_EVENT_ORDER)  # a repeat (same ts and n) now follows its original
        cut = bisect_left(buf, watermark_ns, key=_TS)  # events before the watermark are released
        if cut == 0:
            return self._release(state, key, []) if state.get("llost") else []
        if cut == len(buf):  # (all of it: no copy)
            ready, state["buf"] = buf, []
        else:
            ready = buf[:cut]
            del buf[:cut]
        if unsorted:
            ready = self._without_repeats(state, ready)
            state["unsorted"] = bool(state["buf"])  # sorted, but it may still hold repeats
        out = self._release(state, key, ready)
        self._expire(state, watermark_ns)
        return out

    def flush(self, state: dict, key: str) -> list[tuple[str, str, dict]]:
        if state.get("wlost"):
            self._windows_due(state, 0, final=True)
        if not state["buf"]:
            return self._release(state, key, []) if state.get("llost") else []
        buf = state["buf"]
        last = buf[-1].ts if not state.get("unsorted", True) else max(e.ts for e in buf)  # (in order: the last)
        return self.advance(state, key, last + 1)

    @staticmethod
    def _without_repeats(state: dict, events: list[SyscallEvent]) -> list[SyscallEvent]:
        """Sorted events without repeats (at-least-once delivery: the same ts and n again), counted."""
        kept: list[SyscallEvent] = []
        prev_ts = prev_n = None
        for e in events:
            if e.n == prev_n and e.ts == prev_ts:
                continue
            prev_ts, prev_n = e.ts, e.n
            kept.append(e)
        if len(kept) < len(events):
            state["dups"] += len(events) - len(kept)
        return kept

    # -- enrichment ----------------------------------------------------------

    def _release(self, state: dict, node: str, events: list[SyscallEvent]) -> list[tuple[str, str, dict]]:
        """Enrich events in (ts, n) order, without repeats (advance() drops them).

        Each event gets its metadata refs (local, remote, address), its proxy tag and its flow,
        and goes to its flow bucket's list. This loop runs once per event: the common case is
        inline (refs from the per-second table, proxy tracking only for the events it can
        concern, the EnrichedEvent's slots written here), the rare ones call out."""
        out: list = []
        lost: list[dict] = []
        # bucket -> [its events, their highest n] while releasing (then its EventRun): a plain list takes an
        # event in one C call where EventRun, a Python subclass, took a method lookup, and its `top` an
        # attribute read and write per event
        by_bucket: dict = {}
        lists: dict = {}  # flow -> its bucket's [events, highest n], for this release
        released: list | None = [] if self.emit_enriched else None
        ref, client_ip, bucket_list = self._ref, self._client_ip, self._bucket_list
        dns_port = self.dns_port
        unspecified, host_kinds = UNSPECIFIED_IPS, _HOST_REF_KINDS
        pout, pin, reads = state["pout"], state["pin"], state["reads"]  # changed in place while releasing
        # Proxy tracking concerns connects, a host process's accepts and reads, and the pids its
        # tables hold (tagged sockets, pending accepts, recent reads): every other event skips it.
        # The set only grows during a release (_track_proxy adds the pids it starts following).
        tracked = _tracked_pids(state)
        fast_sec, fast, fast_ports = self._fast_sec, self._fast_refs, self._fast_ports
        # the current second's end: ts < sec_end is ts // S == fast_sec, checked without a division
        # per event (and one comparison: events come in ts order, so only the first of them may lie
        # in an earlier second than the tables'; then it switches them)
        sec_end = 0
        if fast_sec is not None and events and events[0].ts >= fast_sec * S:
            sec_end = fast_sec * S + S
        other_ips = self._other_ips
        top = -1  # the highest n released but not in a bucket's run (loss markers, dead letters)
        for e in events:
            ts = e.ts
            n = e.n
            kind = e.kind
            if kind == "lost":
                if n > top:
                    top = n
                lost.append({"node": e.node, "ts": ts, "count": max(e.res, 0)})
                continue
            try:
                proto = e.proto
                if ts >= sec_end:  # ref() fills the tables of the second it is told is current
                    self._fast_sec = fast_sec = ts // S
                    sec_end = fast_sec * S + S
                    self._fast_refs = fast = {}
                    self._fast_ports = fast_ports = {}
                lip = e.local_ip
                try:  # (a subscript is cheaper than .get(); misses are rare)
                    lref = fast[lip]
                except KeyError:
                    lref = _SERVICE
                if lref is _SERVICE:  # not yet seen this second, or a ClusterIP (the ref depends on the port)
                    try:
                        lref = fast_ports[lip, e.local_port, proto]
                    except KeyError:
                        lref = ref(lip, e.local_port, proto, ts, fast_sec)
                rip = e.remote_ip
                try:
                    rref = fast[rip]
                except KeyError:
                    rref = _SERVICE
                if rref is _SERVICE:  # not yet seen this second, or a ClusterIP (the ref depends on the port)
                    try:
                        rref = fast_ports[rip, e.remote_port, proto]
                    except KeyError:
                        rref = ref(rip, e.remote_port, proto, ts, fast_sec)
                aip = e.addr_ip
                if aip is None:  # (most events: no address asked for)
                    aref = None
                elif aip == rip and e.addr_port == e.remote_port:
                    aref = rref
                else:
                    try:
                        aref = fast[aip]
                    except KeyError:
                        aref = _SERVICE
                    if aref is _SERVICE:
                        try:
                            aref = fast_ports[aip, e.addr_port, proto]
                        except KeyError:
                            aref = ref(aip, e.addr_port, proto, ts, fast_sec)
                role = e.role
                server_side = role == "server" if role is not None else e.local_port == dns_port
                if proto == "tcp" and (kind == "connect" or e.pid in tracked or (
                        kind in {"accept", "recv"} and (lref is None or lref["kind"] in host_kinds))):
                    # (self's method: compiled, a C call, where a bound method taken before the loop is a
                    # Python call with its arguments' checks, ~250 instructions)
                    proxy_of = self._track_proxy(state, e, lref, aref, server_side, tracked)
                else:
                    proxy_of = None
                if proxy_of is None:
                    if server_side:
                        flow = rip if rip not in unspecified else aip
                    else:
                        flow = lip
                    if flow in unspecified:
                        flow = client_ip(e, server_side)
                else:
                    flow = proxy_of["ip"]
                if other_ips:  # (dual-stack pods only)
                    flow = other_ips.get(flow, flow)
                # EnrichedEvent(e, flow, lref, rref, aref, proxy_of), its slots written here
                # (a class call costs twice as much; compiled, T.__new__(T) is the type's tp_new called
                # directly: a bound __new__ taken before the loop went through tp_new_wrapper, ~110
                # instructions more per event)
                d = EnrichedEvent.__new__(EnrichedEvent)
                d.ev = e
                d.flow = flow
                d.local_ref = lref
                d.remote_ref = rref
                d.addr_ref = aref
                d.proxy_of = proxy_of
            except Exception as exc:  # one bad event must not stop the node's stream
                if n > top:
                    top = n
                out.append(dead_letter(self.name, SYSCALLS_TOPIC, node, e, exc, ts if isinstance(ts, int) else 0))
                continue
            try:
                run = lists[flow]
            except KeyError:
                run = lists[flow] = bucket_list(flow, by_bucket, node)
            run[0].append(d)
            if n > run[1]:
                run[1] = n
            if released is not None:
                released.append(d)
        if events:
            runs = {}
            for bucket, run in by_bucket.items():
                events_of = runs[bucket] = EventRun(run[0])
                events_of.node, events_of.top = node, run[1]
                if run[1] > top:
                    top = run[1]
            by_bucket = runs
            nmax = state.get("nmax")
            if nmax is None or top > nmax:
                state["nmax"] = top
        if state.get("llost"):  # late drops since the last release: losses too
            lost += [{"node": m[0], "ts": m[1], "count": m[2]} if len(m) == 3 else
                     {"node": m[0], "ts": m[1], "count": m[2], "since_ns": m[3]} for m in state["llost"]]
            state["llost"] = []
        if lost:  # a loss may concern any flow of this node: every bucket hears of it
            for p in range(self.partitions):
                b = f"b{p:04d}"
                by_bucket.setdefault(b, [])
        for bucket in sorted(by_bucket):
            batch = {"schema": ENRICHED_SCHEMA, "version": 1, "events": by_bucket[bucket]}
            if lost:
                batch["lost"] = lost
            out.append((FLOWS_TOPIC, bucket, batch))
        if released is not None and (released or lost):
            batch = {"schema": ENRICHED_SCHEMA, "version": 1, "events": released}
            if lost:
                batch["lost"] = lost
            out.append((ENRICHED_TOPIC, node, batch))
        return out

    def _bucket_list(self, flow: str | None, by_bucket: dict, node: str) -> list:
        """The [events, highest n] of `flow`'s bucket in by_bucket (created empty if new)."""
        cache = self._bucket_cache
        bucket = cache.get(flow)
        if bucket is None:
            if len(cache) > 65536:
                cache.clear()
            bucket = cache[flow] = flow_bucket(flow, self.partitions)
        events_of = by_bucket.get(bucket)
        if events_of is None:
            events_of = by_bucket[bucket] = [[], -1]
        return events_of

    def _ref(self, ip: str | None, port: int | None, proto: str | None, ts: int, sec: int) -> dict | None:
        """What `ip` (port) is as of the second `sec` (= ts // S) of event time."""
        if ip in UNSPECIFIED_IPS:
            if sec == self._fast_sec:
                self._fast_refs[ip] = None
            return None
        hit = self._ref_cache.get(ip)  # per IP first: ephemeral ports must not defeat the cache
        if hit is None or hit[0] != sec:
            base = self._ip_ref(ip, ts)
            hit = (sec, base, {} if base is _SERVICE else None)  # (a port table for ClusterIPs only)
            if len(self._ref_cache) > 65536:
                self._ref_cache.clear()
                self._fast_refs.clear()
                self._fast_ports.clear()
            self._ref_cache[ip] = hit
        base = hit[1]
        if base is not _SERVICE:
            if sec == self._fast_sec:
                self._fast_refs[ip] = base
            return base
        if sec == self._fast_sec:
            self._fast_refs[ip] = _SERVICE
        by_port = hit[2]  # a ClusterIP: the ref depends on the port too
        k = (port, proto)
        ref = by_port.get(k)
        if ref is None:
            sv, sp = self.index.service_by_ip(ip, port, (proto or "tcp").upper(), ts)
            ref = by_port[k] = {"kind": "service", "namespace": sv.namespace, "name": sv.name,
                                "port_name": sp.name if sp else None, "target_port": sp.target_port if sp else None}
        if sec == self._fast_sec:
            self._fast_ports[ip, port, proto] = ref
        return ref

    def _ip_ref(self, ip: str, ts: int):
        idx = self.index
        if idx.service_by_ip(ip, None, "TCP", ts) is not None:
            return _SERVICE
        pod = idx.pod_by_ip(ip, ts)
        first = pod.ips[0] if pod is not None and pod.ips else ip
        if first != ip:
            self._other_ips[ip] = first
        elif self._other_ips:
            self._other_ips.pop(ip, None)
        if pod is not None and not pod.host_network:
            kind = "dns" if idx.is_cluster_dns(ip, ts) else "pod"
            return {"kind": kind, "namespace": pod.namespace, "name": pod.name, "node": pod.node}
        node = idx.node_by_ip(ip, ts)
        if node is not None:
            return {"kind": "node", "name": node}
        if idx.is_cluster_dns(ip, ts):
            return {"kind": "dns"}
        return {"kind": "external"}

    def _client_ip(self, e: SyscallEvent, server_side: bool) -> str | None:
        ip = (e.remote_ip if e.remote_ip not in UNSPECIFIED_IPS else e.addr_ip) if server_side else e.local_ip
        if ip in UNSPECIFIED_IPS:
            if server_side:
                return None
            if e.container_id:  # an unbound UDP socket: the pod's IP is its source address
                pod = self.index.pod_by_container(e.container_id, e.ts)
                if pod is not None and pod.ips:
                    return pod.ips[0]
            return f"node:{e.node}"
        return ip

    def _track_proxy(self, st: dict, e: SyscallEvent, lref, aref, server_side: bool, tracked: set) -> dict | None:
        """The proxy tag of e (or None), the tables updated; e's pid joins `tracked` when a table
        starts following it (no table has an entry of a pid absent from it)."""
        kind = e.kind
        pout = st["pout"]
        if pout:
            fdkey = f"{e.pid}:{e.fd}"
            tagged = pout.get(fdkey)
            if tagged is not None:
                tagged[1] = e.ts
                if kind == "close":
                    del pout[fdkey]
                return _proxy_of(tagged[0])
        if kind == "connect" and e.syscall != "getsockopt":  # a connect result dials nothing new
            if server_side:
                return None
            if aref is not None and aref["kind"] == "service" and e.local_port:
                vipc, ep = st["vipc"], endpoint_key(e.local_ip, e.local_port)
                if ep in vipc:  # (a reused client port) moved to the end: the table stays in time order
                    del vipc[ep]
                vipc[ep] = e.ts
                return None
            pending = st["pin"].get(str(e.pid))
            if pending:
                ts0, client_ep, _fd = pending.pop(0)  # first accepted, first dialed
                if not pending:
                    del st["pin"][str(e.pid)]
                st["pout"][f"{e.pid}:{e.fd}"] = [client_ep, e.ts]
                return _proxy_of(client_ep)
            return None
        host = lref is None or lref["kind"] in _HOST_REF_KINDS  # only a host process can be the proxy
        if kind == "accept":
            if host:
                client_ep = endpoint_key(e.remote_ip, e.remote_port)
                if client_ep in st["vipc"]:
                    st["pin"].setdefault(str(e.pid), []).append([e.ts, client_ep, e.fd])
                    tracked.add(e.pid)
            return None
        if kind == "recv":
            if server_side and host and e.data:
                reads = st["reads"].setdefault(str(e.pid), [])
                reads.append([e.ts, _fingerprint(e.data), endpoint_key(e.remote_ip, e.remote_port)])
                tracked.add(e.pid)
                if len(reads) > _RECENT_READS:
                    del reads[0]
            return None
        if kind == "send":
            if not server_side and e.data:
                recent = st["reads"].get(str(e.pid))
                if recent:
                    fp = _fingerprint(e.data)
                    for ts0, fp0, client_ep in reversed(recent):
                        if fp0 == fp:
                            st["pout"][f"{e.pid}:{e.fd}"] = [client_ep, e.ts]
                            return _proxy_of(client_ep)
            return None
        if kind == "close" and server_side:
            pid = str(e.pid)
            pending = st["pin"].get(pid)
            if pending:
                pending[:] = [p for p in pending if p[2] != e.fd]
                if not pending:
                    del st["pin"][pid]
        return None

    def _expire(self, st: dict, now: int) -> None:
        horizon = now - self.proxy_window_ns
        vipc = st["vipc"]
        if vipc:  # in time order (events are released so): the expired ones lead, the rest is not read
            drop_expired_front(vipc, horizon)
        for name in ("pin", "reads"):
            table = st[name]
            for pid in list(table):
                table[pid] = [p for p in table[pid] if p[0] >= horizon]
                if not table[pid]:
                    del table[pid]
        # An outbound proxy socket lives as long as its connection; one idle for long is forgotten.
        long_horizon = now - 300 * S
        st["pout"] = {k: v for k, v in st["pout"].items() if v[1] >= long_horizon}


class Enricher(_Enriching):
    """The enrich operator. State: a JSON-able dict per node (see new_state)."""


def _tracked_pids(state: dict) -> set:
    """The pids proxy tracking follows: those of tagged sockets ("pid:fd"), pending accepts and
    recent reads ("pid"). The tables are small (entries expire after the proxy window)."""
    pids = {int(k.partition(":")[0]) for k in state["pout"]}
    pids.update(map(int, state["pin"]))
    pids.update(map(int, state["reads"]))
    return pids


def _proxy_of(client_ep: str) -> dict:
    ip, _, port = client_ep.rpartition(":")
    return {"ip": ip.strip("[]"), "port": int(port)}
