"""pymalloc's arenas on transparent huge pages (svctrace.memory, the core's arenas.c): each case in a fresh
interpreter, since the hook stays for the life of the process that installs it."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from svctrace.memory import HUGE_PAGES_ENV, thp_mode
from svctrace.streams.core import native

ROOT = Path(__file__).resolve().parent.parent

# Installs the hook, fills ~300 MB with small objects, frees them, fills again; reports what the region saw.
CHURN = """
import json, sys
from svctrace.memory import huge_page_arenas
from svctrace.streams.core import arenas

status = huge_page_arenas()
report = {"status": status, "before": arenas.stats()}
objects = [(i, str(i), [i]) for i in range(1_500_000)]
report["filled"] = arenas.stats()
start = report["filled"] and report["filled"]["start"]
huge = 0
if start:  # the region's mapping in smaps: the kernel's huge pages there
    lines = open("/proc/self/smaps").read().splitlines()
    for i, line in enumerate(lines):
        if "-" in line.split()[0] and int(line.split("-")[0], 16) <= start < int(line.split()[0].split("-")[1], 16):
            fields = dict(l.split(":", 1) for l in lines[i + 1:i + 30] if ":" in l and not l[0].isdigit() and " " not in l.split(":")[0])
            huge = int(fields["AnonHugePages"].split()[0])
            report["eligible"] = int(fields.get("THPeligible", "0").split()[0])
            break
report["huge_kb"] = huge
ok = all(objects[i] == (i, str(i), [i]) for i in range(0, 1_500_000, 997))
del objects
report["freed"] = arenas.stats()
again = [(i, str(i), [i]) for i in range(1_000_000)]
report["again"] = arenas.stats()
report["intact"] = ok and all(again[i] == (i, str(i), [i]) for i in range(0, 1_000_000, 991))
print(json.dumps(report))
"""


def _run(env_changes: dict[str, str | None]) -> dict:
    env = {k: v for k, v in os.environ.items() if k not in (native.PURE_ENV, HUGE_PAGES_ENV)}
    env.update({k: v for k, v in env_changes.items() if v is not None})
    done = subprocess.run([sys.executable, "-c", CHURN], cwd=ROOT, env=env, capture_output=True, text=True,
                          timeout=300)
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout)


def test_arenas_come_from_one_region_on_huge_pages_and_are_reused():
    mode = thp_mode()
    assert mode is not None, "this machine kind has transparent huge pages (madvise); this kernel has none"
    report = _run({})
    if mode == "never":
        assert report["status"] == "off (transparent huge pages: never)"
        return
    assert report["status"] == f"on (transparent huge pages: {mode})"
    assert report["before"]["arenas"] == 0 and report["before"]["outside"] == 0
    filled = report["filled"]
    assert filled["arenas"] >= 150, filled  # ~300 MB of tuples, strings, lists: 1 MiB arenas, all from the region
    assert filled["start"] % (2 << 20) == 0
    assert report["eligible"] == 1  # the kernel may back the region with huge pages ...
    assert report["huge_kb"] >= 100 * 1024, report  # ... and does (defrag: direct compaction for madvised memory)
    freed, again = report["freed"], report["again"]
    assert freed["free"] >= filled["arenas"] // 2, freed  # freed arenas are kept, not returned
    in_region = lambda s: s["arenas"] + s["free"]  # noqa: E731 - arenas ever cut from the region
    assert in_region(again) == in_region(freed) >= in_region(filled)  # the second fill reuses them
    assert again["free"] < freed["free"] and again["outside"] == 0
    assert report["intact"]


def test_the_environment_turns_them_off():
    report = _run({HUGE_PAGES_ENV: "0"})
    assert report["status"] == f"off (${HUGE_PAGES_ENV}=0)"
    assert report["before"] is None and report["again"] is None and report["intact"]


def test_the_uncompiled_core_leaves_arenas_alone():
    report = _run({native.PURE_ENV: "1"})
    assert report["status"] == "off (the core is not compiled)"
    assert report["again"] is None and report["intact"]


def test_thp_mode_reads_the_bracketed_word(tmp_path):
    setting = tmp_path / "enabled"
    setting.write_text("always [madvise] never\n")
    assert thp_mode(setting) == "madvise"
    setting.write_text("[always] madvise never\n")
    assert thp_mode(setting) == "always"
    assert thp_mode(tmp_path / "missing") is None


# Calls huge_page_malloc() (which starts the process again, once), then fills ~240 MB through glibc's malloc.
MALLOC = """
import json, os, sys
from svctrace.memory import huge_page_malloc
print("started", os.getpid(), flush=True)
status = huge_page_malloc()
blocks = [i.to_bytes(4, "little") * 1000 for i in range(60_000)]  # 4000 bytes each, over pymalloc's 512: malloc's
huge = next(int(l.split()[1]) for l in open("/proc/self/smaps_rollup") if l.startswith("AnonHugePages"))
print(json.dumps({"status": status, "pid": os.getpid(), "tunables": os.environ.get("GLIBC_TUNABLES"),
                  "huge_kb": huge, "argv": sys.argv[1:]}))
"""


def _malloc_run(env_changes: dict[str, str]) -> tuple[list[str], dict]:
    env = {k: v for k, v in os.environ.items() if k not in (HUGE_PAGES_ENV, "GLIBC_TUNABLES")}
    env.update(env_changes)
    done = subprocess.run([sys.executable, "-c", MALLOC, "an-argument"], cwd=ROOT, env=env, capture_output=True,
                          text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    *started, report = done.stdout.splitlines()
    return started, json.loads(report)


def test_glibc_malloc_goes_on_huge_pages_by_starting_the_process_again():
    mode = thp_mode()
    assert mode is not None, "this machine kind has transparent huge pages (madvise); this kernel has none"
    started, report = _malloc_run({"GLIBC_TUNABLES": "glibc.malloc.arena_max=4"})
    if mode == "never":
        assert report["status"] == "off (transparent huge pages: never)" and len(started) == 1
        return
    # started twice, as the same process with the same arguments, the tunable added to those it had
    assert started == [f"started {report['pid']}"] * 2
    assert report["argv"] == ["an-argument"]
    assert report["tunables"] == "glibc.malloc.arena_max=4:glibc.malloc.hugetlb=1"
    assert report["status"] == "on (glibc.malloc.hugetlb=1)"
    assert report["huge_kb"] >= 100 * 1024, report  # the 240 MB malloc gave are on huge pages


def test_glibc_malloc_stays_as_it_is_when_turned_off_or_already_set():
    started, report = _malloc_run({HUGE_PAGES_ENV: "0"})
    assert len(started) == 1 and report["status"] == f"off (${HUGE_PAGES_ENV}=0)" and report["tunables"] is None
    started, report = _malloc_run({"GLIBC_TUNABLES": "glibc.malloc.hugetlb=0"})
    assert len(started) == 1 and report["status"] == "off (glibc.malloc.hugetlb=0)"


def test_the_worker_exports_the_arenas_it_holds():
    script = """
from svctrace.memory import huge_page_arenas
from svctrace.streams.core import arenas
from svctrace.streams.faust_app.metrics import WorkerMetrics
metrics = WorkerMetrics()
value = lambda state: metrics.registry.get_sample_value("svctrace_worker_huge_page_arena_bytes", {"state": state})
print(value("in_use"), value("kept_free"))
print(huge_page_arenas())
objects = [(i, str(i)) for i in range(500_000)]
stats = arenas.stats()
print(value("in_use"), value("kept_free"), stats["arenas"] << 20, stats["free"] << 20)
"""
    env = {k: v for k, v in os.environ.items() if k not in (native.PURE_ENV, HUGE_PAGES_ENV)}
    done = subprocess.run([sys.executable, "-c", script], cwd=ROOT, env=env, capture_output=True, text=True,
                          timeout=120)
    assert done.returncode == 0, done.stderr
    before, status, after = done.stdout.splitlines()
    assert before == "0.0 0.0"
    if status.startswith("on"):
        in_use, kept, arenas_bytes, free_bytes = (float(v) for v in after.split())
        assert arenas_bytes >= 30 << 20  # (an arena more or less: the print's own objects, made between the reads)
        assert abs(in_use - arenas_bytes) <= 1 << 20 and abs(kept - free_bytes) <= 1 << 20
    else:
        assert thp_mode() in (None, "never"), status
