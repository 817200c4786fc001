"""Every catalogue case through every reader: pydantic, render, the real API server, the operator.

Each case is sent twice, as `kubectl apply` sends it (strict field validation): once as a
server-side dry run and once for real. Cases the API server accepts are then left to the
operator, and the test waits until it has judged each of them (status written for the current
generation). Then, per case: rejected cases were refused by both requests with a message
naming the field; degraded cases carry Degraded=True with the expected reason and message and
have no pod; served cases have their Deployment and pods and are not Degraded. The offline
readers (pydantic, render) are held to the same catalogue in tests/unit/test_catalogue.py.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import pytest
from kubernetes import client
from kubernetes.client.rest import ApiException

from e2e.operator_process import DEFAULT_CONFIG, OperatorProcess
from magistral_operator.api.config import load_operator_config
from magistral_operator.api.endpoint import parse_endpoint
from magistral_operator.api.errors import ConfigError
from magistral_operator.render import render_endpoint
from tests.catalogue.loader import Case, catalogue

from .conftest import GROUP, PLURAL, VERSION, condition, get_endpoint, wait_for

CASES = catalogue()
CONFIG = load_operator_config(DEFAULT_CONFIG)  # the operator under test runs with this file


@dataclass
class Seen:
    """What the API server and the operator did with one case."""

    namespace: str
    name: str
    dry_run: str | None = None  # the refusal message, None when accepted
    create: str | None = None
    endpoint: dict[str, Any] = field(default_factory=dict)
    pods: int = 0
    deployments: int = 0


def _send(api: client.ApiClient, namespace: str, body: dict[str, Any], *, dry: bool) -> str | None:
    try:
        client.CustomObjectsApi(api).create_namespaced_custom_object(
            GROUP,
            VERSION,
            namespace,
            PLURAL,
            body,
            field_validation="Strict",
            dry_run="All" if dry else None,
        )
    except ApiException as exc:
        if exc.status not in (400, 422):
            raise
        return str(json.loads(exc.body)["message"])
    return None


def _judged(obj: dict[str, Any]) -> bool:
    status = obj.get("status") or {}
    return (
        status.get("observedGeneration") == obj["metadata"]["generation"]
        and condition(obj, "Degraded") is not None
    )


@pytest.fixture(scope="module")
def seen(api: client.ApiClient, operator: OperatorProcess) -> Iterator[dict[str, Seen]]:
    core = client.CoreV1Api(api)
    run = uuid.uuid4().hex[:4]
    shared = f"cat-{run}"
    namespaces = [shared]
    core.create_namespace({"metadata": {"name": shared}})
    out: dict[str, Seen] = {}
    for i, case in enumerate(CASES):
        namespace = shared
        if case.objects:  # objects with the same name differ between cases
            namespace = f"cat-{run}-{i}"
            namespaces.append(namespace)
            core.create_namespace({"metadata": {"name": namespace}})
            for obj in case.objects:
                core.create_namespaced_config_map(namespace, obj)
        body = case.manifest(name=f"c{i:02d}", namespace=namespace)
        record = Seen(namespace=namespace, name=body["metadata"]["name"])
        record.dry_run = _send(api, namespace, body, dry=True)
        record.create = _send(api, namespace, body, dry=False)
        out[case.case] = record

    accepted = [r for r in out.values() if r.create is None]

    def all_judged() -> bool:
        return all(_judged(get_endpoint(api, r.namespace, r.name)) for r in accepted)

    wait_for("the operator to judge every accepted case", all_judged, timeout=180, interval=2)
    # Served cases are judged once their pods exist; give the pods a moment to appear.
    apps = client.AppsV1Api(api)
    for r in accepted:
        r.endpoint = get_endpoint(api, r.namespace, r.name)
        # The engines' (GPU) Deployments and pods; a degraded endpoint may still have routers.
        selector = f"magistral.dev/endpoint={r.name},app.kubernetes.io/component=inference"
        r.deployments = len(
            apps.list_namespaced_deployment(r.namespace, label_selector=selector).items
        )
        r.pods = len(core.list_namespaced_pod(r.namespace, label_selector=selector).items)
    yield out
    for namespace in namespaces:
        core.delete_namespace(namespace)


def _offline(case: Case) -> str | None:
    """What pydantic and render say (the refusal, or None), as `magistral-operator render`."""
    try:
        endpoint = parse_endpoint(case.manifest(name="c", namespace="team"))
    except ConfigError as exc:
        return str(exc)
    rendered = render_endpoint(endpoint, CONFIG)
    return "; ".join(rendered.plan.problems) if not rendered.plan.ok else None


@pytest.mark.parametrize("case", CASES, ids=lambda c: c.case)
def test_every_reader_agrees_with_the_catalogue(
    case: Case, seen: dict[str, Seen], api: client.ApiClient
) -> None:
    """pydantic, render, the API server (dry run and create) and the operator, for one case."""
    record = seen[case.case]
    offline = _offline(case)
    if case.offline_rejects:
        assert offline is not None, f"pydantic and render accepted {case.case}"
        for fragment in case.expect:
            assert fragment in offline, f"{fragment!r} not in {offline!r}"
    else:
        assert offline is None, offline
    if case.outcome == "rejected":
        for message in (record.dry_run, record.create):
            assert message is not None, f"the API server accepted {case.case}"
            for fragment in case.expect:
                assert fragment in message, f"{fragment!r} not in {message!r}"
        return
    assert record.dry_run is None, record.dry_run
    assert record.create is None, record.create
    degraded = condition(record.endpoint, "Degraded")
    assert degraded is not None
    if case.outcome == "degraded":
        assert (degraded["status"], degraded["reason"]) == ("True", case.reason), degraded
        for fragment in case.expect:
            assert fragment in degraded["message"], f"{fragment!r} not in {degraded['message']!r}"
        assert (record.deployments, record.pods) == (0, 0), "a pod was created"
        return

    def serving() -> bool:
        pods = client.CoreV1Api(api).list_namespaced_pod(
            record.namespace,
            label_selector=f"magistral.dev/endpoint={record.name},"
            "app.kubernetes.io/component=inference",
        )
        return bool(pods.items)

    assert degraded["status"] == "False", degraded
    assert record.deployments >= 1
    wait_for(f"pods of {case.case}", serving, timeout=60)
