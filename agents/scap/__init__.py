"""Native reader and writer of sysdig/Falco .scap captures.

    from svctrace.agents.scap import open_capture, ScapWriter, CaptureError

    for ev in open_capture("trace.scap"):       # SyscallEvent, network-relevant only
        ...

See `reader.py` for the reader's interface and semantics, `writer.py` for the
writer, `event_table.py` for the one table everything is derived from and
`errors.py` for the single exception type.
"""
from .errors import CaptureError
from .reader import CaptureReader, RawEvent, open_capture


def __getattr__(name):  # the writer is imported on first use: `svctrace read` starts faster
    if name == "ScapWriter":
        from .writer import ScapWriter
        return ScapWriter
    raise AttributeError(name)


__all__ = ["CaptureError", "CaptureReader", "RawEvent", "open_capture", "ScapWriter"]
