"""Block framing and the metadata blocks of a .scap file (scap-format.md §1-9).

`BlockStream` walks the pcapng-style blocks of a plain or gzip file through a
bounded read buffer and checks each block's framing (known type, plausible
length, trailer == header length). It yields `(offset, block_type, buf, start,
end)`: the block body is `buf[start:end]` (after the 8-byte header, before the
trailer) and is valid only until the next iteration, so event blocks are
decoded without copying. With `skip_corrupt` a framing error is not raised:
the stream scans forward (4-byte aligned, as every valid block is) to the next
block whose framing checks out and adds the distance to `stats.skipped_bytes`.

The `parse_*` functions decode metadata block bodies into plain dicts/tuples;
they raise `struct.error`/`IndexError`/`ValueError` on malformed bodies, which
the reader turns into `CaptureError` naming the block.
"""
from __future__ import annotations

import gzip
import re
import socket
import struct
import zlib
from dataclasses import dataclass, field
from typing import BinaryIO, Iterator

from .errors import CaptureError

SHB = 0x0A0D0D0A
SHB_MAGIC = 0x1A2B3C4D
SHB_MAGIC_SWAPPED = 0x4D3C2B1A

BLOCK_NAMES: dict[int, str] = {
    SHB: "SHB",
    0x201: "MI", 0x8002ABCD: "MI_INT",
    0x202: "PL_V1", 0x8000ABCD: "PL_V1_INT", 0x207: "PL_V2", 0x8013ABCD: "PL_V2_INT",
    0x209: "PL_V3", 0x8014ABCD: "PL_V3_INT", 0x210: "PL_V4", 0x211: "PL_V5", 0x212: "PL_V6",
    0x213: "PL_V7", 0x214: "PL_V8", 0x215: "PL_V9",
    0x203: "FDL", 0x8001ABCD: "FDL_INT", 0x218: "FDL_V2",
    0x204: "EV", 0x8010ABCD: "EV_INT", 0x216: "EV_V2", 0x221: "EV_V2_LARGE",
    0x208: "EVF", 0x217: "EVF_V2", 0x222: "EVF_V2_LARGE",
    0x205: "IL", 0x8011ABCD: "IL_INT", 0x219: "IL_V2",
    0x206: "UL", 0x8012ABCD: "UL_INT", 0x220: "UL_V2",
}
MI_TYPES = frozenset((0x201, 0x8002ABCD))
PL_VERSION = {0x202: 1, 0x8000ABCD: 1, 0x207: 2, 0x8013ABCD: 2, 0x209: 3, 0x8014ABCD: 3,
              0x210: 4, 0x211: 5, 0x212: 6, 0x213: 7, 0x214: 8, 0x215: 9}
FDL_TYPES = {0x203: False, 0x8001ABCD: False, 0x218: True}  # -> has sub_len (V2)
IL_TYPES = {0x205: False, 0x8011ABCD: False, 0x219: True}
UL_TYPES = {0x206: False, 0x8012ABCD: False, 0x220: True}
# event block type -> (v2 header with nparams, has u32 flags after cpuid, may exceed 64 KiB)
EVENT_BLOCKS: dict[int, tuple[bool, bool, bool]] = {
    0x204: (False, False, False), 0x8010ABCD: (False, False, False),
    0x216: (True, False, False), 0x221: (True, False, True),
    0x208: (False, True, False), 0x217: (True, True, False), 0x222: (True, True, True),
}

SMALL_EVENT_BLOCKS = frozenset(t for t, (_v2, _flags, large) in EVENT_BLOCKS.items() if not large)

READER_BUF_SIZE = 65536  # libscap: larger event blocks only in the *_LARGE types
MAX_BLOCK = 64 << 20  # our bound for metadata/large blocks: memory stays bounded
CHUNK = 1 << 20

_U16 = struct.Struct("<H")
_U32 = struct.Struct("<I")
_HDR = struct.Struct("<II")


def block_name(btype: int) -> str:
    return BLOCK_NAMES.get(btype, f"0x{btype:08x}")


@dataclass
class Stats:
    """Counters of one read, exposed as `CaptureReader.stats`."""
    sections: int = 0
    blocks: int = 0
    event_blocks: int = 0
    events: int = 0  # events counted in `n` (known types)
    unknown_event_types: int = 0  # types beyond our table, skipped like libscap
    emitted: int = 0  # SyscallEvents yielded
    skipped_bytes: int = 0
    skipped_blocks: int = 0
    errors: list[str] = field(default_factory=list)  # first MAX_ERRORS problems skipped with --skip-corrupt
    error_count: int = 0

    MAX_ERRORS = 100  # a long damaged stretch must not grow memory

    def error(self, message: str) -> None:
        self.error_count += 1
        if len(self.errors) < self.MAX_ERRORS:
            self.errors.append(message)

    def as_dict(self) -> dict:
        return {k: getattr(self, k) for k in self.__dataclass_fields__}


def open_raw(path) -> tuple[BinaryIO, str]:
    """Open a capture; gzip files (magic 1f 8b) are decompressed on the fly."""
    if hasattr(path, "read"):
        f, name = path, getattr(path, "name", "<stream>")
    else:
        name = str(path)
        f = open(path, "rb")
    if hasattr(f, "peek"):
        head = f.peek(2)[:2]
    elif f.seekable():
        pos = f.tell()
        head = f.read(2)
        f.seek(pos)
    else:
        head = b""
    if head == b"\x1f\x8b":
        return gzip.GzipFile(fileobj=f, mode="rb"), str(name)
    return f, str(name)


class BlockStream:
    def __init__(self, raw: BinaryIO, name: str, stats: Stats, skip_corrupt: bool = False):
        self._f = raw
        self.name = name
        self.stats = stats
        self.skip_corrupt = skip_corrupt
        self._buf = b""
        self._pos = 0  # position in _buf
        self._base = 0  # stream offset of _buf[0]
        self._eof = False
        self._first = True  # the section header block is not read yet
        self.decompressed = isinstance(raw, gzip.GzipFile)  # offsets are in the decompressed stream
        # read1: a truncated gzip stream still yields everything before the damage
        self._read = getattr(raw, "read1", raw.read)

    # -- buffer -------------------------------------------------------------
    def _fill(self, n: int) -> bool:
        """Make n bytes available from _pos; False if the stream ends before."""
        avail = len(self._buf) - self._pos
        if avail >= n:
            return True
        if self._eof:
            return False
        parts = [self._buf[self._pos:]]
        self._base += self._pos
        self._pos = 0
        while avail < n and not self._eof:
            try:
                chunk = self._read(max(CHUNK, n - avail))
            except (OSError, EOFError, zlib.error) as e:  # gzip.BadGzipFile is an OSError
                self._eof = True
                self._buf = b"".join(parts)
                raise CaptureError(self.name, self._base + avail, "gzip",
                                   f"compressed stream is corrupt or truncated: {e}", self.decompressed) from None
            if not chunk:
                self._eof = True
                break
            parts.append(chunk)
            avail += len(chunk)
        self._buf = b"".join(parts)
        return avail >= n

    def offset(self) -> int:
        return self._base + self._pos

    # -- blocks -------------------------------------------------------------
    def _check(self, at_start: bool) -> tuple[int, int] | str:
        """Framing of the block at _pos: (type, length) or a reason string."""
        if not self._fill(8):
            left = len(self._buf) - self._pos
            return f"truncated block header ({left} bytes left)" if left else "EOF"
        btype, blen = _HDR.unpack_from(self._buf, self._pos)
        if at_start:
            if btype != SHB:
                return f"not a scap capture: wrong magic 0x{btype:08x} (expected a section header block)"
            if self._fill(12):
                magic = _U32.unpack_from(self._buf, self._pos + 8)[0]
                if magic == SHB_MAGIC_SWAPPED:
                    return "byte-swapped (big-endian) capture: not supported by libscap either"
        if btype not in BLOCK_NAMES:
            return f"unknown block type 0x{btype:08x}"
        if blen < 12 or blen % 4:
            return f"invalid block length {blen}"
        ev = EVENT_BLOCKS.get(btype)
        limit = READER_BUF_SIZE + 8 if ev is not None and not ev[2] else MAX_BLOCK
        if blen > limit:
            return f"absurd block length {blen} (limit {limit})"
        if not self._fill(blen):
            return f"truncated block: length {blen}, only {len(self._buf) - self._pos} bytes left"
        trailer = _U32.unpack_from(self._buf, self._pos + blen - 4)[0]
        if trailer != blen:
            return f"wrong block total length, header={blen}, trailer={trailer}"
        return btype, blen

    def __iter__(self) -> Iterator[tuple[int, int, bytes, int, int]]:
        stats = self.stats
        small_events = SMALL_EVENT_BLOCKS
        limit = READER_BUF_SIZE + 8
        hdr, u32 = _HDR.unpack_from, _U32.unpack_from
        while True:
            # fast path: a whole, well-framed event block already in the buffer
            buf, pos = self._buf, self._pos
            if len(buf) - pos >= 8 and not self._first:
                btype, blen = hdr(buf, pos)
                if (btype in small_events and 12 <= blen <= limit and not blen & 3
                        and len(buf) - pos >= blen and u32(buf, pos + blen - 4)[0] == blen):
                    self._pos = pos + blen
                    stats.blocks += 1
                    yield self._base + pos, btype, buf, pos + 8, pos + blen - 4
                    continue
            got = self.next_block()
            if got is None:
                return
            yield got

    def next_block(self) -> tuple[int, int, bytes, int, int] | None:
        """The block at the read position, framing checked in full (refilling the buffer; with
        skip_corrupt, resynchronizing past damage): (offset, type, buf, start, end) or None at the
        end. The reader's own loop takes well-framed event blocks straight from `_buf` at `_pos`
        (as __iter__'s fast path does) and calls this for everything else."""
        stats = self.stats
        while True:
            first = self._first
            try:
                got = self._check(first)
            except CaptureError as e:
                if not self.skip_corrupt:
                    raise
                stats.error(str(e))
                stats.skipped_bytes += max(0, len(self._buf) - self._pos)
                return None
            if got == "EOF":
                if first:
                    raise CaptureError(self.name, 0, "SHB", "empty file: no section header block")
                return None
            if isinstance(got, str):
                off = self.offset()
                btype = _U32.unpack_from(self._buf, self._pos)[0] if len(self._buf) - self._pos >= 4 else None
                err = CaptureError(self.name, off, block_name(btype) if btype is not None else "?", got,
                                   self.decompressed)
                if not self.skip_corrupt or (first and "byte-swapped" in got):
                    raise err
                stats.error(str(err))
                if not self._resync():
                    return None
                self._first = False
                continue
            btype, blen = got
            self._first = False
            start = self._pos
            self._pos = start + blen
            stats.blocks += 1
            return self._base + start, btype, self._buf, start + 8, start + blen - 4

    def skip_current(self, offset: int, length: int) -> None:
        """Account a well-framed block whose content the reader rejected."""
        self.stats.skipped_bytes += length
        self.stats.skipped_blocks += 1

    def _resync(self) -> bool:
        """Advance to the next 4-aligned offset holding a well-framed block."""
        start = self.offset()
        self._pos += 4 - self.offset() % 4
        while True:
            try:
                more = self._fill(8)
                got = self._check(False) if more else None
            except CaptureError as e:
                self.stats.error(str(e))
                more = False
            if not more:
                self.stats.skipped_bytes += self.offset() - start + (len(self._buf) - self._pos)
                self._pos = len(self._buf)
                return False
            if isinstance(got, tuple):
                self.stats.skipped_bytes += self.offset() - start
                return True
            self._pos += 4


# -- metadata block bodies ------------------------------------------------------

_STRING_PAST_END = "string runs past the end of the block"

def _str(b: bytes, off: int) -> tuple[str, int]:
    n = _U16.unpack_from(b, off)[0]
    off += 2
    if off + n > len(b):
        raise ValueError(_STRING_PAST_END)
    return b[off:off + n].decode("utf-8", "replace"), off + n


def parse_section_header(body: bytes) -> tuple[int, int]:
    if len(body) < 16:
        raise ValueError("section header block too short")
    magic, major, minor = struct.unpack_from("<IHH", body, 0)
    if magic == SHB_MAGIC_SWAPPED:
        raise ValueError("byte-swapped (big-endian) section: not supported")
    if magic != SHB_MAGIC:
        raise ValueError(f"wrong byte-order magic 0x{magic:08x}")
    if major != 1:
        raise ValueError(f"unsupported scap major version {major}")
    return major, minor


def parse_machine_info(body: bytes) -> dict:
    num_cpus, mem, max_pid = struct.unpack_from("<IQQ", body, 0)
    host = body[20:148]
    if len(host) < 128:
        raise ValueError("machine info block too short")
    out = {"num_cpus": num_cpus, "memory_size_bytes": mem, "max_pid": max_pid,
           "hostname": host.split(b"\0", 1)[0].decode("utf-8", "replace")}
    if len(body) >= 164:
        out["boot_ts_epoch"], out["flags"] = struct.unpack_from("<QQ", body, 148)
    return out


_CONTAINER_RE = re.compile(r"(?:^|[/-])([0-9a-f]{64})(?:\.scope)?(?=$|/)", re.M)


_CONTAINER_IDS: dict[str, str | None] = {}  # a host's processes share a few cgroup sets: searched once each


def container_id_from_cgroups(cgroups: str) -> str | None:
    """docker/containerd/cri-o container id (12-char form, as sysdig's container.id)."""
    if not cgroups:
        return None
    try:
        return _CONTAINER_IDS[cgroups]
    except KeyError:
        pass
    if len(_CONTAINER_IDS) >= 4096:
        _CONTAINER_IDS.clear()
    m = _CONTAINER_RE.search(cgroups.replace("\0", "\n"))
    cid = _CONTAINER_IDS[cgroups] = m.group(1)[:12] if m else None
    return cid


_PROC_IDS = struct.Struct("<qqq")  # tid, pid, ptid
_PROC_FIXED = struct.Struct("<QIII")  # fdlimit, flags, uid, gid: checked to be there, not kept


def parse_proclist(body: bytes, version: int) -> list[dict]:
    """Process entries as dicts (tid, pid, ptid, comm, exe, exepath, args, cwd, cgroups). A capture
    lists every process of the host, each with up to eight strings: read in line (one length
    unpack and one slice each), only the kept ones decoded."""
    out = []
    off, end = 0, len(body)
    u16, u32 = _U16.unpack_from, _U32.unpack_from
    while end - off >= 4:
        entry_start = off
        sub_len = None
        if version >= 9:
            sub_len = u32(body, off)[0]
            if sub_len < 4 or entry_start + sub_len > end:
                raise ValueError(f"process entry length {sub_len} runs past the block")
            off += 4
        tid, pid, ptid = _PROC_IDS.unpack_from(body, off)
        off += 24
        if version >= 6:
            off += 8  # sid
        if version >= 8:
            off += 8  # vpgid
        texts = []  # comm, exe, [exepath], args, cwd
        for _ in range(5 if version >= 7 else 4):
            n = u16(body, off)[0]
            off += 2 + n
            if off > end:
                raise ValueError(_STRING_PAST_END)
            texts.append(body[off - n:off].decode("utf-8", "replace"))
        if version < 7:
            texts.insert(2, "")
        _PROC_FIXED.unpack_from(body, off)
        off += 20
        if version >= 2:
            off += 12 + 16
        if version >= 3:  # env
            off += 2 + u16(body, off)[0]
            if off > end:
                raise ValueError(_STRING_PAST_END)
        cgroups = ""
        if version >= 4:
            off += 16  # vtid, vpid
            n = u16(body, off)[0]
            off += 2 + n
            if off > end:
                raise ValueError(_STRING_PAST_END)
            cgroups = body[off - n:off].decode("utf-8", "replace")
        if version >= 5:  # root
            off += 2 + u16(body, off)[0]
            if off > end:
                raise ValueError(_STRING_PAST_END)
        if sub_len is not None:
            off = entry_start + sub_len
        if off > end:
            raise ValueError("process entry runs past the block")
        comm, exe, exepath, args, cwd = texts
        out.append({"tid": tid, "pid": pid, "ptid": ptid, "comm": comm, "exe": exe,
                    "exepath": exepath, "args": args, "cwd": cwd, "cgroups": cgroups})
    return out


_IP4_TEXT: dict[bytes, str] = {}  # a capture holds few addresses: inet_ntop (a sprintf) once each


def ip4(b: bytes) -> str:
    try:
        return _IP4_TEXT[b]
    except KeyError:
        pass
    if len(_IP4_TEXT) >= 4096:
        _IP4_TEXT.clear()
    text = _IP4_TEXT[b] = socket.inet_ntop(socket.AF_INET, b)
    return text


def ip6(b: bytes) -> str:
    """IPv6 text; IPv4-mapped addresses (::ffff:a.b.c.d) as plain IPv4."""
    if b[:12] == b"\0\0\0\0\0\0\0\0\0\0\xff\xff":
        return socket.inet_ntop(socket.AF_INET, b[12:])
    return socket.inet_ntop(socket.AF_INET6, b)


# scap fd types (scap.h scap_fd_type)
FD_IPV4_SOCK, FD_IPV6_SOCK, FD_IPV4_SERVSOCK, FD_IPV6_SERVSOCK, FD_UNIX_SOCK, FD_FILE_V2 = 3, 4, 5, 6, 8, 16
_NAMED_FD_TYPES = frozenset((1, 2, 7, 9, 10, 11, 12, 13, 14, 15, 17, 18, 19, 20, 21))
L4 = {0: None, 1: None, 2: "tcp", 3: "udp", 4: "raw", 5: "raw"}  # SCAP_L4_*; ICMP sockets are raw


_FD_HEAD = struct.Struct("<qQB")  # fd, inode, type
_FD_IPV4 = struct.Struct("<4s4sHHB")
_FD_IPV6 = struct.Struct("<16s16sHHB")


def parse_fdlist(body: bytes, v2: bool) -> tuple[int, list[tuple]]:
    """-> (tid, [(fd, kind, info)]); kind 'ipv4'|'ipv6'|'ipv4_server'|'ipv6_server'|'unix'|'other'.

    info: for connected sockets (proto, sip, sport, dip, dport), for servers
    (proto, ip, port), for unix (source, dest, path), else the name.
    """
    tid = struct.unpack_from("<Q", body, 0)[0]
    off, end = 8, len(body)
    out = []
    u16, u32, head = _U16.unpack_from, _U32.unpack_from, _FD_HEAD.unpack_from
    while end - off >= 4:
        start = off
        sub_len = None
        if v2:
            sub_len = u32(body, off)[0]
            if sub_len < 21 or start + sub_len > end:
                raise ValueError(f"fd entry length {sub_len} runs past the block")
            off += 4
        fd, _ino, ftype = head(body, off)
        off += 17
        if ftype == FD_FILE_V2 or ftype in _NAMED_FD_TYPES:  # most of a process's fds: files, pipes...
            if ftype == FD_FILE_V2:
                off += 4  # open flags
            n = u16(body, off)[0]
            off += 2 + n
            if off > end:
                raise ValueError(_STRING_PAST_END)
            out.append((fd, "other", body[off - n:off].decode("utf-8", "replace")))
        elif ftype == FD_IPV4_SOCK:
            sip, dip, sport, dport, l4 = _FD_IPV4.unpack_from(body, off)
            out.append((fd, "ipv4", (L4.get(l4), ip4(sip), sport, ip4(dip), dport)))
            off += 13
        elif ftype == FD_IPV6_SOCK:
            sip, dip, sport, dport, l4 = _FD_IPV6.unpack_from(body, off)
            sip, dip = ip6(sip), ip6(dip)  # IPv4-mapped ends come back as IPv4 text
            out.append((fd, "ipv4" if "." in sip and "." in dip else "ipv6", (L4.get(l4), sip, sport, dip, dport)))
            off += 37
        elif ftype == FD_IPV4_SERVSOCK:
            ip, port, l4 = struct.unpack_from("<4sHB", body, off)
            out.append((fd, "ipv4_server", (L4.get(l4), ip4(ip), port)))
            off += 7
        elif ftype == FD_IPV6_SERVSOCK:
            ip, port, l4 = struct.unpack_from("<16sHB", body, off)
            ip = ip6(ip)
            out.append((fd, "ipv4_server" if "." in ip else "ipv6_server", (L4.get(l4), ip, port)))
            off += 19
        elif ftype == FD_UNIX_SOCK:
            src, dst = struct.unpack_from("<QQ", body, off)
            name, off = _str(body, off + 16)
            out.append((fd, "unix", (src, dst, name)))
        elif sub_len is None:
            raise ValueError(f"unknown fd type {ftype} in a v1 fd list")
        else:
            out.append((fd, "other", ""))
        if sub_len is not None:
            off = start + sub_len
        if off > end:
            raise ValueError("fd entry runs past the block")
    return tid, out


def parse_iflist(body: bytes, v2: bool) -> list[dict]:
    out, off, end = [], 0, len(body)
    while end - off >= 4:
        start = off
        entry_len = None
        if v2:
            entry_len = struct.unpack_from("<I", body, off)[0] + 4
            off += 4
        itype, namelen = struct.unpack_from("<HH", body, off)
        off += 4
        if itype in (1, 3):
            addr, mask, bcast = struct.unpack_from("<4s4s4s", body, off)
            off += 12
            text = ip4(addr)
        elif itype in (2, 4):
            addr, mask, bcast = struct.unpack_from("<16s16s16s", body, off)
            off += 48
            text = ip6(addr)
        else:
            raise ValueError(f"unknown interface type {itype}")
        if itype in (1, 2):
            off += 8
        if off + namelen > end:
            raise ValueError("interface name runs past the block")
        out.append({"name": body[off:off + namelen].decode("utf-8", "replace"), "addr": text,
                    "family": "ipv4" if itype in (1, 3) else "ipv6"})
        off += namelen
        if entry_len is not None:
            off = start + entry_len
    return out


def parse_userlist(body: bytes, v2: bool) -> list[dict]:
    out, off, end = [], 0, len(body)
    while end - off >= 4:
        start = off
        sub_len = None
        if v2:
            sub_len = struct.unpack_from("<I", body, off)[0]
            if sub_len < 5:
                raise ValueError(f"user entry length {sub_len}")
            off += 4
        utype = body[off]
        off += 1
        if utype == 0:
            uid, gid = struct.unpack_from("<II", body, off)
            name, off = _str(body, off + 8)
            home, off = _str(body, off)
            shell, off = _str(body, off)
            out.append({"type": "user", "uid": uid, "gid": gid, "name": name, "home": home, "shell": shell})
        elif utype == 1:
            gid = struct.unpack_from("<I", body, off)[0]
            name, off = _str(body, off + 4)
            out.append({"type": "group", "gid": gid, "name": name})
        else:
            raise ValueError(f"unknown user entry type {utype}")
        if sub_len is not None:
            off = start + sub_len
        if off > end:
            raise ValueError("user entry runs past the block")
    return out
