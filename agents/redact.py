"""Credential redaction of captured payloads: a pure function, applied before publishing.

What is removed (values only; names, schemes and lengths of everything else stay,
so a redacted HTTP request still reads as one and identical input gives
identical output on every node):
- the values of credential-carrying headers (Authorization, Proxy-Authorization,
  Cookie, Set-Cookie, API-key / token headers), keeping an auth scheme word;
- bearer tokens anywhere in the payload;
- credential parameters in query strings and form bodies (token, api_key, password, ...).
A header cut by the capture's snaplen is redacted up to the cut.
"""
from __future__ import annotations

import re

MASK = b"[REDACTED]"

_HEADER_NAMES = (
    rb"authorization|proxy-authorization|cookie|set-cookie|x-api-key|api-key|apikey|x-auth-token|"
    rb"x-access-token|x-csrf-token|x-xsrf-token|x-amz-security-token|private-token|x-goog-api-key|x-vault-token"
)
_HEADER = re.compile(rb"(?im)^(" + _HEADER_NAMES + rb")([ \t]*:[ \t]*)((?:basic|bearer|digest|negotiate|token|aws4-hmac-sha256)[ \t]+)?([^\r\n]*)")
_BEARER = re.compile(rb"(?i)\b(bearer[ \t]+)([A-Za-z0-9\-._~+/]+=*)")
_PARAM_NAMES = (
    rb"access_token|refresh_token|id_token|token|api_key|apikey|api-key|key|password|passwd|pwd|secret|"
    rb"client_secret|auth|sig|signature|x-amz-signature|x-amz-credential|x-amz-security-token|session|sessionid"
)
_PARAM = re.compile(rb"(?im)((?:[?&;]|^)(?:" + _PARAM_NAMES + rb")=)([^&\s#\"']+)")


# Cheap pre-check on the lower-cased payload: most payloads (DNS, binary protocols,
# plain requests) contain none of these words, and one regex scan of a short
# lower-cased copy is measurably cheaper than ten substring scans.
_MAYBE = re.compile(rb"auth|cookie|token|key|pass|secret|sig|session|pwd|bearer")


def _maybe(data: bytes) -> bool:
    return _MAYBE.search(data.lower()) is not None


def _header(m: re.Match) -> bytes:
    return m.group(1) + m.group(2) + (m.group(3) or b"") + (MASK if m.group(4) else b"")


def redact(data: bytes, limit: int | None = None) -> tuple[bytes, bool]:
    """(payload bounded to `limit` bytes with credentials masked, whether anything was masked)."""
    if limit is not None and len(data) > limit:
        data = data[:limit]
    if not data or not _maybe(data):
        return data, False
    out = _HEADER.sub(_header, data)
    out = _BEARER.sub(lambda m: m.group(1) + MASK, out)
    out = _PARAM.sub(lambda m: m.group(1) + MASK, out)
    return out, out != data
