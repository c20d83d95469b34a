"""The core compiled by Cython (streams/core/native.py): used here, used only when built from the sources
beside it, and giving the very outputs the Python modules give."""
from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import svctrace.streams.core as core
from svctrace.streams.core import native
from tests.scenario import FAULTS

ROOT = Path(__file__).resolve().parent.parent

# Chains and alerts of live-like traffic (the bench's mix) and of every fault in every mode, as one digest.
OUTPUTS = """
import hashlib, sys
from svctrace.schemas.models import dumps
from svctrace.streams.core import NATIVE, run
from tests.scenario import FAULTS, MODES, S, T0, build, steady_traffic

h, chains, alerts = hashlib.sha256(), 0, 0
runs = [steady_traffic(6000, 4, T0)[:2]] + [build(f, m, requests=3, gap_ns=S // 20) for f in FAULTS for m in MODES]
for cluster, events in runs:
    result = run(events, cluster.index())
    h.update(dumps({"chains": result.chains, "alerts": result.alerts}))
    chains, alerts = chains + len(result.chains), alerts + len(result.alerts)
print(NATIVE)
print(chains, alerts, h.hexdigest())
"""


def _outputs(pure: bool) -> list[str]:
    env = {k: v for k, v in os.environ.items() if k != native.PURE_ENV}
    if pure:
        env[native.PURE_ENV] = "1"
    done = subprocess.run([sys.executable, "-c", OUTPUTS], cwd=ROOT, env=env, capture_output=True, text=True,
                          timeout=300)
    assert done.returncode == 0, done.stderr
    return done.stdout.splitlines()


def test_the_core_runs_compiled():
    """make setup compiles it; if it could not (no compiler, a module Cython refuses), this says why."""
    assert os.environ.get(native.PURE_ENV) is None, f"{native.PURE_ENV} is set"
    assert core.NATIVE == "compiled", core.NATIVE
    import svctrace.streams.core.stitch as stitch

    assert Path(stitch.__file__).parent.name == native.BUILT
    # built with its .pxd: a connection is a C class, its fields struct members (not slot descriptors)
    assert type(stitch.Conn.__dict__["t1"]).__name__ == "getset_descriptor"
    assert not hasattr(stitch._new_conn("10.0.0.1:1", _event(), 0), "__dict__")


def _event():
    from svctrace.schemas.models import SyscallEvent

    return SyscallEvent(ts=1, node="n1", n=1, pid=1, tid=1, comm="c", kind="connect", syscall="connect", fd=3, res=0)


def test_compiled_and_python_modules_give_the_same_chains_and_alerts():
    compiled, python = _outputs(pure=False), _outputs(pure=True)
    assert compiled[0] == "compiled" and python[0].startswith("Python")
    chains, alerts, _ = compiled[1].split()
    assert int(chains) > 1000 and int(alerts) >= len(FAULTS) - 1  # (every fault but "healthy" alerts)
    assert compiled[1] == python[1]


def test_built_modules_stand_in_only_for_the_sources_they_were_built_from(tmp_path):
    here = Path(native.__file__).parent
    copy = tmp_path / "core"
    shutil.copytree(here, copy, ignore=shutil.ignore_patterns("__pycache__", ".build"))
    assert native.built_status(copy) == (True, "compiled")
    stitch = copy / "stitch.py"
    stitch.write_text(stitch.read_text() + "\n# an edit\n")
    ok, why = native.built_status(copy)
    assert not ok and "other sources" in why
    shutil.copy2(here / "stitch.py", stitch)  # the edit undone: the same bytes, the build stands again
    assert native.built_status(copy) == (True, "compiled")
    # a module's .pxd (its Cython declarations) is a source too: edited, added or removed, the build is stale
    pxd = copy / "stitch.pxd"
    assert pxd.is_file()
    pxd.write_text(pxd.read_text() + "\n# an edit\n")
    ok, why = native.built_status(copy)
    assert not ok and "other sources" in why
    pxd.unlink()
    ok, why = native.built_status(copy)
    assert not ok and "other sources" in why
    shutil.copy2(here / "stitch.pxd", pxd)
    assert native.built_status(copy) == (True, "compiled")
    (copy / "timeorder.pxd").write_text("# a new .pxd\n")
    ok, why = native.built_status(copy)
    assert not ok and "other sources" in why
    (copy / "timeorder.pxd").unlink()
    assert native.built_status(copy) == (True, "compiled")
    # so is a module written in C (arenas.c: pymalloc's arenas on huge pages)
    source = copy / "arenas.c"
    source.write_text(source.read_text() + "\n/* an edit */\n")
    ok, why = native.built_status(copy)
    assert not ok and "other sources" in why
    shutil.copy2(here / "arenas.c", source)
    assert native.built_status(copy) == (True, "compiled")
    next((copy / native.BUILT).glob("keys.*")).unlink()
    ok, why = native.built_status(copy)
    assert not ok and "keys missing" in why
    shutil.rmtree(copy / native.BUILT)
    assert native.built_status(copy) == (False, "not compiled (make setup compiles it)")


def test_compiled_core_reads_each_event_field_as_the_attribute_of_its_name():
    """Compiled, the stitch stage reads a SyscallEvent's fields as struct members at fixed offsets (enriched.pxd):
    each must be the attribute of its name, for every field (what enriched.py checks as it is imported)."""
    from svctrace.schemas.models import SyscallEvent
    from svctrace.streams.core import enriched

    assert Path(enriched.__file__).parent.name == native.BUILT
    fields = SyscallEvent.__struct_fields__
    values = [object() for _ in fields]
    got = enriched._event_fields(SyscallEvent(*values))
    assert len(got) == len(fields)
    assert [f for f, a, b in zip(fields, got, values) if a is not b] == []
    e = _event()
    assert enriched._event_fields(e) == tuple(getattr(e, f) for f in fields)
    enriched._check_layout()


def test_an_edited_event_model_makes_a_build_stale_rather_than_wrong(tmp_path, monkeypatch):
    """The compiled stitch stage reads SyscallEvent's fields at fixed offsets (enriched.pxd): the model's
    module (and msgspec's version) count among the build's sources, so editing it makes the core run as
    Python until it is built again, not a core that refuses to import."""
    import svctrace.schemas.models as models

    before = native.sources_digest()
    edited = tmp_path / "models.py"
    edited.write_bytes(Path(models.__file__).read_bytes() + b"\n# a field added\n")
    monkeypatch.setattr(models, "__file__", str(edited))
    assert native.sources_digest() != before
    ok, why = native.built_status()
    assert not ok and "edited since" in why


def test_compiled_core_reads_each_ref_field_as_the_attribute_of_its_name(tmp_path):
    """Compiled, _dedup_refs reads an event ref's fields as struct members (stitch.pxd lays out records.Ref): each
    must be the attribute of its name (what stitch.py checks as it is imported), and records.py counts among the
    build's sources, so an edited Ref makes the core run as Python until it is built again."""
    from svctrace.streams.core import stitch
    from svctrace.streams.core.records import Ref

    assert Path(stitch.__file__).parent.name == native.BUILT
    values = [object() for _ in Ref.__struct_fields__]
    assert all(a is b for a, b in zip(stitch._ref_fields(Ref(*values)), values))
    assert stitch._ref_fields(Ref("node-a", 7, 11, "send")) == ("node-a", 7, 11, "send")
    stitch._check_ref_layout()
    here = Path(native.__file__).parent
    copy = tmp_path / "core"
    shutil.copytree(here, copy, ignore=shutil.ignore_patterns("__pycache__", ".build"))
    assert native.built_status(copy) == (True, "compiled")
    records = copy / "records.py"
    records.write_bytes(records.read_bytes() + b"\n# a field added to Ref\n")
    ok, why = native.built_status(copy)
    assert not ok and "edited since" in why
