"""Cross-partition event-time progress (pure): the watermark a downstream partition may use."""
from svctrace.streams.faust_app.progress import DONE, SourceProgress, decode_headers, encode_mark


def test_no_watermark_until_every_source_has_spoken():
    p = SourceProgress(3)
    p.note(0, 100)
    p.note(1, 50)
    assert p.watermark() is None  # source 2 may still send old events
    p.note(2, 70)
    assert p.watermark() == 50


def test_watermark_is_monotonic_per_source_and_done_sources_do_not_hold_back():
    p = SourceProgress(2)
    p.note(0, 100)
    p.note(0, 90)  # a repeated, older announcement (redelivery) does not move it back
    p.note(1, DONE)
    assert p.watermark() == 100
    assert not p.all_done()
    p.note(0, DONE)
    assert p.all_done() and p.should_flush() and p.watermark() is None
    p.mark_flushed()
    assert not p.should_flush()
    p.note(0, 150)  # new data after a flush: active again
    p.data_arrived()
    assert p.watermark() == 150 and not p.should_flush()


def test_state_round_trips_and_headers_decode():
    p = SourceProgress(2)
    p.note(0, 5)
    q = SourceProgress(2, p.state)
    assert q.state == {"src": {"0": 5, "1": None}, "flushed": False}
    assert decode_headers([("svctrace-src", b"3"), ("svctrace-wm", encode_mark(DONE))]) == (3, DONE)
    assert decode_headers({"svctrace-src": b"1", "svctrace-wm": b"42"}) == (1, 42)
    assert decode_headers(None) == (None, None)
