"""Bad input: one exception type (CaptureError) naming file, offset and block type;
--skip-corrupt resumes at the next valid block and reports what it skipped; no
hang, bounded memory; a time-bounded fuzz test over mutated real captures."""
from __future__ import annotations

import gzip
import io
import signal
import struct
import subprocess
import sys
import tracemalloc

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from svctrace.agents.scap import CaptureError, open_capture
from svctrace.agents.scap import blocks as B

SMALL_CAPTURES = ("libs__curl_google.scap", "libs__single_ipv6_conn.scap")  # v1 and v2 blocks


def _raw(captures, name) -> bytes:
    data = (captures / name).read_bytes()
    return gzip.decompress(data) if data[:2] == b"\x1f\x8b" else data


def _blocks(data: bytes):
    """(offset, type, length) of every block of a valid capture."""
    out, off = [], 0
    while off < len(data):
        btype, blen = struct.unpack_from("<II", data, off)
        out.append((off, btype, blen))
        off += blen
    return out


def _read(path, **kw):
    r = open_capture(path, **kw)
    return r, list(r), list(open_capture(path, **kw).raw_events())


def _error(path, **kw) -> CaptureError:
    with pytest.raises(CaptureError) as e:
        list(open_capture(path, **kw))
    err = e.value
    assert str(path) in str(err) and f"byte offset {err.offset}" in str(err) and err.block_type in str(err)
    return err


@pytest.fixture(scope="module")
def sample(captures, tmp_path_factory):
    data = _raw(captures, "libs__curl_google.scap")
    return data, _blocks(data), tmp_path_factory.mktemp("corrupt")


def _write(d, name, data):
    p = d / name
    p.write_bytes(data)
    return p


def test_empty_file(tmp_path):
    err = _error(_write(tmp_path, "empty.scap", b""))
    assert (err.offset, err.block_type) == (0, "SHB") and "empty" in err.reason


def test_wrong_magic(tmp_path):
    err = _error(_write(tmp_path, "text.scap", b"this is not a capture at all\n" * 10))
    assert err.offset == 0 and "wrong magic" in err.reason


def test_byte_swapped_capture(tmp_path, sample):
    data, blocks, _ = sample
    off, btype, blen = blocks[0]
    swapped = struct.pack(">IIIHHq", btype, blen, B.SHB_MAGIC, 1, 0, -1) + data[24:blen - 4] + struct.pack(">I", blen)
    err = _error(_write(tmp_path, "be.scap", swapped + data[blen:]))
    assert err.offset == 0 and "byte-swapped" in err.reason
    # a byte-swapped file cannot be resynchronized: still an error with --skip-corrupt
    _error(tmp_path / "be.scap", skip_corrupt=True)


@pytest.mark.parametrize("where", ["header", "body", "trailer"])
def test_truncated(sample, where):
    data, blocks, d = sample
    off, btype, blen = blocks[len(blocks) // 2]
    cut = {"header": off + 5, "body": off + blen // 2, "trailer": off + blen - 2}[where]
    err = _error(_write(d, f"trunc-{where}.scap", data[:cut]))
    assert err.offset == off and err.block_type == B.block_name(btype)
    r = open_capture(d / f"trunc-{where}.scap", skip_corrupt=True)
    list(r)
    assert r.stats.skipped_bytes == cut - off and r.stats.event_blocks == sum(
        1 for b in blocks if b[0] < off and b[1] in B.EVENT_BLOCKS)


def test_truncated_gzip(sample):
    data, _, d = sample
    err = _error(_write(d, "trunc.scap.gz", gzip.compress(data)[:-100]))
    assert err.block_type == "gzip" and err.at_the_end
    assert str(err).endswith(f"(block gzip at byte offset {err.offset} of the decompressed stream)")
    r = open_capture(d / "trunc.scap.gz", skip_corrupt=True)
    list(r)
    assert r.stats.event_blocks > 0 and r.stats.errors and r.stats.skipped_bytes > 0


def test_absurd_length(sample):
    data, blocks, d = sample
    off, btype, blen = blocks[-10]
    bad = data[:off + 4] + struct.pack("<I", 0xFFFFFFF0) + data[off + 8:]
    tracemalloc.start()
    err = _error(_write(d, "absurd.scap", bad))
    r = open_capture(d / "absurd.scap", skip_corrupt=True)
    list(r)
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    assert err.offset == off and "absurd block length" in err.reason
    assert r.stats.skipped_bytes == blen and peak < 16 << 20  # the length is never allocated


def test_unknown_block_type_and_skip(sample):
    data, blocks, d = sample
    off = blocks[len(blocks) // 2][0]
    alien = struct.pack("<II", 0x12345678, 20) + b"\xaa" * 8 + struct.pack("<I", 20)
    path = _write(d, "alien.scap", data[:off] + alien + data[off:])
    err = _error(path)
    assert err.offset == off and err.block_type == "0x12345678" and "unknown block type" in err.reason
    r, events, _ = _read(path, skip_corrupt=True)
    assert r.stats.skipped_bytes == 20
    assert events == list(open_capture(_write(d, "orig.scap", data)))


def test_bit_flip_in_block_length_is_skipped(sample):
    data, blocks, d = sample
    ev_blocks = [b for b in blocks if b[1] in B.EVENT_BLOCKS]
    off, btype, blen = ev_blocks[len(ev_blocks) // 2]
    flipped = bytearray(data)
    flipped[off + 4] ^= 0x04  # block length +/- 4: trailer no longer matches
    path = _write(d, "flip-len.scap", bytes(flipped))
    err = _error(path)
    assert err.offset == off and "trailer" in err.reason or "length" in err.reason
    r, events, raw = _read(path, skip_corrupt=True)
    original = list(open_capture(_write(d, "orig.scap", data)).raw_events())
    assert len(raw) == len(original) - 1 and r.stats.skipped_bytes == blen
    assert r.stats.skipped_blocks == 0 and len(r.stats.errors) == 1


def test_inconsistent_event_lengths(sample):
    data, blocks, d = sample
    ev = next(b for b in blocks if b[1] in B.EVENT_BLOCKS and b[2] > 40)
    off, btype, blen = ev
    bad = bytearray(data)
    struct.pack_into("<I", bad, off + 8 + 2 + 16, blen * 4)  # the event's own len field
    path = _write(d, "evlen.scap", bytes(bad))
    err = _error(path)
    assert err.offset == off and err.block_type == B.block_name(btype)
    r, _, raw = _read(path, skip_corrupt=True)
    assert r.stats.skipped_blocks == 1 and r.stats.skipped_bytes == blen


def test_garbage_in_the_middle_resyncs(sample):
    data, blocks, d = sample
    off = blocks[len(blocks) // 3][0]
    junk = bytes(range(256)) * 40
    path = _write(d, "junk.scap", data[:off] + junk + data[off:])
    _error(path)
    r, events, raw = _read(path, skip_corrupt=True)
    original = list(open_capture(_write(d, "orig.scap", data)).raw_events())
    assert len(raw) == len(original) and r.stats.skipped_bytes == len(junk)


def test_new_section_in_the_middle(sample):
    """Concatenated captures: the second SHB starts a new section (state reset, like libsinsp)."""
    data, _, d = sample
    path = _write(d, "twice.scap", data + data)
    r = open_capture(path)
    events = list(r)
    once = list(open_capture(_write(d, "orig.scap", data)))
    assert r.stats.sections == 2 and len(events) == 2 * len(once)
    assert [e.with_(n=0) for e in events[len(once):]] == [e.with_(n=0) for e in once]


def test_cli_reports_error_and_skipped_bytes(sample):
    data, blocks, d = sample
    off = blocks[len(blocks) // 2][0]
    path = _write(d, "cli.scap", data[:off] + b"\x01" * 64 + data[off:])
    cmd = [sys.executable, "-m", "svctrace", "read", str(path)]
    strict = subprocess.run(cmd, capture_output=True, text=True, timeout=60)
    assert strict.returncode == 1 and f"byte offset {off}" in strict.stderr and "cli.scap" in strict.stderr
    skip = subprocess.run(cmd + ["--skip-corrupt", "--json"], capture_output=True, text=True, timeout=60)
    assert skip.returncode == 0 and "skipped 64 bytes" in skip.stderr and skip.stdout.count("\n") == 20


# -- fuzzing -------------------------------------------------------------------------

@st.composite
def mutations(draw):
    name = draw(st.sampled_from(SMALL_CAPTURES))
    ops = draw(st.lists(st.tuples(st.sampled_from(["flip", "byte", "cut", "insert", "delete", "u32"]),
                                  st.floats(0, 1), st.integers(0, 2**32 - 1)), min_size=1, max_size=6))
    compress = draw(st.booleans())
    return name, ops, compress


def _mutate(data: bytes, ops) -> bytes:
    b = bytearray(data)
    for op, where, value in ops:
        i = int(where * max(len(b) - 1, 0))
        if not b:
            break
        if op == "flip":
            b[i] ^= 1 << (value % 8)
        elif op == "byte":
            b[i] = value & 0xFF
        elif op == "cut":
            del b[i:]
        elif op == "insert":
            b[i:i] = value.to_bytes(4, "little") * (1 + value % 7)
        elif op == "delete":
            del b[i:i + 1 + value % 64]
        elif op == "u32" and i + 4 <= len(b):
            b[i & ~3:(i & ~3) + 4] = value.to_bytes(4, "little")
    return bytes(b)


@pytest.fixture(scope="module")
def originals(captures):
    return {n: _raw(captures, n) for n in SMALL_CAPTURES}


# Bounded in time: a fixed number of examples, and an alarm per example (a hang fails the
# test); no per-example deadline, which would be flaky on a loaded 2-core CI machine.
@settings(max_examples=120, deadline=None, derandomize=True,
          suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
@given(m=mutations())
def test_fuzz_mutated_captures_only_raise_capture_error(originals, m):
    name, ops, compress = m
    data = _mutate(originals[name], ops)
    if compress:
        data = gzip.compress(data, 1)
        data = _mutate(data, ops[:1]) if ops[0][0] in ("cut", "flip") else data
    def hung(*_):
        raise TimeoutError(f"reader hung on mutation {ops}")

    previous = signal.signal(signal.SIGALRM, hung)
    signal.setitimer(signal.ITIMER_REAL, 30)  # a hang fails the test instead of blocking the suite
    try:
        _read_both_ways(data)
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)


def _read_both_ways(data: bytes) -> None:
    for skip in (False, True):
        try:
            r = open_capture(io.BytesIO(data), skip_corrupt=skip)
            for _ in r:
                pass
            for _ in open_capture(io.BytesIO(data), skip_corrupt=skip).raw_events():
                pass
        except CaptureError as e:
            assert e.file and e.offset >= 0 and e.block_type
            if skip:  # with --skip-corrupt only an unusable start of file is fatal
                assert e.offset == 0
