"""A minimal Kubernetes REST client (stdlib only) for the harness itself.

The harness needs a handful of calls (create nodes, RBAC, TokenRequest, readiness probes);
a tiny client over ``urllib`` keeps it independent of any Kubernetes client library.
Tests and the operator use their own clients with the kubeconfig the harness writes.
"""

from __future__ import annotations

import json
import ssl
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path
from typing import Any

JSON = dict[str, Any]


class ApiError(RuntimeError):
    """The API server answered with an error status."""

    def __init__(self, method: str, path: str, status: int, body: str) -> None:
        self.status = status
        self.body = body
        try:
            message = json.loads(body).get("message", body)
        except ValueError:
            message = body
        super().__init__(f"{method} {path}: HTTP {status}: {message}")


class KubeApi:
    """Talks to one API server over TLS with a client certificate or a bearer token."""

    def __init__(
        self,
        server: str,
        *,
        ca_file: Path,
        cert_file: Path | None = None,
        key_file: Path | None = None,
        token: str | None = None,
        timeout: float = 30.0,
    ) -> None:
        self.server = server.rstrip("/")
        self.timeout = timeout
        self._token = token
        self._context = ssl.create_default_context(cafile=str(ca_file))
        if cert_file is not None and key_file is not None:
            self._context.load_cert_chain(str(cert_file), str(key_file))

    def request(
        self,
        method: str,
        path: str,
        body: JSON | None = None,
        *,
        query: dict[str, str] | None = None,
        content_type: str = "application/json",
        timeout: float | None = None,
    ) -> JSON:
        url = self.server + path + (f"?{urllib.parse.urlencode(query)}" if query else "")
        data = json.dumps(body).encode() if body is not None else None
        req = urllib.request.Request(url, data=data, method=method)
        req.add_header("Accept", "application/json")
        if data is not None:
            req.add_header("Content-Type", content_type)
        if self._token:
            req.add_header("Authorization", f"Bearer {self._token}")
        try:
            with urllib.request.urlopen(
                req, context=self._context, timeout=timeout or self.timeout
            ) as resp:
                raw = resp.read().decode()
        except urllib.error.HTTPError as err:
            raise ApiError(method, path, err.code, err.read().decode(errors="replace")) from err
        if not raw:
            return {}
        try:
            parsed: JSON = json.loads(raw)
        except ValueError:
            return {"text": raw}
        return parsed

    def get_text(self, path: str, *, timeout: float = 5.0) -> str:
        """GET a plain-text endpoint such as ``/readyz``."""
        req = urllib.request.Request(self.server + path, method="GET")
        if self._token:
            req.add_header("Authorization", f"Bearer {self._token}")
        try:
            with urllib.request.urlopen(req, context=self._context, timeout=timeout) as resp:
                text: str = resp.read().decode()
                return text
        except urllib.error.HTTPError as err:
            raise ApiError("GET", path, err.code, err.read().decode(errors="replace")) from err

    def get(self, path: str, **query: str) -> JSON:
        return self.request("GET", path, query=query or None)

    def create(self, path: str, obj: JSON) -> JSON:
        return self.request("POST", path, obj)

    def ensure(self, path: str, obj: JSON) -> JSON:
        """Create ``obj`` under collection ``path``; an existing object is left as it is."""
        try:
            return self.create(path, obj)
        except ApiError as err:
            if err.status == 409:
                return self.get(f"{path}/{obj['metadata']['name']}")
            raise

    def patch(self, path: str, patch: JSON, *, kind: str = "merge") -> JSON:
        types = {
            "merge": "application/merge-patch+json",
            "strategic": "application/strategic-merge-patch+json",
            "json": "application/json-patch+json",
        }
        return self.request("PATCH", path, patch, content_type=types[kind])

    def delete(self, path: str, *, missing_ok: bool = True, body: JSON | None = None) -> JSON:
        try:
            return self.request("DELETE", path, body)
        except ApiError as err:
            if missing_ok and err.status == 404:
                return {}
            raise
