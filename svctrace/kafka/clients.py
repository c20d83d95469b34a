"""Producer and consumer factories with the project's settings.

Producers: acks=all + idempotence, so a broker restart or a retried request
neither loses nor duplicates a batch; zstd compression (our JSON batches of many
events compress well; aiokafka's lz4 is LZ4-HC at level 9, measured here at
~3.3 us per 700-byte event against ~0.7 us for zstd), at level 3 unless
set_zstd_level sets another (the worker's --zstd-level: 1 by default) (docs/topics.md, Compression), with a compression context
kept per thread (reuse_zstd_contexts); metadata kept for every
topic they send to (track_every_topic). Consumers start at the earliest offset
of a new group and commit explicitly.
"""
from __future__ import annotations

import functools
import os
import threading
from collections.abc import Mapping
from typing import Any

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer

COMPRESSION = "zstd"
ZSTD_LEVEL = 3  # aiokafka's (it has no setting for it), and the broker's default for zstd (KIP-390)
# Records carry many events; keep each request well under the broker's default
# message.max.bytes (1 MiB) after compression.
MAX_REQUEST_SIZE = 1_048_576


def connection_settings(env: Mapping[str, str] | None = None) -> dict[str, Any]:
    """TLS and SASL settings from the environment (the Helm chart sets these from
    its ConfigMap and Secrets); empty for a plaintext broker."""
    env = os.environ if env is None else env
    settings: dict[str, Any] = {}
    protocol = env.get("SVCTRACE_KAFKA_SECURITY_PROTOCOL", "PLAINTEXT").upper()
    if protocol != "PLAINTEXT":
        settings["security_protocol"] = protocol
    if protocol in ("SSL", "SASL_SSL"):
        from aiokafka.helpers import create_ssl_context

        settings["ssl_context"] = create_ssl_context(
            cafile=env.get("SVCTRACE_KAFKA_SSL_CAFILE") or None,
            certfile=env.get("SVCTRACE_KAFKA_SSL_CERTFILE") or None,
            keyfile=env.get("SVCTRACE_KAFKA_SSL_KEYFILE") or None,
        )
    if protocol.startswith("SASL_"):
        settings["sasl_mechanism"] = env.get("SVCTRACE_KAFKA_SASL_MECHANISM", "PLAIN")
        settings["sasl_plain_username"] = env.get("SVCTRACE_KAFKA_SASL_USERNAME")
        settings["sasl_plain_password"] = env.get("SVCTRACE_KAFKA_SASL_PASSWORD")
    return settings


def producer_settings(**overrides: Any) -> dict[str, Any]:
    settings: dict[str, Any] = {
        "acks": "all",
        "enable_idempotence": True,
        "compression_type": COMPRESSION,
        "linger_ms": 5,
        "max_batch_size": 512 * 1024,
        "max_request_size": MAX_REQUEST_SIZE,
        "request_timeout_ms": 30000,
    }
    settings.update(overrides)
    return settings


def _record_builders() -> list:
    """aiokafka's record batch builder modules (Python, and C when built): each calls its own zstd_encode."""
    from aiokafka.record import default_records

    try:
        from aiokafka.record._crecords import default_records as c_records
    except ImportError:  # aiokafka without its extensions
        return [default_records]
    return [default_records, c_records]


def set_zstd_level(level: int) -> None:
    """Compress this process's zstd producer batches at `level` (every producer of the process).
    aiokafka always compresses at 3 and has no setting: this sets the codec function its record
    batch builders (C and Python) call, around the one found there first."""
    for module in _record_builders():
        encode = module.__dict__.setdefault("_svctrace_zstd_encode", module.zstd_encode)
        module.zstd_encode = encode if level == ZSTD_LEVEL else functools.partial(encode, level=level)


_contexts = threading.local()  # this thread's zstandard compressors, by level
_reusing = False  # reuse_zstd_contexts() was called


def zstd_encode_reusing(payload, level: int | None = None) -> bytes:
    """aiokafka's zstd_encode (the same frame: content size, no checksum; the same bytes here) with one
    compression context per thread and level, kept. aiokafka's, cramjam.zstd.compress, makes a new one
    per call: ~40 us for a batch of a few hundred bytes (tables allocated and cleared), most of the cost
    of the small batches a live worker sends (a stitch advance's chains for one partition, a progress
    record); with a kept context ~9 us. Large batches cost the same either way (the bytes dominate)."""
    level = ZSTD_LEVEL if level is None else level
    compressors = _contexts.__dict__
    compressor = compressors.get(level)
    if compressor is None:
        import zstandard

        compressor = compressors[level] = zstandard.ZstdCompressor(level=level)
    return compressor.compress(payload)


def reuse_zstd_contexts() -> None:
    """Compress this process's zstd producer batches with zstd_encode_reusing (every producer of the
    process), where the zstandard module is there; set_zstd_level then sets the level of that one.
    Once per process: a later call leaves the codec functions as they are (e.g. wrapped by a profiler)."""
    global _reusing
    if _reusing:
        return
    _reusing = True
    try:
        import zstandard  # noqa: F401
        from aiokafka import codec
    except ImportError:  # no zstandard: aiokafka's own codec
        return
    for module in _record_builders():
        if "_svctrace_zstd_encode" in module.__dict__:  # set_zstd_level came first: the level it set, kept
            level = getattr(module.zstd_encode, "keywords", {}).get("level", ZSTD_LEVEL)
            module._svctrace_zstd_encode = zstd_encode_reusing
            module.zstd_encode = zstd_encode_reusing if level == ZSTD_LEVEL else functools.partial(
                zstd_encode_reusing, level=level)
        elif module.zstd_encode is codec.zstd_encode:  # (not replaced already, e.g. by a profiler)
            module.zstd_encode = zstd_encode_reusing


_dcontexts = threading.local()  # this thread's zstandard decompressor
# A fetched batch's decompressed size is checked against this before the decompressor allocates it
# (the frame header says it): more than any record batch the broker accepts (32 MiB, the changelogs').
MAX_DECOMPRESSED = 256 * 1024 * 1024


def zstd_decode_reusing(data) -> bytes:
    """A fetched zstd record batch's records, decompressed with one decompression context per thread,
    kept, into one bytes object of the size the frame header gives (svctrace's producers and aiokafka
    write it). cramjam.zstd.decompress, aiokafka's codec, makes a new context per call and grows its
    output as it goes: offline on the bench's syscall records (one 0.5 MB record per batch) 110 us per
    batch against 83 here, on 3 KB batches (occurrences, progress records) 17 us against 3.1.
    A batch whose header gives no size (a streaming writer's frame, e.g. the Java client's), more
    than one frame or a size past MAX_DECOMPRESSED is read by cramjam as before."""
    decompressor = _dcontexts.__dict__.get("d")
    if decompressor is None:
        import zstandard

        decompressor = _dcontexts.d = zstandard.ZstdDecompressor()
        _dcontexts.error = zstandard.ZstdError
        _dcontexts.size = zstandard.frame_content_size
    try:
        if 0 <= _dcontexts.size(data) <= MAX_DECOMPRESSED:
            return decompressor.decompress(data, allow_extra_data=False)
    except _dcontexts.error:  # no size in the header, more than one frame, or not zstd: cramjam says which
        pass
    import cramjam

    return cramjam.zstd.decompress(data)


def read_fetched_zstd_in_place() -> None:
    """aiokafka's zstd_decode returns bytes(cramjam.zstd.decompress(data)): a new decompression context
    per batch, and a copy of each fetched batch's records after decompression (a syscalls record is
    ~0.5 MB), made in the consumer thread, of a buffer nothing else holds. Its C record reader only
    takes a buffer of what the codec returns (and copies each record's key and value out of it): hand
    it zstd_decode_reusing's bytes (kept context, no copy), or cramjam's own buffer where the zstandard
    module is missing. Process-wide, for the C reader only (the pure-Python one,
    AIOKAFKA_NO_EXTENSIONS, copies into a bytearray anyway)."""
    try:
        import cramjam
        from aiokafka import codec
        from aiokafka.record._crecords import default_records
    except ImportError:  # no cramjam (no zstd at all) or no C extensions: nothing to spare
        return
    if default_records.zstd_decode is codec.zstd_decode:  # (not replaced already, e.g. by a profiler)
        try:
            import zstandard  # noqa: F401
        except ImportError:
            default_records.zstd_decode = cramjam.zstd.decompress
        else:
            default_records.zstd_decode = zstd_decode_reusing


# glibc malloc's settings for a worker (keep_freed_memory): blocks up to this size come from its heaps, not
# from a mapping of their own, and this much free memory at a heap's top stays mapped instead of being
# returned to the system.
MALLOC_MMAP_THRESHOLD = 32 * 1024 * 1024  # glibc's largest on 64-bit (HEAP_MAX_SIZE / 2)
MALLOC_TRIM_THRESHOLD = 128 * 1024 * 1024
_M_TRIM_THRESHOLD, _M_MMAP_THRESHOLD = -1, -3  # mallopt's parameters (malloc.h)


def keep_freed_memory(mmap_threshold: int = MALLOC_MMAP_THRESHOLD, trim_threshold: int = MALLOC_TRIM_THRESHOLD) -> bool:
    """Have this process's malloc keep the memory of freed large blocks (fetched records) for the next ones,
    instead of giving it back to the system and faulting it in again, zeroed, page by page. Returns whether
    the C library took both settings (glibc; elsewhere, e.g. musl, nothing changes).

    Every fetched syscalls record is a new ~0.5 MB bytes object (aiokafka's C reader copies each record's
    value out of its decompressed batch, itself another), made in the consumer thread. glibc's defaults
    adapt its mmap threshold to such blocks but return free memory above ~1 MB at a heap's top: a worker
    that frees many at once (a fetch of many records handled, input released at a checkpoint) faults all
    of it in again for the next ones, ~130 page faults per record, each zeroing a page. Offline, aiokafka's
    unpacking of bench syscalls records (0.5 MB each, values freed once handled): 49 us per record at 5
    records per fetch, 223 us at 50 (a worker behind fetches many); with these settings 39 and 37 us,
    decompression 110-128 -> 104-110 us. Memory a worker frees stays mapped up to `trim_threshold` per heap
    (and within its peak: nothing more is allocated)."""
    import ctypes

    try:
        mallopt = ctypes.CDLL(None).mallopt
    except (OSError, AttributeError):
        return False
    mallopt.argtypes, mallopt.restype = [ctypes.c_int, ctypes.c_int], ctypes.c_int
    return bool(mallopt(_M_MMAP_THRESHOLD, mmap_threshold)) & bool(mallopt(_M_TRIM_THRESHOLD, trim_threshold))


def producer(bootstrap: str, **overrides: Any) -> AIOKafkaProducer:
    """An (unstarted) idempotent producer; `await p.start()` before use."""
    reuse_zstd_contexts()
    p = AIOKafkaProducer(bootstrap_servers=bootstrap, **(connection_settings() | producer_settings(**overrides)))
    track_every_topic(p.client)
    return p


def track_every_topic(client) -> None:
    """Make an aiokafka client keep metadata for every topic it produces to.

    aiokafka adds a topic to its tracked list only when the topic was missing from its
    metadata at the first send. Once anything is tracked, refreshes fetch only the tracked
    topics, and a topic first seen through a full refresh drops out: its queued batches
    wait for a leader forever and producer.flush() never returns (seen in the worker: its
    changelog and dead-letter topics; an agent whose stats topic appeared after its start
    would lose the syscalls topic the same way)."""
    wait_on_metadata = client._wait_on_metadata

    async def tracked_wait_on_metadata(topic):
        if topic not in client._topics:
            client.add_topic(topic)
        return await wait_on_metadata(topic)

    client._wait_on_metadata = tracked_wait_on_metadata


def consumer(bootstrap: str, *topics: str, group_id: str | None = None, **overrides: Any) -> AIOKafkaConsumer:
    """An (unstarted) consumer of `topics` reading committed data only."""
    settings: dict[str, Any] = {
        **connection_settings(),
        "group_id": group_id,
        "auto_offset_reset": "earliest",
        "enable_auto_commit": False,
        "isolation_level": "read_committed",
        "max_partition_fetch_bytes": 4 * 1024 * 1024,
    }
    settings.update(overrides)
    return AIOKafkaConsumer(*topics, bootstrap_servers=bootstrap, **settings)
