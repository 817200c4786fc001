"""The CRD on a real API server: structural, defaulted, transition rules.

The catalogue of endpoints runs against it in test_catalogue.py.
"""

from __future__ import annotations

import json

import pytest
from kubernetes import client
from kubernetes.client.rest import ApiException

from .conftest import GROUP, PLURAL, VERSION, endpoint_manifest


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
        (
            {"spec": {"model": {"servedModelName": "renamed"}}},
            "(servedModelName, or the repo's name when unset) is immutable",
        ),
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


RENAME = "(servedModelName, or the repo's name when unset) is immutable"


@pytest.mark.parametrize(
    ("patch", "refused"),
    [
        ({"servedModelName": "magistral"}, True),  # clients called Magistral-Small-2506
        ({"repo": "mistralai/Magistral-Small-2507"}, True),  # the default name changes
        ({"servedModelName": "Magistral-Small-2506"}, False),  # the same name, now explicit
        (
            {"repo": "mistralai/Magistral-Small-2507", "servedModelName": "Magistral-Small-2506"},
            False,  # a new checkpoint under the name clients use
        ),
    ],
)
def test_the_served_name_of_an_endpoint_without_one_never_changes(
    api: client.ApiClient, namespace: str, patch: dict[str, str], refused: bool
) -> None:
    body = endpoint_manifest("unnamed", namespace)
    body["spec"]["model"].pop("servedModelName", None)
    create(api, namespace, body)
    send = {"spec": {"model": patch}}
    objects = client.CustomObjectsApi(api)
    if refused:
        with pytest.raises(ApiException) as exc:
            objects.patch_namespaced_custom_object(
                GROUP, VERSION, namespace, PLURAL, "unnamed", send
            )
        assert RENAME in json.loads(exc.value.body)["message"]
    else:
        objects.patch_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL, "unnamed", send)
