"""The reader's fast path against its general path: the same events, state, errors and stats.

`CaptureReader.__iter__` takes well-framed v2 event blocks straight from the stream's buffer and
decodes the event types that matter with `Layout.fast()` (one struct per run of fixed-size params);
`_walk(raw=False)` is the general path, block by block through the stream's full framing check and
`Layout.decode()`. Every capture, and damaged copies of them, must read the same both ways."""
from __future__ import annotations

import random
import struct
from pathlib import Path

import pytest

from svctrace.agents.scap import CaptureError, open_capture
from svctrace.agents.scap.event_table import EVENTS, FIXED
from svctrace.agents.scap.params import LAYOUTS
from tests.conftest import capture_files

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"


def _read(reader, general: bool):
    """Everything a read gives: the events (or the error) with the counters as each came out, then
    stats and state."""
    out = []
    try:
        for e in (reader._walk(raw=False) if general else reader):
            st = reader.stats
            out.append((e, st.blocks, st.event_blocks, st.events, st.emitted))
    except CaptureError as e:
        out.append(("error", str(e)))
    return out, reader.stats.as_dict(), reader.containers, reader.k8s_states, reader.machine


def _same_both_ways(path, skip_corrupt: bool):
    fast = _read(open_capture(path, skip_corrupt=skip_corrupt), general=False)
    general = _read(open_capture(path, skip_corrupt=skip_corrupt), general=True)
    assert fast == general, (path, skip_corrupt)
    return fast


def _all_captures() -> list[Path]:
    return capture_files() + sorted(EXAMPLES.glob("*/*.scap"))


def test_fast_path_reads_every_capture_as_the_general_path(captures):
    total = sum(len(_same_both_ways(p, False)[0]) for p in _all_captures())
    assert total > 1_000


@pytest.mark.parametrize("seed", range(2))
def test_fast_path_reads_damaged_captures_as_the_general_path(tmp_path, captures, seed):
    """Truncated copies and copies with bytes overwritten (in framing, headers, lengths, values):
    the same events, the same error at the same offset, the same skipping with skip_corrupt."""
    rng = random.Random(seed)
    errors = 0
    for path in _all_captures():
        data = path.read_bytes()
        if len(data) > 1_500_000:
            continue
        damaged = bytearray(data[:rng.randrange(len(data))] if seed == 0 else data)
        for _ in range(seed * 6):
            i = rng.randrange(len(damaged))
            damaged[i] = rng.randrange(256)
        copy = tmp_path / path.name
        copy.write_bytes(bytes(damaged))
        _same_both_ways(copy, False)
        errors += _same_both_ways(copy, True)[1]["error_count"] > 0
    assert errors > 0  # the damage reached the checks


def _event_bytes(rng, layout, nparams: int, widths_ok: bool) -> tuple[bytes, tuple[int, ...]]:
    lens = []
    for t in layout.types[:nparams]:
        if t in FIXED and (widths_ok or rng.random() < 0.8):
            lens.append(FIXED[t][0])
        else:
            lens.append(rng.choice((0, 1, 2, 4, 8, 13, 17, 37)))
    fmt = "I" if layout.width == 4 else "H"
    values = bytes(rng.randrange(256) for _ in range(sum(lens)))
    return struct.pack(f"<{nparams}{fmt}", *lens) + values, tuple(lens)


def test_fast_decoders_give_decode_s_values():
    """For every event type and parameter count: fast() returns decode()'s dict or None (never
    another value), and it does return it for every well-formed event of standard widths;
    fast_enter() returns the fd (or True) when checked_lengths() accepts the event, and does for
    every well-formed one of standard widths."""
    rng = random.Random(1)
    covered = 0
    for layout in LAYOUTS:
        for nparams in range(layout.nmax + 1):
            for trial in range(6):
                event, lens = _event_bytes(rng, layout, nparams, widths_ok=trial < 2)
                pad = b"\x99" * 64  # what follows the event in a block: trailer, next block
                cut = len(event) - (rng.randrange(1, 4) if trial == 5 and len(event) > 4 else 0)
                buf = b"\x77" * 10 + event + pad
                end = 10 + cut
                try:
                    want = layout.decode(buf, 10, end, nparams)
                except ValueError:
                    want = None
                got = layout.fast(nparams)(buf, 10, end)
                assert got is None or got == want, (EVENTS[layout.code].enum, nparams, lens)
                if trial < 2 and cut == len(event):
                    assert got == want, (EVENTS[layout.code].enum, nparams, lens)
                    covered += 1
                with_fd = nparams > 0 and layout.names[0] == "fd" and layout.types[0] == "FD"
                fd = layout.fast_enter(nparams)(buf, 10, end)
                try:
                    layout.checked_lengths(buf, 10, end, nparams)
                    fits = True
                except ValueError:
                    fits = False
                if fd is not None:
                    assert fits
                    assert fd == (layout.int_at(buf, 10, nparams, 0) if with_fd else True)
                elif fits and trial < 2 and (nparams or layout.names[:1] != ("fd",)):
                    assert False, ("fast_enter refused a well-formed event", EVENTS[layout.code].enum, nparams)
    assert covered > 1000
