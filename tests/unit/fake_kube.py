"""An in-memory stand-in for `magistral_operator.kube.client.Kube`, for reconcile passes.

It stores objects by (kind, namespace, name), answers get/list (with equality label
selectors), applies by replacing (server-side apply without field ownership), merges status
patches, records every write, and can be told to refuse objects the way the API server does.
"""

from __future__ import annotations

import copy
import json
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from magistral_operator.autoscale.demand import DemandSample
from magistral_operator.kube.client import Kube, KubeError
from magistral_operator.rollout_analysis import WindowReading

Key = tuple[str, str, str]
Refuser = Callable[[dict[str, Any]], tuple[int, str] | None]


def _matches(obj: dict[str, Any], selector: str) -> bool:
    labels = obj.get("metadata", {}).get("labels") or {}
    for term in filter(None, selector.split(",")):
        key, _, value = term.partition("=")
        if labels.get(key) != value:
            return False
    return True


@dataclass
class FakeKube(Kube):
    """Objects in memory; `writes` lists (verb, Kind/name) in order; `refuse` can say no.

    An Event whose name is taken answers 409 AlreadyExists, as the API server does; a status
    patch moves the object's resourceVersion."""

    objects: dict[Key, dict[str, Any]] = field(default_factory=dict)
    writes: list[tuple[str, str]] = field(default_factory=list)
    events: list[dict[str, Any]] = field(default_factory=list)
    refuse: Refuser | None = None

    def __post_init__(self) -> None:  # no API client behind it
        pass

    def add(self, obj: dict[str, Any]) -> None:
        meta = obj["metadata"]
        self.objects[(obj["kind"], meta.get("namespace", ""), meta["name"])] = copy.deepcopy(obj)

    def request(
        self,
        method: str,
        path: str,
        *,
        query: list[tuple[str, str]] | None = None,
        body: Any = None,
        content_type: str = "application/json",
    ) -> dict[str, Any]:
        if method == "POST" and path.endswith("/events"):
            name = body["metadata"]["name"]
            if any(e["metadata"]["name"] == name for e in self.events):
                raise KubeError(
                    status=409,
                    method=method,
                    path=path,
                    body=json.dumps({"kind": "Status", "reason": "AlreadyExists"}),
                )
            self.events.append(body)
            self.writes.append(("create", f"Event/{body.get('reason')}"))
            return dict(body)
        raise NotImplementedError(f"{method} {path}")

    def get(self, kind: str, *, namespace: str, name: str) -> dict[str, Any] | None:
        obj = self.objects.get((kind, namespace, name))
        return copy.deepcopy(obj) if obj is not None else None

    def list(self, kind: str, *, namespace: str | None, selector: str = "") -> list[dict[str, Any]]:
        return [
            copy.deepcopy(o)
            for (k, ns, _), o in sorted(self.objects.items())
            if k == kind and (namespace is None or ns == namespace) and _matches(o, selector)
        ]

    def apply(self, obj: dict[str, Any], *, field_manager: str) -> dict[str, Any]:
        label = f"{obj['kind']}/{obj['metadata']['name']}"
        if self.refuse is not None:
            answer = self.refuse(obj)
            if answer is not None:
                status, message = answer
                self.writes.append(("refused", label))
                raise KubeError(
                    status=status,
                    method="PATCH",
                    path=label,
                    body=json.dumps({"kind": "Status", "message": message}),
                )
        self.writes.append(("apply", label))
        stored = copy.deepcopy(obj)
        key = (obj["kind"], obj["metadata"]["namespace"], obj["metadata"]["name"])
        old = self.objects.get(key)
        if old is not None and "status" in old:
            stored["status"] = old["status"]
        self.objects[key] = stored
        return copy.deepcopy(stored)

    def delete(self, kind: str, *, namespace: str, name: str) -> None:
        if self.objects.pop((kind, namespace, name), None) is not None:
            self.writes.append(("delete", f"{kind}/{name}"))

    def patch_status(
        self, kind: str, *, namespace: str, name: str, status: dict[str, Any]
    ) -> dict[str, Any]:
        obj = self.objects[(kind, namespace, name)]
        obj["status"] = _merge(obj.get("status") or {}, status)
        meta = obj["metadata"]
        meta["resourceVersion"] = str(int(meta.get("resourceVersion") or 0) + 1)
        self.writes.append(("status", f"{kind}/{name}"))
        return copy.deepcopy(obj)


def _merge(base: dict[str, Any], patch: dict[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for key, value in patch.items():
        if value is None:
            out.pop(key, None)
        elif isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = _merge(out[key], value)
        else:
            out[key] = copy.deepcopy(value)
    return out


@dataclass
class ScriptedDemand:
    """A demand reader (kube/demand.DemandReader) that answers what a test sets, no HTTP.

    `sample` is returned for every read; `reads` records (key, routers, engines) per call, so a
    test can see that the reconcile gave the reader the endpoint's pods, split by component.
    """

    sample: DemandSample = field(default_factory=lambda: DemandSample(router_ok=True))
    reads: list[tuple[tuple[str, str], list[str], list[str]]] = field(default_factory=list)
    window: WindowReading | str = "no canary reading scripted"
    """What read_window answers; `windows` records (window, canary pods, baseline pods)."""
    windows: list[tuple[str, list[str], list[str]]] = field(default_factory=list)

    def read(
        self,
        key: tuple[str, str],
        *,
        routers: Sequence[dict[str, Any]],
        engines: Sequence[dict[str, Any]],
        now: float,
    ) -> DemandSample:
        self.reads.append(
            (
                key,
                [r["metadata"]["name"] for r in routers],
                [e["metadata"]["name"] for e in engines],
            )
        )
        return self.sample

    def read_window(
        self,
        key: tuple[str, str],
        *,
        window: str,
        canary: Sequence[dict[str, Any]],
        baseline: Sequence[dict[str, Any]],
        routers: Sequence[dict[str, Any]],
        now: float,
    ) -> WindowReading | str:
        self.windows.append(
            (
                window,
                [p["metadata"]["name"] for p in canary],
                [p["metadata"]["name"] for p in baseline],
            )
        )
        return self.window

    def forget(self, key: tuple[str, str]) -> None:
        pass
