"""The eBPF agent's per-event CPU by record form, offline: captured ring records replayed through its loops.

    python -m bench.ebpf_forms --record FILE [--seconds 4 --connections 16]   # as root: capture, keep ours
    python -m bench.ebpf_forms --ring FILE [--rounds 5] [--loops ...]        # replay (no root, no kernel)

--record captures the whole machine while a local HTTP/1.1 server answers keep-alive clients (16
connections, GETs with a few headers, 200-byte bodies; one request in 50 carries a Cookie: the
redaction path), and keeps the ring records of the processes it started (their bytes as the kernel
wrote them, other processes' dropped). --ring replays such a file, or without it a synthetic ring
(bench.ebpf_capture's: UDP writes of 64 bytes), through each per-event loop into closed batches
(the agent's bounds: 2000 events, 600,000 bytes) and, separately, zstd level 3 over the records
(the producer's compression). Per event, thread CPU (min and every round, the loops alternating)
and bytes:

  native-json     fastpath.c writes each event's JSON, joined into the batch (syscall-batch)
  native-columns  fastpath.c keeps the batch's rows and writes its columns at close (syscall-columns)
  native-pack     C rows packed per batch in Python: fastpath.c's JSON of each event, decoded and
                  packed per batch by encode_columns (the packing alone printed too)
  python-json / python-columns  the Python loop (records.encode_ring), either form (the fallback)

and, after them, the least a compact-rows design would pay in Python: each closed batch handed over as
its events' template ids and their varying values already in columns (ts, n, tid, res, size, data,
redacted: what C would write at no Python cost), packed into the same record (checked byte for byte
against native-columns') by encode_columns' steps without making events.
"""
from __future__ import annotations

import argparse
import ctypes
import os
import socket
import struct
import subprocess
import sys
import time

from svctrace.agents.ebpf.records import RINGBUF_BUSY, RINGBUF_DISCARD, RINGBUF_HDR

LOOPS = ("native-json", "native-columns", "native-pack", "python-json", "python-columns")

CLIENT = r"""
import http.client, sys, threading
port, conns, stop_after = int(sys.argv[1]), int(sys.argv[2]), float(sys.argv[3])
import time
end = time.monotonic() + stop_after
def run(i):
    c = http.client.HTTPConnection("127.0.0.1", port)
    k = 0
    while time.monotonic() < end:
        k += 1
        h = {"User-Agent": "bench-client/1.0", "Accept": "application/json", "X-Request-Id": f"{i}-{k}"}
        if k % 50 == 0:
            h["Cookie"] = "session=s3cr3t"
        c.request("GET", f"/api/v1/items/{k % 97}?page={k % 7}", headers=h)
        c.getresponse().read()
ts = [threading.Thread(target=run, args=(i,)) for i in range(conns)]
[t.start() for t in ts]; [t.join() for t in ts]
"""

SERVER = r"""
import http.server, sys
class H(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    def do_GET(self):
        body = b'{"items":[' + b'"x",' * 45 + b'"y"]}'
        self.send_response(200); self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body))); self.end_headers(); self.wfile.write(body)
    def log_message(self, *a): pass
http.server.ThreadingHTTPServer(("127.0.0.1", int(sys.argv[1])), H).serve_forever()
"""


def _listening(port: int, server: subprocess.Popen, timeout: float = 15.0) -> None:
    deadline = time.monotonic() + timeout
    while True:
        if server.poll() is not None:
            raise RuntimeError(f"the HTTP server exited with {server.returncode}")
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
            return
        except OSError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.02)  # a readiness poll's interval, bounded by the deadline


def record(path: str, seconds: float, connections: int) -> None:
    from svctrace.agents.ebpf.loader import CaptureConfig, EbpfCapture

    cap = EbpfCapture(CaptureConfig())
    ring = cap.ring
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    server = subprocess.Popen([sys.executable, "-c", SERVER, str(port)])
    kept: list[bytes] = []
    records = 0
    try:
        _listening(port, server)
        client = subprocess.Popen([sys.executable, "-c", CLIENT, str(port), str(connections), str(seconds)])
        ours = {server.pid, client.pid}
        while True:
            done = client.poll() is not None
            cons, prod = ring.positions()
            while cons < prod:
                at = ring.page + (cons & ring.mask)
                hdr = struct.unpack_from("<I", ring.data, at)[0]
                if hdr & RINGBUF_BUSY:
                    break
                size = ((hdr & ~(RINGBUF_BUSY | RINGBUF_DISCARD)) + RINGBUF_HDR + 7) & ~7
                if not hdr & RINGBUF_DISCARD:
                    pid = struct.unpack_from("<I", ring.data, at + RINGBUF_HDR + 32)[0]
                    if pid in ours:
                        kept.append(bytes(ring.data[at:at + size]))
                records += 1
                cons += size
            ring.release(cons)
            if done:
                break
            ring.wait(0.05)
    finally:
        server.terminate()
        server.wait(10)
        cap.close()
    with open(path, "wb") as f:
        f.writelines(kept)
    print(f"kept {len(kept)} of {records} ring records ({sum(map(len, kept))} bytes) in {path}")


def load_ring(path: str | None) -> tuple[bytearray, int]:
    if path is None:
        from bench.ebpf_capture import synthetic_ring

        return synthetic_ring(200_000, 64)
    with open(path, "rb") as f:
        ring = f.read()
    size = 1 << (len(ring) + 64).bit_length()
    return bytearray(bytes(64) + ring + bytes(size - len(ring))), len(ring)


def run_loop(name: str, mem: bytearray, end: int, snaplen: int = 256) -> tuple[float, list, int, float]:
    """(thread CPU seconds, closed records, events, seconds of it packing in Python: native-pack) of one loop."""
    import msgspec

    from svctrace.agents.agent.pipeline import Batcher, Counters, _bound, payload_encoder
    from svctrace.agents.ebpf.fastpath import NativeEncoder
    from svctrace.agents.ebpf.records import Normalizer
    from svctrace.schemas.models import SyscallEvent
    from svctrace.schemas.syscall_columns import encode_columns

    view = bytes(mem)
    mask = len(mem) - 64 - 1  # the ring area after the 64-byte lead: a power of two
    addr = ctypes.addressof((ctypes.c_char * len(mem)).from_buffer(mem))
    norm = Normalizer("bench-node", 10**18)
    pay = payload_encoder(snaplen, Counters())
    batcher = Batcher("bench-node", "ebpf", form="msgpack" if name in ("native-columns", "python-columns") else "json")
    native = NativeEncoder(norm, pay) if name.startswith("native") else None
    if name == "native-columns":
        batcher = native.columns_batcher(batcher)
    runs = msgspec.json.Decoder(list[msgspec.Raw])
    event = msgspec.json.Decoder(SyscallEvent)
    records: list = []
    packing = 0.0

    def pack(value: bytes) -> bytes:
        """native-pack: a closed JSON batch's events (C's JSON) -> the columns record, in Python."""
        nonlocal packing
        evs = [event.decode(r) for r in runs.decode(b"[" + value.split(b'"events":[', 1)[1][:-1])]
        t = time.thread_time()
        for e in evs:
            _bound(e)  # what the Batcher counts each event by
        out = encode_columns("bench-node", "ebpf", len(records), 0, evs)
        packing += time.thread_time() - t
        return out

    t0 = time.thread_time()
    pos = 0
    while pos < end:
        if native is not None:
            pos, _d, _e, closed = native.drain(addr, view, pos, end, 64, mask, 8192, batcher, 0.0)
        else:
            out: list = []
            pos, _d = norm.encode_ring(view, pos, end, 64, mask, 8192, out, pay, pay.snaplen, pay.suspicious)
            closed = batcher.add(out, 0.0)
        records += [pack(b.value) if name == "native-pack" else b.value for b in closed]
    last = batcher.flush()
    if last is not None:
        records.append(pack(last.value) if name == "native-pack" else last.value)
    cpu = time.thread_time() - t0
    if native is not None:
        native.close()
    return cpu, records, norm.n, packing


def rows_packing(records: list[bytes], rounds: int) -> list[float]:
    """us per event of packing `records` (native-columns') again from template ids and varying columns."""
    from itertools import chain, count
    from operator import itemgetter

    import msgspec

    from svctrace.schemas import syscall_columns as sc
    from svctrace.schemas.models import decode_batch

    varying = ("ts", "n", "tid", "res", "size", "data", "redacted")
    vary_at = [sc.FIELDS.index(f) for f in varying]
    const_at = [i for i in range(len(sc.FIELDS)) if i not in vary_at]
    templates: dict = {}
    inputs = []
    for raw in records:
        b = decode_batch(raw)
        rows = [msgspec.structs.astuple(e) for e in b.events]
        tids = [templates.setdefault(tuple(r[i] for i in const_at), len(templates)) for r in rows]
        inputs.append((b.node, b.source, b.seq, b.lost, tids, [[r[i] for r in rows] for i in vary_at]))
    values = [[t[k] for t in templates] for k in range(len(const_at))]  # per template field: its value by id
    encode = msgspec.msgpack.Encoder().encode

    def pack(node, source, seq, lost, tids, vcols) -> bytes:
        n = len(tids)
        of = itemgetter(*tids) if n > 1 else (lambda vals: [vals[tids[0]]])
        columns: list = [None] * len(sc.FIELDS)
        for k, i in enumerate(const_at):
            columns[i] = of(values[k])
        for k, i in enumerate(vary_at):
            columns[i] = vcols[k]
        strings = dict.fromkeys(chain.from_iterable(columns[i] for i in sc._STRING_AT))
        index = dict(zip(strings, count()))
        for i in sc._STRING_AT:
            col = columns[i]
            columns[i] = index[col[0]] if col.count(col[0]) == n else itemgetter(*col)(index)
        for i in sc._OTHER_AT:
            col = columns[i]
            if col.count(col[0]) == n:
                columns[i] = col[0]
        return encode({"schema": sc.SCHEMA, "version": sc.VERSION, "node": node, "source": source, "seq": seq,
                       "lost": lost, "count": n, "fields": sc.FIELDS, "strings": list(strings), "columns": columns})

    assert [pack(*x) for x in inputs] == records, "the compact-rows packing writes other records"
    events = sum(len(x[4]) for x in inputs)
    out = []
    for _ in range(rounds):
        t0 = time.thread_time()
        for x in inputs:
            pack(*x)
        out.append((time.thread_time() - t0) / events * 1e6)
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--record", help="capture (root) and write the kept ring records to this file")
    ap.add_argument("--seconds", type=float, default=4.0)
    ap.add_argument("--connections", type=int, default=16)
    ap.add_argument("--ring", help="ring records to replay (from --record); default: a synthetic ring")
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--loops", default=",".join(LOOPS))
    args = ap.parse_args(argv)
    if args.record:
        if os.geteuid() != 0:
            print("--record needs root (it loads the BPF program)", file=sys.stderr)
            return 1
        record(args.record, args.seconds, args.connections)
        return 0
    import zstandard

    mem, end = load_ring(args.ring)
    loops = args.loops.split(",")
    times: dict[str, list[float]] = {name: [] for name in loops}
    packing: list[float] = []
    sizes = {}
    events = {}
    for _ in range(args.rounds):
        for name in loops:
            cpu, batches, n, packed = run_loop(name, mem, end)
            times[name].append(cpu / n * 1e6)
            if name == "native-pack":
                packing.append(packed / n * 1e6)
            events[name] = n
            sizes[name] = batches
    zc = zstandard.ZstdCompressor(level=3)
    print(f"{events[loops[0]]} events; us per event (thread CPU, every round), bytes per event, zstd-3 us/event")
    for name in loops:
        n = events[name]
        raw = sum(map(len, sizes[name]))
        t0 = time.thread_time()
        comp = sum(len(zc.compress(v)) for v in sizes[name])
        zt = (time.thread_time() - t0) / n * 1e6
        print(f"  {name:15s} min {min(times[name]):5.2f}  [{' '.join(f'{t:.2f}' for t in times[name])}]  "
              f"{raw / n:6.1f} B -> zstd {comp / n:5.1f} B in {zt:.2f} us  ({len(sizes[name])} records)")
    if packing:
        print(f"  native-pack's packing alone (pipeline._bound + encode_columns of the batch's events): "
              f"min {min(packing):.2f} [{' '.join(f'{t:.2f}' for t in packing)}]")
    if "native-columns" in sizes:
        rows = rows_packing(sizes["native-columns"], args.rounds)
        print(f"  compact rows packed in Python (template ids + varying columns -> the same records; no bound "
              f"counted): min {min(rows):.2f} [{' '.join(f'{t:.2f}' for t in rows)}]")
    return 0


if __name__ == "__main__":
    sys.exit(main())
