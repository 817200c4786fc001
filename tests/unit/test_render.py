"""Rendering: golden files, schema validation against Kubernetes' OpenAPI, and invariants."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest
import yaml

from magistral_operator.api.config import OperatorConfig
from magistral_operator.api.endpoint import Endpoint, parse_endpoint
from magistral_operator.api.labels import ENDPOINT_LABEL, REVISION_LABEL
from magistral_operator.cli import dump_manifests
from magistral_operator.render import render_endpoint
from magistral_operator.render.metadata import is_engine_deployment
from magistral_operator.render.startup import startup_budget
from magistral_operator.render.workload import grace_period_seconds

from .conftest import EXAMPLES, endpoint_from_spec

HERE = Path(__file__).parent
GOLDEN = HERE / "golden"
K8S_VERSION = "1.36.0"
UID = "00000000-0000-0000-0000-000000000001"

CASES = {
    "magistral-small": EXAMPLES / "magistral-small.yaml",
    "pvc-weights-custom-prompt": HERE / "endpoints" / "pvc-weights-custom-prompt.yaml",
    "fp8-spot-l40s": HERE / "endpoints" / "fp8-spot-l40s.yaml",
}


def load_case(path: Path) -> Endpoint:
    data: dict[str, Any] = yaml.safe_load(path.read_text())
    data["metadata"].setdefault("uid", UID)
    data["metadata"].setdefault("generation", 1)
    return parse_endpoint(data)


def rendered_objects(name: str, config: OperatorConfig) -> list[dict[str, Any]]:
    result = render_endpoint(load_case(CASES[name]), config)
    assert result.plan.ok, result.plan.problems
    return result.objects


@pytest.mark.parametrize("name", sorted(CASES))
def test_golden(name: str, operator_config: OperatorConfig) -> None:
    text = dump_manifests(rendered_objects(name, operator_config))
    golden = GOLDEN / f"{name}.yaml"
    if os.environ.get("UPDATE_GOLDEN") == "1":
        golden.write_text(text)
    assert golden.exists(), f"missing {golden}; run UPDATE_GOLDEN=1 pytest {__file__}"
    assert text == golden.read_text(), f"{golden} differs; review, then UPDATE_GOLDEN=1"


@pytest.mark.parametrize("name", sorted(CASES))
def test_every_object_is_valid_kubernetes(name: str, operator_config: OperatorConfig) -> None:
    for obj in rendered_objects(name, operator_config):
        kubernetes_validate.validate(obj, K8S_VERSION, strict=True)


def test_schema_validation_catches_a_broken_object(operator_config: OperatorConfig) -> None:
    deployment = next(
        o for o in rendered_objects("magistral-small", operator_config) if o["kind"] == "Deployment"
    )
    deployment["spec"]["template"]["spec"]["containers"][0]["ports"][0]["containerPort"] = "x"
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(deployment, K8S_VERSION, strict=True)


@pytest.mark.parametrize("name", sorted(CASES))
def test_children_are_owned_and_labelled(name: str, operator_config: OperatorConfig) -> None:
    endpoint = load_case(CASES[name])
    for obj in rendered_objects(name, operator_config):
        meta = obj["metadata"]
        assert meta["namespace"] == endpoint.namespace
        (owner,) = meta["ownerReferences"]
        assert owner["controller"] is True
        assert owner["uid"] == endpoint.uid
        assert owner["kind"] == "MagistralEndpoint"
        labels = meta["labels"]
        assert labels[ENDPOINT_LABEL] == endpoint.name
        for key in ("name", "instance", "component", "part-of", "managed-by"):
            assert f"app.kubernetes.io/{key}" in labels


def deployments(objects: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [o for o in objects if is_engine_deployment(o)]


@pytest.mark.parametrize("name", sorted(CASES))
def test_pod_security_and_gpus(name: str, operator_config: OperatorConfig) -> None:
    for dep in deployments(rendered_objects(name, operator_config)):
        pod = dep["spec"]["template"]["spec"]
        (container,) = pod["containers"]
        tp = int(dep["metadata"]["annotations"]["magistral.dev/tensor-parallel-size"])
        assert container["resources"]["limits"]["nvidia.com/gpu"] == str(tp)
        assert container["resources"]["requests"]["nvidia.com/gpu"] == str(tp)
        sc = container["securityContext"]
        assert sc["allowPrivilegeEscalation"] is False
        assert sc["capabilities"] == {"drop": ["ALL"]}
        assert sc["runAsNonRoot"] is True
        assert sc["seccompProfile"] == {"type": "RuntimeDefault"}
        assert pod["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}
        shm = next(v for v in pod["volumes"] if v["name"] == "dshm")
        assert shm["emptyDir"]["medium"] == "Memory"
        assert {"name": "dshm", "mountPath": "/dev/shm"} in container["volumeMounts"]
        assert any(t.get("key") == "nvidia.com/gpu" for t in pod["tolerations"])
        assert pod["nodeSelector"]
        assert REVISION_LABEL in dep["spec"]["template"]["metadata"]["labels"]
        assert REVISION_LABEL not in dep["spec"]["selector"]["matchLabels"]


def test_vllm_args_and_tp_are_visible(operator_config: OperatorConfig) -> None:
    (dep, *_) = deployments(rendered_objects("magistral-small", operator_config))
    args = dep["spec"]["template"]["metadata"]["annotations"]["magistral.dev/vllm-args"]
    for flag in (
        "--tokenizer-mode mistral",
        "--config-format mistral",
        "--load-format mistral",
        "--tool-call-parser mistral",
        "--enable-auto-tool-choice",
        "--tensor-parallel-size 1",
        "--max-model-len 40960",
    ):
        assert flag in args


def test_l40s_pool_gets_two_gpus_per_replica(operator_config: OperatorConfig) -> None:
    endpoint = endpoint_from_spec({"gpu": {"pools": ["spot-l40s"]}, "auth": {"disabled": True}})
    (dep,) = deployments(render_endpoint(endpoint, operator_config).objects)
    limits = dep["spec"]["template"]["spec"]["containers"][0]["resources"]["limits"]
    assert limits["nvidia.com/gpu"] == "2"


def test_drain_budget_covers_prestop_and_shutdown(operator_config: OperatorConfig) -> None:
    result = render_endpoint(load_case(CASES["magistral-small"]), operator_config)
    (cfg, *_) = result.runtime_configs.values()
    for dep in deployments(result.objects):
        pod = dep["spec"]["template"]["spec"]
        sleep = pod["containers"][0]["lifecycle"]["preStop"]["sleep"]["seconds"]
        assert pod["terminationGracePeriodSeconds"] == grace_period_seconds(cfg)
        assert pod["terminationGracePeriodSeconds"] > sleep + cfg.shutdown_timeout_seconds


def test_startup_probe_budget_comes_from_weights_and_cache(operator_config: OperatorConfig) -> None:
    cold = endpoint_from_spec({"auth": {"disabled": True}})
    budget = render_endpoint(cold, operator_config).budget
    assert budget is not None
    startup = operator_config.startup
    expected = (
        startup.image_pull_seconds
        + 47.1e9 / (startup.hub_download_mbps * 1e6)
        + 47.1e9 / (startup.volume_read_mbps * 1e6)
        + startup.engine_init_seconds
    ) * startup.safety_factor
    assert budget.seconds == pytest.approx(expected, abs=1)
    dep = deployments(render_endpoint(cold, operator_config).objects)[0]
    probe = dep["spec"]["template"]["spec"]["containers"][0]["startupProbe"]
    assert probe["periodSeconds"] * probe["failureThreshold"] >= budget.seconds

    shared = endpoint_from_spec(
        {"model": {"cache": {"type": "pvc", "claimName": "c"}}, "auth": {"disabled": True}}
    )
    warm = startup_budget(
        model=shared.spec.model,
        weight_bytes=47.1e9,
        startup=startup,
        cache_warm=True,
    )
    cold_shared = startup_budget(
        model=shared.spec.model,
        weight_bytes=47.1e9,
        startup=startup,
        cache_warm=False,
    )
    assert warm.seconds < cold_shared.seconds
    assert "warm shared cache" in warm.explanation
    # Smaller weights, smaller budget.
    fp8 = startup_budget(
        model=shared.spec.model, weight_bytes=24.9e9, startup=startup, cache_warm=False
    )
    assert fp8.seconds < cold_shared.seconds


def test_revision_ignores_replicas_but_follows_pod_inputs(operator_config: OperatorConfig) -> None:
    base = {"scaling": {"minReplicas": 1, "maxReplicas": 5}, "auth": {"disabled": True}}
    endpoint = endpoint_from_spec(base)
    one = render_endpoint(endpoint, operator_config, desired_replicas=1).revision
    three = render_endpoint(endpoint, operator_config, desired_replicas=3).revision
    assert one == three
    changed = endpoint_from_spec({**base, "runtime": {"maxModelLen": 32768}})
    assert render_endpoint(changed, operator_config).revision != one


def test_offline_render_has_no_owner_reference(operator_config: OperatorConfig) -> None:
    endpoint = endpoint_from_spec({"auth": {"disabled": True}}, uid="")
    for obj in render_endpoint(endpoint, operator_config).objects:
        assert "ownerReferences" not in obj["metadata"]


def test_config_map_holds_a_valid_runtime_config_per_pool(operator_config: OperatorConfig) -> None:
    from magistral_runtime.config import parse_runtime_config

    objects = rendered_objects("magistral-small", operator_config)
    (cm,) = [o for o in objects if o["kind"] == "ConfigMap"]
    assert sorted(cm["data"]) == ["runtime-ondemand-h100.json", "runtime-reserved-h100.json"]
    for key, text in cm["data"].items():
        cfg = parse_runtime_config(text, source=key)
        assert cfg.tensor_parallel_size == 1
        assert cfg.served_model_name == "magistral-small"


def test_each_revision_has_its_own_immutable_config_map(operator_config: OperatorConfig) -> None:
    """The runtime config is part of the revision: a ConfigMap named and labelled by it,
    immutable, mounted (config and custom prompt) by every engine pod template of it; a spec
    that changes only the runtime config gets a new revision and a new ConfigMap, and the same
    spec always renders the same name."""
    base = {
        "auth": {"disabled": True},
        "inference": {"systemPrompt": {"mode": "custom", "text": "Be brief."}},
    }

    def runtime(spec: dict[str, Any]) -> tuple[str, dict[str, Any], list[dict[str, Any]]]:
        result = render_endpoint(endpoint_from_spec(spec), operator_config)
        assert result.revision is not None
        (cm,) = [o for o in result.objects if o["kind"] == "ConfigMap"]
        return result.revision, cm, [o for o in result.objects if is_engine_deployment(o)]

    revision, cm, deployments = runtime(base)
    assert cm["immutable"] is True
    name = cm["metadata"]["labels"][ENDPOINT_LABEL]
    assert cm["metadata"]["name"] == f"{name}-runtime-{revision}"
    assert cm["metadata"]["labels"][REVISION_LABEL] == revision
    assert deployments
    for dep in deployments:
        assert dep["spec"]["template"]["metadata"]["labels"][REVISION_LABEL] == revision
        mounted = {
            v["configMap"]["name"]
            for v in dep["spec"]["template"]["spec"]["volumes"]
            if "configMap" in v
        }
        assert mounted == {cm["metadata"]["name"]}
    assert runtime(base)[1] == cm  # deterministic
    # Runtime config only (no pod template field but the ConfigMap's name changes).
    for change in ({"runtime": {"maxModelLen": 32768}}, {"inference": {"systemPrompt": {
            "mode": "custom", "text": "Be verbose."}}}):  # fmt: skip
        other_revision, other, _ = runtime({**base, **change})
        assert other_revision != revision
        assert other["metadata"]["name"] != cm["metadata"]["name"]
        assert other["data"] != cm["data"]
