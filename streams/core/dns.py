"""DNS message decoding with dnspython, robust to snaplen-truncated prefixes.

`parse_dns(data, tcp)` returns a small immutable `DnsMessage` or None when the
bytes are not DNS. Over TCP a message carries a two-byte length prefix. When the
captured prefix cuts the message, the header and question are still decoded
(struct + dns.name) and `truncated` is set; answers are then unknown.

`tcp_dns_messages(data, size)` splits one TCP syscall's payload into DNS messages the
way resolvers really write and read them (glibc, seen live: one writev of the A and
AAAA queries, each length-prefixed; then a read of the 2-byte length and a read of
the bare message).
"""
from __future__ import annotations

import struct
from dataclasses import dataclass

import dns.exception
import dns.message
import dns.name
import dns.rcode
import dns.rdatatype

CLUSTER_DOMAIN = "cluster.local."


@dataclass(frozen=True, slots=True)
class DnsMessage:
    id: int
    is_response: bool
    qname: str  # absolute, lower case, with the trailing dot
    qtype: str  # "A", "AAAA", ...
    rcode: str  # "NOERROR", "NXDOMAIN", ...
    answers: tuple[str, ...] = ()  # A/AAAA addresses, in answer order
    cnames: tuple[str, ...] = ()  # CNAME chain targets, in order
    ttl: int | None = None  # smallest TTL of the answer records
    truncated: bool = False  # decoded from a cut prefix: answers unknown


def _header_only(wire: bytes) -> DnsMessage | None:
    if len(wire) < 12:
        return None
    qid, flags, qdcount = struct.unpack_from("!HHH", wire, 0)
    if qdcount != 1:
        return None
    try:
        name, used = dns.name.from_wire(wire, 12)
        qtype = dns.rdatatype.to_text(struct.unpack_from("!H", wire, 12 + used)[0])
    except (dns.exception.DNSException, struct.error, ValueError):
        return None
    return DnsMessage(qid, bool(flags & 0x8000), name.to_text().lower(), qtype,
                      dns.rcode.to_text(flags & 0xF), truncated=True)


# Memo of decoded messages keyed by the wire bytes after the id: the same question
# (and usually the same answer) recurs constantly, and dnspython costs ~100 us a
# message. A pure function's memo; bounded by clearing.
_MEMO: dict[bytes, DnsMessage | None] = {}
_MEMO_MAX = 4096


def tcp_dns_messages(data: bytes | None, size: int) -> list[bytes]:
    """The DNS messages in `data`, the captured prefix of a TCP send/recv of `size` bytes:
    length-prefixed messages that tile the whole syscall exactly, or else one bare message
    (its length was read by an earlier syscall; a bare message reads as prefixed only if its
    id happens to equal its length). A 2-byte read (a length alone) holds none."""
    if not data or size < 12:
        return []
    out, i, n = [], 0, len(data)
    while i + 2 <= n and i < size:
        length = (data[i] << 8) | data[i + 1]
        if length < 12:
            break
        out.append(data[i + 2:i + 2 + length])
        i += 2 + length
    if i == size:
        return [m for m in out if len(m) >= 12]
    return [data] if n == size else []


def parse_dns(data: bytes | None, tcp: bool = False) -> DnsMessage | None:
    msg, qid = parse_dns_with_id(data, tcp)
    if msg is None or msg.id == qid:
        return msg
    return DnsMessage(qid, msg.is_response, msg.qname, msg.qtype, msg.rcode, msg.answers, msg.cnames, msg.ttl,
                      msg.truncated)


def parse_dns_with_id(data: bytes | None, tcp: bool = False) -> tuple[DnsMessage | None, int]:
    """(message, id): the memoized message may carry another message's id (all else equal),
    `id` is this one's. Spares building a DnsMessage per message (ids differ every time)."""
    if not data:
        return None, 0
    wire = data
    if tcp:
        if len(data) < 14:
            return None, 0
        length = struct.unpack_from("!H", data, 0)[0]
        wire = data[2:2 + length]
    if len(wire) < 12:
        return None, 0
    key = wire[2:]
    memo = _MEMO
    hit = memo.get(key, False)
    if hit is False:
        hit = _decode(wire)
        if len(memo) >= _MEMO_MAX:
            memo.clear()
        memo[key] = hit
    return hit, (wire[0] << 8) | wire[1]


def _decode(wire: bytes) -> DnsMessage | None:
    try:
        msg = dns.message.from_wire(wire, ignore_trailing=True)
    except dns.message.ShortHeader:
        return None
    except (dns.exception.DNSException, ValueError, struct.error):
        return _header_only(wire)
    if len(msg.question) != 1:
        return None
    q = msg.question[0]
    answers, cnames, ttl = [], [], None
    for rrset in msg.answer:
        ttl = rrset.ttl if ttl is None else min(ttl, rrset.ttl)
        if rrset.rdtype in (dns.rdatatype.A, dns.rdatatype.AAAA):
            answers.extend(r.address for r in rrset)
        elif rrset.rdtype == dns.rdatatype.CNAME:
            cnames.extend(r.target.to_text().lower() for r in rrset)
    return DnsMessage(msg.id, bool(msg.flags & 0x8000), q.name.to_text().lower(),
                      dns.rdatatype.to_text(q.rdtype), dns.rcode.to_text(msg.rcode()),
                      tuple(answers), tuple(cnames), ttl)


def in_cluster_domain(qname: str, domain: str = CLUSTER_DOMAIN) -> bool:
    return qname.endswith("." + domain) or qname == domain


def service_of_name(qname: str, domain: str = CLUSTER_DOMAIN) -> tuple[str | None, str | None]:
    """(namespace, service) a cluster name refers to: svc.ns.svc.<domain> (and the seed's
    older SkyDNS form svc.ns.<domain>)."""
    if not in_cluster_domain(qname, domain):
        return None, None
    labels = qname[: -len(domain) - 1].split(".")
    if len(labels) >= 3 and labels[-1] == "svc":
        return labels[-2], labels[-3]
    if len(labels) == 2:
        return labels[1], labels[0]
    return None, None
