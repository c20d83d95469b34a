"""The agent's native per-event loop (fastpath.c) through ctypes.

`NativeEncoder.drain` walks the ring in C and hands the agent's `Batcher` whole runs of event
JSON, already joined and sized, so Python does per-batch work only. Python keeps every decision
about what an event says: `records.Normalizer` builds the per-socket JSON templates C fills in,
and encodes the records C hands back (other syscalls, failed calls, the first record of a
socket, payloads the redaction pre-check flags) exactly as on the Python path. The role of each
socket lives in C (`NativeRoles`), shared by both. The output equals the Python path's
(`Normalizer.encode_ring` + `Batcher`) byte for byte; a test checks it.

The syscall-columns form (`NativeEncoder.columns_batcher`): the open batch lives in C, one row per
event (its socket's template and its ts, n, tid, res, size and payload), and C writes the record's
strings and columns when it closes (`NativeColumns`). A socket's columns template is the values of
the event its JSON template says (decoded from that JSON: one source of truth); the records Python
encodes join the C batch as events. The record equals what `Batcher(form="msgpack")` writes of the
Python path's events, byte for byte; a test checks that too.

`load()` builds the library with the machine's C compiler (cached, see build.py) or raises
`NativeUnavailable` with the reason; the agent then logs it and keeps the Python path.
"""
from __future__ import annotations

import ctypes
import struct
from ctypes import POINTER, c_char_p, c_int, c_int32, c_int64, c_uint32, c_uint64, c_void_p

import msgspec

from svctrace.agents.agent import pipeline
from svctrace.agents.agent.pipeline import Batcher, EncodedBatch
from svctrace.agents.ebpf.records import HEAD, IO_SYSCALLS, KEY_AT, NO_PAYLOAD, RECORD, RINGBUF_HDR, Normalizer
from svctrace.schemas import syscall_columns as columns

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
            ("fp_walk_cols", c_int, [P, c_void_p, c_uint64, c_uint64, c_uint64, c_uint64, c_uint64, c_uint64,
                                     c_uint64, c_int]),
            ("fp_cols_setup", c_int, [P, c_uint32, c_char_p]),
            ("fp_add_columns_template", c_int, [P, c_void_p, c_uint32, c_char_p, c_uint32, c_uint32, c_uint32]),
            ("fp_cols_add_event", c_int, [P, c_char_p, c_uint32, c_uint32]),
            ("fp_cols_close", c_int, [P]),
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

# fastpath.c's K_*: what each field of the columns form is to the C loop (a template's value, a template's
# string, or one of the row's own values: those a JSON template has placeholders for, and `redacted`)
K_CONST, K_STR, K_ARRAY = 0, 1, 0x80
_ROW_KINDS = {"ts": 2, "n": 3, "tid": 4, "res": 5, "size": 6, "data": 7, "redacted": 8}


def column_kinds() -> bytes:
    """Each field's K_* for fp_cols_setup, in the form's field order (syscall_columns.FIELDS), with K_ARRAY
    for the fields encode_columns always writes as arrays (neither a string nor one of its _OTHER_AT)."""
    kinds = []
    for i, name in enumerate(columns.FIELDS):
        k = _ROW_KINDS.get(name, K_STR if name in columns.STRING_FIELDS else K_CONST)
        if i not in columns._STRING_AT and i not in columns._OTHER_AT:
            k |= K_ARRAY
        kinds.append(k)
    return bytes(kinds)


_mp = msgspec.msgpack.encode
_astuple = msgspec.structs.astuple
_event_json = msgspec.json.Decoder(pipeline.SyscallEvent)


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
        self.columns = False  # the syscall-columns form: rows of a batch held in C (columns_batcher)

    def columns_batcher(self, like: Batcher) -> "NativeColumns":
        """From now on this loop writes the syscall-columns form: the batcher (with `like`'s node, source,
        bounds and seq) whose open batch is held in C. `like` must hold no events."""
        if like.pending_events:
            raise ValueError("the native columns batcher replaces an empty batcher only")
        if not self.columns:
            kinds = column_kinds()
            if self.lib.fp_cols_setup(self.ptr, len(kinds), kinds):
                raise NativeUnavailable(f"the native loop cannot write {len(kinds)} event fields as columns")
            self.columns = True
        return NativeColumns(like, self)

    def push_event(self, ev, bound: int) -> None:
        """One SyscallEvent into the open columns batch, counted by `bound` (pipeline._bound)."""
        blob = _mp(_astuple(ev))
        if self.lib.fp_cols_add_event(self.ptr, blob, len(blob), bound):
            raise ValueError(f"the native columns batch cannot take the event {ev!r}")

    def close_columns(self) -> bytes:
        """The open batch's `strings` and `columns` (fastpath.c fp_cols_close); the batch is emptied."""
        if self.lib.fp_cols_close(self.ptr):
            raise MemoryError("out of memory writing a syscall-columns record")
        return ctypes.string_at(self.ctx.out, self.ctx.out_len)

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
        cols = self.columns
        if cols and not isinstance(batcher, NativeColumns):
            raise ValueError("a native loop of the columns form fills its own batcher (columns_batcher)")
        walk = lib.fp_walk_cols if cols else lib.fp_walk
        closed: list = []
        done = events = 0
        while cons < prod and done < limit:
            # (an event alone past max_bytes fills its batch: no room is left, not a negative one)
            status = walk(ptr, addr, cons, prod, base, mask, limit - done, batcher.max_events - batcher.pending_events,
                          max(batcher.max_bytes - batcher.pending_bytes, 0), batcher.pending_events > 0)
            if c.events:  # (a batch it filled to max_events is closed there)
                if cols:
                    closed.extend(batcher.add_native(c.events, c.bytes, now))
                else:
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
                if self.columns:  # the values the JSON template says, as the event's msgpack values
                    ev = _event_json.decode(js % (0, 0, 0, 0, 0, NO_PAYLOAD))
                    blob = _mp(_astuple(ev))
                    self.lib.fp_add_columns_template(self.ptr, addr + offset, role, blob, len(blob),
                                                     pipeline._bound(ev), ROLE_CODES[learn])
                else:
                    self.lib.fp_add_template(self.ptr, addr + offset, role, js, len(js), ROLE_CODES[learn])
        if out:
            closed.extend(batcher.add(out, now))
        return new, done, len(out)


class NativeColumns(Batcher):
    """A Batcher of the syscall-columns form whose open batch is held in C by a NativeEncoder (fastpath.c):
    the native loop appends rows to it (`add_native`), events from Python (records it handed back, loss
    markers) join as events (`add`, `add_marker`), each counted by the Batcher's bound (pipeline._bound), and
    the same bounds close it. Its records equal `Batcher(form="msgpack")`'s of the same events."""

    def __init__(self, like: Batcher, encoder: NativeEncoder) -> None:
        super().__init__(like.node, like.source, max_events=like.max_events, max_bytes=like.max_bytes,
                         linger_s=like.linger_s, seq=like.seq, form="msgpack")
        self.encoder = encoder
        # the record's head up to its `strings` (encode_columns' document, keys in its order)
        self._head = (_mp("schema") + _mp(columns.SCHEMA) + _mp("version") + _mp(columns.VERSION) + _mp("node")
                      + _mp(self.node) + _mp("source") + _mp(self.source) + _mp("seq"))
        self._fields = _mp("fields") + _mp(columns.FIELDS) + _mp("strings")

    def add(self, events: list, now: float) -> list[EncodedBatch]:
        events, sizes = self._encoded(events)
        out = []
        if events and not self.pending_events:
            self.opened_at = now
        push = self.encoder.push_event
        for ev, size in zip(events, sizes):
            if self.pending_events and self.pending_bytes + size > self.max_bytes:
                out.append(self.close(now))
            push(ev, size)
            self.pending_events += 1
            self.pending_bytes += size
            if self.pending_events >= self.max_events:
                out.append(self.close(now))
        return out

    def add_native(self, events: int, size: int, now: float) -> list[EncodedBatch]:
        """`events` rows the native loop appended, `size` their bounds (it filled the open batch's room)."""
        if not self.pending_events:
            self.opened_at = now
        self.pending_events += events
        self.pending_bytes += size
        if self.pending_events >= self.max_events:
            return [self.close(now)]
        return []

    def add_joined(self, joined: bytes, events: int, size: int, now: float) -> list[EncodedBatch]:
        raise ValueError("joined event JSON goes into a batcher of the json form")

    def add_marker(self, ev, now: float) -> None:
        if not self.pending_events:
            self.opened_at = now
        size = pipeline._bound(ev)
        self.encoder.push_event(ev, size)
        self.pending_events += 1
        self.pending_bytes += size

    def due(self, now: float) -> bool:
        return self.pending_events > 0 and now - self.opened_at >= self.linger_s

    def flush(self) -> EncodedBatch | None:
        return self._close() if self.pending_events or self.pending_lost else None

    def _close(self) -> EncodedBatch:
        n = self.pending_events
        if not n:
            return self._closed(columns.encode_columns(self.node, self.source, self.seq, self.pending_lost, []))
        tail = self.encoder.close_columns()
        head = (b"\x8a" + self._head + _mp(self.seq) + _mp("lost") + _mp(self.pending_lost) + _mp("count") + _mp(n)
                + self._fields)
        return self._closed(head + tail)


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
