"""The endpoint plan (pure): per-pool sizing, usable pools and desired replicas.

Everything the render layer and the status need, derived from the spec and operator config
alone; nothing here talks to a cluster.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from .api.config import GPUPool, OperatorConfig
from .api.endpoint import Endpoint, check_against_config, endpoint_pools
from .sizing.capability import pool_capability
from .sizing.profiles import ModelProfile, PrecisionError, UnknownModelError, resolve_profile
from .sizing.tensor_parallel import SizingRequest, SizingResult, choose_tp
from .sizing.throughput import ReplicaThroughput, replica_throughput


@dataclass(frozen=True)
class PoolPlan:
    """One GPU pool of the endpoint: its sizing and the replicas placed on it."""

    pool: GPUPool
    sizing: SizingResult
    replicas: int

    @property
    def tp(self) -> int | None:
        """GPUs per replica on this pool, if the model fits."""
        return self.sizing.tp


@dataclass(frozen=True)
class EndpointPlan:
    """What the operator intends for an endpoint, or the problems that prevent it."""

    profile: ModelProfile | None
    pools: tuple[PoolPlan, ...]
    desired_replicas: int
    problems: tuple[str, ...]

    @property
    def ok(self) -> bool:
        """True when the endpoint can be served on at least one pool."""
        return not self.problems

    @property
    def usable_pools(self) -> tuple[PoolPlan, ...]:
        """Pools where the model fits, in order of preference."""
        return tuple(p for p in self.pools if p.sizing.fits)

    @property
    def primary(self) -> PoolPlan | None:
        """The preferred usable pool."""
        usable = self.usable_pools
        return usable[0] if usable else None


def sizing_request(
    *, endpoint: Endpoint, profile: ModelProfile, pool: GPUPool, config: OperatorConfig
) -> SizingRequest:
    """The sizing inputs for `endpoint` on `pool`."""
    spec = endpoint.spec
    requested = spec.gpu.tensor_parallel_size
    return SizingRequest(
        profile=profile,
        gpu_product=pool.gpu_product,
        gpu_memory_gib=pool.gpu_memory_gib,
        gpus_per_node=pool.gpus_per_node,
        max_model_len=spec.runtime.max_model_len,
        kv_cache_dtype=str(spec.runtime.kv_cache_dtype),
        gpu_memory_utilization=spec.runtime.gpu_memory_utilization,
        min_full_length_sequences=spec.gpu.min_full_length_sequences,
        per_gpu_overhead_gib=config.sizing.per_gpu_overhead_gib,
        requested_tp=None if requested == "auto" else int(requested),
        compute_capability=pool_capability(pool.compute_capability, pool.gpu_product),
    )


def plan_endpoint(
    endpoint: Endpoint,
    config: OperatorConfig,
    *,
    desired_replicas: int | None = None,
    placement: Mapping[str, int] | None = None,
) -> EndpointPlan:
    """Size the endpoint on each of its pools and place the desired replicas.

    `desired_replicas` is the autoscaler's wish; it is clamped to the spec's bounds and defaults
    to minReplicas. Without `placement`, replicas go to the most preferred pool where the model
    fits; with it (placement.py's split: replicas per pool name), each usable pool gets its
    share and unusable pools none.
    """
    problems = check_against_config(endpoint, config)
    if problems:
        return EndpointPlan(profile=None, pools=(), desired_replicas=0, problems=tuple(problems))
    try:
        profile = resolve_profile(endpoint.spec.model)
    except (UnknownModelError, PrecisionError) as exc:
        return EndpointPlan(profile=None, pools=(), desired_replicas=0, problems=(str(exc),))
    scaling = endpoint.spec.scaling
    wanted = scaling.min_replicas if desired_replicas is None else desired_replicas
    desired = max(scaling.min_replicas, min(scaling.max_replicas, wanted))
    sized = []
    for name in endpoint_pools(endpoint, config):
        pool = config.pool(name)
        assert pool is not None  # checked above
        request = sizing_request(endpoint=endpoint, profile=profile, pool=pool, config=config)
        sized.append((pool, choose_tp(request)))
    primary = next((pool.name for pool, result in sized if result.fits), None)

    def share(pool: GPUPool, result: SizingResult) -> int:
        if placement is None:
            return desired if pool.name == primary else 0
        return placement.get(pool.name, 0) if result.fits else 0

    pools = tuple(
        PoolPlan(pool=pool, sizing=result, replicas=share(pool, result)) for pool, result in sized
    )
    if primary is None:
        reasons = "; ".join(f"pool {p.pool.name}: {p.sizing.message}" for p in pools)
        # Only when no pool can run it at all is it the spec's precision, not memory.
        problem = (
            f"none of the endpoint's GPU pools can run the model as specified: {reasons}"
            if pools and all(p.sizing.unsupported for p in pools)
            else f"the model fits on none of the endpoint's GPU pools: {reasons}"
        )
        return EndpointPlan(profile=profile, pools=pools, desired_replicas=0, problems=(problem,))
    return EndpointPlan(profile=profile, pools=pools, desired_replicas=desired, problems=())


def replica_capacity(endpoint: Endpoint, plan: EndpointPlan) -> ReplicaThroughput | None:
    """What one replica holds, the smallest over the usable pools (sizing/throughput.py).

    The autoscaler sizes the fleet from it and the routers admit `max_sequences` requests per
    replica; the smallest of each figure keeps both on the safe side when pools differ.
    None when no pool is usable.
    """
    profile = plan.profile
    if profile is None:
        return None
    fp8 = profile.precision == "fp8" or profile.quantization == "fp8"
    each = [
        replica_throughput(
            pool=p.pool,
            tp=p.sizing.tp,
            kv_tokens=p.sizing.chosen.kv_cache_tokens,
            parameters_billions=profile.parameters_billions,
            fp8=fp8,
            max_num_seqs=endpoint.spec.runtime.max_num_seqs,
            measured_prefill=endpoint.spec.scaling.prefill_tokens_per_second,
        )
        for p in plan.usable_pools
        if p.sizing.tp is not None and p.sizing.chosen is not None
    ]
    if not each:
        return None
    return ReplicaThroughput(
        max_sequences=min(c.max_sequences for c in each),
        kv_tokens=min(c.kv_tokens for c in each),
        prefill_tokens_per_second=min(c.prefill_tokens_per_second for c in each),
    )
