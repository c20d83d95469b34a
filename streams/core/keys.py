"""Keys and deterministic ids.

Everything here is a pure function of its arguments with a stable hash
(blake2b / crc32), never Python's salted hash(): the in-process runner and the
Faust app, on any machine, route and name things identically.
"""
from __future__ import annotations

import hashlib
import zlib

_blake2b = hashlib.blake2b

UNSPECIFIED_IPS = frozenset({None, "", "0.0.0.0", "::", "::ffff:0.0.0.0"})


def endpoint_key(ip: str | None, port: int | None) -> str:
    """'ip:port' (IPv6 in brackets) — the client endpoint both ends of a connection share."""
    if ip and ":" in ip:
        return f"[{ip}]:{port}"
    return f"{ip}:{port}"


def flow_bucket(flow: str | None, partitions: int) -> str:
    """Stable bucket of a correlation key: 'b0007'. Its number is the svctrace.flows partition."""
    h = zlib.crc32((flow or "").encode("utf-8"))
    return f"b{h % partitions:04d}"


def bucket_partition(bucket: str) -> int:
    """The partition number a bucket key stands for ('b0007' -> 7)."""
    return int(bucket[1:])


def _digest(*parts) -> str:
    raw = "\x1f".join(map(str, parts)).encode("utf-8")
    return hashlib.blake2b(raw, digest_size=10).hexdigest()


_ID_HASH = _blake2b(digest_size=10)  # copied per id: no keyword parsing per call (half the cost)


def chain_id(anchor_node: str, anchor_n: int, client: str, index: int = 0) -> str:
    """A chain is named by the first event that anchors it (node, n), its client endpoint
    and the request's index on the connection (keep-alive: one chain per request)."""
    # _digest("chain", anchor_node, anchor_n, client, index), spelled out: one per chain
    h = _ID_HASH.copy()
    h.update(f"chain\x1f{anchor_node}\x1f{anchor_n}\x1f{client}\x1f{index}".encode("utf-8"))
    return "ch-" + h.hexdigest()


def alert_key(rule: str, labels: dict) -> str:
    """The alerts stage's key: rule + labels, canonical."""
    items = ",".join(f"{k}={labels[k] if labels[k] is not None else ''}" for k in sorted(labels))
    return f"{rule}|{items}"


def window_start(ts: int, window_ns: int) -> int:
    """Suppression windows are aligned to a fixed grid so every runner cuts them alike."""
    return ts - ts % window_ns if window_ns > 0 else ts


def alert_id(rule: str, labels: dict, window_start_ns: int) -> str:
    return "al-" + _digest("alert", alert_key(rule, labels), window_start_ns)


def murmur2(data: bytes) -> int:
    """Kafka's murmur2 of a record key (the Java client's Utils.murmur2, aiokafka.partitioner.murmur2): the hash
    its default partitioner places a keyed record by. Here, in the compiled core (keys.pxd: 32-bit C integers,
    the key's bytes read in place), it costs tens of ns per chain id instead of the microseconds of Python ints;
    svctrace.kafka.batches places the worker's output records with it. As Python (the masks do what C's 32-bit
    wrap-around does), the same values."""
    p = data
    length = len(data)
    m, mask, h = 0x5BD1E995, 0xFFFFFFFF, 0x9747B28C  # (compiled: C unsigned ints, the mask a no-op)
    h ^= length
    end = length & ~3
    i = 0
    while i < end:
        k = p[i] | (p[i + 1] << 8) | (p[i + 2] << 16) | (p[i + 3] << 24)
        k = (k * m) & mask
        k ^= k >> 24
        k = (k * m) & mask
        h = ((h * m) & mask) ^ k
        i += 4
    extra = length & 3
    if extra:
        if extra >= 3:
            h ^= p[end + 2] << 16
        if extra >= 2:
            h ^= p[end + 1] << 8
        h = ((h ^ p[end]) * m) & mask
    h ^= h >> 13
    h = (h * m) & mask
    return h ^ (h >> 15)


def murmur2_partitions(keys: list, partitions: int) -> list:
    """The partition Kafka's default partitioner gives each keyed record: (murmur2(key) & 0x7FFFFFFF) % partitions."""
    return [(murmur2(key) & 0x7FFFFFFF) % partitions for key in keys]
