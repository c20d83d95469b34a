"""Event-time progress across partitions: the watermark a keyed stage may advance to.

A stage's input partition receives records from every upstream partition (any
worker may own those). Each upstream partition announces how far it has got
(a watermark: everything earlier has been sent) or that it is DONE (caught up
and idle, its state flushed). A downstream partition may advance to the
smallest announced watermark, and only once every upstream partition has
spoken: a partition not yet heard from may still send old events. When every
upstream partition is DONE the stage flushes, like the in-process runner at
end of input.

Pure: no Kafka, no clock. The Faust app carries announcements in record headers:
a data record names its upstream partition (svctrace-src); a progress record
carries the marks of every upstream partition its worker owns at once
(svctrace-marks: {"3": wm, "7": "done"}), so announcing costs one record per
downstream partition whatever the number of upstream partitions. The single-source
form (svctrace-src + svctrace-wm) is still understood.

A source DONE downstream that has records again is HELD until it announces a
real mark: its marks' value HELD (0, no event is that old) says "not heard
yet". A stage that has noted it waits for that source as for one never heard
(watermark() is None), so no other source's mark passes its records. An older
worker reads HELD as the mark 0: the same wait (its sources' marks are the
smallest it may advance to). A worker decides when to hold its own sources with
must_hold().
"""
from __future__ import annotations

import orjson

DONE = "done"
# The mark of a source that was DONE (or has not spoken since its owner took it) and has records again, not yet
# released: "not heard yet" (an int, so every worker reads it; no event time is 0).
HELD = 0

# Record headers of progress announcements (and of data records, for the source).
SOURCE_HEADER = "svctrace-src"
WATERMARK_HEADER = "svctrace-wm"
MARKS_HEADER = "svctrace-marks"


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
            return
        hi = self.state.get("hi")
        if int(mark) != HELD and (hi is None or int(mark) > hi):
            self.state["hi"] = int(mark)
        if isinstance(old, int):
            src[key] = max(old, int(mark))
        else:
            src[key] = int(mark)  # first word, or a DONE source active again

    def data_arrived(self) -> None:
        self.state["flushed"] = False

    def watermark(self) -> int | None:
        """The smallest watermark of the active sources; None while any source is unheard (or HELD) or none
        is active."""
        marks = self.state["src"].values()
        if any(m is None or m == HELD for m in marks):
            return None
        active = [m for m in marks if m != DONE]
        return min(active) if active else None

    def high(self) -> int | None:
        """The largest watermark any source has announced (kept when sources turn DONE): at the
        end of input a stage first advances to it, as the in-process runner's last step does with
        its global clock, and only then flushes, so event-time timers still fire in order."""
        return self.state.get("hi")

    def all_done(self) -> bool:
        return all(m == DONE for m in self.state["src"].values())

    def should_flush(self) -> bool:
        """Every source is done and this partition has not flushed since its last data."""
        return self.all_done() and not self.state["flushed"]

    def mark_flushed(self) -> None:
        self.state["flushed"] = True


def must_hold(word: int | str | None, highwater: int | None, processed: int | None, reactivated: bool,
              unanswered: bool = False) -> bool:
    """Whether a worker must announce its syscalls partition HELD, before (or with) any mark it announces.

    word: the mark it last announced for the partition (queued or sent), None if none since it owns it (its
    predecessor's word downstream, a restored DONE, still counts there). highwater: the partition's log end in
    the broker's last answer to a fetch (None: no answer yet); processed: the offset of the last record it
    processed (None: none, nor a committed offset); reactivated: it has processed records of the partition
    since it was DONE and not yet announced their mark; unanswered: the broker's last answer about it was asked
    before another partition of the worker had records again (a backlog published to both at once may show only
    in its next answer: held until then).

    Downstream, a DONE source holds nothing back: a mark of another source passes whatever the DONE one has
    still to send. A partition that has records again is not done, from the moment the broker's answer
    shows them (a backlog published at once may reach this worker's other partitions first, and be read and
    released before this one's), until its new records are processed and their mark announced. A partition
    last announced with a mark already holds the others back by that mark (marks never go back): no hold."""
    if word is not None and word != DONE:
        return False
    if reactivated or unanswered:
        return True
    if highwater is None or highwater <= 0:
        return False
    return processed is None or processed + 1 < highwater


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


def encode_marks(marks: dict[int, int | str]) -> bytes:
    """Several upstream partitions' marks in one header value."""
    return orjson.dumps({str(source): mark for source, mark in marks.items()})


def decode_progress(headers) -> tuple[int | None, dict[int, int | str]]:
    """(source partition of a data record or None, {source: mark} announced) from a record's headers."""
    items = headers.items() if hasattr(headers, "items") else (headers or ())
    source = mark = None
    marks: dict[int, int | str] = {}
    for k, v in items:
        if k == SOURCE_HEADER:
            source = int(v)
        elif k == WATERMARK_HEADER:
            text = v.decode() if isinstance(v, (bytes, bytearray)) else str(v)
            mark = DONE if text == DONE else int(text)
        elif k == MARKS_HEADER:
            for src, m in orjson.loads(v).items():
                marks[int(src)] = DONE if m == DONE else int(m)
    if source is not None and mark is not None:
        marks[source] = mark
    return source, marks
