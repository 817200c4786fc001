"""Render every child of an endpoint (pure): ConfigMap, Deployments, Service, PDB, NetworkPolicy."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from magistral_runtime.config import RuntimeConfig, dump_runtime_config

from ..api.config import OperatorConfig
from ..api.endpoint import Endpoint
from ..api.spec import SystemPromptMode
from ..plan import EndpointPlan, plan_endpoint, replica_capacity
from .hashing import content_hash
from .metadata import REVISION_LABEL, config_map_name, object_meta
from .network import (
    render_engines_service,
    render_network_policies,
    render_pdb,
    render_service,
    service_url,
)
from .router import render_router_deployment, render_router_pdb, render_router_rbac
from .runtime_config import PROMPT_FILE, runtime_config
from .startup import StartupBudget, startup_budget
from .workload import render_deployment, runtime_config_key


@dataclass(frozen=True)
class RenderedEndpoint:
    """The desired children plus the decisions behind them (for status and review)."""

    plan: EndpointPlan
    objects: list[dict[str, Any]] = field(default_factory=list)
    revision: str | None = None
    budget: StartupBudget | None = None
    url: str | None = None
    image: str | None = None
    runtime_configs: dict[str, RuntimeConfig] = field(default_factory=dict)


def config_map_data(endpoint: Endpoint, configs: dict[str, RuntimeConfig]) -> dict[str, str]:
    """One key per pool with that pool's runtime config, plus a custom prompt text if any."""
    data = {runtime_config_key(pool): dump_runtime_config(cfg) for pool, cfg in configs.items()}
    prompt = endpoint.spec.inference.system_prompt
    if prompt.mode == SystemPromptMode.CUSTOM and prompt.text is not None:
        data[PROMPT_FILE] = prompt.text
    return data


def render_config_map(endpoint: Endpoint, data: dict[str, str], *, revision: str) -> dict[str, Any]:
    """The revision's ConfigMap: immutable, named and labelled by the revision (the revision
    hash covers `data`, so a name never holds two contents). Kept while a ReplicaSet of the
    endpoint mounts it, then pruned (kube/children.py)."""
    return {
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": object_meta(
            endpoint,
            name=config_map_name(endpoint, revision),
            labels={REVISION_LABEL: revision},
        ),
        "immutable": True,
        "data": data,
    }


# Pool settings no pod starts from: changing them must not restart pods. Placement's, and the
# compute capability (it decides whether a pool is usable, never what its pods run).
NOT_POD_FACING_POOL_FIELDS = frozenset(
    {"overflowAfterSeconds", "elastic", "elasticOverflowAfterSeconds", "computeCapability"}
)


def _pod_facing(pool: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in pool.items() if k not in NOT_POD_FACING_POOL_FIELDS}


def render_endpoint(
    endpoint: Endpoint,
    config: OperatorConfig,
    *,
    desired_replicas: int | None = None,
    placement: Mapping[str, int] | None = None,
    cache_warm: bool = False,
) -> RenderedEndpoint:
    """Everything the operator applies for `endpoint`; no objects when the plan has problems."""
    plan = plan_endpoint(endpoint, config, desired_replicas=desired_replicas, placement=placement)
    if not plan.ok or plan.profile is None:
        return RenderedEndpoint(plan=plan)
    profile = plan.profile
    image = endpoint.spec.runtime.image or config.default_image
    configs = {
        p.pool.name: runtime_config(endpoint=endpoint, profile=profile, tp=p.sizing.tp)
        for p in plan.usable_pools
        if p.sizing.tp is not None
    }
    budget = startup_budget(
        model=endpoint.spec.model,
        weight_bytes=profile.stored_bytes,  # downloaded and read as stored, then quantized
        startup=config.startup,
        cache_warm=cache_warm,
    )
    data = config_map_data(endpoint, configs)
    # The revision covers everything a pod is started from; replicas and budgets are excluded
    # so scaling and a warming cache never restart pods.
    revision = content_hash(
        {
            "image": image,
            "configMap": data,
            "spec": endpoint.spec.model_dump(
                mode="json", include={"model", "runtime", "inference", "auth"}
            ),
            "pools": {p.pool.name: _pod_facing(p.pool.to_wire()) for p in plan.usable_pools},
        }
    )
    config_map = render_config_map(endpoint, data, revision=revision)
    deployments = [
        render_deployment(
            endpoint=endpoint,
            pool=p.pool,
            runtime=configs[p.pool.name],
            replicas=p.replicas,
            image=image,
            revision=revision,
            budget=budget,
            config_map=config_map["metadata"]["name"],
        )
        for p in plan.usable_pools
    ]
    capacity = replica_capacity(endpoint, plan)
    assert capacity is not None  # the plan has a usable pool
    objects = [
        config_map,
        *deployments,
        render_service(endpoint),
        render_engines_service(endpoint),
        render_pdb(endpoint),
        *render_network_policies(endpoint),
        *render_router_rbac(endpoint),
        render_router_deployment(endpoint, config, max_num_seqs=capacity.max_sequences),
        render_router_pdb(endpoint),
    ]
    return RenderedEndpoint(
        plan=plan,
        objects=objects,
        revision=revision,
        budget=budget,
        url=service_url(endpoint, cluster_domain=config.cluster_domain),
        image=image,
        runtime_configs=configs,
    )
