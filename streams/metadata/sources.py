"""Offline sources of k8s-object records.

* a file written by `kubectl get pods,services,endpointslices,nodes,namespaces,networkpolicies -A -o json`
  (a List), its YAML (`-o yaml`, also multi-document), a single object, a JSON
  array, JSON lines of watch events, or the JSON lines `svctrace metadata
  --output` writes (records as they are);
* the Kubernetes state embedded in .scap captures: K8S_E JSON state events of
  old sysdig captures (the raw watch event `{"type", "object"}`, or the
  normalized form sysdig's jq filters produced: `{"type", "kind", "items":
  [flattened objects]}`, with `nodes`/`pods`/... instead of `items` in the
  oldest writers), and container JSON events, from which pods are derived
  (kubelet names docker containers `k8s_<container>_<pod>_<ns>_<uid>_<n>`, and
  labels them io.kubernetes.pod.*).

Everything bad raises MetadataInputError naming the file and the object.
"""
from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Any, Iterable, Iterator

import orjson
import yaml

from svctrace.streams.metadata.project import PROJECTIONS, SCHEMA, MetadataInputError, project

# Kinds a snapshot or capture legitimately carries that enrichment does not need.
IGNORED_KINDS = frozenset({
    "ReplicationController", "ReplicaSet", "Deployment", "DaemonSet", "StatefulSet", "Job", "CronJob",
    "Event", "ConfigMap", "Secret", "ServiceAccount", "PersistentVolume", "PersistentVolumeClaim",
    "Ingress", "HorizontalPodAutoscaler", "ControllerRevision", "Lease", "ResourceQuota", "LimitRange",
})
# Oldest sysdig writers put the items under the plural of the kind.
_PLURAL_ITEMS = ("items", "pods", "services", "nodes", "namespaces", "endpoints")


def _read_documents(path: Path) -> list[Any]:
    data = path.read_bytes()
    if not data.strip():
        raise MetadataInputError("empty file", source=str(path))
    try:
        return [orjson.loads(data)]
    except orjson.JSONDecodeError:
        pass
    # JSON lines (watch streams, `svctrace metadata --output`)?
    lines = [ln for ln in data.splitlines() if ln.strip()]
    if lines and lines[0].lstrip().startswith(b"{"):
        docs = []
        for i, line in enumerate(lines):
            try:
                docs.append(orjson.loads(line))
            except orjson.JSONDecodeError as e:
                if i == 0:
                    break  # not JSON lines after all: try YAML
                raise MetadataInputError(f"line {i + 1}: invalid JSON ({e})", source=str(path)) from None
        else:
            return docs
    try:
        docs = [d for d in yaml.safe_load_all(data) if d is not None]
    except yaml.YAMLError as e:
        raise MetadataInputError(f"neither JSON nor YAML: {e}", source=str(path)) from None
    if not docs:
        raise MetadataInputError("no documents", source=str(path))
    return docs


def records_from_documents(docs: Iterable[Any], observed_ts: int, source: str = "<input>") -> list[dict]:
    """Records from parsed documents (API objects, Lists, watch events, records)."""
    out: list[dict] = []
    for d, doc in enumerate(docs):
        try:
            out.extend(_records_from_document(doc, observed_ts))
        except MetadataInputError as e:
            raise e.at(f"{source} (document {d + 1})" if d else source) from None
    return out


def _records_from_document(doc: Any, observed_ts: int) -> Iterator[dict]:
    if isinstance(doc, list):
        for i, item in enumerate(doc):
            yield from _wrap_item(lambda item=item: _records_from_document(item, observed_ts), i)
        return
    if not isinstance(doc, dict):
        raise MetadataInputError(f"expected a Kubernetes object or List, got {type(doc).__name__}")
    if doc.get("schema") == SCHEMA:  # already a record
        yield doc
        return
    if "object" in doc and "type" in doc:  # a watch event
        yield from _watch_event(doc, observed_ts)
        return
    kind = doc.get("kind")
    if isinstance(kind, str) and kind.endswith("List") and "items" in doc:
        item_kind = kind[: -len("List")] or None  # "PodList" -> "Pod"; plain "List" items name their kind
        items = doc["items"]
        if not isinstance(items, list):
            raise MetadataInputError("items is not a list", kind)
        for i, item in enumerate(items):
            yield from _wrap_item(lambda item=item: _object(item, observed_ts, item_kind), i)
        return
    yield from _object(doc, observed_ts, None)


def _wrap_item(gen, i: int) -> Iterator[dict]:
    try:
        yield from gen()
    except MetadataInputError as e:
        raise MetadataInputError(e.reason, f"items[{i}] {e.obj or ''}".strip(), e.source) from None


def _object(obj: Any, observed_ts: int, kind: str | None, deleted: bool = False) -> Iterator[dict]:
    k = obj.get("kind") or kind if isinstance(obj, dict) else None
    if k in IGNORED_KINDS:
        return
    yield project(obj, observed_ts, kind=kind, deleted=deleted)


def _watch_event(ev: dict, ts: int) -> Iterator[dict]:
    etype = ev.get("type")
    if etype in ("ERROR", "BOOKMARK"):
        return  # not object state (an ERROR is the server's Status, e.g. 410 Gone)
    if etype not in ("ADDED", "MODIFIED", "DELETED"):
        raise MetadataInputError(f"watch event of unknown type {etype!r}")
    yield from _object(ev.get("object"), ts, None, deleted=etype == "DELETED")


# -- files --------------------------------------------------------------------


def load_file(path: str | os.PathLike, observed_ts: int | None = None) -> list[dict]:
    """Records from a kubectl JSON/YAML snapshot (or record/watch JSON lines).

    observed_ts defaults to the file's modification time: the moment the state was true.
    """
    p = Path(path)
    try:
        ts = observed_ts if observed_ts is not None else p.stat().st_mtime_ns
        docs = _read_documents(p)
    except OSError as e:
        raise MetadataInputError(f"cannot read: {e.strerror or e}", source=str(p)) from None
    return records_from_documents(docs, ts, str(p))


def load_files(paths: Iterable[str | os.PathLike], observed_ts: int | None = None) -> list[dict]:
    out: list[dict] = []
    for p in paths:
        out.extend(load_file(p, observed_ts))
    return out


# -- .scap captures -----------------------------------------------------------


def _sysdig_item_to_object(kind: str, item: dict) -> dict:
    """Undo sysdig's jq flattening: back to the API shape project() reads."""
    md = {k: item.get(k) for k in ("namespace", "name", "uid", "labels") if item.get(k) is not None}
    if kind == "Pod":
        return {"kind": kind, "metadata": md,
                "spec": {"nodeName": item.get("nodeName"), "containers": item.get("containers")},
                "status": {"hostIP": item.get("hostIP"), "podIP": item.get("podIP"), "phase": item.get("phase"),
                           "containerStatuses": item.get("containerStatuses"),
                           "initContainerStatuses": item.get("initContainerStatuses"),
                           # sysdig kept only non-terminal pods and no conditions: running means ready.
                           "conditions": [{"type": "Ready",
                                           "status": "True" if item.get("phase") == "Running" else "False"}]}}
    if kind == "Service":
        return {"kind": kind, "metadata": md,
                "spec": {"clusterIP": item.get("clusterIP"), "ports": item.get("ports"),
                         "selector": item.get("selector"), "type": item.get("type")}}
    if kind == "Node":
        return {"kind": kind, "metadata": md, "status": {"addresses": item.get("addresses")}}
    return {"kind": kind, "metadata": md, **{k: v for k, v in item.items() if k not in md}}


def records_from_k8s_state(ts: int, doc: Any) -> list[dict]:
    """Records from one K8S_E state event's JSON (any of the sysdig-era forms)."""
    if isinstance(doc, (bytes, str)):
        try:
            doc = orjson.loads(doc)
        except orjson.JSONDecodeError as e:
            raise MetadataInputError(f"K8S event is not JSON: {e}") from None
    if not isinstance(doc, dict):
        raise MetadataInputError(f"K8S event is a {type(doc).__name__}, expected an object")
    if "object" in doc or doc.get("schema") == SCHEMA or str(doc.get("kind", "")).endswith("List"):
        return list(_records_from_document(doc, ts))
    kind = doc.get("kind")
    items_key = next((k for k in _PLURAL_ITEMS if isinstance(doc.get(k), list)), None)
    if items_key is None:
        if isinstance(doc.get("metadata"), dict):  # a bare API object
            return list(_object(doc, ts, None))
        raise MetadataInputError("K8S event without object or items", str(kind or "?"))
    if kind in IGNORED_KINDS:
        return []
    if kind not in PROJECTIONS:
        raise MetadataInputError(f"K8S event of unsupported kind {kind!r}")
    etype = doc.get("type") or "ADDED"
    if etype in ("ERROR", "NONEXISTENT"):
        return []
    out = []
    for i, item in enumerate(doc[items_key]):
        if item is None:
            continue  # sysdig's NULL_FILTER placeholder
        if not isinstance(item, dict):
            raise MetadataInputError(f"item is a {type(item).__name__}", f"{kind} {items_key}[{i}]")
        obj = _sysdig_item_to_object(kind, item)
        out.extend(_wrap_item(lambda obj=obj: _object(obj, ts, kind, deleted=etype == "DELETED"), i))
    return out


_DOCKERSHIM_NAME = re.compile(
    r"^/?k8s_(?P<container>[^_.]+)(?:\.[0-9a-f]+)?_(?P<pod>[^_]+)_(?P<ns>[^_]+)_(?P<uid>[^_]+)_[0-9a-f]+$"
)


def pod_identity_of_container(container: dict) -> tuple[str, str, str | None] | None:
    """(namespace, pod, uid) of a container JSON, from kubelet's labels or docker name."""
    labels = container.get("labels") or {}
    if labels.get("io.kubernetes.pod.name") and labels.get("io.kubernetes.pod.namespace"):
        return labels["io.kubernetes.pod.namespace"], labels["io.kubernetes.pod.name"], labels.get("io.kubernetes.pod.uid")
    m = _DOCKERSHIM_NAME.match(container.get("name") or "")
    if m:
        return m["ns"], m["pod"], m["uid"]
    return None


def records_from_containers(containers: Iterable[Any], observed_ts: int, node: str | None = None) -> list[dict]:
    """Pod records derived from capture container JSON (dicts, or (ts, dict) pairs).

    A pod's IP is the one of any of its containers that has one (the sandbox
    usually); its container ids are all of them, so pod_by_container works.
    """
    pods: dict[tuple[str, str], dict] = {}
    for entry in containers:
        ts = observed_ts
        if isinstance(entry, tuple) and len(entry) == 2:
            ts, entry = entry
        if isinstance(entry, (bytes, str)):
            try:
                entry = orjson.loads(entry)
            except orjson.JSONDecodeError as e:
                raise MetadataInputError(f"container event is not JSON: {e}") from None
        if not isinstance(entry, dict):
            raise MetadataInputError(f"container event is a {type(entry).__name__}, expected an object")
        c = entry.get("container", entry)
        if not isinstance(c, dict) or not c.get("id"):
            raise MetadataInputError("container JSON without id", str(c.get("name") if isinstance(c, dict) else c))
        ident = pod_identity_of_container(c)
        if ident is None:
            continue  # a plain docker container, no pod
        ns, name, uid = ident
        p = pods.setdefault((ns, name), {"ts": ts, "uid": uid, "ips": [], "cids": [], "labels": {}})
        p["ts"] = min(p["ts"], ts)
        if c["id"] not in p["cids"]:
            p["cids"].append(c["id"])
        if c.get("ip") and c["ip"] not in p["ips"]:
            p["ips"].append(c["ip"])
    out = []
    for (ns, name), p in sorted(pods.items()):
        obj = {
            "kind": "Pod",
            "metadata": {"namespace": ns, "name": name, "uid": p["uid"]},
            "spec": {"nodeName": node},
            "status": {"podIPs": [{"ip": ip} for ip in p["ips"]], "phase": "Running",
                       "containerStatuses": [{"containerID": cid} for cid in p["cids"]]},
        }
        out.append(project(obj, p["ts"]))
    return out


def records_from_capture(reader: Any, node: str | None = None, source: str | None = None,
                         observed_ts: int | None = None) -> list[dict]:
    """All Kubernetes records a capture carries: K8S_E states, then pods derived from
    container JSON for pods the states do not describe.

    `reader` exposes `.k8s_states` (list of (ts, dict)) and `.containers`.
    """
    source = source or str(getattr(reader, "path", "") or "<capture>")
    out: list[dict] = []
    try:
        states = list(getattr(reader, "k8s_states", None) or ())
        for i, (ts, doc) in enumerate(states):
            try:
                out.extend(records_from_k8s_state(ts, doc))
            except MetadataInputError as e:
                raise MetadataInputError(e.reason, f"K8S event {i} {e.obj or ''}".strip()) from None
        containers = getattr(reader, "containers", None) or ()
        if isinstance(containers, dict):
            containers = list(containers.values())
        first_ts = min((ts for ts, _ in states), default=observed_ts or 0)
        known = {(r["namespace"], r["name"]) for r in out if r["kind"] == "Pod"}
        out.extend(r for r in records_from_containers(containers, first_ts, node)
                   if (r["namespace"], r["name"]) not in known)
    except MetadataInputError as e:
        raise e.at(source) from None
    return out


def load_capture(path: str | os.PathLike, node: str | None = None) -> list[dict]:
    """Records from a .scap capture: read it through the scap reader, then
    records_from_capture(). Container-derived pods are observed at the first event."""
    from svctrace.agents.scap.reader import open_capture

    first_ts = None
    try:
        reader = open_capture(path)
        for ev in reader:
            if first_ts is None:
                first_ts = ev.ts
    except Exception as e:  # noqa: BLE001 - the reader's own errors name file and offset
        raise MetadataInputError(f"cannot read capture: {e}", source=str(path)) from None
    return records_from_capture(reader, node=node or reader.node or None, source=str(path),
                                observed_ts=first_ts)
