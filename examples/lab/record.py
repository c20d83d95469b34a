"""Record the lab example: real syscalls of clients against one Service per kube-proxy mode and fault.

    sudo python examples/lab/record.py          # from the repository root; needs root (eBPF, netns)

Builds the network lab of lab/net/services.py (network namespaces on this machine, no route
out), asks every case (curl; the Go and UDP clients) while the eBPF capture runs, and writes what the lab's namespaces did:

* `capture.scap`: the cluster state embedded up front (K8S events, as sysdig wrote them), then
  every network syscall of the lab's pods and node, as `svctrace capture` writes them;
* `cluster.json`: that state as `kubectl get nodes,pods,services,endpointslices,networkpolicies -A -o json`;
* `cases.json`: the cases asked, with each client's exit status (what the recording holds).

Unlike examples/seed (built from the article's trace), this one is real: pids, timestamps,
ports and payloads are whatever the kernel and the programs did, so each recording differs.
"""
from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent.parent))

from lab.net.services import NODE, cluster_list, record  # noqa: E402
from svctrace.agents.scap import ScapWriter  # noqa: E402

K8S_E = 260  # PPME_K8S_E: cluster state as JSON, as sysdig wrote it when run with Kubernetes support
META_TID = -1  # meta events carry no thread


def write(out_dir: Path, events: list, curls: dict) -> tuple[Path, Path, Path]:
    out_dir.mkdir(parents=True, exist_ok=True)
    capture, cluster, cases = out_dir / "capture.scap", out_dir / "cluster.json", out_dir / "cases.json"
    state = cluster_list()
    t0 = min(e.ts for e in events)
    with ScapWriter(capture, hostname=NODE) as writer:
        for i, obj in enumerate(state["items"]):  # one watch event per object, observed 1 s before the trace
            doc = json.dumps({"type": "ADDED", "object": obj}, separators=(",", ":"), sort_keys=True)
            writer.write_raw(t0 - 1_000_000_000 + i, META_TID, K8S_E, {"json": doc})
        for n, event in enumerate(sorted(events, key=lambda e: e.ts), 1):
            writer.write_event(event.with_(n=n))  # numbered as the file's events, like evt.num
    cluster.write_text(json.dumps(state, indent=4) + "\n")
    cases.write_text(json.dumps({case: rc for case, (_pid, rc, _body) in curls.items()}, indent=4) + "\n")
    return capture, cluster, cases


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=HERE, help="output folder (default: next to this script)")
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory() as work:
        events, curls = record(Path(work))
    for case, (_pid, rc, _body) in curls.items():
        print(f"{case}: client exit status {rc}", file=sys.stderr)
    for path in write(args.out, events, curls):
        print(path)
    return 0


if __name__ == "__main__":
    sys.exit(main())
