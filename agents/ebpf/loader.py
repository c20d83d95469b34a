"""Load svctrace.bpf.o, attach it, and read its ring buffer.

`EbpfCapture` opens the object with libbpf (ctypes), writes the configuration
into the program's read-only data by variable name (offsets come from the
object's BTF, never hard-coded), loads it (CO-RE relocations against the
kernel BTF), attaches every tracepoint program and maps the ring buffer.
The ring is consumed directly from its shared memory (the kernel's documented
ring-buffer layout): no per-record callback, records are decoded in place.

Every way this can fail on a node (no BTF, no privileges, no tracefs, no
clang) ends in a `CaptureError` whose message says what to do.
"""
from __future__ import annotations

import ctypes
import errno
import mmap
import os
import select
import struct
import time
from dataclasses import dataclass, field
from pathlib import Path

from svctrace.agents.ebpf import build as _build
from svctrace.agents.ebpf.libbpf import Libbpf, LibbpfMissing, ObjectOpenOpts, strerror
from svctrace.agents.ebpf.records import MAX_SNAP, RECORD, RINGBUF_BUSY, RINGBUF_DISCARD, RINGBUF_HDR

TRACEFS_DIRS = ("/sys/kernel/tracing", "/sys/kernel/debug/tracing")
_U32 = struct.Struct("<I")


class CaptureError(RuntimeError):
    """eBPF capture cannot start; the message names the cause and the fix."""


@dataclass
class CaptureConfig:
    snaplen: int = 256
    ring_bytes: int = 16 * 1024 * 1024
    wakeup_bytes: int = 256 * 1024
    capture_unix: bool = False
    btf_path: str = _build.DEFAULT_BTF
    object_path: str | None = None  # prebuilt object; default: build into the cache
    exclude_pid: int = field(default_factory=os.getpid)

    def check(self) -> None:
        if not 0 <= self.snaplen <= MAX_SNAP:
            raise CaptureError(f"snaplen must be within 0..{MAX_SNAP}, got {self.snaplen}")
        if self.ring_bytes < 4096 or self.ring_bytes & (self.ring_bytes - 1):
            raise CaptureError(f"ring size must be a power of two >= 4096, got {self.ring_bytes}")


def boot_to_epoch_ns() -> int:
    """Offset from CLOCK_MONOTONIC (bpf_ktime_get_ns) to the wall clock."""
    a = time.time_ns()
    m = time.monotonic_ns()
    b = time.time_ns()
    return (a + b) // 2 - m


def ensure_tracefs() -> None:
    """libbpf finds tracepoint ids in tracefs; mount it when the host has not."""
    if any(os.path.isdir(os.path.join(d, "events")) for d in TRACEFS_DIRS):
        return
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.mount(b"tracefs", TRACEFS_DIRS[0].encode(), b"tracefs", 0, None) != 0:
        err = ctypes.get_errno()
        raise CaptureError(f"tracefs is not mounted and mounting it at {TRACEFS_DIRS[0]} failed: {strerror(err)}; "
                           "run as root or mount tracefs on the host")


class RingReader:
    """Consumer side of a BPF ring buffer map, over mmap (no libbpf callback per record)."""

    def __init__(self, map_fd: int, size: int) -> None:
        page = mmap.PAGESIZE
        self.size = size
        self.mask = size - 1
        self.page = page
        self.bad = 0
        self.map_fd = map_fd
        self.consumer = mmap.mmap(map_fd, page, mmap.MAP_SHARED, mmap.PROT_READ | mmap.PROT_WRITE, offset=0)
        # producer page, then the data area mapped twice so a record never wraps
        self.data = mmap.mmap(map_fd, page + 2 * size, mmap.MAP_SHARED, mmap.PROT_READ, offset=page)
        # The positions are read and written as whole aligned 8-byte words (memoryview items are
        # one load/store), never with struct, which moves them a byte at a time: the kernel reading
        # a half-written consumer position saw the ring up to 16 MiB fuller than it was and dropped
        # records, and a half-read producer position could point past the records written.
        self._consumer_pos = memoryview(self.consumer).cast("Q")
        self._producer_pos = memoryview(self.data)[:8].cast("Q")
        self.epoll = select.epoll()
        self.epoll.register(map_fd, select.EPOLLIN)

    def positions(self) -> tuple[int, int]:
        """(consumer, producer) positions."""
        return self._consumer_pos[0], self._producer_pos[0]

    def release(self, position: int) -> None:
        """Hand the records before `position` back to the kernel."""
        self._consumer_pos[0] = position

    def pending(self) -> int:
        return self._producer_pos[0] - self._consumer_pos[0]

    def wait(self, timeout: float) -> None:
        """Block until the kernel signals data (or timeout: records may come without a wakeup)."""
        self.epoll.poll(timeout)

    def drain(self, decode, out: list, limit: int = 1 << 30) -> int:
        """Decode available records with `decode(buffer, offset)` (e.g. Normalizer.decode or
        .decode_wire) into `out`; returns how many records were consumed."""
        def each(buf, offsets, o):
            for off in offsets:
                try:
                    o.append(decode(buf, off))
                except ValueError:
                    self.bad += 1  # a record this decoder cannot read: counted, never fatal

        return self.drain_many(each, out, limit)

    def drain_many(self, decode_many, out: list, limit: int = 1 << 30) -> int:
        """Hand the offsets of all available records to `decode_many(buffer, offsets, out)`
        (Normalizer.decode_many: one call per drain), then release them to the kernel."""
        data, page, mask = self.data, self.page, self.mask
        u32 = _U32.unpack_from
        cons, prod = self.positions()
        offsets = []
        done = 0
        while cons < prod and done < limit:
            off = page + (cons & mask)
            hdr = u32(data, off)[0]
            if hdr & RINGBUF_BUSY:
                break
            if not hdr & RINGBUF_DISCARD:
                offsets.append(off + RINGBUF_HDR)
            cons += ((hdr & ~(RINGBUF_BUSY | RINGBUF_DISCARD)) + RINGBUF_HDR + 7) & ~7
            done += 1
        if offsets:
            decode_many(data, offsets, out)  # before the release: the kernel may overwrite them after
        if done:
            self.release(cons)
        return done

    def drain_walk(self, walk, out: list, limit: int = 1 << 30) -> int:
        """Let `walk(buffer, cons, prod, base, mask, limit, out) -> (cons, consumed)` walk the
        available records itself (Normalizer.encode_ring: one loop for walking and encoding),
        then release what it consumed. Returns how many records were consumed."""
        cons, prod = self.positions()
        if cons >= prod:
            return 0
        new, done = walk(self.data, cons, prod, self.page, self.mask, limit, out)
        if done:
            self.release(new)  # after encoding: the kernel may overwrite them now
        return done

    def close(self) -> None:
        self.epoll.close()
        self._consumer_pos.release()
        self._producer_pos.release()
        self.consumer.close()
        self.data.close()


class EbpfCapture:
    """The loaded, attached program. Use as a context manager; `close()` detaches everything."""

    def __init__(self, config: CaptureConfig | None = None, libbpf: Libbpf | None = None) -> None:
        self.config = config or CaptureConfig()
        self.config.check()
        self.obj = None
        self.links: list[int] = []
        self.ring: RingReader | None = None
        try:
            self.bpf = libbpf or Libbpf()
        except LibbpfMissing as e:
            raise CaptureError(str(e)) from None
        try:
            self._open()
        except BaseException:
            self.close()
            raise

    # -- setup ---------------------------------------------------------------
    def _fail(self, what: str, err: int) -> CaptureError:
        err = abs(err)
        hint = ""
        if err in (errno.EPERM, errno.EACCES):
            hint = ("; loading BPF programs needs root (or CAP_BPF + CAP_PERFMON + CAP_SYS_RESOURCE): "
                    "run the agent privileged")
        elif err in (errno.ENOENT, errno.ESRCH, errno.EINVAL) and "BTF" in self.bpf.recent_log(50):
            hint = f"; kernel BTF problem (is {self.config.btf_path} present and readable?)"
        log = self.bpf.recent_log(8)
        return CaptureError(f"{what}: {strerror(err)}{hint}" + (f"\nlibbpf said:\n{log}" if log else ""))

    def _open(self) -> None:
        cfg = self.config
        if not os.path.exists(cfg.btf_path):
            raise CaptureError(f"kernel BTF not found at {cfg.btf_path}: eBPF capture needs a kernel built with "
                               "CONFIG_DEBUG_INFO_BTF (or point --btf at a BTF file for this kernel)")
        if not os.access(cfg.btf_path, os.R_OK):
            raise CaptureError(f"kernel BTF at {cfg.btf_path} is not readable: run the agent as root")
        if cfg.object_path:
            obj_path = Path(cfg.object_path)
            if not obj_path.exists():
                raise CaptureError(f"BPF object not found: {obj_path}")
        else:
            try:
                obj_path = _build.build(btf=cfg.btf_path)
            except _build.BuildError as e:
                raise CaptureError(f"cannot build the BPF object: {e}") from None

        opts = ObjectOpenOpts(sz=ctypes.sizeof(ObjectOpenOpts))
        if cfg.btf_path != _build.DEFAULT_BTF:
            opts.btf_custom_path = cfg.btf_path.encode()
        self.obj = self.bpf.bpf_object__open_file(str(obj_path).encode(), ctypes.byref(opts))
        if not self.obj:
            self.obj = None
            raise self._fail(f"cannot open BPF object {obj_path}", self.bpf.errno())
        self._check_layout()
        self._configure()
        err = self.bpf.bpf_object__load(self.obj)
        if err:
            raise self._fail("cannot load the BPF programs", err)
        ensure_tracefs()  # attaching looks tracepoint ids up in tracefs
        self._attach()
        ring_map = self._map("events")
        self.ring = RingReader(self.bpf.bpf_map__fd(ring_map), cfg.ring_bytes)
        self.drops_fd = self.bpf.bpf_map__fd(self._map("drops"))
        self.ncpus = self.bpf.libbpf_num_possible_cpus()

    def _map(self, name: str) -> int:
        m = self.bpf.bpf_object__find_map_by_name(self.obj, name.encode())
        if not m:
            raise CaptureError(f"BPF object has no map {name!r} (stale object? rebuild with --force)")
        return m

    def _check_layout(self) -> None:
        """The Python record layout must match the compiled struct event."""
        btf = self.bpf.bpf_object__btf(self.obj)
        data_at = self.bpf.member_offset(btf, "event", "data") if btf else None
        if data_at != RECORD.size:
            raise CaptureError(f"BPF object's record header is {data_at} bytes, records.py expects "
                               f"{RECORD.size}: object and decoder are out of sync (rebuild)")

    def _configure(self) -> None:
        cfg = self.config
        rodata = None
        m = None
        while True:
            m = self.bpf.bpf_object__next_map(self.obj, m)
            if not m:
                break
            if self.bpf.bpf_map__is_internal(m) and self.bpf.bpf_map__name(m).endswith(b".rodata"):
                rodata = m
        if rodata is None:
            raise CaptureError("BPF object has no .rodata section to configure")
        btf = self.bpf.bpf_object__btf(self.obj)
        layout = self.bpf.datasec_vars(btf, ".rodata")
        size = ctypes.c_size_t()
        base = self.bpf.bpf_map__initial_value(rodata, ctypes.byref(size))
        values = {
            "agent_tgid": (cfg.exclude_pid, "<I"),
            "snaplen": (cfg.snaplen, "<I"),
            "capture_unix": (int(cfg.capture_unix), "<B"),
            "wakeup_bytes": (cfg.wakeup_bytes, "<Q"),
        }
        for name, (value, fmt) in values.items():
            if name not in layout:
                raise CaptureError(f"BPF object lacks the setting {name!r} (stale object?)")
            off, sz = layout[name]
            packed = struct.pack(fmt, value)
            if sz != len(packed) or off + sz > size.value:
                raise CaptureError(f"setting {name!r}: size {sz} in the object, {len(packed)} expected")
            ctypes.memmove(base + off, packed, sz)
        err = self.bpf.bpf_map__set_max_entries(self._map("events"), cfg.ring_bytes)
        if err:
            raise self._fail("cannot size the ring buffer", err)

    def _attach(self) -> None:
        prog = None
        while True:
            prog = self.bpf.bpf_object__next_program(self.obj, prog)
            if not prog:
                break
            link = self.bpf.bpf_program__attach(prog)
            if not link:
                name = self.bpf.bpf_program__name(prog).decode()
                raise self._fail(f"cannot attach {name}", self.bpf.errno())
            self.links.append(link)

    # -- running -------------------------------------------------------------
    def drops_per_cpu(self, which: int = 0) -> list[int]:
        """Per-CPU counter `which`: 0 = ring-buffer drops, 1 = exits without their entry,
        2 = ring-buffer drops while the ring had room (its reservation lock gave up), 3 = records
        written on a retry after such a failure."""
        k = ctypes.c_uint32(which)
        vals = (ctypes.c_uint64 * self.ncpus)()
        if self.bpf.bpf_map_lookup_elem(self.drops_fd, ctypes.byref(k), vals) != 0:
            return [0] * self.ncpus
        return list(vals)

    def drops(self) -> tuple[int, int]:
        """(ring-buffer drops, exits without a matching entry), summed over CPUs."""
        return sum(self.drops_per_cpu(0)), sum(self.drops_per_cpu(1))

    def saved_by_retry(self) -> int:
        """Records whose first reservation failed with room in the ring, written on a retry."""
        return sum(self.drops_per_cpu(3))

    def drops_with_room(self) -> int:
        """Ring-buffer drops that happened while the ring had room for the record."""
        return sum(self.drops_per_cpu(2))

    def close(self) -> None:
        if self.ring is not None:
            self.ring.close()
            self.ring = None
        for link in self.links:
            self.bpf.bpf_link__destroy(link)
        self.links = []
        if self.obj:
            self.bpf.bpf_object__close(self.obj)
            self.obj = None

    def __enter__(self) -> "EbpfCapture":
        return self

    def __exit__(self, *exc) -> None:
        self.close()
