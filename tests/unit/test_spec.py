"""The endpoint spec: defaults, the invalid catalogue, and config-dependent checks."""

from __future__ import annotations

import pytest

from magistral_operator.api.config import OperatorConfig
from magistral_operator.api.endpoint import parse_endpoint
from magistral_operator.api.errors import ConfigError
from magistral_operator.api.spec import MagistralEndpointSpec
from magistral_operator.plan import plan_endpoint
from magistral_operator.sizing.profiles import FP8_WEIGHTS, UnknownModelError, resolve_profile

from .conftest import endpoint_from_spec, load_example


def test_defaults_follow_the_model_card() -> None:
    spec = MagistralEndpointSpec.model_validate({"auth": {"disabled": True}})
    assert spec.model.repo == "mistralai/Magistral-Small-2506"
    assert spec.runtime.max_model_len == 40960
    assert spec.inference.sampling.temperature == 0.7
    assert spec.inference.sampling.top_p == 0.95
    assert spec.inference.sampling.max_tokens is None  # what the context leaves: 40960
    assert spec.inference.tool_calling is True
    assert spec.gpu.tensor_parallel_size == "auto"
    assert spec.inference.system_prompt.mode == "model"


def test_example_endpoint_parses() -> None:
    endpoint = parse_endpoint(load_example("magistral-small.yaml"))
    assert endpoint.served_model_name == "magistral-small"
    assert endpoint.spec.auth.api_key_secret_ref is not None


def test_served_model_name_defaults_to_repo_name() -> None:
    endpoint = endpoint_from_spec({"auth": {"disabled": True}})
    assert endpoint.served_model_name == "Magistral-Small-2506"


def test_error_names_every_bad_field() -> None:
    with pytest.raises(ConfigError) as exc:
        endpoint_from_spec({"runtime": {"maxModelLen": 10, "gpuMemoryUtilization": 2}})
    message = str(exc.value)
    assert "spec.runtime.maxModelLen" in message
    assert "spec.runtime.gpuMemoryUtilization" in message
    assert "spec.auth: Field required" in message


def test_long_names_are_rejected() -> None:
    with pytest.raises(ConfigError, match=r"metadata\.name must be at most 40"):
        endpoint_from_spec({"auth": {"disabled": True}}, name="x" * 41)


def test_wrong_kind_is_rejected() -> None:
    with pytest.raises(ConfigError, match="expected apiVersion"):
        parse_endpoint({"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "x"}})


def test_unknown_model_needs_a_profile(operator_config: OperatorConfig) -> None:
    endpoint = endpoint_from_spec({"model": {"repo": "acme/other"}, "auth": {"disabled": True}})
    with pytest.raises(UnknownModelError, match=r"spec\.model\.profile"):
        resolve_profile(endpoint.spec.model)
    plan = plan_endpoint(endpoint, operator_config)
    assert not plan.ok
    assert "spec.model.profile" in plan.problems[0]


def test_profile_override_sizes_other_models(operator_config: OperatorConfig) -> None:
    endpoint = endpoint_from_spec(
        {
            "model": {
                "repo": "acme/tiny",
                "profile": {
                    "parametersBillions": 1,
                    "layers": 16,
                    "attentionHeads": 16,
                    "kvHeads": 4,
                    "headDim": 64,
                    "weightGigabytes": 2,
                },
            },
            "auth": {"disabled": True},
        }
    )
    plan = plan_endpoint(endpoint, operator_config)
    assert plan.ok
    assert plan.primary is not None
    assert plan.primary.tp == 1


def test_fp8_precision_on_builtin_uses_fp8_weights() -> None:
    endpoint = endpoint_from_spec({"model": {"precision": "fp8"}, "auth": {"disabled": True}})
    assert resolve_profile(endpoint.spec.model).weight_bytes == FP8_WEIGHTS


def test_model_that_fits_nowhere_says_why(operator_config: OperatorConfig) -> None:
    endpoint = endpoint_from_spec(
        {"gpu": {"pools": ["spot-l40s"], "tensorParallelSize": 1}, "auth": {"disabled": True}}
    )
    plan = plan_endpoint(endpoint, operator_config)
    assert not plan.ok
    assert "fits on none" in plan.problems[0]
    assert "spot-l40s" in plan.problems[0]
    assert "exceed the usable" in plan.problems[0]


def test_replicas_go_to_the_first_pool_that_fits(operator_config: OperatorConfig) -> None:
    endpoint = endpoint_from_spec(
        {
            "gpu": {"pools": ["spot-l40s", "reserved-h100"], "tensorParallelSize": 1},
            "scaling": {"minReplicas": 2, "maxReplicas": 3},
            "auth": {"disabled": True},
        }
    )
    plan = plan_endpoint(endpoint, operator_config)
    assert plan.ok
    assert [(p.pool.name, p.sizing.fits, p.replicas) for p in plan.pools] == [
        ("spot-l40s", False, 0),
        ("reserved-h100", True, 2),
    ]


def test_desired_replicas_are_clamped(operator_config: OperatorConfig) -> None:
    endpoint = endpoint_from_spec(
        {"scaling": {"minReplicas": 1, "maxReplicas": 3}, "auth": {"disabled": True}}
    )
    assert plan_endpoint(endpoint, operator_config, desired_replicas=10).desired_replicas == 3
    assert plan_endpoint(endpoint, operator_config, desired_replicas=0).desired_replicas == 1
