"""HTTP/1.x message heads decoded with h11, from captured payload prefixes.

A syscall's captured data is a prefix (snaplen): the head may be cut. We keep
the complete lines, close the head ourselves and let h11 parse it, so the
request line, Host and status survive truncation. One call per message: a
keep-alive connection is several calls, one per send that starts a request.
"""
from __future__ import annotations

from dataclasses import dataclass

import h11

_METHODS = (b"GET ", b"POST ", b"PUT ", b"HEAD ", b"DELETE ", b"PATCH ", b"OPTIONS ", b"CONNECT ", b"TRACE ")
_PROBE = h11.Request(method="GET", target="/", headers=[("Host", "probe")])


@dataclass(frozen=True, slots=True)
class HttpRequest:
    method: str
    target: str
    host: str | None
    version: str


@dataclass(frozen=True, slots=True)
class HttpResponse:
    status: int
    reason: str
    version: str


def _closed_head(data: bytes) -> bytes | None:
    end = data.find(b"\r\n\r\n")
    if end >= 0:
        return data[: end + 4]
    last = data.rfind(b"\r\n")
    if last < 0:
        return None  # not even the first line is complete
    return data[: last + 2] + b"\r\n"


def looks_like_request(data: bytes | None) -> bool:
    return bool(data) and data.startswith(_METHODS)


def looks_like_response(data: bytes | None) -> bool:
    return bool(data) and data.startswith(b"HTTP/1.")


_NO_HOST = b"svctrace.invalid"


def _h11_request(head: bytes):
    conn = h11.Connection(our_role=h11.SERVER)
    try:
        conn.receive_data(head)
        return conn.next_event()
    except h11.RemoteProtocolError:
        return None


def parse_request(data: bytes) -> HttpRequest | None:
    head = _closed_head(data) if looks_like_request(data) else None
    if head is None:
        return None
    ev = _h11_request(head)
    if ev is None:
        # HTTP/1.1 requires Host; a prefix cut before it still has a valid request line.
        ev = _h11_request(head[:-2] + b"Host: " + _NO_HOST + b"\r\n\r\n")
    if not isinstance(ev, h11.Request):
        return None
    host = next((v.decode("latin-1") for k, v in ev.headers if k == b"host" and v != _NO_HOST), None)
    return HttpRequest(ev.method.decode("ascii"), ev.target.decode("latin-1"), host, ev.http_version.decode())


def parse_response(data: bytes) -> HttpResponse | None:
    head = _closed_head(data) if looks_like_response(data) else None
    if head is None:
        return None
    conn = h11.Connection(our_role=h11.CLIENT)
    try:
        conn.send(_PROBE)
        conn.send(h11.EndOfMessage())
        conn.receive_data(head)
        ev = conn.next_event()
    except (h11.RemoteProtocolError, h11.LocalProtocolError):
        return None
    if not isinstance(ev, (h11.Response, h11.InformationalResponse)):
        return None
    return HttpResponse(ev.status_code, ev.reason.decode("latin-1"), ev.http_version.decode())
