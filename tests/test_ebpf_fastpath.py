"""The native per-event loop (fastpath.c) writes the same batches as the Python path, byte for byte.

Same ring records (the kernel's ring layout, synthetic records as in test_ebpf_records) through
`Normalizer.encode_ring` + `Batcher.add` on one side and `NativeEncoder.drain` on the other, with
batch bounds small enough that batches close on both counts and bytes in the middle of drains. Both
record forms (`form`): the syscall-batch JSON (the native loop writes each event's JSON) and the
syscall-columns form (the native loop keeps the batch's rows and writes its columns at close, into
`NativeEncoder.columns_batcher`; the Python path's event JSON goes into a `Batcher(form="msgpack")`).
"""
from __future__ import annotations

import base64
import ctypes
import random
import struct

import orjson
import pytest

from svctrace.agents.agent.pipeline import MAX_BATCH_BYTES, Batcher, Counters, payload_encoder
from svctrace.agents.ebpf.fastpath import NativeColumns, NativeEncoder, load
from svctrace.agents.ebpf.records import F_BOUND, F_HAS_TUPLE, RINGBUF_BUSY, RINGBUF_DISCARD, Normalizer
from svctrace.schemas.models import decode_batch
from svctrace.schemas.syscall_columns import FIELDS, MSGPACK_MAP, record_document
from svctrace.schemas.validation import validate
from svctrace.streams.faust_app.wire import decode_syscall_batch

FORMS = ["json", "msgpack"]
from tests.test_ebpf_records import V4, record

SECRET = b"GET /?token=abc HTTP/1.1\r\nCookie: s=1\r\nAuthorization: Bearer xyz\r\n\r\n"


def traffic(count: int, seed: int) -> list[bytes]:
    """A mix like a node's: connections with requests and responses, UDP both ways, failures,
    accepts and closes, payloads of every length (past the snaplen too), some with credentials."""
    rng = random.Random(seed)
    recs = [record("connect", ret=-115, fd=3, addr=V4("10.96.0.10"), aport=80),
            record("accept4", ret=7, fd=4, flags=F_HAS_TUPLE | F_BOUND, addr=V4("10.0.0.9"), aport=51000)]
    sockets = [dict(fd=3), dict(fd=7, flags=F_HAS_TUPLE | F_BOUND), dict(fd=5, proto=17, laddr=bytes(16), lport=5353,
                                                                           raddr=bytes(16), rport=0),
               dict(fd=6, proto=17, comm=b'c"%s\\'), dict(fd=9, pid=200, tid=201, cg2=4000, cg1=0),
               dict(fd=8, proto=17, laddr=V4("10.0.0.2"), lport=53, raddr=V4("10.0.0.3"), rport=40000)]
    for i in range(count):
        sock = rng.choice(sockets)
        roll = rng.random()
        if roll < 0.03:
            recs.append(record("read", ret=-11, **sock))
        elif roll < 0.05:
            recs.append(record("close", **sock))
        elif roll < 0.06:
            recs.append(record("connect", ret=0, addr=V4("10.96.0.11"), aport=443, **sock))
        else:
            sc = rng.choice(["write", "read", "sendto", "recvfrom", "writev", "readv", "sendmsg", "recvmsg",
                             "sendmmsg", "recvmmsg"])
            data = SECRET if roll > 0.97 else bytes(rng.randrange(256) for _ in range(rng.choice([0, 1, 2, 3, 64, 300])))
            if sc in ("sendto", "recvfrom") and sock.get("proto") == 17 and "laddr" in sock:
                extra = dict(addr=V4("10.96.0.10"), aport=53)
            else:
                extra = {}
            recs.append(record(sc, ret=len(data) or rng.randrange(5), data=data, ts=1000 + i,
                               **{"tid": rng.choice([101, 102]), **sock, **extra}))
    return recs


def ring_of(recs: list[bytes], discard_every: int = 50) -> bytes:
    out = []
    for i, r in enumerate(recs):
        flag = RINGBUF_DISCARD if discard_every and i % discard_every == 7 else 0
        out.append(struct.pack("<II", len(r) | flag, 0) + r + bytes(-len(r) % 8))
    return b"".join(out)


def python_path(mem, pos, end, base, mask, counters, snaplen, offset=10**18, node="n", form="json",
                **bounds) -> tuple[list, Normalizer]:
    norm = Normalizer(node, offset)
    batcher = Batcher(node, "ebpf", form=form, **bounds)
    pay = payload_encoder(snaplen, counters)
    batches = []
    while pos < end:
        out: list = []
        pos, _done = norm.encode_ring(mem, pos, end, base, mask, 97, out, pay, pay.snaplen, pay.suspicious)
        batches += batcher.add(out, 0.0)
    return [b for b in batches + [batcher.flush()] if b is not None], norm


def native_path(mem, pos, end, base, mask, counters, snaplen, form="json", between=None,
                **bounds) -> tuple[list, Normalizer, NativeEncoder]:
    norm = Normalizer("n", 10**18)
    enc = NativeEncoder(norm, payload_encoder(snaplen, counters))
    batcher = Batcher("n", "ebpf", form=form, **bounds)
    if form == "msgpack":
        batcher = enc.columns_batcher(batcher)
        assert isinstance(batcher, NativeColumns)
    addr = ctypes.addressof((ctypes.c_char * len(mem)).from_buffer(mem))
    view = bytes(mem)  # what Python reads of the same memory (an mmap slices to bytes too)
    batches = []
    while pos < end:
        pos, _done, _events, closed = enc.drain(addr, view, pos, end, base, mask, 97, batcher, 0.0)
        batches += closed
        if between is not None:
            between(enc)
    return [b for b in batches + [batcher.flush()] if b is not None], norm, enc


def events_of(batches) -> list:
    return [e for b in batches for e in decode_batch(b.value).events]


def typed(events) -> list:
    """Every field of every event with its value's type (1 and True, "" and None ... differ)."""
    return [tuple((type(v), v) for v in (getattr(e, f) for f in FIELDS)) for e in events]


def check_records(batches, form: str, max_bytes: int) -> None:
    """Each record valid against its form's schema, of that form, and within the byte bound (the JSON's
    head and brackets aside); a record past the bound holds one event."""
    for x in batches:
        name, doc = record_document(x.value)
        assert name == ("syscall-batch" if form == "json" else "syscall-columns")
        validate(name, doc)
        assert (x.value[0] in MSGPACK_MAP) == (form == "msgpack")
        assert len(x.value) <= MAX_BATCH_BYTES
        if x.events > 1:
            assert len(x.value) <= max_bytes + (200 if form == "json" else 0)


def run_both(recs, snaplen=256, form="json", between=None, **bounds):
    ring = ring_of(recs)
    ring += struct.pack("<II", RINGBUF_BUSY | 200, 0) + bytes(200)  # being written: neither path reads it
    size = 1 << 20
    base = 64
    mem = bytearray(bytes(base) + ring + bytes(size - len(ring)))
    start = size * 3  # positions past a few wraps of the ring
    end = start + len(ring) - 208
    c_py, c_native = Counters(), Counters()
    py, norm_py = python_path(bytes(mem), start, end, base, size - 1, c_py, snaplen, form=form, **bounds)
    native, norm_native, enc = native_path(mem, start, end, base, size - 1, c_native, snaplen, form=form,
                                           between=between, **bounds)
    return py, native, (c_py, c_native), (norm_py, norm_native), enc


@pytest.mark.parametrize("form,max_bytes", [("json", 40_000), ("msgpack", 28_000)])  # (each counts its bytes)
def test_native_and_python_paths_write_identical_batches(form, max_bytes):
    load()  # builds fastpath.c: fails loudly here when no compiler is installed
    recs = traffic(3000, seed=7)
    py, native, (c_py, c_native), (norm_py, norm_native), enc = run_both(recs, form=form, max_events=80,
                                                                         max_bytes=max_bytes)
    try:
        assert len(py) > 15  # closed on counts and on bytes, mid-drain
        assert {x.events for x in py} != {80} and 80 in {x.events for x in py}
        assert [(x.seq, x.events) for x in native] == [(x.seq, x.events) for x in py]
        assert [x.value for x in native] == [x.value for x in py]
        check_records(native, form, max_bytes)
        assert c_native.redacted == c_py.redacted > 0
        assert norm_native.n == norm_py.n == sum(x.events for x in py)
        assert dict(norm_native.roles.items()) == norm_py.roles
        assert enc.handed_back < len(recs) / 5  # most records never leave C
    finally:
        enc.close()


@pytest.mark.parametrize("form", FORMS)
def test_batches_the_native_loop_fills_to_max_events_are_published(form):
    """Batches closing on their event count alone (the byte bound far away): each one reaches the caller
    (the native loop used to drop a batch it had filled to max_events)."""
    load()
    recs = traffic(3000, seed=7)
    py, native, _counters, (norm_py, _norm), enc = run_both(recs, form=form, max_events=150, max_bytes=600_000)
    try:
        assert [x.events for x in py][:-1] == [150] * (len(py) - 1) and len(py) > 15
        assert [x.value for x in native] == [x.value for x in py]
        assert sum(x.events for x in native) == norm_py.n
    finally:
        enc.close()


@pytest.mark.parametrize("form", FORMS)
def test_native_path_bounds_payloads_to_the_snaplen_and_redacts(form):
    """Privacy: each payload cut to the snaplen and credentials masked before the record is written, in
    either form (the columns carry the payload as bin, the JSON as base64)."""
    load()
    recs = traffic(800, seed=11)
    py, native, (c_py, c_native), _norms, enc = run_both(recs, snaplen=64, form=form, max_events=2000,
                                                         max_bytes=600_000)
    try:
        assert [x.value for x in native] == [x.value for x in py]
        for x in native:
            if form == "json":  # (a masked payload may be longer than the prefix it was masked in)
                raw = [e["data"] for e in orjson.loads(x.value)["events"] if e["data"] and not e["redacted"]]
                assert max(map(len, raw)) <= 88 and all(base64.b64decode(d) for d in raw)  # 64 bytes in base64
            else:
                data = record_document(x.value)[1]["columns"][FIELDS.index("data")]
                assert all(d is None or type(d) is bytes for d in data)  # msgpack bin, not base64 text
        events = events_of(native)
        assert max(len(e.data or b"") for e in events if not e.redacted) == 64
        assert c_native.redacted == c_py.redacted == sum(e.redacted for e in events) > 0
        assert not any(b"token=abc" in e.data or b"s=1" in e.data or b"Bearer xy" in e.data for e in events if e.data)
        assert any(b"[REDACTED]" in e.data for e in events if e.redacted)
    finally:
        enc.close()


def test_columns_records_decode_to_the_events_of_the_json_records():
    """Same ring records, native loop: the columns records hold the JSON records' events, every field with
    the same value and type, in the same order (the records cut elsewhere: each form counts its own bytes)."""
    load()
    recs = traffic(3000, seed=13)
    kw = dict(max_events=150, max_bytes=40_000)
    _py, js, _c, _n, enc_js = run_both(recs, form="json", **kw)
    _py, cols, (_c_py, c_cols), _n, enc_cols = run_both(recs, form="msgpack", **kw)
    try:
        a, b = events_of(js), events_of(cols)
        assert len(a) == len(b) > 2900 and typed(a) == typed(b)
        worker = [e for x in cols for e in decode_syscall_batch(x.value).events]  # the worker's decoder
        assert typed(worker) == typed([e for x in js for e in decode_syscall_batch(x.value).events]) == typed(a)
        assert {e.kind for e in b} == {"connect", "accept", "send", "recv", "close"} and any(e.errno for e in b)
        assert any(e.redacted for e in b) and any(e.data is None for e in b) and any(e.size is None for e in b)
        assert len({e.comm for e in b}) == 2 and any('"%s' in e.comm for e in b)  # a comm JSON and % must escape
        assert sum(map(len, (x.value for x in cols))) < sum(map(len, (x.value for x in js))) / 2
    finally:
        enc_js.close()
        enc_cols.close()


@pytest.mark.parametrize("form", FORMS)
def test_a_record_past_the_size_bound_is_cut_as_the_python_path_cuts_it(form):
    """Payloads of the largest snaplen (4096) and a byte bound that a single event passes: each such event
    goes alone, a batch closes before the event that would take it past the bound, no record passes a
    Kafka record's limit; the same records as the Python path's, byte for byte, in either form."""
    load()
    rng = random.Random(17)
    recs = [record("write", ret=n, data=bytes(rng.randrange(256) for _ in range(n)), ts=1000 + i, fd=3)
            for i, n in enumerate([4096, 10, 4096, 4096, 3, 5, 7, 4096, 900, 900, 900, 900, 0, 4096] * 20)]
    py, native, _c, _n, enc = run_both(recs, snaplen=4096, form=form, max_events=2000, max_bytes=3000)
    try:
        assert [x.value for x in native] == [x.value for x in py]
        assert [x.events for x in native] == [x.events for x in py]
        check_records(native, form, 3000)
        sizes = [x.events for x in native]
        kept = sum(i % 50 != 7 for i in range(len(recs)))  # (ring_of discards the others)
        assert 1 in sizes and max(sizes) > 1 and sum(sizes) == kept
        big = [e for x in native if x.events == 1 for e in decode_batch(x.value).events]
        assert big and all(len(e.data) == 4096 for e in big if e.size == 4096)
    finally:
        enc.close()


def test_native_columns_templates_cleared_mid_batch_leave_its_rows_intact():
    """Templates cleared while the open batch's rows use them (container ids re-resolved, or the table
    full): the rows keep their values (the C side frees those templates when the batch closes)."""
    load()
    recs = traffic(2000, seed=19)
    py, native, _c, _n, enc = run_both(recs, form="msgpack", between=lambda e: e.lib.fp_clear_templates(e.ptr),
                                       max_events=500, max_bytes=600_000)
    try:
        assert [x.value for x in native] == [x.value for x in py]
        assert enc.handed_back > 300  # each drain began without templates
    finally:
        enc.close()


@pytest.mark.parametrize("form", FORMS)
def test_loss_markers_between_native_drains_keep_sequence_numbers_unique(form):
    recs = traffic(300, seed=5)
    ring = ring_of(recs, discard_every=0)
    size = 1 << 20
    mem = bytearray(bytes(64) + ring + bytes(size - len(ring)))
    addr = ctypes.addressof((ctypes.c_char * len(mem)).from_buffer(mem))
    view = bytes(mem)
    norm = Normalizer("n", 0)
    enc = NativeEncoder(norm, payload_encoder(256, Counters()))
    batcher = Batcher("n", "ebpf", form=form)
    if form == "msgpack":
        batcher = enc.columns_batcher(batcher)
    try:
        pos, ns = 0, []
        while pos < len(ring):
            pos, _done, _events, _closed = enc.drain(addr, view, pos, len(ring), 64, size - 1, 50, batcher, 0.0)
            marker = norm.lost(1, 0)  # a loss marker between drains, as the agent makes them
            ns.append(marker.n)
            if len(ns) % 2:
                batcher.add([marker], 0.0)  # (into the open batch, as the agent ingests them)
            else:
                batcher.add_marker(marker, 0.0)
        events = events_of([batcher.flush()])
        markers = [e for e in events if e.kind == "lost"]
        assert [e.n for e in markers] == ns and all(e.res == 1 for e in markers)
        events = [e.n for e in events if e.kind != "lost"]
        assert len(set(events + ns)) == len(events) + len(ns) and max(events + ns) == norm.n
    finally:
        enc.close()


def test_the_native_columns_batch_refuses_what_is_not_an_event_of_its_fields():
    """An event Python hands the C batch must be a msgpack array of the form's fields with integers, bin,
    booleans and nulls where the row keeps its own values: anything else is refused, the batch unchanged."""
    import msgspec

    from svctrace.schemas.models import SyscallEvent

    load()
    enc = NativeEncoder(Normalizer("n", 0), payload_encoder(256, Counters()))
    try:
        batcher = enc.columns_batcher(Batcher("n", "ebpf", form="msgpack"))
        ev = SyscallEvent(ts=5, node="n", n=1, pid=2, tid=3, comm="c", kind="send", syscall="write", fd=4, res=1,
                          size=1, data=b"x")
        good = msgspec.msgpack.encode(msgspec.structs.astuple(ev))
        for bad in (good[:-1], b"\x91\x01", msgspec.msgpack.encode([*msgspec.structs.astuple(ev)[:-1], 1.5]),
                    msgspec.msgpack.encode(["ts", *msgspec.structs.astuple(ev)[1:]]), b""):
            assert enc.lib.fp_cols_add_event(enc.ptr, bad, len(bad), 300) == -1
        batcher.add([ev], 0.0)
        assert decode_batch(batcher.flush().value).events == [ev]
        with pytest.raises(ValueError, match="json form"):
            batcher.add_joined(b"{}", 1, 3, 0.0)
    finally:
        enc.close()


def test_native_prefilter_flags_the_redactor_words_like_the_regex():
    from svctrace.agents.redact import _MAYBE

    lib = load()
    rng = random.Random(3)
    words = [b"auth", b"Cookie", b"TOKEN", b"key", b"pass", b"secret", b"sig", b"session", b"pwd", b"bearer",
             b"autx", b"cooki", b"tok", b"ke", b"pas", b"secre", b"si", b"sessio", b"pw", b"beare"]

    def word() -> bytes:  # any case, letter by letter
        return bytes(b ^ 32 if rng.random() < 0.3 else b for b in rng.choice(words))

    for _ in range(20000):  # (words at odd and even offsets, cut anywhere)
        parts = [bytes(rng.randrange(256) for _ in range(rng.randrange(6))) for _ in range(3)]
        data = parts[0] + word() + parts[1] + (word() if rng.random() < 0.3 else b"") + parts[2]
        data = data[rng.randrange(2):rng.randrange(len(data) + 1)]
        assert bool(lib.fp_suspicious(data, len(data))) == bool(_MAYBE.search(data.lower())), data


# -- on the real kernel: live ring records through both paths ------------------------------------

@pytest.mark.root
@pytest.mark.parametrize("form", FORMS)
def test_native_path_on_a_live_capture_equals_the_python_path(tmp_path, form):
    """curl -> http.server with a Cookie header while the whole machine is captured: the native loop's
    batches carry the expected events (tuples, roles, redacted payload), and the Python path writes
    the very same batches from the very same ring records (kept before each release; the open batch
    closed after each drain, on both paths), in either form."""
    import os
    import subprocess
    import sys
    import time

    from svctrace.agents.ebpf.loader import CaptureConfig, EbpfCapture, boot_to_epoch_ns
    from tests.test_ebpf_live import free_port, wait_listening

    if os.geteuid() != 0:
        pytest.fail("eBPF tests need root (they are marked `root`)")
    cap = EbpfCapture(CaptureConfig())
    offset = boot_to_epoch_ns()
    counters = Counters()
    norm = Normalizer("live-node", offset)
    enc = NativeEncoder(norm, payload_encoder(256, counters))
    ring = cap.ring
    addr = enc.lib.fp_map(ring.map_fd, ring.page + 2 * ring.size, ring.page)
    assert addr, "cannot map the ring"
    batcher = Batcher("live-node", "ebpf", form=form, max_events=500, max_bytes=100_000)
    if form == "msgpack":
        batcher = enc.columns_batcher(batcher)
    recorded: list[bytes] = []
    batches: list = []
    (tmp_path / "hello.txt").write_bytes(b"hello native\n")
    port = free_port()
    server = subprocess.Popen([sys.executable, "-m", "http.server", str(port), "--bind", "127.0.0.1",
                               "--directory", str(tmp_path)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        wait_listening(port, server)
        curl = subprocess.run(["curl", "-s", "-H", "Cookie: session=s3cr3t", f"http://127.0.0.1:{port}/hello.txt"],
                              capture_output=True, timeout=30)
        assert curl.stdout == b"hello native\n"

        def curl_closed() -> bool:
            return any(e.comm == "curl" and e.kind == "close" for e in events_of(batches))
        deadline = time.monotonic() + 20
        while not curl_closed():
            assert time.monotonic() < deadline, f"no close of curl among {len(recorded)} drains"
            cons, prod = ring.positions()
            if cons < prod:
                new, _done, _events, closed = enc.drain(addr, ring.data, cons, prod, ring.page, ring.mask, 1 << 30,
                                                        batcher, 0.0)
                start = ring.page + (cons & ring.mask)  # the data area is mapped twice: one slice
                recorded.append(bytes(ring.data[start:start + new - cons]))
                ring.release(new)
                batches += closed + [b for b in [batcher.flush()] if b is not None]
            ring.wait(0.05)
    finally:
        server.terminate()
        server.wait(10)
        enc.lib.fp_unmap(addr, ring.page + 2 * ring.size)
        cap.close()
    events = events_of(batches)
    c = [e for e in events if e.comm == "curl"]
    conn = next(e for e in c if e.kind == "connect")
    req = next(e for e in c if e.kind == "send")
    assert (conn.role, conn.remote_ip, conn.remote_port) == ("client", "127.0.0.1", port)
    assert req.role == "client" and (req.local_port, req.remote_port) == (conn.local_port, port)
    assert req.data.startswith(b"GET /hello.txt HTTP/1.1") and b"Cookie: [REDACTED]" in req.data and req.redacted
    assert any(e.kind == "recv" and e.data and b"hello native" in e.data for e in c)
    served = [e for e in events if e.kind == "recv" and e.remote_port == conn.local_port and e.local_port == port]
    assert served and served[0].role == "server" and b"s3cr3t" not in served[0].data

    ring_bytes = b"".join(recorded)
    size = 1 << (len(ring_bytes) + 64).bit_length()
    mem = bytes(64) + ring_bytes + bytes(size - len(ring_bytes))
    py_counters = Counters()
    py_norm = Normalizer("live-node", offset)
    py_batcher = Batcher("live-node", "ebpf", form=form, max_events=500, max_bytes=100_000)
    pay = payload_encoder(256, py_counters)
    py, pos = [], 0
    for chunk in recorded:  # drain by drain, the open batch closed after each, as above
        end = pos + len(chunk)
        while pos < end:
            out: list = []
            pos, _done = py_norm.encode_ring(mem, pos, end, 64, size - 1, 1 << 30, out, pay, pay.snaplen,
                                             pay.suspicious)
            py += py_batcher.add(out, 0.0)
        py += [b for b in [py_batcher.flush()] if b is not None]
    assert len(events) >= 6 and py_norm.n == norm.n == len(events)
    assert [b.value for b in py] == [b.value for b in batches]
    check_records(batches, form, 100_000)
    assert py_counters.redacted == counters.redacted >= 2  # the request, and the server's read of it


def test_without_a_compiler_the_native_path_is_unavailable_unless_prebuilt(monkeypatch, tmp_path):
    """No compiler: a clear reason; a library prebuilt elsewhere (an image's build stage,
    `--native-lib`) loads all the same."""
    from svctrace.agents.ebpf import build, fastpath

    prebuilt = build.build_native(out_dir=tmp_path / "stage" / "bpf")  # while the compiler is there
    monkeypatch.setattr(fastpath, "_lib", None)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))  # nothing cached: it must build
    monkeypatch.setattr(build.shutil, "which", lambda name: None)
    with pytest.raises(fastpath.NativeUnavailable, match="no C compiler found"):
        NativeEncoder(Normalizer("n", 0), payload_encoder(256, Counters()))
    enc = NativeEncoder(Normalizer("n", 0), payload_encoder(256, Counters()), library=str(prebuilt))
    try:
        assert enc.lib.fp_suspicious(b"Cookie: x", 9) == 1
    finally:
        enc.close()


@pytest.mark.root
def test_the_agent_source_falls_back_to_python_with_a_log_line(monkeypatch, tmp_path, caplog):
    """No compiler on the node: `svctrace agent` logs why and encodes in Python; it does not fail."""
    import logging
    import os

    from svctrace.agents.agent.sources import EbpfSource
    from svctrace.agents.ebpf import build, fastpath
    from svctrace.agents.ebpf.loader import CaptureConfig

    if os.geteuid() != 0:
        pytest.fail("eBPF tests need root (they are marked `root`)")
    source = EbpfSource("n", CaptureConfig())  # the BPF object is built (or cached) with the real tools
    try:
        monkeypatch.setattr(fastpath, "_lib", None)
        monkeypatch.setattr(build, "cache_dir", lambda: tmp_path / "bpf")  # no cached library either
        monkeypatch.setattr(build.shutil, "which", lambda name: None)
        with caplog.at_level(logging.WARNING, logger="svctrace.agent"):
            source.encode_with(payload_encoder(256, Counters()))
        assert source.native is None and source.payload is not None
        assert "native fast path unavailable" in caplog.text and "no C compiler" in caplog.text
    finally:
        source.close()


@pytest.mark.root
@pytest.mark.parametrize("native", [True, False])
@pytest.mark.parametrize("form", FORMS)
def test_the_agent_batches_the_ebpf_source_in_the_form_it_is_given(form, native):
    """`svctrace agent --batch-form F` on the eBPF source: the native loop fills a batcher of that form (the
    columns form's open batch held in C), the Python loop a Batcher of that form."""
    import os

    from svctrace.agents.agent.agent import Agent, AgentOptions
    from svctrace.agents.agent.sources import EbpfSource
    from svctrace.agents.ebpf.loader import CaptureConfig

    if os.geteuid() != 0:
        pytest.fail("eBPF tests need root (they are marked `root`)")
    source = EbpfSource("n", CaptureConfig())
    try:
        agent = Agent(source, sink=None, options=AgentOptions(node="n", form=form, native=native))
        assert agent.native is native and agent.batcher.form == form
        assert isinstance(agent.batcher, NativeColumns) is (native and form == "msgpack")
    finally:
        source.close()
