"""Drift detection: defaults added by the API server are not drift; edited fields are."""

from __future__ import annotations

import copy
from typing import Any

from hypothesis import given
from hypothesis import strategies as st

from magistral_operator.api.config import OperatorConfig
from magistral_operator.kube.drift import contains, drifted
from magistral_operator.render import render_endpoint
from magistral_operator.render.metadata import is_engine_deployment

from .conftest import endpoint_from_spec


def deployment(config: OperatorConfig) -> dict[str, Any]:
    objects = render_endpoint(endpoint_from_spec({"auth": {"disabled": True}}), config).objects
    return next(o for o in objects if is_engine_deployment(o))


def defaulted(obj: dict[str, Any]) -> dict[str, Any]:
    """What the API server hands back: extra defaults, status, other managers' annotations."""
    live = copy.deepcopy(obj)
    live["metadata"]["resourceVersion"] = "42"
    live["metadata"].setdefault("annotations", {})["deployment.kubernetes.io/revision"] = "1"
    live["spec"]["template"]["spec"]["dnsPolicy"] = "ClusterFirst"
    live["spec"]["template"]["spec"]["containers"][0]["terminationMessagePath"] = "/dev/x"
    live["status"] = {"replicas": 1}
    return live


def test_defaults_are_not_drift(operator_config: OperatorConfig) -> None:
    desired = deployment(operator_config)
    assert not drifted(defaulted(desired), desired)


def test_scaled_or_edited_children_are_drift(operator_config: OperatorConfig) -> None:
    desired = deployment(operator_config)
    scaled = defaulted(desired)
    scaled["spec"]["replicas"] = 5
    assert drifted(scaled, desired)
    relabelled = defaulted(desired)
    del relabelled["metadata"]["labels"]["magistral.dev/endpoint"]
    assert drifted(relabelled, desired)
    extra_env = defaulted(desired)
    extra_env["spec"]["template"]["spec"]["containers"][0]["env"].append({"name": "X"})
    assert drifted(extra_env, desired)


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.text(max_size=5),
    lambda inner: (
        st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=3), inner, max_size=3)
    ),
    max_leaves=15,
)


@given(json_values)
def test_everything_contains_itself(value: Any) -> None:
    assert contains(value, value)


@given(
    st.dictionaries(st.text(max_size=3), json_values, max_size=4), st.text(max_size=3), json_values
)
def test_extra_keys_in_live_are_fine(desired: dict[str, Any], key: str, extra: Any) -> None:
    live = {**desired}
    if key not in live:
        live[key] = extra
    assert contains(live, desired)
