"""The CRD on a real API server: accepted as structural, and the catalogue rejected by it."""

from __future__ import annotations

import json

import pytest
from kubernetes import client
from kubernetes.client.rest import ApiException

from tests.catalogue.loader import InvalidCase, invalid_cases

from .conftest import GROUP, PLURAL, VERSION, endpoint_manifest

SERVER_CASES = [c for c in invalid_cases() if not c.operator_only]


def create(api: client.ApiClient, namespace: str, body: dict[str, object]) -> None:
    client.CustomObjectsApi(api).create_namespaced_custom_object(
        GROUP, VERSION, namespace, PLURAL, body, field_validation="Strict"
    )


def test_crd_is_established_with_its_columns(api: client.ApiClient) -> None:
    crd = client.ApiextensionsV1Api(api).read_custom_resource_definition(f"{PLURAL}.{GROUP}")
    established = {c.type: c.status for c in crd.status.conditions}
    assert established.get("Established") == "True"
    assert established.get("NonStructuralSchema") is None
    assert crd.spec.names.short_names == ["mep"]


@pytest.mark.parametrize("case", SERVER_CASES, ids=lambda c: c.case)
def test_api_server_rejects_invalid_endpoints(
    case: InvalidCase, api: client.ApiClient, namespace: str
) -> None:
    with pytest.raises(ApiException) as exc:
        create(api, namespace, case.manifest(name="bad", namespace=namespace))
    assert exc.value.status in (400, 422), exc.value.body
    message = json.loads(exc.value.body)["message"]
    for fragment in case.expect:
        assert fragment in message, f"{fragment!r} not in {message!r}"


def test_valid_example_is_accepted_and_defaulted(api: client.ApiClient, namespace: str) -> None:
    create(api, namespace, endpoint_manifest("ok", namespace))
    obj = client.CustomObjectsApi(api).get_namespaced_custom_object(
        GROUP, VERSION, namespace, PLURAL, "ok"
    )
    spec = obj["spec"]
    assert spec["runtime"]["maxModelLen"] == 40960
    assert spec["inference"]["sampling"] == {"temperature": 0.7, "topP": 0.95}
    assert spec["model"]["source"] == {"hub": {}}


@pytest.mark.parametrize(
    ("patch", "fragment"),
    [
        ({"spec": {"auth": {"disabled": True}}}, "disabled cannot be turned on"),
        ({"spec": {"model": {"servedModelName": "renamed"}}}, "servedModelName is immutable"),
    ],
)
def test_unsafe_changes_are_refused(
    api: client.ApiClient, namespace: str, patch: dict[str, object], fragment: str
) -> None:
    create(api, namespace, endpoint_manifest("ep", namespace))
    with pytest.raises(ApiException) as exc:
        client.CustomObjectsApi(api).patch_namespaced_custom_object(
            GROUP, VERSION, namespace, PLURAL, "ep", patch
        )
    assert fragment in json.loads(exc.value.body)["message"]


def test_name_too_long_for_children_is_refused(api: client.ApiClient, namespace: str) -> None:
    with pytest.raises(ApiException) as exc:
        create(api, namespace, endpoint_manifest("x" * 41, namespace))
    assert "at most 40 characters" in json.loads(exc.value.body)["message"]
