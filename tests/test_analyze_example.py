"""The bundled seed example is exactly what its generator writes."""
from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

from svctrace.agents.scap import open_capture

SEED = Path(__file__).resolve().parent.parent / "examples" / "seed"


def load_generator():
    spec = importlib.util.spec_from_file_location("make_example", SEED / "make_example.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up while the class is built
    spec.loader.exec_module(module)
    return module


def test_regenerating_gives_identical_bytes(tmp_path):
    capture, cluster = load_generator().write(tmp_path)
    stale = "examples/seed is stale: run python examples/seed/make_example.py and commit the result"
    assert capture.read_bytes() == (SEED / "capture.scap").read_bytes(), stale
    assert cluster.read_bytes() == (SEED / "cluster.json").read_bytes(), stale


def test_capture_reads_back_as_the_scenario():
    gen = load_generator()
    want = gen.scenario_events()
    got = list(open_capture(SEED / "capture.scap"))
    assert len(got) == len(want)
    for w, g in zip(want, got):
        assert (g.ts, g.node, g.pid, g.tid, g.comm, g.kind, g.syscall, g.fd, g.res) == \
            (w.ts, w.node, w.pid, w.tid, w.comm, w.kind, w.syscall, w.fd, w.res)
        if w.proto in ("tcp", "udp") and w.kind != "socket":
            assert (g.proto, g.remote_ip, g.remote_port) == (w.proto, w.remote_ip, w.remote_port), (w, g)
