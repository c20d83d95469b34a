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


def test_a_response_is_parsed_by_its_status_line_whatever_came_before():
    # parse_response keeps the last status line it parsed: data starting with it takes its result. Every answer
    # must be the one its own status line gives, in any order (the line ends at the first CRLF; a prefix of a
    # line, with no CRLF, is no status line to match data by).
    ok = b"HTTP/1.1 200 OK\r\n"
    datas = [ok + b"Server: nginx\r\n\r\n", ok + b"Date: x\r\n", b"HTTP/1.1 200 OK", b"HTTP/1.1 200 OKAY\r\n\r\n",
             b"HTTP/1.1 200 OK\r\r\n", b"HTTP/1.1 503 Service Unavailable\r\n\r\n", b"HTTP/1.1 2", b"HTTP/1.1 200",
             b"HTTP/1.1 101 Switching Protocols\r\n", ok, b"HTTP/1.1 200 OK\r\nHTTP/1.1 404 Not Found\r\n",
             b"HTTP/1.0 404 Not Found\r\n\r\n", b"HTTP/1.1 404 Not Found\r\n\r\n", b"\r\nHTTP/1.1 200 OK\r\n"]
    expected = {}
    for data in datas:  # each alone: its status line's result (cleared memo or not, the same)
        end = data.find(b"\r\n")
        expected[data] = parse_response(data[: end + 2] if end >= 0 else data)
    assert expected[ok + b"Date: x\r\n"].status == 200 and expected[b"HTTP/1.1 200 OKAY\r\n\r\n"].reason == "OKAY"
    assert expected[b"HTTP/1.1 200 OK"] is None and expected[b"\r\nHTTP/1.1 200 OK\r\n"] is None
    for first in datas:
        for data in datas:
            parse_response(first)
            assert parse_response(data) == expected[data], (first, data)
