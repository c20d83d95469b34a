"""HTTP/1.x heads from captured prefixes (h11)."""
from __future__ import annotations

from svctrace.streams.core.http import HttpRequest, parse_request, parse_response

SEED_REQUEST = (b"GET / HTTP/1.1\r\nUser-Agent: curl/7.35.0\r\nHost: my-nginx.default.cluster.local:8080\r\n"
                b"Accept: */*\r\n\r\n")


def test_seed_request_and_every_truncation_of_it():
    assert parse_request(SEED_REQUEST) == HttpRequest("GET", "/", "my-nginx.default.cluster.local:8080", "1.1")
    first_line_end = SEED_REQUEST.index(b"\r\n") + 2
    host_end = SEED_REQUEST.index(b"8080\r\n") + 6
    for cut in range(1, len(SEED_REQUEST) + 1):
        req = parse_request(SEED_REQUEST[:cut])
        if cut < first_line_end:
            assert req is None
        else:
            assert req.method == "GET" and req.target == "/"
            # llhttp confirms a header line when the next one starts (obsolete line folding)
            assert (req.host is not None) == (cut > host_end)


def test_responses():
    r = parse_response(b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nX-Etcd-Index: 166\r\nDate: Thu, 05 No")
    assert (r.status, r.reason) == (200, "OK")
    assert parse_response(b"HTTP/1.0 503 Service Unavailable\r\n\r\n").status == 503
    assert parse_response(b"HTTP/1.1 2") is None
    assert parse_response(b"SSH-2.0-OpenSSH") is None and parse_request(b"\x16\x03\x01\x02") is None


def test_keepalive_requests_parse_one_per_send():
    second = SEED_REQUEST.replace(b"GET / ", b"POST /api/v1/items?x=1 ")
    reqs = [parse_request(SEED_REQUEST), parse_request(second)]
    assert [(r.method, r.target) for r in reqs] == [("GET", "/"), ("POST", "/api/v1/items?x=1")]
