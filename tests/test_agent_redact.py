"""Credential redaction is a pure function: these are its rules."""
from __future__ import annotations

import pytest

from svctrace.agents.redact import MASK, redact

SECRETS = [b"eyJhbGciOiJIUzI1NiJ9.payload.sig", b"s3cr3t-cookie", b"AKIAEXAMPLE", b"hunter2", b"tok123"]


@pytest.mark.parametrize("payload,kept", [
    (b"GET /a HTTP/1.1\r\nHost: h\r\nAuthorization: Bearer eyJhbGciOiJIUzI1NiJ9.payload.sig\r\n\r\n",
     b"Authorization: Bearer " + MASK),
    (b"GET /a HTTP/1.1\r\nproxy-authorization: Basic QUtJQUVYQU1QTEU=\r\n\r\n", b"proxy-authorization: Basic " + MASK),
    (b"GET / HTTP/1.1\r\nCookie: sid=s3cr3t-cookie; theme=dark\r\n\r\n", b"Cookie: " + MASK),
    (b"HTTP/1.1 200 OK\r\nSet-Cookie: sid=s3cr3t-cookie; HttpOnly\r\n\r\n", b"Set-Cookie: " + MASK),
    (b"GET / HTTP/1.1\r\nX-Api-Key: AKIAEXAMPLE\r\n\r\n", b"X-Api-Key: " + MASK),
    (b"GET /v1/x?user=bob&access_token=tok123&page=2 HTTP/1.1\r\n\r\n", b"access_token=" + MASK + b"&page=2"),
    (b"POST /login HTTP/1.1\r\n\r\nuser=bob&password=hunter2", b"password=" + MASK),
    (b'{"headers": {"auth": "Bearer tok123"}}', b"Bearer " + MASK),
])
def test_credentials_are_masked(payload, kept):
    out, changed = redact(payload)
    assert changed
    assert kept in out
    assert not any(s in out for s in SECRETS)


def test_header_cut_by_the_snaplen_is_masked_to_the_cut():
    out, changed = redact(b"GET / HTTP/1.1\r\nAuthorization: Basic QUtJQUVY")
    assert changed and out.endswith(b"Authorization: Basic " + MASK)


def test_bounded_prefix_and_untouched_payloads():
    dns = bytes.fromhex("12340100000100000000000003777777076578616d706c6503636f6d0000010001")
    assert redact(dns) == (dns, False)
    plain = b"GET /keyboard?monkey=1 HTTP/1.1\r\nHost: example\r\nAccept: */*\r\n\r\n"
    assert redact(plain) == (plain, False)
    out, changed = redact(b"x" * 1000, limit=256)
    assert (len(out), changed) == (256, False)


def test_deterministic_so_both_ends_of_a_proxy_hop_still_match():
    p = b"GET /?token=abc HTTP/1.1\r\nCookie: a=b\r\n\r\n"
    assert redact(p) == redact(p)
