"""Stage 2, stitch (keyed by flow bucket; sub-state per client endpoint / lookup).

Events of one request chain share their client IP (the `flow`), so every event
of a chain, from every node, reaches the same bucket. Inside a bucket, events
are buffered and applied in event-time order (ts, node, n) once the watermark
passes them: arrival order and at-least-once duplicates cannot change the result.

State, all JSON-able and expired by event time:
* conns: client endpoint "ip:port" -> one TCP connection as every side saw it (and
  "udp/ip:port" -> a client's UDP flow to another port than DNS's: _apply_udp):
  the client (connect, requests, responses), acceptors (a userspace proxy or the
  backend under DNAT/socket-LB: they see the client's ip:port as their peer), and
  a proxy's outbound dials (tagged proxy_of by the enrich stage). A connection leaves
  settle after the client's close, else idle after its last event; one only acceptors
  saw (no client, no dial: a userspace proxy's dial as its backend sees it, keyed by
  the proxy's node IP and port) makes no output and leaves settle after they all closed.
* lookups: "flow|node|pid" -> DNS lookups (queries grouped: search expansions,
  A/AAAA pairs, retries) waiting to be claimed by a connect to an answer. An unclaimed
  lookup becomes a chain at its expiry (a timer pass of its own); a claimed one leaves
  without output, so no pass is spent on it: a later one drops it, or the next read of
  its key, exactly as if it had left at its expiry.
* dsrv: what DNS servers saw ("client ep|id"), to name the resolver process (a DNS server: port
  53's, or an endpoint of the cluster DNS on another port, _dns_server_at).
Records are lists read through index names (A_*, R_*, C_*, D_*, CL_*, CN_*, L_*, Q_*,
N_*, S_*, DX_*): cheaper to build and read than dicts, and JSON-able as they are.
* lost: loss markers [node, ts, count] (a point at ts) or [node, ts, count, since] (the
  events were lost in the window since..ts: an agent's drain interval); a chain whose span,
  up to the moment it stopped waiting, overlaps one on its nodes is "incomplete", never
  "broken". An event arriving behind the watermark (late) is a loss too, unless it is a
  redelivery (no newer by n than its node's events seen before: "nmax").

A chain is emitted per HTTP request (keep-alive: several per connection) or
per connection when no request was seen (a UDP flow: per flow), and per unclaimed
DNS lookup.
"""
from __future__ import annotations

from bisect import bisect_left
from collections import deque
from dataclasses import dataclass
from difflib import get_close_matches
from heapq import heapify, heappop, heappush, heapreplace
from operator import attrgetter, itemgetter
from types import FunctionType

from msgspec import Raw as _Raw
from msgspec.json import Encoder as _JsonEncoder

from svctrace.schemas.models import SyscallEvent

from . import rules as R
from .dns import in_cluster_domain, parse_dns_with_id, service_of_name, tcp_dns_messages
from .http import REQUEST_PREFIXES, RESPONSE_PREFIX, parse_request, parse_response
from .alerts import OCCURRENCES_TOPIC  # the stitch stage writes it; re-exported here
from .deadletter import dead_letter
from .enrich import FLOWS_TOPIC
from .enriched import EnrichedEvent, EventRun, from_wire, to_wire
from .memo import MemoIndex
from .policy import blocked as _policy_blocked, blocked_words as _blocked_words
from .records import ChainRecord, Connect, DnsOut, Endpoint, Hop, Response, as_dict as _ref_dict, as_ref as _as_ref, to_builtins as _to_builtins
from svctrace.streams.core.records import Ref  # (by its full name: stitch.pxd declares its layout)
from .timeorder import drop_expired_front
from .keys import UNSPECIFIED_IPS, alert_id, alert_key, chain_id, endpoint_key, window_start

S = 10**9
MS = 10**6
_OBJECTIVES = R.LATENCY_OBJECTIVES_NS
# the objectives of a request's own hops (a chain record checks them as it adds them)
_RESPONSE_OBJECTIVE, _BACKEND_OBJECTIVE = _OBJECTIVES.get("response"), _OBJECTIVES.get("backend")
# a chain record's translation but a userspace proxy's (records share these: nobody mutates a record)
_T_NONE = {"mode": "none", "confidence": "high", "proxy": None}
_T_SOCKET_LB = {"mode": "socket_lb", "confidence": "high", "proxy": None}
_T_NODEPORT_SNAT = {"mode": "nodeport_snat", "confidence": "low", "proxy": None}
_T_DNAT = {"mode": "dnat", "confidence": "high", "proxy": None}
_T_DNAT_UNSEEN = {"mode": "dnat", "confidence": "low", "proxy": None}  # translated somewhere we did not see
# svc.translation_missing's words for what went nowhere: a connect no one accepted, a datagram no one received
_TCP_UNTAKEN = {"attempt": "connect", "taken": "accepted", "hint": ""}
_UDP_UNTAKEN = {"attempt": "UDP datagram", "taken": "received"}
CHAINS_TOPIC = "svctrace.chains"
CHAIN_SCHEMA = "svctrace.chain"

_TCP_KINDS = frozenset(("connect", "accept", "send", "recv", "close", "shutdown"))  # what a chain is made of
MAX_EVIDENCE = 24
MAX_REQS_KEPT = 64  # per side of a connection: requests not yet answered and emitted (bounded)
MAX_QUERIES = 32
# A UDP flow (_apply_udp) ends at the client's close, its first error or idle; one that goes on (a statsd client's
# socket, open for the process's life) makes a chain of its first datagram's 10 s, then another of the next ones
# (the default of Settings.udp_window_ns)
UDP_WINDOW_NS = 10 * S
MAX_LOST_MARKERS = 256  # loss markers a late event adds to a bucket's list, at most (more are folded)
# Records kept per connection as lists (cheaper to build and read than dicts; JSON-able),
# read and written through these index names:
#
# an acceptor: the socket a userspace proxy or the backend accepted (conn.sv), A_*
#   A_NODE, A_PID, A_COMM, A_FD, A_CONTAINER_ID  the accepting process
#   A_IP, A_PORT                                 its local endpoint
#   A_TS                                         when it accepted
#   A_HOST_PROCESS                               a host process (not a pod's): may be a userspace proxy
#   A_REQUESTS                                   the requests it received, R_* records (bounded)
#   A_NREQUESTS                                  how many it received (the next one's index); a UDP flow's
#                                                backend: how many replies it sent the client
#   A_CLOSED                                     when it closed the socket (None: open; an event after
#                                                its close opens it again: the fd reused); absent from
#                                                records written before it (Conn.from_dict adds it)
(A_NODE, A_PID, A_COMM, A_FD, A_CONTAINER_ID, A_IP, A_PORT, A_TS, A_HOST_PROCESS, A_REQUESTS, A_NREQUESTS,
 A_CLOSED) = range(12)
# a request an acceptor received, R_*
#   R_INDEX        its index on the connection (the client's request of the same index)
#   R_TS           when it was received
#   R_RESPONSE_TS  when the acceptor answered it (None: not yet)
#   R_EVIDENCE     its event refs (received, answered)
R_INDEX, R_TS, R_RESPONSE_TS, R_EVIDENCE = range(4)
# a request the client sent (conn.creq), C_*
#   C_INDEX                        its index on the connection (chain ids: one chain per request)
#   C_TS                           when it was sent
#   C_METHOD, C_TARGET, C_HOST     its request line and Host header
#   C_SENT, C_RECEIVED             bytes sent (the request) and received (its response)
#   C_RESPONSE_TS, C_STATUS        when its response came and its status (None: not yet)
#   C_EVIDENCE                     its event refs (sent, response received)
#   C_DONE                         its chain was emitted
C_INDEX, C_TS, C_METHOD, C_TARGET, C_HOST, C_SENT, C_RECEIVED, C_RESPONSE_TS, C_STATUS, C_EVIDENCE, C_DONE = range(11)
# a userspace proxy's dial to the backend (conn.px), D_*
#   D_NODE, D_PID, D_COMM, D_FD        the dialing process
#   D_BACKEND_IP, D_BACKEND_PORT       where it dialed (the backend)
#   D_LOCAL_IP, D_LOCAL_PORT           the dial's own endpoint
#   D_TS                               when it dialed
#   D_RESULT, D_ERRNO                  the connect's result and errno name (EINPROGRESS: see _connect_result)
D_NODE, D_PID, D_COMM, D_FD, D_BACKEND_IP, D_BACKEND_PORT, D_LOCAL_IP, D_LOCAL_PORT, D_TS, D_RESULT, D_ERRNO = range(11)
# the client of a connection (conn.cl), CL_*
#   CL_NODE, CL_PID, CL_COMM, CL_CONTAINER_ID   the client process
#   CL_IP, CL_PORT                              its endpoint (the connection's key)
#   CL_FLOW                                     its flow (the bucket's correlation key)
CL_NODE, CL_PID, CL_COMM, CL_CONTAINER_ID, CL_IP, CL_PORT, CL_FLOW = range(7)
# the client's connect (conn.cn; replaced, never mutated: _ConnParts), CN_*
#   CN_TS                              when it connected
#   CN_ADDR_IP, CN_ADDR_PORT           the address it asked for (a ClusterIP: the VIP)
#   CN_REMOTE_IP, CN_REMOTE_PORT       the peer the socket got (socket-LB: already the backend)
#   CN_RESULT, CN_ERRNO                the connect's result and errno name (EINPROGRESS: see _connect_result)
CN_TS, CN_ADDR_IP, CN_ADDR_PORT, CN_REMOTE_IP, CN_REMOTE_PORT, CN_RESULT, CN_ERRNO = range(7)
_NO_CONNECT = (None,) * 7  # read as a connect when none was seen: every field None
# A DNS lookup (state["lk"][lkey] lists them), L_*
#   L_ANCHOR       [node, n] of its first query (its chain id's anchor when it is emitted alone)
#   L_SEQ          its number (creation order: st["lq"] entries name it by this)
#   L_T0, L_T1     its first and last event time
#   L_QUERIES      its queries, Q_* records (bounded)
#   L_NAMES        the names asked (search expansions), in order
#   L_RESOLVED     when its first positive answer came (None: not yet)
#   L_CLAIMED      how many connections claimed it (their connect went to an answer)
#   L_CLIENT       the asking process and endpoint (a dict: a lookup summary's "client")
L_ANCHOR, L_SEQ, L_T0, L_T1, L_QUERIES, L_NAMES, L_RESOLVED, L_CLAIMED, L_CLIENT = range(9)
# a query of a lookup, Q_*
#   Q_ID, Q_NAME, Q_TYPE       the message's id and question
#   Q_TS                       when it was sent
#   Q_ENDPOINT                 the asking socket's endpoint_key
#   Q_SERVER, Q_SERVER_PORT    where it was sent
#   Q_REF                      its event ref
#   Q_ANSWER                   its answer, N_* record (None: not yet)
Q_ID, Q_NAME, Q_TYPE, Q_TS, Q_ENDPOINT, Q_SERVER, Q_SERVER_PORT, Q_REF, Q_ANSWER = range(9)
# an answer, N_*
#   N_TS, N_RCODE                       when it came and its rcode
#   N_ADDRESSES, N_CNAMES, N_TTL        its A/AAAA addresses, CNAME chain and smallest TTL
#   N_FROM                              who sent it
#   N_REF                               its event ref
N_TS, N_RCODE, N_ADDRESSES, N_CNAMES, N_TTL, N_FROM, N_REF = range(7)
# what a DNS server saw of a query (state["dsrv"]["client ep|id"]), S_*
#   S_TS                                     when it got the query
#   S_NODE, S_PID, S_COMM, S_IP, S_PORT, S_CONTAINER_ID   the server process and endpoint
#   S_REF                                    its event ref
#   S_FIRST                                  when it first got a query under this key (a resolver's retry
#                                            repeats socket and id; a receipt more than RETRY_GAP_NS[1]
#                                            after the last starts again): absent from records before it,
#                                            read by _first_receipt
S_TS, S_NODE, S_PID, S_COMM, S_IP, S_PORT, S_CONTAINER_ID, S_REF, S_FIRST = range(9)
# the summary of a DNS lookup (conn.dns: the lookup a connection claimed; _dns_summary), DX_*
#   DX_QNAME, DX_QTYPE                 the name asked for (the positive answer's, else the shortest tried)
#   DX_RESOLVER_IP, DX_RESOLVER_PORT   where its final query went
#   DX_ANSWERED_BY                     who answered it (None: nobody)
#   DX_SERVER                          the DNS server's S_* record of it (None: not seen)
#   DX_RCODE, DX_ANSWERS, DX_CNAMES, DX_TTL   the answer it ended with (addresses etc.: the positive one's)
#   DX_LATENCY_NS                      first query to the positive answer (None: none)
#   DX_ANSWER_NS                       first query to the answer it ended with, positive or not
#   DX_RETRIES, DX_QUERIES, DX_NXDOMAIN, DX_ANSWERED, DX_EXPANSIONS   counts (expansions: search-list names)
#   DX_RETRY_GAP                       [qname, qtype, gap] of a retry after the resolver timeout, or None
#   DX_T0, DX_T1                       its first and last event time
#   DX_REFS                            its event refs
#   DX_ANCHOR, DX_CLIENT               the lookup's L_ANCHOR and L_CLIENT
(DX_QNAME, DX_QTYPE, DX_RESOLVER_IP, DX_RESOLVER_PORT, DX_ANSWERED_BY, DX_SERVER, DX_RCODE, DX_ANSWERS, DX_CNAMES,
 DX_TTL, DX_LATENCY_NS, DX_ANSWER_NS, DX_RETRIES, DX_QUERIES, DX_NXDOMAIN, DX_ANSWERED, DX_EXPANSIONS, DX_RETRY_GAP,
 DX_T0, DX_T1, DX_REFS, DX_ANCHOR, DX_CLIENT) = range(23)
# The form of the state's records and queues (state["v"]); states without it are upgraded.
STATE_FORM = 5
# the input buffer, change marks (durable_parts) and a sliced checkpoint's pending entries (begin_parts)
# and the lookup keys' groups' bookkeeping (_lookup_groups: "_lgc", "_lkv", "_lgd", "_lkx"; rebuilt by restore_parts)
_NOT_DURABLE = frozenset(("runs", "buf", "_cc", "_cl", "_cs", "_pc", "_pl", "_ps", "_pv", "_pg", "_plg", "_plv",
                          "_lgc", "_lkv", "_lgd", "_lkx", "tqn", "tqs", "tqp"))  # (the FIFOs: merged into "tq")
_NOT_IN_HEADER = _NOT_DURABLE | {"conns", "lk", "lks", "dsrv", "tq"}  # entries, and what is rebuilt from them
# The conns' timer queue is rebuilt from the conns (their live entries only) once it holds more
# than this many entries per open conn, plus the floor (a pass's O(conns) rebuild, rarely).
_TQ_COMPACT_FACTOR, _TQ_COMPACT_FLOOR = 4, 1024
FAILED_ERRNOS = {"ECONNREFUSED": "connection refused", "ETIMEDOUT": "connection timed out",
                 "EHOSTUNREACH": "host unreachable", "ENETUNREACH": "network unreachable",
                 "ECONNRESET": "connection reset"}


def _pod_of(index, ip: str | None, ts: int, container_id: str | None = None):
    """The pod of an endpoint (by its container, else its IP) as of ts's second, or None."""
    pod = None
    if container_id:
        pod = index.pod_by_container(container_id, ts)
    if pod is None and ip and ip not in UNSPECIFIED_IPS:
        pod = index.pod_by_ip(ip, ts)
    return pod


_MEMO_MAX = 16384  # server-side endpoints memoized for chain records: cleared when full
_KEYS_MAX = 65536  # client endpoints whose conn key is memoized: cleared when full
_PARTS_MAX = 4096  # connections whose record parts are kept (dropped when a connection ends): cleared when full


class _ConnParts:
    """What every chain record of one connection shares, whatever its request (Stitcher._parts):
    built once per connection (keep-alive: reused by each request) and rebuilt when what it
    derives from changes. The state replaces the cl/cn/svc/dns dicts rather than mutating
    them, and acceptor and dial records keep the fields read here (but a dial's result: px_at),
    so identity checks tell. Its output dicts are shared by the records: nobody mutates them."""

    __slots__ = ("cl", "cn", "svc", "dns", "est", "sv_last", "nsv", "px", "npx", "px_at",  # what they derive from
                 "t_conn", "client", "client_pod", "b", "b_ip", "b_port", "translation", "backend", "hops",
                 "slow_hops", "ready_eps", "dns_out", "service", "connect", "labels", "who", "dns_found", "svc_always",
                 "svc_if_failed", "misrouted", "backend_desc", "connect_error")


@dataclass(eq=False)
class Conn:
    """One TCP connection as every side saw it (state["conns"][k]). A slotted record: its
    fields are read and written on every event (cheaper than a dict's keys); orjson writes it
    as the JSON object of these fields in this order, the form checkpoints always had, and
    restore()/advance() turn such objects (and older forms) back into Conns. Compiled, a C
    class (stitch.pxd: its fields typed; Cython makes it a dataclass of its own, hence __slots__
    here rather than dataclass(slots=True), which it does not take)."""

    __slots__ = ("k", "seq", "qd", "t0", "t1", "a", "cl", "cn", "ccl", "est", "creq", "nreq", "sv", "px", "dns", "svc",
                 "ev", "eof", "err", "tx", "rx")

    k: str  # the client endpoint "ip:port" (its key in state["conns"])
    seq: int  # creation number: timers handle conns in this order
    qd: int | None  # the deadline of its live timer entry (see _schedule)
    t0: int  # first event time
    t1: int  # last event time
    a: list  # [node, n] of the event that anchors its chain ids (the client's connect)
    cl: list | None  # the client process and endpoint, CL_*
    cn: list | None  # the client's connect, CN_* (replaced, never mutated: _ConnParts)
    ccl: int | None  # the client's close time
    est: int  # 0: not known established, 1: the client sent data, 2: answered or accepted
    creq: list  # the client's requests not yet emitted, C_* records
    nreq: int  # requests the client sent (the next one's index)
    sv: list  # acceptors (a userspace proxy, the backend), A_* records
    px: list  # a userspace proxy's dials to the backend, D_* records
    dns: dict | None  # the summary of the DNS lookup this connection claimed
    svc: dict | None  # the Service it is a request to, and how we know ("via")
    ev: list  # evidence: event refs of the connection itself (connect, accept, close, errors)
    eof: int | None  # when the client read EOF (a UDP flow: when it first sent elsewhere too, _apply_udp)
    err: str | None  # the client's first send/recv error (errno name)
    tx: int  # bytes the client sent
    rx: int  # bytes the client received

    @classmethod
    def from_dict(cls, d: dict) -> "Conn":
        """The JSON form (a checkpoint's) -> a Conn. An acceptor record written before A_CLOSED gets it: open
        (a connection restored so waits its idle timeout, as it would have where it was written)."""
        sv = d["sv"]
        for a in sv:
            if a.__class__ is list and len(a) == A_CLOSED:
                a.append(None)
        return cls(d["k"], d["seq"], d["qd"], d["t0"], d["t1"], d["a"], d["cl"], d["cn"], d["ccl"], d["est"], d["creq"],
                   d["nreq"], sv, d["px"], d["dns"], d["svc"], d["ev"], d["eof"], d["err"], d["tx"], d["rx"])

    def __getitem__(self, name: str):  # read access in the JSON form's terms (tests, tools): conn["creq"]
        return getattr(self, name)


class _Stitching:
    """The stitch operator's code (Stitcher, below, is its class). Compiled, a C class (stitch.pxd:
    its attributes and hot methods typed); Stitcher stays a Python class, so its methods can be
    wrapped (bench.worker_stages) and patched (tests) as before."""

    name = "stitch"

    def __init__(self, index, lateness_ns: int = 2 * S, settle_ns: int = 2 * S, idle_ns: int = 30 * S,
                 lookup_timeout_ns: int = 12 * S, dns_port: int = 53, cluster_domain: str = "cluster.local.",
                 udp_window_ns: int = UDP_WINDOW_NS):
        self.index = MemoIndex(index)
        self.lateness_ns = lateness_ns
        self.settle_ns = settle_ns  # other sides' events may follow the client's last one by this much
        self.idle_ns = idle_ns  # a connection with no event for this long is finished
        self.lookup_timeout_ns = lookup_timeout_ns  # > the 5 s resolver retry
        self.udp_window_ns = udp_window_ns  # a UDP flow's chain covers its datagrams of this long at most
        self.dns_port = dns_port
        self.cluster_domain = cluster_domain
        self._nodeports: dict[tuple, tuple] = {}  # (node port, protocol) -> (service, port)
        self._nodeports_at = None
        self._dns_eps: set = set()  # the cluster DNS's endpoints on another port than dns_port (_dns_server_at)
        self._dns_eps_at = None
        self._dns_eps_lo = self._dns_eps_hi = 0  # the event times _dns_eps holds for (advance's test, inline)
        # emission memos (pure functions of the state and the index; dropped with metadata_changed)
        self._endpoints: dict[tuple, tuple[dict, object]] = {}
        self._dns_servers: dict[tuple, tuple] = {}  # a chain record's dns server dicts (_dns_out)
        self._findings: dict[tuple, tuple] = {}  # _dns_findings' answers
        self._whys: dict[tuple, tuple] = {}  # _no_endpoints_why's and _nxdomain_hint's answers
        self._conn_parts: dict[str, _ConnParts] = {}
        self._svcs: dict[tuple, tuple] = {}  # a conn's "svc" dicts (_svc_of): connections to one Service share one
        self._conn_keys: dict[tuple, str] = {}  # (ip, port) -> endpoint_key(ip, port): formatted once
        self._lkeys: dict[tuple, str] = {}  # (flow, node, pid) -> its lookups' key "flow|node|pid": formatted once
        # None: a chain comes out as its record (a dict). A worker sets the function that writes a record's
        # bytes: each chain then comes out as its bytes, written as it is made, while what it holds is in cache
        # (encoded later, after the advance, its objects were cold: ~2x the CPU), and freed at once
        self.encode_chain = None

    # -- state ---------------------------------------------------------------

    @staticmethod
    def new_state() -> dict:
        return {"v": STATE_FORM, "wm": 0,
                # the events not applied yet, as the runs they came in: [run, index of its first event not
                # applied], each run in time order (an advance reads only the events it applies: _take_ready)
                "runs": [],
                "conns": {}, "lk": {},
                "dsrv": {},  # DNS servers' records (S_*), in time order: trimmed from the front
                "lost": [],
                "next": None, "late": 0, "dups": 0,
                "nmax": {},  # node -> the highest n of its events seen: a late event below it is a redelivery
                "tq": [],  # min-heap of (deadline, conn key): each open conn has an entry <= its deadline
                # beside it, entries queued in their (deadline, key) order: sorted FIFOs (see _tq_push)
                "tqn": deque(), "tqs": deque(), "tqp": deque(),
                "seq": 0,  # conns are numbered in creation order (conn.seq): timers handle them in that order
                # lookups (L_* records): "lks" numbers the keys of "lk" in creation order, L_SEQ each
                # lookup; "lq" min-heap of (expiry, L_SEQ, lkey) (each lookup has an entry <= its expiry);
                # "lke" keys whose (empty) list an unmatched answer created: dropped at the next pass
                "lks": {}, "lq": [], "lke": [],
                # "lc": min-heap of (expiry, L_SEQ, lkey) of claimed lookups, moved there from "lq" (the
                # next deadline is never a claimed lookup's: it leaves without output, at any later
                # pass or when its key is read, see _lookups)
                "lc": [],
                # the DNS server records' groups in the checkpoint's changelog (_server_groups): [[its id, the
                # time of its newest record]], the last id given, and the time of the oldest record held at the cut
                "dsg": [], "dsn": 0, "dso": None,
                # the lookup keys' groups in the checkpoint's changelog (_lookup_groups): the last id given, and the
                # keys gone whose versions live groups still hold (a restore leaves them out)
                "lgn": 0, "lgx": []}

    @staticmethod
    def _upgrade_older(state: dict) -> None:
        """A state as read from JSON (a checkpoint: conns are JSON objects), or written by an
        earlier version (no timer queue; no conn["qd"]; dict records): conns become Conns."""
        _heaps_of_tuples(state)
        if "buf" in state:  # written whole with its pending events (a flat list): one run of them, in time order
            buf = sorted(state.pop("buf"), key=_event_ts)
            state["runs"] = [[buf, 0]] if buf else []
        state.setdefault("runs", [])
        if "tq" not in state:
            Stitcher._upgrade(state)
        if state.get("v") != STATE_FORM:
            if state.get("v") != 4:
                Stitcher._upgrade_dns_records(state)
            state.setdefault("lc", [])  # form 4 had no claimed-lookup queue: they are all in "lq"
            state["v"] = STATE_FORM
        conns = state["conns"]
        if conns and next(iter(conns.values())).__class__ is dict:
            if "qd" not in next(iter(conns.values())):
                Stitcher._requeue(state)
            state["conns"] = {k: Conn.from_dict(c) for k, c in conns.items()}
            for conn in state["conns"].values():
                if conn.dns.__class__ is dict:
                    conn.dns = _summary_from_dict(conn.dns)
                cl, cn = conn.cl, conn.cn
                if cl.__class__ is dict:  # formats 1-3: the client and its connect as dicts
                    conn.cl = [cl["node"], cl["pid"], cl["comm"], cl["container_id"], cl["ip"], cl["port"], cl["flow"]]
                if cn.__class__ is dict:
                    conn.cn = [cn["ts"], cn["aip"], cn["aport"], cn["rip"], cn["rport"], cn.get("res", 0), cn.get("errno")]

    @staticmethod
    def _upgrade(state: dict) -> None:
        """A state written before the timer queue existed: number its conns and queue them."""
        Stitcher._requeue(state)
        for i, conn in enumerate(state["conns"].values()):
            conn["seq"] = i
        seq = len(state["conns"])
        state["lks"], state["lq"], state["lke"] = {}, [], []
        for lkey, lookups in state["lk"].items():
            state["lks"][lkey] = seq
            for lk in lookups:
                lk["ls"] = seq
                state["lq"].append((0, seq, lkey))
                seq += 1
            if not lookups:
                state["lke"].append(lkey)
            seq += 1
        heapify(state["lq"])
        state["seq"] = seq

    @staticmethod
    def _upgrade_dns_records(state: dict) -> None:
        """A state written before form 4 (checkpoint formats 1-3, this session's own 4 excepted): lookups, queries, answers and
        DNS server records were dicts, and "dq" a heap of the server records' times."""
        for lookups in state["lk"].values():
            lookups[:] = [lk if lk.__class__ is list else [
                lk["a"], lk["ls"], lk["t0"], lk["t1"],
                [[q["id"], q["qn"], q["qt"], q["ts"], q["ep"], q["srv"], q["sport"], q["ref"], None if q["ans"] is None else
                  [q["ans"]["ts"], q["ans"]["rc"], q["ans"]["a"], q["ans"]["cn"], q["ans"]["ttl"], q["ans"]["from"],
                   q["ans"]["ref"]]] for q in lk["q"]],
                lk["qnames"], lk["res"], lk["claimed"], lk["client"]] for lk in lookups]
        records = [(k, v if v.__class__ is list else [v["ts"], v["node"], v["pid"], v["comm"], v["ip"], v["port"],
                                                        v["container_id"], v["ref"], v["ts"]])
                   for k, v in state["dsrv"].items()]
        records.sort(key=lambda kv: kv[1][S_TS])  # (stable) the order a time-ordered trim needs
        state["dsrv"] = dict(records)
        state.pop("dq", None)

    @staticmethod
    def _requeue(state: dict) -> None:
        """A state written before conns kept their queued deadline (conn["qd"]) and their
        acceptors and dials as lists: one live timer entry per conn, [0, key], validated (set
        to the real deadline) at the next pass; dict records become lists."""
        state["tq"] = [(0, k) for k in state["conns"]]
        heapify(state["tq"])
        for conn in state["conns"].values():
            conn["qd"] = 0
            conn["creq"] = [[r["i"], r["ts"], r["m"], r["tg"], r["h"], r["tx"], r["rx"], r["rts"], r["st"], r["ev"], r["done"]]
                            if isinstance(r, dict) else r for r in conn["creq"]]
            conn["sv"] = [[a["node"], a["pid"], a["comm"], a["fd"], a["container_id"], a["ip"], a["port"], a["ts"],
                           a["host"], [[r["i"], r["ts"], r["sts"], r["ev"]] for r in a["reqs"]], a["nreq"], None]
                          if isinstance(a, dict) else a for a in conn["sv"]]
            conn["px"] = [[x["node"], x["pid"], x["comm"], x["fd"], x["ip"], x["port"], x["lip"], x["lport"], x["ts"],
                           x["res"], x["errno"]] if isinstance(x, dict) else x for x in conn["px"]]

    @staticmethod
    def is_idle(state: dict) -> bool:
        return not (state["runs"] or state["conns"] or state["lk"] or state["dsrv"] or state["lost"])

    def deadline(self, state: dict) -> int | None:
        cands = [min(events[i].ev.ts for events, i in state["runs"]) + 1] if state["runs"] else []
        if state["next"] is not None:
            cands.append(state["next"])
        return min(cands) if cands else None

    def metadata_changed(self) -> None:
        self.index.invalidate()
        self._nodeports_at = None
        self._dns_eps_at = None
        self._dns_eps_lo = self._dns_eps_hi = 0
        self._endpoints.clear()
        self._dns_servers.clear()
        self._findings.clear()
        self._whys.clear()
        self._conn_parts.clear()
        self._svcs.clear()

    # -- durable state (what a checkpoint keeps) ------------------------------
    # state["wm"]: every event with ts < wm has been applied to the chain state; the
    # buffer holds only events with ts >= wm (later ones are counted late and dropped).
    # A shell that re-reads unacknowledged input records, acknowledging a record once
    # all its events are older than wm, may checkpoint durable(state) only.

    @staticmethod
    def durable(state: dict) -> dict:
        """The state minus the input buffer (re-readable from svctrace.flows) and change marks; the conns' timer
        entries in one heap "tq" (the FIFOs beside it merged in)."""
        durable = {k: v for k, v in state.items() if k not in _NOT_DURABLE}
        fifos = [state[name] for name in _FIFOS if state.get(name)]
        if fifos:
            tq = list(state["tq"])
            for fifo in fifos:
                tq += fifo
            heapify(tq)
            durable["tq"] = tq
        return durable

    # A checkpoint in parts (durable_parts / restore_parts): a header of the bucket's scalars and
    # small lists, and its entries, each written only when it changed since the last durable_parts:
    #   "c<conn key>"  a connection (its Conn as a JSON object; conn.qd: its timer queue entry)
    #   "L<n>"         a group of lookup keys {lkey: [its number in "lks", its lookups (L_*)]}: those changed since
    #                  the last durable_parts, written in later groups each time they change (_lookup_groups;
    #                  formats 5-7 wrote "l<lkey>", one each)
    #   "S<n>"         a group of DNS server records (S_*) {dsrv key: record}: those new since the last
    #                  durable_parts, written once (_server_groups; format 5 wrote "s<dsrv key>", one each)
    # The marks: "_cc", "_cl", "_cs" (sets of the keys of conns, lk and dsrv that changed or went
    # away), in the state only once durable_parts has been asked (the in-process runner never
    # keeps them). Marked where a key is known to be touched: advance's loop marks the conn key of
    # every event before applying it, _apply_dns the lookup key or DNS server key of every message,
    # _claim_lookup the key it reads, and each timer pass what it changes or removes. Not written:
    # the input buffer and the conns' timer queue "tq" (rebuilt from conn.qd: only each conn's live
    # entry [conn.qd, key] is ever acted on, and heap order is total on [deadline, key]). The lookups'
    # queues "lq" and "lc" stay in the header with their very entries: an entry may be below its lookup's
    # expiry (moved later lazily) or name a lookup gone, and such an "lc" head sets a pass time when a
    # bucket holds nothing else, so only the very entries give the same passes. They are written flat,
    # without their keys (_flat_queue, format 8): a restore takes each from the lookup its number names.
    PART_CONN, PART_LOOKUP, PART_LOOKUPS, PART_SERVER, PART_SERVERS = "c", "l", "L", "s", "S"

    @staticmethod
    def durable_parts(state: dict) -> tuple[dict, dict]:
        """(header, changed): the durable state as a header and the entries that changed since the
        last call, {subkey: entry, or None for one gone}; every entry at the first call on a state
        (or after untrack()). Resets the marks; the header's "parts" counts the state's entries."""
        conns = state["conns"]
        cc, cl, cs = state.get("_cc"), state.get("_cl"), state.get("_cs")
        full = cc is None or cl is None or cs is None
        if full:
            cc = conns  # all of them
        changed = _server_groups(state, cs, full)
        for sub, keys in _lookup_groups(state, cl, full):
            changed[sub] = None if keys is None else _lookup_group(state, keys)
        header = {k: v for k, v in state.items() if k not in _NOT_IN_HEADER}
        header["lq"], header["lc"] = _flat_queue(state["lq"], state["wm"]), _flat_queue(state["lc"], state["wm"])
        header["parts"] = len(conns) + len(state["_lgc"]) + len(state["dsg"])
        for k in cc:
            changed["c" + k] = conns.get(k)
        state["_cc"], state["_cl"], state["_cs"] = set(), set(), set()
        return header, changed

    @staticmethod
    def tracking(state: dict) -> bool:
        """Whether the state has change marks (else durable_parts gives every entry)."""
        return "_cc" in state and "_cl" in state and "_cs" in state

    @staticmethod
    def untrack(state: dict) -> None:
        """Forget the change marks: the next durable_parts gives every entry."""
        for k in ("_cc", "_cl", "_cs"):
            state.pop(k, None)

    # A checkpoint in slices (begin_parts / next_parts): the cut takes the header and the keys that changed,
    # and the entries are serialized a few at a time between the state's advances; an entry still to write
    # that is about to change is serialized first, as it was at the cut (copy-on-write). Pending: "_pc",
    # "_pl", "_ps" (the keys of conns, lk and dsrv still to write), "_pv" ({subkey: its bytes at the cut,
    # or None for one gone}); every site that sets a change mark saves the entry first (_keep_conn,
    # _keep_lookup, _keep_server) when it is pending, before it changes it. The DNS server records' groups
    # ("_pg": [(subkey, group or None)]) hold the records as they are at the cut (never changed in place), so
    # none is saved ("_ps" stays empty: _keep_server is not called). The lookup keys' groups ("_plg": [(subkey,
    # its keys, or None)]) are serialized later, a group at a time: "_pl" holds their keys not yet serialized,
    # and a key saved before it changed keeps its bytes in "_plv" ({lkey: bytes}) for its group to take.

    @staticmethod
    def begin_parts(state: dict) -> dict:
        """The cut of a checkpoint in slices: the header durable_parts gives, now; its entries (the same
        ones) follow from next_parts, as they are now, whatever the state goes through meanwhile."""
        conns = state["conns"]
        if state.get("_pv") is not None:
            raise RuntimeError("a checkpoint in slices begun before the last one ended")
        cc, cl, cs = state.get("_cc"), state.get("_cl"), state.get("_cs")
        full = cc is None or cl is None or cs is None
        if full:
            cc = set(conns)  # all of them
        groups = _server_groups(state, cs, full)  # (records never changed in place: held as they are now)
        lgroups = _lookup_groups(state, cl, full)
        header = {k: v for k, v in state.items() if k not in _NOT_IN_HEADER}
        header["lq"], header["lc"] = _flat_queue(state["lq"], state["wm"]), _flat_queue(state["lc"], state["wm"])
        header["parts"] = len(conns) + len(state["_lgc"]) + len(state["dsg"])
        # the new lookup groups' keys (as they are now: each saved before it changes, _keep_lookup)
        state["_pl"] = {k for _sub, keys in lgroups if keys is not None for k in keys}
        state["_pc"], state["_ps"], state["_pv"], state["_plv"] = cc, set(), {}, {}
        state["_pg"] = list(groups.items())
        state["_plg"] = lgroups
        state["_cc"], state["_cl"], state["_cs"] = set(), set(), set()
        return header

    @staticmethod
    def next_parts(state: dict, limit: int) -> dict | None:
        """Up to `limit` more entries of the checkpoint begun (with those saved before a change):
        {subkey: the entry's bytes (dumps_state's, _entry_bytes) at the cut, or None for one gone}; None once all were
        given (the state then has no pending entry)."""
        saved = state.get("_pv")
        if saved is None:
            return None
        out, state["_pv"] = saved, {}
        pc, pg, plg = state["_pc"], state["_pg"], state["_plg"]
        conns = state["conns"]
        while limit > 0 and pg:  # DNS server records' groups (as they were at the cut: see _server_groups)
            sub, group = pg.pop()
            out[sub] = None if group is None else _entry_bytes(group)
            limit -= 1 if group is None else max(1, len(group) // 8)
        while limit > 0 and pc:
            k = pc.pop()
            c = conns.get(k)
            out["c" + k] = None if c is None else _entry_bytes(c)
            limit -= 1
        while limit > 0 and plg:  # lookup keys' groups (_lookup_groups), as they were at the cut
            sub, keys = plg.pop()
            out[sub] = None if keys is None else _lookup_group_bytes(state, keys)
            limit -= 1 if keys is None else max(1, len(keys) // 2)
        if not (pc or pg or plg):
            for k in ("_pc", "_pl", "_ps", "_pv", "_pg", "_plg", "_plv"):
                del state[k]
            if not out:
                return None
        return out

    @staticmethod
    def parts_pending(state: dict) -> bool:
        """Whether a checkpoint in slices has entries of this state still to give."""
        return state.get("_pv") is not None

    def restore_parts(self, header: dict, entries: dict) -> dict:
        """A header and its entries {subkey: entry} (durable_parts' forms, as JSON gives them back)
        -> a state process/advance take, marked as having given out exactly these (the next
        durable_parts gives what changes from here)."""
        conns, lk, lks, dsrv = [], [], {}, []
        servers: dict = {}  # the DNS server records of the groups (format 7): each key's newest
        lgroups: list = []  # the lookup keys' groups (format 8): (id, group)
        singles = False  # DNS server records or lookup keys one per entry (formats 5-7)
        for sub, v in entries.items():
            kind, k = sub[0], sub[1:]
            if kind == "c":
                conns.append(v if v.__class__ is Conn else Conn.from_dict(v))
            elif kind == "L":
                lgroups.append((int(k), k, v))
            elif kind == "l":
                lks[k] = v[0]
                lk.append((v[0], k, v[1]))
                singles = True
            elif kind == "S":
                for sk, rec in v.items():
                    had = servers.get(sk)
                    if had is None or rec[S_TS] > had[S_TS]:
                        servers[sk] = rec
            elif kind == "s":
                dsrv.append((v[S_TS], k, v))
                singles = True
            else:
                raise ValueError(f"unknown stitch state entry {sub!r}")
        if servers:
            # a group is tombstoned once all its records left the state: until then it may hold records
            # that left (older than the oldest held at the cut) or were replaced by a repeat (older)
            oldest = header.get("dso")
            if oldest is not None:
                dsrv += [(rec[S_TS], k, rec) for k, rec in servers.items() if rec[S_TS] >= oldest]
        count: dict = {}  # the lookup groups' bookkeeping (_lookup_groups), as the state that wrote them had it
        versions: dict = {}
        dead_in: dict = {}
        if lgroups:
            # each key's version of the newest group, unless it is gone ("lgx": a group still holds a version of it)
            lgroups.sort(key=itemgetter(0))
            newest: dict = {}
            for _n, g, group in lgroups:
                count[g] = 0
                for k, v in group.items():
                    newest[k] = v
                    held = versions.get(k)
                    if held is None:
                        versions[k] = [g]
                    else:
                        held.append(g)
            dead = set(header.get("lgx") or ())
            for k, v in newest.items():
                if k in dead:
                    for g in versions[k]:
                        dead_in.setdefault(g, set()).add(k)
                else:
                    count[versions[k][-1]] += 1
                    lks[k] = v[0]
                    lk.append((v[0], k, v[1]))
        state = self.new_state()
        state.update(header)
        state.pop("parts", None)
        lq, lc = header.get("lq"), header.get("lc")
        if (lq and lq[0].__class__ is not list) or (lc and lc[0].__class__ is not list):  # (format 8: flat)
            key_of = {x[L_SEQ]: k for _n, k, lookups in lk for x in lookups}
            state["lq"], state["lc"] = _queue_of(lq, header["wm"], key_of), _queue_of(lc, header["wm"], key_of)
        _heaps_of_tuples(state)  # (JSON gives the lookups' queues' entries back as lists)
        # the orders the live state keeps: conns and lookup keys in creation order (their numbers),
        # DNS server records in time order
        conns.sort(key=attrgetter("seq"))
        state["conns"] = {c.k: c for c in conns}
        lk.sort(key=itemgetter(0))
        state["lk"] = {k: lookups for _n, k, lookups in lk}
        state["lks"] = {k: lks[k] for _n, k, _l in lk}
        dsrv.sort(key=itemgetter(0))
        state["dsrv"] = {k: v for _ts, k, v in dsrv}
        tq = state["tq"] = [(c.qd, c.k) for c in conns]
        heapify(tq)
        state["v"] = STATE_FORM
        if singles:  # (written by formats 5-7: the next checkpoint writes every entry, tombstones the old ones)
            state["dsg"], state["dso"], state["lgx"] = [], None, []
        else:
            state["_cc"], state["_cl"], state["_cs"] = set(), set(), set()
            state["_lgc"], state["_lkv"], state["_lgd"], state["_lkx"] = count, versions, dead_in, set(state["lgx"])
        return state

    def restore(self, durable: dict) -> dict:
        """A durable state (or a full one) -> a state process/advance take."""
        state = self.new_state()
        state.update(durable)
        state["v"] = durable.get("v")  # (none: an older form, upgraded below)
        self._upgrade_older(state)
        if "nmax" not in durable:
            state["nmax"] = None  # written before it was tracked: a late event may be a redelivery
        return state

    # -- operator API --------------------------------------------------------

    def process(self, state: dict, key: str, batch: dict) -> list[tuple[str, str, dict]]:
        """Buffer one enriched batch (svctrace.enriched-batch): its events are EnrichedEvents
        (in-process) or their schema dicts (from Kafka). Emits only dead letters (an event
        dict that is no SyscallEvent). An event behind the watermark is dropped and counted
        late; unless it is a redelivery, it is a loss too (see _late_losses)."""
        wm = state["wm"]
        runs = state.get("runs")
        if runs is None:  # a state written by an earlier version (its events in "buf"), not given to restore
            self._upgrade_older(state)
            runs = state["runs"]
        for loss in batch.get("lost") or ():
            since = loss.get("since_ns")
            state["lost"].append([loss["node"], loss["ts"], loss["count"]] if since is None else
                                 [loss["node"], loss["ts"], loss["count"], since])
            if state["next"] is None:  # a timer pass trims old markers
                state["next"] = max(wm, loss["ts"]) + self.lookup_timeout_ns
        events = batch["events"]
        if events.__class__ is EventRun and events and events[0].ev.ts >= wm:
            # The enrich stage's own run (in-process, or a worker's local handoff): one node's events
            # in order, so none is late when the first is not; taken whole, without a step per event.
            runs.append([events, 0])
            nmax = state.get("nmax")
            if nmax is not None and events.top > nmax.get(events.node, -1):
                nmax[events.node] = events.top
            return []
        kept: list = []
        append = kept.append
        out: list = []
        late: list | None = None
        tops: dict[str, int] = {}  # the highest n of each node in this batch
        node, top = None, -1  # the current run of one node's events (batches mostly hold one node)
        for d in events:
            if d.__class__ is not EnrichedEvent:
                try:
                    d = from_wire(d)
                except Exception as exc:  # one bad event must not stop the bucket
                    ts = d.get("ts") if isinstance(d, dict) and isinstance(d.get("ts"), int) else 0
                    out.append(dead_letter(self.name, FLOWS_TOPIC, key, d, exc, ts))
                    continue
            e = d.ev
            if e.ts < wm:
                if late is None:
                    late = []
                late.append(e)
            else:
                append(d)  # (a duplicate (same node, n) sorts next to its original when applied)
            if e.node == node:
                if e.n > top:
                    top = e.n
            else:
                if node is not None and top > tops.get(node, -1):
                    tops[node] = top
                node, top = e.node, e.n
        if node is not None and top > tops.get(node, -1):
            tops[node] = top
        if kept:  # a run in time order (stable: events at one time keep the batch's order)
            kept.sort(key=_event_ts)
            runs.append([kept, 0])
        nmax = state.get("nmax")
        if late is not None:
            state["late"] += len(late)
            if nmax is not None:
                self._late_losses(state, late, nmax)
        if nmax is not None:
            for node, top in tops.items():
                if top > nmax.get(node, -1):
                    nmax[node] = top
        return out

    def _late_losses(self, state: dict, late: list, nmax: dict) -> None:
        """Late events are losses (rule 5: a chain missing one is "incomplete", never "broken"),
        noted as loss markers [node, ts, count] like a capture's: one per node and slot of
        event time (at most settle_ns wide, so a marker at the slot's oldest late event lies
        within settle of every chain holding one of them), their number bounded. A late event
        no newer (by n) than every event of its node seen before in this bucket is a
        redelivery of one already applied (a worker re-reading input after a restart): no loss.
        nmax: the highest n per node before this batch."""
        lost = state["lost"]
        slot = max(1, min(self.settle_ns, S))
        seen: dict[str, int] = {}
        for e in late:
            node, n, ts = e.node, e.n, e.ts
            if n <= seen.get(node, nmax.get(node, -1)):
                continue
            seen[node] = n  # a redelivery of it later is no second loss
            newest = None  # the node's newest marker
            for marker in reversed(lost):
                if marker[0] == node and len(marker) == 3:  # (a capture window is not folded into)
                    if marker[1] // slot == ts // slot:
                        break
                    if newest is None:
                        newest = marker
            else:
                if len(lost) < MAX_LOST_MARKERS:
                    lost.append([node, ts, 1])
                    continue
                marker = newest or next((m for m in reversed(lost) if len(m) == 3), None)  # folded into it:
                if marker is None:  # the list stays bounded (but for capture windows)
                    lost.append([node, ts, 1])
                    continue
            marker[1] = min(marker[1], ts)
            marker[2] += 1
        if lost and state["next"] is None:
            state["next"] = state["wm"] + self.lookup_timeout_ns  # a timer pass trims old markers

    def advance(self, state: dict, key: str, watermark_ns: int, final: bool = False) -> list[tuple[str, str, dict]]:
        out: list = []
        if watermark_ns <= state["wm"] and not final:
            return out
        state["wm"] = max(state["wm"], watermark_ns)
        conns = state["conns"]
        if state.get("v") != STATE_FORM or "runs" not in state or (
                conns and next(iter(conns.values())).__class__ is not Conn) or _lists_in_heaps(state):
            self._upgrade_older(state)  # a state read from JSON (or written earlier) not given to restore
        if state["runs"]:
            ready = _take_ready(state, watermark_ns)
            if ready:
                prev = None  # the previous event applied (its SyscallEvent)
                # Each event is applied here (the loop's body is the event's step: no call per event).
                conns, conn_keys, dns_port = state["conns"], self._conn_keys, self.dns_port
                marked = state.get("_cc")  # change marks (durable_parts), when a checkpoint takes parts
                keep = state.get("_pc")  # conns a checkpoint in slices has still to write (begin_parts)
                unspecified, tcp_kinds = UNSPECIFIED_IPS, _TCP_KINDS
                for d in ready:
                    e = d.ev
                    ts = e.ts
                    if prev is not None and ts == prev.ts and e.n == prev.n and e.node == prev.node:
                        state["dups"] += 1  # at-least-once delivery: the same event again (ts, node, n)
                        continue
                    prev = e
                    nxt = state["next"]
                    while nxt is not None and nxt <= ts:  # timers due at or before e come first
                        self._timers(state, nxt, out, False)  # (_fire_until, inline: a pass every ~10 events)
                        nxt = state["next"]
                    try:
                        proto = e.proto
                        if proto == "tcp":
                            if e.remote_port == dns_port or e.local_port == dns_port or e.addr_port == dns_port:
                                kind = e.kind  # DNS over TCP: length-prefixed, possibly several per syscall or split
                                if (kind == "send" or kind == "recv") and e.res > 0:
                                    for wire in tcp_dns_messages(e.data, e.res):
                                        self._apply_dns(state, d, wire)
                                continue
                            if e.role == "server" and (self._dns_eps or not self._dns_eps_lo <= ts < self._dns_eps_hi) \
                                    and self._dns_server_at(e.local_ip, e.local_port, ts):
                                kind = e.kind  # a DNS server on another port: its queries, as on dns_port
                                if kind == "recv" and e.res > 0:
                                    for wire in tcp_dns_messages(e.data, e.res):
                                        self._apply_dns(state, d, wire, True)
                                continue
                        elif proto == "udp":
                            kind = e.kind
                            if e.remote_port == dns_port or e.local_port == dns_port or e.addr_port == dns_port:
                                if (kind == "send" or kind == "recv") and e.res > 0:
                                    data = e.data
                                    if e.local_port == dns_port and data and len(data) > 2 and data[2] & 0x80:
                                        continue  # the server's answer (QR set): see _apply_dns
                                    self._apply_dns(state, d)
                                continue
                            if e.role == "server" and (self._dns_eps or not self._dns_eps_lo <= ts < self._dns_eps_hi) \
                                    and self._dns_server_at(e.local_ip, e.local_port, ts):
                                if kind == "recv" and e.res > 0:  # (its answers add nothing: see _apply_dns)
                                    self._apply_dns(state, d, None, True)
                                continue
                            # other UDP: a datagram flow to a Service, followed as a connection (_apply_udp)
                            if kind in tcp_kinds:
                                self._apply_udp(state, d, e, kind, ts, out)
                            continue
                        else:
                            continue
                        kind = e.kind
                        if kind not in tcp_kinds:
                            continue
                        proxy_of = d.proxy_of
                        if proxy_of:
                            side, ip, port = "px", proxy_of["ip"], proxy_of["port"]
                        else:
                            role = e.role
                            if role == "server":
                                side, ip, port = "sv", e.remote_ip, e.remote_port
                            elif role == "client":
                                ip = e.local_ip
                                if ip in unspecified:
                                    ip = d.flow
                                side, port = "cl", e.local_port
                            else:
                                continue
                        ck = conn_keys.get((ip, port))  # the conn key (keys.endpoint_key), memoized
                        if ck is None:  # (a new connection's first event: no KeyError raised and caught)
                            ck = self._conn_key(ip, port)
                        if marked is not None:
                            marked.add(ck)  # whatever this event does to conns[ck] (new, changed, replaced)
                            if keep and ck in keep:
                                _keep_conn(state, ck)
                        conn = conns.get(ck)
                        if kind == "connect":  # (tested first: most events are not connects)
                            if e.syscall == "getsockopt":
                                if conn is not None:
                                    self._connect_result(conn, side, e)
                                continue
                            if conn is not None and side == "cl" and conn.cn is not None:
                                # The client port is reused: the previous connection is over.
                                self._finish(state, conn, out, final=False)
                                seq = conn.seq  # the new conn takes the old one's place in `conns` (and in timer order)
                                conn = conns[ck] = _new_conn(ck, e, seq)
                                self._schedule_new(state, conn)
                        if conn is None:
                            if kind == "close" and side == "cl":
                                continue  # the tail of a connection already finished
                            seq = state["seq"]
                            state["seq"] = seq + 1
                            conn = conns[ck] = _new_conn(ck, e, seq)
                            self._schedule_new(state, conn)
                        if ts > conn.t1:
                            conn.t1 = ts  # only delays the idle deadline: no rescheduling needed
                        if side == "cl":
                            self._client_step(state, conn, d, e, kind, ts, ip, port)
                        elif side == "sv":
                            _acceptor_step(conn, d, e, kind, ts)
                            if kind == "close" and conn.cl is None and not conn.px and _accepting_over(conn):
                                self._settles(state, conn, ts)  # only its accepting side, over: see _conn_deadline
                        else:
                            _proxy_step(conn, e, kind, ts)
                    except Exception as exc:  # one bad event must not stop the bucket
                        out.append(dead_letter(self.name, FLOWS_TOPIC, key, to_wire(d), exc, ts))
        self._fire_until(state, watermark_ns, out)
        if final:
            self._timers(state, watermark_ns, out, True)
        return out

    def _fire_until(self, state: dict, now: int, out: list) -> None:
        """Fire the timers due at or before `now`, each pass at its own deadline (state["next"]).
        Timers thus fire at the same event times, in the same order, between the same two
        events, however far each advance moves the watermark: a worker catching up in one
        jump and `analyze` stepping every few thousand events give the same outputs. Tie
        rule: a timer due at an event's ts fires before that event is applied (as when a
        watermark stops exactly there: events at ts >= wm are still buffered)."""
        nxt = state["next"]
        while nxt is not None and nxt <= now:
            self._timers(state, nxt, out, False)
            nxt = state["next"]

    def flush(self, state: dict, key: str) -> list[tuple[str, str, dict]]:
        """End of input: apply everything buffered and close every chain (open ones as incomplete)."""
        end = max(max((events[-1].ev.ts for events, _i in state["runs"]), default=state["wm"]), state["wm"]) + 1
        return self.advance(state, key, end, final=True)

    # -- applying one event (in event-time order: advance's loop) --------------

    def _client_step(self, state: dict, conn: Conn, d: EnrichedEvent, e: SyscallEvent, kind: str, ts: int,
                     ip: str, port: int) -> None:
        """The client's event on its connection: connect, a request sent, a response or EOF, close."""
        a = conn.a  # (the anchor _new_conn made of this very event, mostly: kept, not made again)
        if conn.cl is None:
            conn.cl = [e.node, e.pid, e.comm, e.container_id, ip, port, d.flow]  # CL_*
            if not (a[0] is e.node and a[1] is e.n):
                a = conn.a = [e.node, e.n]
        if kind == "connect":
            conn.cn = [ts, e.addr_ip or e.remote_ip, e.addr_port or e.remote_port, e.remote_ip,
                       e.remote_port, e.res, e.errno]  # CN_*
            if not (a[0] is e.node and a[1] is e.n):
                conn.a = [e.node, e.n]
            if len(conn.ev) < MAX_EVIDENCE:  # _evidence, inline
                conn.ev.append(Ref(e.node, e.n, ts, "client connect"))
            self._resolve_service(state, conn, d)
            if e.res == 0:
                conn.est = max(conn.est or 0, 1)
        elif kind == "send":
            res = e.res
            if res > 0:
                conn.est = conn.est or 1
                conn.tx += res
                data = e.data
                req = parse_request(data) if data and data.startswith(REQUEST_PREFIXES) else None
                if req is not None:
                    conn.nreq += 1
                    reqs = conn.creq
                    reqs.append([conn.nreq - 1, ts, req.method, req.target, req.host, res, 0, None, None,
                                 [Ref(e.node, e.n, ts, "client request")],
                                 False])  # C_*
                    if (len(reqs) > 1 and reqs[0][C_DONE]) or len(reqs) > MAX_REQS_KEPT:
                        _trim_client(conn)
                    return
                reqs = conn.creq
                if reqs and reqs[-1][C_RESPONSE_TS] is None:
                    reqs[-1][C_SENT] += res
            elif e.errno in FAILED_ERRNOS:
                conn.err = conn.err or e.errno
                _evidence(conn, e, "client send error")
            if conn.svc is None and conn.cn is None:
                self._resolve_service(state, conn, d)
        elif kind == "recv":
            res = e.res
            if res > 0:
                conn.est = 2
                conn.rx += res
                data = e.data
                cur = None  # the oldest request still waiting for its response
                for r in reversed(conn.creq):  # (answered oldest first: the waiting ones trail)
                    if r[C_RESPONSE_TS] is not None:
                        break
                    cur = r
                resp = parse_response(data) if data and data.startswith(RESPONSE_PREFIX) else None
                status = resp.status if resp is not None else 0
                if status >= 200 and cur is not None:
                    cur[C_RESPONSE_TS], cur[C_STATUS], cur[C_RECEIVED] = ts, status, res
                    cur[C_EVIDENCE].append(Ref(e.node, e.n, ts, "client response"))
                    self._settles(state, conn, ts)  # a response: its settle time may come first
                    return
                last = conn.creq[-1] if conn.creq else None
                if last is not None and last[C_RESPONSE_TS] is not None:
                    last[C_RECEIVED] += res
            elif res == 0:
                conn.eof = conn.eof or ts
                _evidence(conn, e, "client got EOF")
            elif e.errno in FAILED_ERRNOS:
                conn.err = conn.err or e.errno
                _evidence(conn, e, "client recv error")
        elif kind == "close":
            conn.ccl = ts
            if len(conn.ev) < MAX_EVIDENCE:  # _evidence, inline
                conn.ev.append(Ref(e.node, e.n, ts, "client close"))
            self._settles(state, conn, ts)  # a close: its settle time may come first

    # UDP ----------------------------------------------------------------------------

    def _apply_udp(self, st: dict, d: EnrichedEvent, e: SyscallEvent, kind: str, ts: int, out: list) -> None:
        """A UDP event of another port than DNS's: a client's datagrams to a Service (and its replies), and what a
        backend received from that client (and sent back), followed as one connection keyed "udp/ip:port" by the
        client's socket. The flow starts with the client's first datagram (sent, or failed at once: no route), which
        names its peer (connect() on a UDP socket sends nothing: glibc's getaddrinfo connects one to each address
        only to sort them); a datagram the backend received makes it "established" (est 2), as does a reply; an
        ICMP error the client's socket reports (ECONNREFUSED: port unreachable, kube-proxy's REJECT of a Service
        without endpoints, or a backend with nothing on the targetPort) is the first datagram's result. One chain per flow: it ends settle after the
        client's close or its first error, udp_window_ns after its first datagram, or idle after its last event."""
        res = e.res
        if e.role == "client":
            ip = e.local_ip
            if ip in UNSPECIFIED_IPS:
                ip = d.flow
            side, port = "cl", e.local_port
        elif e.role == "server":
            side, ip, port = "sv", e.remote_ip, e.remote_port
        else:
            return
        if not port or ip in UNSPECIFIED_IPS:
            return  # an unbound socket, which sent nothing; a datagram whose peer is unknown
        ck = "udp/" + endpoint_key(ip, port)
        conns = st["conns"]
        conn = conns.get(ck)
        # (a client's first datagram, sent or failed at once: no route to its address; a server's receipt)
        starts = kind == "send" and (res > 0 or e.errno in FAILED_ERRNOS) if side == "cl" else kind == "recv" and res >= 0
        if conn is None and not starts:
            return  # a reply, an error or a close of a flow not followed (over already, or before the capture)
        marked = st.get("_cc")  # change marks and a sliced checkpoint's pending entries: as advance's loop does
        if marked is not None:
            marked.add(ck)
            keep = st.get("_pc")
            if keep and ck in keep:
                _keep_conn(st, ck)
        if conn is not None and side == "cl" and conn.ccl is not None and starts:
            self._finish(st, conn, out, final=False)  # the port taken again by a new socket: that flow is over
            seq = conn.seq
            conn = conns[ck] = _new_conn(ck, e, seq)
            self._schedule_new(st, conn)
        elif conn is None:
            seq = st["seq"]
            st["seq"] = seq + 1
            conn = conns[ck] = _new_conn(ck, e, seq)
            self._schedule_new(st, conn)
        if ts > conn.t1:
            conn.t1 = ts
        if side == "sv":
            if kind == "recv" and res >= 0:
                for me in conn.sv:
                    if me[A_FD] == e.fd and me[A_PID] == e.pid and me[A_NODE] == e.node:
                        return  # (its first datagram from this client is the one that counts)
                lref = d.local_ref
                lkind = lref.get("kind") if lref else None
                # A_CLOSED at its receipt: a UDP server's socket serves every peer and never closes for one, so
                # a flow only the server saw (its client not traced; a DNS server on another port than 53)
                # leaves settle after it, as a TCP connection only its acceptors saw does after their close
                conn.sv.append([e.node, e.pid, e.comm, e.fd, e.container_id, e.local_ip, e.local_port, ts,
                                lkind is None or lkind == "node" or lkind == "external", [], 0, ts])  # A_*
                del conn.sv[:-4]
                conn.est = 2
                _evidence(conn, e, "backend received")
                if conn.cl is None:
                    self._settles(st, conn, ts)
            elif kind == "send" and res > 0:
                for me in conn.sv:
                    if me[A_FD] == e.fd and me[A_PID] == e.pid and me[A_NODE] == e.node:
                        if not me[A_NREQUESTS]:  # (UDP: the replies it sent this client)
                            _evidence(conn, e, "backend reply")
                        me[A_NREQUESTS] += 1
                        break
            return
        if conn.cl is None:
            conn.cl = [e.node, e.pid, e.comm, e.container_id, ip, port, d.flow]  # CL_*
            conn.a = [e.node, e.n]
        cn = conn.cn
        if kind == "send" and res < 0 and cn is None and e.errno in FAILED_ERRNOS:
            # the first datagram failed at once (EHOSTUNREACH, ENETUNREACH: no route to the address): a flow, failed
            conn.cn = [ts, e.addr_ip or e.remote_ip, e.addr_port or e.remote_port, e.remote_ip, e.remote_port, res,
                       e.errno]  # CN_*
            conn.a = [e.node, e.n]
            self._resolve_service(st, conn, d)
            self._udp_error(st, conn, e, "client datagram")
            return
        if kind == "send":
            if res > 0:
                if cn is None:
                    conn.cn = [ts, e.addr_ip or e.remote_ip, e.addr_port or e.remote_port, e.remote_ip, e.remote_port,
                               0, None]  # CN_*: the first datagram
                    conn.a = [e.node, e.n]
                    _evidence(conn, e, "client datagram")
                    self._resolve_service(st, conn, d)
                    self._due_at(st, conn, ts + self.udp_window_ns)
                elif e.addr_ip is not None and (e.addr_ip != cn[CN_ADDR_IP] or e.addr_port != cn[CN_ADDR_PORT]):
                    # an unconnected socket sending elsewhere too: not this flow's (its first destination's); its
                    # backends may show among this flow's acceptors, so none of them is called misrouted (_emit)
                    if conn.eof is None:
                        conn.eof = ts
                    return
                conn.tx += res
            elif e.errno in FAILED_ERRNOS:
                self._udp_error(st, conn, e, "client send error")
        elif kind == "recv":
            if res >= 0:
                if cn is not None and e.addr_ip is not None and e.addr_ip != cn[CN_ADDR_IP] and \
                        e.addr_ip != cn[CN_REMOTE_IP]:
                    return  # a datagram from another peer than the flow's (an unconnected socket)
                if not conn.rx:
                    _evidence(conn, e, "client reply")
                conn.est = 2
                conn.rx += res
            elif e.errno in FAILED_ERRNOS:
                self._udp_error(st, conn, e, "client recv error")
        elif kind == "close":
            conn.ccl = ts
            _evidence(conn, e, "client close")
            self._settles(st, conn, ts)

    def _own_receipts(self, conn: Conn) -> None:
        """A UDP flow whose unconnected socket also sent to other destinations (conn.eof): a backend receipt from
        its address and port may be another Service's datagram. At the flow's end only the receipts by an endpoint
        of the flow's Service (at the receipt, ready or not) stay, with their evidence: the flow is delivered only
        if one of them received it or a reply came back from its destination. (A pod behind both Services counts
        for both: the syscalls cannot tell which datagram it got.)"""
        svc = conn.svc
        if svc is None:
            return
        idx = self.index
        ns, name = svc["namespace"], svc["name"]
        kept, nodes, gone = [], set(), set()
        for a in conn.sv:
            ips = {ep.ip for ep in idx.endpoints(ns, name, a[A_TS])}
            if a[A_IP] in ips:
                kept.append(a)
                nodes.add(a[A_NODE])
            else:
                gone.add((a[A_NODE], a[A_TS]))
        if not gone:
            return
        conn.sv = kept  # (replaced, never mutated: _ConnParts)
        if not kept and not conn.rx:
            conn.est = 0
        ev = []
        for r in conn.ev:
            what = r.what
            if not (what == "backend received" and (r.node, r.ts) in gone or what == "backend reply" and
                    r.node not in nodes):
                ev.append(r)
        conn.ev = ev

    def _udp_error(self, st: dict, conn: Conn, e: SyscallEvent, what: str) -> None:
        """An error the client's UDP socket reported (an ICMP error for an earlier datagram): the first one is the
        flow's, and the first datagram's result (its connect record's, which a TCP connect's refusal sets). It ends
        the flow, as a refusal or a reset ends a TCP connection (ccl: its chain comes settle after, not when the
        socket closes, which a long-lived one never does); the socket's next datagram starts another."""
        if conn.err is None:
            conn.err = e.errno
            _evidence(conn, e, f"{what} {e.errno}")
            cn = conn.cn
            if cn is not None and cn[CN_ERRNO] is None:
                cn = conn.cn = cn.copy()  # replaced, never mutated (_ConnParts)
                cn[CN_RESULT], cn[CN_ERRNO] = e.res, e.errno
            if conn.ccl is None:
                conn.ccl = e.ts
                self._settles(st, conn, e.ts)

    def _due_at(self, st: dict, conn: Conn, at: int) -> None:
        """A deadline candidate `at` for the conn (as _settles' ts + settle, for any time)."""
        nxt = st["next"]
        if at < conn.qd:
            conn.qd = at
            _tq_push(st["tq"], st["tqs"], (at, conn.k))
            if nxt is None or at < nxt:
                st["next"] = at
        elif nxt is None or at < nxt:
            self._schedule(st, conn)

    def _conn_key(self, ip: str | None, port: int | None) -> str:
        keys = self._conn_keys
        if len(keys) >= _KEYS_MAX:
            keys.clear()
        key = keys[ip, port] = endpoint_key(ip, port)
        return key

    def _lkey(self, flow: str | None, node: str, pid: int) -> str:
        keys = self._lkeys
        if len(keys) >= _KEYS_MAX:
            keys.clear()
        key = keys[flow, node, pid] = f"{flow}|{node}|{pid}"
        return key

    @staticmethod
    def _connect_result(conn: Conn, side: str, e) -> None:
        """getsockopt(SO_ERROR) after a non-blocking connect (EINPROGRESS): res -errno when it failed
        (refused, unreachable, timed out). Real clients learn a refusal only so: their connect()
        itself returned EINPROGRESS. A 0 says only that no error is pending (not that the connect
        completed: anyone may ask at any time), so it changes nothing; neither does a result for a
        connect no longer in progress."""
        if e.res >= 0:
            return
        if side == "cl":
            cn = conn.cn
            if cn is not None and cn[CN_ERRNO] == "EINPROGRESS":
                cn = conn.cn = cn.copy()  # replaced, never mutated (_ConnParts)
                cn[CN_RESULT], cn[CN_ERRNO] = e.res, e.errno
                _evidence(conn, e, f"client connect {e.errno}")
        elif side == "px":
            for me in conn.px:
                if me[D_FD] == e.fd and me[D_PID] == e.pid and me[D_NODE] == e.node:
                    if me[D_ERRNO] == "EINPROGRESS":
                        me[D_RESULT], me[D_ERRNO] = e.res, e.errno
                        _evidence(conn, e, f"proxy dial {e.errno}")
                    break

    # The timer queue holds (deadline, conn key) entries; a conn's live entry is the one
    # whose deadline is conn.qd (<= its actual deadline), any other entry of it is stale and
    # is dropped when it comes up (no deadline computed). A deadline moving later (new events)
    # is found when the live entry comes up; one moving earlier (close, response) queues anew.
    # The queue is a heap st["tq"] and three sorted FIFOs beside it, by where an entry is queued
    # (_tq_push): "tqn" a new conn's idle deadline, "tqs" a settle (an event's time + settle), "tqp" a
    # timer pass's (each kind mostly comes in order: event times, pass times; one out of order goes to
    # the heap); its head is the least of the four heads (_tq_least), so entries come out in the heap's
    # order, (deadline, key), ties included. (Entries in order are O(1) to queue and to take.)

    def _schedule(self, st: dict, conn: Conn) -> None:
        # A client's close or response at ts adds one candidate, ts + settle, to the deadline's
        # min (a later close replaces an earlier one: no earlier), and so does the close at ts that
        # leaves a connection with no client and no proxy dial with every acceptor closed (ts is its
        # t1 then); nothing else an event does moves it earlier, and conn.qd <= the deadline,
        # st["next"] <= conn.qd. So the new deadline is that candidate when it is below conn.qd, and nothing changes otherwise: advance queues it
        # so, without computing the deadline; this is for a state where those bounds do not hold.
        dl = self._conn_deadline(conn)
        if dl < conn.qd:
            conn.qd = dl
            heappush(st["tq"], (dl, conn.k))
        if st["next"] is None or dl < st["next"]:
            st["next"] = dl

    def _schedule_new(self, st: dict, conn: Conn) -> None:
        """_schedule of a new conn (no request, no close): its idle deadline."""
        dl = conn.qd = conn.t1 + self.idle_ns
        _tq_push(st["tq"], st["tqn"], (dl, conn.k))  # (its first event's time + idle: mostly in order)
        if st["next"] is None or dl < st["next"]:
            st["next"] = dl

    def _conn_deadline(self, conn: Conn) -> int:
        # (compiled, the times are C integers here (stitch.pxd): an int's sum is not made and freed per term)
        t1 = conn.t1
        settle = self.settle_ns
        dl = self.idle_ns
        dl += t1
        ccl = conn.ccl
        if ccl is not None:
            at = ccl
            at += settle
            if at < dl:
                dl = at
        elif conn.cl is None:
            # Only its accepting side was seen (a userspace proxy's dial seen from the backend, keyed by the
            # proxy's node IP and dial port, which no client has; a backend whose client has no agent; a
            # NodePort's SNATed peer): no output unless a client's event comes to this key. Once every acceptor
            # has closed, none can come but from a clock more than settle (+ the connection's duration) ahead
            # of the acceptors' (the client's connect precedes the accept), or a client whose connect was not
            # seen sending after the backend closed; so it leaves settle after the close (its t1), not idle
            # after. (No requests of its own: creq is the client's.)
            if not conn.px and _accepting_over(conn):
                at = t1 + settle
                if at < dl:
                    dl = at
            return dl
        if conn.k[0] == "u":  # a UDP flow's chain covers its datagrams of udp_window_ns at most (_apply_udp)
            cn = conn.cn
            if cn is not None:
                at = cn[CN_TS]
                at += self.udp_window_ns
                if at < dl:
                    dl = at
            return dl
        # The oldest answered request not yet emitted: requests are answered oldest first and
        # emitted oldest first, so creq is [emitted..., answered..., unanswered...] in time order.
        for r in conn.creq:
            rts = r[C_RESPONSE_TS]
            if rts is None:
                break
            if not r[C_DONE]:
                at = rts
                at += settle
                if at < dl:
                    dl = at
                break
        return dl

    # client side ---------------------------------------------------------------

    def _settles(self, st: dict, conn: Conn, ts: int) -> None:
        """The client's close or response at ts (or the last acceptor's close of a conn with only its
        accepting side, see _conn_deadline): the conn's deadline may now be ts + settle."""
        at = ts + self.settle_ns
        nxt = st["next"]
        if at < conn.qd:  # then `at` is the deadline (see _schedule): queued without computing it
            conn.qd = at
            _tq_push(st["tq"], st["tqs"], (at, conn.k))  # (an event's time + settle: mostly in order)
            if nxt is None or at < nxt:
                st["next"] = at
        elif nxt is None or at < nxt:
            self._schedule(st, conn)  # (a state whose queue was rebuilt: conn.qd 0 until a pass)

    def _resolve_service(self, st: dict, conn: Conn, d: EnrichedEvent) -> None:
        """Which Service this connection is a request to, and how we know."""
        e = d.ev
        cn = conn.cn or _NO_CONNECT
        aip = cn[CN_ADDR_IP] or e.remote_ip
        aport = cn[CN_ADDR_PORT] or e.remote_port
        ts = e.ts
        lookup = self._claim_lookup(st, conn, d, aip)
        idx = self.index
        proto = "UDP" if conn.k.startswith("udp/") else "TCP"  # (a UDP flow's key: _apply_udp)
        hit = idx.service_by_ip(aip, aport, proto, ts) if aip else None
        if hit is not None:
            sv, sp = hit
            conn.svc = self._svc_of(sv, sp, aip, aport, "vip", proto)
            return
        if lookup is not None:
            answers = set(lookup[DX_ANSWERS])
            for sv in idx.services_for_endpoint(aip, aport, ts):
                if answers.intersection(sv.cluster_ips):
                    for vip in sv.cluster_ips:  # (a loop, not next() of a generator: a C method has no closures)
                        if vip in answers:
                            break
                    sp = _port_for_target(sv, aport)
                    conn.svc = self._svc_of(sv, sp, vip, sp.port if sp else None, "pod", proto)
                    return
            if aip in answers:
                # a headless Service (no ClusterIP): its name resolves to its endpoints, and the
                # client connects to one itself; nothing translates
                named = service_of_name(lookup[DX_QNAME])
                for sv in idx.services_for_endpoint(aip, aport, ts):
                    if not sv.cluster_ips and (sv.namespace, sv.name) == named:
                        conn.svc = self._svc_of(sv, _port_for_target(sv, aport), None, aport, "headless", proto)
                        return
        ref = d.addr_ref or d.remote_ref
        if ref and ref.get("kind") == "node" and aport:
            found = self._nodeport_service(aport, ts, proto)
            if found is not None:
                sv, sp = found
                conn.svc = self._svc_of(sv, sp, None, aport, "nodeport", proto)

    def _svc_of(self, sv, sp, vip, port, via, proto: str = "TCP") -> dict:
        """_svc's dict, one per Service, port and how we know it: a conn's svc is replaced, never
        mutated (_ConnParts), so connections share it (one dict fewer per open connection). Keyed
        by the index objects' identity, which the entry keeps alive (so no other object takes it)."""
        key = (id(sv), id(sp), vip, port, via, proto)
        try:
            return self._svcs[key][2]
        except KeyError:
            svcs = self._svcs
            if len(svcs) >= _MEMO_MAX:
                svcs.clear()
            svc = _svc(sv, sp, vip, port, via, proto)
            svcs[key] = (sv, sp, svc)
            return svc

    def _dns_server_at(self, ip, port, ts: int) -> bool:
        """Whether ip:port is an endpoint of the cluster DNS (kube-dns, dns-default, ...) on another port than
        dns_port: a Service port 53 whose targetPort differs (OpenShift's DNS pods listen on 5353). Its events,
        UDP and TCP, are a DNS server's: the client's side of them has port 53, this side not. (The endpoints of
        the 10 s of event time that ts falls in, read once; a cluster without such endpoints pays a division.)"""
        bucket = ts // (10 * S)
        if bucket != self._dns_eps_at:
            self._dns_eps_at = bucket
            self._dns_eps_lo = bucket * (10 * S)
            self._dns_eps_hi = self._dns_eps_lo + 10 * S
            eps = set()
            idx = self.index
            for svc in idx.dns_services(ts):
                for ep in idx.endpoints(svc.namespace, svc.name, ts):
                    if ep.port is not None and ep.port != self.dns_port:
                        eps.add((ep.ip, ep.port))
            self._dns_eps = eps
        return bool(self._dns_eps) and (ip, port) in self._dns_eps

    def _nodeport_service(self, port: int, ts: int, proto: str = "TCP"):
        """The Service and port whose NodePort `port` is, for `proto` (one Service may have the same NodePort for
        TCP and UDP, as DNS does)."""
        bucket = ts // (10 * S)
        if bucket != self._nodeports_at:
            self._nodeports_at = bucket
            self._nodeports = {}
            for key, info in self.index.objects(ts):
                if key.startswith("Service/"):
                    for sp in info.ports:
                        if sp.node_port:
                            self._nodeports[sp.node_port, (sp.protocol or "TCP").upper()] = (info, sp)
        return self._nodeports.get((port, proto))

    # (an acceptor's events, a userspace proxy's outbound connection's: applied in advance's loop)

    # DNS ---------------------------------------------------------------------------

    def _apply_dns(self, st: dict, d: EnrichedEvent, wire: bytes | None = None, server=None) -> None:
        """One DNS message: the event's UDP payload, or `wire`, one message of its TCP payload. `server`: whether
        the event is a DNS server's (None: if its local port is dns_port; _dns_server_at knows the others)."""
        e = d.ev
        if wire is None:
            wire = e.data
        if server is None:
            server = e.local_port == self.dns_port
        if server and wire and len(wire) > 2 and wire[2] & 0x80:
            return  # the server's answer (QR set): it adds nothing a chain shows, the client's receipt of it does
        msg, qid = parse_dns_with_id(wire)  # msg.id may be another message's: use qid
        if msg is None:
            return
        is_response = msg.is_response  # (the message's fields read once each)
        if server:  # the server's side
            if not is_response:  # (its answer adds nothing a chain shows: the client's receipt of it does)
                pip = e.remote_ip if e.remote_ip not in UNSPECIFIED_IPS else e.addr_ip
                pport = e.remote_port or e.addr_port
                k = self._conn_keys.get((pip, pport))  # the peer's endpoint_key, memoized
                if k is None:
                    k = self._conn_key(pip, pport)
                k = f"{k}|{qid}"
                dsrv = st["dsrv"]
                marks = st.get("_cs")
                if marks is not None:
                    marks.add(k)  # change mark (durable_parts)
                    if st.get("_ps") and k in st["_ps"]:
                        _keep_server(st, k)
                # (a repeat goes last: the dict stays in time order, for _timers' trim)
                old = dsrv.pop(k, None)
                # a resolver's retry keeps the first receipt; a key's reuse by a later lookup starts again
                first = e.ts if old is None or e.ts - old[S_TS] > R.RETRY_GAP_NS[1] else _first_receipt(old)
                dsrv[k] = [e.ts, e.node, e.pid, e.comm, e.local_ip, e.local_port, e.container_id,
                           Ref(e.node, e.n, e.ts, "dns server got query"), first]  # S_*
                if st["next"] is None:
                    st["next"] = e.ts + self.lookup_timeout_ns  # (as a pass sets it: see _timers)
            return
        ip = e.local_ip
        if ip in UNSPECIFIED_IPS:
            ip = d.flow
        # endpoint_key and the lookups' key, memoized (a query's socket is mostly new: .get, not a KeyError
        # raised and caught per message)
        ep = self._conn_keys.get((ip, e.local_port))
        if ep is None:
            ep = self._conn_key(ip, e.local_port)
        lkey = self._lkeys.get((d.flow, e.node, e.pid))
        if lkey is None:
            lkey = self._lkey(d.flow, e.node, e.pid)
        marks = st.get("_cl")
        if marks is not None:
            marks.add(lkey)  # change mark (durable_parts): whatever this message does to the key's lookups
            if st.get("_pl") and lkey in st["_pl"]:
                _keep_lookup(st, lkey)
        ts = e.ts
        lk_by_key = st["lk"]
        lookups = lk_by_key.get(lkey)
        if lookups:
            lookups = self._lookups(st, lkey, lookups, ts)
        if lookups is None:
            lookups = lk_by_key[lkey] = []
            st["lks"][lkey] = st["seq"]
            st["seq"] += 1
            if is_response:
                st["lke"].append(lkey)  # an answer to no query we saw: the empty list goes at the next pass
        qname = msg.qname
        if not is_response:
            cur = lookups[-1] if lookups else None
            if cur is not None and (ts - cur[L_T1] > self.lookup_timeout_ns or (
                    cur[L_RESOLVED] is not None and not (qname in cur[L_NAMES] and ts - cur[L_RESOLVED] < S))):
                cur = None
            if cur is None:
                cur = [[e.node, e.n], st["seq"], ts, ts, [], [], None, 0,
                       {"node": e.node, "pid": e.pid, "comm": e.comm, "container_id": e.container_id, "ip": ip,
                        "port": e.local_port, "flow": d.flow}]  # L_*
                lookups.append(cur)
                dl = ts + self.lookup_timeout_ns
                heappush(st["lq"], (dl, st["seq"], lkey))
                if st["next"] is None or dl < st["next"]:
                    st["next"] = dl  # (a bucket of lookups alone has no other timer to pass it)
                st["seq"] += 1
                del lookups[:-8]
            cur[L_T1] = ts
            names = cur[L_NAMES]
            if qname not in names:
                names.append(qname)
            qs = cur[L_QUERIES]
            if len(qs) < MAX_QUERIES:
                qtype = msg.qtype
                qs.append([qid, qname, qtype, ts, ep, e.addr_ip or e.remote_ip, e.addr_port or e.remote_port,
                           Ref(e.node, e.n, ts, f"dns query {qname} {qtype}"), None])  # Q_*
            return
        src = e.addr_ip or e.remote_ip
        for lk in reversed(lookups):
            # paired by client endpoint, server and id (a resolver ignores answers from elsewhere);
            # the latest ask first: glibc retransmits with the same id after its timeout, and an
            # answer then answers the retransmission (the first ask stays unanswered: a 5 s retry)
            qs = lk[L_QUERIES]
            for q in reversed(qs):
                if q[Q_ENDPOINT] == ep and q[Q_ID] == qid and q[Q_ANSWER] is None and q[Q_NAME] == qname and (
                        src is None or q[Q_SERVER] in (None, src)):
                    break
            else:
                continue
            rcode, answers = msg.rcode, msg.answers
            q[Q_ANSWER] = [ts, rcode, list(answers), list(msg.cnames), msg.ttl, src,
                           Ref(e.node, e.n, ts,
                               f"dns answer {rcode} {','.join(answers)}".rstrip())]  # N_*
            if ts > lk[L_T1]:
                lk[L_T1] = ts
            if rcode == "NOERROR" and answers and lk[L_RESOLVED] is None:
                lk[L_RESOLVED] = ts
            return

    def _claim_lookup(self, st: dict, conn: Conn, d: EnrichedEvent, aip: str | None) -> dict | None:
        e = d.ev
        if not aip:
            return None
        lkey = self._lkeys.get((d.flow, e.node, e.pid))
        if lkey is None:
            lkey = self._lkey(d.flow, e.node, e.pid)
        lk_by_key = st["lk"]
        lookups = lk_by_key.get(lkey)
        if not lookups:
            return None
        marks = st.get("_cl")
        if marks is not None:
            marks.add(lkey)  # change mark (durable_parts): dropped or claimed lookups
            if st.get("_pl") and lkey in st["_pl"]:
                _keep_lookup(st, lkey)
        ts = e.ts
        lookups = self._lookups(st, lkey, lookups, ts)
        if not lookups:
            return None
        for lk in reversed(lookups):
            res = lk[L_RESOLVED]
            if res is None or ts - res > self.lookup_timeout_ns:
                continue
            qs = lk[L_QUERIES]
            if len(qs) == 1:  # (one query: a fully qualified name, one address family)
                a = qs[0][Q_ANSWER]
                answers = a[N_ADDRESSES] if a else ()
            else:
                answers = [a for q in qs if q[Q_ANSWER] for a in q[Q_ANSWER][N_ADDRESSES]]
            match = aip in answers
            if not match:
                for sv in self.index.services_for_endpoint(aip, None, ts):  # (any() of a generator: a closure)
                    if set(answers).intersection(sv.cluster_ips):
                        match = True
                        break
            if match:
                lk[L_CLAIMED] += 1
                conn.dns = self._dns_summary(st, lk)
                return conn.dns
        return None

    def _lookups(self, st: dict, lkey: str, lookups: list, ts: int) -> list | None:
        """A key's lookups (not empty) as of ts, as exact timers would have left them: claimed
        lookups past their expiry (left to any later pass: "lc") are dropped now, and with the last
        one the key (None then)."""
        limit = ts - self.lookup_timeout_ns  # expired: last event at or before it
        for lk in lookups:
            if lk[L_CLAIMED] and lk[L_T1] <= limit:
                break
        else:
            return lookups  # (the common case: nothing expired)
        lookups[:] = [lk for lk in lookups if not (lk[L_CLAIMED] and lk[L_T1] <= limit)]
        if lookups:
            return lookups
        del st["lk"][lkey], st["lks"][lkey]
        return None

    def _drop_claimed(self, st: dict, now: int) -> None:
        """Claimed lookups past their expiry leave the state (no output: a chain holds each)."""
        lc, lk_by_key, lks, timeout = st["lc"], st["lk"], st["lks"], self.lookup_timeout_ns
        while lc and lc[0][0] <= now:
            _dl, ls, lkey = heappop(lc)
            lookups = lk_by_key.get(lkey)
            if lookups is None:
                continue
            lk = _lookup_numbered(lookups, ls)
            if lk is None:
                continue  # already gone (trimmed, or dropped when its key was read)
            if now >= lk[L_T1] + timeout:
                if "_cl" in st:
                    st["_cl"].add(lkey)  # change mark (durable_parts)
                    if st.get("_pl") and lkey in st["_pl"]:
                        _keep_lookup(st, lkey)
                _remove_lookup(lookups, lk)
                if not lookups:
                    del lk_by_key[lkey], lks[lkey]
            else:
                heappush(lc, (lk[L_T1] + timeout, ls, lkey))  # its last query came later

    def _dns_summary(self, st: dict, lk: list) -> list:
        qs = lk[L_QUERIES]
        # One query (a fully qualified name, one address family) takes the short path, held equal
        # to the general one by a test; resolvers walking the search list send 4 to 10.
        if len(qs) == 1:
            return self._one_query_summary(st, lk, qs[0])
        return self._lookup_summary(st, lk)

    def _lookup_summary(self, st: dict, lk: list) -> list:
        """The summary (DX_*) of a lookup of any number of queries: retries, search-list names."""
        qs = lk[L_QUERIES]
        t0 = qs[0][Q_TS]
        # one pass: the first positive answer, the answered queries, NXDOMAINs, evidence, the end,
        # and retries (a query asked again: its previous ask is the latest one of the same question)
        positive, answered, nx, refs, end = None, [], 0, [], t0
        nx_names: set = set()  # the names answered NXDOMAIN (A and AAAA of one name: one expansion)
        last_ask: dict[tuple, list] = {}
        retries, retry_gap = 0, None
        for q in qs:
            qts = q[Q_TS]
            if qts > end:
                end = qts
            a = q[Q_ANSWER]
            refs.append(q[Q_REF])
            if a:
                refs.append(a[N_REF])
                answered.append(q)
                if a[N_TS] > end:
                    end = a[N_TS]
                if a[N_RCODE] == "NXDOMAIN":
                    nx += 1
                    nx_names.add(q[Q_NAME])
                elif positive is None and a[N_RCODE] == "NOERROR" and a[N_ADDRESSES]:
                    positive = q
            k = (q[Q_NAME], q[Q_TYPE])
            prev = last_ask.get(k)
            # a retry: the same question again on the same socket, or after a resolver timeout
            # (two threads asking at once from two sockets are not retrying)
            if prev is not None and (prev[Q_ENDPOINT] == q[Q_ENDPOINT] or qts - prev[Q_TS] >= S):
                retries += 1
                gap = qts - prev[Q_TS]
                if prev[Q_ANSWER] is None and R.RETRY_GAP_NS[0] <= gap <= R.RETRY_GAP_NS[1] and retry_gap is None:
                    retry_gap = [q[Q_NAME], q[Q_TYPE], gap, *_lost_query_seen(st, qs, prev, qts)]
            last_ask[k] = q
        final = positive or (answered[-1] if answered else qs[-1])
        if positive is None:
            # The name the application asked for is the shortest one tried.
            final_name = min((q[Q_NAME] for q in qs), key=lambda n: (n.count("."), n))
        else:
            final_name = positive[Q_NAME]
        ans = final[Q_ANSWER]
        srv = st["dsrv"].get(f'{final[Q_ENDPOINT]}|{final[Q_ID]}')
        if srv is not None:
            refs.append(srv[S_REF])
        pa = positive[Q_ANSWER] if positive else None
        return [  # DX_*
            final_name,
            # without a positive answer: the type first asked of the name (A, then AAAA: not the last asked)
            positive[Q_TYPE] if positive else next(q[Q_TYPE] for q in qs if q[Q_NAME] == final_name),
            final[Q_SERVER], final[Q_SERVER_PORT], ans[N_FROM] if ans else None,
            srv,  # (records are replaced, never mutated: shared)
            ans[N_RCODE] if ans else None,
            list(pa[N_ADDRESSES]) if pa else [], list(pa[N_CNAMES]) if pa else [], pa[N_TTL] if pa else None,
            (pa[N_TS] - t0) if pa else None,
            # until the answer it ended with, positive or not (NXDOMAIN too): what the chain reports
            (ans[N_TS] - t0) if ans else None,
            retries, len(qs), nx, len(answered),
            len(nx_names - {final_name}),  # search-list names tried before the one asked for
            retry_gap, t0, end, refs, lk[L_ANCHOR], lk[L_CLIENT],
        ]

    @staticmethod
    def _one_query_summary(st: dict, lk: list, q: list) -> list:
        """_dns_summary of a lookup of one query: no retry, no other name; the same list."""
        t0 = q[Q_TS]
        a = q[Q_ANSWER]
        srv = st["dsrv"].get(f'{q[Q_ENDPOINT]}|{q[Q_ID]}')
        if a is None:
            refs = [q[Q_REF]] if srv is None else [q[Q_REF], srv[S_REF]]
            return [q[Q_NAME], q[Q_TYPE], q[Q_SERVER], q[Q_SERVER_PORT], None, srv, None, [], [], None, None, None,
                    0, 1, 0, 0, 0, None, t0, t0, refs, lk[L_ANCHOR], lk[L_CLIENT]]  # DX_*
        refs = [q[Q_REF], a[N_REF]] if srv is None else [q[Q_REF], a[N_REF], srv[S_REF]]
        ats = a[N_TS]
        rcode = a[N_RCODE]
        if rcode == "NOERROR" and a[N_ADDRESSES]:  # positive
            return [q[Q_NAME], q[Q_TYPE], q[Q_SERVER], q[Q_SERVER_PORT], a[N_FROM], srv, rcode, list(a[N_ADDRESSES]),
                    list(a[N_CNAMES]), a[N_TTL], ats - t0, ats - t0, 0, 1, 0, 1, 0, None, t0, ats if ats > t0 else t0,
                    refs, lk[L_ANCHOR], lk[L_CLIENT]]  # DX_*
        return [q[Q_NAME], q[Q_TYPE], q[Q_SERVER], q[Q_SERVER_PORT], a[N_FROM], srv, rcode, [], [], None, None,
                ats - t0, 0, 1, 1 if rcode == "NXDOMAIN" else 0, 1, 0, None, t0, ats if ats > t0 else t0, refs,
                lk[L_ANCHOR], lk[L_CLIENT]]  # DX_*

    # timers ------------------------------------------------------------------------

    def _timers(self, st: dict, now: int, out: list, final: bool) -> None:
        conns = st["conns"]
        tq, qn, qs, qp = st["tq"], st["tqn"], st["tqs"], st["tqp"]  # the conns' timer queue (see _schedule)
        marked = st.get("_cc")  # change marks (durable_parts): every conn a pass changes or removes
        keep = st.get("_pc")  # (begin_parts: saved before they change)
        exact: dict[str, int] = {}  # deadlines computed in this pass (no event is applied during it)
        q = _tq_least(tq, qn, qs, qp)  # the queue holding the head
        if final:
            due = list(conns)
        elif q is None or q[0][0] > now:
            due = ()  # a lookup's or a DNS record's timer: no conn is due
        else:
            # Only conns whose deadline has come (the queue's entries <= now), in creation order:
            # what a scan of every conn would find, in the order it would find it.
            found: dict[str, int] = {}
            while True:  # (the head is due: tested above)
                qd, key = heappop(tq) if q is tq else q.popleft()
                conn = conns.get(key)
                # (else a stale entry, or this conn's live one seen already). A live entry holds the very int conn.qd
                # is (each is queued as conn.qd is set): compared by identity first, without reading the cold ints
                if conn is not None and (conn.qd is qd or conn.qd == qd) and key not in found:
                    dl = self._conn_deadline(conn)  # (a C call compiled: not through a bound method)
                    if dl <= now:
                        found[key] = conn.seq
                    else:
                        if marked is not None:
                            marked.add(key)
                            if keep and key in keep:
                                _keep_conn(st, key)
                        _tq_push(tq, qp, (dl, key))  # its deadline moved later (t1 advanced)
                        conn.qd = exact[key] = dl
                q = _tq_least(tq, qn, qs, qp)
                if q is None or q[0][0] > now:
                    break
            due = sorted(found, key=found.__getitem__) if len(found) > 1 else found
        # (compiled, C integers (stitch.pxd): a time's sum is not made and freed per test)
        settle_ns = self.settle_ns
        idle_ns = self.idle_ns
        now_c = now
        if marked is not None and due:
            marked.update(due)
            if keep:
                for key in due:
                    if key in keep:
                        _keep_conn(st, key)
        for key in due:
            conn = conns[key]
            ccl = conn.ccl
            idle_at = conn.t1
            idle_at += idle_ns
            # (a due conn with no client is over: its deadline, idle or its acceptors' close + settle, has come)
            over = final or conn.cl is None or now_c >= idle_at
            if not over and ccl is not None:
                ccl_at = ccl
                ccl_at += settle_ns
                over = now_c >= ccl_at
            if not over and conn.k[0] == "u" and conn.cn is not None:  # a UDP flow's window (udp_window_ns)
                ccl_at = conn.cn[CN_TS]
                ccl_at += self.udp_window_ns
                over = now_c >= ccl_at
            if over:
                # cut by the end of input only if neither the client's close nor the idle timeout ended it
                cut = final and ccl is None and now_c < idle_at
                try:
                    if conn.cl is not None:  # (else only the accepting side was seen: see _finish)
                        self._finish(st, conn, out, cut)
                except Exception as exc:  # a connection we cannot describe is reported, not fatal
                    out.append(dead_letter(self.name, FLOWS_TOPIC, key, conn, exc, conn.t1))
                del conns[key]
                self._conn_parts.pop(key, None)
                continue
            emitted = False
            for r in conn.creq:  # answered oldest first: the settled ones lead (see _conn_deadline)
                rts = r[C_RESPONSE_TS]
                if rts is None:
                    break
                rts_c = rts
                if now_c < rts_c + settle_ns:
                    break
                if not r[C_DONE]:
                    emitted = True
                    try:  # (_emit_request, inline)
                        r[C_DONE] = True
                        if conn.cl is not None and (conn.svc is not None or conn.dns is not None):
                            self._emit(st, conn, r, out, False)
                    except Exception as exc:
                        r[C_DONE] = True
                        out.append(dead_letter(self.name, FLOWS_TOPIC, key, r, exc, r[C_TS]))
            if emitted:  # emitted requests are not needed any more (keep-alive: 10s of them)
                reqs = conn.creq  # (one request, emitted: none left)
                conn.creq = [] if len(reqs) == 1 else [r for r in reqs if not r[C_DONE]]
            dl = conn.qd = exact[key] = self._conn_deadline(conn)
            _tq_push(tq, qp, (dl, key))
        if not conns:
            if tq:
                tq.clear()
            if qn:
                qn.clear()
            if qs:
                qs.clear()
            if qp:
                qp.clear()
        elif len(tq) + len(qn) + len(qs) + len(qp) > _tq_compact_at(len(conns)):
            # Mostly stale entries (one per conn whose deadline moved earlier: each finished conn
            # leaves its idle-timeout entry, popped only when that time comes): the queue is
            # rebuilt from the conns' live entries, sorted: one FIFO (new conns' deadlines follow them).
            live = [(c.qd, c.k) for c in conns.values()]
            live.sort()
            tq.clear()
            qs.clear()
            qp.clear()
            qn.clear()
            qn.extend(live)
        # The earliest deadline of the open conns: the queue's head, once it is exact.
        while True:
            q = _tq_least(tq, qn, qs, qp)
            if q is None:
                break
            dl, key = q[0]
            conn = conns.get(key)
            if conn is None or (conn.qd is not dl and conn.qd != dl):
                if q is tq:  # stale
                    heappop(tq)
                else:
                    q.popleft()
                continue
            ex = exact.get(key)
            if ex is not None and (ex is dl or ex == dl):
                break
            actual = self._conn_deadline(conn)
            if actual == dl:
                break
            if marked is not None:
                marked.add(key)
                if keep and key in keep:
                    _keep_conn(st, key)
            if q is tq:
                heappop(tq)
            else:
                q.popleft()
            _tq_push(tq, qp, (actual, key))
            conn.qd = actual
        nxt = q[0][0] if q is not None else None
        lc = st["lc"]
        if lc:
            if final:
                lc.clear()  # (_expire_lookups drops every lookup)
            elif lc[0][0] <= now:
                self._drop_claimed(st, now)
        lq = st["lq"]
        if lq:
            head = lq[0][0]
            if head <= now or final or st["lke"]:
                self._expire_lookups(st, now, out, final)
            elif nxt is None or head < nxt:
                # (a head not before the conns' next deadline is no earlier once exact: left as it is)
                self._exact_lookup_head(st)
            if lq:
                head = lq[0][0]
                if nxt is None or head < nxt:
                    nxt = head
        elif final or st["lke"]:
            self._expire_lookups(st, now, out, final)
        dsrv, lost = st["dsrv"], st["lost"]
        if dsrv or lost:
            horizon = self.lookup_timeout_ns
            horizon = now_c - horizon - idle_ns
            if dsrv:
                if final:
                    if "_cs" in st:
                        st["_cs"].update(dsrv)
                        if st.get("_ps"):
                            for k in list(st["_ps"]):
                                _keep_server(st, k)
                    dsrv = st["dsrv"] = {}
                else:  # in time order (see _apply_dns): the expired ones lead
                    for first in dsrv.values():  # (most passes: the first has not expired, no call)
                        first_ts = first[S_TS]
                        if first_ts < horizon:
                            if st.get("_ps"):  # (begin_parts: the pending ones that go, saved first)
                                keep_s = st["_ps"]
                                for k, v in list(dsrv.items()):
                                    if v[S_TS] >= horizon:
                                        break
                                    if k in keep_s:
                                        _keep_server(st, k)
                            old = drop_expired_front(dsrv, horizon, S_TS)
                            if "_cs" in st:
                                st["_cs"].update(old)
                        break
            if lost:
                horizon_at = horizon  # (an int: compared with each marker's)
                lost = st["lost"] = [] if final else [x for x in lost if x[1] >= horizon_at]
            if dsrv or lost:
                dl = now + self.lookup_timeout_ns
                if nxt is None or dl < nxt:
                    nxt = dl
        if nxt is None and lc:
            nxt = lc[0][0]  # claimed lookups alone: a pass drops them (every piece of state expires)
        st["next"] = nxt

    def _expire_lookups(self, st: dict, now: int, out: list, final: bool) -> None:
        """Lookups past their timeout leave the state; unclaimed ones become chains. In the
        order of their key's creation, then their own (as a scan of st["lk"] would find them)."""
        lk_by_key, lks, lq, timeout = st["lk"], st["lks"], st["lq"], self.lookup_timeout_ns
        due: list[tuple[int, int, str, dict]] = []
        if final:
            for lkey, lookups in lk_by_key.items():
                due += [(lks[lkey], lk[L_SEQ], lkey, lk) for lk in lookups]
            lq.clear()
        else:
            while lq and lq[0][0] <= now:
                _dl, ls, lkey = heappop(lq)
                lk = _lookup_numbered(lk_by_key.get(lkey), ls)
                if lk is None:
                    continue  # already gone (trimmed, or expired through another entry)
                if now >= lk[L_T1] + timeout:
                    due.append((lks[lkey], ls, lkey, lk))
                else:
                    heappush(lq, (lk[L_T1] + timeout, ls, lkey))  # its last query came later
            if len(due) > 1:
                due.sort(key=lambda x: (x[0], x[1]))
        marked = st.get("_cl")  # change marks (durable_parts)
        keep = st.get("_pl")  # (begin_parts: saved before they change)
        for _ks, _ls, lkey, lk in due:
            if marked is not None:
                marked.add(lkey)
                if keep and lkey in keep:
                    _keep_lookup(st, lkey)
            if not lk[L_CLAIMED]:
                # at end of input, a query younger than the resolver timeout may still be answered
                cut = final and any(q[Q_ANSWER] is None and now - q[Q_TS] < R.RETRY_GAP_NS[0] for q in lk[L_QUERIES])
                try:
                    self._emit_lookup(st, lk, out, final=cut)
                except Exception as exc:
                    out.append(dead_letter(self.name, FLOWS_TOPIC, lkey, lk, exc, lk[L_T1]))
            lookups = lk_by_key[lkey]
            _remove_lookup(lookups, lk)
            if not lookups:
                del lk_by_key[lkey], lks[lkey]
        if st["lke"]:
            for lkey in st["lke"]:  # lists an unmatched answer created, still empty
                if lk_by_key.get(lkey) == []:
                    if marked is not None:
                        marked.add(lkey)
                        if keep and lkey in keep:
                            _keep_lookup(st, lkey)
                    del lk_by_key[lkey], lks[lkey]
            st["lke"] = []
        self._exact_lookup_head(st)

    def _exact_lookup_head(self, st: dict) -> None:
        """The earliest expiry of the remaining lookups: the queue's head, once it is exact."""
        lq, lk_by_key, timeout = st["lq"], st["lk"], self.lookup_timeout_ns
        while lq:
            dl, ls, lkey = lq[0]
            lk = _lookup_numbered(lk_by_key.get(lkey), ls)
            if lk is None:
                heappop(lq)
                continue
            actual = lk[L_T1] + timeout
            if lk[L_CLAIMED]:  # it leaves without output: no pass of its own (see "lc")
                heappop(lq)
                heappush(st["lc"], (actual, ls, lkey))
                continue
            if actual == dl:
                break
            heapreplace(lq, (actual, ls, lkey))

    # building chains -----------------------------------------------------------------

    def _finish(self, st: dict, conn: Conn, out: list, final: bool) -> None:
        if conn.cl is None:
            return  # only the accepting side was seen: not a request we can attribute
        if conn.svc is None and conn.dns is None:
            return  # not a Service request (and not a name lookup's target)
        if conn.eof is not None and conn.sv and conn.k[0] == "u":
            self._own_receipts(conn)
        pending = [r for r in conn.creq if not r[C_DONE]] if conn.creq else ()  # (most: emitted already)
        if conn.nreq == 0:
            self._emit(st, conn, None, out, final)
        for r in pending:
            self._emit_request(st, conn, r, out, final)

    def _emit_request(self, st: dict, conn: Conn, req: dict, out: list, final: bool) -> None:
        req[C_DONE] = True
        if conn.cl is None or (conn.svc is None and conn.dns is None):
            return
        self._emit(st, conn, req, out, final)

    def _lost_on(self, st: dict, nodes: set, t0: int, t1: int) -> str | None:
        """A loss on `nodes` whose time (a point, or a window [since, ts]) falls within settle of [t0, t1]."""
        lo, hi = t0 - self.settle_ns, t1 + self.settle_ns
        for x in st["lost"]:
            if x[0] in nodes and x[1] >= lo and (x[3] if len(x) > 3 else x[1]) <= hi:
                return f"{x[2]} events lost on node {x[0]}"
        return None

    def _endpoint(self, node, pid, comm, ip, port, ts, container_id=None) -> tuple[dict, object]:
        """A chain record's server-side endpoint (proxy, backend) and its pod, as of ts's second.
        Memoized: one process endpoint is in many records, which share the dict (nobody
        mutates a record)."""
        key = (node, pid, comm, ip, port, ts // S, container_id)
        hit = self._endpoints.get(key)
        if hit is None:
            if len(self._endpoints) >= _MEMO_MAX:
                self._endpoints.clear()
            hit = self._endpoints[key] = self._new_endpoint(node, pid, comm, ip, port, ts, container_id)
        return hit

    def _new_endpoint(self, node, pid, comm, ip, port, ts, container_id=None) -> tuple[dict, object]:
        """A chain record's endpoint and its pod (None: no pod), as of ts's second."""
        pod = _pod_of(self.index, ip, ts, container_id)
        if pod is None:
            return Endpoint(ip, port, None, None, node, container_id if container_id else None, pid, comm), None
        return Endpoint(ip, port, pod.name, pod.namespace, node if node is not None else pod.node,
                        container_id if container_id else (pod.container_ids[0] if pod.container_ids else None),
                        pid, comm), pod

    def _parts(self, conn: Conn) -> _ConnParts:
        """The request-independent parts of a connection's records, reused while what they
        derive from is unchanged (keep-alive: built once for all of its requests)."""
        cl, cn, svc, dnsx, sv, pxs = conn.cl, conn.cn, conn.svc, conn.dns, conn.sv, conn.px
        est = bool(conn.est)
        # acceptors and dials are only appended (then the oldest trimmed): the same count and
        # the same last one are the same list
        sv_last = sv[-1] if sv else None
        px = pxs[-1] if pxs else None
        px_at = (px[D_TS], px[D_ERRNO]) if px is not None else None
        p = self._conn_parts.get(conn.k)
        if (p is not None and p.cl is cl and p.cn is cn and p.svc is svc and p.dns is dnsx and p.est is est
                and p.sv_last is sv_last and p.px is px and p.px_at == px_at and p.nsv == len(sv)
                and p.npx == len(pxs)):
            return p
        p = _ConnParts()
        p.cl, p.cn, p.svc, p.dns, p.est, p.sv_last, p.px, p.px_at = cl, cn, svc, dnsx, est, sv_last, px, px_at
        p.nsv, p.npx = len(sv), len(pxs)
        idx = self.index
        p.t_conn = t_conn = cn[CN_TS] if cn else conn.t0
        p.client, client_pod = self._new_endpoint(cl[CL_NODE], cl[CL_PID], cl[CL_COMM], cl[CL_IP], cl[CL_PORT], t_conn,
                                                  cl[CL_CONTAINER_ID])  # one per connection: not memoized
        p.client_pod = client_pod

        # the acceptors: a userspace proxy, or the backend itself
        if svc is not None:
            ready_eps, ep_ips = idx.ready_endpoints(svc["namespace"], svc["name"], t_conn)
        else:
            ready_eps, ep_ips = [], frozenset()
        proxies, backends = [], []
        for s in sv:
            if s[A_HOST_PROCESS] and s[A_IP] not in ep_ips and (pxs or (svc and svc["via"] == "vip")):
                proxies.append(s)
            else:
                backends.append(s)

        # translation mode and backend
        translation, backend = None, None
        b_ip = b_port = None
        hops: list[Hop] = []
        if px is not None or proxies:
            q = proxies[0] if proxies else None
            proxy = self._endpoint(q[A_NODE], q[A_PID], q[A_COMM], q[A_IP], q[A_PORT], q[A_TS], q[A_CONTAINER_ID])[0] \
                if q else self._endpoint(px[D_NODE], px[D_PID], px[D_COMM], px[D_LOCAL_IP], px[D_LOCAL_PORT], px[D_TS])[0]
            translation = {"mode": "userspace_proxy", "confidence": "high", "proxy": proxy}
            if px is not None:
                b_ip, b_port = px[D_BACKEND_IP], px[D_BACKEND_PORT]
                backend = self._endpoint(None, None, None, b_ip, b_port, px[D_TS])[0]
                if q is not None:
                    hops.append(Hop("proxy", q[A_TS], px[D_TS], px[D_TS] - q[A_TS]))
        elif svc is not None and svc["via"] == "headless":
            translation = _T_NONE
            if cn is not None and not backends:
                b_ip, b_port = cn[CN_ADDR_IP], cn[CN_ADDR_PORT]
        elif svc is not None and cn is not None:
            rip = cn[CN_REMOTE_IP]
            rewritten = rip not in UNSPECIFIED_IPS and rip != cn[CN_ADDR_IP] and rip not in (svc["cluster_ip"],)
            if svc["via"] == "pod" or (svc["via"] == "vip" and rewritten):
                translation = _T_SOCKET_LB
                b_ip, b_port = (rip, cn[CN_REMOTE_PORT]) if rewritten else (cn[CN_ADDR_IP], cn[CN_ADDR_PORT])
            elif svc["via"] == "nodeport":
                # the node's port answered (data, or a backend seen): translated, the client SNATed
                translation = _T_NODEPORT_SNAT if est or backends else _T_NONE
            elif backends:
                host_client = client_pod is None or bool(client_pod.host_network)
                translation = _T_NODEPORT_SNAT if host_client else _T_DNAT
            elif est or (cn[CN_ERRNO] == "ECONNREFUSED" and ready_eps):
                # the VIP answered (data, or a backend's RST): translated somewhere we did not see
                translation = _T_DNAT_UNSEEN
            else:
                translation = _T_NONE
        b = None
        if backends:
            b = backends[0]
            backend = self._endpoint(b[A_NODE], b[A_PID], b[A_COMM], b[A_IP], b[A_PORT], b[A_TS], b[A_CONTAINER_ID])[0]
            b_ip, b_port = b[A_IP], b[A_PORT]
            connect_ns = b[A_TS] - t_conn
            hops.append(Hop("connect", t_conn, b[A_TS], connect_ns if connect_ns > 0 else 0))
        elif backend is None and b_ip is not None:
            backend = self._endpoint(None, None, None, b_ip, b_port, t_conn)[0]
        if dnsx is not None and dnsx[DX_LATENCY_NS] is not None:
            hops.insert(0, Hop("dns", dnsx[DX_T0], dnsx[DX_T0] + dnsx[DX_LATENCY_NS], dnsx[DX_LATENCY_NS]))
        p.b, p.b_ip, p.b_port, p.translation, p.backend, p.hops = b, b_ip, b_port, translation, backend, hops
        slow_hops = ()
        for h in hops:  # (no comprehension: its frame costs more than the loop)
            obj = _OBJECTIVES.get(h.name)
            if obj is not None and h.latency_ns > obj:
                slow_hops = [*slow_hops, h]
        p.slow_hops = slow_hops
        p.ready_eps = ready_eps  # what a loss may concern: see _loss_nodes

        p.dns_out = _dns_out(dnsx, idx, dnsx[DX_T0], self._dns_servers) if dnsx else None
        if svc is None:
            p.service = None
        else:  # the record's service: conn.svc (_svc's fields, in its order) but how we know it
            p.service = service = svc.copy()  # (a copy costs a fifth of a dict built key by key)
            del service["via"]
        p.connect = None if cn is None else Connect(cn[CN_ADDR_IP], cn[CN_ADDR_PORT], cn[CN_RESULT], cn[CN_ERRNO], cn[CN_TS])
        p.connect_error = FAILED_ERRNOS[cn[CN_ERRNO]] if (cn and cn[CN_RESULT] < 0
                                                          and cn[CN_ERRNO] in FAILED_ERRNOS) else None
        p.labels = p.who = None  # built when an alert needs them (_alert_labels): most chains raise none

        # what the detectors find whatever the request (most connections: nothing)
        p.dns_found = self._dns_findings(dnsx, client_pod) if dnsx is not None else ()
        p.svc_always = p.svc_if_failed = None
        p.misrouted = False
        if svc is not None:
            cn_ = cn or _NO_CONNECT
            mode = translation["mode"] if translation else None
            if px is not None and px[D_ERRNO] == "ECONNREFUSED":
                p.svc_always = ("svc.target_port_refused", None)
            elif cn_[CN_ERRNO] == "ECONNREFUSED":
                if mode == "socket_lb" or (ready_eps and mode != "none"):
                    p.svc_always = ("svc.target_port_refused", {"backend_port": b_port or svc["target_port"]})
                elif not ready_eps:
                    p.svc_always = ("svc.no_endpoints", None)
                else:
                    p.svc_always = ("svc.target_port_refused", {"backend_port": svc["target_port"]})
            elif proxies and px is None:
                p.svc_if_failed = ("svc.no_endpoints", None)
            elif not sv and not pxs and not est and svc["via"] in ("vip", "pod", "nodeport") and (
                    mode in (None, "none") or not cn_[CN_TS] or cn_[CN_ERRNO] in ("ETIMEDOUT", "EINPROGRESS", None)):
                if not ready_eps:
                    p.svc_if_failed = ("svc.no_endpoints", None)
                elif svc["via"] == "nodeport" and (
                        node := self._local_policy_drop(svc, cn_, ready_eps, client_pod, cl[CL_NODE], t_conn)):
                    p.svc_if_failed = ("svc.no_local_endpoints", {"node": node})
                elif mode in (None, "none"):
                    # a pod that is one of the Service's endpoints: a DNAT back to itself must leave
                    # by the bridge port it came in on, which only hairpin mode allows
                    self_call = p.client.ip in ep_ips and svc["via"] == "vip"
                    p.svc_if_failed = ("svc.hairpin" if self_call else "svc.translation_missing", None)
                elif mode == "socket_lb":
                    # translated (the connect went to a pod), and nothing there took it
                    p.svc_if_failed = ("svc.backend_unreachable", None)
            if b_ip and mode in ("userspace_proxy", "dnat", "socket_lb"):
                pod = idx.pod_by_ip(b_ip, cn_[CN_TS] or conn.t0)
                p.misrouted = bool((ready_eps and b_ip not in ep_ips) or (pod is not None and pod.namespace != svc["namespace"]))
        p.backend_desc = None
        conn_parts = self._conn_parts
        if len(conn_parts) >= _PARTS_MAX:
            conn_parts.clear()
        conn_parts[conn.k] = p
        return p

    def _local_policy_drop(self, svc: dict, cn: list, ready_eps: list, client_pod, client_node: str,
                           ts: int) -> str | None:
        """The node a NodePort connect went to, when kube-proxy there drops it for externalTrafficPolicy Local: the
        Service has that policy and none of its ready endpoints runs on that node (it keeps the client's address,
        so it never forwards to another node). Only traffic from outside the node and the pods is dropped
        (kube-proxy sends the node's own and, knowing the cluster's pod range, the pods' to any endpoint), so only
        a host process of another node is answered so. None otherwise."""
        if client_pod is not None and not client_pod.host_network:
            return None
        sv = self.index.service(svc["namespace"], svc["name"], ts)
        if sv is None or sv.external_traffic_policy != "Local" or not cn[CN_ADDR_IP]:
            return None
        node = self.index.node_by_ip(cn[CN_ADDR_IP], ts)
        if node is None or node == client_node or any(e.node == node for e in ready_eps):
            return None
        return node

    @staticmethod
    def _alert_labels(p: _ConnParts) -> dict:
        """The labels of the connection's alerts (and p.who, how their summaries name the client)."""
        if p.labels is None:
            svc, client, cl = p.svc, p.client, p.cl
            p.labels = {"namespace": svc["namespace"] if svc else client.namespace,
                        "service": svc["name"] if svc else None, "pod": client.pod, "node": cl[CL_NODE]}
            p.who = client.pod and f'{client.namespace}/{client.pod}' or f'{cl[CL_COMM]}@{cl[CL_NODE]}'
        return p.labels

    @staticmethod
    def _loss_nodes(p: _ConnParts, conn: Conn) -> set:
        """The nodes whose losses make the connection's records incomplete: the client's, the
        acceptors' and the dial's (conn's, of which p is the parts). A lost event may be
        one the chain never saw, on a node it never saw: without a backend's accept, the nodes
        of the Service's ready endpoints count too, and the backend's node when it is known."""
        nodes = {p.cl[CL_NODE]}
        nodes.update([s[A_NODE] for s in conn.sv])
        if p.px is not None:
            nodes.add(p.px[D_NODE])
        if p.b is None and p.ready_eps:
            nodes = nodes | {ep.node for ep in p.ready_eps if ep.node}
        if p.backend is not None and p.backend.node:
            nodes = nodes | {p.backend.node}
        return nodes

    def _backend_desc(self, p: _ConnParts, conn: Conn) -> str:
        """How a Service alert names the backend (built only when one fires)."""
        if p.backend_desc is None:
            b_ip, b_port = p.b_ip, p.b_port
            desc = endpoint_key(b_ip, b_port) if b_ip else self._unseen_backend(p.ready_eps)
            if b_ip:
                pod = self.index.pod_by_ip(b_ip, (p.cn or _NO_CONNECT)[CN_TS] or conn.t0)
                if pod is not None:
                    desc = f"{pod.namespace}/{pod.name} ({endpoint_key(b_ip, b_port)})"
            p.backend_desc = desc
        return p.backend_desc

    def _declared_ports(self, p: _ConnParts, port, ts: int) -> str:
        """What the refusing pod's containers declare (svc.target_port_refused's words): the ports they do
        declare tell a wrong targetPort; the refused one among them, an application not listening on it. A
        refused DNAT among several endpoints does not show which refused: then what they all declare, if
        they declare the same. "" when that is unknown."""
        pods = self._alike_pods([p.b_ip] if p.b_ip else {ep.ip for ep in p.ready_eps or ()}, ts)
        if pods is None:
            return ""
        whose = "its containers" if len(pods) == 1 else f"the containers of its {len(pods)} ready endpoints"
        proto = (p.svc or {}).get("protocol") or "TCP"  # (a UDP Service's refusal: its UDP ports)
        declared = [cp for cp in pods[0].ports if (cp.protocol or "TCP").upper() == proto.upper()]
        if not declared:
            return f": {whose} declare no port" + ("" if proto.upper() == "TCP" else f" of {proto}")
        if any(cp.port == port for cp in declared):
            return f": {whose} declare {port}, and nothing listened on it"
        return f": {whose} declare " + ", ".join(f"{cp.port} ({cp.name})" if cp.name else str(cp.port)
                                                    for cp in declared)

    def _alike_pods(self, ips, ts: int) -> list | None:
        """The pods of these addresses, when there are some, each is known and all declare the same ports (what
        _declared_ports and _undeclared_target can say of them); else None."""
        pods = [self.index.pod_by_ip(ip, ts) for ip in sorted(ips)]
        if not pods or None in pods or len({pod.ports for pod in pods}) != 1:
            return None
        return pods

    def _undeclared_target(self, p: _ConnParts, svc: dict, ts: int) -> str:
        """A UDP datagram nobody received, with no error: the translation may be missing, or the pod may have nothing
        on the targetPort (its ICMP port unreachable is not told to an unconnected socket). The second is likely when
        the Service's ready endpoints all declare their ports, the same ones, and the targetPort is none of them
        (svc.translation_missing's words then; "" otherwise)."""
        target = svc["target_port"]
        pods = self._alike_pods({ep.ip for ep in p.ready_eps or ()}, ts)
        if target is None or pods is None:
            return ""
        declared = [cp for cp in pods[0].ports if (cp.protocol or "TCP").upper() == "UDP"]
        if not declared or any(cp.port == target or (cp.name and cp.name == target) for cp in declared):
            return ""
        return ("; or a wrong targetPort: its endpoints declare UDP " +
                ", ".join(f"{cp.port} ({cp.name})" if cp.name else str(cp.port) for cp in declared) +
                f", not {target} (a socket that did not connect() is not told of the ICMP port unreachable)")

    def _no_endpoints_why(self, svc: dict, ts: int) -> str:
        """Why a Service had no ready endpoint (svc.no_endpoints' words): no selector, a selector that matches
        no pod (a typo, a relabel), or pods that match and none ready (probes, a crash loop, a rollout).
        Memoized per Service and second: an outage fails every request alike."""
        return self._per_second(("no endpoints", svc["namespace"], svc["name"]), ts,
                                lambda: self._no_endpoints_said(svc, ts))

    def _no_endpoints_said(self, svc: dict, ts: int) -> str:
        info = self.index.service(svc["namespace"], svc["name"], ts)
        selector = info.selector if info is not None else None
        if not selector:
            why = "it has no selector, and no endpoints were written for it"
        else:
            pods = self.index.selected_pods(svc["namespace"], selector, ts)
            chosen = ",".join(f"{k}={v}" for k, v in sorted(selector.items()))
            if not pods:
                why = f"its selector {chosen} matches no pod in {svc['namespace']}"
            elif any(p.ready for p in pods):
                ready = sum(p.ready for p in pods)
                why = (f"its selector {chosen} matches {len(pods)} pods, {ready} of them ready, that its "
                       "EndpointSlices do not list as ready")
            else:  # how each stands: not ready while Running, else its phase (Pending, Failed, ...)
                states = [(p.name, "not ready" if p.phase in (None, "Running") else p.phase) for p in pods]
                if len(states) == 1:
                    why = f"the one pod its selector {chosen} matches, {states[0][0]}, is {states[0][1]}"
                else:
                    listed = ", ".join(f"{name} {state}" for name, state in states[:3])
                    why = (f"none of the {len(states)} pods its selector {chosen} matches is ready: {listed}"
                           + (", ..." if len(states) > 3 else ""))
        return why

    def _per_second(self, key: tuple, ts: int, make) -> str:
        """make()'s words for an alert, memoized for ts's second (the index answers as of it)."""
        memo = self._whys
        hit = memo.get(key)
        if hit is not None and hit[0] <= ts < hit[1]:
            return hit[2]
        said = make()
        if len(memo) >= _MEMO_MAX:
            memo.clear()
        lo = ts - ts % S
        memo[key] = (lo, lo + S, said)
        return said

    def _standing(self, p: _ConnParts, svc: dict) -> str:
        """How a misrouted request's backend stood among the Service's endpoints then (svc.misrouted's words): what
        tells a readiness probe failing, kube-proxy or conntrack behind a change, and a selector or hand-made
        Endpoints apart."""
        t = p.t_conn
        how, since = self.index.endpoint_standing(svc["namespace"], svc["name"], p.b_ip, t)
        if how == "left":
            return f"which left the Service's endpoints {(t - since) / S:.1f} s before"
        if how == "never":
            return "not one of the Service's endpoints"  # (then, nor in the history the index holds: not "never")
        if how == "ready":  # (misrouted for its namespace: a hand-made Endpoints)
            return "a pod of another namespace the Service's endpoints list"
        return f"{how} in the Service's endpoints"

    def _endpoints_blocked(self, p: _ConnParts, svc: dict, ts: int) -> str:
        """svc.translation_missing's hint when the NetworkPolicies allow the client none of the Service's ready
        endpoints (the silence then is likely theirs), else ""."""
        eps = sorted({(ep.ip, ep.port) for ep in p.ready_eps or () if ep.port is not None})
        if not eps:
            return ""
        proto = svc["protocol"] or "TCP"

        def make():
            backends = [(self.index.pod_by_ip(ip, ts), ip, port) for ip, port in eps]
            if any(pod is None for pod, _ip, _port in backends):
                return ""
            pod = backends[0][0]
            desc = f"{pod.namespace}/{pod.name}" if len(backends) == 1 else f"its {len(backends)} endpoints"
            return self._policy_words(p, backends, desc, proto, ts)
        return self._per_second(("npx", p.client.ip, svc["namespace"], svc["name"], proto), ts, make)

    def _chosen_backend(self, p: _ConnParts, svc: dict) -> dict:
        """The pod socket-LB sent a connect to (its socket's peer), and how it stood among the Service's endpoints
        when nothing there took it (svc.backend_unreachable's words)."""
        cn, t = p.cn, p.t_conn
        ip, port = cn[CN_REMOTE_IP], cn[CN_REMOTE_PORT]
        target = endpoint_key(ip, port)
        pod = self.index.pod_by_ip(ip, t)
        if pod is not None:
            target = f"{pod.namespace}/{pod.name} ({target})"
        how, since = self.index.endpoint_standing(svc["namespace"], svc["name"], ip, t)
        if how == "ready":
            standing = ""
        elif how == "left":
            standing = f"; it left the Service's endpoints {(t - since) / S:.1f} s before (a stale socket-LB map?)"
        elif how == "never":
            standing = "; it is not one of the Service's endpoints (a stale socket-LB map?)"
        else:
            standing = f"; it is {how} in the Service's endpoints"
        proto = svc["protocol"] or "TCP"
        policy = self._per_second(("np", p.client.ip, ip, port, proto), t, lambda: self._policy_words(
            p, [(pod, ip, port)], f"{pod.namespace}/{pod.name}" if pod is not None else target, proto, t))
        return {"target": target, "standing": standing, "policy": policy}

    def _policy_words(self, p: _ConnParts, backends: list, backend_desc: str, proto: str, ts: int) -> str:
        """"; NetworkPolicy X selects ... and allows no ingress from ..." when the state's NetworkPolicies allow
        the client none of `backends` ((pod, ip, port) each, all blocked the same way), else "" (policy.py)."""
        said = None
        for pod, ip, port in backends:
            found = _policy_blocked(self.index, ts, p.client_pod, p.client.ip, pod, ip, port, proto)
            if found is None:
                return ""
            words = _blocked_words(found, p.who, backend_desc, port, proto)
            if said is not None and words != said:
                return ""  # (blocked, but not alike: the words would not hold for all)
            said = words
        return f"; {said}" if said else ""

    @staticmethod
    def _unseen_backend(ready_eps) -> str:
        """A backend nothing showed (a refused DNAT: no accept): the Service's only ready
        endpoint is the one that refused; among several, which one is unknown."""
        pods = {(ep.pod_namespace, ep.pod, ep.ip) for ep in ready_eps or ()}
        if len(pods) == 1:
            [(ns, pod, ip)] = pods
            return f"{ns}/{pod} (its only ready endpoint)" if pod else f"{ip} (its only ready endpoint)"
        return f"(one of {len(pods)} ready endpoints, unseen)" if pods else "(unseen pod)"

    def _emit(self, st: dict, conn: Conn, req: dict | None, out: list, final: bool) -> None:
        p = self._parts(conn)
        cn, svc, dnsx = p.cn, p.svc, p.dns
        i = req[C_INDEX] if req is not None else 0
        a = conn.a
        cid = chain_id(a[0], a[1], conn.k, i)
        t_conn = p.t_conn
        evidence = dnsx[DX_REFS] + conn.ev if dnsx else conn.ev.copy()  # (one new list: refs are appended to it)
        hops = list(p.hops)  # dns, proxy, connect: then this request's
        slow = None  # this request's hops over their objective (most: none)
        floor = None  # a hop the idle timeout ended: the wait went on (its latency is a floor)

        # response
        response = None
        if req is not None:
            backend_req = None
            b = p.b
            if b is not None:
                breqs = b[A_REQUESTS]  # numbered consecutively (R_INDEX), the oldest trimmed: r[R_INDEX] == i at i - first
                k = i - breqs[0][R_INDEX] if breqs else -1
                if 0 <= k < len(breqs) and breqs[k][R_INDEX] == i:
                    backend_req = breqs[k]
                else:
                    for r in breqs:
                        if r[R_INDEX] == i:  # i: the client request's index
                            backend_req = r
                            break
            rts = req[C_RESPONSE_TS]
            response = Response("http", req[C_METHOD], req[C_TARGET], req[C_HOST], req[C_STATUS], req[C_SENT],
                                req[C_RECEIVED], None)
            evidence += req[C_EVIDENCE]
            if rts is not None:
                latency = rts - req[C_TS]
                hops.append(hop := Hop("response", req[C_TS], rts, latency))
                if _RESPONSE_OBJECTIVE is not None and latency > _RESPONSE_OBJECTIVE:
                    slow = [hop]
            if backend_req is not None:
                evidence += backend_req[R_EVIDENCE]
                sts = backend_req[R_RESPONSE_TS]
                if sts is not None:
                    latency = sts - backend_req[R_TS]
                    hops.append(hop := Hop("backend", backend_req[R_TS], sts, latency))
                    if _BACKEND_OBJECTIVE is not None and latency > _BACKEND_OBJECTIVE:
                        slow = [*(slow or ()), hop]
        elif conn.tx or conn.rx:
            response = Response(None, None, None, None, None, conn.tx, conn.rx, None)
        if req is not None and req[C_STATUS] is not None and p.connect_error is None:
            outcome = "ok"  # (_outcome's answer: a response, and a connect that did not fail)
        else:
            outcome = _outcome(conn, req, idle_closed=not final and conn.ccl is None)
        if req is not None and req[C_RESPONSE_TS] is None and outcome == "pending" and not final:
            # the client stopped waiting (close) or the idle timeout ran out: how long it waited
            waited_until = conn.ccl if conn.ccl is not None else conn.t1 + self.idle_ns
            outcome = "no response"
            latency = waited_until - req[C_TS]
            hops.append(hop := Hop("response", req[C_TS], waited_until, latency, conn.ccl is None))
            if conn.ccl is None:
                floor = hop
            if _RESPONSE_OBJECTIVE is not None and latency > _RESPONSE_OBJECTIVE:
                slow = [*(slow or ()), hop]
        elif (outcome == "connection timed out" and conn.ccl is not None and p.b is None and cn is not None
              and cn[CN_ERRNO] == "EINPROGRESS"):
            # a connect nothing answered, closed by the client: how long it waited (not when the idle timeout
            # ended it: the wait went on, for how long nobody saw; nor a blocking connect's ETIMEDOUT, whose
            # event is the syscall's return, with no start). Not a slow hop: the failure has its alert.
            hops.append(Hop("connect", cn[CN_TS], conn.ccl, conn.ccl - cn[CN_TS]))
        failed = outcome != "ok" and outcome != "pending"
        if failed:
            if response is not None:
                response.error = outcome
            else:
                response = Response(None, None, None, None, None, conn.tx, conn.rx, outcome)

        # time span
        start_ts = end_ts = t_conn
        last = conn.t1 if req is None else (req[C_RESPONSE_TS] or req[C_TS])
        if last < start_ts:
            start_ts = last
        elif last > end_ts:
            end_ts = last
        if dnsx is not None:
            t0 = dnsx[DX_T0]
            if t0 < start_ts:
                start_ts = t0
            elif t0 > end_ts:
                end_ts = t0

        # completeness: an outcome read from what did NOT happen (no response, no answer to the
        # connect) waited until the client gave up or the idle timeout: a loss until then may hold it
        incomplete = None
        if st["lost"]:
            waited = end_ts
            if outcome == "no response" or outcome == "connection timed out" or outcome == "no reply":
                waited = max(end_ts, conn.ccl if conn.ccl is not None else conn.t1 + self.idle_ns)
            incomplete = self._lost_on(st, self._loss_nodes(p, conn), start_ts, waited)
        if incomplete is None and cn is None:
            incomplete = "connect not captured (connection older than the capture)"
        if incomplete is None and final and outcome == "pending":
            incomplete = "end of input before the request finished"

        occs: list[tuple[str, dict, dict, list]] = []
        if incomplete is None:
            base_vars = None
            if p.dns_found:
                labels = self._alert_labels(p)
                base_vars = {"client": p.who, "namespace": labels["namespace"], "service": labels["service"],
                             "outcome": outcome, "vip": svc["cluster_ip"] if svc else None}
                occs += self._dns_occs(dnsx, p.dns_found, base_vars, p.client.pod)
            if svc is not None:
                found: list[tuple[str, dict | None]] = []  # (rule, vars beyond the common ones)
                unreached = False  # (socket-LB's backend that never answered: backend_unreachable says how it stood)
                if p.svc_always is not None:
                    found.append(p.svc_always)
                elif failed and p.svc_if_failed is not None:
                    found.append(p.svc_if_failed)
                    unreached = p.svc_if_failed[0] == "svc.backend_unreachable"
                if p.misrouted and not unreached and not (conn.eof is not None and conn.k.startswith("udp/")):
                    found.append(("svc.misrouted", {"standing": self._standing(p, svc)}))
                if req is not None and req[C_STATUS] is not None and req[C_STATUS] >= 500:
                    found.append(("svc.backend_5xx", {"status": req[C_STATUS], "method": req[C_METHOD],
                                                       "target": req[C_TARGET]}))
                if p.slow_hops:
                    found += [("svc.hop_latency", h) for h in p.slow_hops]
                if slow is not None:  # this request's hops, in order
                    found += [("svc.hop_latency", h) for h in slow]
                if found:
                    labels = self._alert_labels(p)
                    if base_vars is None:
                        base_vars = {"client": p.who, "namespace": labels["namespace"], "service": labels["service"],
                                     "outcome": outcome,  # a NodePort's alerts name the node's address
                                     "vip": svc["cluster_ip"] or (endpoint_key(cn[CN_ADDR_IP], cn[CN_ADDR_PORT]) if cn else None)}
                    v = None
                    for rule_id, extra in found:
                        if rule_id == "svc.hop_latency":
                            obj = R.LATENCY_OBJECTIVES_NS[extra.name]
                            occs.append((rule_id, labels, dict(base_vars, hop=extra.name,
                                                               latency_ms=extra.latency_ns // MS,
                                                               objective_ms=obj // MS,
                                                               because=_slow_hop_because(extra, dnsx,
                                                                                         extra is floor)), []))
                            continue
                        if v is None:
                            v = dict(base_vars, in_cluster=True, backend=self._backend_desc(p, conn),
                                     backend_port=p.b_port)
                        if rule_id == "svc.no_endpoints":
                            extra = {"why": self._no_endpoints_why(svc, t_conn)}
                        elif rule_id == "svc.translation_missing":
                            if conn.k.startswith("udp/"):
                                extra = {**_UDP_UNTAKEN, "hint": self._undeclared_target(p, svc, t_conn)
                                         or self._endpoints_blocked(p, svc, t_conn)}
                            else:
                                extra = {**_TCP_UNTAKEN, "hint": self._endpoints_blocked(p, svc, t_conn)}
                        elif rule_id == "svc.backend_unreachable":
                            extra = {**(_UDP_UNTAKEN if conn.k.startswith("udp/") else _TCP_UNTAKEN),
                                     **self._chosen_backend(p, svc)}
                        elif rule_id == "svc.target_port_refused":
                            port = (extra or v)["backend_port"]
                            extra = {**(extra or {}), "declared": self._declared_ports(p, port, t_conn)}
                        occs.append((rule_id, labels, v if extra is None else {**v, **extra}, []))
        alerts_ids = []
        breaks = False
        ev = _dedup_refs(evidence)
        chain_ev = _first_and_last(ev, MAX_EVIDENCE)
        chain_ev_d = None  # chain_ev as dicts, as an occurrence cites it (records may share it)
        dns_ev = None  # the lookup's own evidence: built when a DNS alert cites it (most chains raise none)
        for rule_id, lab, vars_, extra in occs:
            rule = R.RULES[rule_id]
            breaks = breaks or rule.breaks
            aid = alert_id(rule_id, lab, window_start(end_ts, rule.suppress_ns))
            if aid not in alerts_ids:
                alerts_ids.append(aid)
            if chain_ev_d is None:
                chain_ev_d = list(map(_ref_dict, chain_ev))
            if extra is DNS_EVIDENCE:
                if dns_ev is None:
                    dns_ev = list(map(_ref_dict, _first_and_last(_dedup_refs(dnsx[DX_REFS]), MAX_EVIDENCE))) \
                        if dnsx else chain_ev_d
                cited = dns_ev
            else:
                cited = chain_ev_d
            occ = {"rule": rule_id, "labels": lab, "ts": end_ts, "chain_id": cid, "evidence": cited, "vars": vars_,
                   "in_cluster": bool(vars_.get("in_cluster"))}
            out.append((OCCURRENCES_TOPIC, alert_key(rule_id, lab), occ))
        status = "incomplete" if incomplete else ("broken" if breaks else "ok")
        chain = ChainRecord(CHAIN_SCHEMA, 1, cid, status, incomplete, start_ts, end_ts, p.client, p.dns_out, p.service,
                            p.connect, p.translation, p.backend, response, hops, alerts_ids, chain_ev)
        encode = self.encode_chain
        # a worker's: the record's bytes (a Struct writes those of the dict of its fields); else the record as a
        # dict (its Structs too: the dicts they write)
        out.append((CHAINS_TOPIC, cid, _to_builtins(chain) if encode is None else encode(chain)))

    def _emit_lookup(self, st: dict, lk: list, out: list, final: bool) -> None:
        dnsx = self._dns_summary(st, lk)
        cl = dnsx[DX_CLIENT]
        anchor = lk[L_ANCHOR]
        cid = chain_id(anchor[0], anchor[1], endpoint_key(cl["ip"], cl["port"]), 0)
        client, client_pod = self._new_endpoint(cl["node"], cl["pid"], cl["comm"], cl["ip"], cl["port"], dnsx[DX_T0],
                                                cl["container_id"])
        # without a positive answer it waited for one until its timeout: a loss on its node until
        # then may hold that answer, or the next query of its search list
        waited = dnsx[DX_T1] if dnsx[DX_LATENCY_NS] is not None else dnsx[DX_T1] + self.lookup_timeout_ns
        incomplete = self._lost_on(st, {cl["node"]}, dnsx[DX_T0], waited)
        if incomplete is None and final:
            incomplete = "end of input before the lookup finished"
        if incomplete:
            occs = []
        else:
            found = self._dns_findings(dnsx, client_pod)
            occs = []
            if found:
                who = client.pod and f'{client.namespace}/{client.pod}' or f'{cl["comm"]}@{cl["node"]}'
                base_vars = {"client": who, "namespace": client.namespace, "service": None}
                occs = self._dns_occs(dnsx, found, base_vars, client.pod)
        ev = _first_and_last(_dedup_refs(dnsx[DX_REFS]), MAX_EVIDENCE)
        encode = self.encode_chain
        if occs:  # refs as dicts where they leave the core as objects (an occurrence's)
            ev = list(map(_ref_dict, ev))
        alerts_ids, breaks = [], False
        for rule_id, lab, vars_, extra in occs:
            rule = R.RULES[rule_id]
            breaks = breaks or rule.breaks
            aid = alert_id(rule_id, lab, window_start(dnsx[DX_T1], rule.suppress_ns))
            if aid not in alerts_ids:
                alerts_ids.append(aid)
            out.append((OCCURRENCES_TOPIC, alert_key(rule_id, lab),
                        {"rule": rule_id, "labels": lab, "ts": dnsx[DX_T1], "chain_id": cid,
                         "evidence": ev, "vars": vars_, "in_cluster": bool(vars_.get("in_cluster"))}))
        resp = None
        chain = {
            "schema": CHAIN_SCHEMA, "version": 1, "chain_id": cid,
            "status": "incomplete" if incomplete else ("broken" if breaks else "ok"),
            "incomplete_reason": incomplete, "start_ts": dnsx[DX_T0], "end_ts": dnsx[DX_T1],
            "client": client, "dns": _dns_out(dnsx, self.index, dnsx[DX_T0], self._dns_servers), "service": None, "connect": None,
            "translation": None, "backend": None, "response": resp,
            "hops": [] if dnsx[DX_LATENCY_NS] is None else [
                {"name": "dns", "start_ts": dnsx[DX_T0], "end_ts": dnsx[DX_T0] + dnsx[DX_LATENCY_NS], "latency_ns": dnsx[DX_LATENCY_NS]}],
            "alerts": alerts_ids, "evidence": ev,
        }
        out.append((CHAINS_TOPIC, cid, _to_builtins(chain) if encode is None else encode(chain)))

    # detectors ------------------------------------------------------------------------

    def _dns_findings(self, dnsx: list, client_pod) -> list[tuple[str, object]]:
        """The DNS rules a lookup breaks: (rule, what its vars add); most lookups: none. A pure
        function of what the key below holds and the index as of t0's second: memoized (the
        lists are shared, nobody mutates them)."""
        t0 = dnsx[DX_T0]
        answers = dnsx[DX_ANSWERS]
        key = (dnsx[DX_ANSWERED] == 0, dnsx[DX_RCODE], dnsx[DX_RETRY_GAP] is None, dnsx[DX_EXPANSIONS],
               dnsx[DX_ANSWERED_BY], dnsx[DX_RESOLVER_IP], dnsx[DX_QNAME], *answers,
               None if client_pod is None else (client_pod.host_network, client_pod.dns_policy))
        memo = self._findings
        hit = memo.get(key)
        if hit is not None and hit[0] <= t0 < hit[1]:
            return hit[2]
        found = self._dns_findings_of(dnsx, client_pod)
        if len(memo) >= _MEMO_MAX:
            memo.clear()
        lo = t0 - t0 % S
        memo[key] = (lo, lo + S, found)
        return found

    def _dns_findings_of(self, dnsx: list, client_pod) -> list[tuple[str, object]]:
        idx, t0 = self.index, dnsx[DX_T0]
        answers = dnsx[DX_ANSWERS]
        found: list[tuple[str, object]] = []
        if dnsx[DX_ANSWERED] == 0:
            found.append(("dns.no_answer", None))
        elif not answers and dnsx[DX_RCODE] == "NXDOMAIN":
            found.append(("dns.nxdomain", None))
        if dnsx[DX_RETRY_GAP] is not None:
            found.append(("dns.retry_5s", None))
        if answers and dnsx[DX_EXPANSIONS] >= R.SEARCH_AMPLIFICATION_MIN_EXPANSIONS:
            found.append(("dns.search_amplification", None))
        in_cluster = None
        resolver = dnsx[DX_ANSWERED_BY] or dnsx[DX_RESOLVER_IP]
        if resolver:
            asked = dnsx[DX_RESOLVER_IP]
            cluster_resolver = (not asked or idx.is_cluster_dns(asked, t0)) and idx.is_cluster_dns(resolver, t0)
            if not cluster_resolver:
                in_cluster = in_cluster_domain(dnsx[DX_QNAME], self.cluster_domain)
                if in_cluster or _meant_for_cluster_dns(client_pod):
                    found.append(("dns.wrong_resolver", self._wrong_resolver_said(resolver, client_pod, t0)))
        if answers:
            if in_cluster is None:
                in_cluster = in_cluster_domain(dnsx[DX_QNAME], self.cluster_domain)
            if in_cluster:
                for a in answers:
                    if (idx.service_by_ip(a, None, "TCP", t0) is None and idx.pod_by_ip(a, t0) is None
                            and not self._answers_by_design(dnsx[DX_QNAME], a, t0)):
                        node = idx.node_by_ip(a, t0)  # a node's own address: the host's resolver answered
                        found.append(("dns.answer_not_service", a if node is None else f"{a} (node {node}'s address)"))
                        break
        return found

    def _answers_by_design(self, qname: str, answer: str, ts) -> bool:
        """Whether the Service qname names may answer an address that is no Service's or pod's: one of type
        ExternalName (a CNAME to a name outside the cluster), or one without a selector whose endpoints, written
        by hand, are that address (a database outside the cluster, behind a headless Service)."""
        ns, name = service_of_name(qname, self.cluster_domain)
        if name is None:
            return False
        svc = self.index.service(ns, name, ts)
        if svc is None:
            return False
        if svc.type == "ExternalName":
            return True
        return any(ep.ip == answer for ep in self.index.endpoints(ns, name, ts))

    def _heard_by(self, dnsx: list) -> str:
        """Whether a DNS server process the agents see received the lookup's last query (its recv: DX_SERVER): what
        tells a query lost on the way (a NetworkPolicy, kube-proxy's rules, conntrack, a dead pod behind the VIP) from
        a server that got it (an answer lost on the way back, or none: its upstream, its load)."""
        srv = dnsx[DX_SERVER]
        one = dnsx[DX_QUERIES] <= 1
        if srv is None:
            return "no DNS server seen receiving it" if one else "no DNS server seen receiving them"
        return f"{self._server_named(srv)} received {'it' if one else 'the last one'}"

    def _wrong_resolver_said(self, resolver: str, client_pod, ts) -> tuple[str, str]:
        """(what the resolver is, when a node's address; why a pod asked it) for dns.wrong_resolver: its
        dnsPolicy, when its record has it (a host-network pod gets the node's resolver unless the policy is
        ClusterFirstWithHostNet)."""
        node = self.index.node_by_ip(resolver, ts)
        resolver_is = f" (node {node}'s address)" if node is not None else ""
        if client_pod is None:
            return resolver_is, ""
        policy = client_pod.dns_policy
        if client_pod.host_network:
            return resolver_is, (f"; a host-network pod{f' with dnsPolicy {policy}' if policy else ''}: only "
                                 "ClusterFirstWithHostNet gives it the cluster DNS")
        if policy in ("Default", "None"):
            return resolver_is, f"; the pod's dnsPolicy is {policy}"
        if policy is not None:
            return resolver_is, f"; the pod's dnsPolicy is {policy}: its resolv.conf was rewritten, or the process " \
                                "reads its own"
        return resolver_is, ("; the pod's dnsPolicy is Default (or None, with other nameservers), or its resolv.conf "
                             "was rewritten")

    def _nxdomain_hint(self, ns: str, name: str, ts: int) -> str:
        """What the index knows of the Service a cluster name that does not exist names (dns.nxdomain's words):
        a headless Service without a ready endpoint (its name has no records), one that exists (the DNS
        server behind), the same name in other namespaces (a name asked from the wrong namespace, or without
        one), or names close to it (a typo). Memoized per name and second."""
        return self._per_second(("nxdomain", ns, name), ts, lambda: self._nxdomain_said(ns, name, ts))

    def _nxdomain_said(self, ns: str, name: str, ts: int) -> str:
        svc = self.index.service(ns, name, ts)
        if svc is not None:
            if not svc.cluster_ips and not self.index.ready_endpoints(ns, name, ts)[0]:
                hint = f"; {ns}/{name} is a headless Service without a ready endpoint: its name has no records"
            else:
                hint = f"; {ns}/{name} exists: the DNS server is behind, or not this cluster's"
        else:
            services = self.index.services(ts)
            elsewhere = sorted(f"{s.namespace}/{s.name}" for s in services if s.name == name)
            if elsewhere:
                hint = f"; no Service {name} in {ns}, but " + ", ".join(elsewhere[:3]) + \
                    (" and more" if len(elsewhere) > 3 else "")
            else:
                close = get_close_matches(name, [s.name for s in services if s.namespace == ns], n=3, cutoff=0.8)
                hint = f"; no Service {name} in {ns}" + (f" (close: {', '.join(close)})" if close else "")
        return hint

    def _resolver_down(self, dnsx: list) -> str:
        """For a lookup nobody answered: its resolver, a Service (kube-dns) without a ready endpoint then, said
        ("": it had one, or is no Service): CoreDNS down or not ready, not the network."""
        ip, t0 = dnsx[DX_RESOLVER_IP], dnsx[DX_T0]
        found = self.index.service_by_ip(ip, dnsx[DX_RESOLVER_PORT], "UDP", t0) if ip else None
        if found is None:
            return ""
        svc = found[0]
        if self.index.ready_endpoints(svc.namespace, svc.name, t0)[0]:
            return ""
        return f"; {svc.namespace}/{svc.name} had no ready endpoint"

    def _server_named(self, srv: list) -> str:
        """A DNS server's S_* record as a reader names it: its pod (or endpoint), process and node."""
        pod = _pod_of(self.index, srv[S_IP], srv[S_TS], srv[S_CONTAINER_ID])
        where = f"{pod.namespace}/{pod.name}" if pod is not None else endpoint_key(srv[S_IP], srv[S_PORT])
        return f"{where} ({srv[S_COMM]} {srv[S_PID]} on {srv[S_NODE]})"

    def _retry_cause(self, heard_srv, twin) -> str:
        """What the agents saw of a retried query's lost first ask (see _lost_query_seen): a server that received
        it lost or never sent its answer; one nobody received, sent together with its twin of the other
        address family from one socket, is the conntrack insertion race's pattern (kubernetes/kubernetes#56903)."""
        if heard_srv is not None:
            return f"{self._server_named(heard_srv)} received it, so its answer was lost on the way back or never sent"
        if twin is not None:
            return (f"no DNS server seen receiving it, and it left its socket together with the {twin} query: "
                    "the conntrack insertion race")
        return "no DNS server seen receiving it: lost on the way"

    def _dns_occs(self, dnsx: list, found: list, base_vars: dict, client_pod_name) -> list:
        qname = dnsx[DX_QNAME]
        in_cluster = in_cluster_domain(qname, self.cluster_domain)
        resolver = dnsx[DX_ANSWERED_BY] or dnsx[DX_RESOLVER_IP]
        ns, name = service_of_name(qname, self.cluster_domain)
        labels = {"namespace": ns or base_vars["namespace"], "service": name, "pod": client_pod_name,
                  "node": dnsx[DX_CLIENT]["node"]}
        v = dict(base_vars, qname=qname.rstrip("."), qtype=dnsx[DX_QTYPE], resolver=resolver,
                 queries=dnsx[DX_QUERIES], nxdomain=dnsx[DX_NXDOMAIN], expansions=dnsx[DX_EXPANSIONS],
                 in_cluster=in_cluster)
        occs = []
        for rule, extra in found:
            if rule == "dns.retry_5s":
                qn, qt, gap, *seen = dnsx[DX_RETRY_GAP]  # (three items: a summary checkpointed before the cause)
                cause = self._retry_cause(*seen) if seen else "lost on the way or its answer lost"
                vars_ = dict(v, qname=qn.rstrip("."), qtype=qt, gap_ms=gap // MS, cause=cause)
            elif rule == "dns.answer_not_service":
                vars_ = dict(v, answer=extra)
            elif rule == "dns.no_answer":
                vars_ = dict(v, heard=self._heard_by(dnsx) + self._resolver_down(dnsx))
            elif rule == "dns.wrong_resolver":
                vars_ = dict(v, resolver_is=extra[0], hint=extra[1])
            elif rule == "dns.nxdomain":
                vars_ = dict(v, hint=self._nxdomain_hint(ns, name, dnsx[DX_T0]) if name else "")
            else:
                vars_ = v
            occs.append((rule, labels, vars_, DNS_EVIDENCE))
        return occs


class Stitcher(_Stitching):
    """The stitch operator. State: a JSON-able dict per bucket (see new_state)."""


# helpers ----------------------------------------------------------------------------------

_order = attrgetter("ts", "node", "n")  # event-time order (of event refs, Refs), ties broken by source and sequence
_event_id = attrgetter("node", "n")  # an event ref's event
_event_order = attrgetter("ev.ts", "ev.node", "ev.n")  # the same order of EnrichedEvents: (ts, node, n)
_event_ts = attrgetter("ev.ts")


# The timer queues' entries ("tq": (deadline, conn key); "lq", "lc": (expiry, L_SEQ, lkey)) are tuples: one
# object each (a list is two: its items apart), so a heap operation reads one cold object per entry it
# compares, not two. JSON writes them as it wrote lists and gives lists back: restore makes them tuples
# again (a heap mixing both could not compare its entries).
_HEAPS = ("tq", "lq", "lc")
_FIFOS = ("tqn", "tqs", "tqp")  # the conns' timer entries queued in order beside "tq" (deques; see _tq_push)


def _flat_queue(queue: list, base: int) -> list:
    """A lookups' queue ("lq", "lc": heap entries (expiry, L_SEQ, lkey)) as a header writes it (format 8): flat,
    [expiry - base, L_SEQ, ...] in heap order, without the keys (about a third of the bytes, and ints are cheaper
    to write than strings). A restore takes each entry's key from the lookup its number names (_queue_of)."""
    out: list = []
    append = out.append
    for entry in queue:
        append(entry[0] - base)
        append(entry[1])
    return out


def _queue_of(flat: list | None, base: int, key_of: dict) -> list:
    """A queue _flat_queue wrote, its entries again (heap order kept). An entry whose lookup the state no longer
    holds (it left through a read of its key, _lookups, or the trim of a key's oldest ones: its entry stays until
    a pass meets it) gets None for its key: every site that reads an entry looks its lookup up by key and
    number and skips it when it is not found, as it skipped it with its key, and no two entries have the same
    (expiry, number), so a heap never compares their keys."""
    if not flat:
        return []
    return [(base + flat[i], flat[i + 1], key_of.get(flat[i + 1])) for i in range(0, len(flat), 2)]


def _heaps_of_tuples(state: dict) -> None:
    for name in _HEAPS:
        heap = state.get(name)
        if heap:
            state[name] = [x if x.__class__ is tuple else tuple(x) for x in heap]  # (the same order: a heap still)
    for name in _FIFOS:
        fifo = state.get(name)
        if fifo.__class__ is not deque or (fifo and fifo[0].__class__ is not tuple):
            state[name] = deque([x if x.__class__ is tuple else tuple(x) for x in fifo or ()])


def _lists_in_heaps(state: dict) -> bool:
    """Whether a queue holds lists (a state from JSON that restore did not see): its first entry tells; or the
    conns' timer FIFOs are not deques (JSON gives them back as lists; a state written before them has none)."""
    for name in _HEAPS:
        heap = state.get(name)
        if heap and heap[0].__class__ is not tuple:
            return True
    for name in _FIFOS:
        if state.get(name).__class__ is not deque:
            return True
    return False


def _entry_default(obj):
    if isinstance(obj, EnrichedEvent):
        return to_wire(obj)  # (as graph.dumps_state; no entry holds one)
    raise TypeError(f"cannot serialize {type(obj).__name__}")


# A checkpoint's entries (connections, lookup key groups, DNS server record groups) are written by msgspec's JSON
# encoder: the very bytes orjson (graph.dumps_state) writes for them (ints, strings, None, bools, lists, tuples, dicts
# with str keys, Refs, Conns: no floats), for less CPU. orjson reads a slotted dataclass (a Conn, a Ref) through a
# lookup of its __dict__ that fails (an AttributeError made and cleared for each) and then each field's
# _field_type and value: ~580 ns a Ref against ~100 for msgspec's own Struct encoder.
_entry_bytes = _JsonEncoder(enc_hook=_entry_default).encode


def _tq_compact_at(nconns: int) -> int:
    """How many entries the conns' timer queue may hold before a pass rebuilds it (C integers compiled)."""
    factor: int = _TQ_COMPACT_FACTOR
    floor: int = _TQ_COMPACT_FLOOR
    return factor * nconns + floor


def _tq_push(tq: list, fifo, entry: tuple) -> None:
    """Queue a conn's timer entry: at the FIFO's tail when it is not less than the tail by (deadline, key), so that
    the FIFO stays sorted (O(1), no comparison in the heap), else in the heap "tq"."""
    if fifo:
        tail = fifo[-1]
        if entry[0] > tail[0] or (entry[0] == tail[0] and entry[1] >= tail[1]):
            fifo.append(entry)
        else:
            heappush(tq, entry)
    else:
        fifo.append(entry)


def _tq_least(tq: list, qn, qs, qp):
    """Which of the conns' timer queues holds the least entry by (deadline, key) at its head (the heap "tq", or one
    of the FIFOs, each sorted), None when they are all empty. Equal entries are equal values: whichever
    comes out first, the entries come out as the heap alone would give them."""
    q = None
    head = None
    if qn:
        q = qn
        head = qn[0]
    if qs:
        x = qs[0]
        if q is None or x[0] < head[0] or (x[0] == head[0] and x[1] < head[1]):
            q = qs
            head = x
    if qp:
        x = qp[0]
        if q is None or x[0] < head[0] or (x[0] == head[0] and x[1] < head[1]):
            q = qp
            head = x
    if tq:
        x = tq[0]
        if q is None or x[0] < head[0] or (x[0] == head[0] and x[1] < head[1]):
            q = tq
    return q


def _keep_conn(st: dict, k: str) -> None:
    """Conn k, about to change while a checkpoint in slices still has to write it: its bytes now (at the cut)."""
    st["_pc"].discard(k)
    c = st["conns"].get(k)
    st["_pv"]["c" + k] = None if c is None else _entry_bytes(c)


def _keep_lookup(st: dict, k: str) -> None:
    """Lookup key k, about to change or go while a checkpoint in slices still has to write it in a group: its
    bytes now (at the cut), which its group takes as they are (_lookup_group_bytes). A pending key is one that
    was there at the cut, and every site that changes or removes one saves it first: it is there now."""
    st["_pl"].discard(k)
    st["_plv"][k] = _entry_bytes([st["lks"][k], st["lk"][k]])


def _keep_server(st: dict, k: str) -> None:
    """DNS server record k, as _keep_conn."""
    st["_ps"].discard(k)
    v = st["dsrv"].get(k)
    st["_pv"]["s" + k] = None if v is None else _entry_bytes(v)


_GROUP_RECORDS = 1000  # DNS server records per group record, at most
# Lookup keys per group record, at most: ~650 bytes a key (one lookup, one query) makes ~65 KB; a key holds at most
# 8 lookups of MAX_QUERIES queries each (~180 KB at worst), so a group stays below the changelog's 32 MiB records.
_LOOKUP_GROUP_KEYS = 100


def _lookup_groups(st: dict, cl, full: bool) -> list:
    """The lookup keys a checkpoint writes, in groups (checkpoint format 8): the keys changed since the last
    checkpoint (`cl`, the keys marked; every key when `full`) that are there, in their creation order, go in groups
    of up to _LOOKUP_GROUP_KEYS, each an entry "L<id>" ({lookup key: [its number, its lookups]}) written once and
    tombstoned once no key's newest version is in it: a key written again goes in a later group (restoring takes
    each key's version of the newest group), a key gone goes in the header's "lgx" while a group not tombstoned
    still holds a version of it (restoring leaves those out). Most keys are written once (a lookup claimed soon
    after its answer, then waiting for its expiry) and leave with the keys written beside them: about one group
    record and one tombstone per 100 keys instead of one of each per key.
    Returns [(subkey, [its keys], or None for a group gone)], the new groups' keys as they are at the cut (their
    bytes: _lookup_group_bytes). Keeps st["lgn"] (the last id) and st["lgx"] (sorted), and the bookkeeping
    restore_parts rebuilds: "_lgc" {group id: how many keys there have their newest version in it}, "_lkv" {key:
    the ids of the groups not tombstoned holding a version of it}, "_lgd" {group id: the keys gone holding a
    version there}, "_lkx" (the set of the keys gone still held: "lgx")."""
    lk, lks = st["lk"], st["lks"]
    out: list = []
    count = st.get("_lgc")
    dying: list = []
    if full or count is None:
        for g in count or ():
            out.append(("L" + g, None))  # (every one when full: the shell tombstones only those it holds)
        count, versions, dead_in, dead = st["_lgc"], st["_lkv"], st["_lgd"], st["_lkx"] = {}, {}, {}, set()
        changed = list(lk)  # (creation order)
    else:
        versions, dead_in, dead = st["_lkv"], st["_lgd"], st["_lkx"]
        changed = []
        for k in cl:
            if k in lk:
                changed.append(k)
            elif k not in dead:
                held = versions.get(k)
                if held is not None:  # gone since its last version was written
                    count[held[-1]] -= 1
                    dying.append(k)
        changed.sort(key=lks.__getitem__)
        for k in changed:
            held = versions.get(k)
            if held is not None:
                if k in dead:  # gone, and there again: its new version hides the older ones
                    dead.discard(k)
                    for g in held:
                        dead_in[g].discard(k)
                else:
                    count[held[-1]] -= 1
                if len(held) > 1 or held[0] not in count:
                    held[:] = [g for g in held if g in count]
    # the groups no key's newest version is in any more: tombstoned
    ended = [g for g, c in count.items() if not c]
    for g in ended:
        del count[g]
        out.append(("L" + g, None))
    for k in dying:  # hidden while a group still holds a version of it (mostly none: its group ends with it)
        held = [g for g in versions[k] if g in count]
        if held:
            versions[k] = held
            dead.add(k)
            for g in held:
                dead_in.setdefault(g, set()).add(k)
        else:
            del versions[k]
    for g in ended:
        for k in dead_in.pop(g, ()):
            held = versions[k]
            held.remove(g)
            if not held:
                del versions[k]
                dead.discard(k)
    n = st["lgn"]
    for i in range(0, len(changed), _LOOKUP_GROUP_KEYS):
        n += 1
        g = str(n)
        keys = changed[i:i + _LOOKUP_GROUP_KEYS]
        count[g] = len(keys)
        for k in keys:
            held = versions.get(k)
            if held is None:
                versions[k] = [g]
            else:
                held.append(g)
        out.append(("L" + g, keys))
    st["lgn"] = n
    st["lgx"] = sorted(dead) if dead else []
    return out


def _lookup_group(st: dict, keys: list) -> dict:
    """A group's entry as durable_parts gives it: {lookup key: [its number, its lookups]}."""
    lk, lks = st["lk"], st["lks"]
    return {k: [lks[k], lk[k]] for k in keys}


def _lookup_group_bytes(st: dict, keys: list) -> bytes:
    """A group's bytes as they were at the cut (a checkpoint in slices): its keys saved before they changed
    (_keep_lookup) as they were saved, the others as they are."""
    saved = st["_plv"]
    pending = st["_pl"]
    lk, lks = st["lk"], st["lks"]
    group = {}
    for k in keys:
        raw = saved.pop(k, None)
        if raw is not None:
            group[k] = _Raw(raw)
        else:
            pending.discard(k)
            group[k] = [lks[k], lk[k]]
    return _entry_bytes(group)


def _server_groups(st: dict, cs, full: bool) -> dict:
    """The DNS server records a checkpoint writes, in groups (checkpoint format 7): a record is never changed
    in place (a repeat of its key replaces it, at the end of the time order) and leaves the state in time
    order, trimmed from the front (_timers). So the records new since the last checkpoint (`cs`, the keys
    marked; every record when `full`) go in groups of up to _GROUP_RECORDS, each an entry "S<id>" written once
    and tombstoned once all its records have left: one record and one tombstone for ~1000 instead of one of
    each per record. Restoring takes each key's newest record of the groups, none older than the oldest one
    the state held at the cut (st["dso"]). Returns {subkey: group dict, or None for a group gone}; updates
    st["dsg"] ([[id, newest record's time]] of the groups written and not gone), st["dsn"] and st["dso"].
    The groups hold the record lists as they are (never changed: a checkpoint in slices serializes them
    later, as they were at the cut)."""
    dsrv = st["dsrv"]
    first = None
    for rec in dsrv.values():
        first = rec[S_TS]  # (the dict is in time order: see _apply_dns)
        break
    out: dict = {}
    groups = []
    for g in st.get("dsg") or ():
        if full or first is None or g[1] < first:
            out["S" + g[0]] = None  # (every one when full: the shell tombstones only those it holds)
        else:
            groups.append(g)
    if full:
        new = list(dsrv)
    elif cs:
        # Those set since the last checkpoint are the dict's tail (a record set goes last), each marked, and a
        # record before them, not set since, is not marked (marks are reset at each checkpoint; a removed
        # record's mark names no record): walked back from the end, no sort (time order, as the dict keeps it).
        new = []
        for k in reversed(dsrv):
            if k not in cs:
                break
            new.append(k)
        new.reverse()
    else:
        new = []
    n = st.get("dsn") or 0
    for i in range(0, len(new), _GROUP_RECORDS):
        n += 1
        keys = new[i:i + _GROUP_RECORDS]
        out["S" + str(n)] = {k: dsrv[k] for k in keys}
        groups.append([str(n), dsrv[keys[-1]][S_TS]])  # its newest record's time: its last (time order)
    st["dsg"], st["dsn"], st["dso"] = groups, n, first
    return out


def _take_ready(state: dict, watermark_ns: int) -> list:
    """The pending events before the watermark, taken from their runs, in event order (ts, node, n).
    Only these are read: each run is in time order, so a bisection finds where its ready events end; the rest
    stay where they are, in their runs, not read again until their time comes (a key held back behind a slower
    upstream partition, as in a backlog, holds seconds of events: they were all sorted at every advance before)."""
    ready: list = []
    runs = state["runs"]
    parts = 0
    left: list = []
    for run in runs:
        events, i = run[0], run[1]
        n = len(events)
        cut = bisect_left(events, watermark_ns, i, n, key=_event_ts)
        if cut > i:
            ready += events[i:cut]
            parts += 1
        if cut < n:
            run[1] = cut
            left.append(run)
    if len(left) != len(runs):
        state["runs"] = left
    if parts > 1:
        # By time alone (an int key: a cheaper comparison than (ts, node, n)'s tuples); stable, so events at one
        # time keep the order they came in, which is (node, n) order unless two runs met there (checked; rare).
        ready.sort(key=_event_ts)
    if not _in_event_order(ready):
        ready.sort(key=_event_order)
    return ready


def pending_events(state: dict) -> list:
    """The events a stitch state holds not applied yet, in the order they came in (tests, tools)."""
    return [d for events, i in state["runs"] for d in events[i:]]


def _in_event_order(buf: list) -> bool:
    """Whether buf, sorted by time, is in event order (ts, node, n): each pair at one time in (node, n) order."""
    p = None
    for d in buf:
        e = d.ev
        if p is not None and e.ts == p.ts and (e.node < p.node or (e.node == p.node and e.n < p.n)):
            return False
        p = e
    return True


def _lookup_numbered(lookups: list | None, ls: int) -> list | None:
    """The lookup numbered ls (L_SEQ) among a key's lookups (None: none). A queue's entry holds the very
    int its lookup does (both are st["seq"] as it was made; a restored state's are equal ints), so the
    first pass compares identities, without reading cold ints; numbers are unique in a state."""
    if lookups is None:
        return None
    for x in lookups:
        if x[L_SEQ] is ls:
            return x
    for x in lookups:
        if x[L_SEQ] == ls:
            return x
    return None


def _remove_lookup(lookups: list, lk: list) -> None:
    """lookups.remove(lk) by identity: list.remove compares every lookup before it item by item (cold
    lists); no other lookup equals lk (its L_SEQ is its own)."""
    i = 0
    for x in lookups:
        if x is lk:
            del lookups[i]
            return
        i += 1
    lookups.remove(lk)


def _acceptor_step(conn: Conn, d: EnrichedEvent, e: SyscallEvent, kind: str, ts: int) -> None:
    """An acceptor's event (a userspace proxy's or the backend's): the accept, a request read, a response written."""
    node, pid, fd = e.node, e.pid, e.fd
    for me in conn.sv:  # the acceptor this event is on (_side_of, inline)
        if me[A_FD] == fd and me[A_PID] == pid and me[A_NODE] == node:
            break
    else:
        lref = d.local_ref
        lkind = lref.get("kind") if lref else None
        me = [node, pid, e.comm, fd, e.container_id, e.local_ip, e.local_port, ts,
              lkind is None or lkind == "node" or lkind == "external", [], 0, None]  # the A_* fields
        acceptors = conn.sv
        acceptors.append(me)
        if len(acceptors) > 4:
            del acceptors[:-4]
        conn.est = 2
        if len(conn.ev) < MAX_EVIDENCE:  # _evidence, inline
            conn.ev.append(Ref(e.node, e.n, ts, "accept"))
    if kind == "close":
        me[A_CLOSED] = ts
        return
    if me[A_CLOSED] is not None:
        me[A_CLOSED] = None  # an event after its close: the fd reused, by a connection with the same peer
    if kind == "recv" and e.res > 0:
        data = e.data
        if data and data.startswith(REQUEST_PREFIXES):
            req = parse_request(data)
            if req is not None:
                i = me[A_NREQUESTS]
                me[A_NREQUESTS] = i + 1
                reqs = me[A_REQUESTS]
                reqs.append([i, ts, None, [Ref(node, e.n, ts, "backend request")]])  # R_*
                if len(reqs) > MAX_REQS_KEPT:
                    del reqs[:-MAX_REQS_KEPT]
    elif kind == "send" and e.res > 0:
        data = e.data
        reqs = me[A_REQUESTS]
        if data and data.startswith(RESPONSE_PREFIX) and reqs and reqs[-1][R_RESPONSE_TS] is None:
            resp = parse_response(data)
            if resp is not None and resp.status >= 200:
                r = reqs[-1]
                r[R_RESPONSE_TS] = ts
                r[R_EVIDENCE].append(Ref(node, e.n, ts, "backend response"))


def _accepting_over(conn: Conn) -> bool:
    """Whether every acceptor of the conn has closed (and it has one)."""
    sv = conn.sv
    if not sv:
        return False
    for a in sv:
        if a[A_CLOSED] is None:
            return False
    return True


def _proxy_step(conn: Conn, e: SyscallEvent, kind: str, ts: int) -> None:
    """A userspace proxy's outbound connection's event: its dial and the dial's result."""
    node, pid, fd = e.node, e.pid, e.fd
    for me in conn.px:  # the proxy dial this event is on (_side_of, inline)
        if me[D_FD] == fd and me[D_PID] == pid and me[D_NODE] == node:
            break
    else:
        me = [node, pid, e.comm, fd, e.addr_ip or e.remote_ip, e.addr_port or e.remote_port,
              e.local_ip, e.local_port, ts, None, None]  # the D_* fields
        conn.px.append(me)
        del conn.px[:-4]
    if kind == "connect":
        me[D_RESULT], me[D_ERRNO], me[D_TS] = e.res, e.errno, ts
        _evidence(conn, e, "proxy dial" + (f" {e.errno}" if e.res < 0 and e.errno else ""))
    # (the requests a proxy forwards and the responses it gets back: a chain shows the
    # client's and the backend's)


def _new_conn(key: str, e: SyscallEvent, seq: int) -> Conn:
    # Made without Conn's __init__ (compiled: its dataclass __init__ parses 21 arguments from a tuple, ~3x the
    # cost of the object itself); every field set here, in the order of Conn's fields.
    conn = Conn.__new__(Conn)
    conn.k = key
    conn.seq = seq
    conn.qd = None
    conn.t0 = conn.t1 = e.ts
    conn.a = [e.node, e.n]
    conn.cl = conn.cn = conn.ccl = None
    conn.est = 0
    conn.creq = []
    conn.nreq = 0
    conn.sv = []
    conn.px = []
    conn.dns = conn.svc = None
    conn.ev = []
    conn.eof = conn.err = None
    conn.tx = 0
    conn.rx = 0
    return conn


def _evidence(conn: Conn, e: SyscallEvent, what: str) -> None:
    # an event ref; built inline wherever one is made (no call per ref): keys in this order
    if len(conn.ev) < MAX_EVIDENCE:
        conn.ev.append(Ref(e.node, e.n, e.ts, what))


def _trim_client(conn: Conn) -> None:
    """Emitted requests are dropped; pending ones only past the bound (then never emitted:
    a connection pipelining that many unanswered requests is not followed further)."""
    reqs = conn.creq
    if len(reqs) > 1 and reqs[0][C_DONE]:
        reqs[:] = [r for r in reqs if not r[C_DONE]]
    if len(reqs) > MAX_REQS_KEPT:
        del reqs[:-MAX_REQS_KEPT]


DNS_EVIDENCE: list = []  # (an occurrence whose evidence is its lookup's, not the whole chain's)


def _first_and_last(refs: list, limit: int) -> list:
    """At most `limit` refs, in order: the first (where the request began) and the last limit-1
    (where it ended or failed). The first ones of a chain are often ndots' search expansions."""
    return refs if len(refs) <= limit else [refs[0], *refs[len(refs) - limit + 1:]]


def _dedup_refs(refs: list) -> list:
    """Event refs in event-time order, each event once (the first ref of it in `refs`).
    Refs of one event share its ts, so dropping repeats before sorting keeps the same ones.
    Refs a checkpoint gave back are dicts (a restored state's): such lists are made of Refs first."""
    for x in refs:
        if type(x) is not Ref:  # (compiled, type() is a load; x.__class__ an attribute lookup)
            refs = list(map(_as_ref, refs))
            break
    # A stable insertion sort by ts (the order sorted(refs, key=ts) gives): a chain's ~10 refs come in a few runs
    # (the lookup's, the connection's, the request's), and compiled each step reads a ref's ts as a struct member
    # (stitch.pxd), where sorted() called a key function per ref and compared the ints as objects.
    out = refs.copy()
    n = len(out)
    tie = False  # two refs at one time: one event twice, or a tie the order below breaks
    for i in range(1, n):
        r = out[i]
        t = r.ts
        j = i
        while j > 0:
            q = out[j - 1]
            tq = q.ts
            if tq <= t:
                if tq == t:  # (the sorted prefix's refs at t end at q: r goes after them)
                    tie = True
                break
            out[j] = q
            j -= 1
        if j != i:
            out[j] = r
    if not tie:
        return out  # no two refs at one time (the common case): no repeat, no tie
    if len(set(map(_event_id, refs))) == len(refs):
        return sorted(refs, key=_order)  # no event twice: nothing to drop
    first = {(x.node, x.n): x for x in reversed(refs)}  # the last write is the first ref
    return sorted(first.values(), key=_order)  # every ref has ts, node, n


def _ref_fields(r: Ref) -> tuple:
    """A ref's fields, read as _dedup_refs reads them (compiled: struct members at the offsets stitch.pxd gives)."""
    return (r.node, r.n, r.ts, r.what)


def _check_ref_layout() -> None:
    if _ref_fields.__class__ is FunctionType:
        return  # as Python: attribute reads, whatever the layout
    values = [object() for _ in Ref.__struct_fields__]
    got = _ref_fields(Ref(*values))
    if len(got) != len(values) or any(a is not b for a, b in zip(got, values)):
        raise ImportError("svctrace.streams.core.stitch: a Ref's fields are not where the compiled core reads them: "
                          "its struct in stitch.pxd must list every field of records.Ref, then make setup; meanwhile "
                          "SVCTRACE_PURE_PYTHON=1")


_check_ref_layout()


def _svc(sv, sp, vip, port, via, proto: str = "TCP") -> dict:
    return {"namespace": sv.namespace, "name": sv.name, "cluster_ip": vip, "port": port,
            "protocol": sp.protocol if sp else proto, "target_port": sp.target_port if sp else None, "via": via}


def _port_for_target(sv, port):
    for sp in sv.ports:
        if sp.target_port == port or (sp.target_port is None and sp.port == port):
            return sp
    return sv.ports[0] if len(sv.ports) == 1 else None


def _outcome(conn: Conn, req: dict | None, idle_closed: bool = False) -> str:
    cn = conn.cn
    errno = cn[CN_ERRNO] if cn else None
    if cn and cn[CN_RESULT] < 0 and errno in FAILED_ERRNOS:
        return FAILED_ERRNOS[errno]
    if conn.k.startswith("udp/"):  # a UDP flow (_apply_udp): delivered (a backend got it) or answered is "ok"
        if conn.err in FAILED_ERRNOS:
            return FAILED_ERRNOS[conn.err]
        if conn.est:
            return "ok"
        return "no reply" if conn.ccl is not None or idle_closed else "pending"
    if req is not None and req[C_STATUS] is not None:
        return "ok"
    if conn.err in FAILED_ERRNOS:
        return FAILED_ERRNOS[conn.err]
    if req is None and conn.rx > 0:
        return "ok"
    if conn.eof is not None:
        return "empty reply" if conn.rx == 0 or req is not None else "ok"
    if conn.est == 0 and (conn.ccl is not None or idle_closed):
        return "connection timed out"  # never established: closed, or silent for the idle timeout
    return "pending"


def _slow_hop_because(hop, dnsx, floor: bool = False) -> str:
    """What a slow hop's time says of its cause (svc.hop_latency's words), where it says something: a wait the
    idle timeout ended (floor: the client still waiting); a dns hop that waited out a resolver's retry; a connect
    close above a SYN retransmission time (Linux: 1 s, then doubling: the handshake completes 1, 3, 7 ... s after
    the first SYN when the earlier SYNs or their SYN-ACKs were lost; an accept() called late by a busy server can
    land there too)."""
    if floor:
        return ", at least: the idle timeout ended the chain with the client still waiting"
    if hop.name == "dns":
        gap = dnsx[DX_RETRY_GAP] if dnsx is not None else None
        return f": a resolver retry {gap[2] // MS} ms after an unanswered query (dns.retry_5s)" if gap else ""
    if hop.name == "connect":
        for lost, at in enumerate(R.SYN_RETRANSMIT_NS, 1):
            if at <= hop.latency_ns < at + R.SYN_RETRANSMIT_SLACK_NS:
                if lost == 1:
                    return f": about {at // S} s: a SYN retransmission (a SYN or its SYN-ACK lost), likely"
                return f": about {at // S} s: {lost} SYN retransmissions (SYNs or SYN-ACKs lost), likely"
    return ""


def _meant_for_cluster_dns(pod) -> bool:
    """Whether a pod asks the cluster DNS whatever the name, by its dnsPolicy: ClusterFirst (on the host network,
    ClusterFirstWithHostNet: its ClusterFirst falls back to the node's resolver). Default and None choose another
    resolver on purpose. A record without the policy: a pod off the host network, as before it was known."""
    if pod is None:
        return False
    policy = pod.dns_policy
    if policy is None:
        return not pod.host_network
    if pod.host_network:
        return policy == "ClusterFirstWithHostNet"
    return policy in ("ClusterFirst", "ClusterFirstWithHostNet")


def _first_receipt(srv: list) -> int:
    """S_FIRST of a DNS server record; a record written before it had none: its own time."""
    return srv[S_FIRST] if len(srv) > S_FIRST else srv[S_TS]


def _lost_query_seen(st: dict, qs: list, lost: list, retry_ts: int) -> tuple:
    """(the S_* record of a DNS server that received the lost query, or None; the type of the query that left
    its socket with it, for the same name, or None): what tells the causes of a resolver's retry apart.
    A server's receipt counts from a second before the lost query (the clocks of two nodes) until a second
    before the retry (the retry itself is received under the same key when socket and id are reused)."""
    srv = st["dsrv"].get(f'{lost[Q_ENDPOINT]}|{lost[Q_ID]}')
    if srv is not None and not (lost[Q_TS] - S <= _first_receipt(srv) <= retry_ts - S):
        srv = None
    twin = None
    for q in qs:
        if (q[Q_ENDPOINT] == lost[Q_ENDPOINT] and q[Q_NAME] == lost[Q_NAME] and q[Q_TYPE] != lost[Q_TYPE]
                and abs(q[Q_TS] - lost[Q_TS]) <= R.DNS_TWIN_NS):
            twin = q[Q_TYPE]
            break
    return srv, twin


def _summary_from_dict(d: dict) -> list:
    """A lookup summary as checkpoint formats 1-3 wrote it (a dict) -> its DX_* list."""
    srv = d["server"]
    if srv is not None:  # its S_* record: its ref is the summary's last (see _dns_summary), its time the ref's
        ref = d["refs"][-1]
        srv = [ref["ts"], srv["node"], srv["pid"], srv["comm"], srv["ip"], srv["port"], srv["container_id"], ref,
               ref["ts"]]
    # a summary written before expansions were counted by name: its NXDOMAIN answers stand in
    # (the rule's old measure), for the chains still open then
    expansions = d.get("expansions", d["nxdomain"])
    return [d["qname"], d["qtype"], d["resolver_ip"], d["resolver_port"], d["answered_by"], srv, d["rcode"],
            d["answers"], d["cnames"], d["ttl"], d["latency_ns"], d.get("answer_ns"), d["retries"], d["queries"],
            d["nxdomain"], d["answered"], expansions, d["retry_gap"], d["t0"], d["t1"], d["refs"], d["a"], d["client"]]


def _dns_out(dnsx: list, index, ts: int, servers: dict) -> DnsOut:
    """A chain record's "dns". servers: the memo of its "server" dicts (one DNS server process is
    in many records, which share the dict: nobody mutates a record), keyed by the server record's
    fields, each with the second it holds for (its pod is the index's answer as of that second)."""
    server = dnsx[DX_SERVER]
    if server is not None:
        key = (server[S_IP], server[S_PORT], server[S_NODE], server[S_CONTAINER_ID], server[S_PID], server[S_COMM])
        hit = servers.get(key)
        if hit is not None and hit[0] <= ts < hit[1]:
            server = hit[2]
        else:
            pod = _pod_of(index, server[S_IP], ts, server[S_CONTAINER_ID])
            server = Endpoint(server[S_IP], server[S_PORT], pod.name if pod is not None else None,
                              pod.namespace if pod is not None else None, server[S_NODE], server[S_CONTAINER_ID],
                              server[S_PID], server[S_COMM])
            if len(servers) >= _MEMO_MAX:
                servers.clear()
            lo = ts - ts % S
            servers[key] = (lo, lo + S, server)
    resolver = dnsx[DX_ANSWERED_BY] or dnsx[DX_RESOLVER_IP]
    cnames = dnsx[DX_CNAMES]
    return DnsOut(dnsx[DX_QNAME].rstrip("."), dnsx[DX_QTYPE], resolver or "", dnsx[DX_RESOLVER_PORT],
                  bool(resolver) and index.is_cluster_dns(resolver, ts), server, dnsx[DX_RCODE], dnsx[DX_ANSWERS],
                  [c.rstrip(".") for c in cnames] if cnames else [], dnsx[DX_TTL],
                  dnsx[DX_LATENCY_NS] if dnsx[DX_LATENCY_NS] is not None else dnsx[DX_ANSWER_NS],
                  dnsx[DX_RETRIES], max(1, dnsx[DX_QUERIES]))
