"""A small JSON client over the kubernetes package's transport (auth, TLS, kubeconfig).

Objects travel as plain dicts, exactly as the API serves them, so the pure layers never see
client model classes.
"""

from __future__ import annotations

import builtins
import json
import re
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

from kubernetes import client, config


class KubeError(Exception):
    """A non-2xx answer from the API server."""

    def __init__(self, *, status: int, method: str, path: str, body: str) -> None:
        self.status = status
        self.body = body
        try:
            message = json.loads(body).get("message", body)
        except (ValueError, AttributeError):
            message = body
        self.message = str(message)
        super().__init__(f"{method} {path}: {status}: {message}")


@dataclass(frozen=True)
class Resource:
    """Where a kind lives in the API."""

    api_version: str
    plural: str

    def path(self, *, namespace: str, name: str | None = None) -> str:
        """Collection or object path in `namespace`."""
        prefix = "/api/v1" if self.api_version == "v1" else f"/apis/{self.api_version}"
        base = f"{prefix}/namespaces/{namespace}/{self.plural}"
        return f"{base}/{name}" if name else base


RESOURCES: dict[str, Resource] = {
    "ConfigMap": Resource("v1", "configmaps"),
    "Service": Resource("v1", "services"),
    "Pod": Resource("v1", "pods"),
    "PersistentVolumeClaim": Resource("v1", "persistentvolumeclaims"),
    "Event": Resource("v1", "events"),
    "Deployment": Resource("apps/v1", "deployments"),
    "ReplicaSet": Resource("apps/v1", "replicasets"),
    "PodDisruptionBudget": Resource("policy/v1", "poddisruptionbudgets"),
    "NetworkPolicy": Resource("networking.k8s.io/v1", "networkpolicies"),
    "ServiceAccount": Resource("v1", "serviceaccounts"),
    "Role": Resource("rbac.authorization.k8s.io/v1", "roles"),
    "RoleBinding": Resource("rbac.authorization.k8s.io/v1", "rolebindings"),
    "MagistralEndpoint": Resource("magistral.dev/v1alpha1", "magistralendpoints"),
}


def _collection_path(kind: str, namespace: str | None) -> str:
    resource = RESOURCES[kind]
    if namespace is not None:
        return resource.path(namespace=namespace)
    prefix = "/api/v1" if resource.api_version == "v1" else f"/apis/{resource.api_version}"
    return f"{prefix}/{resource.plural}"


CONNECTION_POOL_SIZE = 64
"""Idle connections kept open to the API server (the client's default is 5 per core): the
passes run on kopf's workers and the queue's, each applying up to 4 children at once
(kube/children.py), besides one watch per cached kind; with fewer, a burst's connections
would be closed after it and opened again (a TLS handshake each) by the next."""


def load_api_client() -> client.ApiClient:
    """In-cluster credentials when running in a pod, else the current kubeconfig."""
    try:
        config.load_incluster_config()  # type: ignore[no-untyped-call]
    except config.ConfigException:
        config.load_kube_config()  # type: ignore[no-untyped-call]
    configuration = client.Configuration.get_default_copy()
    configuration.connection_pool_maxsize = CONNECTION_POOL_SIZE
    return client.ApiClient(configuration)


# Characters JSON leaves raw but YAML must not see raw: outside YAML's printable set, or line
# breaks in YAML 1.1 (NEL, LS, PS), or a byte-order mark. Escaped as \\uXXXX (all in the BMP).
_YAML_UNSAFE = re.compile("[\u007f-\u009f\u2028\u2029\ufeff\ufffe\uffff\ud800-\udfff]")


def apply_body(obj: Any) -> bytes:
    """An apply body: JSON (a subset of YAML) in UTF-8, without surrogate-pair escapes.

    ``json.dumps``' default ASCII escapes turn text outside the Basic Multilingual Plane (an
    emoji in a prompt) into a UTF-16 surrogate pair, ``"\\ud83d\\ude00"``, which the API
    server's YAML parser refuses for the ``apply-patch+yaml`` content type. Such characters go
    raw in UTF-8; the few that YAML does not allow raw are escaped in the BMP form YAML reads.
    """
    text = json.dumps(obj, ensure_ascii=False, separators=(",", ":"))
    text = _YAML_UNSAFE.sub(lambda m: f"\\u{ord(m.group()):04x}", text)
    return text.encode("utf-8", errors="surrogatepass")


class NotLeaderError(Exception):
    """A write refused because this process does not hold the leader Lease (fencing)."""


WATCH_SECONDS = 290
"""How long the server keeps one watch open (kopf's default is similar); it is then resumed."""

REQUEST_TIMEOUT_SECONDS = 30.0
"""The bound on any request (a hung connection must not hold an endpoint's lock forever)."""


class Kube:
    """JSON requests to the API server.

    Every request has a timeout (`timeout`, 30 s by default): a hung connection fails the
    pass (reported as `Degraded=ReconcileError`, retried with back-off) instead of holding the
    endpoint's lock.

    `may_write`, when given, is asked before every request that is not a GET: a process that
    is not (or no longer) the leader raises `NotLeaderError` instead of sending the write, and
    `write_timeout` bounds a write already sent (leader election sets it to the fencing
    margin, so a write sent just before the renew deadline ends before a standby may act).
    """

    def __init__(
        self,
        api_client: client.ApiClient,
        *,
        may_write: Callable[[], bool] | None = None,
        write_timeout: float | None = None,
        timeout: float = REQUEST_TIMEOUT_SECONDS,
    ) -> None:
        self.api = api_client
        self.may_write = may_write
        self.write_timeout = write_timeout
        self.timeout = timeout

    def request(
        self,
        method: str,
        path: str,
        *,
        query: list[tuple[str, str]] | None = None,
        body: Any = None,
        content_type: str = "application/json",
    ) -> dict[str, Any]:
        """Send one request; raise KubeError unless it succeeds."""
        write = method != "GET"
        if write and self.may_write is not None and not self.may_write():
            raise NotLeaderError(f"{method} {path}: not the leader")
        headers = {"Accept": "application/json", "Content-Type": content_type}
        params = self.api.param_serialize(
            method=method,
            resource_path=path,
            query_params=query or [],
            header_params=headers,
            # JSON content types are encoded by the transport; others (apply YAML) go as text.
            body=body if body is None or "json" in content_type else apply_body(body),
            auth_settings=["BearerToken"],
        )
        timeout = self.write_timeout if write and self.write_timeout else self.timeout
        response = self.api.call_api(*params, _request_timeout=timeout)
        data = response.read()  # type: ignore[no-untyped-call]
        text = data.decode() if isinstance(data, bytes) else str(data or "")
        if not 200 <= response.status < 300:
            raise KubeError(status=response.status, method=method, path=path, body=text)
        parsed: dict[str, Any] = json.loads(text) if text else {}
        return parsed

    def get(self, kind: str, *, namespace: str, name: str) -> dict[str, Any] | None:
        """The object, or None when it does not exist."""
        try:
            return self.request("GET", RESOURCES[kind].path(namespace=namespace, name=name))
        except KubeError as exc:
            if exc.status == 404:
                return None
            raise

    def list(self, kind: str, *, namespace: str | None, selector: str = "") -> list[dict[str, Any]]:
        """Objects of `kind` in `namespace` (all namespaces when None) matching a selector."""
        return self.list_with_version(kind, namespace=namespace, selector=selector)[0]

    def list_with_version(
        self, kind: str, *, namespace: str | None, selector: str = ""
    ) -> tuple[builtins.list[dict[str, Any]], str]:
        """`list`, with the collection's resourceVersion (where a watch of it starts)."""
        path = _collection_path(kind, namespace)
        answer = self.request("GET", path, query=[("labelSelector", selector)] if selector else [])
        items: builtins.list[dict[str, Any]] = answer.get("items", [])
        version = str((answer.get("metadata") or {}).get("resourceVersion") or "")
        return items, version

    def watch(
        self,
        kind: str,
        *,
        namespace: str | None,
        selector: str = "",
        resource_version: str,
        timeout_seconds: int = WATCH_SECONDS,
    ) -> Iterator[dict[str, Any]]:
        """Watch events (``{"type", "object"}``) after `resource_version`, with bookmarks.

        The server ends the watch after `timeout_seconds`; the read timeout is a little longer,
        so a connection that hangs without a word ends too (a bookmark comes about every
        minute). A 410 from the server comes as an ``ERROR`` event, as the API sends it.
        """
        query = [
            ("watch", "true"),
            ("allowWatchBookmarks", "true"),
            ("resourceVersion", resource_version),
            ("timeoutSeconds", str(timeout_seconds)),
        ]
        if selector:
            query.append(("labelSelector", selector))
        path = _collection_path(kind, namespace)
        params = self.api.param_serialize(
            method="GET",
            resource_path=path,
            query_params=query,
            header_params={"Accept": "application/json"},
            auth_settings=["BearerToken"],
        )
        response = self.api.call_api(*params, _request_timeout=(10, timeout_seconds + 30))
        raw = response.response
        try:
            if not 200 <= response.status < 300:
                body = raw.read().decode(errors="replace")
                raise KubeError(status=response.status, method="WATCH", path=path, body=body)
            pending = b""
            for chunk in raw.stream(64 * 1024, decode_content=True):
                pending += chunk
                *lines, pending = pending.split(b"\n")
                for line in lines:
                    if line.strip():
                        yield json.loads(line)
            if pending.strip():
                yield json.loads(pending)
        finally:
            raw.release_conn()

    def get_fresh(
        self, kind: str, *, namespace: str, name: str, at_least: str = "", live: bool = False
    ) -> dict[str, Any] | None:
        """The object as the API serves it now (a cache answers only if as new as `at_least`,
        and never when `live`)."""
        return self.get(kind, namespace=namespace, name=name)

    def apply(self, obj: dict[str, Any], *, field_manager: str) -> dict[str, Any]:
        """Server-side apply `obj` as `field_manager`, taking over conflicting fields."""
        meta = obj["metadata"]
        path = RESOURCES[obj["kind"]].path(namespace=meta["namespace"], name=meta["name"])
        return self.request(
            "PATCH",
            path,
            query=[("fieldManager", field_manager), ("force", "true")],
            body=obj,
            content_type="application/apply-patch+yaml",
        )

    def delete(self, kind: str, *, namespace: str, name: str) -> None:
        """Delete an object (background propagation); a missing one is fine."""
        try:
            self.request(
                "DELETE",
                RESOURCES[kind].path(namespace=namespace, name=name),
                body={"propagationPolicy": "Background"},
            )
        except KubeError as exc:
            if exc.status != 404:
                raise

    def patch_status(
        self, kind: str, *, namespace: str, name: str, status: dict[str, Any]
    ) -> dict[str, Any]:
        """Merge-patch the status subresource."""
        path = RESOURCES[kind].path(namespace=namespace, name=name) + "/status"
        return self.request(
            "PATCH", path, body={"status": status}, content_type="application/merge-patch+json"
        )
