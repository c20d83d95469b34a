"""Event-time progress across partitions: the watermark a keyed stage may advance to.

A stage's input partition receives records from every upstream partition (any
worker may own those). Each upstream partition announces how far it has got
(a watermark: everything earlier has been sent) or that it is DONE (caught up
and idle, its state flushed). A downstream partition may advance to the
smallest announced watermark, and only once every upstream partition has
spoken: a partition not yet heard from may still send old events. When every
upstream partition is DONE the stage flushes, like the in-process runner at
end of input.

Pure: no Kafka, no clock. The Faust app carries announcements in record headers.
"""
from __future__ import annotations

DONE = "done"

# Record headers of progress announcements (and of data records, for the source).
SOURCE_HEADER = "svctrace-src"
WATERMARK_HEADER = "svctrace-wm"


class SourceProgress:
    """What one downstream partition knows of its upstream partitions.

    State (JSON-able, checkpointed with the stage): {"src": {"0": wm|"done"|None, ...}, "flushed": bool}.
    """

    def __init__(self, sources: int, state: dict | None = None):
        self.sources = sources
        self.state = state or {"src": {str(i): None for i in range(sources)}, "flushed": False}

    def note(self, source: int, mark: int | str) -> None:
        """An announcement from upstream partition `source`: a watermark (ns) or DONE."""
        src = self.state["src"]
        key = str(source)
        old = src.get(key)
        if mark == DONE:
            src[key] = DONE
        elif isinstance(old, int):
            src[key] = max(old, int(mark))
        else:
            src[key] = int(mark)  # first word, or a DONE source active again

    def data_arrived(self) -> None:
        self.state["flushed"] = False

    def watermark(self) -> int | None:
        """The smallest watermark of the active sources; None while any source is unheard or none is active."""
        marks = self.state["src"].values()
        if any(m is None for m in marks):
            return None
        active = [m for m in marks if m != DONE]
        return min(active) if active else None

    def all_done(self) -> bool:
        return all(m == DONE for m in self.state["src"].values())

    def should_flush(self) -> bool:
        """Every source is done and this partition has not flushed since its last data."""
        return self.all_done() and not self.state["flushed"]

    def mark_flushed(self) -> None:
        self.state["flushed"] = True


def encode_mark(mark: int | str) -> bytes:
    return str(mark).encode()


def decode_headers(headers) -> tuple[int | None, int | str | None]:
    """(source partition, mark) from a record's headers (list of pairs or mapping)."""
    items = headers.items() if hasattr(headers, "items") else (headers or ())
    source = mark = None
    for k, v in items:
        if k == SOURCE_HEADER:
            source = int(v)
        elif k == WATERMARK_HEADER:
            text = v.decode() if isinstance(v, (bytes, bytearray)) else str(v)
            mark = DONE if text == DONE else int(text)
    return source, mark
