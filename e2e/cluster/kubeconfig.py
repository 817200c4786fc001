"""Write self-contained kubeconfig files (JSON is valid YAML; every client reads it)."""

from __future__ import annotations

import base64
import json
from pathlib import Path


def _b64(path: Path) -> str:
    return base64.b64encode(path.read_bytes()).decode()


def write_kubeconfig(
    path: Path,
    *,
    server: str,
    ca_file: Path,
    user: str,
    cluster: str = "magistral-e2e",
    cert_file: Path | None = None,
    key_file: Path | None = None,
    token: str | None = None,
    namespace: str | None = None,
) -> Path:
    """Write a kubeconfig with one cluster, one user and one current context."""
    if token is None and (cert_file is None or key_file is None):
        raise ValueError("a kubeconfig needs a client certificate and key, or a token")
    credentials: dict[str, str] = {}
    if cert_file is not None and key_file is not None:
        credentials["client-certificate-data"] = _b64(cert_file)
        credentials["client-key-data"] = _b64(key_file)
    if token is not None:
        credentials["token"] = token
    context: dict[str, str] = {"cluster": cluster, "user": user}
    if namespace:
        context["namespace"] = namespace
    config = {
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [
            {
                "name": cluster,
                "cluster": {"server": server, "certificate-authority-data": _b64(ca_file)},
            }
        ],
        "users": [{"name": user, "user": credentials}],
        "contexts": [{"name": f"{user}@{cluster}", "context": context}],
        "current-context": f"{user}@{cluster}",
        "preferences": {},
    }
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(config, indent=2) + "\n")
    path.chmod(0o600)
    return path
