"""`svctrace read FILE [--json] [--filter net] [--skip-corrupt] [--raw]`

Prints the normalized network events of a .scap capture, one per line (like
`sysdig -r F` / `sysdig -r F -j`; times of day in UTC, --json: ns since the epoch). `--filter net` keeps IPv4/IPv6 sockets and
loss markers (drops unix sockets). `--raw` prints every decoded event of any
type with all parameters instead. A damaged capture stops with one error line
naming file, offset and block; `--skip-corrupt` resumes at the next valid
block and reports on stderr how much was skipped.
"""
from __future__ import annotations

import base64
import sys
import time

import orjson

from .errors import CaptureError
from .event_table import EVENTS
from .reader import open_capture


def configure(parser) -> None:
    parser.add_argument("file", metavar="FILE", help=".scap capture (plain or gzip)")
    parser.add_argument("--json", action="store_true", help="one JSON object per line")
    parser.add_argument("--filter", choices=["net"], help="net: only IPv4/IPv6 socket events and loss markers")
    parser.add_argument("--skip-corrupt", action="store_true",
                        help="skip damaged blocks (resume at the next valid one) instead of stopping")
    parser.add_argument("--raw", action="store_true", help="every decoded event (all types, all params)")


def _default(obj):
    if isinstance(obj, (bytes, bytearray, memoryview)):
        return base64.b64encode(obj).decode("ascii")
    if isinstance(obj, tuple):
        return list(obj)
    raise TypeError(type(obj).__name__)


def _time_of_day(ts: int) -> str:
    """15:21:34.802884916, UTC, as sysdig -r prints an event's time (--json keeps the ns since the epoch)."""
    return time.strftime("%H:%M:%S", time.gmtime(ts // 1_000_000_000)) + f".{ts % 1_000_000_000:09d}"


def _text(ev) -> str:
    def end(ip, port):
        if ip is None:
            return "?" if port is None else f"?:{port}"
        return f"[{ip}]:{port}" if ":" in ip else f"{ip}:{port}"

    # getsockopt(SO_ERROR) is kept only when the call returned 0: `res` holds the connect's result, its value
    res = f"res=0 SO_ERROR={ev.res}" if ev.syscall == "getsockopt" else f"res={ev.res}"
    parts = [str(ev.n), _time_of_day(ev.ts), f"{ev.comm} ({ev.pid}:{ev.tid})", ev.syscall, f"fd={ev.fd}", res]
    if ev.errno:
        parts[-1] += f"({ev.errno})"
    if ev.kind != "lost":
        parts.append(f"{ev.proto or '?'} {ev.role or '-'} {end(ev.local_ip, ev.local_port)}->"
                     f"{end(ev.remote_ip, ev.remote_port)}")
    if ev.addr_ip is not None:
        parts.append(f"addr={end(ev.addr_ip, ev.addr_port)}")
    if ev.data:
        parts.append("data=" + ev.data[:80].decode("ascii", "replace").translate(_PRINTABLE))
    return " ".join(parts)


_PRINTABLE = {i: "." for i in range(32)} | {127: "."}


def run(args) -> int:
    out = sys.stdout.buffer
    reader = open_capture(args.file, skip_corrupt=args.skip_corrupt)
    buf: list[bytes] = []
    try:
        if args.raw:
            for r in reader.raw_events():
                info = EVENTS[r.code]
                if args.json:
                    buf.append(orjson.dumps({"n": r.n, "ts": r.ts, "tid": r.tid, "cpu": r.cpu, "type": info.name,
                                             "dir": info.direction, "enum": info.enum, "params": r.params},
                                            default=_default))
                else:
                    buf.append(f"{r.n} {r.ts} {r.tid} {info.direction} {info.name} {r.params}".encode(
                        "utf-8", "replace"))
                if len(buf) >= 4096:
                    out.write(b"\n".join(buf) + b"\n")
                    buf.clear()
        else:
            net = args.filter == "net"
            dumps = orjson.dumps
            for ev in reader:
                if net and ev.family not in ("ipv4", "ipv6") and ev.kind != "lost":
                    continue
                buf.append(dumps(ev, default=_default) if args.json else _text(ev).encode("utf-8", "replace"))
                if len(buf) >= 4096:
                    out.write(b"\n".join(buf) + b"\n")
                    buf.clear()
    except OSError as e:  # missing or unreadable file
        print(f"svctrace read: error: {e}", file=sys.stderr)
        return 1
    except CaptureError as e:
        if buf:
            out.write(b"\n".join(buf) + b"\n")
        out.flush()
        print(f"svctrace read: error: {e}", file=sys.stderr)
        return 1
    if buf:
        out.write(b"\n".join(buf) + b"\n")
    out.flush()
    st = reader.stats
    if st.skipped_bytes or st.errors:
        print(f"svctrace read: skipped {st.skipped_bytes} bytes ({st.skipped_blocks} blocks) of damaged data, "
              f"{st.error_count} problem(s); first: {st.errors[0] if st.errors else 'n/a'}", file=sys.stderr)
    return 0
