"""Run every benchmark module of this folder, one after the other."""
import subprocess
import sys
from pathlib import Path

# instruments the benchmarks run a worker under (bench.pipeline --stages / --latency-stages, bench.worker_steady):
# they take a report path and a command, and measure nothing on their own
INSTRUMENTS = {"worker_latency", "worker_stages"}
names = sorted(p.stem for p in Path(__file__).parent.glob("*.py") if not p.stem.startswith("_") and
               p.stem not in INSTRUMENTS)
failed = []
for name in names:
    print(f"== bench.{name}", flush=True)
    if subprocess.run([sys.executable, "-m", f"bench.{name}"], cwd=Path(__file__).parent.parent).returncode:
        failed.append(name)
print(f"== {len(names) - len(failed)}/{len(names)} benchmarks ran" + (f"; failed: {', '.join(failed)}" if failed else ""))
sys.exit(1 if failed else 0)
