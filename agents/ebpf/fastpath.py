"""The agent's native per-event loop (fastpath.c) through ctypes.

`NativeEncoder.drain` walks the ring in C and hands the agent's `Batcher` whole runs of event
JSON, already joined and sized, so Python does per-batch work only. Python keeps every decision
about what an event says: `records.Normalizer` builds the per-socket JSON templates C fills in,
and encodes the records C hands back (other syscalls, failed calls, the first record of a
socket, payloads the redaction pre-check flags) exactly as on the Python path. The role of each
socket lives in C (`NativeRoles`), shared by both. The output equals the Python path's
(`Normalizer.encode_ring` + `Batcher`) byte for byte; a test checks it.

`load()` builds the library with the machine's C compiler (cached, see build.py) or raises
`NativeUnavailable` with the reason; the agent then logs it and keeps the Python path.
"""
from __future__ import annotations

import ctypes
import struct
from ctypes import POINTER, c_char_p, c_int, c_int32, c_int64, c_uint32, c_uint64, c_void_p

from svctrace.agents.ebpf.records import HEAD, IO_SYSCALLS, KEY_AT, RECORD, RINGBUF_HDR, Normalizer

FP_IDLE, FP_FULL, FP_PYTHON = 0, 1, 2
WHY_OTHER, WHY_TEMPLATE, WHY_PAYLOAD = 0, 1, 2
ROLE_CODES = {None: 0, "client": 1, "server": 2}
ROLE_NAMES = (None, "client", "server")


class NativeUnavailable(RuntimeError):
    """The native fast path cannot be built or loaded; the message says why."""


class Ctx(ctypes.Structure):
    """struct fp_ctx's public head (fastpath.c)."""

    _fields_ = [("n", c_uint64), ("toff", c_int64), ("snaplen", c_uint32), ("redact", c_uint32),
                ("max_roles", c_uint32), ("io_mask", c_uint32),
                ("cons", c_uint64), ("done", c_uint64), ("events", c_uint64), ("bytes", c_uint64),
                ("why", c_uint32), ("role", c_uint32),
                ("out", c_void_p), ("out_len", c_uint64), ("out_cap", c_uint64)]


_lib = None


def load(path: str | None = None):
    """The loaded library: the prebuilt one at `path` (an image without a compiler ships it, see
    `python -m svctrace.agents.ebpf.build --native`), else built on first use."""
    global _lib
    if _lib is not None:
        return _lib
    from svctrace.agents.ebpf import build

    try:
        lib = ctypes.CDLL(str(path or build.build_native()))
    except (build.BuildError, OSError) as e:
        raise NativeUnavailable(str(e)) from None
    P = POINTER(Ctx)
    for name, res, args in (
            ("fp_new", P, []), ("fp_free", None, [P]),
            ("fp_walk", c_int, [P, c_void_p, c_uint64, c_uint64, c_uint64, c_uint64, c_uint64, c_uint64, c_uint64,
                                c_int]),
            ("fp_add_template", c_int, [P, c_void_p, c_uint32, c_char_p, c_uint32, c_uint32]),
            ("fp_clear_templates", None, [P]),
            ("fp_role_get", c_uint32, [P, c_uint32, c_int32]), ("fp_role_set", None, [P, c_uint32, c_int32, c_uint32]),
            ("fp_role_del", c_uint32, [P, c_uint32, c_int32]), ("fp_role_count", c_uint32, [P]),
            ("fp_role_clear", None, [P]),
            ("fp_role_dump", c_uint32, [P, POINTER(c_uint64), POINTER(c_uint32), c_uint32]),
            ("fp_suspicious", c_int, [c_char_p, c_uint32]),
            ("fp_map", c_void_p, [c_int, c_uint64, c_uint64]), ("fp_unmap", c_int, [c_void_p, c_uint64])):
        fn = getattr(lib, name)
        fn.restype, fn.argtypes = res, args
    _lib = lib
    return lib


class NativeRoles:
    """The (pid, fd) -> role table in C, with the dict operations records.Normalizer uses."""

    def __init__(self, lib, ctx) -> None:
        self.lib, self.ctx = lib, ctx

    def get(self, key, default=None):
        return ROLE_NAMES[self.lib.fp_role_get(self.ctx, key[0], key[1])] or default

    def __getitem__(self, key):
        role = self.get(key)
        if role is None:
            raise KeyError(key)
        return role

    def __setitem__(self, key, role) -> None:
        self.lib.fp_role_set(self.ctx, key[0], key[1], ROLE_CODES[role])

    def pop(self, key, default=None):
        return ROLE_NAMES[self.lib.fp_role_del(self.ctx, key[0], key[1])] or default

    def __contains__(self, key) -> bool:
        return self.get(key) is not None

    def __len__(self) -> int:
        return self.lib.fp_role_count(self.ctx)

    def clear(self) -> None:
        self.lib.fp_role_clear(self.ctx)

    def items(self) -> list:
        n = len(self)
        keys, roles = (c_uint64 * max(n, 1))(), (c_uint32 * max(n, 1))()
        got = self.lib.fp_role_dump(self.ctx, keys, roles, n)
        return [((k >> 32, ctypes.c_int32(k & 0xFFFFFFFF).value), ROLE_NAMES[r]) for k, r in zip(keys[:got], roles[:got])]

    def __eq__(self, other) -> bool:
        return dict(self.items()) == dict(other.items() if hasattr(other, "items") else other)


_KEY_FIELDS = struct.Struct("<QQ")  # cg2, cg1 at offset 8 of a record


class NativeEncoder:
    """One ring consumer's native loop, bound to a Normalizer (whose roles it takes over) and a
    payload encoder (pipeline.payload_encoder: bound, redact, base64)."""

    def __init__(self, normalizer: Normalizer, payload, library: str | None = None) -> None:
        self.lib = lib = load(library)
        ptr = lib.fp_new()
        if not ptr:
            raise NativeUnavailable("out of memory for the native fast path's tables")
        self.ptr = ptr
        self.ctx = ptr.contents
        self.norm = normalizer
        self.payload = payload
        self.snaplen = getattr(payload, "snaplen", 1 << 30)
        self.suspicious = getattr(payload, "suspicious", None)
        c = self.ctx
        c.toff = normalizer.offset
        c.snaplen = min(self.snaplen, 1 << 31)
        c.redact = 1 if self.suspicious is not None else 0
        c.max_roles = normalizer.MAX_ROLES
        c.io_mask = sum(1 << sc for sc in IO_SYSCALLS)
        roles = NativeRoles(lib, ptr)
        for key, role in normalizer.roles.items():
            roles[key] = role
        normalizer.roles = roles
        self.handed_back = 0  # records Python encoded (diagnostics)
        self._containers_seen = None

    def close(self) -> None:
        if self.ptr:
            self.lib.fp_free(self.ptr)
            self.ptr = None

    def _check_containers(self) -> None:
        containers, seen = self.norm.containers, self._containers_seen
        if containers is not None and (seen is None or seen[0] is not containers.v2 or seen[1] is not containers.v1):
            self._containers_seen = (containers.v2, containers.v1)
            self.lib.fp_clear_templates(self.ptr)  # container ids were re-resolved: templates may name them now

    def drain(self, addr: int, buf, cons: int, prod: int, base: int, mask: int, limit: int, batcher,
              now: float) -> tuple[int, int, int, list]:
        """Walk the ring records from `cons` to `prod` (at most `limit`) into `batcher`. `addr` is
        the address of the ring memory that `buf` (a Python buffer of the same memory) exposes.
        Returns (position reached, records consumed, events, closed batches); the caller
        releases the position to the kernel."""
        self._check_containers()
        lib, ptr, c, norm = self.lib, self.ptr, self.ctx, self.norm
        c.n = norm.n  # loss markers between drains took sequence numbers too
        walk = lib.fp_walk
        closed: list = []
        done = events = 0
        while cons < prod and done < limit:
            status = walk(ptr, addr, cons, prod, base, mask, limit - done, batcher.max_events - batcher.pending_events,
                          batcher.max_bytes - batcher.pending_bytes, batcher.pending_events > 0)
            if c.events:  # (a batch it filled to max_events is closed there)
                closed.extend(batcher.add_joined(ctypes.string_at(c.out, c.out_len), c.events, c.bytes, now))
            events += c.events
            done += c.done
            cons = c.cons
            if status == FP_FULL:
                if batcher.pending_events:
                    closed.append(batcher.close(now))
                elif not c.events:
                    break  # nothing fits an empty batch: out of memory in C; the records stay in the ring
            elif status == FP_PYTHON:
                cons, d, e = self._python_one(addr, buf, cons, prod, base, mask, batcher, now, closed)
                done += d
                events += e
            else:
                break
        norm.n = c.n  # loss markers are numbered by the Normalizer
        return cons, done, events, closed

    def _python_one(self, addr, buf, cons, prod, base, mask, batcher, now, closed) -> tuple[int, int, int]:
        """The record at `cons` through the Python encoder; its socket's template goes to C."""
        c, norm = self.ctx, self.norm
        why, role = c.why, c.role
        norm.n = c.n
        out: list = []
        offset = base + (cons & mask) + RINGBUF_HDR
        new, done = norm.encode_ring(buf, cons, prod, base, mask, 1, out, self.payload, self.snaplen, self.suspicious)
        c.n = norm.n
        self.handed_back += 1
        if why != WHY_OTHER:  # a send/receive: C can take its socket's next records
            _ts, cg2, cg1, _ret, pid, _tid, fd, *_rest = HEAD.unpack_from(buf, offset)
            key = (bytes(buf[offset + KEY_AT:offset + RECORD.size]), pid, fd, cg2, cg1, ROLE_NAMES[role])
            t = norm.templates.get(key)
            if t is not None:
                js, learn = t
                self.lib.fp_add_template(self.ptr, addr + offset, role, js, len(js), ROLE_CODES[learn])
        if out:
            closed.extend(batcher.add(out, now))
        return new, done, len(out)


class NativeRing:
    """The native loop over the live ring (loader.RingReader): its data pages mapped once more, for C."""

    def __init__(self, ring, encoder: NativeEncoder) -> None:
        self.ring = ring
        self.encoder = encoder
        self.length = ring.page + 2 * ring.size
        self.addr = encoder.lib.fp_map(ring.map_fd, self.length, ring.page)
        if not self.addr:
            raise NativeUnavailable("cannot map the ring buffer for the native fast path")

    def drain(self, batcher, limit: int, now: float) -> tuple[int, int, list]:
        """(records consumed, events, closed batches); consumed records are released to the kernel."""
        ring = self.ring
        cons, prod = ring.positions()
        if cons >= prod:
            return 0, 0, []
        new, done, events, closed = self.encoder.drain(self.addr, ring.data, cons, prod, ring.page, ring.mask, limit,
                                                       batcher, now)
        if done:
            ring.release(new)  # after the output was copied: the kernel may overwrite them now
        return done, events, closed

    def close(self) -> None:
        if self.addr:
            self.encoder.lib.fp_unmap(self.addr, self.length)
            self.addr = None
        self.encoder.close()
