"""The "connections seen" summary: one row per process and network flow, like
`sysdig -c echo_fds` condensed to totals (bytes, errors, HTTP statuses). Pure: fed
SyscallEvents, asked for rows.

A flow is named from the client's point of view (client -> server) whichever end
the event was recorded on, so both processes of a loopback connection show the
same arrow and sort next to each other.
"""
from __future__ import annotations

from dataclasses import dataclass, field

from svctrace.streams.core.http import REQUEST_PREFIXES, RESPONSE_PREFIX, parse_request, parse_response

NET_PROTOS = ("tcp", "udp")
# Below this a port is a service's, above it an ephemeral one (Linux default range starts at 32768).
EPHEMERAL_FLOOR = 32768
# Results of non-blocking I/O that are not failures.
BENIGN_ERRNOS = frozenset({"EINPROGRESS", "EAGAIN", "EWOULDBLOCK", "EALREADY", "EINTR"})


@dataclass(frozen=True, slots=True, order=True)
class Endpoint:
    ip: str
    port: int | None

    def __str__(self) -> str:
        host = f"[{self.ip}]" if ":" in self.ip else self.ip
        return host if self.port is None else f"{host}:{self.port}"


@dataclass(frozen=True, slots=True, order=True)
class FlowKey:
    node: str
    comm: str
    pid: int
    proto: str
    client: Endpoint
    server: Endpoint


@dataclass(slots=True)
class FlowTotals:
    first_ts: int
    last_ts: int
    role: str | None
    events: int = 0
    bytes_out: int = 0  # written by this process
    bytes_in: int = 0  # read by this process
    errors: dict[str, int] = field(default_factory=dict)
    container_id: str | None = None
    statuses: dict[int, int] = field(default_factory=dict)  # HTTP responses this end sent or got, by status
    last_request: str | None = None  # "GET /path" of the latest request on this flow (what a response answers)


@dataclass(frozen=True, slots=True)
class ServerError:
    """One HTTP 5xx response, at the end that recorded it: sent (a server's own answer) or got."""
    ts: int
    node: str
    comm: str
    pid: int
    sent: bool
    status: int
    client: Endpoint
    server: Endpoint
    request: str | None


@dataclass(frozen=True, slots=True)
class ConnectionRow:
    key: FlowKey
    totals: FlowTotals
    connections: int = 1  # flows merged into this row (same process, client IP and server)


def _is_service_port(port: int | None, other: int | None) -> bool:
    if port is None:
        return False
    if other is None:
        return port < EPHEMERAL_FLOOR
    return port < other


def _ends(e) -> tuple[str, str, int | None, str, int | None] | None:
    """(role, client ip, client port, server ip, server port) of a network event, or None when
    it has no IP peer to name: flow_of in plain values (the table keys on them, per event)."""
    if e.proto not in NET_PROTOS:
        return None
    peer_ip, peer_port = (e.remote_ip, e.remote_port) if e.remote_ip else (e.addr_ip, e.addr_port)
    if not peer_ip or (peer_ip in ("0.0.0.0", "::") and not peer_port):
        return None
    local_ip, local_port = e.local_ip, e.local_port
    if not local_ip:
        local_ip, local_port = "0.0.0.0" if ":" not in peer_ip else "::", None
    role = e.role
    # UDP has no connection: the end on the service (lower, non-ephemeral) port is the server,
    # whichever socket bound or sent first. Same when the socket's opening was not captured.
    if (e.proto == "udp" and local_port and peer_port and local_port != peer_port) or role is None:
        role = "server" if _is_service_port(local_port, peer_port) else "client"
    if role == "client":
        return role, local_ip, local_port, peer_ip, peer_port
    return role, peer_ip, peer_port, local_ip, local_port


def flow_of(e) -> tuple[str | None, Endpoint, Endpoint] | None:
    """(role, client, server) of a network event, or None when it has no IP peer to name."""
    ends = _ends(e)
    if ends is None:
        return None
    role, cip, cport, sip, sport = ends
    return role, Endpoint(cip, cport), Endpoint(sip, sport)


class ConnectionTable:
    """Totals per (node, process, proto, client -> server); memory bounded by `limit` flows."""

    def __init__(self, limit: int = 100_000) -> None:
        self.limit = limit
        # keyed by plain values (node, comm, pid, proto, client ip, port, server ip, port): the
        # FlowKey objects are built only for `flows`/`rows`, not per event
        self._totals: dict[tuple, FlowTotals] = {}
        self.overflow = 0  # events of flows beyond the limit
        self.server_errors: list[ServerError] = []  # the first MAX_SERVER_ERRORS 5xx responses
        self.server_errors_total = 0
        self.unix_events = 0
        self.net_events = 0

    @property
    def flows(self) -> dict[FlowKey, FlowTotals]:
        return {FlowKey(node, comm, pid, proto, Endpoint(cip, cport), Endpoint(sip, sport)): t
                for (node, comm, pid, proto, cip, cport, sip, sport), t in self._totals.items()}

    def __len__(self) -> int:
        """Flows tabulated (the size of `flows`, without building its keys)."""
        return len(self._totals)

    def servers(self):
        """(server ip, server port, node, comm, pid) of every flow seen at its server's end,
        in plain values (no FlowKey built per flow)."""
        for (node, comm, pid, _proto, _cip, _cport, sip, sport), t in self._totals.items():
            if t.role == "server":
                yield sip, sport, node, comm, pid

    def add(self, e) -> None:
        proto = e.proto
        if proto == "unix" or e.family == "unix":
            self.unix_events += 1
            return
        if proto not in NET_PROTOS and e.family not in ("ipv4", "ipv6"):
            return
        self.net_events += 1
        ends = _ends(e)
        if ends is None:
            return
        role, cip, cport, sip, sport = ends
        key = (e.node, e.comm, e.pid, proto, cip, cport, sip, sport)
        ts = e.ts
        t = self._totals.get(key)
        if t is None:
            if len(self._totals) >= self.limit:
                self.overflow += 1
                return
            t = self._totals[key] = FlowTotals(first_ts=ts, last_ts=ts, role=role, container_id=e.container_id)
        t.events += 1
        if ts < t.first_ts:
            t.first_ts = ts
        if ts > t.last_ts:
            t.last_ts = ts
        res = e.res
        if res < 0 and e.errno not in BENIGN_ERRNOS:
            name = e.errno or str(res)
            t.errors[name] = t.errors.get(name, 0) + 1
        elif res > 0:
            kind = e.kind
            if kind == "send":
                t.bytes_out += res
            elif kind == "recv":
                t.bytes_in += res
            else:
                return
            data = e.data
            if not data:
                return
            # an HTTP response: sent by the server's end, received by the client's
            if (kind == "send") == (role == "server"):
                if data.startswith(RESPONSE_PREFIX):
                    resp = parse_response(data)
                    if resp is not None:
                        t.statuses[resp.status] = t.statuses.get(resp.status, 0) + 1
                        if resp.status >= 500:
                            self._server_error(e, t, role, resp.status, ends)
            elif data.startswith(REQUEST_PREFIXES):  # a request: sent by the client's end, received by the server's
                req = parse_request(data)
                if req is not None:
                    t.last_request = f"{req.method} {req.target}"

    def statuses_got(self) -> dict[tuple[str, int], list[int]]:
        """(node, pid) -> the HTTP statuses that process got as a client (from its upstreams)."""
        got: dict[tuple[str, int], list[int]] = {}
        for (node, _comm, pid, *_rest), t in self._totals.items():
            if t.role == "client" and t.statuses:
                got.setdefault((node, pid), []).extend(t.statuses)
        return got

    MAX_SERVER_ERRORS = 50

    def _server_error(self, e, t: FlowTotals, role: str | None, status: int, ends: tuple) -> None:
        self.server_errors_total += 1
        if len(self.server_errors) < self.MAX_SERVER_ERRORS:
            _role, cip, cport, sip, sport = ends
            self.server_errors.append(ServerError(e.ts, e.node, e.comm, e.pid, role == "server", status,
                                                  Endpoint(cip, cport), Endpoint(sip, sport), t.last_request))

    def rows(self) -> list[ConnectionRow]:
        """Deterministic order: first seen, then the key."""
        return [ConnectionRow(k, t) for k, t in sorted(self.flows.items(), key=lambda kv: (kv[1].first_ts, kv[0]))]

    def grouped_rows(self) -> list[ConnectionRow]:
        """Rows with repeated connections merged: same process, role, client IP and server.

        A client opening 25 connections to one server is one row "×25", the compact view
        an incident needs; a single connection keeps its client port.
        """
        groups: dict[tuple, list[ConnectionRow]] = {}
        for row in self.rows():
            k = row.key
            groups.setdefault((k.node, k.comm, k.pid, k.proto, row.totals.role, k.client.ip, k.server), []).append(row)
        merged = []
        for rows in groups.values():
            if len(rows) == 1:
                merged.append(rows[0])
                continue
            first = rows[0]
            total = FlowTotals(first_ts=first.totals.first_ts, last_ts=max(r.totals.last_ts for r in rows),
                               role=first.totals.role, container_id=first.totals.container_id)
            for r in rows:
                total.events += r.totals.events
                total.bytes_out += r.totals.bytes_out
                total.bytes_in += r.totals.bytes_in
                for name, n in r.totals.errors.items():
                    total.errors[name] = total.errors.get(name, 0) + n
                for status, n in r.totals.statuses.items():
                    total.statuses[status] = total.statuses.get(status, 0) + n
            key = FlowKey(first.key.node, first.key.comm, first.key.pid, first.key.proto,
                          Endpoint(first.key.client.ip, None), first.key.server)
            merged.append(ConnectionRow(key, total, connections=len(rows)))
        return sorted(merged, key=lambda r: (r.totals.first_ts, r.key))
