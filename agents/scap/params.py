"""Generic, table-driven parameter decoding (scap-format.md §10-11).

`LAYOUTS[code]` is precompiled once from the event table: parameter names,
one decoder per parameter type and the width of the length array. Decoders
take the parameter's bytes and never raise on odd lengths (a fixed-size value
with a surprising width is read as an integer of that width), so corrupted
values cannot crash the reader; inconsistent *lengths* raise ValueError.

Decoded forms: integers; strings (CHARBUF/FSPATH, trailing NUL dropped);
bytes (BYTEBUF and unknown types); socket tuples as ("ipv4"|"ipv6", sip,
sport, dip, dport) or ("unix", source, dest, path); socket addresses as
("ipv4"|"ipv6", ip, port) or ("unix", path); None for an empty value.
"""
from __future__ import annotations

import struct

from .blocks import ip4, ip6
from .event_table import EVENTS, FIXED, STRING_TYPES

PPM_AF_UNIX, PPM_AF_INET, PPM_AF_INET6 = 1, 2, 10


def _int_decoder(signed: bool):
    def dec(b: bytes, _f=int.from_bytes, _s=signed):
        return _f(b, "little", signed=_s) if b else None
    return dec



def dec_str(b: bytes):
    if not b:
        return None
    return b.split(b"\0", 1)[0].decode("utf-8", "replace")


def dec_bytes(b: bytes):
    return b


def _memoized(decode):
    """`decode` with a memo by the value's bytes: a connection's events repeat its socket
    tuple and address, so most are decoded once. Values are immutable tuples (shared is
    safe); the memo is emptied when it reaches _MEMO_MAX entries (bounded)."""
    memo: dict[bytes, object] = {}

    def memoized(b: bytes):
        try:
            return memo[b]
        except KeyError:
            pass
        if len(memo) >= _MEMO_MAX:
            memo.clear()
        value = memo[b] = decode(b)
        return value

    memoized.__name__ = memoized.__qualname__ = decode.__name__
    memoized.__doc__ = decode.__doc__
    return memoized


_MEMO_MAX = 4096


_TUPLE4 = struct.Struct("<x4sH4sH").unpack_from  # family, source ip and port, destination ip and port
_TUPLE6 = struct.Struct("<x16sH16sH").unpack_from


@_memoized
def dec_tuple(b: bytes):
    if not b:
        return None
    fam = b[0]
    if fam == PPM_AF_INET and len(b) >= 13:
        sip, sport, dip, dport = _TUPLE4(b)
        return ("ipv4", ip4(sip), sport, ip4(dip), dport)
    if fam == PPM_AF_INET6 and len(b) >= 37:
        sip, sport, dip, dport = _TUPLE6(b)
        sip, dip = ip6(sip), ip6(dip)
        return ("ipv4" if "." in sip and "." in dip else "ipv6", sip, sport, dip, dport)
    if fam == PPM_AF_UNIX and len(b) >= 17:
        src, dst = struct.unpack_from("<QQ", b, 1)
        return ("unix", src, dst, b[17:].split(b"\0", 1)[0].decode("utf-8", "replace"))
    return ("other", fam)


@_memoized
def dec_sockaddr(b: bytes):
    if not b:
        return None
    fam = b[0]
    if fam == PPM_AF_INET and len(b) >= 7:
        return ("ipv4", ip4(b[1:5]), struct.unpack_from("<H", b, 5)[0])
    if fam == PPM_AF_INET6 and len(b) >= 19:
        ip = ip6(b[1:17])
        return ("ipv4" if "." in ip else "ipv6", ip, struct.unpack_from("<H", b, 17)[0])
    if fam == PPM_AF_UNIX:
        return ("unix", b[1:].split(b"\0", 1)[0].decode("utf-8", "replace"))
    return ("other", fam)


def dec_ipv4(b: bytes):
    return ip4(b) if len(b) == 4 else b


def dec_ipv6(b: bytes):
    return ip6(b) if len(b) == 16 else b


def dec_ipaddr(b: bytes):
    return ip4(b) if len(b) == 4 else ip6(b) if len(b) == 16 else b


def decoder_for(ptype: str):
    if ptype in FIXED:
        return _int_decoder(FIXED[ptype][1])
    if ptype in STRING_TYPES:
        return dec_str
    return {
        "SOCKTUPLE": dec_tuple,
        "SOCKADDR": dec_sockaddr,
        "IPV4ADDR": dec_ipv4,
        "IPV6ADDR": dec_ipv6,
        "IPADDR": dec_ipaddr,
        "IPNET": dec_ipaddr,
    }.get(ptype, dec_bytes)


# struct codes of the fixed-size types (little-endian, no padding)
_SIGNED_CODES = {1: "b", 2: "h", 4: "i", 8: "q"}
FIXED_CODES: dict[str, str] = {t: _SIGNED_CODES[w] if signed else _SIGNED_CODES[w].upper()
                               for t, (w, signed) in FIXED.items()}


def _no_fast(buf, pos, end):
    """Where no fast path fits (more params than the table knows): the slow path judges."""
    return None


class Layout:
    """Precompiled parameter layout of one event type."""
    __slots__ = ("code", "names", "types", "decoders", "signed", "nmax", "width", "len_structs", "unrolled", "covers",
                 "fast_exits", "fast_enters")

    def __init__(self, info):
        self.code = info.code
        self.names = info.param_names
        self.types = tuple(t for _, t in info.params)
        self.decoders = tuple(decoder_for(t) for _, t in info.params)
        self.signed = tuple(FIXED[t][1] if t in FIXED else None for _, t in info.params)  # None: not an integer
        self.nmax = len(info.params)
        self.width = 4 if info.large_payload else 2
        self.len_structs: dict[int, struct.Struct] = {}  # nparams -> length-array layout, built on use
        self.unrolled: dict[int, object] = {}  # nparams -> its decode loop unrolled, built on use
        self.covers: dict[int, bool] = {}  # nparams << 16 | enter's nparams -> repeats(), on use
        self.fast_exits: dict[int, object] = {}  # nparams -> fast(), built on use
        self.fast_enters: dict[int, object] = {}  # nparams -> fast_enter(), built on use

    def _unrolled(self, nparams: int):
        """decode()'s loop for `nparams` (<= nmax) params, written out once: integers read in
        place, the other decoders called directly (this runs for every event of the capture)."""
        scope = {"_from": int.from_bytes}
        lines = ["def decode(buf, p, lens):"]
        if nparams:
            lines.append(f"    {''.join(f'l{i}, ' for i in range(nparams))}= lens")
        items = []
        for i in range(nparams):
            lines.append(f"    e{i} = {'p' if i == 0 else f'e{i - 1}'} + l{i}")
            value = f"buf[{'p' if i == 0 else f'e{i - 1}'}:e{i}]"
            if self.signed[i] is None:
                scope[f"_d{i}"] = self.decoders[i]
                items.append(f"{self.names[i]!r}: _d{i}({value})")
            else:  # as _int_decoder's: an empty value is None
                items.append(f"{self.names[i]!r}: _from({value}, 'little', signed={self.signed[i]}) if l{i} else None")
        lines.append("    return {" + ", ".join(items) + "}")
        exec("\n".join(lines) + "\n", scope)  # noqa: S102 - generated from the event table only
        fn = self.unrolled[nparams] = scope["decode"]
        return fn

    def fast(self, nparams: int):
        """decode() of a well-formed event with `nparams` params, from one precompiled struct per
        run of fixed-size params (the length array and the leading run in one): the reader's
        per-event path. `fast(buf, pos, end)` returns decode()'s dict, or None where decode() must
        judge (a fixed-size value of another width or empty, lengths past the event, more params
        than the table knows); it may raise struct.error near the end of the buffer (the same)."""
        fn = self.fast_exits.get(nparams)
        if fn is None:
            if nparams > self.nmax:  # not kept: a damaged file could hold any count
                return _no_fast
            fn = self.fast_exits[nparams] = self._compile_fast(nparams, enter=False)
        return fn

    def fast_enter(self, nparams: int):
        """For an enter event kept for its exit: `fn(buf, pos, end)` checks that its lengths fit
        the event (as checked_lengths) and returns its fd where param 0 is one (type FD, 8 bytes
        wide), else True; None where the slow path must judge."""
        fn = self.fast_enters.get(nparams)
        if fn is None:
            if nparams > self.nmax:
                return _no_fast
            fn = self.fast_enters[nparams] = self._compile_fast(nparams, enter=True)
        return fn

    def _compile_fast(self, nparams: int, enter: bool):
        """fast() (or fast_enter()) for `nparams` params, written out from the table like
        _unrolled(). For RECVFROM_X (res, data, tuple, fd, size): one struct reads the five
        lengths and res, data and tuple are sliced, one struct reads fd and size, the end is
        checked, then the dict; the widths of the fixed-size values are checked first."""
        lc = "I" if self.width == 4 else "H"
        lens = [f"l{i}" for i in range(nparams)]
        scope: dict = {}
        fixed = [FIXED_CODES.get(t) for t in self.types[:nparams]]
        lead = 0
        while lead < nparams and fixed[lead] is not None:
            lead += 1
        if enter:
            with_fd = self.names[:1] == ("fd",) and self.types[0] == "FD"
            if with_fd and not nparams:
                return _no_fast  # an event without its fd: the slow path judges
            lead = 1 if with_fd else 0
        scope["_s0"] = struct.Struct("<" + lc * nparams + "".join(fixed[:lead]))
        lines = ["def fast(buf, pos, end):"]
        if nparams:
            targets = "".join(f"{x}, " for x in lens + [f"v{i}" for i in range(lead)])
            lines.append(f"    {targets}= _s0.unpack_from(buf, pos)")
        if enter:
            if with_fd:
                lines.append("    if l0 != 8: return None")
            total = " + ".join([f"pos + {self.width * nparams}"] + lens)
            lines.append(f"    if {total} > end: return None")
            lines.append(f"    return {'v0' if with_fd else 'True'}")
        else:
            bad = [f"l{i} != {struct.calcsize('<' + c)}" for i, c in enumerate(fixed) if c is not None]
            if bad:
                lines.append(f"    if {' or '.join(bad)}: return None")
            off = f"pos + {self.width * nparams + sum(struct.calcsize('<' + c) for c in fixed[:lead])}"
            values = [f"v{i}" for i in range(lead)]
            i = lead
            while i < nparams:
                if fixed[i] is None:
                    lines.append(f"    e{i} = {off} + l{i}")
                    value = f"buf[{off}:e{i}]"
                    if self.decoders[i] is not dec_bytes:
                        scope[f"_d{i}"] = self.decoders[i]
                        value = f"_d{i}({value})"
                    values.append(value)
                    off = f"e{i}"
                    i += 1
                    continue
                j = i
                while j < nparams and fixed[j] is not None:
                    j += 1
                scope[f"_s{i}"] = run = struct.Struct("<" + "".join(fixed[i:j]))
                lines.append(f"    {''.join(f'v{k}, ' for k in range(i, j))}= _s{i}.unpack_from(buf, {off})")
                values += [f"v{k}" for k in range(i, j)]
                lines.append(f"    e{j - 1} = {off} + {run.size}")
                off = f"e{j - 1}"
                i = j
            lines.append(f"    if {off} > end: return None")
            lines.append("    return {" + ", ".join(f"{self.names[k]!r}: {v}" for k, v in enumerate(values)) + "}")
        exec("\n".join(lines) + "\n", scope)  # noqa: S102 - generated from the event table only
        return scope["fast"]

    def _lens_struct(self, nparams: int) -> struct.Struct:
        s = self.len_structs.get(nparams)
        if s is None:
            s = struct.Struct(f"<{nparams}{'I' if self.width == 4 else 'H'}")
            if nparams <= self.nmax:
                self.len_structs[nparams] = s
        return s

    def lengths(self, buf, pos: int, nparams: int) -> tuple[int, ...]:
        s = self.len_structs.get(nparams) or self._lens_struct(nparams)
        return s.unpack_from(buf, pos)

    def int_at(self, buf, pos: int, nparams: int, idx: int, lens: tuple[int, ...] | None = None):
        """Integer value of param idx without decoding the others (None if empty)."""
        if lens is None:
            lens = self.lengths(buf, pos, nparams)
        ln = lens[idx]
        if not ln:
            return None
        off = pos + self.width * nparams + sum(lens[:idx])
        return int.from_bytes(buf[off:off + ln], "little", signed=True)

    def infer_nparams(self, buf, pos: int, avail: int, evt_len: int, header: int) -> int:
        """v1 blocks carry no nparams: largest n whose lengths add up to evt_len."""
        w = self.width
        for n in range(min(self.nmax, avail // w), -1, -1):
            lens = self.lengths(buf, pos, n)
            if header + w * n + sum(lens) == evt_len:
                return n
        raise ValueError(f"parameter lengths do not add up to the event length {evt_len}")

    def checked_lengths(self, buf, pos: int, end: int, nparams: int,
                        lens: tuple[int, ...] | None = None) -> tuple[int, ...]:
        """The length array, checked to fit the event (ValueError otherwise): once it
        fits, decode() cannot fail (decoders never raise on a value's bytes). (decode() checks
        the same inline.)"""
        if lens is None:
            lens = self.lengths(buf, pos, nparams)
        if pos + self.width * nparams + sum(lens) > end:
            raise ValueError("parameter lengths run past the event")
        return lens

    def repeats(self, nparams: int, enter: "Layout", enter_nparams: int) -> bool:
        """Does this exit event (with nparams) carry every param of its enter event (with
        enter_nparams)? Then merging the enter adds nothing (the exit's values win)."""
        key = nparams << 16 | enter_nparams  # (both below 4097: the reader refuses more)
        known = self.covers.get(key)
        if known is None:
            known = self.covers[key] = set(_names(enter, enter_nparams)) <= set(_names(self, nparams))
        return known

    def decode(self, buf, pos: int, end: int, nparams: int, lens: tuple[int, ...] | None = None) -> dict:
        """All params by name; pos = start of the length array, end = event end (lens: the
        length array when the caller has read it already)."""
        if lens is None:
            lens = self.lengths(buf, pos, nparams)
        p = pos + self.width * nparams
        if p + sum(lens) > end:
            raise ValueError("parameter lengths run past the event")
        if nparams <= self.nmax:
            return (self.unrolled.get(nparams) or self._unrolled(nparams))(buf, p, lens)
        out = {}
        names, decs = self.names, self.decoders
        for i, ln in enumerate(lens):
            b = buf[p:p + ln]
            p += ln
            out[names[i] if i < self.nmax else f"param{i}"] = decs[i](b) if i < self.nmax else b
        return out


def _names(layout: Layout, nparams: int) -> list[str]:
    """decode()'s names of the first nparams params."""
    return [layout.names[i] if i < layout.nmax else f"param{i}" for i in range(nparams)]


LAYOUTS: tuple[Layout, ...] = tuple(Layout(e) for e in EVENTS)
