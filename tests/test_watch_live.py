"""`svctrace watch` on the real kernel (root): the network lab's requests come out live, as chains
and alerts, while the capture runs — the same operators as analyze, no broker."""
from __future__ import annotations

import json
import os
import queue
import signal
import subprocess
import sys
import threading
import time

import orjson
import pytest

from lab.net.services import NODE, cluster_list, running

pytestmark = pytest.mark.root


def lines_of(stream) -> queue.Queue:
    """A stream's lines as they come (None at its end), read by a thread."""
    q: queue.Queue = queue.Queue()

    def pump():
        for line in stream:
            q.put(line)
        q.put(None)

    threading.Thread(target=pump, daemon=True).start()
    return q


def next_line(q: queue.Queue, deadline: float, what: str) -> str:
    try:
        line = q.get(timeout=max(0.0, deadline - time.monotonic()))
    except queue.Empty:
        raise AssertionError(f"svctrace watch: no {what} in time") from None
    if line is None:
        raise AssertionError(f"svctrace watch ended before printing {what}")
    return line


def test_watch_prints_each_request_while_it_runs(tmp_path):
    if os.geteuid() != 0:
        pytest.fail("svctrace watch captures with eBPF: this test needs root (it is marked `root`)")
    state = tmp_path / "cluster.json"
    state.write_text(json.dumps(cluster_list()))
    with running(tmp_path) as lab:
        proc = subprocess.Popen([sys.executable, "-m", "svctrace", "watch", "--cluster", str(state), "--json",
                                 "--node", NODE], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        try:
            err = lines_of(proc.stderr)
            assert "watching" in next_line(err, time.monotonic() + 60, "readiness line")
            curls = lab.ask(["my-nginx", "my-nginx-wrong-port"])
            out = lines_of(proc.stdout)
            records: list[dict] = []
            deadline = time.monotonic() + 30
            # live: both chains and the refusal's alert come out while the capture still runs
            while {"my-nginx", "my-nginx-wrong-port", "svc.target_port_refused"} - {
                    (r["service"] or {}).get("name") if r["schema"] == "svctrace.chain" else r["rule"] for r in records}:
                records.append(orjson.loads(next_line(out, deadline, "chain or alert of the lab's requests")))
            proc.send_signal(signal.SIGINT)
            rc = proc.wait(timeout=60)
            while (line := out.get(timeout=10)) is not None:  # what it printed on its way out
                records.append(orjson.loads(line))
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
    assert rc == 1  # alerts fired
    chains = {c["service"]["name"]: c for c in records if c["schema"] == "svctrace.chain" and c["service"]}
    ok, refused = chains["my-nginx"], chains["my-nginx-wrong-port"]
    assert (ok["status"], ok["translation"]["mode"], ok["backend"]["pod"], ok["response"]["status"]) == \
        ("ok", "dnat", "my-nginx-1", 200)
    assert ok["client"]["pid"] == curls["my-nginx"][0]
    assert refused["status"] == "broken" and refused["response"]["error"] == "connection refused"
    rules = {a["rule"] for a in records if a["schema"] == "svctrace.alert"}
    assert "svc.target_port_refused" in rules


def put_lab_in(api) -> list:
    """The lab's cluster (lab.net.services.cluster_list) created in a real API server, statuses
    included, as kubelet and the EndpointSlice controller would have left them. Returns what to
    delete afterwards."""
    import kubernetes.client as k8s

    core, disc, net = k8s.CoreV1Api(api), k8s.DiscoveryV1Api(api), k8s.NetworkingV1Api(api)
    made = []
    for obj in cluster_list()["items"]:
        if "IPv6" in obj.get("spec", {}).get("ipFamilies", ()) or obj.get("addressType") == "IPv6":
            continue  # the test API server is single-stack (its Service range is IPv4)
        kind, meta = obj["kind"], obj["metadata"]
        ns, name = meta.get("namespace"), meta["name"]
        body = {k: v for k, v in obj.items() if k != "status"}
        body["metadata"] = {k: v for k, v in meta.items() if k != "uid"}
        if kind == "Node":
            core.create_node(body)
            core.patch_node_status(name, {"status": obj["status"]})
            made.append(lambda n=name: core.delete_node(n))
        elif kind == "Pod":
            for c in body["spec"]["containers"]:
                c["image"] = "lab"
            core.create_namespaced_pod(ns, body)
            core.patch_namespaced_pod_status(name, ns, {"status": obj["status"]})
            made.append(lambda n=name, s=ns: core.delete_namespaced_pod(n, s, grace_period_seconds=0))
        elif kind == "Service":
            core.create_namespaced_service(ns, body)
            made.append(lambda n=name, s=ns: core.delete_namespaced_service(n, s))
        elif kind == "EndpointSlice":
            disc.create_namespaced_endpoint_slice(ns, body)
            made.append(lambda n=name, s=ns: disc.delete_namespaced_endpoint_slice(n, s))
        elif kind == "NetworkPolicy":
            net.create_namespaced_network_policy(ns, body)
            made.append(lambda n=name, s=ns: net.delete_namespaced_network_policy(n, s))
        else:
            raise AssertionError(f"the lab's state has a {kind}: put_lab_in does not create it")
    return made


@pytest.mark.apiserver
def test_watch_takes_the_cluster_from_the_api_server(tmp_path, apiserver):
    """`--kube`: the metadata watcher's list+watch in-process. Stale rules send my-nginx-stale to a
    pod its EndpointSlice (read from the API server) does not list: svc.misrouted."""
    if os.geteuid() != 0:
        pytest.fail("svctrace watch captures with eBPF: this test needs root (it is marked `root`)")
    api = apiserver.api_client()
    made = put_lab_in(api)
    try:
        with running(tmp_path) as lab:
            proc = subprocess.Popen([sys.executable, "-m", "svctrace", "watch", "--kube", "--kubeconfig",
                                     apiserver.kubeconfig, "--json", "--node", NODE],
                                    stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
            try:
                err = lines_of(proc.stderr)
                assert "watching" in next_line(err, time.monotonic() + 90, "readiness line")
                curls = lab.ask(["my-nginx-stale"])
                out = lines_of(proc.stdout)
                records: list[dict] = []
                deadline = time.monotonic() + 30
                while {"my-nginx-stale", "svc.misrouted"} - {
                        (r["service"] or {}).get("name") if r["schema"] == "svctrace.chain" else r["rule"]
                        for r in records}:
                    records.append(orjson.loads(next_line(out, deadline, "the stale Service's chain and alert")))
            finally:
                proc.send_signal(signal.SIGINT)
                proc.wait(timeout=60)
    finally:
        for delete in reversed(made):
            delete()
        api.close()
    [chain] = [r for r in records if r["schema"] == "svctrace.chain" and (r["service"] or {}).get("name")]
    assert chain["client"]["pid"] == curls["my-nginx-stale"][0]
    assert (chain["client"]["pod"], chain["backend"]["pod"], chain["status"]) == ("client", "my-nginx-1", "broken")


@pytest.mark.parametrize("argv, message", [
    (["--cluster", "/nonexistent/state.json"], "--cluster /nonexistent/state.json: no such file"),
    (["--kube", "--kubeconfig", "/nonexistent/kubeconfig"], "cluster state:"),
])
def test_watch_says_in_one_line_why_it_cannot_start(argv, message):
    out = subprocess.run([sys.executable, "-m", "svctrace", "watch", *argv, "--duration", "1"],
                         capture_output=True, text=True, timeout=120)
    assert out.returncode == 2 and out.stdout == ""
    [line] = out.stderr.splitlines()
    assert line.startswith("svctrace watch: error: ") and message in line
