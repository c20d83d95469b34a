"""The .scap reader: blocks -> decoded events -> thread/fd state -> SyscallEvents.

Public interface (stable; other parts of svctrace rely on it):

    open_capture(path, *, skip_corrupt=False) -> CaptureReader

`CaptureReader` is iterable over `SyscallEvent`s for network-relevant events:
connect, accept/accept4, socket, bind, listen, shutdown and close of sockets,
the send and recv families including read/write/readv/writev/pread/pwrite/
preadv/pwritev on socket fds (IPv4, IPv6 and unix sockets), and kind="lost"
markers for DROP events. Each event is the syscall's *exit* merged with its
enter event (old captures keep e.g. the fd in the enter event), `ts` is the
exit time and `n` the exit event's sysdig `evt.num` (1-based index among the
file's event blocks of known types; see `SYSDIG_0_29_TABLE_SIZE` for what
sysdig 0.29.3 does differently).

After (or during) iteration:
  .machine      machine-info dict (hostname, num_cpus, memory_size_bytes, ...)
  .node         machine-info hostname (SyscallEvent.node)
  .containers   {container id: container JSON dict} from CONTAINER_JSON events
  .k8s_states   [(ts, dict)] from K8S_E events
  .interfaces, .users   interface and user lists
  .stats        `Stats` (sections, blocks, events, skipped bytes, ...)
  .raw_events() iterator of `RawEvent` (every event type, every param by
                name, enter and exit as in the file) for oracle tests.

State kept like libsinsp: a thread table (process-list blocks, clone/fork/
execve exits, procexit) and a per-process fd table (fd-list blocks, socket/
connect/accept/bind/close/dup exits), so reads and writes on a socket fd carry
the socket's endpoints. Socket endpoints are kept in libsinsp's orientation
(client ip/port, server ip/port) plus which end is local; `role` is "client"
for sockets that connected (or sent first on UDP), "server" for accepted,
bound and listening ones. fd-list entries of connected sockets list the local end
first; like libsinsp, the socket is the server end ("server" role, client =
remote end) when its local port is a listening port of any process in the
capture's fd lists, else the client end.

`data` is the captured payload prefix exactly as in the file (snaplen-bounded,
NOT redacted: `redacted` is False; the agent redacts before publishing).
`container_id` is the 12-character id from the thread's cgroups (docker,
containerd, cri-o paths); `cgroup_id`/`netns` are not in scap files (None).
Each iteration re-reads the file from the start with fresh state.

Performance: event types irrelevant to network state are counted but never
decoded; relevant types use layouts precompiled from the event table. The
iteration takes well-framed event blocks straight from the stream's buffer
(block and event header in one struct) and decodes v2 events with
`Layout.fast()` (one struct per run of fixed-size params); whatever that path
does not vouch for goes through the general path (`BlockStream.next_block`,
`_event`, `_body`), which `raw_events()` uses throughout: the same events and
errors either way (tests/test_scap_fast_path.py).
"""
from __future__ import annotations

import struct
from typing import Iterator, NamedTuple

import orjson

from svctrace.schemas.models import SyscallEvent, make_event

from . import blocks as B
from .errors import CaptureError
from .event_table import EVENTS, PPM_EVENT_MAX
from .normalize import (CATEGORY, FAMILY, FD_CHECK, FD_INDEX, IPPROTO, KIND, MERGE_ENTER, NEWFD_INDEXES,
                        PPM_SOCKOPT_IDX_ERRNO, PPM_SOCKOPT_LEVEL_SOL_SOCKET, PPM_SOCKOPT_SO_ERROR,
                        SOCK_TYPE_PROTO, errno_name)
from .params import LAYOUTS

_HDR_V1 = struct.Struct("<QQIH")  # ts, tid, len, type (22 bytes)
_HDR_V2 = struct.Struct("<QQIHI")  # + nparams (26 bytes)
_U32 = struct.Struct("<I")
# event block type -> how the fast path reads it: block header (type, length) and event header in
# one struct (cpuid and flags skipped; a v1 header has no nparams: "0s" stands in, an empty bytes),
# the offset of the event header in the block, the block length bound, the event header's size
_FAST_HEADERS: dict[int, tuple] = {
    btype: (struct.Struct(f"<II{6 if with_flags else 2}xQQIH{'I' if v2 else '0s'}").unpack_from,
            8 + (6 if with_flags else 2), B.MAX_BLOCK if large else B.READER_BUF_SIZE + 8, 26 if v2 else 22)
    for btype, (v2, with_flags, large) in B.EVENT_BLOCKS.items()
}
_QUIRK_LEN3 = frozenset((280, 286))  # NOTIFICATION_E, INFRASTRUCTURE_EVENT_E: len is 3 too large in v1 files
CLONE_FILES = 0x1  # PPM_CL_CLONE_FILES
CLONE_THREAD = 0x2000  # PPM_CL_CLONE_THREAD


class RawEvent(NamedTuple):
    """One decoded event as in the file (enter and exit separate), params by table name."""
    n: int
    offset: int  # byte offset of the block
    ts: int
    tid: int
    cpu: int
    code: int
    params: dict
    nparams: int

    @property
    def info(self):
        return EVENTS[self.code]

    @property
    def name(self) -> str:
        return EVENTS[self.code].name

    @property
    def direction(self) -> str:
        return EVENTS[self.code].direction


class Thread:
    __slots__ = ("tid", "pid", "ptid", "comm", "exe", "container_id")

    def __init__(self, tid, pid, ptid, comm, exe, container_id):
        self.tid, self.pid, self.ptid = tid, pid, ptid
        self.comm, self.exe, self.container_id = comm, exe, container_id


class Sock:
    """A socket in an fd table, in libsinsp's client->server orientation."""
    __slots__ = ("family", "proto", "cip", "cport", "sip", "sport", "local_is_client", "role", "path")

    def __init__(self, family, proto, cip=None, cport=None, sip=None, sport=None, local_is_client=True,
                 role=None, path=None):
        self.family, self.proto = family, proto
        self.cip, self.cport, self.sip, self.sport = cip, cport, sip, sport
        self.local_is_client, self.role, self.path = local_is_client, role, path

    def copy(self) -> "Sock":
        return Sock(self.family, self.proto, self.cip, self.cport, self.sip, self.sport,
                    self.local_is_client, self.role, self.path)


def _enter_params(got: tuple) -> dict:
    """The params of a stored enter event (code, nparams, its param bytes, length array)."""
    code, nparams, body, lens = got
    return LAYOUTS[code].decode(body, 0, len(body), nparams, lens)


# code -> (syscall, SyscallEvent kind, moves data) of the events _net handles
_NET_NAMES = tuple((e.syscall, KIND.get(e.syscall), KIND.get(e.syscall) in ("send", "recv")) for e in EVENTS)


# what the fast path does with each event type (derived from normalize's tables)
_SKIP, _ENTER, _NET, _NET_FD, _OTHER = "skip", "enter", "net", "net_fd", "other"
_ACTIONS = tuple(
    _SKIP if CATEGORY[c] is None and not MERGE_ENTER[c]
    else _ENTER if MERGE_ENTER[c] and (not FD_CHECK[c] or FD_INDEX[c] == 0)
    else (_NET_FD if FD_CHECK[c] else _NET) if CATEGORY[c] == "net"
    else _OTHER
    for c in range(PPM_EVENT_MAX)
)
_ACTIONS_V1 = tuple(_SKIP if a is _SKIP else _OTHER for a in _ACTIONS)
_FAST_EXITS = tuple(layout.fast_exits for layout in LAYOUTS)
_FAST_ENTERS = tuple(layout.fast_enters for layout in LAYOUTS)
_COVERS = tuple(layout.covers for layout in LAYOUTS)


def _tuple_family(t) -> str | None:
    return t[0] if t and t[0] in ("ipv4", "ipv6", "unix") else None


class CaptureReader:
    def __init__(self, path, *, skip_corrupt: bool = False):
        self.path = path
        self.skip_corrupt = skip_corrupt
        self.stats = B.Stats()
        self.machine: dict = {}
        self._node = ""
        self.containers: dict[str, dict] = {}
        self.k8s_states: list[tuple[int, dict]] = []
        self.interfaces: list[dict] = []
        self.users: list[dict] = []
        self.version: tuple[int, int] | None = None
        self._reset_state()

    @property
    def node(self) -> str:
        return self.machine.get("hostname") or ""

    def _reset_state(self) -> None:
        """Empty the state (a new section restarts it, like libsinsp); the dicts are
        cleared in place because the event loop holds references to them."""
        if not hasattr(self, "threads"):
            self.threads: dict[int, Thread] = {}
            self.fds: dict[int, dict[int, Sock]] = {}  # pid -> fd -> Sock
            self._enters: dict[int, tuple] = {}  # tid -> last relevant enter event, undecoded (_enter_params)
            self._server_ports: set[int] = set()
            self._pending_fdl: list = []
        for d in (self.threads, self.fds, self._enters, self._server_ports, self._pending_fdl):
            d.clear()

    # -- public iterators ---------------------------------------------------
    def __iter__(self) -> Iterator[SyscallEvent]:
        return self._events()

    def raw_events(self) -> Iterator[RawEvent]:
        return self._walk(raw=True)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False

    # -- the walk ------------------------------------------------------------
    def _walk(self, raw: bool):
        """Every block through the stream's full framing check, every event through _event (the
        general path: raw_events, and the oracle of the fast path in _events)."""
        self.stats = stats = B.Stats()
        self._reset_state()
        f, name = B.open_raw(self.path)
        self.name = name
        try:
            stream = B.BlockStream(f, name, stats, self.skip_corrupt)
            self._n = 0
            event_blocks = B.EVENT_BLOCKS
            for off, btype, buf, start, end in stream:
                if btype not in event_blocks:
                    self._metadata(stream, off, btype, buf[start:end], self._n)
                    continue
                out = self._event(stream, off, btype, buf, start, end, raw)
                if out is not None:
                    yield out
                    if raw and CATEGORY[out.code] in ("container", "k8s"):
                        self._handle(CATEGORY[out.code], out.code, out.n, out.ts, out.tid, out.params)
            stats.events = self._n
        finally:
            f.close()

    def _events(self):
        """The SyscallEvents. Well-framed event blocks (of the type of the previous one) are taken
        straight from the stream's buffer, block and event header in one struct; in v2 blocks the
        types that matter are decoded by their layout's fast() (one struct per run of fixed-size
        params). Anything else (another block type, a v1 event that matters, a header or value
        the fast path does not vouch for) goes through the stream's next_block() and the general
        _event/_body, which judge it exactly as before: same events, same errors, same offsets."""
        self.stats = stats = B.Stats()
        self._reset_state()
        f, name = B.open_raw(self.path)
        self.name = name
        # blocks taken on the fast path, added to stats.blocks and .event_blocks before anything can
        # look (a yield, the general path, an error, the end): a local count costs less per block
        fast_blocks = 0
        try:
            stream = B.BlockStream(f, name, stats, self.skip_corrupt)
            self._n = n = 0
            event_blocks = B.EVENT_BLOCKS
            actions, fast_exits, fast_enters, layouts = _ACTIONS, _FAST_EXITS, _FAST_ENTERS, LAYOUTS
            covers = _COVERS
            skip, enter, net_fd, net_other = _SKIP, _ENTER, _NET_FD, _NET
            fd_index, fd_check = FD_INDEX, FD_CHECK
            enters, pending_fdl = self._enters, self._pending_fdl
            threads, fds = self.threads, self.fds
            net, body = self._net, self._body
            u32 = _U32.unpack_from
            struct_error = struct.error
            buf, pos, base = b"", 0, 0
            buflen = 0
            cur_type, unpack, shift, limit, hsize = -1, _FAST_HEADERS[0x216][0], 0, 0, 26
            while True:
                try:
                    btype, blen, ts, tid, elen, code, nparams = unpack(buf, pos)
                except struct_error:
                    btype = -2
                if not (btype == cur_type and shift + hsize + 4 <= blen <= limit and not blen & 3
                        and pos + blen <= buflen and u32(buf, pos + blen - 4)[0] == blen
                        and hsize <= elen <= blen - shift - 4 and code < PPM_EVENT_MAX):
                    # the stream's full check, then the general path
                    if fast_blocks:
                        stats.blocks += fast_blocks
                        stats.event_blocks += fast_blocks
                        fast_blocks = 0
                    stream._pos = pos
                    got = stream.next_block()
                    if got is None:
                        break
                    off, btype, buf, start, end = got
                    pos, base, buflen = stream._pos, stream._base, len(buf)
                    if btype not in event_blocks:
                        self._metadata(stream, off, btype, buf[start:end], n)
                        continue
                    fast = _FAST_HEADERS.get(btype)
                    if fast is not None:
                        unpack, shift, limit, hsize = fast
                        cur_type = btype
                        # v1 events have no nparams: the general path infers it for the ones that matter
                        actions = _ACTIONS if hsize == 26 else _ACTIONS_V1
                    self._n = n
                    out = self._event(stream, off, btype, buf, start, end, False)
                    n = self._n
                    if out is not None:
                        yield out
                    continue
                # a whole, well-framed event block of the current type, its header plausible
                at = pos
                pos += blen
                fast_blocks += 1
                if pending_fdl:
                    self._resolve_fdl_sockets()
                n += 1
                if tid >= 1 << 63:  # meta events carry tid -1
                    tid -= 1 << 64
                act = actions[code]
                if act is skip:
                    continue
                p = at + shift
                evt_end = p + elen
                p += hsize
                if act is net_fd or act is net_other:
                    try:
                        fast = fast_exits[code][nparams]
                    except KeyError:
                        fast = layouts[code].fast(nparams)
                    try:
                        params = fast(buf, p, evt_end)
                    except struct_error:
                        params = None
                    if params is not None:
                        th = table = None
                        if act is net_fd:
                            # only sockets matter
                            if 0 <= fd_index[code] < nparams:
                                fd = params["fd"]
                            else:
                                got = enters.get(tid)
                                fd = _enter_params(got).get("fd") if got is not None and got[0] == code - 1 else None
                            th = threads.get(tid)
                            table = fds.get(th.pid if th is not None else tid)
                            if fd is None or table is None or table.get(fd) is None:
                                if enters:
                                    enters.pop(tid, None)
                                continue
                        stats.events = n
                        got = enters.pop(tid, None)
                        if got is not None and got[0] == code - 1:
                            covered = covers[code].get(nparams << 16 | got[1])
                            if covered is None:
                                covered = layouts[code].repeats(nparams, layouts[got[0]], got[1])
                            if not covered:  # the exit's values win; the enter fills in the rest
                                params = {**_enter_params(got), **params}
                        out = net(code, n, ts, tid, params, th, table)
                        if out is not None:
                            stats.emitted += 1
                            stats.blocks += fast_blocks
                            stats.event_blocks += fast_blocks
                            fast_blocks = 0
                            yield out
                        continue
                elif act is enter:
                    try:
                        fast = fast_enters[code][nparams]
                    except KeyError:
                        fast = layouts[code].fast_enter(nparams)
                    try:
                        fd = fast(buf, p, evt_end)
                    except struct_error:
                        fd = None
                    if fd is not None:
                        if fd_check[code]:  # only sockets matter (param 0 is the fd: see _ACTIONS)
                            th = threads.get(tid)
                            table = fds.get(th.pid if th is not None else tid)
                            if table is None or table.get(fd) is None:
                                if enters:
                                    enters.pop(tid, None)
                                continue
                        # kept undecoded (its own bytes): decoded only if its exit lacks a param it carries
                        enters[tid] = (code, nparams, buf[p:evt_end], None)
                        continue
                self._n = n
                out = body(stream, base + at, cur_type, buf, at + 8, at + blen - 4, False, ts, tid, code,
                           nparams if hsize == 26 else -1, at + shift, hsize, elen)
                n = self._n
                if out is not None:
                    stats.blocks += fast_blocks
                    stats.event_blocks += fast_blocks
                    fast_blocks = 0
                    yield out
            stats.events = n
        finally:
            stats.blocks += fast_blocks
            stats.event_blocks += fast_blocks
            f.close()

    def _event(self, stream, off, btype, buf, start, end, raw):
        """One event block the general way: header, then _body. self._n counts the events."""
        stats = self.stats
        stats.event_blocks += 1
        if self._pending_fdl:
            self._resolve_fdl_sockets()
        v2, with_flags, _large = B.EVENT_BLOCKS[btype]
        p = start + (6 if with_flags else 2)
        try:
            if v2:
                ts, tid, elen, code, nparams = _HDR_V2.unpack_from(buf, p)
                hsize = 26
            else:
                ts, tid, elen, code = _HDR_V1.unpack_from(buf, p)
                hsize = 22
                nparams = -1
        except struct.error:
            self._bad(stream, off, btype, end - start + 12, "event block too short for its header")
            return None
        if code >= PPM_EVENT_MAX:
            stats.unknown_event_types += 1
            return None
        if not v2 and code in _QUIRK_LEN3 and elen == end - p + 3:
            elen -= 3
        if elen < hsize or p + elen > end:
            self._bad(stream, off, btype, end - start + 12, f"event length {elen} does not fit its block (type {code})")
            return None
        self._n += 1
        if tid >= 1 << 63:  # meta events carry tid -1
            tid -= 1 << 64
        return self._body(stream, off, btype, buf, start, end, raw, ts, tid, code, nparams, p, hsize, elen)

    def _body(self, stream, off, btype, buf, start, end, raw, ts, tid, code, nparams, p, hsize, elen=None):
        """An event after its header (counted in self._n already): decoded as far as needed,
        then the state and the SyscallEvent (or RawEvent) it gives, if any."""
        cat = CATEGORY[code]
        if not raw and cat is None and not MERGE_ENTER[code]:
            return None
        stats, enters = self.stats, self._enters
        layout = LAYOUTS[code]
        evt_end = p + elen
        pos = p + hsize
        try:
            if nparams < 0:
                nparams = layout.infer_nparams(buf, pos, evt_end - pos, elen, hsize)
            elif nparams > 4096:
                raise ValueError(f"absurd parameter count {nparams}")
            lens = None
            if not raw and FD_CHECK[code]:
                # only sockets matter: look at the fd before decoding anything
                idx = FD_INDEX[code]
                if 0 <= idx < nparams:
                    lens = layout.lengths(buf, pos, nparams)
                    fd = layout.int_at(buf, pos, nparams, idx, lens)
                else:
                    got = enters.get(tid)
                    fd = _enter_params(got).get("fd") if got is not None and got[0] == code - 1 else None
                th = self.threads.get(tid)
                table = self.fds.get(th.pid if th is not None else tid)
                if fd is None or table is None or table.get(fd) is None:
                    if enters:
                        enters.pop(tid, None)
                    return None
            elif cat == "newfd" and not raw:
                th = self.threads.get(tid)
                table = self.fds.get(th.pid if th is not None else tid)
                if table:
                    for idx in NEWFD_INDEXES[code]:
                        if idx < nparams:
                            fd = layout.int_at(buf, pos, nparams, idx)
                            if fd is not None and fd >= 0:
                                table.pop(fd, None)
                return None
            if MERGE_ENTER[code] and not raw:
                # kept undecoded (its own bytes): decoded only if its exit lacks a param
                # it carries (modern exits repeat them all); a bad length fails here as before
                lens = layout.checked_lengths(buf, pos, evt_end, nparams, lens)
                enters[tid] = (code, nparams, buf[pos:evt_end], lens)
                return None
            params = layout.decode(buf, pos, evt_end, nparams, lens)
        except (ValueError, struct.error) as e:
            self._n -= 1
            self._bad(stream, off, btype, end - start + 12, f"{EVENTS[code].enum}: {e}")
            return None
        n = stats.events = self._n
        if raw:  # (_walk hands container and k8s events to _handle once yielded)
            return RawEvent(n, off, ts, tid, buf[start] | buf[start + 1] << 8, code, params, nparams)
        got = enters.pop(tid, None)
        if got is not None and got[0] == code - 1 and not layout.repeats(nparams, LAYOUTS[got[0]], got[1]):
            params = {**_enter_params(got), **params}  # the exit's values win; the enter fills in the rest
        # socket events (most of a capture) straight to _net: no _handle frame per event
        out = self._net(code, n, ts, tid, params) if cat == "net" else self._handle(cat, code, n, ts, tid, params)
        if out is not None:
            stats.emitted += 1
        return out

    def _bad(self, stream, off, btype, length, reason) -> None:
        err = CaptureError(self.name, off, B.block_name(btype), reason, stream.decompressed)
        if not self.skip_corrupt:
            raise err
        self.stats.error(str(err))
        stream.skip_current(off, length)

    # -- metadata blocks -------------------------------------------------------
    def _metadata(self, stream, off, btype, body: bytes, n: int) -> None:
        try:
            if btype == B.SHB:
                self.version = B.parse_section_header(body)
                self.stats.sections += 1
                if self.stats.sections > 1:  # a new section: state restarts, like libsinsp
                    self._reset_state()
            elif self.version is None:
                raise ValueError("block before the section header")
            elif btype in B.MI_TYPES:
                self.machine = B.parse_machine_info(body)
                self._node = self.node  # (read for every event)
            elif btype in B.PL_VERSION:
                for p in B.parse_proclist(body, B.PL_VERSION[btype]):
                    self.threads[p["tid"]] = Thread(
                        p["tid"], p["pid"], p["ptid"], p["comm"], p["exepath"] or p["exe"] or None,
                        B.container_id_from_cgroups(p["cgroups"]))
            elif btype in B.FDL_TYPES:
                tid, entries = B.parse_fdlist(body, B.FDL_TYPES[btype])
                self._load_fds(tid, entries)
            elif btype in B.IL_TYPES:
                self.interfaces = B.parse_iflist(body, B.IL_TYPES[btype])
            elif btype in B.UL_TYPES:
                self.users = B.parse_userlist(body, B.UL_TYPES[btype])
        except (ValueError, struct.error, IndexError) as e:
            self._bad(stream, off, btype, len(body) + 12, str(e))

    def _load_fds(self, tid: int, entries) -> None:
        th = self.threads.get(tid)
        pid = th.pid if th else tid
        table = self.fds.setdefault(pid, {})
        for fd, kind, info in entries:
            if kind in ("ipv4_server", "ipv6_server"):
                proto, ip, port = info
                table[fd] = Sock(kind[:4], proto, sip=ip, sport=port, local_is_client=False, role="server")
                self._server_ports.add(port)
            elif kind in ("ipv4", "ipv6"):
                table[fd] = None  # resolved once every fd list is read: see _resolve_fdl_sockets
                self._pending_fdl.append((table, fd, kind, info))
            elif kind == "unix":
                table[fd] = Sock("unix", "unix", path=info[2])
            else:
                table.pop(fd, None)

    def _resolve_fdl_sockets(self) -> None:
        """libscap lists a connected socket local end first; like libsinsp, a socket whose
        local port is a listening port of any process in the capture is the server end."""
        for table, fd, kind, (proto, lip, lport, rip, rport) in self._pending_fdl:
            if table.get(fd, 0) is not None:
                continue
            if lport in self._server_ports:
                table[fd] = Sock(kind, proto, rip, rport, lip, lport, local_is_client=False, role="server")
            else:
                table[fd] = Sock(kind, proto, lip, lport, rip, rport, local_is_client=True, role="client")
        self._pending_fdl.clear()

    # -- event handlers ---------------------------------------------------------
    def _thread(self, tid: int) -> Thread:
        th = self.threads.get(tid)
        if th is None:
            th = Thread(tid, tid, -1, "<NA>", None, None)
        return th

    def _handle(self, cat, code, n, ts, tid, params):
        if cat == "net":
            return self._net(code, n, ts, tid, params)
        if cat == "clone":
            self._clone(tid, params)
        elif cat == "exec":
            self._exec(tid, params)
        elif cat == "procexit":
            th = self.threads.pop(tid, None)
            if th is not None and th.pid == tid:
                self.fds.pop(tid, None)
        elif cat == "dup":
            self._dup(tid, params)
        elif cat == "socketpair":
            if (params.get("res") or 0) >= 0:
                table = self._fdtable(tid)
                for k in ("fd1", "fd2"):
                    if params.get(k) is not None:
                        table[params[k]] = Sock("unix", "unix")
        elif cat == "drop":
            th = self._thread(tid)
            return SyscallEvent(ts=ts, node=self.node, n=n, pid=th.pid, tid=tid, comm=th.comm,
                                kind="lost", syscall="drop", fd=-1, res=1, exe=th.exe,
                                container_id=th.container_id)
        elif cat == "container":
            self._container(params)
        elif cat == "k8s":
            js = params.get("json")
            if js:
                try:
                    self.k8s_states.append((ts, orjson.loads(js)))
                except orjson.JSONDecodeError:
                    self.stats.error(f"{self.name}: K8S_E event {n}: invalid JSON")
        return None

    def _container(self, params) -> None:
        if "json" in params:
            js = params.get("json")
            try:
                doc = orjson.loads(js) if js else None
            except orjson.JSONDecodeError:
                self.stats.error(f"{self.name}: container event: invalid JSON")
                return
            c = doc.get("container", doc) if isinstance(doc, dict) else None
            if isinstance(c, dict) and isinstance(c.get("id"), str):
                self.containers[c["id"]] = c
        elif isinstance(params.get("id"), str):
            self.containers[params["id"]] = {k: params.get(k) for k in ("id", "type", "name", "image")}

    def _fdtable(self, tid: int) -> dict[int, Sock]:
        th = self.threads.get(tid)
        pid = th.pid if th else tid
        t = self.fds.get(pid)
        if t is None:
            t = self.fds[pid] = {}
        return t

    def _clone(self, tid, p) -> None:
        res = p.get("res")
        if res is None or res < 0:
            return
        flags = p.get("flags") or 0
        cgroups = p.get("cgroups")
        cid = B.container_id_from_cgroups(cgroups.decode("utf-8", "replace")) if cgroups else None
        exe = p.get("exe")
        comm = p.get("comm") or (exe.rsplit("/", 1)[-1] if exe else None)
        if res == 0:  # in the child: tid/pid params are the child's
            child, cpid, ptid = tid, p.get("pid") or tid, p.get("ptid") or -1
            parent = self.threads.get(ptid)
        else:  # in the parent: res is the child's tid
            child = res
            parent = self.threads.get(tid)
            ppid = p.get("pid") or (parent.pid if parent else tid)
            cpid = ppid if flags & CLONE_THREAD else res
            ptid = tid
        if child in self.threads and self.threads[child].pid == cpid:
            return
        self.threads[child] = Thread(child, cpid, ptid, comm or (parent.comm if parent else "<NA>"),
                                     exe or (parent.exe if parent else None),
                                     cid if cgroups is not None else (parent.container_id if parent else None))
        if cpid == child and cpid not in self.fds and parent is not None:
            src = self.fds.get(parent.pid)
            if src:  # fork: the child inherits a copy of the parent's fd table
                self.fds[cpid] = {fd: s.copy() for fd, s in src.items() if s is not None}

    def _exec(self, tid, p) -> None:
        if (p.get("res") or 0) < 0:
            return
        th = self.threads.get(tid)
        exe = p.get("trusted_exepath") or p.get("exe")
        comm = p.get("comm") or (exe.rsplit("/", 1)[-1] if exe else "<NA>")
        cgroups = p.get("cgroups")
        cid = B.container_id_from_cgroups(cgroups.decode("utf-8", "replace")) if cgroups else None
        pid = p.get("pid") or (th.pid if th else tid)
        if th is None:
            self.threads[tid] = Thread(tid, pid, p.get("ptid") or -1, comm, exe, cid)
        else:
            th.comm, th.exe, th.pid = comm, exe, pid
            if cgroups is not None:
                th.container_id = cid

    def _dup(self, tid, p) -> None:
        res = p.get("res")
        if res is None or res < 0:
            return
        old = p.get("oldfd", p.get("fd"))
        table = self._fdtable(tid)
        s = table.get(old)
        if s is not None and old != res:
            table[res] = s
        elif s is None:
            table.pop(res, None)

    def _net(self, code, n, ts, tid, p, th=None, table=None):
        """A socket event's state change and SyscallEvent. th, table: the thread (None: not in the
        thread table) and its process's fd table, when the caller has looked them up already."""
        syscall, kind, moves = _NET_NAMES[code]
        if table is None:
            th = self.threads.get(tid) or self._thread(tid)
            table = self.fds.get(th.pid)
            if table is None:
                table = self.fds[th.pid] = {}
        elif th is None:
            th = self._thread(tid)
        addr = None
        if kind == "accept":
            fd = p.get("fd")
            res = fd if fd is not None else -1
            t = p.get("tuple")
            fam = _tuple_family(t)
            if res < 0 or fam is None:
                if res >= 0:
                    table.pop(res, None)
                return None
            if fam == "unix":
                s = Sock("unix", "unix", path=t[3], role="server", local_is_client=False)
            else:
                s = Sock(fam, "tcp", t[1], t[2], t[3], t[4], local_is_client=False, role="server")
            table[res] = s
        elif kind == "socket":
            fd = p.get("fd")
            res = fd if fd is not None else -1
            if res < 0:
                return None
            fam = FAMILY.get(p.get("domain"))
            if fam is None:
                table.pop(res, None)
                return None
            proto = "unix" if fam == "unix" else (
                IPPROTO.get(p.get("proto") or 0) or SOCK_TYPE_PROTO.get((p.get("type") or 0) & 0xF))
            s = table[res] = Sock(fam, proto)
        else:
            res = p.get("res")
            if res is None:
                res = 0
            fd = p.get("fd")
            if fd is None:
                return None
            s = table.get(fd)
            t = p.get("tuple")
            if syscall == "getsockopt":
                res = _connect_result(p, s)
                if res is None:
                    return None
            elif kind == "connect":
                a = p.get("addr")
                if a and a[0] in ("ipv4", "ipv6"):
                    addr = (a[1], a[2])
                fam = _tuple_family(t)
                if fam is None and s is None:
                    return None
                if s is None:
                    s = table[fd] = Sock(fam, "unix" if fam == "unix" else None)
                if fam == "unix":
                    s.family, s.proto, s.path, s.role = "unix", "unix", t[3], "client"
                elif fam is not None:
                    s.family = fam
                    s.cip, s.cport, s.sip, s.sport = t[1], t[2], t[3], t[4]
                    s.local_is_client, s.role = True, "client"
                elif addr is not None:
                    s.sip, s.sport, s.local_is_client, s.role = addr[0], addr[1], True, "client"
            elif s is None:
                return None
            elif moves:
                fam = _tuple_family(t) if s.proto != "tcp" else None
                if fam is not None and fam != "unix":
                    # unconnected datagram sockets: the peer travels with each message
                    inbound = kind == "recv"
                    if s.role is None:
                        s.role = "server" if inbound else "client"
                        s.local_is_client = not inbound
                    if s.local_is_client != inbound:
                        s.cip, s.cport, s.sip, s.sport = t[1], t[2], t[3], t[4]
                    else:
                        s.cip, s.cport, s.sip, s.sport = t[3], t[4], t[1], t[2]
                    s.family = fam
                    addr = (t[1], t[2]) if inbound else (t[3], t[4])
            elif kind == "bind":
                a = p.get("addr")
                if res >= 0 and a and a[0] in ("ipv4", "ipv6") and a[2]:  # port 0: a client picking its source
                    s.sip, s.sport = a[1], a[2]
                    s.local_is_client, s.role = False, "server"
            elif kind == "listen":
                if res >= 0:
                    s.local_is_client, s.role = False, "server"
            elif kind == "close":
                if res >= 0:
                    del table[fd]
        if s.local_is_client:
            lip, lport, rip, rport = s.cip, s.cport, s.sip, s.sport
        else:
            lip, lport, rip, rport = s.sip, s.sport, s.cip, s.cport
        if moves:
            data = p.get("data") or None
            size = res if res >= 0 else None
        else:
            data = size = None
        # SyscallEvent's fields in order (make_event: positional, no keyword __init__ per event)
        return make_event(
            ts, self._node, n, th.pid, tid, th.comm, kind, syscall,
            fd if fd is not None else -1, res, errno_name(res) if res < 0 else None, s.proto, s.family,
            s.role, lip, lport, rip, rport,
            addr[0] if addr else None, addr[1] if addr else None,
            size, data, False, th.exe, th.container_id,
        )


def _connect_result(p: dict, s: Sock | None) -> int | None:
    """getsockopt(SOL_SOCKET, SO_ERROR) on a TCP socket: its pending error as -errno (0: connected),
    the outcome of a non-blocking connect. None for any other option, socket or a failed call."""
    if s is None or s.proto != "tcp" or (p.get("res") or 0) < 0:
        return None
    if p.get("level") != PPM_SOCKOPT_LEVEL_SOL_SOCKET or p.get("optname") != PPM_SOCKOPT_SO_ERROR:
        return None
    val = p.get("val")
    if not val or len(val) < 9 or val[0] != PPM_SOCKOPT_IDX_ERRNO:
        return None
    return int.from_bytes(val[1:9], "little", signed=True)


def open_capture(path, *, skip_corrupt: bool = False) -> CaptureReader:
    """Open a .scap capture (plain or gzip); iterate it for SyscallEvents."""
    return CaptureReader(path, skip_corrupt=skip_corrupt)
