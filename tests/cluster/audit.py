"""Reading the API server's audit log (every write request, see e2e/cluster/components.py)."""

from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

from e2e.install import OPERATOR_NAMESPACE, SERVICE_ACCOUNT

OPERATOR_USER = f"system:serviceaccount:{OPERATOR_NAMESPACE}:{SERVICE_ACCOUNT}"


@dataclass(frozen=True)
class Write:
    verb: str
    resource: str
    subresource: str
    name: str
    code: int
    received: datetime
    """When the API server received it (its own clock)."""

    def __str__(self) -> str:
        sub = f"/{self.subresource}" if self.subresource else ""
        return f"{self.verb} {self.resource}{sub}/{self.name} -> {self.code}"


def writes(audit_log: Path, *, user: str, namespace: str, offset: int = 0) -> list[Write]:
    """Completed write requests by `user` in `namespace`, from byte `offset` of the log."""
    out = []
    with audit_log.open("rb") as handle:
        handle.seek(offset)
        for line in handle:
            event = json.loads(line)
            ref = event.get("objectRef") or {}
            if (
                event.get("stage") != "ResponseComplete"
                or event.get("user", {}).get("username") != user
                or ref.get("namespace") != namespace
            ):
                continue
            out.append(
                Write(
                    verb=event["verb"],
                    resource=ref.get("resource", ""),
                    subresource=ref.get("subresource", ""),
                    name=ref.get("name", ""),
                    code=int(event.get("responseStatus", {}).get("code", 0)),
                    received=datetime.fromisoformat(event["requestReceivedTimestamp"]),
                )
            )
    return out


def log_size(audit_log: Path) -> int:
    return audit_log.stat().st_size if audit_log.exists() else 0


@dataclass(frozen=True)
class AttributedWrite:
    """A completed write with who made it: the token's credential id and the User-Agent."""

    credential: str  # "JTI=<uuid>" of a ServiceAccount token (user.extra)
    user_agent: str
    received: datetime
    verb: str
    namespace: str
    resource: str
    subresource: str
    name: str
    code: int

    def __str__(self) -> str:
        sub = f"/{self.subresource}" if self.subresource else ""
        when = self.received.strftime("%H:%M:%S.%f")[:-3]
        return (
            f"{when} {self.verb} {self.namespace}/{self.resource}{sub}/{self.name} -> {self.code}"
        )


def attributed_writes(audit_log: Path, *, user: str, offset: int = 0) -> list[AttributedWrite]:
    """Completed write requests by `user` in any namespace, with the credential that made each.

    Two processes under one ServiceAccount share the username; each token's JTI (recorded by
    the API server as `authentication.kubernetes.io/credential-id`) tells them apart, for
    kopf's own requests as well as the operator's.
    """
    out = []
    with audit_log.open("rb") as handle:
        handle.seek(offset)
        for line in handle:
            event = json.loads(line)
            who = event.get("user", {})
            if event.get("stage") != "ResponseComplete" or who.get("username") != user:
                continue
            ref = event.get("objectRef") or {}
            credential = (who.get("extra") or {}).get("authentication.kubernetes.io/credential-id")
            out.append(
                AttributedWrite(
                    credential=(credential or [""])[0],
                    user_agent=event.get("userAgent", ""),
                    received=datetime.fromisoformat(event["requestReceivedTimestamp"]),
                    verb=event["verb"],
                    namespace=ref.get("namespace", ""),
                    resource=ref.get("resource", ""),
                    subresource=ref.get("subresource", ""),
                    name=ref.get("name", ""),
                    code=int(event.get("responseStatus", {}).get("code", 0)),
                )
            )
    return out
